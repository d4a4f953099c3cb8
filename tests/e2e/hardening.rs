//! Hostile and broken peers against the real server: each is refused or closed with a
//! log line, and a publisher on the same server keeps its stream advancing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

/// Two passthrough channels (cheap): `good` (key `good-key`, only from 127.0.0.1) and
/// `spare` (key `spare-key`, only from 127.0.0.1).
const TWO_CHANNELS: &str = r#"
[channels.good.ingests.main]
protocol = "rtmp"
stream_key = "good-key"
allow_cidrs = ["127.0.0.1/32"]
[channels.good.engines.copy]
ladder = "passthrough"
[distributions.good]
channel = "good"

[channels.spare.ingests.main]
protocol = "rtmp"
stream_key = "spare-key"
allow_cidrs = ["127.0.0.1/32"]
[channels.spare.engines.copy]
ladder = "passthrough"
[distributions.spare]
channel = "spare"
"#;

const GOOD: &str = "/live/good/ts/source/index.m3u8";

/// An RTMP peer past the handshake (an all-zero C1: the plain RTMP handshake).
fn rtmp_handshaken(port: u16) -> TcpStream {
    let mut s = connect_from("127.0.0.1", port).expect("connect");
    let mut c0c1 = vec![3u8];
    c0c1.resize(1537, 0);
    s.write_all(&c0c1).unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut s0s1s2).expect("S0 S1 S2");
    s.write_all(&[0u8; 1536]).unwrap();
    s
}

/// One RTMP message on chunk stream 3 (a type 0 header, then type 3 continuations).
fn rtmp_message(type_id: u8, body: &[u8], chunk_size: usize) -> Vec<u8> {
    let mut out = vec![0x03, 0, 0, 0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[type_id, 0, 0, 0, 0]);
    for (i, part) in body.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.push(0xC3);
        }
        out.extend_from_slice(part);
    }
    out
}

/// `connect` whose command object is `inner`, after SetChunkSize 65536.
fn connect_with(inner: &[u8]) -> Vec<u8> {
    let mut out = rtmp_message(1, &65536u32.to_be_bytes(), 128);
    let mut body = b"\x02\x00\x07connect\x00".to_vec();
    body.extend_from_slice(&1f64.to_be_bytes());
    body.extend_from_slice(inner);
    out.extend(rtmp_message(20, &body, 65536));
    out
}

