//! Wiring: a validated configuration becomes buses, engines, packagers,
//! listeners and the HTTP catalog; then supervision until a signal.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sluice_config::{Config, Output};
use sluice_core::time::secs_f64_to_nanos;
use sluice_core::{Id, MediaTime};
use sluice_distribution::{
    Catalog, DistributionEntry, Geo, GeoDb, HttpLimits, HttpState, Policy, SessionKey,
};
use sluice_engine::EncodedEvent;
use sluice_ingest::RtmpLimits;
use sluice_package::{EngineOutput, OutputKind, source_rendition};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{AdmissionPolicy, AdmissionTable};
use crate::control::Control;
use crate::listen;
use crate::runtime::{LiveRouter, Runtime, Shared, SrtSetup};
use crate::srt_listen;
use crate::workers::WorkerPool;

/// How often the configuration file is checked for changes.
const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

fn output_kind(o: Output) -> OutputKind {
    match o {
        Output::Cmaf => OutputKind::Cmaf,
        Output::Ts => OutputKind::Ts,
    }
}

/// Sessions start on a common multiple of every engine's segment duration, so that each
/// engine's first segment after a seam starts on its own grid (capped at a minute, past
/// which the longest duration is used).
pub(crate) fn session_grid(segment_seconds: impl Iterator<Item = f64>) -> MediaTime {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let ms: Vec<u64> = segment_seconds
        .map(|s| (s * 1000.0).round().max(1.0) as u64)
        .collect();
    let longest = ms.iter().copied().max().unwrap_or(2000);
    let lcm = ms.iter().try_fold(1u64, |acc, &m| {
        let l = acc / gcd(acc, m) * m;
        (l <= 60_000).then_some(l)
    });
    lcm.unwrap_or(longest) as MediaTime * 1_000_000
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

pub async fn run(cfg: Config, text: String, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    sluice_engine::check_elements()?;
    crate::runtime::check_encoders(&cfg)?;
    for what in sluice_config::not_served_yet(&cfg) {
        tracing::warn!("accepted, not served yet: {what}");
    }
    for (i, t) in cfg.api.admin_tokens.iter().enumerate() {
        if t.starts_with("change-me") {
            tracing::warn!(
                "api.admin_tokens[{i}] is the example's placeholder: anyone who read the example controls the server; replace it with a long random token"
            );
        } else if t.len() < 16 {
            tracing::warn!(
                "api.admin_tokens[{i}] is {} characters long: anyone who guesses it controls the server; use at least 16 random characters",
                t.len()
            );
        }
    }
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Media time starts at the wall clock: segment numbers and init versions of this run
    // never repeat those of an earlier run, whose segments caches may hold as immutable.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let timeline_start = sluice_core::time::duration_to_nanos(since_epoch);
    // Init segment versions: the start time in seconds, shifted left 20 bits, leaves
    // room for 1,024 engine starts of 1,024 versions each before the next second's range,
    // so neither a later run nor a restarted engine reuses a number a cache may hold.
    let init_version_base = since_epoch.as_secs().saturating_mul(1 << 20);

    // Geo rules fail closed: without a readable database they refuse every viewer.
    let geodb = match &cfg.server.geoip_database {
        Some(path) => match GeoDb::open(path) {
            Ok(db) => Some(Arc::new(db)),
            Err(e) => {
                tracing::error!(error = %e, "geo rules will refuse every viewer");
                None
            }
        },
        None => None,
    };

    let http = Arc::new(bind(cfg.server.http_listen, "HTTP").await?);
    let rtmp = Arc::new(bind(cfg.server.rtmp_listen, "RTMP").await?);
    // HTTPS (and so HTTP/2 for Safari) when configured; a certificate that cannot be
    // used stops the start with the file and the reason.
    let https = match (
        cfg.server.https_listen,
        &cfg.server.tls_cert,
        &cfg.server.tls_key,
    ) {
        (Some(addr), Some(cert), Some(key)) => {
            let acceptor = crate::tls::acceptor(cert, key)?;
            Some((Arc::new(bind(addr, "HTTPS").await?), acceptor))
        }
        _ => None,
    };
    tracing::info!(
        http = %http.local_addr()?,
        https = %https.as_ref().and_then(|(l, _)| l.local_addr().ok()).map_or("-".into(), |a| a.to_string()),
        rtmp = %rtmp.local_addr()?,
        config = %config_path.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()),
        channels = cfg.channels.len(),
        distributions = cfg.distributions.len(),
        "sluice serving"
    );
    let mut servers = JoinSet::new();
    // Sessions are signed with a key made at start: they end with the process (viewers
    // then re-enter through the multivariant playlist, with their token).
    let sessions = SessionKey::random().context("no randomness for the session key")?;
    let state = HttpState::new(Catalog::default(), sessions);
    state
        .measure
        .store(cfg.server.metrics, std::sync::atomic::Ordering::Relaxed);
    let live_router = Arc::new(LiveRouter::default());
    // Slots are kept for the encoders an ingest names in allow_cidrs (at start): a flood
    // from elsewhere cannot lock them out. Those encoders are trusted hosts, and are not
    // held to the per-address cap either: one contribution box may publish many channels.
    // The same for the readers a pull output names (another region's node relaying many
    // channels from one address).
    let allowed: Vec<_> = cfg
        .channels
        .values()
        .flat_map(|c| {
            let ingests = c.ingests.values().flat_map(|i| i.allow_cidrs.iter());
            let outputs = c.outputs.values().flat_map(|o| o.allow_cidrs.iter());
            ingests.chain(outputs).copied()
        })
        .collect();
    let srt_limits = Arc::new(sluice_ingest::SrtLimits::default());
    let srt = SrtSetup {
        addr: cfg.server.srt_listen,
        admit: srt_listen::admission(&srt_limits, allowed.clone()),
        limits: srt_limits,
        router: live_router.clone(),
    };
    let runtime = Runtime::start(
        cfg.clone(),
        Shared {
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            timeline_start,
            init_version_base,
            geodb,
            state: state.clone(),
            router: live_router.clone(),
            srt,
            status: Arc::default(),
        },
    )
    .await?;
    let control = Arc::new(Control::new(runtime, text, config_path.clone())?);
    let _ = state.api.set(control.clone());
    tracker.spawn(control.clone().watch(WATCH_PERIOD, cancel.clone()));
    let limits = http_limits();
    let admission = AdmissionTable::new(
        "http",
        AdmissionPolicy {
            max_total: limits.max_connections,
            // One address may hold at most a quarter of the slots, however it is configured.
            max_per_address: limits
                .max_per_address
                .min(limits.max_connections / 4)
                .max(1),
            exempt: cfg.server.trusted_proxies.clone(),
            reserved: 0,
            reserved_for: vec![],
        },
    );
    let http_workers = Arc::new(WorkerPool::per_core("http").context("HTTP worker threads")?);
    // HTTPS shares the HTTP workers and connection slots.
    let for_https = (
        state.clone(),
        limits.clone(),
        http_workers.clone(),
        admission.clone(),
    );
    servers.spawn(listen::supervised_accept_loop(
        "HTTP",
        http,
        admission,
        limits.drain,
        cancel.clone(),
        move |stream, peer, cancel| {
            let (state, limits) = (state.clone(), limits.clone());
            http_workers.serve(stream, move |stream| async move {
                sluice_distribution::serve_http_connection(stream, peer, state, &limits, cancel)
                    .await
            })
        },
    ));
    if let Some((https, acceptor)) = https {
        let (state, limits, workers, admission) = for_https;
        servers.spawn(listen::supervised_accept_loop(
            "HTTPS",
            https,
            admission,
            limits.drain,
            cancel.clone(),
            move |stream, peer, cancel| {
                let (state, limits, acceptor) = (state.clone(), limits.clone(), acceptor.clone());
                workers.serve(stream, move |stream| async move {
                    // The handshake is bounded like a request's headers.
                    let tls =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match tls.await {
                        Ok(Ok(tls)) => {
                            sluice_distribution::serve_http_connection(
                                tls, peer, state, &limits, cancel,
                            )
                            .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                })
            },
        ));
    }
    let router: Arc<dyn sluice_ingest::PublishRouter> = live_router;
    let limits = RtmpLimits::default();
    let admission = AdmissionTable::new(
        "rtmp",
        AdmissionPolicy {
            max_total: limits.max_connections,
            max_per_address: limits.max_per_address,
            exempt: allowed.clone(),
            reserved: if allowed.is_empty() {
                0
            } else {
                limits.reserved_for_allowed
            },
            reserved_for: allowed.clone(),
        },
    );
    servers.spawn(listen::supervised_accept_loop(
        "RTMP",
        rtmp,
        admission,
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move |stream, peer, cancel| {
            let (router, limits) = (router.clone(), limits.clone());
            async move {
                sluice_ingest::serve_rtmp_connection(stream, peer, router, &limits, cancel).await
            }
        },
    ));

    // A reload runs beside the signal loop: SIGTERM is heard while it waits.
    shutdown_signal(|| {
        let control = control.clone();
        tracker.spawn(async move { control.reload("SIGHUP", false).await });
    })
    .await;
    tracing::info!("shutting down");
    // Last resort: nothing (a GStreamer state change that never returns, say) may keep
    // the process alive past the deadline.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_DEADLINE + std::time::Duration::from_secs(5));
        eprintln!("sluice: shutdown did not finish in time; exiting");
        std::process::exit(1);
    });
    cancel.cancel();
    let stopped = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        // Viewers and encoders drain (bounded by each listener), engines flush.
        while servers.join_next().await.is_some() {}
        control.shutdown().await;
        tracker.close();
        tracker.wait().await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(
            deadline_s = SHUTDOWN_DEADLINE.as_secs(),
            "shutdown deadline passed; exiting with work still running"
        );
    }
    Ok(())
}

