//! Fragmented MP4 writer for CMAF (ISO/IEC 14496-12, ISO/IEC 23000-19).
//!
//! Only what HLS needs: an init segment with one track, and media fragments
//! (`moof` + `mdat`). A media segment is `styp` followed by one or more
//! fragments, so LL-HLS parts (one fragment each) concatenate into the segment.
//!
//! Every file written here holds exactly one track, with track id 1.

use bytes::Bytes;
use sluice_core::{AudioConfig, VideoConfig};

/// The track id of the single track in every file written here.
pub const TRACK_ID: u32 = 1;

/// Video timescale (ticks per second). Audio uses its sample rate.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// `sample_flags` of a sync sample (sample_depends_on = 2: depends on no other).
pub const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// `sample_flags` of a non-sync sample (depends on others, is_non_sync_sample).
pub const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// What the init segment describes.
#[derive(Debug, Clone, Copy)]
pub enum TrackConfig<'a> {
    Video(&'a VideoConfig),
    Audio(&'a AudioConfig),
}

impl TrackConfig<'_> {
    /// Media timescale of the track: 90 kHz for video, the sample rate for audio.
    pub fn timescale(&self) -> u32 {
        match self {
            TrackConfig::Video(_) => VIDEO_TIMESCALE,
            TrackConfig::Audio(a) => a.sample_rate.max(1),
        }
    }
}

/// One sample of a fragment, already in track timescale ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Duration in ticks (next sample's decode time minus this one's).
    pub duration: u32,
    /// Composition time offset (pts − dts) in ticks; signed (`trun` version 1).
    pub composition_offset: i32,
    pub keyframe: bool,
    pub data: Bytes,
}

/// Appends ISO BMFF boxes to a buffer, patching each size when the box ends.
struct BoxWriter {
    buf: Vec<u8>,
}

impl BoxWriter {
    fn with_capacity(n: usize) -> Self {
        BoxWriter {
            buf: Vec::with_capacity(n),
        }
    }

    /// Starts a box; returns its offset, to be passed to [`BoxWriter::end`].
    fn begin(&mut self, fourcc: &[u8; 4]) -> usize {
        let pos = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(fourcc);
        pos
    }

    /// Starts a full box (version and flags follow the type).
    fn begin_full(&mut self, fourcc: &[u8; 4], version: u8, flags: u32) -> usize {
        let pos = self.begin(fourcc);
        self.u32(((version as u32) << 24) | (flags & 0x00ff_ffff));
        pos
    }

