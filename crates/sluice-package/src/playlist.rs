//! One media playlist: its segments (and, with Low-Latency HLS, their parts), how its
//! window slides, and how it is written (RFC 8216bis §4.4.3–4.4.5, Apple's LL-HLS rules).
//!
//! The text is written here rather than with `m3u8-rs`: its writer has no partial
//! segments, preload hints, rendition reports, server control or skip tags, and leaves
//! out playlist-level tags it does not know. Tests read every playlist back with
//! `m3u8-rs` (and the end-to-end tests with an independent parser).

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;
use sluice_core::MediaTime;
use sluice_core::time::NANOS_PER_SEC;

use crate::OutputKind;

/// Segments kept beyond the playlist window, for players reading an older playlist.
const EXTRA_SEGMENTS: usize = 2;
/// Segments always listed, whatever the window (RFC 8216bis §6.2.2 asks for three target durations).
pub(crate) const MIN_LISTED: usize = 3;
/// Parts are listed for the segments within this many target durations of the end
/// (RFC 8216bis §6.2.2: no more than three), and their bytes kept one segment longer.
const PARTS_LISTED_TARGETS: i64 = 3;

/// One part (CMAF chunk) of a segment.
#[derive(Debug, Clone)]
pub(crate) struct StoredPart {
    pub duration: MediaTime,
    /// Starts with a sync sample (every audio part does).
    pub independent: bool,
    pub data: Bytes,
}

/// One stored media segment.
#[derive(Debug, Clone)]
pub(crate) struct StoredSegment {
    pub msn: u64,
    pub duration: MediaTime,
    pub discontinuity: bool,
    /// CMAF only: the init segment version this segment needs.
    pub init_version: Option<u64>,
    /// `None` marks a gap (`EXT-X-GAP`): no media for this interval.
    pub data: Option<Bytes>,
    /// Wall-clock time of the segment's start, Unix milliseconds (`EXT-X-PROGRAM-DATE-TIME`).
    pub program_date_time: Option<i64>,
    /// Its parts (LL-HLS), while they are listed or recently were.
    pub parts: Vec<StoredPart>,
}

/// A CMAF segment made of its parts is their concatenation: its parts become views of the
/// segment's bytes, so that the same media is not held twice while the parts stay listed
/// (about three target durations of every rendition). Bytes served are the same; a part
/// already being sent keeps its own buffer until it is sent.
fn share_part_bytes(seg: &mut StoredSegment) {
    let Some(data) = &seg.data else { return };
    let total: usize = seg.parts.iter().map(|p| p.data.len()).sum();
    if total != data.len() {
        return;
    }
    let mut at = 0;
    for p in &mut seg.parts {
        let len = p.data.len();
        debug_assert_eq!(p.data, data.slice(at..at + len));
        p.data = data.slice(at..at + len);
        at += len;
    }
}

/// The segment being produced, as the parts published so far.
#[derive(Debug, Clone)]
pub(crate) struct OpenSegment {
    pub msn: u64,
    pub discontinuity: bool,
    pub init_version: Option<u64>,
    pub program_date_time: Option<i64>,
    pub parts: Vec<StoredPart>,
}

/// What a blocking playlist request waits for (`_HLS_msn`, `_HLS_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    pub msn: u64,
    pub part: Option<u32>,
}

/// How a blocking request stands against a playlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The playlist has it: answer now.
    Ready,
    /// Not yet: wait for a change.
    Waiting,
    /// Further ahead than the server will wait for (RFC 8216bis §6.2.5.2: more than two
    /// segments past the last one): `400`.
    TooFar,
}

/// The newest segment or part a playlist lists (for rendition reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Last {
    pub msn: u64,
    pub part: Option<u32>,
}

/// One media playlist's state.
#[derive(Debug)]
pub(crate) struct Track {
    pub output: OutputKind,
    pub segments: VecDeque<StoredSegment>,
    /// Index into `segments` of the first listed segment.
    pub listed_from: usize,
    pub discontinuity_sequence: u64,
    pub target_duration: u64,
    /// LL-HLS part target; `None`: no parts.
    pub part_target: Option<MediaTime>,
    pub open: Option<OpenSegment>,
    pub ended: bool,
    /// Bumped on every change, so a playlist rendered outside the store's lock is only
    /// installed if nothing changed meanwhile.
    pub version: u64,
    pub overlong_reported: bool,
    pub rendered: Option<Rendered>,
    /// The `version` `rendered` shows.
    pub rendered_version: u64,
}

