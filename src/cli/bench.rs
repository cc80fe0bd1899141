//! `messenger bench`: request/reply round-trip latency (1 in flight) and
//! pipelined throughput (N in flight) over tcp, ipc and inproc. The
//! measuring is `messenger_scenarios::bench`'s, shared with the bench
//! harness (benches/); this file is the command around it.

use std::time::{Duration, Instant};

use messenger::{Endpoint, Messenger};
use messenger_scenarios::bench::{
    Row, Transport, Via, Window, body, closed_loop, human_size, local_server, parse_size,
    request_fn, transport_name, transport_of,
};

/// `messenger bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Measure against a running `messenger serve --slc echo` at ENDPOINT
    /// (the realistic case) instead of a server in this process.
    #[arg(long, value_name = "ENDPOINT")]
    pub connect: Option<Endpoint>,
    /// Transports to measure with the in-process server (ignored with --connect).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Transport::Tcp, Transport::Ipc, Transport::Inproc])]
    pub transports: Vec<Transport>,
    /// Body sizes in bytes, e.g. 64,1024,65536 (suffixes k and m: 1k = 1024).
    #[arg(long, value_delimiter = ',', default_value = "64,1k,64k", value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Requests in flight per measurement; 1 is the latency run, more is the
    /// pipelined throughput run (closed loop: one task per request in flight).
    #[arg(long = "in-flight", value_delimiter = ',', default_value = "1,1000")]
    pub in_flight: Vec<usize>,
    /// Measured time per (transport, size, in-flight) cell.
    #[arg(long, default_value = "150ms", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop each cell after this many measured round trips instead of --duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Unmeasured warm-up before each cell.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Which callback the requests address.
    #[arg(long, value_enum, default_value_t = Via::Echo)]
    pub via: Via,
    /// Print the results as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Draw round trips/s and p50/p99/p99.9 latency per cell into FILE
    /// (.svg).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<std::path::PathBuf>,
    /// Also print the library's request-time histograms, as `serve
    /// --metrics-addr` exports them (Prometheus text; with --json, the
    /// field "metrics").
    #[arg(long)]
    pub metrics: bool,
}

fn print_table(rows: &[Row]) -> Result<(), String> {
    say!(
        "{:<9} {:>8} {:>9} {:>14} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "transport",
        "size",
        "in flight",
        "round trips/s",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "errors"
    )?;
    for r in rows {
        let s = &r.sample;
        say!(
            "{:<9} {:>8} {:>9} {:>14.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>7}",
            r.transport,
            human_size(r.size),
            r.in_flight,
            s.round_trips_per_s,
            r.body_mib_per_s,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.errors
        )?;
    }
    Ok(())
}

/// Runs `messenger bench`.
pub async fn run(args: Args) -> Result<(), String> {
    if args.sizes.is_empty() || args.in_flight.is_empty() {
        return Err("nothing to measure: give --sizes and --in-flight".into());
    }
    if args.in_flight.contains(&0) {
        return Err("--in-flight must be at least 1".into());
    }
    // A body no message can carry would be measured as failed requests.
    // The payload's header (`{msg_id}-{src_cb}-{dst_cb}-`) is at most 64
    // bytes.
    let max = messenger::Config::default().max_message_size;
    if let Some(&size) = args.sizes.iter().find(|&&s| s.saturating_add(64) > max) {
        return Err(format!(
            "--sizes {size}: a message carrying it would exceed the maximum message size \
             ({max} bytes, with its header)"
        ));
    }
    // Before any messenger is made: they register their histograms with
    // the recorder installed when they first record.
    let recorder = if args.metrics {
        super::metrics::install(true)?.prometheus
    } else {
        None
    };
    let server = match &args.connect {
        Some(Endpoint::Inproc(_)) => {
            return Err(
                "--connect needs a tcp:// or ipc:// endpoint: inproc stays inside one process"
                    .into(),
            );
        }
        Some(_) => None,
        None => Some(local_server(&args.transports).await?),
    };
    let endpoints: Vec<(Transport, Endpoint)> = match (&args.connect, &server) {
        (Some(ep), _) => vec![(transport_of(ep), ep.clone())],
        (None, Some(s)) => s.endpoints.clone(),
        (None, None) => Vec::new(),
    };
    let client = Messenger::builder()
        .identity(format!("bench-{}", std::process::id()))
        .build()
        .map_err(|e| e.to_string())?;
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
        count: args.count,
        probe: None,
    };
    let cells = endpoints.len() * args.sizes.len() * args.in_flight.len();
    let bar = indicatif::ProgressBar::new(cells as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut rows = Vec::new();
    for (t, ep) in &endpoints {
        let conn = client
            .make_connection(ep)
            .await
            .map_err(|e| e.to_string())?;
        for &size in &args.sizes {
            let body = body(size);
            for &n in &args.in_flight {
                let what = format!("{} {} ×{n}", transport_name(*t), human_size(size));
                bar.set_message(what.clone());
                let one = request_fn(&client, conn, args.via, body.clone());
                let started = Instant::now();
                let progress = |done: u64| {
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "{what}: {done} round trips, ~{:.0}/s",
                        done as f64 / secs
                    ));
                };
                let s = closed_loop(n, window, one, progress).await;
                bar.inc(1);
                let mib = s.round_trips_per_s * size as f64 / (1024.0 * 1024.0);
                rows.push(Row {
                    transport: transport_name(*t),
                    endpoint: ep.to_string(),
                    size,
                    in_flight: n,
                    sample: s,
                    body_mib_per_s: mib,
                });
            }
        }
    }
    bar.finish_and_clear();
    // The request-time histograms only: the rest is about this process.
    let histograms = recorder.map(|handle| {
        super::metrics::render(&handle)
            .lines()
            .filter(|l| l.contains("messenger_request_duration_seconds"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let stats = client.stats();
    client.shutdown().await;
    if let Some(s) = server {
        s.messenger.shutdown().await;
    }
    if let Some(path) = &args.plot {
        let title = match &args.connect {
            Some(ep) => format!("messenger bench --connect {ep}"),
            None => "messenger bench (client and server in one process)".to_owned(),
        };
        super::plot::draw(path, &rows, &title)?;
    }
    if args.json {
        let mut out = serde_json::json!({
            "mode": if args.connect.is_some() { "connect" } else { "in-process" },
            "via": args.via,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "count": args.count,
            "results": rows,
            "client_stats": stats,
        });
        if let Some(h) = &histograms {
            out["metrics"] = serde_json::Value::String(h.clone());
        }
        say!("{out}")?;
    } else {
        print_table(&rows)?;
        let where_ = match &args.connect {
            Some(ep) => format!("against {ep}"),
            None => "client and server in this process".into(),
        };
        say!(
            "\n{} requests via {}, {where_}; closed loop, one task per request in flight; resends: {}, timeouts: {}",
            match args.via {
                Via::Echo => "ECHO",
                Via::Slc => "NOOP",
            },
            match args.via {
                Via::Echo => "the builtin ECHO",
                Via::Slc => "the server loop",
            },
            stats.resends,
            stats.timeouts
        )?;
        if let Some(h) = &histograms {
            say!("\n{h}")?;
        }
    }
    Ok(())
}
