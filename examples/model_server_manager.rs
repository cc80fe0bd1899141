//! A database driving a model server, as NoisePage's ModelServerManager
//! does: listen on an ipc socket, start the model server with the socket's
//! path, wait for its CONNECTED, send TRAIN and INFER (JSON bodies), print
//! the replies, then QUIT and wait for it to exit.
//!
//! ```sh
//! cargo run --example model_server_manager     # an in-process stand-in model server
//! cargo run --example model_server_manager -- --model-server "python3 tests/py/model_server.py"
//! cargo run --example model_server_manager -- --model-server "python3 examples/python/model_server.py"   # on the Python package
//! ```
//!
//! `--model-server` is split on spaces; the socket path is appended.
//! `--timeout SECS` bounds each wait (default 10).

use std::sync::Arc;
use std::time::Duration;

use messenger::{Config, Endpoint, Messenger, NOOP};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

/// What the model server sends: CONNECTED (action 1) unasked, then one
/// reply (action 0) per command it answers.
#[derive(Deserialize, Debug)]
struct ModelReply {
    action: i64,
    result: Value,
    success: bool,
    err: String,
}

/// A stand-in for NoisePage's Python model server, so the example runs with
/// nothing installed: it dials in as `model`, says CONNECTED, and answers
/// TRAIN and INFER (predicting each row of features' sum) until QUIT.
async fn stand_in(at: Endpoint) -> Result<(), messenger::Error> {
    let m = Messenger::builder().identity("model").build()?;
    let quit = Arc::new(Notify::new());
    let quitting = Arc::clone(&quit);
    let reply = |action, r| json!({"action": action, "result": r, "success": true, "err": ""});
    let on_command = move |msg: messenger::Incoming, r: messenger::Responder| {
        // {"cmd": "TRAIN", "data": {...}}; anything else is ignored.
        let cmd: Value = msg.decode_json().unwrap_or_default();
        let answer = match cmd["cmd"].as_str() {
            Some("TRAIN") => reply(0, json!("")),
            Some("INFER") => {
                let features = serde_json::from_value(cmd["data"]["features"].clone());
                let rows: Vec<Vec<f64>> = features.unwrap_or_default();
                reply(0, rows.iter().map(|row| row.iter().sum::<f64>()).collect())
            }
            Some("QUIT") => return quitting.notify_one(),
            _ => return eprintln!("stand-in: ignoring {cmd}"),
        };
        let _ = r.try_reply(answer.to_string());
    };
    let conn = m.make_connection_with_server_loop(&at, on_command).await?;
    let connected = reply(1, json!("")).to_string();
    m.send_message(conn, NOOP, connected, None).await?;
    quit.notified().await;
    m.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| &w[1]);
    let secs = arg("--timeout").map_or("10", |s| s).parse();
    let timeout = Duration::from_secs(secs.map_err(|_| "--timeout takes seconds")?);
    // One socket per process, so two runs never meet.
    let dir = std::env::temp_dir();
    let path = dir.join(format!("model-server-{}.sock", std::process::id()));
    let endpoint: Endpoint = format!("ipc://{}", path.display()).parse()?;

    // Resending off: NoisePage's model server never ACKs and does not
    // deduplicate, so a resent TRAIN would train twice. A local socket loses
    // nothing while both ends live; a dead model server is seen by watching it.
    let config = Config {
        resend_interval: None,
        request_timeout: timeout,
        ..Config::default()
    };
    let builder = Messenger::builder().identity("model-server-conn");
    let db = builder.config(config).build()?;
    // The server loop gets what the model server sends unasked (CONNECTED);
    // replies to commands go to each request's own callback instead.
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let on_message = move |msg: messenger::Incoming, _| match msg.decode_json::<ModelReply>() {
        Ok(m) if m.action == 1 => drop(connected_tx.send(msg.reply_destination())),
        other => eprintln!("model_server_manager: unexpected message: {other:?}"),
    };
    db.listen_for_connection(&endpoint, on_message).await?;

    // Whichever model server runs, its end is watched: one that dies fails
    // the waits below at once, not at their timeouts.
    let (exit_tx, mut exited) = oneshot::channel();
    if let Some(line) = arg("--model-server") {
        let mut words = line.split_whitespace();
        let program = words.next().ok_or("--model-server is empty")?;
        let mut cmd = tokio::process::Command::new(program);
        // Killed if we return early: no model server outlives its database.
        cmd.args(words).arg(&path).kill_on_drop(true);
        let spawned = cmd.spawn();
        let mut child = spawned.map_err(|e| format!("cannot start {program}: {e}"))?;
        let pid = child.id().unwrap_or(0);
        eprintln!("model_server_manager: started model server pid {pid}");
        tokio::spawn(async move {
            let how = child.wait().await;
            exit_tx.send(how.map_or_else(|e| e.to_string(), |s| s.to_string()))
        });
    } else {
        let how = |r: Result<_, _>| {
            r.map_or_else(|e| format!("{e}"), |()| "the stand-in returned".into())
        };
        tokio::spawn(async move { exit_tx.send(how(stand_in(endpoint).await)) });
    }

    let died = |how, before| format!("the model server exited ({how}) before {before}");
    let model = tokio::select! {
        to = tokio::time::timeout(timeout, connected.recv()) => to.ok().flatten(),
        Ok(how) = &mut exited => return Err(died(how, "CONNECTED").into()),
    };
    let model = model.ok_or("no CONNECTED in time")?;
    let save_path = dir.join("model_map.pickle");
    let train = json!({"methods": ["lr"], "seq_files": null, "save_path": save_path});
    let features = json!([[1000.0, 8.0], [20.0, 4.0]]);
    let infer = json!({"features": features, "opunit": "SEQ_SCAN", "model_path": save_path});
    for (cmd, data) in [("TRAIN", train), ("INFER", infer)] {
        let body = json!({"cmd": cmd, "data": data}).to_string();
        let reply = tokio::select! {
            r = db.request(model.clone(), NOOP, body) => r,
            Ok(how) = &mut exited => return Err(died(how, cmd).into()),
        };
        let reply = reply.map_err(|e| format!("no reply to {cmd}: {e}"))?;
        let r: ModelReply = reply.decode_json()?;
        let (ok, result, err) = (r.success, r.result, r.err);
        println!("{cmd} -> success {ok}, result {result}, err {err:?}");
    }

    // QUIT has no reply: its sending is all there is to wait for.
    let quit = json!({"cmd": "QUIT", "data": {}}).to_string();
    db.send_message(model, NOOP, quit, None).await?;
    let quitting = tokio::time::timeout(timeout, exited);
    let how = quitting.await.map_err(|_| "QUIT ignored")??;
    // The model server resends CONNECTED until it is ACKed; the messenger
    // ACKs each copy and hands the server loop only the first.
    let seen = 1 + std::iter::from_fn(|| connected.try_recv().ok()).count();
    println!("CONNECTED delivered {seen} time(s); the model server exited: {how}");
    db.shutdown().await;
    Ok(())
}
