#![doc = include_str!("../README.md")]
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
