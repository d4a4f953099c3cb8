//! Wiring: a validated configuration becomes buses, engines, packagers,
//! listeners and the HTTP catalog; then supervision until a signal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sluice_config::{Config, IngestProtocol, LadderRef, Output};
use sluice_core::time::secs_f64_to_nanos;
use sluice_core::{Id, MediaTime};
use sluice_distribution::{
    Catalog, DistributionEntry, Geo, GeoDb, HttpLimits, HttpState, Policy, SessionKey,
};
use sluice_engine::{
    EncodedEvent, EngineMode, RenditionSettings, TestPattern, TestPatternSettings,
    TranscodeSettings,
};
use sluice_ingest::pull::PullSpec;
use sluice_ingest::{ChannelBus, DEFAULT_BUS_CAPACITY, FeedSpec, KeyEntry, KeyRouter, RtmpLimits};
use sluice_package::{
    AudioSpec, EngineOutput, OutputKind, Packager, PackagerSettings, RenditionSpec,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{AdmissionPolicy, AdmissionTable};
use crate::engine_runner;
use crate::listen;
use crate::srt_listen;
use crate::supervise::supervise;
use crate::workers::WorkerPool;

/// Compressed input an engine may queue before it drops to the next keyframe (a
/// backstop: the bound that matters is two segments of media time).
const ENGINE_INPUT_BYTES: u64 = 32 << 20;

fn output_kind(o: Output) -> OutputKind {
    match o {
        Output::Cmaf => OutputKind::Cmaf,
        Output::Ts => OutputKind::Ts,
    }
}

/// Sessions start on a common multiple of every engine's segment duration, so that each
/// engine's first segment after a seam starts on its own grid (capped at a minute, past
/// which the longest duration is used).
fn session_grid(segment_seconds: impl Iterator<Item = f64>) -> MediaTime {
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

pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    sluice_engine::check_elements()?;
    for what in sluice_config::not_served_yet(&cfg) {
        tracing::warn!("accepted, not served yet: {what}");
    }
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut patterns: Vec<TestPattern> = Vec::new();
    let mut router = KeyRouter::default();
    // (channel, engine) -> what the HTTP side reads.
    let mut outputs: HashMap<(Id, Id), Arc<EngineOutput>> = HashMap::new();
    // Media time starts at the wall clock: segment numbers and init versions of this run
    // never repeat those of an earlier run, whose segments caches may hold as immutable.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let timeline_start = sluice_core::time::duration_to_nanos(since_epoch);
    let init_version_base = u32::try_from(since_epoch.as_secs()).unwrap_or(u32::MAX / 2);

    for (channel_id, channel) in &cfg.channels {
        let grid = session_grid(channel.engines.values().map(|e| e.ladder.segment_seconds));
        let bus = ChannelBus::new(
            channel_id.clone(),
            grid,
            DEFAULT_BUS_CAPACITY,
            timeline_start,
        );

        let mut engines: Vec<_> = channel.engines.iter().collect();
        engines.sort_by_key(|(id, e)| (e.priority, (*id).clone()));
        for (index, (engine_id, engine)) in engines.into_iter().enumerate() {
            let ladder = &engine.ladder;
            let settings = PackagerSettings {
                segment_duration: secs_f64_to_nanos(ladder.segment_seconds),
                window: secs_f64_to_nanos(ladder.window_seconds),
                cmaf: engine.outputs.contains(&Output::Cmaf),
                ts: engine.outputs.contains(&Output::Ts),
                // Each engine its own range of init versions: a viewer that fails over
                // to another engine fetches that engine's init segment, never a cached
                // one of the same name with other parameter sets.
                init_version_base: init_version_base
                    .saturating_add(u32::try_from(index).unwrap_or(0).saturating_mul(100_000)),
                part_duration: secs_f64_to_nanos(ladder.part_seconds),
            };
            let (mode, renditions, audio) = match &engine.ladder_ref {
                LadderRef::Passthrough => (
                    EngineMode::Passthrough,
                    vec![RenditionSpec {
                        name: Id::new("source").expect("valid id"),
                        width: 0,
                        height: 0,
                        video_kbps: 0,
                    }],
                    Some(AudioSpec { kbps: 0 }),
                ),
                LadderRef::Named(_) => (
                    EngineMode::Transcode(TranscodeSettings {
                        segment_duration: settings.segment_duration,
                        renditions: ladder
                            .renditions
                            .iter()
                            .map(|r| RenditionSettings {
                                width: r.width,
                                height: r.height,
                                video_kbps: r.video_kbps,
                            })
                            .collect(),
                        audio_kbps: ladder.audio_kbps,
                        preset: ladder.encoder_preset.clone(),
                        max_queued_bytes: ENGINE_INPUT_BYTES,
                        max_queued_time: settings.segment_duration.saturating_mul(2),
                    }),
                    ladder
                        .renditions
                        .iter()
                        .map(|r| RenditionSpec {
                            name: r.name.clone(),
                            width: r.width,
                            height: r.height,
                            video_kbps: r.video_kbps,
                        })
                        .collect(),
                    Some(AudioSpec {
                        kbps: ladder.audio_kbps,
                    }),
                ),
            };
            let (packager, output) = Packager::new(settings, renditions, audio);
            let packager = Arc::new(Mutex::new(packager));
            outputs.insert((channel_id.clone(), engine_id.clone()), output);
            let name = format!("{channel_id}/{engine_id}");
            tasks.spawn(supervise(format!("engine {name}"), cancel.clone(), {
                let (bus, cancel) = (bus.clone(), cancel.clone());
                let mut runs = 0u64;
                move || {
                    runs += 1;
                    engine_runner::run(
                        name.clone(),
                        mode.clone(),
                        bus.subscribe(),
                        packager.clone(),
                        cancel.clone(),
                        runs > 1,
                    )
                }
            }));
        }

        if channel.slate.enabled {
            // The slate is made at the size of the largest rendition any engine makes.
            let (width, height) = channel
                .engines
                .values()
                .flat_map(|e| e.ladder.renditions.iter())
                .map(|r| (r.width, r.height))
                .max_by_key(|(w, h)| w * h)
                .unwrap_or((1280, 720));
            let picture = TestPatternSettings {
                width,
                height,
                fps: 30,
                video_kbps: 800,
                look: sluice_engine::Look::Slate {
                    image: channel.slate.image.clone(),
                },
            };
            let timeout =
                std::time::Duration::from_secs(u64::from(channel.slate.timeout_minutes) * 60);
            let slate_timeout = slate_timeout_override().unwrap_or(timeout);
            tasks.spawn(supervise(format!("slate {channel_id}"), cancel.clone(), {
                let (bus, cancel) = (bus.clone(), cancel.clone());
                move || {
                    crate::slate::watch(bus.clone(), picture.clone(), slate_timeout, cancel.clone())
                }
            }));
        }

        for (ingest_id, ingest) in &channel.ingests {
            match ingest.protocol {
                IngestProtocol::Rtmp | IngestProtocol::Srt => {
                    if let Some(key) = &ingest.stream_key {
                        router.keys.insert(
                            key.clone(),
                            KeyEntry {
                                ingest: ingest_id.clone(),
                                protocol: ingest.protocol,
                                enabled: ingest.enabled,
                                allow_cidrs: ingest.allow_cidrs.clone(),
                                passphrase: ingest.passphrase.clone(),
                                priority: ingest.priority,
                                max_kbps: ingest.max_kbps,
                                bus: bus.clone(),
                            },
                        );
                    }
                }
                IngestProtocol::TestPattern if ingest.enabled => {
                    let publisher = bus.begin_feed(
                        format!("test-pattern:{ingest_id}"),
                        FeedSpec {
                            ingest: ingest_id.to_string(),
                            priority: ingest.priority,
                        },
                        sluice_ingest::bus::STALE_AFTER,
                    )?;
                    let tp = &ingest.test_pattern;
                    let pattern = TestPattern::start(
                        &TestPatternSettings {
                            width: tp.width,
                            height: tp.height,
                            fps: tp.fps,
                            ..Default::default()
                        },
                        publisher_sink(publisher),
                    )
                    .with_context(|| {
                        format!("cannot start test pattern {channel_id}/{ingest_id}")
                    })?;
                    tracing::info!(channel = %channel_id, ingest = %ingest_id, "test pattern started");
                    patterns.push(pattern);
                }
                IngestProtocol::RtmpPull | IngestProtocol::SrtPull if ingest.enabled => {
                    let Some(url) = ingest.url.clone() else {
                        anyhow::bail!("{channel_id}/{ingest_id}: a pull ingest needs a url");
                    };
                    let spec = PullSpec {
                        ingest: ingest_id.clone(),
                        url,
                        passphrase: ingest.passphrase.clone(),
                        priority: ingest.priority,
                        max_kbps: ingest.max_kbps,
                    };
                    tasks.spawn(supervise(
                        format!("pull {channel_id}/{ingest_id}"),
                        cancel.clone(),
                        {
                            let (bus, cancel) = (bus.clone(), cancel.clone());
                            move || {
                                sluice_ingest::pull::run_pull(
                                    bus.clone(),
                                    spec.clone(),
                                    cancel.clone(),
                                )
                            }
                        },
                    ));
                }
                IngestProtocol::TestPattern
                | IngestProtocol::RtmpPull
                | IngestProtocol::SrtPull => {}
            }
        }
    }

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
    let catalog = build_catalog(&cfg, &outputs, &geodb)?;

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
    let state = HttpState::new(catalog, sessions);
    let mut reloader = Reloader {
        path: config_path.clone(),
        running: cfg.clone(),
        outputs: outputs.clone(),
        geodb: geodb.clone(),
        state: state.clone(),
    };
    let limits = http_limits();
    let admission = AdmissionTable::new(AdmissionPolicy {
        max_total: limits.max_connections,
        // One address may hold at most a quarter of the slots, however it is configured.
        max_per_address: limits
            .max_per_address
            .min(limits.max_connections / 4)
            .max(1),
        exempt: cfg.server.trusted_proxies.clone(),
        reserved: 0,
        reserved_for: vec![],
    });
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
    let router: Arc<dyn sluice_ingest::PublishRouter> = Arc::new(router);
    let limits = RtmpLimits::default();
    // Slots are kept for the encoders an ingest names in allow_cidrs: a flood from
    // elsewhere cannot lock them out. Those encoders are trusted hosts, and are not held
    // to the per-address cap either: one contribution box may publish many channels.
    let allowed: Vec<_> = cfg
        .channels
        .values()
        .flat_map(|c| c.ingests.values())
        .flat_map(|i| i.allow_cidrs.iter().copied())
        .collect();
    let admission = AdmissionTable::new(AdmissionPolicy {
        max_total: limits.max_connections,
        max_per_address: limits.max_per_address,
        exempt: allowed.clone(),
        reserved: if allowed.is_empty() {
            0
        } else {
            limits.reserved_for_allowed
        },
        reserved_for: allowed.clone(),
    });
    let srt_router = router.clone();
    let allowed_srt = allowed;
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

    // SRT listens only when some ingest takes SRT: nothing else needs the UDP port.
    let srt_ingests = cfg
        .channels
        .values()
        .flat_map(|c| c.ingests.values())
        .any(|i| i.protocol == IngestProtocol::Srt);
    if srt_ingests {
        let limits = Arc::new(sluice_ingest::SrtLimits::default());
        let admit = srt_listen::admission(&limits, allowed_srt);
        let addr = cfg.server.srt_listen;
        // The first bind is checked here, so a taken port stops the start with its reason.
        let first = Mutex::new(Some(srt_listen::bind(addr).await?));
        tracing::info!(srt = %addr, "SRT listening");
        servers.spawn(supervise("SRT listener".to_string(), cancel.clone(), {
            let (router, cancel) = (srt_router, cancel.clone());
            move || {
                let (router, admit, limits, cancel) =
                    (router.clone(), admit.clone(), limits.clone(), cancel.clone());
                let bound = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    let socket = match bound {
                        Some(s) => s,
                        None => match srt_listen::bind(addr).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "SRT listener cannot start again");
                                return;
                            }
                        },
                    };
                    srt_listen::serve(socket, router, admit, limits, cancel).await
                }
            }
        }));
    }

    shutdown_signal(|| reloader.reload()).await;
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
        drop(patterns);
        while tasks.join_next().await.is_some() {}
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

