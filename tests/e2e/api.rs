//! The control API against the real server while an RTMP publisher streams and an HLS
//! client plays: changes apply to the very next request, are written back to the file
//! with its comments, invalid ones change nothing (not a byte of the file), and every
//! answer is the one the served OpenAPI document describes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const TOKEN: &str = "api-test-token-0123456789";

const CONFIG: &str = r#"
# Operator's notes: this file is also edited by the control API.
[api]
admin_tokens = ["api-test-token-0123456789"]   # scripts use this one

[ladders.small]   # two small renditions
segment_seconds = 1.0
window_seconds = 30
audio_kbps = 64
renditions = [
  { name = "180p", width = 320, height = 180, video_kbps = 300 },
  { name = "90p", width = 160, height = 90, video_kbps = 100 },
]

[channels.live]
name = "Live"   # the main event

[channels.live.ingests.main]
protocol = "rtmp"
stream_key = "api-live-key"

[channels.live.engines.copy]
ladder = "passthrough"   # the source as it comes

[channels.live.engines.abr]
ladder = "small"

# Who watches what.
[distributions.open]
channel = "live"
engines = ["copy"]

[distributions.abr]
channel = "live"
engines = ["abr"]
max_kbps = 0   # no cap
ip = { mode = "allow", cidrs = ["127.0.0.0/8"] }   # the lab only

[distributions.mobile]
channel = "live"
engines = ["abr"]
"#;

/// One API exchange, kept for the OpenAPI check.
struct Exchange {
    method: String,
    path: String,
    status: u16,
    body: Option<Value>,
}

struct Api {
    base: String,
    log: Mutex<Vec<Exchange>>,
}

impl Api {
    /// (status, headers, JSON body if any); `token` `None`: no Authorization header.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        if_match: Option<&str>,
    ) -> (u16, Vec<(String, String)>, Option<Value>) {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let mut req = agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(m) = if_match {
            req = req.set("If-Match", m);
        }
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let headers: Vec<(String, String)> = resp
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = resp.header(&n).unwrap_or("").to_string();
                (n.to_ascii_lowercase(), v)
            })
            .collect();
        let text = resp.into_string().unwrap_or_default();
        let json: Option<Value> = (!text.is_empty()).then(|| {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        });
        self.log.lock().unwrap().push(Exchange {
            method: method.to_lowercase(),
            path: path.to_string(),
            status,
            body: json.clone(),
        });
        (status, headers, json)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Option<Value>) {
        let (s, _, b) = self.call_with(method, path, body.as_ref(), Some(TOKEN), None);
        (s, b)
    }
}

/// The newest media sequence number of a media playlist body.
fn newest_msn(body: &[u8]) -> u64 {
    let p = media_playlist(body);
    p.media_sequence + p.segments.len() as u64 - 1
}

/// A player on `url` (a media playlist): reloads it every 300 ms until stopped; every
/// (status, newest msn).
fn player(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(u16, u64)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let (status, _, body) = get(&url);
            let msn = if status == 200 { newest_msn(&body) } else { 0 };
            seen.push((status, msn));
            std::thread::sleep(Duration::from_millis(300));
        }
        seen
    })
}

