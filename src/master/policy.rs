//! Pure supervision policy: respawn backoff and the crash window. No processes here, so every
//! rule is tested directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Capped exponential backoff for one worker slot.
///
/// The first crash after a stable run respawns at once; each further crash in a row doubles the
/// delay from `base` up to `cap`. A worker that stayed up for `stable_after` resets the count.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    stable_after: Duration,
    consecutive: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, stable_after: Duration) -> Self {
        Backoff {
            base,
            cap,
            stable_after,
            consecutive: 0,
        }
    }

    /// Records a crash of a worker that ran for `uptime`, and returns how long to wait before
    /// starting its replacement.
    pub fn on_crash(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.stable_after {
            self.consecutive = 0;
        }
        let delay = match self.consecutive {
            0 => Duration::ZERO,
            n => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                self.base.saturating_mul(factor).min(self.cap)
            }
        };
        self.consecutive = self.consecutive.saturating_add(1);
        delay
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 10 s; reset by half a second of serving. A worker that crashes
    /// within half a second of becoming ready is in a crash loop and waits; one killed from
    /// outside after serving a while (the OOM killer, an operator) is replaced at once, even
    /// when that happens every second (bench/chaos, scenario 1). The crash window still
    /// stops a server whose workers keep dying.
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_millis(500),
        )
    }
}

/// Crashes counted over a sliding window (fasthttp counts over the whole lifetime, which stops
/// a server that lost one worker a day after a few months).
#[derive(Debug, Clone)]
pub(crate) struct CrashWindow {
    window: Duration,
    threshold: usize,
    crashes: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(threshold: usize, window: Duration) -> Self {
        CrashWindow {
            window,
            threshold,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now`. Returns the number of crashes inside the window if that is
    /// more than the threshold, which means: stop.
    pub fn record(&mut self, now: Instant) -> Option<usize> {
        self.crashes.push_back(now);
        while let Some(&first) = self.crashes.front() {
            if now.duration_since(first) > self.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        let n = self.crashes.len();
        (n > self.threshold).then_some(n)
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_crash_respawns_at_once_then_doubles_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 10_000 * MS);
        let delays: Vec<_> = (0..7).map(|_| b.on_crash(MS)).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1000, 1000].map(|m| m * MS).to_vec()
        );
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 10_000 * MS);
        b.on_crash(MS);
        b.on_crash(MS);
        assert_eq!(b.on_crash(MS), 200 * MS);
        assert_eq!(b.on_crash(Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(b.on_crash(MS), 100 * MS);
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::MAX,
        );
        for _ in 0..200 {
            assert!(b.on_crash(MS) <= Duration::from_secs(30));
        }
    }

    #[test]
    fn window_trips_only_past_the_threshold() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(3, Duration::from_secs(60));
        assert_eq!(w.record(t0), None);
        assert_eq!(w.record(t0 + MS), None);
        assert_eq!(w.record(t0 + 2 * MS), None);
        assert_eq!(w.record(t0 + 3 * MS), Some(4));
    }

    #[test]
    fn old_crashes_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(2, Duration::from_secs(10));
        assert_eq!(w.record(t0), None);
        assert_eq!(w.record(t0 + Duration::from_secs(1)), None);
        // The first crash is 11 s old by now: only two remain in the window.
        assert_eq!(w.record(t0 + Duration::from_secs(11)), None);
        // The crash at 1 s is 11 s old now.
        assert_eq!(w.record(t0 + Duration::from_secs(12)), None);
        assert_eq!(w.record(t0 + Duration::from_secs(13)), Some(3));
    }

    #[test]
    fn threshold_zero_stops_on_the_first_crash() {
        let mut w = CrashWindow::new(0, Duration::from_secs(1));
        assert_eq!(w.record(Instant::now()), Some(1));
    }
}
