//! Pull ingests against the real server: nginx-rtmp (fed by ffmpeg) as the RTMP server,
//! and ffmpeg as the SRT listener (`mode=listener`), that Sluice connects to. The sources
//! start after the server (it retries with back-off, logged), and a source that goes away
//! and comes back is picked up again on the same playlists.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A source ffmpeg serves to one client (then exits).
struct Source(Child);

impl Source {
    /// An RTMP server (nginx-rtmp) with an ffmpeg publisher on `live/source`.
    fn rtmp(port: u16, seconds: u32) -> (NginxRtmp, Publisher) {
        let nginx = NginxRtmp::start(&format!("pull-nginx-{port}"), port);
        let publisher = Publisher::start(
            &format!("rtmp://127.0.0.1:{port}/live/source"),
            seconds,
            "320x180",
        );
        (nginx, publisher)
    }

    fn srt(port: u16, seconds: u32) -> Source {
        Self::spawn(ffmpeg_test_av(seconds, true).args([
            "-f",
            "mpegts",
            &format!("srt://127.0.0.1:{port}?mode=listener&pkt_size=1316"),
        ]))
    }

    fn spawn(command: &mut Command) -> Source {
        Source(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run ffmpeg"),
        )
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rtmp_and_srt_sources_are_pulled_and_reconnected() {
    let _heavy = heavy();
    let (rtmp, srt) = (free_port(), free_udp_port());
    let server = Server::start(
        "pull",
        &format!(
            "[channels.a.ingests.venue]
protocol = \"rtmp-pull\"
url = \"rtmp://127.0.0.1:{rtmp}/live/source\"
[channels.a.engines.main]
ladder = \"passthrough\"
[channels.b.ingests.venue]
protocol = \"srt-pull\"
url = \"srt://127.0.0.1:{srt}?streamid=#!::r=source,m=request&latency=200\"
[channels.b.engines.main]
ladder = \"passthrough\"
[distributions.a]
channel = \"a\"
[distributions.b]
channel = \"b\"
"
        ),
    );
    // Nothing to pull yet: refused connections are retried, and said so.
    server.wait_log("pull: reconnecting", 4, Duration::from_secs(30));
    let rtmp_source = Source::rtmp(rtmp, 60);
    let _srt_source = Source::srt(srt, 60);
    let a = "/live/a/ts/source/index.m3u8";
    let b = "/live/b/cmaf/source/index.m3u8";
    server.wait_segments(a, 3, Duration::from_secs(60));
    server.wait_segments(b, 3, Duration::from_secs(60));
    server.wait_log("pull: playing", 2, Duration::from_secs(30));
    let seg = media_playlist(&get_ok(&server.url(a)));
    let ts = get_ok(&server.url(&format!(
        "/live/a/ts/source/{}",
        seg.segments.last().unwrap().uri
    )));
    let p = probe(&ts, "ts");
    assert!(p.has_audio && p.width == 320, "{p:?}");

    // The RTMP server goes away and comes back: pulled again, same playlist, numbers
    // going on after a discontinuity.
    let before = newest(&server, a);
    let retries = server.log_text().matches("pull: reconnecting").count();
    drop(rtmp_source);
    server.wait_log("pull: reconnecting", retries + 1, Duration::from_secs(30));
    let _rtmp_source = Source::rtmp(rtmp, 60);
    server.wait_log("pull: playing", 3, Duration::from_secs(30));
    still_advancing(&server, a, before + 1);
    let after = media_playlist(&get_ok(&server.url(a)));
    assert!(after.segments.iter().any(|s| s.discontinuity));
    let log = server.log_text();
    // The URL's path and query (stream keys, passphrases) never reach the log.
    assert!(
        !log.contains("live/source") && !log.contains("streamid"),
        "{log}"
    );
}
