//! Who may watch a distribution: viewer tokens (JWT), IP rules and allowed origins,
//! judged once on the multivariant request (a [`crate::session`] carries the verdict to
//! child requests). Pure: every input is a value, so each rule and each attack is a
//! unit test.

use std::net::IpAddr;

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

use sluice_config::{GeoRule, IpRule, RuleMode, TokenAlgorithm, TokenConfig};

use crate::geo::GeoDb;
use sluice_core::Id;

/// Longest token accepted, in bytes: real ones are a few hundred.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a viewer was turned away. The body says only the status; the reason is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error("token required")]
    TokenMissing,
    #[error("token malformed")]
    TokenMalformed,
    #[error("token signed with an unknown key")]
    TokenUnknownKey,
    #[error("token signature or algorithm invalid")]
    TokenSignature,
    #[error("token expired")]
    TokenExpired,
    #[error("token not valid yet")]
    TokenNotYetValid,
    #[error("token claims invalid")]
    TokenClaims,
    #[error("token for another distribution")]
    TokenAudience,
    #[error("token bound to another address")]
    TokenAddress,
    #[error("address not allowed")]
    Ip,
    #[error("country not allowed")]
    Geo,
    #[error("origin not allowed")]
    Origin,
    #[error("session missing")]
    SessionMissing,
    #[error("session invalid or expired")]
    SessionInvalid,
}

impl Refusal {
    /// INTERFACES.md: 401 for a missing, invalid or expired token (or session); 403 for
    /// IP, origin or a token for another distribution.
    pub fn status(self) -> u16 {
        match self {
            Refusal::TokenAudience
            | Refusal::TokenAddress
            | Refusal::Ip
            | Refusal::Geo
            | Refusal::Origin => 403,
            _ => 401,
        }
    }

    /// A short name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TokenMissing => "token_missing",
            Refusal::TokenMalformed => "token_malformed",
            Refusal::TokenUnknownKey => "token_unknown_key",
            Refusal::TokenSignature => "token_signature",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenNotYetValid => "token_not_yet_valid",
            Refusal::TokenClaims => "token_claims",
            Refusal::TokenAudience => "token_audience",
            Refusal::TokenAddress => "token_address",
            Refusal::Ip => "ip",
            Refusal::Geo => "geo",
            Refusal::Origin => "origin",
            Refusal::SessionMissing => "session_missing",
            Refusal::SessionInvalid => "session_invalid",
        }
    }
}

/// The token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenParam<'a> {
    None,
    One(&'a str),
    /// Empty, oversized, given twice, or given both ways: refused as malformed.
    Bad,
}

impl<'a> TokenParam<'a> {
    /// From the query string (`token=`) and the `Authorization` header (`Bearer`).
    pub fn from_request(query: Option<&'a str>, authorization: Option<&'a str>) -> Self {
        let mut found: Option<&'a str> = None;
        let mut count = 0;
        for pair in query.unwrap_or("").split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                count += 1;
                found = Some(v);
            } else if pair == "token" {
                count += 1;
                found = Some("");
            }
        }
        if let Some(h) = authorization {
            count += 1;
            match h.strip_prefix("Bearer ") {
                Some(v) => found = Some(v.trim()),
                None => return TokenParam::Bad,
            }
        }
        match (count, found) {
            (0, _) => TokenParam::None,
            (1, Some(t)) if !t.is_empty() && t.len() <= MAX_TOKEN_BYTES => TokenParam::One(t),
            _ => TokenParam::Bad,
        }
    }
}