/// What the HTTP side serves for `cfg`'s distributions, on the engines' outputs.
fn build_catalog(
    cfg: &Config,
    outputs: &HashMap<(Id, Id), Arc<EngineOutput>>,
    geodb: &Option<Arc<GeoDb>>,
) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog {
        trusted_proxies: cfg.server.trusted_proxies.clone(),
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
        if dist.geo.is_some() && geodb.is_none() {
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
            },
        );
    }
    Ok(catalog)
}

/// What a configuration reload (SIGHUP) does, given the running configuration and the
/// file's new one.
#[derive(Debug, PartialEq, Eq)]
enum ReloadPlan {
    Unchanged,
    /// Only distributions differ: these (added, changed, removed), applied by replacing
    /// the HTTP catalog.
    Distributions(Vec<String>),
    /// Sections the running server cannot change yet (channels, ingests, engines,
    /// ladders, listeners, the API): the reload is refused as a whole.
    NeedsRestart(Vec<&'static str>),
}

fn reload_plan(running: &Config, next: &Config) -> ReloadPlan {
    let mut fixed = Vec::new();
    if running.server != next.server {
        fixed.push("[server]");
    }
    if running.api != next.api {
        fixed.push("[api]");
    }
    if running.ladders != next.ladders {
        fixed.push("[ladders]");
    }
    if running.channels != next.channels {
        fixed.push("[channels]");
    }
    if !fixed.is_empty() {
        return ReloadPlan::NeedsRestart(fixed);
    }
    let mut changed = Vec::new();
    for (id, d) in &next.distributions {
        match running.distributions.get(id) {
            None => changed.push(format!("{id} (added)")),
            Some(old) if old != d => changed.push(format!("{id} (changed)")),
            Some(_) => {}
        }
    }
    for id in running.distributions.keys() {
        if !next.distributions.contains_key(id) {
            changed.push(format!("{id} (removed)"));
        }
    }
    if changed.is_empty() {
        ReloadPlan::Unchanged
    } else {
        ReloadPlan::Distributions(changed)
    }
}

/// Reads the configuration file again on SIGHUP and applies what the running server
/// can change in place: distributions (rules, tokens, geo, IP, origins, overrides, max
/// bitrate, outputs, the engines they draw on, added or removed). The new catalog
/// replaces the old one atomically: every request from then on is judged by the new
/// rules; requests in flight finish on the one they started with. A file with errors,
/// or one that changes anything else, leaves the running configuration as it is, and
/// says why in the log.
struct Reloader {
    path: Option<PathBuf>,
    running: Config,
    outputs: HashMap<(Id, Id), Arc<EngineOutput>>,
    geodb: Option<Arc<GeoDb>>,
    state: Arc<HttpState>,
}

impl Reloader {
    fn reload(&mut self) {
        let Some(path) = &self.path else {
            tracing::warn!(
                "SIGHUP: running on the embedded default configuration, there is no file to read again"
            );
            return;
        };
        let next = match Config::load(path) {
            Ok(next) => next,
            Err(errors) => {
                for e in &errors.errors {
                    tracing::error!(
                        file = %errors.origin,
                        line = e.line,
                        column = e.column,
                        key = %e.path,
                        "{}",
                        e.message
                    );
                }
                tracing::error!(
                    file = %errors.origin,
                    errors = errors.errors.len(),
                    "configuration reload refused: the file is invalid; the running configuration stays"
                );
                return;
            }
        };
        match reload_plan(&self.running, &next) {
            ReloadPlan::Unchanged => tracing::info!("SIGHUP: configuration unchanged"),
            ReloadPlan::NeedsRestart(sections) => tracing::error!(
                sections = %sections.join(", "),
                "configuration reload refused: these sections cannot change while the server runs yet (restart to apply them); the running configuration stays"
            ),
            ReloadPlan::Distributions(changed) => {
                match build_catalog(&next, &self.outputs, &self.geodb) {
                    Ok(catalog) => {
                        self.state.catalog.store(Arc::new(catalog));
                        self.running = next;
                        tracing::info!(distributions = %changed.join(", "), "configuration reloaded");
                    }
                    Err(e) => tracing::error!(
                        error = %format!("{e:#}"),
                        "configuration reload refused; the running configuration stays"
                    ),
                }
            }
        }
    }
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
fn slate_timeout_override() -> Option<std::time::Duration> {
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
    use super::{ReloadPlan, reload_plan, session_grid};
    use sluice_config::Config;

    fn config(extra: &str) -> Config {
        let src = format!(
            "[channels.a]\n[channels.a.ingests.main]\nprotocol = \"rtmp\"\nstream_key = \"k\"\n\
             [channels.a.engines.src]\nladder = \"passthrough\"\n\
             [distributions.d]\nchannel = \"a\"\nengines = [\"src\"]\n{extra}"
        );
        Config::from_toml_str(&src, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reloads_apply_distributions_and_refuse_the_rest() {
        let running = config("");
        assert_eq!(reload_plan(&running, &config("")), ReloadPlan::Unchanged);
        assert_eq!(
            reload_plan(&running, &config("max_kbps = 900\n")),
            ReloadPlan::Distributions(vec!["d (changed)".into()])
        );
        let added = config("[distributions.e]\nchannel = \"a\"\nengines = [\"src\"]\n");
        assert_eq!(
            reload_plan(&running, &added),
            ReloadPlan::Distributions(vec!["e (added)".into()])
        );
        assert_eq!(
            reload_plan(&added, &running),
            ReloadPlan::Distributions(vec!["e (removed)".into()])
        );
        let mut other = running.clone();
        other.channels.values_mut().for_each(|c| c.ingests.clear());
        other.server.rtmp_listen = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            reload_plan(&running, &other),
            ReloadPlan::NeedsRestart(vec!["[server]", "[channels]"])
        );
    }

    #[test]
    fn grid_is_a_common_multiple() {
        assert_eq!(session_grid([2.0, 3.0].into_iter()), 6_000_000_000);
        assert_eq!(session_grid([2.0, 2.0, 1.0].into_iter()), 2_000_000_000);
        assert_eq!(session_grid([0.5].into_iter()), 500_000_000);
        assert_eq!(session_grid([29.0, 30.0].into_iter()), 30_000_000_000);
        assert_eq!(session_grid(std::iter::empty()), 1_000_000);
    }
}
