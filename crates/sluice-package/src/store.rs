//! The bounded in-memory segment store and its playlists, read by the HTTP layer.
//!
//! Playlists are `m3u8-rs` values rendered to `Bytes` once per change
//! (RFC 8216bis §4.4); a request is a lookup and a clone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaSegment,
    Resolution, VariantStream,
};
use sluice_core::MediaTime;
use sluice_core::time::NANOS_PER_SEC;
use tokio::sync::watch;

use crate::OutputKind;

/// The name of the CMAF audio rendition in URLs and lookups.
pub const AUDIO_RENDITION: &str = "audio";

/// Segments kept beyond the playlist window, for players reading an older playlist.
const EXTRA_SEGMENTS: usize = 2;
/// Segments always listed, whatever the window (RFC 8216bis §6.2.2 asks for three target durations).
const MIN_LISTED: usize = 3;
/// Init segment versions kept per rendition.
const MAX_INIT_VERSIONS: usize = 8;

/// One stored media segment.
#[derive(Debug, Clone)]
pub(crate) struct StoredSegment {
    pub msn: u64,
    pub duration: MediaTime,
    pub discontinuity: bool,
    /// CMAF only: the init segment version this segment needs.
    pub init_version: Option<u32>,
    /// `None` marks a gap (`EXT-X-GAP`): no media for this interval.
    pub data: Option<Bytes>,
}

/// One media playlist and the segments it (and the grace window) holds.
#[derive(Debug)]
struct Track {
    output: OutputKind,
    segments: VecDeque<StoredSegment>,
    /// Index into `segments` of the first listed segment.
    listed_from: usize,
    discontinuity_sequence: u64,
    target_duration: u64,
    ended: bool,
    playlist: Option<Bytes>,
    /// Bumped on every change, so a playlist rendered outside the lock is only
    /// installed if nothing changed meanwhile.
    version: u64,
    overlong_reported: bool,
}

impl Track {
    fn new(output: OutputKind, segment_duration: MediaTime) -> Self {
        Track {
            output,
            segments: VecDeque::new(),
            listed_from: 0,
            discontinuity_sequence: 0,
            target_duration: ceil_secs(segment_duration).max(1),
            ended: false,
            playlist: None,
            version: 0,
            overlong_reported: false,
        }
    }

    fn listed(&self) -> impl Iterator<Item = &StoredSegment> {
        self.segments.iter().skip(self.listed_from)
    }

    fn push(&mut self, seg: StoredSegment, window: MediaTime) {
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
        self.version += 1;
    }

    /// Renders the playlist in place (tests; the store renders outside its lock).
    #[cfg(test)]
    fn render_now(&mut self) {
        self.playlist = render_media(&self.playlist_value());
    }

    /// The playlist as an `m3u8-rs` value: a cheap snapshot taken under the store's
    /// lock; turning it into text happens after the lock is released.
    fn playlist_value(&self) -> MediaPlaylist {
        let cmaf = self.output == OutputKind::Cmaf;
        let mut segments = Vec::with_capacity(self.segments.len());
        let mut prev_init = None;
        for s in self.listed() {
            let ext = if cmaf { "m4s" } else { "ts" };
            let mut seg = MediaSegment {
                uri: format!("{}.{ext}", s.msn),
                duration: (s.duration as f64 / NANOS_PER_SEC as f64) as f32,
                discontinuity: s.discontinuity,
                ..MediaSegment::default()
            };
            if s.init_version.is_some() && s.init_version != prev_init {
                seg.map = s.init_version.map(|v| Map {
                    uri: format!("init-{v}.mp4"),
                    ..Map::default()
                });
            }
            prev_init = s.init_version;
            if s.data.is_none() {
                seg.unknown_tags.push(m3u8_rs::ExtTag {
                    tag: "X-GAP".into(),
                    rest: None,
                });
            }
            segments.push(seg);
        }
        MediaPlaylist {
            version: Some(if cmaf { 7 } else { 3 }),
            target_duration: self.target_duration,
            media_sequence: self.listed().next().map_or(0, |s| s.msn),
            discontinuity_sequence: self.discontinuity_sequence,
            independent_segments: true,
            end_list: self.ended,
            segments,
            ..MediaPlaylist::default()
        }
    }

