//! Messages sent to one peer but not yet acknowledged: resent on a timer
//! until their ACK (or a reply to their callback) arrives, dropped at their
//! deadline. One set per peer (a listener's session, or a connection across
//! its sessions), keyed by msg_id. Pure data structure: the caller passes
//! the time in, so tests need no clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use std::time::Instant;

use bytes::Bytes;

/// Identifies one sent message within its peer's set: its msg_id.
pub type MsgKey = u64;

/// One unacknowledged message.
#[derive(Debug)]
pub struct Entry<W> {
    /// The payload, shared with the socket: resending copies nothing.
    pub payload: Bytes,
    /// When it last went out: the resend timer runs from here.
    last_sent: Instant,
    /// When it is given up on (and its waiter told).
    deadline: Instant,
    /// Times it was resent.
    pub resends: u32,
    /// Told when the ACK arrives (or why it never will).
    pub waiter: Option<W>,
}

/// A socket's round-trip estimate from its ACKs (RFC 6298's smoothed round
/// trip and variance), so the resend timer follows a loaded or distant peer
/// instead of resending what is merely slow. Only messages sent once are
/// sampled (Karn's rule: an ACK of a resent message is ambiguous).
#[derive(Debug, Clone, Copy, Default)]
pub struct RttEstimate {
    /// Smoothed round trip; `None` until the first sample.
    srtt: Option<Duration>,
    /// Round-trip variation: the margin the resend timeout adds.
    rttvar: Duration,
}

/// Largest resend timeout the estimate may ask for (RFC 6298's upper bound).
const MAX_RTO: Duration = Duration::from_secs(60);

impl RttEstimate {
    /// Folds in one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar.saturating_mul(3).saturating_add(delta) / 4;
                self.srtt = Some(srtt.saturating_mul(7).saturating_add(rtt) / 8);
            }
        }
    }

    /// The smoothed round trip, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// How long to wait for an ACK before the first resend: the smoothed
    /// round trip plus four deviations, never below `floor` (the configured
    /// resend interval) nor above 60 s (or `floor`, if that is larger).
    pub fn rto(&self, floor: Duration) -> Duration {
        let estimate = self.srtt.map_or(Duration::ZERO, |s| {
            s.saturating_add(self.rttvar.saturating_mul(4))
        });
        estimate.min(MAX_RTO).max(floor)
    }
}

/// The set of unacknowledged messages of one socket, bounded: a state
/// machine with a timer, as quinn-proto's connection is. The driver asks
/// [`poll_timeout`](Self::poll_timeout) when it next needs to run and calls
/// [`handle_timeout`](Self::handle_timeout) then; nothing ticks while
/// nothing is held.
#[derive(Debug)]
pub struct PendingSet<W> {
    /// foldhash, seeded per map: SipHash was 10% of a round trip's
    /// instructions; the keys are our own msg_ids.
    entries: HashMap<MsgKey, Entry<W>, foldhash::fast::RandomState>,
    /// Most messages held at once (`Config::max_pending_messages`).
    limit: usize,
    /// Where the resend timeout comes from once ACKs have been timed.
    rtt: RttEstimate,
    /// Payload bytes held, so a peer's window can be bounded in bytes as
    /// well as in messages.
    bytes: usize,
    /// msg_ids in the order they were recorded (ids are taken in order, so
    /// this is nearly sorted); those no longer held leave from the front
    /// lazily. The front is the oldest unacknowledged id: a sender's window
    /// spans ids from it (as TCP's spans sequence numbers from the oldest
    /// unacknowledged byte), so a message whose ACKs keep getting lost can
    /// never fall behind the receiver's duplicate window.
    order: VecDeque<MsgKey>,
    /// The shortest resend timeout (the configured interval); the round
    /// trips measured from ACKs may make it longer ([`RttEstimate::rto`]).
    interval: Duration,
    /// The slowest rate a message is expected to arrive at: a message of
    /// `len` bytes is given `len / rate` more before it is resent, since its
    /// ACK cannot come before all of it has arrived (a 4 MiB reply on a
    /// loaded machine was resent while still arriving). `None`: no
    /// allowance.
    rate: Option<u64>,
    /// No message is due (for a resend, or at its deadline) before this:
    /// lowered by every insert, recomputed by every timeout handled.
    /// `None`: nothing is held.
    next_due: Option<Instant>,
}

