//! A publishing RTMP connection without I/O: bytes in, [`RtmpAction`]s out.
//!
//! Wraps rml_rtmp's handshake and `ServerSession` (both sans-IO) and turns
//! their events into what Sluice cares about: a publish request to authorise,
//! codec configurations and frames with timestamps. The socket side lives in
//! [`crate::rtmp`].

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use sluice_core::{AudioConfig, Frame, TrackKind, VideoConfig};

use crate::flv::{self, FlvAudio, FlvVideo};
use crate::rtmp_guard::{ChunkGuard, GuardError};

/// The RTMP application publishers must use: `rtmp://HOST/live/<stream_key>`.
pub const RTMP_APP: &str = "live";

#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    /// Input that would crash or mislead rml_rtmp, stopped before it got there.
    #[error("RTMP input refused: {0}")]
    Refused(#[from] GuardError),
}

/// What the connection should do next.
#[derive(Debug)]
pub enum RtmpAction {
    /// Bytes to write to the peer, in order.
    Send(Vec<u8>),
    /// The peer asks to publish; answer with [`RtmpSession::accept`] or [`RtmpSession::reject`].
    PublishRequested {
        request_id: u32,
        app: String,
        stream_key: String,
    },
    VideoConfig(VideoConfig),
    AudioConfig(AudioConfig),
    /// A frame, timestamps in ns on the publisher's clock (RTMP timestamps extended past 32 bits).
    Frame(Frame),
    /// The peer stopped publishing (it may keep the connection open).
    PublishFinished,
    /// Something in the stream was dropped (a malformed tag); logged by the shell.
    Dropped(String),
    /// The stream cannot be taken (a video codec other than H.264, video without its
    /// AVC sequence header): the shell closes the connection with this reason.
    Unsupported(String),
}

enum State {
    Handshaking(Box<Handshake>),
    Session(Box<ServerSession>),
}

/// Extends a 32-bit millisecond RTMP timestamp (it wraps after about 49 days) to the
/// value nearest `reference` on the extended timeline.
///
/// Nothing is remembered between calls, so one glitched timestamp cannot shift every
/// later one by 2^32 ms: audio is placed near the latest video timestamp, video near its
/// own previous one, and a true wrap lands next to its reference like any other value.
fn extend_near(ts: u32, reference: Option<i64>) -> i64 {
    const WRAP: i64 = 1 << 32;
    let ts = ts as i64;
    let Some(reference) = reference else {
        return ts;
    };
    let base = reference.div_euclid(WRAP) * WRAP;
    [base - WRAP, base, base + WRAP]
        .into_iter()
        .map(|b| b + ts)
        .filter(|c| *c >= 0)
        .min_by_key(|c| (c - reference).abs())
        .unwrap_or(ts)
}

pub struct RtmpSession {
    state: State,
    guard: ChunkGuard,
    media: TagMedia,
    publishing: Option<String>,
}

/// The media of an RTMP stream, in either direction (a publisher sending to us, or a
/// server we play from): FLV tag bodies with their 32-bit millisecond timestamps in,
/// codec configurations and frames out.
#[derive(Debug, Default)]
pub(crate) struct TagMedia {
    video: Option<VideoConfig>,
    audio_ok: bool,
    /// Last extended timestamps (ms), the references for the next ones.
    last_video_ms: Option<i64>,
    last_audio_ms: Option<i64>,
}

const MS: i64 = 1_000_000;

/// Runs rml_rtmp on untrusted bytes, turning a panic inside it into an error.
///
/// rml_rtmp 0.8.0 panics on some malformed input (found by `fuzz/rtmp_session`). The
/// known cases are refused by [`ChunkGuard`] before rml_rtmp sees them; this is the
/// backstop for unknown ones (a stack overflow, which no unwinding can catch, is the
/// guard's job alone). The session is unusable afterwards; the error closes the connection.
fn contain_panic<T>(parse: impl FnOnce() -> T) -> Result<T, RtmpError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .map_err(|_| RtmpError::Protocol("malformed input made rml_rtmp panic".into()))
}

impl Default for RtmpSession {
    fn default() -> Self {
        Self::new()
    }
}

