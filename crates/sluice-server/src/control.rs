//! The control API (`/api/v1`) and every other way the configuration changes while the
//! server runs (SIGHUP, the file changing on disk).
//!
//! One path for all of them: a change is made to the configuration *document* (the
//! operator's file, comments and all, through `toml_edit`), the result is validated
//! exactly as `sluice check` validates a file, written back atomically, then handed to
//! the reconciler ([`Runtime::apply`]). Changes are serialised by one lock: a `PATCH`
//! racing another waits for it, and `If-Match` (the resource's ETag) turns a lost
//! update into `412`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use sluice_config::edit::{ConfigDocument, EditError, write_atomically};
use sluice_config::{ApiConfig, Config, ConfigErrors};
use sluice_core::Id;
use sluice_distribution::{ApiFuture, ApiRequest, ControlApi};
use tokio_util::sync::CancellationToken;

use crate::runtime::{Runtime, StatusView};

/// The OpenAPI 3 description of this API (served at `/api/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

struct Inner {
    runtime: Runtime,
    doc: ConfigDocument,
    /// The file's text as last read or written (the watcher ignores our own writes).
    text: String,
}

pub struct Control {
    inner: tokio::sync::Mutex<Inner>,
    /// `None`: the embedded default; changes are kept in memory only.
    path: Option<PathBuf>,
    origin: String,
    /// The running `[api]` section, read by every request without the lock.
    api: ArcSwap<ApiConfig>,
    /// The runtime API calls run on (the server's main one): not the HTTP workers, whose
    /// viewers must not wait for a change being validated and written.
    runs_on: tokio::runtime::Handle,
    status: Arc<ArcSwap<StatusView>>,
    http: Arc<sluice_distribution::HttpState>,
    metrics: prometheus_client::registry::Registry,
    /// `server.metrics` (fixed while the server runs, as `[server]` is).
    metrics_on: bool,
    /// `server.data_dir` (likewise): recordings are read from here.
    data_dir: PathBuf,
}

type Answer = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: &Json) -> Answer {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn problem(status: StatusCode, message: impl Into<String>) -> Answer {
    json_response(status, &json!({ "error": message.into() }))
}

/// `422` with every reason `sluice check` gives, each with its key path.
fn invalid(errors: &ConfigErrors) -> Answer {
    let list: Vec<Json> = errors
        .errors
        .iter()
        .map(|e| json!({"path": e.path, "line": e.line, "column": e.column, "message": e.message}))
        .collect();
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"error": "the change makes an invalid configuration; nothing changed", "errors": list}),
    )
}

fn edit_problem(e: &EditError) -> Answer {
    match e {
        EditError::NotFound(_) => problem(StatusCode::NOT_FOUND, e.to_string()),
        EditError::Exists(_) => problem(StatusCode::CONFLICT, e.to_string()),
        EditError::Invalid(path, message) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": "the change makes an invalid configuration; nothing changed",
                    "errors": [{"path": path, "message": message}]}),
        ),
    }
}

