//! The built-in `test-pattern` ingest: a moving picture with a wall clock and
//! a 440 Hz tone, encoded to H.264 + AAC the way a hardware encoder would send
//! it, so everything downstream treats it like any other live input.
//!
//! ```text
//! videotestsrc is-live ! video/x-raw,WxH@fps ! clockoverlay ! videoconvert ! x264enc ! appsink(video)
//! audiotestsrc is-live ! audioconvert ! audioresample ! avenc_aac ! appsink(audio)
//! ```

use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use sluice_core::TrackKind;

use crate::EngineError;
use crate::transcode::{EncodedSink, attach_sink, x264};

pub(crate) const ELEMENTS: &[&str] = &[
    "videotestsrc",
    "audiotestsrc",
    "clockoverlay",
    "videoconvert",
    "x264enc",
    "avenc_aac",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPatternSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Video bitrate of the generated "encoder" output.
    pub video_kbps: u32,
}

impl Default for TestPatternSettings {
    fn default() -> Self {
        TestPatternSettings {
            width: 1280,
            height: 720,
            fps: 30,
            video_kbps: 3000,
        }
    }
}

/// A running test pattern. Dropping it stops the pipeline.
pub struct TestPattern {
    pipeline: gst::Pipeline,
}

impl TestPattern {
    pub fn start(
        settings: &TestPatternSettings,
        sink: Arc<dyn EncodedSink>,
    ) -> Result<TestPattern, EngineError> {
        crate::init()?;
        let pipeline = gst::Pipeline::with_name("test-pattern");
        let make = |f: &str, n: &str| {
            gst::ElementFactory::make(f)
                .name(n)
                .build()
                .map_err(|e| EngineError::Build(format!("{f}: {e}")))
        };

        let vsrc = make("videotestsrc", "pattern")?;
        vsrc.set_property("is-live", true);
        vsrc.set_property_from_str("pattern", "smpte");
        vsrc.set_property("horizontal-speed", 4i32);
        let vcaps = make("capsfilter", "pattern-format")?;
        vcaps.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("width", settings.width as i32)
                .field("height", settings.height as i32)
                .field("framerate", gst::Fraction::new(settings.fps as i32, 1))
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        );
        let clock = make("clockoverlay", "pattern-clock")?;
        clock.set_property("time-format", "%H:%M:%S");
        clock.set_property("font-desc", "Sans Bold 48");
        clock.set_property("shaded-background", true);
        let conv = make("videoconvert", "pattern-convert")?;
        // One-second GOPs, like a typical contribution encoder.
        let enc = x264(
            "pattern-encode",
            "ultrafast",
            settings.video_kbps,
            settings.fps.max(1),
        )?;
        let vout = make("capsfilter", "pattern-h264")?;
        vout.set_property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .field("profile", "high")
                .build(),
        );
        let vsink = gst_app::AppSink::builder()
            .name("pattern-video")
            .sync(false)
            .build();
        pipeline.add_many([
            &vsrc,
            &vcaps,
            &clock,
            &conv,
            &enc,
            &vout,
            vsink.upcast_ref(),
        ])?;
        gst::Element::link_many([
            &vsrc,
            &vcaps,
            &clock,
            &conv,
            &enc,
            &vout,
            vsink.upcast_ref(),
        ])?;
        attach_sink(&vsink, TrackKind::Video, 0, sink.clone());

        let asrc = make("audiotestsrc", "tone")?;
        asrc.set_property("is-live", true);
        asrc.set_property("freq", 440.0f64);
        asrc.set_property("volume", 0.2f64);
        // 1024 samples per buffer: one AAC frame each.
        asrc.set_property("samplesperbuffer", 1024i32);
        let aconv = make("audioconvert", "tone-convert")?;
        let ares = make("audioresample", "tone-resample")?;
        let acaps = make("capsfilter", "tone-format")?;
        acaps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("rate", 48000i32)
                .field("channels", 2i32)
                .build(),
        );
        let aenc = make("avenc_aac", "tone-encode")?;
        aenc.set_property("bitrate", 128_000i32);
        let asink = gst_app::AppSink::builder()
            .name("pattern-audio")
            .sync(false)
            .build();
        pipeline.add_many([&asrc, &aconv, &ares, &acaps, &aenc, asink.upcast_ref()])?;
        gst::Element::link_many([&asrc, &aconv, &ares, &acaps, &aenc, asink.upcast_ref()])?;
        attach_sink(&asink, TrackKind::Audio, 0, sink);

        pipeline.set_state(gst::State::Playing)?;
        Ok(TestPattern { pipeline })
    }

    /// The first error the pipeline posted since the last call.
    pub fn poll_error(&self) -> Option<EngineError> {
        let bus = self.pipeline.bus()?;
        let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(EngineError::Pipeline(e.error().to_string())),
            _ => None,
        }
    }
}

impl Drop for TestPattern {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
