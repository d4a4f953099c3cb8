//! Extra audio tracks from publishers of their own: a main RTMP publisher (a 440 Hz
//! tone) and two audio-only publishers (660 Hz over RTMP, 1320 Hz over SRT) on one
//! channel. Every
//! distribution's CMAF multivariant playlist lists three audio renditions with their
//! names and languages (one that offers only one extra track lists two); decoding each
//! track's segments with ffmpeg gives its own tone; a source that leaves leaves silence
//! while the main stream goes on undisturbed, and its tone comes back with it. In TS the
//! main audio stays muxed and each extra track is an audio-only rendition.

use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "sources-admin-token-0123456789";

const CONFIG: &str = r#"
[api]
admin_tokens = ["sources-admin-token-0123456789"]

[channels.c]
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "main-key"
[channels.c.engines.e]
ladder = "passthrough"
outputs = ["cmaf", "ts"]
[channels.c.slate]
enabled = false

[channels.c.sources.fr]
kind = "audio"
protocol = "rtmp"
stream_key = "fr-key"
language = "fr"
name = "Français"

[channels.c.sources.es]
kind = "audio"
protocol = "srt"
stream_key = "es-key"
language = "es"
name = "Español"

[distributions.all]
channel = "c"

[distributions.fr-only]
channel = "c"
audio_tracks = ["fr"]
"#;

/// A server on [`CONFIG`], with its SRT port.
pub fn start(name: &str) -> (Server, u16) {
    let port = free_udp_port();
    let keys = format!("srt_listen = \"127.0.0.1:{port}\"");
    (Server::start_with_server_keys(name, &keys, CONFIG), port)
}

pub fn srt_url(port: u16, key: &str) -> String {
    format!("srt://127.0.0.1:{port}?streamid=publish:{key}&pkt_size=1316")
}

/// The dominant frequency of `pcm` (mono, 48 kHz), from its zero crossings; and its peak.
fn tone_of(pcm: &[i16]) -> (f64, i16) {
    let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let peak = pcm.iter().map(|s| s.saturating_abs()).max().unwrap_or(0);
    (crossings as f64 / 2.0 / (pcm.len() as f64 / 48_000.0), peak)
}

/// Decodes init + segment `msn` of a CMAF audio rendition to 48 kHz mono samples.
fn decode_audio(server: &Server, dist: &str, rendition: &str, msn: u64) -> Vec<i16> {
    let base = format!("/live/{dist}/cmaf/{rendition}");
    let playlist = String::from_utf8(get_ok(&server.url(&format!("{base}/index.m3u8")))).unwrap();
    let init = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .next_back()
        .and_then(|l| l.split('"').next())
        .expect("an init segment")
        .to_owned();
    let mut file = get_ok(&server.url(&format!("{base}/{init}")));
    file.extend(get_ok(&server.url(&format!("{base}/{msn}.m4s"))));
    pcm_of(&file, &format!("{rendition}-{msn}.mp4"))
}

