//! Callback-driven messaging between processes and components over ZeroMQ
//! endpoints (`tcp://`, `ipc://`, `inproc://`), speaking NoisePage's
//! messenger protocol so Python peers on libzmq interoperate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use messenger::{Endpoint, Messenger, wire};
//!
//! let server = Messenger::new("server")?;
//! let bound = server
//!     .listen_for_connection(&"tcp://127.0.0.1:0".parse()?, "server", |msg: messenger::Incoming, r: messenger::Responder| {
//!         let _ = r.try_reply(&msg.body);
//!     })
//!     .await?;
//!
//! let client = Messenger::new("client")?;
//! let conn = client.make_connection(&bound.endpoint).await?;
//! let reply = client.request(conn, wire::ECHO, b"hello").await?;
//! assert_eq!(&reply.body[..], b"hello");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod callbacks;
mod config;
pub mod deadlines;
pub mod dedup;
mod dispatch;
pub mod endpoint;
pub mod error;
mod messenger;
pub mod pending;
mod process;
mod server_loop;
mod shard;
mod stats;
mod transport;
pub mod typed;
pub mod wire;
pub mod zmtp;

pub use config::{Config, Heartbeat};
pub use dispatch::Reply;
pub use endpoint::Endpoint;
pub use error::{
    BindError, ConnectError, EndpointError, FrameError, ParseError, RequestError, SendError,
};
pub use messenger::{
    Callback, ConnectionId, Destination, Incoming, ListenerId, ListenerInfo, Messenger, NewError,
};
pub use server_loop::{AsyncServerLoop, Responder, ServerLoop};
pub use stats::StatsSnapshot;
