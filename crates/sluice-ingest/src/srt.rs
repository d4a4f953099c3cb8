//! SRT ingest: the UDP listener, who may publish (decided at the handshake, before a
//! byte of media is accepted), and the connection loop that feeds the channel bus.
//!
//! The protocol is srt-protocol's (the sans-IO core under srt-tokio: the listener side
//! of the handshake, ARQ, TSBPD, AES). The I/O around it is ours, not srt-tokio's
//! listener, because hostile input must stay contained:
//! - srt-tokio runs every session's handshake in one task, and srt-protocol has
//!   `unimplemented!()` on paths a caller can reach (a caller sending a passphrase to
//!   an ingest without one did it in testing): one such caller would stop SRT for all.
//!   Here every call into srt-protocol runs under `catch_unwind`: a panic ends that
//!   handshake or that connection, logged, and nothing else;
//! - its listener keeps a session for every address that ever sent a datagram; here only
//!   handshakes create state, at most [`MAX_PENDING`] at once, each for 5 s;
//! - the handshake is checked before srt-protocol sees it (the key-material extension
//!   against the ingest's passphrase), so the cases it cannot take never reach it.
//!
//! One task owns the socket's receive side and routes datagrams by source address; each
//! connection is a task that owns its `DuplexConnection`, its MPEG-TS demuxer and its
//! publisher (no channel between the transport and the demuxer).
//!
//! The socket is not registered with the runtime's reactor: a registered UDP socket wakes
//! a worker thread for every datagram that arrives (thousands a second per server, most
//! of an SRT ingest's CPU in scheduling alone), even when no task is waiting on it. The
//! listener drains it on a [`RX_TICK`] grid instead, and sends are plain non-blocking
//! `sendto` calls (a full send buffer drops the datagram, as the network could).

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_core::Throttle;
use srt_protocol::connection::DuplexConnection;
use srt_protocol::options::{KeySize, PacketSize, Passphrase, SocketOptions};
use srt_protocol::packet::{
    ControlPacket, ControlTypes, CoreRejectReason, HandshakeVsInfo, Packet, RejectReason,
    ServerRejectReason, SrtControlPacket,
};
use srt_protocol::protocol::pending_connection::listen::Listen;
use srt_protocol::protocol::pending_connection::{
    AccessControlResponse, ConnectionReject, ConnectionResult,
};
use srt_protocol::settings::ConnInitSettings;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::Publisher;
use crate::error::{self, EndReason, IngestError, Transport};
use crate::output::{Reader, TsRelay};
use crate::rtmp::{PublishRouter, Refusal};
use crate::srt_streamid::{SrtMode, StreamIdError, parse_stream_id};
use crate::ts_demux::{TsDemuxer, TsEvent};

pub use srt_protocol::settings::KeySettings;

/// Handshakes in progress at once; more are dropped until some finish or expire.
pub const MAX_PENDING: usize = 256;
/// A handshake not finished in this long is forgotten.
const PENDING_TTL: Duration = Duration::from_secs(5);
/// Largest SRT payload offered. srt-protocol announces its payload size where libsrt
/// reads the MSS, so with the default (1316) a libsrt caller (ffmpeg, GStreamer) would be
/// held to 1272-byte messages and could not send the usual seven TS packets.
const MAX_PAYLOAD: u64 = 1456;
/// Datagrams queued for one connection; more are dropped (as the network would).
const CONNECTION_QUEUE: usize = 1024;

/// A connection takes its datagrams and runs its timers at most once per tick (SRT's
/// own 10 ms ACK interval): a publisher sends a few hundred datagrams a second, and a
/// wake-up for each was most of the CPU of an SRT ingest. Ticks fall on one grid for
/// all connections, so the runtime wakes once per tick for all of them. Datagrams wait
/// at most one tick (well inside the receive latency, 120 ms by default); the queue
/// holds a tick of 1 Gb/s.
const TICK: Duration = Duration::from_millis(10);