/// A rendered playlist, and its delta update (`_HLS_skip=YES`) when it can skip.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub full: Bytes,
    pub skip: Option<Bytes>,
}

impl Track {
    pub fn new(
        output: OutputKind,
        segment_duration: MediaTime,
        part_target: Option<MediaTime>,
    ) -> Self {
        Track {
            output,
            segments: VecDeque::new(),
            listed_from: 0,
            discontinuity_sequence: 0,
            target_duration: target_duration_secs(segment_duration),
            // Parts are CMAF chunks: an MPEG-TS playlist has none.
            part_target: part_target.filter(|p| *p > 0 && output == OutputKind::Cmaf),
            open: None,
            ended: false,
            version: 0,
            overlong_reported: false,
            rendered: None,
            rendered_version: 0,
        }
    }

    pub fn listed(&self) -> impl DoubleEndedIterator<Item = &StoredSegment> {
        self.segments.iter().skip(self.listed_from)
    }

    /// Adds a part of the segment `open` describes (opening it if it is new).
    pub fn push_part(&mut self, open: &OpenSegment, part: StoredPart) {
        match &mut self.open {
            Some(o) if o.msn == open.msn => o.parts.push(part),
            _ => {
                let mut o = open.clone();
                o.parts = vec![part];
                self.open = Some(o);
            }
        }
        self.version += 1;
    }

    /// Adds a complete segment; its parts (if any were published) move into it.
    pub fn push(&mut self, mut seg: StoredSegment, window: MediaTime) {
        // EXT-X-TARGETDURATION comes from the configuration and never changes while a
        // playlist lives (RFC 8216bis §6.2.1 forbids it). A longer segment (a passthrough
        // GOP longer than segment_seconds) is reported, not let in to the header.
        if round_secs(seg.duration) > self.target_duration && !self.overlong_reported {
            self.overlong_reported = true;
            tracing::warn!(
                msn = seg.msn,
                duration_ms = seg.duration / 1_000_000,
                target_s = self.target_duration,
                "segment longer than the target duration: make segment_seconds a multiple of the input's keyframe interval"
            );
        }
        match self.open.take() {
            Some(o) if o.msn == seg.msn && seg.parts.is_empty() => {
                seg.parts = o.parts;
                share_part_bytes(&mut seg);
            }
            // Parts of a later segment stay open; of an earlier one, they are dropped.
            Some(o) if o.msn > seg.msn => self.open = Some(o),
            _ => {}
        }
        self.segments.push_back(seg);

        // Newest segments whose durations sum to at most the window, at least MIN_LISTED.
        let mut sum: MediaTime = 0;
        let mut count = 0;
        for s in self.segments.iter().rev() {
            if count >= MIN_LISTED && sum.saturating_add(s.duration) > window {
                break;
            }
            sum = sum.saturating_add(s.duration);
            count += 1;
        }
        let new_from = self.segments.len() - count;
        // The start only moves forward: discontinuities that slide out are counted.
        for s in self
            .segments
            .range(self.listed_from.min(new_from)..new_from)
        {
            if s.discontinuity {
                self.discontinuity_sequence += 1;
            }
        }
        self.listed_from = self.listed_from.max(new_from);
        while self.listed_from > EXTRA_SEGMENTS {
            self.segments.pop_front();
            self.listed_from -= 1;
        }
        // Parts' bytes are kept for the segments whose parts are listed, and one more.
        let with_parts = self.segments_with_parts();
        let keep = with_parts + 1;
        let n = self.segments.len();
        for s in self.segments.iter_mut().take(n.saturating_sub(keep)) {
            if !s.parts.is_empty() {
                s.parts = Vec::new();
            }
        }
        self.version += 1;
    }

    pub fn end(&mut self) {
        self.ended = true;
        // Parts of a segment that never closed are not listed in a finished playlist.
        self.open = None;
        self.version += 1;
    }

