//! Sluice packager: turns an engine's encoded frames into HLS.
//!
//! Pure: no sockets, no files, no GStreamer. The writer side ([`Packager`])
//! segments video renditions on a grid computed from media time, so every
//! rendition, and every engine fed the same input, cuts and numbers segment N
//! the same way. It writes CMAF/fMP4 ([`fmp4`], ISO/IEC 23000-19) and MPEG-TS
//! ([`ts`], ISO/IEC 13818-1) segments into a bounded in-memory store; the
//! reader side ([`EngineOutput`]) serves segments and cached playlists
//! (RFC 8216bis) to the HTTP layer.
//!
//! URLs written into playlists are relative: the multivariant playlist (at
//! `/live/<dist>/<cmaf|ts>/index.m3u8`) points to `<rendition>/index.m3u8`
//! (CMAF audio: `audio/index.m3u8`); a media playlist to `init-<version>.mp4`
//! and `<msn>.m4s` or `<msn>.ts`.

pub mod fmp4;
mod packager;
pub mod playlist;
pub mod recording;
mod store;
mod timeline;
pub mod ts;

pub use packager::{AudioSpec, Packager, PackagerSettings, RenditionSpec, TrackSpec};
pub use playlist::{Awaited, Readiness, Rendered};
pub use store::{AUDIO_RENDITION, EngineOutput, Produced, SegmentRecord, source_rendition};

/// Why a frame or call was dropped. The packager never fails its caller:
/// odd input is logged (with this as the reason) and dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("no rendition {0}")]
    NoSuchRendition(usize),
    #[error("no codec configuration yet")]
    NoConfig,
    #[error("empty frame")]
    EmptyFrame,
    #[error("decode time {dts} not after previous {previous}")]
    NonMonotonic { dts: i64, previous: i64 },
    #[error("waiting for a keyframe")]
    WaitingForKeyframe,
    #[error("open segment exceeds {0} bytes or its frame limit")]
    SegmentTooLarge(usize),
    #[error("packager has finished")]
    Finished,
    #[error("no audio in this output")]
    NoAudio,
    #[error("audio timestamp far ahead of the video")]
    AudioAhead,
}

/// The two HLS flavours an engine can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// fMP4 (CMAF) segments, audio as its own rendition.
    Cmaf,
    /// MPEG-TS segments, audio muxed into every video rendition.
    Ts,
}

impl OutputKind {
    /// The path component used in URLs: `cmaf` or `ts`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Cmaf => "cmaf",
            OutputKind::Ts => "ts",
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OutputKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "cmaf" => Ok(OutputKind::Cmaf),
            "ts" => Ok(OutputKind::Ts),
            _ => Err(()),
        }
    }
}
