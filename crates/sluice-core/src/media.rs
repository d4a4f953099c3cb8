//! Encoded media as it flows from ingest to engines and from engines to packagers.

use bytes::Bytes;

use crate::codec::{AudioConfig, VideoConfig};
use crate::time::MediaTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One encoded access unit.
///
/// Video data is AVCC: NAL units each preceded by a big-endian length of
/// `VideoConfig::nal_length_size` bytes. Audio data is one raw AAC frame (no ADTS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub track: TrackKind,
    /// Presentation time on the channel timeline, nanoseconds.
    pub pts: MediaTime,
    /// Decode time on the channel timeline, nanoseconds.
    pub dts: MediaTime,
    /// A random access point (IDR for video; every AAC frame is one).
    pub keyframe: bool,
    pub data: Bytes,
}

impl Frame {
    /// Bytes this frame holds, for accounting in bounded buffers.
    pub fn cost(&self) -> usize {
        self.data.len() + 64
    }
}

/// What a channel's live input publishes to its engines.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// A publishing session began. Frames that follow belong to it until the
    /// next `Start` or `End`. Timestamps continue the channel timeline: a new
    /// session after a reconnect starts later than everything before it.
    Start {
        session: u64,
        video: VideoConfig,
        audio: Option<AudioConfig>,
        /// The session keeps its source's timeline (a relay from another Sluice node):
        /// media time after a seam is the source's, so engines number across it from
        /// media time (listing what was missed as gaps) instead of counting on by one.
        carried: bool,
    },
    /// A session of an extra audio source began (the bus of a channel's source, not of
    /// the channel): audio only, its frames already placed on the channel's timeline.
    TrackStart {
        session: u64,
        audio: AudioConfig,
    },
    Frame(Frame),
    /// The session ended (publisher left or was replaced).
    End {
        session: u64,
    },
    /// The channel closed: no input for its slate timeout. Engines end their playlists
    /// (`EXT-X-ENDLIST`) until a session starts again.
    Close,
}

/// Where an engine reads a channel's live input from (the channel bus, in a server).
pub trait MediaSource: Send {
    /// The next event; `None` once the source is gone for good.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<MediaEvent>> + Send;
}
