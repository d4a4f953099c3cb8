//! End-to-end: the real `sluice` binary, real RTMP from ffmpeg, real HTTP,
//! and independent parsers (ffprobe, m3u8-rs, the mp4 crate) on the output.

mod angles;
mod api;
mod cache_edge;
mod failover;
mod hardening;
mod llhls;
mod logs;
mod metrics;
mod policy;
mod pull;
mod recording;
mod relay;
mod reload;
mod rtmp_client;
mod sources;
mod srt;
mod status_page;
mod support;

use std::time::Duration;

use support::*;

pub(crate) const LADDER: &str = r#"
[ladders.test]
segment_seconds = 1.0
window_seconds = 30
audio_kbps = 96
encoder_preset = "ultrafast"
renditions = [
  { name = "360p", width = 640, height = 360, video_kbps = 800 },
  { name = "180p", width = 320, height = 180, video_kbps = 300 },
]

[ladders.small]
segment_seconds = 1.0
window_seconds = 30
encoder_preset = "ultrafast"
renditions = [{ name = "180p", width = 320, height = 180, video_kbps = 300 }]
"#;

/// Channel `one`, published with key `key-one`, one engine on `ladder`, distribution `one`.
/// No slate: these tests look at what publishers alone make of the playlists (the slate
/// has its own test, in `failover`).
fn one_channel(ladder: &str) -> String {
    format!(
        "{LADDER}
[channels.one.ingests.main]
protocol = \"rtmp\"
stream_key = \"key-one\"
[channels.one.engines.main]
ladder = \"{ladder}\"
[channels.one.slate]
enabled = false
[distributions.one]
channel = \"one\"
"
    )
}

const SEG: f64 = 1.0;
const FRAME: f64 = 1.0 / 30.0;
const WAIT: Duration = Duration::from_secs(40);

fn start_time_of(server: &Server, dist: &str, rendition: &str, init: &[u8], msn: u64) -> f64 {
    let seg = get_ok(&server.url(&format!("/live/{dist}/cmaf/{rendition}/{msn}.m4s")));
    let p = probe(&[init, &seg].concat(), "mp4");
    p.first_pts()
}