/// A strong ETag of a resource's JSON form.
pub fn etag(value: &Json) -> String {
    let digest = Sha256::digest(serde_json::to_vec(value).unwrap_or_default());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether `header` (an `If-Match` value) matches `current` (`None`: no resource).
fn if_match(header: &str, current: Option<&str>) -> bool {
    header.split(',').map(str::trim).any(|tag| match tag {
        "*" => current.is_some(),
        // Strong comparison (RFC 9110 §13.1.1): a weak tag never matches.
        t => Some(t) == current,
    })
}

/// Equal in time independent of where they differ (both hashed first, so the length of
/// the configured token is not revealed either).
fn token_matches(given: &str, configured: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(configured));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A resource of the model, as addressed by a path below `/api/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A table of resources by id: `channels`, `distributions`, `ladders`,
    /// `channels/<id>/ingests`, `channels/<id>/engines`, `channels/<id>/outputs`,
    /// `channels/<id>/sources`.
    Collection(Vec<String>),
    /// One resource in such a table.
    Item(Vec<String>),
}

/// `segments` (the path after `/api/v1/`, split) as a model resource; `None`: not one.
fn target(segments: &[&str]) -> Option<Target> {
    let id = |s: &str| Id::new(s).ok().map(|i| i.to_string());
    match segments {
        [kind @ ("channels" | "distributions" | "ladders")] => {
            Some(Target::Collection(vec![(*kind).into()]))
        }
        [kind @ ("channels" | "distributions" | "ladders"), item] => {
            Some(Target::Item(vec![(*kind).into(), id(item)?]))
        }
        [
            "channels",
            c,
            kind @ ("ingests" | "engines" | "outputs" | "sources"),
        ] => Some(Target::Collection(vec![
            "channels".into(),
            id(c)?,
            (*kind).into(),
        ])),
        [
            "channels",
            c,
            kind @ ("ingests" | "engines" | "outputs" | "sources"),
            item,
        ] => Some(Target::Item(vec![
            "channels".into(),
            id(c)?,
            (*kind).into(),
            id(item)?,
        ])),
        _ => None,
    }
}

impl Control {
    pub fn new(runtime: Runtime, text: String, path: Option<PathBuf>) -> anyhow::Result<Self> {
        let doc = ConfigDocument::parse(&text)
            .map_err(|e| anyhow::anyhow!("configuration is not TOML: {e}"))?;
        let origin = path
            .as_ref()
            .map_or("<embedded default>".into(), |p| p.display().to_string());
        let api = ArcSwap::from_pointee(runtime.running().api.clone());
        let (status, http, router) = runtime.observers();
        let metrics_on = runtime.running().server.metrics;
        let data_dir = runtime.running().server.data_dir.clone();
        if path.is_none() {
            tracing::info!(
                "no --config file: changes through the control API are kept in memory only"
            );
        }
        Ok(Control {
            inner: tokio::sync::Mutex::new(Inner { runtime, doc, text }),
            path,
            origin,
            api,
            runs_on: tokio::runtime::Handle::current(),
            metrics: crate::metrics::registry(status.clone(), http.clone(), router),
            metrics_on,
            data_dir,
            status,
            http,
        })
    }

    fn authorized(&self, req: &ApiRequest) -> bool {
        let Some(given) = req
            .authorization
            .as_deref()
            .and_then(|a| a.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        let api = self.api.load();
        // Every configured token is compared, whichever matches.
        api.admin_tokens
            .iter()
            .fold(false, |ok, t| token_matches(given, t) | ok)
    }

    async fn handle(&self, req: ApiRequest) -> Answer {
        if let Some(page) = crate::page::answer(&req.method, &req.path) {
            return page;
        }
        let read = req.method == Method::GET || req.method == Method::HEAD;
        if req.path == "/metrics" {
            if !self.metrics_on {
                return problem(
                    StatusCode::NOT_FOUND,
                    "metrics are off (server.metrics = false)",
                );
            }
            // Ids and counts only, like the public status.
            if !read {
                return problem(StatusCode::METHOD_NOT_ALLOWED, "metrics are read with GET");
            }
            if !self.api.load().public_status && !self.authorized(&req) {
                return problem(
                    StatusCode::FORBIDDEN,
                    "an admin token is needed (api.public_status is false)",
                );
            }
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &self.metrics,
            ))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return r;
        }
        let Some(rest) = req.path.strip_prefix("/api/v1/") else {
            return problem(StatusCode::NOT_FOUND, "the control API is at /api/v1/");
        };
        let segments: Vec<&str> = rest.split('/').collect();
        // The description of the API, and (while public_status) the status, are open.
        if read && segments == ["openapi.json"] {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        let public = read && segments == ["status"] && self.api.load().public_status;
        if !public && !self.authorized(&req) {
            return problem(
                StatusCode::FORBIDDEN,
                "an admin token is needed: Authorization: Bearer <one of api.admin_tokens>",
            );
        }
        match (&req.method, segments.as_slice()) {
            // Status is read from the published view: never behind a change.
            (_, ["status"]) if read => {
                let viewers = self.http.viewers.report();
                json_response(StatusCode::OK, &self.status.load().all(&viewers))
            }
            (_, ["channels", c, "status"]) if read => {
                let viewers = self.http.viewers.report();
                match Id::new(c)
                    .ok()
                    .and_then(|c| self.status.load().channel(&c, &viewers))
                {
                    Some(s) => json_response(StatusCode::OK, &s),
                    None => problem(StatusCode::NOT_FOUND, "no such channel"),
                }
            }
            (_, ["status"] | ["channels", _, "status"]) => {
                problem(StatusCode::METHOD_NOT_ALLOWED, "status is read with GET")
            }
            // Recordings: listed, and their files downloaded by ids (disk reads off the
            // async workers).
            (_, ["recordings"]) if read => {
                let dir = self.data_dir.clone();
                match tokio::task::spawn_blocking(move || crate::recorder::list(&dir)).await {
                    Ok(list) => json_response(StatusCode::OK, &Json::Array(list)),
                    Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "cannot list recordings"),
                }
            }
            (_, ["recordings", rest @ ..]) if read => {
                let dir = self.data_dir.clone();
                let parts: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                let found = tokio::task::spawn_blocking(move || {
                    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                    crate::recorder::read(&dir, &parts)
                })
                .await
                .ok()
                .flatten();
                match found {
                    Some((body, ty)) => {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
                        r
                    }
                    None => problem(StatusCode::NOT_FOUND, "no such recording file"),
                }
            }
            (_, ["recordings", ..]) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "recordings are read with GET",
            ),
            (&Method::POST, ["channels", c, "outputs", o, action @ ("start" | "stop")]) => {
                let (Ok(c), Ok(o)) = (Id::new(c), Id::new(o)) else {
                    return problem(StatusCode::NOT_FOUND, "no such output");
                };
                let done =
                    self.inner
                        .lock()
                        .await
                        .runtime
                        .set_output_running(&c, &o, *action == "start");
                if !done {
                    return problem(
                        StatusCode::NOT_FOUND,
                        "no such output (or its channel is stopped)",
                    );
                }
                let viewers = self.http.viewers.report();
                let status = self.status.load().channel(&c, &viewers);
                json_response(StatusCode::OK, &status.unwrap_or(Json::Null))
            }
            (&Method::POST, ["channels", c, action @ ("start" | "stop")]) => {
                let Ok(c) = Id::new(c) else {
                    return problem(StatusCode::NOT_FOUND, "no such channel");
                };
                let mut inner = self.inner.lock().await;
                let done = if *action == "stop" {
                    inner.runtime.stop_channel(&c)
                } else {
                    inner.runtime.start_channel_again(&c)
                };
                drop(inner);
                if !done {
                    return problem(StatusCode::NOT_FOUND, "no such channel");
                }
                let viewers = self.http.viewers.report();
                let status = self.status.load().channel(&c, &viewers);
                json_response(StatusCode::OK, &status.unwrap_or(Json::Null))
            }
            _ => match target(&segments) {
                Some(t) => self.resource(req, t).await,
                None => problem(StatusCode::NOT_FOUND, "no such resource"),
            },
        }
    }

    async fn resource(&self, req: ApiRequest, target: Target) -> Answer {
        let read = req.method == Method::GET || req.method == Method::HEAD;
        if !read && !matches!(req.method, Method::POST | Method::PATCH | Method::DELETE) {
            return problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let body = if req.method == Method::POST || req.method == Method::PATCH {
            if let Some(ct) = &req.content_type
                && !ct.contains("json")
            {
                return problem(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the body must be JSON (application/json or application/merge-patch+json)",
                );
            }
            match serde_json::from_slice::<Json>(&req.body) {
                Ok(b) => Some(b),
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not JSON: {e}"),
                    );
                }
            }
        } else {
            None
        };
        let mut inner = self.inner.lock().await;
        match (&target, &req.method) {
            (Target::Collection(path), _) if read => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let items: serde_json::Map<String, Json> = inner
                    .doc
                    .keys(&path)
                    .into_iter()
                    .filter_map(|k| {
                        let mut p = path.clone();
                        p.push(&k);
                        Some((k.clone(), inner.doc.get(&p)?))
                    })
                    .collect();
                json_response(StatusCode::OK, &Json::Object(items))
            }
            (Target::Item(path), _) if read => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                match inner.doc.get(&path) {
                    Some(v) => with_etag(json_response(StatusCode::OK, &v), &v),
                    None => problem(
                        StatusCode::NOT_FOUND,
                        format!("{}: no such item", path.join(".")),
                    ),
                }
            }
            (Target::Collection(path), &Method::POST) => {
                let mut body = body.unwrap_or(Json::Null);
                let id = match body.as_object_mut().and_then(|o| o.remove("id")) {
                    Some(Json::String(id)) if Id::new(&id).is_ok() => id,
                    _ => {
                        return edit_problem(&EditError::Invalid(
                            path.join("."),
                            "the body must be a JSON object with a valid \"id\" (letters, digits, '-', '_')".into(),
                        ));
                    }
                };
                let mut full: Vec<&str> = path.iter().map(String::as_str).collect();
                // Under a channel that does not exist: 404, not a validation error.
                if full.len() > 1 && inner.doc.get(&full[..2]).is_none() {
                    return problem(
                        StatusCode::NOT_FOUND,
                        format!("{}: no such item", full[..2].join(".")),
                    );
                }
                full.push(&id);
                let location = format!("/api/v1/{}", full.join("/"));
                self.change(
                    &mut inner,
                    &req,
                    &full,
                    |doc| doc.insert(&full, &body),
                    StatusCode::CREATED,
                    Some(location),
                )
                .await
            }
            (Target::Item(path), &Method::PATCH) => {
                let full: Vec<&str> = path.iter().map(String::as_str).collect();
                let patch = body.unwrap_or(Json::Null);
                self.change(
                    &mut inner,
                    &req,
                    &full,
                    |doc| doc.merge_patch(&full, &patch),
                    StatusCode::OK,
                    None,
                )
                .await
            }
            (Target::Item(path), &Method::DELETE) => {
                let full: Vec<&str> = path.iter().map(String::as_str).collect();
                self.change(
                    &mut inner,
                    &req,
                    &full,
                    |doc| doc.remove(&full),
                    StatusCode::NO_CONTENT,
                    None,
                )
                .await
            }
            _ => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this resource",
            ),
        }
    }

    /// Makes one change: `If-Match` checked, `edit` applied to a copy of the document,
    /// the result validated, written back, then reconciled. Any failure leaves the
    /// running configuration and the file as they were.
    async fn change(
        &self,
        inner: &mut Inner,
        req: &ApiRequest,
        path: &[&str],
        edit: impl FnOnce(&mut ConfigDocument) -> Result<(), EditError>,
        status: StatusCode,
        location: Option<String>,
    ) -> Answer {
        // Checked again under the lock: a token revoked by a change this request waited
        // for no longer counts.
        if !self.authorized(req) {
            return problem(StatusCode::FORBIDDEN, "an admin token is needed");
        }
        // An edit of the file on disk not applied yet (or refused: see the log) is the
        // operator's work: the API does not write over it.
        if let Some(path) = &self.path
            && let Ok(on_disk) = std::fs::read_to_string(path)
            && on_disk != inner.text
        {
            return problem(
                StatusCode::CONFLICT,
                format!(
                    "{} was edited and the edit is not applied yet (or was refused: see the log); the API will not write over it. Fix or revert the file, or retry once it is applied",
                    path.display()
                ),
            );
        }
        let before = inner.doc.get(path);
        if let Some(expected) = &req.if_match
            && !if_match(expected, before.as_ref().map(etag).as_deref())
        {
            return problem(
                StatusCode::PRECONDITION_FAILED,
                "If-Match does not match the resource's current ETag: it changed since it was read",
            );
        }
        let mut doc = inner.doc.clone();
        if let Err(e) = edit(&mut doc) {
            return edit_problem(&e);
        }
        let text = doc.text();
        let next = match Config::from_toml_str(&text, &self.origin) {
            Ok(c) => c,
            Err(errors) => return invalid(&errors),
        };
        match self.commit(inner, doc, text, next).await {
            Ok(changes) => {
                tracing::info!(method = %req.method, path = %req.path, changes = %changes.join(", "), "configuration changed through the API");
                let after = inner.doc.get(path);
                let mut r = match (&after, status) {
                    (_, StatusCode::NO_CONTENT) | (None, _) => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        r
                    }
                    (Some(v), s) => with_etag(json_response(s, v), v),
                };
                if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    r.headers_mut().insert(header::LOCATION, l);
                }
                if self.path.is_none() {
                    r.headers_mut().insert(
                        "sluice-persisted",
                        HeaderValue::from_static("memory-only; no --config file"),
                    );
                }
                r
            }
            Err(CommitError::Refused(e)) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": format!("{e:#}"), "errors": []}),
            ),
            Err(CommitError::Failed(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    /// Writes `text` to the file (if there is one) and reconciles to `next`; on a
    /// failure, the old file and configuration stay (or are put back).
    async fn commit(
        &self,
        inner: &mut Inner,
        doc: ConfigDocument,
        text: String,
        next: Config,
    ) -> Result<Vec<String>, CommitError> {
        if let Some(path) = &self.path {
            write_file(path.clone(), text.clone()).await.map_err(|e| {
                CommitError::Failed(format!(
                    "cannot write {}: {e}; the change was not applied",
                    path.display()
                ))
            })?;
        }
        let previous = inner.runtime.running().clone();
        match inner.runtime.apply(next).await {
            Ok(changes) => {
                self.adopt(inner, doc, text);
                Ok(changes)
            }
            Err(e) => {
                // Put back what was there: the file, and whatever was applied before the
                // failure.
                if let Some(path) = &self.path
                    && let Err(w) = write_file(path.clone(), inner.text.clone()).await
                {
                    tracing::error!(file = %path.display(), error = %w, "cannot restore the configuration file");
                }
                if let Err(r) = inner.runtime.apply(previous).await {
                    tracing::error!(error = %format!("{r:#}"), "cannot restore the running configuration");
                }
                Err(CommitError::Refused(e))
            }
        }
    }

    /// Reads the file again (SIGHUP, or the watcher saw it change) and applies it. A
    /// file with errors, or one the running server cannot apply, changes nothing; each
    /// error is logged with its line and column.
    pub async fn reload(&self, why: &str, quiet_if_unchanged: bool) {
        let Some(path) = &self.path else {
            tracing::warn!(
                "{why}: running on the embedded default configuration, there is no file to read again"
            );
            return;
        };
        let mut inner = self.inner.lock().await;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "{why}: cannot read the configuration file; the running configuration stays");
                return;
            }
        };
        if text == inner.text {
            if !quiet_if_unchanged {
                tracing::info!("{why}: configuration unchanged");
            }
            return;
        }
        let next = match Config::from_toml_str(&text, &self.origin) {
            Ok(next) => next,
            Err(errors) => {
                for e in &errors.errors {
                    tracing::error!(
                        file = %errors.origin,
                        line = e.line,
                        column = e.column,
                        key = %e.path,
                        "{}",
                        e.message
                    );
                }
                tracing::error!(
                    file = %errors.origin,
                    errors = errors.errors.len(),
                    "configuration reload refused: the file is invalid; the running configuration stays"
                );
                return;
            }
        };
        let Ok(doc) = ConfigDocument::parse(&text) else {
            return; // valid for the schema, so TOML: not reached
        };
        match inner.runtime.apply(next).await {
            Ok(changes) => {
                self.adopt(&mut inner, doc, text);
                if changes.is_empty() {
                    tracing::info!("{why}: configuration unchanged");
                } else {
                    tracing::info!(changes = %changes.join(", "), "configuration reloaded ({why})");
                }
            }
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "configuration reload refused; the running configuration stays"
            ),
        }
    }

    /// After the runtime applied a configuration: its `[api]` answers requests from now
    /// on, and its document and text are the ones later changes start from.
    fn adopt(&self, inner: &mut Inner, doc: ConfigDocument, text: String) {
        self.api
            .store(Arc::new(inner.runtime.running().api.clone()));
        inner.doc = doc;
        inner.text = text;
    }

    /// Stops every channel (at shutdown).
    pub async fn shutdown(&self) {
        self.inner.lock().await.runtime.stop_all();
    }

    /// Watches the configuration file: when its contents change (and stay changed for a
    /// moment, so a half-written file is not read), it is reloaded.
    pub async fn watch(self: Arc<Self>, period: Duration, cancel: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let now = stamp(&path);
            if now == last {
                continue;
            }
            // Settled: unchanged for a little while.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let settled = stamp(&path);
            if settled != now {
                continue;
            }
            last = settled;
            // Our own writes change the stamp too; their text is the running one.
            self.reload("the configuration file changed", true).await;
        }
    }
}

enum CommitError {
    /// The reconciler refused it (a section that cannot change in place).
    Refused(anyhow::Error),
    /// The file could not be written.
    Failed(String),
}

/// [`write_atomically`] on a blocking thread (it waits for the disk twice).
async fn write_file(path: PathBuf, text: String) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomically(&path, &text))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn with_etag(mut r: Answer, value: &Json) -> Answer {
    if let Ok(v) = HeaderValue::from_str(&etag(value)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

impl ControlApi for Control {
    /// A body is read only for a change by an admin: nobody else makes the server
    /// buffer one.
    fn wants_body(&self, req: &ApiRequest) -> bool {
        matches!(req.method, Method::POST | Method::PATCH) && self.authorized(req)
    }

    fn call(self: Arc<Self>, req: ApiRequest) -> ApiFuture {
        let runs_on = self.runs_on.clone();
        let task = runs_on.spawn(async move { self.handle(req).await });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "the change failed"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_distribution::{Catalog, HttpState, SessionKey};
    use tokio_util::task::TaskTracker;

    use crate::runtime::{LiveRouter, Shared, SrtSetup};

    const TOKEN: &str = "unit-test-token-0123456789";

    async fn control(text: &str, path: Option<PathBuf>) -> (Arc<Control>, CancellationToken) {
        let cfg = Config::from_toml_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let cancel = CancellationToken::new();
        let router = Arc::new(LiveRouter::default());
        let limits = Arc::new(sluice_ingest::SrtLimits::default());
        let shared = Shared {
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            timeline_start: 0,
            init_version_base: 1,
            geodb: None,
            state: HttpState::new(Catalog::default(), SessionKey::from_secret(b"t")),
            router: router.clone(),
            srt: SrtSetup {
                addr: "127.0.0.1:0".parse().unwrap(),
                admit: crate::srt_listen::admission(&limits, vec![]),
                limits,
                router,
            },
            status: Arc::default(),
        };
        let runtime = Runtime::start(cfg, shared).await.unwrap();
        let control = Arc::new(Control::new(runtime, text.to_string(), path).unwrap());
        (control, cancel)
    }

    fn request(method: Method, path: &str, body: &str, token: Option<&str>) -> ApiRequest {
        ApiRequest {
            method,
            path: path.into(),
            query: None,
            peer: "127.0.0.1".parse().unwrap(),
            authorization: token.map(|t| format!("Bearer {t}")),
            if_match: None,
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_owned()),
        }
    }

    async fn call(c: &Arc<Control>, req: ApiRequest) -> (StatusCode, Option<String>, Json) {
        use http_body_util::BodyExt;
        let r = c.clone().call(req).await;
        let persisted = r
            .headers()
            .get("sluice-persisted")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(Json::Null);
        (status, persisted, json)
    }

    const FILE: &str = "[api]\nadmin_tokens = [\"unit-test-token-0123456789\"]\n\n\
        [channels.c.ingests.main] # the encoder\nprotocol = \"rtmp\"\nstream_key = \"k\"\n\
        [channels.c.engines.copy]\nladder = \"passthrough\"\n\
        [distributions.d]\nchannel = \"c\"\n";

    /// With no file (the embedded default), a change applies, is kept in memory, and
    /// every answer says so.
    #[tokio::test]
    async fn without_a_file_changes_are_kept_in_memory_and_said_to_be() {
        let (c, cancel) = control(FILE, None).await;
        let patch = request(
            Method::PATCH,
            "/api/v1/distributions/d",
            r#"{"max_kbps": 700}"#,
            Some(TOKEN),
        );
        let (status, persisted, body) = call(&c, patch).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["max_kbps"], json!(700));
        assert_eq!(persisted.as_deref(), Some("memory-only; no --config file"));
        let get = request(Method::GET, "/api/v1/distributions/d", "", Some(TOKEN));
        assert_eq!(call(&c, get).await.2["max_kbps"], json!(700));
        cancel.cancel();
    }

    /// Tokens: none, a wrong one, a prefix of the right one are all 403; the document
    /// needs none.
    #[tokio::test]
    async fn tokens_are_required_and_compared_whole() {
        let (c, cancel) = control(FILE, None).await;
        for token in [None, Some("wrong"), Some(&TOKEN[..10]), Some("")] {
            let req = request(Method::GET, "/api/v1/channels", "", token);
            assert_eq!(call(&c, req).await.0, StatusCode::FORBIDDEN, "{token:?}");
        }
        let req = request(Method::GET, "/api/v1/channels", "", Some(TOKEN));
        let (status, _, body) = call(&c, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["c"]["ingests"]["main"]["stream_key"], json!("k"));
        let req = request(Method::GET, "/api/v1/openapi.json", "", None);
        let (status, _, doc) = call(&c, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["openapi"], json!("3.0.3"));
        cancel.cancel();
    }

    /// The file is rewritten with its comment, and a change that cannot be written is
    /// not applied.
    #[tokio::test]
    async fn changes_are_written_back_or_not_made() {
        let dir = std::env::temp_dir().join(format!("sluice-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, FILE).unwrap();
        let (c, cancel) = control(FILE, Some(path.clone())).await;
        let patch = request(
            Method::PATCH,
            "/api/v1/channels/c/ingests/main",
            r#"{"max_kbps": 9000}"#,
            Some(TOKEN),
        );
        let (status, persisted, _) = call(&c, patch).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(persisted, None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[channels.c.ingests.main] # the encoder\n"),
            "{text}"
        );
        assert!(text.contains("max_kbps = 9000"), "{text}");
        // The temporary file's place taken by a directory: the write fails.
        let blocker = dir.join(format!(".sluice.toml.sluice-{}.tmp", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let patch = request(
            Method::PATCH,
            "/api/v1/distributions/d",
            r#"{"max_kbps": 1}"#,
            Some(TOKEN),
        );
        let (status, _, body) = call(&c, patch).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let get = request(Method::GET, "/api/v1/distributions/d", "", Some(TOKEN));
        assert_eq!(call(&c, get).await.2.get("max_kbps"), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_dir_all(&dir).unwrap();
        cancel.cancel();
    }

    #[test]
    fn if_match_and_paths() {
        assert!(if_match("\"a\"", Some("\"a\"")));
        assert!(if_match("\"b\", \"a\"", Some("\"a\"")));
        assert!(!if_match("W/\"a\"", Some("\"a\"")));
        assert!(!if_match("\"b\"", Some("\"a\"")));
        assert!(if_match("*", Some("\"a\"")));
        assert!(!if_match("*", None));
        assert_eq!(
            target(&["channels", "c", "engines", "e"]),
            Some(Target::Item(vec![
                "channels".into(),
                "c".into(),
                "engines".into(),
                "e".into()
            ]))
        );
        assert_eq!(
            target(&["channels", "c", "sources"]),
            Some(Target::Collection(vec![
                "channels".into(),
                "c".into(),
                "sources".into()
            ]))
        );
        assert_eq!(target(&["channels", "c", "angles"]), None);
        assert_eq!(target(&["distributions", "../x"]), None);
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
    }
}
