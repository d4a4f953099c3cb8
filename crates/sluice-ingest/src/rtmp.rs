//! The RTMP listener: the tokio shell around [`RtmpSession`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::bus::PublishEnded;
use crate::bus::Publisher;
use crate::rtmp_session::{RTMP_APP, RtmpAction, RtmpError, RtmpSession};

/// Why a publisher was turned away. Logged; the peer gets an RTMP error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown stream key")]
    UnknownKey,
    #[error("ingest is disabled")]
    Disabled,
    #[error("source address not allowed")]
    AddressNotAllowed,
    #[error("wrong protocol for this stream key")]
    WrongProtocol,
    #[error("channel already has a live publisher")]
    Busy,
}

/// Decides who may publish, and where to.
pub trait PublishRouter: Send + Sync + 'static {
    fn authorize_rtmp(&self, stream_key: &str, peer: SocketAddr) -> Result<Publisher, Refusal>;
    /// The passphrase of an SRT key's ingest (`None`: unencrypted), if the key may
    /// publish over SRT at all. Claims nothing.
    fn srt_passphrase(&self, stream_key: &str) -> Result<Option<String>, Refusal>;
    /// Claims the key's channel for an SRT publisher.
    fn authorize_srt(&self, stream_key: &str, peer: SocketAddr) -> Result<Publisher, Refusal>;
}

#[derive(Debug, Clone)]
pub struct RtmpLimits {
    /// Concurrent connections (enforced by the listener's owner).
    pub max_connections: usize,
    /// Concurrent connections from one address (enforced by the listener's owner).
    pub max_per_address: usize,
    /// Of `max_connections`, slots kept for addresses inside some ingest's
    /// `allow_cidrs` (enforced by the listener's owner).
    pub reserved_for_allowed: usize,
    /// From accept to a completed handshake.
    pub handshake_timeout: Duration,
    /// From accept to an accepted publish (handshake, connect, createStream, publish):
    /// a peer that is not publishing by then is closed, so idle peers cannot hold slots.
    pub publish_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Bytes a peer may send before it is publishing (handshake, connect, publish commands).
    pub max_bytes_before_publish: usize,
    /// Bytes a publisher may send without completing a frame: bounds what the RTMP
    /// chunk decoder can be made to buffer for one connection.
    pub max_bytes_between_frames: usize,
}

impl Default for RtmpLimits {
    fn default() -> Self {
        RtmpLimits {
            max_connections: 256,
            max_per_address: 8,
            reserved_for_allowed: 64,
            // A handshake is two round trips and a publish about four more: seconds
            // even over a satellite link, so idle or slow peers are gone quickly.
            handshake_timeout: Duration::from_secs(3),
            publish_timeout: Duration::from_secs(6),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_bytes_before_publish: 1 << 20,
            max_bytes_between_frames: 32 << 20,
        }
    }
}

