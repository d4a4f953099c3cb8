//! SRT ingest against the real server: ffmpeg (libsrt) and GStreamer (`srtsink`)
//! publishers, passphrases, refusals at the handshake, and hostile datagrams while a
//! publisher streams. Each refusal is checked in the log, and the live stream of the
//! publisher already there is checked to keep advancing.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use srt_protocol::options::{KeySize, PacketCount, PacketSize, SrtVersion};
use srt_protocol::packet::{
    Auth, CipherType, ControlPacket, ControlTypes, HandshakeControlInfo, HandshakeVsInfo, HsV5Info,
    KeyFlags, KeyingMaterialMessage, Packet, PacketType, SeqNumber, ShakeType, SocketId,
    SocketType, SrtControlPacket, SrtHandshake, SrtShakeFlags, TimeStamp,
};

use crate::support::*;

const PASSPHRASE: &str = "correct-horse-battery";

fn channels() -> String {
    format!(
        "[channels.plain.ingests.srt]
protocol = \"srt\"
stream_key = \"srt-plain\"
[channels.plain.engines.main]
ladder = \"passthrough\"
[channels.secret.ingests.srt]
protocol = \"srt\"
stream_key = \"srt-secret\"
passphrase = \"{PASSPHRASE}\"
[channels.secret.engines.main]
ladder = \"passthrough\"
[distributions.plain]
channel = \"plain\"
[distributions.secret]
channel = \"secret\"
"
    )
}

fn start(name: &str) -> (Server, u16) {
    let port = free_udp_port();
    let server = Server::start_with_server_keys(
        name,
        &format!("srt_listen = \"127.0.0.1:{port}\""),
        &channels(),
    );
    (server, port)
}

const PLAIN_TS: &str = "/live/plain/ts/source/index.m3u8";
const SECRET_CMAF: &str = "/live/secret/cmaf/source/index.m3u8";

#[test]
fn ffmpeg_and_gstreamer_publish_over_srt_and_wrong_callers_are_refused() {
    let _heavy = heavy();
    let (server, port) = start("srt-publish");
    // ffmpeg (libsrt) with the plain form; GStreamer (srtsink) with the access-control
    // form and the passphrase.
    let _ffmpeg = Publisher::srt(
        &format!("srt://127.0.0.1:{port}?streamid=publish:srt-plain&pkt_size=1316"),
        60,
    );
    let _gst = Publisher::srt_gstreamer(port, "#!::r=srt-secret,m=publish", Some(PASSPHRASE), 60);
    let plain = server.wait_segments(PLAIN_TS, 3, Duration::from_secs(40));
    server.wait_segments(SECRET_CMAF, 3, Duration::from_secs(40));

    // The segments decode, with both tracks.
    let seg = &plain.segments[plain.segments.len() - 1].uri;
    let ts = get_ok(&server.url(&format!("/live/plain/ts/source/{seg}")));
    let p = probe(&ts, "ts");
    assert!(
        p.has_audio && p.width == 320 && p.frames.len() >= 25,
        "{p:?}"
    );
    assert!(p.decode_errors.is_empty(), "{}", p.decode_errors);
    let master = get_ok(&server.url("/live/secret/cmaf/index.m3u8"));
    assert!(String::from_utf8_lossy(&master).contains("mp4a.40.2"));

    // Callers that must be refused at the handshake, with the reason logged.
    let cases: [(&str, &str); 6] = [
        ("streamid=publish:nope", "unknown stream key"),
        (
            "streamid=publish:srt-secret",
            "needs a passphrase; the caller sent none",
        ),
        // The channel has its publisher: a second one is refused as busy.
        (
            "streamid=publish:srt-secret&passphrase=correct-horse-battery",
            "channel already has a live publisher",
        ),
        // A passphrase to an ingest without one: srt-protocol alone would panic here.
        (
            "streamid=publish:srt-plain&passphrase=some-passphrase-2",
            "has no passphrase; the caller encrypts",
        ),
        // A publish key does not read.
        ("streamid=#!::r=srt-plain,m=request", "unknown stream key"),
        ("streamid=live/srt-plain", "neither publish:<key>"),
    ];
    for (query, reason) in cases {
        let before = newest(&server, PLAIN_TS);
        eprintln!("caller: {query}");
        let caller = Publisher::srt(&format!("srt://127.0.0.1:{port}?{query}"), 3);
        let (ok, _) = caller.wait(Duration::from_secs(20));
        assert!(!ok, "{query} was let in");
        server.wait_log(reason, 1, Duration::from_secs(10));
        still_advancing(&server, PLAIN_TS, before);
    }
    let log = server.log_text();
    assert_eq!(log.matches("SRT publish accepted").count(), 2, "{log}");
    assert!(!log.contains("panic"), "{log}");
    // Keys never reach the log.
    assert!(
        !log.contains("srt-plain") && !log.contains("srt-secret"),
        "{log}"
    );
    still_advancing(&server, SECRET_CMAF, newest(&server, SECRET_CMAF));
}