/// The listener drains the socket every 5 ms, on the same grid as [`TICK`] (every
/// other drain lands just before the connections' tick): a handshake round trip waits
/// at most 5 ms, media at most a tick and a half. The socket's receive buffer holds what
/// arrives in between ([`RECEIVE_BUFFER`]; the kernel caps it at `net.core.rmem_max`).
const RX_TICK: Duration = Duration::from_millis(5);

/// While no connection or handshake is open and a drain found nothing, the listener
/// looks every 50 ms instead (a caller's first handshake waits at most that long).
const RX_IDLE_TICK: Duration = Duration::from_millis(50);

/// Datagrams read per drain at most before the listener yields to other tasks (and
/// drains again at once).
const RX_BATCH: usize = 2048;

/// Sends a datagram without waiting: a full socket buffer drops it (SRT retransmits).
fn send_now(socket: &std::net::UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket.send_to(bytes, to);
}

/// What an SRT publish may use.
#[derive(Debug, Clone)]
pub struct SrtLimits {
    /// Concurrent SRT connections (enforced by the admission the server passes in).
    pub max_connections: usize,
    /// Concurrent connections from one address (likewise).
    pub max_per_address: usize,
    /// A publisher that sends no media for this long is closed.
    pub idle_timeout: Duration,
    /// The receive latency offered (the larger of both sides' is used): time SRT has to
    /// recover lost packets before it gives up on them.
    pub latency: Duration,
}

impl Default for SrtLimits {
    fn default() -> Self {
        SrtLimits {
            max_connections: 256,
            max_per_address: 8,
            idle_timeout: Duration::from_secs(5),
            latency: Duration::from_millis(200),
        }
    }
}

/// A connection slot, held for the connection's life (dropping it frees the slot).
pub type Slot = Box<dyn Send>;

/// Admission of a new caller's address before anything about its stream is decided:
/// a slot, or why not.
pub type Admit = Arc<dyn Fn(SocketAddr) -> Result<Slot, String> + Send + Sync>;

/// Why an SRT caller was turned away at the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtRefusal {
    #[error("{0}")]
    StreamId(StreamIdError),
    #[error("{0}")]
    Refused(Refusal),
    #[error("this ingest needs a passphrase; the caller sent none")]
    PassphraseRequired,
    #[error("this ingest has no passphrase; the caller encrypts")]
    UnexpectedEncryption,
    #[error("the ingest's passphrase cannot be used (10 to 79 characters)")]
    BadPassphraseConfig,
    #[error("{0}")]
    NotAdmitted(String),
}

impl SrtRefusal {
    /// The reject code the caller sees (libsrt prints its name).
    pub fn reject_reason(&self) -> RejectReason {
        RejectReason::Server(match self {
            SrtRefusal::StreamId(_) => ServerRejectReason::BadRequest,
            SrtRefusal::Refused(Refusal::Busy) => ServerRejectReason::Conflict,
            SrtRefusal::Refused(_) => ServerRejectReason::Forbidden,
            SrtRefusal::PassphraseRequired | SrtRefusal::UnexpectedEncryption => {
                ServerRejectReason::Unauthorized
            }
            SrtRefusal::BadPassphraseConfig => ServerRejectReason::InternalServerError,
            SrtRefusal::NotAdmitted(_) => ServerRejectReason::Overload,
        })
    }
}

/// What an accepted SRT caller does.
pub enum Granted {
    /// Publishes into a channel.
    Publish(Box<Publisher>),
    /// Reads a channel (a pull output).
    Read(Box<Reader>),
}

