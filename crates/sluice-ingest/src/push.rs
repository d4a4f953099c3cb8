//! Push outputs: Sluice connects out and sends a channel as it is received (the source).
//!
//! - `rtmp-push`: an RTMP publish to `rtmp://host[:1935]/<app>/<stream>` (another server,
//!   a platform that takes RTMP): rml_rtmp's client session, FLV tag bodies built from the
//!   bus's frames, timestamps in milliseconds from the first frame sent.
//! - `srt-caller`: Sluice calls an SRT listener (`srt://host:port?streamid=...&latency=<ms>`,
//!   `passphrase` in the output or the URL) and sends MPEG-TS with the channel timeline's
//!   anchor, as an `srt-listener` output does: a Sluice node listening for it keeps the
//!   numbers.
//!
//! A refused or lost connection is tried again after a back-off (1 s, doubling to 30 s,
//! back to 1 s once a connection has carried media). The output's state (connecting,
//! running, error with the reason while waiting to retry) is in its [`OutputStats`]; every
//! change is logged with the target's host and port only (URLs hold keys). The channel is
//! read from its bus: a target slower than the stream makes the push fall behind, lose
//! events and resume at the next keyframe, never holding up the channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use sluice_core::{AudioConfig, Id, MediaEvent, MediaTime, TrackKind, VideoConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::ChannelBus;
use crate::error::{EndReason, contained, write_by};
use crate::flv;
use crate::output::{OutputState, OutputStats, TsRelay};
use crate::pull::{redacted, resolve, rtmp_connect, rtmp_err, rtmp_parts, srt_call};
use crate::rtmp_guard::ChunkGuard;

/// Connecting, the handshake and the publish request, all together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to the target that takes longer ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// TS packets per SRT message (1316 bytes).
const TS_PER_MESSAGE: usize = 7;

/// One push output, as configured.
#[derive(Debug, Clone)]
pub struct PushSpec {
    pub output: Id,
    pub url: String,
    pub passphrase: Option<String>,
}

