//! MPEG-2 transport stream writer (ISO/IEC 13818-1) for HLS TS segments.
//!
//! One program: H.264 video on [`VIDEO_PID`] (carrying the PCR) and AAC/ADTS
//! audio on [`AUDIO_PID`]. Every segment starts with PAT and PMT and then a
//! video keyframe. Continuity counters carry over from segment to segment, so
//! consecutive segments concatenate into one valid stream.

use bytes::Bytes;
use sluice_core::codec::crc32_mpeg2;
use sluice_core::time::rescale;
use sluice_core::{AudioConfig, MediaTime, VideoConfig};

pub const PACKET_SIZE: usize = 188;
pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_ADTS: u8 = 0x0f;
const PTS_MASK: u64 = (1 << 33) - 1;
/// How far the PCR trails each video frame's DTS.
const PCR_LEAD: MediaTime = 100_000_000;
/// Audio frames per PES packet: few enough to keep audio interleaved with video.
const AUDIO_FRAMES_PER_PES: usize = 4;

/// One access unit to mux. Video data is AVCC, audio data is a raw AAC frame.
#[derive(Debug, Clone)]
pub struct TsFrame {
    pub pts: MediaTime,
    pub dts: MediaTime,
    pub keyframe: bool,
    pub data: Bytes,
}

/// Converts nanoseconds to a 33-bit 90 kHz timestamp (wrapping as the spec does).
fn ts90k(t: MediaTime) -> u64 {
    (rescale(t, 90_000).rem_euclid(1 << 33) as u64) & PTS_MASK
}

/// Writes TS segments for one rendition, keeping continuity counters across them.
#[derive(Debug, Default)]
pub struct TsWriter {
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
}