#[test]
fn rtmp_push_becomes_an_aligned_cmaf_and_ts_ladder() {
    let _heavy = heavy();
    let server = Server::start("ladder", &one_channel("test"));
    assert_eq!(
        get(&server.url("/live/one/cmaf/index.m3u8")).0,
        503,
        "not live before a publisher"
    );
    let publisher = Publisher::start(&server.rtmp_url("key-one"), 9, "640x360");

    // CMAF multivariant: every variant fully described, audio as its own group.
    let body = server.wait_for("/live/one/cmaf/index.m3u8", WAIT, |b| {
        String::from_utf8_lossy(b).contains("mp4a")
    });
    let master = master_playlist(&body);
    assert_eq!(
        master.variants.len(),
        2,
        "{}",
        String::from_utf8_lossy(&body)
    );
    for (v, (w, h)) in master.variants.iter().zip([(640, 360), (320, 180)]) {
        assert!(v.bandwidth > 0);
        assert!(
            v.average_bandwidth
                .is_some_and(|a| a > 0 && a <= v.bandwidth)
        );
        let res = v.resolution.expect("RESOLUTION");
        assert_eq!((res.width, res.height), (w, h));
        let codecs = v.codecs.clone().expect("CODECS");
        assert!(
            codecs.starts_with("avc1.") && codecs.contains("mp4a.40.2"),
            "{codecs}"
        );
        assert!((v.frame_rate.expect("FRAME-RATE") - 30.0).abs() < 0.5);
        assert_eq!(v.audio.as_deref(), Some("audio"));
    }
    let audio = master
        .alternatives
        .iter()
        .find(|a| a.group_id == "audio")
        .expect("audio rendition group");
    assert_eq!(audio.uri.as_deref(), Some("audio/index.m3u8"));

    // Wait for enough segments, then compare renditions.
    server.wait_segments("/live/one/cmaf/360p/index.m3u8", 5, WAIT);
    server.wait_segments("/live/one/cmaf/180p/index.m3u8", 5, WAIT);
    server.wait_segments("/live/one/cmaf/audio/index.m3u8", 5, WAIT);
    let playlists: Vec<_> = ["360p", "180p", "audio"]
        .iter()
        .map(|r| {
            media_playlist(&get_ok(
                &server.url(&format!("/live/one/cmaf/{r}/index.m3u8")),
            ))
        })
        .collect();
    for p in &playlists {
        // LL-HLS (parts are on by default): version 9 for EXT-X-SKIP.
        assert_eq!(p.version, Some(9));
        assert_eq!(p.target_duration, 1);
        assert!(
            p.segments[0].map.is_some(),
            "EXT-X-MAP on the first segment"
        );
    }
    // The second listed segment is a whole one (the first may start mid-interval).
    let msn = playlists[0].media_sequence + 1;
    for p in &playlists {
        assert!(
            msns(p).contains(&msn),
            "every rendition lists segment {msn}: {:?}",
            msns(p)
        );
    }

    let mut starts = Vec::new();
    for (r, (w, h)) in [("360p", (640, 360)), ("180p", (320, 180))] {
        let p = &playlists[if r == "360p" { 0 } else { 1 }];
        let init_uri = &p.segments[0].map.as_ref().unwrap().uri;
        let init = get_ok(&server.url(&format!("/live/one/cmaf/{r}/{init_uri}")));
        // The init segment parses with the mp4 crate and describes the rendition.
        let reader =
            mp4::Mp4Reader::read_header(std::io::Cursor::new(init.clone()), init.len() as u64)
                .expect("init parses");
        let track = reader
            .tracks()
            .values()
            .find(|t| t.track_type().ok() == Some(mp4::TrackType::Video))
            .expect("video track");
        assert_eq!((track.width(), track.height()), (w as u16, h as u16));

        for (i, seg) in p.segments.iter().enumerate().skip(1).take(3) {
            let n = p.media_sequence + i as u64;
            let (status, headers, body) =
                get(&server.url(&format!("/live/one/cmaf/{r}/{}", seg.uri)));
            assert_eq!(status, 200);
            assert_eq!(header(&headers, "content-type"), Some("video/iso.segment"));
            assert!(
                header(&headers, "cache-control")
                    .unwrap()
                    .contains("immutable")
            );
            let pr = probe(&[init.as_slice(), &body].concat(), "mp4");
            assert_eq!((pr.width, pr.height), (w, h), "segment {n} of {r}");
            assert!(pr.frames[0].1, "segment {n} of {r} starts with a keyframe");
            assert_eq!(
                pr.frames.iter().filter(|f| f.1).count(),
                1,
                "one keyframe per segment: {:?}",
                pr.frames
            );
            let span = pr.frames.len() as f64 * FRAME;
            assert!(
                (span - SEG).abs() <= 1.5 * FRAME,
                "segment {n} of {r} lasts {span} s"
            );
            assert!(
                (seg.duration as f64 - SEG).abs() <= 1.5 * FRAME,
                "EXTINF {}",
                seg.duration
            );
            // Segment n covers media time [n, n+1) s.
            assert!(
                (pr.first_pts() - n as f64 * SEG).abs() < 1.5 * FRAME,
                "segment {n} starts at {}",
                pr.first_pts()
            );
        }
        starts.push(start_time_of(&server, "one", r, &init, msn));
    }
    assert!(
        (starts[0] - starts[1]).abs() < 0.001,
        "renditions start segment {msn} at the same time: {starts:?}"
    );

    // LL-HLS from the real transcode, over HTTP: a listed segment is the concatenation of
    // its parts, each at most PART-TARGET, the first independent one decodes after the
    // init segment; a blocking request for the hinted part is answered once it exists.
    let pl_url = server.url("/live/one/cmaf/360p/index.m3u8");
    let text = String::from_utf8(get_ok(&pl_url)).unwrap();
    assert!(
        text.contains("#EXT-X-PART-INF:PART-TARGET=0.50000\n"),
        "{text}"
    );
    let p = media_playlist(text.as_bytes());
    let with_parts = p.segments.iter().rev().find(|s| !s.unknown_tags.is_empty());
    let seg = with_parts.expect("the newest segments list their parts");
    let seg_msn: u64 = seg.uri.trim_end_matches(".m4s").parse().unwrap();
    let mut joined = Vec::new();
    for tag in seg.unknown_tags.iter().filter(|t| t.tag == "X-PART") {
        let rest = tag.rest.as_deref().unwrap_or("");
        let duration: f64 = rest
            .split(',')
            .find_map(|a| a.strip_prefix("DURATION="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(duration <= 0.5, "{rest}");
        let uri = rest
            .split("URI=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let (status, headers, body) = get(&server.url(&format!("/live/one/cmaf/360p/{uri}")));
        assert_eq!(status, 200, "{uri}");
        assert!(
            header(&headers, "cache-control")
                .unwrap()
                .contains("immutable")
        );
        if joined.is_empty() {
            assert!(rest.contains("INDEPENDENT=YES"), "{rest}");
            let init_uri = &p.segments[0].map.as_ref().unwrap().uri;
            let init = get_ok(&server.url(&format!("/live/one/cmaf/360p/{init_uri}")));
            let pr = probe(&[init.as_slice(), &body].concat(), "mp4");
            assert!(pr.frames[0].1 && pr.frames.len() >= 10, "{:?}", pr.frames);
        }
        joined.extend_from_slice(&body);
    }
    let whole = get_ok(&server.url(&format!("/live/one/cmaf/360p/{seg_msn}.m4s")));
    assert_eq!(joined, whole, "segment {seg_msn} is its parts");
    let hint = preload_hint(text.as_bytes());
    let blocking = format!("{pl_url}?{}", blocking_query(&hint));
    let (status, _, body) = get(&blocking);
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("URI=\"{hint}\"")),
        "the blocking answer lists {hint}"
    );

    // TS: audio muxed into each rendition.
    let master = master_playlist(&get_ok(&server.url("/live/one/ts/index.m3u8")));
    assert_eq!(master.variants.len(), 2);
    assert!(
        master
            .variants
            .iter()
            .all(|v| v.audio.is_none() && v.codecs.as_deref().unwrap_or("").contains("mp4a"))
    );
    let mut ts_starts = Vec::new();
    for (r, (w, h)) in [("360p", (640, 360)), ("180p", (320, 180))] {
        let p = server.wait_segments(&format!("/live/one/ts/{r}/index.m3u8"), 4, WAIT);
        assert_eq!(p.version, Some(3));
        assert!(msns(&p).contains(&msn));
        let (status, headers, body) = get(&server.url(&format!("/live/one/ts/{r}/{msn}.ts")));
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some("video/mp2t"));
        assert!(body.len() % 188 == 0 && body[0] == 0x47);
        let pr = probe(&body, "ts");
        assert_eq!((pr.width, pr.height), (w, h));
        assert!(pr.has_audio, "audio muxed into the TS rendition");
        assert!(pr.frames[0].1, "TS segment starts with a keyframe");
        ts_starts.push(pr.first_pts());
    }
    assert!(
        (ts_starts[0] - ts_starts[1]).abs() < 0.001,
        "TS renditions aligned: {ts_starts:?}"
    );

    // Errors.
    assert_eq!(get(&server.url("/live/nope/cmaf/index.m3u8")).0, 404);
    assert_eq!(get(&server.url("/live/one/cmaf/1080p/index.m3u8")).0, 404);
    assert_eq!(get(&server.url("/live/one/cmaf/360p/99999999.m4s")).0, 404);
    assert_eq!(get(&server.url("/live/one/../../etc/passwd")).0, 404);
    let (ok, err) = publisher.wait(WAIT);
    assert!(ok, "publisher ran to the end: {err}");
}

