//! End-to-end tests of the packager on a real ffmpeg capture, checked by
//! independent parsers: `m3u8-rs` for playlists, the `mp4` crate for fMP4,
//! and `ffprobe` (required) for decoding CMAF and TS segments.

use std::io::Cursor;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use m3u8_rs::{MasterPlaylist, MediaPlaylist, Playlist};
use sluice_core::time::NANOS_PER_SEC;
use sluice_core::{AudioConfig, Frame, Id, MediaTime, TrackKind, VideoConfig};
use sluice_package::{
    AudioSpec, EngineOutput, OutputKind, Packager, PackagerSettings, RenditionSpec, TrackSpec,
};

/// 6 s, 320x180, 30 fps, x264 high with B-frames, keyint 60, no scene cut;
/// AAC-LC 48 kHz stereo. Made by:
/// `ffmpeg -f lavfi -i testsrc2=size=320x180:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000
///  -t 6 -c:v libx264 -preset veryfast -profile:v high -pix_fmt yuv420p
///  -x264-params keyint=60:min-keyint=60:scenecut=0:bframes=2 -b:v 200k
///  -c:a aac -b:a 64k -ac 2 -ar 48000 -movflags +faststart ffmpeg_320x180_h264_aac.mp4`
const FIXTURE: &[u8] = include_bytes!("../testdata/ffmpeg_320x180_h264_aac.mp4");
const S: MediaTime = NANOS_PER_SEC;
const D: MediaTime = 2 * S;
/// Where the fixture sits on the channel timeline: keyframes at 10, 12 and 14 s.
const OFFSET: MediaTime = 10 * S;

struct Fixture {
    video_cfg: VideoConfig,
    audio_cfg: AudioConfig,
    video: Vec<Frame>,
    audio: Vec<Frame>,
}

fn load_fixture() -> Fixture {
    let mut reader =
        mp4::Mp4Reader::read_header(Cursor::new(FIXTURE), FIXTURE.len() as u64).unwrap();
    let tracks: Vec<(u32, mp4::TrackType, u32, i64)> = reader
        .tracks()
        .values()
        .map(|t| {
            let shift = t
                .trak
                .edts
                .as_ref()
                .and_then(|e| e.elst.as_ref())
                .and_then(|e| e.entries.first())
                .map_or(0, |e| e.media_time as i64);
            (t.track_id(), t.track_type().unwrap(), t.timescale(), shift)
        })
        .collect();
    let mut video = vec![];
    let mut audio = vec![];
    for (id, kind, timescale, shift) in tracks {
        let to_ns = |t: i64| (t - shift) * S / timescale as i64 + OFFSET;
        for i in 1..=reader.sample_count(id).unwrap() {
            let s = reader.read_sample(id, i).unwrap().unwrap();
            let dts = s.start_time as i64;
            let frame = Frame {
                track: if kind == mp4::TrackType::Video {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                },
                pts: to_ns(dts + s.rendering_offset as i64),
                dts: to_ns(dts),
                keyframe: s.is_sync || kind == mp4::TrackType::Audio,
                data: Bytes::copy_from_slice(&s.bytes),
            };
            if kind == mp4::TrackType::Video {
                video.push(frame)
            } else {
                audio.push(frame)
            }
        }
    }
    // The avcC record, exactly as ffmpeg wrote it.
    let at = FIXTURE.windows(4).position(|w| w == b"avcC").unwrap();
    let size = u32::from_be_bytes(FIXTURE[at - 4..at].try_into().unwrap()) as usize;
    let video_cfg =
        VideoConfig::from_avcc(Bytes::copy_from_slice(&FIXTURE[at + 4..at - 4 + size])).unwrap();
    Fixture {
        video_cfg,
        audio_cfg: AudioConfig::aac_lc(48000, 2),
        video,
        audio,
    }
}

fn settings(window: MediaTime) -> PackagerSettings {
    PackagerSettings {
        segment_duration: D,
        window,
        cmaf: true,
        ts: true,
        init_version_base: 0,
        part_duration: 0,
        keyframes_forced: false,
    }
}

fn spec(name: &str, kbps: u32) -> RenditionSpec {
    RenditionSpec {
        name: Id::new(name).unwrap(),
        width: 320,
        height: 180,
        video_kbps: kbps,
    }
}

fn new_packager(
    renditions: Vec<RenditionSpec>,
    window: MediaTime,
    fx: &Fixture,
) -> (Packager, Arc<EngineOutput>) {
    let n = renditions.len();
    let (mut p, out) = Packager::new(settings(window), renditions, Some(AudioSpec { kbps: 64 }));
    for r in 0..n {
        p.set_video_config(r, fx.video_cfg.clone());
    }
    p.set_audio_config(fx.audio_cfg.clone());
    (p, out)
}

/// Pushes frames in decode order across both tracks, `shift` added to every
/// timestamp, video to every rendition. `audio_lag` delays audio arrival.
fn feed(
    p: &mut Packager,
    fx: &Fixture,
    renditions: usize,
    shift: MediaTime,
    audio_lag: MediaTime,
    skip_before: MediaTime,
) {
    let mut events: Vec<(MediaTime, &Frame)> = fx
        .video
        .iter()
        .map(|f| (f.dts, f))
        .chain(fx.audio.iter().map(|f| (f.dts + audio_lag, f)))
        .filter(|(_, f)| f.dts >= skip_before)
        .collect();
    events.sort_by_key(|e| (e.0, e.1.track == TrackKind::Audio));
    for (_, f) in events {
        let f = Frame {
            pts: f.pts + shift,
            dts: f.dts + shift,
            ..f.clone()
        };
        match f.track {
            TrackKind::Video => {
                for r in 0..renditions {
                    p.push_video(r, f.clone());
                }
            }
            TrackKind::Audio => p.push_audio(f),
        }
    }
}

