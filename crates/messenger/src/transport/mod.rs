//! Moving bytes: tcp and ipc streams, a connection's bounded send buffer,
//! a peer's unacknowledged window, and the wake-up of senders waiting for
//! room. Nothing here knows about callbacks, server loops or the runtime.
//!
//! ```text
//! stream.rs      tcp/ipc streams; bind and dial
//! outbox.rs      a connection's send buffer and its write role
//! payloads.rs    payloads kept for resending, in shared per-thread chunks
//! unacked.rs     a peer's unacknowledged messages and its window
//! room.rs        senders waiting for room, and their wake-up
//! ```

pub(crate) mod outbox;
pub(crate) mod payloads;
pub(crate) mod room;
pub(crate) mod stream;
pub(crate) mod unacked;
