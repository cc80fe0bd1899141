//! Runnable scenarios of the three kinds of users (replication loop,
//! model-server loop, in-process components), shared by `messenger demo`
//! and the examples so both run the same code.
//!
//! Each scenario is a function taking an options struct and returning a
//! report struct (what was sent, what was acknowledged, latency and
//! throughput), or a typed error. Every wait inside is bounded.
//!
//! - [`replication`]: a primary streams log batches to two replicas over
//!   tcp, optionally killing and restarting one of them mid-stream.
//! - [`model_server`]: the Rust counterpart of NoisePage's
//!   ModelServerManager, driving a model server over ipc (a child process
//!   such as `tests/py/model_server.py`, or an in-process stand-in).
//! - [`components`]: parser, planner and executor components in one
//!   process, talking only through inproc endpoints.

pub mod bench;
pub mod components;
pub mod model_server;
pub mod replication;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Something a scenario could not set up (a messenger, a listener, a
/// connection, a child process), and why: shared by every scenario's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SetupError {
    /// What was being set up.
    pub what: String,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SetupError {
    /// `what` could not be set up, because of `why`.
    pub fn new(
        what: impl Into<String>,
        why: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SetupError {
            what: what.into(),
            source: why.into(),
        }
    }
}

/// A summary of latency samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latency {
    /// Summarises `samples` (in any order); all zero when there are none.
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |p| nearest_rank(&samples, p).unwrap_or_default();
        Latency {
            count: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }
}

/// The `p` (0..=1) percentile of `sorted` by nearest rank: the smallest
/// sample with at least a fraction `p` of them at or below it. The one
/// percentile every report here uses.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied()
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p99 {} max {} ({} samples)",
            Micros(self.p50),
            Micros(self.p99),
            Micros(self.max),
            self.count
        )
    }
}

/// Formats a duration in the most readable of us / ms / s.
#[derive(Debug, Clone, Copy)]
pub struct Micros(pub Duration);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us < 10_000 {
            write!(f, "{us} us")
        } else if us < 10_000_000 {
            write!(f, "{:.1} ms", us as f64 / 1000.0)
        } else {
            write!(f, "{:.2} s", self.0.as_secs_f64())
        }
    }
}

/// Events per second over `elapsed` (0 when no time passed).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// A name no other scenario run in this process uses (for inproc names and
/// temporary paths).
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Logs as the `messenger` command does, for the examples: `tracing` to
/// stderr, `RUST_LOG` respected, default `warn`, colours only on a
/// terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let l = Latency::from_samples((1..=100).rev().map(ms).collect());
        assert_eq!(
            (l.count, l.p50, l.p99, l.max),
            (100, ms(50), ms(99), ms(100))
        );
        let one = Latency::from_samples(vec![ms(7)]);
        assert_eq!((one.p50, one.p99, one.max), (ms(7), ms(7), ms(7)));
        assert_eq!(Latency::from_samples(Vec::new()), Latency::default());
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(Micros(Duration::from_micros(1500)).to_string(), "1500 us");
        assert_eq!(Micros(Duration::from_millis(25)).to_string(), "25.0 ms");
    }
}
