//! A publishing RTMP connection without I/O: bytes and the time in, [`RtmpAction`]s out.
//!
//! Wraps rml_rtmp's handshake and `ServerSession` (both sans-IO) and turns
//! their events into what Sluice cares about: a publish request to authorise,
//! codec configurations and frames with timestamps. It also holds the connection's
//! policy ([`RtmpPolicy`]): the application name, the deadlines (handshake, publish,
//! idle) and the byte caps, so all of it is testable without a socket. The socket side
//! lives in [`crate::rtmp`]: it reads until [`RtmpSession::deadline`], feeds the bytes
//! in and carries out the actions.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use sluice_core::{AudioConfig, Frame, TrackKind, VideoConfig};

use crate::error::{EndReason, contained};
use crate::flv::{self, FlvAudio, FlvVideo};
use crate::rtmp::Refusal;
use crate::rtmp_guard::{ChunkGuard, Message};

/// The RTMP application publishers must use: `rtmp://HOST/live/<stream_key>`.
pub const RTMP_APP: &str = "live";

/// A publish or play name as `key[?query]`: the key, and a well-formed `tracking_id`
/// from the query (what another node's `rtmp-push` output appends; other parameters are
/// ignored). Keys never hold `?` (`sluice check` refuses them).
pub fn stream_name(name: &str) -> (&str, Option<&str>) {
    let Some((key, query)) = name.split_once('?') else {
        return (name, None);
    };
    let tracking = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("tracking_id="))
        .and_then(crate::srt_streamid::tracking_id);
    (key, tracking)
}

/// What one RTMP connection may do, and for how long.
#[derive(Debug, Clone)]
pub struct RtmpPolicy {
    /// The application in `rtmp://HOST/<app>/<stream_key>`; any other is refused.
    pub app: String,
    /// From accept to a completed handshake.
    pub handshake_timeout: Duration,
    /// From accept, or from the end of the last stream the peer finished, to an accepted
    /// publish (handshake, connect, createStream, publish): a peer that is not publishing
    /// by then is closed, so idle peers cannot hold slots.
    pub publish_timeout: Duration,
    /// A publisher that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes a peer may send before it is publishing (handshake, connect, publish commands).
    pub max_bytes_before_publish: usize,
    /// Bytes a publisher may send without completing a frame: bounds what the RTMP
    /// chunk decoder can be made to buffer for one connection.
    pub max_bytes_between_frames: usize,
}

impl Default for RtmpPolicy {
    fn default() -> Self {
        RtmpPolicy {
            app: RTMP_APP.to_owned(),
            // A handshake is two round trips and a publish about four more: seconds
            // even over a satellite link, so idle or slow peers are gone quickly.
            handshake_timeout: Duration::from_secs(3),
            publish_timeout: Duration::from_secs(6),
            idle_timeout: Duration::from_secs(30),
            max_bytes_before_publish: 1 << 20,
            max_bytes_between_frames: 32 << 20,
        }
    }
}

/// What the connection should do next.
#[derive(Debug)]
pub enum RtmpAction {
    /// Bytes to write to the peer, in order.
    Send(Vec<u8>),
    /// The peer asks to publish (on the right application, not publishing already);
    /// answer with [`RtmpSession::accept`] or [`RtmpSession::reject`].
    PublishRequested {
        request_id: u32,
        stream_key: String,
    },
    VideoConfig(VideoConfig),
    AudioConfig(AudioConfig),
    /// A frame, timestamps in ns on the publisher's clock (RTMP timestamps extended past 32 bits).
    Frame(Frame),
    /// The peer stopped publishing (it may keep the connection open).
    PublishFinished,
    /// The peer asks to play `stream_key` (a pull output's read key); answer with
    /// [`RtmpSession::accept_play`] or [`RtmpSession::reject`].
    PlayRequested {
        request_id: u32,
        stream_key: String,
    },
    /// The peer stopped playing; the connection ends.
    PlayFinished,
    /// Something in the stream was dropped (a malformed tag); logged by the shell.
    Dropped(String),
    /// The connection ends, after the `Send`s before this one: a refused publish, an
    /// unknown application, a stream that cannot be taken (a video codec other than
    /// H.264, video without its AVC sequence header).
    Close(EndReason),
}