/// Pushes the channel of `bus` to `spec.url` until `cancel`, reconnecting after failures.
pub async fn run_push(
    bus: Arc<ChannelBus>,
    spec: PushSpec,
    stats: Arc<OutputStats>,
    cancel: CancellationToken,
) {
    let channel = bus.channel().clone();
    let output = spec.output.clone();
    let target = redacted(&spec.url);
    let mut backoff = Duration::from_secs(1);
    loop {
        stats.set_state(OutputState::Connecting);
        tracing::info!(%channel, %output, %target, "push: connecting");
        let mut sent = false;
        let reason = tokio::select! {
            _ = cancel.cancelled() => break,
            r = push_once(&bus, &spec, &stats, &mut sent) => r,
        };
        stats.readers.store(0, std::sync::atomic::Ordering::Relaxed);
        if reason.is_orderly() {
            tracing::info!(%channel, %output, %target, "push: the target closed the connection");
        } else {
            tracing::warn!(%channel, %output, %target, error = %reason, "push: connection lost");
        }
        stats.set_state(OutputState::Error(reason.to_string()));
        if sent {
            backoff = Duration::from_secs(1);
        }
        tracing::info!(%channel, %output, retry_in_ms = backoff.as_millis() as u64, "push: reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    stats.set_state(OutputState::Stopped);
}

async fn push_once(
    bus: &Arc<ChannelBus>,
    spec: &PushSpec,
    stats: &OutputStats,
    sent: &mut bool,
) -> EndReason {
    let r = if spec.url.starts_with("rtmp://") {
        push_rtmp(bus, spec, stats, sent).await
    } else if spec.url.starts_with("srt://") {
        push_srt(bus, spec, stats, sent).await
    } else {
        Err(EndReason::Url("only rtmp:// and srt:// can be pushed to"))
    };
    r.err().unwrap_or(EndReason::Closed)
}

/// Marks the output running (one connection).
fn running(stats: &OutputStats, spec: &PushSpec, channel: &Id) {
    stats.set_state(OutputState::Running);
    stats.readers.store(1, std::sync::atomic::Ordering::Relaxed);
    stats
        .connects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%channel, output = %spec.output, target = %redacted(&spec.url), "push: sending");
}

async fn write(tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), EndReason> {
    let late = EndReason::Timeout("a write to the target");
    write_by(tcp, bytes, Instant::now() + WRITE_TIMEOUT, late).await
}

/// What an RTMP stream out carries: metadata (`onMetaData`, so that players know the
/// streams at once), and FLV video and audio tag bodies at millisecond timestamps.
#[derive(Debug, Clone, PartialEq)]
pub enum FlvOut {
    Metadata(StreamMetadata),
    Video(u32, Bytes),
    Audio(u32, Bytes),
}

/// Bus events as an RTMP stream's messages. Timestamps count from the first frame sent (a
/// platform expects a stream that starts near 0); metadata and sequence headers go out at
/// every session start, frames only from a video keyframe on.
#[derive(Debug, Default)]
pub struct FlvRelay {
    base: Option<MediaTime>,
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    headers_due: bool,
    keyframe_seen: bool,
}

impl FlvRelay {
    pub fn push(&mut self, ev: &MediaEvent, out: &mut Vec<FlvOut>) {
        match ev {
            MediaEvent::Start { video, audio, .. } => {
                self.video = Some(video.clone());
                self.audio = audio.clone();
                self.headers_due = true;
                self.keyframe_seen = false;
            }
            MediaEvent::Frame(f) => {
                let Some(video) = &self.video else { return };
                if f.track == TrackKind::Video {
                    if !self.keyframe_seen && !f.keyframe {
                        return;
                    }
                    self.keyframe_seen = true;
                } else if !self.keyframe_seen || self.audio.is_none() {
                    return;
                }
                let base = *self.base.get_or_insert(f.dts);
                // Audio a little before the first keyframe is at 0, not 49 days on.
                let ms = |t: MediaTime| (t.saturating_sub(base).max(0) / 1_000_000) as u32;
                let ts = ms(f.dts);
                if std::mem::take(&mut self.headers_due) {
                    let mut meta = StreamMetadata::new();
                    meta.video_codec_id = Some(7);
                    meta.video_width = Some(video.width);
                    meta.video_height = Some(video.height);
                    if let Some(a) = &self.audio {
                        meta.audio_codec_id = Some(10);
                        meta.audio_sample_rate = Some(a.sample_rate);
                        meta.audio_channels = Some(u32::from(a.channels));
                        meta.audio_is_stereo = Some(a.channels == 2);
                    }
                    meta.encoder = Some("sluice".into());
                    out.push(FlvOut::Metadata(meta));
                    out.push(FlvOut::Video(ts, flv::video_sequence_header(&video.avcc)));
                    if let Some(a) = &self.audio {
                        out.push(FlvOut::Audio(ts, flv::audio_sequence_header(&a.asc)));
                    }
                }
                match f.track {
                    TrackKind::Video => {
                        let cts = ((f.pts - f.dts) / 1_000_000) as i32;
                        out.push(FlvOut::Video(
                            ts,
                            flv::video_frame(f.keyframe, cts, &f.data),
                        ));
                    }
                    TrackKind::Audio => out.push(FlvOut::Audio(ts, flv::audio_frame(&f.data))),
                }
            }
            // A channel bus carries no source sessions.
            MediaEvent::TrackStart { .. } | MediaEvent::End { .. } | MediaEvent::Close => {}
        }
    }
}

async fn push_rtmp(
    bus: &Arc<ChannelBus>,
    spec: &PushSpec,
    stats: &OutputStats,
    sent: &mut bool,
) -> Result<(), EndReason> {
    let (authority, app, stream_name) = rtmp_parts(&spec.url)?;
    let addr = resolve(authority, 1935).await?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let (mut tcp, remaining) = rtmp_connect(addr, deadline, &mut buf).await?;
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(format!("rtmp://{authority}/{app}"));
    let (mut session, results) = ClientSession::new(config).map_err(rtmp_err)?;
    let mut outbound = Vec::new();
    let mut events = Vec::new();
    crate::pull::split(results, &mut outbound, &mut events);
    outbound.push(
        session
            .request_connection(app.to_owned())
            .map_err(rtmp_err)?,
    );
    let mut guard = ChunkGuard::default();
    let mut input = remaining;
    // Until the publish is accepted: the connect and publish exchange.
    let mut rx = loop {
        if !input.is_empty() {
            guard.check(&input)?;
            let results =
                contained("rml_rtmp", || session.handle_input(&input))?.map_err(rtmp_err)?;
            crate::pull::split(results, &mut outbound, &mut events);
        }
        let mut accepted = false;
        for ev in events.drain(..) {
            match ev {
                ClientSessionEvent::ConnectionRequestAccepted => outbound.push(
                    session
                        .request_publishing(stream_name.to_owned(), PublishRequestType::Live)
                        .map_err(rtmp_err)?,
                ),
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    return Err(EndReason::SourceRefused(description));
                }
                ClientSessionEvent::PublishRequestAccepted => accepted = true,
                _ => {}
            }
        }
        for result in outbound.drain(..) {
            if let ClientSessionResult::OutboundResponse(packet) = result {
                write(&mut tcp, &packet.bytes).await?;
            }
        }
        if accepted {
            break bus.subscribe();
        }
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .map_err(|_| EndReason::Timeout("the publish request"))??;
        if n == 0 {
            return Err(EndReason::SourceRefused(
                "closed before accepting the publish".into(),
            ));
        }
        input = buf[..n].to_vec();
    };
    running(stats, spec, bus.channel());
    let mut relay = FlvRelay::default();
    let mut tags = Vec::new();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                relay.push(&ev, &mut tags);
                for tag in tags.drain(..) {
                    let (packet, len) = match tag {
                        FlvOut::Metadata(m) => (session.publish_metadata(&m), 0),
                        FlvOut::Video(ms, body) => {
                            let len = body.len();
                            (session.publish_video_data(body, RtmpTimestamp::new(ms), false), len)
                        }
                        FlvOut::Audio(ms, body) => {
                            let len = body.len();
                            (session.publish_audio_data(body, RtmpTimestamp::new(ms), false), len)
                        }
                    };
                    let packet = packet.map_err(rtmp_err)?;
                    if let ClientSessionResult::OutboundResponse(p) = packet {
                        write(&mut tcp, &p.bytes).await?;
                    }
                    stats.bytes.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                    *sent = true;
                }
            }
            n = tcp.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                guard.check(&buf[..n])?;
                let results = contained("rml_rtmp", || session.handle_input(&buf[..n]))?
                    .map_err(rtmp_err)?;
                crate::pull::split(results, &mut outbound, &mut events);
                events.clear();
                for result in outbound.drain(..) {
                    if let ClientSessionResult::OutboundResponse(packet) = result {
                        write(&mut tcp, &packet.bytes).await?;
                    }
                }
            }
        }
    }
}

