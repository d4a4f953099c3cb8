//! Recordings: an engine's segments written to disk as it produces them, with a playlist
//! per rendition that players read as VOD once the recording is finished.
//!
//! Layout, every name an id or a number (nothing from a request, nothing from a peer):
//!
//! ```text
//! <data_dir>/recordings/<channel>/<engine>/<recording>/index.m3u8       multivariant
//! <data_dir>/recordings/<channel>/<engine>/<recording>/<rendition>/index.m3u8
//! <data_dir>/recordings/<channel>/<engine>/<recording>/<rendition>/init-<n>.mp4, <msn>.m4s | <msn>.ts
//! ```
//!
//! A recording is named by its start, UTC (`20261126-164512`). Its rendition playlists are
//! `EVENT` playlists while it grows (rewritten after every segment, by rename) and become
//! `VOD` with `EXT-X-ENDLIST` when it ends: at rotation (`rotate_minutes` of media), when the
//! engine or recording stops, at shutdown. A write that fails (a full disk, a read-only
//! file system) ends only the recording: the partial file is removed (which frees the room
//! to close the playlists), the error is logged and counted, live delivery goes on, and a
//! new recording is tried every [`RETRY`] until writes succeed again.
//!
//! The disk work runs on the blocking pool, one sweep at a time per recorder: after each
//! new segment of the first rendition, and at least every second.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sluice_config::{Output, Record};
use sluice_core::time::NANOS_PER_SEC;
use sluice_core::{Id, MediaTime, Throttle};
use sluice_package::recording::{self, RecordedSegment};
use sluice_package::{AUDIO_RENDITION, EngineOutput, OutputKind};
use tokio_util::sync::CancellationToken;

/// After a failed write, a new recording is tried this long after.
pub const RETRY: Duration = Duration::from_secs(5);
/// A file the download API serves at most (segments are far smaller).
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Recordings listed at most.
const MAX_LISTED: usize = 10_000;
/// Sweeps (a part or a second each) rotation waits for every rendition to catch up.
const MAX_ROTATE_WAITS: u32 = 30;

/// What a recorder is doing (status API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderState {
    /// No media yet.
    Waiting,
    /// Writing this recording.
    Recording(String),
    /// The last write failed (its reason); retrying.
    Error(String),
    /// Stopped (its engine or the server stopped, or recording was turned off).
    Stopped,
}

/// One recorder's counters and state, shared with status and metrics.
#[derive(Debug)]
pub struct RecorderStats {
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    /// Writes that failed (each ends a recording).
    pub errors: AtomicU64,
    /// Recordings started.
    pub recordings: AtomicU64,
    state: Mutex<RecorderState>,
}

impl Default for RecorderStats {
    fn default() -> Self {
        RecorderStats {
            segments: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            recordings: AtomicU64::new(0),
            state: Mutex::new(RecorderState::Waiting),
        }
    }
}

