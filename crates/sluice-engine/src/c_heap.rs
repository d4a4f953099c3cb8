//! The C heap of GStreamer, libavcodec and x264: fewer arenas, and its freed memory given
//! back after an engine's pipeline is torn down.
//!
//! Those libraries allocate with glibc's malloc (the Rust side uses mimalloc, which returns
//! what it frees by itself). glibc gives each new thread an arena of its own, up to eight per
//! core, and keeps what is freed in an arena for that arena: every publisher session's
//! pipeline starts new threads, which landed on further arenas, and each arena kept its share
//! of the session's buffers after the pipeline was gone. Measured on the 720p ladder (one
//! server, four 12 s sessions): the process's peak less the media held for playlists was
//! 134, 142, 147 and 159 MiB, and with a trim alone the C heap in use 10 s into each
//! session 67, 71, 77 and 97 MiB. With arenas limited to one per core and `malloc_trim(0)`
//! after a pipeline is freed: peaks 135, 136, 143, 145 MiB, C heap 68, 69, 74, 75 MiB
//! (`benches/README.md`, session 27). An operator's limit (`MALLOC_ARENA_MAX`, or
//! `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) is left as set.
//!
//! A trim walks and locks each arena in turn, so it runs on a thread of its own, one
//! second after the first pipeline of a burst is torn down (sessions ending together share
//! one trim; a teardown during a trim asks for one more).
//!
//! These two calls are the workspace's only `unsafe` code (`unsafe_code` is denied
//! everywhere else; every other foreign call goes through a safe binding).

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

/// How long after a pipeline is torn down the trim runs: the pipeline's elements are freed
/// as its last references drop, and sessions that end together share one trim.
const SETTLE: Duration = Duration::from_secs(1);

/// Asks for a trim soon; never blocks.
pub(crate) fn after_pipeline_freed() {
    static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let trimmer = TRIMMER.get_or_init(|| {
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(move || run(rx))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = trimmer {
        // Full: a trim is already due, and it will see this pipeline's memory too.
        let _ = tx.try_send(());
    }
}

fn run(rx: Receiver<()>) {
    while rx.recv().is_ok() {
        std::thread::sleep(SETTLE);
        while rx.try_recv().is_ok() {}
        let released = trim();
        tracing::debug!(released, "freed C heap memory returned to the system");
    }
}

/// Limits glibc to one arena per core (its default is eight), unless the operator set a
/// limit. Called once, before GStreamer starts any thread.
pub(crate) fn limit_arenas() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || tunables.contains("glibc.malloc.arena_max")
    {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    set_arena_max(i32::try_from(cores).unwrap_or(i32::MAX));
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(n: i32) {
    // SAFETY: mallopt takes two integers and no pointer. glibc marks it MT-Unsafe only
    // against concurrent changes of the same parameters: this is the process's one call,
    // made once (under `init`'s OnceLock) before any GStreamer thread exists; it takes the
    // main arena's lock, and M_ARENA_MAX only bounds the arenas created from then on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_: i32) {}

/// `malloc_trim(0)`: true when glibc returned memory to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc takes each
    // arena's lock itself, so it is safe to call while other threads allocate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl, macOS) return freed memory without being asked.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