/// Serves one accepted RTMP connection until the peer leaves, misbehaves or `cancel`
/// fires. (The listener, its connection cap and accept back-off live with the caller.)
pub async fn serve_rtmp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<dyn PublishRouter>,
    limits: &RtmpLimits,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    match connection(stream, peer, router, limits, cancel).await {
        Ok(()) => tracing::debug!(%peer, "RTMP connection closed"),
        // Input stopped before it could reach rml_rtmp is an attack or a broken client:
        // worth a warning. Everything else (timeouts, resets, refusals logged already) is
        // routine.
        Err(
            e @ (ConnectionEnd::Session(RtmpError::Refused(_)) | ConnectionEnd::Unsupported(_)),
        ) => {
            tracing::warn!(%peer, error = %e, "RTMP connection refused and closed")
        }
        Err(e) => tracing::info!(%peer, error = %e, "RTMP connection ended"),
    }
}

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("write timed out")]
    WriteTimeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] RtmpError),
    #[error("sent {0} bytes without a complete frame")]
    Unproductive(usize),
    #[error("publish refused: {0}")]
    Refused(Refusal),
    #[error("publisher closed: {0}")]
    PublisherEnded(PublishEnded),
    #[error("unsupported input: {0}")]
    Unsupported(String),
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Arc<dyn PublishRouter>,
    limits: &RtmpLimits,
    cancel: CancellationToken,
) -> Result<(), ConnectionEnd> {
    let mut session = RtmpSession::new();
    let mut publisher: Option<Publisher> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let accepted_at = tokio::time::Instant::now();
    let handshake_deadline = accepted_at + limits.handshake_timeout;
    let publish_deadline = accepted_at + limits.publish_timeout;
    // Bytes received since the last complete frame (or since the start, before publishing).
    let mut unproductive = 0usize;
    loop {
        let (deadline, waiting_for) = match publisher {
            Some(_) => (tokio::time::Instant::now() + limits.idle_timeout, "media"),
            None if session.is_handshaking() => (handshake_deadline, "the handshake"),
            None => (publish_deadline, "a publish"),
        };
        let n = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match r {
                Err(_) => return Err(ConnectionEnd::Timeout(waiting_for)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
            },
        };
        unproductive += n;
        let cap = if publisher.is_some() {
            limits.max_bytes_between_frames
        } else {
            limits.max_bytes_before_publish
        };
        if unproductive > cap {
            return Err(ConnectionEnd::Unproductive(unproductive));
        }
        let mut pending = session.handle_input(&buf[..n])?;
        let mut refused: Option<Refusal> = None;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    RtmpAction::Send(bytes) => {
                        tokio::time::timeout(limits.write_timeout, stream.write_all(&bytes))
                            .await
                            .map_err(|_| ConnectionEnd::WriteTimeout)??;
                    }
                    RtmpAction::PublishRequested {
                        request_id,
                        app,
                        stream_key,
                    } => {
                        let verdict = if app != RTMP_APP {
                            Err(Refusal::UnknownKey)
                        } else if publisher.is_some() {
                            Err(Refusal::Busy)
                        } else {
                            router.authorize_rtmp(&stream_key, peer)
                        };
                        match verdict {
                            Ok(p) => {
                                tracing::info!(%peer, channel = %p.channel(), "RTMP publish accepted");
                                unproductive = 0;
                                publisher = Some(p);
                                next.extend(session.accept(request_id, Some(&stream_key))?);
                            }
                            Err(refusal) => {
                                // The key itself is a secret: never log it.
                                tracing::warn!(%peer, app, reason = %refusal, "RTMP publish refused");
                                next.extend(session.reject(request_id, &refusal.to_string())?);
                                refused = Some(refusal);
                            }
                        }
                    }
                    RtmpAction::VideoConfig(cfg) => {
                        if let Some(p) = publisher.as_mut() {
                            p.video_config(cfg);
                        }
                    }
                    RtmpAction::AudioConfig(cfg) => {
                        if let Some(p) = publisher.as_mut() {
                            p.audio_config(cfg);
                        }
                    }
                    RtmpAction::Frame(f) => {
                        unproductive = 0;
                        if let Some(p) = publisher.as_mut() {
                            p.push(f);
                        }
                    }
                    RtmpAction::PublishFinished => publisher = None,
                    RtmpAction::Dropped(why) => tracing::debug!(%peer, why, "RTMP data dropped"),
                    RtmpAction::Unsupported(why) => {
                        let _ = stream.shutdown().await;
                        return Err(ConnectionEnd::Unsupported(why));
                    }
                }
            }
            pending = next;
        }
        if let Some(why) = publisher.as_mut().and_then(|p| p.ended()) {
            let _ = stream.shutdown().await;
            return Err(ConnectionEnd::PublisherEnded(why));
        }
        if let Some(refusal) = refused {
            let _ = stream.shutdown().await;
            return Err(ConnectionEnd::Refused(refusal));
        }
    }
}
