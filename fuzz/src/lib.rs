//! The bodies of Sluice's fuzz targets, one function per parser of untrusted bytes.
//!
//! `fuzz_targets/*.rs` are one-line `fuzz_target!` wrappers around these, so the
//! committed seeds and regression inputs (`seeds/<target>/`) also run under a plain
//! `cargo test` on stable, without libFuzzer. A target passes when it returns: every
//! malformed input must come back as an error, never a panic.

use bytes::Bytes;
use sluice_ingest::{RtmpAction, RtmpPolicy, RtmpSession, flv};

/// FLV video and audio tag bodies (RTMP media message payloads), and the AVCC
/// access-unit check applied to every video frame.
pub fn flv_tags(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    if let Ok(flv::FlvVideo::Nalus { data: au, .. }) = flv::parse_video(&body) {
        for nal_length_size in [1, 2, 4] {
            flv::avcc_is_well_formed(&au, nal_length_size);
        }
    }
    let _ = flv::parse_audio(&body);
    // The raw input too, with any length size (0, 3 and >4 are invalid and must say so).
    if let Some((&n, rest)) = data.split_first() {
        flv::avcc_is_well_formed(rest, n);
    }
}

/// Codec configuration records from sequence headers: avcC, AudioSpecificConfig and
/// the SPS inside avcC.
pub fn codec_records(data: &[u8]) {
    let _ = sluice_core::VideoConfig::from_avcc(Bytes::copy_from_slice(data));
    let _ = sluice_core::AudioConfig::from_asc(Bytes::copy_from_slice(data));
    let _ = sluice_core::codec::sps_dimensions(data);
}

/// A publishing RTMP connection: handshake, chunk stream, AMF0 commands and the media
/// messages behind them, as [`RtmpSession`] sees them from a socket.
///
/// The first byte picks how the rest is split into reads (1 to 65026 bytes each), so
/// the fuzzer also explores messages torn across reads. Publish requests are accepted,
/// as the shell does for a valid key, so media messages get parsed.
pub fn rtmp_session(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let read_len = 1 + (split as usize).pow(2);
    let now = std::time::Instant::now();
    let mut session = RtmpSession::new(RtmpPolicy::default(), now);
    for read in stream.chunks(read_len) {
        let Ok(mut pending) = session.handle_input(read, now) else {
            return; // The shell closes the connection on any error.
        };
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    RtmpAction::PublishRequested {
                        request_id,
                        stream_key,
                    } => match session.accept(request_id, Some(&stream_key)) {
                        Ok(more) => next.extend(more),
                        Err(_) => return,
                    },
                    // The shell closes the connection here.
                    RtmpAction::Close(_) => return,
                    _ => {}
                }
            }
            pending = next;
        }
    }
}

