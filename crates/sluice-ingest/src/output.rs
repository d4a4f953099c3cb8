//! Channel outputs that others read (pull outputs): who may read, the reader's hold on
//! its channel, and the channel as a continuous MPEG-TS stream carrying its timeline.
//!
//! A reader is a subscription to the channel bus: it gets the live input as received
//! (the source), never blocks the publisher or the engines, and when it falls behind it
//! resumes at the next keyframe (the bus's rule). Every output counts its readers, the
//! connections it accepted and refused, and the bytes it sent, for status and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_core::{Id, MediaEvent, TrackKind, VideoConfig};
use sluice_package::ts::{TsFrame, TsStreamWriter};
use tokio_util::sync::CancellationToken;

use crate::bus::BusReceiver;

/// A push output's state (pull outputs are idle or running by their readers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OutputState {
    #[default]
    Idle,
    Connecting,
    Running,
    /// The last connection failed or was lost (the reason); a retry follows.
    Error(String),
    Stopped,
}

/// What one output has done, shared by its readers or its push task.
#[derive(Debug, Default)]
pub struct OutputStats {
    /// Readers connected now (a push output: 1 while connected).
    pub readers: AtomicU64,
    /// Readers accepted so far.
    pub connects: AtomicU64,
    /// Readers refused so far (address not allowed, output disabled).
    pub refused: AtomicU64,
    /// Media bytes handed to the transport.
    pub bytes: AtomicU64,
    state: std::sync::Mutex<OutputState>,
}

impl OutputStats {
    /// New stats for a new run of an output, its counters going on from `previous`'s.
    pub fn continuing(previous: &OutputStats) -> Self {
        let stats = OutputStats::default();
        for (to, from) in [
            (&stats.connects, &previous.connects),
            (&stats.refused, &previous.refused),
            (&stats.bytes, &previous.bytes),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        stats
    }

    pub fn state(&self) -> OutputState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_state(&self, s: OutputState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// One reader of an output, for as long as it is connected.
pub struct Reader {
    pub channel: Id,
    pub output: Id,
    pub rx: BusReceiver,
    /// Cancelled when the output is changed, disabled or removed: the reader is closed.
    pub cancel: CancellationToken,
    stats: Arc<OutputStats>,
}

impl Reader {
    pub fn new(
        channel: Id,
        output: Id,
        rx: BusReceiver,
        cancel: CancellationToken,
        stats: Arc<OutputStats>,
    ) -> Self {
        stats.readers.fetch_add(1, Ordering::Relaxed);
        stats.connects.fetch_add(1, Ordering::Relaxed);
        Reader {
            channel,
            output,
            rx,
            cancel,
            stats,
        }
    }

    /// Counts bytes sent.
    pub fn sent(&self, bytes: usize) {
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stats.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A channel's bus events as one continuous transport stream (see sluice-package's
/// [`TsStreamWriter`]): each keyframe carries the channel timeline's anchor, so a Sluice
/// node reading it numbers segments as this one does. Starts at a keyframe; a session
/// change carries on in the same stream (continuity counters go on), the new session's
/// parameter sets in band.
#[derive(Debug)]
pub struct TsRelay {
    writer: TsStreamWriter,
    video: Option<VideoConfig>,
    keyframe_seen: bool,
}

impl Default for TsRelay {
    fn default() -> Self {
        TsRelay {
            writer: TsStreamWriter::new(None),
            video: None,
            keyframe_seen: false,
        }
    }
}

impl TsRelay {
    /// Appends what `ev` becomes to `out`.
    pub fn push(&mut self, ev: &MediaEvent, out: &mut Vec<u8>) {
        match ev {
            MediaEvent::Start { video, audio, .. } => {
                self.video = Some(video.clone());
                self.writer.set_audio(audio.as_ref());
                self.keyframe_seen = false;
            }
            MediaEvent::Frame(f) => {
                let Some(video) = &self.video else { return };
                let frame = TsFrame {
                    pts: f.pts,
                    dts: f.dts,
                    keyframe: f.keyframe,
                    data: f.data.clone(),
                };
                match f.track {
                    TrackKind::Video => {
                        if !self.keyframe_seen && !f.keyframe {
                            return;
                        }
                        self.keyframe_seen = true;
                        self.writer.video(video, &frame, out);
                    }
                    TrackKind::Audio if self.keyframe_seen => self.writer.audio(&frame, out),
                    TrackKind::Audio => {}
                }
            }
            // A channel bus carries no source sessions.
            MediaEvent::TrackStart { .. } | MediaEvent::End { .. } | MediaEvent::Close => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts_demux::{TsDemuxer, TsEvent};
    use bytes::Bytes;
    use sluice_core::codec::testdata::AVCC_720P;
    use sluice_core::{AudioConfig, Frame};

    /// A channel muxed by the relay and demuxed by another node's ingest: the timeline
    /// anchor is found, and times come out as sent, far past the 33-bit wrap (a wall-clock
    /// timeline), to the 90 kHz tick.
    #[test]
    fn the_timeline_survives_the_transport() {
        let video = VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap();
        let mut relay = TsRelay::default();
        let mut ts = Vec::new();
        relay.push(
            &MediaEvent::Start {
                session: 1,
                video,
                audio: Some(AudioConfig::aac_lc(48_000, 2)),
                carried: false,
            },
            &mut ts,
        );
        let base: i64 = 1_795_711_068_000_000_000; // 2026, in ns
        for i in 0..90i64 {
            let t = base + i * 33_333_333;
            relay.push(
                &MediaEvent::Frame(Frame {
                    track: TrackKind::Video,
                    pts: t,
                    dts: t,
                    keyframe: i % 30 == 0,
                    data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
                }),
                &mut ts,
            );
            relay.push(
                &MediaEvent::Frame(Frame {
                    track: TrackKind::Audio,
                    pts: t,
                    dts: t,
                    keyframe: true,
                    data: Bytes::from_static(&[0x21, 0x10, 0x04]),
                }),
                &mut ts,
            );
        }
        assert_eq!(ts.len() % 188, 0);
        let mut demux = TsDemuxer::new();
        let mut events = Vec::new();
        demux.push(&ts, &mut events).unwrap();
        demux.finish(&mut events);
        let timeline = events
            .iter()
            .position(|e| matches!(e, TsEvent::Timeline))
            .expect("the anchor is found");
        let first_frame = events
            .iter()
            .position(|e| matches!(e, TsEvent::Frame(_)))
            .unwrap();
        assert!(timeline < first_frame);
        let videos: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                TsEvent::Frame(f) if f.track == TrackKind::Video => Some(f.pts),
                _ => None,
            })
            .collect();
        assert_eq!(videos.len(), 90);
        for (i, pts) in videos.iter().enumerate() {
            let sent = base + i as i64 * 33_333_333;
            assert!((pts - sent).abs() < 11_112, "frame {i}: {pts} for {sent}");
        }
    }
}