fn media(out: &EngineOutput, kind: OutputKind, rendition: &str) -> MediaPlaylist {
    let bytes = out.media_playlist(kind, rendition).expect("media playlist");
    match m3u8_rs::parse_playlist_res(&bytes).expect("playlist parses") {
        Playlist::MediaPlaylist(p) => p,
        Playlist::MasterPlaylist(_) => panic!("expected a media playlist"),
    }
}

fn master(out: &EngineOutput, kind: OutputKind, cap: Option<u32>) -> MasterPlaylist {
    let bytes = out.multivariant(kind, cap).expect("multivariant playlist");
    match m3u8_rs::parse_playlist_res(&bytes).expect("playlist parses") {
        Playlist::MasterPlaylist(p) => p,
        Playlist::MediaPlaylist(_) => panic!("expected a multivariant playlist"),
    }
}

fn msns(pl: &MediaPlaylist) -> Vec<u64> {
    pl.segments
        .iter()
        .map(|s| s.uri.split('.').next().unwrap().parse().unwrap())
        .collect()
}

/// Parses init + segment with the `mp4` crate: (sample count, first sample is sync).
fn parse_fmp4(init: &[u8], segment: &[u8]) -> (u32, bool) {
    let mut file = init.to_vec();
    file.extend_from_slice(segment);
    let reader = mp4::Mp4Reader::read_header(Cursor::new(&file), file.len() as u64).unwrap();
    assert!(reader.is_fragmented());
    let track = reader.tracks().get(&1).unwrap();
    let trun = track.trafs[0].trun.as_ref().unwrap();
    (
        reader.sample_count(1).unwrap(),
        trun.sample_flags[0] == 0x0200_0000,
    )
}

/// The suite runs ffprobe; without it this test fails in one line instead of passing
/// with its decoding checks skipped (`scripts/setup-debian.sh --test` installs it).
fn require_ffprobe() {
    let found = Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "required program `ffprobe` not found on PATH (run scripts/setup-debian.sh --test)"
    );
}

/// Decodes a file with ffprobe: per stream (codec_type, width, height, decoded frames).
fn ffprobe(data: &[u8], name: &str) -> Vec<(String, u64, u64, u64)> {
    let path = std::env::temp_dir().join(format!("sluice-package-{}-{name}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,height,nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            match f[0] {
                "video" => (f[0].to_owned(), num(1), num(2), num(3)),
                _ => (f[0].to_owned(), 0, 0, num(1)),
            }
        })
        .collect()
}

/// Checks TS packetization; returns (audio PES count, whether the first video
/// packet sets random_access_indicator).
fn ts_check(seg: &[u8]) -> (usize, bool) {
    assert_eq!(seg.len() % 188, 0);
    let mut audio_pes = 0;
    let mut first_video_random_access = None;
    for p in seg.chunks(188) {
        assert_eq!(p[0], 0x47);
        let pid = ((p[1] as u16 & 0x1f) << 8) | p[2] as u16;
        let pusi = p[1] & 0x40 != 0;
        if pid == 0x101 && pusi {
            audio_pes += 1;
        }
        if pid == 0x100 && pusi && first_video_random_access.is_none() {
            first_video_random_access = Some(p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x40 != 0);
        }
    }
    (audio_pes, first_video_random_access.unwrap_or(false))
}