impl TsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Muxes one segment. `video` must be in decode order and start with a
    /// keyframe (the caller guarantees it); `audio` in decode order. Audio is
    /// left out when `audio_cfg` cannot be described by an ADTS header.
    pub fn write_segment(
        &mut self,
        video_cfg: &VideoConfig,
        video: &[TsFrame],
        audio_cfg: Option<&AudioConfig>,
        audio: &[TsFrame],
    ) -> Bytes {
        let adts = audio_cfg.and_then(AdtsHeader::new);
        let total: usize = video.iter().chain(audio).map(|f| f.data.len()).sum();
        let mut out = Vec::with_capacity(total + total / 8 + 4 * PACKET_SIZE);

        self.write_pat(&mut out);
        self.write_pmt(&mut out, true, adts.is_some());

        let mut a = 0;
        // One PES buffer for the segment: the header, then the access unit converted
        // to Annex B straight behind it (one copy of the media, not three).
        let mut pes = Vec::new();
        for (i, v) in video.iter().enumerate() {
            // Audio due before this video frame goes first, except at the segment
            // start: the segment must begin with the keyframe.
            if i > 0 {
                a = self.write_audio_until(&mut out, adts.as_ref(), audio, a, Some(v.dts));
            }
            pes.clear();
            pes_begin(&mut pes, 0xe0, ts90k(v.pts), Some(ts90k(v.dts)));
            avcc_to_annexb(video_cfg, v, &mut pes);
            pes_end(&mut pes, false);
            // The clock runs a little behind decode time, so that every byte of an access
            // unit arrives before its DTS (the T-STD model, ISO/IEC 13818-1 §2.4.2).
            let pcr = ts90k(v.dts.saturating_sub(PCR_LEAD));
            write_packets(
                &mut out,
                VIDEO_PID,
                &mut self.cc_video,
                &pes,
                Some(pcr),
                v.keyframe,
            );
        }
        self.write_audio_until(&mut out, adts.as_ref(), audio, a, None);
        Bytes::from(out)
    }

    /// Muxes one audio-only segment (an extra audio track, offered beside the audio
    /// muxed with the video): PAT, a PMT with the audio alone and its PCR on the audio
    /// PID, then the audio, each PES led by a PCR a little behind its decode time. Empty
    /// when `audio_cfg` cannot be described by an ADTS header.
    pub fn write_audio_segment(&mut self, audio_cfg: &AudioConfig, audio: &[TsFrame]) -> Bytes {
        let Some(adts) = AdtsHeader::new(audio_cfg) else {
            return Bytes::new();
        };
        let total: usize = audio.iter().map(|f| f.data.len() + 7).sum();
        let mut out = Vec::with_capacity(total + total / 8 + 4 * PACKET_SIZE);
        self.write_pat(&mut out);
        self.write_pmt(&mut out, false, true);
        let mut pes = Vec::new();
        for chunk in audio.chunks(AUDIO_FRAMES_PER_PES) {
            pes.clear();
            pes_begin(&mut pes, 0xc0, ts90k(chunk[0].pts), None);
            for f in chunk {
                adts.write(&mut pes, f.data.len());
                pes.extend_from_slice(&f.data);
            }
            pes_end(&mut pes, true);
            let pcr = ts90k(chunk[0].dts.saturating_sub(PCR_LEAD));
            write_packets(
                &mut out,
                AUDIO_PID,
                &mut self.cc_audio,
                &pes,
                Some(pcr),
                true,
            );
        }
        Bytes::from(out)
    }

    /// Writes audio frames from index `a` with dts up to `until` (all when None);
    /// returns the index of the first frame not written.
    fn write_audio_until(
        &mut self,
        out: &mut Vec<u8>,
        adts: Option<&AdtsHeader>,
        audio: &[TsFrame],
        mut a: usize,
        until: Option<MediaTime>,
    ) -> usize {
        let Some(adts) = adts else {
            return audio.len();
        };
        let mut pes = Vec::new();
        while a < audio.len() && until.is_none_or(|t| audio[a].dts <= t) {
            pes.clear();
            pes_begin(&mut pes, 0xc0, ts90k(audio[a].pts), None);
            let mut n = 0;
            while n < AUDIO_FRAMES_PER_PES
                && a < audio.len()
                && until.is_none_or(|t| audio[a].dts <= t)
            {
                adts.write(&mut pes, audio[a].data.len());
                pes.extend_from_slice(&audio[a].data);
                a += 1;
                n += 1;
            }
            pes_end(&mut pes, true);
            write_packets(out, AUDIO_PID, &mut self.cc_audio, &pes, None, false);
        }
        a
    }

    fn write_pat(&mut self, out: &mut Vec<u8>) {
        let mut s = vec![0x00, 0xb0, 0, 0x00, 0x01, 0xc1, 0x00, 0x00];
        s.extend_from_slice(&[0x00, 0x01]); // program_number 1
        s.extend_from_slice(&[0xe0 | (PMT_PID >> 8) as u8, PMT_PID as u8]);
        write_section(out, 0, &mut self.cc_pat, s);
    }

    /// The PMT: video (carrying the PCR) and audio, or audio alone (carrying it).
    fn write_pmt(&mut self, out: &mut Vec<u8>, with_video: bool, with_audio: bool) {
        let mut s = vec![0x02, 0xb0, 0, 0x00, 0x01, 0xc1, 0x00, 0x00];
        let pcr_pid = if with_video { VIDEO_PID } else { AUDIO_PID };
        s.extend_from_slice(&[0xe0 | (pcr_pid >> 8) as u8, pcr_pid as u8]);
        s.extend_from_slice(&[0xf0, 0x00]); // program_info_length 0
        let mut stream = |ty: u8, pid: u16| {
            s.extend_from_slice(&[ty, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 0x00]);
        };
        if with_video {
            stream(STREAM_TYPE_H264, VIDEO_PID);
        }
        if with_audio {
            stream(STREAM_TYPE_ADTS, AUDIO_PID);
        }
        write_section(out, PMT_PID, &mut self.cc_pmt, s);
    }
}

/// The tag of Sluice's timeline anchor: the transport_private_data of each video
/// keyframe's first packet in a [`TsStreamWriter`] stream is this tag and then the
/// keyframe's PTS on the channel timeline in 90 kHz ticks, as a big-endian i64, unwrapped.
/// A receiving Sluice node ([`TIMELINE_ANCHOR_LEN`] bytes in all) takes the sender's
/// timeline from it exactly, wherever the 33-bit timestamps have wrapped; other
/// demuxers skip private data.
pub const TIMELINE_TAG: &[u8; 4] = b"SLTL";
pub const TIMELINE_ANCHOR_LEN: usize = 12;

