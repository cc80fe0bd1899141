//! `wire::parse` on arbitrary bytes, and `router_frames` / `from_router` /
//! `from_dealer` on the same bytes split into frames.
//!
//! Checked beyond "no panic": an accepted payload's body is a suffix of the
//! input and re-encoding its fields parses back to the same payload; the
//! frame-shape functions accept exactly the shapes design/WIRE.md lists.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use messenger_proto::wire;

/// Splits `data` into frames: each frame is a length byte then that many
/// bytes (fewer at the end of the input). At most 6 frames, so the
/// interesting counts (1 to 4) are common.
fn split_frames(data: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((&len, after)) = rest.split_first() {
        if frames.len() == 6 {
            break;
        }
        // Lengths 0..=3 twice as likely: empty delimiters matter.
        let len = usize::from(if len >= 0xF0 { len & 3 } else { len });
        let take = len.min(after.len());
        frames.push(Bytes::copy_from_slice(&after[..take]));
        rest = &after[take..];
    }
    frames
}

fn check_payload(payload: &Bytes) {
    let header = wire::parse_header(payload);
    match wire::parse(payload) {
        Ok(p) => {
            let h = header.expect("parse accepted what parse_header refused");
            assert_eq!(
                (h.msg_id, h.src_cb, h.dst_cb),
                (p.msg_id, p.src_cb, p.dst_cb)
            );
            assert_eq!(&payload[h.body_start..], &p.body[..]);
            assert!(payload.ends_with(&p.body));
            // The canonical form (no leading zeros) parses to the same thing.
            let again = wire::encode(p.msg_id, p.src_cb, p.dst_cb, &p.body);
            assert!(again.len() <= payload.len());
            assert_eq!(
                again.len(),
                wire::encoded_len(p.msg_id, p.src_cb, p.dst_cb, p.body.len())
            );
            assert_eq!(wire::parse(&again).as_ref(), Ok(&p));
        }
        Err(e) => assert_eq!(header.err(), Some(e)),
    }
}

fuzz_target!(|data: &[u8]| {
    check_payload(&Bytes::copy_from_slice(data));

    let frames = split_frames(data);
    let n = frames.len();
    let router = wire::router_frames(frames.clone());
    let router_ok = n == 3 && frames[1].is_empty();
    assert_eq!(router.is_ok(), router_ok, "router_frames on {frames:?}");
    if let Ok((peer, payload)) = router {
        assert_eq!((&peer, &payload), (&frames[0], &frames[2]));
        check_payload(&payload);
    }
    // What a DEALER reads from a ROUTER: `[router_identity, "", payload]`,
    // or `["", payload]` (design/WIRE.md, "Leniency").
    let dealer = wire::from_router(&mut frames.clone());
    let dealer_ok = (n == 3 && frames[1].is_empty()) || (n == 2 && frames[0].is_empty());
    assert_eq!(dealer.is_ok(), dealer_ok, "from_router on {frames:?}");
    if let Ok(payload) = dealer {
        assert_eq!(&payload, &frames[n - 1]);
    }
    // What a ROUTER reads from a DEALER: exactly `["", payload]`.
    let listener = wire::from_dealer(&mut frames.clone());
    let listener_ok = n == 2 && frames[0].is_empty();
    assert_eq!(listener.is_ok(), listener_ok, "from_dealer on {frames:?}");
    if let Ok(payload) = listener {
        assert_eq!(&payload, &frames[1]);
    }
});
