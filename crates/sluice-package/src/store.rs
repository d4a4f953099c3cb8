//! The bounded in-memory segment store and its playlists, read by the HTTP layer.
//!
//! Media playlists ([`crate::playlist`]) are rendered to `Bytes` once per change, the
//! multivariant playlist from an `m3u8-rs` value once per change of the state it shows
//! (RFC 8216bis §4.4); a request is a lookup and a clone. Each media playlist has its own
//! change signal, on which blocking playlist requests wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use m3u8_rs::{AlternativeMedia, AlternativeMediaType, MasterPlaylist, Resolution, VariantStream};
use sluice_core::MediaTime;
use tokio::sync::watch;

use crate::OutputKind;
use crate::packager::TrackSpec;

/// Init segment versions kept per rendition.
const MAX_INIT_VERSIONS: usize = 8;
use crate::playlist::{
    Awaited, MIN_LISTED, OpenSegment, Readiness, Rendered, StoredPart, StoredSegment, Track,
};

/// The name of the CMAF audio rendition in URLs and lookups.
pub const AUDIO_RENDITION: &str = "audio";

/// The rendition of a channel's audio source `source` (an extra CMAF audio track).
pub fn source_rendition(source: &str) -> String {
    format!("{AUDIO_RENDITION}-{source}")
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
    /// Extra audio tracks (CMAF), each with its codec once known.
    extra: Vec<(TrackSpec, Option<String>)>,
    /// LL-HLS part target of the CMAF playlists; `None`: no parts.
    part_target: Option<MediaTime>,
    tracks: HashMap<(OutputKind, String), Track>,
    /// Change signals, one per media playlist (blocking reload waits on them).
    signals: HashMap<(OutputKind, String), watch::Sender<u64>>,
    inits: HashMap<String, VecDeque<(u64, Bytes)>>,
    live: bool,
    /// `EXT-X-DISCONTINUITY-SEQUENCE` of a track's first playlist (see
    /// [`EngineOutput::last_discontinuity_number`]).
    discontinuity_base: u64,
    /// What each track produced (metrics).
    produced: HashMap<(OutputKind, String), Produced>,
}

/// What one track (an output's rendition) produced since its engine run started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Produced {
    /// Segments with media (gaps not counted), and their bytes.
    pub segments: u64,
    pub segment_bytes: u64,
    /// LL-HLS parts, and their bytes.
    pub parts: u64,
    pub part_bytes: u64,
}

/// A complete segment, as a recording takes it ([`EngineOutput::segments_from`]).
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    pub msn: u64,
    pub duration: MediaTime,
    pub discontinuity: bool,
    /// CMAF: the init segment version it needs.
    pub init_version: Option<u64>,
    /// `None`: a gap (no media for this interval).
    pub data: Option<Bytes>,
    /// Wall-clock time of its start, Unix milliseconds.
    pub program_date_time: Option<i64>,
}

/// The discontinuity sequence number of segment `msn` (its playlist's
/// `EXT-X-DISCONTINUITY-SEQUENCE` plus the discontinuities up to it), from a playlist that
/// lists it: one of `output` first, else of the other output (both number the same
/// segments alike; a TS segment may still wait for its audio while its CMAF twin is out).
/// `None` when none lists it.
fn discontinuity_number_at(st: &State, output: OutputKind, msn: u64) -> Option<u64> {
    let number = |t: &Track| {
        let listed: Vec<_> = t.segments.iter().skip(t.listed_from).collect();
        let at = listed.iter().position(|s| s.msn == msn)?;
        let flagged = listed[..=at].iter().filter(|s| s.discontinuity).count();
        Some(t.discontinuity_sequence + flagged as u64)
    };
    let of = |same: bool| {
        st.tracks
            .iter()
            .filter(|((o, _), _)| (*o == output) == same)
            .find_map(|(_, t)| number(t))
    };
    of(true).or_else(|| of(false))
}

/// Rendered multivariant playlists by (output, bitrate cap, extra audio tracks offered),
/// each with the generation of the state it was rendered from; `None` = not available yet.
type MultivariantCache =
    HashMap<(OutputKind, Option<u32>, Option<Vec<String>>), (u64, Option<Bytes>)>;