/// The full 90 kHz value of `t` (not wrapped).
pub fn ticks90k(t: MediaTime) -> i64 {
    rescale(t, 90_000)
}

/// Muxes a channel as one continuous transport stream (an SRT output): PAT and PMT
/// before every video keyframe, each frame its own PES, written as it comes. Every
/// keyframe carries the timeline anchor ([`TIMELINE_TAG`]).
#[derive(Debug)]
pub struct TsStreamWriter {
    w: TsWriter,
    adts: Option<AdtsHeader>,
    pes: Vec<u8>,
}

impl TsStreamWriter {
    /// For a session with this audio configuration (`None`, or one ADTS cannot describe:
    /// no audio).
    pub fn new(audio_cfg: Option<&AudioConfig>) -> Self {
        TsStreamWriter {
            w: TsWriter::new(),
            adts: audio_cfg.and_then(AdtsHeader::new),
            pes: Vec::new(),
        }
    }

    /// A new session's audio configuration (continuity counters go on).
    pub fn set_audio(&mut self, audio_cfg: Option<&AudioConfig>) {
        self.adts = audio_cfg.and_then(AdtsHeader::new);
    }

    /// Appends one video access unit (AVCC, in decode order) to `out`.
    pub fn video(&mut self, cfg: &VideoConfig, frame: &TsFrame, out: &mut Vec<u8>) {
        let mut anchor = [0u8; TIMELINE_ANCHOR_LEN];
        if frame.keyframe {
            self.w.write_pat(out);
            self.w.write_pmt(out, true, self.adts.is_some());
            anchor[..4].copy_from_slice(TIMELINE_TAG);
            anchor[4..].copy_from_slice(&ticks90k(frame.pts).to_be_bytes());
        }
        self.pes.clear();
        pes_begin(
            &mut self.pes,
            0xe0,
            ts90k(frame.pts),
            Some(ts90k(frame.dts)),
        );
        avcc_to_annexb(cfg, frame, &mut self.pes);
        pes_end(&mut self.pes, false);
        let pcr = ts90k(frame.dts.saturating_sub(PCR_LEAD));
        write_packets_with(
            out,
            VIDEO_PID,
            &mut self.w.cc_video,
            &self.pes,
            Some(pcr),
            frame.keyframe,
            frame.keyframe.then_some(&anchor[..]),
        );
    }

    /// Appends one AAC frame to `out` (nothing when the stream has no audio).
    pub fn audio(&mut self, frame: &TsFrame, out: &mut Vec<u8>) {
        let Some(adts) = &self.adts else { return };
        self.pes.clear();
        pes_begin(&mut self.pes, 0xc0, ts90k(frame.pts), None);
        adts.write(&mut self.pes, frame.data.len());
        self.pes.extend_from_slice(&frame.data);
        pes_end(&mut self.pes, true);
        write_packets(out, AUDIO_PID, &mut self.w.cc_audio, &self.pes, None, false);
    }
}

/// Completes a PSI section (length, CRC) and writes it in one packet.
fn write_section(out: &mut Vec<u8>, pid: u16, cc: &mut u8, mut s: Vec<u8>) {
    // section_length counts from after the length field up to and including the CRC.
    let len = s.len() - 3 + 4;
    s[1] = 0xb0 | ((len >> 8) & 0x0f) as u8;
    s[2] = len as u8;
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&[
        0x47,
        0x40 | (pid >> 8) as u8 & 0x1f,
        pid as u8,
        0x10 | (*cc & 0x0f),
    ]);
    *cc = (*cc + 1) & 0x0f;
    out.push(0); // pointer_field
    out.extend_from_slice(&s);
    out.resize(start + PACKET_SIZE, 0xff);
}

fn push_timestamp(out: &mut Vec<u8>, prefix: u8, ts: u64) {
    out.push((prefix << 4) | (((ts >> 30) & 0x07) as u8) << 1 | 1);
    out.extend_from_slice(&((((ts >> 15) & 0x7fff) << 1 | 1) as u16).to_be_bytes());
    out.extend_from_slice(&(((ts & 0x7fff) << 1 | 1) as u16).to_be_bytes());
}

