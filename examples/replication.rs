//! Log replication over tcp: a primary streams batches of log records
//! (MessagePack) to two replicas, each batch once the last is acknowledged.
//! Mid-stream replica-2 crashes (its Messenger is dropped) and a new one
//! starts on the same endpoint; the primary retries until it answers, and
//! no acknowledged batch is lost. (A kill at or past --batches: no crash.)
//!
//! ```sh
//! cargo run --example replication -- --batches 300 --kill-replica-after 100
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use messenger::{Config, ConnectionId, Endpoint, Error, ErrorKind, Messenger, NOOP};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, PartialEq)]
struct Batch {
    lsn: u64,
    records: Vec<String>,
}

/// A replica's disk: it outlives the replica's process (here, its Messenger).
#[derive(Default)]
struct Stored {
    log: Vec<Batch>,
    duplicates: u64,
}

type Disk = Arc<Mutex<Stored>>;

fn stored(disk: &Disk) -> MutexGuard<'_, Stored> {
    disk.lock().unwrap_or_else(|p| p.into_inner()) // A panic elsewhere: still good.
}

/// Starts a replica on `at`. Its server loop takes one message at a time,
/// in arrival order: batches apply in the order they came.
async fn replica(at: &Endpoint, disk: Disk) -> Result<(Endpoint, Messenger), Error> {
    let m = Messenger::new()?;
    let listening = m.listen_for_connection(at, move |msg, r| {
        // A body that is not a batch is the peer's bug: say so, drop it.
        let batch: Batch = match msg.decode() {
            Ok(b) => b,
            Err(e) => return eprintln!("replica: ignoring a message: {e}"),
        };
        let mut disk = stored(&disk);
        let applied = disk.log.len() as u64;
        if batch.lsn == applied + 1 {
            disk.log.push(batch);
        } else if batch.lsn <= applied {
            // A resend whose ack was lost: applying it again would corrupt
            // the log, so it is only acked again.
            disk.duplicates += 1;
        }
        // Acked once on disk, as "I hold every batch up to here": the primary
        // sends the next, so this answers a batch, a duplicate or a gap alike.
        if let Err(e) = r.try_reply_typed(&(disk.log.len() as u64)) {
            eprintln!("replica: cannot ack: {e}");
        }
    });
    Ok((listening.await?.endpoint, m))
}

/// Sends `log` to one replica in LSN order, one batch in flight, until it
/// holds all of it. A replica restarting shows as timeouts and disconnects:
/// those are retried for a while.
async fn ship(primary: Messenger, conn: ConnectionId, log: Arc<[Batch]>) -> Result<u64, Error> {
    let transient = |e: &Error| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Disconnected);
    let (mut acked, mut failures) = (0, 0);
    while acked < log.len() as u64 {
        let ack = primary.request_typed(conn, NOOP, &log[acked as usize]);
        match ack.await {
            Ok(applied) => (acked, failures) = (applied, 0),
            Err(e) if failures == 100 || !transient(&e) => return Err(e),
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(acked)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| match args.windows(2).find(|w| w[0] == name) {
        Some(w) => w[1].parse().map_err(|_| format!("{name} takes a number")),
        None => Ok(default),
    };
    let batches = flag("--batches", 300)?;
    let kill_after = flag("--kill-replica-after", batches / 3)?;
    let log: Arc<[Batch]> = (1..=batches)
        .map(|lsn| Batch {
            lsn,
            records: vec![format!("INSERT {lsn}"); 8],
        })
        .collect();

    // Port 0: the OS picks a free port; the restarted replica reuses it.
    let disks = [Disk::default(), Disk::default()];
    let (at1, replica1) = replica(&"tcp://127.0.0.1:0".parse()?, disks[0].clone()).await?;
    let (at2, mut replica2) = replica(&"tcp://127.0.0.1:0".parse()?, disks[1].clone()).await?;
    println!("replica-1 on {at1}, replica-2 on {at2}");

    // A short request timeout, so that a batch lost with a dying replica is
    // retried soon; the default (30 s) is for slow peers, not dead ones.
    let config = Config {
        request_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let primary = Messenger::builder().config(config).build()?;
    let conn1 = primary.make_connection(&at1).await?;
    let conn2 = primary.make_connection(&at2).await?;
    let to1 = tokio::spawn(ship(primary.clone(), conn1, log.clone()));
    let to2 = tokio::spawn(ship(primary.clone(), conn2, log.clone()));

    if kill_after < batches {
        while stored(&disks[1]).log.len() < kill_after as usize && !to2.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A crash, not a clean shutdown: whatever was in flight is lost.
        drop(replica2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        replica2 = replica(&at2, disks[1].clone()).await?.1;
        let kept = stored(&disks[1]).log.len();
        println!("killed replica-2 at LSN {kill_after}; restarted with {kept} batches on disk");
    }
    let acked = [to1.await??, to2.await??];

    for m in [primary, replica1, replica2] {
        m.shutdown().await;
    }
    for (i, disk) in disks.iter().enumerate() {
        let disk = stored(disk);
        // Every acked batch on disk, in LSN order, as the primary wrote it.
        let lost = (0..acked[i] as usize)
            .filter(|&k| disk.log.get(k) != log.get(k))
            .count();
        let (n, dups) = (disk.log.len(), disk.duplicates);
        println!(
            "replica-{}: applied {n} batches in LSN order, {dups} duplicates ignored, lost {lost}",
            i + 1
        );
        if lost > 0 {
            return Err("a replica lost acknowledged batches".into());
        }
    }
    Ok(())
}
