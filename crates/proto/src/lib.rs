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
//! error.rs      why a payload or a message's frames were refused
//! ```
//!
//! Time is `std::time::Instant`, passed in; the `messenger` crate's runtime
//! keeps the clock and the tasks.
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod callbacks;
pub mod deadlines;
pub mod dedup;
mod error;
pub mod pending;
pub mod process;
pub mod wire;

pub use error::{FrameError, ParseError};
