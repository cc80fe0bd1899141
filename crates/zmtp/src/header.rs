//! A frame's header (RFC 37, "Framing"): the flags octet and the size,
//! short (one octet) or long (eight). Shared by the framing of clear
//! traffic (`frame.rs`) and CURVE's MESSAGE boxes (`curve.rs`).

use bytes::{BufMut, BytesMut};

/// More frames of this message follow.
pub(super) const MORE: u8 = 0b001;
/// The size is eight octets, not one.
pub(super) const LONG: u8 = 0b010;
/// A command, not a message frame.
pub(super) const COMMAND: u8 = 0b100;

/// Writes one frame's flags and size.
pub(super) fn put_header(buf: &mut BytesMut, flags: u8, len: usize) {
    // One append each way: `put_u8` is an append (a capacity check and a
    // memcpy call) of its own, for every byte.
    if len > 255 {
        let mut head = [flags | LONG, 0, 0, 0, 0, 0, 0, 0, 0];
        head[1..].copy_from_slice(&(len as u64).to_be_bytes());
        buf.put_slice(&head);
    } else {
        buf.put_slice(&[flags, len as u8]);
    }
}
