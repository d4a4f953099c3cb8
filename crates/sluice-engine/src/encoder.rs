//! Which H.264 encoder a ladder's renditions use: x264 in software, or the machine's
//! video hardware (NVENC on NVIDIA, VA-API on Intel and AMD) when it has it.
//!
//! A ladder asks for one with `encoder` ([`EncoderChoice`]); [`resolve`] turns that into
//! the [`Encoder`] that works on this machine, probing each hardware element once per
//! process: it must be installed *and* open its device (reach GStreamer's READY state),
//! since a plugin can be installed on a machine without the GPU it drives. `auto` falls
//! back to x264; asking for a hardware encoder by name that is not there is an error, not
//! a silent fallback (an operator who sized a box for a GPU wants to know).
//!
//! The choice is pure ([`select`]) and tested without hardware; what each element is told
//! (rate control, GOP, no B-frames) is in [`build`], one match arm per encoder.

use std::sync::OnceLock;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use crate::EngineError;
use crate::transcode::make;

/// What a ladder asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderChoice {
    /// The first hardware encoder that works here (NVENC, then VA-API), else x264.
    #[default]
    Auto,
    X264,
    Nvenc,
    /// GStreamer's `va` plugin (`vah264enc`), else the older `vaapi` one.
    Vaapi,
}

/// An encoder the engine builds renditions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// `x264enc` (gst-plugins-ugly).
    X264,
    /// `nvh264enc` (gst-plugins-bad `nvcodec`; registered only where CUDA loads).
    Nvenc,
    /// `vah264enc` (gst-plugins-bad `va`, GStreamer ≥ 1.22).
    Va,
    /// `vaapih264enc` (gstreamer-vaapi).
    Vaapi,
}

/// Hardware encoders in the order `auto` tries them.
const HARDWARE: [Encoder; 3] = [Encoder::Nvenc, Encoder::Va, Encoder::Vaapi];

impl Encoder {
    /// The GStreamer element.
    pub fn factory(self) -> &'static str {
        match self {
            Encoder::X264 => "x264enc",
            Encoder::Nvenc => "nvh264enc",
            Encoder::Va => "vah264enc",
            Encoder::Vaapi => "vaapih264enc",
        }
    }

    /// Its name in logs and the status API.
    pub fn name(self) -> &'static str {
        match self {
            Encoder::X264 => "x264",
            Encoder::Nvenc => "nvenc",
            Encoder::Va => "va",
            Encoder::Vaapi => "vaapi",
        }
    }

    pub fn is_hardware(self) -> bool {
        self != Encoder::X264
    }
}

/// The encoder for `choice`, given which hardware encoders are `usable` here.
pub fn select(
    choice: EncoderChoice,
    usable: impl Fn(Encoder) -> bool,
) -> Result<Encoder, EngineError> {
    let first = |candidates: &[Encoder]| candidates.iter().copied().find(|e| usable(*e));
    match choice {
        EncoderChoice::X264 => Ok(Encoder::X264),
        EncoderChoice::Auto => Ok(first(&HARDWARE).unwrap_or(Encoder::X264)),
        EncoderChoice::Nvenc => first(&[Encoder::Nvenc]).ok_or_else(|| {
            EngineError::Encoder(
                "encoder = \"nvenc\", but nvh264enc is not usable here (it needs an NVIDIA \
                 GPU, its driver and gstreamer1.0-plugins-bad); use \"auto\" or \"x264\""
                    .into(),
            )
        }),
        EncoderChoice::Vaapi => first(&[Encoder::Va, Encoder::Vaapi]).ok_or_else(|| {
            EngineError::Encoder(
                "encoder = \"vaapi\", but neither vah264enc nor vaapih264enc is usable here \
                 (they need a VA-API driver for the GPU, /dev/dri access and \
                 gstreamer1.0-plugins-bad or gstreamer1.0-vaapi); use \"auto\" or \"x264\""
                    .into(),
            )
        }),
    }
}

/// The encoder for `choice` on this machine.
pub fn resolve(choice: EncoderChoice) -> Result<Encoder, EngineError> {
    crate::init()?;
    select(choice, usable)
}

/// Whether `encoder`'s element is installed and opens its device; probed once per process.
fn usable(encoder: Encoder) -> bool {
    static PROBED: [OnceLock<bool>; 4] = [const { OnceLock::new() }; 4];
    *PROBED[encoder as usize].get_or_init(|| {
        let Ok(element) = gst::ElementFactory::make(encoder.factory()).build() else {
            return false;
        };
        let opens = element.set_state(gst::State::Ready).is_ok();
        let _ = element.set_state(gst::State::Null);
        tracing::debug!(
            element = encoder.factory(),
            opens,
            "hardware encoder probed"
        );
        opens
    })
}

