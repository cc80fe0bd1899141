//! Three components of one process, a parser, a planner and an executor,
//! each a Messenger with its own server loop, talking only over inproc
//! endpoints with typed (MessagePack) bodies. A query is one request/reply
//! chain, client -> parser -> planner -> executor and back; the planner fans
//! each query out to the executor's partitions at once, and the client
//! keeps all its queries in flight together.
//!
//! ```sh
//! cargo run --example inproc_components -- --queries 8 --partitions 4
//! ```

use std::future::Future;

use futures::future::join_all;
use messenger::{Endpoint, Error, Incoming, ListenerInfo, Messenger, NOOP, Responder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a query asks for, and what each partition is given: the sum of the
/// integers from `.0` to `.1`, both included.
#[derive(Serialize, Deserialize)]
struct Range(u64, u64);

/// What comes back up the chain. Errors travel as values, so the client,
/// not the component that failed, decides what a bad query means.
type Answer = Result<u64, String>;

/// "SUM LO TO HI" -> Range.
fn parse(sql: &str) -> Result<Range, String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let num = |w: &str| w.parse().map_err(|_| format!("not a number: {w}"));
    match words[..] {
        ["SUM", lo, "TO", hi] => Ok(Range(num(lo)?, num(hi)?)),
        _ => Err(format!("cannot parse {sql:?}")),
    }
}

/// Runs a component on `at`: each request is decoded as a `Q`, handed to
/// `work` and answered with its result. The concurrent server loop runs
/// requests side by side (up to `Config::max_concurrent_handlers`), so a
/// component waiting on the next one down does not hold up the others.
async fn serve<Q, F, Fut>(m: &Messenger, at: &Endpoint, work: F) -> Result<ListenerInfo, Error>
where
    Q: DeserializeOwned,
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let handler = move |msg: Incoming, r: Responder| {
        // A body that is not a `Q` is the sender's bug: it gets told.
        let job = msg.decode().map(&work).map_err(|e| e.to_string());
        async move {
            let answer: Answer = async { job?.await }.await;
            // `reply` waits for room: a busy peer slows us but loses nothing.
            let _ = r.reply_typed(&answer).await;
        }
    };
    m.listen_for_connection_concurrent(at, handler).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| match args.windows(2).find(|w| w[0] == name) {
        Some(w) => w[1].parse().map_err(|_| format!("{name} takes a number")),
        None => Ok(default),
    };
    let (queries, partitions) = (flag("--queries", 8)?, flag("--partitions", 4)?.max(1));
    // inproc names are per process: two runs never meet.
    let executor_at: Endpoint = "inproc://executor".parse()?;
    let planner_at: Endpoint = "inproc://planner".parse()?;
    let parser_at: Endpoint = "inproc://parser".parse()?;

    // Executor: sums one partition's range.
    let executor = Messenger::new()?;
    let sum = |Range(lo, hi)| async move { Ok((lo..=hi).sum()) };
    serve(&executor, &executor_at, sum).await?;

    // Planner: one fragment per partition, all sent before any is awaited.
    // Its loop holds a clone of its own Messenger to ask the executor with.
    let planner = Messenger::new()?;
    let executor_conn = planner.make_connection(&executor_at).await?;
    let m = planner.clone();
    serve(&planner, &planner_at, move |Range(lo, hi)| {
        let m = m.clone();
        async move {
            let width = (hi + 1).saturating_sub(lo).div_ceil(partitions).max(1);
            let starts = (lo..=hi).step_by(width as usize);
            let fragments: Vec<Range> = starts.map(|f| Range(f, hi.min(f + width - 1))).collect();
            let ask = |f| m.request_typed::<_, Answer>(executor_conn, NOOP, f);
            let mut total = 0;
            for partial in join_all(fragments.iter().map(ask)).await {
                total += partial.map_err(|e| e.to_string())??;
            }
            Ok(total)
        }
    })
    .await?;

    // Parser: text in, a typed query out to the planner; the planner's
    // answer goes back to the client as it came.
    let parser = Messenger::new()?;
    let planner_conn = parser.make_connection(&planner_at).await?;
    let m = parser.clone();
    serve(&parser, &parser_at, move |sql: String| {
        let m = m.clone();
        async move {
            let query = parse(&sql)?;
            let ask = m.request_typed::<_, Answer>(planner_conn, NOOP, &query);
            ask.await.map_err(|e| e.to_string())?
        }
    })
    .await?;

    // The client: every query in flight at once, one malformed on purpose
    // to show an error coming back as an answer.
    let client = Messenger::new()?;
    let parser_conn = client.make_connection(&parser_at).await?;
    let sql = |i: u64| format!("SUM {i} TO {}", i * 1000);
    let mut sqls: Vec<String> = (1..=queries).map(sql).collect();
    sqls.push("SUM everything".into());
    let ask = |s| client.request_typed::<_, Answer>(parser_conn, NOOP, s);
    let mut right = 0;
    for (sql, answer) in sqls.iter().zip(join_all(sqls.iter().map(ask)).await) {
        let answer = answer?;
        // The closed form, to check the components' sums against.
        let expected = parse(sql).map(|Range(lo, hi)| (lo + hi) * (hi + 1 - lo) / 2);
        right += usize::from(answer == expected);
        if sql == &sqls[0] || answer.is_err() {
            println!("{sql} -> {answer:?}");
        }
    }
    println!("{right} of {} answers right", sqls.len());

    for m in [client, parser, planner, executor] {
        m.shutdown().await;
    }
    if right != sqls.len() {
        return Err("wrong answers".into());
    }
    Ok(())
}
