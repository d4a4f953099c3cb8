//! One accept loop for every TCP listener (RTMP, HTTP): admission before anything is
//! read (a total, a cap per address, a reserve; see [`crate::admission`]), accept errors
//! retried with back-off (never `?` out of the loop), every connection a task owned
//! here. On `cancel` the loop stops accepting, lets connections finish for up to
//! `drain`, then aborts what is left.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::Throttle;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{AdmissionTable, Refused};
use crate::supervise::supervise;

/// [`accept_loop`] under [`supervise`]: a listener whose loop panics or stops before
/// `cancel` is started again on the same socket.
pub async fn supervised_accept_loop<F, Fut>(
    what: &'static str,
    listener: Arc<TcpListener>,
    admission: Arc<AdmissionTable>,
    drain: Duration,
    cancel: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    supervise(format!("{what} listener"), cancel.clone(), move || {
        accept_loop(
            what,
            listener.clone(),
            admission.clone(),
            drain,
            cancel.clone(),
            serve.clone(),
        )
    })
    .await
}

pub async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: Arc<TcpListener>,
    admission: Arc<AdmissionTable>,
    drain: Duration,
    cancel: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    // A flood of refused peers logs once every 10 s per reason, with a count.
    let mut refusals: HashMap<Refused, Throttle> = HashMap::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and similar: wait and retry, keep the listener.
                tracing::warn!(error = %e, "{what} accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let admission = match admission.try_admit(peer.ip()) {
            Ok(a) => a,
            Err(refused) => {
                if let Some(suppressed) = refusals.entry(refused).or_default().hit_now() {
                    tracing::warn!(%peer, reason = %refused, suppressed, "{what} connection refused");
                }
                drop(stream);
                continue;
            }
        };
        let conn = serve(stream, peer, cancel.child_token());
        conns.spawn(async move {
            let _admission = admission;
            conn.await;
        });
    }
    // Connections saw `cancel` too: give them `drain` to finish what is in flight.
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            left = conns.len(),
            "{what} connections still open after the drain; closing them"
        );
    }
    conns.shutdown().await;
}
