//! The built-in `test-pattern` ingest: a moving picture with a wall clock and
//! a 440 Hz tone, encoded to H.264 + AAC the way a hardware encoder would send
//! it, so everything downstream treats it like any other live input. The same source
//! makes a channel's slate: a still picture (an image file, or a dark frame with a line
//! of text) and silence.
//!
//! ```text
//! videotestsrc is-live ! video/x-raw,WxH@fps ! clockoverlay ! videoconvert ! x264enc ! appsink(video)
//! audiotestsrc is-live ! audioconvert ! audioresample ! avenc_aac ! appsink(audio)
//!
//! slate: filesrc ! pngdec|jpegdec ! imagefreeze is-live ! videoconvert ! videoscale ! WxH@fps ! x264enc ...
//!    or  videotestsrc pattern=solid-color ! WxH@fps ! textoverlay ! videoconvert ! x264enc ...
//!        audiotestsrc wave=silence ! ... ! avenc_aac ! appsink(audio)
//! ```

use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;
use sluice_core::TrackKind;

use crate::EngineError;
use crate::transcode::{
    EncodedSink, aac_encoder, add_chain, capsfilter, encoded_output, h264_avc_caps, make,
};

pub(crate) const ELEMENTS: &[&str] = &[
    "videotestsrc",
    "audiotestsrc",
    "clockoverlay",
    "textoverlay",
    "imagefreeze",
    "pngdec",
    "jpegdec",
    "videoscale",
    "filesrc",
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
    /// What it shows.
    pub look: Look,
}

/// What a generated source shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Look {
    /// Moving colour bars, a wall clock, a 440 Hz tone.
    #[default]
    Pattern,
    /// A still picture and silence: `image` (PNG or JPEG, scaled to the frame), or a
    /// dark frame with a line of text.
    Slate { image: Option<std::path::PathBuf> },
}

impl Default for TestPatternSettings {
    fn default() -> Self {
        TestPatternSettings {
            width: 1280,
            height: 720,
            fps: 30,
            video_kbps: 3000,
            look: Look::Pattern,
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
        let vcaps = capsfilter(
            "pattern-format",
            gst::Caps::builder("video/x-raw")
                .field("width", settings.width as i32)
                .field("height", settings.height as i32)
                .field("framerate", gst::Fraction::new(settings.fps as i32, 1))
                .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                .build(),
        )?;
        let picture: Vec<gst::Element> = match &settings.look {
            Look::Pattern => {
                let vsrc = live_videotestsrc("smpte")?;
                vsrc.set_property("horizontal-speed", 4i32);
                let clock = make("clockoverlay", "pattern-clock")?;
                clock.set_property("time-format", "%H:%M:%S");
                clock.set_property("font-desc", "Sans Bold 48");
                clock.set_property("shaded-background", true);
                vec![vsrc, vcaps, clock]
            }
            Look::Slate { image: Some(path) } => {
                let file = make("filesrc", "slate-file")?;
                file.set_property("location", path.to_string_lossy().as_ref());
                let jpeg = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg")
                });
                let decode = make(if jpeg { "jpegdec" } else { "pngdec" }, "slate-decode")?;
                let freeze = make("imagefreeze", "slate-freeze")?;
                freeze.set_property("is-live", true);
                let convert = make("videoconvert", "slate-convert")?;
                let scale = make("videoscale", "slate-scale")?;
                vec![file, decode, convert, scale, freeze, vcaps]
            }
            Look::Slate { image: None } => {
                let vsrc = live_videotestsrc("solid-color")?;
                vsrc.set_property("foreground-color", 0xff1c_2430u32);
                let text = make("textoverlay", "slate-text")?;
                text.set_property("text", "The stream will be back shortly");
                text.set_property("font-desc", "Sans 36");
                text.set_property_from_str("valignment", "center");
                text.set_property_from_str("halignment", "center");
                vec![vsrc, vcaps, text]
            }
        };
        let conv = make("videoconvert", "pattern-convert")?;
        // One-second GOPs, like a typical contribution encoder.
        let enc = crate::encoder::build(
            crate::Encoder::X264,
            "pattern-encode",
            "ultrafast",
            settings.video_kbps,
            settings.fps.max(1),
        )?;
        let vout = capsfilter(
            "pattern-h264",
            h264_avc_caps().field("profile", "high").build(),
        )?;
        let video = encoded_output("pattern-video", TrackKind::Video, 0, sink.clone());
        let mut chain: Vec<&gst::Element> = picture.iter().collect();
        chain.extend([&conv, &enc, &vout, video.upcast_ref()]);
        add_chain(&pipeline, &chain)?;

        let asrc = make("audiotestsrc", "tone")?;
        asrc.set_property("is-live", true);
        if let Look::Slate { .. } = settings.look {
            asrc.set_property_from_str("wave", "silence");
        } else {
            asrc.set_property("freq", 440.0f64);
            asrc.set_property("volume", 0.2f64);
        }
        // 1024 samples per buffer: one AAC frame each.
        asrc.set_property("samplesperbuffer", 1024i32);
        let [convert, resample, format, encode] = aac_encoder("tone", 128)?;
        let audio = encoded_output("pattern-audio", TrackKind::Audio, 0, sink);
        add_chain(
            &pipeline,
            &[
                &asrc,
                &convert,
                &resample,
                &format,
                &encode,
                audio.upcast_ref(),
            ],
        )?;

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
        // A slate's encoder is freed as the pipeline's last reference drops, just after.
        crate::c_heap::after_pipeline_freed();
    }
}

/// A live `videotestsrc` drawing `pattern` (the test pattern, or the slate without an image).
fn live_videotestsrc(pattern: &str) -> Result<gst::Element, EngineError> {
    let vsrc = make("videotestsrc", "pattern")?;
    vsrc.set_property("is-live", true);
    vsrc.set_property_from_str("pattern", pattern);
    Ok(vsrc)
}