/// Sends `bytes` and expects the server to close the connection.
fn expect_closed(mut s: TcpStream, bytes: &[u8]) {
    // The server may close while we are still writing: that is the point.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => assert!(Instant::now() < deadline, "connection stayed open"),
        }
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn hostile_rtmp_peers_are_closed_while_a_publisher_carries_on() {
    let _heavy = heavy();
    let server = Server::start("hostile-rtmp", TWO_CHANNELS);
    let _good = Publisher::start(&server.rtmp_url("good-key"), 60, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));

    // AMF0 nested 100,000 deep, as strict arrays and as objects (about 500 KB each).
    let arrays = [0x0A, 0, 0, 0, 1].repeat(100_000);
    let mut objects = vec![0x03];
    objects.extend_from_slice(&[0, 1, b'a', 0x03].repeat(100_000));
    for inner in [&arrays, &objects] {
        let before = newest(&server, GOOD);
        expect_closed(rtmp_handshaken(server.rtmp), &connect_with(inner));
        still_advancing(&server, GOOD, before);
    }
    let log = server.log_text();
    assert_eq!(count(&log, "AMF0 nesting deeper than 32"), 2, "{log}");

    // SetChunkSize 0.
    let before = newest(&server, GOOD);
    expect_closed(
        rtmp_handshaken(server.rtmp),
        &rtmp_message(1, &0u32.to_be_bytes(), 128),
    );
    still_advancing(&server, GOOD, before);
    assert!(server.log_text().contains("SetChunkSize 0"));

    // 300 idle connections from one address, then 300 from sixty addresses: the
    // per-address cap and the slots kept for allowed encoders hold, and a new allowed
    // encoder publishes in the middle of it. Bounded: 10 s, 3000 connection attempts.
    let before = newest(&server, GOOD);
    let flood = std::thread::spawn({
        let port = server.rtmp;
        move || {
            let (mut held, mut attempts) = (Vec::new(), 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) && attempts < 3000 {
                // Reopen what the server closed (handshake deadline) to keep up the pressure.
                held.retain(|s: &TcpStream| {
                    let _ = s.set_nonblocking(true);
                    !matches!((&*s).read(&mut [0u8; 1]), Ok(0))
                });
                while held.len() < 600 && attempts < 3000 {
                    let source = if attempts % 2 == 0 {
                        "127.0.0.2".to_owned()
                    } else {
                        format!("127.0.1.{}", 1 + attempts % 60)
                    };
                    attempts += 1;
                    if let Ok(s) = connect_from(&source, port) {
                        held.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            attempts
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let spare = Publisher::start(&server.rtmp_url("spare-key"), 6, "320x180");
    server.wait_segments(
        "/live/spare/ts/source/index.m3u8",
        2,
        Duration::from_secs(20),
    );
    let attempts = flood.join().unwrap();
    assert!(attempts >= 600, "{attempts}");
    still_advancing(&server, GOOD, before);
    assert!(
        spare.wait(Duration::from_secs(20)).0,
        "the allowed encoder was refused"
    );
    let log = server.log_text();
    assert!(
        log.contains("per-address connection limit reached"),
        "{log}"
    );
    assert!(
        log.contains("remaining connections are reserved for allowed encoders"),
        "{log}"
    );
}

/// An encoder whose connection went silent (here: frozen) is replaced by its own
/// reconnect instead of being refused as busy.
#[test]
fn a_stale_publisher_is_replaced_by_a_new_publish() {
    let _heavy = heavy();
    let server = Server::start("stale", TWO_CHANNELS);
    let old = Publisher::start(&server.rtmp_url("good-key"), 60, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));
    old.signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    let before = newest(&server, GOOD);
    let new = Publisher::start(&server.rtmp_url("good-key"), 8, "320x180");
    still_advancing(&server, GOOD, before + 1);
    let p = media_playlist(&get_ok(&server.url(GOOD)));
    assert!(
        p.segments.iter().any(|s| s.discontinuity),
        "a seam is marked"
    );
    assert!(
        new.wait(Duration::from_secs(30)).0,
        "the new publish was refused"
    );
    let log = server.log_text();
    assert!(log.contains("a new publish takes over"), "{log}");
    old.signal("CONT");
}

/// A publisher with audio and no video is refused (not left holding the channel on 503).
#[test]
fn audio_only_publisher_is_refused_with_a_reason() {
    let _heavy = heavy();
    let server = Server::start("audio-only", TWO_CHANNELS);
    let good = Publisher::start(&server.rtmp_url("good-key"), 25, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));
    let before = newest(&server, GOOD);
    let audio = Publisher::audio_only(&server.rtmp_url("spare-key"), 20);
    let (ok, _) = audio.wait(Duration::from_secs(20));
    assert!(!ok, "the audio-only publisher was kept");
    assert!(
        server
            .log_text()
            .contains("audio-only input is not supported"),
        "{}",
        server.log_text()
    );
    still_advancing(&server, GOOD, before);
    // The channel is free again for a real publisher.
    let spare = Publisher::start(&server.rtmp_url("spare-key"), 5, "320x180");
    server.wait_segments(
        "/live/spare/ts/source/index.m3u8",
        2,
        Duration::from_secs(20),
    );
    assert!(spare.wait(Duration::from_secs(20)).0 && good.wait(Duration::from_secs(30)).0);
}

/// A viewer that asks and never reads is closed after the write deadline; SIGTERM with a
/// viewer mid-download ends the process within the drain time.
#[test]
fn viewers_that_stop_reading_are_closed_and_shutdown_is_bounded() {
    let _heavy = heavy();
    let mut server = Server::start("never-reads", TWO_CHANNELS);
    let _good = Publisher::start(&server.rtmp_url("good-key"), 40, "640x360");
    let p = server.wait_segments(GOOD, 3, Duration::from_secs(30));
    let seg = format!("/live/good/ts/source/{}", p.segments[0].uri);

    // Pipelined requests for one segment, never read, into a small receive buffer.
    let slow = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let s = rt
            .block_on(async {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.set_recv_buffer_size(4096)?;
                s.connect(SocketAddr::from(([127, 0, 0, 1], server.http)))
                    .await?
                    .into_std()
            })
            .unwrap();
        s.set_nonblocking(false).unwrap();
        let req = format!("GET {seg} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(200);
        (&s).write_all(req.as_bytes()).unwrap();
        s
    };
    let stuck = slow();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(13));
    let before = newest(&server, GOOD);
    // Read what the kernel buffered: the server must have closed after it.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let closed = loop {
        match (&stuck).read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "still open after {:?} ({total} bytes read)",
        started.elapsed()
    );
    assert!(
        server.log_text().contains("HTTP viewer stopped reading"),
        "{}",
        server.log_text()
    );
    still_advancing(&server, GOOD, before);

    // SIGTERM while a viewer is mid-download: the server drains and exits in time.
    let _mid = slow();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "still running 15 s after SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// An engine that dies mid-stream is restarted: playlists go on with a discontinuity and
/// media sequence numbers only rise.
#[test]
fn a_killed_engine_is_restarted_and_playlists_continue() {
    let _heavy = heavy();
    let server = Server::start_with_env(
        "engine-killed",
        &format!(
            "{}\n[channels.one.ingests.main]\nprotocol = \"rtmp\"\nstream_key = \"key-one\"\n[channels.one.engines.main]\nladder = \"small\"\n[distributions.one]\nchannel = \"one\"\n",
            crate::LADDER
        ),
        &[("SLUICE_TEST_ENGINE_PANIC_AFTER_SECS", "5")],
    );
    let path = "/live/one/cmaf/180p/index.m3u8";
    let publisher = Publisher::start(&server.rtmp_url("key-one"), 24, "320x180");
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut resumed = false;
    while Instant::now() < deadline && !resumed {
        let (status, _, body) = get(&server.url(path));
        if status == 200 {
            let p = media_playlist(&body);
            let newest = p.media_sequence + p.segments.len() as u64 - 1;
            if seen.last() != Some(&newest) {
                assert!(
                    seen.last().is_none_or(|&l| newest > l),
                    "{seen:?} then {newest}"
                );
                seen.push(newest);
            }
            resumed = server.log_text().contains("task panicked; restarting")
                && p.segments.iter().any(|s| s.discontinuity)
                && seen.len() >= 6;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(resumed, "seen {seen:?}; log:\n{}", server.log_text());
    assert!(publisher.wait(Duration::from_secs(40)).0);
}

/// One audio frame an hour ahead, then one an hour behind (an encoder's clock glitch):
/// each is dropped alone with a rate-limited warning, and audio keeps flowing.
#[test]
fn an_audio_timestamp_jump_drops_one_frame_not_the_audio() {
    let _heavy = heavy();
    let server = Server::start("audio-jump", TWO_CHANNELS);
    let good = Publisher::start(&server.rtmp_url("good-key"), 25, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));
    let before = newest(&server, GOOD);
    let tags = crate::rtmp_client::ffmpeg_flv(&scratch_dir("audio-jump-flv").join("in.flv"), 10);
    let audio: Vec<usize> = (0..tags.len()).filter(|&i| tags[i].kind == 8).collect();
    let (ahead, behind) = (audio[audio.len() / 3], audio[audio.len() / 2]);
    crate::rtmp_client::publish(server.rtmp, "spare-key", &tags, |i, tag| {
        if i == ahead {
            tag.ms + 3_600_000
        } else if i == behind {
            // An hour behind the start of the stream: a wrap of the 32-bit field.
            tag.ms.wrapping_sub(3_600_000)
        } else {
            tag.ms
        }
    });
    still_advancing(&server, GOOD, before);
    // Audio of the whole stream made it out: every CMAF audio segment between the first
    // and the last holds its two seconds of AAC (96 kbit/s: about 24 KB, so over 8 KB).
    let p = server.wait_segments(
        "/live/spare/cmaf/audio/index.m3u8",
        4,
        Duration::from_secs(20),
    );
    for s in &p.segments[1..p.segments.len() - 1] {
        let body = get_ok(&server.url(&format!("/live/spare/cmaf/audio/{}", s.uri)));
        assert!(body.len() > 8_000, "{} holds {} bytes", s.uri, body.len());
    }
    let log = server.log_text();
    let warnings = count(&log, "audio timestamp far from video; frame dropped");
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{log}");
    assert!(good.wait(Duration::from_secs(30)).0);
}

/// One address cannot take every HTTP slot (a cache in `trusted_proxies` can), and an
/// idle connection that never sends a request is closed.
#[test]
fn http_connections_are_capped_per_address_except_trusted_proxies() {
    let _heavy = heavy();
    let server = Server::start_with_server_keys(
        "http-per-address",
        "trusted_proxies = [\"127.0.0.4/32\"]",
        TWO_CHANNELS,
    );
    rlimit::increase_nofile_limit(4096).expect("raise the open-files limit");
    let _good = Publisher::start(&server.rtmp_url("good-key"), 30, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));
    let log = server.log_text();
    let per_address: usize = log
        .split("http_per_address=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no limits logged:\n{log}"));
    let open = |source: &str, n: usize| -> Vec<TcpStream> {
        (0..n)
            .filter_map(|_| connect_from(source, server.http).ok())
            .collect()
    };
    let alive = |conns: &[TcpStream]| {
        conns
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let open = !matches!((&**s).read(&mut [0u8; 1]), Ok(0));
                s.set_nonblocking(false).unwrap();
                open
            })
            .count()
    };
    let flood = open("127.0.0.3", per_address + 40);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        alive(&flood),
        per_address,
        "one address holds at most {per_address}"
    );
    // Everyone else is still served.
    let before = newest(&server, GOOD);
    still_advancing(&server, GOOD, before);
    let cache = open("127.0.0.4", per_address + 40);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        alive(&cache),
        per_address + 40,
        "a trusted proxy is not capped"
    );
    let log = server.log_text();
    assert!(log.contains("HTTP connection refused"), "{log}");
    // Idle connections (no request) are closed by the header deadline.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(alive(&flood) + alive(&cache), 0, "idle connections kept");
}

