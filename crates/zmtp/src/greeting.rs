//! The 64-byte ZMTP 3.x greeting (RFC 37, "Formal Grammar"):
//!
//! ```text
//! greeting  = signature version mechanism as-server filler
//! signature = %xFF padding %x7F     ; padding: 8 octets, not significant
//! version   = %x03 %x01             ; we send 3.1; accept any 3.x and above
//! mechanism = 20 octets, null padded
//! as-server = %x00 | %x01
//! filler    = 31 %x00
//! ```
//!
//! We send the whole greeting at once (RFC 37 allows it; a libzmq peer that
//! sends its signature first and waits for ours is answered at once).
//! The padding is not checked (libzmq puts its identity length there), and
//! neither is the filler.

use std::fmt;

use super::ZmtpError;

/// A mechanism name as the greeting carries it: 20 octets, null padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MechanismName([u8; 20]);

impl MechanismName {
    /// No security.
    pub const NULL: MechanismName = MechanismName::new(b"NULL");
    /// CurveZMQ (RFC 25, RFC 26).
    pub const CURVE: MechanismName = MechanismName::new(b"CURVE");

    const fn new(name: &[u8]) -> Self {
        let mut padded = [0u8; 20];
        let mut i = 0;
        while i < name.len() {
            padded[i] = name[i];
            i += 1;
        }
        MechanismName(padded)
    }

    /// Reads a name from the greeting: 1 to 20 of `A-Z 0-9 - _ . +`, then
    /// zeros only.
    pub fn from_padded(padded: [u8; 20]) -> Option<Self> {
        let len = padded.iter().position(|&b| b == 0).unwrap_or(20);
        let (name, rest) = padded.split_at(len);
        let valid = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.+".contains(b);
        (len > 0 && name.iter().all(valid) && rest.iter().all(|&b| b == 0))
            .then_some(MechanismName(padded))
    }

    /// The 20 octets as sent.
    pub fn as_padded(&self) -> &[u8; 20] {
        &self.0
    }

    /// The name without padding.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(20);
        std::str::from_utf8(&self.0[..len]).unwrap_or("?")
    }
}

impl fmt::Debug for MechanismName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MechanismName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;

/// A peer's greeting, as far as it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Major version (3 or more).
    pub major: u8,
    /// Minor version: PING and PONG exist from 3.1 on.
    pub minor: u8,
    /// The security mechanism the peer speaks.
    pub mechanism: MechanismName,
    /// The as-server flag (significant for CURVE and PLAIN only).
    pub as_server: bool,
}

impl Greeting {
    /// Our greeting: version 3.1, `mechanism`, `as_server`.
    pub fn encode(mechanism: MechanismName, as_server: bool) -> [u8; GREETING_LEN] {
        let mut g = [0u8; GREETING_LEN];
        g[0] = 0xFF;
        g[9] = 0x7F;
        g[10] = 3;
        g[11] = 1;
        g[12..32].copy_from_slice(mechanism.as_padded());
        g[32] = u8::from(as_server);
        g
    }

    /// Checks a greeting's first `have.len()` bytes as soon as they arrive,
    /// so garbage (an HTTP request, a ZMTP 2.0 peer) is refused without
    /// waiting for 64 bytes that may never come.
    pub fn check_prefix(have: &[u8]) -> Result<(), ZmtpError> {
        if have.first().is_some_and(|&b| b != 0xFF) {
            return Err(ZmtpError::Greeting(
                "the signature does not start with 0xFF",
            ));
        }
        // Bit 0 of the 10th octet is 0 in ZMTP 1.0's identity frame header.
        if have.get(9).is_some_and(|&b| b != 0x7F) {
            return Err(ZmtpError::Greeting("the signature does not end with 0x7F"));
        }
        if have.get(10).is_some_and(|&major| major < 3) {
            return Err(ZmtpError::Greeting(
                "the peer speaks ZMTP 1.0 or 2.0; 3.0 or later is required",
            ));
        }
        Ok(())
    }

    /// Parses a complete greeting.
    pub fn parse(bytes: &[u8; GREETING_LEN]) -> Result<Greeting, ZmtpError> {
        Self::check_prefix(bytes)?;
        let mut name = [0u8; 20];
        name.copy_from_slice(&bytes[12..32]);
        let mechanism = MechanismName::from_padded(name)
            .ok_or(ZmtpError::Greeting("the mechanism name is not valid"))?;
        let as_server = match bytes[32] {
            0 => false,
            1 => true,
            _ => return Err(ZmtpError::Greeting("as-server is neither 0 nor 1")),
        };
        Ok(Greeting {
            major: bytes[10],
            minor: bytes[11],
            mechanism,
            as_server,
        })
    }

    /// Whether the peer speaks 3.1 or later (PING and PONG).
    pub fn has_heartbeats(&self) -> bool {
        self.major > 3 || self.minor >= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_parses_back() {
        let g = Greeting::encode(MechanismName::NULL, false);
        assert_eq!(&g[12..16], b"NULL");
        let p = Greeting::parse(&g).unwrap();
        assert_eq!((p.major, p.minor), (3, 1));
        assert_eq!(p.mechanism, MechanismName::NULL);
        assert!(!p.as_server);
        assert!(p.has_heartbeats());
    }

    #[test]
    fn libzmq_padding_and_3_0_are_accepted() {
        let mut g = Greeting::encode(MechanismName::NULL, false);
        // libzmq puts its identity length + 1 in the padding.
        g[1..9].copy_from_slice(&6u64.to_be_bytes());
        g[11] = 0;
        let p = Greeting::parse(&g).unwrap();
        assert!(!p.has_heartbeats(), "3.0 has no PING");
        g[10] = 4;
        assert!(Greeting::parse(&g).unwrap().has_heartbeats());
    }

    #[test]
    fn garbage_is_refused_early() {
        assert!(Greeting::check_prefix(b"GET / HTTP/1.1").is_err());
        assert!(Greeting::check_prefix(b"\xff").is_ok());
        let mut v2 = [0u8; 11];
        v2[0] = 0xFF;
        v2[9] = 0x7F;
        v2[10] = 1;
        assert!(Greeting::check_prefix(&v2).is_err());
        let mut v1 = v2;
        v1[9] = 0x00;
        assert!(Greeting::check_prefix(&v1[..10]).is_err());
        let mut g = Greeting::encode(MechanismName::NULL, false);
        g[32] = 2;
        assert!(Greeting::parse(&g).is_err());
        g[32] = 0;
        g[12] = b'n';
        assert!(
            Greeting::parse(&g).is_err(),
            "lower case is not a mechanism"
        );
    }
}
