//! The RTMP listener: the tokio shell around [`RtmpSession`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::bus::Publisher;
use crate::error::{EndReason, IngestError, Transport, write_by};
use crate::output::Reader;
use crate::push::{FlvOut, FlvRelay};
use crate::rtmp_session::{RtmpAction, RtmpPolicy, RtmpSession};

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

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::UnknownKey,
        Refusal::Disabled,
        Refusal::AddressNotAllowed,
        Refusal::WrongProtocol,
        Refusal::Busy,
    ];

    /// Its name as a metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::Disabled => "disabled",
            Refusal::AddressNotAllowed => "address",
            Refusal::WrongProtocol => "wrong_protocol",
            Refusal::Busy => "busy",
        }
    }
}

/// What wakes a connection that plays an output.
enum PlayerWake {
    /// The next media event (`None`: the channel is gone).
    Event(Option<sluice_core::MediaEvent>),
    /// The output was changed or stopped.
    OutputClosed,
}

/// The next event for a player (never, while there is none).
async fn player_wake(reader: &mut Option<Reader>) -> PlayerWake {
    match reader {
        Some(r) => tokio::select! {
            _ = r.cancel.cancelled() => PlayerWake::OutputClosed,
            ev = r.rx.recv() => PlayerWake::Event(ev),
        },
        None => std::future::pending().await,
    }
}

/// Decides who may publish, and where to.
pub trait PublishRouter: Send + Sync + 'static {
    /// Claims the key's channel for an RTMP publisher; `tracking_id` is what the
    /// publisher appended to its stream name, if anything (kept with the feed and shown).
    fn authorize_rtmp(
        &self,
        stream_key: &str,
        peer: SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal>;
    /// The passphrase of an SRT key's ingest (`None`: unencrypted), if the key may
    /// publish over SRT at all. Claims nothing.
    fn srt_passphrase(&self, stream_key: &str) -> Result<Option<String>, Refusal>;
    /// Claims the key's channel for an SRT publisher.
    fn authorize_srt(
        &self,
        stream_key: &str,
        peer: SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal>;
    /// The passphrase of a read key's SRT output (`None`: unencrypted), if the key may
    /// read over SRT at all. Opens nothing.
    fn srt_read_passphrase(&self, read_key: &str) -> Result<Option<String>, Refusal> {
        let _ = read_key;
        Err(Refusal::UnknownKey)
    }
    /// Opens the read key's `rtmp-play` output for a player at `peer`.
    fn authorize_rtmp_play(&self, read_key: &str, peer: SocketAddr) -> Result<Reader, Refusal> {
        let _ = (read_key, peer);
        Err(Refusal::UnknownKey)
    }
    /// Opens the read key's SRT output for a reader at `peer`.
    fn authorize_srt_read(
        &self,
        read_key: &str,
        peer: SocketAddr,
    ) -> Result<crate::output::Reader, Refusal> {
        let _ = (read_key, peer);
        Err(Refusal::UnknownKey)
    }
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
    /// A write to the peer that takes longer closes the connection.
    pub write_timeout: Duration,
    /// The policy each connection's session enforces: application, deadlines, byte caps.
    pub session: RtmpPolicy,
    /// While publishing, a connection reads at most once per this interval; what
    /// arrives in between waits in the socket's receive buffer and is read in one go.
    /// An encoder writes each audio and video message as it is made (about a hundred
    /// writes a second): reading each on its own costs a wake-up, a system call and an
    /// engine wake-up per write, a quarter of the CPU of a passthrough channel. 20 ms
    /// adds at most 20 ms of latency, a small part of one LL-HLS part. Reads fall on one
    /// grid for all connections, so the runtime wakes once per interval for all of them.
    /// Zero reads as soon as bytes arrive.
    pub read_interval: Duration,
}

impl Default for RtmpLimits {
    fn default() -> Self {
        RtmpLimits {
            max_connections: 256,
            max_per_address: 8,
            reserved_for_allowed: 64,
            write_timeout: Duration::from_secs(10),
            session: RtmpPolicy::default(),
            read_interval: Duration::from_millis(20),
        }
    }
}

/// Serves one accepted RTMP connection until the peer leaves, misbehaves or `cancel`
/// fires, and logs how it ended. (The listener, its connection cap and accept back-off
/// live with the caller.)
pub async fn serve_rtmp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<dyn PublishRouter>,
    limits: &RtmpLimits,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // (channel, ingest), once a publish is accepted.
    let mut published = None;
    let reason = connection(stream, peer, router, limits, cancel, &mut published).await;
    let stream = published
        .as_ref()
        .map(|(c, i): &(String, String)| (c.as_str(), i.as_str()));
    IngestError::new(Transport::Rtmp, Some(peer), reason).log(stream);
}