/// The viewer's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
/// IPv4-mapped IPv6 addresses are IPv4.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage in the header: stop at the last address we could believe.
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// The page's origin (`scheme://host[:port]`) from `Origin`, else from `Referer`.
/// `Some("null")` for an opaque origin; `None` when neither header is sent (a native
/// player).
pub fn request_origin<'a>(origin: Option<&'a str>, referer: Option<&'a str>) -> Option<&'a str> {
    if let Some(o) = origin {
        return Some(o.trim());
    }
    let r = referer?.trim();
    let after_scheme = r.find("://")? + 3;
    let end = r[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(r.len(), |i| after_scheme + i);
    Some(&r[..end])
}

struct Key {
    id: String,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// Claims Sluice reads; `exp` and `aud` are required by the validation.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub ip: Option<String>,
}

/// A geo rule and the database it is judged with (`None`: no database, so the rule
/// refuses everyone: it fails closed).
pub struct Geo {
    pub rule: GeoRule,
    pub db: Option<Arc<GeoDb>>,
}

/// One distribution's rules.
pub struct Policy {
    geo: Option<Geo>,
    ip: Option<IpRule>,
    origins: Vec<String>,
    token_required: bool,
    keys: Vec<Key>,
    issuer: Option<String>,
}

/// A key in the configuration the server cannot use (a PEM that does not parse).
#[derive(Debug, thiserror::Error)]
#[error("token key {id:?}: {reason}")]
pub struct KeyError {
    pub id: String,
    pub reason: String,
}

fn algorithm(a: TokenAlgorithm) -> Algorithm {
    match a {
        TokenAlgorithm::HS256 => Algorithm::HS256,
        TokenAlgorithm::HS384 => Algorithm::HS384,
        TokenAlgorithm::HS512 => Algorithm::HS512,
        TokenAlgorithm::RS256 => Algorithm::RS256,
        TokenAlgorithm::ES256 => Algorithm::ES256,
        TokenAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl Policy {
    /// A distribution with no rules.
    pub fn open() -> Self {
        Policy {
            geo: None,
            ip: None,
            origins: Vec::new(),
            token_required: false,
            keys: Vec::new(),
            issuer: None,
        }
    }

    pub fn new(
        geo: Option<Geo>,
        ip: Option<IpRule>,
        origins: Vec<String>,
        token: &TokenConfig,
    ) -> Result<Self, KeyError> {
        let keys = token
            .keys
            .iter()
            .map(|k| {
                let err = |reason: String| KeyError {
                    id: k.id.clone(),
                    reason,
                };
                let pem = || {
                    k.public_key_pem
                        .as_deref()
                        .ok_or_else(|| err("public_key_pem missing".into()))
                        .map(str::as_bytes)
                };
                let decoding = match k.algorithm {
                    TokenAlgorithm::HS256 | TokenAlgorithm::HS384 | TokenAlgorithm::HS512 => {
                        let secret = k
                            .secret
                            .as_deref()
                            .ok_or_else(|| err("secret missing".into()))?;
                        Ok(DecodingKey::from_secret(secret.as_bytes()))
                    }
                    TokenAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem()?),
                    TokenAlgorithm::ES256 => DecodingKey::from_ec_pem(pem()?),
                    TokenAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem()?),
                }
                .map_err(|e| err(format!("cannot read public_key_pem: {e}")))?;
                Ok(Key {
                    id: k.id.clone(),
                    algorithm: algorithm(k.algorithm),
                    decoding,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            geo,
            ip,
            origins,
            token_required: token.required,
            keys,
            issuer: token.issuer.clone(),
        })
    }

    /// No rule at all: no session needed either.
    pub fn is_open(&self) -> bool {
        self.geo.is_none()
            && self.ip.is_none()
            && self.origins.is_empty()
            && !self.token_required
            && self.keys.is_empty()
    }

    /// Origins are restricted: CORS answers name the origin (with `Vary: Origin`).
    pub fn restricts_origins(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The address, country and origin rules, judged on every request of the distribution.
    pub fn check_address_and_origin(
        &self,
        client: IpAddr,
        origin: Option<&str>,
    ) -> Result<(), Refusal> {
        if let Some(geo) = &self.geo {
            // No database: nobody's country is known, and the rule fails closed.
            let db = geo.db.as_ref().ok_or(Refusal::Geo)?;
            let listed = db
                .country_code(client)
                .is_some_and(|c| geo.rule.countries.iter().any(|r| r.as_bytes() == c));
            if listed != (geo.rule.mode == RuleMode::Allow) {
                return Err(Refusal::Geo);
            }
        }
        if let Some(rule) = &self.ip {
            let listed = rule.cidrs.iter().any(|n| n.contains(&client));
            if listed != (rule.mode == RuleMode::Allow) {
                return Err(Refusal::Ip);
            }
        }
        if !self.origins.is_empty()
            && let Some(o) = origin
            && !self.origins.iter().any(|allowed| allowed == o)
        {
            // Exact scheme://host[:port]: no suffix or prefix look-alikes, and "null"
            // (an opaque origin) is never on the list.
            return Err(Refusal::Origin);
        }
        Ok(())
    }

    /// Admission on the multivariant request: address, origin, then the token.
    pub fn admit(
        &self,
        dist: &Id,
        client: IpAddr,
        origin: Option<&str>,
        token: TokenParam<'_>,
    ) -> Result<Option<Claims>, Refusal> {
        self.check_address_and_origin(client, origin)?;
        self.check_token(dist, client, token)
    }

    /// The token rule alone (a viewer sent on to another distribution by an override is
    /// judged by the entry distribution's token and the target's other rules).
    pub fn check_token(
        &self,
        dist: &Id,
        client: IpAddr,
        token: TokenParam<'_>,
    ) -> Result<Option<Claims>, Refusal> {
        let token = match token {
            TokenParam::None if self.token_required => return Err(Refusal::TokenMissing),
            TokenParam::None => return Ok(None),
            TokenParam::Bad => return Err(Refusal::TokenMalformed),
            TokenParam::One(_) if self.keys.is_empty() => return Ok(None),
            TokenParam::One(t) => t,
        };
        let claims = self.verify(dist, token)?;
        if let Some(ip) = &claims.ip {
            let bound: IpAddr = ip.parse().map_err(|_| Refusal::TokenClaims)?;
            if bound.to_canonical() != client {
                return Err(Refusal::TokenAddress);
            }
        }
        Ok(Some(claims))
    }

    fn verify(&self, dist: &Id, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::TokenMalformed)?;
        // The key is chosen by `kid` (or is the only one); its algorithm is the only one
        // accepted, whatever the header says: no `none`, no HS/RS confusion.
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| &k.id == kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(Refusal::TokenUnknownKey)?;
        if header.alg != key.algorithm {
            return Err(Refusal::TokenSignature);
        }
        let mut v = Validation::new(key.algorithm);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "aud"]);
        v.set_audience(&[dist.as_str()]);
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        use jsonwebtoken::errors::ErrorKind as K;
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                K::ExpiredSignature => Refusal::TokenExpired,
                K::ImmatureSignature => Refusal::TokenNotYetValid,
                K::InvalidAudience => Refusal::TokenAudience,
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                    Refusal::TokenSignature
                }
                K::InvalidIssuer | K::MissingRequiredClaim(_) => Refusal::TokenClaims,
                _ => Refusal::TokenMalformed,
            })
    }
}

