//! Camera angles: a main RTMP publisher and a second camera over SRT on one channel. The
//! angle plays from its own multivariant playlist
//! (`/live/<distribution>/angle/<source>/cmaf/index.m3u8`) with its own ladder and the
//! channel's sound, and segment N of the angle starts within one frame of segment N of
//! the main stream (decoded timestamps, by ffprobe). The camera leaves: the angle is gone
//! (503) while the main stream goes on without a discontinuity; it returns, aligned again;
//! disabled through the control API, it is gone again, and nothing restarts.

use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "angles-admin-token-0123456789";

const CONFIG: &str = r#"
[api]
admin_tokens = ["angles-admin-token-0123456789"]

[ladders.main]
segment_seconds = 2.0
part_seconds = 0.5
renditions = [{ name = "180p", width = 320, height = 180, video_kbps = 400 }]

[ladders.cam]
segment_seconds = 2.0
part_seconds = 0.5
renditions = [{ name = "cam-144p", width = 256, height = 144, video_kbps = 250 }]

[channels.c]
[channels.c.ingests.main]
protocol = "rtmp"
stream_key = "main-key"
[channels.c.engines.e]
ladder = "main"
outputs = ["cmaf", "ts"]
[channels.c.slate]
enabled = false

[channels.c.sources.cam]
kind = "video"
protocol = "srt"
stream_key = "cam-key"
name = "Tactical camera"
ladder = "cam"

[distributions.all]
channel = "c"
"#;

/// One frame at 30 fps, and a millisecond for rounding.
const ONE_FRAME: f64 = 1.0 / 30.0 + 0.001;

/// Init segment + segment `msn` of the CMAF media playlist at `base` (`.../<rendition>`).
fn segment(server: &Server, base: &str, msn: u64) -> Vec<u8> {
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
    file
}

/// The segment numbers listed by the media playlist at `path`.
fn listed(server: &Server, path: &str) -> std::ops::RangeInclusive<u64> {
    let p = media_playlist(&get_ok(&server.url(path)));
    p.media_sequence..=p.media_sequence + p.segments.len() as u64 - 1
}

/// Waits for the angle to list two segments, then checks that a segment number both
/// playlists list starts at the same instant (within a frame) in both, decoded.
fn assert_aligned(server: &Server) -> u64 {
    let angle = "/live/all/angle/cam/cmaf/cam-144p";
    let main = "/live/all/cmaf/180p";
    server.wait_segments(&format!("{angle}/index.m3u8"), 2, Duration::from_secs(30));
    let (a, m) = (
        listed(server, &format!("{angle}/index.m3u8")),
        listed(server, &format!("{main}/index.m3u8")),
    );
    let n = (*a.end()).min(*m.end());
    assert!(a.contains(&n) && m.contains(&n), "angle {a:?}, main {m:?}");
    let pa = probe(&segment(server, angle, n), ".mp4");
    let pm = probe(&segment(server, main, n), ".mp4");
    assert_eq!((pa.width, pa.height), (256, 144), "the angle's own ladder");
    assert_eq!((pm.width, pm.height), (320, 180));
    assert!(
        pa.frames[0].1 && pm.frames[0].1,
        "both start with a keyframe"
    );
    let (ta, tm) = (pa.first_pts(), pm.first_pts());
    eprintln!("segment {n}: angle starts at {ta:.4} s, main at {tm:.4} s");
    assert!(
        (ta - tm).abs() <= ONE_FRAME,
        "segment {n}: angle starts at {ta} s, main at {tm} s"
    );
    assert!(pa.decode_errors.is_empty(), "{}", pa.decode_errors);
    n
}

/// The status of the channel's camera source.
fn cam_status(server: &Server) -> serde_json::Value {
    let body = get_ok(&server.url("/api/v1/status"));
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["channels"]["c"]["sources"]["cam"]
        .clone()
}

