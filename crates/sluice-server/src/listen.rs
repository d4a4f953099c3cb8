//! One accept loop for every TCP listener (RTMP, HTTP): a connection cap, accept
//! errors retried with back-off (never `?` out of the loop), every connection a task
//! owned here and stopped through `cancel`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    max_connections: usize,
    cancel: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{what} connection limit reached; closing");
            continue;
        };
        let conn = serve(stream, peer, cancel.child_token());
        conns.spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
    conns.shutdown().await;
}
