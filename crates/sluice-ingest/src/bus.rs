//! The channel bus: the bounded fan-out from a channel's live input to its
//! engines (and later relays and recorders).
//!
//! Several feeds may be attached to a channel (its ingests: a primary, backups, and the
//! slate when nothing else is live), one connection per ingest; one at a time, the
//! *owner*, feeds the engines. The others stand by, and take over at one of their video
//! keyframes when the owner is gone, when it has sent nothing for a segment duration, or
//! when they are preferred (a lower `priority`): a backup steps in within a segment of the
//! primary stopping, and the primary takes back when it returns. Each switch ends one
//! session and starts the next, so viewers see one `EXT-X-DISCONTINUITY` per switch.
//!
//! The owner's timestamps are mapped onto the channel timeline so that media time only
//! moves forward across reconnects and switches: a new session starts on the next grid
//! boundary after everything before it, so segment numbers derived from media time keep
//! increasing.
//!
//! The fan-out is a `tokio::sync::broadcast` ring: publishing never waits for a
//! subscriber. A subscriber that falls behind loses the oldest events, is told
//! so, and resumes at the next video keyframe (with the session's `Start` again).

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{
    AudioConfig, Frame, Id, MediaEvent, MediaTime, Throttle, TrackKind, VideoConfig,
};
use tokio::sync::broadcast;

/// Events a bus holds for slow subscribers before they lose the oldest.
/// At 30 fps video plus 47 AAC frames a second this is about 12 s of media.
pub const DEFAULT_BUS_CAPACITY: usize = 1024;

/// Gap assumed after the last frame of a session when placing the next one.
const SESSION_GAP: MediaTime = 40_000_000;

/// How long after the first keyframe a session waits for an audio configuration
/// before it starts without audio, and how many frames it holds meanwhile.
const AUDIO_CONFIG_WAIT: MediaTime = 1_000_000_000;
const AUDIO_CONFIG_WAIT_FRAMES: usize = 256;

/// Video timestamp steps beyond which a session is restarted (source clock reset or leap).
const MAX_CLOCK_STEP_BACK: MediaTime = 1_000_000_000;
const MAX_CLOCK_STEP_FORWARD: MediaTime = 10_000_000_000;
const NANOS: MediaTime = 1_000_000_000;
/// How far behind this node's clock a carried source timeline may be: a sending node's
/// timeline trails its wall clock by the time its channel spent without input.
pub const CARRY_WINDOW: MediaTime = 48 * 3600 * NANOS;
/// In a session that carries its source's timeline, a video step forward beyond the
/// segment duration (and at least this) is media lost on the way: a new session.
const CARRIED_MAX_STEP: MediaTime = 1_000_000_000;
/// Audio further than this from the video clock is dropped (a jumped timestamp), not
/// passed on to make every later frame look out of order downstream.
const MAX_AUDIO_SKEW: MediaTime = 10_000_000_000;
/// A source whose media lands further than this from where the main input is (beyond
/// its `offset_ms`) is placed again (see [`ChannelBus::new_source`]).
pub const SOURCE_MAX_DRIFT: MediaTime = 1_000_000_000;
/// A source's drift beyond this is logged with its estimate (at most every 10 s).
const SOURCE_DRIFT_LOGGED: MediaTime = 100_000_000;

/// A publisher that has sent no frame for this long may be replaced by a new
/// authorised publish on the same channel (an encoder reconnecting after a network
/// change while its old connection is half-open).
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// Media (audio) a publisher may send without video before it is refused: the
/// engines need video, and a channel must not sit on 503 forever.
const AUDIO_ONLY_LIMIT: MediaTime = 5_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("channel {0} already has a publisher")]
    AlreadyPublishing(Id),
    #[error("channel {0} is stopped")]
    Shut(Id),
}

/// Why a publisher may no longer feed its channel; its connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishEnded {
    #[error("replaced by a newer publish on the same channel")]
    Superseded,
    #[error("its ingest was changed or removed, or its channel stopped")]
    Removed,
    #[error("audio-only input is not supported: no video within 5 s of media")]
    NoVideo,
    #[error(
        "input at {measured_kbps} kbit/s over {RATE_WINDOW_SECS} s, above the ingest's max_kbps {max_kbps}"
    )]
    OverBitrate { measured_kbps: u32, max_kbps: u32 },
}

const ENDED_SUPERSEDED: u8 = 1;
const ENDED_REMOVED: u8 = 2;

/// The window an ingest's `max_kbps` is measured over: long enough that keyframes and an
/// encoder's start-up burst average out.
pub const RATE_WINDOW_SECS: u64 = 10;

/// An ingest's bitrate cap, measured on the bytes of the frames it sends, over the last
/// [`RATE_WINDOW_SECS`] seconds of wall-clock time (the first window counts from the
/// connection, as if it had sent nothing before).
#[derive(Debug)]
struct RateCap {
    max_kbps: u32,
    /// Bytes per second of wall-clock time, the last `RATE_WINDOW_SECS`.
    seconds: [u64; RATE_WINDOW_SECS as usize],
    current: u64,
}

impl RateCap {
    /// Counts `bytes` at `now_ms`; the measured kbit/s when over the cap.
    fn add(&mut self, now_ms: u64, bytes: u64) -> Option<u32> {
        let second = now_ms / 1000;
        let window = RATE_WINDOW_SECS;
        if second != self.current {
            // Seconds skipped (nothing sent) count as zero.
            for s in (self.current + 1)..=second.min(self.current + window) {
                self.seconds[(s % window) as usize] = 0;
            }
            self.current = second;
        }
        self.seconds[(second % window) as usize] += bytes;
        // Always over the whole window, so a start-up burst is averaged over it too.
        let total: u64 = self.seconds.iter().sum();
        let kbps = total * 8 / (window * 1000);
        (kbps > u64::from(self.max_kbps)).then(|| u32::try_from(kbps).unwrap_or(u32::MAX))
    }
}

/// How a feed is known to its channel: the ingest it comes from (one live connection
/// each) and its priority (lower is preferred).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    pub ingest: String,
    pub priority: u32,
    /// The id a publisher sent along (a push output's `tracking_id`), shown, never acted
    /// on.
    pub tracking_id: Option<String>,
}

impl FeedSpec {
    /// The slate: fills in when no ingest is live, and gives way to any.
    pub fn slate() -> Self {
        FeedSpec {
            ingest: "slate".into(),
            priority: u32::MAX,
            tracking_id: None,
        }
    }
}

impl Default for FeedSpec {
    fn default() -> Self {
        FeedSpec {
            ingest: String::new(),
            priority: 1,
            tracking_id: None,
        }
    }
}

/// A feed attached to the channel, as the bus keeps it.
struct Feed {
    id: u64,
    spec: FeedSpec,
    /// When it last sent a frame (ms since the bus's epoch).
    last_frame_ms: Arc<AtomicU64>,
    /// Set (to `ENDED_SUPERSEDED` or `ENDED_REMOVED`) when it may feed no more.
    replaced: Arc<AtomicU8>,
}

#[derive(Debug, Default)]
pub struct BusStats {
    pub sessions: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Events subscribers lost by lagging.
    pub events_dropped: AtomicU64,
    /// Audio frames dropped for a timestamp far from the video clock.
    pub audio_jumps: AtomicU64,
    /// Publishers replaced while stale.
    pub takeovers: AtomicU64,
    /// Switches from one feed to another (failover, return of a preferred ingest, slate).
    pub switches: AtomicU64,
}

struct BusState {
    next_publisher: u64,
    next_session: u64,
    /// Where the next session starts on the channel timeline.
    next_start: MediaTime,
    /// The live session's `Start`, replayed to late or lagging subscribers.
    current_start: Option<MediaEvent>,
    /// Every attached feed, the owner among them.
    feeds: Vec<Feed>,
    /// Feeds attached so far, by ingest id (configured ids only: bounded).
    connects: std::collections::BTreeMap<String, u64>,
    /// Just past the newest media any session has sent (`None`: none yet). A session
    /// that carries its source's timeline keeps it only from here on.
    sent_until: Option<MediaTime>,
}

