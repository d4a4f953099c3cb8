//! Real GStreamer: the test pattern feeds a two-rung ladder; keyframes must land
//! on the segment grid, on the same frames in every rendition, and nowhere else.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_core::{AudioConfig, Frame, VideoConfig};
use sluice_engine::{
    EncodedEvent, RenditionSettings, TestPattern, TestPatternSettings, TranscodeSettings,
    Transcoder,
};

const SEG: i64 = 1_000_000_000;

#[test]
fn ladder_keyframes_align_on_the_segment_grid() {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    let (tx, rx) = mpsc::sync_channel::<EncodedEvent>(10_000);
    let pattern = TestPattern::start(
        &TestPatternSettings {
            width: 320,
            height: 180,
            fps: 30,
            video_kbps: 600,
            ..Default::default()
        },
        Arc::new(move |ev| {
            let _ = tx.try_send(ev);
        }),
    )
    .unwrap();

    let mut video: Option<VideoConfig> = None;
    let mut audio: Option<AudioConfig> = None;
    let mut input: Vec<Frame> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Collect 4.5 s of "encoder" output.
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            EncodedEvent::VideoConfig { config, .. } => video = Some(config),
            EncodedEvent::AudioConfig(c) => audio = Some(c),
            EncodedEvent::Video { frame, .. } => {
                let end = frame.pts > 4_500_000_000;
                input.push(frame);
                if end {
                    break;
                }
            }
            EncodedEvent::Audio(f) => input.push(f),
        }
    }
    drop(pattern);
    let video = video.expect("video config");
    assert_eq!((video.width, video.height), (320, 180));
    let audio = audio.expect("audio config");
    assert_eq!(audio.sample_rate, 48_000);

    let (otx, orx) = mpsc::sync_channel::<EncodedEvent>(10_000);
    let settings = TranscodeSettings {
        segment_duration: SEG,
        renditions: vec![
            RenditionSettings {
                width: 320,
                height: 180,
                video_kbps: 500,
            },
            RenditionSettings {
                width: 160,
                height: 90,
                video_kbps: 200,
            },
        ],
        audio_kbps: 96,
        preset: "ultrafast".into(),
        max_queued_bytes: 16 << 20,
        // 0: no bound in media time here, where 4.5 s are pushed at once.
        max_queued_time: 0,
    };
    let t = Transcoder::start(
        &settings,
        &video,
        Some(&audio),
        Arc::new(move |ev| {
            let _ = otx.try_send(ev);
        }),
    )
    .unwrap();
    // The pattern's own keyframes are every second at frame 0, 30, ... : start from the first.
    let first_key = input
        .iter()
        .position(|f| f.keyframe && f.track == sluice_core::TrackKind::Video)
        .unwrap();
    for f in &input[first_key..] {
        assert_eq!(t.push(f), sluice_engine::PushOutcome::Queued);
    }
    // The same input pushed at once into an engine bounded to one second of backlog:
    // video beyond it is dropped (to the next keyframe) instead of queued.
    let bounded = Transcoder::start(
        &TranscodeSettings {
            max_queued_time: SEG,
            ..settings.clone()
        },
        &video,
        Some(&audio),
        Arc::new(|_| {}),
    )
    .unwrap();
    let dropped = input[first_key..]
        .iter()
        .filter(|f| bounded.push(f) == sluice_engine::PushOutcome::Dropped)
        .count();
    assert!(dropped > 30, "only {dropped} frames dropped");
    drop(bounded);
    t.end_of_stream();
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if let Some(r) = t.poll() {
            break r;
        }
        assert!(Instant::now() < deadline, "engine did not drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    outcome.expect("engine ran to end of stream");
    drop(t);

    let mut keys: [Vec<i64>; 2] = [vec![], vec![]];
    let mut counts = [0usize; 2];
    let mut audio_frames = 0;
    let mut configs = [None, None];
    for ev in orx.try_iter() {
        match ev {
            EncodedEvent::Video { rendition, frame } => {
                counts[rendition] += 1;
                if frame.keyframe {
                    keys[rendition].push(frame.pts);
                }
            }
            EncodedEvent::VideoConfig {
                rendition, config, ..
            } => configs[rendition] = Some(config),
            EncodedEvent::Audio(_) => audio_frames += 1,
            EncodedEvent::AudioConfig(_) => {}
        }
    }
    let c0 = configs[0].clone().unwrap();
    let c1 = configs[1].clone().unwrap();
    assert_eq!(
        (c0.width, c0.height, c1.width, c1.height),
        (320, 180, 160, 90)
    );
    assert!(counts[0] > 100 && counts[0] == counts[1], "{counts:?}");
    assert!(audio_frames > 150, "{audio_frames}");
    assert_eq!(
        keys[0], keys[1],
        "keyframes at the same instants in both renditions"
    );
    // One keyframe per segment, each the first frame of its segment.
    let indices: Vec<i64> = keys[0].iter().map(|p| p.div_euclid(SEG)).collect();
    assert!(indices.len() >= 4, "{:?}", keys[0]);
    for w in indices.windows(2) {
        assert_eq!(w[1], w[0] + 1, "one keyframe per segment: {:?}", keys[0]);
    }
    for p in &keys[0][1..] {
        assert!(
            p.rem_euclid(SEG) < 34_000_000,
            "keyframe {p} is not the first frame after a boundary"
        );
    }
}