enum State {
    Handshaking(Box<Handshake>),
    Session(Box<ServerSession>),
}

/// A player connection with nothing either way (no input, no media to send: the channel
/// idle) for this long is closed; the player connects again. (While media flows, a player
/// that stopped reading is found by the write timeout.)
const PLAYER_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

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
    /// The publish request waiting for an answer: (request id, message stream id).
    requested: Option<(u32, u32)>,
    /// The message stream the accepted publish sends its media on.
    publish_stream: Option<u32>,
    /// The play request waiting for an answer: (request id, message stream id).
    play_requested: Option<(u32, u32)>,
    /// The message stream an accepted play gets its media on.
    playing: Option<u32>,
    /// Bytes received since the handshake (wrapping, as RTMP acknowledgements count them).
    received: u32,
    /// Bytes since the last acknowledgement we sent.
    unacknowledged: u32,
    /// The acknowledgement window the peer asked for (Window Acknowledgement Size).
    ack_window: Option<u32>,
    /// A control or command message re-framed for rml_rtmp (reused).
    reframed: Vec<u8>,
    /// The message stream of the message rml_rtmp is handling.
    command_stream: u32,
    policy: RtmpPolicy,
    accepted_at: Instant,
    /// Since when the connection has been waiting for a publish (or play): its accept,
    /// then the end of each stream it finished. A publisher that unpublishes and stays
    /// connected gets the same time to publish again, instead of being told it never did.
    idle_since: Instant,
    last_input: Instant,
    /// Bytes received since the last complete frame (or since accept, before publishing).
    unproductive: usize,
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
fn contain_panic<T>(parse: impl FnOnce() -> T) -> Result<T, EndReason> {
    contained("rml_rtmp", parse)
}

fn protocol(e: impl std::fmt::Debug) -> EndReason {
    EndReason::Protocol(format!("{e:?}"))
}

impl RtmpSession {
    /// A connection accepted at `now`.
    pub fn new(policy: RtmpPolicy, now: Instant) -> Self {
        RtmpSession {
            state: State::Handshaking(Box::new(Handshake::new(PeerType::Server))),
            guard: ChunkGuard::reassembling(),
            media: TagMedia::default(),
            publishing: None,
            requested: None,
            publish_stream: None,
            play_requested: None,
            playing: None,
            received: 0,
            unacknowledged: 0,
            ack_window: None,
            reframed: Vec::new(),
            command_stream: 0,
            policy,
            accepted_at: now,
            idle_since: now,
            last_input: now,
            unproductive: 0,
        }
    }

    /// When the connection is closed if nothing more arrives, and what it waits for:
    /// the handshake and the publish by fixed deadlines from accept, media within the
    /// idle timeout of the last input.
    pub fn deadline(&self) -> (Instant, &'static str) {
        if self.playing.is_some() {
            // A player sends next to nothing (acknowledgements); one that stops reading
            // is found by the write timeout instead.
            (self.last_input + PLAYER_IDLE, "a player")
        } else if self.publishing.is_some() {
            (self.last_input + self.policy.idle_timeout, "media")
        } else if self.is_handshaking() {
            (
                self.accepted_at + self.policy.handshake_timeout,
                "the handshake",
            )
        } else {
            (self.idle_since + self.policy.publish_timeout, "a publish")
        }
    }

    /// The error to close with if `now` is past the deadline.
    pub fn check_deadline(&self, now: Instant) -> Result<(), EndReason> {
        let (at, waiting_for) = self.deadline();
        if now >= at {
            return Err(EndReason::Timeout(waiting_for));
        }
        Ok(())
    }