/// Decodes a media file (`name` gives its extension) to 48 kHz mono samples.
fn pcm_of(file: &[u8], name: &str) -> Vec<i16> {
    let dir = scratch_dir("sources-decode");
    let path = dir.join(name);
    std::fs::write(&path, file).unwrap();
    let out = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&path)
        .args(["-f", "s16le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decode {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The newest complete segment of a rendition of `all`.
fn newest_of(server: &Server, rendition: &str) -> u64 {
    newest(server, &format!("/live/all/cmaf/{rendition}/index.m3u8"))
}

/// Waits until the newest segment of `rendition` decodes to a tone of `hz` (±3%), or
/// to silence when `hz` is 0.
fn wait_tone(server: &Server, rendition: &str, hz: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let msn = newest_of(server, rendition);
        let pcm = decode_audio(server, "all", rendition, msn);
        let (f, peak) = tone_of(&pcm);
        let ok = if hz == 0.0 {
            peak == 0
        } else {
            peak > 1000 && (f - hz).abs() < hz * 0.03
        };
        if ok {
            assert!(
                pcm.len() >= 90_000,
                "{rendition} {msn}: {} samples",
                pcm.len()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rendition}: segment {msn} is {f:.0} Hz (peak {peak}), not {hz} Hz; server log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn audio_sources_are_extra_tracks_with_their_own_tones() {
    let _heavy = heavy();
    let (server, srt) = start("sources");
    let main = Publisher::start(&server.rtmp_url("main-key"), 60, "320x180");
    server.wait_segments(
        "/live/all/cmaf/source/index.m3u8",
        1,
        Duration::from_secs(20),
    );
    let fr = Publisher::tone(&server.rtmp_url("fr-key"), 60, 660);
    let _es = Publisher::tone(&srt_url(srt, "es-key"), 60, 1320);

    // Three audio renditions in one group, with names and languages.
    let body = server.wait_for("/live/all/cmaf/index.m3u8", Duration::from_secs(20), |b| {
        master_playlist(b).alternatives.len() == 3
    });
    let m = master_playlist(&body);
    let names: Vec<_> = m
        .alternatives
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.language.as_deref(),
                a.uri.as_deref().unwrap(),
                a.default,
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("audio", None, "audio/index.m3u8", true),
            ("Español", Some("es"), "audio-es/index.m3u8", false),
            ("Français", Some("fr"), "audio-fr/index.m3u8", false),
        ]
    );
    assert!(
        m.alternatives
            .iter()
            .all(|a| a.group_id == "audio" && a.autoselect)
    );
    assert!(
        m.variants
            .iter()
            .all(|v| v.audio.as_deref() == Some("audio"))
    );
    // A distribution that offers one extra track lists it alone, and not the other.
    let fr_only = master_playlist(&get_ok(&server.url("/live/fr-only/cmaf/index.m3u8")));
    let uris: Vec<_> = fr_only
        .alternatives
        .iter()
        .filter_map(|a| a.uri.clone())
        .collect();
    assert_eq!(uris, vec!["audio/index.m3u8", "audio-fr/index.m3u8"]);
    let (status, _, _) = get(&server.url("/live/fr-only/cmaf/audio-es/index.m3u8"));
    assert_eq!(status, 404, "a track the distribution does not offer");

    // Each track is its own tone.
    wait_tone(&server, "audio", 440.0, Duration::from_secs(10));
    wait_tone(&server, "audio-fr", 660.0, Duration::from_secs(20));
    wait_tone(&server, "audio-es", 1320.0, Duration::from_secs(20));

    // LL-HLS rendition reports name the tracks a distribution offers, and only those.
    let reports = |dist: &str| -> Vec<String> {
        let body = get_ok(&server.url(&format!("/live/{dist}/cmaf/source/index.m3u8")));
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-RENDITION-REPORT:URI=\"../"))
            .filter_map(|l| l.split('/').next())
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(reports("all"), vec!["audio", "audio-es", "audio-fr"]);
    assert_eq!(reports("fr-only"), vec!["audio", "audio-fr"]);

    // TS: the main audio stays muxed with the video (the group's entry without a URI);
    // the extra tracks are audio-only renditions, each its own tone.
    let body = server.wait_for("/live/all/ts/index.m3u8", Duration::from_secs(20), |b| {
        master_playlist(b).alternatives.len() == 3
    });
    let ts = master_playlist(&body);
    let alts: Vec<_> = ts
        .alternatives
        .iter()
        .map(|a| (a.name.as_str(), a.uri.as_deref(), a.default))
        .collect();
    assert_eq!(
        alts,
        vec![
            ("audio", None, true),
            ("Español", Some("audio-es/index.m3u8"), false),
            ("Français", Some("audio-fr/index.m3u8"), false),
        ],
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        ts.variants
            .iter()
            .all(|v| v.audio.as_deref() == Some("audio"))
    );
    for (rendition, hz) in [("audio-fr", 660.0), ("audio-es", 1320.0), ("source", 440.0)] {
        let msn = newest(&server, &format!("/live/all/ts/{rendition}/index.m3u8"));
        let seg = get_ok(&server.url(&format!("/live/all/ts/{rendition}/{msn}.ts")));
        let (f, peak) = tone_of(&pcm_of(&seg, &format!("ts-{rendition}-{msn}.ts")));
        assert!(
            peak > 1000 && (f - hz).abs() < hz * 0.03,
            "TS {rendition} {msn}: {f:.0} Hz (peak {peak}), not {hz} Hz"
        );
    }
    let (status, _, _) = get(&server.url("/live/fr-only/ts/audio-es/index.m3u8"));
    assert_eq!(
        status, 404,
        "a track the distribution does not offer, in TS too"
    );

    // Status shows both sources live, with what they sent.
    let sources = |server: &Server| -> serde_json::Value {
        let body = get_ok(&server.url("/api/v1/status"));
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["channels"]["c"]["sources"]
            .clone()
    };
    let s = sources(&server);
    assert_eq!(s["fr"]["live"], true, "{s}");
    assert_eq!(s["fr"]["name"], "Français");
    assert_eq!(s["fr"]["language"], "fr");
    assert_eq!(s["fr"]["rendition"], "audio-fr");
    assert!(s["es"]["frames"].as_u64().unwrap() > 100, "{s}");
    let metrics = String::from_utf8(get_ok(&server.url("/metrics"))).unwrap();
    assert!(
        metrics.contains("sluice_source_live{channel=\"c\",source=\"fr\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_source_bytes_total{channel=\"c\",source=\"es\"}"));

    // The French commentator leaves: silence on its track, the rest goes on.
    let video_before = newest_of(&server, "source");
    drop(fr);
    wait_tone(&server, "audio-fr", 0.0, Duration::from_secs(20));
    let s = sources(&server);
    assert_eq!(
        (&s["fr"]["live"], &s["es"]["live"]),
        (&false.into(), &true.into()),
        "{s}"
    );
    wait_tone(&server, "audio-es", 1320.0, Duration::from_secs(5));
    still_advancing(&server, "/live/all/cmaf/source/index.m3u8", video_before);
    let fr_after = newest_of(&server, "audio-fr");

    // It returns: its tone again, on the same playlist.
    let _fr = Publisher::tone(&server.rtmp_url("fr-key"), 60, 660);
    wait_tone(&server, "audio-fr", 660.0, Duration::from_secs(20));
    assert!(newest_of(&server, "audio-fr") > fr_after);

    // Disabled through the control API: its publisher is cut, its track goes silent,
    // and nothing else restarts.
    let resp = ureq::request("PATCH", &server.url("/api/v1/channels/c/sources/fr"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"enabled": false}"#);
    assert!(resp.is_ok(), "PATCH source: {resp:?}");
    wait_tone(&server, "audio-fr", 0.0, Duration::from_secs(20));
    let s = sources(&server);
    assert_eq!(s["fr"]["live"], false, "{s}");
    assert!(server.log_text().contains("source c/fr changed"));
    assert!(
        !server.log_text().contains("restarted"),
        "{}",
        server.log_text()
    );
    let (status, _, _) = get(&server.url("/live/all/cmaf/audio-fr/index.m3u8"));
    assert_eq!(status, 200, "the track stays, silent");

    let video = get_ok(&server.url("/live/all/cmaf/source/index.m3u8"));
    assert!(
        !String::from_utf8_lossy(&video).contains("#EXT-X-DISCONTINUITY\n"),
        "the main stream was not disturbed"
    );
    drop(main);
}

/// Sources pulled from where they are (`srt-pull`: Sluice calls an SRT listener): an
/// audio track and a camera angle, each an ffmpeg listener started after the server
/// (the pulls retry until they answer).
#[test]
fn pulled_sources_are_tracks_and_angles_too() {
    let _heavy = heavy();
    let (fr_port, cam_port) = (free_udp_port(), free_udp_port());
    let config = format!(
        r#"
[ladders.main]
segment_seconds = 2.0
renditions = [{{ name = "180p", width = 320, height = 180, video_kbps = 400 }}]

[channels.c]
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "main-key"
[channels.c.engines.e]
ladder = "main"
[channels.c.slate]
enabled = false

[channels.c.sources.fr]
kind = "audio"
protocol = "srt-pull"
url = "srt://127.0.0.1:{fr_port}?latency=200"
language = "fr"

[channels.c.sources.cam]
kind = "video"
protocol = "srt-pull"
url = "srt://127.0.0.1:{cam_port}?latency=200"

[distributions.all]
channel = "c"
"#
    );
    let server = Server::start("sources-pulled", &config);
    let _main = Publisher::start(&server.rtmp_url("main-key"), 60, "320x180");
    server.wait_segments("/live/all/cmaf/180p/index.m3u8", 1, Duration::from_secs(30));
    let listener = |port: u16| format!("srt://127.0.0.1:{port}?mode=listener&pkt_size=1316");
    let _fr = Publisher::tone(&listener(fr_port), 60, 660);
    let _cam = Publisher::camera(&listener(cam_port), 60, "320x180");

    server.wait_for("/live/all/cmaf/index.m3u8", Duration::from_secs(30), |b| {
        master_playlist(b).alternatives.len() == 2
    });
    wait_tone(&server, "audio-fr", 660.0, Duration::from_secs(20));
    wait_tone(&server, "audio", 440.0, Duration::from_secs(5));
    let angle = server.wait_for(
        "/live/all/angle/cam/cmaf/index.m3u8",
        Duration::from_secs(30),
        |b| !master_playlist(b).variants.is_empty(),
    );
    let m = master_playlist(&angle);
    assert_eq!(m.variants[0].uri, "180p/index.m3u8");
    let names: Vec<_> = m.alternatives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["audio", "fr"],
        "the angle offers the channel's tracks"
    );
    server.wait_segments(
        "/live/all/angle/cam/cmaf/180p/index.m3u8",
        2,
        Duration::from_secs(30),
    );
}

/// A control API call with the admin token: its status (and the body, for messages).
fn api(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let req = ureq::request(method, &server.url(&format!("/api/v1{path}")))
        .set("Authorization", &format!("Bearer {TOKEN}"));
    let resp = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    match resp {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Sources added and removed through the control API while the channel runs: a track
/// removed leaves the playlists (404), one added is offered once its publisher sends, and
/// so is a camera angle (with a ladder added first); the main input is never cut off and
/// the channel does not restart.
#[test]
fn sources_are_added_and_removed_without_restarting_the_channel() {
    let _heavy = heavy();
    let (server, srt) = start("sources-live");
    let main = Publisher::start(&server.rtmp_url("main-key"), 90, "320x180");
    server.wait_segments(
        "/live/all/cmaf/source/index.m3u8",
        1,
        Duration::from_secs(20),
    );
    let _fr = Publisher::tone(&server.rtmp_url("fr-key"), 90, 660);
    let _es = Publisher::tone(&srt_url(srt, "es-key"), 90, 1320);
    server.wait_for("/live/all/cmaf/index.m3u8", Duration::from_secs(20), |b| {
        master_playlist(b).alternatives.len() == 3
    });
    wait_tone(&server, "audio-fr", 660.0, Duration::from_secs(20));

    // Removed (the distribution that offers it alone first): gone from the playlists and
    // the store.
    let (status, body) = api(&server, "DELETE", "/distributions/fr-only", None);
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, body) = api(&server, "DELETE", "/channels/c/sources/fr", None);
    assert!((200..300).contains(&status), "{status} {body}");
    server.wait_for("/live/all/cmaf/index.m3u8", Duration::from_secs(10), |b| {
        master_playlist(b).alternatives.len() == 2
    });
    let (status, _, _) = get(&server.url("/live/all/cmaf/audio-fr/index.m3u8"));
    assert_eq!(status, 404);
    wait_tone(&server, "audio-es", 1320.0, Duration::from_secs(10));

    // Added: a German track, then a camera angle with a ladder of its own.
    let (status, body) = api(
        &server,
        "POST",
        "/channels/c/sources",
        Some(
            serde_json::json!({"id": "de", "kind": "audio", "protocol": "rtmp",
            "stream_key": "de-key", "language": "de", "name": "Deutsch"}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let _de = Publisher::tone(&server.rtmp_url("de-key"), 60, 880);
    server.wait_for("/live/all/cmaf/index.m3u8", Duration::from_secs(30), |b| {
        master_playlist(b).alternatives.len() == 3
    });
    wait_tone(&server, "audio-de", 880.0, Duration::from_secs(30));
    let m = master_playlist(&get_ok(&server.url("/live/all/cmaf/index.m3u8")));
    let names: Vec<_> = m.alternatives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["audio", "Español", "Deutsch"]);

    let (status, body) = api(
        &server,
        "POST",
        "/ladders",
        Some(serde_json::json!({"id": "cam", "segment_seconds": 2.0,
            "renditions": [{"name": "cam-144p", "width": 256, "height": 144, "video_kbps": 250}]})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api(
        &server,
        "POST",
        "/channels/c/sources",
        Some(
            serde_json::json!({"id": "cam", "kind": "video", "protocol": "rtmp",
            "stream_key": "cam-key", "ladder": "cam"}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let _cam = Publisher::camera(&server.rtmp_url("cam-key"), 60, "320x180");
    server.wait_segments(
        "/live/all/angle/cam/cmaf/cam-144p/index.m3u8",
        1,
        Duration::from_secs(30),
    );

    // The main input was never cut off, and nothing restarted.
    let log = server.log_text();
    assert!(
        log.contains("source c/fr removed") && log.contains("source c/de added"),
        "{log}"
    );
    assert!(!log.contains("restarted"), "{log}");
    let video = String::from_utf8(get_ok(&server.url("/live/all/cmaf/source/index.m3u8"))).unwrap();
    assert!(
        !video.contains("#EXT-X-DISCONTINUITY\n"),
        "the main stream was not disturbed:\n{video}"
    );
    drop(main);
}