#[test]
fn cmaf_and_ts_from_ffmpeg_fixture() {
    let fx = load_fixture();
    assert_eq!(fx.video.len(), 180);
    assert_eq!(fx.video[0].pts, OFFSET);
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    assert!(out.multivariant(OutputKind::Cmaf, None).is_none());
    let changes = out.subscribe_playlist(OutputKind::Cmaf, "360p");
    feed(&mut p, &fx, 1, 0, 0, i64::MIN);
    assert!(out.is_live());
    p.finish();
    assert!(!out.is_live());
    assert!(changes.has_changed().unwrap());
    assert_eq!(out.rendition_names(), vec!["360p".to_owned()]);
    assert_eq!(out.latest_msn("360p"), Some(7));

    // Multivariant playlists.
    let m = master(&out, OutputKind::Cmaf, None);
    assert_eq!(m.variants.len(), 1);
    let v = &m.variants[0];
    assert_eq!(v.uri, "360p/index.m3u8");
    let codecs = v.codecs.as_deref().unwrap();
    assert!(
        codecs.starts_with("avc1.64") && codecs.ends_with(",mp4a.40.2"),
        "{codecs}"
    );
    assert_eq!(v.resolution.unwrap().width, 320);
    assert_eq!(v.resolution.unwrap().height, 180);
    assert!((v.frame_rate.unwrap() - 30.0).abs() < 0.01);
    assert_eq!(v.audio.as_deref(), Some("audio"));
    assert!(v.bandwidth >= v.average_bandwidth.unwrap() && v.bandwidth > 64_000);
    assert_eq!(m.alternatives.len(), 1);
    assert_eq!(m.alternatives[0].uri.as_deref(), Some("audio/index.m3u8"));
    let t = master(&out, OutputKind::Ts, None);
    assert!(t.alternatives.is_empty() && t.variants[0].audio.is_none());

    // Media playlists: numbered from media time, ~2 s each, closed.
    for (kind, name) in [
        (OutputKind::Cmaf, "360p"),
        (OutputKind::Cmaf, "audio"),
        (OutputKind::Ts, "360p"),
    ] {
        let pl = media(&out, kind, name);
        assert_eq!(pl.media_sequence, 5, "{kind} {name}");
        assert_eq!(msns(&pl), vec![5, 6, 7], "{kind} {name}");
        assert!(pl.end_list);
        assert_eq!(pl.target_duration, 2);
        for s in &pl.segments {
            assert!(
                (s.duration - 2.0).abs() < 0.01,
                "{kind} {name}: {}",
                s.duration
            );
        }
        if kind == OutputKind::Cmaf {
            assert_eq!(pl.version, Some(7));
            assert_eq!(pl.segments[0].map.as_ref().unwrap().uri, "init-1.mp4");
            assert!(pl.segments[1].map.is_none());
        } else {
            assert_eq!(pl.version, Some(3));
        }
    }

    // fMP4 parses back with the right sample counts, starting with a sync sample.
    let video_init = out.init_segment("360p", 1).unwrap();
    let audio_init = out.init_segment("audio", 1).unwrap();
    let mut audio_samples = 0;
    for msn in 5..=7 {
        let (n, sync) = parse_fmp4(
            &video_init,
            &out.segment(OutputKind::Cmaf, "360p", msn).unwrap(),
        );
        assert_eq!((n, sync), (60, true), "video {msn}");
        let (n, _) = parse_fmp4(
            &audio_init,
            &out.segment(OutputKind::Cmaf, "audio", msn).unwrap(),
        );
        assert!((92..=95).contains(&n), "audio {msn}: {n}");
        audio_samples += n;
        let (audio_pes, random_access) =
            ts_check(&out.segment(OutputKind::Ts, "360p", msn).unwrap());
        assert!(random_access, "ts {msn} starts with a keyframe");
        assert!(audio_pes >= 20, "ts {msn} audio PES: {audio_pes}");
    }
    assert!(
        audio_samples as usize >= fx.audio.len() - 1,
        "{audio_samples} of {}",
        fx.audio.len()
    );
    assert!(out.segment(OutputKind::Cmaf, "360p", 8).is_none());
    assert!(out.init_segment("360p", 2).is_none());

    require_ffprobe();
    for msn in 5..=7u64 {
        let mut file = video_init.to_vec();
        file.extend_from_slice(&out.segment(OutputKind::Cmaf, "360p", msn).unwrap());
        assert_eq!(
            ffprobe(&file, &format!("v{msn}.mp4")),
            vec![("video".to_owned(), 320, 180, 60)]
        );
        let mut file = audio_init.to_vec();
        file.extend_from_slice(&out.segment(OutputKind::Cmaf, "audio", msn).unwrap());
        let streams = ffprobe(&file, &format!("a{msn}.mp4"));
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].0, "audio");
        assert!(streams[0].3 >= 92, "{streams:?}");

        let streams = ffprobe(
            &out.segment(OutputKind::Ts, "360p", msn).unwrap(),
            &format!("{msn}.ts"),
        );
        let video = streams.iter().find(|s| s.0 == "video").unwrap();
        assert_eq!((video.1, video.2, video.3), (320, 180, 60), "{streams:?}");
        let audio = streams.iter().find(|s| s.0 == "audio").unwrap();
        assert!(audio.3 >= 90, "{streams:?}");
    }
    // Consecutive TS segments concatenate into one stream (continuity counters carry on).
    let all: Vec<u8> = (5..=7)
        .flat_map(|msn| out.segment(OutputKind::Ts, "360p", msn).unwrap().to_vec())
        .collect();
    let streams = ffprobe(&all, "all.ts");
    assert_eq!(streams.iter().find(|s| s.0 == "video").unwrap().3, 180);
}

#[test]
fn late_audio_is_waited_for() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    // Audio arrives 1.5 s after the video of the same time.
    feed(&mut p, &fx, 1, 0, 3 * S / 2, i64::MIN);
    p.finish();
    for msn in 5..=7 {
        let (audio_pes, _) = ts_check(&out.segment(OutputKind::Ts, "360p", msn).unwrap());
        assert!(audio_pes >= 20, "ts {msn}: {audio_pes} audio PES");
        assert!(out.segment(OutputKind::Cmaf, "audio", msn).is_some());
    }
}

#[test]
fn missing_audio_does_not_stall_video() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    for f in &fx.video {
        p.push_video(0, f.clone());
    }
    assert!(
        out.multivariant(OutputKind::Cmaf, None).is_none(),
        "waits for audio"
    );
    // Segment 5 is written once video is more than 2·d past its start without audio.
    let pl = media(&out, OutputKind::Ts, "360p");
    assert_eq!(msns(&pl), vec![5]);
    assert_eq!(
        ts_check(&out.segment(OutputKind::Ts, "360p", 5).unwrap()).0,
        0
    );
    p.finish();
    assert_eq!(msns(&media(&out, OutputKind::Ts, "360p")), vec![5, 6, 7]);
    // CMAF audio never began: its playlist does not exist, and after three
    // segments the stream is offered without audio.
    assert!(out.media_playlist(OutputKind::Cmaf, "audio").is_none());
    let m = master(&out, OutputKind::Cmaf, None);
    assert!(m.alternatives.is_empty() && m.variants[0].audio.is_none());
}

