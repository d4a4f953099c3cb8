//! `sluicescale`: the ladder's scaler, an in-process GStreamer element.
//!
//! GStreamer 1.22's `videoscale` costs about five times what ffmpeg's libswscale
//! does for the ladder's downscales (benches/README.md, "where the engine's time
//! goes"), and 1.22 has no libswscale element. This element resizes each plane of
//! an I420 picture with `fast_image_resize` (separable convolution, AVX2/SSE4.1 on
//! x86-64, NEON on ARM) and a bilinear kernel widened by the downscale factor: the
//! method `videoscale` used here before and the one the benchmark's ffmpeg is given
//! (`scale=...:flags=bilinear`), so quality is compared like for like. It is a
//! `VideoFilter`, so caps negotiation, buffer pools and serialized events (the
//! force-key-unit requests that keep renditions aligned) behave as with any other
//! GStreamer filter; when the input already has the output's size it is in
//! passthrough and touches nothing.
//!
//! Planes are read and written in place, whatever their strides: a plane is a
//! `stride`-wide image cropped to its visible width, so no copy is made.

use std::sync::{LazyLock, Mutex};

use fast_image_resize as fir;
use fir::images::{TypedCroppedImage, TypedCroppedImageMut, TypedImage, TypedImageRef};
use fir::pixels::U8;
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_base as gst_base;
use gstreamer_video as gst_video;

use crate::EngineError;

/// The element's factory name.
pub(crate) const FACTORY: &str = "sluicescale";