pub struct ChannelBus {
    channel: Id,
    grid: MediaTime,
    tx: broadcast::Sender<MediaEvent>,
    state: Mutex<BusState>,
    /// The id of the publisher that owns the channel (0: none), read without the lock on
    /// every frame; changed only under the state lock.
    owner: AtomicU64,
    /// When the owner last sent a frame (ms since `epoch`).
    last_frame_ms: AtomicU64,
    /// An owner silent this long is taken over by a live standby feed.
    failover_after_ms: u64,
    /// Highest pts of the live session on the channel timeline (for a takeover).
    head: AtomicI64,
    epoch: Instant,
    /// Where the channel timeline stood at `epoch` (the wall clock, in a server): a
    /// carried source timeline is believed only near it.
    clock_base: MediaTime,
    /// Set once the channel is stopped: no feed may attach (see [`ChannelBus::shut`]).
    shut: std::sync::atomic::AtomicBool,
    /// The bus of a channel's extra source (an audio track or a camera angle): the
    /// channel it follows.
    follows: Option<Follow>,
    pub stats: BusStats,
}

/// What a source's bus places its media by: the channel's bus (where its live input is)
/// and the source's fixed offset.
struct Follow {
    main: Arc<ChannelBus>,
    offset: MediaTime,
    /// A camera angle: its video is placed (sessions start with `Start`, at a video
    /// keyframe, without audio); otherwise its audio is (sessions start with
    /// `TrackStart`).
    video: bool,
}

impl ChannelBus {
    /// `grid`: sessions start on multiples of it (the channel's segment duration).
    /// `timeline_start`: where the first session starts (rounded up to the grid). A server
    /// anchors it to the wall clock, so that segment numbers (derived from media time) are
    /// not reused after a restart while caches still hold the old segments as immutable.
    pub fn new(
        channel: Id,
        grid: MediaTime,
        capacity: usize,
        timeline_start: MediaTime,
    ) -> Arc<Self> {
        Self::build(channel, grid, capacity, timeline_start, None)
    }

    /// The bus of one of `main`'s extra audio sources (its publishers attach with the
    /// source's id as their ingest, as logs show it). Its publisher sends audio only
    /// (video is ignored); each of its sessions is placed where `main`'s live input is
    /// when the source's first frame arrives, plus `offset_ms`, and announced with
    /// [`MediaEvent::TrackStart`]. Nothing is placed while `main` has no live session. A
    /// source whose media drifts more than [`SOURCE_MAX_DRIFT`] from where the main
    /// input is (a source clock running fast or slow, or the main input reconnected) is
    /// placed again; smaller drifts are estimated and logged.
    pub fn new_source(main: &Arc<ChannelBus>, offset_ms: i64, capacity: usize) -> Arc<Self> {
        Self::follower(main, offset_ms, capacity, false)
    }

    /// The bus of one of `main`'s camera angles: as [`ChannelBus::new_source`], with video
    /// instead of audio. Its publisher's audio is ignored; each session starts with a
    /// [`MediaEvent::Start`] (video only) at a video keyframe, placed where `main`'s live
    /// input is when that keyframe arrives, plus `offset_ms`. Engines read it as they read
    /// a channel's bus, and cut it on the same grid, so its segment N is the main
    /// stream's segment N.
    pub fn new_angle(main: &Arc<ChannelBus>, offset_ms: i64, capacity: usize) -> Arc<Self> {
        Self::follower(main, offset_ms, capacity, true)
    }

    fn follower(main: &Arc<ChannelBus>, offset_ms: i64, capacity: usize, video: bool) -> Arc<Self> {
        let follow = Follow {
            main: main.clone(),
            offset: offset_ms.clamp(-3_000, 3_000) * 1_000_000,
            video,
        };
        // Logs name the channel, and the source as the ingest (its feed's name).
        Self::build(main.channel.clone(), main.grid, capacity, 0, Some(follow))
    }