    /// How many of the newest segments have their parts listed: those that start within
    /// three target durations of the playlist's end.
    fn segments_with_parts(&self) -> usize {
        let Some(_) = self.part_target else { return 0 };
        let limit = PARTS_LISTED_TARGETS * self.target_duration as i64 * NANOS_PER_SEC;
        let mut from_end: MediaTime = self
            .open
            .as_ref()
            .map_or(0, |o| o.parts.iter().map(|p| p.duration).sum());
        let mut n = 0;
        for s in self.listed().rev() {
            from_end = from_end.saturating_add(s.duration);
            if from_end > limit {
                break;
            }
            n += 1;
        }
        n
    }

    /// The part `index` of segment `msn`, while its bytes are kept.
    pub fn part(&self, msn: u64, index: u32) -> Option<Bytes> {
        let parts = match &self.open {
            Some(o) if o.msn == msn => &o.parts,
            _ => &self.segments.iter().rev().find(|s| s.msn == msn)?.parts,
        };
        parts.get(index as usize).map(|p| p.data.clone())
    }

    /// The newest segment or part listed.
    pub fn last(&self) -> Option<Last> {
        if let Some(o) = self.open.as_ref().filter(|o| !o.parts.is_empty()) {
            return Some(Last {
                msn: o.msn,
                part: Some(o.parts.len() as u32 - 1),
            });
        }
        let s = self.segments.back()?;
        Some(Last {
            msn: s.msn,
            part: (self.part_target.is_some() && !s.parts.is_empty())
                .then(|| s.parts.len() as u32 - 1),
        })
    }

    /// Whether the playlist answers a blocking request for `want`.
    pub fn readiness(&self, want: Awaited) -> Readiness {
        let complete = self.segments.back().map(|s| s.msn);
        let open = self.open.as_ref().filter(|o| !o.parts.is_empty());
        let newest = open.map(|o| o.msn).or(complete);
        if self.ended {
            return Readiness::Ready;
        }
        if let Some(n) = newest
            && want.msn > n.saturating_add(2)
        {
            return Readiness::TooFar;
        }
        if complete.is_some_and(|c| c >= want.msn) {
            return Readiness::Ready;
        }
        match (want.part, open) {
            (Some(p), Some(o))
                if o.msn > want.msn || (o.msn == want.msn && o.parts.len() as u32 > p) =>
            {
                Readiness::Ready
            }
            _ => Readiness::Waiting,
        }
    }

    /// The playlist's metadata, copied under the store's lock; written out after it.
    pub fn snapshot(&self, reports: Vec<(String, Last)>) -> Snapshot {
        let with_parts = self.segments_with_parts();
        let listed: Vec<&StoredSegment> = self.listed().collect();
        let first_with_parts = listed.len().saturating_sub(with_parts);
        let segments = listed
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentLine {
                msn: s.msn,
                duration: s.duration,
                discontinuity: s.discontinuity,
                init_version: s.init_version,
                gap: s.data.is_none(),
                program_date_time: s.program_date_time,
                parts: if i >= first_with_parts {
                    s.parts
                        .iter()
                        .map(|p| (p.duration, p.independent))
                        .collect()
                } else {
                    vec![]
                },
            })
            .collect();
        let open = self.open.as_ref().map(|o| SegmentLine {
            msn: o.msn,
            duration: 0,
            discontinuity: o.discontinuity,
            init_version: o.init_version,
            gap: false,
            program_date_time: o.program_date_time,
            parts: o
                .parts
                .iter()
                .map(|p| (p.duration, p.independent))
                .collect(),
        });
        Snapshot {
            output: self.output,
            target_duration: self.target_duration,
            part_target: self.part_target,
            discontinuity_sequence: self.discontinuity_sequence,
            ended: self.ended,
            segments,
            open,
            next_msn: self.segments.back().map_or(0, |s| s.msn + 1),
            reports,
        }
    }

    /// (peak, mean) bits per second of the listed segments, if any has media.
    pub fn bitrate(&self) -> Option<(u64, u64)> {
        let (mut peak, mut bits, mut time, mut n) = (0u64, 0u128, 0i128, 0);
        for s in self.listed() {
            let (Some(data), true) = (&s.data, s.duration > 0) else {
                continue;
            };
            let b = data.len() as u128 * 8;
            peak = peak.max((b * NANOS_PER_SEC as u128 / s.duration as u128) as u64);
            bits += b;
            time += s.duration as i128;
            n += 1;
        }
        (n > 0).then(|| {
            (
                peak,
                (bits * NANOS_PER_SEC as u128 / time.max(1) as u128) as u64,
            )
        })
    }

    /// Renders in place (tests; the store renders outside its lock).
    #[cfg(test)]
    pub fn render_now(&mut self) -> Rendered {
        let r = self.snapshot(vec![]).render();
        self.rendered = Some(r.clone());
        self.rendered_version = self.version;
        r
    }
}

