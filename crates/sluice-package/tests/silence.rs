//! The silent AAC frames a track gets while its source is away decode, with ffmpeg
//! (required), to exactly 1024 samples of zeros per frame per channel.

use std::io::Write;
use std::process::{Command, Stdio};

use sluice_core::AudioConfig;

/// `frames` copies of `frame` as ADTS (7-byte headers, no CRC).
fn adts(cfg: &AudioConfig, frame: &[u8], frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let index = cfg.sampling_index().unwrap();
    for _ in 0..frames {
        let len = frame.len() + 7;
        out.extend_from_slice(&[
            0xff,
            0xf1,
            ((cfg.object_type - 1) << 6) | (index << 2) | (cfg.channels >> 2),
            ((cfg.channels & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            (((len & 7) << 5) as u8) | 0x1f,
            0xfc,
        ]);
        out.extend_from_slice(frame);
    }
    out
}

fn decode(stream: &[u8], channels: u8) -> Vec<i16> {
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "aac", "-i", "-"])
        .args(["-f", "s16le", "-ac", &channels.to_string(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg is required (scripts/setup-debian.sh --test installs it)");
    child.stdin.take().unwrap().write_all(stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn silent_frames_decode_to_silence() {
    for (rate, channels, size) in [(48_000, 2, 6), (48_000, 1, 4), (44_100, 2, 6)] {
        let cfg = AudioConfig::aac_lc(rate, channels);
        let frame = cfg.silent_frame().expect("AAC-LC mono and stereo have one");
        assert_eq!(frame.len(), size);
        let samples = decode(&adts(&cfg, &frame, 50), channels);
        assert_eq!(
            samples.len(),
            50 * 1024 * channels as usize,
            "{rate} Hz x{channels}"
        );
        assert!(
            samples.iter().all(|&s| s == 0),
            "{rate} Hz x{channels}: not silent"
        );
    }
    assert!(AudioConfig::aac_lc(48_000, 6).silent_frame().is_none());
}
