//! HTTP connections served on one single-threaded runtime per core.
//!
//! The accept loop (on the main runtime) hands each admitted connection to one of these
//! workers, round robin; from then on every request of that connection is parsed,
//! judged and answered on that worker's thread, as nginx's worker processes do. A
//! request never moves between threads, so serving it costs no work stealing, no
//! cross-thread wake-ups and no shared run queue: on two cores this serves about a fifth
//! more playlist requests per CPU-second than the same code on the shared multi-thread
//! runtime (`benches/http_vs_nginx.sh`). Everything the requests read (the catalog, the
//! segment store) is shared and thread-safe, so any worker serves any viewer.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle as ThreadHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<ThreadHandle<()>>,
}

/// A fixed set of single-threaded runtimes, each on a thread of its own.
pub struct WorkerPool {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

/// Aborts the connection's task when the accept loop lets go of it (after its drain).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WorkerPool {
    /// `n` workers (at least one), threads named `<name>-<i>`.
    pub fn new(name: &str, n: usize) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Runs the connections handed over until the pool is dropped; then
                    // whatever is left is dropped with the runtime.
                    rt.block_on(async move {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(WorkerPool {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// One worker per available core.
    pub fn per_core(name: &str) -> io::Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(name, n)
    }

    /// Serves `stream` (with `TCP_NODELAY`) on the next worker with `serve`; the returned
    /// future ends when the connection does, and dropping it closes the connection.
    pub fn serve<F, Fut>(
        &self,
        stream: TcpStream,
        serve: F,
    ) -> impl Future<Output = ()> + Send + use<F, Fut>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static + Send,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        // A socket belongs to the reactor of the runtime that registered it: hand over
        // the plain socket and register it again on the worker.
        let std_stream = stream.into_std();
        let task = self.workers[i].handle.spawn(async move {
            let Ok(s) = std_stream else { return };
            if let Ok(stream) = TcpStream::from_std(s) {
                // Small responses (playlists, parts) go out at once, not after Nagle's wait.
                let _ = stream.set_nodelay(true);
                serve(stream).await;
            }
        });
        async move {
            let _abort = AbortOnDrop(task.abort_handle());
            let _ = task.await;
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections are served on the pool's threads, in turn; dropping the future the
    /// accept loop holds closes the connection; dropping the pool stops its threads.
    #[tokio::test]
    async fn connections_run_on_the_workers_and_close_with_their_owner() {
        let pool = WorkerPool::new("test-http", 2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut names = Vec::new();
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server_side, _) = listener.accept().await.unwrap();
            held.push(pool.serve(server_side, |mut s| async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                let _ = s.write_all(name.as_bytes()).await;
                // Then hold the connection until the owner lets go.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf).await;
            }));
            let mut buf = [0u8; 32];
            let n = client.read(&mut buf).await.unwrap();
            names.push((String::from_utf8_lossy(&buf[..n]).into_owned(), client));
        }
        let got: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, ["test-http-0", "test-http-1", "test-http-0"]);

        // The first connection's owner lets go (as the accept loop does after its drain).
        let first = held.remove(0);
        let polled = tokio::time::timeout(Duration::from_millis(50), first).await;
        assert!(polled.is_err(), "the connection was still being served");
        let (_, mut client) = names.remove(0);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed, not answered");
        drop(held);
        drop(pool);
    }
}