/// The set already holds its limit of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetFull(pub usize);

/// What a timer tick found.
#[derive(Debug)]
pub struct Tick<W> {
    /// Messages to send again.
    pub resend: Vec<Bytes>,
    /// Messages past their deadline, removed: their ids, payloads and
    /// waiters.
    pub expired: Vec<(MsgKey, Bytes, Option<W>)>,
}

/// When `e` is next due for a resend under resend timeout `rto`, with
/// `transfer` of its size to arrive.
fn last_due<W>(e: &Entry<W>, rto: Duration, transfer: impl Fn(usize) -> Duration) -> Instant {
    e.last_sent + rto.saturating_mul(1 << e.resends.min(3)) + transfer(e.payload.len())
}

/// Payloads at most this long get a buffer of their own when first resent
/// (see [`unshare`]).
pub const UNSHARE_MAX: usize = 4 * 1024;

/// A small payload resent for the first time is copied into a buffer of
/// its own: the sender may have formatted it into a chunk shared with
/// other messages (the messenger's `payloads.rs` does), and a message held
/// past its resend timeout must not keep the rest of that chunk alive.
/// Larger payloads are kept as they are (copying them would cost more
/// than what they could pin).
fn unshare<W>(e: &mut Entry<W>) {
    if e.resends == 1 && e.payload.len() <= UNSHARE_MAX {
        e.payload = Bytes::copy_from_slice(&e.payload);
    }
}

/// How long `len` bytes take at `rate` bytes a second (none without one).
fn at_rate(rate: Option<u64>) -> impl Fn(usize) -> Duration {
    move |len| match rate {
        Some(r) if r > 0 => Duration::from_millis((len as u64).saturating_mul(1000) / r),
        _ => Duration::ZERO,
    }
}

impl<W> PendingSet<W> {
    /// A set holding at most `limit` messages, resending each no sooner
    /// than `interval` after it was sent.
    pub fn new(limit: usize, interval: Duration) -> Self {
        PendingSet {
            entries: HashMap::default(),
            limit,
            rtt: RttEstimate::default(),
            bytes: 0,
            order: VecDeque::new(),
            interval,
            rate: None,
            next_due: None,
        }
    }

