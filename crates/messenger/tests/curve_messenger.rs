//! CURVE through the library, messenger to messenger, on tcp and ipc: the
//! listener proves its key, clients prove theirs, the server loop sees the
//! client's key, and the allow-list, a wrong server key and a clear-text
//! peer are refused with nothing delivered. (Against libzmq: tests/curve.rs
//! and tests/curve_engine.rs.)

use messenger_testkit as common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Answer, RAW_TRANSPORTS, serve_seen, within};
use messenger::curve::{KeyPair, PublicKey};
use messenger::{Config, Curve, ECHO, Error, Messenger, NOOP};

fn pair() -> KeyPair {
    KeyPair::generate().expect("keys")
}

fn server_config(keys: &KeyPair, allow: Option<&[PublicKey]>) -> Config {
    Config {
        curve: Some(Curve {
            keys: keys.clone(),
            server_key: None,
            allow: allow.map(|a| Arc::new(a.iter().copied().collect::<HashSet<_>>())),
        }),
        ..Config::default()
    }
}

fn client(keys: &KeyPair, server_key: PublicKey) -> Messenger {
    let config = Config {
        curve: Some(Curve {
            keys: keys.clone(),
            server_key: Some(server_key),
            allow: None,
        }),
        ..Config::default()
    };
    Messenger::builder()
        .identity("curve-client")
        .config(config)
        .build()
        .expect("client")
}

#[tokio::test]
async fn curve_carries_requests_and_names_the_client_key() {
    for t in RAW_TRANSPORTS {
        let (server_keys, client_keys) = (pair(), pair());
        let config = server_config(&server_keys, None);
        let (server, bound, _place, seen) = serve_seen(t, config, Answer::Re).await;
        let c = client(&client_keys, *server_keys.public());
        let conn = within(10, "connect", c.make_connection(&bound.endpoint))
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let echo = within(10, "echo", c.request(conn, ECHO, b"hello"))
            .await
            .unwrap();
        assert_eq!(&echo.body[..], b"hello", "{t}");
        within(10, "slc", c.request(conn, NOOP, b"to the loop"))
            .await
            .unwrap();
        let got = seen.all();
        assert_eq!(got.len(), 1, "{t}: {got:?}");
        assert_eq!(
            got[0].peer_key,
            Some(*client_keys.public()),
            "{t}: the server loop sees the client's proven key"
        );
        c.shutdown().await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_keys_clear_text_and_strangers_are_refused_with_nothing_delivered() {
    for t in RAW_TRANSPORTS {
        let (server_keys, friend, stranger) = (pair(), pair(), pair());
        let config = server_config(&server_keys, Some(&[*friend.public()]));
        let (server, bound, _place, seen) = serve_seen(t, config, Answer::Re).await;

        // Expecting another server's key: the WELCOME does not open.
        let wrong = client(&friend, *pair().public());
        let r = within(10, "wrong key", wrong.make_connection(&bound.endpoint)).await;
        assert!(matches!(r, Err(Error::Handshake { .. })), "{t}: {r:?}");

        // Clear text against a CURVE listener: the greetings disagree.
        let plain = Messenger::builder()
            .identity("plain")
            .build()
            .expect("plain");
        let r = within(10, "null", plain.make_connection(&bound.endpoint)).await;
        assert!(r.is_err(), "{t}: a NULL peer got in: {r:?}");

        // A client with a good handshake but not on the allow-list.
        let s = client(&stranger, *server_keys.public());
        let r = within(10, "stranger", s.make_connection(&bound.endpoint)).await;
        assert!(matches!(r, Err(Error::Handshake { .. })), "{t}: {r:?}");
        assert_eq!(server.stats().curve_refused, 1, "{t}");

        // The friend is let in, and only its message is delivered.
        let f = client(&friend, *server_keys.public());
        let conn = within(10, "friend", f.make_connection(&bound.endpoint))
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        within(10, "friend's request", f.request(conn, NOOP, b"friend"))
            .await
            .unwrap();
        assert_eq!(seen.bodies(), vec![b"friend".to_vec()], "{t}");
        for m in [wrong, plain, s, f] {
            m.shutdown().await;
        }
        server.shutdown().await;
    }
}
