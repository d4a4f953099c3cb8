//! Viewer sessions: how a viewer admitted on the multivariant request is recognised on
//! every child request without sending its token again.
//!
//! A session is one path component, `s-<expires>-<viewer>-<mac>`, placed after the
//! distribution: `/live/<dist>/s-1795640000-9a0e…-3f1c…/cmaf/720p/12.m4s`. `<viewer>`
//! (64 bits, hex) is new for every multivariant request: it is what viewer analytics count
//! (one session, one viewer), also behind a cache that forwards only its session checks. Being in the path, it is carried by
//! every relative URL of the playlists with no per-viewer rewriting: media playlists and
//! segments stay identical bytes for all viewers, and a cache in front can cache them by
//! the path without the session component (see `docker/nginx-cache.conf`).
//!
//! `<mac>` is HMAC-SHA256 over the distribution id, the expiry and the viewer under a
//! server secret, truncated to 128 bits, compared in constant time: a session cannot be
//! forged, moved to another distribution, or extended (the expiry is signed).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_core::Id;

/// How long a session lasts after the multivariant request that made it: a match plus
/// extra time. Tokens may be short-lived entry tickets; the session is what keeps playing.
pub const SESSION_SECONDS: u64 = 6 * 3600;

const MAC_BYTES: usize = 16;
const DOMAIN: &[u8] = b"sluice-session-v2\0";

/// A fresh viewer number: unique in this process, not guessable from the last one.
pub fn new_viewer() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static HASHER: OnceLock<std::hash::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HASHER.get_or_init(std::hash::RandomState::new).hash_one(n)
}

/// Why a session component was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed session")]
    Malformed,
    #[error("session expired")]
    Expired,
    #[error("session signature does not match")]
    BadSignature,
}

