//! Viewer analytics: who watches each distribution now, from where, on what, and where
//! override rules sent them.
//!
//! A viewer is one session (see [`crate::session`]: a new one for every multivariant
//! request) seen in the last few target durations ([`Viewers::window_for`]); a request
//! without one (an open distribution fetched directly) counts as its client address and
//! user agent. Sightings come from the multivariant request, media playlist reloads and
//! session checks: every player reloads its media playlist about once a target duration,
//! and a cache in front forwards each viewer's session check (see
//! `docker/nginx-cache.conf`), so viewers it serves from cache are seen too.
//!
//! A multivariant request alone does not make a viewer: it is counted from its first
//! child request (a media playlist or a session check), so a client fetching
//! multivariant playlists in a loop mints sessions that never count.
//!
//! Country (from the geo database), device type (from the user agent) and the entry
//! distribution whose override sent the viewer are worked out once, when a viewer is
//! first seen; later sightings only refresh the time. Reports are made at most once a
//! second, however many status pages and scrapers ask. Sharded and bounded: past
//! [`Viewers::MAX_PER_SHARD`] viewers a shard forgets those gone quiet, then stops adding,
//! so a flood of addresses or forged sessions cannot grow it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sluice_config::DeviceType;
use sluice_core::Id;

use crate::geo::GeoDb;

/// Who a sighting is.
#[derive(Debug, Clone, Copy)]
pub enum ViewerKey<'a> {
    /// The viewer number of a verified session.
    Session(u64),
    /// No session: the client's address and user agent.
    Client {
        address: IpAddr,
        user_agent: Option<&'a str>,
    },
}

/// One request that shows a viewer of `dist`.
pub struct Sighting<'a> {
    pub dist: &'a Id,
    pub key: ViewerKey<'a>,
    /// The viewer's address (after trusted proxies), user agent and query (an SDK may
    /// state its device type there), for the breakdowns.
    pub address: IpAddr,
    pub user_agent: Option<&'a str>,
    pub query: Option<&'a str>,
    /// The multivariant request (which does not count the viewer yet).
    pub admission: bool,
    /// The distribution whose override rule sent the viewer here (multivariant only).
    pub via: Option<&'a Id>,
    /// Its distribution's target duration, seconds (sets how long it counts); asked
    /// only for a viewer seen for the first time.
    pub target_secs: &'a dyn Fn() -> u64,
}

struct Viewer {
    dist: Id,
    /// Last seen, s since `epoch`.
    last: u64,
    /// Counted while `now - last` is at most this.
    window: u64,
    country: Option<[u8; 2]>,
    device: DeviceType,
    via: Option<Id>,
    /// Seen on a child request: counted.
    confirmed: bool,
}

#[derive(Default)]
struct Shard {
    seen: HashMap<u64, Viewer>,
    /// When it was last swept of viewers gone quiet (s since `epoch`).
    swept: u64,
}

/// The viewers of one distribution now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Audience {
    pub viewers: u64,
    /// By ISO 3166 country code (`unknown`: not in the database, or none configured).
    pub countries: BTreeMap<String, u64>,
    /// By device type (`tv`, `mobile`, `desktop`, `other`).
    pub devices: BTreeMap<&'static str, u64>,
    /// Viewers who asked for this distribution and were sent by an override rule to
    /// another one (counted there), by that distribution.
    pub sent_to: BTreeMap<String, u64>,
}

/// Every distribution's [`Audience`], shared by whoever asks within a second.
pub type Report = Arc<HashMap<Id, Audience>>;

/// Viewers of every distribution.
pub struct Viewers {
    shards: Vec<Mutex<Shard>>,
    /// Keyed per process: a client cannot aim its keys at one shard.
    hasher: std::hash::RandomState,
    epoch: std::time::Instant,
    /// The last report, and the second (since `epoch`) it was made in.
    last_report: Mutex<Option<(u64, Report)>>,
}

