//! Waiting: polls against a deadline, pacing, and durations as text.

use std::thread;
use std::time::{Duration, Instant};

/// How often the polling loops look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Poll interval of the loops whose elapsed time is printed (master exit, workers gone):
/// fine enough that the printed time is not the poll interval.
pub const MEASURE_POLL: Duration = Duration::from_millis(1);

/// Polls `cond` every [`POLL`] until it is true or the deadline passes; returns the last
/// result.
pub fn poll_until(deadline: Instant, cond: impl FnMut() -> bool) -> bool {
    poll_until_every(deadline, POLL, cond)
}

/// [`poll_until`] with a given poll interval.
pub fn poll_until_every(
    deadline: Instant,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Sleeps until `t` (at once if it has passed): pacing, not synchronisation.
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// `12.3 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