    /// Gives each message its size at `bytes_per_sec` on top of the resend
    /// timeout (see `rate`).
    pub fn with_transfer_rate(mut self, bytes_per_sec: u64) -> Self {
        self.rate = Some(bytes_per_sec);
        self
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run (it may
    /// find nothing to do then: what was due may have been ACKed); `None`
    /// while nothing is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due
    }

    /// Records a message just sent.
    pub fn insert(
        &mut self,
        key: MsgKey,
        payload: Bytes,
        now: Instant,
        deadline: Instant,
        waiter: Option<W>,
    ) -> Result<(), SetFull> {
        if self.entries.len() >= self.limit {
            return Err(SetFull(self.limit));
        }
        self.bytes += payload.len();
        let old = self.entries.insert(
            key,
            Entry {
                payload,
                last_sent: now,
                deadline,
                resends: 0,
                waiter,
            },
        );
        match old {
            Some(old) => self.bytes -= old.payload.len(),
            None => self.order.push_back(key),
        }
        let len = self.entries.get(&key).map_or(0, |e| e.payload.len());
        let due = (now + self.rtt.rto(self.interval) + at_rate(self.rate)(len)).min(deadline);
        self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
        Ok(())
    }

    /// The oldest msg_id still unacknowledged (the first recorded of those
    /// held; ids recorded out of order by a few concurrent senders make it
    /// at most that many off).
    pub fn oldest(&mut self) -> Option<MsgKey> {
        while let Some(&front) = self.order.front() {
            if self.entries.contains_key(&front) {
                return Some(front);
            }
            self.order.pop_front();
        }
        None
    }

    /// The message is acknowledged (or answered): forget it.
    pub fn ack(&mut self, key: &MsgKey) -> Option<Entry<W>> {
        let entry = self.entries.remove(key)?;
        self.bytes -= entry.payload.len();
        Some(entry)
    }

    /// [`ack`](Self::ack) for an ACK that arrived at `now`: a message sent
    /// only once also gives a round-trip sample.
    pub fn ack_at(&mut self, key: &MsgKey, now: Instant) -> Option<Entry<W>> {
        let entry = self.ack(key)?;
        if entry.resends == 0 {
            self.rtt
                .sample(now.saturating_duration_since(entry.last_sent));
        }
        Some(entry)
    }

    /// The round-trip estimate from this set's ACKs.
    pub fn rtt(&self) -> RttEstimate {
        self.rtt
    }

    /// The timer fired at `now`: the messages past their deadline are
    /// removed (with their waiters), and, when `resending` (the link is
    /// up), those due for a resend are marked resent and returned, in the
    /// order first sent. A message is due one resend timeout after it was
    /// sent (`interval`, or more when the round trips measured from ACKs are
    /// longer: [`RttEstimate::rto`]), then after twice that, four and eight
    /// times (capped), so a peer that is slow rather than lossy is not
    /// flooded with copies. Without `resending` nothing is marked: a
    /// redialled connection sends all at once ([`resend_all`](Self::resend_all)).
    pub fn handle_timeout(&mut self, now: Instant, resending: bool) -> Tick<W> {
        let bytes = &mut self.bytes;
        let expired = self
            .entries
            .extract_if(|_, e| e.deadline <= now)
            .map(|(k, e)| {
                *bytes -= e.payload.len();
                (k, e.payload, e.waiter)
            })
            .collect();
        let rto = self.rtt.rto(self.interval);
        let transfer = at_rate(self.rate);
        let mut due: Vec<(MsgKey, Bytes)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (&id, e) in self.entries.iter_mut() {
            let at = last_due(e, rto, &transfer);
            if resending && at <= now {
                e.last_sent = now;
                e.resends += 1;
                unshare(e);
                due.push((id, e.payload.clone()));
            }
            let again = if resending {
                last_due(e, rto, &transfer)
            } else {
                e.deadline
            };
            let at = again.min(e.deadline);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        self.next_due = next;
        // In the order they were first sent, so one sender's messages stay
        // in order when they all go again.
        due.sort_unstable_by_key(|(id, _)| *id);
        Tick {
            resend: due.into_iter().map(|(_, p)| p).collect(),
            expired,
        }
    }

    /// Every message held, in the order first sent, each marked resent at
    /// `now`: a connection's new session takes them all at once (the
    /// peer's new session has a new duplicate window, so none is a
    /// duplicate there, and none should wait out a backoff from before).
    pub fn resend_all(&mut self, now: Instant) -> Vec<Bytes> {
        let mut all: Vec<(MsgKey, Bytes)> = self
            .entries
            .iter_mut()
            .map(|(&id, e)| {
                e.last_sent = now;
                e.resends = e.resends.saturating_add(1);
                unshare(e);
                (id, e.payload.clone())
            })
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        if !all.is_empty() {
            // Due again one (backed-off) timeout from now at the latest.
            self.next_due = Some(self.next_due.map_or(now, |d| d.min(now)));
        }
        all.into_iter().map(|(_, p)| p).collect()
    }

    /// Removes the messages someone waits on, returning the waiters; the
    /// others stay to be resent.
    pub fn drain_waiters(&mut self) -> Vec<W> {
        let bytes = &mut self.bytes;
        self.entries
            .extract_if(|_, e| e.waiter.is_some())
            .filter_map(|(_, e)| {
                *bytes -= e.payload.len();
                e.waiter
            })
            .collect()
    }

    /// Removes everything, returning the waiters.
    pub fn drain(&mut self) -> Vec<W> {
        self.bytes = 0;
        self.order.clear();
        self.next_due = None;
        self.entries.drain().filter_map(|(_, e)| e.waiter).collect()
    }

    /// Payload bytes of the messages waiting for an ACK.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages waiting for an ACK.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No message waits for an ACK.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u64) -> MsgKey {
        id
    }

    /// A small payload split off a shared buffer gets one of its own at
    /// its first resend (so it no longer keeps the rest alive), with the
    /// same bytes; a large one is kept as it is.
    #[test]
    fn a_first_resend_unshares_a_small_payload() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut chunk = bytes::BytesMut::from(&b"small-large"[..]);
        let small = chunk.split_to(5).freeze();
        let big = Bytes::from(vec![b'x'; UNSHARE_MAX + 1]);
        let mut s: PendingSet<()> = PendingSet::new(10, Duration::from_secs(1));
        s.insert(key(1), small.clone(), now, later, None).unwrap();
        s.insert(key(2), big.clone(), now, later, None).unwrap();
        let tick = s.handle_timeout(now + Duration::from_secs(2), true);
        assert_eq!(tick.resend.len(), 2);
        assert_eq!(tick.resend[0], small);
        assert_ne!(tick.resend[0].as_ptr(), small.as_ptr(), "a copy of its own");
        assert_eq!(tick.resend[1].as_ptr(), big.as_ptr(), "not copied");
        let all = s.resend_all(now + Duration::from_secs(3));
        assert_eq!(all[0].as_ptr(), tick.resend[0].as_ptr(), "copied once");
    }

