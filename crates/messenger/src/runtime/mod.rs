//! The tasks that drive the transports and the protocol core, and the
//! state they share.
//!
//! A *socket* is a listener (our ROUTER) or a connection (our DEALER): a
//! [`socket::SocketCtx`] holds what its senders and sessions share. A
//! *session* is one live connection of a socket to one peer: a ZMTP
//! connection after its handshake (and its proof, when a secret is set),
//! or an inproc pairing. Each tcp or ipc session is driven by one task that
//! reads, decodes, and runs ProcessMessage on what it reads, in place
//! ([`driver`]); an inproc message lands in the peer's messenger from the
//! sender's task ([`inproc`]).
//!
//! ```text
//! socket.rs      sockets, sessions, routes; the routing table
//! dispatch.rs    the messenger's shared state: callbacks, the send path,
//!                ProcessMessage's effects, the timer tasks
//! driver.rs      one tcp/ipc connection: handshake, then read -> process
//! listener.rs    accept loop, connection limits, idle eviction, routing ids
//! connection.rs  dial, redial with backoff
//! inproc.rs      in-process pairs: messages land from the sender's task
//! server_loop.rs server-loop tasks and their Responder
//! replies.rs     replies a session owes its peer, and those waiting for room
//! ```

pub(crate) mod connection;
pub(crate) mod dispatch;
pub(crate) mod driver;
pub(crate) mod inproc;
pub(crate) mod listener;
pub(crate) mod replies;
pub(crate) mod server_loop;
pub(crate) mod socket;
