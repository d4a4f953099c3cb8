//! One error for every way an ingest connection ends, whatever its transport (RTMP or
//! SRT publishers, RTMP or SRT pulls): who the peer was and why it ended.
//!
//! The sans-IO sessions and parsers say *why* ([`EndReason`]); the socket shells add
//! *who* ([`IngestError`]) and log it once, at a level chosen by the reason: the peer's
//! fault (hostile or broken input, a refusal) is a warning, the rest (timeouts, the peer
//! leaving, shutdown) is routine.

use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::bus::PublishEnded;
use crate::rtmp::Refusal;
use crate::rtmp_guard::GuardError;
use crate::ts_demux::TsError;

/// How the media came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A publisher pushing RTMP to `rtmp_listen`.
    Rtmp,
    /// A caller pushing MPEG-TS over SRT to `srt_listen`.
    Srt,
    /// Sluice playing a stream from an RTMP server (`rtmp-pull`).
    RtmpPull,
    /// Sluice calling an SRT listener (`srt-pull`).
    SrtPull,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Rtmp => "RTMP",
            Transport::Srt => "SRT",
            Transport::RtmpPull => "RTMP pull",
            Transport::SrtPull => "SRT pull",
        })
    }
}

/// Why an ingest connection ended.
#[derive(Debug, thiserror::Error)]
pub enum EndReason {
    /// The peer closed the connection (or, for SRT, shut down or went silent).
    #[error("the peer closed the connection")]
    Closed,
    /// The server is shutting down.
    #[error("server shutting down")]
    Cancelled,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("no media for {0:?}")]
    Idle(Duration),
    #[error("write timed out")]
    WriteTimeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// RTMP input that would crash or mislead rml_rtmp, stopped before it got there.
    #[error("input refused: {0}")]
    Malformed(#[from] GuardError),
    #[error("bad MPEG-TS: {0}")]
    Ts(#[from] TsError),
    #[error("sent {0} bytes without a complete frame")]
    Unproductive(usize),
    /// The publish was refused (key, address, app, busy channel).
    #[error("publish refused: {0}")]
    Refused(Refusal),
    /// The server a pull plays from refused or ended the play.
    #[error("the source refused: {0}")]
    SourceRefused(String),
    /// The stream cannot be taken (a codec other than H.264, video before its header).
    #[error("unsupported input: {0}")]
    Unsupported(String),
    #[error("publisher closed: {0}")]
    PublisherEnded(PublishEnded),
    /// A library panicked on this input; the panic was contained to this connection.
    #[error("{0} failed on this input (panic contained)")]
    Panicked(&'static str),
    #[error("bad URL: {0}")]
    Url(&'static str),
    #[error("cannot resolve {0}")]
    Resolve(String),
}

impl EndReason {
    /// The peer's doing: hostile or broken input, a refusal, a cap exceeded. Logged as a
    /// warning; everything else is routine.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            EndReason::Malformed(_)
                | EndReason::Ts(_)
                | EndReason::Unproductive(_)
                | EndReason::Refused(_)
                | EndReason::SourceRefused(_)
                | EndReason::Unsupported(_)
                | EndReason::PublisherEnded(_)
                | EndReason::Panicked(_)
                | EndReason::Protocol(_)
                | EndReason::Handshake(_)
        )
    }

    /// An orderly end: the peer left, or the server is stopping.
    pub fn is_orderly(&self) -> bool {
        matches!(self, EndReason::Closed | EndReason::Cancelled)
    }
}

/// An ingest connection's end: the transport, the peer (unknown only for a pull that
/// never resolved its source) and the reason.
#[derive(Debug, thiserror::Error)]
pub struct IngestError {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub reason: EndReason,
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "{} {peer}: {}", self.transport, self.reason),
            None => write!(f, "{}: {}", self.transport, self.reason),
        }
    }
}

impl IngestError {
    pub fn new(transport: Transport, peer: Option<SocketAddr>, reason: EndReason) -> Self {
        IngestError {
            transport,
            peer,
            reason,
        }
    }

    /// Logs the end once, with the channel and ingest it published to (if it got that
    /// far): a warning if it was the peer's fault, info otherwise.
    pub fn log(&self, stream: Option<(&str, &str)>) {
        let (channel, ingest) = stream.unwrap_or(("-", "-"));
        let transport = self.transport.to_string();
        let peer = self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let reason = &self.reason;
        if reason.is_peer_fault() {
            tracing::warn!(%peer, %channel, %ingest, %transport, error = %reason, "ingest connection closed");
        } else if reason.is_orderly() {
            tracing::info!(%peer, %channel, %ingest, %transport, "ingest connection ended ({reason})");
        } else {
            tracing::info!(%peer, %channel, %ingest, %transport, error = %reason, "ingest connection ended");
        }
    }
}

/// Runs `f` on untrusted input; a panic inside the library named `library` becomes an
/// error for this connection alone, never the process's end.
pub(crate) fn contained<T>(library: &'static str, f: impl FnOnce() -> T) -> Result<T, EndReason> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| EndReason::Panicked(library))
}

/// Writes all of `bytes` to a peer before `deadline`; a peer that takes longer ends the
/// connection with `late` (a slow reader must not hold a task and its buffers).
pub(crate) async fn write_by<W>(
    out: &mut W,
    bytes: &[u8],
    deadline: tokio::time::Instant,
    late: EndReason,
) -> Result<(), EndReason>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout_at(deadline, out.write_all(bytes)).await {
        Err(_) => Err(late),
        Ok(r) => r.map_err(EndReason::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_transport_peer_and_reason() {
        let e = IngestError::new(
            Transport::Rtmp,
            Some("192.0.2.7:50000".parse().unwrap()),
            EndReason::Unproductive(40 << 20),
        );
        assert_eq!(
            e.to_string(),
            "RTMP 192.0.2.7:50000: sent 41943040 bytes without a complete frame"
        );
        assert!(e.reason.is_peer_fault());
        let e = IngestError::new(Transport::SrtPull, None, EndReason::Resolve("x:1".into()));
        assert_eq!(e.to_string(), "SRT pull: cannot resolve x:1");
        assert!(!e.reason.is_peer_fault());
    }

    #[test]
    fn a_panic_is_contained_as_an_error() {
        let r: Result<(), _> = contained("rml_rtmp", || panic!("boom"));
        assert!(matches!(r, Err(EndReason::Panicked("rml_rtmp"))));
        assert_eq!(contained("x", || 3).unwrap(), 3);
    }
}