#[test]
fn discontinuity_keeps_numbering() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    feed(&mut p, &fx, 1, 0, 0, i64::MIN);
    p.discontinuity();
    // The publisher reconnects with other encoder settings: a new init segment.
    let mut cfg = fx.video_cfg.clone();
    cfg.level += 1;
    p.set_video_config(0, cfg);
    // The new session continues the channel timeline, later.
    feed(&mut p, &fx, 1, 20 * S, 0, i64::MIN);
    p.finish();
    let pl = media(&out, OutputKind::Cmaf, "360p");
    let maps: Vec<Option<&str>> = pl
        .segments
        .iter()
        .map(|s| s.map.as_ref().map(|m| m.uri.as_str()))
        .collect();
    assert_eq!(
        maps,
        vec![
            Some("init-1.mp4"),
            None,
            None,
            Some("init-2.mp4"),
            None,
            None
        ]
    );
    assert!(out.init_segment("360p", 1).is_some() && out.init_segment("360p", 2).is_some());
    let m = master(&out, OutputKind::Cmaf, None);
    assert!(
        m.variants[0]
            .codecs
            .as_deref()
            .unwrap()
            .starts_with("avc1.6400")
    );
    for (kind, name) in [
        (OutputKind::Cmaf, "360p"),
        (OutputKind::Cmaf, "audio"),
        (OutputKind::Ts, "360p"),
    ] {
        let pl = media(&out, kind, name);
        assert_eq!(msns(&pl), vec![5, 6, 7, 8, 9, 10], "{kind} {name}");
        let flags: Vec<bool> = pl.segments.iter().map(|s| s.discontinuity).collect();
        assert_eq!(
            flags,
            vec![false, false, false, true, false, false],
            "{kind} {name}"
        );
        let text = String::from_utf8(out.media_playlist(kind, name).unwrap().to_vec()).unwrap();
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
    }
}

#[test]
fn window_slides_and_old_segments_drop() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 6 * S, &fx);
    for round in 0..5 {
        feed(&mut p, &fx, 1, round * 6 * S, 0, i64::MIN);
    }
    // Fifteen segments, 5..=19; the last one is still open.
    let pl = media(&out, OutputKind::Cmaf, "360p");
    assert_eq!(msns(&pl), vec![16, 17, 18]);
    assert_eq!(pl.media_sequence, 16);
    assert!(!pl.end_list);
    assert!(
        out.segment(OutputKind::Cmaf, "360p", 14).is_some(),
        "kept for older playlists"
    );
    assert!(
        out.segment(OutputKind::Cmaf, "360p", 13).is_none(),
        "dropped"
    );
    assert!(out.segment(OutputKind::Ts, "360p", 13).is_none());
    // The CMAF map is repeated on the first listed segment.
    assert!(pl.segments[0].map.is_some());
    p.finish();
    assert_eq!(
        msns(&media(&out, OutputKind::Cmaf, "360p")),
        vec![17, 18, 19]
    );
}

#[test]
fn late_engine_numbers_segments_identically() {
    let fx = load_fixture();
    let (mut a, out_a) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    let (mut b, out_b) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    feed(&mut a, &fx, 1, 0, 0, i64::MIN);
    // Engine b joins at the second keyframe (12 s on the channel timeline).
    let second_key = fx.video.iter().filter(|f| f.keyframe).nth(1).unwrap().dts;
    feed(&mut b, &fx, 1, 0, 0, second_key);
    a.finish();
    b.finish();
    let pa = media(&out_a, OutputKind::Cmaf, "360p");
    let pb = media(&out_b, OutputKind::Cmaf, "360p");
    assert_eq!(msns(&pa), vec![5, 6, 7]);
    assert_eq!(msns(&pb), vec![6, 7]);
    let timeline = |pl: &MediaPlaylist| {
        pl.segments
            .iter()
            .map(|s| (s.uri.clone(), s.duration))
            .collect::<Vec<_>>()
    };
    assert_eq!(timeline(&pa)[1..], timeline(&pb)[..]);
    for msn in 6..=7 {
        // Same media: identical mdat payloads (fragment sequence numbers may differ).
        let sa = out_a.segment(OutputKind::Cmaf, "360p", msn).unwrap();
        let sb = out_b.segment(OutputKind::Cmaf, "360p", msn).unwrap();
        assert_eq!(sa.len(), sb.len());
        let ta = out_a.segment(OutputKind::Ts, "360p", msn).unwrap();
        let tb = out_b.segment(OutputKind::Ts, "360p", msn).unwrap();
        assert_eq!(ta.len(), tb.len());
    }
}

