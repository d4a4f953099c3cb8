//! `GET /metrics` during a live stream, read with an independent Prometheus text parser:
//! counters rise, gauges match what the test did (viewers, refusals by reason), and no
//! label value ever comes from a request.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use crate::support::*;

const CONFIG: &str = r#"
[channels.live.ingests.main]
protocol = "rtmp"
stream_key = "metrics-key"
[channels.live.engines.copy]
ladder = "passthrough"

[distributions.open]
channel = "live"

[distributions.lab]
channel = "live"
ip = { mode = "deny", cidrs = ["127.0.0.0/8"] }
"#;

fn scrape(server: &Server) -> Scrape {
    let (status, headers, body) = get(&server.url("/metrics"));
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(body).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_follow_a_live_stream_and_labels_come_from_the_configuration() {
    let _heavy = heavy();
    let server = Server::start("metrics", CONFIG);
    let _publisher = Publisher::start(&server.rtmp_url("metrics-key"), 60, "320x180");
    let media = "/live/open/cmaf/source/index.m3u8";
    let playlist = server.wait_segments(media, 3, Duration::from_secs(30));

    // One viewer: a playlist and three segments.
    for s in playlist.segments.iter().take(3) {
        assert_eq!(
            get(&server.url(&format!("/live/open/cmaf/source/{}", s.uri))).0,
            200
        );
    }
    // Three refusals by IP rule, and requests naming things that do not exist.
    for _ in 0..3 {
        assert_eq!(get(&server.url("/live/lab/cmaf/index.m3u8")).0, 403);
    }
    assert_eq!(get(&server.url("/live/evil-dist/cmaf/index.m3u8")).0, 404);
    assert_eq!(
        get(&server.url("/live/open/cmaf/evil-rendition/index.m3u8")).0,
        404
    );

    let first = scrape(&server);
    let live = [("channel", "live")];
    let bytes = value(&first, "sluice_ingest_bytes_total", &live).unwrap();
    assert!(bytes > 0.0);
    assert_eq!(
        value(
            &first,
            "sluice_ingest_live",
            &[("channel", "live"), ("ingest", "main")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &first,
            "sluice_engine_newest_segment",
            &[("engine", "copy"), ("rendition", "source")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(&first, "sluice_engine_live", &[("engine", "copy")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &first,
            "sluice_distribution_viewers",
            &[("distribution", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &first,
            "sluice_distribution_viewers",
            &[("distribution", "lab")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &first,
            "sluice_distribution_refusals_total",
            &[("distribution", "lab"), ("reason", "ip")]
        ),
        Some(3.0)
    );
    let segments = [
        ("distribution", "open"),
        ("kind", "segment"),
        ("status", "2xx"),
    ];
    assert!(value(&first, "sluice_distribution_requests_total", &segments).unwrap() >= 3.0);
    assert_eq!(
        value(
            &first,
            "sluice_distribution_requests_total",
            &[
                ("distribution", "lab"),
                ("kind", "multivariant"),
                ("status", "4xx")
            ]
        ),
        Some(3.0)
    );
    assert!(
        value(
            &first,
            "sluice_distribution_egress_bytes_total",
            &[("distribution", "open")]
        )
        .unwrap()
            > 1000.0
    );
    assert!(value(&first, "sluice_process_resident_memory_bytes", &[]).unwrap() > 1e6);

    // Label values: configuration ids and fixed words only.
    for s in &first.samples {
        for (k, v) in s.labels.iter() {
            assert!(!v.contains("evil"), "{} {k}={v}", s.metric);
            if k == "distribution" {
                assert!(v == "open" || v == "lab", "{} {k}={v}", s.metric);
            }
        }
    }

    // Counters rise with the stream.
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape(&server);
    assert!(value(&second, "sluice_ingest_bytes_total", &live).unwrap() > bytes);
    assert!(value(&second, "sluice_ingest_bitrate_kbps", &live).unwrap() > 0.0);
}

/// `server.metrics = false`: no /metrics at all.
#[test]
fn metrics_can_be_turned_off() {
    let server = Server::start_with_server_keys("metrics-off", "metrics = false", CONFIG);
    assert_eq!(get(&server.url("/metrics")).0, 404);
    assert_eq!(get(&server.url("/healthz")).0, 200);
}
