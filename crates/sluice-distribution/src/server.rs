//! The hyper server and request handling.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_core::Id;
use sluice_package::{EngineOutput, OutputKind};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::deadline::WriteDeadline;
use crate::path::{self, Route};

/// One distribution as the HTTP layer sees it.
#[derive(Clone)]
pub struct DistributionEntry {
    pub outputs: Vec<OutputKind>,
    /// Renditions above this are left out of the multivariant playlist.
    pub max_kbps: Option<u32>,
    pub enabled: bool,
    /// The engines that may serve it, most preferred first.
    pub engines: Vec<Arc<EngineOutput>>,
}

/// Everything the HTTP layer serves, replaced as a whole on a configuration change.
#[derive(Clone, Default)]
pub struct Catalog {
    pub distributions: HashMap<Id, DistributionEntry>,
}

pub struct HttpState {
    pub catalog: ArcSwap<Catalog>,
}

impl HttpState {
    pub fn new(catalog: Catalog) -> Arc<Self> {
        Arc::new(HttpState {
            catalog: ArcSwap::from_pointee(catalog),
        })
    }
}

#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Concurrent connections (enforced by the listener's owner).
    pub max_connections: usize,
    /// Concurrent connections from one client address, except trusted proxies
    /// (enforced by the listener's owner). Generous: many viewers can share an address
    /// behind a NAT.
    pub max_per_address: usize,
    pub header_read_timeout: Duration,
    /// A response that makes no write progress for this long closes the connection.
    pub write_stall_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            max_per_address: 256,
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

const PLAYLIST: &str = "application/vnd.apple.mpegurl";
/// Media playlists change every segment; a cache may hold one for a second.
const PLAYLIST_CACHE: &str = "public, max-age=1";
const MULTIVARIANT_CACHE: &str = "public, max-age=5";
/// Segment URLs are never reused for other bytes.
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";

fn response(
    status: StatusCode,
    content_type: &str,
    cache: &str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(cache).unwrap_or(HeaderValue::from_static("no-store")),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn error(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut r = response(
        status,
        "text/plain; charset=utf-8",
        "no-store",
        Bytes::from_static(message.as_bytes()),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    r
}

/// A CORS preflight (Fetch standard, "CORS protocol"): any origin may read, and send
/// `Authorization` (viewer tokens) and `Range`. Cached by browsers for a day.
fn preflight() -> Response<Full<Bytes>> {
    let mut r = response(
        StatusCode::NO_CONTENT,
        "text/plain",
        "no-store",
        Bytes::new(),
    );
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    r
}

/// Answers one request. Pure apart from reading the catalog: unit-testable without sockets.
pub fn handle(catalog: &Catalog, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let Some(route) = path::parse(path) else {
        return error(StatusCode::NOT_FOUND, "not found\n");
    };
    if method == Method::OPTIONS {
        return preflight();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return r;
    }
    let dist_id = match &route {
        Route::Health => {
            return response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "no-store",
                Bytes::from_static(b"ok\n"),
            );
        }
        Route::Multivariant { dist, .. }
        | Route::MediaPlaylist { dist, .. }
        | Route::Init { dist, .. }
        | Route::Segment { dist, .. } => dist,
    };
    let Some(dist) = catalog.distributions.get(dist_id).filter(|d| d.enabled) else {
        return error(StatusCode::NOT_FOUND, "unknown distribution\n");
    };
    let output = match &route {
        Route::Init { .. } => OutputKind::Cmaf,
        Route::Multivariant { output, .. }
        | Route::MediaPlaylist { output, .. }
        | Route::Segment { output, .. } => *output,
        Route::Health => unreachable!("answered above"),
    };
    if !dist.outputs.contains(&output) {
        return error(
            StatusCode::NOT_FOUND,
            "output not enabled for this distribution\n",
        );
    }
    match route {
        Route::Multivariant { output, .. } => match dist
            .engines
            .iter()
            .find_map(|e| e.multivariant(output, dist.max_kbps))
        {
            Some(body) => response(StatusCode::OK, PLAYLIST, MULTIVARIANT_CACHE, body),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "stream not live yet\n"),
        },
        Route::MediaPlaylist {
            output, rendition, ..
        } => {
            match dist
                .engines
                .iter()
                .find_map(|e| e.media_playlist(output, rendition.as_str()))
            {
                Some(body) => response(StatusCode::OK, PLAYLIST, PLAYLIST_CACHE, body),
                None if dist
                    .engines
                    .iter()
                    .any(|e| e.rendition_names().iter().any(|n| n == rendition.as_str())) =>
                {
                    error(StatusCode::SERVICE_UNAVAILABLE, "stream not live yet\n")
                }
                None => error(StatusCode::NOT_FOUND, "unknown rendition\n"),
            }
        }
        Route::Init {
            rendition, version, ..
        } => match dist
            .engines
            .iter()
            .find_map(|e| e.init_segment(rendition.as_str(), version))
        {
            Some(body) => response(StatusCode::OK, "video/mp4", SEGMENT_CACHE, body),
            None => error(StatusCode::NOT_FOUND, "no such init segment\n"),
        },
        Route::Segment {
            output,
            rendition,
            msn,
            ..
        } => {
            match dist
                .engines
                .iter()
                .find_map(|e| e.segment(output, rendition.as_str(), msn))
            {
                Some(body) => {
                    let ct = match output {
                        OutputKind::Cmaf => "video/iso.segment",
                        OutputKind::Ts => "video/mp2t",
                    };
                    response(StatusCode::OK, ct, SEGMENT_CACHE, body)
                }
                None => error(StatusCode::NOT_FOUND, "no such segment\n"),
            }
        }
        Route::Health => unreachable!("answered above"),
    }
}

