//! CURVE keys (RFC 26): Curve25519 public and secret keys of 32 octets,
//! and their Z85 text form (RFC 32), 40 characters, as libzmq's
//! `zmq_curve_keypair` and `ZMQ_CURVE_*KEY` options use them.
//!
//! A secret key never shows itself: its `Debug` and `Display` print a
//! placeholder, its Z85 text is handed out in a [`Zeroizing`] string, and
//! its bytes are wiped when it is dropped.

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, Zeroizing};

use super::crypto;

/// Octets of a Curve25519 key.
pub const CURVE_KEY_LEN: usize = 32;

/// Characters of a key in Z85 (RFC 32: 5 characters for every 4 octets).
pub const CURVE_KEY_Z85_LEN: usize = 40;

/// Why a key could not be read or made. The variants never carry a secret
/// key's octets or characters, so they may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CurveKeyError {
    /// A Z85 key is 40 characters; this text has another length.
    #[error("a Z85 key is {CURVE_KEY_Z85_LEN} characters, not {0}")]
    Z85Length(usize),
    /// A character outside Z85's alphabet, at this position.
    #[error("character {0} is not in the Z85 alphabet")]
    Z85Char(usize),
    /// Five characters (starting at this position) encode more than 2^32-1.
    #[error("the 5 characters at {0} are not a valid Z85 group")]
    Z85Group(usize),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Rng(getrandom::Error),
}

/// Decodes a 40-character Z85 key. The intermediate buffer is wiped, as it
/// may hold a secret key.
fn z85_decode(text: &str) -> Result<[u8; CURVE_KEY_LEN], CurveKeyError> {
    if text.len() != CURVE_KEY_Z85_LEN {
        return Err(CurveKeyError::Z85Length(text.len()));
    }
    let mut decoded = Zeroizing::new(z85::decode(text).map_err(|e| match e {
        z85::DecodeError::InvalidByte(at, _) => CurveKeyError::Z85Char(at),
        z85::DecodeError::InvalidChunk(at) => CurveKeyError::Z85Group(at),
        z85::DecodeError::InvalidLength(len) => CurveKeyError::Z85Length(len),
        z85::DecodeError::InvalidTail => CurveKeyError::Z85Group(CURVE_KEY_Z85_LEN - 5),
    })?);
    // The z85 crate reads a last group that starts with '#' as its own
    // padding extension and yields fewer octets. In RFC 32 such a group
    // is over 2^32-1 ('#' is 84, and 84 * 85^4 > 2^32-1): refuse it.
    let key = <[u8; CURVE_KEY_LEN]>::try_from(decoded.as_slice())
        .map_err(|_| CurveKeyError::Z85Group(CURVE_KEY_Z85_LEN - 5));
    decoded.zeroize();
    key
}

/// A Curve25519 public key: a server's, that its clients must know, or a
/// client's, that the server may authorise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurvePublicKey(
    /// The 32 octets as X25519 and the wire carry them.
    [u8; CURVE_KEY_LEN],
);

impl CurvePublicKey {
    /// The key from its 32 octets.
    pub const fn from_bytes(bytes: [u8; CURVE_KEY_LEN]) -> Self {
        CurvePublicKey(bytes)
    }

    /// Its 32 octets.
    pub const fn as_bytes(&self) -> &[u8; CURVE_KEY_LEN] {
        &self.0
    }

    /// Reads the 40-character Z85 form (as `zmq_curve_keypair` prints it).
    pub fn from_z85(text: &str) -> Result<Self, CurveKeyError> {
        z85_decode(text).map(CurvePublicKey)
    }

    /// The 40-character Z85 form.
    pub fn to_z85(&self) -> String {
        z85::encode(self.0)
    }
}

impl fmt::Debug for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurvePublicKey({})", self.to_z85())
    }
}

impl fmt::Display for CurvePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl FromStr for CurvePublicKey {
    type Err = CurveKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_z85(s)
    }
}

/// A Curve25519 secret key. Its octets are wiped when it is dropped and
/// never printed: `Debug` and `Display` show a placeholder.
#[derive(Clone)]
pub struct CurveSecretKey(
    /// The 32 octets, wiped on drop.
    Zeroizing<[u8; CURVE_KEY_LEN]>,
);

impl CurveSecretKey {
    /// The key from its 32 octets (any 32 octets are a key; X25519 clamps
    /// them when it uses them).
    pub fn from_bytes(bytes: [u8; CURVE_KEY_LEN]) -> Self {
        CurveSecretKey(Zeroizing::new(bytes))
    }

    /// Reads the 40-character Z85 form. Errors name a position, never a
    /// character of the key.
    pub fn from_z85(text: &str) -> Result<Self, CurveKeyError> {
        let mut bytes = z85_decode(text)?;
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The 40-character Z85 form, for storing the key where the
    /// application keeps its secrets; wiped when dropped.
    pub fn to_z85(&self) -> Zeroizing<String> {
        Zeroizing::new(z85::encode(*self.0))
    }

    /// Its 32 octets; handle with the care a secret deserves.
    pub fn expose_bytes(&self) -> &[u8; CURVE_KEY_LEN] {
        &self.0
    }

    /// The public key that goes with this secret key: X25519 with the base
    /// point, `crypto_scalarmult_base` (as `zmq_curve_public`).
    pub fn public_key(&self) -> CurvePublicKey {
        CurvePublicKey(crypto::public_key(&self.0))
    }
}

impl fmt::Debug for CurveSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurveSecretKey(<secret>)")
    }
}

