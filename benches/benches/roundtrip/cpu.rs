//! CPU time and context switches of this process and of the server being
//! measured, sampled as a measured window opens and closes, to report per
//! round trip costs on each side: user and system CPU time (all threads,
//! /proc/PID/stat) and context switches (summed over /proc/PID/task/*/status;
//! threads that end inside the window are missed).

use std::sync::Mutex;

pub use crate::cli_bench::Cost;

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    utime: u64,
    stime: u64,
    switches: u64,
}

struct Probe {
    server: Option<u32>,
    start: [Option<Snap>; 2],
    end: [Option<Snap>; 2],
}

static PROBE: Mutex<Probe> = Mutex::new(Probe {
    server: None,
    start: [None; 2],
    end: [None; 2],
});

fn lock() -> std::sync::MutexGuard<'static, Probe> {
    PROBE.lock().unwrap_or_else(|p| p.into_inner())
}

fn snap(pid: u32) -> Option<Snap> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(Snap {
        utime,
        stime,
        switches,
    })
}

/// The server process to sample next to this one (None: only this one).
pub fn set_server(pid: Option<u32>) {
    let mut p = lock();
    p.server = pid;
    p.start = [None; 2];
    p.end = [None; 2];
}

/// `cli_bench::Window::probe`.
pub fn probe(start: bool) {
    let server = lock().server;
    let now = [Some(std::process::id()), server].map(|pid| pid.and_then(snap));
    let mut p = lock();
    if start {
        p.start = now;
        p.end = [None; 2];
    } else {
        p.end = now;
    }
}

/// Costs per round trip over the last window: (client, server).
pub fn per_round_trip(round_trips: u64) -> (Option<Cost>, Option<Cost>) {
    let p = lock();
    let per = |i: usize| -> Option<Cost> {
        let (a, b) = (p.start[i]?, p.end[i]?);
        if round_trips == 0 {
            return None;
        }
        let n = round_trips as f64;
        let us = |x: u64, y: u64| y.saturating_sub(x) as f64 / TICKS_PER_S * 1e6 / n;
        Some(Cost {
            user_us: us(a.utime, b.utime),
            sys_us: us(a.stime, b.stime),
            switches: b.switches.saturating_sub(a.switches) as f64 / n,
        })
    };
    (per(0), per(1))
}
