//! CURVE's cryptography: NaCl's box, secretbox and X25519, from `dryoc`'s
//! classic API (a pure-Rust port of libsodium's functions, with libsodium's
//! names and outputs). The one place this crate's primitives are called;
//! nothing here is hand-written crypto, only the seam and its checks.
//!
//! - [`BoxKey::new`]: `crypto_box_beforenm`, X25519 then HSalsa20: the
//!   precomputed key of a pair of CURVE keys. It refuses a public key of
//!   small order (the shared secret would be zero), as libsodium does.
//! - [`BoxKey`]'s [`Cipher::seal`] / [`Cipher::open`]:
//!   `crypto_box_detached_afternm_inplace` /
//!   `crypto_box_open_detached_afternm_inplace`: XSalsa20-Poly1305 in place
//!   with the tag apart, as CURVE lays a box out (tag, then ciphertext).
//! - [`SecretBoxKey`]: the same two functions under a key of our own, for
//!   the server's cookie. NaCl defines `crypto_box_afternm` as
//!   `crypto_secretbox` under the precomputed key, and dryoc's in-place
//!   secretbox is reached through them (a test checks the output against
//!   `crypto_secretbox_detached`).
//! - [`public_key()`](public_key): `crypto_scalarmult_base`.
//!
//! dryoc picks its code for the CPU at run time (its `std` feature: SSE2,
//! AVX2 or AVX-512 Salsa20 and Poly1305, BMI2 for X25519), whatever the
//! build's flags, so an application that embeds this crate gets the speed
//! of the repository's own build. Both keys are wiped when dropped.

use dryoc::classic::crypto_box;
use dryoc::classic::crypto_core;
use dryoc::constants;
use zeroize::Zeroizing;

/// Octets of a Curve25519 key, and of a box or secretbox key.
pub(crate) const KEY_LEN: usize = 32;
/// Octets of a box's nonce (XSalsa20's).
pub(crate) const NONCE_LEN: usize = 24;
/// Octets of a box's tag (Poly1305's).
pub(crate) const TAG_LEN: usize = 16;

/// A box's nonce.
pub(crate) type Nonce = [u8; NONCE_LEN];
/// A box's tag.
pub(crate) type Tag = [u8; TAG_LEN];

// The sizes above are NaCl's, as dryoc has them.
const _: () = {
    assert!(constants::CRYPTO_BOX_PUBLICKEYBYTES == KEY_LEN);
    assert!(constants::CRYPTO_BOX_SECRETKEYBYTES == KEY_LEN);
    assert!(constants::CRYPTO_BOX_BEFORENMBYTES == KEY_LEN);
    assert!(constants::CRYPTO_BOX_NONCEBYTES == NONCE_LEN);
    assert!(constants::CRYPTO_BOX_MACBYTES == TAG_LEN);
    assert!(constants::CRYPTO_SECRETBOX_KEYBYTES == KEY_LEN);
    assert!(constants::CRYPTO_SECRETBOX_NONCEBYTES == NONCE_LEN);
    assert!(constants::CRYPTO_SECRETBOX_MACBYTES == TAG_LEN);
    assert!(constants::CRYPTO_SCALARMULT_BYTES == KEY_LEN);
    assert!(constants::CRYPTO_SCALARMULT_SCALARBYTES == KEY_LEN);
};

/// The public key of `secret`: X25519 with the base point,
/// `crypto_scalarmult_base` (clamps the scalar, as every X25519 does).
/// Cannot fail: a clamped scalar times the base point is never the
/// identity.
pub(crate) fn public_key(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut public = [0u8; KEY_LEN];
    crypto_core::crypto_scalarmult_base(&mut public, secret);
    public
}

/// What a box seals and opens with: [`BoxKey`] and [`SecretBoxKey`].
pub(crate) trait Cipher {
    /// Encrypts `buf` in place under `nonce` and returns the tag.
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Tag;

    /// Checks `tag` over the ciphertext `buf` and decrypts it in place.
    /// `false` if the tag is wrong, and then `buf` is left as it was (the
    /// tag is checked, in constant time, before anything is decrypted).
    #[must_use]
    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool;
}

/// XSalsa20-Poly1305 in place under a 32-octet key: what both keys do.
fn seal_with(key: &[u8; KEY_LEN], nonce: &Nonce, buf: &mut [u8]) -> Tag {
    let mut tag = [0u8; TAG_LEN];
    crypto_box::crypto_box_detached_afternm_inplace(buf, &mut tag, nonce, key);
    tag
}