impl RtmpSession {
    pub fn new() -> Self {
        RtmpSession {
            state: State::Handshaking(Box::new(Handshake::new(PeerType::Server))),
            guard: ChunkGuard::default(),
            media: TagMedia::default(),
            publishing: None,
        }
    }

    /// Still in the RTMP handshake (C0/C1/C2).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking(_))
    }

    /// The stream key being published, once accepted.
    pub fn publishing(&self) -> Option<&str> {
        self.publishing.as_deref()
    }

    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<Vec<RtmpAction>, RtmpError> {
        let mut out = Vec::new();
        match &mut self.state {
            State::Handshaking(hs) => {
                match contain_panic(|| hs.process_bytes(bytes))?
                    .map_err(|e| RtmpError::Handshake(format!("{e:?}")))?
                {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        if !response_bytes.is_empty() {
                            out.push(RtmpAction::Send(response_bytes));
                        }
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        if !response_bytes.is_empty() {
                            out.push(RtmpAction::Send(response_bytes));
                        }
                        let (session, results) = ServerSession::new(ServerSessionConfig::new())
                            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
                        self.state = State::Session(Box::new(session));
                        self.process(results, &mut out)?;
                        if !remaining_bytes.is_empty() {
                            out.extend(self.handle_input(&remaining_bytes)?);
                        }
                    }
                }
            }
            State::Session(session) => {
                self.guard.check(bytes)?;
                let results = contain_panic(|| session.handle_input(bytes))?
                    .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
                self.process(results, &mut out)?;
            }
        }
        Ok(out)
    }

    fn session(&mut self) -> Result<&mut ServerSession, RtmpError> {
        match &mut self.state {
            State::Session(s) => Ok(s),
            State::Handshaking(_) => Err(RtmpError::Protocol("request before handshake".into())),
        }
    }

    /// Accepts a pending connect or publish request.
    pub fn accept(
        &mut self,
        request_id: u32,
        stream_key: Option<&str>,
    ) -> Result<Vec<RtmpAction>, RtmpError> {
        let results = self
            .session()?
            .accept_request(request_id)
            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
        if let Some(k) = stream_key {
            self.publishing = Some(k.to_owned());
        }
        let mut out = Vec::new();
        self.process(results, &mut out)?;
        Ok(out)
    }

    /// Refuses a pending request; the shell closes the connection after sending.
    pub fn reject(
        &mut self,
        request_id: u32,
        description: &str,
    ) -> Result<Vec<RtmpAction>, RtmpError> {
        let results = self
            .session()?
            .reject_request(request_id, "NetStream.Publish.BadName", description)
            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
        let mut out = Vec::new();
        self.process(results, &mut out)?;
        Ok(out)
    }

    fn process(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Vec<RtmpAction>,
    ) -> Result<(), RtmpError> {
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => out.push(RtmpAction::Send(p.bytes)),
                ServerSessionResult::RaisedEvent(ev) => self.event(ev, out)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn event(
        &mut self,
        ev: ServerSessionEvent,
        out: &mut Vec<RtmpAction>,
    ) -> Result<(), RtmpError> {
        match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name != RTMP_APP {
                    let rejected = self.reject(request_id, "unknown application")?;
                    out.extend(rejected);
                    return Err(RtmpError::Protocol(format!(
                        "unknown RTMP application {app_name:?}"
                    )));
                }
                let accepted = self.accept(request_id, None)?;
                out.extend(accepted);
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                out.push(RtmpAction::PublishRequested {
                    request_id,
                    app: app_name,
                    stream_key,
                });
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.publishing = None;
                out.push(RtmpAction::PublishFinished);
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } if self.publishing.is_some() => self.media.video(timestamp.value, data, out),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } if self.publishing.is_some() => self.media.audio(timestamp.value, data, out),
            _ => {}
        }
        Ok(())
    }
}

impl TagMedia {
    /// A video tag body at RTMP timestamp `ts` (ms, 32 bits).
    pub(crate) fn video(&mut self, ts: u32, data: Bytes, out: &mut Vec<RtmpAction>) {
        let dts = extend_near(ts, self.last_video_ms);
        self.last_video_ms = Some(dts);
        self.video_tag(data, dts, out);
    }

