//! Optional shared-secret authentication, checked before a peer's session
//! begins (CURVE, which libzmq peers speak, is the next mechanism).
//!
//! A connection proves it knows the secret with its first message, addressed
//! to the reserved callback id 3 ([`AUTH`]):
//!
//! ```text
//! body = "v1:" nonce ":" unix_ms ":" mac
//! nonce   = 32 lowercase hex digits (16 random bytes, fresh per connection)
//! unix_ms = decimal milliseconds since the Unix epoch
//! mac     = lowercase hex of HMAC-SHA256(secret, "messenger-auth-v1:" nonce ":" unix_ms)
//! ```
//!
//! A listener with a secret accepts the proof if the MAC matches (compared
//! in constant time), the timestamp is within [`WINDOW`] of its clock, and
//! the nonce was not used before in that window (replay cache, bounded).
//! What it gives: only holders of the secret get messages to our callbacks.
//! What it does not: confidentiality or integrity of later messages (no
//! encryption, no per-message MAC); see design/THREATS.md.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A shared secret. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The callback id an authentication message is addressed to (the
/// protocol's reserved id).
pub const AUTH: u64 = crate::wire::RESERVED;

/// How far a proof's timestamp may be from the listener's clock.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Largest authentication body accepted.
pub const MAX_PROOF_LEN: usize = 256;

/// Most nonces remembered at once; past it new proofs are refused until old
/// ones age out of the window, rather than growing memory.
const MAX_NONCES: usize = 1 << 16;

const CONTEXT: &str = "messenger-auth-v1:";

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not `v1:nonce:unix_ms:mac` with the right lengths and digits.
    #[error("malformed authentication message")]
    Malformed,
    /// The timestamp is outside the window.
    #[error("authentication timestamp outside the allowed window")]
    Stale,
    /// The nonce was used before.
    #[error("authentication nonce replayed")]
    Replay,
    /// The MAC does not match: wrong secret.
    #[error("authentication MAC does not match")]
    BadMac,
    /// Too many recent proofs to remember another.
    #[error("too many recent authentications; try again")]
    Busy,
    /// The first message was not an authentication message.
    #[error("first message is not an authentication message")]
    Missing,
}

fn mac(secret: &Secret, nonce: &str, unix_ms: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(CONTEXT.as_bytes());
    m.update(nonce.as_bytes());
    m.update(b":");
    m.update(unix_ms.as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A proof for the given nonce and time (deterministic: for tests and other
/// implementations).
pub fn proof_with(secret: &Secret, nonce: &[u8; 16], unix_ms: u64) -> String {
    let nonce = hex(nonce);
    let ms = unix_ms.to_string();
    let tag = mac(secret, &nonce, &ms).finalize().into_bytes();
    format!("v1:{nonce}:{ms}:{}", hex(&tag))
}

/// A fresh proof: a random nonce and the current time.
pub fn proof(secret: &Secret) -> Result<String, getrandom::Error> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)?;
    Ok(proof_with(secret, &nonce, now_ms()))
}

/// A listener's side: checks proofs and remembers nonces.
#[derive(Debug)]
pub struct Verifier {
    /// The shared secret proofs are checked against.
    secret: Secret,
    /// nonce -> time (ms) after which it may be forgotten.
    seen: HashMap<[u8; 16], u64>,
}

impl Verifier {
    /// A verifier for `secret`.
    pub fn new(secret: Secret) -> Self {
        Verifier {
            secret,
            seen: HashMap::new(),
        }
    }

    /// Checks a proof at time `now_ms`; a valid one's nonce is remembered.
    pub fn verify(&mut self, body: &[u8], now_ms: u64) -> Result<(), AuthError> {
        if body.len() > MAX_PROOF_LEN {
            return Err(AuthError::Malformed);
        }
        let text = std::str::from_utf8(body).map_err(|_| AuthError::Malformed)?;
        let mut parts = text.split(':');
        let (Some("v1"), Some(nonce_hex), Some(ms), Some(tag_hex), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        let nonce: [u8; 16] = unhex(nonce_hex)
            .and_then(|n| n.try_into().ok())
            .ok_or(AuthError::Malformed)?;
        if nonce_hex.bytes().any(|b| b.is_ascii_uppercase())
            || !ms.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(AuthError::Malformed);
        }
        let when: u64 = ms.parse().map_err(|_| AuthError::Malformed)?;
        let tag = unhex(tag_hex).ok_or(AuthError::Malformed)?;
        mac(&self.secret, nonce_hex, ms)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadMac)?;
        let window = WINDOW.as_millis() as u64;
        if when.abs_diff(now_ms) > window {
            return Err(AuthError::Stale);
        }
        self.seen.retain(|_, &mut forget_at| forget_at > now_ms);
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replay);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(AuthError::Busy);
        }
        // Remember it until its timestamp can no longer pass the window check.
        self.seen.insert(
            nonce,
            when.saturating_add(window).max(now_ms).saturating_add(1),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn a_valid_proof_passes_once() {
        let s = Secret::new("hunter2");
        let mut v = Verifier::new(s.clone());
        let p = proof_with(&s, &[7; 16], T);
        assert_eq!(v.verify(p.as_bytes(), T + 5), Ok(()));
        assert_eq!(v.verify(p.as_bytes(), T + 6), Err(AuthError::Replay));
    }

    #[test]
    fn wrong_secret_stale_and_malformed_are_refused() {
        let mut v = Verifier::new(Secret::new("right"));
        let wrong = proof_with(&Secret::new("wrong"), &[1; 16], T);
        assert_eq!(v.verify(wrong.as_bytes(), T), Err(AuthError::BadMac));
        let old = proof_with(&Secret::new("right"), &[2; 16], T);
        assert_eq!(v.verify(old.as_bytes(), T + 31_000), Err(AuthError::Stale));
        for bad in [
            &b""[..],
            b"v1:zz:1:00",
            b"v2:00:1:00",
            b"v1:00:1",
            b"\xff\xfe",
            &[b'a'; 300],
        ] {
            assert_eq!(v.verify(bad, T), Err(AuthError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let s = Secret::new("k");
        let mut v = Verifier::new(s.clone());
        v.verify(proof_with(&s, &[3; 16], T).as_bytes(), T).unwrap();
        assert_eq!(v.seen.len(), 1);
        v.verify(proof_with(&s, &[4; 16], T + 40_000).as_bytes(), T + 40_000)
            .unwrap();
        assert_eq!(v.seen.len(), 1, "the first nonce aged out");
    }

    #[test]
    fn proof_format_is_stable() {
        // Pinned so other implementations (examples/python_auth.py) can check theirs.
        let p = proof_with(&Secret::new("secret"), &[0; 16], 1);
        assert!(p.starts_with("v1:00000000000000000000000000000000:1:"));
        assert_eq!(p.len(), 3 + 32 + 1 + 1 + 1 + 64);
    }
}
