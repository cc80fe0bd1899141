//! `auth::Verifier::verify`: the proof a peer sends as its first message.
//!
//! Input layout: byte 0 picks the mode, then a length-prefixed secret, an
//! 8-byte clock, then the rest.
//!
//! - Raw mode: the rest is the proof body, verified at the fuzzed clock
//!   (never panics; a body that passes must have the documented shape).
//! - Structured mode: a valid proof made with `proof_with` from the fuzzed
//!   secret, nonce and timestamp passes exactly when its timestamp is within
//!   the window, only once (the replay is refused); the same proof with one
//!   byte changed, or checked against another secret, never passes.
//!
//! The clock is kept below `u64::MAX - 2 * WINDOW`: a listener's clock is
//! the system time in milliseconds (year 584,556,019 is out of scope), and
//! `verify` computes `timestamp + WINDOW + 1` when it remembers a nonce.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::auth::{AuthError, Secret, Verifier, WINDOW, proof_with};

const T: u64 = 1_700_000_000_000;

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

fn window() -> u64 {
    WINDOW.as_millis() as u64
}

fn clock(raw: u64, mode: u8) -> u64 {
    let limit = u64::MAX - 2 * window() - 2;
    if mode & 2 != 0 {
        // Around a realistic time, where fresh proofs are.
        T + raw % (10 * window())
    } else {
        raw % limit
    }
}

fn looks_valid(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 4
        && parts[0] == "v1"
        && parts[1].len() == 32
        && parts[1]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !parts[2].is_empty()
        && parts[2].bytes().all(|b| b.is_ascii_digit())
        && parts[3].len() == 64
        && parts[3].bytes().all(|b| b.is_ascii_hexdigit())
}

fuzz_target!(|input: &[u8]| {
    let mut data = Cursor(input);
    let mode = data.byte();
    let secret_len = usize::from(data.byte() % 80);
    let secret_bytes = data.take(secret_len).to_vec();
    let secret = Secret::new(secret_bytes.clone());
    let now = clock(data.u64(), mode);
    let mut v = Verifier::new(secret.clone());

    if mode & 1 == 0 {
        let body = data.0;
        if v.verify(body, now).is_ok() {
            assert!(looks_valid(body), "accepted {body:?}");
            assert_eq!(v.verify(body, now), Err(AuthError::Replay));
        }
        return;
    }

    let mut nonce = [0u8; 16];
    let got = data.take(16);
    nonce[..got.len()].copy_from_slice(got);
    // Timestamps around `now`, on both sides of the window's edges.
    let skew = data.u64() % (4 * window() + 1);
    let when = (now + 2 * window()).saturating_sub(skew);
    let proof = proof_with(&secret, &nonce, when);
    assert!(looks_valid(proof.as_bytes()), "{proof}");
    let fresh = when.abs_diff(now) <= window();

    // A changed byte never passes (tag digits may change case: same tag).
    let at = usize::from(data.byte()) % proof.len();
    let flip = data.byte().max(1);
    let mut tampered = proof.clone().into_bytes();
    tampered[at] ^= flip;
    let same_tag = at > proof.len() - 65
        && tampered[at].eq_ignore_ascii_case(&proof.as_bytes()[at])
        && tampered[at].is_ascii_alphabetic();
    if !same_tag {
        let r = v.verify(&tampered, now);
        assert!(
            r.is_err(),
            "tampered at {at} ({flip:#x}) passed: {tampered:?}"
        );
    }

    // Another secret never passes. HMAC pads keys of up to 64 bytes with
    // zeros, so "k" and "k\0" are the same key: those are not "another".
    let other = {
        let mut s = data.take(80).to_vec();
        s.push(0);
        s
    };
    let trim = |k: &[u8]| k.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let same_key = other.len() <= 64
        && secret_bytes.len() <= 64
        && other[..trim(&other)] == secret_bytes[..trim(&secret_bytes)];
    if !same_key {
        let mut w = Verifier::new(Secret::new(other));
        let r = w.verify(proof.as_bytes(), now);
        assert!(
            matches!(r, Err(AuthError::BadMac)),
            "another secret gave {r:?}"
        );
    }

    // The real one: once if fresh, never if stale.
    let first = v.verify(proof.as_bytes(), now);
    if fresh {
        assert_eq!(first, Ok(()), "{proof} at {now}");
        assert_eq!(v.verify(proof.as_bytes(), now), Err(AuthError::Replay));
        // Still refused until it could no longer pass anyway.
        let later = now + window();
        if when.abs_diff(later) <= window() {
            assert_eq!(v.verify(proof.as_bytes(), later), Err(AuthError::Replay));
        }
    } else {
        assert_eq!(first, Err(AuthError::Stale), "{proof} at {now}");
    }
});
