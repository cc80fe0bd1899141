//! Property tests of the pure parts: the wire format, the duplicate window,
//! the callback table and the ZMTP frame decoder, each against a simple model or
//! an invariant. Case counts are kept modest so the file runs in seconds;
//! the fuzz targets in fuzz/ explore the same code for longer.

use messenger_testkit as common;

use std::collections::{BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};
use common::raw_zmtp::{COMMAND, LONG, MORE, frame};
use messenger_proto::callbacks::{CallbackTable, TableFull};
use messenger_proto::dedup::{DedupWindow, Verdict};
use messenger_proto::wire::{self, Payload};
use proptest::prelude::*;
use zmtp::{Decoded, FrameDecoder, Limits, ZmtpError};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files in the source tree: a failure prints its
        // minimal input, which goes into a unit test.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Ids that reach the edges of u64 often.
fn id() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        0u64..16,
        (u64::MAX - 16)..=u64::MAX,
        any::<u64>(),
    ]
}

/// Bytes biased towards what the parser looks at: digits and '-'.
fn wireish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => b'0'..=b'9',
            3 => Just(b'-'),
            1 => any::<u8>(),
        ],
        0..48,
    )
}

// ---------------------------------------------------------------------------
// The wire format

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn encode_then_parse_round_trips(
        msg_id in id(),
        src_cb in id(),
        dst_cb in id(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        dashes in 0usize..4,
    ) {
        // Bodies may start or end with '-' or be nothing but dashes.
        let mut body = body;
        body.splice(0..0, std::iter::repeat_n(b'-', dashes));
        let encoded = wire::encode(msg_id, src_cb, dst_cb, &body);
        prop_assert_eq!(encoded.len(), wire::encoded_len(msg_id, src_cb, dst_cb, body.len()));
        let parsed = wire::parse(&encoded);
        prop_assert_eq!(
            parsed,
            Ok(Payload { msg_id, src_cb, dst_cb, body: Bytes::from(body) })
        );
    }

    #[test]
    fn every_byte_value_survives_in_a_body(byte in any::<u8>(), n in 0usize..8) {
        let body = vec![byte; n];
        let p = wire::parse(&wire::encode(1, 2, 3, &body)).expect("valid");
        prop_assert_eq!(&p.body[..], &body[..]);
    }

    #[test]
    fn parse_never_panics_and_what_it_accepts_is_consistent(
        raw in prop_oneof![wireish(), prop::collection::vec(any::<u8>(), 0..64)],
    ) {
        let payload = Bytes::from(raw);
        let header = wire::parse_header(&payload);
        match wire::parse(&payload) {
            Ok(p) => {
                let h = header.expect("parse and parse_header agree");
                prop_assert_eq!((h.msg_id, h.src_cb, h.dst_cb), (p.msg_id, p.src_cb, p.dst_cb));
                prop_assert_eq!(&payload[h.body_start..], &p.body[..]);
                // The canonical form is no longer and parses to the same.
                let canon = wire::encode(p.msg_id, p.src_cb, p.dst_cb, &p.body);
                prop_assert!(canon.len() <= payload.len());
                prop_assert_eq!(wire::parse(&canon), Ok(p));
            }
            Err(e) => prop_assert_eq!(header, Err(e)),
        }
    }

    #[test]
    fn leading_zeros_parse_to_the_same_ids(
        ids in (id(), id(), id()),
        zeros in (0usize..4, 0usize..4, 0usize..25),
        body in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let (m, s, d) = ids;
        let z = |n: usize| "0".repeat(n);
        let mut raw = format!("{}{m}-{}{s}-{}{d}-", z(zeros.0), z(zeros.1), z(zeros.2)).into_bytes();
        raw.extend_from_slice(&body);
        let p = wire::parse(&Bytes::from(raw)).expect("leading zeros are digits");
        prop_assert_eq!((p.msg_id, p.src_cb, p.dst_cb), (m, s, d));
        prop_assert_eq!(&p.body[..], &body[..]);
    }

    #[test]
    fn frame_shapes_follow_the_table(
        frames in prop::collection::vec(
            prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 0..4)],
            0..6,
        ),
    ) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        let n = frames.len();
        let router = wire::router_frames(frames.clone());
        prop_assert_eq!(router.is_ok(), n == 3 && frames[1].is_empty());
        if let Ok((peer, payload)) = router {
            prop_assert_eq!((peer, payload), (frames[0].clone(), frames[2].clone()));
        }
        let dealer = wire::from_router(&mut frames.clone());
        let ok = (n == 3 && frames[1].is_empty()) || (n == 2 && frames[0].is_empty());
        prop_assert_eq!(dealer.is_ok(), ok);
        if let Ok(payload) = dealer {
            prop_assert_eq!(payload, frames[n - 1].clone());
        }
        let from_dealer = wire::from_dealer(&mut frames.clone());
        prop_assert_eq!(from_dealer.is_ok(), n == 2 && frames[0].is_empty());
    }
}

