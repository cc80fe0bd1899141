//! Batches of sends from one thread (`Messenger::batch`): their writes
//! wait for the batch's end and then leave together, in order; a batch
//! that panics gives its connections back; a batch inside a batch joins
//! it; a batch that fills a connection's buffer gets `Full`, not a hang,
//! and sends what was taken. On tcp, ipc and inproc alike (inproc writes
//! nothing, so only the delivery is checked there; it has no buffer to
//! fill).

use messenger_testkit as common;

use common::{Answer, Seen, TRANSPORTS, connect, eventually, round_trip, serve_seen};
use messenger::{Config, ConnectionId, ECHO, Messenger, NOOP};

/// Messages sent in a batch.
const N: usize = 100;

fn bodies(from: usize) -> Vec<String> {
    (from..from + N).map(|i| format!("record {i}")).collect()
}

/// A server that records what it gets and answers nothing, and a client
/// connected to it, on `t`.
struct Fixture {
    /// The listener's messenger.
    server: Messenger,
    /// The messenger that batches.
    client: Messenger,
    /// Its connection to the server.
    conn: ConnectionId,
    /// What the server's loop got, in order.
    seen: Seen,
    /// Keeps an ipc path alive.
    _place: common::Place,
}

impl Fixture {
    async fn new(t: &str) -> Fixture {
        Fixture::with_client(t, Config::default()).await
    }

    /// [`new`](Self::new) with the client's `config`.
    async fn with_client(t: &str, config: Config) -> Fixture {
        let (server, bound, place, seen) = serve_seen(t, Config::default(), Answer::Nothing).await;
        let (client, conn) = connect(config, &bound.endpoint).await;
        Fixture {
            server,
            client,
            conn,
            seen,
            _place: place,
        }
    }

    /// Sends the batch's `N` messages (without a batch of its own).
    fn send_all(&self) {
        for body in bodies(0) {
            self.client
                .try_send_message(self.conn, NOOP, body, None)
                .unwrap_or_else(|e| panic!("send in a batch: {e}"));
        }
    }

    /// Waits until the server has all `N`, then shuts both down.
    async fn arrived(self, t: &str) {
        eventually(5, &format!("{t}: the batch arrives"), || {
            self.seen.len() == N
        })
        .await;
        assert_eq!(self.seen.texts(), bodies(0), "{t}: in order");
        self.shutdown().await;
    }

    /// Shuts the client down, then the server.
    async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

#[tokio::test]
async fn a_batch_writes_when_it_ends() {
    for t in TRANSPORTS {
        let f = Fixture::new(t).await;
        let before = f.client.stats().bytes_sent;
        let held = f.client.batch(|| {
            f.send_all();
            f.client.stats().bytes_sent
        });
        // Inside the batch nothing was written; at its end, all of it.
        assert_eq!(held, before, "{t}: written inside the batch");
        if t != "inproc" {
            assert!(
                f.client.stats().bytes_sent > before,
                "{t}: not written at the end"
            );
        }
        f.arrived(t).await;
    }
}

#[tokio::test]
async fn a_batch_inside_a_batch_joins_it() {
    for t in TRANSPORTS {
        let f = Fixture::new(t).await;
        let before = f.client.stats().bytes_sent;
        let held = f.client.batch(|| {
            f.client.batch(|| f.send_all());
            // The inner batch's end is the outer one's business.
            f.client.stats().bytes_sent
        });
        assert_eq!(held, before, "{t}: the inner batch wrote");
        f.arrived(t).await;
    }
}

#[tokio::test]
async fn a_batch_that_panics_still_writes_and_frees_the_connection() {
    for t in TRANSPORTS {
        let f = Fixture::new(t).await;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.client.batch(|| {
                f.send_all();
                panic!("the batch's caller broke");
            })
        }));
        assert!(panicked.is_err());
        // The connection writes as before: a round trip outside a batch.
        round_trip(5, &f.client, f.conn, ECHO, b"after", &format!("{t}: after")).await;
        f.arrived(t).await;
    }
}

#[tokio::test]
async fn a_batch_that_fills_the_buffer_gets_full_and_sends_what_it_took() {
    // tcp and ipc: inproc has no buffer to fill.
    for t in common::RAW_TRANSPORTS {
        let small = Config {
            send_buffer_size: 8 * 1024,
            ..Config::default()
        };
        let f = Fixture::with_client(t, small).await;
        let (client, conn) = (&f.client, f.conn);
        let body = vec![b'x'; 1024];
        // Nothing is written inside the batch, so the buffer fills and
        // stays full: sends fail with Full instead of waiting for ever.
        let (taken, full) = client.batch(|| {
            let mut taken = 0;
            let mut full = 0;
            for _ in 0..32 {
                match client.try_send_message(conn, NOOP, &body, None) {
                    Ok(_) => taken += 1,
                    Err(messenger::Error::Full) => full += 1,
                    Err(e) => panic!("{t}: {e}"),
                }
            }
            (taken, full)
        });
        assert!(taken > 0 && full > 0, "{t}: {taken} taken, {full} full");
        assert!(taken * 1024 <= 8 * 1024 + 1024 + 64, "{t}: {taken} taken");
        eventually(5, &format!("{t}: what was taken arrives"), || {
            f.seen.len() == taken
        })
        .await;
        // And the connection goes on.
        round_trip(5, client, conn, ECHO, b"after", &format!("{t}: after")).await;
        f.shutdown().await;
    }
}
