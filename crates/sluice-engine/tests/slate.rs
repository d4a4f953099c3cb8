//! Real GStreamer: the slate, from the project's slate picture and from nothing (a dark
//! frame with text), is a live H.264 + AAC source at the size asked for, with a keyframe
//! every second and audio alongside.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_core::TrackKind;
use sluice_engine::{EncodedEvent, Look, TestPattern, TestPatternSettings};

fn run(look: Look) -> (u32, u32, usize, usize, usize) {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    let (tx, rx) = mpsc::sync_channel::<EncodedEvent>(10_000);
    let pattern = TestPattern::start(
        &TestPatternSettings {
            width: 640,
            height: 360,
            fps: 30,
            video_kbps: 500,
            look,
        },
        Arc::new(move |ev| {
            let _ = tx.try_send(ev);
        }),
    )
    .unwrap();
    let (mut size, mut frames, mut keyframes, mut audio) = ((0, 0), 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && frames < 75 {
        match rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the slate produces")
        {
            EncodedEvent::VideoConfig { config, .. } => size = (config.width, config.height),
            EncodedEvent::Video { frame, .. } => {
                frames += 1;
                keyframes += usize::from(frame.keyframe);
            }
            EncodedEvent::Audio(f) => {
                assert_eq!(f.track, TrackKind::Audio);
                audio += 1;
            }
            EncodedEvent::AudioConfig(_) => {}
        }
    }
    assert!(pattern.poll_error().is_none());
    (size.0, size.1, frames, keyframes, audio)
}

#[test]
fn the_slate_is_a_live_source_from_an_image_or_from_nothing() {
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/slate.png");
    for look in [
        Look::Slate { image: Some(image) },
        Look::Slate { image: None },
    ] {
        let (w, h, frames, keyframes, audio) = run(look.clone());
        assert_eq!((w, h), (640, 360), "{look:?}");
        assert_eq!(frames, 75, "{look:?}");
        // 2.5 s of video: keyframes at 0, 1 and 2 s.
        assert!(
            (2..=4).contains(&keyframes),
            "{look:?}: {keyframes} keyframes"
        );
        assert!(audio > 60, "{look:?}: {audio} audio frames");
    }
}