/// Writes `chunk` every 50 ms until the server closes the connection (true) or 5 s pass.
fn trickle_until_closed(mut s: TcpStream, first: &[u8], chunk: &[u8]) -> bool {
    let _ = s.write_all(first);
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
        if s.write_all(chunk).is_err() {
            return true;
        }
    }
    false
}

/// Malformed RTMP framing, control messages, AMF0 and media, and keys that look like
/// paths: each connection is closed with its reason in the log (keys are never logged),
/// while another publisher carries on.
#[test]
fn malformed_rtmp_input_is_refused_with_a_reason() {
    let _heavy = heavy();
    let capped = "[channels.capped.ingests.main]\nprotocol = \"rtmp\"\nstream_key = \"capped-key\"\nmax_kbps = 40\n[channels.capped.engines.copy]\nladder = \"passthrough\"\n";
    let server = Server::start("hostile-rtmp-input", &format!("{TWO_CHANNELS}{capped}"));
    let _good = Publisher::start(&server.rtmp_url("good-key"), 90, "320x180");
    server.wait_segments(GOOD, 2, Duration::from_secs(30));
    let wait_log = |needle: &str, n: usize| {
        server.wait_log(needle, n, Duration::from_secs(10));
    };

    // A message header declaring 16 MB, its payload trickled in: refused at the header.
    let before = newest(&server, GOOD);
    let header = [0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0];
    assert!(trickle_until_closed(
        rtmp_handshaken(server.rtmp),
        &header,
        &[0x17; 64]
    ));
    wait_log("message of 16777215 bytes declared", 1);
    still_advancing(&server, GOOD, before);

    // Control messages with 0 to 3 bytes of payload.
    let before = newest(&server, GOOD);
    let shorts = [
        (1u8, 0usize),
        (1, 3),
        (2, 2),
        (3, 1),
        (5, 3),
        (6, 4),
        (4, 1),
    ];
    for (type_id, len) in shorts {
        expect_closed(
            rtmp_handshaken(server.rtmp),
            &rtmp_message(type_id, &vec![0; len], 128),
        );
    }
    wait_log("control message of type", shorts.len());
    still_advancing(&server, GOOD, before);

    // Chunks of type 1, 2 and 3 on chunk streams that never had a type 0 header.
    let before = newest(&server, GOOD);
    for bytes in [
        &[0x45u8, 0, 0, 0, 0, 0, 4, 9, 1, 2, 3, 4][..],
        &[0x86, 0, 0, 0, 1, 2, 3, 4][..],
        &[0xC7, 1, 2, 3, 4][..],
    ] {
        expect_closed(rtmp_handshaken(server.rtmp), bytes);
    }
    wait_log("that had no full header", 3);
    still_advancing(&server, GOOD, before);

    // AMF0 garbage and an unknown type marker in `connect`.
    let before = newest(&server, GOOD);
    let mut unknown_marker = b"\x02\x00\x07connect\x00".to_vec();
    unknown_marker.extend_from_slice(&1f64.to_be_bytes());
    unknown_marker.extend_from_slice(&[0x0E, 0x42, 0x42]);
    for body in [unknown_marker, vec![0xFF; 300]] {
        expect_closed(rtmp_handshaken(server.rtmp), &rtmp_message(20, &body, 128));
    }
    wait_log("UnknownMarker { marker: 14 }", 1);
    wait_log("AMF0 command with fewer than three values", 1);
    still_advancing(&server, GOOD, before);

    // Media: video before its AVC sequence header, and an H.263 stream.
    let tags = crate::rtmp_client::ffmpeg_flv(&scratch_dir("hostile-flv").join("in.flv"), 3);
    let no_header: Vec<_> = tags
        .iter()
        .filter(|t| !(t.kind == 9 && t.data.get(1) == Some(&0)))
        .cloned()
        .collect();
    let h263: Vec<_> = tags
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if t.kind == 9 {
                let mut d = t.data.to_vec();
                d[0] = (d[0] & 0xF0) | 2;
                t.data = d.into();
            }
            t
        })
        .collect();
    for (stream, says) in [
        (&no_header, "video before its AVC sequence header"),
        (&h263, "unsupported video codec id 2"),
    ] {
        let before = newest(&server, GOOD);
        let ended = crate::rtmp_client::try_publish(server.rtmp, "spare-key", stream, |_, t| t.ms);
        assert!(ended.is_err(), "{says}: published to the end");
        wait_log(says, 1);
        still_advancing(&server, GOOD, before);
    }

    // An ingest capped at 40 kbit/s (over 10 s) fed about 300 kbit/s: closed, with the
    // measured rate in the log.
    let before = newest(&server, GOOD);
    let ended = crate::rtmp_client::try_publish(server.rtmp, "capped-key", &tags, |_, t| t.ms);
    assert!(ended.is_err(), "the capped ingest published to the end");
    wait_log("above the ingest's max_kbps", 1);
    still_advancing(&server, GOOD, before);

    // Keys that look like paths, with a NUL, or 10 KB long: unknown keys, never logged.
    let long = "k".repeat(10_000);
    let keys = [
        "../good-key",
        "%2e%2e%2fgood-key",
        "good-key\0",
        long.as_str(),
    ];
    let refused = count(&server.log_text(), "unknown stream key");
    for key in keys {
        let before = newest(&server, GOOD);
        let ended = crate::rtmp_client::try_publish(server.rtmp, key, &tags[..10], |_, t| t.ms);
        assert!(ended.is_err(), "{key:?} was let in");
        still_advancing(&server, GOOD, before);
    }
    wait_log("unknown stream key", refused + keys.len());
    let log = server.log_text();
    assert!(
        !log.contains("good-key") && !log.contains("kkkkkkkk"),
        "{log}"
    );
    assert!(!log.contains("panic"), "{log}");
}

