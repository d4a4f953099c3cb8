//! Pull ingests: Sluice connects out, to an RTMP server (and plays a stream from it) or to
//! an SRT listener, and feeds the channel like a push ingest of the same priority. A lost
//! or refused connection is tried again after a back-off (1 s, doubling to 30 s, back to
//! 1 s once a connection has played); every state change is logged, with the address but
//! never the URL's path or query (they hold keys and passphrases).
//!
//! - `rtmp-pull`: `rtmp://host[:1935]/<app>/<stream>`; rml_rtmp's client session, behind
//!   the same chunk guard and panic containment as the RTMP listener, and the same FLV
//!   tag handling ([`crate::rtmp_session`]).
//! - `srt-pull`: `srt://host:port?streamid=...&passphrase=...&latency=<ms>`; srt-tokio's
//!   caller (a panic in its tasks ends that connection only), MPEG-TS through
//!   [`crate::ts_demux`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
};
use sluice_core::Id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{ChannelBus, FeedSpec, Publisher, STALE_AFTER};
use crate::error::{EndReason, IngestError, Transport, contained, write_by};
use crate::rtmp::Refusal;
use crate::rtmp_guard::ChunkGuard;
use crate::rtmp_session::{RtmpAction, RtmpPolicy, TagMedia};
use crate::ts_demux::TsDemuxer;

/// Connecting, the handshake and the request for the stream, all together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A source that sends nothing for this long is dropped (and tried again).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One pull ingest, as configured.
#[derive(Debug, Clone)]
pub struct PullSpec {
    pub ingest: Id,
    pub url: String,
    pub passphrase: Option<String>,
    pub priority: u32,
    /// Input bitrate cap (0: none).
    pub max_kbps: u32,
}