    /// (peak, mean) bits per second of the listed segments, if any has media.
    fn bitrate(&self) -> Option<(u64, u64)> {
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
}

fn render_media(pl: &MediaPlaylist) -> Option<Bytes> {
    let mut out = Vec::with_capacity(256 + 64 * pl.segments.len());
    match pl.write_to(&mut out) {
        Ok(()) => Some(Bytes::from(out)),
        Err(e) => {
            tracing::error!(error = %e, "rendering media playlist failed");
            None
        }
    }
}

fn ceil_secs(t: MediaTime) -> u64 {
    (t.max(0) as u64).div_ceil(NANOS_PER_SEC as u64)
}

fn round_secs(t: MediaTime) -> u64 {
    (t.max(0) as u64 + NANOS_PER_SEC as u64 / 2) / NANOS_PER_SEC as u64
}

/// What the multivariant playlist says about a video rendition.
#[derive(Debug, Clone)]
pub(crate) struct VariantInfo {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub configured_kbps: u32,
    pub codec: Option<String>,
    pub frame_rate: Option<f64>,
}

#[derive(Debug)]
struct State {
    segment_duration: MediaTime,
    window: MediaTime,
    outputs: Vec<OutputKind>,
    variants: Vec<VariantInfo>,
    audio_kbps: Option<u32>,
    audio_codec: Option<String>,
    tracks: HashMap<(OutputKind, String), Track>,
    inits: HashMap<String, VecDeque<(u32, Bytes)>>,
    live: bool,
}

/// Rendered multivariant playlists by (output, bitrate cap), each with the generation of
/// the state it was rendered from; `None` = not available yet.
type MultivariantCache = HashMap<(OutputKind, Option<u32>), (u64, Option<Bytes>)>;

/// Reader side of one engine's packaged output, shared with the HTTP layer.
///
/// Every getter is a lookup and a `Bytes` clone; writers re-render a
/// playlist once per change and bump the [`EngineOutput::subscribe`] counter.
#[derive(Debug)]
pub struct EngineOutput {
    state: RwLock<State>,
    /// Rendered multivariant playlists by (output, cap); an entry is used only while
    /// `generation` has not moved since its render began.
    multivariant_cache: Mutex<MultivariantCache>,
    /// Bumped after every change to the state.
    generation: AtomicU64,
    /// When the last segment with media was added, and how long ago it may be for the
    /// engine to count as healthy (two segment durations and a second).
    last_media: Mutex<Option<Instant>>,
    health_window: Duration,
    changes: watch::Sender<u64>,
}

impl EngineOutput {
    pub(crate) fn new(
        segment_duration: MediaTime,
        window: MediaTime,
        outputs: Vec<OutputKind>,
        variants: Vec<VariantInfo>,
        audio_kbps: Option<u32>,
    ) -> Self {
        EngineOutput {
            state: RwLock::new(State {
                segment_duration,
                window,
                outputs,
                variants,
                audio_kbps,
                audio_codec: None,
                tracks: HashMap::new(),
                inits: HashMap::new(),
                live: true,
            }),
            multivariant_cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            last_media: Mutex::new(None),
            health_window: Duration::from_nanos(segment_duration.max(0) as u64 * 2)
                + Duration::from_secs(1),
            changes: watch::channel(0).0,
        }
    }

    // A panic elsewhere must not take the store down with it: the data is still consistent
    // (every mutation below completes before anything can panic).
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    fn cache(&self) -> MutexGuard<'_, MultivariantCache> {
        self.multivariant_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The multivariant playlist of `output` (RFC 8216bis §4.4.6), `None`
    /// until every rendition has a segment. Renditions whose configured
    /// bitrate (video + audio) exceeds `max_kbps` are left out, but the
    /// lowest one is always kept.
    pub fn multivariant(&self, output: OutputKind, max_kbps: Option<u32>) -> Option<Bytes> {
        // The generation is read before the state: a render that raced with a change is
        // tagged with the older generation and never served once the change is counted.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, hit)) = self.cache().get(&(output, max_kbps))
            && *g == generation
        {
            return hit.clone();
        }
        let rendered = self.render_multivariant(output, max_kbps);
        self.cache()
            .insert((output, max_kbps), (generation, rendered.clone()));
        rendered
    }

