//! Counters, and a serialisable snapshot of them.
//!
//! Every thread counts in a block of its own ([`Stats::local`]), with a
//! plain load and store: no locked instruction, and no cache line another
//! thread writes. A snapshot sums the blocks. An inproc round trip bumps
//! six counters; as relaxed `fetch_add`s (each a locked instruction, even
//! on a line of its own) they were a tenth of its latency
//! (design/PERFORMANCE.md, "Counters without locked instructions").
//!
//! Blocks are indexed by [`thread_slot`], an id of our own that a thread
//! can ask for at any point of its teardown (a message sent from a
//! thread-local's destructor counts too), where the `thread_local`
//! crate's id, used before, panicked there and aborted the process.

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::shard::{Padded, thread_slot};

/// One count in one thread's block ([`Counters`]): only that thread adds
/// to it, so an add is a load and a store, not a read-modify-write; any
/// thread may read it.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the thread whose block this is may call it (see
    /// [`Local`]): two threads adding at once could lose one's add.
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Its count so far.
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Adds `from`'s count, as any thread may: a locked add, for the
    /// shared block ([`Stats::local`]).
    fn absorb(&self, from: &Counter) {
        let n = from.get();
        if n != 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }
}

/// The calling thread's counters ([`Stats::local`]). Not `Send`, so a
/// task cannot hold it across an await and add from another thread.
pub(crate) struct Local<'a> {
    /// Where its adds go.
    block: Block<'a>,
    /// Keeps it on its thread.
    _here: PhantomData<*const ()>,
}

/// Where a [`Local`]'s adds go.
enum Block<'a> {
    /// The thread's own block: what almost every count goes to.
    Own(&'a Counters),
    /// A thread without a block of its own (see [`Stats::local`]) counts
    /// into one made for this `Local`, added to `into` when it is dropped.
    Lent {
        /// This `Local`'s counts.
        counts: Box<Counters>,
        /// The messenger's shared block.
        into: &'a Counters,
    },
}

impl std::ops::Deref for Local<'_> {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        match &self.block {
            Block::Own(counters) => counters,
            Block::Lent { counts, .. } => counts,
        }
    }
}

impl Drop for Local<'_> {
    fn drop(&mut self) {
        if let Block::Lent { counts, into } = &self.block {
            into.absorb(counts);
        }
    }
}

/// The transports, as the metrics label them (`transport="tcp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp = 0,
    Ipc = 1,
    Inproc = 2,
}

impl Transport {
    /// Every transport, in label order.
    pub(crate) const ALL: [Transport; 3] = [Transport::Tcp, Transport::Ipc, Transport::Inproc];

    /// The transport an endpoint is reached over.
    pub(crate) fn of(endpoint: &Endpoint) -> Self {
        match endpoint {
            Endpoint::Tcp { .. } => Transport::Tcp,
            Endpoint::Ipc(_) => Transport::Ipc,
            Endpoint::Inproc(_) => Transport::Inproc,
        }
    }

    /// Its label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ipc => "ipc",
            Transport::Inproc => "inproc",
        }
    }
}

/// Traffic over one transport: what the `transport` label splits.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Messages handed to a socket (ACKs included).
    pub(crate) messages_sent: Counter,
    /// Well-formed messages received (ACKs included).
    pub(crate) messages_received: Counter,
    /// Bytes written to tcp and ipc sockets (ZMTP framing, commands and
    /// CURVE boxes included); none on inproc, which writes no bytes.
    pub(crate) bytes_sent: Counter,
    /// Bytes read from tcp and ipc sockets.
    pub(crate) bytes_received: Counter,
}

/// Why a session (a peer's connection after its handshake) ended: the
/// `reason` label of `messenger_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer closed its side.
    PeerClosed = 0,
    /// We closed it: shutdown, or the socket was closed.
    Shutdown = 1,
    /// It gave way to a newcomer at a connection limit, being idle.
    Evicted = 2,
    /// Its peer answered no heartbeat in time.
    HeartbeatTimeout = 3,
    /// Reading or writing failed (a reset, a broken pipe).
    IoError = 4,
    /// It broke ZMTP or one of its limits (a message too slow, too large,
    /// a read-buffer budget spent).
    ProtocolError = 5,
}

