//! Request paths decoded into a typed route by a pure function.
//!
//! Every variable path component must be an [`Id`] (or a number), so a path
//! can never name anything outside the in-memory store: there is no `..`, no
//! `%2e`, no file system behind these routes.

use sluice_core::Id;
use sluice_package::OutputKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    /// `/live/<dist>/<session>/check`: is this session good for this viewer? (For an
    /// HTTP cache in front that verifies sessions itself: `docker/nginx-cache.conf`.)
    SessionCheck {
        dist: Id,
    },
    /// `/live/<dist>/<output>/index.m3u8`
    Multivariant {
        dist: Id,
        output: OutputKind,
    },
    /// `/live/<dist>/<output>/<rendition>/index.m3u8`
    MediaPlaylist {
        dist: Id,
        output: OutputKind,
        rendition: Id,
    },
    /// `/live/<dist>/cmaf/<rendition>/init-<version>.mp4`
    Init {
        dist: Id,
        rendition: Id,
        version: u64,
    },
    /// `/live/<dist>/<output>/<rendition>/<msn>.m4s|.ts`
    Segment {
        dist: Id,
        output: OutputKind,
        rendition: Id,
        msn: u64,
    },
    /// `/live/<dist>/cmaf/<rendition>/<msn>.<part>.m4s`: an LL-HLS part.
    Part {
        dist: Id,
        rendition: Id,
        msn: u64,
        part: u32,
    },
}

impl Route {
    /// The rendition a child request is for.
    pub fn rendition(&self) -> Option<&str> {
        match self {
            Route::MediaPlaylist { rendition, .. }
            | Route::Init { rendition, .. }
            | Route::Segment { rendition, .. }
            | Route::Part { rendition, .. } => Some(rendition.as_str()),
            Route::Health | Route::SessionCheck { .. } | Route::Multivariant { .. } => None,
        }
    }
}

fn output(s: &str) -> Option<OutputKind> {
    match s {
        "cmaf" => Some(OutputKind::Cmaf),
        "ts" => Some(OutputKind::Ts),
        _ => None,
    }
}

/// A decimal number without sign, leading `+` or leading zeros (one canonical URL per resource).
pub fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// A request path decoded: the route, and what the server put in child URLs before
/// the output: a viewer session (`s-<expires>-<viewer>-<mac>`, see [`crate::session`]) and the
/// engine the viewer started on (`e-<engine>`). Both are optional, in that order, and
/// only on child routes (media playlists, init segments, segments). Last, a camera angle
/// (`angle/<source>`, CMAF only) on any route but the session check:
/// `/live/<dist>/angle/<source>/cmaf/index.m3u8` and its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub route: Route,
    /// As written, for the caller to verify.
    pub session: Option<&'a str>,
    pub engine: Option<Id>,
    /// The camera angle (an extra video source of the channel) the route is of.
    pub angle: Option<Id>,
}

/// Decodes a request path (without the query) with its optional session and engine.
pub fn parse_request(path: &str) -> Option<Request<'_>> {
    let Some(rest) = path.strip_prefix("/live/") else {
        return parse(path).map(|route| Request {
            route,
            session: None,
            engine: None,
            angle: None,
        });
    };
    let (dist, mut tail) = rest.split_once('/')?;
    let mut session = None;
    let mut engine = None;
    if let Some((first, after)) = tail.split_once('/')
        && first.starts_with("s-")
    {
        let plausible = first.len() <= 64
            && first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !plausible {
            return None;
        }
        session = Some(first);
        tail = after;
    }
    if let Some((first, after)) = tail.split_once('/')
        && let Some(id) = first.strip_prefix("e-")
    {
        engine = Some(Id::new(id).ok()?);
        tail = after;
    }
    if tail == "check" {
        // Only with a session, and nothing else.
        if session.is_none() || engine.is_some() {
            return None;
        }
        return Some(Request {
            route: Route::SessionCheck {
                dist: Id::new(dist).ok()?,
            },
            session,
            engine: None,
            angle: None,
        });
    }
    let mut angle = None;
    if let Some((source, after)) = tail.strip_prefix("angle/").and_then(|t| t.split_once('/')) {
        angle = Some(Id::new(source).ok()?);
        tail = after;
    }
    let route = parse_child(dist, tail)?;
    if (session.is_some() || engine.is_some())
        && matches!(route, Route::Health | Route::Multivariant { .. })
    {
        return None;
    }
    let cmaf = match &route {
        Route::Multivariant { output, .. }
        | Route::MediaPlaylist { output, .. }
        | Route::Segment { output, .. } => *output == OutputKind::Cmaf,
        _ => true,
    };
    if angle.is_some() && (engine.is_some() || !cmaf) {
        return None;
    }
    Some(Request {
        route,
        session,
        engine,
        angle,
    })
}