/// Decides an SRT caller: its stream id (`None`: it sent none), the key size it
/// announced, whether its handshake carries key material (it encrypts; libsrt callers
/// that leave the key length to the listener announce no size), its address. On
/// success the channel is claimed (or the output opened), and the key settings to
/// accept with are returned; a wrong passphrase is then found by SRT itself when the
/// keys do not unwrap.
pub fn decide(
    router: &dyn PublishRouter,
    stream_id: Option<&str>,
    key_size: KeySize,
    key_material: bool,
    peer: SocketAddr,
) -> Result<(Granted, Option<KeySettings>), SrtRefusal> {
    let request = parse_stream_id(stream_id.unwrap_or_default()).map_err(SrtRefusal::StreamId)?;
    let read = request.mode == SrtMode::Read;
    let encrypted = key_material || key_size != KeySize::Unspecified;
    // Checked before the channel is claimed: nothing about the channel changes for a
    // caller that cannot be let in.
    let passphrase = if read {
        router.srt_read_passphrase(request.key)
    } else {
        router.srt_passphrase(request.key)
    }
    .map_err(SrtRefusal::Refused)?;
    let key = match (passphrase, encrypted) {
        (Some(_), false) => return Err(SrtRefusal::PassphraseRequired),
        (None, true) => return Err(SrtRefusal::UnexpectedEncryption),
        (None, false) => None,
        (Some(p), true) => Some(KeySettings {
            // The caller's own key size: srt-protocol cannot take a mismatch.
            key_size,
            passphrase: Passphrase::try_from(p).map_err(|_| SrtRefusal::BadPassphraseConfig)?,
        }),
    };
    let granted = if read {
        Granted::Read(Box::new(
            router
                .authorize_srt_read(request.key, peer)
                .map_err(SrtRefusal::Refused)?,
        ))
    } else {
        Granted::Publish(Box::new(
            router
                .authorize_srt(request.key, peer, request.tracking_id)
                .map_err(SrtRefusal::Refused)?,
        ))
    };
    Ok((granted, key))
}

/// Receive buffer asked for the SRT listener's socket (the kernel caps it at
/// `net.core.rmem_max`): every publisher's datagrams share it, and a burst while the
/// runtime is busy must not overflow it (libsrt asks for 12 MB).
const RECEIVE_BUFFER: usize = 8 << 20;

/// Binds the SRT listener's UDP socket, with a large receive buffer.
pub async fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).await?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(RECEIVE_BUFFER);
    tracing::debug!(
        bytes = sock.recv_buffer_size().unwrap_or(0),
        "SRT receive buffer"
    );
    Ok(socket)
}

/// Runs `f`, turning a panic inside srt-protocol into `None`.
fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    error::contained("srt-protocol", f).ok()
}

/// A handshake in progress.
struct Pending {
    listen: Listen,
    since: Instant,
    /// The last conclusion carried key material.
    key_material: bool,
    /// Length of the stream id the caller sent (srt-protocol drops one over 512 bytes).
    sid_len: usize,
    /// Decided and accepted: the publisher (or reader) and slot wait for the connection.
    granted: Option<(Granted, Slot)>,
    /// Refused: the answer repeated to the caller's retransmissions.
    rejection: Option<Packet>,
}

/// The listener's state: routes datagrams, runs handshakes, starts connections.
struct Listener {
    socket: Arc<std::net::UdpSocket>,
    router: Arc<dyn PublishRouter>,
    admit: Admit,
    limits: Arc<SrtLimits>,
    settings: ConnInitSettings,
    pending: HashMap<SocketAddr, Pending>,
    open: HashMap<SocketAddr, mpsc::Sender<Packet>>,
    cancel: CancellationToken,
    conns: tokio::task::JoinSet<()>,
    refusals: HashMap<String, Throttle>,
    drops: HashMap<String, Throttle>,
    /// Handshakes dropped because too many are in progress, logged once per 10 s.
    pending_full: Throttle,
    out: BytesMut,
}