#[test]
fn wrong_key_is_refused_while_channels_publish_side_by_side() {
    let _heavy = heavy();
    let server = Server::start(
        "keys",
        &format!(
            "{LADDER}
[channels.one.ingests.main]
protocol = \"rtmp\"
stream_key = \"key-one\"
[channels.one.engines.main]
ladder = \"small\"
[channels.two.ingests.main]
protocol = \"rtmp\"
stream_key = \"key-two\"
[channels.two.engines.copy]
ladder = \"passthrough\"
[distributions.one]
channel = \"one\"
[distributions.two]
channel = \"two\"
"
        ),
    );
    let one = Publisher::start(&server.rtmp_url("key-one"), 8, "320x180");
    let two = Publisher::start(&server.rtmp_url("key-two"), 8, "640x360");
    let bad = Publisher::start(&server.rtmp_url("no-such-key"), 8, "320x180");
    let (ok, _) = bad.wait(Duration::from_secs(20));
    assert!(!ok, "a publisher with an unknown key is refused");
    // A second publisher on a live channel's key is refused too.
    std::thread::sleep(Duration::from_secs(2));
    let dup = Publisher::start(&server.rtmp_url("key-one"), 8, "320x180");
    let (ok, _) = dup.wait(Duration::from_secs(20));
    assert!(!ok, "a second publisher on a live channel is refused");

    // Both channels kept going.
    let p1 = server.wait_segments("/live/one/cmaf/180p/index.m3u8", 4, WAIT);
    let p2 = server.wait_segments("/live/two/ts/source/index.m3u8", 3, WAIT);
    // Passthrough keeps the input's picture size and muxes its audio.
    let seg = get_ok(&server.url(&format!("/live/two/ts/source/{}", p2.segments[1].uri)));
    let pr = probe(&seg, "ts");
    assert_eq!((pr.width, pr.height), (640, 360));
    assert!(pr.has_audio);
    let master = master_playlist(&get_ok(&server.url("/live/two/cmaf/index.m3u8")));
    assert_eq!(master.variants.len(), 1);
    assert_eq!(
        master.variants[0].resolution.map(|r| (r.width, r.height)),
        Some((640, 360))
    );
    assert!(p1.segments.len() >= 4);
    assert!(server.log_text().contains("RTMP publish refused"));
    assert!(
        !server.log_text().contains("no-such-key"),
        "stream keys are never logged"
    );
    assert!(
        one.wait(WAIT).0 && two.wait(WAIT).0,
        "the good publishers were not disturbed"
    );
}