#[test]
fn multivariant_caps_bitrate_and_sorts() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(
        vec![spec("low", 500), spec("high", 2000), spec("mid", 1000)],
        60 * S,
        &fx,
    );
    feed(&mut p, &fx, 3, 0, 0, i64::MIN);
    let names = |m: MasterPlaylist| m.variants.iter().map(|v| v.uri.clone()).collect::<Vec<_>>();
    let all = names(master(&out, OutputKind::Ts, None));
    assert_eq!(all.len(), 3);
    let capped = names(master(&out, OutputKind::Ts, Some(1100)));
    assert_eq!(capped.len(), 2);
    assert!(!capped.contains(&"high/index.m3u8".to_owned()));
    // Nothing fits: the lowest rendition stays.
    assert_eq!(
        names(master(&out, OutputKind::Cmaf, Some(100))),
        vec!["low/index.m3u8".to_owned()]
    );
    let m = master(&out, OutputKind::Cmaf, None);
    let bw: Vec<u64> = m.variants.iter().map(|v| v.bandwidth).collect();
    assert!(bw.windows(2).all(|w| w[0] >= w[1]), "{bw:?}");
}

#[test]
fn video_only_with_stated_frame_rate() {
    let fx = load_fixture();
    let (mut p, out) = Packager::new(settings(60 * S), vec![spec("360p", 300)], None);
    p.set_video_config(0, fx.video_cfg.clone());
    p.set_frame_rate(0, 29.97);
    // Stop right after the keyframe at 12 s: only segment 5 is closed.
    let upto = fx.video.iter().filter(|f| f.keyframe).nth(1).unwrap().dts;
    for f in fx.video.iter().filter(|f| f.dts <= upto) {
        p.push_video(0, f.clone());
    }
    for kind in [OutputKind::Cmaf, OutputKind::Ts] {
        let m = master(&out, kind, None);
        assert!(m.alternatives.is_empty());
        let v = &m.variants[0];
        assert!((v.frame_rate.unwrap() - 29.97).abs() < 1e-9);
        assert!(!v.codecs.as_deref().unwrap().contains("mp4a"));
        assert!(v.audio.is_none());
        assert_eq!(msns(&media(&out, kind, "360p")), vec![5]);
    }
    assert!(out.media_playlist(OutputKind::Cmaf, "audio").is_none());
}

#[test]
fn odd_input_never_panics() {
    let fx = load_fixture();
    let (mut p, out) = Packager::new(
        settings(6 * S),
        vec![spec("360p", 300)],
        Some(AudioSpec { kbps: 64 }),
    );
    let frame = |pts: MediaTime, key: bool, data: &'static [u8]| Frame {
        track: TrackKind::Video,
        pts,
        dts: pts,
        keyframe: key,
        data: Bytes::from_static(data),
    };
    // Before any config, out of range, empty.
    p.push_video(0, frame(0, true, b"\0\0\0\x01\x65"));
    p.push_video(7, frame(0, true, b"x"));
    p.push_audio(frame(0, true, b"x"));
    p.set_video_config(0, fx.video_cfg.clone());
    p.set_audio_config(fx.audio_cfg.clone());
    p.push_video(0, frame(0, true, b""));
    // Garbage AVCC (length prefixes past the end), backwards and equal timestamps,
    // huge and negative times.
    p.push_video(0, frame(-5 * S, true, b"\xff\xff\xff\xff\x65"));
    p.push_video(0, frame(-6 * S, false, b"\0\0\0\x01\x41"));
    p.push_video(0, frame(-5 * S, false, b"\0\0\0\x01\x41"));
    p.push_audio(frame(-5 * S, true, b"\x21"));
    p.push_audio(frame(-5 * S, true, b"\x21"));
    p.push_video(0, frame(0, true, b"\0\0\0\x02\x65"));
    p.push_video(0, frame(i64::MAX / 2, true, b"\0\0\0\x01\x65"));
    p.push_video(0, frame(i64::MAX - 1, true, b"\0\0\0\x01\x65"));
    p.push_audio(frame(i64::MAX - 1, true, b"\x21"));
    p.discontinuity();
    p.discontinuity();
    p.push_video(0, frame(i64::MIN + 1, true, b"\0\0\0\x01\x65"));
    p.finish();
    p.push_video(0, frame(0, true, b"\0\0\0\x01\x65"));
    p.finish();
    for kind in [OutputKind::Cmaf, OutputKind::Ts] {
        if let Some(pl) = out.media_playlist(kind, "360p") {
            m3u8_rs::parse_playlist_res(&pl).expect("still a valid playlist");
        }
    }
    // A packager with no renditions and no outputs is inert.
    let (mut p, out) = Packager::new(
        PackagerSettings {
            segment_duration: 0,
            window: 0,
            cmaf: false,
            ts: false,
            init_version_base: 0,
            part_duration: 0,
            keyframes_forced: false,
        },
        vec![],
        None,
    );
    p.push_audio(frame(0, true, b"x"));
    p.finish();
    assert!(out.multivariant(OutputKind::Cmaf, None).is_none());
}

