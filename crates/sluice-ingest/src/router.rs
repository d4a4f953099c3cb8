//! Who may publish where: stream keys from the configuration, mapped to channel buses.
//! Checked in order: the key, the protocol, the ingest enabled, the source address in
//! `allow_cidrs`, then the ingest free (or its connection stale; see [`crate::bus`]).
//! Several ingests of one channel publish at once: the bus picks which one feeds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use crate::bus::{ChannelBus, FeedSpec, Publisher, STALE_AFTER};
use crate::output::{OutputStats, Reader};
use crate::rtmp::{PublishRouter, Refusal};
use ipnet::IpNet;
use sluice_config::{ChannelOutputProtocol, IngestProtocol};
use sluice_core::Id;

/// One push ingest's stream key, as configured.
pub struct KeyEntry {
    pub ingest: Id,
    pub protocol: IngestProtocol,
    pub enabled: bool,
    pub allow_cidrs: Vec<IpNet>,
    /// SRT AES passphrase (SRT ingests only).
    pub passphrase: Option<String>,
    /// Lower is preferred: the live ingest with the lowest priority feeds the engines.
    pub priority: u32,
    /// Input bitrate cap (0: none), see [`Publisher::set_max_kbps`].
    pub max_kbps: u32,
    pub bus: Arc<ChannelBus>,
}

/// One pull output's read key, as configured.
pub struct ReadEntry {
    pub channel: Id,
    pub output: Id,
    pub protocol: ChannelOutputProtocol,
    pub enabled: bool,
    pub allow_cidrs: Vec<IpNet>,
    /// SRT AES passphrase (SRT outputs only).
    pub passphrase: Option<String>,
    pub bus: Arc<ChannelBus>,
    pub stats: Arc<OutputStats>,
    /// Cancelled when the output changes or goes: its readers are closed.
    pub cancel: CancellationToken,
}

/// Stream keys of every push ingest, and read keys of every pull output.
#[derive(Default)]
pub struct KeyRouter {
    pub keys: HashMap<String, KeyEntry>,
    pub reads: HashMap<String, ReadEntry>,
}

impl KeyRouter {
    /// The key's entry, if `protocol` may use it and it is enabled.
    fn entry(&self, protocol: IngestProtocol, key: &str) -> Result<&KeyEntry, Refusal> {
        let entry = self.keys.get(key).ok_or(Refusal::UnknownKey)?;
        if entry.protocol != protocol {
            return Err(Refusal::WrongProtocol);
        }
        if !entry.enabled {
            return Err(Refusal::Disabled);
        }
        Ok(entry)
    }

    fn authorize(
        &self,
        protocol: IngestProtocol,
        key: &str,
        peer: SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal> {
        let entry = self.entry(protocol, key)?;
        let ip = peer.ip().to_canonical();
        if !entry.allow_cidrs.is_empty() && !entry.allow_cidrs.iter().any(|c| c.contains(&ip)) {
            return Err(Refusal::AddressNotAllowed);
        }
        let spec = FeedSpec {
            ingest: entry.ingest.to_string(),
            priority: entry.priority,
            tracking_id: tracking_id.map(str::to_owned),
        };
        entry
            .bus
            .begin_feed(
                format!("{}:{}/{}", protocol.as_str(), entry.ingest, peer),
                spec,
                STALE_AFTER,
            )
            .map(|mut p| {
                p.set_max_kbps(entry.max_kbps);
                p
            })
            .map_err(|_| Refusal::Busy)
    }
}

impl KeyRouter {
    /// The read key's entry, if `protocol` may use it.
    fn read_entry(
        &self,
        protocol: ChannelOutputProtocol,
        key: &str,
    ) -> Result<&ReadEntry, Refusal> {
        let entry = self.reads.get(key).ok_or(Refusal::UnknownKey)?;
        if entry.protocol != protocol {
            return Err(Refusal::WrongProtocol);
        }
        if !entry.enabled {
            entry.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Disabled);
        }
        Ok(entry)
    }

    /// Opens the read key's output for a reader at `peer`.
    pub fn authorize_read(
        &self,
        protocol: ChannelOutputProtocol,
        key: &str,
        peer: SocketAddr,
    ) -> Result<Reader, Refusal> {
        let entry = self.read_entry(protocol, key)?;
        let ip = peer.ip().to_canonical();
        if !entry.allow_cidrs.is_empty() && !entry.allow_cidrs.iter().any(|c| c.contains(&ip)) {
            entry.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::AddressNotAllowed);
        }
        Ok(Reader::new(
            entry.channel.clone(),
            entry.output.clone(),
            entry.bus.subscribe(),
            entry.cancel.clone(),
            entry.stats.clone(),
        ))
    }
}

impl PublishRouter for KeyRouter {
    fn authorize_rtmp(
        &self,
        stream_key: &str,
        peer: SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal> {
        self.authorize(IngestProtocol::Rtmp, stream_key, peer, tracking_id)
    }

    fn srt_passphrase(&self, stream_key: &str) -> Result<Option<String>, Refusal> {
        Ok(self
            .entry(IngestProtocol::Srt, stream_key)?
            .passphrase
            .clone())
    }

    fn authorize_srt(
        &self,
        stream_key: &str,
        peer: SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal> {
        self.authorize(IngestProtocol::Srt, stream_key, peer, tracking_id)
    }

    fn srt_read_passphrase(&self, read_key: &str) -> Result<Option<String>, Refusal> {
        Ok(self
            .read_entry(ChannelOutputProtocol::SrtListener, read_key)?
            .passphrase
            .clone())
    }

    fn authorize_rtmp_play(&self, read_key: &str, peer: SocketAddr) -> Result<Reader, Refusal> {
        self.authorize_read(ChannelOutputProtocol::RtmpPlay, read_key, peer)
    }

    fn authorize_srt_read(&self, read_key: &str, peer: SocketAddr) -> Result<Reader, Refusal> {
        self.authorize_read(ChannelOutputProtocol::SrtListener, read_key, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> KeyRouter {
        let bus = ChannelBus::new(Id::new("c").unwrap(), 2_000_000_000, 64, 0);
        let mut r = KeyRouter::default();
        let entry = |enabled, cidrs: Vec<IpNet>| KeyEntry {
            ingest: Id::new("i").unwrap(),
            protocol: IngestProtocol::Rtmp,
            enabled,
            allow_cidrs: cidrs,
            passphrase: None,
            priority: 1,
            max_kbps: 0,
            bus: bus.clone(),
        };
        r.keys.insert("open".into(), entry(true, vec![]));
        r.keys.insert("off".into(), entry(false, vec![]));
        r.keys.insert(
            "lan".into(),
            entry(true, vec!["10.0.0.0/8".parse().unwrap()]),
        );
        r
    }

    #[test]
    fn refusals() {
        let r = router();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            r.authorize_rtmp("nope", local, None).err(),
            Some(Refusal::UnknownKey)
        );
        assert_eq!(
            r.authorize_rtmp("off", local, None).err(),
            Some(Refusal::Disabled)
        );
        assert_eq!(
            r.authorize_rtmp("lan", local, None).err(),
            Some(Refusal::AddressNotAllowed)
        );
        let p = r.authorize_rtmp("open", local, None).unwrap();
        assert_eq!(
            r.authorize_rtmp("open", local, None).err(),
            Some(Refusal::Busy)
        );
        drop(p);
        assert!(
            r.authorize_rtmp("lan", "10.1.2.3:1".parse().unwrap(), None)
                .is_ok()
        );
    }
}
