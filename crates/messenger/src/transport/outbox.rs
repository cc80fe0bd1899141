//! One tcp or ipc connection's way out: a buffer of encoded frames that any
//! task appends to, and whoever finds the socket idle writes.
//!
//! Every sender (a request's task, the driver's ACKs, a server loop's
//! reply) encodes its message into the shared buffer under a short lock.
//! If nobody is writing, the sender takes the *write role* and writes the
//! buffer itself with a non-blocking `try_write`, outside the lock; others
//! that append meanwhile leave their bytes for it. So an idle connection
//! costs no task wake-up per message, and a busy one batches: many
//! messages per `write` call. When the socket is full (`WouldBlock`) the
//! role passes to the connection's driver, which waits for the socket to
//! be writable. The driver also holds the role while it processes a read
//! batch, so the ACKs and replies it produces leave in one write.
//!
//! Nothing waits inside the lock and no lock is held across a syscall. The
//! buffer is bounded ([`Outbox::limit`]): once it holds that much, pushes
//! fail with [`Push::Full`] and the caller waits for [`Outbox::room`],
//! drops the message (ACKs, resends: the peer resends, we resend), or
//! fails. Below it a push is taken whole, whatever its size: a message
//! larger than the room left (a 4 MiB reply behind a queued ACK) goes at
//! once instead of waiting for a resend timer, and the buffer holds at
//! most its limit plus one message.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;

use super::room::Room;
use super::stream::Stream;
use crate::stats::{Stats, Transport};
use zmtp::Encoder;

/// Rounds of appended bytes a sender writes for others before it hands the
/// role to the driver, so no sender is held up for long.
const MAX_ROUNDS: usize = 8;

/// Why a push did not go into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// The buffer is at its limit.
    Full,
    /// The connection is closed.
    Closed,
}

struct State {
    /// Encoded frames waiting for the write role's holder.
    buf: BytesMut,
    /// Frames every message and command of this connection go through
    /// (CURVE will keep its nonce here: one order for all senders).
    encoder: Encoder,
    /// Someone holds the write role.
    writing: bool,
    /// Bytes the role's holder has taken out of `buf` and not yet written:
    /// they count against the limit too.
    inflight: usize,
    /// Bytes a sender could not write (the socket was full), handed to the
    /// driver with the write role.
    handoff: Option<BytesMut>,
    /// A buffer to swap in, so steady traffic reuses two allocations.
    spare: BytesMut,
    /// Closed: pushes fail; the driver is winding the connection down.
    closed: bool,
    /// A write failed: the connection is broken.
    broken: bool,
}

/// See the module documentation.
pub(crate) struct Outbox {
    /// The socket it writes to.
    stream: Arc<Stream>,
    /// The bytes waiting and who holds the write role, under a short lock.
    state: Mutex<State>,
    /// Bytes (buffered plus in flight) past which pushes fail.
    limit: usize,
    /// Wakes the connection's driver: it holds the write role now, or room
    /// opened (it may read again), or the connection broke.
    pub(crate) driver: Notify,
    /// Senders waiting for room.
    room: Room,
    /// The driver stopped reading until room opens (listeners only).
    driver_waits_room: AtomicBool,
    /// Where bytes written are counted: the messenger's counters, and
    /// the transport they are counted under.
    written: (Arc<Stats>, Transport),
}

