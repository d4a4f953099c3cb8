//! Codec configuration records carried in RTMP/FLV sequence headers and in
//! MP4 sample entries: the AVC decoder configuration record (ISO/IEC 14496-15
//! §5.3.3.1) and the AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).
//!
//! These parsers read untrusted bytes from encoders: they return errors, never panic.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("avcC record truncated or malformed")]
    BadAvcc,
    #[error("SPS truncated or malformed")]
    BadSps,
    #[error("AudioSpecificConfig truncated or malformed")]
    BadAsc,
}

/// H.264 configuration: the avcC record plus what players need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoConfig {
    /// AVCDecoderConfigurationRecord, exactly as it goes into an `avcC` box.
    pub avcc: Bytes,
    pub width: u32,
    pub height: u32,
    pub profile: u8,
    pub compat: u8,
    pub level: u8,
    /// Length of NAL unit length prefixes in frames (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl VideoConfig {
    /// Parses an avcC record (the body of an FLV AVC sequence header).
    pub fn from_avcc(avcc: Bytes) -> Result<Self, CodecError> {
        let b = &avcc[..];
        if b.len() < 7 || b[0] != 1 {
            return Err(CodecError::BadAvcc);
        }
        let nal_length_size = (b[4] & 3) + 1;
        if nal_length_size == 3 {
            return Err(CodecError::BadAvcc);
        }
        let mut pos = 6;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<Bytes>, CodecError> {
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                let len = *b.get(*pos).ok_or(CodecError::BadAvcc)? as usize * 256
                    + *b.get(*pos + 1).ok_or(CodecError::BadAvcc)? as usize;
                *pos += 2;
                let end = pos.checked_add(len).ok_or(CodecError::BadAvcc)?;
                if end > b.len() || len == 0 {
                    return Err(CodecError::BadAvcc);
                }
                v.push(avcc.slice(*pos..end));
                *pos = end;
            }
            Ok(v)
        };
        let sps = read_sets((b[5] & 0x1f) as usize, &mut pos)?;
        pos += 1;
        let npps = *b.get(pos - 1).ok_or(CodecError::BadAvcc)? as usize;
        let pps = read_sets(npps, &mut pos)?;
        let first = sps.first().ok_or(CodecError::BadAvcc)?;
        let (width, height) = sps_dimensions(first)?;
        Ok(VideoConfig {
            width,
            height,
            profile: b[1],
            compat: b[2],
            level: b[3],
            nal_length_size,
            sps,
            pps,
            avcc,
        })
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile, self.compat, self.level
        )
    }
}

/// AAC configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    /// AudioSpecificConfig, exactly as it goes into an `esds` descriptor.
    pub asc: Bytes,
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u8,
}

const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

impl AudioConfig {
    pub fn from_asc(asc: Bytes) -> Result<Self, CodecError> {
        let mut r = BitReader::new(&asc);
        let mut object_type = r.bits(5).ok_or(CodecError::BadAsc)? as u8;
        if object_type == 31 {
            object_type = 32 + r.bits(6).ok_or(CodecError::BadAsc)? as u8;
        }
        let idx = r.bits(4).ok_or(CodecError::BadAsc)? as usize;
        let sample_rate = if idx == 15 {
            r.bits(24).ok_or(CodecError::BadAsc)?
        } else {
            *AAC_RATES.get(idx).ok_or(CodecError::BadAsc)?
        };
        let channels = r.bits(4).ok_or(CodecError::BadAsc)? as u8;
        if object_type == 0 || sample_rate == 0 {
            return Err(CodecError::BadAsc);
        }
        Ok(AudioConfig {
            asc,
            object_type,
            sample_rate,
            channels,
        })
    }

    /// Builds an AAC-LC AudioSpecificConfig for `sample_rate` and `channels`.
    pub fn aac_lc(sample_rate: u32, channels: u8) -> Self {
        let idx = AAC_RATES
            .iter()
            .position(|r| *r == sample_rate)
            .unwrap_or(3) as u16;
        let v: u16 = (2 << 11) | (idx << 7) | ((channels as u16 & 0xf) << 3);
        AudioConfig {
            asc: Bytes::copy_from_slice(&v.to_be_bytes()),
            object_type: 2,
            sample_rate,
            channels,
        }
    }

    /// The ADTS sampling frequency index, when the rate has one.
    pub fn sampling_index(&self) -> Option<u8> {
        AAC_RATES
            .iter()
            .position(|r| *r == self.sample_rate)
            .map(|i| i as u8)
    }

    /// One raw AAC frame (1024 samples) of silence for this configuration: AAC-LC, mono
    /// or stereo; `None` for anything else. For a track whose source is away: no
    /// spectral data at all (a single or channel-pair element with no scale-factor
    /// bands, then the end element), 4 bytes mono, 6 bytes stereo.
    pub fn silent_frame(&self) -> Option<Bytes> {
        if self.object_type != 2 || !(1..=2).contains(&self.channels) {
            return None;
        }
        let mut w = BitWriter::default();
        // ics_info of a long window with no bands: reserved bit, window_sequence (2),
        // window_shape, max_sfb (6), predictor_data_present.
        let ics_info = |w: &mut BitWriter| w.put(0, 11);
        // individual_channel_stream: global_gain; (ics_info unless the window is shared);
        // no sections or scale factors; no pulse, TNS or gain control data.
        let ics = |w: &mut BitWriter, shared: bool| {
            w.put(100, 8);
            if !shared {
                ics_info(w);
            }
            w.put(0, 3);
        };
        if self.channels == 1 {
            w.put(0, 3); // ID_SCE
            w.put(0, 4); // element_instance_tag
            ics(&mut w, false);
        } else {
            w.put(1, 3); // ID_CPE
            w.put(0, 4);
            w.put(1, 1); // common_window
            ics_info(&mut w);
            w.put(0, 2); // ms_mask_present
            ics(&mut w, true);
            ics(&mut w, true);
        }
        w.put(7, 3); // ID_END
        Some(w.finish())
    }

    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

/// MSB-first bit writer (for the few bitstreams Sluice makes itself).
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    used: u32,
}