/// Serves SRT callers on `socket` until `cancel`.
pub async fn serve_srt(
    socket: UdpSocket,
    router: Arc<dyn PublishRouter>,
    admit: Admit,
    limits: Arc<SrtLimits>,
    cancel: CancellationToken,
) {
    let mut options = SocketOptions::default();
    options.sender.max_payload_size = PacketSize(MAX_PAYLOAD);
    options.receiver.latency = limits.latency;
    options.sender.peer_latency = limits.latency;
    // Out of the reactor: see the module's notes. The socket stays non-blocking.
    let socket = match socket.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "SRT listener: cannot take the socket out of the runtime");
            return;
        }
    };
    let mut l = Listener {
        socket: Arc::new(socket),
        router,
        admit,
        limits,
        settings: ConnInitSettings::from(options),
        pending: HashMap::new(),
        open: HashMap::new(),
        cancel,
        conns: tokio::task::JoinSet::new(),
        refusals: HashMap::new(),
        drops: HashMap::new(),
        pending_full: Throttle::default(),
        out: BytesMut::with_capacity(2048),
    };
    let mut buf = vec![0u8; 65536];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let cancel = l.cancel.clone();
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let drain = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = &mut cancelled => break,
            Some(_) = l.conns.join_next(), if !l.conns.is_empty() => continue,
            _ = sweep.tick() => {
                l.sweep();
                continue;
            }
            _ = &mut drain => {}
        }
        let (mut full, mut read) = (true, 0);
        for _ in 0..RX_BATCH {
            match l.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    read += 1;
                    l.datagram(&buf[..n], from);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    full = false;
                    break;
                }
                // ICMP port unreachable from a peer that left, and the like.
                Err(e) => tracing::debug!(error = %e, "SRT receive error"),
            }
        }
        let next = if full {
            // More is waiting: let other tasks run, then drain again.
            tokio::task::yield_now().await;
            Instant::now()
        } else if read == 0 && l.open.is_empty() && l.pending.is_empty() {
            sluice_core::time::next_on_grid(Instant::now(), RX_IDLE_TICK)
        } else {
            sluice_core::time::next_on_grid(Instant::now(), RX_TICK)
        };
        drain.as_mut().reset(tokio::time::Instant::from_std(next));
    }
    // Connections saw `cancel`; they send their shutdown and end.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while l.conns.join_next().await.is_some() {}
    })
    .await;
    l.conns.shutdown().await;
}

