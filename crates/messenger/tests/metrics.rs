//! What the library hands the `metrics` facade: every counter of
//! `StatsSnapshot` and the traffic by transport, read at publication
//! (`publish_metrics`, as an exporter calls it per scrape); the
//! connection gauges up while peers are connected and down once they left;
//! the histograms observed per request and per server-loop call. No label
//! carries a routing id or an address.
//!
//! One test in this binary: the recorder is process-wide.

use std::collections::HashMap;
use std::time::Duration;

use messenger::{ECHO, Messenger, NOOP};
use messenger_testkit::{TRANSPORTS, eventually, place};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Name and sorted labels of a metric, as `name{k=v,...}`.
type Series = HashMap<String, DebugValue>;

fn scrape(snapshotter: &Snapshotter) -> Series {
    messenger::publish_metrics();
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(s: &Series, name: &str) -> u64 {
    match s.get(name) {
        Some(DebugValue::Counter(v)) => *v,
        other => panic!("{name}: {other:?} in {:?}", s.keys().collect::<Vec<_>>()),
    }
}

fn gauge(s: &Series, name: &str) -> f64 {
    match s.get(name) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_gauges_and_histograms_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    // The first publication turns the histograms on.
    let before = scrape(&snapshotter);
    assert_eq!(
        gauge(
            &before,
            "messenger_connections{direction=inbound,transport=tcp}"
        ),
        0.0
    );

    for t in TRANSPORTS {
        let server = Messenger::new().unwrap();
        let p = place(t);
        let bound = server
            .listen_for_connection(&p.endpoint, |m, r| {
                let _ = r.try_reply(&m.body);
            })
            .await
            .unwrap();
        let clients: Vec<Messenger> = (0..2).map(|_| Messenger::new().unwrap()).collect();
        for c in &clients {
            let conn = c.make_connection(&bound.endpoint).await.unwrap();
            c.request(conn, ECHO, b"ping").await.unwrap();
            c.request(conn, NOOP, b"to the loop").await.unwrap();
        }
        let sent = format!("messenger_messages_sent_total{{transport={t}}}");
        // A reply is counted by its sender once it has landed, which on
        // inproc is after the requester may already have woken: wait for
        // the last count (bounded), then read everything from one scrape.
        // A snapshot hands over the histograms' observations and forgets
        // them, so each scrape's are added up.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut during = None;
        for _ in 0..500 {
            let page = scrape(&snapshotter);
            for (name, value) in &page {
                if let DebugValue::Histogram(v) = value {
                    *seen.entry(name.clone()).or_default() += v.len();
                }
            }
            if counter(&page, &sent) >= 8 {
                during = Some(page);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let during = during.unwrap_or_else(|| panic!("{t}: fewer than 8 messages counted as sent"));
        let inbound = format!("messenger_connections{{direction=inbound,transport={t}}}");
        let outbound = format!("messenger_connections{{direction=outbound,transport={t}}}");
        assert_eq!(gauge(&during, &inbound), 2.0, "{t}");
        assert_eq!(gauge(&during, &outbound), 2.0, "{t}");
        assert_eq!(
            server.stats().connections,
            2,
            "{t}: stats() counts listener sessions"
        );
        let received = format!("messenger_messages_received_total{{transport={t}}}");
        let bytes_in = format!("messenger_bytes_received_total{{transport={t}}}");
        assert!(counter(&during, &sent) >= 8, "{t}");
        assert!(counter(&during, &received) >= 8, "{t}");
        if t == "inproc" {
            // inproc writes no bytes, and says so by counting none.
            assert_eq!(counter(&during, &bytes_in), 0, "{t}");
        } else {
            assert!(
                counter(&during, &bytes_in) > counter(&before, &bytes_in).max(1),
                "{t}"
            );
        }
        let request = format!("messenger_request_duration_seconds{{transport={t}}}");
        let slc = format!("messenger_server_loop_duration_seconds{{transport={t}}}");
        assert!(seen.get(&request).copied().unwrap_or(0) >= 4, "{t}");
        assert!(seen.get(&slc).copied().unwrap_or(0) >= 2, "{t}");

        for c in &clients {
            c.shutdown().await;
        }
        eventually(5, "the server's sessions end", || {
            server.stats().connections == 0
        })
        .await;
        let after = scrape(&snapshotter);
        assert_eq!(gauge(&after, &inbound), 0.0, "{t}");
        assert_eq!(gauge(&after, &outbound), 0.0, "{t}");
        let opened = counter(&after, "messenger_connections_opened_total{}");
        assert!(
            opened >= counter(&during, "messenger_connections_opened_total{}"),
            "{t}"
        );
        let closed: u64 = ["peer_closed", "shutdown"]
            .iter()
            .map(|r| {
                counter(
                    &after,
                    &format!("messenger_connections_closed_total{{reason={r}}}"),
                )
            })
            .sum();
        assert!(closed >= 4, "{t}: both sides of two sessions");
        server.shutdown().await;
    }

    let last = scrape(&snapshotter);
    // Counters of messengers already dropped still count: never down.
    assert!(counter(&last, "messenger_messages_sent_total{transport=tcp}") >= 8);
    // Every counter of StatsSnapshot is there, by its name.
    let fields = serde_json::to_value(messenger::StatsSnapshot::default()).unwrap();
    for field in fields.as_object().unwrap().keys() {
        let exported = last.keys().any(|k| {
            k.starts_with(&format!("messenger_{field}_total"))
                || matches!(
                    field.as_str(),
                    "sent"
                        | "received"
                        | "bytes_sent"
                        | "bytes_received"
                        | "connections_closed"
                        | "pending_callbacks"
                        | "pending_messages"
                        | "connections"
                        | "listeners"
                        | "idle_evictions"
                        | "timeouts"
                        | "handshake_timeouts"
                        | "auth_failures"
                        | "curve_refused"
                        | "routing_id_conflicts"
                )
        });
        assert!(exported, "{field} is not exported");
    }
    for name in [
        "messenger_evictions_total{}",
        "messenger_request_timeouts_total{}",
        "messenger_handshake_failures_total{reason=timeout}",
        "messenger_handshake_failures_total{reason=curve_not_allowed}",
        "messenger_unacked_messages{}",
        "messenger_pending_callbacks{}",
        "messenger_listeners{}",
    ] {
        assert!(last.contains_key(name), "{name} missing");
    }
    // No label is a routing id, a key or an address.
    for key in last.keys() {
        let labels = key.split_once('{').map_or("", |(_, l)| l);
        for label in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
        {
            let (k, _) = label.split_once('=').unwrap();
            assert!(["transport", "direction", "reason"].contains(&k), "{key}");
        }
    }
}
