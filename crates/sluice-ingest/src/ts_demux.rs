//! MPEG-TS demuxing (ISO/IEC 13818-1) for SRT ingest: H.264 and AAC (ADTS) out of one
//! program, into the frames and codec configurations the channel bus takes. Pure and
//! fuzzed: the bytes come from the network.
//!
//! What it does with what it is given:
//! - Packets are found by their sync byte (out of sync, one followed by another a packet
//!   later); anything between is skipped (a bounded amount, then the input is declared
//!   not to be MPEG-TS). Input may be cut anywhere.
//! - PAT and PMT sections are reassembled and CRC-checked; the first program is used. A
//!   program without H.264 video is refused (H.264 is what the engines take); audio other
//!   than ADTS AAC is reported once and left out.
//! - PES packets are reassembled up to [`MAX_PES_BYTES`]. A continuity-counter gap (a
//!   packet lost and not recovered by SRT) drops the damaged frame; video then waits for
//!   the next keyframe, so no decoder ever sees a frame whose references are gone.
//! - 33-bit 90 kHz timestamps are extended to the value nearest the previous one, so
//!   they keep increasing across the wrap (every 26.5 hours).
//! - H.264 Annex B access units become AVCC (4-byte lengths); SPS and PPS go into the
//!   configuration (a new one when they change), access unit delimiters are dropped.
//!   ADTS frames are split into raw AAC frames, each with its own timestamp.

use bytes::Bytes;
use sluice_core::codec::crc32_mpeg2;
use sluice_core::time::NANOS_PER_SEC;
use sluice_core::{AudioConfig, Frame, MediaTime, TrackKind, VideoConfig};
use sluice_package::ts::{TIMELINE_ANCHOR_LEN, TIMELINE_TAG};

/// An MPEG-TS packet.
pub const PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// A reassembled PES larger than this closes the connection (a memory cap).
pub const MAX_PES_BYTES: usize = 8 << 20;
/// Bytes skipped looking for a sync byte before the input is not MPEG-TS.
const MAX_RESYNC: usize = 64 * 1024;
/// PSI sections are at most 1024 bytes (`section_length` ≤ 1021).
const MAX_SECTION: usize = 1024;
const STREAM_H264: u8 = 0x1b;
const STREAM_AAC_ADTS: u8 = 0x0f;
/// Video stream types that are not H.264 (refused with their type in the message).
const OTHER_VIDEO: [u8; 8] = [0x01, 0x02, 0x10, 0x24, 0x33, 0x42, 0xd1, 0xea];
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// What the demuxer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsEvent {
    /// The H.264 configuration (first seen, or changed).
    VideoConfig(VideoConfig),
    /// The AAC configuration (first seen, or changed).
    AudioConfig(AudioConfig),
    /// A video access unit (AVCC) or a raw AAC frame; times in nanoseconds on the
    /// source's clock.
    Frame(Frame),
    /// An audio stream the engines cannot take was left out (reported once).
    UnsupportedAudio(u8),
    /// The stream carries a Sluice node's timeline anchor (reported once, before the
    /// first frame it placed): frame times from here on are that node's channel
    /// timeline, exactly, not the 33-bit values extended from wherever they started.
    Timeline,
}

/// Why the input cannot be taken; the connection is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("not MPEG-TS: no sync byte in {0} bytes")]
    NoSync(usize),
    #[error("unsupported video codec (stream type 0x{0:02x}); H.264 is required")]
    UnsupportedVideo(u8),
    #[error("the program has no video")]
    NoVideo,
    #[error("a PES packet is larger than {MAX_PES_BYTES} bytes")]
    PesTooLarge,
}

#[derive(Debug, Default)]
struct Section {
    buf: Vec<u8>,
    active: bool,
}

/// One elementary stream being reassembled.
#[derive(Debug)]
struct Es {
    pid: u16,
    buf: Vec<u8>,
    pts: Option<u64>,
    dts: Option<u64>,
    /// Payload bytes the PES header announced (0 in the header: until the next start).
    expected: Option<usize>,
    cc: Option<u8>,
    started: bool,
    broken: bool,
}

impl Es {
    fn new(pid: u16) -> Self {
        Es {
            pid,
            buf: Vec::new(),
            pts: None,
            dts: None,
            expected: None,
            cc: None,
            started: false,
            broken: false,
        }
    }
}

