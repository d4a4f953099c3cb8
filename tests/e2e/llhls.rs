//! Low-Latency HLS over every transport Sluice serves: HTTP/1.1, h2c (HTTP/2 with prior
//! knowledge on the plain port) and h2 over TLS on `https_listen` (Safari plays LL-HLS
//! only over HTTP/2), checked with curl, an independent HTTP/2 client.

use std::time::Duration;

use crate::support::*;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k)
}

/// curl's answer: (HTTP version it spoke, status, body).
fn curl(args: &[&str], url: &str) -> (String, u16, String) {
    let out = tool("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, code) = tail.split_once(' ').unwrap_or(("", "0"));
    (
        version.to_owned(),
        code.parse().unwrap_or(0),
        body.to_owned(),
    )
}

#[test]
fn ll_hls_over_http1_h2c_and_https_h2() {
    let _heavy = heavy();
    let dir = scratch_dir("https-keys");
    let (cert, key) = self_signed(&dir);
    let https = free_port();
    let server = Server::start_with_server_keys(
        "https",
        &format!(
            "https_listen = \"127.0.0.1:{https}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        "[channels.c.ingests.i]\nprotocol = \"test-pattern\"\n[channels.c.engines.e]\nladder = \"passthrough\"\n[distributions.d]\nchannel = \"c\"\n",
    );
    let path = "/live/d/cmaf/source/index.m3u8";
    server.wait_segments(path, 2, Duration::from_secs(60));
    let plain = server.url(path);
    let tls = format!("https://127.0.0.1:{https}{path}");

    let (v, status, body) = curl(&["--http1.1"], &plain);
    assert_eq!((v.as_str(), status), ("1.1", 200), "{body}");
    assert!(body.contains("#EXT-X-PART-INF"), "{body}");
    let (v, status, _) = curl(&["--http2-prior-knowledge"], &plain);
    assert_eq!((v.as_str(), status), ("2", 200), "h2c on the plain port");
    let (v, status, body) = curl(&["--http2", "--cacert", cert.to_str().unwrap()], &tls);
    assert_eq!((v.as_str(), status), ("2", 200), "h2 over TLS (ALPN)");
    assert!(
        body.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"),
        "{body}"
    );
    let (v, status, _) = curl(&["--http1.1", "--cacert", cert.to_str().unwrap()], &tls);
    assert_eq!((v.as_str(), status), ("1.1", 200), "HTTP/1.1 over TLS too");

    // A blocking request for the hinted part over h2 is answered once the part exists,
    // and the part itself comes over the same protocol.
    let hint = preload_hint(body.as_bytes());
    let (v, status, answer) = curl(
        &["--http2", "--cacert", cert.to_str().unwrap()],
        &format!("{tls}?{}", blocking_query(&hint)),
    );
    assert_eq!((v.as_str(), status), ("2", 200));
    assert!(answer.contains(&format!("URI=\"{hint}\"")), "{answer}");
    let part_url = format!("https://127.0.0.1:{https}/live/d/cmaf/source/{hint}");
    let (v, status, _) = curl(
        &[
            "--http2",
            "--cacert",
            cert.to_str().unwrap(),
            "-o",
            "/dev/null",
        ],
        &part_url,
    );
    assert_eq!((v.as_str(), status), ("2", 200));
}

/// A certificate that cannot be used stops the start with the file named.
#[test]
fn an_unusable_certificate_stops_the_start() {
    let dir = scratch_dir("https-bad");
    std::fs::write(dir.join("cert.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key\n").unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:{}\"\nrtmp_listen = \"127.0.0.1:{}\"\nhttps_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[channels.c.ingests.i]\nprotocol = \"test-pattern\"\n[channels.c.engines.e]\nladder = \"passthrough\"\n[distributions.d]\nchannel = \"c\"\n",
            free_port(),
            free_port(),
            free_port(),
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cert.pem"), "{stderr}");
}

/// A listed part: (URI, duration, independent).
type Part = (String, f64, bool);

/// One LL-HLS media playlist as the oracle reads it.
#[derive(Debug, Default)]
struct Ll {
    target_duration: f64,
    part_target: f64,
    media_sequence: u64,
    skipped: u64,
    /// (msn, duration, parts); the open segment last with duration 0.
    segments: Vec<(u64, f64, Vec<Part>)>,
    hint: Option<String>,
    reports: Vec<(String, u64, Option<u64>)>,
    can_skip_until: f64,
}

fn attr<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split([':', ','])
        .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

fn parse_ll(text: &str) -> Ll {
    assert!(
        m3u8_rs::parse_media_playlist_res(text.as_bytes()).is_ok(),
        "m3u8-rs: {text}"
    );
    let mut pl = Ll::default();
    let mut parts = vec![];
    let mut duration = None;
    let num = |v: Option<&str>| v.unwrap_or("0").parse::<f64>().unwrap();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            pl.target_duration = v.parse().unwrap();
        } else if line.starts_with("#EXT-X-PART-INF:") {
            pl.part_target = num(attr(line, "PART-TARGET"));
        } else if line.starts_with("#EXT-X-SERVER-CONTROL:") {
            pl.can_skip_until = num(attr(line, "CAN-SKIP-UNTIL"));
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            pl.media_sequence = v.parse().unwrap();
        } else if line.starts_with("#EXT-X-SKIP:") {
            pl.skipped = num(attr(line, "SKIPPED-SEGMENTS")) as u64;
        } else if line.starts_with("#EXT-X-PART:") {
            parts.push((
                attr(line, "URI").unwrap().to_owned(),
                num(attr(line, "DURATION")),
                line.contains("INDEPENDENT=YES"),
            ));
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            duration = Some(v.trim_end_matches(',').parse::<f64>().unwrap());
        } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
            pl.hint = attr(line, "URI").map(str::to_owned);
        } else if line.starts_with("#EXT-X-RENDITION-REPORT:") {
            pl.reports.push((
                attr(line, "URI").unwrap().to_owned(),
                num(attr(line, "LAST-MSN")) as u64,
                attr(line, "LAST-PART").map(|p| p.parse().unwrap()),
            ));
        } else if !line.starts_with('#') && !line.is_empty() {
            let msn = line.trim_end_matches(".m4s").parse().unwrap();
            pl.segments
                .push((msn, duration.take().unwrap(), std::mem::take(&mut parts)));
        }
    }
    if !parts.is_empty() {
        let msn = pl.segments.last().map_or(pl.media_sequence, |s| s.0 + 1);
        pl.segments.push((msn, 0.0, parts));
    }
    pl
}