/// Starts a PES packet in the empty `p`: its header, PES_packet_length to be filled by
/// [`pes_end`] once the payload follows. DTS is written only when it differs from PTS.
fn pes_begin(p: &mut Vec<u8>, stream_id: u8, pts: u64, dts: Option<u64>) {
    debug_assert!(p.is_empty());
    let dts = dts.filter(|d| *d != pts);
    let header_data_len = if dts.is_some() { 10 } else { 5 };
    p.extend_from_slice(&[0, 0, 1, stream_id, 0, 0]);
    p.push(0x80); // marker bits '10', no scrambling
    match dts {
        Some(dts) => {
            p.extend_from_slice(&[0xc0, header_data_len as u8]);
            push_timestamp(p, 0x3, pts);
            push_timestamp(p, 0x1, dts);
        }
        None => {
            p.extend_from_slice(&[0x80, header_data_len as u8]);
            push_timestamp(p, 0x2, pts);
        }
    }
}

/// Fills in PES_packet_length. Video may leave it at 0 (unbounded).
fn pes_end(p: &mut [u8], bounded: bool) {
    let len = p.len() - 6;
    // An audio PES never nears 64 KiB (a few AAC frames); video may say 0: unbounded.
    let field = if len <= 0xffff {
        len as u16
    } else if bounded {
        0xffff
    } else {
        0
    };
    p[4..6].copy_from_slice(&field.to_be_bytes());
}

/// Splits a PES packet into TS packets on `pid`. The first packet carries
/// the PCR and random_access_indicator when asked; the last is padded with
/// adaptation-field stuffing.
fn write_packets(
    out: &mut Vec<u8>,
    pid: u16,
    cc: &mut u8,
    pes: &[u8],
    pcr: Option<u64>,
    random_access: bool,
) {
    write_packets_with(out, pid, cc, pes, pcr, random_access, None)
}

/// [`write_packets`], with `private` as the first packet's transport_private_data.
fn write_packets_with(
    out: &mut Vec<u8>,
    pid: u16,
    cc: &mut u8,
    pes: &[u8],
    pcr: Option<u64>,
    random_access: bool,
    private: Option<&[u8]>,
) {
    let mut pos = 0;
    let mut first = true;
    while pos < pes.len() {
        let mut af: Option<Vec<u8>> = None;
        if first && (pcr.is_some() || random_access || private.is_some()) {
            let mut body = vec![
                (if random_access { 0x40 } else { 0 })
                    | (if pcr.is_some() { 0x10 } else { 0 })
                    | (if private.is_some() { 0x02 } else { 0 }),
            ];
            if let Some(pcr) = pcr {
                // PCR base (33 bits), 6 reserved bits, extension 0.
                let base = pcr & PTS_MASK;
                body.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    ((base & 1) << 7) as u8 | 0x7e,
                    0,
                ]);
            }
            if let Some(data) = private {
                body.push(data.len() as u8);
                body.extend_from_slice(data);
            }
            af = Some(body);
        }
        let af_len = af.as_ref().map_or(0, |b| 1 + b.len());
        let room = PACKET_SIZE - 4 - af_len;
        let remaining = pes.len() - pos;
        if remaining < room {
            let stuff = room - remaining;
            match af.as_mut() {
                Some(body) => body.resize(body.len() + stuff, 0xff),
                None if stuff == 1 => af = Some(Vec::new()), // just the length byte
                None => {
                    let mut body = vec![0x00];
                    body.resize(stuff - 1, 0xff);
                    af = Some(body);
                }
            }
        }
        let take = remaining.min(PACKET_SIZE - 4 - af.as_ref().map_or(0, |b| 1 + b.len()));
        let afc = if af.is_some() { 0x30 } else { 0x10 };
        let pusi = if first { 0x40 } else { 0 };
        out.extend_from_slice(&[
            0x47,
            pusi | ((pid >> 8) as u8 & 0x1f),
            pid as u8,
            afc | (*cc & 0x0f),
        ]);
        *cc = (*cc + 1) & 0x0f;
        if let Some(body) = af {
            out.push(body.len() as u8);
            out.extend_from_slice(&body);
        }
        out.extend_from_slice(&pes[pos..pos + take]);
        pos += take;
        first = false;
    }
}

