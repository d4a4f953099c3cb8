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
//!
//! A horizontal downscale takes a turn: `fast_image_resize`'s horizontal pass for
//! one-byte pixels works one output pixel at a time below 8 taps (the bilinear kernel
//! here has 3 to 7), while its vertical pass runs whole rows through SIMD. So the plane is
//! narrowed vertically first (fewer rows), transposed, resized vertically again (which
//! is the horizontal resize), and transposed back into the output: two vertical passes
//! and two 8x8-block transposes cost about half the direct route here, with the same
//! bytes out (a unit test compares them).

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

/// Intermediate planes of the transposed route, kept from frame to frame.
#[derive(Default)]
pub(crate) struct Scratch {
    rows: Vec<u8>,
    turned: Vec<u8>,
    narrowed: Vec<u8>,
}

/// Resizes one plane: `src` (`src_stride` bytes a row) into `dst` (likewise). A
/// horizontal downscale goes the transposed route (see the module's documentation).
fn resize_plane(
    resizer: &mut fir::Resizer,
    options: &fir::ResizeOptions,
    scratch: &mut Scratch,
    src: (&[u8], u32, u32, u32),
    dst: (&mut [u8], u32, u32, u32),
) -> Result<(), String> {
    let (_, _, src_w, _) = src;
    let (dst_data, dst_stride, dst_w, dst_h) = dst;
    if dst_w >= src_w || dst_h == 0 || dst_w < 8 || dst_h < 8 {
        return resize_view(resizer, options, src, (dst_data, dst_stride, dst_w, dst_h));
    }
    // The last transpose writes the output itself: its rows are checked here (the input's
    // by the first pass).
    let dst_rows = dst_data
        .get_mut(..dst_stride as usize * dst_h as usize)
        .ok_or("output plane shorter than its rows")?;
    let (sw, dw, dh) = (src_w as usize, dst_w as usize, dst_h as usize);
    let Scratch {
        rows,
        turned,
        narrowed,
    } = scratch;
    rows.resize(sw * dh, 0);
    turned.resize(sw * dh, 0);
    narrowed.resize(dw * dh, 0);
    // Rows first: src_w x dst_h.
    resize_view(resizer, options, src, (rows, src_w, src_w, dst_h))?;
    // Turned: dst_h wide, src_w tall; its columns resized as rows.
    transpose(rows, sw, sw, dh, turned, dh);
    resize_view(
        resizer,
        options,
        (turned, dst_h, dst_h, src_w),
        (narrowed, dst_h, dst_h, dst_w),
    )?;
    transpose(narrowed, dh, dh, dw, dst_rows, dst_stride as usize);
    Ok(())
}