glib::wrapper! {
    pub struct SluiceScale(ObjectSubclass<imp::SluiceScale>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Registers `sluicescale` with this process's GStreamer (once; later calls are no-ops).
pub(crate) fn register() -> Result<(), EngineError> {
    static REGISTERED: LazyLock<Result<(), String>> = LazyLock::new(|| {
        gst::Element::register(None, FACTORY, gst::Rank::NONE, SluiceScale::static_type())
            .map_err(|e| e.to_string())
    });
    REGISTERED
        .clone()
        .map_err(|e| EngineError::Init(format!("registering {FACTORY}: {e}")))
}

/// Resizes one plane: `src` (`src_stride` bytes a row) into `dst` (likewise).
fn resize_plane(
    resizer: &mut fir::Resizer,
    options: &fir::ResizeOptions,
    src: (&[u8], u32, u32, u32),
    dst: (&mut [u8], u32, u32, u32),
) -> Result<(), String> {
    let (src_data, src_stride, src_w, src_h) = src;
    let (dst_data, dst_stride, dst_w, dst_h) = dst;
    let src_len = src_stride as usize * src_h as usize;
    let dst_len = dst_stride as usize * dst_h as usize;
    let src_rows = src_data
        .get(..src_len)
        .ok_or("input plane shorter than its rows")?;
    let dst_rows = dst_data
        .get_mut(..dst_len)
        .ok_or("output plane shorter than its rows")?;
    // A plane is a stride-wide image cropped to its visible width: the kernel never reads
    // the padding (it is clamped to the cropped view's edges) and nothing is copied.
    let whole =
        TypedImageRef::<U8>::from_buffer(src_stride, src_h, src_rows).map_err(|e| e.to_string())?;
    let visible = TypedCroppedImage::new(whole, 0, 0, src_w, src_h).map_err(|e| e.to_string())?;
    let mut target =
        TypedImage::<U8>::from_buffer(dst_stride, dst_h, dst_rows).map_err(|e| e.to_string())?;
    let mut drawn = TypedCroppedImageMut::from_ref(&mut target, 0, 0, dst_w, dst_h)
        .map_err(|e| e.to_string())?;
    resizer
        .resize_typed(&visible, &mut drawn, options)
        .map_err(|e| e.to_string())
}

mod imp {
    use super::*;
    use gst::subclass::prelude::*;
    use gst_base::subclass::BaseTransformMode;
    use gst_base::subclass::prelude::*;
    use gst_video::VideoFrameExt;
    use gst_video::subclass::prelude::*;

    pub struct SluiceScale {
        resizer: Mutex<fir::Resizer>,
        options: fir::ResizeOptions,
    }

    impl Default for SluiceScale {
        fn default() -> Self {
            SluiceScale {
                resizer: Mutex::new(fir::Resizer::new()),
                options: fir::ResizeOptions::new()
                    .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
            }
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SluiceScale {
        const NAME: &'static str = "SluiceScale";
        type Type = super::SluiceScale;
        type ParentType = gst_video::VideoFilter;
    }

    impl ObjectImpl for SluiceScale {}
    impl GstObjectImpl for SluiceScale {}

    impl ElementImpl for SluiceScale {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "Sluice scaler",
                    "Filter/Converter/Video/Scaler",
                    "Resizes I420 video with SIMD bilinear convolution",
                    "Sluice",
                )
            });
            Some(&META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                let caps = gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::I420)
                    .build();
                [gst::PadDirection::Src, gst::PadDirection::Sink]
                    .into_iter()
                    .map(|direction| {
                        let name = if direction == gst::PadDirection::Src {
                            "src"
                        } else {
                            "sink"
                        };
                        gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
                            .expect("a static pad template is valid")
                    })
                    .collect()
            });
            TEMPLATES.as_ref()
        }
    }

    impl BaseTransformImpl for SluiceScale {
        const MODE: BaseTransformMode = BaseTransformMode::NeverInPlace;
        const PASSTHROUGH_ON_SAME_CAPS: bool = true;
        const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

        /// Any size on the other side; everything else (format, rate, colorimetry)
        /// unchanged. The same caps come first, so a rung at the input's size passes
        /// through.
        fn transform_caps(
            &self,
            _direction: gst::PadDirection,
            caps: &gst::Caps,
            filter: Option<&gst::Caps>,
        ) -> Option<gst::Caps> {
            let mut resized = caps.clone();
            for s in resized.make_mut().iter_mut() {
                s.set("width", gst::IntRange::new(1, i32::MAX));
                s.set("height", gst::IntRange::new(1, i32::MAX));
                s.remove_field("pixel-aspect-ratio");
            }
            let mut out = caps.clone();
            out.merge(resized);
            Some(match filter {
                Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
                None => out,
            })
        }
    }

    impl VideoFilterImpl for SluiceScale {
        fn transform_frame(
            &self,
            input: &gst_video::VideoFrameRef<&gst::BufferRef>,
            output: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let mut resizer = self.resizer.lock().unwrap_or_else(|e| e.into_inner());
            for plane in 0..input.n_planes() {
                // I420: plane i holds component i.
                let component = plane;
                let src = (
                    input.plane_data(plane).map_err(|_| gst::FlowError::Error)?,
                    input.plane_stride()[plane as usize] as u32,
                    input.comp_width(component),
                    input.comp_height(component),
                );
                let dst_stride = output.plane_stride()[plane as usize] as u32;
                let dst_w = output.comp_width(component);
                let dst_h = output.comp_height(component);
                let dst = (
                    output
                        .plane_data_mut(plane)
                        .map_err(|_| gst::FlowError::Error)?,
                    dst_stride,
                    dst_w,
                    dst_h,
                );
                if let Err(e) = resize_plane(&mut resizer, &self.options, src, dst) {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ["scaling plane {}: {}", plane, e]
                    );
                    return Err(gst::FlowError::Error);
                }
            }
            Ok(gst::FlowSuccess::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16x8 ramp halved: each output pixel is near the mean of the inputs it covers.
    #[test]
    fn resizes_a_strided_plane_without_reading_its_padding() {
        let (w, h, stride) = (16u32, 8u32, 20u32);
        let mut src = vec![255u8; (stride * h) as usize];
        for y in 0..h {
            for x in 0..w {
                src[(y * stride + x) as usize] = (x * 16) as u8;
            }
        }
        let (dw, dh, dstride) = (8u32, 4u32, 12u32);
        let mut dst = vec![7u8; (dstride * dh) as usize];
        let mut resizer = fir::Resizer::new();
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        resize_plane(
            &mut resizer,
            &options,
            (&src, stride, w, h),
            (&mut dst, dstride, dw, dh),
        )
        .unwrap();
        for y in 0..dh {
            let row = &dst[(y * dstride) as usize..((y + 1) * dstride) as usize];
            // The padding columns (value 255) never reach the last column.
            assert!(row[dw as usize - 1] < 250, "row {y}: {row:?}");
            // Monotone ramp, about 32 per output column.
            for x in 1..dw as usize {
                assert!(row[x] > row[x - 1], "row {y}: {row:?}");
            }
            // The output's own padding is left alone.
            assert!(
                row[dw as usize..].iter().all(|&b| b == 7),
                "row {y}: {row:?}"
            );
        }
    }

    #[test]
    fn refuses_planes_shorter_than_their_rows() {
        let mut resizer = fir::Resizer::new();
        let options = fir::ResizeOptions::new();
        let mut dst = vec![0u8; 16];
        let err = resize_plane(
            &mut resizer,
            &options,
            (&[0u8; 10], 4, 4, 4),
            (&mut dst, 4, 4, 4),
        )
        .unwrap_err();
        assert!(err.contains("input plane"), "{err}");
    }
}