/// A server on [`CONFIG`], and the SRT URL its camera publishes to.
pub fn start(name: &str) -> (Server, String) {
    let port = free_udp_port();
    let keys = format!("srt_listen = \"127.0.0.1:{port}\"");
    let server = Server::start_with_server_keys(name, &keys, CONFIG);
    let cam_url = format!("srt://127.0.0.1:{port}?streamid=publish:cam-key&pkt_size=1316");
    (server, cam_url)
}

#[test]
fn a_second_camera_is_an_angle_on_the_same_segment_numbers() {
    let _heavy = heavy();
    let (server, cam_url) = start("angles");
    let (status, _, _) = get(&server.url("/live/all/angle/cam/cmaf/index.m3u8"));
    assert_eq!(status, 503, "not live before its camera publishes");
    let (status, _, _) = get(&server.url("/live/all/angle/nope/cmaf/index.m3u8"));
    assert_eq!(status, 404, "no such angle");
    let _main = Publisher::start(&server.rtmp_url("main-key"), 90, "320x180");
    server.wait_segments("/live/all/cmaf/180p/index.m3u8", 1, Duration::from_secs(30));
    let cam = Publisher::camera(&cam_url, 90, "320x180");

    // Its own multivariant playlist: the angle's ladder, with the channel's audio.
    let body = server.wait_for(
        "/live/all/angle/cam/cmaf/index.m3u8",
        Duration::from_secs(30),
        |b| !master_playlist(b).variants.is_empty(),
    );
    let m = master_playlist(&body);
    let uris: Vec<_> = m.variants.iter().map(|v| v.uri.as_str()).collect();
    assert_eq!(
        uris,
        vec!["cam-144p/index.m3u8"],
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        m.alternatives
            .iter()
            .map(|a| a.uri.as_deref())
            .collect::<Vec<_>>(),
        vec![Some("audio/index.m3u8")]
    );
    let (status, _, _) = get(&server.url("/live/all/angle/cam/ts/index.m3u8"));
    assert_eq!(status, 404, "angles are CMAF");

    let first = assert_aligned(&server);
    // It plays: a player reads the angle's multivariant playlist, picture and sound.
    let out = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(server.url("/live/all/angle/cam/cmaf/index.m3u8"))
        .args(["-t", "3", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg plays the angle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = cam_status(&server);
    assert_eq!(
        (&s["kind"], &s["live"], &s["angle"]["playing"]),
        (&"video".into(), &true.into(), &true.into()),
        "{s}"
    );
    let metrics = String::from_utf8(get_ok(&server.url("/metrics"))).unwrap();
    assert!(
        metrics.contains("sluice_source_live{channel=\"c\",source=\"cam\"} 1"),
        "{metrics}"
    );

    // The camera leaves: the angle is gone, the main stream goes on undisturbed.
    let main_before = newest(&server, "/live/all/cmaf/180p/index.m3u8");
    drop(cam);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = get(&server.url("/live/all/angle/cam/cmaf/index.m3u8"));
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the angle stays after its camera left"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    still_advancing(&server, "/live/all/cmaf/180p/index.m3u8", main_before);

    // It returns: aligned again, on later segment numbers.
    let _cam = Publisher::camera(&cam_url, 60, "320x180");
    let again = assert_aligned(&server);
    assert!(again > first, "{again} after {first}");

    // Disabled through the control API: its publisher is cut and the angle is gone;
    // nothing restarts.
    let resp = ureq::request("PATCH", &server.url("/api/v1/channels/c/sources/cam"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"enabled": false}"#);
    assert!(resp.is_ok(), "PATCH source: {resp:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&server.url("/live/all/angle/cam/cmaf/index.m3u8")).0 != 503 {
        assert!(Instant::now() < deadline, "the disabled angle stays");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(cam_status(&server)["live"], false);
    assert!(server.log_text().contains("source c/cam changed"));
    assert!(
        !server.log_text().contains("restarted"),
        "{}",
        server.log_text()
    );

    let main = String::from_utf8(get_ok(&server.url("/live/all/cmaf/180p/index.m3u8"))).unwrap();
    assert!(
        !main.contains("#EXT-X-DISCONTINUITY\n"),
        "the main stream was not disturbed:\n{main}"
    );
}