    fn render_multivariant(&self, output: OutputKind, max_kbps: Option<u32>) -> Option<Bytes> {
        let st = self.read();
        if !st.outputs.contains(&output) || st.variants.is_empty() {
            return None;
        }
        let has_segment = |name: &str| {
            st.tracks
                .get(&(output, name.to_owned()))
                .is_some_and(|t| t.listed().next().is_some())
        };
        if !st.variants.iter().all(|v| has_segment(&v.name)) {
            return None;
        }
        // CMAF: audio is its own rendition; wait for it once its config is known,
        // but not forever: after MIN_LISTED video segments without any audio, the
        // stream is offered video-only (and gains the audio group once audio comes).
        let mut cmaf_audio = output == OutputKind::Cmaf && st.audio_codec.is_some();
        if cmaf_audio && !has_segment(AUDIO_RENDITION) {
            let video_listed = |name: &str| {
                st.tracks
                    .get(&(output, name.to_owned()))
                    .map_or(0, |t| t.listed().count())
            };
            if st
                .variants
                .iter()
                .any(|v| video_listed(&v.name) < MIN_LISTED)
            {
                return None;
            }
            cmaf_audio = false;
        }
        let audio_bitrate = if cmaf_audio {
            st.tracks
                .get(&(output, AUDIO_RENDITION.to_owned()))
                .and_then(Track::bitrate)
        } else {
            None
        };
        let audio_kbps = st.audio_codec.as_ref().and(st.audio_kbps).unwrap_or(0);

        let mut variants: Vec<(u64, &VariantInfo, VariantStream)> = st
            .variants
            .iter()
            .map(|v| {
                let configured = (v.configured_kbps as u64 + audio_kbps as u64) * 1000;
                let measured = st
                    .tracks
                    .get(&(output, v.name.clone()))
                    .and_then(Track::bitrate);
                let (peak, mean) = match (measured, audio_bitrate) {
                    (Some((p, m)), Some((ap, am))) => (p + ap, m + am),
                    (Some((p, m)), None) if cmaf_audio => {
                        (p + audio_kbps as u64 * 1000, m + audio_kbps as u64 * 1000)
                    }
                    (Some(pm), None) => pm,
                    (None, _) => (configured, configured),
                };
                // CMAF video segments carry no audio: name the audio codec only when
                // the variant points at the audio group.
                let with_audio = output == OutputKind::Ts || cmaf_audio;
                let codecs = match (&v.codec, &st.audio_codec) {
                    (Some(vc), Some(ac)) if with_audio => Some(format!("{vc},{ac}")),
                    (Some(vc), _) => Some(vc.clone()),
                    _ => None,
                };
                let stream = VariantStream {
                    uri: format!("{}/index.m3u8", v.name),
                    bandwidth: peak,
                    average_bandwidth: Some(mean),
                    codecs,
                    resolution: Some(Resolution {
                        width: v.width as u64,
                        height: v.height as u64,
                    }),
                    frame_rate: v.frame_rate.map(|f| (f * 1000.0).round() / 1000.0),
                    audio: cmaf_audio.then(|| AUDIO_RENDITION.to_owned()),
                    ..VariantStream::default()
                };
                (configured, v, stream)
            })
            .collect();
        variants.sort_by(|a, b| {
            b.2.bandwidth
                .cmp(&a.2.bandwidth)
                .then(a.1.name.cmp(&b.1.name))
        });
        if let Some(cap) = max_kbps.map(|k| k as u64 * 1000) {
            // Filter on configured bitrates: measured ones fluctuate, and a variant
            // must not come and go between playlist reloads.
            let lowest = variants.iter().map(|v| v.0).min().unwrap_or(0);
            if lowest > cap {
                // Nothing fits: keep only the lowest rendition (the last one sorted).
                let keep = variants.iter().rposition(|v| v.0 == lowest).unwrap_or(0);
                variants = vec![variants.swap_remove(keep)];
            } else {
                variants.retain(|v| v.0 <= cap);
            }
        }
        let pl = MasterPlaylist {
            version: Some(if output == OutputKind::Cmaf { 7 } else { 3 }),
            independent_segments: true,
            alternatives: if cmaf_audio {
                vec![AlternativeMedia {
                    media_type: AlternativeMediaType::Audio,
                    uri: Some(format!("{AUDIO_RENDITION}/index.m3u8")),
                    group_id: AUDIO_RENDITION.to_owned(),
                    name: AUDIO_RENDITION.to_owned(),
                    default: true,
                    autoselect: true,
                    ..AlternativeMedia::default()
                }]
            } else {
                vec![]
            },
            variants: variants.into_iter().map(|v| v.2).collect(),
            ..MasterPlaylist::default()
        };
        let mut out = Vec::with_capacity(1024);
        pl.write_to(&mut out).ok()?;
        Some(Bytes::from(out))
    }

