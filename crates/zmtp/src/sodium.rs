//! libsodium, through `libsodium-sys-stable` (which builds the libsodium
//! 1.0.22 source it ships): the crate's only `unsafe` code, and the only
//! place its cryptography comes from. libzmq's CURVE uses the same library.
//!
//! Five primitives, each a libsodium function with its own safety comment:
//!
//! - [`ready`]: `sodium_init`, once per process (thread-safe, behind a
//!   [`OnceLock`]); its failure is an error every caller returns, never a
//!   panic.
//! - [`BoxKey::new`]: `crypto_box_beforenm`, X25519 then HSalsa20: the
//!   precomputed key of a pair of CURVE keys. It refuses a public key of
//!   small order (the shared secret would be zero).
//! - [`BoxKey::seal`] / [`BoxKey::open`]: `crypto_box_detached_afternm` /
//!   `crypto_box_open_detached_afternm` in place: XSalsa20-Poly1305 with
//!   the tag apart, as CURVE lays a box out (tag, then ciphertext).
//! - [`SecretBoxKey::seal`] / [`SecretBoxKey::open`]:
//!   `crypto_secretbox_detached` / `crypto_secretbox_open_detached`, for
//!   the server's cookie.
//! - [`public_key()`](public_key): `crypto_scalarmult_base`.
//!
//! A [`BoxKey`] or [`SecretBoxKey`] is made only once [`ready`] succeeded,
//! so holding one proves libsodium is initialised: the per-frame calls do
//! not check again. Both keys are wiped when dropped.

#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::sync::OnceLock;

use libsodium_sys as ffi;
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

// The sizes above are libsodium's own.
const _: () = {
    assert!(ffi::crypto_box_PUBLICKEYBYTES as usize == KEY_LEN);
    assert!(ffi::crypto_box_SECRETKEYBYTES as usize == KEY_LEN);
    assert!(ffi::crypto_box_BEFORENMBYTES as usize == KEY_LEN);
    assert!(ffi::crypto_box_NONCEBYTES as usize == NONCE_LEN);
    assert!(ffi::crypto_box_MACBYTES as usize == TAG_LEN);
    assert!(ffi::crypto_secretbox_KEYBYTES as usize == KEY_LEN);
    assert!(ffi::crypto_secretbox_NONCEBYTES as usize == NONCE_LEN);
    assert!(ffi::crypto_secretbox_MACBYTES as usize == TAG_LEN);
    assert!(ffi::crypto_scalarmult_BYTES as usize == KEY_LEN);
    assert!(ffi::crypto_scalarmult_SCALARBYTES as usize == KEY_LEN);
};

/// Why a key could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SodiumError {
    /// `sodium_init` failed (it takes a lock; not seen in practice).
    Unavailable,
    /// The public key is of small order: X25519 with it gives zero.
    WeakKey,
}

/// Initialises libsodium, once per process; every later call returns the
/// first one's outcome. Every libsodium call here comes after it; only
/// [`public_key`] goes on if it failed (see there).
///
/// One failure is not an error but an abort, inside libsodium: a system
/// with no random source at all (getrandom(2) refused and no readable
/// /dev/urandom: a bare chroot, a strict seccomp filter), where
/// `sodium_init` calls `sodium_misuse()`. That is the host's setup, met
/// at the first handshake or key derived, never something a peer can
/// cause; the OS generator the keys come from (the getrandom crate) fails
/// there too.
pub(crate) fn ready() -> Result<(), SodiumError> {
    static INIT: OnceLock<bool> = OnceLock::new();
    let ok = *INIT.get_or_init(|| {
        // SAFETY: no arguments. libsodium documents sodium_init as safe to
        // call more than once and from several threads (it takes its own
        // lock); the OnceLock makes it once anyway. It returns 0 (done), 1
        // (done before) or -1 (its lock failed).
        unsafe { ffi::sodium_init() >= 0 }
    });
    if ok {
        Ok(())
    } else {
        Err(SodiumError::Unavailable)
    }
}