impl CloseReason {
    /// Every reason, in index order.
    pub(crate) const ALL: [CloseReason; 6] = [
        CloseReason::PeerClosed,
        CloseReason::Shutdown,
        CloseReason::Evicted,
        CloseReason::HeartbeatTimeout,
        CloseReason::IoError,
        CloseReason::ProtocolError,
    ];

    /// Its label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Evicted => "evicted",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::IoError => "io_error",
            CloseReason::ProtocolError => "protocol_error",
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One thread's counts for one messenger (see [`Stats`]).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: Counter,)*
            /// Messages and bytes per transport (indexed by `Transport`).
            traffic: [Traffic; 3],
            /// Sessions ended, per `CloseReason`.
            closed: [Counter; 6],
        }

        /// A point-in-time copy of a messenger's counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            /// Messages handed to a socket (ACKs included).
            pub sent: u64,
            /// Well-formed messages received (ACKs included).
            pub received: u64,
            $($(#[$doc])* pub $name: u64,)*
            /// Bytes written to tcp and ipc sockets (ZMTP framing
            /// included); inproc moves messages, not bytes, and counts none.
            pub bytes_sent: u64,
            /// Bytes read from tcp and ipc sockets.
            pub bytes_received: u64,
            /// Sessions ended (peers that left, were dropped or gave way,
            /// on listeners and connections).
            pub connections_closed: u64,
            /// Callbacks waiting for a reply now.
            pub pending_callbacks: u64,
            /// Sent messages waiting for their ACK now.
            pub pending_messages: u64,
            /// Peers connected now: our connections whose link is up, plus
            /// the sessions of our listeners (peers connected to them).
            pub connections: u64,
            /// Open listeners now.
            pub listeners: u64,
        }

        impl Stats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                let traffic = |f: fn(&Traffic) -> &Counter| {
                    Transport::ALL
                        .iter()
                        .map(|&t| self.total(|c| f(c.traffic(t))))
                        .sum()
                };
                StatsSnapshot {
                    sent: traffic(|t| &t.messages_sent),
                    received: traffic(|t| &t.messages_received),
                    $($name: self.total(|c| &c.$name),)*
                    bytes_sent: traffic(|t| &t.bytes_sent),
                    bytes_received: traffic(|t| &t.bytes_received),
                    connections_closed: CloseReason::ALL
                        .iter()
                        .map(|&r| self.total(|c| c.closed_for(r)))
                        .sum(),
                    ..Default::default()
                }
            }
        }

        impl Counters {
            /// Adds every count of `from` (a lent block) to these, with
            /// locked adds: the shared block, which any thread may add to.
            fn absorb(&self, from: &Counters) {
                $(self.$name.absorb(&from.$name);)*
                for (to, from) in self.traffic.iter().zip(&from.traffic) {
                    to.messages_sent.absorb(&from.messages_sent);
                    to.messages_received.absorb(&from.messages_received);
                    to.bytes_sent.absorb(&from.bytes_sent);
                    to.bytes_received.absorb(&from.bytes_received);
                }
                for (to, from) in self.closed.iter().zip(&from.closed) {
                    to.absorb(from);
                }
            }

            /// The traffic counters of one transport.
            pub(crate) fn traffic(&self, t: Transport) -> &Traffic {
                &self.traffic[t as usize]
            }

            /// A session ended for `reason`.
            pub(crate) fn closed(&self, reason: CloseReason) {
                self.closed[reason as usize].add(1);
            }

            /// The sessions ended for `reason`.
            pub(crate) fn closed_for(&self, reason: CloseReason) -> &Counter {
                &self.closed[reason as usize]
            }
        }
    };
}

