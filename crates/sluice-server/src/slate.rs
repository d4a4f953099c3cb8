//! A channel's slate. Once the channel has been live, whenever no ingest has been for
//! the failover time (about a segment), a generated source (a still picture and silence,
//! [`sluice_engine::Look::Slate`]) feeds the channel as its least preferred feed, so the
//! engines keep producing segments on the same playlists and players stay connected. Any
//! ingest that comes back takes over at its next keyframe (the bus decides), and the
//! slate stops. After `timeout_minutes` on the slate the channel closes: the slate stops
//! and the playlists end (`EXT-X-ENDLIST`) until a source returns.

use std::sync::Arc;
use std::time::Duration;

use sluice_engine::{TestPattern, TestPatternSettings};
use sluice_ingest::bus::STALE_AFTER;
use sluice_ingest::{ChannelBus, FeedSpec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the channel's state is looked at.
const TICK: Duration = Duration::from_millis(250);

/// Watches `bus` and runs the slate when it is needed, until `cancel`.
pub async fn watch(
    bus: Arc<ChannelBus>,
    picture: TestPatternSettings,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let channel = bus.channel().clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The channel has had a live ingest (a channel that never started stays off air).
    let mut armed = false;
    let mut quiet_since: Option<Instant> = None;
    let mut slate: Option<(TestPattern, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live = bus.has_live_ingest();
        if live {
            armed = true;
            quiet_since = None;
            if slate.take().is_some() {
                tracing::info!(%channel, "an ingest is live again; slate off");
            }
            continue;
        }
        if !armed {
            continue;
        }
        let now = Instant::now();
        let quiet = *quiet_since.get_or_insert(now);
        match &slate {
            None if now.duration_since(quiet) >= bus.failover_after() => {
                match start(&bus, &picture) {
                    Ok(pattern) => {
                        tracing::info!(%channel, "no ingest is live; slate on");
                        slate = Some((pattern, now));
                    }
                    Err(e) => {
                        tracing::error!(%channel, error = %format!("{e:#}"), "slate cannot start");
                        armed = false;
                    }
                }
            }
            Some((_, since)) if now.duration_since(*since) >= timeout => {
                slate = None;
                armed = false;
                quiet_since = None;
                bus.close();
                tracing::info!(%channel, minutes = timeout.as_secs() / 60, "no ingest for the slate timeout; playlists ended");
            }
            _ => {}
        }
    }
}

/// Starts the slate feeding `bus`.
fn start(bus: &Arc<ChannelBus>, picture: &TestPatternSettings) -> anyhow::Result<TestPattern> {
    let publisher = bus.begin_feed("slate", FeedSpec::slate(), STALE_AFTER)?;
    let pattern = TestPattern::start(picture, crate::app::publisher_sink(publisher))?;
    Ok(pattern)
}