impl Default for Viewers {
    fn default() -> Self {
        Viewers {
            shards: (0..16).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::hash::RandomState::new(),
            epoch: std::time::Instant::now(),
            last_report: Mutex::new(None),
        }
    }
}

impl Viewers {
    pub const MAX_PER_SHARD: usize = 1 << 16;
    /// The shortest window a viewer counts for.
    pub const MIN_WINDOW_SECS: u64 = 10;

    /// How long a viewer counts after it was last seen: three target durations (a
    /// player reloads its playlist about once each), at least
    /// [`Viewers::MIN_WINDOW_SECS`] (longer than a cache in front keeps a session check).
    pub fn window_for(target_secs: u64) -> u64 {
        target_secs.saturating_mul(3).max(Self::MIN_WINDOW_SECS)
    }

    /// Records a sighting; `geo` places a viewer seen for the first time.
    pub fn seen(&self, s: Sighting<'_>, geo: Option<&GeoDb>) {
        use std::hash::BuildHasher;
        let key = match s.key {
            ViewerKey::Session(v) => self.hasher.hash_one((0u8, s.dist, v)),
            ViewerKey::Client {
                address,
                user_agent,
            } => self.hasher.hash_one((1u8, s.dist, address, user_agent)),
        };
        let now = self.epoch.elapsed().as_secs();
        // The same viewer seen by this thread this second already: nothing to record
        // (a player reloading, many requests on one connection). A multivariant request
        // always records: it says where the viewer came from.
        thread_local! {
            static LAST: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, u64::MAX)) };
        }
        if LAST.with(|l| l.replace((key, now))) == (key, now) && !s.admission {
            return;
        }
        let shard = &self.shards[(key % self.shards.len() as u64) as usize];
        let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = sh.seen.get_mut(&key) {
            v.last = now;
            v.confirmed |= !s.admission;
            if let Some(via) = s.via {
                v.via = Some(via.clone());
            }
            return;
        }
        // Swept at most once a second: a full shard of live viewers costs one pass a
        // second, not one per request.
        if sh.seen.len() >= Self::MAX_PER_SHARD {
            if sh.swept == now {
                return;
            }
            sh.swept = now;
            sh.seen
                .retain(|_, v| now.saturating_sub(v.last) <= v.window);
            if sh.seen.len() >= Self::MAX_PER_SHARD {
                return;
            }
        }
        drop(sh);
        // First seen: placed outside the lock (a user agent parse, a database lookup).
        let viewer = Viewer {
            dist: s.dist.clone(),
            last: now,
            window: Self::window_for((s.target_secs)()),
            country: geo.and_then(|g| g.country_code(s.address)),
            device: crate::overrides::viewer_traits(s.user_agent, s.query).device,
            via: s.via.cloned(),
            confirmed: !s.admission,
        };
        shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .entry(key)
            .or_insert(viewer);
    }

    /// Every distribution's viewers now (distributions nobody watches are absent); made
    /// at most once a second.
    pub fn report(&self) -> Report {
        let now = self.epoch.elapsed().as_secs();
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, report)) = last.as_ref()
            && *at == now
        {
            return report.clone();
        }
        let report = Arc::new(self.count(now));
        *last = Some((now, report.clone()));
        report
    }

    fn count(&self, now: u64) -> HashMap<Id, Audience> {
        // Countries as their two bytes while counting (no allocation per viewer under
        // a shard's lock), named once at the end.
        let mut countries: HashMap<Id, HashMap<Option<[u8; 2]>, u64>> = HashMap::new();
        let mut all: HashMap<Id, Audience> = HashMap::new();
        for shard in &self.shards {
            let mut sh = shard.lock().unwrap_or_else(|e| e.into_inner());
            sh.seen
                .retain(|_, v| now.saturating_sub(v.last) <= v.window);
            for v in sh.seen.values().filter(|v| v.confirmed) {
                let a = all.entry(v.dist.clone()).or_default();
                a.viewers += 1;
                *a.devices.entry(v.device.as_str()).or_default() += 1;
                let country = v.country.filter(|c| c.iter().all(u8::is_ascii_uppercase));
                *countries
                    .entry(v.dist.clone())
                    .or_default()
                    .entry(country)
                    .or_default() += 1;
                if let Some(via) = v.via.as_ref().filter(|via| **via != v.dist) {
                    *all.entry(via.clone())
                        .or_default()
                        .sent_to
                        .entry(v.dist.to_string())
                        .or_default() += 1;
                }
            }
        }
        for (dist, by_country) in countries {
            let a = all.entry(dist).or_default();
            for (c, n) in by_country {
                let name = c.map_or_else(
                    || "unknown".to_string(),
                    |c| String::from_utf8_lossy(&c).into_owned(),
                );
                *a.countries.entry(name).or_default() += n;
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

    #[test]
    fn sessions_are_viewers_with_their_breakdowns() {
        let v = Viewers::default();
        let geo = crate::geo::tests::test_db();
        let (eu, beta) = (id("eu"), id("beta"));
        let addr: IpAddr = "81.2.69.160".parse().unwrap();
        let sight = |dist, key, ua, via| Sighting {
            dist,
            key,
            address: addr,
            user_agent: Some(ua),
            query: None,
            admission: false,
            via,
            target_secs: &|| 2,
        };
        // Two sessions from one address (a household behind one NAT): two viewers.
        v.seen(sight(&eu, ViewerKey::Session(1), PHONE, None), Some(&geo));
        v.seen(sight(&eu, ViewerKey::Session(2), DESKTOP, None), Some(&geo));
        // Seen again: still two.
        v.seen(sight(&eu, ViewerKey::Session(1), PHONE, None), Some(&geo));
        // One sent by eu's override to beta; one without a session or a database.
        v.seen(
            sight(&beta, ViewerKey::Session(3), PHONE, Some(&eu)),
            Some(&geo),
        );
        let client = ViewerKey::Client {
            address: addr,
            user_agent: Some(DESKTOP),
        };
        v.seen(sight(&beta, client, DESKTOP, None), None);
        let report = v.report();
        let eu_a = &report[&eu];
        assert_eq!(eu_a.viewers, 2);
        let expected_country = geo
            .country_code(addr)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .unwrap_or_else(|| "unknown".into());
        assert_eq!(eu_a.countries.get(&expected_country), Some(&2));
        assert_eq!(eu_a.devices.get("mobile"), Some(&1));
        assert_eq!(eu_a.devices.get("desktop"), Some(&1));
        assert_eq!(eu_a.sent_to.get("beta"), Some(&1));
        let beta_a = &report[&beta];
        assert_eq!(beta_a.viewers, 2);
        assert_eq!(beta_a.countries.get("unknown"), Some(&1));
        assert!(beta_a.sent_to.is_empty());
    }

    #[test]
    fn a_multivariant_request_alone_is_not_a_viewer() {
        let v = Viewers::default();
        let (eu, beta) = (id("eu"), id("beta"));
        let sight = |key, admission, via| Sighting {
            dist: &beta,
            key,
            address: "192.0.2.1".parse().unwrap(),
            user_agent: Some(PHONE),
            query: None,
            admission,
            via,
            target_secs: &|| 2,
        };
        // A thousand admissions that never play: no viewers.
        for n in 0..1000 {
            v.seen(sight(ViewerKey::Session(n), true, Some(&eu)), None);
        }
        assert!(v.count(0).is_empty());
        // One of them plays: one viewer, sent by eu.
        v.seen(sight(ViewerKey::Session(7), false, None), None);
        let report = v.count(0);
        assert_eq!(report[&beta].viewers, 1);
        assert_eq!(report[&eu].sent_to.get("beta"), Some(&1));
    }

    #[test]
    fn windows_follow_the_target_duration() {
        assert_eq!(Viewers::window_for(2), 10);
        assert_eq!(Viewers::window_for(6), 18);
        assert_eq!(Viewers::window_for(u64::MAX), u64::MAX);
    }
}