#[derive(Debug, Clone)]
struct SegmentLine {
    msn: u64,
    duration: MediaTime,
    discontinuity: bool,
    init_version: Option<u64>,
    gap: bool,
    program_date_time: Option<i64>,
    /// (duration, independent) of each listed part.
    parts: Vec<(MediaTime, bool)>,
}

/// A playlist's metadata, ready to be written.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    output: OutputKind,
    target_duration: u64,
    part_target: Option<MediaTime>,
    discontinuity_sequence: u64,
    ended: bool,
    segments: Vec<SegmentLine>,
    open: Option<SegmentLine>,
    next_msn: u64,
    /// Sibling renditions: (name, newest segment or part).
    reports: Vec<(String, Last)>,
}

/// Seconds with five decimals (10 µs: finer than any frame, and exact for 90 kHz
/// durations a player adds up), rounded half up. Written in integers, straight into the
/// playlist: a playlist of a 60 s window has a hundred of these, rendered at every part.
fn secs(t: MediaTime) -> Secs {
    Secs(t.max(0))
}

struct Secs(MediaTime);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tens_of_us = (self.0 + 5_000) / 10_000;
        write!(f, "{}.{:05}", tens_of_us / 100_000, tens_of_us % 100_000)
    }
}

impl Snapshot {
    /// Writes the playlist and, for LL-HLS, its delta update.
    pub fn render(&self) -> Rendered {
        let full = self.write(false);
        let skip = self.part_target.is_some().then(|| self.write(true));
        Rendered {
            full: Bytes::from(full),
            skip: skip.map(Bytes::from),
        }
    }

    /// The minimum the spec allows for `CAN-SKIP-UNTIL`: six target durations.
    fn skip_until(&self) -> MediaTime {
        6 * self.target_duration as i64 * NANOS_PER_SEC
    }

