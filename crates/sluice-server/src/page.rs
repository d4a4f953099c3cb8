//! The status page at `/`: static files compiled into the binary (`assets/status/`),
//! which read `GET /api/v1/status` like any script. hls.js comes from the npm registry
//! (`assets/status/update-hlsjs.sh`) and is served from here: the page requests nothing
//! from anywhere else, and its Content-Security-Policy tells the browser to keep it so.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

const INDEX: &str = include_str!("../../../assets/status/index.html");
const APP: &str = include_str!("../../../assets/status/app.js");
const STYLE: &str = include_str!("../../../assets/status/style.css");
/// The hls.js release served at `/status/hls.min.js`.
const HLS: &[u8] = include_bytes!("../../../assets/status/hls-1.7.4.min.js");

/// Only this server: scripts, styles, status requests and media (hls.js feeds the video
/// element through blob: URLs and may run its demuxer in a blob: worker).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    media-src 'self' blob:; worker-src 'self' blob:; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The answer for `path` if it is one of the page's files.
pub fn answer(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type, cache) = match path {
        "/" => (
            Bytes::from_static(INDEX.as_bytes()),
            "text/html; charset=utf-8",
            "no-cache",
        ),
        "/status/app.js" => (
            Bytes::from_static(APP.as_bytes()),
            "text/javascript; charset=utf-8",
            "no-cache",
        ),
        "/status/style.css" => (
            Bytes::from_static(STYLE.as_bytes()),
            "text/css; charset=utf-8",
            "no-cache",
        ),
        "/status/hls.min.js" => (
            Bytes::from_static(HLS),
            "text/javascript; charset=utf-8",
            "public, max-age=3600",
        ),
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::from_static(b"method not allowed\n")));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_it_serves() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/status/app.js", "text/javascript"),
            ("/status/style.css", "text/css"),
            ("/status/hls.min.js", "text/javascript"),
        ] {
            let r = answer(&Method::GET, path).unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(ct.starts_with(kind), "{path}: {ct}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert!(answer(&Method::GET, "/status/other.js").is_none());
        assert_eq!(
            answer(&Method::POST, "/").unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        // Every file the page loads is one of these, on this server.
        for src in ["/status/style.css", "/status/hls.min.js", "/status/app.js"] {
            assert!(INDEX.contains(&format!("\"{src}\"")), "{src}");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(!APP.contains("http://") && !APP.contains("https://"));
        assert!(!String::from_utf8_lossy(HLS).contains("sourceMappingURL"));
    }
}