/// The server's secret for sessions, kept as the HMAC state after the key (its padded
/// blocks already hashed: each session then costs two SHA-256 blocks, not four).
#[derive(Clone)]
pub struct SessionKey(Hmac<Sha256>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A fresh random key (sessions then last until the process restarts, or their expiry).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k)?;
        Ok(Self::from_key(&k))
    }

    /// A key derived from an operator's secret (sessions survive restarts and are shared by
    /// every node configured with the same secret).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"sluice-session-key-v1")
            .expect("HMAC takes any key length");
        mac.update(secret);
        Self::from_key(&mac.finalize().into_bytes())
    }

    fn from_key(key: &[u8]) -> Self {
        SessionKey(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// `expires` in canonical decimal, as written in the session.
    fn mac(&self, dist: &Id, expires: &str, viewer: u64) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(DOMAIN);
        mac.update(dist.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(expires.as_bytes());
        mac.update(b"\0");
        mac.update(&viewer.to_be_bytes());
        mac
    }

    /// A session component for a new viewer of `dist`, valid until `expires` (Unix
    /// seconds).
    pub fn mint(&self, dist: &Id, expires: u64) -> String {
        self.mint_for(dist, expires, new_viewer())
    }

    /// The session component of `viewer`.
    pub fn mint_for(&self, dist: &Id, expires: u64, viewer: u64) -> String {
        let expires = expires.to_string();
        let tag = self.mac(dist, &expires, viewer).finalize().into_bytes();
        format!("s-{expires}-{viewer:016x}-{}", hex(&tag[..MAC_BYTES]))
    }

    /// Checks a session component for `dist` at `now` (Unix seconds); its viewer.
    pub fn verify(&self, dist: &Id, session: &str, now: u64) -> Result<u64, SessionError> {
        let (viewer, expires) = self.signed(dist, session)?;
        if now >= expires {
            return Err(SessionError::Expired);
        }
        Ok(viewer)
    }

    /// The viewer of a session signed for `dist`, expired or not (for counting viewers
    /// of an open distribution, whose players keep an old session: it grants nothing).
    pub fn viewer_of(&self, dist: &Id, session: &str) -> Option<u64> {
        self.signed(dist, session).ok().map(|(viewer, _)| viewer)
    }

    /// (viewer, expiry) of a session whose signature for `dist` holds.
    fn signed(&self, dist: &Id, session: &str) -> Result<(u64, u64), SessionError> {
        let rest = session.strip_prefix("s-").ok_or(SessionError::Malformed)?;
        let (expires, rest) = rest.split_once('-').ok_or(SessionError::Malformed)?;
        let (viewer, tag) = rest.split_once('-').ok_or(SessionError::Malformed)?;
        let viewer = (viewer.len() == 16
            && viewer
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(viewer, 16).ok())
        .flatten()
        .ok_or(SessionError::Malformed)?;
        let canonical = !expires.is_empty()
            && expires.len() <= 20
            && expires.bytes().all(|b| b.is_ascii_digit())
            && !expires.starts_with('0');
        let expires_at: u64 = match expires.parse() {
            Ok(e) if canonical => e,
            _ => return Err(SessionError::Malformed),
        };
        let tag = unhex(tag).ok_or(SessionError::Malformed)?;
        // The signature first: an expiry is only believed once it is known to be ours.
        self.mac(dist, expires, viewer)
            .verify_truncated_left(&tag)
            .map_err(|_| SessionError::BadSignature)?;
        Ok((viewer, expires_at))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly [`MAC_BYTES`] bytes in lowercase hex.
fn unhex(s: &str) -> Option<[u8; MAC_BYTES]> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.len() != 2 * MAC_BYTES {
        return None;
    }
    let mut out = [0u8; MAC_BYTES];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[test]
    fn sessions_cannot_be_forged_moved_extended_or_replayed() {
        let key = SessionKey::from_secret(b"test secret");
        let now = 1_800_000_000;
        let s = key.mint_for(&id("eu"), now + 60, 0xfeed);
        assert!(
            s.starts_with("s-1800000060-000000000000feed-") && s.len() == 2 + 10 + 1 + 16 + 1 + 32,
            "{s}"
        );
        assert_eq!(key.verify(&id("eu"), &s, now), Ok(0xfeed));
        // Another viewer's number under this signature.
        let moved = s.replacen("feed", "beef", 1);
        assert_eq!(
            key.verify(&id("eu"), &moved, now),
            Err(SessionError::BadSignature)
        );
        // Every mint is a new viewer.
        let (a, b) = (key.mint(&id("eu"), now + 60), key.mint(&id("eu"), now + 60));
        assert_ne!(
            key.verify(&id("eu"), &a, now),
            key.verify(&id("eu"), &b, now)
        );
        // Another distribution.
        assert_eq!(
            key.verify(&id("us"), &s, now),
            Err(SessionError::BadSignature)
        );
        // Extended: a later expiry with the same signature.
        let extended = s.replacen("1800000060", "1800009999", 1);
        assert_eq!(
            key.verify(&id("eu"), &extended, now),
            Err(SessionError::BadSignature)
        );
        // Tampered signature, other key, after expiry.
        let mut tampered = s.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            key.verify(&id("eu"), std::str::from_utf8(&tampered).unwrap(), now),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            SessionKey::from_secret(b"other").verify(&id("eu"), &s, now),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            key.verify(&id("eu"), &s, now + 60),
            Err(SessionError::Expired)
        );
        // Expired, its viewer is still known (for counting, never for access); not
        // under another distribution or a bad signature.
        assert_eq!(key.viewer_of(&id("eu"), &s), Some(0xfeed));
        assert_eq!(key.viewer_of(&id("us"), &s), None);
        assert_eq!(key.viewer_of(&id("eu"), &moved), None);
        for bad in [
            "",
            "s-",
            "s-1-",
            "s-1-2-",
            "x-1800000060-00",
            "s-01800000060-000000000000feed-0011223344556677",
            "s-1800000060-000000000000feed-GG112233445566778899aabbccddeeff",
            "s-1800000060-000000000000feed-00112233445566778899AABBCCDDEEFF",
            "s-1800000060-000000000000FEED-00112233445566778899aabbccddeeff",
            "s-1800000060-feed-00112233445566778899aabbccddeeff",
            "s-1800000060-00112233445566778899aabbccddeeff",
            "s-99999999999999999999999-000000000000feed-00112233445566778899aabbccddeeff",
        ] {
            assert_eq!(
                key.verify(&id("eu"), bad, now),
                Err(SessionError::Malformed),
                "{bad}"
            );
        }
    }
}
