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
//! shared.rs      what every task of a messenger shares; the end of a session
//! callbacks.rs   waiting callbacks and their deadlines (one timer)
//! send.rs        the one send path: Outgoing -> window -> session
//! batch.rs       writes held back for a batch of sends from one thread
//! process.rs     ProcessMessage carried out, for tcp/ipc and for inproc
//! socket.rs      sockets, sessions, routes; the routing table; a session's
//!                timers (resends, deadlines, replies waiting for room)
//! driver.rs      one tcp/ipc connection: handshake, then read -> process
//! listener.rs    accept loop, connection limits, idle eviction, routing ids
//! connection.rs  dial, redial with backoff
//! inproc.rs      in-process pairs: messages land from the sender's task
//! server_loop.rs server-loop tasks and their Responder
//! replies.rs     replies a session owes its peer, and those waiting for room
//! windows.rs     a listener's duplicate windows, kept across a peer's sessions
//! ```

pub(crate) mod batch;
pub(crate) mod callbacks;
pub(crate) mod connection;
pub(crate) mod driver;
pub(crate) mod inproc;
pub(crate) mod listener;
pub(crate) mod process;
pub(crate) mod replies;
pub(crate) mod send;
pub(crate) mod server_loop;
pub(crate) mod shared;
pub(crate) mod socket;
pub(crate) mod windows;
