//! `sluice`: the live streaming server.

mod admission;
mod app;
mod engine_runner;
mod listen;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_config::Config;

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
    /// Print the embedded default configuration.
    DefaultConfig,
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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
        Command::DefaultConfig => {
            print!("{}", sluice_config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            init_tracing(cli.log_format);
            let cfg = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(errors) => {
                        eprintln!("{errors}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::default_embedded(),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(app::run(cfg, config));
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