    /// Still in the RTMP handshake (C0/C1/C2).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking(_))
    }

    /// The stream key being published, once accepted.
    pub fn publishing(&self) -> Option<&str> {
        self.publishing.as_deref()
    }

    /// Bytes read from the peer at `now`. Bytes that arrive past the deadline, or more
    /// bytes than the policy allows without a complete frame, end the connection.
    pub fn handle_input(
        &mut self,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Vec<RtmpAction>, EndReason> {
        self.check_deadline(now)?;
        self.last_input = now;
        self.unproductive = self.unproductive.saturating_add(bytes.len());
        let cap = if self.publishing.is_some() {
            self.policy.max_bytes_between_frames
        } else {
            self.policy.max_bytes_before_publish
        };
        if self.unproductive > cap {
            return Err(EndReason::Unproductive(self.unproductive));
        }
        let out = self.input(bytes)?;
        if out.iter().any(|a| matches!(a, RtmpAction::Frame(_))) {
            self.unproductive = 0;
        }
        Ok(out)
    }

    fn input(&mut self, bytes: &[u8]) -> Result<Vec<RtmpAction>, EndReason> {
        let mut out = Vec::new();
        match &mut self.state {
            State::Handshaking(hs) => {
                match contain_panic(|| hs.process_bytes(bytes))?
                    .map_err(|e| EndReason::Handshake(format!("{e:?}")))?
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
                        let (mut session, results) =
                            ServerSession::new(ServerSessionConfig::new()).map_err(protocol)?;
                        // rml_rtmp gets one message per chunk from here on (see
                        // `message`): any message fits its chunk size.
                        let mut opening = Vec::with_capacity(16);
                        put_chunk_header(&mut opening, 3, 4, 1, 0);
                        opening.extend_from_slice(&RML_CHUNK_SIZE.to_be_bytes());
                        session.handle_input(&opening).map_err(protocol)?;
                        self.state = State::Session(Box::new(session));
                        self.process(results, &mut out)?;
                        if !remaining_bytes.is_empty() {
                            out.extend(self.input(&remaining_bytes)?);
                        }
                    }
                }
            }
            State::Session(_) => {
                self.guard.check(bytes)?;
                self.acknowledge(bytes.len(), &mut out);
                for message in self.guard.take_messages() {
                    self.message(message, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Sends an Acknowledgement (RTMP 1.0 §5.4.3) each time the peer's window of bytes
    /// has arrived since the last one. rml_rtmp would count only the bytes it is given,
    /// so the session does it.
    fn acknowledge(&mut self, n: usize, out: &mut Vec<RtmpAction>) {
        let n = n as u32;
        self.received = self.received.wrapping_add(n);
        self.unacknowledged = self.unacknowledged.saturating_add(n);
        if let Some(window) = self.ack_window
            && self.unacknowledged >= window
        {
            self.unacknowledged = 0;
            let mut ack = Vec::with_capacity(16);
            put_chunk_header(&mut ack, 2, 4, 3, 0); // chunk stream 2: protocol control
            ack.extend_from_slice(&self.received.to_be_bytes());
            out.push(RtmpAction::Send(ack));
        }
    }

    /// One complete message from the chunk guard: audio and video decoded here, the
    /// window size noted, everything else given to rml_rtmp.
    fn message(&mut self, m: Message, out: &mut Vec<RtmpAction>) -> Result<(), EndReason> {
        match m.type_id {
            // Media of the accepted publish only (as rml_rtmp: other streams ignored).
            // (`publish_stream` is set and cleared with `publishing`.)
            8 | 9 if self.publish_stream == Some(m.stream_id) => {
                if m.type_id == 9 {
                    self.media.video(m.timestamp, m.body, out);
                } else {
                    self.media.audio(m.timestamp, m.body, out);
                }
            }
            8 | 9 => {}
            // SetChunkSize: the guard reframes; rml_rtmp keeps the size it was given.
            1 => {}
            // Window Acknowledgement Size (4 bytes, checked by the guard).
            5 => {
                let b = &m.body;
                self.ack_window = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            }
            _ => {
                let State::Session(session) = &mut self.state else {
                    return Err(EndReason::Protocol("message before handshake".into()));
                };
                self.reframed.clear();
                put_chunk_header(
                    &mut self.reframed,
                    3,
                    m.body.len() as u32,
                    m.type_id,
                    m.stream_id,
                );
                self.reframed.extend_from_slice(&m.body);
                self.command_stream = m.stream_id;
                let bytes = &self.reframed;
                let results = contain_panic(|| session.handle_input(bytes))?.map_err(protocol)?;
                self.process(results, out)?;
            }
        }
        Ok(())
    }

    fn session(&mut self) -> Result<&mut ServerSession, EndReason> {
        match &mut self.state {
            State::Session(s) => Ok(s),
            State::Handshaking(_) => Err(EndReason::Protocol("request before handshake".into())),
        }
    }

    /// Accepts a pending connect request, or (with its stream key) a publish request.
    pub fn accept(
        &mut self,
        request_id: u32,
        stream_key: Option<&str>,
    ) -> Result<Vec<RtmpAction>, EndReason> {
        let results = self
            .session()?
            .accept_request(request_id)
            .map_err(protocol)?;
        if let Some(k) = stream_key {
            self.publishing = Some(k.to_owned());
            self.publish_stream = self
                .requested
                .take()
                .filter(|(id, _)| *id == request_id)
                .map(|(_, stream)| stream);
            // The byte cap between frames counts from here.
            self.unproductive = 0;
        }
        let mut out = Vec::new();
        self.process(results, &mut out)?;
        Ok(out)
    }

    /// Why a publish or play request is refused, if it is. An unknown application is
    /// answered like an unknown key: the peer learns nothing about which keys exist.
    fn request_refusal(&self, app_name: &str, busy: bool) -> Option<Refusal> {
        if app_name != self.policy.app {
            Some(Refusal::UnknownKey)
        } else if busy {
            Some(Refusal::Busy)
        } else {
            None
        }
    }

    /// Accepts a pending play request: the player gets media with [`RtmpSession::media`].
    pub fn accept_play(&mut self, request_id: u32) -> Result<Vec<RtmpAction>, EndReason> {
        let results = self
            .session()?
            .accept_request(request_id)
            .map_err(protocol)?;
        self.playing = self
            .play_requested
            .take()
            .filter(|(id, _)| *id == request_id)
            .map(|(_, stream)| stream);
        self.unproductive = 0;
        let mut out = Vec::new();
        self.process(results, &mut out)?;
        Ok(out)
    }

    /// The bytes that send one message of the stream (metadata, a video or audio tag
    /// body) to the player.
    pub fn media(&mut self, tag: crate::push::FlvOut) -> Result<Vec<u8>, EndReason> {
        use crate::push::FlvOut;
        use rml_rtmp::time::RtmpTimestamp;
        let Some(stream) = self.playing else {
            return Err(EndReason::Protocol(
                "media for a connection not playing".into(),
            ));
        };
        // What a player sent between two frames is what the byte cap counts.
        self.unproductive = 0;
        self.last_input = Instant::now();
        let session = self.session()?;
        let packet = match tag {
            FlvOut::Metadata(m) => session.send_metadata(stream, &m),
            FlvOut::Video(ms, body) => {
                session.send_video_data(stream, body, RtmpTimestamp::new(ms), false)
            }
            FlvOut::Audio(ms, body) => {
                session.send_audio_data(stream, body, RtmpTimestamp::new(ms), false)
            }
        }
        .map_err(protocol)?;
        Ok(packet.bytes)
    }

    /// Refuses a pending request: the answer to send, then [`RtmpAction::Close`].
    pub fn reject(
        &mut self,
        request_id: u32,
        refusal: Refusal,
    ) -> Result<Vec<RtmpAction>, EndReason> {
        let mut out = self.refuse(request_id, &refusal.to_string())?;
        out.push(RtmpAction::Close(EndReason::Refused(refusal)));
        Ok(out)
    }

    fn refuse(&mut self, request_id: u32, description: &str) -> Result<Vec<RtmpAction>, EndReason> {
        let results = self
            .session()?
            .reject_request(request_id, "NetStream.Publish.BadName", description)
            .map_err(protocol)?;
        let mut out = Vec::new();
        self.process(results, &mut out)?;
        Ok(out)
    }

    fn process(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Vec<RtmpAction>,
    ) -> Result<(), EndReason> {
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
    ) -> Result<(), EndReason> {
        match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name != self.policy.app {
                    let rejected = self.refuse(request_id, "unknown application")?;
                    out.extend(rejected);
                    out.push(RtmpAction::Close(EndReason::Protocol(format!(
                        "unknown RTMP application {:?}",
                        app_name.chars().take(64).collect::<String>()
                    ))));
                    return Ok(());
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
                // The publish command came on the message stream its media will use.
                let stream_id = self.command_stream;
                match self.request_refusal(&app_name, self.publishing.is_some()) {
                    Some(r) => out.extend(self.reject(request_id, r)?),
                    None => {
                        self.requested = Some((request_id, stream_id));
                        out.push(RtmpAction::PublishRequested {
                            request_id,
                            stream_key,
                        })
                    }
                }
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => {
                let busy = self.publishing.is_some() || self.playing.is_some();
                match self.request_refusal(&app_name, busy) {
                    Some(r) => out.extend(self.reject(request_id, r)?),
                    None => {
                        self.play_requested = Some((request_id, stream_id));
                        out.push(RtmpAction::PlayRequested {
                            request_id,
                            stream_key,
                        })
                    }
                }
            }
            ServerSessionEvent::PlayStreamFinished { .. } if self.playing.is_some() => {
                self.playing = None;
                self.idle_since = self.last_input;
                out.push(RtmpAction::PlayFinished);
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.publishing = None;
                self.publish_stream = None;
                self.idle_since = self.last_input;
                out.push(RtmpAction::PublishFinished);
            }
            // Audio and video never reach rml_rtmp (see `message`).
            _ => {}
        }
        Ok(())
    }
}

/// The chunk size rml_rtmp is told the peer uses, once the handshake is done: the
/// largest it accepts, so every re-framed message is one chunk.
const RML_CHUNK_SIZE: u32 = 0x7FFF_FFFF;

/// Appends a full (type 0) chunk header at timestamp 0 on chunk stream `csid` (2 to
/// 63): what re-framed messages (rml_rtmp reads no timestamp of a control or command
/// message) and our acknowledgements carry.
fn put_chunk_header(out: &mut Vec<u8>, csid: u8, length: u32, type_id: u8, stream_id: u32) {
    out.extend_from_slice(&[csid, 0, 0, 0]);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
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
                    out.push(RtmpAction::Close(EndReason::Unsupported(
                        "video before its AVC sequence header".into(),
                    )));
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
                out.push(RtmpAction::Close(EndReason::Unsupported(e.to_string())))
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
    fn stream_names_split_off_their_query() {
        assert_eq!(stream_name("key"), ("key", None));
        assert_eq!(stream_name("key?tracking_id=eu-7"), ("key", Some("eu-7")));
        assert_eq!(
            stream_name("key?a=1&tracking_id=eu-7&b"),
            ("key", Some("eu-7"))
        );
        assert_eq!(stream_name("key?tracking_id=a%20b"), ("key", None));
        assert_eq!(stream_name("key?"), ("key", None));
        assert_eq!(stream_name("?tracking_id=x"), ("", Some("x")));
    }
    use crate::rtmp_guard::GuardError;

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
        let mut s = RtmpSession::new(RtmpPolicy::default(), Instant::now());
        let mut hs = vec![3u8];
        hs.resize(1 + 2 * 1536, 0);
        s.handle_input(&hs, Instant::now()).expect("handshake");
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
            s.handle_input(&input, Instant::now()),
            Err(EndReason::Malformed(GuardError::ShortCommand))
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
                s.handle_input(&input, Instant::now()),
                Err(EndReason::Malformed(GuardError::Amf0TooDeep {
                    type_id: 20
                }))
            ));
        }
    }

    #[test]
    fn chunk_size_zero_is_refused() {
        let mut s = handshaken();
        let mut input = chunk0(4, 1);
        input.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            s.handle_input(&input, Instant::now()),
            Err(EndReason::Malformed(GuardError::ChunkSizeZero))
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
            s.handle_input(&input, Instant::now()),
            Err(EndReason::Malformed(GuardError::ShrunkMessage))
        ));
    }

    /// An rml_rtmp client talking to a session in memory, the clock under the test's control.
    struct Wire {
        server: RtmpSession,
        client: rml_rtmp::sessions::ClientSession,
        now: Instant,
        /// The client's events so far.
        events: Vec<rml_rtmp::sessions::ClientSessionEvent>,
    }

    fn sends(actions: &[RtmpAction]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in actions {
            if let RtmpAction::Send(b) = a {
                out.extend_from_slice(b);
            }
        }
        out
    }

    impl Wire {
        /// Handshaken, at `t0`.
        fn new(policy: RtmpPolicy, t0: Instant) -> Wire {
            use rml_rtmp::handshake::HandshakeProcessResult as R;
            let mut server = RtmpSession::new(policy, t0);
            let mut hs = Handshake::new(PeerType::Client);
            let c0c1 = hs.generate_outbound_p0_and_p1().unwrap();
            let mut to_client = sends(&server.handle_input(&c0c1, t0).unwrap());
            let opening = loop {
                match hs.process_bytes(&to_client).unwrap() {
                    R::InProgress { response_bytes } => {
                        to_client = sends(&server.handle_input(&response_bytes, t0).unwrap());
                    }
                    R::Completed { response_bytes, .. } => {
                        break server.handle_input(&response_bytes, t0).unwrap();
                    }
                }
            };
            assert!(!server.is_handshaking());
            let config = rml_rtmp::sessions::ClientSessionConfig::new();
            let (client, _) = rml_rtmp::sessions::ClientSession::new(config).unwrap();
            let mut wire = Wire {
                server,
                client,
                now: t0,
                events: Vec::new(),
            };
            // The server's opening messages (chunk size, window size).
            assert!(wire.deliver(opening).is_empty());
            wire
        }

        /// A client packet to the server; what the server sends goes back to the client.
        /// The server's other actions are returned.
        fn send(
            &mut self,
            r: rml_rtmp::sessions::ClientSessionResult,
        ) -> Result<Vec<RtmpAction>, EndReason> {
            let rml_rtmp::sessions::ClientSessionResult::OutboundResponse(p) = r else {
                panic!("not a packet");
            };
            let actions = self.server.handle_input(&p.bytes, self.now)?;
            Ok(self.deliver(actions))
        }

        /// The server's `Send`s go to the client, the client's answers back, until both
        /// are quiet: the server's other actions, in order.
        fn deliver(&mut self, actions: Vec<RtmpAction>) -> Vec<RtmpAction> {
            use rml_rtmp::sessions::ClientSessionResult as C;
            let mut kept = Vec::new();
            let mut actions = actions;
            loop {
                let back = sends(&actions);
                kept.extend(
                    actions
                        .into_iter()
                        .filter(|a| !matches!(a, RtmpAction::Send(_))),
                );
                if back.is_empty() {
                    return kept;
                }
                let mut answer = Vec::new();
                for r in self.client.handle_input(&back).unwrap() {
                    match r {
                        C::RaisedEvent(e) => self.events.push(e),
                        C::OutboundResponse(p) => answer.extend_from_slice(&p.bytes),
                        C::UnhandleableMessageReceived(_) => {}
                    }
                }
                actions = self.server.handle_input(&answer, self.now).unwrap();
            }
        }

        fn connect(&mut self, app: &str) -> Result<Vec<RtmpAction>, EndReason> {
            let r = self.client.request_connection(app.to_owned()).unwrap();
            self.send(r)
        }

        /// Connects to `live` and asks to publish `key`: the publish request's id.
        fn request_publish(&mut self, key: &str) -> u32 {
            assert!(self.connect(RTMP_APP).unwrap().is_empty());
            let r = self
                .client
                .request_publishing(key.to_owned(), rml_rtmp::sessions::PublishRequestType::Live)
                .unwrap();
            let actions = self.send(r).unwrap();
            match actions.as_slice() {
                [
                    RtmpAction::PublishRequested {
                        request_id,
                        stream_key,
                    },
                ] => {
                    assert_eq!(stream_key, key);
                    *request_id
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// The session keeps the deadlines: the handshake and the publish from accept, media
    /// from the last input; input past the deadline ends the connection.
    #[test]
    fn deadlines_follow_the_stage_of_the_connection() {
        let policy = RtmpPolicy::default();
        let t0 = Instant::now();
        let fresh = RtmpSession::new(policy.clone(), t0);
        assert_eq!(
            fresh.deadline(),
            (t0 + policy.handshake_timeout, "the handshake")
        );
        let mut late = RtmpSession::new(policy.clone(), t0);
        assert!(matches!(
            late.handle_input(&[3], t0 + policy.handshake_timeout),
            Err(EndReason::Timeout("the handshake"))
        ));

        let mut w = Wire::new(policy.clone(), t0);
        assert_eq!(
            w.server.deadline(),
            (t0 + policy.publish_timeout, "a publish")
        );
        let id = w.request_publish("k");
        w.deliver_accept(id);
        assert_eq!(w.server.publishing(), Some("k"));
        let t1 = t0 + Duration::from_secs(5);
        w.now = t1;
        let ping = w.client.send_ping_request().unwrap().0;
        w.send(rml_rtmp::sessions::ClientSessionResult::OutboundResponse(
            ping,
        ))
        .unwrap();
        assert_eq!(w.server.deadline(), (t1 + policy.idle_timeout, "media"));
        assert!(w.server.check_deadline(t1 + policy.idle_timeout).is_err());
        assert!(
            w.server
                .check_deadline(t1 + policy.idle_timeout / 2)
                .is_ok()
        );

        // Unpublished long after accept: the publish deadline counts from the unpublish,
        // not from the accept (which would close the connection at once, "timed out
        // waiting for a publish", after a publish that went well).
        let t2 = t0 + policy.publish_timeout * 3;
        w.now = t2;
        let stop = w.client.stop_publishing().unwrap();
        for r in stop {
            let actions = w.send(r).unwrap();
            assert!(
                actions
                    .iter()
                    .all(|a| matches!(a, RtmpAction::PublishFinished)),
                "{actions:?}"
            );
        }
        assert_eq!(w.server.publishing(), None);
        assert_eq!(
            w.server.deadline(),
            (t2 + policy.publish_timeout, "a publish")
        );
        assert!(w.server.check_deadline(t2).is_ok());
    }

    impl Wire {
        fn deliver_accept(&mut self, request_id: u32) {
            let actions = self.server.accept(request_id, Some("k")).unwrap();
            assert!(self.deliver(actions).is_empty());
            assert!(self.events.iter().any(|e| matches!(
                e,
                rml_rtmp::sessions::ClientSessionEvent::PublishRequestAccepted
            )));
        }
    }

    /// Another application is refused at connect: the refusal is sent, then the close.
    #[test]
    fn an_unknown_application_is_answered_then_closed() {
        let mut w = Wire::new(RtmpPolicy::default(), Instant::now());
        let actions = w.connect("admin").unwrap();
        assert!(
            matches!(actions.as_slice(), [RtmpAction::Close(EndReason::Protocol(m))] if m.contains("\"admin\"")),
            "{actions:?}"
        );
        assert!(w.events.iter().any(|e| matches!(
            e,
            rml_rtmp::sessions::ClientSessionEvent::ConnectionRequestRejected { .. }
        )));
    }

    /// A refused publish: its answer goes out, then the connection closes with the reason.
    #[test]
    fn a_refused_publish_is_answered_then_closed() {
        let mut w = Wire::new(RtmpPolicy::default(), Instant::now());
        let id = w.request_publish("nope");
        let actions = w.server.reject(id, Refusal::UnknownKey).unwrap();
        assert!(matches!(actions.first(), Some(RtmpAction::Send(_))));
        assert!(matches!(
            actions.last(),
            Some(RtmpAction::Close(EndReason::Refused(Refusal::UnknownKey)))
        ));
        assert_eq!(w.server.publishing(), None);
    }

    /// The byte caps: before a publish, and between frames once publishing, a peer can
    /// only make the session buffer so much.
    #[test]
    fn bytes_without_a_frame_are_capped() {
        let policy = RtmpPolicy {
            max_bytes_before_publish: 4096,
            max_bytes_between_frames: 64 * 1024,
            ..RtmpPolicy::default()
        };
        // A message that never completes: SetChunkSize 65536, then a 4 MB audio message.
        let mut stuck = chunk0(4, 1);
        stuck.extend_from_slice(&65536u32.to_be_bytes());
        stuck.extend_from_slice(&chunk0(4_000_000, 8));
        let filler = vec![0u8; 16 * 1024];

        let mut w = Wire::new(policy.clone(), Instant::now());
        let mut r = w.server.handle_input(&stuck, w.now);
        while r.is_ok() {
            r = w.server.handle_input(&filler, w.now);
        }
        assert!(
            matches!(r, Err(EndReason::Unproductive(n)) if n > 4096),
            "{r:?}"
        );

        let mut w = Wire::new(policy, Instant::now());
        let id = w.request_publish("k");
        w.deliver_accept(id);
        let mut sent = 0;
        let mut r = w.server.handle_input(&stuck, w.now);
        while r.is_ok() {
            sent += filler.len();
            assert!(sent < 200 * 1024, "never capped");
            r = w.server.handle_input(&filler, w.now);
        }
        assert!(
            matches!(r, Err(EndReason::Unproductive(n)) if n > 64 * 1024),
            "{r:?}"
        );
    }

    /// Audio and video from a publishing client (chunked at its 4096-byte chunk size,
    /// headers compressed) come out as frames with their timestamps; the peer gets an
    /// acknowledgement each time its window of bytes has arrived.
    #[test]
    fn published_media_becomes_frames_and_is_acknowledged() {
        use rml_rtmp::time::RtmpTimestamp;
        use sluice_core::codec::testdata::AVCC_720P;

        let mut w = Wire::new(RtmpPolicy::default(), Instant::now());
        let id = w.request_publish("k");
        w.deliver_accept(id);
        let mut header = vec![0x17, 0, 0, 0, 0];
        header.extend_from_slice(AVCC_720P);
        let packet = w
            .client
            .publish_video_data(Bytes::from(header), RtmpTimestamp::new(0), false)
            .unwrap();
        let actions = w.send(packet).unwrap();
        assert!(
            matches!(actions.as_slice(), [RtmpAction::VideoConfig(_)]),
            "{actions:?}"
        );
        let mut frames = Vec::new();
        for i in 0..200u32 {
            // One 4-byte-length NAL unit of 30 KB (several chunks), then an audio tag.
            let mut tag = vec![if i % 50 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 40];
            tag.extend_from_slice(&30_000u32.to_be_bytes());
            tag.push(if i % 50 == 0 { 0x65 } else { 0x41 });
            tag.resize(tag.len() + 29_999, i as u8);
            let ts = RtmpTimestamp::new(1000 + i * 40);
            let packet = w
                .client
                .publish_video_data(Bytes::from(tag), ts, false)
                .unwrap();
            frames.extend(w.send(packet).unwrap());
        }
        assert_eq!(frames.len(), 200);
        for (i, f) in frames.iter().enumerate() {
            let RtmpAction::Frame(f) = f else {
                panic!("{f:?}")
            };
            assert_eq!(f.dts, (1000 + i as i64 * 40) * MS);
            assert_eq!(f.pts, f.dts + 40 * MS);
            assert_eq!(f.keyframe, i % 50 == 0);
            assert_eq!(f.data.len(), 30_004);
        }
        // rml_rtmp's client asks for an acknowledgement every 2,500,000 bytes: 6 MB sent.
        let acks: Vec<u32> = w
            .events
            .iter()
            .filter_map(|e| match e {
                rml_rtmp::sessions::ClientSessionEvent::AcknowledgementReceived {
                    bytes_received,
                } => Some(*bytes_received),
                _ => None,
            })
            .collect();
        assert_eq!(acks.len(), 2, "{acks:?}");
        assert!(acks[0] >= 2_500_000 && acks[1] >= 5_000_000, "{acks:?}");
    }

    #[test]
    fn garbage_handshake_is_an_error_not_a_panic() {
        let mut s = RtmpSession::new(RtmpPolicy::default(), Instant::now());
        // RTMP version byte must be 3.
        let r = s.handle_input(&[0x06; 1537], Instant::now());
        assert!(r.is_err());
        let mut s = RtmpSession::new(RtmpPolicy::default(), Instant::now());
        for chunk in [0u8, 3, 255].iter().map(|b| vec![*b; 100]) {
            let _ = s.handle_input(&chunk, Instant::now());
        }
    }
}