/// A pipeline torn down mid-segment can leave renditions cut at different points: one
/// encoder had emitted the keyframe that opens the next segment, another not yet. After
/// the seam every rendition must still number the same media the same way.
#[test]
fn renditions_resume_on_one_number_after_an_uneven_seam() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300), spec("180p", 100)], 60 * S, &fx);
    // Both renditions get the first 4 s; only rendition 0 also gets the keyframe at 4 s,
    // which opens its next segment.
    let key = fx
        .video
        .iter()
        .find(|f| f.keyframe && f.pts >= OFFSET + 4 * S)
        .unwrap()
        .clone();
    let mut events: Vec<&Frame> = fx
        .video
        .iter()
        .chain(fx.audio.iter())
        .filter(|f| f.dts < key.dts)
        .collect();
    events.sort_by_key(|f| (f.dts, f.track == TrackKind::Audio));
    for f in events {
        match f.track {
            TrackKind::Video => (0..2).for_each(|r| p.push_video(r, f.clone())),
            TrackKind::Audio => p.push_audio(f.clone()),
        }
    }
    p.push_video(0, key);
    p.discontinuity();
    feed(&mut p, &fx, 2, 20 * S, 0, i64::MIN);
    p.finish();
    let a = media(&out, OutputKind::Cmaf, "360p");
    let b = media(&out, OutputKind::Cmaf, "180p");
    let seam = |p: &MediaPlaylist| {
        p.segments
            .iter()
            .position(|s| s.discontinuity)
            .map(|i| p.media_sequence + i as u64)
    };
    assert!(seam(&a).is_some(), "{a:?}");
    assert_eq!(
        seam(&a),
        seam(&b),
        "the first segment after the seam has one number in every rendition"
    );
    assert_eq!(
        a.media_sequence + a.segments.len() as u64,
        b.media_sequence + b.segments.len() as u64
    );
}

