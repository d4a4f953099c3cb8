//! FLV audio and video tag bodies, as carried in RTMP audio/video messages
//! (Adobe Flash Video File Format Specification v10.1, annex E.4.2 and E.4.3).
//!
//! Pure parsing of untrusted bytes: every malformed input is an error, never a panic.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("empty tag body")]
    Empty,
    #[error("truncated {0} tag")]
    Truncated(&'static str),
    #[error("unsupported video codec id {0} (only H.264/AVC, codec id 7)")]
    UnsupportedVideoCodec(u8),
    #[error("unsupported audio format {0} (only AAC, sound format 10)")]
    UnsupportedAudioFormat(u8),
    #[error("enhanced RTMP video (ex-header) is not supported yet")]
    EnhancedRtmp,
}

/// A parsed FLV video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvVideo {
    /// AVCDecoderConfigurationRecord.
    SequenceHeader(Bytes),
    /// One access unit in AVCC form.
    Nalus {
        keyframe: bool,
        /// Composition time offset (pts − dts), milliseconds.
        composition_ms: i32,
        data: Bytes,
    },
    EndOfSequence,
    /// Frame types the server ignores (video info/command frames).
    Ignored,
}

/// A parsed FLV audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvAudio {
    /// AudioSpecificConfig.
    SequenceHeader(Bytes),
    Raw(Bytes),
}

pub fn parse_video(body: &Bytes) -> Result<FlvVideo, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty)?;
    if first & 0x80 != 0 && (first >> 4) & 0x7 != 5 {
        // Enhanced RTMP sets the top bit: FourCC codecs (HEVC, AV1, ...).
        return Err(FlvError::EnhancedRtmp);
    }
    let frame_type = first >> 4;
    let codec = first & 0x0f;
    if frame_type == 5 {
        return Ok(FlvVideo::Ignored);
    }
    if codec != 7 {
        return Err(FlvError::UnsupportedVideoCodec(codec));
    }
    if body.len() < 5 {
        return Err(FlvError::Truncated("video"));
    }
    let packet_type = body[1];
    // SI24, big endian.
    let raw = ((body[2] as u32) << 16) | ((body[3] as u32) << 8) | body[4] as u32;
    let composition_ms = ((raw << 8) as i32) >> 8;
    let data = body.slice(5..);
    match packet_type {
        0 => Ok(FlvVideo::SequenceHeader(data)),
        1 => Ok(FlvVideo::Nalus {
            keyframe: frame_type == 1,
            composition_ms,
            data,
        }),
        2 => Ok(FlvVideo::EndOfSequence),
        _ => Ok(FlvVideo::Ignored),
    }
}

pub fn parse_audio(body: &Bytes) -> Result<FlvAudio, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty)?;
    let format = first >> 4;
    if format != 10 {
        return Err(FlvError::UnsupportedAudioFormat(format));
    }
    let packet_type = *body.get(1).ok_or(FlvError::Truncated("audio"))?;
    let data = body.slice(2..);
    if packet_type == 0 {
        Ok(FlvAudio::SequenceHeader(data))
    } else {
        Ok(FlvAudio::Raw(data))
    }
}

/// Checks that an AVCC access unit is a well-formed sequence of length-prefixed NAL units.
pub fn avcc_is_well_formed(data: &[u8], nal_length_size: u8) -> bool {
    let n = nal_length_size as usize;
    if !(1..=4).contains(&n) {
        return false;
    }
    let mut pos = 0usize;
    while pos < data.len() {
        let Some(prefix) = data.get(pos..pos + n) else {
            return false;
        };
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        pos = match pos.checked_add(n).and_then(|p| p.checked_add(len)) {
            Some(p) if p <= data.len() && len > 0 => p,
            _ => return false,
        };
    }
    pos == data.len() && !data.is_empty()
}

/// The video tag body of an AVC sequence header (for a publish out).
pub fn video_sequence_header(avcc: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + avcc.len());
    b.extend_from_slice(&[0x17, 0, 0, 0, 0]);
    b.extend_from_slice(avcc);
    Bytes::from(b)
}

/// The video tag body of one AVCC access unit; `composition_ms` is pts − dts.
pub fn video_frame(keyframe: bool, composition_ms: i32, data: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + data.len());
    let ct = composition_ms
        .clamp(-(1 << 23), (1 << 23) - 1)
        .to_be_bytes();
    b.extend_from_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, ct[1], ct[2], ct[3]]);
    b.extend_from_slice(data);
    Bytes::from(b)
}

/// The audio tag body of an AAC sequence header (AudioSpecificConfig).
pub fn audio_sequence_header(asc: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(2 + asc.len());
    b.extend_from_slice(&[0xaf, 0]);
    b.extend_from_slice(asc);
    Bytes::from(b)
}

/// The audio tag body of one raw AAC frame.
pub fn audio_frame(data: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(2 + data.len());
    b.extend_from_slice(&[0xaf, 1]);
    b.extend_from_slice(data);
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_tags() {
        let seq = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f]);
        assert_eq!(
            parse_video(&seq).unwrap(),
            FlvVideo::SequenceHeader(Bytes::from_static(&[1, 0x64, 0, 0x1f]))
        );
        let key = Bytes::from_static(&[0x17, 1, 0, 0, 0x42, 0, 0, 0, 1, 0x65]);
        assert_eq!(
            parse_video(&key).unwrap(),
            FlvVideo::Nalus {
                keyframe: true,
                composition_ms: 0x42,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65])
            }
        );
        let neg = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x41]);
        match parse_video(&neg).unwrap() {
            FlvVideo::Nalus {
                keyframe,
                composition_ms,
                ..
            } => {
                assert!(!keyframe);
                assert_eq!(composition_ms, -2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x12, 0])),
            Err(FlvError::UnsupportedVideoCodec(2))
        );
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x17, 1])),
            Err(FlvError::Truncated("video"))
        );
        assert_eq!(parse_video(&Bytes::new()), Err(FlvError::Empty));
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x90, 1, 2, 3, 4])),
            Err(FlvError::EnhancedRtmp)
        );
    }

    #[test]
    fn audio_tags() {
        let seq = Bytes::from_static(&[0xaf, 0, 0x11, 0x90]);
        assert_eq!(
            parse_audio(&seq).unwrap(),
            FlvAudio::SequenceHeader(Bytes::from_static(&[0x11, 0x90]))
        );
        let raw = Bytes::from_static(&[0xaf, 1, 0x21]);
        assert_eq!(
            parse_audio(&raw).unwrap(),
            FlvAudio::Raw(Bytes::from_static(&[0x21]))
        );
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0x2f, 1])),
            Err(FlvError::UnsupportedAudioFormat(2))
        );
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0xaf])),
            Err(FlvError::Truncated("audio"))
        );
    }

    #[test]
    fn avcc_well_formed() {
        assert!(avcc_is_well_formed(&[0, 0, 0, 1, 0x65], 4));
        assert!(avcc_is_well_formed(
            &[0, 0, 0, 1, 0x65, 0, 0, 0, 2, 1, 2],
            4
        ));
        assert!(!avcc_is_well_formed(&[0, 0, 0, 5, 0x65], 4));
        assert!(!avcc_is_well_formed(&[0, 0, 0, 0], 4));
        assert!(!avcc_is_well_formed(&[], 4));
        assert!(!avcc_is_well_formed(&[0xff, 0xff, 0xff, 0xff, 1], 4));
    }
}