/// Converts an AVCC access unit to Annex B with an access unit delimiter first,
/// and SPS/PPS from the config before each IDR (ISO/IEC 14496-10 Annex B;
/// HLS requires both for TS).
fn avcc_to_annexb(cfg: &VideoConfig, frame: &TsFrame, out: &mut Vec<u8>) {
    const START: [u8; 4] = [0, 0, 0, 1];
    out.extend_from_slice(&START);
    out.extend_from_slice(&[0x09, 0xf0]); // AUD, primary_pic_type 7 (any)
    if frame.keyframe {
        for ps in cfg.sps.iter().chain(&cfg.pps) {
            out.extend_from_slice(&START);
            out.extend_from_slice(ps);
        }
    }
    let n = cfg.nal_length_size.clamp(1, 4) as usize;
    let data = &frame.data[..];
    let mut pos = 0;
    while pos + n <= data.len() {
        let len = data[pos..pos + n]
            .iter()
            .fold(0usize, |v, b| (v << 8) | *b as usize);
        pos += n;
        let Some(nal) = data.get(pos..pos.saturating_add(len)) else {
            tracing::warn!(
                len,
                remaining = data.len() - pos,
                "truncated NAL unit in AVCC frame, rest dropped"
            );
            break;
        };
        pos += len;
        // Our own AUD is already there; parameter sets in band are kept.
        if nal.first().is_none_or(|h| h & 0x1f == 9) {
            continue;
        }
        out.extend_from_slice(&START);
        out.extend_from_slice(nal);
    }
}

/// ADTS header template (ISO/IEC 13818-7 §6.2 / 14496-3 §1.A.2.2).
#[derive(Debug, Clone, Copy)]
struct AdtsHeader {
    profile: u8,
    sampling_index: u8,
    channels: u8,
}

impl AdtsHeader {
    fn new(cfg: &AudioConfig) -> Option<Self> {
        let sampling_index = cfg.sampling_index()?;
        // ADTS has 2 bits for the profile: object types 1..=4 only.
        if !(1..=4).contains(&cfg.object_type) || cfg.channels > 7 {
            tracing::warn!(
                object_type = cfg.object_type,
                channels = cfg.channels,
                "audio not representable as ADTS: TS without audio"
            );
            return None;
        }
        Some(AdtsHeader {
            profile: cfg.object_type - 1,
            sampling_index,
            channels: cfg.channels,
        })
    }

    fn write(&self, out: &mut Vec<u8>, payload_len: usize) {
        let len = (payload_len + 7).min(0x1fff);
        out.extend_from_slice(&[
            0xff,
            0xf1, // MPEG-4, layer 0, protection absent
            (self.profile << 6) | (self.sampling_index << 2) | (self.channels >> 2),
            ((self.channels & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1f, // buffer fullness 0x7ff (VBR)
            0xfc,
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_pat() {
        // PAT section with program 1 on PID 0x1000 as written by ffmpeg.
        let s = [
            0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00,
        ];
        assert_eq!(crc32_mpeg2(&s), 0x2ab1_04b2);
    }

    #[test]
    fn packets_are_188_for_all_sizes() {
        for len in 0..600 {
            for (pcr, ra) in [(None, false), (Some(12345), true), (None, true)] {
                let mut out = vec![];
                let mut cc = 0;
                let pes = vec![0xaa; len + 1];
                write_packets(&mut out, VIDEO_PID, &mut cc, &pes, pcr, ra);
                assert_eq!(out.len() % PACKET_SIZE, 0, "len {len}");
                let payload: usize = out
                    .chunks(PACKET_SIZE)
                    .map(|p| {
                        assert_eq!(p[0], 0x47);
                        let af = if p[3] & 0x20 != 0 {
                            1 + p[4] as usize
                        } else {
                            0
                        };
                        PACKET_SIZE - 4 - af
                    })
                    .sum();
                assert_eq!(payload, len + 1);
            }
        }
    }

    #[test]
    fn timestamps_wrap_at_33_bits() {
        assert_eq!(ts90k(0), 0);
        assert_eq!(ts90k(1_000_000_000), 90_000);
        assert_eq!(ts90k(-1_000_000_000), (1 << 33) - 90_000);
    }
}