/// Decodes the path part of a request URI (without the query). `None`: not a route (404).
pub fn parse(path: &str) -> Option<Route> {
    if path == "/healthz" {
        return Some(Route::Health);
    }
    let (dist, tail) = path.strip_prefix("/live/")?.split_once('/')?;
    parse_child(dist, tail)
}

/// `<output>/index.m3u8` or `<output>/<rendition>/<file>` of distribution `dist`.
fn parse_child(dist: &str, tail: &str) -> Option<Route> {
    let mut parts = tail.split('/');
    let (out, second, third) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let output = output(out)?;
    let dist = Id::new(dist).ok()?;
    let Some(file) = third else {
        return (second == "index.m3u8").then_some(Route::Multivariant { dist, output });
    };
    let rendition = Id::new(second).ok()?;
    if file == "index.m3u8" {
        return Some(Route::MediaPlaylist {
            dist,
            output,
            rendition,
        });
    }
    if let Some(v) = file
        .strip_prefix("init-")
        .and_then(|f| f.strip_suffix(".mp4"))
    {
        return (output == OutputKind::Cmaf).then_some(Route::Init {
            dist,
            rendition,
            version: number(v)?,
        });
    }
    let ext = match output {
        OutputKind::Cmaf => ".m4s",
        OutputKind::Ts => ".ts",
    };
    let name = file.strip_suffix(ext)?;
    if let Some((msn, part)) = name.split_once('.') {
        return (output == OutputKind::Cmaf).then_some(Route::Part {
            dist,
            rendition,
            msn: number(msn)?,
            part: number(part)?,
        });
    }
    let msn = number(name)?;
    Some(Route::Segment {
        dist,
        output,
        rendition,
        msn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/healthz"), Some(Route::Health));
        assert_eq!(
            parse("/live/demo/cmaf/index.m3u8"),
            Some(Route::Multivariant {
                dist: id("demo"),
                output: OutputKind::Cmaf
            })
        );
        assert_eq!(
            parse("/live/demo/ts/index.m3u8"),
            Some(Route::Multivariant {
                dist: id("demo"),
                output: OutputKind::Ts
            })
        );
        assert_eq!(
            parse("/live/demo/ts/720p/index.m3u8"),
            Some(Route::MediaPlaylist {
                dist: id("demo"),
                output: OutputKind::Ts,
                rendition: id("720p")
            })
        );
        assert_eq!(
            parse("/live/demo/cmaf/audio/init-3.mp4"),
            Some(Route::Init {
                dist: id("demo"),
                rendition: id("audio"),
                version: 3
            })
        );
        assert_eq!(
            parse("/live/demo/cmaf/360p/1234.m4s"),
            Some(Route::Segment {
                dist: id("demo"),
                output: OutputKind::Cmaf,
                rendition: id("360p"),
                msn: 1234
            })
        );
        assert_eq!(
            parse("/live/demo/ts/360p/0.ts"),
            Some(Route::Segment {
                dist: id("demo"),
                output: OutputKind::Ts,
                rendition: id("360p"),
                msn: 0
            })
        );
        assert_eq!(
            parse("/live/demo/cmaf/audio/1234.0.m4s"),
            Some(Route::Part {
                dist: id("demo"),
                rendition: id("audio"),
                msn: 1234,
                part: 0
            })
        );
        // Parts are CMAF only, and numbered canonically.
        for bad in [
            "/live/demo/ts/360p/12.1.ts",
            "/live/demo/cmaf/360p/12.01.m4s",
            "/live/demo/cmaf/360p/12..m4s",
            "/live/demo/cmaf/360p/12.1.2.m4s",
            "/live/demo/cmaf/360p/.1.m4s",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sessions_and_engines_sit_after_the_distribution_on_child_routes_only() {
        let s = "s-1800000060-00112233445566778899aabbccddeeff";
        let seg = Route::Segment {
            dist: id("demo"),
            output: OutputKind::Cmaf,
            rendition: id("360p"),
            msn: 12,
        };
        assert_eq!(
            parse_request(&format!("/live/demo/{s}/cmaf/360p/12.m4s")),
            Some(Request {
                route: seg.clone(),
                session: Some(s),
                engine: None,
                angle: None,
            })
        );
        assert_eq!(
            parse_request(&format!("/live/demo/{s}/e-spare/cmaf/360p/12.m4s")),
            Some(Request {
                route: seg.clone(),
                session: Some(s),
                engine: Some(id("spare")),
                angle: None,
            })
        );
        assert_eq!(
            parse_request("/live/demo/e-main/cmaf/360p/12.m4s"),
            Some(Request {
                route: seg.clone(),
                session: None,
                engine: Some(id("main")),
                angle: None,
            })
        );
        assert_eq!(
            parse_request("/live/demo/cmaf/index.m3u8").map(|r| r.route),
            Some(Route::Multivariant {
                dist: id("demo"),
                output: OutputKind::Cmaf
            })
        );
        assert_eq!(
            parse_request(&format!("/live/demo/{s}/check")),
            Some(Request {
                route: Route::SessionCheck { dist: id("demo") },
                session: Some(s),
                engine: None,
                angle: None,
            })
        );
        // Camera angles: after the session, CMAF only, not with an engine.
        assert_eq!(
            parse_request(&format!("/live/demo/{s}/angle/cam-2/cmaf/360p/12.m4s")),
            Some(Request {
                route: seg,
                session: Some(s),
                engine: None,
                angle: Some(id("cam-2")),
            })
        );
        let angle_mv = parse_request("/live/demo/angle/cam-2/cmaf/index.m3u8").unwrap();
        assert_eq!(
            (angle_mv.route, angle_mv.angle),
            (
                Route::Multivariant {
                    dist: id("demo"),
                    output: OutputKind::Cmaf
                },
                Some(id("cam-2"))
            )
        );
        for bad in [
            "/live/demo/check".to_owned(),
            format!("/live/demo/{s}/e-main/check"),
            format!("/live/demo/{s}/cmaf/index.m3u8"),
            "/live/demo/e-main/cmaf/index.m3u8".to_owned(),
            format!("/live/demo/{s}/{s}/cmaf/360p/1.m4s"),
            format!("/live/demo/e-main/{s}/cmaf/360p/1.m4s"),
            "/live/demo/e-main/e-spare/cmaf/360p/1.m4s".to_owned(),
            "/live/demo/e-Main/cmaf/360p/1.m4s".to_owned(),
            "/live/demo/e-/cmaf/360p/1.m4s".to_owned(),
            "/live/demo/s-1/../cmaf/360p/1.m4s".to_owned(),
            "/live/demo/s-%2e/cmaf/360p/1.m4s".to_owned(),
            format!("/live/demo/s-{}/cmaf/360p/1.m4s", "0".repeat(80)),
            "/live/demo/angle/cam/ts/index.m3u8".to_owned(),
            "/live/demo/angle/cam/ts/360p/1.ts".to_owned(),
            "/live/demo/e-main/angle/cam/cmaf/360p/1.m4s".to_owned(),
            "/live/demo/angle/cam/e-main/cmaf/360p/1.m4s".to_owned(),
            "/live/demo/angle/Cam/cmaf/index.m3u8".to_owned(),
            "/live/demo/angle/cmaf/index.m3u8".to_owned(),
            format!("/live/demo/angle/cam/{s}/cmaf/360p/1.m4s"),
            "/live/demo/angle/cam/angle/cam/cmaf/index.m3u8".to_owned(),
        ] {
            assert_eq!(parse_request(&bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for p in [
            "/",
            "/live",
            "/live/",
            "/live/demo",
            "/live/demo/cmaf",
            "/live/demo/hls/index.m3u8",
            "/live/../etc/passwd",
            "/live/demo/cmaf/../index.m3u8",
            "/live/demo/cmaf/%2e%2e/index.m3u8",
            "/live/Demo/cmaf/index.m3u8",
            "/live/demo/ts/720p/init-1.mp4",
            "/live/demo/cmaf/720p/1.ts",
            "/live/demo/ts/720p/1.m4s",
            "/live/demo/cmaf/720p/01.m4s",
            "/live/demo/cmaf/720p/-1.m4s",
            "/live/demo/cmaf/720p/+1.m4s",
            "/live/demo/cmaf/720p/99999999999999999999999.m4s",
            "/live/demo/cmaf/720p/index.m3u8/x",
            "/live//cmaf/index.m3u8",
            "/live/demo/cmaf//index.m3u8",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }
}