/// A handshake packet from a caller socket id.
fn handshake(shake: ShakeType, socket: u32, cookie: i32, info: HandshakeVsInfo) -> Vec<u8> {
    let packet = Packet::Control(ControlPacket {
        timestamp: TimeStamp::from_micros(0),
        dest_sockid: SocketId(0),
        control_type: ControlTypes::Handshake(HandshakeControlInfo {
            init_seq_num: SeqNumber::new_truncate(1000),
            max_packet_size: PacketSize(1500),
            max_flow_size: PacketCount(8192),
            shake_type: shake,
            socket_id: SocketId(socket),
            syn_cookie: cookie,
            peer_addr: [127, 0, 0, 1].into(),
            info,
        }),
    });
    let mut out = BytesMut::new();
    packet.serialize(&mut out);
    out.to_vec()
}

/// An SRT caller by hand: induction, then a conclusion with this stream id and
/// key-material extension. Returns what the server answered to the conclusion, if
/// anything (a rejection is a handshake packet with a reject type).
fn crafted_caller(
    port: u16,
    sid: &str,
    km: Option<Vec<u8>>,
    patch: impl Fn(&mut Vec<u8>),
) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let server = format!("127.0.0.1:{port}");
    let socket_id = 0x1234_5678;
    sock.send_to(
        &handshake(
            ShakeType::Induction,
            socket_id,
            0,
            HandshakeVsInfo::V4(SocketType::Datagram),
        ),
        &server,
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let reply = Packet::parse(&mut std::io::Cursor::new(&buf[..n]), false).ok()?;
    let cookie = match reply {
        Packet::Control(ControlPacket {
            control_type: ControlTypes::Handshake(hs),
            ..
        }) => hs.syn_cookie,
        _ => return None,
    };
    let ext_km = km.map(|wrapped_keys| {
        SrtControlPacket::KeyRefreshRequest(KeyingMaterialMessage {
            pt: PacketType::KeyingMaterial,
            key_flags: KeyFlags::EVEN,
            keki: 0,
            cipher: CipherType::Ctr,
            auth: Auth::None,
            salt: vec![7; 16],
            wrapped_keys,
        })
    });
    let info = HandshakeVsInfo::V5(HsV5Info {
        key_size: KeySize::Unspecified,
        ext_hs: Some(SrtControlPacket::HandshakeRequest(SrtHandshake {
            version: SrtVersion::new(1, 5, 0),
            flags: SrtShakeFlags::SUPPORTED,
            send_latency: Duration::from_millis(120),
            recv_latency: Duration::from_millis(120),
        })),
        ext_km,
        ext_group: None,
        sid: Some(sid.to_owned()),
    });
    let mut conclusion = handshake(ShakeType::Conclusion, socket_id, cookie, info);
    patch(&mut conclusion);
    sock.send_to(&conclusion, &server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

#[test]
fn hostile_srt_callers_and_a_datagram_flood_leave_a_publisher_alone() {
    let _heavy = heavy();
    let (server, port) = start("srt-hostile");
    let _ffmpeg = Publisher::srt(
        &format!("srt://127.0.0.1:{port}?streamid=publish:srt-plain"),
        90,
    );
    server.wait_segments(PLAIN_TS, 2, Duration::from_secs(40));

    // Stream ids of 513 bytes and 10 KB, invalid UTF-8, `m=request`, and key material
    // of 4 KB: none gets a connection, the publisher carries on.
    let before = newest(&server, PLAIN_TS);
    let long = format!("publish:{}", "k".repeat(505));
    assert_eq!(long.len(), 513);
    let huge = format!("publish:{}", "k".repeat(10_000));
    let cases: Vec<(String, Option<Vec<u8>>)> = vec![
        (long, None),
        (huge, None),
        ("publish:srt-plainXX".into(), None), // made invalid UTF-8 below
        ("#!::r=srt-plain,m=request".into(), None),
        ("publish:srt-plain".into(), Some(vec![9; 4096])),
        ("publish:srt-plain".into(), None), // a packet-filter extension appended below
    ];
    for (i, (sid, km)) in cases.into_iter().enumerate() {
        let answer = crafted_caller(port, &sid, km, |packet| {
            if i == 2 {
                // The stream id's last word, bytes reversed on the wire: make it 0xFF.
                let n = packet.len();
                packet[n - 4..].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
            }
            if i == 5 {
                // SRT_CMD_FILTER (7), one word: srt-protocol's parser would panic on it.
                packet.extend_from_slice(&[0, 7, 0, 1, b'f', b'e', b'c', 0]);
            }
        });
        // Whatever came back, it was not a conclusion that opens a connection.
        if let Some(a) = answer
            && let Ok(Packet::Control(ControlPacket {
                control_type: ControlTypes::Handshake(hs),
                ..
            })) = Packet::parse(&mut std::io::Cursor::new(&a[..]), false)
        {
            assert!(
                !matches!(hs.shake_type, ShakeType::Conclusion),
                "case {i} was accepted"
            );
        }
    }
    for reason in [
        "stream id of 513 bytes is longer than 512",
        "stream id of 10008 bytes is longer than 512",
        "reason=StreamTypeNotUtf8",
        "reason=unknown stream key",
        "reason=BadCryptoLength",
        "a handshake extension srt-protocol cannot parse",
    ] {
        server.wait_log(reason, 1, Duration::from_secs(10));
    }
    still_advancing(&server, PLAIN_TS, before);

    // A wrong passphrase (the channel is free): srt-protocol finds it, we log it.
    let before = newest(&server, PLAIN_TS);
    let caller = Publisher::srt(
        &format!(
            "srt://127.0.0.1:{port}?streamid=publish:srt-secret&passphrase=wrong-passphrase-1"
        ),
        3,
    );
    let (ok, _) = caller.wait(Duration::from_secs(20));
    assert!(!ok, "a wrong passphrase was let in");
    server.wait_log("wrong passphrase", 1, Duration::from_secs(10));
    still_advancing(&server, PLAIN_TS, before);

    // A flood of random datagrams at the SRT port: bounded to 40,000 datagrams and 8 s.
    let before = newest(&server, PLAIN_TS);
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let started = Instant::now();
    let mut sent = 0;
    let mut datagram = vec![0u8; 1500];
    while sent < 40_000 && started.elapsed() < Duration::from_secs(8) {
        let len = 1 + (next() % 1400) as usize;
        for b in datagram[..len].iter_mut() {
            *b = next() as u8;
        }
        // Half of them look like SRT control packets (handshakes among them).
        if sent % 2 == 0 && len >= 16 {
            datagram[0] = 0x80;
            datagram[1] = 0;
        }
        let _ = flood.send_to(&datagram[..len], ("127.0.0.1", port));
        sent += 1;
        if sent % 500 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    still_advancing(&server, PLAIN_TS, before);

    // No broken segment: everything listed decodes, in one input session.
    assert_newest_ts_decode(&server, PLAIN_TS, 4, false);
    let log = server.log_text();
    assert_eq!(log.matches("session started").count(), 1, "{log}");
    assert!(!log.contains("panic"), "{log}");
}

/// A UDP relay between an SRT caller and the server that drops `loss` of the datagrams
/// each way (a deterministic pseudo-random choice), for as long as it lives. The kernel
/// here has no `netem`, so the loss is made in user space, on loopback.
struct LossyRelay {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, u64)>>,
}

impl LossyRelay {
    fn start(server_port: u16, loss: f64) -> LossyRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(("127.0.0.1", server_port)).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let caller: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let threshold = (loss * u32::MAX as f64) as u32;
        let flag = stop.clone();
        let pump = move |seed: u64, up: bool, front: UdpSocket, back: UdpSocket| {
            let (caller, stop) = (caller.clone(), flag.clone());
            std::thread::spawn(move || {
                let mut x = seed;
                let (mut passed, mut dropped) = (0u64, 0u64);
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let received = if up {
                        front.recv_from(&mut buf).map(|(n, from)| {
                            *caller.lock().unwrap() = Some(from);
                            n
                        })
                    } else {
                        back.recv(&mut buf)
                    };
                    let Ok(n) = received else { continue };
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if (x as u32) < threshold {
                        dropped += 1;
                        continue;
                    }
                    passed += 1;
                    if up {
                        let _ = back.send(&buf[..n]);
                    } else if let Some(to) = *caller.lock().unwrap() {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
                (passed, dropped)
            })
        };
        let threads = vec![
            pump(
                0x1234_5678_9abc_def1,
                true,
                front.try_clone().unwrap(),
                back.try_clone().unwrap(),
            ),
            pump(0x0fed_cba9_8765_4321, false, front, back),
        ];
        LossyRelay {
            port,
            stop,
            threads,
        }
    }

    /// Stops the relay: (datagrams passed, dropped), both ways together.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|t| t.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

/// A publisher losing 10% of its datagrams each way keeps its stream: one session, every
/// segment decodes (SRT's retransmissions recover the losses within its latency).
#[test]
fn a_publisher_under_ten_percent_loss_keeps_its_stream() {
    let _heavy = heavy();
    let (server, port) = start("srt-loss");
    let relay = LossyRelay::start(port, 0.10);
    let _ffmpeg = Publisher::srt(
        &format!(
            "srt://127.0.0.1:{}?streamid=publish:srt-plain&latency=400000",
            relay.port
        ),
        40,
    );
    server.wait_segments(PLAIN_TS, 12, Duration::from_secs(60));
    let (passed, dropped) = relay.finish();
    assert!(
        dropped * 100 / (passed + dropped) >= 8,
        "{dropped} of {} dropped",
        passed + dropped
    );
    assert_newest_ts_decode(&server, PLAIN_TS, 10, true);
    let playlist = media_playlist(&get_ok(&server.url(PLAIN_TS)));
    assert!(
        playlist.segments.iter().all(|s| !s.discontinuity),
        "the stream was never interrupted"
    );
    let log = server.log_text();
    assert_eq!(log.matches("session started").count(), 1, "{log}");
}
