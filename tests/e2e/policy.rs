//! Distributions with rules, over real HTTP: viewer tokens (and the attack table), the
//! session carried to child requests, IP rules behind a trusted proxy, allowed origins,
//! and a real HLS client (ffmpeg) playing through it all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::support::*;

const SECRET: &str = "a-long-random-secret-for-paid";
const RSA_PUBLIC: &str =
    include_str!("../../crates/sluice-distribution/testdata/test_rsa_public.pem");

fn config() -> String {
    let keys = format!(
        "keys = [\n  {{ id = \"hs\", algorithm = \"HS256\", secret = \"{SECRET}\" }},\n  {{ id = \"rs\", algorithm = \"RS256\", public_key_pem = '''\n{RSA_PUBLIC}''' }},\n]\n"
    );
    format!(
        r#"
[channels.pay.ingests.main]
protocol = "rtmp"
stream_key = "pay-key"
[channels.pay.engines.copy]
ladder = "passthrough"

[distributions.paid]
channel = "pay"
ip = {{ mode = "allow", cidrs = ["127.0.0.0/8", "2001:db8::/32"] }}
allowed_origins = ["https://eu.example.com"]
[distributions.paid.token]
required = true
{keys}
[distributions.other]
channel = "pay"
[distributions.other.token]
required = true
{keys}
[distributions.open]
channel = "pay"

[distributions.office]
channel = "pay"
ip = {{ mode = "allow", cidrs = ["203.0.113.0/24"] }}
"#
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs(claims: serde_json::Value, kid: &str) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    encode(&h, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn status(server: &Server, path: &str, headers: &[(&str, &str)]) -> u16 {
    raw_get("127.0.0.1", server.http, path, headers).0
}

/// The child URI of the first variant, resolved against the multivariant's path.
fn first_child(multivariant_path: &str, body: &[u8]) -> String {
    let m = master_playlist(body);
    let uri = &m.variants[0].uri;
    let base = multivariant_path.rsplit_once('/').unwrap().0;
    let rel = uri
        .strip_prefix("../")
        .expect("the session path is relative");
    format!("{}/{rel}", base.rsplit_once('/').unwrap().0)
}

#[test]
fn tokens_sessions_ip_and_origin_rules_over_http() {
    let _heavy = heavy();
    let server =
        Server::start_with_server_keys("policy", "trusted_proxies = [\"127.0.0.2/32\"]", &config());
    let mv = "/live/paid/cmaf/index.m3u8";
    // Rules come before the stream: 401 while nothing is live (an open one says 503).
    assert_eq!(status(&server, mv, &[]), 401);
    assert_eq!(status(&server, "/live/open/cmaf/index.m3u8", &[]), 503);

    let _publisher = Publisher::start(&server.rtmp_url("pay-key"), 40, "320x180");
    server.wait_segments(
        "/live/open/cmaf/source/index.m3u8",
        2,
        Duration::from_secs(30),
    );

    // `sluice token` signs a token the server admits.
    let cfg_path = server.log.parent().unwrap().join("sluice.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "--config"])
        .arg(&cfg_path)
        .args([
            "--distribution",
            "paid",
            "--ttl",
            "10m",
            "--sub",
            "viewer-1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (code, headers, body) = raw_get(
        "127.0.0.1",
        server.http,
        &format!("{mv}?token={token}"),
        &[],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "cache-control"), Some("private, no-store"));
    let child = first_child(mv, &body);
    assert!(child.starts_with("/live/paid/s-"), "{child}");
    // The same through `Authorization: Bearer`.
    let bearer = format!("Bearer {token}");
    assert_eq!(status(&server, mv, &[("Authorization", &bearer)]), 200);

    // Child requests go through the session: playlist, init and segment, which decode.
    let (code, _, media) = raw_get("127.0.0.1", server.http, &child, &[]);
    assert_eq!(code, 200);
    let p = media_playlist(&media);
    let dir = child.rsplit_once('/').unwrap().0;
    let init_uri = &p.segments[0].map.as_ref().unwrap().uri;
    let (c1, _, init) = raw_get("127.0.0.1", server.http, &format!("{dir}/{init_uri}"), &[]);
    let (c2, h2, seg) = raw_get(
        "127.0.0.1",
        server.http,
        &format!("{dir}/{}", p.segments[0].uri),
        &[],
    );
    assert_eq!((c1, c2), (200, 200));
    assert!(header(&h2, "cache-control").unwrap().contains("immutable"));
    let pr = probe(&[init.as_slice(), &seg].concat(), "mp4");
    assert_eq!((pr.width, pr.height), (320, 180));

    // Sessions: missing, moved to another distribution, extended, tampered.
    let session = child.split('/').nth(3).unwrap().to_owned();
    let tail = child.splitn(5, '/').nth(4).unwrap().to_owned();
    assert_eq!(status(&server, &format!("/live/paid/{tail}"), &[]), 401);
    assert_eq!(
        status(&server, &format!("/live/other/{session}/{tail}"), &[]),
        401
    );
    let (exp, mac) = session["s-".len()..].split_once('-').unwrap();
    let later = exp.parse::<u64>().unwrap() + 86_400;
    assert_eq!(
        status(&server, &format!("/live/paid/s-{later}-{mac}/{tail}"), &[]),
        401
    );
    let flipped = if mac.starts_with('0') { "1" } else { "0" };
    assert_eq!(
        status(
            &server,
            &format!("/live/paid/s-{exp}-{flipped}{}/{tail}", &mac[1..]),
            &[]
        ),
        401
    );

    // The attack table on tokens.
    let good = |aud: &str| json!({ "exp": now() + 60, "aud": aud });
    // {"alg":"none","kid":"hs"} . valid claims . no signature
    let none = format!(
        "eyJhbGciOiJub25lIiwia2lkIjoiaHMifQ.{}.",
        hs(good("paid"), "hs").split('.').nth(1).unwrap()
    );
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rs".into());
    let confused = encode(
        &h,
        &good("paid"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    let valid = hs(good("paid"), "hs");
    let (head, sig) = valid.rsplit_once('.').unwrap();
    let tampered = format!(
        "{head}.{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    for (what, t, want) in [
        ("alg none", none, 401),
        ("HS256 with the RSA public key", confused, 401),
        (
            "expired by 1 s",
            hs(json!({ "exp": now() - 1, "aud": "paid" }), "hs"),
            401,
        ),
        (
            "nbf in the future",
            hs(
                json!({ "exp": now() + 60, "nbf": now() + 60, "aud": "paid" }),
                "hs",
            ),
            401,
        ),
        ("no exp", hs(json!({ "aud": "paid" }), "hs"), 401),
        ("another distribution's token", hs(good("other"), "hs"), 403),
        ("unknown kid", hs(good("paid"), "nope"), 401),
        ("tampered signature", tampered, 401),
        ("empty", String::new(), 401),
    ] {
        assert_eq!(
            status(&server, &format!("{mv}?token={t}"), &[]),
            want,
            "{what}"
        );
    }
    assert_eq!(
        status(&server, &format!("{mv}?token={valid}&token={valid}"), &[]),
        401,
        "twice"
    );

    // Allowed origins: exact scheme://host[:port] from Origin (or Referer).
    let with_origin = |o: &str| {
        raw_get(
            "127.0.0.1",
            server.http,
            &format!("{mv}?token={valid}"),
            &[("Origin", o)],
        )
    };
    let (code, headers, _) = with_origin("https://eu.example.com");
    assert_eq!(code, 200);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://eu.example.com")
    );
    assert_eq!(header(&headers, "vary"), Some("Origin"));
    for bad in [
        "https://eu.example.com.evil.com",
        "https://evileu.example.com",
        "null",
        "https://eu.example.com:8443",
    ] {
        assert_eq!(with_origin(bad).0, 403, "{bad}");
    }
    assert_eq!(
        status(
            &server,
            &format!("{mv}?token={valid}"),
            &[("Referer", "https://evil.example.net/x")]
        ),
        403
    );

    // IP rules: X-Forwarded-For is believed from a trusted proxy only.
    let office = "/live/office/cmaf/index.m3u8";
    let xff = [("X-Forwarded-For", "203.0.113.5")];
    assert_eq!(
        raw_get("127.0.0.1", server.http, office, &xff).0,
        403,
        "untrusted peer"
    );
    assert_eq!(
        raw_get("127.0.0.2", server.http, office, &xff).0,
        200,
        "trusted proxy"
    );
    assert_eq!(raw_get("127.0.0.2", server.http, office, &[]).0, 403);
    let v6 = [("X-Forwarded-For", "2001:db8::5")];
    assert_eq!(raw_get("127.0.0.2", server.http, office, &v6).0, 403);

    // A real HLS client plays the protected URL: it follows the session paths by itself.
    let played = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(server.url(&format!("{mv}?token={token}")))
        .args(["-t", "3", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );

    assert!(
        !server.log_text().contains(&token[..40]),
        "tokens are never logged"
    );
}

/// Geo rules judged with a country database the test builds; without one they fail
/// closed. Admission is visible without a stream: admitted viewers get 503 (not live
/// yet), refused ones 403.
#[test]
fn geo_rules_allow_deny_and_fail_closed() {
    let dir = scratch_dir("geo-db");
    let db = dir.join("country.mmdb");
    {
        use mmdb_writer::{Value, Writer};
        let mut w = Writer::new("Sluice-Test-Country");
        for (net, code) in [
            ("81.2.69.0/24", "GB"),
            ("2001:db8:de::/48", "DE"),
            ("85.214.0.0/16", "DE"),
        ] {
            w.insert_value(
                net.parse::<ipnet::IpNet>().unwrap(),
                Value::map([("country", Value::map([("iso_code", Value::from(code))]))]),
            )
            .unwrap();
        }
        std::fs::write(&db, w.to_bytes().unwrap()).unwrap();
    }
    let rules = r#"
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "c-key"
[channels.c.engines.copy]
ladder = "passthrough"
[distributions.gb-only]
channel = "c"
geo = { mode = "allow", countries = ["GB"] }
[distributions.no-de]
channel = "c"
geo = { mode = "deny", countries = ["DE"] }
"#;
    let server = Server::start_with_server_keys(
        "geo",
        &format!(
            "trusted_proxies = [\"127.0.0.2/32\"]\ngeoip_database = \"{}\"",
            db.display()
        ),
        rules,
    );
    let from = |dist: &str, client: &str| {
        raw_get(
            "127.0.0.2",
            server.http,
            &format!("/live/{dist}/cmaf/index.m3u8"),
            &[("X-Forwarded-For", client)],
        )
        .0
    };
    for (client, gb_only, no_de) in [
        ("81.2.69.142", 503, 503),
        ("85.214.132.117", 403, 403),
        ("2001:db8:de::7", 403, 403),
        ("192.0.2.55", 403, 503), // unknown country: not on either list
    ] {
        assert_eq!(from("gb-only", client), gb_only, "gb-only from {client}");
        assert_eq!(from("no-de", client), no_de, "no-de from {client}");
    }
    drop(server);

    // No database: geo rules refuse everyone, and the server says so at start.
    let blind =
        Server::start_with_server_keys("geo-blind", "trusted_proxies = [\"127.0.0.2/32\"]", rules);
    let status = raw_get(
        "127.0.0.2",
        blind.http,
        "/live/no-de/cmaf/index.m3u8",
        &[("X-Forwarded-For", "81.2.69.142")],
    )
    .0;
    assert_eq!(status, 403);
    assert!(
        blind.log_text().contains("every viewer is refused"),
        "{}",
        blind.log_text()
    );
}

/// Override rules over HTTP: viewers are sent to other distributions by User-Agent and
/// query, with no redirect; weighted picks are sticky; the target's own rules apply.
#[test]
fn overrides_send_viewers_to_other_distributions() {
    let _heavy = heavy();
    let server = Server::start(
        "overrides",
        r#"
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "c-key"
[channels.c.engines.copy]
ladder = "passthrough"

[distributions.eu]
channel = "c"
[[distributions.eu.overrides]]
device_type = "mobile"
targets = [{ distribution = "eu-mobile", weight = 1 }]
[[distributions.eu.overrides]]
os_name = "roku"
targets = [{ distribution = "eu-blocked", weight = 1 }]
[[distributions.eu.overrides]]
device_type = "desktop"
targets = [{ distribution = "eu", weight = 80 }, { distribution = "eu-low", weight = 20 }]

[distributions.eu-mobile]
channel = "c"
outputs = ["cmaf"]
[distributions.eu-low]
channel = "c"
[distributions.eu-blocked]
channel = "c"
ip = { mode = "deny", cidrs = ["127.0.0.0/8"] }
"#,
    );
    let _publisher = Publisher::start(&server.rtmp_url("c-key"), 40, "320x180");
    server.wait_segments(
        "/live/eu/cmaf/source/index.m3u8",
        2,
        Duration::from_secs(30),
    );
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const ROKU: &str = "Roku/DVP-12.5 (12.5.0.4178-88)";
    let served = |query: &str, ua: &str| {
        let (code, headers, body) = raw_get(
            "127.0.0.1",
            server.http,
            &format!("/live/eu/cmaf/index.m3u8{query}"),
            &[("User-Agent", ua)],
        );
        if code != 200 {
            return (code, String::new());
        }
        assert_eq!(header(&headers, "cache-control"), Some("private, no-store"));
        let uri = master_playlist(&body).variants[0].uri.clone();
        let dist = match uri.strip_prefix("../../") {
            Some(rest) => rest.split('/').next().unwrap().to_owned(),
            None => "eu".to_owned(),
        };
        (code, dist)
    };
    assert_eq!(served("", IPHONE), (200, "eu-mobile".to_owned()));
    // The target's own outputs: eu-mobile has no TS.
    let ts = raw_get(
        "127.0.0.1",
        server.http,
        "/live/eu/ts/index.m3u8",
        &[("User-Agent", IPHONE)],
    );
    assert_eq!(ts.0, 404);
    // The target's own rules: eu-blocked refuses loopback.
    assert_eq!(served("", ROKU).0, 403);
    // An SDK states its platform in the query.
    assert_eq!(
        served("?device_type=mobile", ROKU),
        (200, "eu-mobile".to_owned())
    );
    // No rule matches: the entry distribution itself.
    assert_eq!(served("", "Lavf/59.27.100"), (200, "eu".to_owned()));
    // The child URL of an overridden viewer resolves to the target and plays.
    let (_, _, body) = raw_get(
        "127.0.0.1",
        server.http,
        "/live/eu/cmaf/index.m3u8",
        &[("User-Agent", IPHONE)],
    );
    let uri = master_playlist(&body).variants[0].uri.clone();
    let child = format!("/live/{}", uri.trim_start_matches("../../"));
    assert_eq!(
        raw_get("127.0.0.1", server.http, &child, &[]).0,
        200,
        "{child}"
    );

    // 80/20 by viewer id, sticky: 400 desktop viewers, each asked twice.
    let mut low = 0;
    for i in 0..400 {
        let q = format!("?viewer=v{i}");
        let first = served(&q, WINDOWS);
        assert_eq!(first, served(&q, WINDOWS), "viewer {i} moved");
        assert!(first.1 == "eu" || first.1 == "eu-low", "{first:?}");
        low += (first.1 == "eu-low") as u32;
    }
    // 20% of 400 is 80; three standard deviations (8) either side.
    assert!((56..=104).contains(&low), "{low} of 400 on the 20% target");
}

/// Two engines on one channel: the preferred one goes down while ffmpeg plays the
/// distribution; playback goes on from the spare with no player error, the newest
/// media sequence number a viewer sees never goes back, and when the preferred engine is
/// back new viewers start on it again.
#[test]
fn a_distribution_fails_over_between_engines() {
    let _heavy = heavy();
    let t0 = std::time::Instant::now();
    let server = Server::start_with_env(
        "failover",
        r#"
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "c-key"
[channels.c.engines.main]
ladder = "passthrough"
priority = 1
[channels.c.engines.spare]
ladder = "passthrough"
priority = 2
[distributions.d]
channel = "c"
"#,
        &[("SLUICE_TEST_ENGINE_OUTAGE", "c/main:10:10")],
    );
    let _publisher = Publisher::start(&server.rtmp_url("c-key"), 40, "320x180");
    let mv = master_playlist(&server.wait_for(
        "/live/d/cmaf/index.m3u8",
        Duration::from_secs(30),
        |_| true,
    ));
    let child = mv.variants[0].uri.clone();
    assert!(
        child.starts_with("../e-main/"),
        "new viewers start on the preferred engine: {child}"
    );
    let media = format!("/live/d/{}", child.trim_start_matches("../"));

    // A real HLS client plays through the outage (10 s to 20 s after start).
    let player = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(server.url("/live/d/cmaf/index.m3u8"))
        .args(["-t", "24", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile the viewer's media playlist, every 300 ms.
    let mut newest_seen = 0u64;
    let mut seen_spare = false;
    // When the newest segment advanced, in seconds after the server started.
    let mut advanced_at = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(26) {
        let (status, _, body) = get(&server.url(&media));
        if status == 200 {
            let p = media_playlist(&body);
            let newest = p.media_sequence + p.segments.len() as u64 - 1;
            assert!(
                newest >= newest_seen,
                "went back from {newest_seen} to {newest}"
            );
            if newest > newest_seen {
                advanced_at.push(t0.elapsed().as_secs_f64());
            }
            newest_seen = newest;
        }
        seen_spare |= server.log_text().contains("planned outage");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = player.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{errors}");
    assert!(errors.trim().is_empty(), "player errors: {errors}");
    assert!(seen_spare, "the outage happened");
    // While the preferred engine was down (10 s to 20 s; noticed within 5 s) the
    // playlist still advanced: the spare served it.
    assert!(
        advanced_at.iter().any(|t| (15.5..20.0).contains(t)),
        "no progress while main was down: {advanced_at:?} (media {media}, newest {newest_seen})"
    );
    // The preferred engine is back: new viewers start on it again.
    let mv = master_playlist(&get_ok(&server.url("/live/d/cmaf/index.m3u8")));
    assert!(
        mv.variants[0].uri.starts_with("../e-main/"),
        "{}",
        mv.variants[0].uri
    );
    // Its playlist lists what it missed as gaps, on the same numbers as the spare.
    let main_pl = media_playlist(&get_ok(&server.url(&media)));
    assert!(
        main_pl
            .segments
            .iter()
            .any(|s| s.unknown_tags.iter().any(|t| t.tag == "X-GAP")),
        "gaps listed"
    );
}

/// The HTTP cache of `docker/nginx-cache.conf` in front of a protected distribution:
/// it checks each viewer's session with Sluice, then serves one cached copy of a segment
/// to every admitted viewer; a forged session or none at all is refused.
#[test]
fn a_cache_in_front_verifies_sessions_and_shares_segments() {
    let _heavy = heavy();
    let server = Server::start_with_server_keys(
        "nginx-sessions",
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "[channels.c.ingests.main]\nprotocol = \"rtmp\"\nstream_key = \"c-key\"\n[channels.c.engines.copy]\nladder = \"passthrough\"\n[distributions.paid]\nchannel = \"c\"\n[distributions.paid.token]\nrequired = true\nkeys = [{{ id = \"k\", algorithm = \"HS256\", secret = \"{SECRET}\" }}]\n"
        ),
    );
    let cache = NginxCache::start("nginx-sessions-cache", server.http);
    let port = cache.port;
    let _publisher = Publisher::start(&server.rtmp_url("c-key"), 30, "320x180");
    let token = hs(json!({ "exp": now() + 600, "aud": "paid" }), "k");
    let via_cache = |path: &str| raw_get("127.0.0.1", port, path, &[]);
    let session_dir = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _, body) = via_cache(&format!("/live/paid/cmaf/index.m3u8?token={token}"));
            if code == 200 {
                let child = first_child("/live/paid/cmaf/index.m3u8", &body);
                return child.rsplit_once('/').unwrap().0.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not live through the cache: {code}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let first = session_dir();
    let (code, _, media) = via_cache(&format!("{first}/index.m3u8"));
    assert_eq!(code, 200);
    let seg = media_playlist(&media).segments[0].uri.clone();
    let cache_status = |dir: &str| {
        let (code, headers, _) = via_cache(&format!("{dir}/{seg}"));
        (
            code,
            header(&headers, "x-cache-status").unwrap_or("").to_owned(),
        )
    };
    assert_eq!(cache_status(&first), (200, "MISS".to_owned()));
    assert_eq!(cache_status(&first), (200, "HIT".to_owned()));
    // Another viewer's session (its multivariant a second later): the same cached copy.
    std::thread::sleep(Duration::from_millis(1100));
    let second = session_dir();
    assert_ne!(first, second);
    assert_eq!(cache_status(&second), (200, "HIT".to_owned()));
    // A forged session, or none, is refused although the segment is cached.
    let (exp, _) = first.split("/s-").nth(1).unwrap().split_once('-').unwrap();
    let forged = first.replace(
        first.split('/').nth(3).unwrap(),
        &format!("s-{exp}-{}", "0".repeat(32)),
    );
    assert_eq!(cache_status(&forged).0, 401);
    let bare = first.replace(&format!("/{}", first.split('/').nth(3).unwrap()), "");
    assert_eq!(cache_status(&bare).0, 401);
}