/// The public key of `secret`: X25519 with the base point, libsodium's
/// `crypto_scalarmult_base` (clamps the scalar, as every X25519 does).
///
/// This one call does not need [`ready`] and so cannot fail: in libsodium
/// 1.0.22 `crypto_scalarmult_curve25519_base` always runs the portable
/// ref10 code (what `sodium_init` picks by CPU serves the variable-base
/// `crypto_scalarmult` only), takes no lock and draws no randomness. That
/// keeps `CurveSecretKey::public_key` and `CurveKeyPair::from_secret`
/// infallible. [`ready`] is still tried first, so a process that derives a
/// key before its first handshake initialises libsodium here.
pub(crate) fn public_key(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let _ = ready();
    let mut public = [0u8; KEY_LEN];
    // SAFETY: `public` is writable for KEY_LEN (= crypto_scalarmult_BYTES)
    // octets and `secret` readable for KEY_LEN (= _SCALARBYTES); they do
    // not overlap. It returns 0 always (a clamped scalar times the base
    // point, of prime order, is never the identity), hence the value is
    // not read.
    unsafe {
        ffi::crypto_scalarmult_base(public.as_mut_ptr(), secret.as_ptr());
    }
    public
}

/// The length of a buffer as libsodium takes it.
fn c_len(buf: &[u8]) -> Option<std::ffi::c_ulonglong> {
    std::ffi::c_ulonglong::try_from(buf.len()).ok()
}

/// What a box seals and opens with: [`BoxKey`] and [`SecretBoxKey`].
pub(crate) trait Cipher {
    /// Encrypts `buf` in place under `nonce` and returns the tag; `None`
    /// if libsodium refuses (not seen in practice), and then `buf` is not
    /// to be sent.
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Option<Tag>;

    /// Checks `tag` over the ciphertext `buf` and decrypts it in place.
    /// `false` if the tag is wrong, and then `buf` is left as it was.
    #[must_use]
    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool;
}

/// A precomputed box key (`crypto_box_beforenm`: HSalsa20 of the X25519
/// shared secret), for the boxes between one pair of keys. Wiped on drop.
pub(crate) struct BoxKey(Zeroizing<[u8; KEY_LEN]>);

impl BoxKey {
    /// The key between `public` (the peer's) and `secret` (ours).
    /// [`SodiumError::WeakKey`] if `public` is of small order: libsodium
    /// refuses it (the shared secret would be zero, the box readable by
    /// anyone).
    pub(crate) fn new(
        public: &[u8; KEY_LEN],
        secret: &[u8; KEY_LEN],
    ) -> Result<BoxKey, SodiumError> {
        ready()?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        // SAFETY: `key` is writable for KEY_LEN (= crypto_box_BEFORENMBYTES)
        // octets, `public` and `secret` readable for KEY_LEN
        // (= crypto_box_PUBLICKEYBYTES, _SECRETKEYBYTES); the three do not
        // overlap. libsodium wipes its intermediate shared secret. It
        // returns -1, having written nothing usable, for a key of small
        // order.
        let rc =
            unsafe { ffi::crypto_box_beforenm(key.as_mut_ptr(), public.as_ptr(), secret.as_ptr()) };
        if rc == 0 {
            Ok(BoxKey(key))
        } else {
            Err(SodiumError::WeakKey)
        }
    }
}

impl Cipher for BoxKey {
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Option<Tag> {
        let len = c_len(buf)?;
        let mut tag = [0u8; TAG_LEN];
        let p = buf.as_mut_ptr();
        // SAFETY: `p` is `buf`, readable and writable for `len` octets;
        // libsodium documents the detached functions as allowing the
        // message and ciphertext to be the same buffer (in place). `tag`
        // is writable for TAG_LEN (= crypto_box_MACBYTES), `nonce`
        // readable for NONCE_LEN (= _NONCEBYTES), the key for KEY_LEN
        // (= _BEFORENMBYTES); none overlaps `buf` or another.
        let rc = unsafe {
            ffi::crypto_box_detached_afternm(
                p,
                tag.as_mut_ptr(),
                p.cast_const(),
                len,
                nonce.as_ptr(),
                self.0.as_ptr(),
            )
        };
        (rc == 0).then_some(tag)
    }

    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool {
        let Some(len) = c_len(buf) else {
            return false;
        };
        let p = buf.as_mut_ptr();
        // SAFETY: as in `seal`: `p` is `buf`, `len` octets, decrypted in
        // place (allowed by libsodium); `tag`, `nonce` and the key are
        // readable for TAG_LEN, NONCE_LEN and KEY_LEN octets and overlap
        // nothing. libsodium checks the tag before it writes: on -1 `buf`
        // is untouched.
        let rc = unsafe {
            ffi::crypto_box_open_detached_afternm(
                p,
                p.cast_const(),
                tag.as_ptr(),
                len,
                nonce.as_ptr(),
                self.0.as_ptr(),
            )
        };
        rc == 0
    }
}