/// One rendition's encoder, told to cut keyframes only where asked (forced on the segment
/// grid, `key_int_max` frames at most), with no B-frames and constant bitrate.
/// Hardware encoders give byte-stream H.264 in the surfaces they like: the caller puts
/// `videoconvert` before and `h264parse` after them ([`Encoder::is_hardware`]).
pub(crate) fn build(
    encoder: Encoder,
    name: &str,
    preset: &str,
    kbps: u32,
    key_int_max: u32,
) -> Result<gst::Element, EngineError> {
    let enc = make(encoder.factory(), name)?;
    let kbps = kbps.to_string();
    let gop = key_int_max.to_string();
    // Element versions differ in what they offer: each setting is applied when present.
    let settings: &[(&str, &str)] = match encoder {
        Encoder::X264 => &[
            ("speed-preset", preset),
            // No lookahead: low latency. Scene-cut keyframes off: only the grid's.
            ("tune", "zerolatency"),
            ("bitrate", &kbps),
            ("key-int-max", &gop),
            ("bframes", "0"),
            ("option-string", "scenecut=0"),
        ],
        Encoder::Nvenc => &[
            ("preset", "low-latency-hq"),
            ("rc-mode", "cbr"),
            ("bitrate", &kbps),
            ("gop-size", &gop),
            ("bframes", "0"),
            ("rc-lookahead", "0"),
            ("zerolatency", "true"),
        ],
        Encoder::Va => &[
            ("rate-control", "cbr"),
            ("bitrate", &kbps),
            ("key-int-max", &gop),
            ("b-frames", "0"),
        ],
        Encoder::Vaapi => &[
            ("rate-control", "cbr"),
            ("bitrate", &kbps),
            ("keyframe-period", &gop),
            ("max-bframes", "0"),
        ],
    };
    for (property, value) in settings {
        if !set_if_present(&enc, property, value) {
            tracing::debug!(
                element = encoder.factory(),
                property,
                value,
                "setting not taken"
            );
        }
    }
    Ok(enc)
}

/// Sets `property` from its string form (as `gst-launch-1.0` would) when `element` has it
/// and the value parses for its type; says whether it did.
pub(crate) fn set_if_present(element: &gst::Element, property: &str, value: &str) -> bool {
    let Some(spec) = element.find_property(property) else {
        return false;
    };
    match <glib::Value as gst::prelude::GstValueExt>::deserialize(value, spec.value_type()) {
        Ok(v) => {
            element.set_property_from_value(property, &v);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(present: &'static [Encoder]) -> impl Fn(Encoder) -> bool {
        move |e| present.contains(&e)
    }

    #[test]
    fn auto_prefers_nvenc_then_va_then_vaapi_then_x264() {
        use Encoder::*;
        let auto = |present| select(EncoderChoice::Auto, only(present)).unwrap();
        assert_eq!(auto(&[Nvenc, Va, Vaapi]), Nvenc);
        assert_eq!(auto(&[Va, Vaapi]), Va);
        assert_eq!(auto(&[Vaapi]), Vaapi);
        assert_eq!(auto(&[]), X264, "no hardware: software");
    }

    #[test]
    fn a_named_encoder_is_that_one_or_an_error() {
        use Encoder::*;
        assert_eq!(select(EncoderChoice::X264, only(&[Nvenc])).unwrap(), X264);
        assert_eq!(
            select(EncoderChoice::Nvenc, only(&[Nvenc, Va])).unwrap(),
            Nvenc
        );
        assert_eq!(
            select(EncoderChoice::Vaapi, only(&[Nvenc, Vaapi])).unwrap(),
            Vaapi
        );
        assert_eq!(
            select(EncoderChoice::Vaapi, only(&[Va, Vaapi])).unwrap(),
            Va
        );
        let e = select(EncoderChoice::Nvenc, only(&[Va]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nvh264enc is not usable"), "{e}");
        let e = select(EncoderChoice::Vaapi, only(&[Nvenc]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vah264enc nor vaapih264enc"), "{e}");
    }

    /// This machine (and CI) has no GPU: the probe must say so rather than pick an
    /// element that cannot open a device, and `auto` must land on x264.
    #[test]
    fn without_hardware_auto_is_x264_and_named_hardware_fails() {
        crate::init().unwrap();
        let has_gpu = std::path::Path::new("/dev/dri").exists()
            || std::path::Path::new("/dev/nvidia0").exists();
        if has_gpu {
            return;
        }
        assert_eq!(resolve(EncoderChoice::Auto).unwrap(), Encoder::X264);
        assert!(resolve(EncoderChoice::Nvenc).is_err());
        assert!(resolve(EncoderChoice::Vaapi).is_err());
    }

    #[test]
    fn settings_apply_by_type_and_absent_ones_are_skipped() {
        crate::init().unwrap();
        let x = build(Encoder::X264, "x", "superfast", 700, 240).unwrap();
        assert_eq!(x.property::<u32>("bitrate"), 700);
        assert_eq!(x.property::<u32>("key-int-max"), 240);
        assert_eq!(x.property::<u32>("bframes"), 0);
        assert!(
            !set_if_present(&x, "gop-size", "10"),
            "x264enc has no gop-size"
        );
        assert!(
            !set_if_present(&x, "bitrate", "lots"),
            "does not parse as a number"
        );
        assert!(set_if_present(&x, "speed-preset", "ultrafast"));
        assert_eq!(
            x.property::<u32>("bitrate"),
            700,
            "unchanged by the refused value"
        );
    }
}
