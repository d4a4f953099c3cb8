//! The SRT listener's wiring: the UDP socket, bound at start so a taken port stops the
//! start with its reason, and the same admission as the TCP listeners (a total and a cap
//! per address), decided when a caller's conclusion handshake arrives. The listener
//! itself is sluice-ingest's [`sluice_ingest::srt`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sluice_ingest::PublishRouter;
use sluice_ingest::srt::{Admit, SrtLimits, serve_srt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::admission::{AdmissionPolicy, AdmissionTable};

pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    sluice_ingest::srt::bind(addr)
        .await
        .with_context(|| format!("cannot listen for SRT on {addr} (UDP)"))
}

/// The admission of SRT callers, from the limits; addresses in some ingest's
/// `allow_cidrs` (trusted encoders) are not held to the per-address cap.
pub fn admission(limits: &SrtLimits, allowed: Vec<ipnet::IpNet>) -> Admit {
    let table = AdmissionTable::new(
        "srt",
        AdmissionPolicy {
            max_total: limits.max_connections,
            max_per_address: limits.max_per_address,
            exempt: allowed,
            reserved: 0,
            reserved_for: vec![],
        },
    );
    Arc::new(move |peer: SocketAddr| {
        table
            .try_admit(peer.ip())
            .map(|slot| Box::new(slot) as sluice_ingest::srt::Slot)
            .map_err(|refused| refused.to_string())
    })
}

pub async fn serve(
    socket: UdpSocket,
    router: Arc<dyn PublishRouter>,
    admit: Admit,
    limits: Arc<SrtLimits>,
    cancel: CancellationToken,
) {
    serve_srt(socket, router, admit, limits, cancel).await
}