/// A secretbox key (XSalsa20-Poly1305 under 32 octets of our own): the
/// cookie's. Wiped on drop.
pub(crate) struct SecretBoxKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretBoxKey {
    /// The key of these octets (random ones: the caller draws them).
    pub(crate) fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<SecretBoxKey, SodiumError> {
        ready()?;
        Ok(SecretBoxKey(key))
    }
}

impl Cipher for SecretBoxKey {
    fn seal(&self, nonce: &Nonce, buf: &mut [u8]) -> Option<Tag> {
        let len = c_len(buf)?;
        let mut tag = [0u8; TAG_LEN];
        let p = buf.as_mut_ptr();
        // SAFETY: `p` is `buf`, readable and writable for `len` octets,
        // encrypted in place (allowed by libsodium's detached functions);
        // `tag` is writable for TAG_LEN (= crypto_secretbox_MACBYTES),
        // `nonce` and the key readable for NONCE_LEN and KEY_LEN
        // (= _NONCEBYTES, _KEYBYTES); none overlaps another.
        let rc = unsafe {
            ffi::crypto_secretbox_detached(
                p,
                tag.as_mut_ptr(),
                p.cast_const(),
                len,
                nonce.as_ptr(),
                self.0.as_ptr(),
            )
        };
        (rc == 0).then_some(tag)
    }

    fn open(&self, nonce: &Nonce, buf: &mut [u8], tag: &Tag) -> bool {
        let Some(len) = c_len(buf) else {
            return false;
        };
        let p = buf.as_mut_ptr();
        // SAFETY: as in `seal`, decrypting in place; `tag`, `nonce` and
        // the key are readable for TAG_LEN, NONCE_LEN and KEY_LEN octets.
        // On -1 (wrong tag) `buf` is untouched.
        let rc = unsafe {
            ffi::crypto_secretbox_open_detached(
                p,
                p.cast_const(),
                tag.as_ptr(),
                len,
                nonce.as_ptr(),
                self.0.as_ptr(),
            )
        };
        rc == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NaCl's crypto_box test vector (tests/box.c and box2.c of NaCl and
    /// libsodium): Alice's secret, Bob's public key, the nonce, the
    /// message and the box. Checks the bindings, not libsodium.
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
        let mut buf = MESSAGE;
        let tag = key.seal(&NONCE, &mut buf).unwrap();
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
        let key = SecretBoxKey::new(Zeroizing::new([7; KEY_LEN])).unwrap();
        let mut buf = *b"C' and s', 64 octets of them in the cookie......................";
        let plain = buf;
        let tag = key.seal(&NONCE, &mut buf).unwrap();
        assert_ne!(buf, plain);
        let sealed = buf;
        assert!(!key.open(&[0; NONCE_LEN], &mut buf, &tag));
        assert_eq!(buf, sealed);
        assert!(key.open(&NONCE, &mut buf, &tag));
        assert_eq!(buf, plain);
        // An empty box has a tag too.
        let tag = key.seal(&NONCE, &mut []).unwrap();
        assert!(key.open(&NONCE, &mut [], &tag));
    }

    #[test]
    fn small_order_keys_are_refused() {
        let one = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        // A point of order 8 (libsodium's test/default/box.c).
        let order8 = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        for weak in [[0u8; 32], one, order8] {
            assert_eq!(
                BoxKey::new(&weak, &ALICE_SK).err(),
                Some(SodiumError::WeakKey)
            );
        }
        assert!(BoxKey::new(&ALICE_PK, &ALICE_SK).is_ok());
    }
}
