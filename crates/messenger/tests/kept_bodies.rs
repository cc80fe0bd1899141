//! What a kept message costs its receiver. A replica keeps the log
//! batches it is sent until it applies them; a server loop may keep
//! bodies for later. A body is a view of the buffer it was read into
//! (no copy), so keeping it keeps that buffer: the memory a kept message
//! holds is its share of a read buffer, which must stay near its own size
//! however the messages arrive.
//!
//! The hard case is one message per read (requests answered one at a
//! time): each read brought about a hundred bytes, and each took a fresh
//! 16 KiB buffer, so every kept 63-byte body held one of its own (4.3 KiB
//! of resident memory per body, measured over tcp).
//!
//! The messengers run in this test process, so its resident set
//! (`/proc/self/statm`) is their memory; this file holds one test, so no
//! other test's memory is counted.

use messenger_testkit as common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::memory::{mib, rss};
use common::{TRANSPORTS, pair, within};
use messenger::{Config, Incoming, Responder};
use messenger_proto::wire;

/// Bodies kept before the resident set is first read (buffers, pools and
/// the keeper's vector at their working size).
const WARM_UP: usize = 1_000;
/// Bodies kept between the two readings.
const KEPT: usize = 5_000;
/// What each kept body may add to the resident set: its own 63 bytes, the
/// keeper's `Bytes` (32), and a share of a read buffer. One read buffer
/// per body was 4,300 bytes each.
const MAX_PER_BODY: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_body_holds_about_its_own_size() {
    for t in TRANSPORTS {
        let kept: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let keeper = Arc::clone(&kept);
        let slc = move |m: Incoming, r: Responder| {
            keeper.lock().unwrap().push(m.body);
            let _ = r.try_reply(b"kept");
        };
        let p = pair(t, Config::default(), Config::default(), slc).await;
        kept.lock().unwrap().reserve(WARM_UP + KEPT);
        let mut warm = 0;
        for i in 0..WARM_UP + KEPT {
            if i == WARM_UP {
                warm = rss();
            }
            // One at a time: each read holds one request.
            let reply = within(
                5,
                "request",
                p.client.request(p.conn, wire::NOOP, format!("{i:063}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{t}: request {i}: {e}"));
            assert_eq!(&reply.body[..], b"kept", "{t}");
        }
        let grown = rss().saturating_sub(warm);
        let per_body = grown / KEPT as u64;
        println!(
            "{t}: {KEPT} kept bodies of 63 bytes: resident set +{:.2} MiB, {per_body} bytes each",
            mib(grown)
        );
        assert_eq!(kept.lock().unwrap().len(), WARM_UP + KEPT, "{t}");
        assert!(
            per_body <= MAX_PER_BODY,
            "{t}: each kept 63-byte body holds {per_body} bytes of memory (at most {MAX_PER_BODY})"
        );
        p.shutdown().await;
    }
}