#[test]
fn publisher_reconnect_continues_the_sequence_after_a_discontinuity() {
    let _heavy = heavy();
    let server = Server::start("reconnect", &one_channel("small"));
    let path = "/live/one/cmaf/180p/index.m3u8";
    let first = Publisher::start(&server.rtmp_url("key-one"), 5, "320x180");
    assert!(first.wait(WAIT).0);
    // Nothing is lost when the publisher leaves: its last, partial segment is
    // published without waiting for a next session (5 s were pushed).
    let before = media_playlist(&server.wait_for(path, WAIT, |b| {
        media_playlist(b)
            .segments
            .iter()
            .map(|s| s.duration as f64)
            .sum::<f64>()
            > 5.0 - 2.0 * FRAME
    }));
    let last_before = *msns(&before).last().unwrap();
    assert!(before.segments.iter().all(|s| !s.discontinuity));

    std::thread::sleep(Duration::from_secs(1));
    let second = Publisher::start(&server.rtmp_url("key-one"), 5, "320x180");
    let mut seen_sequence = before.media_sequence;
    let after = server.wait_for(path, WAIT, |b| {
        let p = media_playlist(b);
        assert!(
            p.media_sequence >= seen_sequence,
            "media sequence never goes back"
        );
        p.segments
            .iter()
            .position(|s| s.discontinuity)
            .is_some_and(|i| p.segments.len() >= i + 3)
    });
    let after = media_playlist(&after);
    let seam = after.segments.iter().position(|s| s.discontinuity).unwrap();
    let numbers = msns(&after);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(
        numbers[seam] > last_before,
        "segments after the seam are numbered after the ones before"
    );
    assert_eq!(after.segments.iter().filter(|s| s.discontinuity).count(), 1);
    assert!(
        numbers.contains(&before.media_sequence),
        "the viewer's earlier segments are still listed"
    );
    seen_sequence = after.media_sequence;
    let _ = seen_sequence;

    // The first segment after the seam decodes and starts with a keyframe.
    let init_uri = after.segments[seam]
        .map
        .as_ref()
        .or(after.segments[0].map.as_ref())
        .unwrap()
        .uri
        .clone();
    let init = get_ok(&server.url(&format!("/live/one/cmaf/180p/{init_uri}")));
    let seg = get_ok(&server.url(&format!("/live/one/cmaf/180p/{}", after.segments[seam].uri)));
    let pr = probe(&[init, seg].concat(), "mp4");
    assert!(pr.frames[0].1);
    let ts = media_playlist(&get_ok(&server.url("/live/one/ts/180p/index.m3u8")));
    assert!(
        ts.segments.iter().any(|s| s.discontinuity),
        "TS playlist marks the seam too"
    );
    assert!(second.wait(WAIT).0);
}