async fn service(
    state: Arc<HttpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let catalog = state.catalog.load();
    let mut resp = handle(&catalog, req.method(), req.uri().path());
    if req.method() == Method::HEAD {
        let n = hyper::body::Body::size_hint(resp.body())
            .exact()
            .unwrap_or(0);
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        *resp.body_mut() = Full::new(Bytes::new());
    }
    tracing::debug!(method = %req.method(), path = req.uri().path(), status = resp.status().as_u16(), "http");
    Ok(resp)
}

/// Serves one accepted HTTP/1.1 connection (keep-alive included) until the client
/// leaves or `cancel` fires; then finishes the request in flight, bounded.
pub async fn serve_http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<HttpState>,
    limits: &HttpLimits,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let io = WriteDeadline::new(stream, limits.write_stall_timeout);
    let stalled = io.stalled.clone();
    let svc = hyper::service::service_fn(move |req| service(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.drain, conn).await.unwrap_or(Ok(()))
        }
    };
    if stalled.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(%peer, timeout_s = limits.write_stall_timeout.as_secs(), "HTTP viewer stopped reading; connection closed");
    } else if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_without_engines() {
        let mut c = Catalog::default();
        c.distributions.insert(
            Id::new("d").unwrap(),
            DistributionEntry {
                outputs: vec![OutputKind::Cmaf],
                max_kbps: None,
                enabled: true,
                engines: vec![],
            },
        );
        c.distributions.insert(
            Id::new("off").unwrap(),
            DistributionEntry {
                outputs: vec![OutputKind::Cmaf],
                max_kbps: None,
                enabled: false,
                engines: vec![],
            },
        );
        let get = |p: &str| handle(&c, &Method::GET, p).status();
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(
            get("/live/d/cmaf/index.m3u8"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get("/live/d/ts/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/nope/cmaf/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/off/cmaf/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/d/cmaf/720p/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/d/cmaf/720p/5.m4s"), StatusCode::NOT_FOUND);
        assert_eq!(get("/etc/passwd"), StatusCode::NOT_FOUND);
        assert_eq!(
            handle(&c, &Method::POST, "/healthz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        // CORS preflight for a playlist (a token in Authorization needs one).
        let r = handle(&c, &Method::OPTIONS, "/live/d/cmaf/index.m3u8");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        assert_eq!(
            handle(&c, &Method::OPTIONS, "/etc/passwd").status(),
            StatusCode::NOT_FOUND
        );
        let r = handle(&c, &Method::GET, "/live/d/cmaf/index.m3u8");
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
