#![doc = include_str!("../README.md")]
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
pub mod events;
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
pub use messenger::{Messenger, MessengerBuilder};
pub use proto::wire::{ACK, ECHO, FIRST_USER, NOOP};
pub use runtime::server_loop::Responder;
pub use stats::StatsSnapshot;
pub use telemetry::publish_metrics;
pub use types::{Callback, Incoming, ListenerInfo};