impl RecorderStats {
    pub fn state(&self) -> RecorderState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, s: RecorderState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// Where an engine's recordings go.
pub fn engine_dir(data_dir: &Path, channel: &Id, engine: &Id) -> PathBuf {
    data_dir
        .join("recordings")
        .join(channel.as_str())
        .join(engine.as_str())
}

fn output_kind(format: Output) -> OutputKind {
    match format {
        Output::Cmaf => OutputKind::Cmaf,
        Output::Ts => OutputKind::Ts,
    }
}

/// Records `output` until `cancel`, then finishes the recording in progress.
pub async fn run(
    output: Arc<EngineOutput>,
    dir: PathBuf,
    record: Record,
    stats: Arc<RecorderStats>,
    cancel: CancellationToken,
) {
    let mut rec = Recorder::new(dir, record, stats.clone());
    let kind = rec.kind;
    loop {
        // The first rendition's playlist changes with every segment (and part).
        let names = output.rendition_names();
        let mut signal = names.first().map(|n| output.subscribe_playlist(kind, n));
        let out = output.clone();
        rec = match tokio::task::spawn_blocking(move || {
            rec.sweep(&out, Instant::now());
            rec
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "recorder failed; recording stops");
                stats.set(RecorderState::Error("recorder failed".into()));
                return;
            }
        };
        let changed = async {
            match signal.as_mut() {
                Some(s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // The engine flushes its last segment as it stops: take it, then close the playlists.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while output.is_live() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        rec.sweep(&output, Instant::now());
        rec.finish();
    })
    .await;
}

/// One rendition of the recording in progress.
struct Track {
    name: String,
    next: u64,
    segments: Vec<RecordedSegment>,
    inits: HashSet<u64>,
    /// Segments were missed or were gaps: the next one written follows a discontinuity.
    missed: bool,
}

struct Current {
    id: String,
    dir: PathBuf,
    tracks: Vec<Track>,
    /// Media recorded (the first rendition).
    media: MediaTime,
    /// The segment number at which this recording ends and the next begins.
    rotate_at: Option<u64>,
    /// Sweeps since `rotate_at` was set.
    rotate_waits: u32,
}

/// The synchronous part: what one sweep writes (tests drive it directly).
pub struct Recorder {
    root: PathBuf,
    kind: OutputKind,
    rotate: MediaTime,
    current: Option<Current>,
    /// Where the next recording starts (after a rotation); `None`: the oldest segment
    /// kept (the first recording) or the newest (after a failure).
    next_start: Option<u64>,
    started_once: bool,
    resume_after: Option<Instant>,
    stats: Arc<RecorderStats>,
    log: Throttle,
}

impl Recorder {
    pub fn new(root: PathBuf, record: Record, stats: Arc<RecorderStats>) -> Self {
        Recorder {
            root,
            kind: output_kind(record.format),
            rotate: i64::from(record.rotate_minutes) * 60 * NANOS_PER_SEC,
            current: None,
            next_start: None,
            started_once: false,
            resume_after: None,
            stats,
            log: Throttle::new(Duration::from_secs(60)),
        }
    }

    /// Writes what `out` has that the recording does not; a failure ends the recording.
    pub fn sweep(&mut self, out: &EngineOutput, now: Instant) {
        if self.resume_after.is_some_and(|t| now < t) {
            return;
        }
        self.resume_after = None;
        if let Err(e) = self.try_sweep(out) {
            self.failed(&e, now);
        }
    }

    /// Ends the recording in progress (its playlists become VOD).
    pub fn finish(&mut self) {
        if let Some(c) = self.current.take() {
            close(&c, self.kind);
            tracing::info!(recording = %c.id, "recording finished");
        }
        self.stats.set(RecorderState::Stopped);
    }

    fn tracks(&self, out: &EngineOutput) -> Vec<String> {
        let mut names = out.rendition_names();
        if self.kind == OutputKind::Cmaf && out.has_cmaf_audio() {
            names.push(AUDIO_RENDITION.to_owned());
        }
        names
    }

    fn try_sweep(&mut self, out: &EngineOutput) -> std::io::Result<()> {
        let names = self.tracks(out);
        let Some(first) = names.first() else {
            return Ok(());
        };
        if self.current.is_none() {
            let kept = out.segments_from(self.kind, first, 0);
            let start = match self.next_start.take() {
                Some(m) => m,
                None if !self.started_once => match kept.first() {
                    Some(s) => s.msn,
                    None => return Ok(()),
                },
                None => match kept.last() {
                    Some(s) => s.msn,
                    None => return Ok(()),
                },
            };
            self.begin(out, &names, start)?;
        }
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        for (i, t) in cur.tracks.iter_mut().enumerate() {
            let segs = out.segments_from(self.kind, &t.name, t.next);
            if segs.first().is_some_and(|s| s.msn > t.next) && !t.segments.is_empty() {
                t.missed = true; // the store moved on before these were written
            }
            let mut wrote = false;
            for s in segs {
                if let Some(m) = cur.rotate_at
                    && s.msn >= m
                {
                    t.next = t.next.max(m);
                    break;
                }
                t.next = s.msn + 1;
                let Some(data) = s.data else {
                    t.missed = true;
                    continue;
                };
                let dir = cur.dir.join(&t.name);
                if let Some(v) = s.init_version
                    && self.kind == OutputKind::Cmaf
                    && !t.inits.contains(&v)
                {
                    if let Some(init) = out.init_segment(&t.name, v) {
                        write_file(&dir.join(recording::init_file(v)), &init)?;
                    }
                    t.inits.insert(v);
                }
                write_file(&dir.join(recording::segment_file(self.kind, s.msn)), &data)?;
                self.stats.segments.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                t.segments.push(RecordedSegment {
                    msn: s.msn,
                    duration: s.duration,
                    discontinuity: (std::mem::take(&mut t.missed) | s.discontinuity)
                        && !t.segments.is_empty(),
                    init_version: s.init_version,
                });
                wrote = true;
                if i == 0 && t.segments.len() == 1 {
                    tracing::info!(recording = %cur.id, format = self.kind.as_str(), first_segment = s.msn, "recording started");
                }
                if i == 0 {
                    cur.media = cur.media.saturating_add(s.duration);
                    if cur.rotate_at.is_none() && cur.media >= self.rotate {
                        cur.rotate_at = Some(s.msn + 1);
                    }
                }
            }
            if wrote {
                let body = recording::media_playlist(self.kind, &t.segments, false);
                replace_file(&cur.dir.join(&t.name).join("index.m3u8"), &body)?;
            }
        }
        // Rotation waits for every rendition to reach the same segment, for a bounded
        // number of sweeps (a rendition that stopped, audio gone say, does not hold the
        // recording open).
        if cur.rotate_at.is_some() {
            cur.rotate_waits += 1;
        }
        if let Some(m) = cur.rotate_at
            && (cur.tracks.iter().all(|t| t.next >= m) || cur.rotate_waits > MAX_ROTATE_WAITS)
        {
            self.finish();
            self.next_start = Some(m);
            // The next sweep starts the next recording at `m`.
            return self.try_sweep(out);
        }
        Ok(())
    }

    fn begin(&mut self, out: &EngineOutput, names: &[String], start: u64) -> std::io::Result<()> {
        let id = recording_id(SystemTime::now());
        let mut dir = self.root.join(&id);
        let mut n = 1;
        let mut id = id;
        while dir.exists() {
            n += 1;
            id = format!("{}-{n}", recording_id(SystemTime::now()));
            dir = self.root.join(&id);
        }
        let made = (|| {
            for name in names {
                std::fs::create_dir_all(dir.join(name))?;
            }
            // The multivariant playlist names renditions by relative paths, as the live one.
            if let Some(m) = out.multivariant(self.kind, None) {
                write_file(&dir.join("index.m3u8"), &m)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            // No half-made recording is left behind (a full disk retries every few s).
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::debug!(recording = %id, first_segment = start, "recording opened");
        self.stats.recordings.fetch_add(1, Ordering::Relaxed);
        self.stats.set(RecorderState::Recording(id.clone()));
        self.started_once = true;
        self.current = Some(Current {
            id,
            dir,
            tracks: names
                .iter()
                .map(|n| Track {
                    name: n.clone(),
                    next: start,
                    segments: Vec::new(),
                    inits: HashSet::new(),
                    missed: false,
                })
                .collect(),
            media: 0,
            rotate_at: None,
            rotate_waits: 0,
        });
        Ok(())
    }

    fn failed(&mut self, e: &std::io::Error, now: Instant) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let reason = e.to_string();
        let current = self.current.take();
        if let Some(c) = &current {
            close(c, self.kind);
        }
        match current {
            Some(c) if c.tracks.iter().any(|t| !t.segments.is_empty()) => {
                tracing::error!(recording = %c.id, error = %reason, retry_s = RETRY.as_secs(), "recording write failed; the recording ends here, live delivery goes on");
            }
            // Nothing written yet: a retry that did not get far (logged once a minute).
            _ => {
                if let Some(suppressed) = self.log.hit(now) {
                    tracing::warn!(error = %reason, suppressed, retry_s = RETRY.as_secs(), "recording cannot start; trying again");
                }
            }
        }
        self.stats.set(RecorderState::Error(reason));
        self.next_start = None;
        self.resume_after = Some(now + RETRY);
    }
}

/// Closes a recording: each rendition's playlist becomes VOD, replaced whole when the
/// disk has room, else rewritten in place (truncated, then written: a few bytes more than
/// before, which fits on a disk that just filled up once the failed segment is removed).
/// A recording with no segment at all is removed.
fn close(c: &Current, kind: OutputKind) {
    if c.tracks.iter().all(|t| t.segments.is_empty()) {
        let _ = std::fs::remove_dir_all(&c.dir);
        return;
    }
    for t in &c.tracks {
        if t.segments.is_empty() {
            continue;
        }
        let body = recording::media_playlist(kind, &t.segments, true);
        let path = c.dir.join(&t.name).join("index.m3u8");
        let done = replace_file(&path, &body)
            .or_else(|_| std::fs::File::create(&path).and_then(|mut f| f.write_all(&body)));
        if let Err(e) = done {
            tracing::error!(recording = %c.id, rendition = %t.name, error = %e, "cannot close the recording's playlist");
        }
    }
}

/// Writes a new file; on failure the partial file is removed (on a full disk, that is
/// the room the playlists need to be closed).
fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let result = std::fs::File::create(path).and_then(|mut f| f.write_all(data));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Replaces a file at once (a reader sees the old or the new one, whole).
fn replace_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("m3u8.tmp");
    write_file(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A recording's id: its start, UTC, `YYYYMMDD-HHMMSS`.
pub fn recording_id(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Every recording on disk, newest first within each engine: ids, size, whether finished.
pub fn list(data_dir: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let root = data_dir.join("recordings");
    for (channel, cdir) in id_dirs(&root) {
        for (engine, edir) in id_dirs(&cdir) {
            let mut recs = id_dirs(&edir);
            recs.sort_by(|a, b| b.0.as_str().cmp(a.0.as_str()));
            for (id, rdir) in recs {
                if all.len() >= MAX_LISTED {
                    return all;
                }
                all.push(describe(&channel, &engine, &id, &rdir));
            }
        }
    }
    all
}

fn describe(channel: &Id, engine: &Id, id: &Id, dir: &Path) -> serde_json::Value {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut renditions = Vec::new();
    // Finished: every rendition with a playlist has an ended one (and there is one).
    let mut finished = true;
    let mut playlists = 0;
    let mut duration = 0f64;
    let mut segments = 0usize;
    for (name, rdir) in id_dirs(dir) {
        for f in std::fs::read_dir(&rdir).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata()
                && m.is_file()
            {
                files += 1;
                bytes += m.len();
            }
        }
        let Ok(playlist) = std::fs::read(rdir.join("index.m3u8")) else {
            continue; // a rendition that got no segment
        };
        playlists += 1;
        if let Ok(m3u8_rs::Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(&playlist) {
            finished &= p.end_list;
            if renditions.is_empty() {
                duration = p.segments.iter().map(|s| f64::from(s.duration)).sum();
                segments = p.segments.len();
            }
        } else {
            finished = false;
        }
        renditions.push(name.to_string());
    }
    let base = format!("/api/v1/recordings/{channel}/{engine}/{id}");
    serde_json::json!({
        "channel": channel.as_str(),
        "engine": engine.as_str(),
        "id": id.as_str(),
        "state": if finished && playlists > 0 { "finished" } else { "recording" },
        "renditions": renditions,
        "segments": segments,
        "duration_seconds": (duration * 1000.0).round() / 1000.0,
        "files": files,
        "bytes": bytes,
        "playlist": format!("{base}/index.m3u8"),
    })
}

/// Sub-folders of `dir` whose names are ids, sorted.
fn id_dirs(dir: &Path) -> Vec<(Id, PathBuf)> {
    let mut v: Vec<(Id, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((Id::new(e.file_name().to_str()?).ok()?, e.path())))
        .collect();
    v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    v
}

/// A recording's file, by ids only: `[channel, engine, recording, "index.m3u8"]` or
/// `[channel, engine, recording, rendition, file]`. The bytes and their content type;
/// `None` when the request names no such file (or names it in any other way).
pub fn read(data_dir: &Path, parts: &[&str]) -> Option<(Vec<u8>, &'static str)> {
    let (ids, file) = match parts {
        [c, e, r, f] => (vec![*c, *e, *r], *f),
        [c, e, r, rendition, f] => (vec![*c, *e, *r, *rendition], *f),
        _ => return None,
    };
    let mut path = data_dir.join("recordings");
    for id in ids {
        path.push(Id::new(id).ok()?.as_str());
    }
    if !recording::is_recording_file(file) {
        return None;
    }
    path.push(file);
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return None;
    }
    let ty = match file.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        _ => "video/mp2t",
    };
    Some((std::fs::read(&path).ok()?, ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_utc_start_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_711_512);
        assert_eq!(recording_id(t), "20261126-164512");
        assert_eq!(recording_id(SystemTime::UNIX_EPOCH), "19700101-000000");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(recording_id(t), "20000229-000000");
        assert!(Id::new(&recording_id(SystemTime::now())).is_ok());
    }

    #[test]
    fn files_are_named_by_ids_only() {
        let dir = std::env::temp_dir().join(format!("sluice-rec-read-{}", std::process::id()));
        let r = dir.join("recordings/c/e/20261126-164512/v");
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(r.join("3.ts"), b"ts").unwrap();
        std::fs::write(dir.join("secret"), b"no").unwrap();
        assert_eq!(
            read(&dir, &["c", "e", "20261126-164512", "v", "3.ts"]).map(|r| r.0),
            Some(b"ts".to_vec())
        );
        for bad in [
            &["c", "e", "..", "v", "3.ts"][..],
            &["c", "e", "20261126-164512", "..", "3.ts"],
            &["..", "..", "..", "secret"],
            &["c", "e", "20261126-164512", "v", "secret"],
            &["c", "e", "20261126-164512", "v", "4.ts"],
            &["c", "e"],
        ] {
            assert!(read(&dir, bad).is_none(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