/// Reader side of one engine's packaged output, shared with the HTTP layer.
///
/// Every getter is a lookup and a `Bytes` clone; writers re-render a
/// playlist once per change and signal it ([`EngineOutput::subscribe_playlist`]).
#[derive(Debug)]
pub struct EngineOutput {
    state: RwLock<State>,
    /// Rendered multivariant playlists by (output, cap); an entry is used only while
    /// `generation` has not moved since its render began.
    multivariant_cache: Mutex<MultivariantCache>,
    /// Bumped after every change to what the multivariant playlist shows.
    generation: AtomicU64,
    /// When the last segment with media was added, and how long ago it may be for the
    /// engine to count as healthy (two segment durations and a second).
    last_media: Mutex<Option<Instant>>,
    health_window: Duration,
}

impl EngineOutput {
    pub(crate) fn new(
        segment_duration: MediaTime,
        window: MediaTime,
        outputs: Vec<OutputKind>,
        variants: Vec<VariantInfo>,
        audio_kbps: Option<u32>,
        part_target: Option<MediaTime>,
    ) -> Self {
        EngineOutput {
            state: RwLock::new(State {
                segment_duration,
                window,
                outputs,
                variants,
                audio_kbps,
                audio_codec: None,
                extra: Vec::new(),
                part_target,
                tracks: HashMap::new(),
                signals: HashMap::new(),
                inits: HashMap::new(),
                live: true,
                discontinuity_base: 0,
                produced: HashMap::new(),
            }),
            multivariant_cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            last_media: Mutex::new(None),
            health_window: Duration::from_nanos(segment_duration.max(0) as u64 * 2)
                + Duration::from_secs(1),
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

    /// Something the multivariant playlist shows changed (segments, codecs, renditions).
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The multivariant playlist of `output` (RFC 8216bis §4.4.6), `None`
    /// until every rendition has a segment. Renditions whose configured
    /// bitrate (video + audio) exceeds `max_kbps` are left out, but the
    /// lowest one is always kept.
    pub fn multivariant(&self, output: OutputKind, max_kbps: Option<u32>) -> Option<Bytes> {
        self.multivariant_for(output, max_kbps, None)
    }

    /// [`EngineOutput::multivariant`] offering only the extra audio tracks (by rendition)
    /// in `tracks`; `None`: all of them. The main audio is always offered.
    pub fn multivariant_for(
        &self,
        output: OutputKind,
        max_kbps: Option<u32>,
        tracks: Option<&[String]>,
    ) -> Option<Bytes> {
        // The generation is read before the state: a render that raced with a change is
        // tagged with the older generation and never served once the change is counted.
        let generation = self.generation.load(Ordering::Acquire);
        let key = (output, max_kbps, tracks.map(<[String]>::to_vec));
        if let Some((g, hit)) = self.cache().get(&key)
            && *g == generation
        {
            return hit.clone();
        }
        let rendered = self.render_multivariant(output, max_kbps, tracks);
        self.cache().insert(key, (generation, rendered.clone()));
        rendered
    }

    fn render_multivariant(
        &self,
        output: OutputKind,
        max_kbps: Option<u32>,
        tracks: Option<&[String]>,
    ) -> Option<Bytes> {
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
        // Extra audio tracks, each once it has a segment (in TS: audio-only renditions
        // beside the main audio, which stays muxed with the video).
        let extra: Vec<&(TrackSpec, Option<String>)> = st
            .extra
            .iter()
            .filter(|(t, _)| {
                tracks.is_none_or(|offered| offered.contains(&t.rendition))
                    && has_segment(&t.rendition)
            })
            .collect();
        let audio_group = cmaf_audio || !extra.is_empty();
        // TS with extra tracks: the main audio is the group's entry without a URI (the
        // variant's own, muxed audio).
        let ts_main = output == OutputKind::Ts && !extra.is_empty() && st.audio_codec.is_some();
        let group_codec = if cmaf_audio {
            st.audio_codec.clone()
        } else {
            extra.iter().find_map(|(_, c)| c.clone())
        };
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
                    (Some((p, m)), None) if audio_group => {
                        (p + audio_kbps as u64 * 1000, m + audio_kbps as u64 * 1000)
                    }
                    (Some(pm), None) => pm,
                    (None, _) => (configured, configured),
                };
                // CMAF video segments carry no audio: name the audio codec only when
                // the variant points at the audio group.
                let with_audio = output == OutputKind::Ts || audio_group;
                let audio_codec = if output == OutputKind::Ts {
                    &st.audio_codec
                } else {
                    &group_codec
                };
                let codecs = match (&v.codec, audio_codec) {
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
                    frame_rate: v.frame_rate.map(nominal_frame_rate),
                    audio: audio_group.then(|| AUDIO_RENDITION.to_owned()),
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
        if let Some(cap) = max_kbps {
            keep_within_cap(&mut variants, cap as u64 * 1000, |v| v.0);
        }
        let pl = MasterPlaylist {
            version: Some(if output == OutputKind::Cmaf { 7 } else { 3 }),
            independent_segments: true,
            alternatives: {
                let extra_default = extra.iter().any(|(t, _)| t.default);
                let main = (cmaf_audio || ts_main).then(|| AlternativeMedia {
                    media_type: AlternativeMediaType::Audio,
                    uri: cmaf_audio.then(|| format!("{AUDIO_RENDITION}/index.m3u8")),
                    group_id: AUDIO_RENDITION.to_owned(),
                    name: AUDIO_RENDITION.to_owned(),
                    default: !extra_default,
                    autoselect: true,
                    ..AlternativeMedia::default()
                });
                let first_is_default = !cmaf_audio && !ts_main && !extra_default;
                main.into_iter()
                    .chain(
                        extra
                            .iter()
                            .enumerate()
                            .map(|(i, (t, _))| AlternativeMedia {
                                media_type: AlternativeMediaType::Audio,
                                uri: Some(format!("{}/index.m3u8", t.rendition)),
                                group_id: AUDIO_RENDITION.to_owned(),
                                name: t.name.clone(),
                                language: t.language.clone(),
                                default: t.default || (first_is_default && i == 0),
                                autoselect: true,
                                ..AlternativeMedia::default()
                            }),
                    )
                    .collect()
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
        self.rendered(output, rendition).map(|r| r.full)
    }

    /// The media playlist, and its delta update (`_HLS_skip=YES`) when it has parts.
    /// Served from its first complete segment on (before that it would list parts only,
    /// which players that do not know LL-HLS cannot play).
    pub fn rendered(&self, output: OutputKind, rendition: &str) -> Option<Rendered> {
        self.read()
            .tracks
            .get(&(output, rendition.to_owned()))
            .filter(|t| !t.segments.is_empty())?
            .rendered
            .clone()
    }

    /// Whether a media playlist answers a blocking request for `want`; `None` when the
    /// rendition has no playlist (yet).
    pub fn readiness(
        &self,
        output: OutputKind,
        rendition: &str,
        want: Awaited,
    ) -> Option<Readiness> {
        let st = self.read();
        let t = st.tracks.get(&(output, rendition.to_owned()))?;
        // A render in flight is not served yet: wait for its signal.
        match t.readiness(want) {
            Readiness::Ready if t.rendered_version != t.version => Some(Readiness::Waiting),
            r => Some(r),
        }
    }

    /// A media playlist's change signal (its value is bumped after every new render).
    pub fn subscribe_playlist(&self, output: OutputKind, rendition: &str) -> watch::Receiver<u64> {
        let key = (output, rendition.to_owned());
        if let Some(tx) = self.read().signals.get(&key) {
            return tx.subscribe();
        }
        self.write()
            .signals
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// The LL-HLS part target, if the CMAF playlists have parts.
    pub fn part_target(&self) -> Option<MediaTime> {
        self.read().part_target
    }

    /// The target duration of the media playlists, seconds.
    pub fn target_duration(&self) -> u64 {
        crate::playlist::target_duration_secs(self.read().segment_duration)
    }

    /// Part `index` of segment `msn` (`<msn>.<index>.m4s`), while it is kept.
    pub fn part(&self, rendition: &str, msn: u64, index: u32) -> Option<Bytes> {
        self.read()
            .tracks
            .get(&(OutputKind::Cmaf, rendition.to_owned()))?
            .part(msn, index)
    }

    /// An init segment (`init-<version>.mp4`) of a CMAF rendition (or `"audio"`).
    pub fn init_segment(&self, rendition: &str, version: u64) -> Option<Bytes> {
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

    /// The complete segments of a track numbered `from` or later, while the store keeps
    /// them (a recorder's view: gaps have no data).
    pub fn segments_from(
        &self,
        output: OutputKind,
        rendition: &str,
        from: u64,
    ) -> Vec<SegmentRecord> {
        let st = self.read();
        let Some(track) = st.tracks.get(&(output, rendition.to_owned())) else {
            return Vec::new();
        };
        track
            .segments
            .iter()
            .filter(|s| s.msn >= from)
            .map(|s| SegmentRecord {
                msn: s.msn,
                duration: s.duration,
                discontinuity: s.discontinuity,
                init_version: s.init_version,
                data: s.data.clone(),
                program_date_time: s.program_date_time,
            })
            .collect()
    }

    /// Whether the CMAF output has an audio rendition ([`AUDIO_RENDITION`]).
    pub fn has_cmaf_audio(&self) -> bool {
        self.read()
            .tracks
            .contains_key(&(OutputKind::Cmaf, AUDIO_RENDITION.to_owned()))
    }

    /// False once the packager finished (playlists carry `EXT-X-ENDLIST`).
    pub fn is_live(&self) -> bool {
        self.read().live
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

    /// What each (output, rendition) produced so far, sorted.
    pub fn produced(&self) -> Vec<(OutputKind, String, Produced)> {
        let mut all: Vec<_> = self
            .read()
            .produced
            .iter()
            .map(|((o, r), p)| (*o, r.clone(), *p))
            .collect();
        all.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        all
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
        let bytes = seg.data.as_ref().map(|d| d.len() as u64);
        let first = (seg.msn, seg.discontinuity);
        self.update_track(output, rendition, true, first, |track, window, produced| {
            if let Some(bytes) = bytes {
                produced.segments += 1;
                produced.segment_bytes += bytes;
            }
            track.push(seg, window)
        });
        self.changed();
    }

    /// Publishes one part of the segment `open` describes (LL-HLS). The last parts of a
    /// segment come with `publish: false`: the segment follows at once, and one render of
    /// both keeps a playlist from ever hinting a part past the segment's end.
    pub(crate) fn add_part(
        &self,
        output: OutputKind,
        rendition: &str,
        open: &OpenSegment,
        part: StoredPart,
        publish: bool,
    ) {
        *self.last_media.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        // Parts change no multivariant playlist: its cache stays good.
        let bytes = part.data.len() as u64;
        let first = (open.msn, open.discontinuity);
        self.update_track(output, rendition, publish, first, |track, _, produced| {
            produced.parts += 1;
            produced.part_bytes += bytes;
            track.push_part(open, part)
        });
    }

    /// Changes a track under the lock; with `publish`, renders it outside, installs the
    /// render unless the track changed meanwhile (whoever changed it installs a newer
    /// one), then signals it. Without, the next published change renders both. `first`:
    /// the (msn, discontinuity) of what is added, which numbers a track made by it.
    fn update_track(
        &self,
        output: OutputKind,
        rendition: &str,
        publish: bool,
        first: (u64, bool),
        change: impl FnOnce(&mut Track, MediaTime, &mut Produced),
    ) {
        let key = (output, rendition.to_owned());
        let (snapshot, version) = {
            let mut guard = self.write();
            let st = &mut *guard;
            let (d, window, part) = (st.segment_duration, st.window, st.part_target);
            // A track that starts after others (an audio source that publishes late, or
            // is added while the engine runs) takes their discontinuity number at its first
            // segment, so that segment N carries the same number in every playlist
            // (RFC 8216bis §6.2.4; hls.js matches audio to video by it).
            let base = if st.tracks.contains_key(&key) {
                0
            } else {
                let (msn, flagged) = first;
                discontinuity_number_at(st, output, msn).map_or(st.discontinuity_base, |n| {
                    n.saturating_sub(u64::from(flagged))
                })
            };
            let track = st.tracks.entry(key.clone()).or_insert_with(|| {
                let mut t = Track::new(output, d, part);
                t.discontinuity_sequence = base;
                t
            });
            let produced = st.produced.entry(key.clone()).or_default();
            change(track, window, produced);
            if !publish {
                return;
            }
            let version = track.version;
            let reports = sibling_reports(st, &key);
            (st.tracks[&key].snapshot(reports), version)
        };
        self.install_playlist(&key, snapshot.render(), version);
    }

    fn install_playlist(&self, key: &(OutputKind, String), rendered: Rendered, version: u64) {
        let mut st = self.write();
        let Some(t) = st.tracks.get_mut(key) else {
            return;
        };
        if t.version != version {
            return;
        }
        t.rendered = Some(rendered);
        t.rendered_version = version;
        if let Some(tx) = st.signals.get(key) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    pub(crate) fn add_init(&self, rendition: &str, version: u64, data: Bytes) {
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

    pub(crate) fn add_extra_track(&self, spec: TrackSpec) {
        self.write().extra.push((spec, None));
        self.changed();
    }

    pub(crate) fn set_extra_codec(&self, rendition: &str, codec: String) {
        if let Some(t) = self
            .write()
            .extra
            .iter_mut()
            .find(|(t, _)| t.rendition == rendition)
        {
            t.1 = Some(codec);
        }
        self.changed();
    }

    /// Extra track `rendition` is no longer offered: gone from the multivariant playlists,
    /// and its playlists, segments and init segments from the store (404 from now on).
    pub(crate) fn remove_extra_track(&self, rendition: &str) {
        {
            let mut st = self.write();
            st.extra.retain(|(t, _)| t.rendition != rendition);
            st.tracks.retain(|(_, name), _| name != rendition);
            st.inits.remove(rendition);
        }
        self.changed();
    }

    /// An extra track's name, language or default changed.
    pub(crate) fn update_extra_track(&self, spec: TrackSpec) {
        if let Some(t) = self
            .write()
            .extra
            .iter_mut()
            .find(|(t, _)| t.rendition == spec.rendition)
        {
            t.0 = spec;
        }
        self.changed();
    }

    /// Whether `rendition` is one of the extra audio tracks.
    pub fn has_extra_track(&self, rendition: &str) -> bool {
        self.read()
            .extra
            .iter()
            .any(|(t, _)| t.rendition == rendition)
    }

    /// The discontinuity sequence number of the newest segment of any playlist: the
    /// playlists' `EXT-X-DISCONTINUITY-SEQUENCE` plus the discontinuities they list.
    pub fn last_discontinuity_number(&self) -> u64 {
        let st = self.read();
        st.tracks
            .values()
            .map(|t| {
                let listed = t.segments.iter().skip(t.listed_from);
                t.discontinuity_sequence + listed.filter(|s| s.discontinuity).count() as u64
            })
            .max()
            .unwrap_or(st.discontinuity_base)
    }

    /// Playlists made from now on start at this `EXT-X-DISCONTINUITY-SEQUENCE`.
    pub(crate) fn set_discontinuity_base(&self, base: u64) {
        self.write().discontinuity_base = base;
    }

    /// Undoes [`EngineOutput::finish`]: live again, the playlists without `EXT-X-ENDLIST`.
    pub(crate) fn reopen(&self) {
        {
            let mut st = self.write();
            st.live = true;
            st.tracks.values_mut().for_each(|t| t.ended = false);
        }
        self.changed();
    }

    pub(crate) fn finish(&self) {
        let snapshots: Vec<_> = {
            let mut st = self.write();
            st.live = false;
            st.tracks.values_mut().for_each(Track::end);
            st.tracks
                .iter()
                .map(|(k, t)| (k.clone(), t.snapshot(vec![]), t.version))
                .collect()
        };
        for (key, snapshot, version) in snapshots {
            self.install_playlist(&key, snapshot.render(), version);
        }
        self.changed();
    }
}

/// A distribution's `max_kbps`: variants whose configured bitrate (bits/s, video plus
/// audio) is above `cap` are left out, but the lowest is always kept. Configured, not
/// measured, bitrates decide: measured ones fluctuate, and a variant must not come and
/// go between playlist reloads.
fn keep_within_cap<T>(variants: &mut Vec<T>, cap: u64, configured: impl Fn(&T) -> u64) {
    let Some(lowest) = variants.iter().map(&configured).min() else {
        return;
    };
    if lowest > cap {
        // Nothing fits: keep only the lowest (the last of them, as sorted).
        let keep = variants
            .iter()
            .rposition(|v| configured(v) == lowest)
            .unwrap_or(0);
        let kept = variants.swap_remove(keep);
        *variants = vec![kept];
    } else {
        variants.retain(|v| configured(v) <= cap);
    }
}

/// `FRAME-RATE` as the nominal rate: an estimate from timestamps (29.995 from millisecond
/// FLV times) snaps to the standard rate within 0.5 % of it, else it is rounded to
/// three decimals.
fn nominal_frame_rate(fps: f64) -> f64 {
    const NOMINAL: [f64; 11] = [
        23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0, 100.0, 120.0,
    ];
    let closest = NOMINAL
        .iter()
        .copied()
        .min_by(|a, b| (a - fps).abs().total_cmp(&(b - fps).abs()))
        .unwrap_or(fps);
    if (closest - fps).abs() <= closest * 0.005 {
        closest
    } else {
        (fps * 1000.0).round() / 1000.0
    }
}

/// Where the other playlists of the same output stand (`EXT-X-RENDITION-REPORT`), by name.
fn sibling_reports(st: &State, key: &(OutputKind, String)) -> Vec<(String, crate::playlist::Last)> {
    if st.part_target.is_none() || key.0 != OutputKind::Cmaf {
        return vec![];
    }
    let mut reports: Vec<_> = st
        .tracks
        .iter()
        .filter(|(k, _)| k.0 == key.0 && k.1 != key.1)
        .filter_map(|(k, t)| Some((k.1.clone(), t.last()?)))
        .collect();
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MediaTime = sluice_core::time::NANOS_PER_SEC;

    fn seg(msn: u64, disc: bool) -> StoredSegment {
        StoredSegment {
            msn,
            duration: 2 * S,
            discontinuity: disc,
            init_version: Some(1),
            data: Some(Bytes::from_static(b"x")),
            program_date_time: None,
            parts: vec![],
        }
    }

    #[test]
    fn window_slides_and_counts_discontinuities() {
        let mut t = Track::new(OutputKind::Cmaf, 2 * S, None);
        for msn in 0..10 {
            t.push(seg(msn, msn == 2), 6 * S);
        }
        assert_eq!(t.listed().count(), 3);
        assert_eq!(t.segments.len(), 5);
        assert_eq!(t.listed().next().unwrap().msn, 7);
        assert_eq!(t.discontinuity_sequence, 1);
        let text = String::from_utf8(t.render_now().full.to_vec()).unwrap();
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
            None,
        );
        assert!(
            out.multivariant(OutputKind::Ts, None).is_none(),
            "no segment yet"
        );
        out.add_segment(OutputKind::Ts, "v", seg(0, false));
        let stale = out.generation.load(Ordering::Acquire) - 1;
        out.cache()
            .insert((OutputKind::Ts, None, None), (stale, None));
        let text = out
            .multivariant(OutputKind::Ts, None)
            .expect("live after a segment");
        assert!(String::from_utf8_lossy(&text).contains("v/index.m3u8"));
    }

    #[test]
    fn frame_rates_are_nominal() {
        assert_eq!(nominal_frame_rate(29.995), 30.0);
        assert_eq!(nominal_frame_rate(29.9701), 29.97);
        assert_eq!(nominal_frame_rate(59.93), 59.94);
        assert_eq!(nominal_frame_rate(25.04), 25.0);
        assert_eq!(nominal_frame_rate(12.5), 12.5);
        assert_eq!(nominal_frame_rate(15.0004), 15.0);
    }

    #[test]
    fn target_duration_never_changes() {
        let mut t = Track::new(OutputKind::Ts, 2 * S, None);
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
        let text = String::from_utf8(t.render_now().full.to_vec()).unwrap();
        assert!(text.contains("#EXT-X-TARGETDURATION:2"), "{text}");
    }

    #[test]
    fn bitrate_cap_keeps_what_fits_and_never_nothing() {
        let mut v = vec![3000, 1500, 800];
        keep_within_cap(&mut v, 2_000, |k| *k);
        assert_eq!(v, vec![1500, 800]);
        let mut v = vec![3000, 1500, 800];
        keep_within_cap(&mut v, 500, |k| *k);
        assert_eq!(v, vec![800]);
        let mut v: Vec<u64> = vec![];
        keep_within_cap(&mut v, 500, |k| *k);
        assert!(v.is_empty());
    }
}