/// `fast_image_resize` on a `stride`-wide image cropped to its visible width: the kernel
/// never reads the padding (it is clamped to the cropped view's edges), nothing is copied.
fn resize_view(
    resizer: &mut fir::Resizer,
    options: &fir::ResizeOptions,
    src: (&[u8], u32, u32, u32),
    dst: (&mut [u8], u32, u32, u32),
) -> Result<(), String> {
    let (src_rows, src_stride, src_w, src_h) = src;
    let (dst_rows, dst_stride, dst_w, dst_h) = dst;
    let src_rows = src_rows
        .get(..src_stride as usize * src_h as usize)
        .ok_or("input plane shorter than its rows")?;
    let dst_rows = dst_rows
        .get_mut(..dst_stride as usize * dst_h as usize)
        .ok_or("output plane shorter than its rows")?;
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

/// Writes the `w` x `h` image in `src` (rows `src_stride` apart) transposed into `dst`
/// (`h` wide, `w` tall, rows `dst_stride` apart). 8x8 blocks go through eight `u64`s.
fn transpose(src: &[u8], src_stride: usize, w: usize, h: usize, dst: &mut [u8], dst_stride: usize) {
    let (w8, h8) = (w / 8 * 8, h / 8 * 8);
    for by in (0..h8).step_by(8) {
        for bx in (0..w8).step_by(8) {
            let mut block = [0u64; 8];
            for (k, word) in block.iter_mut().enumerate() {
                let at = (by + k) * src_stride + bx;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&src[at..at + 8]);
                *word = u64::from_le_bytes(bytes);
            }
            for (k, word) in transpose_8x8(block).iter().enumerate() {
                let at = (bx + k) * dst_stride + by;
                dst[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    for y in 0..h {
        let first = if y < h8 { w8 } else { 0 };
        for x in first..w {
            dst[x * dst_stride + y] = src[y * src_stride + x];
        }
    }
}

/// An 8x8 block of bytes, one row per word (byte `i` of a word is column `i`), transposed:
/// 4x4 quarters swapped between words four apart, then 2x2 blocks, then single bytes.
fn transpose_8x8(mut rows: [u64; 8]) -> [u64; 8] {
    for (shift, keep) in [
        (32u32, 0x0000_0000_FFFF_FFFFu64),
        (16, 0x0000_FFFF_0000_FFFF),
        (8, 0x00FF_00FF_00FF_00FF),
    ] {
        let d = (shift / 8) as usize;
        for i in (0..8).step_by(2 * d) {
            for j in i..i + d {
                let (a, b) = (rows[j], rows[j + d]);
                rows[j] = (a & keep) | ((b & keep) << shift);
                rows[j + d] = ((a >> shift) & keep) | (b & !keep);
            }
        }
    }
    rows
}

mod imp {
    use super::*;
    use gst::subclass::prelude::*;
    use gst_base::subclass::BaseTransformMode;
    use gst_base::subclass::prelude::*;
    use gst_video::VideoFrameExt;
    use gst_video::subclass::prelude::*;

    pub struct SluiceScale {
        resizer: Mutex<(fir::Resizer, Scratch)>,
        options: fir::ResizeOptions,
    }

    impl Default for SluiceScale {
        fn default() -> Self {
            SluiceScale {
                resizer: Mutex::new((fir::Resizer::new(), Scratch::default())),
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
            let mut guard = self.resizer.lock().unwrap_or_else(|e| e.into_inner());
            let (resizer, scratch) = &mut *guard;
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
                if let Err(e) = resize_plane(resizer, &self.options, scratch, src, dst) {
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
            &mut Scratch::default(),
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

    /// The transposed route gives the direct route's bytes, for the ladder's downscales of
    /// luma and chroma, odd sizes and padded strides, and leaves the output's padding alone.
    #[test]
    fn the_transposed_route_matches_the_direct_one() {
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
        let mut resizer = fir::Resizer::new();
        let mut scratch = Scratch::default();
        for (w, h, stride, dw, dh, dstride) in [
            (1280u32, 720u32, 1280u32, 854u32, 480u32, 864u32),
            (640, 360, 640, 427, 240, 432),
            (1920, 1080, 1920, 640, 360, 640),
            (963, 541, 976, 321, 181, 328),
            (64, 64, 64, 63, 9, 63),
        ] {
            let src: Vec<u8> = (0..stride * h)
                .map(|i| {
                    (u64::from(i) * 7
                        + u64::from(i / stride) * 13
                        + u64::from(i % 17) * u64::from(i % 17)) as u8
                })
                .collect();
            let mut direct = vec![3u8; (dstride * dh) as usize];
            resize_view(
                &mut resizer,
                &options,
                (&src, stride, w, h),
                (&mut direct, dstride, dw, dh),
            )
            .unwrap();
            let mut turned = vec![3u8; (dstride * dh) as usize];
            resize_plane(
                &mut resizer,
                &options,
                &mut scratch,
                (&src, stride, w, h),
                (&mut turned, dstride, dw, dh),
            )
            .unwrap();
            assert!(direct == turned, "{w}x{h} -> {dw}x{dh}");
        }
    }

    #[test]
    fn an_8x8_block_transposes() {
        let src: Vec<u8> = (0..8 * 11).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 11 * 8];
        transpose(&src, 11, 8, 8, &mut dst, 8);
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(dst[x * 8 + y], src[y * 11 + x]);
            }
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
            &mut Scratch::default(),
            (&[0u8; 10], 4, 4, 4),
            (&mut dst, 4, 4, 4),
        )
        .unwrap_err();
        assert!(err.contains("input plane"), "{err}");
    }
}