// ---------------------------------------------------------------------------
// The duplicate window against a set of recorded ids

/// Ids in a range of 600 at a base that may sit at 0, at u64::MAX or
/// anywhere: wider than the 256-id window under test, so ids leave it.
fn id_run() -> impl Strategy<Value = (u64, Vec<u64>)> {
    let base = prop_oneof![Just(0u64), Just(u64::MAX - 599), 0u64..=(u64::MAX - 599)];
    (base, prop::collection::vec(0u64..600, 1..400))
}

/// The ids to ask the window about: the run, and around the base.
fn probes(base: u64) -> impl Iterator<Item = u64> {
    (0..600)
        .step_by(7)
        .map(move |i| base + i)
        .chain([0, base.saturating_sub(1)])
}

proptest! {
    #![proptest_config(config(256))]

    /// The window never takes a recorded id for new (no duplicate is
    /// delivered) and never takes an id that was not recorded for a
    /// duplicate (nothing is ACKed undelivered). Inside the window (the 256
    /// ids below one past the highest recorded) it is exact; below it, an
    /// id is a duplicate if every id below it was recorded, else stale.
    #[test]
    fn dedup_window_is_exact_inside_and_never_wrong_outside((base, offsets) in id_run()) {
        let mut w = DedupWindow::new(256);
        let mut model = BTreeSet::new();
        for off in offsets {
            let id = base + off;
            let verdict = w.check(id);
            let high = model.last().map_or(0u128, |&h| u128::from(h) + 1);
            let inside = u128::from(id) + 256 >= high;
            match verdict {
                Verdict::New => prop_assert!(!model.contains(&id), "recorded {} taken for new", id),
                Verdict::Duplicate => prop_assert!(model.contains(&id), "{} never recorded", id),
                Verdict::Stale => prop_assert!(!inside, "{} inside the window is stale", id),
            }
            if inside {
                let want = if model.contains(&id) { Verdict::Duplicate } else { Verdict::New };
                prop_assert_eq!(verdict, want, "id {}", id);
            }
            if verdict == Verdict::New {
                w.record(id);
                model.insert(id);
            }
            prop_assert!(w.memory() <= 256 / 8);
            for probe in probes(base) {
                let high = model.last().map_or(0u128, |&h| u128::from(h) + 1);
                let recorded = model.contains(&probe);
                match w.check(probe) {
                    Verdict::New => prop_assert!(!recorded, "probe {} recorded", probe),
                    Verdict::Duplicate => prop_assert!(recorded, "probe {} not recorded", probe),
                    Verdict::Stale => prop_assert!(u128::from(probe) + 256 < high),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The callback table against a map of live entries

#[derive(Debug, Clone)]
enum Op {
    Insert,
    /// Take the i-th live entry (modulo their number).
    TakeLive(usize),
    /// Take an id that was live once and has been taken since.
    TakeDead(usize),
    /// Take an arbitrary id.
    TakeAny(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Insert),
        3 => any::<usize>().prop_map(Op::TakeLive),
        1 => any::<usize>().prop_map(Op::TakeDead),
        1 => any::<u64>().prop_map(Op::TakeAny),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn callback_ids_never_collide_with_a_live_entry(
        limit in 1usize..12,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut table = CallbackTable::new(limit);
        let mut live: HashMap<u64, u32> = HashMap::new();
        let mut dead: Vec<u64> = Vec::new();
        let mut next_value = 0u32;
        for op in ops {
            match op {
                Op::Insert => {
                    next_value += 1;
                    match table.insert(next_value) {
                        Ok(id) => {
                            prop_assert!(id >= wire::FIRST_USER, "id {}", id);
                            prop_assert!(!live.contains_key(&id), "id {} is live already", id);
                            prop_assert!(!dead.contains(&id), "id {} was used before", id);
                            live.insert(id, next_value);
                        }
                        Err(TableFull(n)) => {
                            prop_assert_eq!(n, limit);
                            prop_assert_eq!(live.len(), limit);
                        }
                    }
                }
                Op::TakeLive(i) if !live.is_empty() => {
                    let mut ids: Vec<u64> = live.keys().copied().collect();
                    ids.sort_unstable();
                    let id = ids[i % ids.len()];
                    prop_assert_eq!(table.take(id), live.remove(&id));
                    dead.push(id);
                }
                Op::TakeLive(_) => {}
                Op::TakeDead(i) if !dead.is_empty() => {
                    let id = dead[i % dead.len()];
                    prop_assert!(!table.contains(id));
                    prop_assert_eq!(table.take(id), None);
                }
                Op::TakeDead(_) => {}
                Op::TakeAny(id) => {
                    prop_assert_eq!(table.take(id), live.remove(&id));
                    if id >= wire::FIRST_USER {
                        dead.push(id);
                    }
                }
            }
            prop_assert_eq!(table.len(), live.len());
            for (&id, &value) in &live {
                prop_assert!(table.contains(id));
                prop_assert_eq!(table.get_mut(id).copied(), Some(value));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The ZMTP frame decoder on valid streams

#[derive(Debug, Clone)]
struct FrameSpec {
    command: bool,
    more: bool,
    /// The long form even for a short body.
    long: bool,
    len: usize,
    fill: u8,
}

impl FrameSpec {
    /// `LONG` if the long form is asked for (a body over 255 bytes gets it
    /// anyway).
    fn long_flag(&self) -> u8 {
        if self.long { LONG } else { 0 }
    }
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        prop::bool::weighted(0.15),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![0usize..8, 0usize..300],
        any::<u8>(),
    )
        .prop_map(|(command, more, long, len, fill)| FrameSpec {
            command,
            more,
            long,
            len,
            fill,
        })
}

/// Feeds `stream` to `d` in chunks of the given sizes (cycled), collecting
/// what it decodes; the first error.
fn decode_in_chunks(
    d: &mut FrameDecoder,
    stream: &[u8],
    sizes: &[usize],
) -> Result<Vec<(Decoded, Vec<Bytes>)>, ZmtpError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + n).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(x) = d.decode(&mut buf)? {
            out.push((x, d.frames().clone()));
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decoder_takes_valid_streams_in_any_chunking(
        max in 20u64..2000,
        specs in prop::collection::vec(frame_spec(), 0..40),
        sizes in prop::collection::vec(1usize..100, 1..16),
        over_by in prop_oneof![Just(1u64), 1u64..1000, Just(1u64 << 40), Just(u64::MAX)],
    ) {
        let limits = Limits { max_message: max, max_frames: 1000, max_command: 300 };
        let mut stream = Vec::new();
        let mut want = Vec::new();
        let mut message: Vec<Bytes> = Vec::new();
        let mut message_total = 0u64;
        for s in &specs {
            if s.command {
                let body = vec![s.fill; s.len];
                stream.extend(frame(COMMAND | s.long_flag(), &body));
                want.push((Decoded::Command(Bytes::from(body)), message.clone()));
                continue;
            }
            // Each multipart message stays within `max`, headers included:
            // a frame that would not fit is left out.
            let len = s.len as u64;
            let header = if s.long || len > 255 { 9 } else { 2 };
            if message_total + header + len > max {
                continue;
            }
            let body = vec![s.fill; len as usize];
            let more = if s.more { MORE } else { 0 };
            stream.extend(frame(more | s.long_flag(), &body));
            message.push(Bytes::from(body));
            message_total += header + len;
            if !s.more {
                want.push((Decoded::Message, std::mem::take(&mut message)));
                message_total = 0;
            }
        }
        let mut d = FrameDecoder::new(limits);
        let got = decode_in_chunks(&mut d, &stream, &sizes);
        prop_assert!(got.is_ok(), "{:?}", got);
        let got = got.unwrap();
        // Commands decoded mid-message do not show that message's frames.
        let strip = |v: Vec<(Decoded, Vec<Bytes>)>| -> Vec<(Decoded, Vec<Bytes>)> {
            v.into_iter()
                .map(|(x, f)| match x {
                    Decoded::Command(_) => (x, Vec::new()),
                    Decoded::Message => (x, f),
                })
                .collect()
        };
        prop_assert_eq!(strip(got), strip(want));

        // Then a data header over the limit is refused, whatever its form.
        let declared = max.saturating_sub(message_total).saturating_add(over_by);
        let mut header = vec![MORE | LONG];
        header.extend_from_slice(&declared.to_be_bytes());
        let refused = decode_in_chunks(&mut d, &header, &sizes);
        prop_assert!(
            matches!(refused, Err(ZmtpError::MessageTooLarge { len, max: m }) if m == max && len > max),
            "{:?}", refused
        );
    }
}