    #[test]
    fn ack_removes_and_returns_waiter() {
        let now = Instant::now();
        let mut s = PendingSet::new(10, Duration::from_secs(1));
        s.insert(
            key(1),
            Bytes::from("p"),
            now,
            now + Duration::from_secs(5),
            Some("w"),
        )
        .unwrap();
        assert_eq!(s.ack(&key(1)).and_then(|e| e.waiter), Some("w"));
        assert!(s.ack(&key(1)).is_none(), "a second ACK finds nothing");
        assert!(s.is_empty());
    }

    #[test]
    fn bytes_follow_every_way_in_and_out() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut s = PendingSet::new(10, Duration::from_secs(1));
        s.insert(key(1), Bytes::from("aaa"), now, later, Some(1))
            .unwrap();
        s.insert(key(2), Bytes::from("bb"), now, now, None).unwrap();
        s.insert(key(3), Bytes::from("c"), now, later, None)
            .unwrap();
        s.insert(key(4), Bytes::from("dddd"), now, later, Some(4))
            .unwrap();
        assert_eq!(s.bytes(), 10);
        // The same msg_id again replaces, it does not add.
        s.insert(key(3), Bytes::from("cc"), now, later, None)
            .unwrap();
        assert_eq!(s.bytes(), 11);
        s.ack_at(&key(1), now).unwrap();
        assert_eq!(s.bytes(), 8);
        assert_eq!(s.handle_timeout(now, false).expired.len(), 1);
        assert_eq!(s.bytes(), 6, "an expired message frees its bytes");
        assert_eq!(s.drain_waiters(), vec![4]);
        assert_eq!(s.bytes(), 2);
        s.drain();
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn resends_back_off_and_expire_at_the_deadline() {
        let t0 = Instant::now();

        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s: PendingSet<()> = PendingSet::new(10, Duration::from_secs(1));
        s.insert(key(1), Bytes::from("a"), t0, at(10_000), None)
            .unwrap();
        assert!(s.handle_timeout(at(500), true).resend.is_empty());
        let t = s.handle_timeout(at(1000), true);
        assert_eq!(t.resend, vec![Bytes::from("a")]);
        // Then 2 s, 4 s, 8 s, 8 s ... after each resend.
        assert!(s.handle_timeout(at(2500), true).resend.is_empty());
        assert_eq!(s.handle_timeout(at(3000), true).resend.len(), 1);
        assert!(s.handle_timeout(at(6500), true).resend.is_empty());
        assert_eq!(s.handle_timeout(at(7000), true).resend.len(), 1);
        let t = s.handle_timeout(at(9999), true);
        assert!(t.resend.is_empty() && t.expired.is_empty());
        let t = s.handle_timeout(at(10_000), true);
        assert_eq!(t.expired.len(), 1, "expired at its deadline");
        assert!(s.is_empty());
    }