    /// An audio tag body at RTMP timestamp `ts`, placed near the video's timeline.
    pub(crate) fn audio(&mut self, ts: u32, data: Bytes, out: &mut Vec<RtmpAction>) {
        let dts = extend_near(ts, self.last_video_ms.or(self.last_audio_ms));
        self.last_audio_ms = Some(dts);
        self.audio_tag(data, dts, out);
    }

    fn video_tag(&mut self, data: Bytes, dts_ms: i64, out: &mut Vec<RtmpAction>) {
        match flv::parse_video(&data) {
            Ok(FlvVideo::SequenceHeader(avcc)) => match VideoConfig::from_avcc(avcc) {
                Ok(cfg) => {
                    self.video = Some(cfg.clone());
                    out.push(RtmpAction::VideoConfig(cfg));
                }
                Err(e) => out.push(RtmpAction::Dropped(format!("video sequence header: {e}"))),
            },
            Ok(FlvVideo::Nalus {
                keyframe,
                composition_ms,
                data,
            }) => {
                let Some(cfg) = &self.video else {
                    out.push(RtmpAction::Unsupported(
                        "video before its AVC sequence header".into(),
                    ));
                    return;
                };
                if !flv::avcc_is_well_formed(&data, cfg.nal_length_size) {
                    out.push(RtmpAction::Dropped("malformed AVC access unit".into()));
                    return;
                }
                out.push(RtmpAction::Frame(Frame {
                    track: TrackKind::Video,
                    dts: dts_ms.saturating_mul(MS),
                    pts: dts_ms
                        .saturating_add(composition_ms as i64)
                        .saturating_mul(MS),
                    keyframe,
                    data,
                }));
            }
            Ok(FlvVideo::EndOfSequence | FlvVideo::Ignored) => {}
            Err(e @ (flv::FlvError::UnsupportedVideoCodec(_) | flv::FlvError::EnhancedRtmp)) => {
                out.push(RtmpAction::Unsupported(e.to_string()))
            }
            Err(e) => out.push(RtmpAction::Dropped(e.to_string())),
        }
    }

