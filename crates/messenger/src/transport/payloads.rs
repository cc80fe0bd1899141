//! Payloads kept for resending, formatted into shared per-thread chunks.
//!
//! A tcp or ipc message is formatted once and the same bytes serve twice:
//! copied into the outbox for the write, and held in the peer's
//! unacknowledged set until its ACK. Formatted into a buffer of its own
//! (`wire::encode`) that cost two allocations per message: the buffer, and
//! the reference count the first clone of a `Bytes` built from a vector
//! allocates. Here small payloads are formatted into a chunk the thread
//! keeps and split off it: the chunk and its one reference count are
//! allocated once per many messages, and a clone is an atomic increment.
//!
//! The price is retention: a chunk is freed when the last payload in it
//! is, so one message held unacknowledged keeps its whole chunk, at most
//! [`CHUNK`] bytes. Not for long: at its first resend the unacknowledged
//! set copies a small payload into a buffer of its own
//! (`messenger_proto::pending::UNSHARE_MAX`), so a message whose ACK does
//! not come pins its chunk for one resend timeout at most, like every
//! message sent in that time. Larger payloads get a buffer of their own
//! from the start, as before.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use crate::proto::wire;

/// Bytes of one chunk.
const CHUNK: usize = 8 * 1024;

/// Payloads longer than this are formatted into a buffer of their own
/// (at most `pending::UNSHARE_MAX`, so every payload that may share a
/// chunk is unshared at its first resend).
const LARGEST: usize = 2 * 1024;
const _: () = assert!(LARGEST <= crate::proto::pending::UNSHARE_MAX);

thread_local! {
    /// What is left of the thread's current chunk.
    static SPARE: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `wire::encode`, into a shared chunk when the payload is small (see the
/// module documentation).
pub(crate) fn encode(msg_id: u64, src_cb: u64, dst_cb: u64, body: &[u8]) -> Bytes {
    let len = wire::encoded_len(msg_id, src_cb, dst_cb, body.len());
    if len > LARGEST {
        return wire::encode(msg_id, src_cb, dst_cb, body);
    }
    SPARE
        .try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.capacity() < len {
                *spare = BytesMut::with_capacity(CHUNK);
            }
            wire::encode_into(&mut spare, msg_id, src_cb, dst_cb, body);
            spare.split().freeze()
        })
        // A thread whose chunk is gone (it sends as it ends, from a
        // thread-local's destructor): a buffer of its own.
        .unwrap_or_else(|_| wire::encode(msg_id, src_cb, dst_cb, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_share_a_chunk_and_read_back_whole() {
        let a = encode(7, 3, 1, b"hello");
        let b = encode(8, 0, 1, &[b'x'; 100]);
        assert_eq!(&a[..], &wire::encode(7, 3, 1, b"hello")[..]);
        assert_eq!(&b[..], &wire::encode(8, 0, 1, &[b'x'; 100])[..]);
        // Clones are the same bytes; dropping one leaves the others intact.
        let c = b.clone();
        drop(b);
        assert_eq!(&c[..], &wire::encode(8, 0, 1, &[b'x'; 100])[..]);
        assert_eq!(&a[..], b"7-3-1-hello");
    }

    #[test]
    fn large_payloads_and_chunk_edges_are_exact() {
        let big = vec![b'y'; LARGEST + 1];
        assert_eq!(&encode(1, 2, 3, &big)[..], &wire::encode(1, 2, 3, &big)[..]);
        // Enough to cross several chunks, each payload intact.
        let body = vec![b'z'; LARGEST - 40];
        let kept: Vec<Bytes> = (0..20).map(|i| encode(i, 0, 1, &body)).collect();
        for (i, p) in kept.iter().enumerate() {
            assert_eq!(&p[..], &wire::encode(i as u64, 0, 1, &body)[..]);
        }
    }
}