impl BitWriter {
    /// Appends the low `n` bits of `v`.
    fn put(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            if self.used.is_multiple_of(8) {
                self.out.push(0);
            }
            let bit = ((v >> i) & 1) as u8;
            if let Some(last) = self.out.last_mut() {
                *last |= bit << (7 - self.used % 8);
            }
            self.used += 1;
        }
    }

    /// The bytes, the last one padded with zero bits.
    fn finish(self) -> Bytes {
        Bytes::from(self.out)
    }
}

/// Reads bits MSB first; `None` past the end.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let v = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Some(v as u32)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    /// Unsigned Exp-Golomb code (H.264 §9.1).
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + self.bits(zeros)? as u64).min(u32::MAX as u64) as u32)
    }

    fn se(&mut self) -> Option<i32> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

/// Removes emulation-prevention bytes (H.264 §7.4.1).
fn unescape_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Picture size from a sequence parameter set (H.264 §7.3.2.1.1), cropping applied.
pub fn sps_dimensions(sps: &[u8]) -> Result<(u32, u32), CodecError> {
    let rbsp = unescape_rbsp(sps.get(1..).ok_or(CodecError::BadSps)?);
    parse_sps(&rbsp).ok_or(CodecError::BadSps)
}

fn parse_sps(rbsp: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::new(rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            // §7.4.2.1.1.1: delta_scale is in −128..=127; anything
                            // else is malformed (and would overflow the sum below).
                            let delta_scale = r.se()?;
                            if !(-128..=127).contains(&delta_scale) {
                                return None;
                            }
                            next = (last + delta_scale + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    let poc_type = r.ue()?;
    if poc_type == 0 {
        r.ue()?;
    } else if poc_type == 1 {
        r.bit()?;
        r.se()?;
        r.se()?;
        let n = r.ue()?;
        if n > 255 {
            return None;
        }
        for _ in 0..n {
            r.se()?;
        }
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? as u64 + 1;
    let height_map_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.bit()? as u64;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        cl = r.ue()? as u64;
        cr = r.ue()? as u64;
        ct = r.ue()? as u64;
        cb = r.ue()? as u64;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_x = sub_w * (cl + cr);
    let crop_y = sub_h * (2 - frame_mbs_only) * (ct + cb);
    let w = (width_mbs * 16).checked_sub(crop_x)?;
    let h = ((2 - frame_mbs_only) * height_map_units * 16).checked_sub(crop_y)?;
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return None;
    }
    Some((w as u32, h as u32))
}

/// Real codec records for tests in this and other crates.
#[doc(hidden)]
pub mod testdata {
    /// avcC written by ffmpeg's libx264 (high profile, 1280x720, preset veryfast).
    pub const AVCC_720P: &[u8] = &[
        0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40,
        0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0,
        0xf1, 0x83, 0x19, 0x60, 0x01, 0x00, 0x04, 0x68, 0xef, 0x8f, 0xcb, 0xfd, 0xf8, 0xf8, 0x00,
    ];
}

/// CRC-32/MPEG-2 (ISO/IEC 13818-1 Annex A): polynomial 0x04C11DB7, initial value all
/// ones, no reflection. Over a whole PSI section including its CRC field it is 0.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::testdata::AVCC_720P;

    #[test]
    fn parses_avcc_and_sps() {
        let c = VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap();
        assert_eq!((c.width, c.height), (1280, 720));
        assert_eq!(c.codec_string(), "avc1.64001f");
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.pps.len(), 1);
    }

    #[test]
    fn truncated_avcc_is_error_not_panic() {
        for n in 0..AVCC_720P.len() {
            let _ = VideoConfig::from_avcc(Bytes::copy_from_slice(&AVCC_720P[..n]));
        }
        assert!(VideoConfig::from_avcc(Bytes::from_static(&[1, 2])).is_err());
    }

    /// Found by the `codec_records` fuzz target: a scaling list delta_scale of
    /// i32::MAX overflowed `last + delta_scale` (a panic with overflow checks on).
    #[test]
    fn out_of_range_delta_scale_is_error_not_panic() {
        // High profile SPS, scaling matrix present, first list's delta_scale = se(2^32 - 3).
        let sps = [
            0x67, 0x64, 0x00, 0x1f, 0xad, 0x80, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xfe, 0x80,
        ];
        assert_eq!(sps_dimensions(&sps), Err(CodecError::BadSps));
    }

    #[test]
    fn parses_asc() {
        let a = AudioConfig::from_asc(Bytes::from_static(&[0x11, 0x90])).unwrap();
        assert_eq!((a.object_type, a.sample_rate, a.channels), (2, 48000, 2));
        assert_eq!(a.codec_string(), "mp4a.40.2");
        assert_eq!(
            AudioConfig::aac_lc(48000, 2).asc,
            Bytes::from_static(&[0x11, 0x90])
        );
        assert!(AudioConfig::from_asc(Bytes::from_static(&[0x11])).is_err());
    }
}