    fn audio_tag(&mut self, data: Bytes, dts_ms: i64, out: &mut Vec<RtmpAction>) {
        match flv::parse_audio(&data) {
            Ok(FlvAudio::SequenceHeader(asc)) => match AudioConfig::from_asc(asc) {
                Ok(cfg) => {
                    self.audio_ok = true;
                    out.push(RtmpAction::AudioConfig(cfg));
                }
                Err(e) => out.push(RtmpAction::Dropped(format!("audio sequence header: {e}"))),
            },
            Ok(FlvAudio::Raw(raw)) if self.audio_ok && !raw.is_empty() => {
                out.push(RtmpAction::Frame(Frame {
                    track: TrackKind::Audio,
                    dts: dts_ms.saturating_mul(MS),
                    pts: dts_ms.saturating_mul(MS),
                    keyframe: true,
                    data: raw,
                }));
            }
            Ok(FlvAudio::Raw(_)) => {}
            Err(e) => out.push(RtmpAction::Dropped(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_extend_past_wrap() {
        let max = u32::MAX as i64;
        assert_eq!(extend_near(5, None), 5);
        assert_eq!(extend_near(u32::MAX - 10, Some(max - 20)), max - 10);
        assert_eq!(extend_near(5, Some(max - 10)), (1i64 << 32) + 5);
        assert_eq!(extend_near(3, Some((1i64 << 32) + 5)), (1i64 << 32) + 3);
        // A value just before the wrap, reordered after it, stays before it.
        assert_eq!(extend_near(u32::MAX - 1, Some((1i64 << 32) + 5)), max - 1);
    }

    /// An audio timestamp glitched an hour back (a 32-bit wrap) does not move later
    /// audio to the other side of the wrap: each is placed next to the video.
    #[test]
    fn one_glitched_timestamp_does_not_shift_the_rest() {
        let video = Some(5_000);
        let glitch = extend_near(5_000u32.wrapping_sub(3_600_000), video);
        assert!((glitch - 5_000).abs() > 3_000_000, "{glitch}");
        assert_eq!(extend_near(5_021, video), 5_021);
    }

    /// C0 and an all-zero C1 and C2: rml_rtmp falls back to the plain handshake.
    fn handshaken() -> RtmpSession {
        let mut s = RtmpSession::new();
        let mut hs = vec![3u8];
        hs.resize(1 + 2 * 1536, 0);
        s.handle_input(&hs).expect("handshake");
        assert!(matches!(s.state, State::Session(_)));
        s
    }

    /// A type 0 chunk header on chunk stream 3, message stream 0.
    fn chunk0(len: u32, type_id: u8) -> Vec<u8> {
        let mut c = vec![0x03, 0, 0, 0];
        c.extend_from_slice(&len.to_be_bytes()[1..]);
        c.extend_from_slice(&[type_id, 0, 0, 0, 0]);
        c
    }

    /// Regression (fuzz/rtmp_session): rml_rtmp's `drain(..3)` on a one-value command.
    #[test]
    fn short_amf0_command_is_an_error_not_a_panic() {
        let mut s = handshaken();
        let mut input = chunk0(10, 20);
        input.extend_from_slice(b"\x02\x00\x07connect");
        assert!(matches!(
            s.handle_input(&input),
            Err(RtmpError::Refused(GuardError::ShortCommand))
        ));
    }

    /// One command nesting strict arrays (then objects) 100,000 deep: refused before
    /// rml_amf0's recursive parser could overflow the stack.
    #[test]
    fn deep_amf0_nesting_is_refused() {
        for inner in [[0x0A, 0, 0, 0, 1].repeat(100_000), {
            let mut v = vec![0x03];
            v.extend_from_slice(&[0, 1, b'a', 0x03].repeat(100_000));
            v
        }] {
            let mut s = handshaken();
            // SetChunkSize 65536 first, so the big message comes in few chunks.
            let mut input = chunk0(4, 1);
            input.extend_from_slice(&65536u32.to_be_bytes());
            let mut body = b"\x02\x00\x07connect\x00".to_vec();
            body.extend_from_slice(&1f64.to_be_bytes());
            body.extend_from_slice(&inner);
            input.extend_from_slice(&chunk0(body.len() as u32, 20));
            for (i, part) in body.chunks(65536).enumerate() {
                if i > 0 {
                    input.push(0xC3);
                }
                input.extend_from_slice(part);
            }
            assert!(matches!(
                s.handle_input(&input),
                Err(RtmpError::Refused(GuardError::Amf0TooDeep { type_id: 20 }))
            ));
        }
    }

    #[test]
    fn chunk_size_zero_is_refused() {
        let mut s = handshaken();
        let mut input = chunk0(4, 1);
        input.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            s.handle_input(&input),
            Err(RtmpError::Refused(GuardError::ChunkSizeZero))
        ));
    }

    /// Regression (fuzz/rtmp_session): a type 1 header shrinking a message that is
    /// already partly received underflowed rml_rtmp's remaining-length subtraction.
    #[test]
    fn shrunk_partial_message_is_an_error_not_a_panic() {
        let mut s = handshaken();
        let mut input = chunk0(200, 20);
        input.extend_from_slice(&[0u8; 128]); // the first 128-byte chunk of 200
        input.extend_from_slice(&[0x43, 0, 0, 0, 0, 0, 10, 20]); // type 1: length 10
        input.extend_from_slice(&[0u8; 10]);
        assert!(matches!(
            s.handle_input(&input),
            Err(RtmpError::Refused(GuardError::ShrunkMessage))
        ));
    }

    #[test]
    fn garbage_handshake_is_an_error_not_a_panic() {
        let mut s = RtmpSession::new();
        // RTMP version byte must be 3.
        let r = s.handle_input(&[0x06; 1537]);
        assert!(r.is_err());
        let mut s = RtmpSession::new();
        for chunk in [0u8, 3, 255].iter().map(|b| vec![*b; 100]) {
            let _ = s.handle_input(&chunk);
        }
    }
}