/// Every channel's camera angles: (source, where its live output is).
pub(crate) type AngleSlots = HashMap<Id, Vec<(Id, Arc<sluice_distribution::AngleSlot>)>>;

/// What the HTTP side serves for `cfg`'s distributions, on the engines' outputs (and the
/// channels' camera angles).
pub(crate) fn build_catalog(
    cfg: &Config,
    (outputs, angles): (&HashMap<(Id, Id), Arc<EngineOutput>>, &AngleSlots),
    geodb: &Option<Arc<GeoDb>>,
    stopped: &BTreeSet<Id>,
    counts: Option<&sluice_distribution::RequestCounts>,
) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog {
        trusted_proxies: cfg.server.trusted_proxies.clone(),
        geodb: geodb.clone(),
        ..Catalog::default()
    };
    for (dist_id, dist) in &cfg.distributions {
        // By priority (then as listed): the healthy engine of lowest priority serves.
        let mut engines: Vec<_> = dist
            .engines
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let out = outputs.get(&(dist.channel.clone(), e.clone()))?;
                let priority = cfg.channels.get(&dist.channel)?.engines.get(e)?.priority;
                Some(((priority, i), (e.clone(), out.clone())))
            })
            .collect();
        engines.sort_by_key(|(order, _)| *order);
        let engines = engines.into_iter().map(|(_, e)| e).collect();
        if dist.geo.is_some() && geodb.is_none() && !outputs.is_empty() {
            tracing::warn!(distribution = %dist_id, "geo rule without a country database (server.geoip_database): every viewer is refused");
        }
        let geo = dist.geo.clone().map(|rule| Geo {
            rule,
            db: geodb.clone(),
        });
        let policy = Policy::new(
            geo,
            dist.ip.clone(),
            dist.allowed_origins.clone(),
            &dist.token,
        )
        .with_context(|| format!("distribution {dist_id}"))?;
        catalog.distributions.insert(
            dist_id.clone(),
            DistributionEntry {
                policy: Arc::new(policy),
                overrides: dist.overrides.clone(),
                outputs: dist.outputs.iter().map(|o| output_kind(*o)).collect(),
                max_kbps: (dist.max_kbps > 0).then_some(dist.max_kbps),
                enabled: dist.enabled,
                engines,
                target_latency: (dist.target_latency_seconds > 0.0)
                    .then(|| secs_f64_to_nanos(dist.target_latency_seconds)),
                stopped: stopped.contains(&dist.channel),
                audio_tracks: dist
                    .audio_tracks
                    .as_ref()
                    .map(|ids| ids.iter().map(|id| source_rendition(id.as_str())).collect()),
                angles: angles.get(&dist.channel).cloned().unwrap_or_default(),
                counts: counts.map_or_else(sluice_distribution::unused_counts, |c| {
                    c.counts_for(dist_id)
                }),
            },
        );
    }
    Ok(catalog)
}