/// The newest (msn, part) a playlist lists.
fn last_part(pl: &Ll) -> (u64, u64) {
    let (msn, _, parts) = pl.segments.last().unwrap();
    (*msn, parts.len().saturating_sub(1) as u64)
}

/// First sample of `part` (after `init`) is a sync sample, read with the `mp4` crate.
fn starts_with_sync(init: &[u8], part: &[u8]) -> bool {
    let file = [init, part].concat();
    let reader =
        mp4::Mp4Reader::read_header(std::io::Cursor::new(&file), file.len() as u64).unwrap();
    let track = reader.tracks().values().next().unwrap();
    let trun = track.trafs[0].trun.as_ref().unwrap();
    trun.first_sample_flags
        .or(trun.sample_flags.first().copied())
        .is_some_and(|f| f & 0x0001_0000 == 0)
}

/// The LL-HLS oracle: two minutes of a live RTMP-fed ladder (two video renditions and
/// audio), read the way an LL-HLS player reads it (blocking reloads for the hinted part),
/// with every rule of the spec the server promises checked on every reload, and every
/// saved playlist read again at the end by an independent parser (`ll_oracle.py`, with
/// the `m3u8` library).
#[test]
fn ll_hls_oracle_over_two_minutes() {
    let _heavy = heavy();
    let server = Server::start("ll-oracle", &crate::one_channel("test"));
    let publisher = Publisher::start(&server.rtmp_url("key-one"), 135, "640x360");
    let base = "/live/one/cmaf";
    server.wait_segments(
        &format!("{base}/360p/index.m3u8"),
        3,
        Duration::from_secs(60),
    );
    server.wait_segments(
        &format!("{base}/audio/index.m3u8"),
        3,
        Duration::from_secs(30),
    );
    let saved = scratch_dir("ll-oracle-playlists");
    let mut n_saved = 0;
    let mut save = |name: &str, text: &str| {
        n_saved += 1;
        std::fs::write(saved.join(format!("{n_saved:05}-{name}.m3u8")), text).unwrap();
    };
    let fetch = |url: &str| -> String {
        let (status, _, body) = get(&server.url(url));
        assert_eq!(status, 200, "{url}");
        String::from_utf8(body).unwrap()
    };
    let init_360 = {
        let text = fetch(&format!("{base}/360p/index.m3u8"));
        let uri = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
            .unwrap()
            .trim_end_matches('"')
            .to_owned();
        get_ok(&server.url(&format!("{base}/360p/{uri}")))
    };

    let first = parse_ll(&fetch(&format!("{base}/360p/index.m3u8")));
    let (td, pt) = (first.target_duration, first.part_target);
    assert_eq!(pt, 0.5);
    let mut prev = first;
    let (mut reloads, mut parts_checked, mut report_checks, mut report_far) = (0, 0, 0, 0);
    let mut independent_seen = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        // Block for the hinted part, as a player does.
        let hint = prev
            .hint
            .clone()
            .expect("a live playlist hints its next part");
        let text = fetch(&format!("{base}/360p/index.m3u8?{}", blocking_query(&hint)));
        // Right after: the siblings, to hold the rendition reports against.
        let siblings: Vec<(String, Ll)> = ["180p", "audio"]
            .iter()
            .map(|r| {
                let t = fetch(&format!("{base}/{r}/index.m3u8"));
                save(r, &t);
                (r.to_string(), parse_ll(&t))
            })
            .collect();
        save("360p", &text);
        let pl = parse_ll(&text);
        reloads += 1;
        assert_eq!(
            (pl.target_duration, pl.part_target),
            (td, pt),
            "never change"
        );
        // The hinted part is now listed, right after the previous last part.
        let all: Vec<&Part> = pl.segments.iter().flat_map(|s| &s.2).collect();
        let at = all.iter().position(|p| p.0 == hint);
        assert!(at.is_some(), "hinted {hint} listed:\n{text}");
        let (pm, pp) = last_part(&prev);
        let before = format!("{pm}.{pp}.m4s");
        if let Some(i) = all.iter().position(|p| p.0 == before) {
            assert_eq!(all.get(i + 1).map(|p| p.0.as_str()), Some(hint.as_str()));
        }
        // Every part at most PART-TARGET; parts only within three target durations.
        let with_parts: f64 = pl
            .segments
            .iter()
            .filter(|s| !s.2.is_empty() && s.1 > 0.0)
            .map(|s| s.1)
            .sum();
        assert!(
            with_parts <= 3.0 * td + 1e-6,
            "parts listed for {with_parts} s"
        );
        for (uri, d, independent) in &all {
            assert!(*d <= pt + 1e-9, "{uri} lasts {d}");
            let _ = independent;
        }
        // INDEPENDENT exactly on the parts that start with a sync sample (the new one).
        let (uri, _, independent) = all[at.unwrap()];
        let part = get_ok(&server.url(&format!("{base}/360p/{uri}")));
        assert_eq!(starts_with_sync(&init_360, &part), *independent, "{uri}");
        independent_seen += usize::from(*independent);
        parts_checked += 1;
        // Rendition reports within a part of what the sibling then listed.
        for (name, sib) in &siblings {
            let report = pl
                .reports
                .iter()
                .find(|r| r.0 == format!("../{name}/index.m3u8"))
                .unwrap_or_else(|| panic!("a report for {name}"));
            let truth = last_part(sib);
            let reported = (report.1, report.2.unwrap_or(0));
            assert!(
                truth >= reported,
                "{name}: reported {reported:?}, then {truth:?}"
            );
            let within_one = truth == reported
                || (truth.0 == reported.0 && truth.1 == reported.1 + 1)
                || (truth.0 == reported.0 + 1 && truth.1 == 0);
            report_checks += 1;
            report_far += usize::from(!within_one);
        }
        // Now and then a delta update: it skips only what is older than CAN-SKIP-UNTIL.
        if reloads % 10 == 0 {
            let delta_text = fetch(&format!("{base}/360p/index.m3u8?_HLS_skip=YES"));
            save("360p-skip", &delta_text);
            let delta = parse_ll(&delta_text);
            let listed: f64 = pl.segments.iter().map(|s| s.1).sum();
            if listed > delta.can_skip_until + 2.0 * td {
                assert!(delta.skipped > 0, "{delta_text}");
            }
            let kept: f64 = delta.segments.iter().map(|s| s.1).sum();
            assert!(
                kept + 1e-6 >= delta.can_skip_until,
                "kept {kept}:\n{delta_text}"
            );
            assert_eq!(
                delta.segments[0].0,
                delta.media_sequence + delta.skipped,
                "{delta_text}"
            );
        }
        prev = pl;
    }
    assert!(reloads >= 150, "{reloads} blocking reloads in two minutes");
    assert!(
        independent_seen >= 30,
        "{independent_seen} independent parts"
    );
    assert!(
        report_far * 100 <= report_checks,
        "{report_far} of {report_checks} rendition reports more than a part off"
    );
    eprintln!(
        "oracle: {reloads} reloads, {parts_checked} parts decoded, {report_checks} reports ({report_far} off by more than a part), {n_saved} playlists saved"
    );
    // Debian's python3 (where the setup installs python3-m3u8), ahead of any other on PATH.
    let mut python = if std::path::Path::new("/usr/bin/python3").is_file() {
        std::process::Command::new("/usr/bin/python3")
    } else {
        tool("python3")
    };
    let out = python
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/e2e/ll_oracle.py"
        ))
        .arg(&saved)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ll_oracle.py:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    drop(publisher);
}

