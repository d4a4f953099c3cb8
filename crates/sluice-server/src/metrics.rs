//! `GET /metrics`: the Prometheus text format, made at scrape time from what the server
//! already keeps (the published status view, the channel buses' counters, the HTTP
//! layer's request, refusal and viewer counts). Nothing is added to the media path for
//! it. Every label value is an id from the configuration (channel, ingest, engine,
//! rendition, distribution) or a fixed word (kind, status class, refusal reason): never
//! anything a client sent, so the number of series stays bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sluice_distribution::{HttpState, REQUEST_KINDS, STATUS_CLASSES};

use crate::runtime::{LiveRouter, StatusView};

type Labels = Vec<(&'static str, String)>;

/// One metric family: its name, help, type and every (labels, value).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: Vec<(Labels, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder)?,
        }
    }
    Ok(())
}

/// A gauge family of fractional values.
fn gauge_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, f64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

struct Sluice {
    status: Arc<ArcSwap<StatusView>>,
    http: Arc<HttpState>,
    router: Arc<LiveRouter>,
}

impl std::fmt::Debug for Sluice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sluice metrics")
    }
}

impl Collector for Sluice {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let view = self.status.load();
        let channel = |c: &str| vec![("channel", c.to_string())];

        // Ingest, per channel.
        let buses: Vec<_> = view.buses().collect();
        let per_bus = |f: &dyn Fn(&sluice_ingest::ChannelBus) -> u64| -> Vec<(Labels, u64)> {
            buses
                .iter()
                .map(|(c, bus, _)| (channel(c.as_str()), f(bus)))
                .collect()
        };
        family(
            &mut e,
            "sluice_ingest_bytes",
            "Bytes of media frames received, by channel",
            MetricType::Counter,
            per_bus(&|b| b.stats.bytes_in.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_frames",
            "Media frames received, by channel",
            MetricType::Counter,
            per_bus(&|b| b.stats.frames_in.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_sessions",
            "Input sessions started (a publisher, a failover, a return)",
            MetricType::Counter,
            per_bus(&|b| b.stats.sessions.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_switches",
            "Switches from one feed to another (failover, return, slate)",
            MetricType::Counter,
            per_bus(&|b| b.stats.switches.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_takeovers",
            "Silent publishers replaced by a new connection of the same ingest",
            MetricType::Counter,
            per_bus(&|b| b.stats.takeovers.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_events_dropped",
            "Media events engines lost by falling behind",
            MetricType::Counter,
            per_bus(&|b| b.stats.events_dropped.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_ingest_bitrate_kbps",
            "Input bitrate over the last 2 s, by channel",
            MetricType::Gauge,
            buses
                .iter()
                .map(|(c, _, kbps)| (channel(c.as_str()), u64::from(*kbps)))
                .collect(),
        )?;
        family(
            &mut e,
            "sluice_ingest_live",
            "1 for the ingest feeding its channel, live",
            MetricType::Gauge,
            buses
                .iter()
                .filter_map(|(c, bus, _)| {
                    let (ingest, live) = bus.owner()?;
                    let labels = vec![("channel", c.to_string()), ("ingest", ingest)];
                    Some((labels, u64::from(live)))
                })
                .collect(),
        )?;

        // Audio sources, per channel and source.
        let sources: Vec<_> = view.sources().collect();
        let per_source = |f: &dyn Fn(&sluice_ingest::ChannelBus) -> u64| -> Vec<(Labels, u64)> {
            sources
                .iter()
                .map(|(c, s, bus)| {
                    let labels = vec![("channel", c.to_string()), ("source", s.to_string())];
                    (labels, f(bus))
                })
                .collect()
        };
        family(
            &mut e,
            "sluice_source_live",
            "1 while an audio source's publisher is connected (its track is silent otherwise)",
            MetricType::Gauge,
            per_source(&|b| u64::from(b.is_publishing())),
        )?;
        family(
            &mut e,
            "sluice_source_bytes",
            "Bytes of audio received from a source",
            MetricType::Counter,
            per_source(&|b| b.stats.bytes_in.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_source_sessions",
            "Sessions of a source (a publisher, or placed again after drifting)",
            MetricType::Counter,
            per_source(&|b| b.stats.sessions.load(Relaxed)),
        )?;

        let mut connects = Vec::new();
        let mut reconnects = Vec::new();
        for (c, bus, _) in &buses {
            for (ingest, n) in bus.connects() {
                let labels = vec![("channel", c.to_string()), ("ingest", ingest)];
                reconnects.push((labels.clone(), n.saturating_sub(1)));
                connects.push((labels, n));
            }
        }
        family(
            &mut e,
            "sluice_ingest_connects",
            "Publisher connections accepted (pull ingests: connections made), by ingest",
            MetricType::Counter,
            connects,
        )?;
        family(
            &mut e,
            "sluice_ingest_reconnects",
            "Connections of an ingest after its first",
            MetricType::Counter,
            reconnects,
        )?;
        family(
            &mut e,
            "sluice_ingest_refusals",
            "Publishers refused, by protocol and reason",
            MetricType::Counter,
            self.router
                .refusals()
                .into_iter()
                .map(|(protocol, reason, n)| {
                    let labels = vec![
                        ("protocol", protocol.to_string()),
                        ("reason", reason.to_string()),
                    ];
                    (labels, n)
                })
                .collect(),
        )?;

        // Engines, and what they produce by output and rendition.
        let mut live = Vec::new();
        let mut newest = Vec::new();
        let mut speed = Vec::new();
        let mut lag = Vec::new();
        let mut restarts = Vec::new();
        let mut dropped = Vec::new();
        let mut produced: [Vec<(Labels, u64)>; 4] = Default::default();
        for (c, engine) in view.engines() {
            let labels = vec![
                ("channel", c.to_string()),
                ("engine", engine.id.to_string()),
            ];
            let output = &engine.output;
            live.push((labels.clone(), u64::from(output.healthy())));
            speed.push((labels.clone(), engine.stats.speed()));
            lag.push((labels.clone(), engine.stats.input_lag().as_secs_f64()));
            restarts.push((labels.clone(), engine.stats.restarts.load(Relaxed)));
            dropped.push((labels.clone(), engine.stats.dropped_frames.load(Relaxed)));
            for rendition in output.rendition_names() {
                if let Some(msn) = output.latest_msn(&rendition) {
                    let mut l = labels.clone();
                    l.push(("rendition", rendition));
                    newest.push((l, msn));
                }
            }
            for (kind, rendition, p) in output.produced() {
                let mut l = labels.clone();
                l.push(("output", kind.as_str().to_string()));
                l.push(("rendition", rendition));
                let values = [p.segments, p.segment_bytes, p.parts, p.part_bytes];
                for (series, value) in produced.iter_mut().zip(values) {
                    series.push((l.clone(), value));
                }
            }
        }
        family(
            &mut e,
            "sluice_engine_live",
            "1 while the engine makes segments",
            MetricType::Gauge,
            live,
        )?;
        family(
            &mut e,
            "sluice_engine_newest_segment",
            "Media sequence number of the newest segment, by rendition",
            MetricType::Gauge,
            newest,
        )?;
        gauge_f64(
            &mut e,
            "sluice_engine_speed",
            "Output media seconds per wall second over the last 2 s (1: keeping up)",
            speed,
        )?;
        gauge_f64(
            &mut e,
            "sluice_engine_input_lag_seconds",
            "How far the engine's output runs behind its input, in media time",
            lag,
        )?;
        // Recordings, per recording engine.
        let mut rec: [Vec<(Labels, u64)>; 4] = Default::default();
        for (c, engine) in view.engines() {
            let Some(r) = &engine.recorder else { continue };
            let labels = vec![
                ("channel", c.to_string()),
                ("engine", engine.id.to_string()),
            ];
            let active = matches!(r.state(), crate::recorder::RecorderState::Recording(_));
            rec[0].push((labels.clone(), u64::from(active)));
            rec[1].push((labels.clone(), r.segments.load(Relaxed)));
            rec[2].push((labels.clone(), r.bytes.load(Relaxed)));
            rec[3].push((labels, r.errors.load(Relaxed)));
        }
        let [active, segments, bytes, errors] = rec;
        family(
            &mut e,
            "sluice_recording_active",
            "1 while an engine's recording is being written",
            MetricType::Gauge,
            active,
        )?;
        family(
            &mut e,
            "sluice_recording_segments",
            "Segments written to recordings",
            MetricType::Counter,
            segments,
        )?;
        family(
            &mut e,
            "sluice_recording_bytes",
            "Bytes written to recordings",
            MetricType::Counter,
            bytes,
        )?;
        family(
            &mut e,
            "sluice_recording_errors",
            "Recording writes that failed (each ends a recording; live delivery goes on)",
            MetricType::Counter,
            errors,
        )?;
        let outputs: Vec<_> = view.outputs().collect();
        let per_output = |f: &dyn Fn(&crate::runtime::OutputView) -> u64| -> Vec<(Labels, u64)> {
            outputs
                .iter()
                .map(|(c, o)| {
                    (
                        vec![
                            ("channel", c.to_string()),
                            ("output", o.id.to_string()),
                            ("protocol", o.protocol.to_string()),
                        ],
                        f(o),
                    )
                })
                .collect()
        };
        family(
            &mut e,
            "sluice_output_running",
            "1 for a channel output that is running (a pull output with readers)",
            MetricType::Gauge,
            per_output(&|o| u64::from(o.state() == "running")),
        )?;
        family(
            &mut e,
            "sluice_output_readers",
            "Readers connected to a pull output now",
            MetricType::Gauge,
            per_output(&|o| o.stats.readers.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_output_connects",
            "Readers a pull output accepted",
            MetricType::Counter,
            per_output(&|o| o.stats.connects.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_output_refusals",
            "Readers a pull output refused (address not allowed, output disabled)",
            MetricType::Counter,
            per_output(&|o| o.stats.refused.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_output_bytes",
            "Media bytes an output sent",
            MetricType::Counter,
            per_output(&|o| o.stats.bytes.load(Relaxed)),
        )?;
        family(
            &mut e,
            "sluice_engine_restarts",
            "Pipelines failed or stalled and started again, and engine tasks restarted",
            MetricType::Counter,
            restarts,
        )?;
        family(
            &mut e,
            "sluice_engine_dropped_frames",
            "Input frames dropped because the engine was behind",
            MetricType::Counter,
            dropped,
        )?;
        let [segments, segment_bytes, parts, part_bytes] = produced;
        for (name, help, series) in [
            (
                "sluice_engine_segments",
                "Media segments produced, by output and rendition",
                segments,
            ),
            (
                "sluice_engine_segment_bytes",
                "Bytes of media segments produced",
                segment_bytes,
            ),
            (
                "sluice_engine_parts",
                "LL-HLS parts produced, by rendition",
                parts,
            ),
            (
                "sluice_engine_part_bytes",
                "Bytes of LL-HLS parts produced",
                part_bytes,
            ),
        ] {
            family(&mut e, name, help, MetricType::Counter, series)?;
        }

        // Distributions.
        let audiences = self.http.viewers.report();
        let mut viewers = Vec::new();
        let mut countries = Vec::new();
        let mut devices = Vec::new();
        let mut sent = Vec::new();
        // Configured distributions only (a viewer of one just removed is not reported).
        for d in view.distribution_ids() {
            let labels = vec![("distribution", d.to_string())];
            let Some(a) = audiences.get(d) else {
                viewers.push((labels, 0));
                continue;
            };
            viewers.push((labels.clone(), a.viewers));
            // Country codes come from the geo database (two letters or `unknown`):
            // bounded like the ids.
            for (country, n) in &a.countries {
                let mut l = labels.clone();
                l.push(("country", country.clone()));
                countries.push((l, *n));
            }
            for (device, n) in &a.devices {
                let mut l = labels.clone();
                l.push(("device", device.to_string()));
                devices.push((l, *n));
            }
            for (target, n) in &a.sent_to {
                let mut l = labels.clone();
                l.push(("target", target.clone()));
                sent.push((l, *n));
            }
        }
        for (name, help, series) in [
            (
                "sluice_distribution_viewers",
                "Viewers now: sessions (else address and user agent) seen in the last three target durations, at least 10 s",
                viewers,
            ),
            (
                "sluice_distribution_viewers_by_country",
                "Viewers now by country (geo database; unknown: not placed)",
                countries,
            ),
            (
                "sluice_distribution_viewers_by_device",
                "Viewers now by device type",
                devices,
            ),
            (
                "sluice_distribution_viewers_sent",
                "Viewers who asked for this distribution, sent by an override rule to the target",
                sent,
            ),
        ] {
            family(&mut e, name, help, MetricType::Gauge, series)?;
        }
        let mut requests = Vec::new();
        let mut egress = Vec::new();
        for (d, counts) in self.http.requests.all() {
            for (k, kind) in REQUEST_KINDS.iter().enumerate() {
                for (s, class) in STATUS_CLASSES.iter().enumerate() {
                    let n = counts.requests(k, s);
                    if n > 0 {
                        let labels = vec![
                            ("distribution", d.to_string()),
                            ("kind", (*kind).to_string()),
                            ("status", (*class).to_string()),
                        ];
                        requests.push((labels, n));
                    }
                }
            }
            egress.push((vec![("distribution", d.to_string())], counts.egress_bytes()));
        }
        family(
            &mut e,
            "sluice_distribution_requests",
            "Requests answered, by distribution, kind and status class",
            MetricType::Counter,
            requests,
        )?;
        family(
            &mut e,
            "sluice_distribution_egress_bytes",
            "Response body bytes sent, by distribution",
            MetricType::Counter,
            egress,
        )?;
        family(
            &mut e,
            "sluice_distribution_refusals",
            "Viewers refused, by distribution and reason",
            MetricType::Counter,
            self.http
                .refusals
                .all()
                .into_iter()
                .map(|(d, why, n)| {
                    (
                        vec![
                            ("distribution", d.to_string()),
                            ("reason", why.as_str().to_string()),
                        ],
                        n,
                    )
                })
                .collect(),
        )?;

        family(
            &mut e,
            "sluice_http_parked_requests",
            "Blocking requests (LL-HLS playlist reloads, preload hints) held now",
            MetricType::Gauge,
            vec![(Vec::new(), self.http.parked.load(Relaxed))],
        )?;

        // Connections, by listener.
        let listeners = crate::admission::report();
        family(
            &mut e,
            "sluice_open_connections",
            "Connections open now, by listener (http counts HTTPS too)",
            MetricType::Gauge,
            listeners
                .iter()
                .map(|(l, open, _)| (vec![("listener", l.to_string())], *open as u64))
                .collect(),
        )?;
        family(
            &mut e,
            "sluice_connections_refused",
            "Connections refused before anything was read, by listener and reason",
            MetricType::Counter,
            listeners
                .iter()
                .flat_map(|(l, _, refused)| {
                    refused.iter().map(move |(why, n)| {
                        let labels = vec![
                            ("listener", l.to_string()),
                            ("reason", why.as_str().to_string()),
                        ];
                        (labels, *n)
                    })
                })
                .collect(),
        )?;

        // The process.
        family(
            &mut e,
            "sluice_process_resident_memory_bytes",
            "Resident set size",
            MetricType::Gauge,
            resident_bytes()
                .map(|b| (Vec::new(), b))
                .into_iter()
                .collect(),
        )?;
        Ok(())
    }
}

/// The process's resident set size, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The registry `/metrics` encodes.
pub fn registry(
    status: Arc<ArcSwap<StatusView>>,
    http: Arc<HttpState>,
    router: Arc<LiveRouter>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Sluice {
        status,
        http,
        router,
    }));
    registry
}

/// The text of one scrape.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}
