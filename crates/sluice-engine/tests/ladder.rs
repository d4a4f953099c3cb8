//! Real GStreamer: the test pattern feeds a two-rung ladder; keyframes must land
//! on the segment grid, on the same frames in every rendition, and nowhere else.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_core::{AudioConfig, Frame, TrackKind, VideoConfig};
use sluice_engine::{
    EncodedEvent, RenditionSettings, TestPattern, TestPatternSettings, TopRung, TranscodeSettings,
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

    // `ladder`: audio transcoded (the pattern's AAC-LC 48 kHz stereo is passed through in a
    // test below), no bound in media time (4.5 s are pushed at once).
    let mut settings = ladder(&[(320, 180), (160, 90)]);
    settings.renditions[0].video_kbps = 500;
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
    let (events, _) = transcode_all(&settings, &video, &audio, &input);

    let mut keys: [Vec<i64>; 2] = [vec![], vec![]];
    let mut counts = [0usize; 2];
    let mut audio_frames = 0;
    let mut configs = [None, None];
    for ev in events {
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

/// A ladder of 1 s segments with these rungs, x264 ultrafast, no bound on queued time.
fn ladder(rungs: &[(u32, u32)]) -> TranscodeSettings {
    TranscodeSettings {
        segment_duration: SEG,
        renditions: rungs
            .iter()
            .map(|&(width, height)| RenditionSettings {
                width,
                height,
                video_kbps: 200,
            })
            .collect(),
        audio_kbps: 96,
        audio_passthrough: false,
        preset: "ultrafast".into(),
        reuse_top_rung: false,
        encoder: sluice_engine::Encoder::X264,
        max_queued_bytes: 16 << 20,
        max_queued_time: 0,
    }
}

/// Runs `input` through `settings` to its end; returns everything it produced, and what
/// the top rung was once all input was in.
fn transcode_all(
    settings: &TranscodeSettings,
    video: &VideoConfig,
    audio: &AudioConfig,
    input: &[Frame],
) -> (Vec<EncodedEvent>, Option<TopRung>) {
    let (otx, orx) = mpsc::sync_channel::<EncodedEvent>(10_000);
    let t = Transcoder::start(
        settings,
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
    let top = t.top_rung();
    run_to_end(t);
    (orx.try_iter().collect(), top)
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

    let passthrough = |on| TranscodeSettings {
        audio_passthrough: on,
        ..ladder(&[(160, 90)])
    };
    let (configs, frames, video_frames) =
        split(&transcode_all(&passthrough(true), &video, &audio, &input).0);
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

    let (configs, frames, video_frames) =
        split(&transcode_all(&passthrough(false), &video, &audio, &input).0);
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

/// The pattern's frames moved so that its first keyframe is at 0: its keyframes, every
/// 30 frames at 30 fps, then fall on the one-second grid, like those of an encoder set to a
/// keyframe interval of the segment duration. Frames that would be before 0 are left out.
fn on_grid(input: &[Frame], shift: i64) -> Vec<Frame> {
    let t0 = input[0].pts;
    input
        .iter()
        .filter(|f| f.pts >= t0 && f.dts >= t0)
        .map(|f| Frame {
            pts: f.pts - t0 + shift,
            dts: f.dts - t0 + shift,
            ..f.clone()
        })
        .collect()
}

/// What rendition `r` produced: its configurations and frames, in order.
fn rung(events: &[EncodedEvent], r: usize) -> (Vec<VideoConfig>, Vec<Frame>, Vec<usize>) {
    let (mut configs, mut frames, mut config_at) = (Vec::new(), Vec::new(), Vec::new());
    for ev in events {
        match ev {
            EncodedEvent::VideoConfig {
                rendition, config, ..
            } if *rendition == r => {
                configs.push(config.clone());
                config_at.push(frames.len());
            }
            EncodedEvent::Video { rendition, frame } if *rendition == r => {
                frames.push(frame.clone())
            }
            _ => {}
        }
    }
    (configs, frames, config_at)
}

fn keyframes(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.keyframe)
        .map(|f| f.pts)
        .collect()
}

/// `reuse_top_rung` with input of the top rung's size whose keyframes are on the grid:
/// the top rung is the input, frame for frame and byte for byte, cut on the same
/// keyframes as the encoded rung. Without the size, it is encoded.
#[test]
fn top_rung_is_the_input_while_its_keyframes_are_on_the_grid() {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    let (video, audio, raw) = pattern_input(4 * SEG);
    let input = on_grid(&raw, 0);
    let video_in: Vec<&Frame> = input
        .iter()
        .filter(|f| f.track == TrackKind::Video)
        .collect();
    assert_eq!(
        keyframes(&video_in.iter().map(|f| (*f).clone()).collect::<Vec<_>>())[..4],
        [0, SEG, 2 * SEG, 3 * SEG],
        "the pattern's keyframes are every second"
    );
    let settings = TranscodeSettings {
        reuse_top_rung: true,
        ..ladder(&[(320, 180), (160, 90)])
    };
    let (events, top) = transcode_all(&settings, &video, &audio, &input);
    assert_eq!(top, Some(TopRung::Reused));
    let (configs, frames, _) = rung(&events, 0);
    assert_eq!(configs, vec![video.clone()], "the input's own avcC");
    assert_eq!(frames.len(), video_in.len());
    for (out, inp) in frames.iter().zip(&video_in) {
        assert_eq!(
            (out.pts, out.dts, out.keyframe, &out.data),
            (inp.pts, inp.dts, inp.keyframe, &inp.data)
        );
    }
    let (_, encoded, _) = rung(&events, 1);
    assert_eq!(encoded.len(), frames.len(), "every picture in both rungs");
    assert_eq!(
        keyframes(&frames),
        keyframes(&encoded),
        "cut at the same instants"
    );

    // The input is not the rung's size: encoded, said so.
    let (events, top) = transcode_all(
        &TranscodeSettings {
            reuse_top_rung: true,
            ..ladder(&[(160, 90)])
        },
        &video,
        &audio,
        &input,
    );
    assert_eq!(top, Some(TopRung::Encoded));
    let (configs, frames, _) = rung(&events, 0);
    assert_eq!((configs[0].width, configs[0].height), (160, 90));
    assert!(frames.len() > 90, "{}", frames.len());
}

/// A live input whose keyframes drift off the grid (its encoder restarted 2.5 s in, so its
/// keyframes are then at 2.5 s, 3.5 s…): the top rung is the input up to the first
/// boundary without an input keyframe (3 s), encoded from that boundary on with a new
/// configuration, and every rendition still cuts on the same frames.
#[test]
fn top_rung_falls_back_to_encoding_when_input_keyframes_leave_the_grid() {
    sluice_engine::check_elements().expect("GStreamer elements installed");
    let (video, audio, raw) = pattern_input(3 * SEG);
    let first: Vec<Frame> = on_grid(&raw, 0)
        .into_iter()
        .filter(|f| f.pts < 2 * SEG + SEG / 2)
        .collect();
    let mut input = first.clone();
    input.extend(on_grid(&raw, 2 * SEG + SEG / 2));
    let break_at = 3 * SEG;
    let video_in: Vec<Frame> = input
        .iter()
        .filter(|f| f.track == TrackKind::Video)
        .cloned()
        .collect();
    assert_eq!(
        keyframes(&video_in)[..5],
        [0, SEG, 2 * SEG, 2 * SEG + SEG / 2, 3 * SEG + SEG / 2]
    );

    let settings = TranscodeSettings {
        reuse_top_rung: true,
        ..ladder(&[(320, 180), (160, 90)])
    };
    let (events, top) = transcode_all(&settings, &video, &audio, &input);
    assert_eq!(top, Some(TopRung::FellBack));
    let (configs, frames, config_at) = rung(&events, 0);
    // (Both x264 at ultrafast here: the same parameter sets, announced again.)
    assert_eq!(configs.len(), 2, "the input's avcC, then the encoder's");
    assert_eq!(configs[0], video);
    let reused = frames.iter().take_while(|f| f.pts < break_at).count();
    assert_eq!(
        config_at,
        vec![0, reused],
        "the encoder's avcC right at the switch"
    );
    for (out, inp) in frames[..reused].iter().zip(&video_in) {
        assert_eq!((out.pts, out.dts, &out.data), (inp.pts, inp.dts, &inp.data));
    }
    assert_eq!(
        reused,
        video_in.iter().filter(|f| f.pts < break_at).count(),
        "the input up to the boundary"
    );
    assert!(
        frames[reused..].iter().all(|f| f.pts >= break_at),
        "encoded from the boundary on, in order"
    );
    assert_eq!(frames[reused].pts, break_at);
    assert!(frames[reused].keyframe);
    let same = frames[reused..]
        .iter()
        .filter(|o| video_in.iter().any(|i| i.pts == o.pts && i.data == o.data))
        .count();
    assert_eq!(same, 0, "encoded, not the input's frames");
    let (_, encoded, _) = rung(&events, 1);
    assert_eq!(frames.len(), encoded.len(), "no picture lost at the switch");
    // The input's off-grid keyframe at 2.5 s is not a cut: both rungs cut on the grid.
    let keys = keyframes(&frames);
    assert_eq!(keys, keyframes(&encoded));
    assert_eq!(keys[..5], [0, SEG, 2 * SEG, 3 * SEG, 4 * SEG]);
}