/// The nginx cache of `docker/nginx-cache.conf` in front of LL-HLS: a hundred players
/// following the live edge with blocking reloads and part downloads through the cache
/// cost the origin about one request per part (playlist and part), not one per player.
#[test]
fn a_cache_in_front_collapses_blocking_reloads_and_parts() {
    let _heavy = heavy();
    let server = Server::start(
        "ll-cache",
        "[channels.c.ingests.i]\nprotocol = \"test-pattern\"\n[channels.c.engines.e]\nladder = \"passthrough\"\n[distributions.d]\nchannel = \"c\"\n",
    );
    let path = "/live/d/cmaf/source/index.m3u8";
    server.wait_segments(path, 2, Duration::from_secs(60));
    let cache = NginxCache::start("ll-cache-nginx", server.http);
    let port = cache.port;
    const PLAYERS: usize = 100;
    const PARTS: usize = 8;
    // Every player starts from the same playlist, then follows its hints.
    let (status, _, body) = raw_get("127.0.0.1", port, path, &[]);
    assert_eq!(status, 200);
    let start = preload_hint(&body);
    let players: Vec<_> = (0..PLAYERS)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut hint = start;
                let mut got = 0;
                for _ in 0..PARTS {
                    let url = format!("{path}?{}", blocking_query(&hint));
                    let (status, _, body) = raw_get("127.0.0.1", port, &url, &[]);
                    if status != 200 {
                        return Err(format!("{url}: {status}"));
                    }
                    let part_url = format!("/live/d/cmaf/source/{hint}");
                    let (status, _, _) = raw_get("127.0.0.1", port, &part_url, &[]);
                    // A hinted part past a segment's end never comes (404): skip it.
                    if status == 200 {
                        got += 1;
                    }
                    hint = preload_hint(&body);
                }
                Ok(got)
            })
        })
        .collect();
    let mut parts_got = 0;
    for p in players {
        parts_got += p.join().unwrap().expect("player");
    }
    assert!(parts_got >= PLAYERS * (PARTS - 2), "{parts_got} parts");
    let log = cache.access_log();
    let origin = |kind: &str| {
        let lines: Vec<_> = log
            .iter()
            .filter(|(u, _)| match kind {
                "playlist" => u.contains("_HLS_msn="),
                _ => u.ends_with(".m4s") && u.matches('.').count() == 2,
            })
            .collect();
        let distinct: std::collections::HashSet<&str> =
            lines.iter().map(|(u, _)| u.as_str()).collect();
        let fetched = lines
            .iter()
            .filter(|(_, s)| matches!(s.as_str(), "MISS" | "EXPIRED" | "BYPASS" | "-"))
            .count();
        (lines.len(), distinct.len(), fetched)
    };
    for kind in ["playlist", "part"] {
        let (requests, distinct, fetched) = origin(kind);
        eprintln!("{kind}: {requests} requests, {distinct} distinct, {fetched} from the origin");
        assert!(requests >= PLAYERS * (PARTS - 1), "{kind}: {requests}");
        assert!(
            fetched <= distinct + distinct / 2,
            "{kind}: {fetched} origin requests for {distinct} distinct URLs ({requests} requests)"
        );
    }
}
