//! LL-HLS delivery through the request path: blocking playlist reload, preload hints,
//! delta updates and a distribution's own hold-backs, against a real packager.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use sluice_core::codec::testdata::AVCC_720P;
use sluice_core::time::NANOS_PER_SEC;
use sluice_core::{Frame, Id, TrackKind, VideoConfig};
use sluice_package::{EngineOutput, OutputKind, Packager, PackagerSettings, RenditionSpec};

use crate::policy::Policy;
use crate::server::{Answer, Catalog, DistributionEntry, HttpState, RequestFacts, plan};
use crate::session::SessionKey;

const FRAME: i64 = NANOS_PER_SEC / 30;

/// A 30 fps rendition "v", a keyframe every 2 s segment, parts of 0.5 s.
struct Live {
    packager: Packager,
    out: Arc<EngineOutput>,
    next: i64,
}

impl Live {
    fn new() -> Self {
        let (mut packager, out) = Packager::new(
            PackagerSettings {
                segment_duration: 2 * NANOS_PER_SEC,
                window: 30 * NANOS_PER_SEC,
                cmaf: true,
                ts: false,
                init_version_base: 0,
                part_duration: NANOS_PER_SEC / 2,
                keyframes_forced: false,
            },
            vec![RenditionSpec {
                name: Id::new("v").unwrap(),
                width: 1280,
                height: 720,
                video_kbps: 1000,
            }],
            None,
        );
        packager.set_video_config(
            0,
            VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap(),
        );
        Live {
            packager,
            out,
            next: 0,
        }
    }

    fn frames(&mut self, n: i64) {
        for _ in 0..n {
            let k = self.next;
            self.next += 1;
            self.packager.push_video(
                0,
                Frame {
                    track: TrackKind::Video,
                    pts: k * FRAME,
                    dts: k * FRAME,
                    keyframe: k % 60 == 0,
                    data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
                },
            );
        }
    }
}

fn state(out: &Arc<EngineOutput>) -> Arc<HttpState> {
    let mut c = Catalog::default();
    for (name, latency) in [("d", None), ("slow", Some(8 * NANOS_PER_SEC))] {
        c.distributions.insert(
            Id::new(name).unwrap(),
            DistributionEntry {
                policy: Arc::new(Policy::open()),
                overrides: vec![],
                outputs: vec![OutputKind::Cmaf],
                max_kbps: None,
                enabled: true,
                engines: vec![(Id::new("e").unwrap(), out.clone())],
                target_latency: latency,
                stopped: false,
                audio_tracks: None,
                angles: Vec::new(),
                counts: crate::server::unused_counts(),
            },
        );
    }
    HttpState::new(c, SessionKey::from_secret(b"test"))
}

fn ask(st: &HttpState, path_and_query: &str) -> Answer {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let facts = RequestFacts {
        query,
        ..RequestFacts::get(path, "127.0.0.1".parse().unwrap())
    };
    plan(st, &facts, 1_800_000_000)
}

async fn body(r: hyper::Response<http_body_util::Full<Bytes>>) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let status = r.status();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

async fn now(st: &HttpState, url: &str) -> (StatusCode, String) {
    match ask(st, url) {
        Answer::Now(r) => body(r).await,
        Answer::Park(p) => body(p.answer().await).await,
    }
}

const PL: &str = "/live/d/cmaf/v/index.m3u8";