/// A generated source's encoded output (a test pattern, the slate) fed to a channel.
pub(crate) fn publisher_sink(
    publisher: sluice_ingest::Publisher,
) -> Arc<dyn sluice_engine::EncodedSink> {
    let publisher = Mutex::new(publisher);
    Arc::new(move |ev: EncodedEvent| {
        let mut p = publisher.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            EncodedEvent::VideoConfig { config, .. } => p.video_config(config),
            EncodedEvent::AudioConfig(c) => p.audio_config(c),
            EncodedEvent::Video { frame, .. } | EncodedEvent::Audio(frame) => p.push(frame),
        }
    })
}

/// Test builds only: `SLUICE_TEST_SLATE_TIMEOUT_SECS=N` replaces every channel's slate
/// timeout (minutes in the configuration), so end-to-end tests can see a channel close.
pub(crate) fn slate_timeout_override() -> Option<std::time::Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let secs: u64 = std::env::var("SLUICE_TEST_SLATE_TIMEOUT_SECS")
        .ok()?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(secs))
}

/// How long a clean shutdown may take: connections drain (5 s), engines finish their
/// last segments, pipelines stop.
pub const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

/// Viewers may hold at most the file descriptors the process has, less a reserve for
/// encoders (RTMP) and GStreamer: idle viewers can never lock publishers out.
fn http_limits() -> HttpLimits {
    const RESERVED: u64 = 512;
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let mut limits = HttpLimits::default();
    let cap = nofile.saturating_sub(RESERVED).max(64);
    limits.max_connections = limits
        .max_connections
        .min(usize::try_from(cap).unwrap_or(usize::MAX));
    // One address may hold at most a quarter of the slots, however it is configured.
    limits.max_per_address = limits
        .max_per_address
        .min(limits.max_connections / 4)
        .max(1);
    tracing::info!(
        nofile,
        http_max = limits.max_connections,
        http_per_address = limits.max_per_address,
        "HTTP connection limits"
    );
    limits
}

/// Waits for SIGINT or SIGTERM; each SIGHUP in between runs `on_hangup`.
async fn shutdown_signal(mut on_hangup: impl FnMut()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => on_hangup(),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::session_grid;

    #[test]
    fn grid_is_a_common_multiple() {
        assert_eq!(session_grid([2.0, 3.0].into_iter()), 6_000_000_000);
        assert_eq!(session_grid([2.0, 2.0, 1.0].into_iter()), 2_000_000_000);
        assert_eq!(session_grid([0.5].into_iter()), 500_000_000);
        assert_eq!(session_grid([29.0, 30.0].into_iter()), 30_000_000_000);
        assert_eq!(session_grid(std::iter::empty()), 1_000_000);
    }
}
