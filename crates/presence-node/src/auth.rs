//! Who may do what: the JWT a Socket.IO client presents at the handshake
//! (`io(url, { auth: { token } })`), the rooms it grants, and the HTTP API
//! key.
//!
//! A token is verified once, when the connection is made; the connection
//! then carries its [`Grant`]: the user it speaks for (`sub`), the rooms it
//! may join (`rooms`) and when the token expires (`exp`). Tokens are
//! verified with `jsonwebtoken` (HS256 with a shared secret, or RS256 with
//! the issuer's public key); nothing here parses or checks signatures by
//! hand.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use presence_core::{Millis, RoomId, UserId};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;

/// How much clock difference between the token issuer and a node is
/// tolerated when checking `exp` (and `nbf`).
const LEEWAY_SECS: u64 = 5;

/// What a verified token grants a connection.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user the connection speaks for (`sub`): a `presence:hello` for
    /// another user is refused.
    pub user_id: UserId,
    /// The rooms it may join.
    pub rooms: RoomPatterns,
    /// The users whose reachability it may ask and whom it may send an
    /// intent without sharing a room with them (`reach`: the same patterns,
    /// of user ids).
    pub reach: RoomPatterns,
    /// When the token expires (Unix ms).
    pub expires_at: Millis,
}

/// The `rooms` claim: exact room ids, and patterns ending in `*` that match
/// every room id starting with what comes before it (`team-7:*`, or `*` for
/// every room). A token without the claim may join no room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPatterns(Vec<String>);

impl RoomPatterns {
    /// Parses the claim (a list of strings).
    pub fn new(patterns: Vec<String>) -> Self {
        RoomPatterns(patterns)
    }

    /// Whether `room` matches one of the patterns.
    pub fn allows(&self, room: &RoomId) -> bool {
        self.allows_id(room.as_str())
    }

    /// Whether the id `room` (a room's, or for `reach` a user's) matches.
    pub fn allows_id(&self, room: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => p == room,
        })
    }
}

/// Why a handshake was refused. The message is what the client's
/// `connect_error` carries, so it names the reason without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `auth.token` in the handshake.
    Missing,
    /// Not a JWT, or not one this node can read (wrong algorithm, bad JSON).
    Malformed(String),
    /// The signature does not match the configured key.
    BadSignature,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// A required claim is missing or has the wrong type or value.
    InvalidClaims(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(
                f,
                "unauthorized: no token (connect with auth: {{ token: \"<JWT>\" }})"
            ),
            AuthError::Malformed(why) => write!(f, "unauthorized: malformed token ({why})"),
            AuthError::BadSignature => write!(f, "unauthorized: bad token signature"),
            AuthError::Expired => write!(f, "unauthorized: token expired"),
            AuthError::NotYetValid => write!(f, "unauthorized: token not valid yet (nbf)"),
            AuthError::InvalidClaims(why) => {
                write!(f, "unauthorized: invalid token claims ({why})")
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// The claims this node reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    reach: Option<Vec<String>>,
}

/// Verifies handshake tokens with the configured key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// The longest lifetime a token may claim, in seconds.
    max_ttl_secs: u64,
}

