//! Recordings against the real server: an hour of media published as fast as ffmpeg can
//! encode it, recorded in 20-minute rotations whose VOD playlists decode end to end; and
//! a recording on a size-limited tmpfs that fills up mid-stream: live playback goes on,
//! the error is logged and counted, what was recorded plays, and recording resumes once
//! room is made.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "recording-admin-token";

/// An admin request: (status, body).
fn admin(server: &Server, method: &str, path: &str) -> (u16, Vec<u8>) {
    admin_request(server, TOKEN, method, path)
}

fn recordings(server: &Server) -> Vec<Value> {
    let (status, body) = admin(server, "GET", "/api/v1/recordings");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// ffmpeg decodes `input` to the end: (errors it printed, the duration ffprobe reads).
fn decode(input: &str) -> (String, f64) {
    let out = tool("ffmpeg")
        .args(["-v", "error", "-i", input, "-f", "null", "-"])
        .output()
        .unwrap();
    let probe = tool("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            input,
        ])
        .output()
        .unwrap();
    let duration = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    (String::from_utf8_lossy(&out.stderr).into_owned(), duration)
}

#[test]
fn an_hour_published_fast_is_recorded_in_rotations_that_decode() {
    let _heavy = heavy();
    let server = Server::start(
        "rec-hour",
        &format!(
            "[api]
admin_tokens = [\"{TOKEN}\"]
[channels.r.ingests.main]
protocol = \"rtmp\"
stream_key = \"rec-hour-key\"
[channels.r.engines.main]
ladder = \"passthrough\"
record = {{ format = \"ts\", rotate_minutes = 20 }}
[distributions.r]
channel = \"r\"
"
        ),
    );
    // An hour of a small picture with sound, not paced by -re but at 50 times real time
    // (the server's 60 s live window then turns over in about a second).
    let started = Instant::now();
    let publish = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-readrate", "50"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"])
        .args(["-t", "3600"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "10"])
        .args(["-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "24k", "-ar", "16000", "-ac", "1"])
        .args(["-f", "flv", &server.rtmp_url("rec-hour-key")])
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    eprintln!("an hour published in {:?}", started.elapsed());
    // Stopping the channel ends the recording in progress.
    std::thread::sleep(Duration::from_secs(2));
    let (status, _) = admin(&server, "POST", "/api/v1/channels/r/stop");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = recordings(&server);
        if list.len() == 3 && list.iter().all(|r| r["state"] == "finished") {
            break list;
        }
        assert!(Instant::now() < deadline, "recordings: {list:#?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let data = server.log.parent().unwrap().join("data");
    let mut total = 0.0;
    for r in &list {
        let d = r["duration_seconds"].as_f64().unwrap();
        total += d;
        assert_eq!(r["channel"], "r");
        assert_eq!(r["renditions"], serde_json::json!(["source"]));
        let id = r["id"].as_str().unwrap();
        let playlist = data.join(format!("recordings/r/main/{id}/source/index.m3u8"));
        let text = std::fs::read_to_string(&playlist).unwrap();
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        assert!(text.trim_end().ends_with("#EXT-X-ENDLIST"));
        let (errors, duration) = decode(playlist.to_str().unwrap());
        assert!(errors.trim().is_empty(), "{id}: {errors}");
        assert!(
            (duration - d).abs() < 2.0,
            "{id}: {duration} s decoded, {d} s listed"
        );
    }
    // Rotations at 20 minutes of media, the whole hour kept.
    let mut durations: Vec<f64> = list
        .iter()
        .map(|r| r["duration_seconds"].as_f64().unwrap())
        .collect();
    durations.sort_by(f64::total_cmp);
    assert!(
        (total - 3600.0).abs() < 6.0,
        "recorded {total} s: {durations:?}"
    );
    assert!(
        durations[1] >= 1199.0 && durations[1] <= 1203.0,
        "{durations:?}"
    );
    // The API serves the files by ids, and nothing else.
    let first = &list[0];
    let base = format!(
        "/api/v1/recordings/r/main/{}",
        first["id"].as_str().unwrap()
    );
    let (status, body) = admin(&server, "GET", &format!("{base}/source/index.m3u8"));
    assert_eq!(status, 200);
    let p = media_playlist(&body);
    let seg = &p.segments[0].uri;
    let (status, ts) = admin(&server, "GET", &format!("{base}/source/{seg}"));
    assert_eq!(status, 200);
    assert!(probe(&ts, "ts").frames.first().is_some_and(|f| f.1));
    for bad in [
        format!("{base}/source/..%2F..%2Fsluice.toml"),
        format!("{base}/../../../sluice.toml"),
        format!("{base}/source/index.m3u8.tmp"),
        "/api/v1/recordings/r/main/..".to_string(),
    ] {
        assert_eq!(admin(&server, "GET", &bad).0, 404, "{bad}");
    }
    let (status, _, _) = get(&server.url(&format!("{base}/source/index.m3u8")));
    assert_eq!(status, 403, "recordings need the admin token");
}

/// A size-limited tmpfs mounted at `dir` for as long as this lives (the test runs as
/// root, as CI does: `mount` needs it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = tool("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = tool("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_recording_not_the_stream() {
    const LIVE: &str = "/live/f/ts/source/index.m3u8";
    let _heavy = heavy();
    let dir = scratch_dir("rec-full");
    let data = dir.join("small");
    let _fs = Tmpfs::mount(&data, "1500k");
    let server = Server::start_with_data_dir(
        "rec-full-server",
        &data,
        &format!(
            "[api]
admin_tokens = [\"{TOKEN}\"]
[channels.f.ingests.main]
protocol = \"rtmp\"
stream_key = \"rec-full-key\"
[channels.f.engines.main]
ladder = \"passthrough\"
record = {{ format = \"ts\" }}
[distributions.f]
channel = \"f\"
"
        ),
    );
    let publisher = Publisher::start(&server.rtmp_url("rec-full-key"), 120, "320x180");
    server.wait_segments(LIVE, 2, Duration::from_secs(40));
    // 1.5 MB fills up within a minute of this stream.
    server.wait_log("recording write failed", 1, Duration::from_secs(90));
    let log = server.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    // Live delivery goes on.
    still_advancing(&server, LIVE, newest(&server, LIVE));
    let m = crate::metrics::scrape(&server);
    let errors = crate::metrics::value(
        &m,
        "sluice_recording_errors_total",
        &[("channel", "f"), ("engine", "main")],
    );
    assert!(errors >= Some(1.0), "{errors:?}");
    let (status, body) = admin(&server, "GET", "/api/v1/channels/f/status");
    assert_eq!(status, 200);
    let st: Value = serde_json::from_slice(&body).unwrap();
    let rec = &st["engines"]["main"]["recording"];
    assert!(rec["errors"].as_u64().unwrap() >= 1, "{rec}");
    // What was recorded up to the error plays to its end.
    let list = recordings(&server);
    let done: Vec<&Value> = list.iter().filter(|r| r["state"] == "finished").collect();
    assert_eq!(done.len(), 1, "{list:#?}");
    let id = done[0]["id"].as_str().unwrap().to_owned();
    let playlist = data.join(format!("recordings/f/main/{id}/source/index.m3u8"));
    let text = std::fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
    let (errors, duration) = decode(playlist.to_str().unwrap());
    assert!(errors.trim().is_empty(), "{errors}");
    assert!(duration > 4.0, "{duration} s recorded");
    // Room is made (the operator moves the recording away): recording resumes.
    std::fs::remove_dir_all(data.join(format!("recordings/f/main/{id}"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let list = recordings(&server);
        if list
            .iter()
            .any(|r| r["id"] != id.as_str() && r["segments"].as_u64().unwrap_or(0) >= 3)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no new recording: {list:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(publisher);
    drop(server);
}
