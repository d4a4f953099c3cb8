//! The MPEG-TS demuxer against ffmpeg's muxer: the packager's MP4 fixture remuxed to TS
//! by ffmpeg (`-c copy`), demuxed by us, compared with the same frames read from the
//! MP4 by the `mp4` crate. Byte for byte, frame for frame, whatever the cuts in the input.

use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;

use sluice_core::{Frame, TrackKind};
use sluice_ingest::ts_demux::{PACKET, TsDemuxer, TsError, TsEvent};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sluice-package/testdata/ffmpeg_320x180_h264_aac.mp4")
}

/// ffmpeg remuxes the fixture to MPEG-TS, with extra output arguments.
fn ffmpeg_ts(extra: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(fixture_path())
        .args(["-c", "copy"])
        .args(extra)
        .args(["-f", "mpegts", "-"])
        .output()
        .unwrap_or_else(|e| {
            panic!("ffmpeg is required for this test (scripts/setup-debian.sh installs it): {e}")
        });
    assert!(out.status.success(), "ffmpeg failed");
    out.stdout
}

/// Video samples (AVCC, as in the MP4) and audio samples of the fixture.
fn mp4_frames() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let data = std::fs::read(fixture_path()).unwrap();
    let mut reader = mp4::Mp4Reader::read_header(Cursor::new(&data), data.len() as u64).unwrap();
    let tracks: Vec<(u32, mp4::TrackType)> = reader
        .tracks()
        .values()
        .map(|t| (t.track_id(), t.track_type().unwrap()))
        .collect();
    let (mut video, mut audio) = (vec![], vec![]);
    for (id, kind) in tracks {
        for i in 1..=reader.sample_count(id).unwrap() {
            let s = reader.read_sample(id, i).unwrap().unwrap();
            match kind {
                mp4::TrackType::Video => video.push(s.bytes.to_vec()),
                _ => audio.push(s.bytes.to_vec()),
            }
        }
    }
    (video, audio)
}

/// NAL units of an AVCC frame (4-byte lengths), without SPS, PPS and AUD.
fn slices(avcc: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let mut pos = 0;
    while pos + 4 <= avcc.len() {
        let len = u32::from_be_bytes(avcc[pos..pos + 4].try_into().unwrap()) as usize;
        let nal = &avcc[pos + 4..pos + 4 + len];
        if !matches!(nal[0] & 0x1f, 7..=9) {
            out.push(nal.to_vec());
        }
        pos += 4 + len;
    }
    out
}

fn demux(ts: &[u8], chunk: impl Fn(usize) -> usize) -> Result<Vec<TsEvent>, TsError> {
    let mut d = TsDemuxer::new();
    let mut events = vec![];
    let mut pos = 0;
    let mut i = 0;
    while pos < ts.len() {
        let n = chunk(i).max(1).min(ts.len() - pos);
        d.push(&ts[pos..pos + n], &mut events)?;
        pos += n;
        i += 1;
    }
    d.finish(&mut events);
    Ok(events)
}

fn frames(events: &[TsEvent], track: TrackKind) -> Vec<&Frame> {
    events
        .iter()
        .filter_map(|e| match e {
            TsEvent::Frame(f) if f.track == track => Some(f),
            _ => None,
        })
        .collect()
}

