//! The runtime's clock: tokio's, so tests can pause it, read as
//! `std::time::Instant`, which is what the sans-IO crates take (they know
//! no runtime). Timers convert back with [`tokio_at`].

use std::time::Instant;

/// Now, on the runtime's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// `at` as the instant tokio's timers take.
pub(crate) fn tokio_at(at: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(at)
}
