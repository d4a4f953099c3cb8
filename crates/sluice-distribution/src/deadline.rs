//! A write deadline for one connection: a peer that stops reading cannot hold its slot
//! (and the segment bytes its response holds) forever.
//!
//! The deadline is on progress, not on the whole response: a write that makes no
//! progress for `timeout` fails the connection, while a slow viewer that keeps reading
//! (a 6 MB segment over a weak mobile link) is not cut off.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write is first blocked, disarmed on any progress.
    stall: Option<Pin<Box<Sleep>>>,
    /// Until the peer's first bytes: a connection that never sends anything is closed
    /// (before they come it is not known to be HTTP/1.1 or HTTP/2, so neither protocol's
    /// own deadlines apply yet).
    first_read: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline fired, for the caller's log line.
    pub stalled: Arc<AtomicBool>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stall: None,
            first_read: None,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fails reads with `TimedOut` if the peer sends nothing at all within `deadline`.
    pub fn with_first_read_deadline(mut self, deadline: Duration) -> Self {
        self.first_read = Some(Box::pin(tokio::time::sleep(deadline)));
        self
    }

    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer stopped reading the response",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.blocked(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(first) = self.first_read.as_mut() {
            match &r {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_read = None,
                Poll::Pending if first.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing",
                    )));
                }
                _ => {}
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer into a pipe nobody reads fails after the deadline; one that is read
    /// keeps going however long the whole transfer takes.
    #[tokio::test(start_paused = true)]
    async fn stalls_fail_progress_does_not() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(a, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(w.stalled.load(Ordering::Relaxed));
        assert_eq!(started.elapsed().as_secs(), 10);

        let (a, mut reader_side) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match tokio::io::AsyncReadExt::read(&mut reader_side, &mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        w.write_all(&[0u8; 8 * 1024]).await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 8 * 1024);
        drop(b.shutdown().await);
    }

    /// A peer that never sends a byte is given up on; one that does is not, however
    /// long it then waits.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_on() {
        use tokio::io::AsyncReadExt;
        let (a, _b) = tokio::io::duplex(64);
        let mut r = WriteDeadline::new(a, Duration::from_secs(10))
            .with_first_read_deadline(Duration::from_secs(3));
        let err = r.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (a, mut b) = tokio::io::duplex(64);
        let mut r = WriteDeadline::new(a, Duration::from_secs(10))
            .with_first_read_deadline(Duration::from_secs(3));
        b.write_all(b"G").await.unwrap();
        assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        b.write_all(b"ET").await.unwrap();
        assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 2);
    }
}
