//! `sluice`: the live streaming server.

mod admission;
mod app;
mod control;
mod engine_runner;
mod listen;
mod metrics;
mod page;
mod recorder;
mod runtime;
mod slate;
mod srt_listen;
mod supervise;
mod tls;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_config::Config;

/// mimalloc instead of glibc's malloc. Every frame allocates and frees a few buffers
/// (RTMP messages, fMP4 parts, segments of hundreds of KB) across the runtime's
/// threads; glibc spends its time searching its bins and handing the big ones back to
/// the kernel only to fault them in again (about a sixth of the server's CPU with 50
/// passthrough channels). mimalloc's per-thread free lists and delayed purging cut
/// that; transparent huge pages are off (`no_thp`) because purging a 2 MiB page and
/// faulting it back in (zeroing all of it) cost more than it saved. Measured with
/// `benches/ingest_vs_nginx_rtmp.sh`; figures in `benches/README.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Live streaming server: RTMP in, one transcode, HLS (CMAF and MPEG-TS) out"
)]
struct Cli {
    /// Log format on stderr (RUST_LOG filters, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (on the embedded default configuration without --config).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: every error with its line and column.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a viewer token (JWT) for a distribution, signed with its first key.
    Token {
        #[arg(long, short)]
        config: PathBuf,
        /// The distribution the token is for (its `aud`).
        #[arg(long, short)]
        distribution: String,
        /// Lifetime: seconds, or a number with s, m, h or d (`90s`, `30m`, `1h`, `2d`).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// The viewer (`sub`), for sticky choices and logs of your own.
        #[arg(long)]
        sub: Option<String>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
}

/// `90`, `90s`, `30m`, `1h`, `2d` as seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("{s:?}: between 1 s and many years")),
        Some(t) => Ok(t),
    }
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets
    // plain text (and `NO_COLOR`, https://no-color.org, turns it off anywhere).
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.errors.len());
                ExitCode::FAILURE
            }
        },
        Command::Token {
            config,
            distribution,
            ttl,
            sub,
        } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            let dist = cfg
                .distributions
                .iter()
                .find(|(id, _)| id.as_str() == distribution);
            let Some((id, dist)) = dist else {
                eprintln!(
                    "sluice: no distribution {distribution:?} in {}",
                    config.display()
                );
                return ExitCode::FAILURE;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match sluice_distribution::sign_token(id, &dist.token, now, ttl, sub.as_deref()) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice: distribution {distribution:?}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DefaultConfig => {
            print!("{}", sluice_config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            init_tracing(cli.log_format);
            // The text is kept: API changes are made to it, comments and all.
            let (cfg, text) = match &config {
                Some(path) => {
                    let loaded = std::fs::read_to_string(path)
                        .map_err(|_| Config::load(path).err())
                        .and_then(|text| {
                            Config::from_toml_str(&text, &path.display().to_string())
                                .map(|c| (c, text))
                                .map_err(Some)
                        });
                    match loaded {
                        Ok(c) => c,
                        Err(errors) => {
                            if let Some(errors) = errors {
                                eprintln!("{errors}");
                            }
                            return ExitCode::FAILURE;
                        }
                    }
                }
                None => (
                    Config::default_embedded(),
                    sluice_config::DEFAULT_CONFIG_TOML.to_string(),
                ),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(app::run(cfg, text, config));
            // Blocking work still running (a pipeline that will not stop) is left behind
            // rather than waited for.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl_units() {
        assert_eq!(super::parse_ttl("90"), Ok(90));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert_eq!(super::parse_ttl("1h"), Ok(3600));
        assert_eq!(super::parse_ttl("2d"), Ok(172_800));
        for bad in ["", "0", "h", "1w", "-1h", "99999999999999999999d"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
