//! A scripted RTMP publisher for tests that need what real encoders will not send on
//! request (a timestamp jumped by an hour): rml_rtmp's client session replays the tags
//! of an FLV file that ffmpeg wrote, each at its time, with a hook to rewrite them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;

use crate::support::ffmpeg_test_av;

/// One FLV tag: 8 audio, 9 video, 18 script data; timestamp in ms.
#[derive(Debug, Clone)]
pub struct Tag {
    pub kind: u8,
    pub ms: u32,
    pub data: Bytes,
}

/// `seconds` of 320x180 H.264 (a keyframe a second) and AAC, written by ffmpeg as FLV.
pub fn ffmpeg_flv(path: &Path, seconds: u32) -> Vec<Tag> {
    let ok = ffmpeg_test_av(seconds, false)
        .arg("-y")
        .arg(path)
        .status()
        .expect("run ffmpeg")
        .success();
    assert!(ok, "ffmpeg wrote no FLV");
    parse_flv(&std::fs::read(path).unwrap())
}

/// FLV tags (FLV 10.1 §E.4): a 9-byte header, then tags each followed by its size.
fn parse_flv(file: &[u8]) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut at = 9 + 4;
    while at + 11 <= file.len() {
        let h = &file[at..at + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body = at + 11;
        if body + size > file.len() {
            break;
        }
        tags.push(Tag {
            kind: h[0] & 0x1f,
            ms,
            data: Bytes::copy_from_slice(&file[body..body + size]),
        });
        at = body + size + 4;
    }
    tags
}

/// Publishes `tags` to `rtmp://127.0.0.1:port/live/key`, each when its (original)
/// timestamp is due; `rewrite` may change the timestamp sent.
pub fn publish(port: u16, key: &str, tags: &[Tag], rewrite: impl Fn(usize, &Tag) -> u32) {
    if let Err(e) = try_publish(port, key, tags, rewrite) {
        panic!("{e}");
    }
}

/// [`publish`], returning how it ended early: the publish refused, or the connection
/// closed by the server.
pub fn try_publish(
    port: u16,
    key: &str,
    tags: &[Tag],
    rewrite: impl Fn(usize, &Tag) -> u32,
) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = Handshake::new(PeerType::Client);
    s.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let leftover = loop {
        let n = s.read(&mut buf).expect("handshake read");
        assert!(n > 0, "closed during the handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).unwrap()
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                s.write_all(&response_bytes).unwrap();
                break remaining_bytes;
            }
        }
    };
    let (mut session, initial) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let send = |s: &mut TcpStream, results: Vec<ClientSessionResult>| -> Vec<ClientSessionEvent> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    let _ = s.write_all(&p.bytes);
                }
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        events
    };
    send(&mut s, initial);
    let r = session.handle_input(&leftover).unwrap();
    send(&mut s, r);
    let r = session.request_connection("live".into()).unwrap();
    send(&mut s, vec![r]);
    let mut wait_for = |s: &mut TcpStream,
                        session: &mut ClientSession,
                        want: fn(&ClientSessionEvent) -> bool|
     -> Result<(), String> {
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the server".into());
            }
            let r = session
                .handle_input(&buf[..n])
                .map_err(|e| format!("{e:?}"))?;
            if send(s, r).iter().any(want) {
                return Ok(());
            }
        }
    };
    wait_for(&mut s, &mut session, |e| {
        matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
    })?;
    let r = session
        .request_publishing(key.into(), PublishRequestType::Live)
        .unwrap();
    send(&mut s, vec![r]);
    wait_for(&mut s, &mut session, |e| {
        matches!(e, ClientSessionEvent::PublishRequestAccepted)
    })?;
    let started = Instant::now();
    for (i, tag) in tags.iter().enumerate() {
        let due = Duration::from_millis(tag.ms as u64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let ts = RtmpTimestamp::new(rewrite(i, tag));
        let packet = match tag.kind {
            8 => session.publish_audio_data(tag.data.clone(), ts, false),
            9 => session.publish_video_data(tag.data.clone(), ts, false),
            _ => continue,
        };
        if let ClientSessionResult::OutboundResponse(p) = packet.unwrap() {
            s.write_all(&p.bytes)
                .map_err(|e| format!("the server closed the publisher: {e}"))?;
        }
    }
    Ok(())
}