    fn write(&self, skip: bool) -> String {
        let cmaf = self.output == OutputKind::Cmaf;
        let ll = self.part_target.filter(|_| cmaf);
        let ext = if cmaf { "m4s" } else { "ts" };
        let mut w = String::with_capacity(256 + 96 * self.segments.len());
        w.push_str("#EXTM3U\n");
        // Version 9: EXT-X-SKIP; 7: EXT-X-MAP of fMP4 segments; 3: MPEG-TS.
        let version = match (ll, cmaf) {
            (Some(_), _) => 9,
            (None, true) => 7,
            (None, false) => 3,
        };
        let _ = writeln!(w, "#EXT-X-VERSION:{version}");
        w.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        let _ = writeln!(w, "#EXT-X-TARGETDURATION:{}", self.target_duration);
        if let Some(part) = ll {
            let _ = writeln!(
                w,
                "{}",
                server_control_line(self.target_duration, part, None)
            );
            let _ = writeln!(w, "#EXT-X-PART-INF:PART-TARGET={}", secs(part));
        }
        let first = self.segments.first().map_or(self.next_msn, |s| s.msn);
        let _ = writeln!(w, "#EXT-X-MEDIA-SEQUENCE:{first}");
        if self.discontinuity_sequence != 0 {
            let _ = writeln!(
                w,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        // Delta update: the segments older than CAN-SKIP-UNTIL from the end are skipped.
        let mut skipped = 0;
        if skip {
            let mut from_end: MediaTime = 0;
            let mut keep = 0;
            for s in self.segments.iter().rev() {
                if from_end >= self.skip_until() {
                    break;
                }
                from_end = from_end.saturating_add(s.duration);
                keep += 1;
            }
            skipped = self.segments.len() - keep;
            if skipped > 0 {
                let _ = writeln!(w, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
            }
        }
        let mut prev_init = None;
        let mut first_line = true;
        let open = self.open.iter().filter(|o| !o.parts.is_empty());
        let lines = self.segments[skipped..]
            .iter()
            .map(|s| (s, false))
            .chain(open.map(|o| (o, true)));
        for (s, is_open) in lines {
            if s.discontinuity {
                w.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if let Some(v) = s.init_version
                && (s.init_version != prev_init || first_line)
            {
                let _ = writeln!(w, "#EXT-X-MAP:URI=\"init-{v}.mp4\"");
            }
            prev_init = s.init_version;
            first_line = false;
            if let Some(ms) = s.program_date_time {
                let _ = writeln!(w, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_millis(ms));
            }
            for (i, (d, independent)) in s.parts.iter().enumerate() {
                let _ = write!(
                    w,
                    "#EXT-X-PART:DURATION={},URI=\"{}.{i}.{ext}\"",
                    secs(*d),
                    s.msn
                );
                if *independent {
                    w.push_str(",INDEPENDENT=YES");
                }
                w.push('\n');
            }
            if is_open {
                continue;
            }
            if s.gap {
                w.push_str("#EXT-X-GAP\n");
            }
            let _ = writeln!(w, "#EXTINF:{},\n{}.{ext}", secs(s.duration), s.msn);
        }
        if self.ended {
            w.push_str("#EXT-X-ENDLIST\n");
        } else if ll.is_some() {
            let (msn, part) = match &self.open {
                Some(o) => (o.msn, o.parts.len()),
                None => (self.next_msn, 0),
            };
            let _ = writeln!(
                w,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{msn}.{part}.{ext}\""
            );
            for (name, last) in &self.reports {
                let _ = write!(
                    w,
                    "#EXT-X-RENDITION-REPORT:URI=\"../{name}/index.m3u8\",LAST-MSN={}",
                    last.msn
                );
                if let Some(p) = last.part {
                    let _ = write!(w, ",LAST-PART={p}");
                }
                w.push('\n');
            }
        }
        w
    }
}

/// `EXT-X-SERVER-CONTROL` for LL-HLS: blocking reload, delta updates from six target
/// durations, and the hold-backs: at least three part targets (`PART-HOLD-BACK`) and three
/// target durations (`HOLD-BACK`), the spec's minimums, or more when a distribution asks
/// for a higher `target_latency`.
pub fn server_control_line(
    target_duration: u64,
    part_target: MediaTime,
    target_latency: Option<MediaTime>,
) -> String {
    let td = target_duration as i64 * NANOS_PER_SEC;
    let part_hold_back = (3 * part_target).max(target_latency.unwrap_or(0));
    let hold_back = (3 * td).max(target_latency.unwrap_or(0));
    format!(
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={},PART-HOLD-BACK={},HOLD-BACK={}",
        secs(6 * td),
        secs(part_hold_back),
        secs(hold_back)
    )
}

/// A playlist with its `EXT-X-SERVER-CONTROL` line replaced (a distribution's own
/// target latency); unchanged when it has none.
pub fn with_server_control(playlist: &Bytes, line: &str) -> Bytes {
    const TAG: &[u8] = b"#EXT-X-SERVER-CONTROL:";
    let Some(start) = playlist.windows(TAG.len()).position(|w| w == TAG) else {
        return playlist.clone();
    };
    let end = playlist[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(playlist.len(), |n| start + n);
    let mut out = Vec::with_capacity(playlist.len() + line.len());
    out.extend_from_slice(&playlist[..start]);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(&playlist[end..]);
    Bytes::from(out)
}

/// `EXT-X-TARGETDURATION` for segments of `segment_duration`: whole seconds, rounded up,
/// at least one.
pub(crate) fn target_duration_secs(segment_duration: MediaTime) -> u64 {
    (segment_duration.max(0) as u64)
        .div_ceil(NANOS_PER_SEC as u64)
        .max(1)
}

pub(crate) fn round_secs(t: MediaTime) -> u64 {
    (t.max(0) as u64 + NANOS_PER_SEC as u64 / 2) / NANOS_PER_SEC as u64
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` for Unix milliseconds (proleptic Gregorian, UTC).
pub(crate) fn rfc3339_millis(unix_ms: i64) -> Rfc3339Millis {
    Rfc3339Millis(unix_ms)
}

/// A Unix time in ms as RFC 3339 UTC with milliseconds, written where it is used.
pub(crate) struct Rfc3339Millis(i64);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unix_ms = self.0;
        let (days, ms_of_day) = (
            unix_ms.div_euclid(86_400_000),
            unix_ms.rem_euclid(86_400_000),
        );
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let (h, m, s, ms) = (
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000,
        );
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MediaTime = NANOS_PER_SEC;
    const MS: MediaTime = 1_000_000;

    fn part(ms: i64, independent: bool) -> StoredPart {
        StoredPart {
            duration: ms * MS,
            independent,
            data: Bytes::from_static(b"p"),
        }
    }

    fn open(msn: u64) -> OpenSegment {
        OpenSegment {
            msn,
            discontinuity: false,
            init_version: Some(1),
            program_date_time: Some(1_795_000_000_000 + msn as i64 * 2000),
            parts: vec![],
        }
    }

    fn seg(msn: u64) -> StoredSegment {
        StoredSegment {
            msn,
            duration: 2 * S,
            discontinuity: false,
            init_version: Some(1),
            data: Some(Bytes::from_static(b"s")),
            program_date_time: Some(1_795_000_000_000 + msn as i64 * 2000),
            parts: vec![],
        }
    }

    /// A track with parts: `n` whole segments of four 0.5 s parts, then `open_parts`
    /// parts of the next.
    fn ll_track(n: u64, open_parts: usize) -> Track {
        let mut t = Track::new(OutputKind::Cmaf, 2 * S, Some(S / 2));
        for msn in 0..n {
            for i in 0..4 {
                t.push_part(&open(msn), part(500, i == 0));
            }
            t.push(seg(msn), 60 * S);
        }
        for i in 0..open_parts {
            t.push_part(&open(n), part(500, i == 0));
        }
        t
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn a_closed_segments_parts_are_views_of_its_bytes() {
        let mut t = Track::new(OutputKind::Cmaf, 2 * S, Some(S / 2));
        let pieces = [&b"moof-mdat 1"[..], b"moof-mdat 22", b"moof-mdat 333"];
        for (i, bytes) in pieces.iter().enumerate() {
            let mut p = part(500, i == 0);
            p.data = Bytes::copy_from_slice(bytes);
            t.push_part(&open(0), p);
        }
        let mut whole = seg(0);
        whole.data = Some(Bytes::from(pieces.concat()));
        t.push(whole, 60 * S);
        let data = t.segments[0].data.clone().unwrap();
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        for (i, bytes) in pieces.iter().enumerate() {
            let part = t.part(0, i as u32).unwrap();
            assert_eq!(&part[..], *bytes, "part {i} serves the same bytes");
            assert!(
                range.contains(&(part.as_ptr() as usize)),
                "part {i} is held once"
            );
        }
        // Parts that are not the segment's bytes (lengths differ) keep their own.
        let mut t = ll_track(1, 0);
        let mut other = seg(1);
        other.data = Some(Bytes::from_static(b"different"));
        t.push_part(&open(1), part(500, true));
        t.push(other, 60 * S);
        assert_eq!(&t.part(1, 0).unwrap()[..], b"p");
    }

    #[test]
    fn ll_hls_playlist_lists_recent_parts_hint_and_reports() {
        let mut t = ll_track(10, 2);
        let reports = vec![(
            "480p".to_owned(),
            Last {
                msn: 10,
                part: Some(1),
            },
        )];
        let r = t.snapshot(reports).render();
        let full = text(&r.full);
        // Header tags, in order, once.
        for tag in [
            "#EXT-X-VERSION:9",
            "#EXT-X-TARGETDURATION:2",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.00000,PART-HOLD-BACK=1.50000,HOLD-BACK=6.00000",
            "#EXT-X-PART-INF:PART-TARGET=0.50000",
        ] {
            assert_eq!(full.matches(tag).count(), 1, "{tag}\n{full}");
        }
        // Parts for the segments within three target durations of the end (8, 9 and
        // the open 10), not for older ones.
        assert!(!full.contains("URI=\"7.3.m4s\""), "{full}");
        assert!(full.contains("#EXT-X-PART:DURATION=0.50000,URI=\"8.0.m4s\",INDEPENDENT=YES\n"));
        assert!(full.contains("#EXT-X-PART:DURATION=0.50000,URI=\"8.1.m4s\"\n"));
        assert!(full.ends_with(
            "#EXT-X-PART:DURATION=0.50000,URI=\"10.1.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"10.2.m4s\"\n#EXT-X-RENDITION-REPORT:URI=\"../480p/index.m3u8\",LAST-MSN=10,LAST-PART=1\n"
        ), "{full}");
        assert_eq!(full.matches("#EXT-X-PROGRAM-DATE-TIME:").count(), 11);
        // Read back with m3u8-rs: ten segments, parts as tags of their segments.
        let parsed = m3u8_rs::parse_media_playlist_res(&r.full).expect("parses");
        assert_eq!(parsed.segments.len(), 10);
        assert_eq!(parsed.target_duration, 2);
        // The delta update skips what is older than CAN-SKIP-UNTIL (12 s = six segments).
        let skip = text(r.skip.as_ref().unwrap());
        assert!(
            skip.contains("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n"),
            "{skip}"
        );
        assert!(
            !skip.contains("\n3.m4s\n") && skip.contains("\n4.m4s\n"),
            "{skip}"
        );
        assert!(skip.contains("#EXT-X-MAP:URI=\"init-1.mp4\""), "{skip}");
        // Parts of older segments are dropped (one segment of grace beyond those listed).
        assert!(t.part(7, 0).is_some() && t.part(5, 0).is_none());
        assert_eq!(t.part(10, 1).as_deref(), Some(&b"p"[..]));
        assert!(t.part(10, 2).is_none());
        t.end();
        let ended = text(&t.render_now().full);
        assert!(
            ended.ends_with("10.m4s\n#EXT-X-ENDLIST\n")
                || ended.ends_with("9.m4s\n#EXT-X-ENDLIST\n"),
            "{ended}"
        );
        assert!(!ended.contains("PRELOAD-HINT"), "{ended}");
    }

    #[test]
    fn blocking_requests_wait_for_the_part_or_segment_they_name() {
        let t = ll_track(5, 2); // segments 0..=4 complete, 5.0 and 5.1 published
        let want = |msn, part| t.readiness(Awaited { msn, part });
        assert_eq!(want(4, None), Readiness::Ready);
        assert_eq!(want(5, Some(1)), Readiness::Ready);
        assert_eq!(want(5, Some(2)), Readiness::Waiting);
        assert_eq!(
            want(5, None),
            Readiness::Waiting,
            "segment 5 is not complete"
        );
        assert_eq!(want(6, Some(0)), Readiness::Waiting);
        assert_eq!(want(7, None), Readiness::Waiting);
        assert_eq!(want(8, None), Readiness::TooFar);
        assert_eq!(
            t.last(),
            Some(Last {
                msn: 5,
                part: Some(1)
            })
        );
        let mut ended = ll_track(5, 0);
        ended.end();
        assert_eq!(
            ended.readiness(Awaited {
                msn: 6,
                part: Some(0)
            }),
            Readiness::Ready
        );
    }

    /// Durations in seconds, five decimals, rounded half up, without floating point.
    #[test]
    fn seconds_are_written_with_five_decimals() {
        let cases = [
            (0, "0.00000"),
            (-5, "0.00000"),
            (2 * S, "2.00000"),
            (1_001_000_000 / 30, "0.03337"),
            (1_999_995_000, "2.00000"),
            (1_999_994_999, "1.99999"),
            (3_600 * S + 1, "3600.00000"),
        ];
        for (t, want) in cases {
            assert_eq!(secs(t).to_string(), want, "{t}");
        }
    }

    #[test]
    fn a_distribution_sets_its_own_hold_backs_never_below_the_minimums() {
        let pl = ll_track(3, 1).snapshot(vec![]).render().full;
        let low = server_control_line(2, S / 2, Some(S));
        assert!(
            low.ends_with("PART-HOLD-BACK=1.50000,HOLD-BACK=6.00000"),
            "{low}"
        );
        let high = server_control_line(2, S / 2, Some(8 * S));
        assert!(
            high.ends_with("PART-HOLD-BACK=8.00000,HOLD-BACK=8.00000"),
            "{high}"
        );
        let out = text(&with_server_control(&pl, &high));
        assert_eq!(out.matches("#EXT-X-SERVER-CONTROL:").count(), 1);
        assert!(out.contains(&format!("{high}\n#EXT-X-PART-INF")), "{out}");
        let ts = Bytes::from_static(b"#EXTM3U\n#EXTINF:2,\n1.ts\n");
        assert_eq!(with_server_control(&ts, &high), ts);
    }

    #[test]
    fn program_date_times_are_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339_millis(1_795_000_000_000).to_string(),
            "2026-11-18T11:06:40.000Z"
        );
        assert_eq!(rfc3339_millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }
}