fn error_paths(body: &Option<Value>) -> Vec<String> {
    body.as_ref()
        .and_then(|b| b["errors"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

/// A country database for tests: 127.0.0.0/8 is GB, 85.214.0.0/16 DE.
pub(crate) fn country_db(path: &std::path::Path) {
    use mmdb_writer::{Value, Writer};
    let mut w = Writer::new("Sluice-Test-Country");
    for (net, code) in [("127.0.0.0/8", "GB"), ("85.214.0.0/16", "DE")] {
        w.insert_value(
            net.parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country", Value::map([("iso_code", Value::from(code))]))]),
        )
        .unwrap();
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

#[test]
fn api_changes_apply_live_persist_with_comments_and_match_the_openapi_document() {
    let _heavy = heavy();
    let dir = scratch_dir("api-db");
    let db = dir.join("country.mmdb");
    country_db(&db);
    let server = Server::start_with_server_keys(
        "api",
        &format!(
            "trusted_proxies = [\"127.0.0.2/32\"]\ngeoip_database = \"{}\"",
            db.display()
        ),
        CONFIG,
    );
    let file = server.log.parent().unwrap().join("sluice.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let api = Api {
        base: server.url("/api/v1"),
        log: Mutex::new(Vec::new()),
    };
    let _publisher = Publisher::start(&server.rtmp_url("api-live-key"), 180, "320x180");
    server.wait_segments(
        "/live/open/cmaf/source/index.m3u8",
        2,
        Duration::from_secs(40),
    );

    // A player on `abr` (a session, as it has rules), following the 180p rendition.
    let multivariant =
        server.wait_for("/live/abr/cmaf/index.m3u8", Duration::from_secs(40), |_| {
            true
        });
    let master = master_playlist(&multivariant);
    assert_eq!(master.variants.len(), 2);
    let child = master
        .variants
        .iter()
        .find(|v| v.uri.contains("180p"))
        .unwrap()
        .uri
        .clone();
    let child_url = server.url(&format!("/live/abr/cmaf/{child}"));
    let stop = Arc::new(AtomicBool::new(false));
    let playing = player(child_url.clone(), stop.clone());

    // Without a token, or with another one: 403. The document is open.
    assert_eq!(
        api.call_with("GET", "/distributions", None, None, None).0,
        403
    );
    assert_eq!(
        api.call_with(
            "GET",
            "/distributions",
            None,
            Some("wrong-token-0123456789"),
            None
        )
        .0,
        403
    );
    let (status, _, openapi) = api.call_with("GET", "/openapi.json", None, None, None);
    assert_eq!(status, 200);
    let openapi = openapi.unwrap();
    // Status is public by default (no keys in it).
    let (status, _, public) = api.call_with("GET", "/status", None, None, None);
    assert_eq!(status, 200);
    assert!(!public.unwrap().to_string().contains("api-live-key"));

    // Reading: the TOML's keys, with an ETag.
    let (status, headers, abr) =
        api.call_with("GET", "/distributions/abr", None, Some(TOKEN), None);
    assert_eq!(status, 200);
    assert_eq!(abr.unwrap()["max_kbps"], json!(0));
    let etag = header(&headers, "etag").unwrap().to_string();

    // max_kbps: a stale ETag is refused (412); the right one applies, and the very next
    // multivariant request leaves out the rendition above the cap.
    let patch = json!({"max_kbps": 250});
    let stale = api.call_with(
        "PATCH",
        "/distributions/abr",
        Some(&patch),
        Some(TOKEN),
        Some("\"0000\""),
    );
    assert_eq!(stale.0, 412);
    let (status, _, body) = api.call_with(
        "PATCH",
        "/distributions/abr",
        Some(&patch),
        Some(TOKEN),
        Some(&etag),
    );
    assert_eq!(status, 200, "{body:?}");
    let master = master_playlist(&get_ok(&server.url("/live/abr/cmaf/index.m3u8")));
    assert_eq!(master.variants.len(), 1);
    assert!(master.variants[0].uri.contains("90p"));
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("max_kbps = 250   # no cap"),
        "the value changes in place, its comment stays"
    );

    // A geo rule: this viewer (127.0.0.1, "GB" in the test database) still gets in, a
    // viewer in Germany (through the trusted proxy) is refused at once.
    let (status, body) = api.call(
        "PATCH",
        "/distributions/abr",
        Some(json!({"geo": {"mode": "allow", "countries": ["GB"]}})),
    );
    assert_eq!(status, 200, "{body:?}");
    let from = |client: &str| {
        raw_get(
            "127.0.0.2",
            server.http,
            "/live/abr/cmaf/index.m3u8",
            &[("X-Forwarded-For", client)],
        )
        .0
    };
    assert_eq!(from("85.214.132.117"), 403);
    assert_eq!(from("127.0.0.9"), 200);

    // Overrides: mobile viewers are sent on to `mobile`, on the next request.
    let overrides = json!({"overrides": [{"device_type": "mobile", "targets": [{"distribution": "mobile", "weight": 100}]}]});
    assert_eq!(
        api.call("PATCH", "/distributions/abr", Some(overrides)).0,
        200
    );
    let body = get_ok(&server.url("/live/abr/cmaf/index.m3u8?device_type=mobile"));
    assert!(String::from_utf8_lossy(&body).contains("../../mobile/"));

    // Invalid changes: 422 with the key path, and not a byte of the file changes.
    let before = std::fs::read(&file).unwrap();
    let cycle = json!({"overrides": [{"device_type": "desktop", "targets": [{"distribution": "abr", "weight": 100}]}]});
    for (path, patch, key) in [
        (
            "/distributions/mobile",
            cycle,
            "distributions.abr.overrides[0].targets[0].distribution",
        ),
        (
            "/distributions/open",
            json!({"engines": ["nope"]}),
            "distributions.open.engines[0]",
        ),
        (
            "/distributions/open",
            json!({"max_kbps": "lots"}),
            "distributions.open.max_kbps",
        ),
        (
            "/channels/live/engines/copy",
            json!({"ladder": "missing"}),
            "channels.live.engines.copy.ladder",
        ),
    ] {
        let (status, body) = api.call("PATCH", path, Some(patch));
        assert_eq!(status, 422, "{path}: {body:?}");
        assert!(
            error_paths(&body).contains(&key.to_string()),
            "{path}: {body:?}"
        );
    }
    // `mobile` is an override target: removing it would leave a dangling reference.
    let (status, body) = api.call("DELETE", "/distributions/mobile", None);
    assert_eq!(status, 422, "{body:?}");
    assert_eq!(
        api.call(
            "POST",
            "/distributions",
            Some(json!({"id": "open", "channel": "live"}))
        )
        .0,
        409
    );
    assert_eq!(
        api.call("PATCH", "/distributions/none", Some(json!({}))).0,
        404
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "refused changes leave the file as it was"
    );

    // A change that cannot be written back is not applied, and the answer says so.
    // (Something in the way of the temporary file the write goes through: root ignores
    // permissions, not a directory where a file must go.)
    let blocker = file
        .parent()
        .unwrap()
        .join(format!(".sluice.toml.sluice-{}.tmp", server.pid()));
    std::fs::create_dir(&blocker).unwrap();
    let (status, body) = api.call(
        "PATCH",
        "/distributions/open",
        Some(json!({"enabled": false})),
    );
    assert_eq!(status, 500, "{body:?}");
    let message = body.unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("cannot write") && message.contains("not applied"),
        "{message}"
    );
    assert_eq!(get(&server.url("/live/open/cmaf/index.m3u8")).0, 200);
    assert_eq!(std::fs::read(&file).unwrap(), before);
    std::fs::remove_dir(&blocker).unwrap();

    // The operator's own edit of the file, not applied (here: invalid): the API does not
    // write over it (409); once the file is back, changes go through again.
    std::fs::write(
        &file,
        format!("{}\nbroken = [\n", String::from_utf8_lossy(&before)),
    )
    .unwrap();
    let (status, body) = api.call("PATCH", "/distributions/open", Some(json!({"max_kbps": 1})));
    assert_eq!(status, 409, "{body:?}");
    std::fs::write(&file, &before).unwrap();
    let (status, body) = api.call(
        "PATCH",
        "/channels/live/engines/copy",
        Some(json!({"priority": 3})),
    );
    assert_eq!(status, 200, "{body:?}");
    assert!(
        server
            .log_text()
            .contains("engine live/copy priority changed")
    );

    // A new channel and its distribution, then a publisher on it at once.
    let (status, body) = api.call(
        "POST",
        "/channels",
        Some(json!({"id": "extra", "name": "Extra", "ingests": {"main": {"protocol": "rtmp", "stream_key": "extra-key"}}, "engines": {"copy": {"ladder": "passthrough"}}})),
    );
    assert_eq!(status, 201, "{body:?}");
    let (status, body) = api.call(
        "POST",
        "/distributions",
        Some(json!({"id": "extra", "channel": "extra"})),
    );
    assert_eq!(status, 201, "{body:?}");
    let extra = Publisher::start(&server.rtmp_url("extra-key"), 120, "320x180");
    server.wait_segments(
        "/live/extra/cmaf/source/index.m3u8",
        1,
        Duration::from_secs(30),
    );

    // Stopped: its distribution answers 503 and the publisher is let go; started again,
    // it serves once a publisher returns.
    let (status, body) = api.call("POST", "/channels/extra/stop", None);
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["state"], json!("stopped"));
    assert_eq!(get(&server.url("/live/extra/cmaf/index.m3u8")).0, 503);
    // (It would publish for two minutes: it ends because it was disconnected.)
    let _ = extra.wait(Duration::from_secs(20));
    let (status, body) = api.call("POST", "/channels/extra/start", None);
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["state"], json!("running"));

    // A distribution deleted answers 404 at once; its channel goes the same way.
    assert_eq!(api.call("DELETE", "/distributions/extra", None).0, 204);
    assert_eq!(get(&server.url("/live/extra/cmaf/index.m3u8")).0, 404);
    assert_eq!(api.call("DELETE", "/channels/extra", None).0, 204);

    // A ladder change restarts that engine alone: the passthrough engine runs on, the
    // player on the transcoded rendition reads on.
    let since = newest(&server, "/live/open/cmaf/source/index.m3u8");
    let ladder = json!({"renditions": [
        {"name": "180p", "width": 320, "height": 180, "video_kbps": 200},
        {"name": "90p", "width": 160, "height": 90, "video_kbps": 100},
    ]});
    let (status, body) = api.call("PATCH", "/ladders/small", Some(ladder));
    assert_eq!(status, 200, "{body:?}");
    let log = server.log_text();
    assert!(log.contains("engine live/abr restarted"), "{log}");
    assert!(!log.contains("engine live/copy restarted"));
    still_advancing(&server, "/live/open/cmaf/source/index.m3u8", since);
    // The player's playlist goes on from the new run with a discontinuity.
    let playlist = String::from_utf8(get_ok(&child_url)).unwrap();
    assert!(playlist.contains("#EXT-X-DISCONTINUITY\n"), "{playlist}");
    // Under a 270 kbit/s cap the new 180p (200 + 64 audio) fits; the old (300 + 64) did not.
    assert_eq!(
        api.call(
            "PATCH",
            "/distributions/abr",
            Some(json!({"max_kbps": 270}))
        )
        .0,
        200
    );
    let master = master_playlist(&get_ok(&server.url("/live/abr/cmaf/index.m3u8")));
    assert_eq!(master.variants.len(), 2, "the new ladder's bitrates");

    // Racing changes are serialised: with the same ETag, one wins and the rest get 412.
    let (_, headers, _) = api.call_with("GET", "/distributions/open", None, Some(TOKEN), None);
    let etag = header(&headers, "etag").unwrap().to_string();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=4)
            .map(|i| {
                let (api, etag) = (&api, etag.clone());
                s.spawn(move || {
                    let patch = json!({"target_latency_seconds": f64::from(i) + 2.0});
                    api.call_with(
                        "PATCH",
                        "/distributions/open",
                        Some(&patch),
                        Some(TOKEN),
                        Some(&etag),
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 412).count(),
        3,
        "{statuses:?}"
    );

    // Live state: the active ingest, its bitrate, engines and viewers.
    let (status, body) = api.call("GET", "/channels/live/status", None);
    assert_eq!(status, 200);
    let st = body.unwrap();
    assert_eq!(st["active_ingest"], json!("main"), "{st}");
    assert!(st["input_kbps"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["engines"]["copy"]["state"], json!("live"), "{st}");
    assert!(
        st["engines"]["copy"]["newest_segment"]["source"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        st["distributions"]["abr"]["viewers"].as_u64().unwrap() >= 1,
        "{st}"
    );

    stop.store(true, Ordering::Relaxed);
    let seen = playing.join().unwrap();
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "the player got errors: {failed:?} of {}",
        seen.len()
    );
    let (first, last) = (seen.first().unwrap().1, seen.last().unwrap().1);
    assert!(
        last > first + 2,
        "the media sequence kept rising: {first} -> {last}"
    );
    assert!(
        seen.windows(2).all(|w| w[1].1 >= w[0].1),
        "and never went back: {seen:?}"
    );

    // The file after all this: every comment of the original is still there, and
    // `sluice check` accepts it.
    let text = std::fs::read_to_string(&file).unwrap();
    for line in original.lines().filter(|l| l.contains('#')) {
        let comment = &line[line.find('#').unwrap()..];
        assert!(text.contains(comment), "lost comment {comment:?}:\n{text}");
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!server.log_text().contains("panicked"));

    // Every answer is one the OpenAPI document describes.
    let log = api.log.lock().unwrap();
    for x in log.iter() {
        conforms(&openapi, x);
    }
}

/// `x` matches a path of `doc` (templates filled by any one segment), its status is one
/// the operation lists, and its JSON body has what the response's schema requires.
fn conforms(doc: &Value, x: &Exchange) {
    let paths = doc["paths"].as_object().unwrap();
    let path = x.path.split('?').next().unwrap();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (_, item) = paths
        .iter()
        .find(|(template, _)| {
            let t: Vec<&str> = template.trim_matches('/').split('/').collect();
            t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .unwrap_or_else(|| panic!("{} {path}: not in the OpenAPI document", x.method));
    let op = &item[x.method.as_str()];
    assert!(
        op.is_object(),
        "{} {path}: method not in the document",
        x.method
    );
    let response = &op["responses"][x.status.to_string()];
    assert!(
        response.is_object(),
        "{} {path}: status {} not documented",
        x.method,
        x.status
    );
    let schema = &response["content"]["application/json"]["schema"];
    match (&x.body, schema.is_null()) {
        (Some(body), false) => check_schema(doc, schema, body, &format!("{} {path}", x.method)),
        (None, true) => {}
        (Some(_), true) => panic!(
            "{} {path} {}: a body the document does not describe",
            x.method, x.status
        ),
        (None, false) => panic!(
            "{} {path} {}: no body, the document describes one",
            x.method, x.status
        ),
    }
}

fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    };
    if value.is_null() && schema["nullable"] == json!(true) {
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    assert!(ok, "{at}: {value} is not a {}", schema["type"]);
    if let Some(options) = schema["enum"].as_array() {
        assert!(
            options.contains(value),
            "{at}: {value} not one of {options:?}"
        );
    }
    if let Some(required) = schema["required"].as_array() {
        for r in required {
            let r = r.as_str().unwrap();
            assert!(value.get(r).is_some(), "{at}: {r} is required: {value}");
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                check_schema(doc, s, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(extra), Some(obj)) = (
        schema.get("additionalProperties").filter(|a| a.is_object()),
        value.as_object(),
    ) {
        for (k, v) in obj {
            if schema["properties"].get(k).is_none() {
                check_schema(doc, extra, v, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check_schema(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}