async fn push_srt(
    bus: &Arc<ChannelBus>,
    spec: &PushSpec,
    stats: &OutputStats,
    sent: &mut bool,
) -> Result<(), EndReason> {
    let (mut socket, _) = srt_call(&spec.url, spec.passphrase.clone()).await?;
    running(stats, spec, bus.channel());
    let mut rx = bus.subscribe();
    let mut relay = TsRelay::default();
    let mut ts = Vec::with_capacity(64 * 1024);
    loop {
        // The target closing (or going silent past SRT's peer timeout) ends the push even
        // while the channel has nothing to send.
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            incoming = socket.next() => match incoming {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => continue, // a listener that sends: ignored
            },
        };
        let Some(ev) = ev else { return Ok(()) };
        relay.push(&ev, &mut ts);
        for chunk in ts.chunks(TS_PER_MESSAGE * crate::ts_demux::PACKET) {
            tokio::time::timeout(
                WRITE_TIMEOUT,
                socket.send((std::time::Instant::now(), Bytes::copy_from_slice(chunk))),
            )
            .await
            .map_err(|_| EndReason::Timeout("a send to the target"))?
            .map_err(EndReason::from)?;
            *sent = true;
        }
        stats
            .bytes
            .fetch_add(ts.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::codec::testdata::AVCC_720P;
    use sluice_core::{AudioConfig, Frame};

    /// Sequence headers at every session start, then frames from a keyframe on, with
    /// millisecond timestamps from the first frame and the composition offset.
    #[test]
    fn flv_tags_start_at_a_keyframe_with_headers() {
        let mut relay = FlvRelay::default();
        let mut tags = Vec::new();
        let start = MediaEvent::Start {
            session: 1,
            video: VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap(),
            audio: Some(AudioConfig::aac_lc(48_000, 2)),
            carried: false,
        };
        let frame = |track, ms: i64, key| {
            MediaEvent::Frame(Frame {
                track,
                pts: 1_000_000_000_000 + (ms + 66) * 1_000_000,
                dts: 1_000_000_000_000 + ms * 1_000_000,
                keyframe: key,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            })
        };
        relay.push(&start, &mut tags);
        relay.push(&frame(TrackKind::Video, 0, false), &mut tags);
        relay.push(&frame(TrackKind::Audio, 10, true), &mut tags);
        assert!(tags.is_empty(), "nothing before a keyframe");
        relay.push(&frame(TrackKind::Video, 33, true), &mut tags);
        relay.push(&frame(TrackKind::Audio, 40, true), &mut tags);
        let FlvOut::Metadata(meta) = &tags[0] else {
            panic!("metadata first: {tags:?}")
        };
        assert_eq!(
            (meta.video_codec_id, meta.audio_codec_id),
            (Some(7), Some(10))
        );
        let kinds: Vec<(bool, u32, u8, u8)> = tags[1..]
            .iter()
            .map(|t| match t {
                FlvOut::Video(ms, b) => (true, *ms, b[0], b[1]),
                FlvOut::Audio(ms, b) => (false, *ms, b[0], b[1]),
                FlvOut::Metadata(_) => panic!("metadata twice"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (true, 0, 0x17, 0),
                (false, 0, 0xaf, 0),
                (true, 0, 0x17, 1),
                (false, 7, 0xaf, 1)
            ]
        );
        let FlvOut::Video(_, frame) = &tags[3] else {
            panic!()
        };
        // Composition offset 66 ms, big-endian 24 bits.
        assert_eq!(&frame[2..5], &[0, 0, 66]);
        // The parser reads back what was built.
        assert!(matches!(
            flv::parse_video(frame),
            Ok(flv::FlvVideo::Nalus {
                keyframe: true,
                composition_ms: 66,
                ..
            })
        ));
    }
}
