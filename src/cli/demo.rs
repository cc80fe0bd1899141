//! `messenger demo`: the three users' scenarios in one process, each on its
//! own transport, with a short report of what was sent, what was
//! acknowledged, and the latency and throughput measured. Needs nothing
//! beyond this binary; takes a few seconds.
//!
//! 0. transports: ECHO and server-loop round trips over inproc, ipc and tcp;
//! 1. replication over tcp: a primary and two replicas, one of them killed
//!    and restarted mid-stream ([`messenger_scenarios::replication`]);
//! 2. the model-server loop over ipc, against the in-process stand-in model
//!    server ([`messenger_scenarios::model_server`]);
//! 3. parser, planner and executor components over inproc
//!    ([`messenger_scenarios::components`]).

use std::time::{Duration, Instant};

use messenger::{ECHO, Endpoint, Incoming, Messenger, NOOP, Responder};
use messenger_scenarios::{Latency, components, model_server, per_second, replication};

/// Runs every section; the first failure ends the demo with its reason.
pub async fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("messenger-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect::<String>()
}

async fn run_in(dir: &std::path::Path) -> Result<(), String> {
    let total = Instant::now();
    say!("messenger demo: three users' scenarios in one process\n")?;

    let t = Instant::now();
    say!("0. transports: ECHO and server-loop round trips on each transport")?;
    transports(dir).await?;
    say!("  ({:.1} s)\n", t.elapsed().as_secs_f64())?;

    let t = Instant::now();
    say!(
        "1. replication over tcp: a primary streams log batches to two replicas; \
         replica-2 is killed after 100 commits and restarted empty on its port"
    )?;
    let report = replication::run(replication::ReplicationOptions {
        batches: 300,
        batch_size: 32,
        kill_replica_after: Some(100),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("replication: {e}"))?;
    say!("{}", indent(&report.to_string()).trim_end_matches('\n'))?;
    say!("  ({:.1} s)\n", t.elapsed().as_secs_f64())?;

    let t = Instant::now();
    say!(
        "2. model-server loop over ipc: the manager starts a stand-in model server that \
         resends CONNECTED twice more, then PRINTs and QUITs it"
    )?;
    let mut messages = vec!["hello".to_string()];
    messages.extend((1..200).map(|i| format!("hello {i}")));
    let report = model_server::run(
        model_server::ManagerOptions {
            server: model_server::ModelServerSpec::StandIn(model_server::StandInOptions {
                extra_connected_copies: 2,
                ..Default::default()
            }),
            messages,
            socket_path: Some(dir.join("model.sock")),
            ..Default::default()
        },
        |_| {},
    )
    .await
    .map_err(|e| format!("model server: {e}"))?;
    say!("{}", indent(&report.to_string()).trim_end_matches('\n'))?;
    say!("  ({:.1} s)\n", t.elapsed().as_secs_f64())?;

    let t = Instant::now();
    say!(
        "3. in-process components over inproc: parser -> planner (request/reply), \
         parser -> executor partitions (fan-out), executor -> planner (feedback)"
    )?;
    let report = components::run(components::ComponentsOptions::default())
        .await
        .map_err(|e| format!("components: {e}"))?;
    say!("{}", indent(&report.to_string()).trim_end_matches('\n'))?;
    say!("  ({:.1} s)\n", t.elapsed().as_secs_f64())?;

    say!(
        "all scenarios passed their checks in {:.1} s",
        total.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// One process listening on inproc, ipc and tcp, sending requests to itself
/// over each.
async fn transports(dir: &std::path::Path) -> Result<(), String> {
    let server = Messenger::builder()
        .identity("demo-server")
        .build()
        .map_err(|e| e.to_string())?;
    let client = Messenger::builder()
        .identity("demo-client")
        .build()
        .map_err(|e| e.to_string())?;
    let result = round_trips(&server, &client, dir).await;
    client.shutdown().await;
    server.shutdown().await;
    result
}

async fn round_trips(
    server: &Messenger,
    client: &Messenger,
    dir: &std::path::Path,
) -> Result<(), String> {
    let endpoints = [
        Endpoint::Inproc(format!("demo-{}", std::process::id())),
        Endpoint::Ipc(dir.join("demo.sock")),
        "tcp://127.0.0.1:0"
            .parse()
            .map_err(|e: messenger::Error| e.to_string())?,
    ];
    for ep in &endpoints {
        let slc = |m: Incoming, r: Responder| {
            let mut reply = b"handled:".to_vec();
            reply.extend_from_slice(&m.body);
            let _ = r.try_reply(reply);
        };
        let bound = server
            .listen_for_connection(ep, slc)
            .await
            .map_err(|e| e.to_string())?;
        let conn = client
            .make_connection(&bound.endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let echo = client
            .request(conn, ECHO, b"ping")
            .await
            .map_err(|e| format!("{}: ECHO: {e}", bound.endpoint))?;
        let handled = client
            .request(conn, NOOP, b"work item")
            .await
            .map_err(|e| format!("{}: request: {e}", bound.endpoint))?;
        let n = 1000;
        let start = Instant::now();
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            client
                .request(conn, ECHO, [0u8; 64])
                .await
                .map_err(|e| format!("{}: ECHO: {e}", bound.endpoint))?;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        say!(
            "  {}: ECHO \"ping\" -> {:?}; server loop -> {:?}; {n} sequential 64 B ECHOs: {:.0}/s, {}",
            bound.endpoint,
            String::from_utf8_lossy(&echo.body),
            String::from_utf8_lossy(&handled.body),
            per_second(n as u64, elapsed),
            Latency::from_samples(lat)
        )?;
    }
    // Let the last ACKs land before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = client.stats();
    let s = server.stats();
    say!(
        "  client: sent {}, received {}, ACKs received {}, replies unanswered {}",
        c.sent,
        c.received,
        c.acks_received,
        c.pending_callbacks
    )?;
    say!(
        "  server: received {}, ACKs sent {}, ECHOs answered {}, server-loop deliveries {}",
        s.received,
        s.acks_sent,
        s.echoes_answered,
        s.slc_delivered
    )?;
    Ok(())
}