/// Pulls `spec` into `bus` until `cancel`, reconnecting after failures.
pub async fn run_pull(bus: Arc<ChannelBus>, spec: PullSpec, cancel: CancellationToken) {
    let channel = bus.channel().clone();
    let ingest = spec.ingest.clone();
    let target = redacted(&spec.url);
    let mut backoff = Duration::from_secs(1);
    loop {
        tracing::info!(%channel, %ingest, source = %target, "pull: connecting");
        let mut played = false;
        let mut peer = None;
        let reason = tokio::select! {
            _ = cancel.cancelled() => return,
            r = pull_once(&bus, &spec, &mut played, &mut peer) => r,
        };
        let transport = if spec.url.starts_with("srt://") {
            Transport::SrtPull
        } else {
            Transport::RtmpPull
        };
        let e = IngestError::new(transport, peer, reason);
        if e.reason.is_orderly() {
            tracing::info!(%channel, %ingest, source = %target, "pull: the source ended the stream")
        } else {
            tracing::warn!(%channel, %ingest, source = %target, error = %e, "pull: connection lost")
        }
        if played {
            // It worked until now: the next attempt comes soon.
            backoff = Duration::from_secs(1);
        }
        tracing::info!(%channel, %ingest, retry_in_ms = backoff.as_millis() as u64, "pull: reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// `scheme://host:port` of a URL, without what may be secret.
pub(crate) fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // No user:password either.
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// One connection to the source, until it ends: why it did. `peer`: the source's
/// address, once resolved.
async fn pull_once(
    bus: &Arc<ChannelBus>,
    spec: &PullSpec,
    played: &mut bool,
    peer: &mut Option<SocketAddr>,
) -> EndReason {
    let r = if spec.url.starts_with("rtmp://") {
        pull_rtmp(bus, spec, played, peer).await
    } else if spec.url.starts_with("srt://") {
        pull_srt(bus, spec, played, peer).await
    } else {
        Err(EndReason::Url("only rtmp:// and srt:// can be pulled"))
    };
    r.err().unwrap_or(EndReason::Closed)
}

fn attach(
    bus: &Arc<ChannelBus>,
    spec: &PullSpec,
    peer: SocketAddr,
) -> Result<Publisher, EndReason> {
    bus.begin_feed(
        format!("pull:{}/{peer}", spec.ingest),
        FeedSpec {
            ingest: spec.ingest.to_string(),
            priority: spec.priority,
            tracking_id: None,
        },
        STALE_AFTER,
    )
    .map(|mut p| {
        p.set_max_kbps(spec.max_kbps);
        p
    })
    .map_err(|_| EndReason::Refused(Refusal::Busy))
}

pub(crate) async fn resolve(authority: &str, default_port: u16) -> Result<SocketAddr, EndReason> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(EndReason::Resolve(with_port))
}

/// `rtmp://host[:port]/<app>/<stream>`: (authority, app, stream).
pub(crate) fn rtmp_parts(url: &str) -> Result<(&str, &str, &str), EndReason> {
    let rest = url
        .strip_prefix("rtmp://")
        .ok_or(EndReason::Url("not rtmp://"))?;
    let (authority, path) = rest
        .split_once('/')
        .ok_or(EndReason::Url("rtmp URL without an application"))?;
    let (app, stream) = path
        .split_once('/')
        .ok_or(EndReason::Url("rtmp URL without a stream name"))?;
    if authority.is_empty() || app.is_empty() || stream.is_empty() {
        return Err(EndReason::Url(
            "rtmp URL needs host, application and stream",
        ));
    }
    Ok((authority, app, stream))
}

pub(crate) fn rtmp_err(e: impl std::fmt::Debug) -> EndReason {
    EndReason::Protocol(format!("{e:?}"))
}

async fn pull_rtmp(
    bus: &Arc<ChannelBus>,
    spec: &PullSpec,
    played: &mut bool,
    peer: &mut Option<SocketAddr>,
) -> Result<(), EndReason> {
    let (authority, app, stream_name) = rtmp_parts(&spec.url)?;
    let addr = resolve(authority, 1935).await?;
    *peer = Some(addr);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut tcp, remaining) = rtmp_connect(addr, deadline, &mut buf).await?;

    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(format!("rtmp://{authority}/{app}"));
    let (mut session, results) = ClientSession::new(config).map_err(rtmp_err)?;
    let mut guard = ChunkGuard::default();
    let mut media = TagMedia::default();
    let mut publisher: Option<Publisher> = None;
    let mut actions = Vec::new();
    let mut outbound = Vec::new();
    let mut events = Vec::new();
    split(results, &mut outbound, &mut events);
    outbound.push(
        session
            .request_connection(app.to_owned())
            .map_err(rtmp_err)?,
    );
    let mut input = remaining;
    // Bytes the source sent without completing a frame: bounded like a publisher's
    // (what the RTMP chunk decoder can be made to buffer), by the same policy value.
    let max_unproductive = RtmpPolicy::default().max_bytes_between_frames;
    let mut unproductive = 0usize;
    loop {
        if !input.is_empty() {
            guard.check(&input)?;
            let results =
                contained("rml_rtmp", || session.handle_input(&input))?.map_err(rtmp_err)?;
            split(results, &mut outbound, &mut events);
        }
        for ev in events.drain(..) {
            match ev {
                ClientSessionEvent::ConnectionRequestAccepted => {
                    outbound.push(
                        session
                            .request_playback(stream_name.to_owned())
                            .map_err(rtmp_err)?,
                    );
                }
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    return Err(EndReason::SourceRefused(description));
                }
                ClientSessionEvent::PlaybackRequestAccepted if publisher.is_none() => {
                    publisher = Some(attach(bus, spec, addr)?);
                    *played = true;
                    tracing::info!(channel = %bus.channel(), ingest = %spec.ingest, source = %redacted(&spec.url), "pull: playing");
                }
                ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                    media.video(timestamp.value, data, &mut actions)
                }
                ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                    media.audio(timestamp.value, data, &mut actions)
                }
                _ => {}
            }
        }
        for result in outbound.drain(..) {
            if let ClientSessionResult::OutboundResponse(packet) = result {
                tcp.write_all(&packet.bytes).await?;
            }
        }
        if let Some(p) = publisher.as_mut() {
            for action in actions.drain(..) {
                match action {
                    RtmpAction::VideoConfig(c) => p.video_config(c),
                    RtmpAction::AudioConfig(c) => p.audio_config(c),
                    RtmpAction::Frame(f) => {
                        unproductive = 0;
                        p.push(f)
                    }
                    RtmpAction::Dropped(why) => tracing::debug!(why, "pull: RTMP data dropped"),
                    RtmpAction::Close(reason) => return Err(reason),
                    _ => {}
                }
            }
            if let Some(why) = p.ended() {
                return Err(EndReason::PublisherEnded(why));
            }
        } else {
            actions.clear();
        }
        let wait = if publisher.is_some() {
            Instant::now() + IDLE_TIMEOUT
        } else {
            deadline
        };
        let n = tokio::time::timeout_at(wait, tcp.read(&mut buf))
            .await
            .map_err(|_| {
                if publisher.is_some() {
                    EndReason::Idle(IDLE_TIMEOUT)
                } else {
                    EndReason::Timeout("the stream")
                }
            })??;
        if n == 0 {
            return Ok(());
        }
        unproductive += n;
        if unproductive > max_unproductive {
            return Err(EndReason::Unproductive(unproductive));
        }
        input = buf[..n].to_vec();
    }
}