/// LL-HLS from the ffmpeg capture (B-frames, 30 fps, AAC): every part at most the part
/// target, `INDEPENDENT=YES` exactly on the video parts that start with a sync sample
/// (read back with the `mp4` crate), every audio part independent, each part decodable
/// after its init segment (ffprobe), a segment's bytes the concatenation of its parts,
/// and the preload hint naming the part that comes next.
#[test]
fn ll_hls_parts_from_ffmpeg_fixture() {
    require_ffprobe();
    let fx = load_fixture();
    let mut s = settings(60 * S);
    s.part_duration = S / 2;
    let (mut p, out) = Packager::new(s, vec![spec("v", 200)], Some(AudioSpec { kbps: 64 }));
    p.set_video_config(0, fx.video_cfg.clone());
    p.set_audio_config(fx.audio_cfg.clone());
    feed(&mut p, &fx, 1, 0, 0, 0);
    let mut checked_parts = 0;
    for rendition in ["v", "audio"] {
        let text = String::from_utf8(
            out.media_playlist(OutputKind::Cmaf, rendition)
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(
            m3u8_rs::parse_media_playlist_res(text.as_bytes()).is_ok(),
            "{text}"
        );
        assert!(
            text.contains("#EXT-X-PART-INF:PART-TARGET=0.50000\n"),
            "{text}"
        );
        let init = out.init_segment(rendition, 1).expect("init segment");
        let mut parts = vec![];
        for line in text.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
            let attr = |k: &str| {
                line.split([':', ','])
                    .find_map(|a| a.strip_prefix(&format!("{k}=")))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            let duration: f64 = attr("DURATION").unwrap().parse().unwrap();
            assert!(duration <= 0.5 && duration > 0.0, "{line}");
            let uri = attr("URI").unwrap();
            let (msn, index) = uri.trim_end_matches(".m4s").split_once('.').unwrap();
            let (msn, index): (u64, u32) = (msn.parse().unwrap(), index.parse().unwrap());
            let data = out
                .part(rendition, msn, index)
                .expect("listed part is served");
            let (samples, starts_sync) = parse_fmp4(&init, &data);
            assert!(samples > 0);
            let independent = line.contains(",INDEPENDENT=YES");
            assert_eq!(independent, starts_sync, "{line}");
            if rendition == "audio" {
                assert!(independent, "{line}");
            }
            parts.push((msn, index, data, independent));
            checked_parts += 1;
        }
        // Complete segments are their parts, in order.
        let pl = media(&out, OutputKind::Cmaf, rendition);
        for msn in msns(&pl) {
            let of: Vec<&Bytes> = parts.iter().filter(|p| p.0 == msn).map(|p| &p.2).collect();
            assert!(!of.is_empty(), "segment {msn} of {rendition} has parts");
            let joined: Vec<u8> = of.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(
                out.segment(OutputKind::Cmaf, rendition, msn).unwrap(),
                joined
            );
        }
        // The hint names the part after the last one listed.
        let (last_msn, last_index, _, _) = parts.last().unwrap();
        let hint = format!(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{last_msn}.{}.m4s\"",
            last_index + 1
        );
        assert!(text.contains(&hint), "{hint}\n{text}");
        // The newest parts decode after the init segment, from the last independent one.
        let from = parts.iter().rposition(|p| p.3).unwrap();
        let mut file = init.to_vec();
        for p in &parts[from..] {
            file.extend_from_slice(&p.2);
        }
        let streams = ffprobe(&file, &format!("part-{rendition}.mp4"));
        assert!(streams[0].3 > 0, "{streams:?}");
    }
    assert!(checked_parts > 20, "{checked_parts}");
    // Rendition reports name the sibling.
    let v = String::from_utf8(out.media_playlist(OutputKind::Cmaf, "v").unwrap().to_vec()).unwrap();
    assert!(
        v.contains("#EXT-X-RENDITION-REPORT:URI=\"../audio/index.m3u8\",LAST-MSN="),
        "{v}"
    );
    p.finish();
    let v = String::from_utf8(out.media_playlist(OutputKind::Cmaf, "v").unwrap().to_vec()).unwrap();
    assert!(
        v.ends_with("#EXT-X-ENDLIST\n") && !v.contains("PRELOAD-HINT"),
        "{v}"
    );
}

/// An extra audio track is cut where rendition 0 is cut, listed with `EXT-X-MEDIA` (its
/// name and language) in the multivariant playlists (in TS an audio-only rendition beside
/// the muxed main audio), and filled with silence
/// where its source sent nothing: every segment decodes to a full segment's worth of
/// audio. A distribution that does not offer it does not list it.
#[test]
fn an_extra_audio_track_follows_the_cuts_and_fills_with_silence() {
    // Whole segments, and LL-HLS parts (the silence then goes out as parts too).
    for part in [0, S / 2] {
        extra_track(part);
    }
}

fn extra_track(part: MediaTime) {
    let fx = load_fixture();
    let (mut p, out) = Packager::new(
        PackagerSettings {
            part_duration: part,
            ..settings(60 * S)
        },
        vec![spec("360p", 300)],
        Some(AudioSpec { kbps: 64 }),
    );
    p.set_video_config(0, fx.video_cfg.clone());
    p.set_audio_config(fx.audio_cfg.clone());
    let fr = p.add_track(TrackSpec {
        rendition: "audio-fr".into(),
        name: "Français".into(),
        language: Some("fr".into()),
        default: false,
    });
    p.set_track_config(fr, fx.audio_cfg.clone());
    // The source sends its first 2.5 s (10 s to 12.5 s on the channel), then leaves.
    for f in fx.audio.iter().filter(|f| f.pts < OFFSET + 2 * S + S / 2) {
        p.push_track(fr, f.clone());
    }
    feed(&mut p, &fx, 1, 0, 0, i64::MIN);
    p.finish();

    let m = master(&out, OutputKind::Cmaf, None);
    assert_eq!(m.alternatives.len(), 2, "{:?}", m.alternatives);
    let main = &m.alternatives[0];
    assert_eq!(
        (main.uri.as_deref(), main.default),
        (Some("audio/index.m3u8"), true)
    );
    let extra = &m.alternatives[1];
    assert_eq!(extra.uri.as_deref(), Some("audio-fr/index.m3u8"));
    assert_eq!(extra.name, "Français");
    assert_eq!(extra.language.as_deref(), Some("fr"));
    assert!(!extra.default && extra.autoselect);
    assert_eq!(extra.group_id, "audio");
    // TS: the main audio stays muxed (the group's entry without a URI); the track is an
    // audio-only rendition of its own.
    let ts = master(&out, OutputKind::Ts, None);
    let alts: Vec<_> = ts
        .alternatives
        .iter()
        .map(|a| (a.name.as_str(), a.uri.as_deref(), a.default))
        .collect();
    assert_eq!(
        alts,
        vec![
            ("audio", None, true),
            ("Français", Some("audio-fr/index.m3u8"), false)
        ]
    );
    assert!(
        ts.variants
            .iter()
            .all(|v| v.audio.as_deref() == Some("audio"))
    );
    let offered_none = out
        .multivariant_for(OutputKind::Cmaf, None, Some(&[]))
        .unwrap();
    let text = String::from_utf8_lossy(&offered_none);
    assert!(
        !text.contains("audio-fr") && text.contains("audio/index.m3u8"),
        "{text}"
    );

    let pl = media(&out, OutputKind::Cmaf, "audio-fr");
    assert_eq!(msns(&pl), vec![5, 6, 7]);
    assert!(pl.segments.iter().all(|s| !s.discontinuity));
    let init = out.init_segment("audio-fr", 1).unwrap();
    require_ffprobe();
    for msn in 5..=7u64 {
        let seg = out.segment(OutputKind::Cmaf, "audio-fr", msn).unwrap();
        let (n, _) = parse_fmp4(&init, &seg);
        assert!(
            (93..=95).contains(&n),
            "part {part}, msn {msn}: {n} samples"
        );
        let mut file = init.to_vec();
        file.extend_from_slice(&seg);
        let streams = ffprobe(&file, &format!("fr{msn}.mp4"));
        assert_eq!(streams[0].0, "audio");
        assert!(streams[0].3 >= 93, "msn {msn}: {streams:?}");
    }
    // The same segments in TS: audio alone (its PCR on the audio PID), the same number
    // of frames, on the same numbers.
    assert_eq!(
        msns(&media(&out, OutputKind::Ts, "audio-fr")),
        vec![5, 6, 7]
    );
    for msn in 5..=7u64 {
        let seg = out.segment(OutputKind::Ts, "audio-fr", msn).unwrap();
        assert_eq!(seg.len() % 188, 0);
        let streams = ffprobe(&seg, &format!("fr{msn}.ts"));
        // (ffprobe lists the program's stream and the stream itself.)
        assert!(
            streams.iter().all(|s| s.0 == "audio"),
            "audio only: {streams:?}"
        );
        assert!((93..=95).contains(&streams[0].3), "msn {msn}: {streams:?}");
    }
    // Segment 6 (12-14 s) is half the source, half silence; 7 is all silence.
    let silent = fx.audio_cfg.silent_frame().unwrap();
    let size = |msn| {
        out.segment(OutputKind::Cmaf, "audio-fr", msn)
            .unwrap()
            .len()
    };
    assert!(
        size(7) < size(6) && size(6) < size(5),
        "{} {} {}",
        size(5),
        size(6),
        size(7)
    );
    assert!(size(7) < 94 * (silent.len() + 32), "{}", size(7));
}

/// An extra track removed while the packager runs leaves the multivariant playlists and
/// the store (its playlists and segments are gone), takes nothing more, and one added again
/// under the same name starts after the removed one's init versions.
#[test]
fn an_extra_track_is_removed_and_added_again_while_running() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    let fr_spec = TrackSpec {
        rendition: "audio-fr".into(),
        name: "Français".into(),
        language: Some("fr".into()),
        default: false,
    };
    let fr = p.add_track(fr_spec.clone());
    p.set_track_config(fr, fx.audio_cfg.clone());
    for f in fx.audio.iter().filter(|f| f.pts < OFFSET + 4 * S) {
        p.push_track(fr, f.clone());
    }
    // Half the fixture, then the track goes.
    let half = OFFSET + 4 * S;
    let (video, audio): (Vec<_>, Vec<_>) = (
        fx.video.iter().filter(|f| f.dts < half).cloned().collect(),
        fx.audio.iter().filter(|f| f.dts < half).cloned().collect(),
    );
    for f in video {
        p.push_video(0, f);
    }
    for f in audio {
        p.push_audio(f);
    }
    assert!(out.media_playlist(OutputKind::Cmaf, "audio-fr").is_some());
    assert!(out.media_playlist(OutputKind::Ts, "audio-fr").is_some());
    p.remove_track(fr);
    assert!(out.media_playlist(OutputKind::Cmaf, "audio-fr").is_none());
    assert!(out.media_playlist(OutputKind::Ts, "audio-fr").is_none());
    assert!(out.init_segment("audio-fr", 1).is_none());
    assert!(!out.has_extra_track("audio-fr"));
    // Frames for the removed index are ignored.
    p.push_track(fr, fx.audio[0].clone());

    // Added again, renamed: in the removed one's place, init versions after its own.
    let again = p.add_track(TrackSpec {
        name: "Français (2)".into(),
        ..fr_spec
    });
    assert_eq!(again, fr, "the removed track's place");
    p.set_track_config(again, fx.audio_cfg.clone());
    for f in fx.audio.iter().filter(|f| f.dts >= half) {
        p.push_track(again, f.clone());
    }
    for f in fx.video.iter().filter(|f| f.dts >= half) {
        p.push_video(0, f.clone());
    }
    for f in fx.audio.iter().filter(|f| f.dts >= half) {
        p.push_audio(f.clone());
    }
    p.finish();
    assert!(
        out.init_segment("audio-fr", 2).is_some(),
        "the next init version"
    );
    let m = master(&out, OutputKind::Cmaf, None);
    let names: Vec<_> = m.alternatives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["audio", "Français (2)"],
        "the removed one is not listed"
    );
    assert!(!msns(&media(&out, OutputKind::Cmaf, "audio-fr")).is_empty());
}