#[test]
fn check_reports_every_config_error_with_its_position() {
    let dir = scratch_dir("check");
    // `sluice <command> --config <path>`: its exit code and standard error.
    let sluice = |command: &str, config: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([command, "--config"])
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nhttp_listen = \"127.0.0.1:8080\"\nrtmp_listen = \"127.0.0.1:8080\"\n\n[distributions.x]\nchannel = \"nope\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, stderr) = sluice("check", &bad);
    assert_eq!(code, Some(1), "{stderr}");
    for pos in ["bad.toml:3:", "bad.toml:6:", "bad.toml:7:"] {
        assert!(stderr.contains(pos), "missing an error at {pos}:\n{stderr}");
    }
    // A source the server could not serve (a camera angle on a channel without a ladder
    // to encode it with) is refused by check and by serve, with its position.
    let geo = dir.join("extra.toml");
    std::fs::write(
        &geo,
        "[channels.c.ingests.i]\nprotocol = \"test-pattern\"\nmax_kbps = 5000\n[channels.c.engines.e]\nladder = \"passthrough\"\n[channels.c.sources.cam]\nkind = \"video\"\nprotocol = \"rtmp\"\nstream_key = \"cam-key\"\n\n[distributions.d]\nchannel = \"c\"\ntarget_latency_seconds = 2.5\n",
    )
    .unwrap();
    for command in ["check", "serve"] {
        let (code, stderr) = sluice(command, &geo);
        assert_eq!(code, Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("extra.toml:6:1: a video source needs a ladder"),
            "{command}: {stderr}"
        );
    }
    // A hardware encoder named in a ladder but not on this machine: serve refuses to start
    // and says which ladder and what is missing (check cannot know the machine it runs on).
    if !std::path::Path::new("/dev/nvidia0").exists() {
        let gpu = dir.join("gpu.toml");
        std::fs::write(
            &gpu,
            format!(
                "{}[ladders.gpu]\nencoder = \"nvenc\"\nrenditions = [{{ name = \"r\", width = 320, height = 180, video_kbps = 300 }}]\n",
                one_channel("gpu")
            ),
        )
        .unwrap();
        let (code, stderr) = sluice("serve", &gpu);
        assert!(code != Some(0), "{stderr}");
        assert!(
            stderr.contains("ladders.gpu: encoder = \"nvenc\", but nvh264enc is not usable here"),
            "{stderr}"
        );
    }
    let (code, stderr) = sluice(
        "check",
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/sluice.example.toml"
        )),
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn embedded_default_serves_the_test_pattern() {
    let _heavy = heavy();
    let dir = scratch_dir("default");
    let server = Server::spawn(&["serve"], 8080, 1935, &dir);
    let master = master_playlist(&server.wait_for("/live/demo/cmaf/index.m3u8", WAIT, |b| {
        String::from_utf8_lossy(b).contains("mp4a")
    }));
    let sizes: Vec<_> = master
        .variants
        .iter()
        .map(|v| v.resolution.map(|r| (r.width, r.height)))
        .collect();
    assert_eq!(
        sizes,
        vec![Some((1280, 720)), Some((854, 480)), Some((640, 360))]
    );
    let p = server.wait_segments("/live/demo/ts/720p/index.m3u8", 2, WAIT);
    let seg = get_ok(&server.url(&format!("/live/demo/ts/720p/{}", p.segments[1].uri)));
    let pr = probe(&seg, "ts");
    assert_eq!((pr.width, pr.height), (1280, 720));
    assert!(pr.has_audio && pr.frames[0].1);
}

