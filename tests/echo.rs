//! ECHO and request/reply round trips on every transport.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{TRANSPORTS, place, within};
use messenger::{Incoming, Messenger, Responder, wire};

fn no_slc(_: Incoming, _: Responder) {}

#[tokio::test]
async fn echo_round_trips_every_byte_value() {
    for t in TRANSPORTS {
        let p = place(t);
        let server = Messenger::new("server").unwrap();
        let bound = server
            .listen_for_connection(&p.endpoint, "server", no_slc)
            .await
            .unwrap();
        let client = Messenger::new("client").unwrap();
        let conn = within(5, "connect", client.make_connection(&bound.endpoint))
            .await
            .unwrap();
        let body: Vec<u8> = (0..=255u8).collect();
        let reply = within(5, "echo", client.request(conn, wire::ECHO, &body))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), &body[..], "{t}");
        assert_eq!(client.stats().pending_callbacks, 0, "{t}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn slc_sees_noop_message_once_and_replies() {
    for t in TRANSPORTS {
        let p = place(t);
        let seen = Arc::new(Mutex::new(Vec::<Bytes>::new()));
        let seen2 = Arc::clone(&seen);
        let server = Messenger::new("server").unwrap();
        let bound = server
            .listen_for_connection(&p.endpoint, "server", move |m: Incoming, r: Responder| {
                seen2.lock().unwrap().push(m.body.clone());
                if m.src_cb != wire::NOOP {
                    r.try_reply([b"re:".as_slice(), &m.body].concat()).unwrap();
                }
            })
            .await
            .unwrap();
        let client = Messenger::new("client").unwrap();
        let conn = client.make_connection(&bound.endpoint).await.unwrap();
        client
            .send_message(conn, wire::NOOP, b"fire", None)
            .await
            .unwrap();
        let reply = within(5, "request", client.request(conn, wire::NOOP, b"ask"))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), b"re:ask", "{t}");
        common::eventually(5, "slc saw both", || seen.lock().unwrap().len() == 2).await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Bytes::from("fire"), Bytes::from("ask")],
            "{t}"
        );
        server.shutdown().await;
        client.shutdown().await;
    }
}
