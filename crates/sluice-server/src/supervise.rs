//! Long-lived tasks restart when they panic or stop on their own: one broken engine or
//! listener must not silently leave a channel or a port dead until the next restart.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `make()` until `cancel`; whenever the task panics or returns before that, logs
/// it and starts a new one after a back-off (1 s, doubling to 30 s, reset after a
/// minute of good running).
pub async fn supervise<F, Fut>(what: String, cancel: CancellationToken, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::spawn(make()).await;
        if cancel.is_cancelled() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        match outcome {
            Err(e) if e.is_panic() => {
                tracing::error!(task = %what, backoff_ms = backoff.as_millis() as u64, "task panicked; restarting")
            }
            _ => {
                tracing::error!(task = %what, backoff_ms = backoff.as_millis() as u64, "task stopped unexpectedly; restarting")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn panics_and_early_returns_restart_with_backoff_until_cancelled() {
        let runs = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let sup = tokio::spawn(supervise("t".into(), cancel.clone(), {
            let (runs, cancel) = (runs.clone(), cancel.clone());
            move || {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                let cancel = cancel.clone();
                async move {
                    match n {
                        0 => panic!("boom"),
                        1 => {} // returns early
                        _ => cancel.cancelled().await,
                    }
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted after 1 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "then after 2 s");
        cancel.cancel();
        sup.await.unwrap();
    }
}