/// The discontinuity sequence number of segment `msn` in `pl` (RFC 8216bis §6.2.4).
fn discontinuity_number(pl: &MediaPlaylist, msn: u64) -> u64 {
    let at = (msn - pl.media_sequence) as usize;
    pl.discontinuity_sequence
        + pl.segments[..=at]
            .iter()
            .filter(|s| s.discontinuity)
            .count() as u64
}

/// A track that starts after a discontinuity of the main stream (its source published
/// late, or it was added while running) carries the main stream's discontinuity number
/// at each segment, so a player matches its segments to the video's.
#[test]
fn a_late_track_takes_the_discontinuity_numbers_of_the_stream() {
    let fx = load_fixture();
    let (mut p, out) = new_packager(vec![spec("360p", 300)], 60 * S, &fx);
    // Two input sessions, each followed by a discontinuity; then a track appears, and
    // the third session carries it.
    for round in 0..2 {
        feed(&mut p, &fx, 1, round * 20 * S, 0, i64::MIN);
        p.discontinuity();
    }
    let fr = p.add_track(TrackSpec {
        rendition: "audio-fr".into(),
        name: "Français".into(),
        language: None,
        default: false,
    });
    p.set_track_config(fr, fx.audio_cfg.clone());
    for f in &fx.audio {
        let f = Frame {
            pts: f.pts + 40 * S,
            dts: f.dts + 40 * S,
            ..f.clone()
        };
        p.push_track(fr, f);
    }
    feed(&mut p, &fx, 1, 40 * S, 0, i64::MIN);
    p.finish();
    for kind in [OutputKind::Cmaf, OutputKind::Ts] {
        let video = media(&out, kind, "360p");
        let track = media(&out, kind, "audio-fr");
        assert!(
            video.segments.iter().filter(|s| s.discontinuity).count() >= 2,
            "{kind:?}: the stream has two discontinuities"
        );
        assert!(!msns(&track).is_empty());
        for msn in msns(&track) {
            assert_eq!(
                discontinuity_number(&track, msn),
                discontinuity_number(&video, msn),
                "{kind:?} segment {msn}"
            );
        }
    }
}
