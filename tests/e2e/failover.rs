//! Backup ingests and the slate, against the real server: a primary RTMP publisher and a
//! backup SRT publisher of the same source; the primary is killed (`kill -9`), comes back,
//! then every source goes and the slate plays; a real HLS client (ffmpeg) reads the
//! channel throughout and must see no error. Then the slate times out and the playlists
//! end, and a returning source opens them again.

use std::time::Duration;

use crate::support::*;

const CONFIG: &str = r#"
[ladders.small]
segment_seconds = 1.0
window_seconds = 30
encoder_preset = "ultrafast"
renditions = [{ name = "180p", width = 320, height = 180, video_kbps = 300 }]

[channels.live.ingests.primary]
protocol = "rtmp"
stream_key = "fo-primary"
priority = 1
[channels.live.ingests.backup]
protocol = "srt"
stream_key = "fo-backup"
priority = 2
[channels.live.engines.main]
ladder = "small"
[distributions.live]
channel = "live"
"#;

const MEDIA: &str = "/live/live/ts/180p/index.m3u8";

#[test]
fn a_backup_takes_over_the_primary_returns_and_the_slate_fills_in() {
    let _heavy = heavy();
    let srt = free_udp_port();
    let server = Server::start_full(
        "failover",
        &format!("srt_listen = \"127.0.0.1:{srt}\""),
        CONFIG,
        &[("SLUICE_TEST_SLATE_TIMEOUT_SECS", "15")],
    );
    let primary_url = server.rtmp_url("fo-primary");
    let backup_url = format!("srt://127.0.0.1:{srt}?streamid=publish:fo-backup");
    let primary = Publisher::start(&primary_url, 120, "320x180");
    let backup = Publisher::srt(&backup_url, 120);
    server.wait_segments(MEDIA, 3, Duration::from_secs(40));
    server.wait_log("SRT publish accepted", 1, Duration::from_secs(10));

    // A real HLS client reads the channel through every switch (30 s of media).
    let player = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(server.url("/live/live/ts/index.m3u8"))
        .args(["-t", "30", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile the playlist, polled: numbers never go back.
    let mut newest_seen = 0;
    let mut check = |server: &Server| {
        let newest = newest(server, MEDIA);
        assert!(
            newest >= newest_seen,
            "went back from {newest_seen} to {newest}"
        );
        newest_seen = newest;
    };
    std::thread::sleep(Duration::from_secs(4));
    check(&server);

    // The primary dies: the backup feeds the engines within a segment (1 s) plus its
    // keyframe interval (1 s); the bound here is generous for a loaded machine.
    primary.signal("KILL");
    drop(primary);
    let took = server.wait_log("to=backup", 1, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "backup took {took:?}");
    let before = newest(&server, MEDIA);
    still_advancing(&server, MEDIA, before);
    check(&server);

    // The primary returns and takes back at one of its keyframes.
    let primary = Publisher::start(&primary_url, 120, "320x180");
    server.wait_log("to=primary", 1, Duration::from_secs(15));
    let before = newest(&server, MEDIA);
    still_advancing(&server, MEDIA, before);
    check(&server);

    // Every source goes: the slate plays on the same playlist.
    primary.signal("KILL");
    backup.signal("KILL");
    drop(primary);
    drop(backup);
    server.wait_log("slate on", 1, Duration::from_secs(10));
    let before = newest(&server, MEDIA);
    still_advancing(&server, MEDIA, before);
    check(&server);

    // The backup comes back: the slate gives way. (Its killed connection holds the
    // ingest until it has been silent for 3 s: an encoder reconnecting sooner is refused
    // as busy, as for RTMP.)
    std::thread::sleep(Duration::from_secs(3));
    let backup = Publisher::srt(&backup_url, 120);
    server.wait_log("slate off", 1, Duration::from_secs(15));
    let before = newest(&server, MEDIA);
    still_advancing(&server, MEDIA, before);
    check(&server);

    let out = player.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "player: {errors}");
    assert!(errors.trim().is_empty(), "player errors: {errors}");

    // Each switch is one discontinuity, and every segment around them decodes.
    let playlist = media_playlist(&get_ok(&server.url(MEDIA)));
    let seams = playlist.segments.iter().filter(|s| s.discontinuity).count();
    assert!(seams >= 4, "{seams} discontinuities");
    assert_newest_ts_decode(&server, MEDIA, 12, true);

    // Nothing again, past the slate timeout: the playlists end.
    backup.signal("KILL");
    drop(backup);
    server.wait_log("slate on", 2, Duration::from_secs(10));
    server.wait_log("playlists ended", 1, Duration::from_secs(30));
    server.wait_for(MEDIA, Duration::from_secs(10), |b| {
        String::from_utf8_lossy(b).contains("#EXT-X-ENDLIST")
    });
    // A source returns: the same playlists go on.
    let _primary = Publisher::start(&primary_url, 60, "320x180");
    let reopened = server.wait_for(MEDIA, Duration::from_secs(30), |b| {
        !String::from_utf8_lossy(b).contains("#EXT-X-ENDLIST")
    });
    let reopened = media_playlist(&reopened);
    assert!(reopened.media_sequence + reopened.segments.len() as u64 > newest_seen);
    let log = server.log_text();
    assert!(!log.contains("panic"), "{log}");
}