impl Outbox {
    /// An outbox writing to `stream`, framing with `encoder`, taking pushes
    /// while it holds less than `limit` bytes.
    pub(crate) fn new(
        stream: Arc<Stream>,
        encoder: Encoder,
        limit: usize,
        written: (Arc<Stats>, Transport),
    ) -> Self {
        Outbox {
            stream,
            state: Mutex::new(State {
                buf: BytesMut::new(),
                encoder,
                writing: false,
                inflight: 0,
                handoff: None,
                spare: BytesMut::new(),
                closed: false,
                broken: false,
            }),
            limit,
            driver: Notify::new(),
            room: Room::default(),
            driver_waits_room: AtomicBool::new(false),
            written,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes one message or command with `encode` (which writes about
    /// `len` bytes) and sees that it is written.
    pub(crate) fn push(
        &self,
        len: usize,
        encode: impl FnOnce(&mut Encoder, &mut BytesMut),
    ) -> Result<(), Push> {
        self.push_below(|st| self.takes(st), len, encode, false)
            .map(drop)
    }

    /// [`push`](Self::push) that never writes: if nobody holds the write
    /// role, it takes it and returns `true`, and the caller must end with
    /// [`uncork`](Self::uncork) (a batch of sends from one thread).
    pub(crate) fn push_corked(
        &self,
        len: usize,
        encode: impl FnOnce(&mut Encoder, &mut BytesMut),
    ) -> Result<bool, Push> {
        self.push_below(|st| self.takes(st), len, encode, true)
    }

    /// Ends a [`push_corked`](Self::push_corked) that took the write
    /// role: writes what is buffered, as a sender (a full socket hands
    /// the role to the driver).
    pub(crate) fn uncork(&self) {
        let chunk = Self::take_buf(&mut self.lock());
        self.write_out(chunk, false);
    }

    /// [`push`](Self::push) for an ACK or a command (PONG, PING): taken
    /// until the bytes *waiting* (not those a writer is writing now) reach
    /// twice the limit. Each is a few dozen bytes, and each one dropped
    /// costs a resend of what it answers (up to 16 MiB) a second later: a
    /// peer's ACK was dropped whenever it arrived while a writer, still
    /// busy with (or descheduled just after) a large message, counted it
    /// in flight. Still bounded: a listener stops reading a peer whose
    /// buffer is half full, and these only answer what was read.
    pub(crate) fn push_control(
        &self,
        len: usize,
        encode: impl FnOnce(&mut Encoder, &mut BytesMut),
    ) -> Result<(), Push> {
        self.push_below(
            |st| st.buf.len() < self.limit.saturating_mul(2),
            len,
            encode,
            false,
        )
        .map(drop)
    }

    /// Appends one encoded message if `room` allows; writes it at once if
    /// nobody holds the write role, unless `corked` (then the role is
    /// taken, unwritten, and `true` returned).
    fn push_below(
        &self,
        room: impl FnOnce(&State) -> bool,
        len: usize,
        encode: impl FnOnce(&mut Encoder, &mut BytesMut),
        corked: bool,
    ) -> Result<bool, Push> {
        let mut st = self.lock();
        if st.closed {
            return Err(Push::Closed);
        }
        if !room(&st) {
            return Err(Push::Full);
        }
        let State { encoder, buf, .. } = &mut *st;
        buf.reserve(len);
        encode(encoder, buf);
        if st.writing {
            return Ok(false);
        }
        st.writing = true;
        if corked {
            return Ok(true);
        }
        let chunk = Self::take_buf(&mut st);
        drop(st);
        self.write_out(chunk, false);
        Ok(false)
    }

    /// Whether the buffer holds half its limit or more: a listener stops
    /// reading a peer then (it is not reading what it is sent), which
    /// leaves the other half for replies its server loop still sends.
    pub(crate) fn over_limit(&self) -> bool {
        let st = self.lock();
        let over = (st.buf.len() + st.inflight).saturating_mul(2) >= self.limit;
        if over {
            // Under the lock, so a write finishing now sees it.
            self.driver_waits_room.store(true, Ordering::SeqCst);
        }
        over
    }

    /// Whether the driver holds the write role and waits for the socket.
    pub(crate) fn driver_writes(&self) -> bool {
        self.lock().handoff.is_some()
    }

    /// Whether a write failed (the connection is broken).
    pub(crate) fn is_broken(&self) -> bool {
        self.lock().broken
    }

    /// Bytes appended and not yet taken for writing.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buf.len()
    }

    /// Takes the write role for a batch of the driver's own pushes (ACKs,
    /// replies), if nobody holds it: they then leave in one write at
    /// [`release`](Self::release). Returns whether it was taken.
    pub(crate) fn hold(&self) -> bool {
        let mut st = self.lock();
        if st.writing || st.closed {
            return false;
        }
        st.writing = true;
        true
    }

    /// Ends a [`hold`](Self::hold): writes what the batch produced.
    pub(crate) fn release(&self) {
        let chunk = Self::take_buf(&mut self.lock());
        self.write_out(chunk, true);
    }

    /// The driver's turn after the socket became writable: go on writing
    /// what a sender handed over.
    pub(crate) fn resume(&self) {
        let Some(chunk) = self.lock().handoff.take() else {
            return;
        };
        self.write_out(chunk, true);
    }

    /// Moves the buffer out (swapping in the spare), counting it in flight.
    fn take_buf(st: &mut State) -> BytesMut {
        let spare = std::mem::take(&mut st.spare);
        let chunk = std::mem::replace(&mut st.buf, spare);
        st.inflight = chunk.len();
        chunk
    }

    /// Writes `chunk`, then whatever was appended meanwhile, until the
    /// buffer is empty (the role is released), the socket is full (the
    /// role goes to the driver) or the connection breaks.
    fn write_out(&self, mut chunk: BytesMut, by_driver: bool) {
        let mut rounds = 0;
        loop {
            while !chunk.is_empty() {
                match self.stream.try_write(&chunk) {
                    Ok(0) => return self.broke(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        let (stats, transport) = &self.written;
                        stats.local().traffic(*transport).bytes_sent.add(n as u64);
                        chunk.advance(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut st = self.lock();
                        st.inflight = chunk.len();
                        st.handoff = Some(chunk);
                        drop(st);
                        if !by_driver {
                            self.driver.notify_one();
                        }
                        return;
                    }
                    Err(e) => return self.broke(e),
                }
            }
            rounds += 1;
            let mut st = self.lock();
            if st.buf.is_empty() || st.closed && !by_driver {
                st.writing = false;
                st.inflight = 0;
                chunk.clear();
                st.spare = chunk;
                drop(st);
                self.wake_room();
                return;
            }
            if rounds >= MAX_ROUNDS && !by_driver {
                // Enough done for others: the driver takes over.
                let next = Self::take_buf(&mut st);
                st.handoff = Some(next);
                drop(st);
                self.driver.notify_one();
                self.wake_room();
                return;
            }
            chunk.clear();
            std::mem::swap(&mut chunk, &mut st.buf);
            st.inflight = chunk.len();
            drop(st);
            self.wake_room();
        }
    }

    fn broke(&self, e: io::Error) {
        tracing::debug!(error = %e, "write failed");
        let mut st = self.lock();
        st.broken = true;
        st.closed = true;
        st.writing = false;
        st.inflight = 0;
        st.buf.clear();
        st.handoff = None;
        drop(st);
        self.driver.notify_one();
        self.room.wake();
    }

    fn wake_room(&self) {
        self.room.wake();
        // A listener's driver that stopped reading waits for room too.
        if self.driver_waits_room.swap(false, Ordering::SeqCst) {
            self.driver.notify_one();
        }
    }

    /// Whether the buffer holds less than its limit (a push of any size
    /// is then taken whole).
    fn takes(&self, st: &State) -> bool {
        st.buf.len() + st.inflight < self.limit
    }

    /// Whether a push would be taken now.
    pub(crate) fn has_room(&self) -> bool {
        let st = self.lock();
        !st.closed && self.takes(&st)
    }

    /// Waits until a push would be taken (or the connection closed).
    pub(crate) async fn room(&self) {
        self.room
            .wait(|| {
                let st = self.lock();
                st.closed || self.takes(&st)
            })
            .await;
    }

    /// Closes: further pushes fail with [`Push::Closed`]; what is buffered
    /// stays for the driver to flush ([`flushed`](Self::flushed)).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.room.wake();
    }

    /// Waits until the write role's holder makes progress (it wrote, gave
    /// the role up, or the connection broke).
    pub(crate) async fn progress(&self) {
        let woken = self.driver.notified();
        self.driver_waits_room.store(true, Ordering::SeqCst);
        woken.await;
    }

    /// Whether everything pushed has been written (or the connection broke).
    pub(crate) fn flushed(&self) -> bool {
        let st = self.lock();
        st.broken || (!st.writing && st.buf.is_empty())
    }

    /// During close, the driver takes the role to write what is left.
    pub(crate) fn flush_by_driver(&self) {
        let mut st = self.lock();
        if let Some(chunk) = st.handoff.take() {
            drop(st);
            return self.write_out(chunk, true);
        }
        if st.writing || st.buf.is_empty() {
            return;
        }
        st.writing = true;
        let chunk = Self::take_buf(&mut st);
        drop(st);
        self.write_out(chunk, true);
    }
}