/// Connects to an RTMP server by `deadline` and completes the handshake (C0+C1 out,
/// S0+S1+S2 in, C2 out): the connection, and what the server sent after the handshake.
pub(crate) async fn rtmp_connect(
    addr: SocketAddr,
    deadline: Instant,
    buf: &mut [u8],
) -> Result<(TcpStream, Vec<u8>), EndReason> {
    let mut tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| EndReason::Timeout("the connection"))??;
    let _ = tcp.set_nodelay(true);
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs.generate_outbound_p0_and_p1().map_err(rtmp_err)?;
    handshake_write(&mut tcp, &c0c1, deadline).await?;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(buf))
            .await
            .map_err(|_| EndReason::Timeout("the RTMP handshake"))??;
        if n == 0 {
            return Err(EndReason::Handshake("closed during the handshake".into()));
        }
        match contained("rml_rtmp", || hs.process_bytes(&buf[..n]))?.map_err(rtmp_err)? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                handshake_write(&mut tcp, &response_bytes, deadline).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                handshake_write(&mut tcp, &response_bytes, deadline).await?;
                return Ok((tcp, remaining_bytes));
            }
        }
    }
}

async fn handshake_write(
    tcp: &mut TcpStream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), EndReason> {
    write_by(
        tcp,
        bytes,
        deadline,
        EndReason::Timeout("the RTMP handshake"),
    )
    .await
}

/// Calls the SRT listener of an `srt://` URL (`passphrase`: the configured one, else the
/// URL's): the connected socket and the listener's address.
pub(crate) async fn srt_call(
    url: &str,
    passphrase: Option<String>,
) -> Result<(srt_tokio::SrtSocket, SocketAddr), EndReason> {
    let (authority, stream_id, url_passphrase, latency) = srt_parts(url)?;
    let addr = resolve(authority, 9000).await?;
    let mut builder = srt_tokio::SrtSocket::builder()
        .latency(latency.unwrap_or(Duration::from_millis(200)))
        .set(|o| o.connect.timeout = CONNECT_TIMEOUT);
    if let Some(p) = passphrase.or(url_passphrase) {
        if !(10..=79).contains(&p.len()) {
            return Err(EndReason::Url("an SRT passphrase has 10 to 79 characters"));
        }
        builder = builder.encryption(0, p);
    }
    let socket = tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        builder.call(addr, stream_id.as_deref()),
    )
    .await
    .map_err(|_| EndReason::Timeout("the connection"))?
    .map_err(|e| EndReason::SourceRefused(e.to_string()))?;
    Ok((socket, addr))
}