counters! {
    /// Sessions begun: peers that completed the handshake (and the
    /// proof, with a secret) on our listeners, and each link up of our
    /// connections (first dial and redials).
    connections_opened,
    /// ACKs sent.
    acks_sent,
    /// ACKs received.
    acks_received,
    /// ECHO requests answered.
    echoes_answered,
    /// ECHOs ACKed and not answered because their answer would go to
    /// ECHO or ACK (a loop, or a forged ACK).
    echoes_refused,
    /// Messages handed to a message-specific callback.
    msc_delivered,
    /// Messages handed to a server-loop callback.
    slc_delivered,
    /// Messages sent again because no ACK came in time.
    resends,
    /// Messages received again and not delivered again (still ACKed).
    duplicates_dropped,
    /// ACKs for messages not (or no longer) waiting for one.
    unknown_acks,
    /// Messages dropped because their frames or payload were malformed.
    malformed_dropped,
    /// Replies to callback ids that were never issued, already used or expired.
    late_replies_dropped,
    /// Messages that arrived on a connection, addressed to no callback.
    unroutable_dropped,
    /// Messages refused (not ACKed) because a server loop's queue was full.
    slc_busy,
    /// Requests for a server loop refused (not ACKed) because the window
    /// towards their sender was full of replies it had not ACKed yet, sent
    /// or owed: it resends them once it ACKs (see
    /// `Config::send_queue_capacity`).
    reply_window_busy,
    /// Messages refused (not ACKed) because their id is older than the
    /// sender's duplicate window and not known to have arrived (see
    /// `Config::dedup_window`).
    dedup_stale,
    /// ACKs dropped because the peer's send buffer held twice its limit
    /// (the peer resends what they acknowledged).
    acks_dropped,
    /// Replies dropped: a server loop's reply that waited for room in the
    /// window towards a peer that did not ACK before its deadline (also
    /// logged, at most once a second per socket).
    replies_dropped,
    /// ECHOs refused unACKed because their sender's send buffer was full
    /// (it does not read what we send it): it resends them later.
    buffer_busy,
    /// ECHO answers sent once and not kept for resending, because the
    /// window towards their peer was full (it does not ACK them, or not
    /// yet).
    replies_untracked,
    /// Messages a socket could not deliver to its peer.
    send_failures,
    /// Requests that reached their deadline.
    timeouts,
    /// Messages without a callback or ACK waiter that reached their
    /// deadline unacknowledged (also logged).
    unacked_expired,
    /// Times a connection's link came back after a loss.
    reconnects,
    /// Peers cut off for breaking ZMTP or its limits (a bad greeting,
    /// flags or command; a frame, message or command too large; too many
    /// frames in a message).
    guard_rejections,
    /// Peers cut off because a message they began did not arrive within
    /// its deadline (`Config::message_timeout` plus its size at
    /// `Config::min_receive_rate`).
    slow_messages,
    /// Peers cut off because their read buffer would have taken their
    /// listener past `Config::max_partial_bytes`.
    partial_budget_cuts,
    /// Peers refused because a live session holds the routing id they
    /// announced.
    routing_id_conflicts,
    /// Sessions dropped because the peer sent nothing within the ZMTP
    /// heartbeat timeout after our PING, or within its own PING's TTL.
    ping_timeouts,
    /// Peers cut off for not finishing the ZMTP handshake (and, with a
    /// secret, authentication) in time.
    handshake_timeouts,
    /// Peers cut off for a missing, wrong, stale or replayed proof.
    auth_failures,
    /// CURVE clients that completed the handshake but are not on the
    /// listener's allow-list (`Curve::allow`): refused with ERROR "400".
    curve_refused,
    /// Times a listener was at its connection limit when a peer knocked.
    connection_limit_hits,
    /// Idle peers closed to make room for a newcomer at the connection
    /// limit (see `Config::evict_idle_after`).
    idle_evictions,
    /// tcp peers closed on arrival because their address already had
    /// `Config::max_connections_per_address` sessions.
    address_limit_hits,
    /// Warnings about peers not logged (more than 10 a second per
    /// listener or connection); each second's count is logged once.
    warnings_suppressed,
}

/// Threads that count in blocks of their own, per messenger, by
/// [`thread_slot`] (ids are per process, the lowest free first, so this
/// is about the threads alive at once that ever counted): the runtime's
/// workers, and a binding's or an application's sending threads, with
/// room to spare. 4 KiB of slots per messenger, and a block only for each
/// id that counted. A thread past it still counts exactly, through a lent
/// block: an allocation and a locked add per counter touched.
const BLOCKS: usize = 256;