/// The demuxer of one connection.
#[derive(Debug, Default)]
pub struct TsDemuxer {
    /// The start of a packet cut off at the end of the last input.
    carry: Vec<u8>,
    /// Bytes skipped since the last packet.
    skipped: usize,
    /// The last packet was followed by a sync byte where the next one starts.
    synced: bool,
    pmt_pid: Option<u16>,
    pat: Section,
    pmt: Section,
    video: Option<Es>,
    audio: Option<Es>,
    unsupported_audio_reported: bool,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    video_config: Option<VideoConfig>,
    /// (object type, sampling index, channel configuration) of the current audio config.
    adts: Option<(u8, u8, u8)>,
    audio_config: Option<AudioConfig>,
    /// The last extended timestamp, 90 kHz.
    clock: Option<i64>,
    /// Video waits for a keyframe (start, or after a damaged frame).
    after_damage: bool,
    /// A timeline anchor was seen.
    anchored: bool,
    /// A program with audio and no video is taken (an audio source's publisher).
    audio_only: bool,
}

impl TsDemuxer {
    pub fn new() -> Self {
        TsDemuxer::default()
    }

    /// A demuxer that also takes programs with AAC and no video (for a channel's audio
    /// sources); otherwise such a program is [`TsError::NoVideo`].
    pub fn audio_only(allowed: bool) -> Self {
        TsDemuxer {
            audio_only: allowed,
            ..TsDemuxer::default()
        }
    }

