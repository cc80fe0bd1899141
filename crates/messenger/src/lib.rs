//! Callback-driven messaging between processes and components over ZeroMQ
//! endpoints (`tcp://`, `ipc://`, `inproc://`), speaking NoisePage's
//! messenger protocol so Python peers on libzmq interoperate.
//!
//! A server answers on a listener through its server-loop callback; a
//! client connects, sends, and asks:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), messenger::Error> {
//! use messenger::{ECHO, Messenger, NOOP};
//!
//! let server = Messenger::new()?;
//! let bound = server
//!     .listen_for_connection(&"tcp://127.0.0.1:0".parse()?, |msg, r| {
//!         // Answers the sender's callback; never blocks the loop, and
//!         // never drops the answer for want of room.
//!         if let Err(e) = r.try_reply(format!("seen {} bytes", msg.body.len())) {
//!             eprintln!("cannot answer: {e}");
//!         }
//!     })
//!     .await?;
//!
//! let client = Messenger::new()?;
//! let conn = client.make_connection(&bound.endpoint).await?;
//! // The builtin ECHO answers from the server's ProcessMessage...
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
//! The names here are the whole interface: [`Messenger`] and its
//! [`MessengerBuilder`] (listen, connect, send, request, shut down),
//! [`Config`] (with [`Heartbeat`], [`Secret`] and [`Curve`], whose keys are
//! in [`curve`]),
//! [`Endpoint`], where messages go ([`Destination`], [`ConnectionId`],
//! [`ListenerId`], [`ListenerInfo`]), what callbacks get ([`Incoming`],
//! [`Responder`], [`Callback`]), the builtin callback ids, one [`Error`]
//! (with its [`ErrorKind`]), [`StatsSnapshot`], and typed bodies
//! ([`typed`]). What an operator sees: [`publish_metrics`] (every counter
//! and gauge, through the `metrics` facade, to whatever recorder the
//! application installed), and connection events ([`Messenger::events`]:
//! [`Events`] of [`Event`]s, of an [`EventKind`], from a [`PeerAddr`]).
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
mod error;
mod events;
mod shard;
mod stats;
mod telemetry;
mod types;

mod transport;

mod runtime;

mod messenger;
pub mod typed;

/// CURVE keys (RFC 26), as libzmq and pyzmq's `zmq.auth` read and write
/// them: what [`Curve`] is made of. A module of their own so the keys'
/// names say what they are without crowding the crate's root.
pub mod curve {
    pub use zmtp::{
        CurveKeyError as KeyError, CurveKeyPair as KeyPair, CurvePublicKey as PublicKey,
        CurveSecretKey as SecretKey,
    };
}

pub use address::{ConnectionId, Destination, ListenerId};
pub use config::{Config, Curve, Heartbeat, Secret};
pub use endpoint::Endpoint;
pub use error::{Error, ErrorKind};
pub use events::{EVENTS_CAPACITY, Event, EventKind, Events, PeerAddr};
pub use messenger::{Messenger, MessengerBuilder};
pub use proto::wire::{ACK, ECHO, FIRST_USER, NOOP};
pub use runtime::server_loop::Responder;
pub use stats::StatsSnapshot;
pub use telemetry::publish_metrics;
pub use types::{Callback, Incoming, ListenerInfo};