impl fmt::Display for CurveSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A permanent key pair: a CURVE server's (its clients are given the
/// public half) or a CURVE client's (the server sees the public half and
/// may authorise it). The halves always match: the public key is derived
/// from the secret one.
#[derive(Clone, Debug)]
pub struct CurveKeyPair {
    /// Derived from `secret`, kept so it is computed once.
    public: CurvePublicKey,
    /// Never printed; wiped on drop.
    secret: CurveSecretKey,
}

impl CurveKeyPair {
    /// A new random key pair: 32 octets from the operating system's
    /// generator and their public key (`crypto_scalarmult_base`), as
    /// `zmq_curve_keypair` (whose `crypto_box_keypair` does the same with
    /// libsodium's generator).
    pub fn generate() -> Result<Self, CurveKeyError> {
        let mut bytes = Zeroizing::new([0u8; CURVE_KEY_LEN]);
        getrandom::fill(bytes.as_mut()).map_err(CurveKeyError::Rng)?;
        Ok(Self::from_secret(CurveSecretKey(bytes)))
    }

    /// The pair of a known secret key (its public key is derived).
    pub fn from_secret(secret: CurveSecretKey) -> Self {
        CurveKeyPair {
            public: secret.public_key(),
            secret,
        }
    }

    /// The public half.
    pub fn public(&self) -> &CurvePublicKey {
        &self.public
    }

    /// The secret half.
    pub fn secret(&self) -> &CurveSecretKey {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libzmq's documented test keys (doc/zmq_curve.adoc, also used by its
    /// tests/test_heartbeats.cpp): secret -> public must match.
    const CLIENT_PUBLIC: &str = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
    const CLIENT_SECRET: &str = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
    const SERVER_PUBLIC: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    const SERVER_SECRET: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

    #[test]
    fn rfc32_test_vector() {
        // RFC 32's test case: these 8 octets are "HelloWorld".
        let bytes = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(z85::encode(bytes), "HelloWorld");
        // And a key of four copies of them decodes back.
        let key = bytes.repeat(4);
        let text = "HelloWorld".repeat(4);
        let public = CurvePublicKey::from_z85(&text).unwrap();
        assert_eq!(&public.as_bytes()[..], &key[..]);
        assert_eq!(public.to_z85(), text);
    }

    #[test]
    fn libzmq_keys_round_trip_and_derive() {
        for (public, secret) in [
            (CLIENT_PUBLIC, CLIENT_SECRET),
            (SERVER_PUBLIC, SERVER_SECRET),
        ] {
            let p = CurvePublicKey::from_z85(public).unwrap();
            let s = CurveSecretKey::from_z85(secret).unwrap();
            assert_eq!(p.to_z85(), public);
            assert_eq!(s.to_z85().as_str(), secret);
            assert_eq!(s.public_key(), p, "libzmq derives {public}");
            assert_eq!(public.parse::<CurvePublicKey>(), Ok(p));
            let pair = CurveKeyPair::from_secret(s);
            assert_eq!(*pair.public(), p);
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = CurveSecretKey::from_z85(SERVER_SECRET).unwrap();
        let pair = CurveKeyPair::from_secret(s.clone());
        for shown in [
            format!("{s:?}"),
            format!("{s}"),
            format!("{pair:?}"),
            format!("{pair:#?}"),
        ] {
            assert!(!shown.contains(SERVER_SECRET), "{shown}");
            assert!(!shown.contains("JTKVSB"), "{shown}");
        }
        // The public half does show, in Z85.
        assert!(format!("{pair:?}").contains(SERVER_PUBLIC));
        // Errors name positions only.
        let mut bad = SERVER_SECRET.to_string();
        bad.replace_range(3..4, "~");
        let e = CurveSecretKey::from_z85(&bad).unwrap_err();
        assert_eq!(e, CurveKeyError::Z85Char(3));
        assert!(!e.to_string().contains('~'));
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(
            CurvePublicKey::from_z85(&SERVER_PUBLIC[..39]),
            Err(CurveKeyError::Z85Length(39))
        );
        assert_eq!(
            CurvePublicKey::from_z85(""),
            Err(CurveKeyError::Z85Length(0))
        );
        // A last group starting with '#' is the z85 crate's padding, and
        // over 2^32-1 in RFC 32.
        let padded = format!("{}#abcd", &SERVER_PUBLIC[..35]);
        assert_eq!(
            CurvePublicKey::from_z85(&padded),
            Err(CurveKeyError::Z85Group(35))
        );
        // '#' is otherwise an ordinary Z85 character (84).
        let hash =
            CurvePublicKey::from_bytes(std::array::from_fn(|i| if i % 4 == 3 { 84 } else { 0 }));
        assert_eq!(hash.to_z85(), "0000#".repeat(8));
        assert_eq!(CurvePublicKey::from_z85(&hash.to_z85()), Ok(hash));
        // "%%%%%" is 85^5-1, over 2^32-1.
        let over = format!("%%%%%{}", &SERVER_PUBLIC[5..]);
        assert_eq!(
            CurvePublicKey::from_z85(&over),
            Err(CurveKeyError::Z85Group(0))
        );
        // Multi-byte characters: 40 bytes but not Z85.
        let wide = "é".repeat(20);
        assert!(CurvePublicKey::from_z85(&wide).is_err());
        assert_eq!(
            CurvePublicKey::from_z85(&"é".repeat(40)),
            Err(CurveKeyError::Z85Length(80))
        );
    }

    #[test]
    fn generated_pairs_differ_and_match() {
        let a = CurveKeyPair::generate().unwrap();
        let b = CurveKeyPair::generate().unwrap();
        assert_ne!(a.public(), b.public());
        assert_eq!(a.secret().public_key(), *a.public());
        let back = CurveSecretKey::from_z85(&a.secret().to_z85()).unwrap();
        assert_eq!(back.public_key(), *a.public());
    }
}