impl Listener {
    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        if let Err(why) = handshake_extensions_known(data) {
            self.dropped(why, from);
            return;
        }
        let parsed = contained(|| Packet::parse(&mut Cursor::new(data), from.is_ipv6()));
        let packet = match parsed {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                // The variant's name only: a bounded set of log keys.
                let kind = format!("{e:?}");
                let kind = kind.split('(').next().unwrap_or_default().to_owned();
                self.dropped(kind, from);
                return;
            }
            None => {
                self.dropped("the parser failed (panic contained)".into(), from);
                return;
            }
        };
        if let Some(conn) = self.open.get(&from) {
            match conn.try_send(packet) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    // That connection ended; this may be a new one from the same port.
                    self.open.remove(&from);
                    return self.handshake(p, from);
                }
            }
        }
        self.handshake(packet, from)
    }

    fn handshake(&mut self, packet: Packet, from: SocketAddr) {
        // Only handshakes create state.
        let Packet::Control(ControlPacket {
            control_type: ControlTypes::Handshake(hs),
            ..
        }) = &packet
        else {
            return;
        };
        let mut key_material = false;
        let mut sid_len = 0;
        if let HandshakeVsInfo::V5(info) = &hs.info {
            sid_len = info.sid.as_ref().map_or(0, String::len);
            match &info.ext_km {
                None => {}
                Some(SrtControlPacket::KeyRefreshRequest(_)) => key_material = true,
                // srt-protocol cannot take any other key-material extension here.
                Some(_) => return,
            }
        }
        if !self.pending.contains_key(&from) {
            if self.pending.len() >= MAX_PENDING {
                if let Some(suppressed) = self.pending_full.hit_now() {
                    tracing::warn!(peer = %from, suppressed, "SRT: too many handshakes in progress; dropped");
                }
                return;
            }
            self.pending.insert(
                from,
                Pending {
                    listen: Listen::new(self.settings.copy_randomize(), true),
                    since: Instant::now(),
                    key_material: false,
                    sid_len: 0,
                    granted: None,
                    rejection: None,
                },
            );
        }
        let Some(p) = self.pending.get_mut(&from) else {
            return;
        };
        if let Some(rejection) = p.rejection.clone() {
            self.send(rejection, from);
            return;
        }
        p.key_material |= key_material;
        p.sid_len = p.sid_len.max(sid_len);
        let now = Instant::now();
        let Some(result) = contained(|| p.listen.handle_packet(now, Ok((packet, from)))) else {
            tracing::warn!(peer = %from, "SRT: handshake failed inside srt-protocol (panic contained)");
            self.pending.remove(&from);
            return;
        };
        self.result(result, from);
    }

    /// Acts on what the handshake decided.
    fn result(&mut self, result: ConnectionResult, from: SocketAddr) {
        match result {
            ConnectionResult::NotHandled(_) | ConnectionResult::NoAction => {}
            ConnectionResult::SendPacket((packet, to)) => self.send(packet, to),
            ConnectionResult::Reject(packet, why) => {
                tracing::debug!(peer = %from, reason = %why, "SRT handshake rejected");
                if let Some(p) = self.pending.get_mut(&from) {
                    p.granted = None;
                    p.rejection = packet.as_ref().map(|(p, _)| p.clone());
                }
                if let Some((packet, to)) = packet {
                    self.send(packet, to);
                }
                self.log_bad_secret(from, &why);
            }
            ConnectionResult::RequestAccess(request) => {
                let response = self.access(&request, from);
                let now = Instant::now();
                let Some(p) = self.pending.get_mut(&from) else {
                    return;
                };
                let Some(next) =
                    contained(|| p.listen.handle_access_control_response(now, response))
                else {
                    tracing::warn!(peer = %from, "SRT: handshake failed inside srt-protocol (panic contained)");
                    self.pending.remove(&from);
                    return;
                };
                self.result(next, from);
            }
            ConnectionResult::Connected(packet, connection) => {
                let Some((granted, slot)) = self.pending.remove(&from).and_then(|p| p.granted)
                else {
                    return;
                };
                if let Some((packet, to)) = packet {
                    self.send(packet, to);
                }
                let Some(conn) = contained(|| DuplexConnection::new(connection)) else {
                    return;
                };
                let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
                self.open.insert(from, tx);
                let cancel = self.cancel.child_token();
                match granted {
                    Granted::Publish(publisher) => {
                        tracing::info!(peer = %from, channel = %publisher.channel(), ingest = %publisher.spec().ingest, "SRT publish accepted");
                        let run = Connection {
                            conn,
                            socket: self.socket.clone(),
                            peer: from,
                            publisher: *publisher,
                            limits: self.limits.clone(),
                        };
                        self.conns.spawn(async move {
                            let _slot = slot;
                            run.run(rx, cancel).await
                        });
                    }
                    Granted::Read(reader) => {
                        tracing::info!(peer = %from, channel = %reader.channel, output = %reader.output, "SRT reader accepted");
                        let run = ReadConnection {
                            conn,
                            socket: self.socket.clone(),
                            peer: from,
                            reader: *reader,
                        };
                        self.conns.spawn(async move {
                            let _slot = slot;
                            run.run(rx, cancel).await
                        });
                    }
                }
            }
            ConnectionResult::Failure(e) => {
                tracing::debug!(peer = %from, error = %e, "SRT handshake failed");
                self.pending.remove(&from);
            }
        }
    }

    /// The access decision for a conclusion handshake.
    fn access(
        &mut self,
        request: &srt_protocol::protocol::pending_connection::AccessControlRequest,
        from: SocketAddr,
    ) -> AccessControlResponse {
        let key_material = self.pending.get(&from).is_some_and(|p| p.key_material);
        let sid_len = self.pending.get(&from).map_or(0, |p| p.sid_len);
        if sid_len > crate::srt_streamid::MAX_STREAM_ID {
            return self.refuse(SrtRefusal::StreamId(StreamIdError::TooLong(sid_len)), from);
        }
        let slot = match (self.admit)(from) {
            Ok(slot) => slot,
            Err(why) => return self.refuse(SrtRefusal::NotAdmitted(why), from),
        };
        let stream_id = request.stream_id.as_ref().map(|s| s.as_str());
        match decide(
            self.router.as_ref(),
            stream_id,
            request.key_size,
            key_material,
            from,
        ) {
            Ok((granted, key)) => {
                if let Some(p) = self.pending.get_mut(&from) {
                    p.granted = Some((granted, slot));
                }
                AccessControlResponse::Accepted(key)
            }
            Err(why) => self.refuse(why, from),
        }
    }

    fn refuse(&mut self, why: SrtRefusal, from: SocketAddr) -> AccessControlResponse {
        let reason = why.reject_reason();
        let what = why.to_string();
        if let Some(suppressed) = self.refusals.entry(what.clone()).or_default().hit_now() {
            tracing::warn!(peer = %from, reason = %what, suppressed, "SRT caller refused");
        }
        AccessControlResponse::Rejected(reason)
    }

    /// Logs a dropped datagram, once per 10 s per reason, with a count.
    fn dropped(&mut self, why: String, from: SocketAddr) {
        let throttle = self.drops.entry(why.clone()).or_default();
        if let Some(suppressed) = throttle.hit_now() {
            tracing::info!(peer = %from, reason = %why, suppressed, "SRT datagram dropped");
        }
    }

    /// srt-protocol rejects a wrong passphrase itself (the keys do not unwrap): say so.
    fn log_bad_secret(&mut self, from: SocketAddr, why: &ConnectionReject) {
        if let ConnectionReject::Rejecting(RejectReason::Core(CoreRejectReason::BadSecret)) = why {
            let what = format!("wrong passphrase ({why})");
            if let Some(suppressed) = self.refusals.entry(what.clone()).or_default().hit_now() {
                tracing::warn!(peer = %from, reason = %what, suppressed, "SRT caller refused");
            }
        }
    }

    fn send(&mut self, packet: Packet, to: SocketAddr) {
        self.out.clear();
        packet.serialize(&mut self.out);
        send_now(&self.socket, &self.out, to);
    }

    /// Forgets handshakes that did not finish in time, and routes of ended connections.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.pending
            .retain(|_, p| now.duration_since(p.since) < PENDING_TTL);
        self.open.retain(|_, tx| !tx.is_closed());
    }
}