/// An RTMP chunk stream (after the handshake), read two ways: the reassembling
/// [`ChunkGuard`](sluice_ingest::rtmp_guard::ChunkGuard) a publisher's session uses, and
/// rml_rtmp's own chunk deserializer. Wherever the guard accepts the input, rml_rtmp
/// must not panic on it and both must find the same messages (type, message stream,
/// timestamp, body). The first byte picks the read size, as in [`rtmp_session`].
pub fn rtmp_chunks(data: &[u8]) {
    use rml_rtmp::chunk_io::ChunkDeserializer;
    use sluice_ingest::rtmp_guard::{ChunkGuard, Message};

    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut guard = ChunkGuard::reassembling();
    let mut rml = ChunkDeserializer::new();
    let (mut got, mut expected) = (Vec::new(), Vec::new());
    for read in stream.chunks(1 + (split as usize).pow(2)) {
        if guard.check(read).is_err() {
            return;
        }
        got.extend(guard.take_messages());
        let mut input = read;
        loop {
            match rml.get_next_message(input) {
                Ok(Some(m)) => {
                    input = &[];
                    if m.type_id == 1 {
                        // As rml_rtmp's sessions do on SetChunkSize.
                        let size = u32::from_be_bytes(m.data[..4].try_into().unwrap());
                        if rml.set_max_chunk_size(size as usize).is_err() {
                            return;
                        }
                    }
                    if sluice_ingest::rtmp_guard::handed_out(m.type_id) {
                        expected.push(Message {
                            type_id: m.type_id,
                            stream_id: m.message_stream_id,
                            timestamp: m.timestamp.value,
                            body: m.data,
                        });
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert_eq!(got, expected);
    }
}

/// An AMF0 value sequence (command and data message bodies), checked two ways: the
/// non-recursive depth scan that guards rml_amf0 must never let through input whose
/// recursive parse nests deeper than the limit, and neither may panic. rml_amf0 only
/// runs on input the scan accepted, as in the server.
pub fn amf0(data: &[u8]) {
    if sluice_ingest::rtmp_guard::amf0_scan(data).is_ok() {
        let mut cursor = std::io::Cursor::new(data);
        if let Ok(values) = rml_amf0::deserialize(&mut cursor) {
            let depth = values.iter().map(amf0_depth).max().unwrap_or(0);
            assert!(
                depth <= sluice_ingest::rtmp_guard::MAX_AMF0_DEPTH,
                "scan accepted nesting {depth} deep"
            );
        }
    }
}

/// Nesting depth of a parsed value (bounded by the scan, so recursion is safe here).
fn amf0_depth(v: &rml_amf0::Amf0Value) -> usize {
    use rml_amf0::Amf0Value;
    match v {
        Amf0Value::Object(props) => 1 + props.values().map(amf0_depth).max().unwrap_or(0),
        Amf0Value::StrictArray(vals) => 1 + vals.iter().map(amf0_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A whole configuration file: TOML syntax, then validation into the checked model.
pub fn config_toml(data: &[u8]) {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = sluice_config::Config::from_toml_str(src, "fuzz");
    }
}

/// A control API change made to a configuration file: the input is the file's text, a
/// NUL byte, then `<op> <dotted.path> <json>` (op `p` merge patch, `i` insert, `r`
/// remove). Whatever the edit, the document it leaves must still be TOML (an edit never
/// writes a file the server could not read back), and validating it must not panic.
pub fn config_edit(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, command) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(mut doc) = sluice_config::edit::ConfigDocument::parse(toml) else {
        return;
    };
    let mut parts = command.splitn(3, ' ');
    let (op, path, json) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("null"),
    );
    let path: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let edited = match op {
        "p" => doc.merge_patch(&path, &value),
        "i" => doc.insert(&path, &value),
        "r" => doc.remove(&path),
        _ => return,
    };
    let _ = doc.get(&path);
    let _ = doc.keys(&path);
    if edited.is_ok() {
        let out = doc.text();
        if let Err(e) = sluice_config::edit::ConfigDocument::parse(&out) {
            panic!("an edit left a document that is not TOML: {e}\n{out}");
        }
        let _ = sluice_config::Config::from_toml_str(&out, "fuzz");
    }
}

/// An HTTP request target: the path decoded into a route (with or without a session
/// component), the session checked, and the query's LL-HLS delivery directives.
pub fn http_path(data: &[u8]) {
    if let Ok(target) = std::str::from_utf8(data) {
        // A request target: the path, and the query with its LL-HLS directives.
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let _ = sluice_distribution::Directives::parse(query);
        let _ = sluice_distribution::path::parse(path);
        if let Some(sluice_distribution::path::Request {
            session: Some(session),
            ..
        }) = sluice_distribution::path::parse_request(path)
        {
            let key = sluice_distribution::SessionKey::from_secret(b"fuzz");
            let dist = sluice_core::Id::new("d").expect("valid id");
            let _ = key.verify(&dist, session, 1_800_000_000);
        }
    }
}

/// A viewer token (JWT) from the query string or `Authorization`, through the whole
/// admission: parameter parsing, header, key choice, signature and claims, against two
/// HS256 keys and an issuer.
pub fn viewer_token(data: &[u8]) {
    use sluice_config::{TokenAlgorithm, TokenConfig, TokenKey};
    use sluice_distribution::Policy;
    use sluice_distribution::policy::TokenParam;
    use std::sync::OnceLock;
    static POLICY: OnceLock<Policy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        let key = |id: &str| TokenKey {
            id: id.into(),
            algorithm: TokenAlgorithm::HS256,
            secret: Some("0123456789abcdef0123".into()),
            public_key_pem: None,
        };
        let cfg = TokenConfig {
            required: true,
            keys: vec![key("a"), key("b")],
            issuer: Some("https://auth.example.com".into()),
        };
        Policy::new(None, None, vec![], &cfg).expect("valid keys")
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dist = sluice_core::Id::new("d").expect("valid id");
    let client = std::net::IpAddr::from([192, 0, 2, 1]);
    for param in [
        TokenParam::from_request(Some(text), None),
        TokenParam::from_request(None, Some(text)),
        TokenParam::One(text),
    ] {
        let _ = policy.admit(&dist, client, Some(text), param);
    }
}

/// MPEG-TS from an SRT publisher, through the demuxer. The first byte picks how the rest
/// is cut into pushes (1 to 65026 bytes; an SRT message is 1316), so packets torn across
/// pushes and resynchronisation are explored too.
pub fn ts_demux(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    // The low 7 bits pick the chunk size, the high bit the mode (an audio source's
    // demuxer takes programs without video).
    let len = 1 + (split as usize & 0x7f).pow(2);
    let mut demux = sluice_ingest::ts_demux::TsDemuxer::audio_only(split & 0x80 != 0);
    let mut events = Vec::new();
    for chunk in stream.chunks(len) {
        if demux.push(chunk, &mut events).is_err() {
            return; // The connection is closed on any error.
        }
        events.clear();
    }
    demux.finish(&mut events);
}

/// An SRT stream id, as the handshake carries it (any bytes; srt-protocol hands over
/// UTF-8, the parser must hold for anything).
pub fn srt_streamid(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(request) = sluice_ingest::srt_streamid::parse_stream_id(&text) {
        assert!(!request.key.is_empty() && text.len() <= 512);
        if let Some(t) = request.tracking_id {
            assert!(t.len() <= sluice_ingest::srt_streamid::MAX_TRACKING_ID);
        }
    }
    // RTMP publish and play names (`key?tracking_id=...`) come from the same kind of
    // stranger.
    let (key, tracking) = sluice_ingest::rtmp_session::stream_name(&text);
    assert!(key.len() <= text.len() && !key.contains('?'));
    if let Some(t) = tracking {
        assert!(t.len() <= sluice_ingest::srt_streamid::MAX_TRACKING_ID);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sluice_ingest::{RtmpAction, RtmpPolicy, RtmpSession};

    /// The guard in front of rml_rtmp keeps real clients' framing: the captured ffmpeg
    /// publish still yields a publish request and frames, at every read size.
    #[test]
    fn ffmpeg_capture_still_publishes_through_the_guard() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/rtmp_session");
        for name in [
            "ffmpeg_publish_26b_reads.bin",
            "ffmpeg_publish_257b_reads.bin",
        ] {
            let data = std::fs::read(dir.join(name)).expect("seed");
            let (split, stream) = data.split_first().expect("non-empty");
            let now = std::time::Instant::now();
            let mut session = RtmpSession::new(RtmpPolicy::default(), now);
            let (mut published, mut frames) = (false, 0);
            for read in stream.chunks(1 + (*split as usize).pow(2)) {
                let mut pending = session.handle_input(read, now).expect("valid capture");
                while !pending.is_empty() {
                    let mut next = Vec::new();
                    for action in pending {
                        match action {
                            RtmpAction::PublishRequested {
                                request_id,
                                stream_key,
                                ..
                            } => {
                                published = true;
                                next.extend(session.accept(request_id, Some(&stream_key)).unwrap());
                            }
                            RtmpAction::Frame(_) => frames += 1,
                            _ => {}
                        }
                    }
                    pending = next;
                }
            }
            assert!(published && frames > 0, "{name}: {published} {frames}");
        }
    }

    /// Replays every committed seed and regression input through its target. A panic
    /// counts even when `RtmpSession` contains it with `catch_unwind` (as libFuzzer counts
    /// it): past rml_rtmp panics must be stopped by the guard before they happen.
    #[test]
    fn seeds_do_not_panic() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PANICS: AtomicUsize = AtomicUsize::new(0);
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
        let targets: [(&str, fn(&[u8])); 11] = [
            ("config_edit", super::config_edit),
            ("rtmp_chunks", super::rtmp_chunks),
            ("ts_demux", super::ts_demux),
            ("srt_streamid", super::srt_streamid),
            ("viewer_token", super::viewer_token),
            ("flv_tags", super::flv_tags),
            ("amf0", super::amf0),
            ("codec_records", super::codec_records),
            ("rtmp_session", super::rtmp_session),
            ("config_toml", super::config_toml),
            ("http_path", super::http_path),
        ];
        for (name, target) in targets {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seeds")
                .join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("readable seed directory").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no seeds for {name}");
            for file in files {
                let data = std::fs::read(&file).expect("readable seed");
                eprintln!("{name}: {}", file.display());
                let before = PANICS.load(Ordering::SeqCst);
                target(&data);
                assert_eq!(
                    PANICS.load(Ordering::SeqCst),
                    before,
                    "{name}: {} panicked (contained or not)",
                    file.display()
                );
            }
        }
    }
}