    #[test]
    fn round_trips_from_acks_stretch_the_resend_timer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let iv = ms(50);
        let mut s: PendingSet<()> = PendingSet::new(10, iv);
        assert_eq!(s.rtt().rto(iv), iv, "no sample yet: the interval");
        // A loaded peer ACKs after 300 ms, steadily.
        for id in 0..20 {
            let sent = t0 + ms(id * 10);
            s.insert(key(id), Bytes::new(), sent, sent + ms(10_000), None)
                .unwrap();
            s.ack_at(&key(id), sent + ms(300)).unwrap();
        }
        let rto = s.rtt().rto(iv);
        assert!(rto >= ms(300) && rto < ms(400), "{rto:?}");
        // A message sent now is not resent at 50 ms, only after the RTO.
        let sent = t0 + ms(1000);
        s.insert(key(99), Bytes::new(), sent, sent + ms(10_000), None)
            .unwrap();
        assert!(s.handle_timeout(sent + ms(100), true).resend.is_empty());
        assert_eq!(s.handle_timeout(sent + rto, true).resend.len(), 1);
        // The ACK of a resent message is ambiguous: no sample (Karn).
        let before = s.rtt().srtt();
        s.ack_at(&key(99), sent + ms(5000)).unwrap();
        assert_eq!(s.rtt().srtt(), before);
    }

    #[test]
    fn the_resend_timeout_is_bounded() {
        let mut r = RttEstimate::default();
        r.sample(Duration::from_secs(3600));
        assert_eq!(r.rto(Duration::from_millis(50)), MAX_RTO);
        assert_eq!(
            r.rto(Duration::from_secs(120)),
            Duration::from_secs(120),
            "a configured interval above the cap wins"
        );
        let mut fast = RttEstimate::default();
        fast.sample(Duration::from_micros(80));
        assert_eq!(
            fast.rto(Duration::from_secs(1)),
            Duration::from_secs(1),
            "never below the configured interval"
        );
    }

    #[test]
    fn link_down_only_expires() {
        let t0 = Instant::now();
        let mut s = PendingSet::new(10, Duration::from_secs(1));
        s.insert(
            key(1),
            Bytes::new(),
            t0,
            t0 + Duration::from_secs(9),
            Some(1),
        )
        .unwrap();
        s.insert(key(2), Bytes::new(), t0, t0 + Duration::from_secs(9), None)
            .unwrap();
        assert!(
            s.handle_timeout(t0 + Duration::from_secs(2), false)
                .resend
                .is_empty()
        );
        assert_eq!(s.drain_waiters(), vec![1]);
        assert_eq!(s.len(), 1, "fire-and-forget messages stay to be resent");
        assert_eq!(
            s.handle_timeout(t0 + Duration::from_secs(2), true)
                .resend
                .len(),
            1
        );
    }

    #[test]
    fn the_timer_runs_only_while_something_is_held_and_when_due() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(1);
        let mut s: PendingSet<()> = PendingSet::new(10, iv);
        assert_eq!(s.poll_timeout(), None, "nothing held: no timer");
        s.insert(key(1), Bytes::new(), t0, t0 + Duration::from_secs(30), None)
            .unwrap();
        assert_eq!(s.poll_timeout(), Some(t0 + iv));
        // A deadline earlier than the first resend comes first.
        s.insert(
            key(2),
            Bytes::new(),
            t0,
            t0 + Duration::from_millis(300),
            None,
        )
        .unwrap();
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(300)));
        let t = s.handle_timeout(t0 + Duration::from_millis(300), true);
        assert_eq!(t.expired.len(), 1);
        assert_eq!(s.poll_timeout(), Some(t0 + iv));
        // Resent at 1 s: next due at 1 s + 2 s.
        assert_eq!(s.handle_timeout(t0 + iv, true).resend.len(), 1);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        // The link is down: only the deadline matters.
        assert!(s.handle_timeout(t0 + iv, false).resend.is_empty());
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        s.ack(&key(1));
        s.handle_timeout(t0 + Duration::from_secs(3), true);
        assert_eq!(s.poll_timeout(), None, "nothing held again");
    }

    #[test]
    fn the_oldest_unacknowledged_id_is_at_the_front() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut s: PendingSet<()> = PendingSet::new(100, Duration::from_secs(1));
        assert_eq!(s.oldest(), None);
        for id in 10..20 {
            s.insert(key(id), Bytes::new(), now, later, None).unwrap();
        }
        assert_eq!(s.oldest(), Some(10));
        for id in [10, 12, 11] {
            s.ack(&key(id));
        }
        assert_eq!(s.oldest(), Some(13));
        s.insert(key(13), Bytes::new(), now, later, None).unwrap();
        assert_eq!(s.order.len(), 7, "a replaced id is not queued twice");
        for id in 13..20 {
            s.ack(&key(id));
        }
        assert_eq!(s.oldest(), None);
        assert!(s.order.is_empty(), "acknowledged ids leave the queue");
    }

    #[test]
    fn a_new_session_takes_everything_at_once_in_order() {
        let t0 = Instant::now();

        let mut s: PendingSet<()> = PendingSet::new(100, Duration::from_secs(1));
        for id in [3, 1, 2] {
            let p = Bytes::from(id.to_string());
            s.insert(key(id), p, t0, t0 + Duration::from_secs(60), None)
                .unwrap();
        }
        // Resent a few times (backed off) before the link went down.
        for secs in [1, 3, 7] {
            assert_eq!(
                s.handle_timeout(t0 + Duration::from_secs(secs), true)
                    .resend
                    .len(),
                3
            );
        }
        let now = t0 + Duration::from_secs(8);
        assert!(s.handle_timeout(now, true).resend.is_empty(), "backed off");
        assert_eq!(s.resend_all(now), ["1", "2", "3"].map(Bytes::from));
        // Their ACKs give no round-trip sample (Karn).
        s.ack_at(&key(1), now + Duration::from_millis(5));
        assert_eq!(s.rtt().srtt(), None);
    }

    #[test]
    fn a_large_message_is_given_its_transfer_time_before_a_resend() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(1);
        let mut s: PendingSet<()> = PendingSet::new(10, iv).with_transfer_rate(1 << 20);
        let big = Bytes::from(vec![0u8; 4 << 20]);
        s.insert(key(1), big, t0, t0 + Duration::from_secs(60), None)
            .unwrap();
        s.insert(key(2), Bytes::new(), t0, t0 + Duration::from_secs(60), None)
            .unwrap();
        assert_eq!(s.poll_timeout(), Some(t0 + iv), "the small one first");
        let t = s.handle_timeout(t0 + iv, true);
        assert_eq!(t.resend, [Bytes::new()], "4 MiB at 1 MiB/s: 4 s more");
        s.ack(&key(2));
        assert!(
            s.handle_timeout(t0 + Duration::from_millis(4999), true)
                .resend
                .is_empty()
        );
        assert_eq!(
            s.handle_timeout(t0 + Duration::from_secs(5), true)
                .resend
                .len(),
            1
        );
    }

    #[test]
    fn bounded() {
        let now = Instant::now();
        let mut s: PendingSet<()> = PendingSet::new(1, Duration::from_secs(1));
        s.insert(key(1), Bytes::new(), now, now, None).unwrap();
        assert_eq!(
            s.insert(key(2), Bytes::new(), now, now, None),
            Err(SetFull(1))
        );
    }

    #[test]
    fn resends_go_in_the_order_first_sent() {
        let t0 = Instant::now();
        let iv = Duration::from_secs(1);
        let mut s: PendingSet<()> = PendingSet::new(100, Duration::from_secs(1));
        for id in (0..50).rev() {
            let p = Bytes::from(id.to_string());
            s.insert(key(id), p, t0, t0 + Duration::from_secs(9), None)
                .unwrap();
        }
        let want: Vec<Bytes> = (0..50).map(|id: u64| Bytes::from(id.to_string())).collect();
        assert_eq!(s.handle_timeout(t0 + iv, true).resend, want);
    }
}
