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
[channels.live.engines.small]
ladder = "tiny"
outputs = ["cmaf"]

[ladders.tiny]
segment_seconds = 2.0
part_seconds = 0.5
renditions = [{ name = "90p", width = 160, height = 90, video_kbps = 150 }]

[distributions.open]
channel = "live"
engines = ["copy"]

[distributions.lab]
channel = "live"
engines = ["copy"]
ip = { mode = "deny", cidrs = ["127.0.0.0/8"] }
"#;

pub(crate) fn scrape(server: &Server) -> Scrape {
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

pub(crate) fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
    // Two publishers refused: a key nobody configured, and a second publisher of the
    // live ingest.
    let refused = |key: &str| {
        let ended = crate::rtmp_client::try_publish(server.rtmp, key, &[], |_, t| t.ms);
        assert!(ended.is_err(), "{key}: {ended:?}");
    };
    refused("evil-key");
    refused("metrics-key");

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

    // An engine's speed is first sampled 2 s after its first output.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while value(
        &scrape(&server),
        "sluice_engine_speed",
        &[("engine", "small")],
    ) == Some(0.0)
    {
        assert!(std::time::Instant::now() < deadline, "no speed sampled");
        std::thread::sleep(Duration::from_millis(200));
    }
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

    // Ingest: one connection of the live ingest, the refusals by reason.
    let main = [("channel", "live"), ("ingest", "main")];
    assert_eq!(
        value(&first, "sluice_ingest_connects_total", &main),
        Some(1.0)
    );
    assert_eq!(
        value(&first, "sluice_ingest_reconnects_total", &main),
        Some(0.0)
    );
    for reason in ["unknown_key", "busy"] {
        assert_eq!(
            value(
                &first,
                "sluice_ingest_refusals_total",
                &[("protocol", "rtmp"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    // Engines: both keep up with the input; the transcoding one made segments and
    // parts of its one rendition, the copy none of it.
    for engine in ["copy", "small"] {
        let labels = [("channel", "live"), ("engine", engine)];
        let speed = value(&first, "sluice_engine_speed", &labels).unwrap();
        assert!((0.5..=1.5).contains(&speed), "{engine} speed {speed}");
        let lag = value(&first, "sluice_engine_input_lag_seconds", &labels).unwrap();
        assert!((0.0..5.0).contains(&lag), "{engine} lag {lag}");
        assert_eq!(
            value(&first, "sluice_engine_restarts_total", &labels),
            Some(0.0)
        );
        assert_eq!(
            value(&first, "sluice_engine_dropped_frames_total", &labels),
            Some(0.0)
        );
    }
    let tiny = [
        ("engine", "small"),
        ("output", "cmaf"),
        ("rendition", "90p"),
    ];
    let segments = value(&first, "sluice_engine_segments_total", &tiny).unwrap();
    assert!(segments >= 1.0, "{segments}");
    assert!(value(&first, "sluice_engine_segment_bytes_total", &tiny).unwrap() > 1000.0);
    let parts = value(&first, "sluice_engine_parts_total", &tiny).unwrap();
    assert!(
        parts >= 4.0 * segments,
        "{parts} parts, {segments} segments"
    );
    assert!(value(&first, "sluice_engine_part_bytes_total", &tiny).unwrap() > 1000.0);
    assert_eq!(
        value(
            &first,
            "sluice_engine_parts_total",
            &[
                ("engine", "copy"),
                ("output", "ts"),
                ("rendition", "source")
            ]
        ),
        Some(0.0),
        "TS has no parts"
    );
    // Connections: this scrape's own, and the publisher's; none refused.
    assert!(value(&first, "sluice_open_connections", &[("listener", "http")]).unwrap() >= 1.0);
    assert!(value(&first, "sluice_open_connections", &[("listener", "rtmp")]).unwrap() >= 1.0);
    assert_eq!(
        value(
            &first,
            "sluice_connections_refused_total",
            &[("listener", "http"), ("reason", "address_full")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&first, "sluice_http_parked_requests", &[]), Some(0.0));

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

const ANALYTICS: &str = r#"
[channels.live.ingests.main]
protocol = "rtmp"
stream_key = "analytics-key"
[channels.live.engines.copy]
ladder = "passthrough"

[distributions.entry]
channel = "live"
[[distributions.entry.overrides]]
device_type = "mobile"
targets = [{ distribution = "phones", weight = 100 }]

[distributions.phones]
channel = "live"

# Where the test waits for the stream (the waiting is a viewer too).
[distributions.probe]
channel = "live"

# Open, no overrides: still placed by X-Forwarded-For behind the cache.
[distributions.plain]
channel = "live"
"#;

const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

/// Viewers counted from sessions, with their country, device and override target, the
/// same in the status API and in /metrics; a cache in front (a trusted proxy) gets
/// sessions on an open distribution and its session checks count its viewers.
#[test]
fn viewer_analytics_count_sessions_with_country_device_and_override_target() {
    let _heavy = heavy();
    let dir = scratch_dir("analytics-db");
    let db = dir.join("country.mmdb");
    crate::api::country_db(&db);
    let server = Server::start_with_server_keys(
        "analytics",
        &format!(
            "trusted_proxies = [\"127.0.0.2/32\"]\ngeoip_database = \"{}\"",
            db.display()
        ),
        ANALYTICS,
    );
    let _publisher = Publisher::start(&server.rtmp_url("analytics-key"), 60, "320x180");
    server.wait_segments(
        "/live/probe/cmaf/source/index.m3u8",
        2,
        Duration::from_secs(30),
    );
    // A viewer as a player is: the multivariant playlist, then its first variant's
    // media playlist (relative to the multivariant's URL), through `via` (a direct
    // connection, or the cache at 127.0.0.2 for a viewer at `client`).
    let watch_dist = |dist: &str, via: &str, client: &str, ua: &str| -> String {
        let headers = [("X-Forwarded-For", client), ("User-Agent", ua)];
        let entry = format!("/live/{dist}/cmaf/index.m3u8");
        let (status, _, body) = raw_get(via, server.http, &entry, &headers);
        assert_eq!(status, 200);
        let media = resolve_uri(&entry, &master_playlist(&body).variants[0].uri);
        for _ in 0..2 {
            assert_eq!(
                raw_get(via, server.http, &media, &headers).0,
                200,
                "{media}"
            );
        }
        media
    };
    // A direct viewer (127.0.0.1: "GB"): no session, its multivariant stays public.
    let watch = |via: &str, client: &str, ua: &str| watch_dist("entry", via, client, ua);
    let direct = watch("127.0.0.1", "127.0.0.1", DESKTOP);
    assert!(!direct.contains("/s-"), "{direct}");
    // Two viewers behind the cache, in Germany: sessions, one sent on to `phones`.
    let desktop = watch("127.0.0.2", "85.214.1.1", DESKTOP);
    assert!(desktop.starts_with("/live/entry/s-"), "{desktop}");
    let phone = watch("127.0.0.2", "85.214.2.2", PHONE);
    assert!(phone.starts_with("/live/phones/s-"), "{phone}");
    // The cache checks the phone's session again: the same viewer.
    let session = phone.split('/').nth(3).unwrap();
    let check = format!("/live/phones/{session}/check");
    let headers = [("X-Forwarded-For", "85.214.2.2"), ("User-Agent", PHONE)];
    assert_eq!(raw_get("127.0.0.2", server.http, &check, &headers).0, 204);
    // An open distribution without overrides behind the cache: placed by the address the
    // cache forwards, not the cache's own.
    let plain = watch_dist("plain", "127.0.0.2", "85.214.3.3", DESKTOP);
    assert!(plain.starts_with("/live/plain/s-"), "{plain}");

    let (status, _, body) = get(&server.url("/api/v1/status"));
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let dists = &status["channels"]["live"]["distributions"];
    assert_eq!(dists["entry"]["viewers"], 2, "{dists}");
    assert_eq!(
        dists["entry"]["countries"],
        serde_json::json!({"GB": 1, "DE": 1})
    );
    assert_eq!(dists["entry"]["devices"], serde_json::json!({"desktop": 2}));
    assert_eq!(dists["entry"]["sent_to"], serde_json::json!({"phones": 1}));
    assert_eq!(dists["phones"]["viewers"], 1, "{dists}");
    assert_eq!(dists["phones"]["countries"], serde_json::json!({"DE": 1}));
    assert_eq!(dists["phones"]["devices"], serde_json::json!({"mobile": 1}));
    assert_eq!(
        dists["plain"]["countries"],
        serde_json::json!({"DE": 1}),
        "{dists}"
    );

    let m = scrape(&server);
    let entry = [("distribution", "entry")];
    assert_eq!(value(&m, "sluice_distribution_viewers", &entry), Some(2.0));
    assert_eq!(
        value(
            &m,
            "sluice_distribution_viewers_by_country",
            &[("distribution", "entry"), ("country", "DE")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "sluice_distribution_viewers_by_device",
            &[("distribution", "phones"), ("device", "mobile")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "sluice_distribution_viewers_sent",
            &[("distribution", "entry"), ("target", "phones")]
        ),
        Some(1.0)
    );
    for s in &m.samples {
        if let Some(c) = s.labels.get("country") {
            assert!(["GB", "DE", "unknown"].contains(&c), "{c}");
        }
    }
}
