//! The cache edge: the nginx configuration of `docker/nginx-cache.conf`, run with the
//! real nginx in front of the real server, and a hundred simulated HLS players through
//! it (a third CMAF, a third MPEG-TS, a third LL-HLS with blocking reloads and parts).
//! The origin sees about one request per segment, part and init segment whatever the
//! number of players (the hit ratio is printed), no playlist a player gets is older than
//! its max-age allows, and the origin still counts every player as a viewer (through the
//! session checks the cache forwards).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

const CONFIG: &str = r#"
[channels.c.ingests.bars]
protocol = "test-pattern"
[channels.c.engines.e]
ladder = "passthrough"
outputs = ["cmaf", "ts"]

# What the players watch, through the cache.
[distributions.d]
channel = "c"

# What the test watches the origin through, directly.
[distributions.probe]
channel = "c"
"#;

const PLAYERS: usize = 100;
const PLAY: Duration = Duration::from_secs(16);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Cmaf,
    Ts,
    LowLatency,
}

/// The newest media sequence number a media playlist lists.
fn newest_msn(body: &[u8]) -> u64 {
    let p = media_playlist(body);
    p.media_sequence + p.segments.len() as u64 - 1
}

/// When the origin first listed each media sequence number, by output.
type Appeared = Arc<Mutex<HashMap<(&'static str, u64), Instant>>>;

/// One player through the cache at `port`; the playlists it got: (when, output, newest).
fn play(port: u16, n: usize, kind: Kind) -> Result<Vec<(Instant, &'static str, u64)>, String> {
    let ua = format!("player-{n}");
    let headers = [("User-Agent", ua.as_str())];
    let get = |path: &str| raw_get("127.0.0.1", port, path, &headers);
    let output = if kind == Kind::Ts { "ts" } else { "cmaf" };
    let entry = format!("/live/d/{output}/index.m3u8");
    let (status, _, body) = get(&entry);
    if status != 200 {
        return Err(format!("{entry}: {status}"));
    }
    let media = resolve_uri(&entry, &master_playlist(&body).variants[0].uri);
    if !media.starts_with("/live/d/s-") {
        return Err(format!("no session behind the cache: {media}"));
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + PLAY;
    if kind == Kind::LowLatency {
        let (_, _, body) = get(&media);
        let mut hint = preload_hint(&body);
        while Instant::now() < deadline {
            let url = format!("{media}?{}", blocking_query(&hint));
            let (status, _, body) = get(&url);
            if status != 200 {
                return Err(format!("{url}: {status}"));
            }
            let part = resolve_uri(&media, &hint);
            let (status, _, _) = get(&part);
            // A hinted part past a segment's end never comes (404).
            if status != 200 && status != 404 {
                return Err(format!("{part}: {status}"));
            }
            hint = preload_hint(&body);
        }
        return Ok(seen);
    }
    let mut fetched: HashSet<String> = HashSet::new();
    let mut init = None;
    while Instant::now() < deadline {
        let (status, _, body) = get(&media);
        if status != 200 {
            return Err(format!("{media}: {status}"));
        }
        seen.push((Instant::now(), output, newest_msn(&body)));
        let p = media_playlist(&body);
        // Start at the live edge: the last two segments, then every new one.
        let skip = if fetched.is_empty() {
            p.segments.len().saturating_sub(2)
        } else {
            0
        };
        for s in p.segments.iter().skip(skip) {
            if let Some(map) = &s.map
                && init.as_ref() != Some(&map.uri)
            {
                let url = resolve_uri(&media, &map.uri);
                if get(&url).0 != 200 {
                    return Err(format!("{url}: not 200"));
                }
                init = Some(map.uri.clone());
            }
            if fetched.insert(s.uri.clone()) {
                let url = resolve_uri(&media, &s.uri);
                let (status, _, _) = get(&url);
                if status != 200 {
                    return Err(format!("{url}: {status}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(seen)
}

#[test]
fn a_hundred_players_behind_the_nginx_cache_cost_the_origin_one_request_per_object() {
    let _heavy = heavy();
    let server = Server::start_with_server_keys(
        "cache-edge",
        "trusted_proxies = [\"127.0.0.1/32\"]",
        CONFIG,
    );
    server.wait_segments(
        "/live/probe/cmaf/source/index.m3u8",
        3,
        Duration::from_secs(60),
    );
    let cache = NginxCache::start("cache-edge-nginx", server.http);

    // The origin's own view: when each segment number first appeared, per output.
    let appeared: Appeared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (appeared, stop, url) = (appeared.clone(), stop.clone(), server.url(""));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for output in ["cmaf", "ts"] {
                    let path = format!("{url}/live/probe/{output}/source/index.m3u8");
                    if let Ok(r) = ureq::get(&path).call() {
                        let mut body = Vec::new();
                        let _ = std::io::Read::read_to_end(&mut r.into_reader(), &mut body);
                        let newest = newest_msn(&body);
                        appeared
                            .lock()
                            .unwrap()
                            .entry((output, newest))
                            .or_insert_with(Instant::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let kinds = [Kind::Cmaf, Kind::Ts, Kind::LowLatency];
    let players: Vec<_> = (0..PLAYERS)
        .map(|n| {
            let port = cache.port;
            std::thread::spawn(move || play(port, n, kinds[n % 3]))
        })
        .collect();
    // While they play, every player is a viewer at the origin, though the cache answers
    // most of their requests (the origin sees each one's session check every 5 s).
    std::thread::sleep(PLAY - Duration::from_secs(4));
    let (status, _, body) = get(&server.url("/api/v1/status"));
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let viewers = status["channels"]["c"]["distributions"]["d"].clone();
    let mut samples = Vec::new();
    for p in players {
        samples.extend(p.join().unwrap().expect("player"));
    }
    stop.store(true, Ordering::Relaxed);
    monitor.join().unwrap();
    assert_eq!(viewers["viewers"], PLAYERS, "{viewers}");

    // Playlists: never staler than their max-age (1 s). nginx keeps cache validity in
    // whole seconds, so a copy may be served for up to a second more; half a second of
    // slack for the origin's own polling and the refresh in flight.
    let appeared = appeared.lock().unwrap();
    let mut worst = Duration::ZERO;
    for (at, output, newest) in &samples {
        if let Some(next) = appeared.get(&(*output, newest + 1))
            && *next < *at
        {
            worst = worst.max(at.duration_since(*next));
        }
    }
    eprintln!(
        "playlists: {} fetched by players, the stalest {worst:?} behind the origin",
        samples.len()
    );
    assert!(
        worst <= Duration::from_millis(2500),
        "a playlist {worst:?} stale"
    );

    // Objects: about one origin request each, whatever the number of players.
    let log = cache.access_log();
    let unsessioned = |uri: &str| -> String {
        uri.split('/')
            .filter(|p| !p.starts_with("s-"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let class = |uri: &str| -> Option<&'static str> {
        let name = uri.split('?').next()?.rsplit('/').next()?;
        if name.starts_with("init-") {
            Some("init")
        } else if name.ends_with(".ts")
            || (name.ends_with(".m4s") && name.matches('.').count() == 1)
        {
            Some("segment")
        } else if name.ends_with(".m4s") {
            Some("part")
        } else if name == "index.m3u8" && uri.contains("/source/") {
            Some(if uri.contains("_HLS_msn=") {
                "blocking playlist"
            } else {
                "playlist"
            })
        } else {
            None
        }
    };
    let mut report = Vec::new();
    for kind in ["init", "segment", "part", "blocking playlist", "playlist"] {
        let lines: Vec<_> = log.iter().filter(|(u, _)| class(u) == Some(kind)).collect();
        let distinct: HashSet<String> = lines.iter().map(|(u, _)| unsessioned(u)).collect();
        let origin = lines
            .iter()
            .filter(|(_, s)| matches!(s.as_str(), "MISS" | "EXPIRED" | "BYPASS" | "-"))
            .count();
        let hit_ratio = 1.0 - origin as f64 / lines.len().max(1) as f64;
        report.push(format!(
            "{kind}: {} requests, {} distinct, {origin} from the origin, hit ratio {:.3}",
            lines.len(),
            distinct.len(),
            hit_ratio
        ));
        assert!(!lines.is_empty(), "no {kind} requests");
        if kind == "playlist" {
            // Two live playlists (CMAF and TS), each fetched at most about once per
            // max-age (1 s).
            let bound = 2 * (PLAY.as_secs() as usize + 4) * 3 / 2;
            assert!(
                origin <= bound,
                "{kind}: {origin} origin requests (bound {bound})"
            );
        } else {
            assert!(
                origin <= distinct.len() + distinct.len() / 2,
                "{kind}: {origin} origin requests for {} distinct objects",
                distinct.len()
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}