    fn end(&mut self, pos: usize) {
        // Boxes here are far below 4 GiB: inputs are capped by the packager.
        let size = u32::try_from(self.buf.len() - pos).unwrap_or(u32::MAX);
        self.buf[pos..pos + 4].copy_from_slice(&size.to_be_bytes());
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// The unity transformation matrix of `mvhd` and `tkhd`.
    fn matrix(&mut self) {
        for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
    }

    fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// Writes an init segment (`ftyp` + `moov`) for one track.
pub fn init_segment(track: TrackConfig<'_>) -> Bytes {
    let mut w = BoxWriter::with_capacity(1024);

    let ftyp = w.begin(b"ftyp");
    w.bytes(b"iso6");
    w.u32(0);
    for brand in [b"iso6", b"cmfc", b"mp41"] {
        w.bytes(brand);
    }
    w.end(ftyp);

    let moov = w.begin(b"moov");
    write_mvhd(&mut w);
    write_trak(&mut w, track);
    let mvex = w.begin(b"mvex");
    let trex = w.begin_full(b"trex", 0, 0);
    w.u32(TRACK_ID);
    w.u32(1); // default_sample_description_index
    w.u32(0); // default_sample_duration
    w.u32(0); // default_sample_size
    w.u32(0); // default_sample_flags
    w.end(trex);
    w.end(mvex);
    w.end(moov);

    w.into_bytes()
}

fn write_mvhd(w: &mut BoxWriter) {
    let mvhd = w.begin_full(b"mvhd", 0, 0);
    w.u32(0); // creation_time
    w.u32(0); // modification_time
    w.u32(1000); // timescale
    w.u32(0); // duration: unknown (fragmented)
    w.u32(0x0001_0000); // rate 1.0
    w.u16(0x0100); // volume 1.0
    w.zeros(2 + 8);
    w.matrix();
    w.zeros(6 * 4); // pre_defined
    w.u32(TRACK_ID + 1); // next_track_ID
    w.end(mvhd);
}

fn write_trak(w: &mut BoxWriter, track: TrackConfig<'_>) {
    let (is_video, width, height) = match track {
        TrackConfig::Video(v) => (true, v.width, v.height),
        TrackConfig::Audio(_) => (false, 0, 0),
    };
    let trak = w.begin(b"trak");

    // Flags: track_enabled | track_in_movie.
    let tkhd = w.begin_full(b"tkhd", 0, 0x000003);
    w.u32(0); // creation_time
    w.u32(0); // modification_time
    w.u32(TRACK_ID);
    w.u32(0); // reserved
    w.u32(0); // duration
    w.zeros(8);
    w.u16(0); // layer
    w.u16(0); // alternate_group
    w.u16(if is_video { 0 } else { 0x0100 }); // volume
    w.u16(0);
    w.matrix();
    w.u32(width.min(0xffff) << 16); // 16.16 fixed point
    w.u32(height.min(0xffff) << 16);
    w.end(tkhd);

    let mdia = w.begin(b"mdia");
    let mdhd = w.begin_full(b"mdhd", 0, 0);
    w.u32(0);
    w.u32(0);
    w.u32(track.timescale());
    w.u32(0);
    w.u16(0x55c4); // language "und", ISO-639-2/T packed
    w.u16(0);
    w.end(mdhd);

    let hdlr = w.begin_full(b"hdlr", 0, 0);
    w.u32(0); // pre_defined
    w.bytes(if is_video { b"vide" } else { b"soun" });
    w.zeros(12);
    w.bytes(if is_video {
        b"VideoHandler\0"
    } else {
        b"SoundHandler\0"
    });
    w.end(hdlr);

    let minf = w.begin(b"minf");
    if is_video {
        let vmhd = w.begin_full(b"vmhd", 0, 1);
        w.zeros(8); // graphicsmode, opcolor
        w.end(vmhd);
    } else {
        let smhd = w.begin_full(b"smhd", 0, 0);
        w.zeros(4); // balance, reserved
        w.end(smhd);
    }
    let dinf = w.begin(b"dinf");
    let dref = w.begin_full(b"dref", 0, 0);
    w.u32(1);
    let url = w.begin_full(b"url ", 0, 1); // self-contained
    w.end(url);
    w.end(dref);
    w.end(dinf);

    let stbl = w.begin(b"stbl");
    let stsd = w.begin_full(b"stsd", 0, 0);
    w.u32(1);
    match track {
        TrackConfig::Video(v) => write_avc1(w, v),
        TrackConfig::Audio(a) => write_mp4a(w, a),
    }
    w.end(stsd);
    // Empty sample tables: the samples live in fragments.
    for fourcc in [b"stts", b"stsc", b"stco"] {
        let b = w.begin_full(fourcc, 0, 0);
        w.u32(0);
        w.end(b);
    }
    let stsz = w.begin_full(b"stsz", 0, 0);
    w.u32(0); // sample_size
    w.u32(0); // sample_count
    w.end(stsz);
    w.end(stbl);
    w.end(minf);
    w.end(mdia);
    w.end(trak);
}

fn write_avc1(w: &mut BoxWriter, v: &VideoConfig) {
    let avc1 = w.begin(b"avc1");
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(2 + 2 + 12); // pre_defined, reserved, pre_defined
    w.u16(v.width.min(0xffff) as u16);
    w.u16(v.height.min(0xffff) as u16);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frame_count
    w.zeros(32); // compressorname
    w.u16(0x0018); // depth
    w.u16(0xffff); // pre_defined = -1
    let avcc = w.begin(b"avcC");
    w.bytes(&v.avcc);
    w.end(avcc);
    w.end(avc1);
}

fn write_mp4a(w: &mut BoxWriter, a: &AudioConfig) {
    let mp4a = w.begin(b"mp4a");
    w.zeros(6);
    w.u16(1); // data_reference_index
    w.zeros(8);
    w.u16(a.channels.max(1) as u16);
    w.u16(16); // samplesize
    w.u16(0);
    w.u16(0);
    // 16.16 fixed point; rates above 65535 Hz do not fit and are carried by the ASC.
    w.u32(if a.sample_rate <= 0xffff {
        a.sample_rate << 16
    } else {
        0
    });

    // ES_Descriptor (ISO/IEC 14496-1 §7.2.6.5) with the AudioSpecificConfig.
    let asc = &a.asc[..];
    let dsi_len = asc.len();
    let dcd_len = 13 + desc_header_len(dsi_len) + dsi_len;
    let es_len = 3 + desc_header_len(dcd_len) + dcd_len + 3;
    let esds = w.begin_full(b"esds", 0, 0);
    write_desc_header(w, 0x03, es_len);
    w.u16(TRACK_ID as u16); // ES_ID
    w.u8(0); // flags
    write_desc_header(w, 0x04, dcd_len);
    w.u8(0x40); // objectTypeIndication: MPEG-4 Audio
    w.u8((0x05 << 2) | 1); // streamType audio, reserved bit
    w.bytes(&[0, 0, 0]); // bufferSizeDB
    w.u32(0); // maxBitrate
    w.u32(0); // avgBitrate
    write_desc_header(w, 0x05, dsi_len);
    w.bytes(asc);
    write_desc_header(w, 0x06, 1);
    w.u8(0x02); // SLConfigDescriptor: predefined MP4
    w.end(esds);
    w.end(mp4a);
}

fn desc_header_len(len: usize) -> usize {
    match len {
        0..=0x7f => 2,
        0x80..=0x3fff => 3,
        0x4000..=0x1f_ffff => 4,
        _ => 5,
    }
}

/// Descriptor tag and size, the size in the 7-bits-per-byte expandable form.
fn write_desc_header(w: &mut BoxWriter, tag: u8, len: usize) {
    w.u8(tag);
    let len = len.min(0x0fff_ffff) as u32;
    let n = desc_header_len(len as usize) - 1;
    for i in (0..n).rev() {
        let more = if i > 0 { 0x80 } else { 0 };
        w.u8(((len >> (7 * i)) & 0x7f) as u8 | more);
    }
}

/// Writes the `styp` box that starts every media segment.
pub fn styp() -> Bytes {
    let mut w = BoxWriter::with_capacity(24);
    let styp = w.begin(b"styp");
    w.bytes(b"msdh");
    w.u32(0);
    w.bytes(b"msdh");
    w.bytes(b"cmfs");
    w.end(styp);
    w.into_bytes()
}

/// Writes one fragment (`moof` + `mdat`) of the single track.
///
/// `sequence` is the `mfhd` sequence number (increasing per track);
/// `base_decode_time` the first sample's decode time in track ticks (`tfdt`).
/// Samples are in decode order.
pub fn write_fragment(sequence: u32, base_decode_time: u64, samples: &[Sample]) -> Bytes {
    let data_len: usize = samples.iter().map(|s| s.data.len()).sum();
    let mut w = BoxWriter::with_capacity(128 + samples.len() * 16 + data_len);

    let moof = w.begin(b"moof");
    let mfhd = w.begin_full(b"mfhd", 0, 0);
    w.u32(sequence);
    w.end(mfhd);
    let traf = w.begin(b"traf");
    let tfhd = w.begin_full(b"tfhd", 0, 0x02_0000); // default-base-is-moof
    w.u32(TRACK_ID);
    w.end(tfhd);
    let tfdt = w.begin_full(b"tfdt", 1, 0);
    w.u64(base_decode_time);
    w.end(tfdt);
    // data-offset, sample-duration, -size, -flags, -composition-time-offset present.
    let trun = w.begin_full(
        b"trun",
        1,
        0x00_0001 | 0x00_0100 | 0x00_0200 | 0x00_0400 | 0x00_0800,
    );
    w.u32(samples.len() as u32);
    let data_offset_pos = w.buf.len();
    w.i32(0); // patched below
    for s in samples {
        w.u32(s.duration);
        w.u32(s.data.len() as u32);
        w.u32(if s.keyframe {
            SYNC_SAMPLE_FLAGS
        } else {
            NON_SYNC_SAMPLE_FLAGS
        });
        w.i32(s.composition_offset);
    }
    w.end(trun);
    w.end(traf);
    w.end(moof);

    // The data offset is relative to the start of the moof (default-base-is-moof)
    // and points past the mdat header.
    let data_offset = i32::try_from(w.buf.len() - moof + 8).unwrap_or(i32::MAX);
    w.buf[data_offset_pos..data_offset_pos + 4].copy_from_slice(&data_offset.to_be_bytes());

    let mdat = w.begin(b"mdat");
    for s in samples {
        w.bytes(&s.data);
    }
    w.end(mdat);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks top-level boxes: (type, size).
    fn boxes(b: &[u8]) -> Vec<([u8; 4], usize)> {
        let mut out = vec![];
        let mut pos = 0;
        while pos + 8 <= b.len() {
            let size = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
            out.push((b[pos + 4..pos + 8].try_into().unwrap(), size));
            assert!(size >= 8);
            pos += size;
        }
        assert_eq!(pos, b.len());
        out
    }

    #[test]
    fn descriptor_lengths() {
        for len in [0usize, 5, 0x7f, 0x80, 0x3fff, 0x4000] {
            let mut w = BoxWriter::with_capacity(8);
            write_desc_header(&mut w, 3, len);
            assert_eq!(w.buf.len(), desc_header_len(len));
            let mut v = 0usize;
            for b in &w.buf[1..] {
                v = (v << 7) | (b & 0x7f) as usize;
            }
            assert_eq!(v, len);
        }
    }

    #[test]
    fn fragment_layout() {
        let samples = vec![
            Sample {
                duration: 3000,
                composition_offset: 3000,
                keyframe: true,
                data: Bytes::from_static(b"abc"),
            },
            Sample {
                duration: 3000,
                composition_offset: -1,
                keyframe: false,
                data: Bytes::from_static(b"de"),
            },
        ];
        let f = write_fragment(7, 900_000, &samples);
        let top = boxes(&f);
        assert_eq!(&top[0].0, b"moof");
        assert_eq!(&top[1].0, b"mdat");
        assert_eq!(&f[f.len() - 5..], b"abcde");
        // data_offset points at the first sample byte.
        let moof_size = top[0].1;
        assert_eq!(&f[moof_size + 8..moof_size + 11], b"abc");
        assert!(boxes(&styp()).len() == 1);
    }

    #[test]
    fn init_layout() {
        let a = AudioConfig::aac_lc(48000, 2);
        let init = init_segment(TrackConfig::Audio(&a));
        let top = boxes(&init);
        assert_eq!(&top[0].0, b"ftyp");
        assert_eq!(&top[1].0, b"moov");
    }
}
