//! Callback-driven messaging between processes and components over ZeroMQ
//! endpoints (`tcp://`, `ipc://`, `inproc://`), speaking NoisePage's
//! messenger protocol so Python peers on libzmq interoperate.
//!
//! A server answers on a listener through its server-loop callback; a
//! client connects, sends, and asks:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use messenger::{ECHO, Incoming, Messenger, NOOP, Responder};
//!
//! let server = Messenger::new("server")?;
//! let slc = |msg: Incoming, r: Responder| {
//!     let _ = r.try_reply(format!("seen {} bytes", msg.body.len()));
//! };
//! let bound = server
//!     .listen_for_connection(&"tcp://127.0.0.1:0".parse()?, "server", slc)
//!     .await?;
//!
//! let client = Messenger::new("client")?;
//! let conn = client.make_connection(&bound.endpoint).await?;
//! // The builtin ECHO answers from the server's ProcessMessage loop...
//! let reply = client.request(conn, ECHO, b"hello").await?;
//! assert_eq!(&reply.body[..], b"hello");
//! // ...and NOOP goes to its server loop.
//! let reply = client.request(conn, NOOP, b"log batch").await?;
//! assert_eq!(&reply.body[..], b"seen 9 bytes");
//!
//! client.shutdown().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The names here are the whole interface: [`Messenger`] (listen, connect,
//! send, request, shut down), [`Config`], [`Endpoint`], the values handed
//! to callbacks ([`Incoming`], [`Responder`], [`Reply`], [`Callback`]),
//! where messages go ([`Destination`]), the errors of each operation
//! ([`error`]), and typed bodies ([`typed`]).
#![warn(missing_docs, unreachable_pub)]

// The layers, bottom to top (design/ARCHITECTURE.md draws them): the ZMTP
// engine and the messenger protocol's rules are crates of their own
// (`zmtp`, `messenger-proto`: sans-IO, no tokio); here, the plain types,
// errors and configuration, the transports, the runtime's tasks, and the
// `Messenger` facade.
pub(crate) use messenger_proto as proto;

mod address;
mod clock;
mod config;
mod endpoint;
pub mod error;
mod shard;
mod stats;
mod types;

mod transport;

mod runtime;

mod messenger;
pub mod typed;

pub use address::{ConnectionId, Destination, ListenerId};
pub use config::{Config, ConfigError, Curve, Heartbeat, Secret};
pub use endpoint::Endpoint;
pub use error::{BindError, ConnectError, EndpointError, NewError, RequestError, SendError};
pub use messenger::Messenger;
pub use proto::wire::{ACK, ECHO, FIRST_USER, NOOP};
pub use runtime::server_loop::{AsyncServerLoop, Responder, ServerLoop};
pub use stats::StatsSnapshot;
pub use types::{Callback, Incoming, ListenerInfo, Reply};
pub use zmtp::{CurveKeyError, CurveKeyPair, CurvePublicKey, CurveSecretKey};