/// `n` requests for `url`, each parked (it must wait) and waiting on a task of its own.
fn park_many(
    st: &HttpState,
    url: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<hyper::Response<http_body_util::Full<Bytes>>>> {
    (0..n)
        .map(|_| match ask(st, url) {
            Answer::Park(p) => tokio::spawn(p.answer()),
            Answer::Now(r) => panic!("{url} answered at once: {}", r.status()),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn blocking_reload_waits_for_the_part_then_answers_at_once() {
    let mut live = Live::new();
    live.frames(60 + 20); // segment 0 complete; 1.0 (frames 60..=74) published
    let st = state(&live.out);
    let (status, text) = now(&st, &format!("{PL}?_HLS_msn=1&_HLS_part=0")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("URI=\"1.0.m4s\""), "{text}");
    assert!(
        text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"1.1.m4s\""),
        "{text}"
    );

    // The next part: parked, then answered with a playlist that has it.
    let Answer::Park(parked) = ask(&st, &format!("{PL}?_HLS_msn=1&_HLS_part=1")) else {
        panic!("1.1 does not exist yet: the request waits");
    };
    let hinted = match ask(&st, "/live/d/cmaf/v/1.1.m4s") {
        Answer::Park(p) => p,
        Answer::Now(r) => panic!("the hinted part waits, got {}", r.status()),
    };
    let waiting = tokio::spawn(parked.answer());
    let waiting_part = tokio::spawn(hinted.answer());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished() && !waiting_part.is_finished());
    live.frames(11); // 1.1 (frames 75..=89) completes when frame 90 comes
    let (status, text) = body(waiting.await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("URI=\"1.1.m4s\""), "{text}");
    let (status, part) = body(waiting_part.await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!part.is_empty());

    // Whole segment N (no _HLS_part): held until N is complete.
    let Answer::Park(parked) = ask(&st, &format!("{PL}?_HLS_msn=1")) else {
        panic!("segment 1 is not complete");
    };
    let waiting = tokio::spawn(parked.answer());
    live.frames(60);
    let (status, text) = body(waiting.await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("\n1.m4s\n"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn too_far_never_and_malformed_and_stream_end() {
    let mut live = Live::new();
    live.frames(70);
    let st = state(&live.out);
    // More than two segments ahead: 400 at once.
    assert_eq!(
        now(&st, &format!("{PL}?_HLS_msn=9")).await.0,
        StatusCode::BAD_REQUEST
    );
    // Malformed or inconsistent directives: 400.
    for q in [
        "_HLS_msn=x",
        "_HLS_part=1",
        "_HLS_msn=1&_HLS_msn=2",
        "_HLS_msn=01",
        "_HLS_skip=NO",
    ] {
        assert_eq!(
            now(&st, &format!("{PL}?{q}")).await.0,
            StatusCode::BAD_REQUEST,
            "{q}"
        );
    }
    // A part that never comes (the encoder went quiet): 503 after three target durations.
    let started = tokio::time::Instant::now();
    let (status, _) = now(&st, &format!("{PL}?_HLS_msn=2&_HLS_part=0")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed().as_secs(), 6);
    // Parked requests are all released when the stream ends, with the final playlist.
    let parked = park_many(&st, &format!("{PL}?_HLS_msn=2&_HLS_part=0"), 50);
    tokio::time::sleep(Duration::from_millis(100)).await;
    live.packager.finish();
    for w in parked {
        let (status, text) = body(w.await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
    }
}

#[tokio::test]
async fn delta_updates_and_a_distributions_hold_backs() {
    let mut live = Live::new();
    live.frames(30 * 20); // 20 s: ten segments
    let st = state(&live.out);
    let (_, full) = now(&st, PL).await;
    let (_, delta) = now(&st, &format!("{PL}?_HLS_skip=YES")).await;
    assert!(!full.contains("#EXT-X-SKIP"));
    assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="), "{delta}");
    assert!(delta.len() < full.len());
    let (_, v2) = now(&st, &format!("{PL}?_HLS_skip=v2&_HLS_msn=3")).await;
    assert!(v2.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="), "{v2}");
    assert!(
        full.contains("PART-HOLD-BACK=1.50000,HOLD-BACK=6.00000"),
        "{full}"
    );
    let (_, slow) = now(&st, "/live/slow/cmaf/v/index.m3u8").await;
    assert!(
        slow.contains("PART-HOLD-BACK=8.00000,HOLD-BACK=8.00000"),
        "{slow}"
    );
    // A part that was never going to exist (past the end of a complete segment): 404.
    assert_eq!(
        now(&st, "/live/d/cmaf/v/8.9.m4s").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(now(&st, "/live/d/cmaf/v/9.0.m4s").await.0, StatusCode::OK);
}

/// The publisher reconnects (a new input session: a discontinuity) while requests are
/// parked: they are answered by the next parts, after the seam, with numbering going on.
#[tokio::test(start_paused = true)]
async fn a_publisher_reconnect_while_requests_are_parked() {
    let mut live = Live::new();
    live.frames(60 + 20); // segment 0, parts 1.0
    let st = state(&live.out);
    // 2.0 does not exist yet.
    let parked = park_many(&st, &format!("{PL}?_HLS_msn=2&_HLS_part=0"), 10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The encoder drops out and comes back: its next session starts on the next grid line.
    live.packager.discontinuity();
    live.next = 120;
    live.frames(20);
    for w in parked {
        let (status, text) = body(w.await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("URI=\"2.0.m4s\""), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    }
}

/// A camera angle is served from its slot: 503 for its multivariant and 404 for its
/// children while its publisher is away, its own playlists while it is live (child URIs
/// through the session and the angle); CMAF only; an unknown angle is 404.
#[tokio::test]
async fn camera_angles_are_served_from_their_slot() {
    let mut live = Live::new();
    live.frames(181);
    let slot = Arc::new(crate::server::AngleSlot::empty());
    let mut c = Catalog::default();
    let ip = sluice_config::IpRule {
        mode: sluice_config::RuleMode::Allow,
        cidrs: vec!["127.0.0.0/8".parse().unwrap()],
    };
    for (name, policy) in [
        ("d", Policy::open()),
        (
            "paid",
            Policy::new(None, Some(ip), vec![], &Default::default()).unwrap(),
        ),
    ] {
        c.distributions.insert(
            Id::new(name).unwrap(),
            DistributionEntry {
                policy: Arc::new(policy),
                overrides: vec![],
                outputs: vec![OutputKind::Cmaf, OutputKind::Ts],
                max_kbps: None,
                enabled: true,
                engines: vec![],
                target_latency: None,
                stopped: false,
                audio_tracks: None,
                angles: vec![(Id::new("cam").unwrap(), slot.clone())],
                counts: crate::server::unused_counts(),
            },
        );
    }
    let st = HttpState::new(c, SessionKey::from_secret(b"test"));
    let status = |url: &str| match ask(&st, url) {
        Answer::Now(r) => r.status(),
        Answer::Park(_) => StatusCode::OK,
    };
    assert_eq!(
        status("/live/d/angle/cam/cmaf/index.m3u8"),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status("/live/d/angle/cam/cmaf/v/index.m3u8"),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status("/live/d/angle/nope/cmaf/index.m3u8"),
        StatusCode::NOT_FOUND
    );

    slot.store(Some(live.out.clone()));
    let (code, body) = now(&st, "/live/d/angle/cam/cmaf/index.m3u8").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.lines().any(|l| l == "v/index.m3u8"), "{body}");
    let (code, body) = now(&st, "/live/d/angle/cam/cmaf/v/index.m3u8").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("#EXTINF:2.0"), "{body}");
    assert_eq!(status("/live/d/angle/cam/cmaf/v/1.m4s"), StatusCode::OK);
    assert_eq!(
        status("/live/d/angle/cam/ts/index.m3u8"),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status("/live/d/cmaf/v/index.m3u8"),
        StatusCode::NOT_FOUND,
        "the main stream has no such rendition"
    );

    // Behind rules: child URIs go through the viewer's session, then the angle.
    let (code, body) = now(&st, "/live/paid/angle/cam/cmaf/index.m3u8").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let child = body
        .lines()
        .find(|l| l.ends_with("v/index.m3u8"))
        .expect("a variant")
        .to_owned();
    assert!(
        child.starts_with("../../../s-") && child.ends_with("/angle/cam/cmaf/v/index.m3u8"),
        "{child}"
    );
    // Resolved against /live/paid/angle/cam/cmaf/index.m3u8.
    let resolved = format!("/live/paid/{}", child.trim_start_matches("../../../"));
    let (code, _) = now(&st, &resolved).await;
    assert_eq!(code, StatusCode::OK, "{resolved}");
    assert_eq!(
        status("/live/paid/angle/cam/cmaf/v/index.m3u8"),
        StatusCode::UNAUTHORIZED,
        "no session"
    );

    // The publisher leaves: gone again.
    slot.store(None);
    assert_eq!(status(&resolved), StatusCode::NOT_FOUND);
}
