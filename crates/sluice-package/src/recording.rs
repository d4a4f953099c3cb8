//! Recordings: what a recorded rendition's files are called, and its media playlist
//! (RFC 8216bis §4.4.3): `EXT-X-PLAYLIST-TYPE:EVENT` while the recording grows, `VOD` with
//! `EXT-X-ENDLIST` once it is finished. Pure: the recorder (in the server) writes the files.
//!
//! Gaps are left out (a recording lists only media it has); the segment after one, or
//! after segments the recorder missed, carries `EXT-X-DISCONTINUITY`, since its media
//! time does not follow on.

use m3u8_rs::{Map, MediaPlaylist, MediaPlaylistType, MediaSegment};
use sluice_core::MediaTime;
use sluice_core::time::NANOS_PER_SEC;

use crate::OutputKind;

/// One segment written to a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSegment {
    pub msn: u64,
    pub duration: MediaTime,
    pub discontinuity: bool,
    /// CMAF: the init segment version it needs (`init-<version>.mp4`).
    pub init_version: Option<u64>,
}

/// The file name of segment `msn`.
pub fn segment_file(output: OutputKind, msn: u64) -> String {
    match output {
        OutputKind::Cmaf => format!("{msn}.m4s"),
        OutputKind::Ts => format!("{msn}.ts"),
    }
}

/// The file name of init segment `version` (CMAF).
pub fn init_file(version: u64) -> String {
    format!("init-{version}.mp4")
}

/// Whether `name` is a file a recording's rendition folder holds: `index.m3u8`,
/// `init-<n>.mp4`, `<n>.m4s` or `<n>.ts` (what the download API accepts, nothing else).
pub fn is_recording_file(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    name == "index.m3u8"
        || name
            .strip_prefix("init-")
            .and_then(|s| s.strip_suffix(".mp4"))
            .is_some_and(digits)
        || name.strip_suffix(".m4s").is_some_and(digits)
        || name.strip_suffix(".ts").is_some_and(digits)
}

/// The media playlist of a recorded rendition.
pub fn media_playlist(output: OutputKind, segments: &[RecordedSegment], finished: bool) -> Vec<u8> {
    let secs = |d: MediaTime| d.max(0) as f64 / NANOS_PER_SEC as f64;
    let target = segments
        .iter()
        .map(|s| secs(s.duration).round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut map_version = None;
    let list = segments
        .iter()
        .map(|s| {
            let map = match (output, s.init_version) {
                (OutputKind::Cmaf, Some(v)) if map_version != Some(v) || s.discontinuity => {
                    map_version = Some(v);
                    Some(Map {
                        uri: init_file(v),
                        ..Default::default()
                    })
                }
                _ => None,
            };
            MediaSegment {
                uri: segment_file(output, s.msn),
                duration: secs(s.duration) as f32,
                discontinuity: s.discontinuity,
                map,
                ..Default::default()
            }
        })
        .collect();
    let playlist = MediaPlaylist {
        version: Some(match output {
            OutputKind::Cmaf => 7,
            OutputKind::Ts => 3,
        }),
        target_duration: target,
        media_sequence: segments.first().map_or(0, |s| s.msn),
        segments: list,
        end_list: finished,
        playlist_type: Some(if finished {
            MediaPlaylistType::Vod
        } else {
            MediaPlaylistType::Event
        }),
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = playlist.write_to(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64, ms: i64, discontinuity: bool, init: u64) -> RecordedSegment {
        RecordedSegment {
            msn,
            duration: ms * 1_000_000,
            discontinuity,
            init_version: Some(init),
        }
    }

    /// What m3u8-rs reads back: an event playlist while recording, then VOD with an end;
    /// the init segment named before the first segment and again where it changes.
    #[test]
    fn playlists_read_back() {
        let segs = [
            seg(10, 2000, false, 1),
            seg(11, 2000, false, 1),
            seg(13, 1960, true, 2),
        ];
        let live = media_playlist(OutputKind::Cmaf, &segs, false);
        let m3u8_rs::Playlist::MediaPlaylist(p) = m3u8_rs::parse_playlist_res(&live).unwrap()
        else {
            panic!("not a media playlist")
        };
        assert_eq!(p.playlist_type, Some(MediaPlaylistType::Event));
        assert!(!p.end_list);
        assert_eq!(p.media_sequence, 10);
        assert_eq!(p.target_duration, 2);
        let uris: Vec<_> = p.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["10.m4s", "11.m4s", "13.m4s"]);
        let maps: Vec<_> = p
            .segments
            .iter()
            .map(|s| s.map.as_ref().map(|m| m.uri.clone()))
            .collect();
        assert_eq!(
            maps,
            [Some("init-1.mp4".into()), None, Some("init-2.mp4".into())]
        );
        assert!(p.segments[2].discontinuity);
        let done = media_playlist(OutputKind::Ts, &segs, true);
        let text = String::from_utf8(done).unwrap();
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        assert!(text.trim_end().ends_with("#EXT-X-ENDLIST"), "{text}");
        assert!(!text.contains("EXT-X-MAP"), "{text}");
    }

    #[test]
    fn only_recording_files_are_named() {
        for ok in ["index.m3u8", "init-3.mp4", "12.m4s", "0.ts"] {
            assert!(is_recording_file(ok), "{ok}");
        }
        for bad in [
            "../x",
            "init-.mp4",
            "a.ts",
            ".ts",
            "1.m4s/..",
            "index.m3u8.tmp",
            "1.mp4",
        ] {
            assert!(!is_recording_file(bad), "{bad}");
        }
    }
}
