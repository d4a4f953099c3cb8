//! Relays between two Sluice processes on one machine: node A takes an RTMP publish and
//! offers its channel as an `srt-listener` output; node B pulls it (`srt-pull`) through a
//! UDP proxy the test can cut. B's segments carry A's numbers and media intervals
//! (decoded and compared), a real HLS client plays B for a minute, and after a cut B
//! resumes with a discontinuity, numbers still those of A, never repeated or reversed.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

const A_MEDIA: &str = "/live/a/ts/source/index.m3u8";
const B_MEDIA: &str = "/live/b/ts/source/index.m3u8";

/// A UDP forwarder between one client and `target`, which drops everything while cut.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(("127.0.0.1", target)).unwrap();
        let port = front.local_addr().unwrap().port();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, s) = (cut.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            front.set_nonblocking(true).unwrap();
            back.set_nonblocking(true).unwrap();
            let mut client = None;
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let mut idle = true;
                while let Ok((n, from)) = front.recv_from(&mut buf) {
                    idle = false;
                    client = Some(from);
                    if !c.load(Ordering::Relaxed) {
                        let _ = back.send(&buf[..n]);
                    }
                }
                while let Ok(n) = back.recv(&mut buf) {
                    idle = false;
                    if let (Some(to), false) = (client, c.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Proxy {
            port,
            cut,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The first presentation time (seconds, as ffprobe reads the 33-bit PTS) of segment
/// `msn` of the TS playlist at `media` (a path ending in index.m3u8).
fn first_pts(server: &Server, media: &str, msn: u64) -> f64 {
    let base = media.trim_end_matches("index.m3u8");
    probe(&get_ok(&server.url(&format!("{base}{msn}.ts"))), "ts").first_pts()
}

/// Segment numbers listed (not gaps) in the playlist at `media`, and whether each
/// follows a discontinuity.
fn listed(server: &Server, media: &str) -> Vec<(u64, bool, bool)> {
    let p = media_playlist(&get_ok(&server.url(media)));
    p.segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let gap = s.unknown_tags.iter().any(|t| t.tag == "X-GAP");
            (p.media_sequence + i as u64, s.discontinuity, gap)
        })
        .collect()
}

#[test]
fn b_relays_a_over_srt_with_the_same_numbers_and_recovers_from_a_cut() {
    let _heavy = heavy();
    let a_srt = free_udp_port();
    let a = Server::start_with_server_keys(
        "relay-a",
        &format!("srt_listen = \"127.0.0.1:{a_srt}\""),
        "[channels.a.ingests.main]
protocol = \"rtmp\"
stream_key = \"relay-publish-key\"
[channels.a.engines.main]
ladder = \"passthrough\"
[channels.a.outputs.to-b]
protocol = \"srt-listener\"
read_key = \"relay-read-key\"
allow_cidrs = [\"127.0.0.0/8\"]
[distributions.a]
channel = \"a\"
",
    );
    let proxy = Proxy::start(a_srt);
    let b = Server::start(
        "relay-b",
        &format!(
            "[channels.b.ingests.from-a]
protocol = \"srt-pull\"
url = \"srt://127.0.0.1:{}?streamid=read:relay-read-key&latency=200\"
[channels.b.engines.main]
ladder = \"passthrough\"
[distributions.b]
channel = \"b\"
",
            proxy.port
        ),
    );
    let publisher = Publisher::start(&a.rtmp_url("relay-publish-key"), 150, "320x180");
    a.wait_segments(A_MEDIA, 3, Duration::from_secs(40));
    b.wait_segments(B_MEDIA, 4, Duration::from_secs(40));
    a.wait_log("SRT reader accepted", 1, Duration::from_secs(5));
    b.wait_log(
        "carries a Sluice node's timeline",
        1,
        Duration::from_secs(5),
    );

    // A real HLS client plays B for a minute, while segments are compared.
    let player = tool("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(b.url("/live/b/ts/index.m3u8"))
        .args(["-t", "60", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut compared = 0;
    // B's first segment starts wherever B's first keyframe fell: compare from its second.
    let b_first = listed(&b, B_MEDIA)[0].0;
    let mut next = b_first + 1;
    while started.elapsed() < Duration::from_secs(58) {
        let newest_b = listed(&b, B_MEDIA).last().unwrap().0;
        let newest_a = listed(&a, A_MEDIA).last().unwrap().0;
        // The newest segment of each may be one the other has not closed yet.
        while next < newest_b.min(newest_a) {
            let (pa, pb) = (first_pts(&a, A_MEDIA, next), first_pts(&b, B_MEDIA, next));
            assert!(
                (pa - pb).abs() < 0.001,
                "segment {next}: A starts at {pa} s, B at {pb} s"
            );
            compared += 1;
            next += 1;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(compared >= 20, "only {compared} segments compared");
    let out = player.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && errors.trim().is_empty(),
        "player: {errors}"
    );

    // Cut the relay for 8 s (past SRT's 5 s peer timeout: B reconnects): B resumes after
    // a discontinuity, on A's numbers.
    let before = listed(&b, B_MEDIA).last().unwrap().0;
    proxy.cut.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(8));
    proxy.cut.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(40);
    let after = loop {
        let l = listed(&b, B_MEDIA);
        // Wait for three media segments after the first discontinuity past `before`.
        let resumed: Vec<_> = l
            .iter()
            .skip_while(|(n, d, _)| *n <= before || !d)
            .filter(|(_, _, gap)| !gap)
            .collect();
        if resumed.len() >= 3 {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "B did not resume after the cut: {l:?}\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let newest_a = listed(&a, A_MEDIA).last().unwrap().0;
    let resumed: Vec<u64> = after
        .iter()
        .skip_while(|(n, d, _)| *n <= before || !d)
        .filter(|(_, _, gap)| !gap)
        .map(|(n, _, _)| *n)
        .collect();
    // The first resumed segment may have started anywhere in A's (B's first keyframe).
    for &n in resumed.iter().skip(1).filter(|n| **n < newest_a) {
        let (pa, pb) = (first_pts(&a, A_MEDIA, n), first_pts(&b, B_MEDIA, n));
        assert!(
            (pa - pb).abs() < 0.001,
            "after the cut, segment {n}: A starts at {pa} s, B at {pb} s"
        );
    }
    // Numbers moved on by about the time cut (listed as gaps), not by one.
    assert!(
        resumed[0] >= before + 2,
        "resumed at {} after {before}: {after:?}",
        resumed[0]
    );
    drop(publisher);
}

/// ffprobe reading `url` (an SRT output): the stream types it found, or None when it
/// could not read (refused).
fn probe_srt(url: &str) -> Option<Vec<String>> {
    let out = tool("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
        ])
        .args(["-of", "csv=p=0", url])
        .output()
        .unwrap();
    out.status.success().then(|| {
        let mut codecs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_end_matches(',').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        // ffprobe lists each stream under its program and again on its own.
        codecs.sort();
        codecs.dedup();
        codecs
    })
}

/// An `srt-listener` output read by ffmpeg's ffprobe (H.264 and AAC); a wrong read key,
/// the publish key, an address outside `allow_cidrs` and a disabled output are refused;
/// status and metrics show the output's state, readers and refusals.
#[test]
fn srt_listener_outputs_are_read_by_ffmpeg_and_refuse_strangers() {
    let _heavy = heavy();
    let srt = free_udp_port();
    let server = Server::start_with_server_keys(
        "relay-outputs",
        &format!("srt_listen = \"127.0.0.1:{srt}\""),
        "[channels.a.ingests.main]
protocol = \"rtmp\"
stream_key = \"out-publish-key\"
[channels.a.engines.main]
ladder = \"passthrough\"
[channels.a.outputs.local]
protocol = \"srt-listener\"
read_key = \"out-read-key\"
allow_cidrs = [\"127.0.0.1/32\"]
[channels.a.outputs.elsewhere]
protocol = \"srt-listener\"
read_key = \"out-far-key\"
allow_cidrs = [\"192.0.2.0/24\"]
[channels.a.outputs.off]
protocol = \"srt-listener\"
read_key = \"out-off-key\"
enabled = false
[channels.a.outputs.player]
protocol = \"rtmp-play\"
read_key = \"out-play-key\"
[channels.a.engines.small]
ladder = \"tiny\"
outputs = [\"ts\"]
[ladders.tiny]
segment_seconds = 2.0
part_seconds = 0
renditions = [{ name = \"90p\", width = 160, height = 90, video_kbps = 150 }]
[channels.a.outputs.small]
protocol = \"srt-listener\"
read_key = \"out-small-key\"
engine = \"small\"
rendition = \"90p\"
[distributions.a]
channel = \"a\"
engines = [\"main\"]
",
    );
    let publisher = Publisher::start(&server.rtmp_url("out-publish-key"), 60, "320x180");
    server.wait_segments(A_MEDIA, 2, Duration::from_secs(40));
    let url = |key: &str| format!("srt://127.0.0.1:{srt}?streamid=read:{key}");
    assert_eq!(
        probe_srt(&url("out-read-key")),
        Some(vec!["aac".to_owned(), "h264".to_owned()])
    );
    // The access-control form works too.
    assert!(
        probe_srt(&format!(
            "srt://127.0.0.1:{srt}?streamid=#!::r=out-read-key,m=request"
        ))
        .is_some()
    );
    for refused in ["wrong-key", "out-publish-key", "out-far-key", "out-off-key"] {
        assert_eq!(probe_srt(&url(refused)), None, "{refused} was let in");
    }
    // An rtmp-play output, played by ffmpeg; a wrong key, the publish key and an SRT
    // output's key are refused.
    // (ffmpeg's FLV demuxer also lists data streams for the RTMP play messages.)
    let played = probe_srt(&server.rtmp_url("out-play-key")).unwrap_or_default();
    assert!(
        played.contains(&"h264".to_owned()) && played.contains(&"aac".to_owned()),
        "{played:?}\n{}",
        server.log_text()
    );
    for refused in ["wrong-key", "out-publish-key", "out-read-key"] {
        assert_eq!(
            probe_srt(&server.rtmp_url(refused)),
            None,
            "{refused} was let play"
        );
    }
    // An output of one rendition of an engine: its picture, not the source's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tool("timeout")
            .args(["20", "ffprobe", "-v", "error", "-select_streams", "v"])
            .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
            .arg(url("out-small-key"))
            .output()
            .unwrap();
        let size = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if size.starts_with("160,90") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 90p output is {size:?}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The publisher was never disturbed.
    still_advancing(&server, A_MEDIA, newest(&server, A_MEDIA));
    // While a reader reads, the output is running and counted.
    let mut reader = tool("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            &url("out-read-key"),
        ])
        .args(["-t", "20", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let (code, _, body) = get(&server.url("/api/v1/status"));
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let out = v["channels"]["a"]["outputs"].clone();
        if out["local"]["state"] == "running" {
            break out;
        }
        assert!(Instant::now() < deadline, "never running: {out}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(status["local"]["readers"], 1);
    assert!(status["local"]["connects"].as_u64().unwrap() >= 3);
    assert!(status["local"]["bytes"].as_u64().unwrap() > 10_000);
    assert_eq!(status["elsewhere"]["state"], "idle");
    assert_eq!(status["elsewhere"]["refused"], 1);
    assert_eq!(status["off"]["state"], "stopped");
    let m = crate::metrics::scrape(&server);
    let labels = |o| {
        [
            ("channel", "a"),
            ("output", o),
            ("protocol", "srt-listener"),
        ]
    };
    assert_eq!(
        crate::metrics::value(&m, "sluice_output_readers", &labels("local")),
        Some(1.0)
    );
    assert_eq!(
        crate::metrics::value(&m, "sluice_output_running", &labels("local")),
        Some(1.0)
    );
    assert_eq!(
        crate::metrics::value(&m, "sluice_output_refusals_total", &labels("off")),
        Some(1.0)
    );
    // The unknown key and the publish key (an RTMP key) are refused as the router does.
    let unknown = crate::metrics::value(
        &m,
        "sluice_ingest_refusals_total",
        &[("protocol", "srt"), ("reason", "unknown_key")],
    );
    assert!(unknown >= Some(2.0), "{unknown:?}");
    let _ = reader.kill();
    let _ = reader.wait();
    drop(publisher);
}

/// The channel's state as the status API shows it.
fn outputs_status(server: &Server) -> serde_json::Value {
    let (code, _, body) = get(&server.url("/api/v1/status"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["channels"]["a"]["outputs"].clone()
}

fn wait_output_state(server: &Server, output: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = outputs_status(server);
        if out[output]["state"] == state {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{output} never {state}: {out}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn post(server: &Server, path: &str) -> u16 {
    admin_request(server, "relay-admin-token", "POST", path).0
}

/// An HTTP endpoint for nginx-rtmp's `on_publish`: answers 200 and keeps each request
/// (request line and form body).
struct Hook {
    port: u16,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    fn start() -> Hook {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                tcp.set_nonblocking(false).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then Content-Length bytes of body; bounded at 64 KB.
                while request.len() < 65536 {
                    let Ok(n) = tcp.read(&mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).to_string());
                let _ = tcp.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook { port, seen, stop }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The status API's view of a channel.
fn channel_status(server: &Server, channel: &str) -> serde_json::Value {
    let (code, _, body) = get(&server.url("/api/v1/status"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["channels"][channel].clone()
}

/// Push outputs: `rtmp-push` to a real nginx-rtmp, read back by ffprobe, its tracking id
/// reaching nginx's `on_publish` as a query parameter while the stream keeps its name;
/// `srt-caller` to another Sluice node's SRT ingest, which keeps A's numbers, and
/// `rtmp-push` to its RTMP ingest, each with a tracking id that node shows; one to a
/// closed port shows `error` with its reason and retries; stopping and starting an output
/// through the API.
#[test]
fn push_outputs_reach_nginx_rtmp_and_another_node() {
    let _heavy = heavy();
    let nginx_port = free_port();
    let hook = Hook::start();
    let _nginx = NginxRtmp::start_with(
        "relay-push-nginx",
        nginx_port,
        &format!("on_publish http://127.0.0.1:{}/publish;", hook.port),
    );
    let b_srt = free_udp_port();
    let b = Server::start_with_server_keys(
        "relay-push-b",
        &format!("srt_listen = \"127.0.0.1:{b_srt}\""),
        "[channels.b.ingests.from-a]
protocol = \"srt\"
stream_key = \"b-ingest-key\"
[channels.b.engines.main]
ladder = \"passthrough\"
[distributions.b]
channel = \"b\"
[channels.b2.ingests.from-a]
protocol = \"rtmp\"
stream_key = \"b-rtmp-key\"
[channels.b2.engines.main]
ladder = \"passthrough\"
",
    );
    let b_rtmp = b.rtmp_url("b-rtmp-key");
    let dead = free_port();
    let a = Server::start(
        "relay-push-a",
        &format!(
            "[api]
admin_tokens = [\"relay-admin-token\"]
[channels.a.ingests.main]
protocol = \"rtmp\"
stream_key = \"push-publish-key\"
[channels.a.engines.main]
ladder = \"passthrough\"
[channels.a.outputs.platform]
protocol = \"rtmp-push\"
url = \"rtmp://127.0.0.1:{nginx_port}/live/pushed\"
tracking_id = \"eu-run-7\"
[channels.a.outputs.to-b]
protocol = \"srt-caller\"
url = \"srt://127.0.0.1:{b_srt}?streamid=publish:b-ingest-key&latency=200\"
tracking_id = \"srt-run.8\"
[channels.a.outputs.to-b-rtmp]
protocol = \"rtmp-push\"
url = \"{b_rtmp}\"
tracking_id = \"rtmp-run_9\"
[channels.a.outputs.nowhere]
protocol = \"rtmp-push\"
url = \"rtmp://127.0.0.1:{dead}/live/x\"
[distributions.a]
channel = \"a\"
"
        ),
    );
    let publisher = Publisher::start(&a.rtmp_url("push-publish-key"), 90, "320x180");
    a.wait_segments(A_MEDIA, 2, Duration::from_secs(40));
    wait_output_state(&a, "platform", "running");
    let pushed = format!("rtmp://127.0.0.1:{nginx_port}/live/pushed");
    assert_eq!(
        probe_srt(&pushed),
        Some(vec!["aac".to_owned(), "h264".to_owned()]),
        "{}",
        a.log_text()
    );
    // B numbers A's media as A does.
    b.wait_segments(B_MEDIA, 3, Duration::from_secs(40));
    b.wait_log(
        "carries a Sluice node's timeline",
        1,
        Duration::from_secs(5),
    );
    let n = listed(&b, B_MEDIA).last().unwrap().0 - 1;
    let (pa, pb) = (first_pts(&a, A_MEDIA, n), first_pts(&b, B_MEDIA, n));
    assert!((pa - pb).abs() < 0.001, "segment {n}: A {pa} s, B {pb} s");
    // Tracking ids: nginx's on_publish got it beside the stream's own name; B shows the
    // ids its publishers sent, over SRT (a #!:: stream id key) and over RTMP (a query).
    let published: Vec<String> = hook.seen.lock().unwrap().clone();
    assert!(
        published
            .iter()
            .any(|r| r.contains("name=pushed") && r.contains("tracking_id=eu-run-7")),
        "{published:?}"
    );
    assert_eq!(channel_status(&b, "b")["tracking_id"], "srt-run.8");
    let deadline = Instant::now() + Duration::from_secs(20);
    while channel_status(&b, "b2")["tracking_id"] != "rtmp-run_9" {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            channel_status(&b, "b2"),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_output_state(&a, "to-b-rtmp", "running");
    // A target that refuses: error with the reason, retried.
    let out = wait_output_state(&a, "nowhere", "error");
    assert!(
        out["nowhere"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{out}"
    );
    a.wait_log("push: reconnecting", 2, Duration::from_secs(20));
    // Stopped through the API: the target loses the stream; started again: back.
    assert_eq!(post(&a, "/api/v1/channels/a/outputs/platform/stop"), 200);
    wait_output_state(&a, "platform", "stopped");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(probe_srt(&pushed), None, "still pushed after a stop");
    assert_eq!(post(&a, "/api/v1/channels/a/outputs/platform/start"), 200);
    wait_output_state(&a, "platform", "running");
    assert!(probe_srt(&pushed).is_some());
    assert_eq!(post(&a, "/api/v1/channels/a/outputs/nope/stop"), 404);
    let m = crate::metrics::scrape(&a);
    let labels = [
        ("channel", "a"),
        ("output", "platform"),
        ("protocol", "rtmp-push"),
    ];
    assert_eq!(
        crate::metrics::value(&m, "sluice_output_running", &labels),
        Some(1.0)
    );
    assert!(crate::metrics::value(&m, "sluice_output_connects_total", &labels) >= Some(2.0));
    // The channel goes quiet, then node B goes away: the srt-caller notices without
    // anything to send, and retries.
    drop(publisher);
    std::thread::sleep(Duration::from_secs(3));
    drop(b);
    wait_output_state(&a, "to-b", "error");
}