/// Handshake extensions srt-protocol's parser takes: HS request/response (1, 2), key
/// material request/response (3, 4) and the stream id (5). It panics on any other
/// (`unimplemented!`), so such a handshake is dropped before it is parsed.
fn handshake_extensions_known(data: &[u8]) -> Result<(), String> {
    // A control packet (high bit) of type 0 (handshake); its extensions follow the
    // 16-byte header and the 48-byte handshake body.
    if data.len() <= 64 || data[0] != 0x80 || data[1] != 0x00 {
        return Ok(());
    }
    let mut rest = &data[64..];
    while rest.len() > 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if !(1..=5).contains(&kind) {
            return Err("a handshake extension srt-protocol cannot parse".into());
        }
        rest = rest.get(4 + words * 4..).unwrap_or_default();
    }
    Ok(())
}

/// One accepted publisher: its SRT connection, its demuxer and its publisher.
struct Connection {
    conn: DuplexConnection,
    socket: Arc<std::net::UdpSocket>,
    peer: SocketAddr,
    publisher: Publisher,
    limits: Arc<SrtLimits>,
}

impl Connection {
    async fn run(mut self, mut rx: mpsc::Receiver<Packet>, cancel: CancellationToken) {
        let channel = self.publisher.channel().clone();
        let ingest = self.publisher.spec().ingest.clone();
        let mut demux = TsDemuxer::audio_only(self.publisher.is_audio_source());
        let mut events = Vec::new();
        let mut out = BytesMut::with_capacity(2048);
        let mut last_media = Instant::now();
        // Made once, not per datagram.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let timer = tokio::time::sleep_until(last_media.into());
        tokio::pin!(timer);
        // Reused: this loop runs for every datagram.
        let (mut packets, mut data) = (Vec::new(), Vec::new());
        let end = loop {
            let now = Instant::now();
            let step = drive(
                &mut self.conn,
                &self.socket,
                now,
                &mut packets,
                Some(&mut data),
                &mut out,
            );
            let Some((next, open)) = step else {
                break EndReason::Panicked("srt-protocol");
            };
            let mut failed = None;
            for d in data.drain(..) {
                last_media = now;
                if failed.is_some() {
                    continue;
                }
                if let Err(e) = demux.push(&d, &mut events) {
                    failed = Some(e);
                    continue;
                }
                deliver(&mut self.publisher, &mut events, self.peer);
            }
            if let Some(e) = failed {
                break e.into();
            }
            if let Some(why) = self.publisher.ended() {
                break EndReason::PublisherEnded(why);
            }
            if !open {
                break EndReason::Closed;
            }
            let idle_at = last_media + self.limits.idle_timeout;
            if now >= idle_at {
                break EndReason::Idle(self.limits.idle_timeout);
            }
            // Datagrams are taken once per tick, not as each arrives, and every
            // connection ticks on the same grid: see `TICK`.
            let tick = sluice_core::time::next_on_grid(next.max(now), TICK);
            let wake = tokio::time::Instant::from_std(tick.min(idle_at));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                _ = &mut cancelled => break EndReason::Cancelled,
                _ = &mut timer => {}
                // When no timer is due within a tick, a datagram wakes the connection.
                p = rx.recv(), if next > now + TICK => {
                    let Some(p) = p else { break EndReason::Closed };
                    let peer = self.peer;
                    if contained(|| self.conn.handle_packet_input(Instant::now(), Ok((p, peer)))).is_none() {
                        break EndReason::Panicked("srt-protocol");
                    }
                }
            }
            let now = Instant::now();
            let peer = self.peer;
            let ended = loop {
                match rx.try_recv() {
                    Ok(p) => {
                        if contained(|| self.conn.handle_packet_input(now, Ok((p, peer)))).is_none()
                        {
                            break Some(EndReason::Panicked("srt-protocol"));
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break None,
                    // Closed by the listener, and nothing left.
                    Err(mpsc::error::TryRecvError::Disconnected) => break Some(EndReason::Closed),
                }
            };
            if let Some(end) = ended {
                break end;
            }
        };
        if matches!(end, EndReason::Closed) {
            demux.finish(&mut events);
            deliver(&mut self.publisher, &mut events, self.peer);
        }
        // Tell the caller we are done (SRT shutdown), best effort.
        if !matches!(end, EndReason::Closed | EndReason::Panicked(_)) {
            shut_down(&mut self.conn, &self.socket, &mut out);
        }
        let peer = self.peer;
        drop(self);
        IngestError::new(Transport::Srt, Some(peer), end)
            .log(Some((channel.as_str(), ingest.as_str())));
    }
}

/// One step of a connection: what srt-protocol wants sent is sent, the media it releases
/// go to `data` (dropped when `None`: a reader sends none). Returns when its next timer
/// is due and whether it is still open; `None` when srt-protocol panicked (contained).
fn drive(
    conn: &mut DuplexConnection,
    socket: &std::net::UdpSocket,
    now: Instant,
    packets: &mut Vec<(srt_protocol::packet::Packet, SocketAddr)>,
    mut data: Option<&mut Vec<Bytes>>,
    out: &mut BytesMut,
) -> Option<(Instant, bool)> {
    let step = contained(|| {
        while let Some(p) = conn.next_packet(now) {
            packets.push(p);
        }
        while let Some((_, d)) = conn.next_data(now) {
            if let Some(data) = data.as_deref_mut() {
                data.push(d);
            }
        }
        (conn.check_timers(now), conn.is_open())
    });
    for (packet, to) in packets.drain(..) {
        out.clear();
        packet.serialize(out);
        send_now(socket, out, to);
    }
    step
}

/// Ends a connection from our side: SRT's shutdown sent to the peer, best effort.
fn shut_down(conn: &mut DuplexConnection, socket: &std::net::UdpSocket, out: &mut BytesMut) {
    let now = Instant::now();
    let packets = contained(|| {
        conn.handle_data_input(now, None);
        conn.on_peer_idle_timeout(now);
        let mut v = Vec::new();
        while let Some(p) = conn.next_packet(now) {
            v.push(p);
        }
        v
    })
    .unwrap_or_default();
    for (packet, to) in packets {
        out.clear();
        packet.serialize(out);
        send_now(socket, out, to);
    }
}

/// TS packets per SRT message: 1316 bytes, what every live-mode SRT peer takes.
const TS_PER_MESSAGE: usize = 7;

/// One accepted reader of a pull output: its SRT connection, sending the channel as
/// MPEG-TS ([`TsRelay`]) as the bus delivers it. What it cannot send in time SRT drops
/// (too-late packet drop, a bounded send buffer); a reader that falls behind the bus
/// resumes at the next keyframe.
struct ReadConnection {
    conn: DuplexConnection,
    socket: Arc<std::net::UdpSocket>,
    peer: SocketAddr,
    reader: Reader,
}

impl ReadConnection {
    async fn run(mut self, mut rx: mpsc::Receiver<Packet>, cancel: CancellationToken) {
        let mut relay = TsRelay::default();
        let mut ts = Vec::with_capacity(64 * 1024);
        let mut out = BytesMut::with_capacity(2048);
        let mut packets = Vec::new();
        let output_closed = self.reader.cancel.clone();
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let why = loop {
            let now = Instant::now();
            // A reader sends no media; anything it does is dropped.
            let step = drive(
                &mut self.conn,
                &self.socket,
                now,
                &mut packets,
                None,
                &mut out,
            );
            let Some((next, open)) = step else {
                break "srt-protocol panicked (contained)";
            };
            if !open {
                break "closed";
            }
            // Timers on the same tick grid as publishers (see `TICK`): a reader whose
            // peer does not acknowledge never makes this a busy loop.
            let wake = tokio::time::Instant::from_std(sluice_core::time::next_on_grid(
                next.max(now),
                TICK,
            ));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                _ = cancel.cancelled() => break "server stopping",
                _ = output_closed.cancelled() => break "the output was changed or stopped",
                _ = &mut timer => {}
                p = rx.recv() => {
                    let Some(p) = p else { break "closed" };
                    let peer = self.peer;
                    if contained(|| self.conn.handle_packet_input(Instant::now(), Ok((p, peer)))).is_none() {
                        break "srt-protocol panicked (contained)";
                    }
                }
                ev = self.reader.rx.recv() => {
                    let Some(ev) = ev else { break "the channel is gone" };
                    relay.push(&ev, &mut ts);
                    if ts.is_empty() {
                        continue;
                    }
                    let now = Instant::now();
                    let sent = contained(|| {
                        for chunk in ts.chunks(TS_PER_MESSAGE * crate::ts_demux::PACKET) {
                            self.conn
                                .handle_data_input(now, Some((now, bytes::Bytes::copy_from_slice(chunk))));
                        }
                    });
                    if sent.is_none() {
                        break "srt-protocol panicked (contained)";
                    }
                    self.reader.sent(ts.len());
                    ts.clear();
                }
            }
        };
        if why != "closed" && !why.contains("panicked") {
            // Tell the reader we are done (SRT shutdown), best effort.
            shut_down(&mut self.conn, &self.socket, &mut out);
        }
        tracing::info!(peer = %self.peer, channel = %self.reader.channel, output = %self.reader.output, reason = why, "SRT reader ended");
    }
}

/// Hands what the MPEG-TS demuxer found to the channel (SRT push and pull ingests).
pub(crate) fn deliver(publisher: &mut Publisher, events: &mut Vec<TsEvent>, peer: SocketAddr) {
    for event in events.drain(..) {
        match event {
            TsEvent::VideoConfig(c) => publisher.video_config(c),
            TsEvent::AudioConfig(c) => publisher.audio_config(c),
            TsEvent::Frame(f) => publisher.push(f),
            TsEvent::Timeline => {
                tracing::info!(%peer, channel = %publisher.channel(), "the source carries a Sluice node's timeline; segments keep its numbers");
                publisher.carry_timeline()
            }
            TsEvent::UnsupportedAudio(kind) => tracing::warn!(
                %peer,
                channel = %publisher.channel(),
                stream_type = kind,
                "SRT audio is not AAC (ADTS); the channel goes on without audio"
            ),
        }
    }
}
