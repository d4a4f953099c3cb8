//! Real GStreamer: the test pattern feeds a two-rung ladder; keyframes must land
//! on the segment grid, on the same frames in every rendition, and nowhere else.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_core::{AudioConfig, Frame, TrackKind, VideoConfig};
use sluice_engine::{
    EncodedEvent, RenditionSettings, TestPattern, TestPatternSettings, TranscodeSettings,
    Transcoder,
};

const SEG: i64 = 1_000_000_000;

#[test]
fn ladder_keyframes_align_on_the_segment_grid() {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    // 4.5 s of "encoder" output.
    let (video, audio, input) = pattern_input(4_500_000_000);
    assert_eq!((video.width, video.height), (320, 180));
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
        // The pattern's audio is AAC-LC 48 kHz stereo: transcoded here, passed through below.
        audio_passthrough: false,
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
    for f in &input {
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
    let dropped = input
        .iter()
        .filter(|f| bounded.push(f) == sluice_engine::PushOutcome::Dropped)
        .count();
    assert!(dropped > 30, "only {dropped} frames dropped");
    drop(bounded);
    run_to_end(t);

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

/// The test pattern's output until video pts `until` (ns): its configs and frames, from
/// its first video keyframe on (the pattern's keyframes are every second).
fn pattern_input(until: i64) -> (VideoConfig, AudioConfig, Vec<Frame>) {
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
    let (mut video, mut audio, mut input) = (None, None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            EncodedEvent::VideoConfig { config, .. } => video = Some(config),
            EncodedEvent::AudioConfig(c) => audio = Some(c),
            EncodedEvent::Video { frame, .. } => {
                let end = frame.pts > until;
                input.push(frame);
                if end {
                    break;
                }
            }
            EncodedEvent::Audio(f) => input.push(f),
        }
    }
    drop(pattern);
    let first_key = input
        .iter()
        .position(|f| f.keyframe && f.track == TrackKind::Video)
        .unwrap();
    (video.unwrap(), audio.unwrap(), input.split_off(first_key))
}

/// Runs `input` through a one-rung ladder to its end; returns everything it produced.
fn transcode_all(
    video: &VideoConfig,
    audio: &AudioConfig,
    input: &[Frame],
    audio_passthrough: bool,
) -> Vec<EncodedEvent> {
    let (otx, orx) = mpsc::sync_channel::<EncodedEvent>(10_000);
    let settings = TranscodeSettings {
        segment_duration: SEG,
        renditions: vec![RenditionSettings {
            width: 160,
            height: 90,
            video_kbps: 200,
        }],
        audio_kbps: 96,
        audio_passthrough,
        preset: "ultrafast".into(),
        max_queued_bytes: 16 << 20,
        max_queued_time: 0,
    };
    let t = Transcoder::start(
        &settings,
        video,
        Some(audio),
        Arc::new(move |ev| {
            let _ = otx.try_send(ev);
        }),
    )
    .unwrap();
    for f in input {
        assert_eq!(t.push(f), sluice_engine::PushOutcome::Queued);
    }
    run_to_end(t);
    orx.try_iter().collect()
}

/// Ends `t`'s input and waits (30 s at most) for the encoders to drain into the sink.
fn run_to_end(t: Transcoder) {
    t.end_of_stream();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = t.poll() {
            r.expect("engine ran to end of stream");
            break;
        }
        assert!(Instant::now() < deadline, "engine did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// AAC-LC 48 kHz stereo in (what the ladder outputs): with `audio_passthrough` its frames
/// come out untouched, byte for byte and at the same instants, beside the encoded video;
/// without it they are decoded and encoded again at the ladder's bitrate.
#[test]
fn audio_already_in_the_ladders_format_passes_through_when_allowed() {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    let (video, audio, input) = pattern_input(3 * SEG);
    assert_eq!(
        (audio.object_type, audio.sample_rate, audio.channels),
        (2, 48_000, 2)
    );
    let audio_in: Vec<&Frame> = input
        .iter()
        .filter(|f| f.track == TrackKind::Audio)
        .collect();
    assert!(audio_in.len() > 100, "{}", audio_in.len());

    let split = |events: &[EncodedEvent]| {
        let mut configs = Vec::new();
        let mut frames = Vec::new();
        let mut video_frames = 0;
        for ev in events {
            match ev {
                EncodedEvent::AudioConfig(c) => configs.push(c.clone()),
                EncodedEvent::Audio(f) => frames.push(f.clone()),
                EncodedEvent::Video { .. } => video_frames += 1,
                EncodedEvent::VideoConfig { .. } => {}
            }
        }
        (configs, frames, video_frames)
    };

    let (configs, frames, video_frames) = split(&transcode_all(&video, &audio, &input, true));
    assert_eq!(
        configs,
        vec![audio.clone()],
        "the input's own AudioSpecificConfig"
    );
    assert_eq!(frames.len(), audio_in.len());
    for (out, inp) in frames.iter().zip(&audio_in) {
        assert_eq!((out.pts, out.dts, &out.data), (inp.pts, inp.dts, &inp.data));
    }
    assert!(video_frames > 60, "video still encoded: {video_frames}");

    let (configs, frames, video_frames) = split(&transcode_all(&video, &audio, &input, false));
    assert_eq!(configs.len(), 1);
    assert_eq!((configs[0].sample_rate, configs[0].channels), (48_000, 2));
    assert!(frames.len() > 100, "{}", frames.len());
    let same = frames
        .iter()
        .zip(&audio_in)
        .filter(|(o, i)| o.data == i.data)
        .count();
    assert!(
        same < frames.len() / 10,
        "re-encoded audio differs: {same} identical frames"
    );
    assert!(video_frames > 60, "{video_frames}");
}
