//! Batches of sends from one thread (`Messenger::batch`): their writes
//! wait for the batch's end and then leave together, in order; a batch
//! that panics gives its connections back; a batch inside a batch joins
//! it. On tcp, ipc and inproc alike (inproc writes nothing, so only the
//! delivery is checked there).

use messenger_testkit as common;

use common::{Answer, TRANSPORTS, connect, eventually, round_trip, serve_seen};
use messenger::{Config, ECHO, NOOP};

/// Messages sent in a batch.
const N: usize = 100;

fn bodies(from: usize) -> Vec<String> {
    (from..from + N).map(|i| format!("record {i}")).collect()
}

#[tokio::test]
async fn a_batch_writes_when_it_ends() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        let before = client.stats().bytes_sent;
        let held = client.batch(|| {
            for body in bodies(0) {
                client
                    .try_send_message(conn, NOOP, body, None)
                    .unwrap_or_else(|e| panic!("{t}: send in a batch: {e}"));
            }
            client.stats().bytes_sent
        });
        // Inside the batch nothing was written; at its end, all of it.
        assert_eq!(held, before, "{t}: written inside the batch");
        if t != "inproc" {
            assert!(
                client.stats().bytes_sent > before,
                "{t}: not written at the end"
            );
        }
        eventually(5, &format!("{t}: the batch arrives"), || seen.len() == N).await;
        assert_eq!(seen.texts(), bodies(0), "{t}: in order");
        client.shutdown().await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_batch_inside_a_batch_joins_it() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        let before = client.stats().bytes_sent;
        let held = client.batch(|| {
            client.batch(|| {
                for body in bodies(0) {
                    client.try_send_message(conn, NOOP, body, None).unwrap();
                }
            });
            // The inner batch's end is the outer one's business.
            client.stats().bytes_sent
        });
        assert_eq!(held, before, "{t}: the inner batch wrote");
        eventually(5, &format!("{t}: the batch arrives"), || seen.len() == N).await;
        client.shutdown().await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_batch_that_panics_still_writes_and_frees_the_connection() {
    for t in TRANSPORTS {
        let (server, bound, _p, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(Config::default(), &bound.endpoint).await;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            client.batch(|| {
                for body in bodies(0) {
                    client.try_send_message(conn, NOOP, body, None).unwrap();
                }
                panic!("the batch's caller broke");
            })
        }));
        assert!(panicked.is_err());
        eventually(5, &format!("{t}: the batch arrives"), || seen.len() == N).await;
        // The connection writes as before: a round trip outside a batch.
        round_trip(5, &client, conn, ECHO, b"after", &format!("{t}: after")).await;
        client.shutdown().await;
        server.shutdown().await;
    }
}
