//! How long the harness waits, stretched on slow machines.
//!
//! Under software emulation (the kernel matrix of `cargo xtask vm-test` runs in TCG guests) the
//! verifier alone takes tens of seconds per daemon start, so every wait for the daemon, a probe or
//! an event is multiplied by `ENFORCER_TEST_TIME_SCALE` (a whole factor, 1 when unset). Only waits
//! that end early when the awaited thing happens are stretched: a check that something does *not*
//! happen within a time keeps its time, so stretching never turns a failure into a pass.

use std::{sync::LazyLock, time::Duration};

/// The variable `cargo xtask vm-test` sets inside its guests.
pub const TIME_SCALE_ENV: &str = "ENFORCER_TEST_TIME_SCALE";

static SCALE: LazyLock<u32> = LazyLock::new(|| {
    std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
});

/// `wait` times the scale: the longest the harness waits for something that should happen.
#[must_use]
pub fn patient(wait: Duration) -> Duration {
    wait * *SCALE
}
