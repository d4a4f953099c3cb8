//! Who gets a connection slot, decided before anything is read from the peer.
//!
//! Limits apply before authentication, so that no peer can hold what others need:
//! - a total, under the process's file descriptors;
//! - a cap per client address, so one address (or one host opening hundreds of idle
//!   sockets) cannot take every slot; addresses in `exempt` (trusted proxies, such as an
//!   HTTP cache in front) are not capped;
//! - slots kept for `reserved_for` (the encoders' `allow_cidrs`): once the table is
//!   full but for the reserve, only those addresses get in.
//!
//! Pure: the listener asks [`AdmissionTable::try_admit`] and holds the [`Admission`]
//! for the life of the connection; dropping it frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct AdmissionPolicy {
    pub max_total: usize,
    pub max_per_address: usize,
    /// Not subject to `max_per_address`.
    pub exempt: Vec<IpNet>,
    /// Slots of `max_total` that only `reserved_for` addresses may take.
    pub reserved: usize,
    pub reserved_for: Vec<IpNet>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refused {
    #[error("connection limit reached")]
    Full,
    #[error("per-address connection limit reached")]
    AddressFull,
    #[error("remaining connections are reserved for allowed encoders")]
    Reserved,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Refused::Full, Refused::AddressFull, Refused::Reserved];

    /// Its name as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::AddressFull => "address_full",
            Refused::Reserved => "reserved",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub struct AdmissionTable {
    /// The listener it admits to (a metrics label).
    listener: &'static str,
    policy: AdmissionPolicy,
    state: Mutex<State>,
    /// Refusals so far, by [`Refused::ALL`]'s order.
    refused: [AtomicU64; 3],
}

/// Every table made in this process, for metrics.
static TABLES: Mutex<Vec<Weak<AdmissionTable>>> = Mutex::new(Vec::new());

/// (listener, open connections, refusals by reason).
pub type ListenerReport = (&'static str, usize, [(Refused, u64); 3]);

/// The tables still in use, by listener (tables of one listener summed).
pub fn report() -> Vec<ListenerReport> {
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    tables.retain(|t| t.strong_count() > 0);
    let mut by_listener: std::collections::BTreeMap<&'static str, (usize, [u64; 3])> =
        Default::default();
    for t in tables.iter().filter_map(Weak::upgrade) {
        let entry = by_listener.entry(t.listener).or_default();
        entry.0 += t.lock().total;
        for (sum, n) in entry.1.iter_mut().zip(&t.refused) {
            *sum += n.load(Relaxed);
        }
    }
    by_listener
        .into_iter()
        .map(|(l, (open, refused))| (l, open, Refused::ALL.map(|r| (r, refused[r as usize]))))
        .collect()
}

/// A connection's slot; released on drop.
#[derive(Debug)]
pub struct Admission {
    table: Arc<AdmissionTable>,
    ip: IpAddr,
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

impl AdmissionTable {
    /// The table of `listener` (a fixed name: "http", "rtmp", "srt").
    pub fn new(listener: &'static str, policy: AdmissionPolicy) -> Arc<Self> {
        let table = Arc::new(AdmissionTable {
            listener,
            policy,
            state: Mutex::new(State::default()),
            refused: Default::default(),
        });
        TABLES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&table));
        table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below completes before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let admitted = self.admit(ip);
        if let Err(why) = admitted {
            self.refused[why as usize].fetch_add(1, Relaxed);
        }
        admitted
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let ip = ip.to_canonical();
        let p = &self.policy;
        let mut st = self.lock();
        if st.total >= p.max_total {
            return Err(Refused::Full);
        }
        let privileged = contains(&p.reserved_for, ip);
        if !privileged && st.total >= p.max_total.saturating_sub(p.reserved) {
            return Err(Refused::Reserved);
        }
        let mine = st.per_address.get(&ip).copied().unwrap_or(0);
        if mine >= p.max_per_address && !contains(&p.exempt, ip) {
            return Err(Refused::AddressFull);
        }
        st.total += 1;
        st.per_address.insert(ip, mine + 1);
        Ok(Admission {
            table: self.clone(),
            ip,
        })
    }

    /// Connections held now: (total, from `ip`).
    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> (usize, usize) {
        let st = self.lock();
        (
            st.total,
            st.per_address.get(&ip.to_canonical()).copied().unwrap_or(0),
        )
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.table.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_exemptions_and_reserve() {
        let t = AdmissionTable::new(
            "test",
            AdmissionPolicy {
                max_total: 10,
                max_per_address: 3,
                exempt: vec!["192.0.2.1/32".parse().unwrap()],
                reserved: 2,
                reserved_for: vec!["10.0.0.0/8".parse().unwrap()],
            },
        );
        let attacker: Vec<_> = (0..3)
            .map(|_| t.try_admit(ip("198.51.100.7")).unwrap())
            .collect();
        assert_eq!(
            t.try_admit(ip("198.51.100.7")).err(),
            Some(Refused::AddressFull)
        );
        // IPv4-mapped IPv6 is the same address.
        assert_eq!(
            t.try_admit(ip("::ffff:198.51.100.7")).err(),
            Some(Refused::AddressFull)
        );
        // A cache in front is not capped per address, only by the unreserved total.
        let cache: Vec<_> = (0..5)
            .map(|_| t.try_admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(t.held(ip("192.0.2.1")), (8, 5));
        assert_eq!(t.try_admit(ip("192.0.2.1")).err(), Some(Refused::Reserved));
        assert_eq!(
            t.try_admit(ip("203.0.113.9")).err(),
            Some(Refused::Reserved)
        );
        // The reserve is for allowed encoders.
        let enc1 = t.try_admit(ip("10.1.1.1")).unwrap();
        let enc2 = t.try_admit(ip("10.1.1.2")).unwrap();
        assert_eq!(t.try_admit(ip("10.1.1.3")).err(), Some(Refused::Full));
        drop(enc1);
        assert!(t.try_admit(ip("10.1.1.3")).is_ok());
        drop(attacker);
        drop(cache);
        assert_eq!(t.held(ip("198.51.100.7")), (1, 0));
        assert!(
            t.lock().per_address.len() == 1,
            "released addresses are forgotten"
        );
        let (_, open, refused) = report().into_iter().find(|(l, ..)| *l == "test").unwrap();
        assert_eq!(open, 1);
        assert_eq!(
            refused.map(|(r, n)| (r.as_str(), n)),
            [("full", 1), ("address_full", 2), ("reserved", 2)]
        );
        // Forgotten once the table and its slots are gone.
        drop((t, enc2));
        assert!(report().iter().all(|(l, ..)| *l != "test"));
    }
}