    /// The media playlist of one rendition; `"audio"` is the CMAF audio playlist.
    pub fn media_playlist(&self, output: OutputKind, rendition: &str) -> Option<Bytes> {
        self.read()
            .tracks
            .get(&(output, rendition.to_owned()))?
            .playlist
            .clone()
    }

    /// An init segment (`init-<version>.mp4`) of a CMAF rendition (or `"audio"`).
    pub fn init_segment(&self, rendition: &str, version: u32) -> Option<Bytes> {
        let st = self.read();
        st.inits
            .get(rendition)?
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    /// A media segment by media sequence number, while it is in the store.
    pub fn segment(&self, output: OutputKind, rendition: &str, msn: u64) -> Option<Bytes> {
        let st = self.read();
        let track = st.tracks.get(&(output, rendition.to_owned()))?;
        let first = track.segments.front()?.msn;
        let idx = usize::try_from(msn.checked_sub(first)?).ok()?;
        match track.segments.get(idx) {
            Some(s) if s.msn == msn => s.data.clone(),
            _ => track.segments.iter().find(|s| s.msn == msn)?.data.clone(),
        }
    }

    /// False once the packager finished (playlists carry `EXT-X-ENDLIST`).
    pub fn is_live(&self) -> bool {
        self.read().live
    }

    /// A counter bumped on every playlist change (for blocking playlist reload).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The newest media sequence number of a rendition (CMAF if enabled, else TS).
    pub fn latest_msn(&self, rendition: &str) -> Option<u64> {
        let st = self.read();
        st.outputs
            .iter()
            .filter_map(|o| {
                st.tracks
                    .get(&(*o, rendition.to_owned()))?
                    .segments
                    .back()
                    .map(|s| s.msn)
            })
            .next()
    }

    /// Names of the video renditions, in configuration order.
    pub fn rendition_names(&self) -> Vec<String> {
        self.read()
            .variants
            .iter()
            .map(|v| v.name.clone())
            .collect()
    }

    /// Healthy: a segment with media came within two segment durations (and a second)
    /// of `now`. A distribution serves from its healthy engine of lowest priority.
    pub fn healthy_at(&self, now: Instant) -> bool {
        let last = *self.last_media.lock().unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|t| now.saturating_duration_since(t) <= self.health_window)
    }

    /// [`EngineOutput::healthy_at`] now.
    pub fn healthy(&self) -> bool {
        self.healthy_at(Instant::now())
    }

    // ---- writer side (crate-private, called by the packager) ----