#[test]
fn b_frames_and_a_gstreamer_publisher_pass_through() {
    let _heavy = heavy();
    let server = Server::start("passthrough", &one_channel("passthrough"));
    // ffmpeg with B-frames: composition offsets must survive into fMP4 and TS.
    assert!(
        Publisher::with_b_frames(&server.rtmp_url("key-one"), 5, "320x180")
            .wait(WAIT)
            .0
    );
    let p = server.wait_segments("/live/one/cmaf/source/index.m3u8", 2, WAIT);
    let init = get_ok(&server.url(&format!(
        "/live/one/cmaf/source/{}",
        p.segments[0].map.as_ref().unwrap().uri
    )));
    for output in ["cmaf", "ts"] {
        let seg = get_ok(&server.url(&format!(
            "/live/one/{output}/source/{}.{}",
            p.media_sequence + 1,
            if output == "cmaf" { "m4s" } else { "ts" }
        )));
        let pr = if output == "cmaf" {
            probe(&[init.as_slice(), &seg].concat(), "mp4")
        } else {
            probe(&seg, "ts")
        };
        assert!(
            pr.pict_types.starts_with('I') && pr.pict_types.contains('B'),
            "{output}: {}",
            pr.pict_types
        );
        assert!(
            pr.decode_errors.is_empty(),
            "{output} decodes cleanly: {}",
            pr.decode_errors
        );
        assert!(
            pr.frames.windows(2).all(|w| w[1].0 > w[0].0),
            "{output}: presentation times increase"
        );
    }

    // GStreamer's RTMP client is accepted too; its session follows after a discontinuity.
    let (ok, err) = Publisher::gstreamer(&server.rtmp_url("key-one"), 4).wait(WAIT);
    assert!(ok, "gst-launch rtmp2sink: {err}");
    let after = media_playlist(
        &server.wait_for("/live/one/ts/source/index.m3u8", WAIT, |b| {
            let p = media_playlist(b);
            p.segments.iter().position(|s| s.discontinuity).is_some()
        }),
    );
    let seam = after.segments.iter().position(|s| s.discontinuity).unwrap();
    let seg = get_ok(&server.url(&format!("/live/one/ts/source/{}", after.segments[seam].uri)));
    let pr = probe(&seg, "ts");
    assert_eq!((pr.width, pr.height), (320, 180));
    assert!(
        pr.has_audio && pr.frames[0].1 && pr.decode_errors.is_empty(),
        "{pr:?}"
    );
}

/// `reuse_top_rung`: an encoder at the top rung's size, with B-frames and a keyframe every
/// segment, is the top rendition as it is (B-frames and all), while the lower one is
/// encoded; both cut at the same instants, and the status API says what happened.
#[test]
fn top_rung_reuses_an_encoder_whose_keyframes_are_on_the_grid() {
    let _heavy = heavy();
    let config = format!(
        "{}
[ladders.reuse]
segment_seconds = 1.0
window_seconds = 30
encoder_preset = \"ultrafast\"
reuse_top_rung = true
renditions = [
  {{ name = \"360p\", width = 640, height = 360, video_kbps = 800 }},
  {{ name = \"180p\", width = 320, height = 180, video_kbps = 300 }},
]
",
        one_channel("reuse")
    );
    let server = Server::start("reuse", &config);
    let publisher = Publisher::with_b_frames(&server.rtmp_url("key-one"), 8, "640x360");
    server.wait_segments("/live/one/ts/180p/index.m3u8", 4, WAIT);
    let p = server.wait_segments("/live/one/ts/360p/index.m3u8", 4, WAIT);
    let (status, _, body) = get(&server.url("/api/v1/status"));
    assert_eq!(status, 200);
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let engine = &st["channels"]["one"]["engines"]["main"];
    assert_eq!(engine["encoder"], "x264", "{engine}");
    assert_eq!(engine["top_rung"], "reused", "{engine}");

    let msn = p.media_sequence + 1;
    let mut starts = Vec::new();
    for (r, reused) in [("360p", true), ("180p", false)] {
        let pr = probe(
            &get_ok(&server.url(&format!("/live/one/ts/{r}/{msn}.ts"))),
            "ts",
        );
        assert!(pr.frames[0].1, "{r} {msn} starts with a keyframe");
        assert!(pr.decode_errors.is_empty(), "{r}: {}", pr.decode_errors);
        assert_eq!(
            pr.pict_types.contains('B'),
            reused,
            "{r}: {} (the encoder's B-frames only where reused)",
            pr.pict_types
        );
        starts.push(pr.first_pts());
    }
    assert!(
        (starts[0] - starts[1]).abs() < 0.001,
        "segment {msn} starts at the same instant: {starts:?}"
    );
    assert!(publisher.wait(WAIT).0);
}