pub(crate) fn split(
    results: Vec<ClientSessionResult>,
    outbound: &mut Vec<ClientSessionResult>,
    events: &mut Vec<ClientSessionEvent>,
) {
    for r in results {
        match r {
            ClientSessionResult::RaisedEvent(ev) => events.push(ev),
            other => outbound.push(other),
        }
    }
}

/// What an `srt://` URL says: (authority, stream id, passphrase, latency).
type SrtTarget<'a> = (&'a str, Option<String>, Option<String>, Option<Duration>);

/// `srt://host:port?streamid=...&passphrase=...&latency=<ms>`.
pub(crate) fn srt_parts(url: &str) -> Result<SrtTarget<'_>, EndReason> {
    let rest = url
        .strip_prefix("srt://")
        .ok_or(EndReason::Url("not srt://"))?;
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() {
        return Err(EndReason::Url("srt URL without a host"));
    }
    let (mut stream_id, mut passphrase, mut latency) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or(EndReason::Url("bad %-escape in the srt URL"))?;
        match k {
            "streamid" => stream_id = Some(v),
            "passphrase" => passphrase = Some(v),
            "latency" => {
                let ms: u64 = v
                    .parse()
                    .map_err(|_| EndReason::Url("latency is not a number"))?;
                latency = Some(Duration::from_millis(ms));
            }
            _ => {}
        }
    }
    Ok((authority, stream_id, passphrase, latency))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn pull_srt(
    bus: &Arc<ChannelBus>,
    spec: &PullSpec,
    played: &mut bool,
    peer: &mut Option<SocketAddr>,
) -> Result<(), EndReason> {
    let (mut socket, addr) = srt_call(&spec.url, spec.passphrase.clone()).await?;
    *peer = Some(addr);
    let mut publisher = attach(bus, spec, addr)?;
    *played = true;
    tracing::info!(channel = %bus.channel(), ingest = %spec.ingest, source = %redacted(&spec.url), "pull: playing");
    let mut demux = TsDemuxer::audio_only(publisher.is_audio_source());
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, socket.next())
            .await
            .map_err(|_| EndReason::Idle(IDLE_TIMEOUT))?;
        let data: Bytes = match next {
            None => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok((_, data))) => data,
        };
        demux.push(&data, &mut events)?;
        crate::srt::deliver(&mut publisher, &mut events, addr);
        if let Some(why) = publisher.ended() {
            return Err(EndReason::PublisherEnded(why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_never_logged_whole() {
        assert_eq!(
            rtmp_parts("rtmp://example.net/live/key?x=1").unwrap(),
            ("example.net", "live", "key?x=1")
        );
        assert_eq!(
            rtmp_parts("rtmp://example.net:1936/app/a/b").unwrap(),
            ("example.net:1936", "app", "a/b")
        );
        assert!(rtmp_parts("rtmp://example.net/live").is_err());
        assert!(rtmp_parts("rtmp:///live/x").is_err());
        let (host, sid, pass, latency) = srt_parts(
            "srt://venue:9000?streamid=#!::r=final,m=request&passphrase=a%20b&latency=500",
        )
        .unwrap();
        assert_eq!(host, "venue:9000");
        assert_eq!(sid.as_deref(), Some("#!::r=final,m=request"));
        assert_eq!(pass.as_deref(), Some("a b"));
        assert_eq!(latency, Some(Duration::from_millis(500)));
        assert!(srt_parts("srt://h:1?latency=x").is_err());
        assert!(srt_parts("srt://h:1?streamid=%zz").is_err());
        assert_eq!(redacted("rtmp://u:p@h:1935/live/secret"), "rtmp://h:1935");
        assert_eq!(redacted("srt://h:9000?passphrase=secret"), "srt://h:9000");
    }
}