/// An encoder whose clock leaps an hour ahead, then an hour back (every later timestamp,
/// video and audio): each leap is a new session after a discontinuity, no segment grows
/// past the target duration, and the target duration never changes.
#[test]
fn clock_leaps_are_seams_not_huge_segments() {
    let _heavy = heavy();
    let server = Server::start("clock-leap", TWO_CHANNELS);
    let tags = crate::rtmp_client::ffmpeg_flv(&scratch_dir("clock-leap-flv").join("in.flv"), 9);
    let hour = 3_600_000u32;
    crate::rtmp_client::publish(server.rtmp, "spare-key", &tags, |_, tag| match tag.ms {
        ms if ms < 3_000 => ms,
        ms if ms < 6_000 => ms + hour,
        // Back below where the stream started: before the 32-bit wrap.
        ms => ms.wrapping_sub(hour),
    });
    let path = "/live/spare/ts/source/index.m3u8";
    let p = server.wait_segments(path, 4, Duration::from_secs(20));
    let target = p.target_duration;
    assert_eq!(target, 2, "TARGETDURATION from segment_seconds");
    assert!(
        p.segments
            .iter()
            .all(|s| s.duration <= target as f32 + 0.001),
        "{:?}",
        p.segments.iter().map(|s| s.duration).collect::<Vec<_>>()
    );
    let seams = p.segments.iter().filter(|s| s.discontinuity).count();
    assert_eq!(seams, 2, "one discontinuity per leap");
    let log = server.log_text();
    assert_eq!(count(&log, "timestamps jumped"), 2, "{log}");
    assert_newest_ts_decode(&server, path, p.segments.len(), true);
}