    pub(crate) fn add_segment(&self, output: OutputKind, rendition: &str, seg: StoredSegment) {
        if seg.data.is_some() {
            *self.last_media.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        let key = (output, rendition.to_owned());
        let (value, version) = {
            let mut st = self.write();
            let (d, window) = (st.segment_duration, st.window);
            let track = st
                .tracks
                .entry(key.clone())
                .or_insert_with(|| Track::new(output, d));
            track.push(seg, window);
            (track.playlist_value(), track.version)
        };
        self.install_playlist(&key, &value, version);
        self.changed();
    }

    /// Renders a playlist snapshot outside the lock, then installs it unless the track
    /// changed meanwhile (whoever changed it installs a newer one).
    fn install_playlist(&self, key: &(OutputKind, String), value: &MediaPlaylist, version: u64) {
        let rendered = render_media(value);
        let mut st = self.write();
        if let Some(t) = st.tracks.get_mut(key)
            && t.version == version
        {
            t.playlist = rendered;
        }
    }

    pub(crate) fn add_init(&self, rendition: &str, version: u32, data: Bytes) {
        {
            let mut st = self.write();
            let versions = st.inits.entry(rendition.to_owned()).or_default();
            versions.retain(|(v, _)| *v != version);
            versions.push_back((version, data));
            while versions.len() > MAX_INIT_VERSIONS {
                versions.pop_front();
            }
        }
        self.changed();
    }

    pub(crate) fn update_variant(&self, index: usize, f: impl FnOnce(&mut VariantInfo)) {
        if let Some(v) = self.write().variants.get_mut(index) {
            f(v);
        }
        self.changed();
    }

    pub(crate) fn set_audio_codec(&self, codec: String) {
        self.write().audio_codec = Some(codec);
        self.changed();
    }

    pub(crate) fn finish(&self) {
        let snapshots: Vec<_> = {
            let mut st = self.write();
            st.live = false;
            st.tracks
                .iter_mut()
                .map(|(k, t)| {
                    t.ended = true;
                    t.version += 1;
                    (k.clone(), t.playlist_value(), t.version)
                })
                .collect()
        };
        for (key, value, version) in &snapshots {
            self.install_playlist(key, value, *version);
        }
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MediaTime = NANOS_PER_SEC;

    fn seg(msn: u64, disc: bool) -> StoredSegment {
        StoredSegment {
            msn,
            duration: 2 * S,
            discontinuity: disc,
            init_version: Some(1),
            data: Some(Bytes::from_static(b"x")),
        }
    }

    #[test]
    fn window_slides_and_counts_discontinuities() {
        let mut t = Track::new(OutputKind::Cmaf, 2 * S);
        for msn in 0..10 {
            t.push(seg(msn, msn == 2), 6 * S);
        }
        assert_eq!(t.listed().count(), 3);
        assert_eq!(t.segments.len(), 5);
        assert_eq!(t.listed().next().unwrap().msn, 7);
        assert_eq!(t.discontinuity_sequence, 1);
        t.render_now();
        let text = String::from_utf8(t.playlist.clone().unwrap().to_vec()).unwrap();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:7"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1"), "{text}");
        assert_eq!(text.matches("#EXT-X-MAP").count(), 1);
    }

    /// A render that raced with a change (inserted after it, tagged with the older
    /// generation) is never served; the next request renders the new state.
    #[test]
    fn multivariant_cache_never_serves_a_stale_render() {
        let out = EngineOutput::new(
            2 * S,
            6 * S,
            vec![OutputKind::Ts],
            vec![VariantInfo {
                name: "v".into(),
                width: 640,
                height: 360,
                configured_kbps: 800,
                codec: Some("avc1.64001f".into()),
                frame_rate: None,
            }],
            None,
        );
        assert!(
            out.multivariant(OutputKind::Ts, None).is_none(),
            "no segment yet"
        );
        out.add_segment(OutputKind::Ts, "v", seg(0, false));
        let stale = out.generation.load(Ordering::Acquire) - 1;
        out.cache().insert((OutputKind::Ts, None), (stale, None));
        let text = out
            .multivariant(OutputKind::Ts, None)
            .expect("live after a segment");
        assert!(String::from_utf8_lossy(&text).contains("v/index.m3u8"));
    }

    #[test]
    fn target_duration_never_changes() {
        let mut t = Track::new(OutputKind::Ts, 2 * S);
        assert_eq!(t.target_duration, 2);
        t.push(
            StoredSegment {
                duration: 3 * S + S / 2,
                ..seg(0, false)
            },
            6 * S,
        );
        assert_eq!(t.target_duration, 2);
        assert!(t.overlong_reported);
        t.render_now();
        let text = String::from_utf8(t.playlist.clone().unwrap().to_vec()).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:2"), "{text}");
    }
}
