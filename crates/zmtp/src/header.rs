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
    if len > 255 {
        buf.put_u8(flags | LONG);
        buf.put_u64(len as u64);
    } else {
        buf.put_u8(flags);
        buf.put_u8(len as u8);
    }
}