#[test]
fn ffmpeg_ts_demuxes_to_the_mp4_frames_whatever_the_cuts() {
    let ts = ffmpeg_ts(&[]);
    let (mp4_video, mp4_audio) = mp4_frames();
    // Whole SRT messages (7 packets), odd cuts, and single bytes.
    let cuts: [&dyn Fn(usize) -> usize; 3] = [&|_| 7 * PACKET, &|i| 1 + (i * 37) % 401, &|_| 1];
    let mut first: Option<Vec<TsEvent>> = None;
    for cut in cuts {
        let events = demux(&ts, cut).unwrap();
        let configs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                TsEvent::VideoConfig(c) => Some((c.width, c.height)),
                _ => None,
            })
            .collect();
        assert_eq!(configs, vec![(320, 180)], "one video configuration");
        assert_eq!(
            events
                .iter()
                .filter_map(|e| match e {
                    TsEvent::AudioConfig(c) => Some((c.sample_rate, c.channels, c.object_type)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            vec![(48000, 2, 2)]
        );
        let video = frames(&events, TrackKind::Video);
        let audio = frames(&events, TrackKind::Audio);
        assert_eq!(video.len(), mp4_video.len(), "every video frame");
        assert_eq!(audio.len(), mp4_audio.len(), "every audio frame");
        for (i, (ours, theirs)) in video.iter().zip(&mp4_video).enumerate() {
            assert_eq!(slices(&ours.data), slices(theirs), "video frame {i}");
            assert_eq!(ours.keyframe, i % 60 == 0, "keyframe flag of frame {i}");
        }
        for (i, (ours, theirs)) in audio.iter().zip(&mp4_audio).enumerate() {
            assert_eq!(&ours.data[..], &theirs[..], "audio frame {i}");
        }
        // 30 fps and 1024-sample AAC frames at 48 kHz, on one clock.
        let v0 = video[0].dts;
        assert!(video.windows(2).all(|w| w[1].dts > w[0].dts));
        assert!((video[30].dts - v0 - 1_000_000_000).abs() < 1_000_000);
        assert!(
            audio
                .windows(2)
                .all(|w| (w[1].pts - w[0].pts - 21_333_333).abs() < 20_000)
        );
        assert!((audio[0].pts - video[0].pts).abs() < 100_000_000);
        match &first {
            None => first = Some(events),
            Some(f) => assert_eq!(f, &events, "the same result for every cut"),
        }
    }
}

/// Timestamps near the 33-bit wrap (26.5 h) keep increasing across it.
#[test]
fn timestamps_keep_increasing_across_the_33_bit_wrap() {
    // The wrap is at 95443.717 s; start 2 s before it.
    let ts = ffmpeg_ts(&["-output_ts_offset", "95441.7"]);
    let events = demux(&ts, |_| 7 * PACKET).unwrap();
    let video = frames(&events, TrackKind::Video);
    let audio = frames(&events, TrackKind::Audio);
    assert!(video.len() >= 170);
    assert!(video.windows(2).all(|w| w[1].dts > w[0].dts), "video dts");
    assert!(audio.windows(2).all(|w| w[1].pts > w[0].pts), "audio pts");
    let wrap = (1i64 << 33) * 100_000 / 9;
    assert!(video[0].dts < wrap && video.last().unwrap().dts > wrap);
}

/// A lost packet drops the damaged frame and video waits for the next keyframe; the
/// rest comes through.
#[test]
fn a_lost_packet_costs_its_frame_and_video_until_the_next_keyframe() {
    let ts = ffmpeg_ts(&[]);
    let (mp4_video, _) = mp4_frames();
    let packets: Vec<&[u8]> = ts.chunks(PACKET).collect();
    // A video packet in the middle of the first GOP, that does not start a PES.
    let pid = |p: &[u8]| (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
    let video_pid = 0x100;
    let victim = packets
        .iter()
        .enumerate()
        .filter(|(_, p)| pid(p) == video_pid && p[1] & 0x40 == 0)
        .map(|(i, _)| i)
        .nth(200)
        .unwrap();
    let damaged: Vec<u8> = packets
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    let events = demux(&damaged, |_| 7 * PACKET).unwrap();
    let video = frames(&events, TrackKind::Video);
    assert!(video.len() < mp4_video.len(), "some frames dropped");
    assert!(video.len() >= mp4_video.len() - 60, "at most a GOP lost");
    // What comes after the loss starts at a keyframe and matches the MP4's frames.
    let tail = &mp4_video[mp4_video.len() - 120..];
    let ours = &video[video.len() - 120..];
    assert!(ours[0].keyframe);
    for (a, b) in ours.iter().zip(tail) {
        assert_eq!(slices(&a.data), slices(b));
    }
}

/// One second of `codec` video (no audio) as MPEG-TS, from ffmpeg.
fn lavfi_ts(codec: &str) -> std::process::Output {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=160x90:rate=10")
        .args(["-t", "1", "-c:v", codec, "-f", "mpegts", "-"])
        .output()
        .expect("ffmpeg")
}

#[test]
fn what_is_not_h264_ts_is_refused() {
    // Random bytes without a sync byte.
    let junk: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8 | 1).collect();
    assert!(matches!(demux(&junk, |_| 1316), Err(TsError::NoSync(_))));
    // HEVC video: refused with its stream type, at the first PMT.
    let hevc = lavfi_ts("libx265");
    if hevc.status.success() && !hevc.stdout.is_empty() {
        assert_eq!(
            demux(&hevc.stdout, |_| 1316).err(),
            Some(TsError::UnsupportedVideo(0x24))
        );
    }
    // MPEG-2 video is refused the same way (ffmpeg always has this encoder).
    let mpeg2 = lavfi_ts("mpeg2video");
    assert_eq!(
        demux(&mpeg2.stdout, |_| 1316).err(),
        Some(TsError::UnsupportedVideo(0x02))
    );
}

/// A program with AAC and no video (an audio source's publisher): refused by a channel's
/// demuxer, taken by a source's, whose audio frames are the MP4's.
#[test]
fn audio_only_programs_are_taken_for_audio_sources_only() {
    let ts = ffmpeg_ts(&["-vn"]);
    assert_eq!(demux(&ts, |_| 1316).err(), Some(TsError::NoVideo));
    let mut d = TsDemuxer::audio_only(true);
    let mut events = vec![];
    for chunk in ts.chunks(1316) {
        d.push(chunk, &mut events).unwrap();
    }
    d.finish(&mut events);
    assert!(events.iter().any(|e| matches!(e, TsEvent::AudioConfig(_))));
    assert!(!events.iter().any(|e| matches!(e, TsEvent::VideoConfig(_))));
    let (_, audio) = mp4_frames();
    let got: Vec<&[u8]> = frames(&events, TrackKind::Audio)
        .iter()
        .map(|f| &f.data[..])
        .collect();
    let want: Vec<&[u8]> = audio.iter().map(Vec::as_slice).collect();
    assert_eq!(got, want);
    // Other video than H.264 is still refused as such.
    let mpeg2 = lavfi_ts("mpeg2video");
    let mut d = TsDemuxer::audio_only(true);
    assert_eq!(
        d.push(&mpeg2.stdout, &mut vec![]).err(),
        Some(TsError::UnsupportedVideo(0x02))
    );
}
