//! Sluice engine: the only crate that links GStreamer.
//!
//! GStreamer does what it is best at, decoding, scaling and encoding. Encoded
//! access units leave through appsinks as [`sluice_core::Frame`]s; segmenting,
//! numbering and playlists happen in pure Rust downstream (`sluice-package`),
//! so alignment across renditions and engines stays under our control.
//!
//! - [`Transcoder`]: one channel input decoded once, scaled and encoded into
//!   every rendition of a ladder, audio encoded once; keyframes forced on the
//!   segment grid (from media time) and nowhere else.
//! - [`EngineRunner`]: one engine's life as a state machine (idle, running, draining,
//!   backing off) driven by media events and the pipeline's bus, with a stall watchdog.
//! - [`TestPattern`]: a built-in live source (moving picture with a clock, and
//!   a tone), encoded like an encoder would send it.

mod c_heap;
mod encoder;
mod error;
pub mod runner;
mod scale;
mod stats;
mod testpattern;
mod transcode;

pub use encoder::{Encoder, EncoderChoice, resolve as resolve_encoder};
pub use error::EngineError;
pub use runner::{EngineMode, EngineRunner, GstFactory, Packaging, RunnerSettings};
pub use stats::EngineStats;
pub use testpattern::{Look, TestPattern, TestPatternSettings};
pub use transcode::{
    EncodedEvent, EncodedSink, PushOutcome, RenditionSettings, TopRung, TranscodeSettings,
    Transcoder,
};

use std::sync::OnceLock;

/// Initialises GStreamer once for the process.
pub fn init() -> Result<(), EngineError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        c_heap::limit_arenas();
        gstreamer::init().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(EngineError::Init)?;
    scale::register()
}

/// Checks that every GStreamer element the engine uses is installed, so a
/// missing plugin package is reported at start-up, not at the first publish.
pub fn check_elements() -> Result<(), EngineError> {
    init()?;
    let missing: Vec<&str> = transcode::ELEMENTS
        .iter()
        .chain(testpattern::ELEMENTS)
        .copied()
        .filter(|e| gstreamer::ElementFactory::find(e).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::MissingElements(missing.join(", ")))
    }
}
