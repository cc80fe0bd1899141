//! What a message carries: [`Body`], any bytes, borrowed or shared.
//!
//! A network send formats the body into its frame, so a borrow is all it
//! needs. An inproc send hands the receiver the body itself: a `Bytes`
//! larger than [`SHARED_ABOVE`] goes on as a reference count, anything
//! else is copied once. That is why the sends take a `Body` and not just
//! `AsRef<[u8]>`, which cannot tell a `Bytes` from a slice: a replication
//! primary that sends its log batches to a replica in the same process
//! moves them, at any size, without a copy.
//!
//! A small `Bytes` is copied all the same, as libzmq copies its very small
//! messages and counts references only to large ones: a reference count
//! is a locked add and a locked subtract on a line that every thread
//! sending the same buffer writes, and at 1000 requests in flight from
//! two threads that cost more than a copy up to 1 KiB (0.92x the round
//! trips at 64 B, 0.95x at 1 KiB; 1.21x at 4 KiB, 2.7x at 64 KiB;
//! design/PERFORMANCE.md, "Counters and bodies").

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// A message body: `&[u8]`, `[u8; N]`, `Vec<u8>`, `str`, `String`,
/// `Bytes` and the like, owned or by reference.
///
/// Implement it for a type of your own to send it without first turning
/// it into bytes; [`to_bytes`](Self::to_bytes) has a default (a copy).
pub trait Body {
    /// The bytes it carries.
    fn as_slice(&self) -> &[u8];

    /// The same bytes as a `Bytes` that can outlive `self`, for a message
    /// that stays in the process (inproc): a reference count for a
    /// `Bytes` over 1 KiB, a copy for anything else.
    fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_slice())
    }
}

impl<T: Body + ?Sized> Body for &T {
    fn as_slice(&self) -> &[u8] {
        (**self).as_slice()
    }
    fn to_bytes(&self) -> Bytes {
        (**self).to_bytes()
    }
}

/// The largest `Bytes` body an inproc send copies rather than shares (see
/// the module documentation).
pub(crate) const SHARED_ABOVE: usize = 1024;

impl Body for Bytes {
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn to_bytes(&self) -> Bytes {
        if self.len() > SHARED_ABOVE {
            self.clone()
        } else {
            Bytes::copy_from_slice(self)
        }
    }
}

/// Copied by `to_bytes`, as in `Cow` and `Box` below: sending takes a
/// shared reference, and the caller keeps what it owns.
macro_rules! body_as_ref {
    ($($t:ty),* $(,)?) => {
        $(impl Body for $t {
            fn as_slice(&self) -> &[u8] {
                self.as_ref()
            }
        })*
    };
}

body_as_ref!(
    [u8],
    Vec<u8>,
    Box<[u8]>,
    str,
    String,
    BytesMut,
    Cow<'_, [u8]>,
);

impl<const N: usize> Body for [u8; N] {
    fn as_slice(&self) -> &[u8] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared<B: Body>(b: B) -> Bytes {
        b.to_bytes()
    }

    /// A `Bytes` over the limit, by value or reference, is shared, not
    /// copied; the rest is copied and equal.
    #[test]
    fn large_bytes_are_shared_and_the_rest_copied() {
        let b = Bytes::from(vec![7u8; SHARED_ABOVE + 1]);
        assert_eq!(shared(&b).as_ptr(), b.as_ptr());
        assert_eq!(shared(b.clone()).as_ptr(), b.as_ptr());
        let small = Bytes::from(vec![7u8; SHARED_ABOVE]);
        let copy = shared(&small);
        assert_eq!(copy, small);
        assert_ne!(copy.as_ptr(), small.as_ptr());
        let v = vec![7u8; SHARED_ABOVE + 1];
        let copy = shared(&v);
        assert_eq!(copy, v);
        assert_ne!(copy.as_ptr(), v.as_ptr());
        assert_eq!(shared(b"ping").as_ref(), b"ping");
        assert_eq!(shared("ping").as_ref(), b"ping");
        assert_eq!(shared(String::from("ping")).as_ref(), b"ping");
        assert_eq!(shared(&b"ping"[..]).as_ref(), b"ping");
    }
}