    /// Takes the next bytes of the stream (cut anywhere); what they complete is
    /// appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<TsEvent>) -> Result<(), TsError> {
        if self.carry.is_empty() {
            // The usual case (whole packets, in sync): no copy.
            let used = self.consume(data, out)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(data);
            let used = self.consume(&buf, out)?;
            buf.drain(..used);
            self.carry = buf;
        }
        Ok(())
    }

    /// Takes the whole packets at the start of `data`; returns how many bytes it used
    /// (the rest, under two packets, waits for more). Out of sync, a sync byte counts
    /// only when another one follows a packet later.
    fn consume(&mut self, data: &[u8], out: &mut Vec<TsEvent>) -> Result<usize, TsError> {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            if rest.is_empty() {
                return Ok(pos);
            }
            if rest[0] != SYNC {
                let skip = rest.iter().position(|b| *b == SYNC).unwrap_or(rest.len());
                self.lose_sync(skip)?;
                pos += skip;
                continue;
            }
            if rest.len() < PACKET || (!self.synced && rest.len() == PACKET) {
                return Ok(pos);
            }
            if !self.synced && rest[PACKET] != SYNC {
                self.lose_sync(1)?;
                pos += 1;
                continue;
            }
            self.synced = true;
            self.skipped = 0;
            self.packet(&rest[..PACKET], out)?;
            pos += PACKET;
        }
    }

    fn lose_sync(&mut self, skipped: usize) -> Result<(), TsError> {
        self.synced = false;
        self.skipped += skipped;
        if self.skipped > MAX_RESYNC {
            return Err(TsError::NoSync(self.skipped));
        }
        Ok(())
    }

    /// The input ended: frames still being assembled are emitted.
    pub fn finish(&mut self, out: &mut Vec<TsEvent>) {
        self.finish_pes(TrackKind::Video, out);
        self.finish_pes(TrackKind::Audio, out);
    }

    fn packet(&mut self, p: &[u8], out: &mut Vec<TsEvent>) -> Result<(), TsError> {
        if p[1] & 0x80 != 0 {
            return Ok(()); // transport error indicator: the sender knows it is damaged
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        if afc & 1 == 0 {
            return Ok(()); // no payload (or reserved)
        }
        let mut pos = 4;
        if afc & 2 != 0 {
            pos = 5 + usize::from(p[4]);
            if pos > PACKET {
                return Ok(());
            }
            if pusi && self.video.as_ref().is_some_and(|e| e.pid == pid) {
                self.anchor(&p[5..pos], out);
            }
        }
        let payload = &p[pos..];
        if pid == 0 {
            self.section(false, pusi, payload, out)
        } else if Some(pid) == self.pmt_pid {
            self.section(true, pusi, payload, out)
        } else if self.video.as_ref().is_some_and(|e| e.pid == pid) {
            self.es(TrackKind::Video, pusi, cc, payload, out)
        } else if self.audio.as_ref().is_some_and(|e| e.pid == pid) {
            self.es(TrackKind::Audio, pusi, cc, payload, out)
        } else {
            Ok(())
        }
    }

    fn section(
        &mut self,
        pmt: bool,
        pusi: bool,
        payload: &[u8],
        out: &mut Vec<TsEvent>,
    ) -> Result<(), TsError> {
        let sec = if pmt { &mut self.pmt } else { &mut self.pat };
        if pusi {
            let Some(&pointer) = payload.first() else {
                return Ok(());
            };
            let start = 1 + usize::from(pointer);
            if start > payload.len() {
                sec.active = false;
                return Ok(());
            }
            sec.buf.clear();
            sec.buf.extend_from_slice(&payload[start..]);
            sec.active = true;
        } else if sec.active {
            sec.buf.extend_from_slice(payload);
        } else {
            return Ok(());
        }
        if sec.buf.len() < 3 {
            return Ok(());
        }
        let len = (usize::from(sec.buf[1] & 0x0f) << 8 | usize::from(sec.buf[2])) + 3;
        if len > MAX_SECTION || sec.buf.len() > MAX_SECTION + PACKET {
            sec.active = false;
            return Ok(());
        }
        if sec.buf.len() < len {
            return Ok(());
        }
        sec.active = false;
        let section = std::mem::take(&mut sec.buf);
        let section = &section[..len];
        if len < 12 || crc32_mpeg2(section) != 0 {
            return Ok(());
        }
        if pmt {
            self.parse_pmt(section, out)
        } else {
            self.parse_pat(section);
            Ok(())
        }
    }

    fn parse_pat(&mut self, s: &[u8]) {
        if s[0] != 0x00 {
            return;
        }
        let programs = &s[8..s.len() - 4];
        for entry in programs.chunks_exact(4) {
            let number = u16::from_be_bytes([entry[0], entry[1]]);
            let pid = u16::from(entry[2] & 0x1f) << 8 | u16::from(entry[3]);
            if number != 0 {
                if self.pmt_pid != Some(pid) {
                    self.pmt_pid = Some(pid);
                    self.pmt = Section::default();
                }
                return;
            }
        }
    }

    fn parse_pmt(&mut self, s: &[u8], out: &mut Vec<TsEvent>) -> Result<(), TsError> {
        if s[0] != 0x02 {
            return Ok(());
        }
        let end = s.len() - 4;
        let info_len = usize::from(s[10] & 0x0f) << 8 | usize::from(s[11]);
        let mut pos = 12 + info_len;
        let (mut video, mut audio, mut other_video, mut other_audio) = (None, None, None, None);
        while pos + 5 <= end {
            let kind = s[pos];
            let pid = u16::from(s[pos + 1] & 0x1f) << 8 | u16::from(s[pos + 2]);
            let es_info = usize::from(s[pos + 3] & 0x0f) << 8 | usize::from(s[pos + 4]);
            pos += 5 + es_info;
            match kind {
                STREAM_H264 => {
                    video.get_or_insert(pid);
                }
                STREAM_AAC_ADTS => {
                    audio.get_or_insert(pid);
                }
                k if OTHER_VIDEO.contains(&k) => {
                    other_video.get_or_insert(k);
                }
                // MPEG audio, LATM AAC, AC-3, E-AC-3, DTS, and private data that may be
                // any of those.
                0x03 | 0x04 | 0x11 | 0x81 | 0x87 | 0x82 | 0x06 => {
                    other_audio.get_or_insert(kind);
                }
                _ => {}
            }
        }
        match video {
            None if self.audio_only && audio.is_some() && other_video.is_none() => {
                self.video = None;
            }
            None => return Err(other_video.map_or(TsError::NoVideo, TsError::UnsupportedVideo)),
            Some(video) => {
                if self.video.as_ref().is_none_or(|e| e.pid != video) {
                    self.video = Some(Es::new(video));
                    self.after_damage = true;
                }
            }
        }
        match audio {
            Some(pid) if self.audio.as_ref().is_none_or(|e| e.pid != pid) => {
                self.audio = Some(Es::new(pid));
            }
            Some(_) => {}
            None => {
                self.audio = None;
                if let Some(k) = other_audio
                    && !std::mem::replace(&mut self.unsupported_audio_reported, true)
                {
                    out.push(TsEvent::UnsupportedAudio(k));
                }
            }
        }
        Ok(())
    }

    fn es(
        &mut self,
        track: TrackKind,
        pusi: bool,
        cc: u8,
        payload: &[u8],
        out: &mut Vec<TsEvent>,
    ) -> Result<(), TsError> {
        let Some(es) = self.stream(track) else {
            return Ok(());
        };
        if let Some(last) = es.cc {
            if cc == last && !pusi {
                return Ok(()); // a duplicate packet (allowed once by the standard)
            }
            if cc != (last + 1) & 0x0f {
                es.broken = true;
            }
        }
        es.cc = Some(cc);
        if pusi {
            self.finish_pes(track, out);
            let Some(es) = self.stream(track) else {
                return Ok(());
            };
            es.buf.clear();
            es.started = true;
            es.broken = false;
            match pes_header(payload) {
                Some(h) => {
                    es.pts = h.pts;
                    es.dts = h.dts;
                    es.expected = h.payload_len;
                    es.buf.extend_from_slice(&payload[h.header_len..]);
                }
                None => es.broken = true,
            }
        } else if es.started {
            es.buf.extend_from_slice(payload);
        } else {
            return Ok(());
        }
        let Some(es) = self.stream(track) else {
            return Ok(());
        };
        if es.buf.len() > MAX_PES_BYTES {
            return Err(TsError::PesTooLarge);
        }
        if let Some(expected) = es.expected
            && es.buf.len() >= expected
        {
            es.buf.truncate(expected);
            self.finish_pes(track, out);
        }
        Ok(())
    }

    fn stream(&mut self, track: TrackKind) -> Option<&mut Es> {
        match track {
            TrackKind::Video => self.video.as_mut(),
            TrackKind::Audio => self.audio.as_mut(),
        }
    }

    /// Emits the PES being assembled on `track`, unless it is damaged or untimed.
    fn finish_pes(&mut self, track: TrackKind, out: &mut Vec<TsEvent>) {
        let Some(es) = self.stream(track) else { return };
        if !std::mem::take(&mut es.started) {
            return;
        }
        let mut data = std::mem::take(&mut es.buf);
        let (pts, dts, broken) = (es.pts, es.dts, es.broken);
        if broken {
            if track == TrackKind::Video {
                self.after_damage = true;
            }
        } else if let Some(pts) = pts {
            let pts = self.extend(pts);
            let dts = dts.map_or(pts, |d| self.extend(d));
            match track {
                TrackKind::Video => self.video_access_unit(&data, pts, dts, out),
                TrackKind::Audio => self.adts_frames(&data, pts, out),
            }
        }
        // The buffer goes back for the next PES packet: no regrowing it every frame.
        data.clear();
        if let Some(es) = self.stream(track) {
            es.buf = data;
        }
    }

    /// Reads Sluice's timeline anchor from a video PES start's adaptation field (the
    /// bytes after its length), if it has one: the clock is set to it, so the PTS that
    /// follows extends to exactly the sender's value (see sluice-package's
    /// `ts::TIMELINE_TAG`).
    fn anchor(&mut self, af: &[u8], out: &mut Vec<TsEvent>) {
        let Some((&flags, mut rest)) = af.split_first() else {
            return;
        };
        if flags & 0x02 == 0 {
            return;
        }
        // PCR, OPCR (6 bytes each) and splice_countdown (1) come first.
        let skip = usize::from(flags & 0x10 != 0) * 6
            + usize::from(flags & 0x08 != 0) * 6
            + usize::from(flags & 0x04 != 0);
        rest = rest.get(skip..).unwrap_or_default();
        let Some((&len, rest)) = rest.split_first() else {
            return;
        };
        let Some(data) = rest.get(..usize::from(len)) else {
            return;
        };
        if data.len() != TIMELINE_ANCHOR_LEN || &data[..TIMELINE_TAG.len()] != TIMELINE_TAG {
            return;
        }
        let mut ticks = [0u8; 8];
        ticks.copy_from_slice(&data[TIMELINE_TAG.len()..]);
        let ticks = i64::from_be_bytes(ticks);
        // A timeline before 0 or past about 190 years (in nanoseconds, nearing the end
        // of i64) is no Sluice node's.
        if !(0..1 << 49).contains(&ticks) {
            return;
        }
        self.clock = Some(ticks);
        if !self.anchored {
            self.anchored = true;
            out.push(TsEvent::Timeline);
        }
    }

    /// A 33-bit timestamp extended to the value nearest the previous one, in ns.
    fn extend(&mut self, raw: u64) -> MediaTime {
        const WRAP: i64 = 1 << 33;
        let raw = (raw & (WRAP as u64 - 1)) as i64;
        let v = match self.clock {
            None => raw,
            Some(last) => {
                let k = (last - raw + WRAP / 2).div_euclid(WRAP);
                raw + k * WRAP
            }
        };
        self.clock = Some(v);
        // i128: an anchored clock is a node's whole timeline (nanoseconds since 1970).
        (i128::from(v) * 100_000 / 9).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    fn video_access_unit(
        &mut self,
        data: &[u8],
        pts: MediaTime,
        dts: MediaTime,
        out: &mut Vec<TsEvent>,
    ) {
        let mut avcc = Vec::with_capacity(data.len() + 16);
        let (mut keyframe, mut sets_changed) = (false, false);
        for nal in annexb_nals(data) {
            match nal[0] & 0x1f {
                9 => continue, // access unit delimiter
                7 => {
                    if self.sps.as_deref() != Some(nal) {
                        self.sps = Some(Bytes::copy_from_slice(nal));
                        sets_changed = true;
                    }
                    continue;
                }
                8 => {
                    if self.pps.as_deref() != Some(nal) {
                        self.pps = Some(Bytes::copy_from_slice(nal));
                        sets_changed = true;
                    }
                    continue;
                }
                5 => keyframe = true,
                _ => {}
            }
            let Ok(len) = u32::try_from(nal.len()) else {
                return;
            };
            avcc.extend_from_slice(&len.to_be_bytes());
            avcc.extend_from_slice(nal);
        }
        if sets_changed
            && let (Some(sps), Some(pps)) = (&self.sps, &self.pps)
            && let Some(record) = avcc_record(sps, pps)
            && let Ok(cfg) = VideoConfig::from_avcc(record)
            && self.video_config.as_ref() != Some(&cfg)
        {
            self.video_config = Some(cfg.clone());
            out.push(TsEvent::VideoConfig(cfg));
        }
        if avcc.is_empty() || self.video_config.is_none() {
            return;
        }
        if self.after_damage {
            if !keyframe {
                return;
            }
            self.after_damage = false;
        }
        out.push(TsEvent::Frame(Frame {
            track: TrackKind::Video,
            pts,
            dts,
            keyframe,
            data: Bytes::from(avcc),
        }));
    }

    fn adts_frames(&mut self, data: &[u8], pts: MediaTime, out: &mut Vec<TsEvent>) {
        let mut pos = 0;
        let mut index: i64 = 0;
        while data.len() - pos >= 7 {
            let h = &data[pos..];
            if h[0] != 0xff || h[1] & 0xf0 != 0xf0 {
                return; // lost sync: the rest of this PES is dropped
            }
            let header = if h[1] & 1 == 1 { 7 } else { 9 };
            let object_type = (h[2] >> 6) + 1;
            let rate_index = (h[2] >> 2) & 0x0f;
            let channels = ((h[2] & 1) << 2) | (h[3] >> 6);
            let frame_len =
                usize::from(h[3] & 3) << 11 | usize::from(h[4]) << 3 | usize::from(h[5] >> 5);
            let blocks = (h[6] & 3) + 1;
            if frame_len < header || frame_len > h.len() {
                return;
            }
            pos += frame_len;
            let Some(&rate) = AAC_RATES.get(usize::from(rate_index)) else {
                return;
            };
            if blocks != 1 || frame_len == header {
                continue; // several raw blocks in one ADTS frame: not carried in fMP4 as one sample
            }
            let fields = (object_type, rate_index, channels);
            if self.adts != Some(fields) {
                let asc = u16::from(object_type) << 11
                    | u16::from(rate_index) << 7
                    | u16::from(channels) << 3;
                let Ok(cfg) = AudioConfig::from_asc(Bytes::copy_from_slice(&asc.to_be_bytes()))
                else {
                    return;
                };
                self.adts = Some(fields);
                self.audio_config = Some(cfg.clone());
                out.push(TsEvent::AudioConfig(cfg));
            }
            let t = pts.saturating_add(index * 1024 * NANOS_PER_SEC / i64::from(rate));
            index += 1;
            out.push(TsEvent::Frame(Frame {
                track: TrackKind::Audio,
                pts: t,
                dts: t,
                keyframe: true,
                data: Bytes::copy_from_slice(&h[header..frame_len]),
            }));
        }
    }
}

struct PesHeader {
    header_len: usize,
    pts: Option<u64>,
    dts: Option<u64>,
    payload_len: Option<usize>,
}

/// The PES header at the start of `p`, if it is one this demuxer reads.
fn pes_header(p: &[u8]) -> Option<PesHeader> {
    if p.len() < 9 || p[..3] != [0, 0, 1] || p[6] & 0xc0 != 0x80 {
        return None;
    }
    let packet_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let header_len = 9 + usize::from(p[8]);
    if header_len > p.len() {
        return None;
    }
    let flags = p[7] >> 6;
    let ts = |at: usize| -> Option<u64> {
        let b = p.get(at..at + 5)?;
        Some(
            u64::from(b[0] >> 1 & 0x07) << 30
                | u64::from(b[1]) << 22
                | u64::from(b[2] >> 1) << 15
                | u64::from(b[3]) << 7
                | u64::from(b[4] >> 1),
        )
    };
    let (pts, dts) = match flags {
        2 => (ts(9), None),
        3 => (ts(9), ts(14)),
        _ => (None, None),
    };
    let payload_len = match packet_len {
        0 => None,
        n => Some(n.checked_sub(3 + usize::from(p[8]))?),
    };
    Some(PesHeader {
        header_len,
        pts,
        dts,
        payload_len,
    })
}

/// NAL units of an Annex B byte stream (start codes and trailing zero bytes removed).
fn annexb_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Start codes by a vectorised search for their 0x01 (memchr), not byte by byte:
    // every byte of an SRT publisher's video passes through here.
    let mut starts = Vec::new();
    let mut from = 2;
    while let Some(k) = data.get(from..).and_then(|rest| memchr::memchr(1, rest)) {
        let i = from + k;
        if data[i - 2] == 0 && data[i - 1] == 0 {
            starts.push(i + 1);
            from = i + 3;
        } else {
            from = i + 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| {
        let mut nal = data.get(s..e)?;
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        (!nal.is_empty()).then_some(nal)
    })
}

/// An AVCDecoderConfigurationRecord from one SPS and one PPS.
fn avcc_record(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    if sps.len() < 4 {
        return None;
    }
    let sps_len = u16::try_from(sps.len()).ok()?;
    let pps_len = u16::try_from(pps.len()).ok()?;
    let mut r = Vec::with_capacity(11 + sps.len() + pps.len());
    r.extend_from_slice(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1]);
    r.extend_from_slice(&sps_len.to_be_bytes());
    r.extend_from_slice(sps);
    r.push(1);
    r.extend_from_slice(&pps_len.to_be_bytes());
    r.extend_from_slice(pps);
    Some(Bytes::from(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-code search agrees with a byte-by-byte reference on inputs dense in
    /// zeros and ones (start codes, three- and four-byte, back to back, at the edges).
    #[test]
    fn start_codes_are_found_as_byte_by_byte() {
        fn reference(data: &[u8]) -> Vec<&[u8]> {
            let mut starts = Vec::new();
            let mut i = 0;
            while i + 3 <= data.len() {
                if data[i..i + 3] == [0, 0, 1] {
                    starts.push(i + 3);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            let ends: Vec<usize> = starts
                .iter()
                .skip(1)
                .map(|s| s - 3)
                .chain([data.len()])
                .collect();
            starts
                .into_iter()
                .zip(ends)
                .filter_map(|(s, e)| {
                    let mut nal = data.get(s..e)?;
                    while let [rest @ .., 0] = nal {
                        nal = rest;
                    }
                    (!nal.is_empty()).then_some(nal)
                })
                .collect()
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    [0, 0, 0, 1, 0x65, 0x41][(x % 6) as usize]
                })
                .collect();
            assert_eq!(
                annexb_nals(&data).collect::<Vec<_>>(),
                reference(&data),
                "{data:?}"
            );
        }
        let nals: Vec<_> = annexb_nals(&[0, 0, 0, 1, 9, 0xf0, 0, 0, 1, 0x67, 1, 0, 0, 1]).collect();
        assert_eq!(nals, [&[9, 0xf0][..], &[0x67, 1][..]]);
    }
}