fn open_with(key: &[u8; KEY_LEN], nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool {
    crypto_box::crypto_box_open_detached_afternm_inplace(buf, tag, nonce, key).is_ok()
}

/// A precomputed box key (`crypto_box_beforenm`: HSalsa20 of the X25519
/// shared secret), for the boxes between one pair of keys. Wiped on drop.
pub(crate) struct BoxKey(Zeroizing<[u8; KEY_LEN]>);

/// A peer's public key is of small order: X25519 with it gives zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WeakKey;

impl BoxKey {
    /// The key between `public` (the peer's) and `secret` (ours).
    /// [`WeakKey`] if `public` is of small order (on the curve or its
    /// twist, in any encoding): the shared secret would be zero and the box
    /// readable by anyone. dryoc's `crypto_scalarmult` refuses an all-zero
    /// shared secret, compared in constant time, and that is its only
    /// error here; the tests check the known small-order points.
    pub(crate) fn new(public: &[u8; KEY_LEN], secret: &[u8; KEY_LEN]) -> Result<BoxKey, WeakKey> {
        // dryoc wipes its intermediate shared secret and returns the key by
        // value, which goes straight into the wiped-on-drop buffer.
        crypto_box::crypto_box_beforenm(public, secret)
            .map(|key| BoxKey(Zeroizing::new(key)))
            .map_err(|_| WeakKey)
    }
}

impl Cipher for BoxKey {
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Tag {
        seal_with(&self.0, nonce, buf)
    }

    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool {
        open_with(&self.0, nonce, buf, tag)
    }
}

/// A secretbox key (XSalsa20-Poly1305 under 32 octets of our own): the
/// cookie's. Wiped on drop.
pub(crate) struct SecretBoxKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretBoxKey {
    /// The key of these octets (random ones: the caller draws them).
    pub(crate) fn new(key: Zeroizing<[u8; KEY_LEN]>) -> SecretBoxKey {
        SecretBoxKey(key)
    }
}

impl Cipher for SecretBoxKey {
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Tag {
        seal_with(&self.0, nonce, buf)
    }

    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool {
        open_with(&self.0, nonce, buf, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NaCl's crypto_box test vector (tests/box.c and box2.c of NaCl and
    /// libsodium): Alice's secret, Bob's public key, the nonce, the
    /// message and the box. Checks the seam against NaCl's published
    /// output, independently of dryoc's own tests.
    const ALICE_SK: [u8; 32] = [
        0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66,
        0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9,
        0x2c, 0x2a,
    ];
    const BOB_PK: [u8; 32] = [
        0xde, 0x9e, 0xdb, 0x7d, 0x7b, 0x7d, 0xc1, 0xb4, 0xd3, 0x5b, 0x61, 0xc2, 0xec, 0xe4, 0x35,
        0x37, 0x3f, 0x83, 0x43, 0xc8, 0x5b, 0x78, 0x67, 0x4d, 0xad, 0xfc, 0x7e, 0x14, 0x6f, 0x88,
        0x2b, 0x4f,
    ];
    const ALICE_PK: [u8; 32] = [
        0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7,
        0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b,
        0x4e, 0x6a,
    ];
    /// The precomputed key of Alice and Bob: HSalsa20 of their X25519
    /// shared secret (NaCl's tests/core1.c, `firstkey`).
    const FIRSTKEY: [u8; 32] = [
        0x1b, 0x27, 0x55, 0x64, 0x73, 0xe9, 0x85, 0xd4, 0x62, 0xcd, 0x51, 0x19, 0x7a, 0x9a, 0x46,
        0xc7, 0x60, 0x09, 0x54, 0x9e, 0xac, 0x64, 0x74, 0xf2, 0x06, 0xc4, 0xee, 0x08, 0x44, 0xf6,
        0x83, 0x89,
    ];
    const NONCE: Nonce = [
        0x69, 0x69, 0x6e, 0xe9, 0x55, 0xb6, 0x2b, 0x73, 0xcd, 0x62, 0xbd, 0xa8, 0x75, 0xfc, 0x73,
        0xd6, 0x82, 0x19, 0xe0, 0x03, 0x6b, 0x7a, 0x0b, 0x37,
    ];
    const MESSAGE: [u8; 131] = [
        0xbe, 0x07, 0x5f, 0xc5, 0x3c, 0x81, 0xf2, 0xd5, 0xcf, 0x14, 0x13, 0x16, 0xeb, 0xeb, 0x0c,
        0x7b, 0x52, 0x28, 0xc5, 0x2a, 0x4c, 0x62, 0xcb, 0xd4, 0x4b, 0x66, 0x84, 0x9b, 0x64, 0x24,
        0x4f, 0xfc, 0xe5, 0xec, 0xba, 0xaf, 0x33, 0xbd, 0x75, 0x1a, 0x1a, 0xc7, 0x28, 0xd4, 0x5e,
        0x6c, 0x61, 0x29, 0x6c, 0xdc, 0x3c, 0x01, 0x23, 0x35, 0x61, 0xf4, 0x1d, 0xb6, 0x6c, 0xce,
        0x31, 0x4a, 0xdb, 0x31, 0x0e, 0x3b, 0xe8, 0x25, 0x0c, 0x46, 0xf0, 0x6d, 0xce, 0xea, 0x3a,
        0x7f, 0xa1, 0x34, 0x80, 0x57, 0xe2, 0xf6, 0x55, 0x6a, 0xd6, 0xb1, 0x31, 0x8a, 0x02, 0x4a,
        0x83, 0x8f, 0x21, 0xaf, 0x1f, 0xde, 0x04, 0x89, 0x77, 0xeb, 0x48, 0xf5, 0x9f, 0xfd, 0x49,
        0x24, 0xca, 0x1c, 0x60, 0x90, 0x2e, 0x52, 0xf0, 0xa0, 0x89, 0xbc, 0x76, 0x89, 0x70, 0x40,
        0xe0, 0x82, 0xf9, 0x37, 0x76, 0x38, 0x48, 0x64, 0x5e, 0x07, 0x05,
    ];
    const TAG: Tag = [
        0xf3, 0xff, 0xc7, 0x70, 0x3f, 0x94, 0x00, 0xe5, 0x2a, 0x7d, 0xfb, 0x4b, 0x3d, 0x33, 0x05,
        0xd9,
    ];
    /// The first 16 octets of the ciphertext.
    const CT_HEAD: [u8; 16] = [
        0x8e, 0x99, 0x3b, 0x9f, 0x48, 0x68, 0x12, 0x73, 0xc2, 0x96, 0x50, 0xba, 0x32, 0xfc, 0x76,
        0xce,
    ];

    #[test]
    fn nacl_box_vector() {
        assert_eq!(public_key(&ALICE_SK), ALICE_PK);
        let key = BoxKey::new(&BOB_PK, &ALICE_SK).unwrap();
        assert_eq!(*key.0, FIRSTKEY);
        let mut buf = MESSAGE;
        let tag = key.seal(&NONCE, &mut buf);
        assert_eq!(tag, TAG);
        assert_eq!(buf[..16], CT_HEAD);
        // A wrong tag leaves the ciphertext as it was.
        let sealed = buf;
        let mut bad = TAG;
        bad[0] ^= 1;
        assert!(!key.open(&NONCE, &mut buf, &bad));
        assert_eq!(buf, sealed);
        assert!(key.open(&NONCE, &mut buf, &tag));
        assert_eq!(buf, MESSAGE);
    }

    #[test]
    fn secretbox_round_trips_in_place() {
        let key = SecretBoxKey::new(Zeroizing::new([7; KEY_LEN]));
        let mut buf = *b"C' and s', 64 octets of them in the cookie......................";
        let plain = buf;
        let tag = key.seal(&NONCE, &mut buf);
        assert_ne!(buf, plain);
        // The same box as crypto_secretbox_detached's.
        let mut want = [0u8; 64];
        let mut want_tag = [0u8; TAG_LEN];
        dryoc::classic::crypto_secretbox::crypto_secretbox_detached(
            &mut want,
            &mut want_tag,
            &plain,
            &NONCE,
            &[7; KEY_LEN],
        )
        .unwrap();
        assert_eq!((buf, tag), (want, want_tag));
        let sealed = buf;
        assert!(!key.open(&[0; NONCE_LEN], &mut buf, &tag));
        assert_eq!(buf, sealed);
        assert!(key.open(&NONCE, &mut buf, &tag));
        assert_eq!(buf, plain);
        // An empty box has a tag too.
        let tag = key.seal(&NONCE, &mut []);
        assert!(key.open(&NONCE, &mut [], &tag));
    }

    #[test]
    fn small_order_keys_are_refused() {
        // p = 2^255 - 19, little endian, less `d`.
        let p_minus = |d: u8| {
            let mut k = [0xff; 32];
            k[0] = 0xed - d;
            k[31] = 0x7f;
            k
        };
        let with = |mut k: [u8; 32], at: usize, v: u8| {
            k[at] = v;
            k
        };
        // libsodium's blocklist (crypto_scalarmult/curve25519/ref10): 0, 1,
        // the two points of order 8, p - 1, and p and p + 1 (0 and 1 in a
        // non-canonical encoding).
        let order8a = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        let order8b = [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ];
        let mut weak = vec![
            [0u8; 32],
            with([0; 32], 0, 1),
            order8a,
            order8b,
            p_minus(1),
            p_minus(0),
            with(p_minus(0), 0, 0xee),
        ];
        // Bit 255 is ignored by X25519: the same points with it set.
        let high: Vec<_> = weak.iter().map(|k| with(*k, 31, k[31] | 0x80)).collect();
        weak.extend(high);
        for k in &weak {
            assert_eq!(BoxKey::new(k, &ALICE_SK).err(), Some(WeakKey), "{k:02x?}");
        }
        assert!(BoxKey::new(&ALICE_PK, &ALICE_SK).is_ok());
    }
}
