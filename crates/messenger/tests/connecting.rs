//! `make_connection` while other dials are under way. A dial to a peer
//! that never finishes its handshake (a hung process, a listener that
//! never accepts) waits up to `connect_timeout`; it must hold up only
//! itself, not the messenger's dials to other endpoints, and a shutdown
//! must end it at once, with `Shutdown`.

use messenger_testkit as common;

use std::time::Duration;

use common::raw_zmtp::RawListener;
use common::{RAW_TRANSPORTS, TRANSPORTS, no_slc, serve, within};
use messenger::{Config, Error, Messenger};

/// Long enough that a dial held behind a silent one is plainly held.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

fn dialler() -> Messenger {
    Messenger::builder()
        .identity("dialler")
        .config(Config {
            connect_timeout: CONNECT_TIMEOUT,
            ..Config::default()
        })
        .build()
        .unwrap()
}

/// While one dial waits on a listener that never accepts, a dial to a
/// healthy listener (any transport) completes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_holds_up_no_other_dial() {
    for silent_t in RAW_TRANSPORTS {
        for t in TRANSPORTS {
            // Bound, never accepted: the connect succeeds, the handshake
            // never comes.
            let (_silent, silent_at, _sp) = RawListener::bind(silent_t).await;
            let (server, bound, _p) = serve(t, Config::default(), no_slc).await;
            let m = dialler();
            let stuck = {
                let m = m.clone();
                tokio::spawn(async move { m.make_connection(&silent_at).await })
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!stuck.is_finished(), "{silent_t}: the silent dial ended");
            let conn = within(
                3,
                &format!("a {t} dial while a {silent_t} dial waits"),
                m.make_connection(&bound.endpoint),
            )
            .await
            .unwrap_or_else(|e| panic!("{t} behind {silent_t}: {e}"));
            assert!(m.is_connected(conn), "{t} behind {silent_t}");
            stuck.abort();
            m.shutdown().await;
            server.shutdown().await;
        }
    }
}

/// A shutdown ends a dial under way with `Shutdown`, at once, and leaves
/// no connection behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_dial_under_way() {
    for t in RAW_TRANSPORTS {
        let (_silent, silent_at, _sp) = RawListener::bind(t).await;
        let m = dialler();
        let stuck = {
            let m = m.clone();
            tokio::spawn(async move { m.make_connection(&silent_at).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        within(5, "shutdown", m.shutdown()).await;
        let outcome = within(3, &format!("{t}: the dial after shutdown"), stuck)
            .await
            .unwrap();
        assert!(
            matches!(outcome, Err(Error::Shutdown)),
            "{t}: the dial ended with {outcome:?}"
        );
        assert_eq!(m.stats().connections, 0, "{t}");
    }
}