/// Why `sluice token` could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the distribution has no token keys")]
    NoKey,
    #[error(
        "its first key ({0:?}) is {1}: Sluice holds only its public key; sign with the private key"
    )]
    PublicKeyOnly(String, &'static str),
    #[error("signing failed: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// A viewer token for `dist`, signed with its first key (HMAC keys only: for the others
/// Sluice has just the public half). `exp` is `now + ttl`.
pub fn sign_token(
    dist: &Id,
    token: &TokenConfig,
    now: u64,
    ttl_seconds: u64,
    sub: Option<&str>,
) -> Result<String, SignError> {
    let key = token.keys.first().ok_or(SignError::NoKey)?;
    let secret = match (key.algorithm, &key.secret) {
        (TokenAlgorithm::HS256 | TokenAlgorithm::HS384 | TokenAlgorithm::HS512, Some(s)) => s,
        (a, _) => return Err(SignError::PublicKeyOnly(key.id.clone(), a.as_str())),
    };
    let mut header = jsonwebtoken::Header::new(algorithm(key.algorithm));
    header.kid = Some(key.id.clone());
    let mut claims = serde_json::json!({
        "aud": dist.as_str(),
        "exp": now.saturating_add(ttl_seconds),
        "iat": now,
    });
    if let Some(sub) = sub {
        claims["sub"] = sub.into();
    }
    if let Some(iss) = &token.issuer {
        claims["iss"] = iss.as_str().into();
    }
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use sluice_config::TokenKey;

    const RSA_PRIVATE: &str = include_str!("../testdata/test_rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../testdata/test_rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../testdata/test_ec_private.pem");
    const EC_PUBLIC: &str = include_str!("../testdata/test_ec_public.pem");
    const ED_PRIVATE: &str = include_str!("../testdata/test_ed25519_private.pem");
    const ED_PUBLIC: &str = include_str!("../testdata/test_ed25519_public.pem");
    const SECRET: &str = "a-long-random-secret-for-eu";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn key(id: &str, algorithm: TokenAlgorithm, pem: Option<&str>) -> TokenKey {
        TokenKey {
            id: id.into(),
            algorithm,
            secret: pem.is_none().then(|| SECRET.into()),
            public_key_pem: pem.map(Into::into),
        }
    }

    fn policy() -> Policy {
        Policy::new(
            None,
            None,
            vec![],
            &TokenConfig {
                required: true,
                keys: vec![
                    key("hs", TokenAlgorithm::HS256, None),
                    key("rs", TokenAlgorithm::RS256, Some(RSA_PUBLIC)),
                    key("es", TokenAlgorithm::ES256, Some(EC_PUBLIC)),
                    key("ed", TokenAlgorithm::EdDSA, Some(ED_PUBLIC)),
                ],
                issuer: Some("https://auth.example.com".into()),
            },
        )
        .unwrap()
    }

    fn sign(alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                EncodingKey::from_secret(SECRET.as_bytes())
            }
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            _ => unreachable!(),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &claims, &key).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({ "exp": now() + 60, "aud": "eu", "iss": "https://auth.example.com", "sub": "v1" })
    }

    fn admit(p: &Policy, token: &str) -> Result<Option<Claims>, Refusal> {
        p.admit(
            &Id::new("eu").unwrap(),
            "192.0.2.7".parse().unwrap(),
            None,
            TokenParam::One(token),
        )
    }

    fn b64(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| acc << 8 | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn signed_tokens_are_admitted() {
        let p = policy();
        let cfg = TokenConfig {
            required: true,
            keys: vec![key("hs", TokenAlgorithm::HS256, None)],
            issuer: Some("https://auth.example.com".into()),
        };
        let t = sign_token(&Id::new("eu").unwrap(), &cfg, now() as u64, 60, Some("v9")).unwrap();
        assert_eq!(admit(&p, &t).unwrap().unwrap().sub.as_deref(), Some("v9"));
        let rs = TokenConfig {
            keys: vec![key("rs", TokenAlgorithm::RS256, Some(RSA_PUBLIC))],
            ..cfg
        };
        assert!(matches!(
            sign_token(&Id::new("eu").unwrap(), &rs, 0, 60, None),
            Err(SignError::PublicKeyOnly(..))
        ));
    }

    #[test]
    fn every_algorithm_verifies() {
        let p = policy();
        for (alg, kid) in [
            (Algorithm::HS256, "hs"),
            (Algorithm::RS256, "rs"),
            (Algorithm::ES256, "es"),
            (Algorithm::EdDSA, "ed"),
        ] {
            let claims = admit(&p, &sign(alg, kid, good_claims()))
                .unwrap_or_else(|e| panic!("{kid}: {e}"))
                .unwrap();
            assert_eq!(claims.sub.as_deref(), Some("v1"));
        }
    }

    /// The attack table: each one refused with its reason and status.
    #[test]
    fn attacks_are_refused() {
        let p = policy();
        let mut c = good_claims();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = good_claims();
            f(&mut c);
            c
        };
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"hs"}"#),
            b64(c.to_string().as_bytes())
        );
        assert_eq!(admit(&p, &none).err(), Some(Refusal::TokenMalformed));
        // HS256 signed with the RSA public key as the HMAC secret, kid of the RSA key.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rs".into());
        let confused = encode(
            &header,
            &c,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(admit(&p, &confused).err(), Some(Refusal::TokenSignature));
        // Expired by 1 s, not valid yet, no exp, wrong audience, unknown kid, tampered.
        let expired = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| c["exp"] = json!(now() - 1)),
        );
        assert_eq!(admit(&p, &expired).err(), Some(Refusal::TokenExpired));
        let early = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| c["nbf"] = json!(now() + 30)),
        );
        assert_eq!(admit(&p, &early).err(), Some(Refusal::TokenNotYetValid));
        let no_exp = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        );
        assert_eq!(admit(&p, &no_exp).err(), Some(Refusal::TokenClaims));
        let other_aud = sign(Algorithm::HS256, "hs", with(&|c| c["aud"] = json!("us")));
        assert_eq!(admit(&p, &other_aud).err(), Some(Refusal::TokenAudience));
        assert_eq!(Refusal::TokenAudience.status(), 403);
        let wrong_iss = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| c["iss"] = json!("https://evil")),
        );
        assert_eq!(admit(&p, &wrong_iss).err(), Some(Refusal::TokenClaims));
        let unknown = sign(Algorithm::HS256, "nope", good_claims());
        assert_eq!(admit(&p, &unknown).err(), Some(Refusal::TokenUnknownKey));
        let good = sign(Algorithm::RS256, "rs", good_claims());
        let (head, sig) = good.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{head}.{flipped}{}", &sig[1..]);
        assert_eq!(admit(&p, &tampered).err(), Some(Refusal::TokenSignature));
        // Claims changed under a valid signature.
        c["aud"] = json!("eu");
        let (_, payload_sig) = good.split_once('.').unwrap();
        let (_, sig) = payload_sig.split_once('.').unwrap();
        let forged = format!(
            "{}.{}.{sig}",
            good.split('.').next().unwrap(),
            b64(with(&|c| c["exp"] = json!(now() + 99_999))
                .to_string()
                .as_bytes())
        );
        assert_eq!(admit(&p, &forged).err(), Some(Refusal::TokenSignature));
        // Garbage of every kind.
        for junk in ["", "a", "a.b", "a.b.c", "....", &"x".repeat(5000)] {
            assert!(admit(&p, junk).is_err(), "{junk:.20}");
        }
        // Bound to an address: only that one.
        let bound = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| c["ip"] = json!("192.0.2.7")),
        );
        assert!(admit(&p, &bound).is_ok());
        let elsewhere = sign(
            Algorithm::HS256,
            "hs",
            with(&|c| c["ip"] = json!("192.0.2.8")),
        );
        assert_eq!(admit(&p, &elsewhere).err(), Some(Refusal::TokenAddress));
    }

    #[test]
    fn token_parameters() {
        assert_eq!(TokenParam::from_request(None, None), TokenParam::None);
        assert_eq!(
            TokenParam::from_request(Some("a=1&token=abc"), None),
            TokenParam::One("abc")
        );
        assert_eq!(
            TokenParam::from_request(None, Some("Bearer abc")),
            TokenParam::One("abc")
        );
        for (q, h) in [
            (Some("token="), None),
            (Some("token"), None),
            (Some("token=a&token=b"), None),
            (Some("token=a"), Some("Bearer b")),
            (None, Some("Basic abc")),
            (None, Some("Bearer ")),
        ] {
            assert_eq!(
                TokenParam::from_request(q, h),
                TokenParam::Bad,
                "{q:?} {h:?}"
            );
        }
        let huge = format!("token={}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(TokenParam::from_request(Some(&huge), None), TokenParam::Bad);
        let p = policy();
        let eu = Id::new("eu").unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            p.admit(&eu, ip, None, TokenParam::None).err(),
            Some(Refusal::TokenMissing)
        );
        assert_eq!(
            p.admit(&eu, ip, None, TokenParam::Bad).err(),
            Some(Refusal::TokenMalformed)
        );
    }

    #[test]
    fn client_address_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("198.51.100.1"), Some("1.2.3.4"), &trusted),
            ip("198.51.100.1")
        );
        // Right-most untrusted address; a spoofed left part is ignored.
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                Some("6.6.6.6, 203.0.113.9, 10.1.1.1"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), None, &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), Some("2001:db8::7"), &trusted),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("::ffff:203.0.113.5"), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("garbage"), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ip_rules_v4_and_v6() {
        let rule = |mode, cidrs: &[&str]| {
            Policy::new(
                None,
                Some(IpRule {
                    mode,
                    cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                }),
                vec![],
                &TokenConfig::default(),
            )
            .unwrap()
        };
        let allow = rule(RuleMode::Allow, &["203.0.113.0/24", "2001:db8::/32"]);
        let deny = rule(RuleMode::Deny, &["203.0.113.0/24", "2001:db8::/32"]);
        for (addr, inside) in [
            ("203.0.113.9", true),
            ("2001:db8::1", true),
            ("198.51.100.1", false),
            ("2001:db9::1", false),
        ] {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(
                allow.check_address_and_origin(a, None).is_ok(),
                inside,
                "{addr}"
            );
            assert_eq!(
                deny.check_address_and_origin(a, None).is_ok(),
                !inside,
                "{addr}"
            );
        }
    }

    #[test]
    fn geo_rules_allow_deny_and_fail_closed() {
        let geo = |mode, db: bool| {
            Policy::new(
                Some(Geo {
                    rule: GeoRule {
                        mode,
                        countries: vec!["GB".into(), "DE".into()],
                    },
                    db: db.then(|| Arc::new(crate::geo::tests::test_db())),
                }),
                None,
                vec![],
                &TokenConfig::default(),
            )
            .unwrap()
        };
        let (allow, deny, blind) = (
            geo(RuleMode::Allow, true),
            geo(RuleMode::Deny, true),
            geo(RuleMode::Allow, false),
        );
        for (addr, in_list) in [
            ("81.2.69.142", true),
            ("2001:db8:de::1", true),
            ("::ffff:81.2.69.142", true),
            ("198.51.100.9", false),
            ("203.0.113.1", false),
        ] {
            let a: IpAddr = addr.parse().unwrap();
            let a = a.to_canonical();
            assert_eq!(
                allow.check_address_and_origin(a, None).is_ok(),
                in_list,
                "{addr}"
            );
            assert_eq!(
                deny.check_address_and_origin(a, None).is_ok(),
                !in_list,
                "{addr}"
            );
            assert_eq!(
                blind.check_address_and_origin(a, None),
                Err(Refusal::Geo),
                "{addr}"
            );
        }
        assert!(!blind.is_open());
    }

    #[test]
    fn origins_match_exactly() {
        let p = Policy::new(
            None,
            None,
            vec!["https://eu.example.com".into()],
            &TokenConfig::default(),
        )
        .unwrap();
        let ok = |origin: Option<&str>, referer: Option<&str>| {
            p.check_address_and_origin(
                "192.0.2.1".parse().unwrap(),
                request_origin(origin, referer),
            )
            .is_ok()
        };
        assert!(ok(Some("https://eu.example.com"), None));
        assert!(ok(None, Some("https://eu.example.com/watch?v=1")));
        assert!(ok(None, None), "a native player sends neither");
        for bad in [
            "https://eu.example.com.evil.com",
            "https://evileu.example.com",
            "null",
            "https://eu.example.com:8443",
            "http://eu.example.com",
        ] {
            assert!(!ok(Some(bad), None), "{bad}");
        }
        assert!(!ok(None, Some("https://eu.example.com.evil.com/page")));
    }
}