/// The socket side of one connection: reads until the session's deadline, feeds it the
/// bytes and carries out its actions. Returns why the connection ended.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Arc<dyn PublishRouter>,
    limits: &RtmpLimits,
    cancel: CancellationToken,
    published: &mut Option<(String, String)>,
) -> EndReason {
    let mut session = RtmpSession::new(limits.session.clone(), std::time::Instant::now());
    let mut publisher: Option<Publisher> = None;
    // A player of an `rtmp-play` output, once accepted: its bus subscription.
    let mut reader: Option<Reader> = None;
    let mut relay = FlvRelay::default();
    let mut tags = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Made once per connection, not once per read: a publisher's every frame passes
    // through this loop. The timer is moved when it fires early (input came since), or
    // when the session's deadline comes sooner, not on every read.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(session.deadline().0.into());
    tokio::pin!(timer);
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    loop {
        let n = tokio::select! {
            _ = &mut cancelled => return EndReason::Cancelled,
            _ = &mut timer => {
                if let Err(timeout) = session.check_deadline(std::time::Instant::now()) {
                    return timeout;
                }
                timer.as_mut().reset(session.deadline().0.into());
                continue;
            }
            r = stream.read(&mut buf) => match r {
                Err(e) => return e.into(),
                Ok(0) => return EndReason::Closed,
                Ok(n) => n,
            },
            wake = player_wake(&mut reader) => {
                let ev = match wake {
                    PlayerWake::Event(Some(ev)) => ev,
                    PlayerWake::Event(None) => return EndReason::Closed,
                    PlayerWake::OutputClosed => return EndReason::Cancelled,
                };
                relay.push(&ev, &mut tags);
                for tag in tags.drain(..) {
                    let len = match &tag {
                        FlvOut::Video(_, b) | FlvOut::Audio(_, b) => b.len(),
                        FlvOut::Metadata(_) => 0,
                    };
                    let bytes = match session.media(tag) {
                        Ok(b) => b,
                        Err(e) => return e,
                    };
                    let by = tokio::time::Instant::now() + limits.write_timeout;
                    if let Err(e) = write_by(&mut stream, &bytes, by, EndReason::WriteTimeout).await {
                        return e;
                    }
                    if let Some(r) = &reader {
                        r.sent(len);
                    }
                }
                continue;
            }
        };
        let mut pending = match session.handle_input(&buf[..n], std::time::Instant::now()) {
            Ok(actions) => actions,
            Err(e) => return e,
        };
        let deadline = tokio::time::Instant::from_std(session.deadline().0);
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    RtmpAction::Send(bytes) => {
                        let by = tokio::time::Instant::now() + limits.write_timeout;
                        if let Err(e) =
                            write_by(&mut stream, &bytes, by, EndReason::WriteTimeout).await
                        {
                            return e;
                        }
                    }
                    RtmpAction::PublishRequested {
                        request_id,
                        stream_key,
                    } => {
                        let (key, tracking_id) = crate::rtmp_session::stream_name(&stream_key);
                        let answer = match router.authorize_rtmp(key, peer, tracking_id) {
                            Ok(p) => {
                                tracing::info!(%peer, channel = %p.channel(), ingest = %p.spec().ingest, tracking_id = tracking_id.unwrap_or(""), "RTMP publish accepted");
                                *published =
                                    Some((p.channel().to_string(), p.spec().ingest.clone()));
                                publisher = Some(p);
                                session.accept(request_id, Some(&stream_key))
                            }
                            Err(refusal) => {
                                // The key itself is a secret: never log it.
                                tracing::warn!(%peer, reason = %refusal, "RTMP publish refused");
                                session.reject(request_id, refusal)
                            }
                        };
                        match answer {
                            Ok(actions) => next.extend(actions),
                            Err(e) => return e,
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
                        if let Some(p) = publisher.as_mut() {
                            p.push(f);
                        }
                    }
                    RtmpAction::PublishFinished => publisher = None,
                    RtmpAction::PlayRequested {
                        request_id,
                        stream_key,
                    } => {
                        let answer = match router.authorize_rtmp_play(
                            crate::rtmp_session::stream_name(&stream_key).0,
                            peer,
                        ) {
                            Ok(r) => {
                                tracing::info!(%peer, channel = %r.channel, output = %r.output, "RTMP reader accepted");
                                reader = Some(r);
                                session.accept_play(request_id)
                            }
                            Err(refusal) => {
                                tracing::warn!(%peer, reason = %refusal, "RTMP play refused");
                                session.reject(request_id, refusal)
                            }
                        };
                        match answer {
                            Ok(actions) => next.extend(actions),
                            Err(e) => return e,
                        }
                    }
                    RtmpAction::PlayFinished => return EndReason::Closed,
                    RtmpAction::Dropped(why) => tracing::debug!(%peer, why, "RTMP data dropped"),
                    RtmpAction::Close(reason) => {
                        let _ = stream.shutdown().await;
                        return reason;
                    }
                }
            }
            pending = next;
        }
        if let Some(why) = publisher.as_mut().and_then(|p| p.ended()) {
            let _ = stream.shutdown().await;
            return EndReason::PublisherEnded(why);
        }
        if publisher.is_some() && !limits.read_interval.is_zero() {
            // On one grid for every connection: the runtime wakes once per interval
            // for all of them.
            let resume =
                sluice_core::time::next_on_grid(std::time::Instant::now(), limits.read_interval);
            pause.as_mut().reset(resume.into());
            tokio::select! {
                _ = &mut cancelled => return EndReason::Cancelled,
                _ = &mut pause => {}
            }
        }
    }
}