/// The longest token lifetime accepted by default (`PRESENCE_JWT_MAX_TTL_S`).
pub const DEFAULT_MAX_TTL_SECS: u64 = 86_400;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier the keys ask for: HS256 with a shared `secret`
    /// (`PRESENCE_JWT_SECRET`), RS256 with the issuer's `public_key`
    /// (`PRESENCE_JWT_PUBLIC_KEY`: PEM text, or the path of a PEM file), or
    /// `None` when neither is set (auth off).
    pub fn from_keys(
        secret: Option<&str>,
        public_key: Option<&str>,
    ) -> Result<Option<Verifier>, ConfigError> {
        let (key, alg) = match (secret, public_key) {
            (Some(_), Some(_)) => {
                return Err(
                    "set PRESENCE_JWT_SECRET (HS256) or PRESENCE_JWT_PUBLIC_KEY (RS256), not both"
                        .into(),
                )
            }
            (None, None) => return Ok(None),
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err(
                        "PRESENCE_JWT_SECRET must be at least 32 bytes (HS256 needs a long random secret)"
                            .into(),
                    );
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(pem)) => {
                let text = if pem.trim_start().starts_with("-----BEGIN") {
                    pem.to_owned()
                } else {
                    std::fs::read_to_string(pem).map_err(|e| {
                        ConfigError(format!("PRESENCE_JWT_PUBLIC_KEY: cannot read {pem}: {e}"))
                    })?
                };
                let key = DecodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| {
                    ConfigError(format!(
                        "PRESENCE_JWT_PUBLIC_KEY is not an RSA public key in PEM: {e}"
                    ))
                })?;
                (key, Algorithm::RS256)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        Ok(Some(Verifier {
            key,
            validation,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
        }))
    }

    /// Refuses tokens whose `exp` is more than `secs` after their `iat`, or
    /// after now: a token that never expires cannot be revoked by waiting.
    pub fn with_max_ttl(mut self, secs: u64) -> Self {
        self.max_ttl_secs = secs;
        self
    }

    /// Verifies the handshake's auth payload (`{ token }`).
    pub fn verify(&self, auth: Option<&Value>) -> Result<Grant, AuthError> {
        let token = match auth.and_then(|a| a.get("token")) {
            None | Some(Value::Null) => return Err(AuthError::Missing),
            Some(Value::String(t)) if t.is_empty() => return Err(AuthError::Missing),
            Some(Value::String(t)) => t,
            Some(_) => return Err(AuthError::Malformed("token must be a string".into())),
        };
        // The header first: an unknown algorithm (`none` included) or a header
        // that is not JSON makes the token malformed, not its claims invalid.
        jsonwebtoken::decode_header(token).map_err(|e| {
            AuthError::Malformed(match e.kind() {
                ErrorKind::Json(_) => "the header names no algorithm this node knows".into(),
                _ => e.to_string(),
            })
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::InvalidClaims(format!("{c} is required"))
                }
                ErrorKind::InvalidAlgorithm => AuthError::Malformed(
                    "signed with another algorithm than this node accepts".into(),
                ),
                ErrorKind::Json(_) => AuthError::InvalidClaims(
                    "sub must be a string, exp a number, and rooms and reach lists of strings"
                        .into(),
                ),
                _ => AuthError::Malformed(e.to_string()),
            },
        )?;
        let c = data.claims;
        let sub = c
            .sub
            .ok_or_else(|| AuthError::InvalidClaims("sub is required".into()))?;
        let exp = c
            .exp
            .ok_or_else(|| AuthError::InvalidClaims("exp is required".into()))?;
        let now = jsonwebtoken::get_current_timestamp();
        let too_long = |from: u64| exp > from.saturating_add(self.max_ttl_secs + LEEWAY_SECS);
        if too_long(now) || c.iat.is_some_and(too_long) {
            return Err(AuthError::InvalidClaims(format!(
                "exp is more than {} s after iat or now (PRESENCE_JWT_MAX_TTL_S)",
                self.max_ttl_secs
            )));
        }
        let user_id = UserId::new(&sub)
            .map_err(|e| AuthError::InvalidClaims(format!("sub is not a valid user id: it {e}")))?;
        Ok(Grant {
            user_id,
            rooms: RoomPatterns::new(c.rooms.unwrap_or_default()),
            reach: RoomPatterns::new(c.reach.unwrap_or_default()),
            expires_at: i64::try_from(exp)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        })
    }
}

