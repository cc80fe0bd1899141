//! `messenger demo`: one process listening on inproc, ipc and tcp, sending
//! requests to itself over each, and reporting what happened.

use std::time::{Duration, Instant};

use messenger::{Endpoint, Incoming, Messenger, Responder, wire};

pub async fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("messenger-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path) -> Result<(), String> {
    let server = Messenger::new("demo-server").map_err(|e| e.to_string())?;
    let client = Messenger::new("demo-client").map_err(|e| e.to_string())?;
    let endpoints = [
        Endpoint::Inproc("demo".into()),
        Endpoint::Ipc(dir.join("demo.sock")),
        "tcp://127.0.0.1:0"
            .parse()
            .map_err(|e: messenger::EndpointError| e.to_string())?,
    ];
    println!("messenger demo: one process, three transports\n");
    for ep in &endpoints {
        let slc = |m: Incoming, r: Responder| {
            let mut reply = b"handled:".to_vec();
            reply.extend_from_slice(&m.body);
            let _ = r.try_reply(reply);
        };
        let bound = server
            .listen_for_connection(ep, "demo-server", slc)
            .await
            .map_err(|e| e.to_string())?;
        let conn = client
            .make_connection(&bound.endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let echo = client
            .request(conn, wire::ECHO, b"ping")
            .await
            .map_err(|e| format!("{}: ECHO: {e}", bound.endpoint))?;
        let handled = client
            .request(conn, wire::NOOP, b"work item")
            .await
            .map_err(|e| format!("{}: request: {e}", bound.endpoint))?;
        let n = 2000;
        let start = Instant::now();
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            client
                .request(conn, wire::ECHO, [0u8; 64])
                .await
                .map_err(|e| format!("{}: ECHO: {e}", bound.endpoint))?;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        lat.sort();
        println!("{}", bound.endpoint);
        println!(
            "  ECHO \"ping\" -> {:?}; server loop -> {:?}",
            String::from_utf8_lossy(&echo.body),
            String::from_utf8_lossy(&handled.body)
        );
        println!(
            "  {n} sequential 64 B round trips: {:.0}/s, p50 {} us, p99 {} us",
            n as f64 / elapsed.as_secs_f64(),
            lat[n / 2].as_micros(),
            lat[n * 99 / 100].as_micros()
        );
    }
    // Let the last ACKs land before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = client.stats();
    let s = server.stats();
    println!(
        "\nclient: sent {}, received {}, ACKs received {}, replies unanswered {}",
        c.sent, c.received, c.acks_received, c.pending_callbacks
    );
    println!(
        "server: received {}, ACKs sent {}, ECHOs answered {}, server-loop deliveries {}",
        s.received, s.acks_sent, s.echoes_answered, s.slc_delivered
    );
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}