    fn build(
        channel: Id,
        grid: MediaTime,
        capacity: usize,
        timeline_start: MediaTime,
        follows: Option<Follow>,
    ) -> Arc<Self> {
        let grid = grid.max(0);
        let (tx, _) = broadcast::channel(capacity.max(16));
        Arc::new(ChannelBus {
            channel,
            grid,
            tx,
            state: Mutex::new(BusState {
                next_publisher: 1,
                next_session: 1,
                next_start: round_up(timeline_start.max(0), grid),
                current_start: None,
                feeds: Vec::new(),
                connects: Default::default(),
                sent_until: None,
            }),
            owner: AtomicU64::new(0),
            last_frame_ms: AtomicU64::new(0),
            // About one segment; at least a second (frames come in bursts).
            failover_after_ms: u64::try_from(grid / 1_000_000).unwrap_or(0).max(1000),
            head: AtomicI64::new(i64::MIN),
            epoch: Instant::now(),
            clock_base: timeline_start.max(0),
            shut: std::sync::atomic::AtomicBool::new(false),
            follows,
            stats: BusStats::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_frame_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn channel(&self) -> &Id {
        &self.channel
    }

    /// The grid sessions start on (the channel's segment duration).
    pub fn grid(&self) -> MediaTime {
        self.grid
    }

    pub fn is_publishing(&self) -> bool {
        self.owner.load(Ordering::Relaxed) != 0
    }

    /// The owner's ingest, and whether it is live (it sent a frame within the failover
    /// time); `None` when no feed owns the channel.
    pub fn owner(&self) -> Option<(String, bool)> {
        let st = self.lock();
        let owner = self.owner.load(Ordering::Relaxed);
        let feed = st.feeds.iter().find(|f| f.id == owner)?;
        let idle = self
            .now_ms()
            .saturating_sub(self.last_frame_ms.load(Ordering::Relaxed));
        Some((feed.spec.ingest.clone(), idle <= self.failover_after_ms))
    }

    /// The tracking id the owner's publisher sent, if any.
    pub fn owner_tracking_id(&self) -> Option<String> {
        let st = self.lock();
        let owner = self.owner.load(Ordering::Relaxed);
        let feed = st.feeds.iter().find(|f| f.id == owner)?;
        feed.spec.tracking_id.clone()
    }

    /// Whether some feed other than the slate owns the channel and is live.
    pub fn has_live_ingest(&self) -> bool {
        self.owner()
            .is_some_and(|(ingest, live)| live && ingest != FeedSpec::slate().ingest)
    }

    /// Closes the channel (its slate timed out): the live session, if any, ends, and the
    /// engines end their playlists until a session starts again.
    pub fn close(&self) {
        let mut st = self.lock();
        self.end_current(&mut st);
        self.send(MediaEvent::Close);
    }

    /// Shuts the bus for good (its channel was stopped or removed): every feed ends, and
    /// no new one is accepted.
    pub fn shut(&self) {
        self.shut.store(true, Ordering::Relaxed);
        self.end_feeds(None);
    }

    /// Ends the feeds of ingest `ingest` (every feed when `None`): their publishers learn
    /// [`PublishEnded::Removed`] and their connections close. For a configuration change
    /// that removes or changes an ingest, or stops the channel.
    pub fn end_feeds(&self, ingest: Option<&str>) {
        let st = self.lock();
        for f in &st.feeds {
            if ingest.is_none_or(|i| f.spec.ingest == i) {
                let _ = f.replaced.compare_exchange(
                    0,
                    ENDED_REMOVED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// How long a silent owner is kept before a standby feed takes over.
    pub fn failover_after(&self) -> Duration {
        Duration::from_millis(self.failover_after_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        // A panic while holding this lock cannot leave the state half-written
        // (every update is a plain assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a publisher as the channel's one feed (see [`ChannelBus::begin_feed`]).
    pub fn begin_publish(
        self: &Arc<Self>,
        source: impl Into<String>,
    ) -> Result<Publisher, BusError> {
        self.begin_feed(source, FeedSpec::default(), STALE_AFTER)
    }

    /// [`ChannelBus::begin_publish`] with another staleness threshold.
    pub fn begin_publish_stale_after(
        self: &Arc<Self>,
        source: impl Into<String>,
        stale_after: Duration,
    ) -> Result<Publisher, BusError> {
        self.begin_feed(source, FeedSpec::default(), stale_after)
    }

    /// Attaches a feed of ingest `spec.ingest`. Refused while another connection of the
    /// same ingest is live, unless that one has sent nothing for `stale_after`: then the
    /// new one replaces it (its session ends, and the old publisher learns it was
    /// [`PublishEnded::Superseded`]). The feed owns the channel at once when nothing
    /// does; otherwise it stands by (see the module comment).
    pub fn begin_feed(
        self: &Arc<Self>,
        source: impl Into<String>,
        spec: FeedSpec,
        stale_after: Duration,
    ) -> Result<Publisher, BusError> {
        let source = source.into();
        let mut st = self.lock();
        if self.shut.load(Ordering::Relaxed) {
            return Err(BusError::Shut(self.channel.clone()));
        }
        let now = self.now_ms();
        if let Some(pos) = st.feeds.iter().position(|f| f.spec.ingest == spec.ingest) {
            let old = &st.feeds[pos];
            let idle = now.saturating_sub(old.last_frame_ms.load(Ordering::Relaxed));
            // A feed already told to end (its ingest changed) is gone, however recent.
            let ended = old.replaced.load(Ordering::Relaxed) != 0;
            if !ended && Duration::from_millis(idle) < stale_after {
                return Err(BusError::AlreadyPublishing(self.channel.clone()));
            }
            if !ended {
                self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %self.channel, idle_ms = idle, old_publisher = old.id, %source, "publisher sent nothing; a new publish takes over");
            }
            old.replaced.store(ENDED_SUPERSEDED, Ordering::Relaxed);
            if self.owner.load(Ordering::Relaxed) == old.id {
                self.end_current(&mut st);
                self.owner.store(0, Ordering::Relaxed);
            }
            st.feeds.remove(pos);
        }
        let id = st.next_publisher;
        st.next_publisher += 1;
        // The slate is no publisher: its starts are switches, not connections.
        if spec != FeedSpec::slate() {
            *st.connects.entry(spec.ingest.clone()).or_default() += 1;
        }
        let last_frame_ms = Arc::new(AtomicU64::new(now));
        let replaced = Arc::new(AtomicU8::new(0));
        st.feeds.push(Feed {
            id,
            spec: spec.clone(),
            last_frame_ms: last_frame_ms.clone(),
            replaced: replaced.clone(),
        });
        let mut session = 0;
        if self.owner.load(Ordering::Relaxed) == 0 {
            self.owner.store(id, Ordering::Relaxed);
            self.head.store(i64::MIN, Ordering::Relaxed);
            self.touch();
            session = self.new_session(&mut st);
        }
        Ok(Publisher {
            bus: self.clone(),
            id,
            source,
            spec,
            last_frame_ms,
            replaced,
            session,
            video: None,
            audio: None,
            offset: None,
            start: st.next_start,
            max_pts: None,
            waiting: Vec::new(),
            last_video_dts: None,
            audio_before_video: None,
            ended: None,
            audio_jump_log: Throttle::default(),
            rate: None,
            carry: false,
            carried: false,
            lead: None,
            drift_log: Throttle::default(),
        })
    }

    /// Ends the live session (under the state lock): the next one starts on the grid
    /// line after everything sent so far.
    fn end_current(&self, st: &mut BusState) {
        if let Some(MediaEvent::Start { session, .. } | MediaEvent::TrackStart { session, .. }) =
            st.current_start.take()
        {
            let head = self.head.load(Ordering::Relaxed);
            if head != i64::MIN {
                st.next_start =
                    round_up(head.saturating_add(SESSION_GAP), self.grid).max(st.next_start);
                let end = head.saturating_add(SESSION_GAP);
                st.sent_until = Some(st.sent_until.map_or(end, |s| s.max(end)));
            }
            self.send(MediaEvent::End { session });
        }
    }

    fn new_session(&self, st: &mut BusState) -> u64 {
        let session = st.next_session;
        st.next_session += 1;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        session
    }

    /// Feeds attached so far, by ingest: a publisher's first connection and every
    /// reconnection (a pull ingest's too).
    pub fn connects(&self) -> Vec<(String, u64)> {
        self.lock()
            .connects
            .iter()
            .map(|(i, n)| (i.clone(), *n))
            .collect()
    }

    pub fn subscribe(self: &Arc<Self>) -> BusReceiver {
        let rx = self.tx.subscribe();
        let replay = self.lock().current_start.clone();
        BusReceiver {
            rx,
            bus: self.clone(),
            replay,
            need_keyframe: true,
            dropped: 0,
        }
    }

    fn send(&self, ev: MediaEvent) {
        // No receivers is fine: nothing is listening yet.
        let _ = self.tx.send(ev);
    }
}

/// One ingest connection's feed of a channel. Dropping it ends its session, if it owns
/// the channel.
pub struct Publisher {
    bus: Arc<ChannelBus>,
    id: u64,
    source: String,
    spec: FeedSpec,
    last_frame_ms: Arc<AtomicU64>,
    replaced: Arc<AtomicU8>,
    session: u64,
    video: Option<VideoConfig>,
    audio: Option<AudioConfig>,
    /// Added to source timestamps; set at the first video keyframe.
    offset: Option<MediaTime>,
    start: MediaTime,
    max_pts: Option<MediaTime>,
    /// Frames held from the first keyframe while the audio configuration is still unknown.
    waiting: Vec<Frame>,
    /// Last video dts on the source's clock, to notice it jumping (a source's bus, which
    /// carries audio alone: the last audio dts).
    last_video_dts: Option<MediaTime>,
    /// First audio dts seen while no session has started (no video yet).
    audio_before_video: Option<MediaTime>,
    ended: Option<PublishEnded>,
    audio_jump_log: Throttle,
    rate: Option<RateCap>,
    /// The source sends another node's channel timeline (see [`Publisher::carry_timeline`]).
    carry: bool,
    /// The live session keeps it.
    carried: bool,
    /// A source's publisher: how far ahead of the main input its media lands (beyond its
    /// offset), smoothed; and when that was last logged.
    lead: Option<MediaTime>,
    drift_log: Throttle,
}

impl Publisher {
    /// The source's timestamps are another Sluice node's channel timeline (a relay whose
    /// stream carries the timeline anchor): each session keeps them as they are, so this
    /// channel's segments carry the source's numbers and intervals, as long as they lie
    /// past everything the channel has sent (always after a restart). A source behind
    /// that (its node's timeline went back) is placed like any other.
    pub fn carry_timeline(&mut self) {
        self.carry = true;
    }

    /// Caps this feed's input bitrate (see [`RATE_WINDOW_SECS`]); 0: no cap. Over it, the
    /// publisher ends with [`PublishEnded::OverBitrate`] and the shell closes it.
    pub fn set_max_kbps(&mut self, max_kbps: u32) {
        let now = self.bus.now_ms();
        self.rate = (max_kbps > 0).then_some(RateCap {
            max_kbps,
            seconds: [0; RATE_WINDOW_SECS as usize],
            current: now / 1000,
        });
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn channel(&self) -> &Id {
        &self.bus.channel
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn has_started(&self) -> bool {
        self.offset.is_some()
    }

    /// Set once this publisher may no longer feed the channel: the shell closes the
    /// connection with this reason. Every call is a no-op from then on.
    pub fn ended(&mut self) -> Option<PublishEnded> {
        if self.ended.is_none() {
            self.ended = match self.replaced.load(Ordering::Relaxed) {
                ENDED_SUPERSEDED => Some(PublishEnded::Superseded),
                ENDED_REMOVED => Some(PublishEnded::Removed),
                _ => None,
            };
        }
        self.ended
    }

    /// It publishes to a channel's audio source (audio alone is its media), not to a
    /// channel or a camera angle (which need video).
    pub fn is_audio_source(&self) -> bool {
        self.bus.follows.as_ref().is_some_and(|f| !f.video)
    }

    /// Whether this feed owns the channel now.
    pub fn is_owner(&self) -> bool {
        self.bus.owner.load(Ordering::Relaxed) == self.id
    }

    pub fn spec(&self) -> &FeedSpec {
        &self.spec
    }

    /// Sets the video configuration. A different one mid-session (the encoder changed
    /// resolution or profile) ends the session; the next starts at the next keyframe.
    pub fn video_config(&mut self, cfg: VideoConfig) {
        if self.ended().is_some() {
            return;
        }
        let changed = self.video.as_ref() != Some(&cfg);
        self.video = Some(cfg);
        if changed && self.offset.is_some() {
            self.restart("video configuration changed");
        }
    }

    /// Sets the audio configuration; a different one mid-session starts a new session.
    pub fn audio_config(&mut self, cfg: AudioConfig) {
        if self.ended().is_some() || self.bus.follows.as_ref().is_some_and(|f| f.video) {
            return; // a camera angle's audio is not used
        }
        let changed = self.audio.as_ref() != Some(&cfg);
        self.audio = Some(cfg);
        if changed && self.offset.is_some() {
            self.restart("audio configuration changed");
        }
    }

    /// Ends the live session, if it started, and places the next one on the timeline.
    fn end_session(&mut self) {
        if self.offset.take().is_none() {
            return;
        }
        let mut st = self.bus.lock();
        if self.bus.owner.load(Ordering::Relaxed) != self.id {
            return; // another feed took over, and ended this session itself
        }
        let end = self
            .max_pts
            .unwrap_or(self.start)
            .saturating_add(SESSION_GAP);
        st.next_start = round_up(end, self.bus.grid).max(st.next_start);
        st.sent_until = Some(st.sent_until.map_or(end, |s| s.max(end)));
        st.current_start = None;
        drop(st);
        self.bus.send(MediaEvent::End {
            session: self.session,
        });
        tracing::info!(channel = %self.bus.channel, ingest = %self.spec.ingest, session = self.session, "session ended");
    }

    /// Ends the session and prepares a new one (same publisher) from the next keyframe:
    /// for a codec change or a clock jump, which downstream handles as a discontinuity.
    fn restart(&mut self, why: &str) {
        tracing::info!(channel = %self.bus.channel, ingest = %self.spec.ingest, session = self.session, why, "input changed; new session");
        self.end_session();
        let mut st = self.bus.lock();
        self.session = self.bus.new_session(&mut st);
        self.start = st.next_start;
        drop(st);
        self.max_pts = None;
        self.last_video_dts = None;
        self.waiting.clear();
    }

    /// Publishes a frame whose pts/dts are on the source's own clock (ns).
    ///
    /// The session starts at the first video keyframe. Encoders send codec
    /// configurations first, but a source may only know its audio configuration
    /// after its first video frame: frames are then held (bounded, up to one
    /// second) until it arrives, or the session starts without audio.
    pub fn push(&mut self, frame: Frame) {
        if self.ended().is_some() {
            return;
        }
        let now = self.bus.now_ms();
        self.last_frame_ms.store(now, Ordering::Relaxed);
        if let Some(rate) = self.rate.as_mut()
            && let Some(measured_kbps) = rate.add(now, frame.data.len() as u64)
        {
            let max_kbps = rate.max_kbps;
            tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, source = %self.source, measured_kbps, max_kbps, "input above the ingest's max_kbps; closing it");
            self.ended = Some(PublishEnded::OverBitrate {
                measured_kbps,
                max_kbps,
            });
            return;
        }
        if self.bus.follows.is_some() {
            self.push_to_source(frame);
            return;
        }
        if !self.is_owner() && !self.stand_by(&frame) {
            return;
        }
        self.bus.touch();
        if self.offset.is_some() {
            self.forward(frame);
            return;
        }
        if frame.track == TrackKind::Audio && self.waiting.is_empty() {
            // No session yet: audio alone is held nowhere, but is watched, so that an
            // audio-only publisher is refused instead of holding the channel.
            let first = *self.audio_before_video.get_or_insert(frame.dts);
            if frame.dts.saturating_sub(first) >= AUDIO_ONLY_LIMIT {
                tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, source = %self.source, "no video after 5 s of audio; refusing the publisher");
                self.ended = Some(PublishEnded::NoVideo);
            }
            return;
        }
        if self.video.is_none() {
            return;
        }
        if self.waiting.is_empty() && (frame.track != TrackKind::Video || !frame.keyframe) {
            return;
        }
        let first_dts = self.waiting.first().map_or(frame.dts, |f| f.dts);
        let waited_enough = frame.dts.saturating_sub(first_dts) >= AUDIO_CONFIG_WAIT
            || self.waiting.len() >= AUDIO_CONFIG_WAIT_FRAMES;
        self.waiting.push(frame);
        if self.audio.is_some() || waited_enough {
            self.begin(first_dts);
        }
    }

    /// A frame for a source's bus (see [`ChannelBus::new_source`]).
    fn push_to_source(&mut self, mut frame: Frame) {
        let Some(follow) = self.bus.follows.as_ref() else {
            return;
        };
        let (video, offset) = (follow.video, follow.offset);
        let main_head = follow.main.head.load(Ordering::Relaxed);
        let wanted = if video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        if frame.track != wanted || !self.is_owner() {
            return;
        }
        let configured = if video {
            self.video.is_some()
        } else {
            self.audio.is_some()
        };
        if !configured {
            return;
        }
        self.bus.touch();
        if let Some(last) = self.last_video_dts
            && self.offset.is_some()
            && (frame.dts < last.saturating_sub(MAX_CLOCK_STEP_BACK)
                || frame.dts > last.saturating_add(MAX_CLOCK_STEP_FORWARD))
        {
            self.restart("timestamps jumped");
        }
        if self.offset.is_some()
            && main_head != i64::MIN
            && let Some(lead) = self.lead
            && lead.saturating_abs() > SOURCE_MAX_DRIFT
        {
            tracing::warn!(channel = %self.bus.channel, lead_ms = lead / 1_000_000, "source too far from the main input; placed again");
            self.restart("source drifted from the main input");
        }
        let placement = match self.offset {
            Some(o) => o,
            None => {
                if main_head == i64::MIN {
                    return; // nothing to place it on until the main input is live
                }
                if video && !frame.keyframe {
                    return; // an angle's session starts at a keyframe
                }
                let start = main_head.saturating_add(offset);
                // Video by its decode time (its first frame decodes first), as a
                // channel's session is placed; audio by its presentation time.
                let first = if video { frame.dts } else { frame.pts };
                let o = start.saturating_sub(first);
                self.start = start;
                self.offset = Some(o);
                self.lead = None;
                let ev = match (video, self.video.clone(), self.audio.clone()) {
                    (true, Some(video), _) => MediaEvent::Start {
                        session: self.session,
                        video,
                        audio: None,
                        carried: false,
                    },
                    (false, _, Some(audio)) => MediaEvent::TrackStart {
                        session: self.session,
                        audio,
                    },
                    _ => return, // checked above
                };
                self.bus.lock().current_start = Some(ev.clone());
                self.bus.send(ev);
                tracing::info!(channel = %self.bus.channel, ingest = %self.spec.ingest, session = self.session, source = %self.source, start_ns = start, "source session started");
                o
            }
        };
        self.last_video_dts = Some(frame.dts);
        frame.pts = frame.pts.saturating_add(placement);
        frame.dts = frame.dts.saturating_add(placement);
        if main_head != i64::MIN {
            // Where this frame lands against where the main input is now, smoothed over
            // about a hundred frames (both arrive in bursts).
            let now = frame.pts.saturating_sub(main_head).saturating_sub(offset);
            let lead = self.lead.map_or(now, |l| l + (now - l) / 128);
            self.lead = Some(lead);
            if lead.saturating_abs() > SOURCE_DRIFT_LOGGED
                && let Some(suppressed) = self.drift_log.hit_now()
            {
                tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, lead_ms = lead / 1_000_000, suppressed, "source drifts from the main input (its clock, or a fixed delay: set offset_ms); estimate");
            }
        }
        self.send_placed(frame);
    }

    /// Sends a frame already placed on the channel's timeline, and counts it.
    fn send_placed(&mut self, frame: Frame) {
        self.max_pts = Some(self.max_pts.map_or(frame.pts, |m| m.max(frame.pts)));
        self.bus.head.fetch_max(frame.pts, Ordering::Relaxed);
        self.bus.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        self.bus
            .stats
            .bytes_in
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        self.bus.send(MediaEvent::Frame(frame));
    }

    /// A frame while another feed owns the channel. Returns true when this feed has just
    /// taken over, at this frame (a video keyframe).
    fn stand_by(&mut self, frame: &Frame) -> bool {
        if self.offset.is_some() || !self.waiting.is_empty() {
            // It owned the channel until another feed took over (and ended its session).
            self.offset = None;
            self.waiting.clear();
            self.max_pts = None;
            self.last_video_dts = None;
        }
        if frame.track != TrackKind::Video || !frame.keyframe || self.video.is_none() {
            return false;
        }
        let mut st = self.bus.lock();
        let owner = self.bus.owner.load(Ordering::Relaxed);
        let current = st.feeds.iter().find(|f| f.id == owner);
        let idle = self
            .bus
            .now_ms()
            .saturating_sub(self.bus.last_frame_ms.load(Ordering::Relaxed));
        let reason = match current {
            None => "no feed owns the channel",
            Some(c) if c.spec.priority > self.spec.priority => "a preferred ingest is live",
            Some(_) if idle > self.bus.failover_after_ms => "the live ingest stopped sending",
            Some(_) => return false,
        };
        let from = current.map_or(String::new(), |c| c.spec.ingest.clone());
        self.bus.end_current(&mut st);
        self.bus.owner.store(self.id, Ordering::Relaxed);
        self.bus.head.store(i64::MIN, Ordering::Relaxed);
        self.session = self.bus.new_session(&mut st);
        self.start = st.next_start;
        drop(st);
        self.bus.stats.switches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(channel = %self.bus.channel, from = %from, to = %self.spec.ingest, reason, idle_ms = idle, "ingest switch");
        true
    }

    fn begin(&mut self, first_dts: MediaTime) {
        let Some(video) = self.video.clone() else {
            return;
        };
        let sent_until = self.bus.lock().sent_until;
        // A carried timeline must lie near this node's clock (within CARRY_WINDOW behind,
        // a minute ahead): whoever holds a key cannot move the channel's numbering years
        // away, nor back onto numbers served before a restart beyond the window.
        let now = self
            .bus
            .clock_base
            .saturating_add(i64::try_from(self.bus.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX));
        let near = first_dts >= now.saturating_sub(CARRY_WINDOW)
            && first_dts <= now.saturating_add(60 * NANOS);
        let carried = self.carry && near && sent_until.is_none_or(|s| first_dts >= s);
        self.carried = carried;
        if carried {
            self.start = first_dts;
        } else if self.carry && !near {
            tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, source_ns = first_dts, clock_ns = now, "the source's timeline is far from this node's clock; not carried, numbering differs from the source's");
        } else if self.carry {
            tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, source_ns = first_dts, channel_ns = sent_until.unwrap_or_default(), "the source's timeline is behind this channel's; numbering now differs from the source's");
        }
        self.offset = Some(self.start.saturating_sub(first_dts));
        self.audio_before_video = None;
        let start = MediaEvent::Start {
            session: self.session,
            video,
            audio: self.audio.clone(),
            carried,
        };
        self.bus.lock().current_start = Some(start.clone());
        self.bus.send(start);
        tracing::info!(channel = %self.bus.channel, ingest = %self.spec.ingest, session = self.session, source = %self.source, start_ns = self.start, audio = self.audio.is_some(), "session started");
        for f in std::mem::take(&mut self.waiting) {
            self.forward(f);
        }
    }

    fn forward(&mut self, mut frame: Frame) {
        let Some(offset) = self.offset else { return };
        if frame.track == TrackKind::Video {
            // An encoder that resets or leaps its clock without re-publishing: start over
            // rather than feed the packager timestamps that go backwards or skip ahead.
            // A carried timeline that skips (media lost on the way from the source node)
            // starts a new session there, so that engines number across the hole from
            // media time (as gaps) as the source node did, not on by one.
            let max_forward = if self.carried {
                self.bus.grid.max(CARRIED_MAX_STEP)
            } else {
                MAX_CLOCK_STEP_FORWARD
            };
            if let Some(last) = self.last_video_dts
                && (frame.dts < last.saturating_sub(MAX_CLOCK_STEP_BACK)
                    || frame.dts > last.saturating_add(max_forward))
            {
                self.restart("timestamps jumped");
                self.push(frame);
                return;
            }
            self.last_video_dts = Some(frame.dts);
        }
        if frame.track == TrackKind::Audio {
            if self.audio.is_none() {
                return;
            }
            // Judged against the video clock: one audio frame with a jumped timestamp
            // is dropped on its own, not taken as the new "latest" audio downstream.
            if let Some(video) = self.last_video_dts
                && (frame.dts.saturating_sub(video)).saturating_abs() > MAX_AUDIO_SKEW
            {
                self.bus.stats.audio_jumps.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.audio_jump_log.hit_now() {
                    tracing::warn!(channel = %self.bus.channel, ingest = %self.spec.ingest, audio_ms = frame.dts / 1_000_000, video_ms = video / 1_000_000, suppressed, "audio timestamp far from video; frame dropped");
                }
                return;
            }
        }
        frame.pts = frame.pts.saturating_add(offset);
        frame.dts = frame.dts.saturating_add(offset);
        if frame.dts < self.start.saturating_sub(SESSION_GAP) {
            return;
        }
        self.send_placed(frame);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.ended() == Some(PublishEnded::Superseded) {
            return; // its feed was replaced (and removed) by a new connection
        }
        self.end_session();
        // Under the state lock, as `begin_feed` claims it.
        let mut st = self.bus.lock();
        st.feeds.retain(|f| f.id != self.id);
        if self.bus.owner.load(Ordering::Relaxed) == self.id {
            self.bus.owner.store(0, Ordering::Relaxed);
        }
    }
}

/// `t` rounded up to a multiple of `grid` (unchanged when `grid` is 0).
fn round_up(t: MediaTime, grid: MediaTime) -> MediaTime {
    if grid > 0 {
        t.saturating_add(grid - 1)
            .div_euclid(grid)
            .saturating_mul(grid)
    } else {
        t
    }
}

impl sluice_core::MediaSource for BusReceiver {
    async fn recv(&mut self) -> Option<MediaEvent> {
        BusReceiver::recv(self).await
    }
}

/// A subscription to a channel bus.
pub struct BusReceiver {
    rx: broadcast::Receiver<MediaEvent>,
    bus: Arc<ChannelBus>,
    replay: Option<MediaEvent>,
    need_keyframe: bool,
    dropped: u64,
}

impl BusReceiver {
    /// The next event already sent, if any (tests).
    #[cfg(test)]
    fn try_recv_for_test(&mut self) -> Option<MediaEvent> {
        if let Some(start) = self.replay.take() {
            return Some(start);
        }
        self.rx.try_recv().ok()
    }

    /// Events this subscriber lost by falling behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next event; `None` once the bus is gone.
    ///
    /// After a lag (or on joining mid-session) this yields the session's `Start`
    /// and then skips to the next video keyframe, so a consumer always sees a
    /// decodable stream.
    pub async fn recv(&mut self) -> Option<MediaEvent> {
        loop {
            if let Some(start) = self.replay.take() {
                self.need_keyframe = true;
                return Some(start);
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    if let Some(ev) = self.filter(ev) {
                        return Some(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.dropped += n;
                    self.bus
                        .stats
                        .events_dropped
                        .fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(channel = %self.bus.channel, lost = n, "bus subscriber lagged; resuming at next keyframe");
                    self.replay = self.bus.lock().current_start.clone();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn filter(&mut self, ev: MediaEvent) -> Option<MediaEvent> {
        match &ev {
            MediaEvent::Start { .. } | MediaEvent::TrackStart { .. } => {
                self.need_keyframe = true;
                Some(ev)
            }
            MediaEvent::End { .. } | MediaEvent::Close => Some(ev),
            MediaEvent::Frame(f) => {
                if self.need_keyframe {
                    // An audio source's bus carries audio alone: every AAC frame is a
                    // start. A camera angle's, video alone.
                    let audio_source = self.bus.follows.as_ref().is_some_and(|f| !f.video);
                    let start = f.track == TrackKind::Video || audio_source;
                    if start && f.keyframe {
                        self.need_keyframe = false;
                    } else {
                        return None;
                    }
                }
                Some(ev)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use sluice_core::codec::testdata::AVCC_720P as AVCC;

    fn video(ms: i64, key: bool) -> Frame {
        Frame {
            track: TrackKind::Video,
            pts: ms * 1_000_000,
            dts: ms * 1_000_000,
            keyframe: key,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        }
    }

    /// The codec configurations an encoder sends first: 720p H.264, AAC 48 kHz stereo.
    fn configure(p: &mut Publisher) {
        p.video_config(VideoConfig::from_avcc(Bytes::from_static(AVCC)).unwrap());
        p.audio_config(AudioConfig::aac_lc(48_000, 2));
    }

    fn bus() -> Arc<ChannelBus> {
        ChannelBus::new(Id::new("c").unwrap(), 2_000_000_000, 64, 0)
    }

    /// A relay's source timeline is kept as it is (sessions marked carried), a skip in it
    /// starts a new carried session, and a source behind what the channel sent is placed
    /// like any other (not carried).
    #[tokio::test]
    async fn a_carried_timeline_is_kept_and_a_skip_is_a_new_session() {
        let bus = ChannelBus::new(Id::new("c").unwrap(), 2_000_000_000, 256, 50_000_000_000);
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("relay").unwrap();
        p.carry_timeline();
        configure(&mut p);
        // Before the bus's own timeline start (50 s): kept all the same.
        for i in 0..30 {
            p.push(video(20_000 + i * 33, i == 0));
        }
        let Some(MediaEvent::Start { carried, .. }) = rx.recv().await else {
            panic!()
        };
        assert!(carried);
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(f.pts, 20_000_000_000);
        // 5 s lost on the way: a new session at the source's time, carried.
        p.push(video(26_000, true));
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv_for_test()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, MediaEvent::End { session: 1 }))
        );
        assert!(events.iter().any(|e| matches!(
            e,
            MediaEvent::Start {
                session: 2,
                carried: true,
                ..
            }
        )));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, MediaEvent::Frame(f) if f.pts == 26_000_000_000))
        );
        drop(p);
        // A source whose timeline went back: placed like any other source, on the
        // channel's own timeline (never below where it started: 50 s), not carried.
        let mut p = bus.begin_publish("relay").unwrap();
        p.carry_timeline();
        configure(&mut p);
        p.push(video(10_000, true));
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv_for_test()).collect();
        assert!(events.iter().any(|e| matches!(
            e,
            MediaEvent::Start {
                session: 3,
                carried: false,
                ..
            }
        )));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, MediaEvent::Frame(f) if f.pts == 50_000_000_000))
        );
        drop(p);
        // A source a day ahead of this node's clock: not believed.
        let mut p = bus.begin_publish("relay").unwrap();
        p.carry_timeline();
        configure(&mut p);
        p.push(video(86_400_000 + 50_000, true));
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv_for_test()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, MediaEvent::Start { carried: false, .. }))
        );
    }

