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

use crate::runtime::StatusView;

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

struct Sluice {
    status: Arc<ArcSwap<StatusView>>,
    http: Arc<HttpState>,
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

        // Engines, per rendition.
        let mut live = Vec::new();
        let mut newest = Vec::new();
        for (c, engine, output) in view.engines() {
            let labels = vec![("channel", c.to_string()), ("engine", engine.to_string())];
            live.push((labels.clone(), u64::from(output.healthy())));
            for rendition in output.rendition_names() {
                if let Some(msn) = output.latest_msn(&rendition) {
                    let mut l = labels.clone();
                    l.push(("rendition", rendition));
                    newest.push((l, msn));
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

        // Distributions.
        let viewers = self.http.viewers.counts();
        family(
            &mut e,
            "sluice_distribution_viewers",
            "Distinct viewers (address and user agent) that fetched a media playlist in the last 30 s",
            MetricType::Gauge,
            view.distribution_ids()
                .map(|d| {
                    (
                        vec![("distribution", d.to_string())],
                        viewers.get(d).copied().unwrap_or(0),
                    )
                })
                .collect(),
        )?;
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
pub fn registry(status: Arc<ArcSwap<StatusView>>, http: Arc<HttpState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Sluice { status, http }));
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