/// Compares an `Authorization` header with the API key in constant time
/// (`subtle`), so the comparison does not leak how much of a guess was right.
pub fn api_key_matches(header: Option<&str>, key: &str) -> bool {
    use subtle::ConstantTimeEq;
    // The scheme is case-insensitive (RFC 7235): `bearer` works as `Bearer`.
    let Some((scheme, given)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = given.trim_start_matches(' ');
    given.as_bytes().ct_eq(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn room_patterns_match_exact_names_and_prefixes() {
        let p = RoomPatterns::new(vec!["lobby".into(), "team-7:*".into()]);
        assert!(p.allows(&room("lobby")));
        assert!(!p.allows(&room("lobby2")));
        assert!(!p.allows(&room("lob")));
        assert!(p.allows(&room("team-7:general")));
        assert!(p.allows(&room("team-7:")));
        assert!(!p.allows(&room("team-70:general")));
        assert!(!p.allows(&room("team-7")));
        assert!(RoomPatterns::new(vec!["*".into()]).allows(&room("anything")));
        assert!(!RoomPatterns::default().allows(&room("lobby")));
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::from_keys(Some(SECRET), None).unwrap().unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> Value {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        serde_json::json!({ "token": t })
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn a_valid_token_grants_its_subject_and_rooms() {
        let auth = token(
            serde_json::json!({
                "sub": "alice", "exp": in_an_hour(), "rooms": ["lobby", "team-7:*"], "reach": ["bob", "ops-*"],
            }),
            SECRET,
        );
        let g = verifier().verify(Some(&auth)).unwrap();
        assert_eq!(g.user_id.as_str(), "alice");
        assert!(g.rooms.allows(&room("team-7:x")));
        assert!(!g.rooms.allows(&room("secret")));
        assert!(g.reach.allows_id("bob") && g.reach.allows_id("ops-1"));
        assert!(!g.reach.allows_id("bobby") && !g.reach.allows_id("carol"));
        assert_eq!(g.expires_at, in_an_hour() as i64 * 1000);
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let v = verifier();
        let exp = in_an_hour();
        let cases = [
            (None, AuthError::Missing),
            (Some(serde_json::json!({})), AuthError::Missing),
            (Some(serde_json::json!({ "token": "" })), AuthError::Missing),
            (
                Some(serde_json::json!({ "token": 7 })),
                AuthError::Malformed("token must be a string".into()),
            ),
            (
                Some(token(
                    serde_json::json!({ "sub": "alice", "exp": exp }),
                    "another-secret-0123456789abcdef!!",
                )),
                AuthError::BadSignature,
            ),
            (
                Some(token(
                    serde_json::json!({ "sub": "alice", "exp": exp - 7200 }),
                    SECRET,
                )),
                AuthError::Expired,
            ),
            (
                Some(token(serde_json::json!({ "exp": exp }), SECRET)),
                AuthError::InvalidClaims("sub is required".into()),
            ),
            (
                Some(token(serde_json::json!({ "sub": "alice" }), SECRET)),
                AuthError::InvalidClaims("exp is required".into()),
            ),
            (
                Some(token(
                    serde_json::json!({ "sub": "al ice", "exp": exp }),
                    SECRET,
                )),
                AuthError::InvalidClaims(
                    "sub is not a valid user id: it may only contain A-Z a-z 0-9 _ . : @ -".into(),
                ),
            ),
        ];
        for (auth, want) in cases {
            assert_eq!(v.verify(auth.as_ref()).unwrap_err(), want, "{auth:?}");
        }
        assert!(matches!(
            v.verify(Some(&serde_json::json!({ "token": "not.a.jwt" }))),
            Err(AuthError::Malformed(_))
        ));
        // `alg: none` is never accepted.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&serde_json::json!({ "sub": "alice", "exp": exp }).to_string())
        );
        assert!(matches!(
            v.verify(Some(&serde_json::json!({ "token": none }))),
            Err(AuthError::Malformed(_))
        ));
    }

    fn base64_url(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_token_may_not_live_longer_than_the_maximum() {
        let v = verifier().with_max_ttl(3600);
        let now = jsonwebtoken::get_current_timestamp();
        let grant = |claims| v.verify(Some(&token(claims, SECRET)));
        assert!(grant(serde_json::json!({ "sub": "a", "exp": now + 3000 })).is_ok());
        assert!(grant(serde_json::json!({ "sub": "a", "iat": now, "exp": now + 3000 })).is_ok());
        for claims in [
            serde_json::json!({ "sub": "a", "exp": now + 7200 }),
            serde_json::json!({ "sub": "a", "exp": 1_000_000_000_000u64 }),
            serde_json::json!({ "sub": "a", "exp": u64::MAX }),
            // An old iat with a fresh exp: issued for longer than allowed.
            serde_json::json!({ "sub": "a", "iat": now - 7200, "exp": now + 60 }),
        ] {
            match grant(claims.clone()) {
                Err(AuthError::InvalidClaims(why)) => {
                    assert!(why.contains("PRESENCE_JWT_MAX_TTL_S"), "{why}")
                }
                other => panic!("{claims}: {other:?}"),
            }
        }
    }

    #[test]
    fn weak_or_conflicting_keys_are_refused_at_start() {
        let refused = |secret, public_key| Verifier::from_keys(secret, public_key).unwrap_err().0;
        assert!(refused(Some("short"), None).contains("32 bytes"));
        assert!(refused(Some(SECRET), Some("x")).contains("not both"));
        assert!(refused(None, Some("/no/such/key.pem")).contains("cannot read"));
        assert!(Verifier::from_keys(None, None).unwrap().is_none());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let key = "api-key-0123456789";
        for h in [
            "Bearer api-key-0123456789",
            "bearer api-key-0123456789",
            "BEARER  api-key-0123456789",
        ] {
            assert!(api_key_matches(Some(h), key), "{h}");
        }
        for h in [
            "Basic api-key-0123456789",
            "Bearerapi-key-0123456789",
            "Bearer",
        ] {
            assert!(!api_key_matches(Some(h), key), "{h}");
        }
    }

    #[test]
    fn the_api_key_must_match_exactly() {
        assert!(api_key_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!api_key_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!api_key_matches(Some("Bearer s3cretX"), "s3cret"));
        assert!(!api_key_matches(Some("s3cret"), "s3cret"));
        assert!(!api_key_matches(None, "s3cret"));
    }
}