    #[tokio::test]
    async fn one_publisher_at_a_time_and_timeline_moves_forward() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("a").unwrap();
        assert!(bus.begin_publish("b").is_err());
        configure(&mut p);
        p.push(video(500, false)); // before the first keyframe: dropped
        p.push(video(1000, true));
        p.push(video(4500, false));
        assert!(matches!(
            rx.recv().await,
            Some(MediaEvent::Start { session: 1, .. })
        ));
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(f.pts, 0);
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(f.pts, 3_500_000_000);
        drop(p);
        assert!(matches!(
            rx.recv().await,
            Some(MediaEvent::End { session: 1 })
        ));

        // The publisher comes back with timestamps from zero: it lands on the next grid line.
        let mut p = bus.begin_publish("a").unwrap();
        configure(&mut p);
        p.push(video(0, true));
        assert!(matches!(
            rx.recv().await,
            Some(MediaEvent::Start { session: 2, .. })
        ));
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(f.pts, 4_000_000_000);
    }

    #[tokio::test]
    async fn waits_briefly_for_a_late_audio_config() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("a").unwrap();
        p.video_config(VideoConfig::from_avcc(Bytes::from_static(AVCC)).unwrap());
        p.push(video(0, true));
        p.push(video(33, false));
        p.audio_config(AudioConfig::aac_lc(48_000, 2));
        p.push(video(67, false));
        let Some(MediaEvent::Start { audio, .. }) = rx.recv().await else {
            panic!()
        };
        assert!(audio.is_some());
        for want in [0, 33_000_000, 67_000_000] {
            let Some(MediaEvent::Frame(f)) = rx.recv().await else {
                panic!()
            };
            assert_eq!(f.pts, want);
        }

        // Without audio the session starts after a second of media.
        drop(p);
        let bus = super::tests::bus();
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("a").unwrap();
        p.video_config(VideoConfig::from_avcc(Bytes::from_static(AVCC)).unwrap());
        for i in 0..40 {
            p.push(video(i * 33, i == 0));
        }
        let Some(MediaEvent::Start { audio, .. }) = rx.recv().await else {
            panic!()
        };
        assert!(audio.is_none());
    }

    #[tokio::test]
    async fn codec_change_or_clock_reset_starts_a_new_session() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("a").unwrap();
        configure(&mut p);
        p.push(video(0, true));
        p.push(video(1500, false));
        // The encoder's clock goes back to zero: session 2, on the next grid line.
        p.push(video(0, true));
        // New audio configuration mid-session: session 3.
        p.audio_config(AudioConfig::aac_lc(44_100, 2));
        p.push(video(33, true));
        let mut seen = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv()).await
        {
            seen.push(match ev {
                MediaEvent::Start { session, .. } => format!("start {session}"),
                MediaEvent::TrackStart { session, .. } => format!("track start {session}"),
                MediaEvent::End { session } => format!("end {session}"),
                MediaEvent::Close => "close".to_string(),
                MediaEvent::Frame(f) => format!("frame {}", f.pts / 1_000_000),
            });
        }
        assert_eq!(
            seen,
            [
                "start 1",
                "frame 0",
                "frame 1500",
                "end 1",
                "start 2",
                "frame 2000",
                "end 2",
                "start 3",
                "frame 4000"
            ]
        );
    }

    fn audio(ms: i64) -> Frame {
        Frame {
            track: TrackKind::Audio,
            pts: ms * 1_000_000,
            dts: ms * 1_000_000,
            keyframe: true,
            data: Bytes::from_static(&[0x21, 0x10]),
        }
    }

    fn drain(rx: &mut BusReceiver) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(Some(ev)) = rx.recv().now_or_never_opt() {
            seen.push(match ev {
                MediaEvent::Start { session, .. } => format!("start {session}"),
                MediaEvent::TrackStart { session, .. } => format!("track start {session}"),
                MediaEvent::End { session } => format!("end {session}"),
                MediaEvent::Close => "close".to_string(),
                MediaEvent::Frame(f) => format!(
                    "{} {}",
                    if f.track == TrackKind::Video {
                        "v"
                    } else {
                        "a"
                    },
                    f.pts / 1_000_000
                ),
            });
        }
        seen
    }

    trait NowOrNever: std::future::Future + Sized {
        fn now_or_never_opt(self) -> Option<Self::Output> {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut f = std::pin::pin!(self);
            match f.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            }
        }
    }
    impl<F: std::future::Future> NowOrNever for F {}

    /// One audio frame an hour off is dropped alone; audio before and after it flows.
    #[tokio::test]
    async fn a_jumped_audio_timestamp_drops_one_frame() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut p = bus.begin_publish("a").unwrap();
        configure(&mut p);
        p.push(video(0, true));
        p.push(audio(10));
        p.push(audio(3_600_000 + 31));
        p.push(audio(-3_600_000));
        p.push(audio(52));
        p.push(video(33, false));
        assert_eq!(drain(&mut rx), ["start 1", "v 0", "a 10", "a 52", "v 33"]);
        assert_eq!(bus.stats.audio_jumps.load(Ordering::Relaxed), 2);
    }

    /// Audio with no video is refused after 5 s of media instead of holding the channel.
    #[tokio::test]
    async fn audio_only_is_refused() {
        let bus = bus();
        let mut p = bus.begin_publish("a").unwrap();
        p.audio_config(AudioConfig::aac_lc(48_000, 2));
        for i in 0..240 {
            p.push(audio(i * 20));
        }
        assert_eq!(p.ended(), None);
        p.push(audio(5001));
        assert_eq!(p.ended(), Some(PublishEnded::NoVideo));
        drop(p);
        assert!(!bus.is_publishing());
    }

    /// A publisher that sent nothing for the stale time is replaced by a new publish;
    /// one that is sending is not. The timeline goes on forward.
    #[tokio::test]
    async fn a_stale_publisher_is_replaced() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut old = bus.begin_publish("old").unwrap();
        configure(&mut old);
        old.push(video(0, true));
        old.push(video(2500, false));
        let stale = Duration::from_millis(50);
        assert!(
            bus.begin_publish_stale_after("new", stale).is_err(),
            "old one is live"
        );
        std::thread::sleep(Duration::from_millis(80));
        let mut new = bus.begin_publish_stale_after("new", stale).unwrap();
        assert_eq!(old.ended(), Some(PublishEnded::Superseded));
        old.push(video(2533, false)); // ignored
        drop(old); // does not end the new owner's claim
        assert!(bus.is_publishing());
        configure(&mut new);
        new.push(video(0, true));
        assert_eq!(
            drain(&mut rx),
            ["start 1", "v 0", "v 2500", "end 1", "start 2", "v 4000"]
        );
        assert_eq!(bus.stats.takeovers.load(Ordering::Relaxed), 1);
        drop(new);
        assert!(!bus.is_publishing());
    }

    /// A configuration change ends the feeds of the ingest it names (or all of them):
    /// their publishers learn why, and the channel is free again once they are dropped.
    #[tokio::test]
    async fn ended_feeds_learn_they_were_removed() {
        let bus = bus();
        let mut a = feed(&bus, "a", 1);
        let mut b = feed(&bus, "b", 2);
        bus.end_feeds(Some("b"));
        assert_eq!(a.ended(), None);
        assert_eq!(b.ended(), Some(PublishEnded::Removed));
        // A new connection of an ended ingest is not kept out by the old one.
        let c = bus.begin_feed("c", b.spec().clone(), STALE_AFTER);
        assert!(c.is_ok());
        drop(b);
        bus.shut();
        assert_eq!(a.ended(), Some(PublishEnded::Removed));
        assert!(bus.is_publishing());
        drop(a);
        drop(c);
        assert!(!bus.is_publishing());
        // Shut: nothing attaches any more.
        assert!(matches!(
            bus.begin_feed("d", FeedSpec::default(), STALE_AFTER),
            Err(BusError::Shut(_))
        ));
    }

    fn feed(bus: &Arc<ChannelBus>, ingest: &str, priority: u32) -> Publisher {
        let spec = FeedSpec {
            ingest: ingest.into(),
            priority,
            tracking_id: None,
        };
        let mut p = bus.begin_feed(ingest, spec, STALE_AFTER).unwrap();
        configure(&mut p);
        p
    }

    /// A backup stands by while the primary is live, takes over at its own keyframe when
    /// the primary leaves, and gives the channel back at the primary's keyframe when it
    /// returns: one session per switch, the timeline always moving forward.
    #[tokio::test]
    async fn backups_take_over_and_give_back_at_keyframes() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut primary = feed(&bus, "primary", 1);
        let mut backup = feed(&bus, "backup", 2);
        assert!(
            bus.begin_feed(
                "x",
                FeedSpec {
                    ingest: "backup".into(),
                    priority: 2,
                    tracking_id: None,
                },
                STALE_AFTER
            )
            .is_err(),
            "one connection per ingest"
        );
        primary.push(video(0, true));
        backup.push(video(5000, true)); // standing by: not forwarded
        primary.push(video(1000, false));
        backup.push(video(5500, false));
        drop(primary);
        assert!(!bus.is_publishing());
        backup.push(video(5900, false)); // waits for its keyframe
        backup.push(video(6000, true));
        backup.push(video(6500, false));
        assert_eq!(bus.owner().map(|o| o.0), Some("backup".into()));
        // The primary comes back and takes over at its first keyframe.
        let mut primary = feed(&bus, "primary", 1);
        primary.push(video(100, false));
        primary.push(video(200, true));
        backup.push(video(7000, true)); // stands by again
        primary.push(video(300, false));
        assert_eq!(backup.ended(), None, "the backup stays attached");
        assert_eq!(
            drain(&mut rx),
            [
                "start 1", "v 0", "v 1000", "end 1", "start 2", "v 2000", "v 2500", "end 2",
                "start 3", "v 4000", "v 4100",
            ]
        );
        assert_eq!(bus.stats.switches.load(Ordering::Relaxed), 2);
    }

    /// An owner that stops sending (its connection still open) is taken over by a live
    /// standby after the failover time.
    #[tokio::test]
    async fn a_silent_owner_is_taken_over_after_the_failover_time() {
        let bus = bus();
        let mut rx = bus.subscribe();
        let mut primary = feed(&bus, "primary", 1);
        let mut backup = feed(&bus, "backup", 2);
        primary.push(video(0, true));
        backup.push(video(0, true));
        assert!(primary.is_owner());
        std::thread::sleep(bus.failover_after() + Duration::from_millis(100));
        backup.push(video(3000, true));
        assert!(backup.is_owner());
        primary.push(video(3100, false)); // too late: standing by
        assert_eq!(
            drain(&mut rx),
            ["start 1", "v 0", "end 1", "start 2", "v 2000"]
        );
        // The slate gives way to any ingest at once.
        let mut slate = bus
            .begin_feed("slate", FeedSpec::slate(), STALE_AFTER)
            .unwrap();
        configure(&mut slate);
        slate.push(video(0, true));
        assert!(!slate.is_owner());
        assert!(bus.has_live_ingest());
    }

    /// The cap is an average over the whole window: a start-up burst under it passes,
    /// a sustained rate over it is caught, and quiet seconds count as zero.
    #[test]
    fn bitrate_cap_averages_over_the_window() {
        let mut cap = RateCap {
            max_kbps: 1000,
            seconds: [0; RATE_WINDOW_SECS as usize],
            current: 0,
        };
        // 1 MB in the first second: 800 kbit/s over the window, under the cap.
        assert_eq!(cap.add(100, 1_000_000), None);
        // Then 150 KB/s (1.2 Mbit/s): over the cap once the window holds enough of it.
        let over = (1..30).find_map(|s| cap.add(s * 1000 + 100, 150_000));
        assert!(over.is_some_and(|k| k > 1000), "{over:?}");
        // Silence for longer than the window forgets everything.
        assert_eq!(cap.add(100_000, 1000), None);
    }

    #[tokio::test]
    async fn lagging_subscriber_resumes_at_keyframe_with_start() {
        let bus = bus();
        let mut p = bus.begin_publish("a").unwrap();
        p.video_config(VideoConfig::from_avcc(Bytes::from_static(AVCC)).unwrap());
        p.push(video(0, true));
        let mut rx = bus.subscribe(); // joins mid-session
        for i in 1..200 {
            p.push(video(i * 33, i % 60 == 0));
        }
        // A lagging subscriber may be handed the session's Start more than once.
        let f = loop {
            match rx.recv().await.unwrap() {
                MediaEvent::Start { session: 1, .. } => continue,
                MediaEvent::Frame(f) => break f,
                other => panic!("{other:?}"),
            }
        };
        assert!(f.keyframe);
        assert!(rx.dropped() > 0);
        assert!(bus.stats.events_dropped.load(Ordering::Relaxed) > 0);
    }

    /// A source's session is placed where the main input is when its first frame
    /// arrives (plus its offset), carries audio only, and waits for the main input.
    #[tokio::test]
    async fn a_source_is_placed_where_the_main_input_is_when_it_arrives() {
        let main = bus();
        let source = ChannelBus::new_source(&main, 250, 256);
        let mut rx = source.subscribe();
        let mut s = source.begin_publish("fr").unwrap();
        s.audio_config(AudioConfig::aac_lc(48_000, 2));
        // The main input is not live: nothing to place it on.
        s.push(audio(1_000));
        assert!(rx.try_recv_for_test().is_none());

        let mut m = main.begin_publish("main").unwrap();
        configure(&mut m);
        for i in 0..60 {
            m.push(video(500_000 + i * 33, i == 0));
        }
        let head = main.head.load(Ordering::Relaxed);
        assert!(head > 0);
        // Video from a source is not used; its audio lands at the main's head + 250 ms.
        s.push(video(1_020, true));
        s.push(audio(1_021));
        s.push(audio(1_042));
        let Some(MediaEvent::TrackStart { session, audio: a }) = rx.recv().await else {
            panic!("a source session starts with TrackStart")
        };
        assert_eq!(a, AudioConfig::aac_lc(48_000, 2));
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(f.track, TrackKind::Audio);
        assert_eq!(f.pts, head + 250_000_000);
        let MediaEvent::Frame(g) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(g.pts - f.pts, 21_000_000, "its own clock from there");
        assert!(rx.try_recv_for_test().is_none(), "the video was dropped");

        // The source leaves: its session ends; when it returns it is placed again.
        drop(s);
        assert!(matches!(rx.recv().await, Some(MediaEvent::End { session: e }) if e == session));
        let mut s = source.begin_publish("fr").unwrap();
        s.audio_config(AudioConfig::aac_lc(48_000, 2));
        s.push(audio(9_000));
        let Some(MediaEvent::TrackStart { session: next, .. }) = rx.recv().await else {
            panic!()
        };
        assert!(next > session);
        let MediaEvent::Frame(h) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(h.pts, main.head.load(Ordering::Relaxed) + 250_000_000);
    }

    /// A camera angle starts at its first video keyframe once the main input is live,
    /// placed where the main input is (plus its offset), with a `Start` without audio; its
    /// audio is not used. It leaves and comes back placed again.
    #[tokio::test]
    async fn an_angle_is_placed_where_the_main_input_is_at_a_keyframe() {
        let main = bus();
        let angle = ChannelBus::new_angle(&main, -100, 256);
        let mut rx = angle.subscribe();
        let mut s = angle.begin_publish("cam").unwrap();
        configure(&mut s);
        s.push(video(1_000, true));
        assert!(
            rx.try_recv_for_test().is_none(),
            "the main input is not live"
        );
        let mut m = main.begin_publish("main").unwrap();
        configure(&mut m);
        for i in 0..60 {
            m.push(video(500_000 + i * 33, i == 0));
        }
        let head = main.head.load(Ordering::Relaxed);
        s.push(video(1_033, false));
        s.push(audio(1_040));
        assert!(rx.try_recv_for_test().is_none(), "waits for a keyframe");
        s.push(video(2_000, true));
        s.push(audio(2_010));
        s.push(video(2_033, false));
        let Some(MediaEvent::Start {
            session,
            audio: a,
            carried,
            ..
        }) = rx.recv().await
        else {
            panic!("an angle's session starts with Start")
        };
        assert!(a.is_none() && !carried);
        let MediaEvent::Frame(f) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert!(f.keyframe && f.track == TrackKind::Video);
        assert_eq!(f.pts, head - 100_000_000);
        let MediaEvent::Frame(g) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!((g.track, g.pts - f.pts), (TrackKind::Video, 33_000_000));
        assert!(rx.try_recv_for_test().is_none(), "the audio was dropped");

        drop(s);
        assert!(matches!(rx.recv().await, Some(MediaEvent::End { session: e }) if e == session));
        for i in 60..90 {
            m.push(video(500_000 + i * 33, false));
        }
        let mut s = angle.begin_publish("cam").unwrap();
        configure(&mut s);
        s.push(video(7_000, true));
        let Some(MediaEvent::Start { session: next, .. }) = rx.recv().await else {
            panic!()
        };
        assert!(next > session);
        let MediaEvent::Frame(h) = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(h.pts, main.head.load(Ordering::Relaxed) - 100_000_000);
    }

    /// A source whose media runs away from the main input by more than a second (here:
    /// its clock runs at twice the rate) is placed again, in a new session.
    #[tokio::test]
    async fn a_source_that_drifts_from_the_main_input_is_placed_again() {
        let main = bus();
        let source = ChannelBus::new_source(&main, 0, 4096);
        let mut rx = source.subscribe();
        let mut m = main.begin_publish("main").unwrap();
        configure(&mut m);
        let mut s = source.begin_publish("fr").unwrap();
        s.audio_config(AudioConfig::aac_lc(48_000, 2));
        let mut starts = 0;
        for i in 0..600 {
            // 20 ms of main video per step, 40 ms of source audio.
            m.push(video(i * 20, i == 0));
            s.push(audio(i * 40));
        }
        while let Some(ev) = rx.try_recv_for_test() {
            if let MediaEvent::TrackStart { .. } = ev {
                starts += 1;
            }
        }
        assert!(starts >= 2, "placed again at least once, {starts} starts");
        // Every frame that went out lies within the drift limit (plus its smoothing) of
        // where the main input was.
        assert!(
            source.head.load(Ordering::Relaxed) - main.head.load(Ordering::Relaxed)
                < 3 * SOURCE_MAX_DRIFT
        );
    }

    /// A subscriber of a source's bus that lags resumes at the next audio frame (a
    /// source has no video keyframes to wait for).
    #[tokio::test]
    async fn a_lagging_source_subscriber_resumes_at_the_next_audio_frame() {
        let main = bus();
        let source = ChannelBus::new_source(&main, 0, 16);
        let mut rx = source.subscribe();
        let mut m = main.begin_publish("main").unwrap();
        configure(&mut m);
        m.push(video(0, true));
        let mut s = source.begin_publish("fr").unwrap();
        s.audio_config(AudioConfig::aac_lc(48_000, 2));
        for i in 0..40 {
            s.push(audio(i * 21));
        }
        assert!(
            matches!(rx.recv().await, Some(MediaEvent::TrackStart { .. })),
            "replayed"
        );
        assert!(
            matches!(rx.recv().await, Some(MediaEvent::Frame(f)) if f.track == TrackKind::Audio)
        );
        assert!(rx.dropped() > 0);
    }
}
