//! The messenger protocol without I/O: NoisePage's payload
//! `{msg_id}-{src_cb}-{dst_cb}-{body}`, the callback table, the duplicate
//! window, the unacknowledged set, deadlines, ProcessMessage as one pure
//! function, and the shared-secret proof. Time is passed in; nothing here
//! owns a socket or a task.
//!
//! ```text
//! wire.rs       parse and encode payloads; the builtin callback ids
//! callbacks.rs  the slab-indexed MSC table
//! dedup.rs      the per-session duplicate window
//! pending.rs    messages awaiting their ACK, and their resend times
//! deadlines.rs  a timer wheel of request deadlines
//! process.rs    ProcessMessage: builtins, then the MSC, then the SLC
//! auth.rs       the shared-secret proof a connection's first message carries
//! ```

pub(crate) mod auth;
pub(crate) mod callbacks;
pub(crate) mod deadlines;
pub(crate) mod dedup;
pub(crate) mod pending;
pub(crate) mod process;
pub(crate) mod wire;
