//! Micro-benchmarks of the pure hot-path pieces: the payload parser and
//! formatter, the callback table, the duplicate window, and CURVE's box
//! (seal and open in place under a precomputed key, as `zmtp` does).
//!
//! ```text
//! cargo bench --bench micro
//! cargo bench --bench micro -- wire/parse     # one group
//! ```

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use messenger_proto::callbacks::CallbackTable;
use messenger_proto::dedup::{DedupWindow, Verdict};
use messenger_proto::wire;

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

fn wire_benches(c: &mut Criterion) {
    // Typical ids: a msg_id in the millions, a callback id with a generation
    // (two 32-bit halves), ECHO.
    let (msg_id, src_cb, dst_cb) = (1_234_567u64, (17u64 << 32 | 4093) + 4, wire::ECHO);
    let mut g = c.benchmark_group("wire");
    for size in [64usize, 1024] {
        let b = body(size);
        let payload = wire::encode(msg_id, src_cb, dst_cb, &b);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("parse/{size}B"), |bench| {
            bench.iter(|| wire::parse(black_box(&payload)).expect("valid"))
        });
        g.bench_function(format!("parse_header/{size}B"), |bench| {
            bench.iter(|| wire::parse_header(black_box(&payload)).expect("valid"))
        });
        g.bench_function(format!("encode/{size}B"), |bench| {
            bench.iter(|| {
                wire::encode(
                    black_box(msg_id),
                    black_box(src_cb),
                    black_box(dst_cb),
                    black_box(&b),
                )
            })
        });
        let mut buf = BytesMut::with_capacity(wire::MAX_HEADER_LEN + size);
        g.bench_function(format!("encode_into_reused/{size}B"), |bench| {
            bench.iter(|| {
                buf.clear();
                wire::encode_into(
                    &mut buf,
                    black_box(msg_id),
                    black_box(src_cb),
                    black_box(dst_cb),
                    black_box(&b),
                );
                black_box(buf.len())
            })
        });
    }
    g.bench_function("ack", |bench| bench.iter(|| wire::ack(black_box(msg_id))));
    let ack: Bytes = wire::ack(msg_id);
    g.bench_function("parse/ack", |bench| {
        bench.iter(|| wire::parse(black_box(&ack)).expect("valid"))
    });
    g.finish();
}

/// A value the size of a request's bookkeeping entry, roughly.
type Entry = [u64; 8];

fn callback_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("callbacks");
    g.throughput(Throughput::Elements(1));
    // One request at a time: insert, then its reply takes it.
    g.bench_function("insert_take/1_pending", |bench| {
        let mut t: CallbackTable<Entry> = CallbackTable::new(1 << 20);
        bench.iter(|| {
            let id = t.insert([1; 8]).expect("room");
            black_box(t.take(black_box(id)))
        })
    });
    // N in flight: each insert is paired with taking the oldest one (FIFO
    // replies), so the table holds N entries throughout.
    g.throughput(Throughput::Elements(1000));
    for n in [1_000usize, 1_000_000] {
        g.bench_function(format!("insert_take/{n}_pending"), |bench| {
            bench.iter_batched_ref(
                || {
                    let mut t: CallbackTable<Entry> = CallbackTable::new(1 << 21);
                    let ids: VecDeque<u64> =
                        (0..n).map(|_| t.insert([1; 8]).expect("room")).collect();
                    (t, ids)
                },
                |(t, ids)| {
                    for _ in 0..1000 {
                        let id = t.insert([1; 8]).expect("room");
                        ids.push_back(id);
                        let old = ids.pop_front().expect("one");
                        black_box(t.take(old));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    // A late reply: the id is stale (slot reused with a new generation).
    g.bench_function("take_stale", |bench| {
        let mut t: CallbackTable<Entry> = CallbackTable::new(1 << 20);
        let stale = t.insert([1; 8]).expect("room");
        t.take(stale);
        let _live = t.insert([2; 8]).expect("room");
        bench.iter(|| black_box(t.take(black_box(stale))))
    });
    g.finish();
}

fn dedup_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(1));
    // In-order ids: what every message from a healthy peer costs.
    g.bench_function("check_record/in_order", |bench| {
        let mut w = DedupWindow::new(1 << 16);
        let mut id = 0u64;
        bench.iter(|| {
            let v = w.check(black_box(id));
            debug_assert_eq!(v, Verdict::New);
            w.record(id);
            id += 1;
        })
    });
    // A duplicate of an old id (a resend after a lost ACK), no gaps open.
    g.bench_function("check/duplicate", |bench| {
        let mut w = DedupWindow::new(1 << 16);
        for id in 0..10_000 {
            w.record(id);
        }
        bench.iter(|| black_box(w.check(black_box(5_000))))
    });
    // Out of order within a window of 64 (pipelined resends): every other
    // id arrives late, so a gap opens and closes each step.
    g.throughput(Throughput::Elements(2));
    g.bench_function("check_record/swapped_pairs", |bench| {
        let mut w = DedupWindow::new(1 << 16);
        let mut base = 0u64;
        bench.iter(|| {
            for id in [base + 1, base] {
                if w.check(black_box(id)) == Verdict::New {
                    w.record(id);
                }
            }
            base += 2;
        })
    });
    // NoisePage's one counter over three connections: every third id.
    g.throughput(Throughput::Elements(1));
    g.bench_function("check_record/sparse", |bench| {
        let mut w = DedupWindow::new(1 << 16);
        let mut id = 0u64;
        bench.iter(|| {
            let v = w.check(black_box(id));
            debug_assert_eq!(v, Verdict::New);
            w.record(id);
            id += 3;
        })
    });
    g.finish();
}

/// One CURVE box each way, as `zmtp::crypto` makes and opens every MESSAGE:
/// XSalsa20-Poly1305 in place under the precomputed key, dryoc's classic
/// API (the same calls as crates/zmtp/src/crypto.rs).
fn curve_box_benches(c: &mut Criterion) {
    use dryoc::classic::crypto_box::{
        crypto_box_beforenm, crypto_box_detached_afternm_inplace, crypto_box_keypair,
        crypto_box_open_detached_afternm_inplace,
    };
    let (ours_pk, _) = crypto_box_keypair();
    let (_, theirs_sk) = crypto_box_keypair();
    let Ok(key) = crypto_box_beforenm(&ours_pk, &theirs_sk) else {
        panic!("two fresh key pairs give a precomputed key");
    };
    let nonce = [7u8; 24];
    let mut g = c.benchmark_group("curve_box");
    for size in [64usize, 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = body(size);
        g.bench_function(format!("seal_open/{size}B"), |bench| {
            bench.iter(|| {
                let mut tag = [0u8; 16];
                crypto_box_detached_afternm_inplace(black_box(&mut buf), &mut tag, &nonce, &key);
                let opened = crypto_box_open_detached_afternm_inplace(
                    black_box(&mut buf),
                    &tag,
                    &nonce,
                    &key,
                );
                assert!(opened.is_ok());
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = wire_benches, callback_benches, dedup_benches, curve_box_benches
}
criterion_main!(benches);