/// Live counters of one messenger: a block per thread that counted
/// (see the module documentation).
pub(crate) struct Stats {
    /// Each thread's block by its [`thread_slot`], on cache lines of its
    /// own, made when it first counts. A thread that ends leaves its block
    /// (and its counts) to the next thread given its id.
    blocks: Box<[OnceLock<Box<Padded<Counters>>>]>,
    /// What threads without a block counted (see [`Stats::local`]),
    /// added with locked instructions.
    shared: Padded<Counters>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            blocks: (0..BLOCKS).map(|_| OnceLock::new()).collect(),
            shared: Padded::default(),
        }
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Stats {
    /// The calling thread's counters: what every count goes to.
    ///
    /// A thread without a block of its own counts through a block made for
    /// the `Local` and added to the shared one when it is dropped: a thread
    /// whose id went back as it ends (a message sent from a thread-local's
    /// destructor, where the `thread_local` crate's id, used before, would
    /// panic and abort the process), or one of more than [`BLOCKS`] alive
    /// at once.
    #[inline]
    pub(crate) fn local(&self) -> Local<'_> {
        let own = thread_slot()
            .and_then(|id| self.blocks.get(id))
            .and_then(OnceLock::get);
        match own {
            Some(block) => Local {
                block: Block::Own(&block.0),
                _here: PhantomData,
            },
            None => self.first_or_lent(),
        }
    }

    /// [`local`](Self::local) off its path: the thread's first count here
    /// (its block is made), or a lent block.
    #[cold]
    fn first_or_lent(&self) -> Local<'_> {
        let block = match thread_slot().and_then(|id| self.blocks.get(id)) {
            Some(block) => Block::Own(&block.get_or_init(Box::default).0),
            None => Block::Lent {
                counts: Box::default(),
                into: &self.shared.0,
            },
        };
        Local {
            block,
            _here: PhantomData,
        }
    }

    /// One counter summed over every thread's block and the shared one
    /// (`pick` names it).
    pub(crate) fn total(&self, pick: impl Fn(&Counters) -> &Counter) -> u64 {
        let own: u64 = self
            .blocks
            .iter()
            .filter_map(OnceLock::get)
            .map(|c| pick(&c.0).get())
            .sum();
        own + pick(&self.shared.0).get()
    }
}

/// Adds one to `c` (a counter of [`Stats::local`]).
pub(crate) fn bump(c: &Counter) {
    c.add(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every thread's adds are summed, none lost, including those of
    /// threads that have ended (their blocks stay).
    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = Stats::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let local = stats.local();
                        bump(&local.echoes_answered);
                        local.traffic(Transport::Inproc).messages_sent.add(2);
                    }
                    stats.local().closed(CloseReason::Evicted);
                });
            }
        });
        bump(&stats.local().echoes_answered);
        let snap = stats.snapshot();
        assert_eq!(snap.echoes_answered, 80_001);
        assert_eq!(snap.sent, 160_000);
        assert_eq!(snap.connections_closed, 8);
        assert_eq!(stats.total(|c| c.closed_for(CloseReason::Evicted)), 8);
        assert_eq!(stats.total(|c| &c.traffic(Transport::Tcp).messages_sent), 0);
    }

    /// Threads without a block of their own (more alive at once than
    /// `BLOCKS`, and a thread counting as its locals are destroyed) count
    /// through lent blocks, and nothing of theirs is lost.
    #[test]
    fn counts_without_a_block_of_their_own_add_up() {
        /// Counts once as its thread's locals are destroyed.
        struct CountOnDrop(Arc<Stats>);
        impl Drop for CountOnDrop {
            fn drop(&mut self) {
                bump(&self.0.local().echoes_answered);
            }
        }
        thread_local! {
            static LAST: std::cell::RefCell<Option<CountOnDrop>> = const { std::cell::RefCell::new(None) };
        }
        let threads = BLOCKS + 8;
        let stats = Arc::new(Stats::default());
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let spawned: Vec<_> = (0..threads)
            .map(|_| {
                let (stats, barrier) = (Arc::clone(&stats), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    // Set before the thread's id is taken: destroyed after
                    // it went back.
                    LAST.with(|l| *l.borrow_mut() = Some(CountOnDrop(Arc::clone(&stats))));
                    // All alive at once: some have no block.
                    barrier.wait();
                    for _ in 0..100 {
                        bump(&stats.local().echoes_answered);
                    }
                })
            })
            .collect();
        // A join waits for the thread's locals too (a scoped thread's end
        // does not).
        for t in spawned {
            t.join().unwrap();
        }
        assert_eq!(stats.snapshot().echoes_answered, threads as u64 * 101);
        assert!(stats.shared.0.echoes_answered.get() >= threads as u64);
    }
}
