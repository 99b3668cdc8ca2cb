//! Pure supervision policy: respawn backoff, the crash window, and the master's decisions
//! over its worker table (which slots to spawn now, which workers to retire, which one to
//! recycle, which are past their memory or age limit). No processes here, so every rule is
//! tested directly.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::pool::{Entry, Recycle, SlotState, State};

/// True if a worker of `generation` serves (or boots for) slot `id`.
pub(super) fn slot_served(workers: &[Entry], id: usize, generation: u64) -> bool {
    workers
        .iter()
        .any(|w| w.info.id == id && w.info.generation == generation && w.serves())
}

/// For each of `slots` slots: whether a ready worker of `generation` serves it.
pub(super) fn ready_slots(workers: &[Entry], generation: u64, slots: usize) -> Vec<bool> {
    (0..slots)
        .map(|id| {
            workers.iter().any(|w| {
                w.info.id == id
                    && w.info.generation == generation
                    && w.serves()
                    && w.ready_since().is_some()
            })
        })
        .collect()
}

/// The slots whose start time has come, each with whether a worker must be spawned in it
/// (false when a worker of `generation` already serves it: the due time is just cleared).
pub(super) fn due_slots(
    slots: &[SlotState],
    workers: &[Entry],
    generation: u64,
    now: Instant,
) -> Vec<(usize, bool)> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.respawn_at.is_some_and(|t| t <= now))
        .map(|(id, _)| (id, !slot_served(workers, id, generation)))
        .collect()
}

/// The workers to retire now (index in `workers`, and why): every older generation once a
/// reload is done, the workers of slots that no longer exist, and recycled workers whose
/// replacement is ready. `ready_slots` is [`ready_slots`] for `generation`.
pub(super) fn retirements(
    workers: &[Entry],
    generation: u64,
    ready_slots: &[bool],
    reload_done: bool,
) -> Vec<(usize, &'static str)> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.is_stopping())
        .filter_map(|(i, w)| {
            let why = if reload_done && w.info.generation < generation {
                "its generation was replaced"
            } else if w.info.id >= ready_slots.len() {
                "the worker count was lowered"
            } else if matches!(w.state, State::Superseded { .. })
                && w.info.generation == generation
                && ready_slots[w.info.id]
            {
                "its replacement serves"
            } else {
                return None;
            };
            Some((i, why))
        })
        .collect()
}

/// The worker to replace next (its request, memory or age limit), if any: one at a time,
/// never during a reload, only of the current generation and only once it serves.
pub(super) fn recycle_candidate(
    workers: &[Entry],
    generation: u64,
    reloading: bool,
) -> Option<usize> {
    let replacing = workers
        .iter()
        .any(|w| matches!(w.state, State::Superseded { .. }));
    if reloading || replacing {
        return None;
    }
    workers.iter().position(|w| {
        w.info.generation == generation
            && matches!(
                w.state,
                State::Ready {
                    recycle: Recycle::Due(_),
                    ..
                }
            )
    })
}

/// Why a worker is replaced while it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecycleReason {
    /// It served this many requests, its request limit, and asked to be replaced.
    Requests(u64),
    /// Its resident set, `rss` bytes, passed the memory limit.
    Memory { rss: u64, limit: u64 },
    /// It has run for `age`, past the age limit.
    Age { age: Duration, limit: Duration },
}

impl fmt::Display for RecycleReason {
    /// What follows "worker 0 (pid 1234)" in the master's log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecycleReason::Requests(n) => write!(f, "served {n} requests"),
            RecycleReason::Memory { rss, limit } => write!(
                f,
                "uses {} of memory (resident), over its limit of {}",
                Mib(rss),
                Mib(limit)
            ),
            RecycleReason::Age { age, limit } => write!(
                f,
                "has run for {}, past its age limit of {}",
                Age(age),
                Age(limit)
            ),
        }
    }
}

/// A duration as the master's log shows it: with hundredths under a minute unless whole.
struct Age(Duration);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= Duration::from_secs(60) || self.0.subsec_nanos() == 0 {
            f.write_str(&super::human(self.0))
        } else {
            write!(f, "{:.2}s", self.0.as_secs_f64())
        }
    }
}

/// Bytes shown in MiB: whole when they are, else with one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{:.1} MiB", self.0 as f64 / MIB as f64)
        }
    }
}

/// The limits past which a serving worker is replaced (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Resident set size, in bytes.
    pub memory: Option<u64>,
    /// Time since the worker was spawned.
    pub age: Option<Duration>,
}

impl Limits {
    pub(crate) fn any(&self) -> bool {
        self.memory.is_some() || self.age.is_some()
    }
}

/// The workers past a limit at `now`, each with why: ready workers of `generation` that are
/// not already due for replacement, nor kept after a replacement that failed. Age is checked
/// first; `rss` reads a worker's resident set in bytes (`None`: unknown, so not over) and is
/// called only for a worker the age did not decide, and only with a memory limit.
pub(super) fn over_limits(
    workers: &[Entry],
    generation: u64,
    limits: Limits,
    now: Instant,
    mut rss: impl FnMut(&Entry) -> Option<u64>,
) -> Vec<(usize, RecycleReason)> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            w.info.generation == generation
                && matches!(
                    w.state,
                    State::Ready {
                        recycle: Recycle::No,
                        ..
                    }
                )
        })
        .filter_map(|(i, w)| {
            let age = now.saturating_duration_since(w.spawned_at);
            if let Some(limit) = limits.age.filter(|&limit| age > limit) {
                return Some((i, RecycleReason::Age { age, limit }));
            }
            let limit = limits.memory?;
            let rss = rss(w).filter(|&rss| rss > limit)?;
            Some((i, RecycleReason::Memory { rss, limit }))
        })
        .collect()
}

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

/// How many spawns in a row of one slot may fail before they are ready (a panic at boot, the
/// boot-error exit code, the boot timeout) before the master gives up and stops: 10, which
/// with the slot's backoff (at once, then 100 ms doubling to 10 s) is about 30 s of retries
/// while the other workers serve. The first generation is not retried: a server that cannot
/// start says so at once.
pub(crate) const MAX_BOOT_FAILURES: u32 = 10;

/// Crashes counted over a sliding window (fasthttp counts over the whole lifetime, which stops
/// a server that lost one worker a day after a few months). Always counted, for the log;
/// with a threshold (opt-in, fasthttp's `RecoverThreshold`) it also says when to stop.
#[derive(Debug, Clone)]
pub(crate) struct CrashWindow {
    window: Duration,
    threshold: Option<usize>,
    crashes: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(threshold: Option<usize>, window: Duration) -> Self {
        CrashWindow {
            window,
            threshold,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now`; returns how many crashes the window holds now.
    pub fn record(&mut self, now: Instant) -> usize {
        self.crashes.push_back(now);
        while let Some(&first) = self.crashes.front() {
            if now.duration_since(first) > self.window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        self.crashes.len()
    }

    /// The threshold, if `count` crashes in the window pass it: time to stop. Never without
    /// a threshold.
    pub fn exceeded(&self, count: usize) -> Option<usize> {
        self.threshold.filter(|&t| count > t)
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

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
        let mut w = CrashWindow::new(Some(3), Duration::from_secs(60));
        for (i, expected) in [(0, 1), (1, 2), (2, 3)] {
            let n = w.record(t0 + i * MS);
            assert_eq!(n, expected);
            assert_eq!(w.exceeded(n), None);
        }
        let n = w.record(t0 + 3 * MS);
        assert_eq!((n, w.exceeded(n)), (4, Some(3)));
    }

    #[test]
    fn old_crashes_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(Some(2), Duration::from_secs(10));
        assert_eq!(w.record(t0), 1);
        assert_eq!(w.record(t0 + Duration::from_secs(1)), 2);
        // The first crash is 11 s old by now: only two remain in the window.
        assert_eq!(w.record(t0 + Duration::from_secs(11)), 2);
        // The crash at 1 s is 11 s old now.
        assert_eq!(w.record(t0 + Duration::from_secs(12)), 2);
        let n = w.record(t0 + Duration::from_secs(13));
        assert_eq!((n, w.exceeded(n)), (3, Some(2)));
    }

    #[test]
    fn threshold_zero_stops_on_the_first_crash() {
        let mut w = CrashWindow::new(Some(0), Duration::from_secs(1));
        let n = w.record(Instant::now());
        assert_eq!(w.exceeded(n), Some(0));
    }

    #[test]
    fn without_a_threshold_crashes_are_counted_but_never_stop() {
        let t0 = Instant::now();
        let mut w = CrashWindow::new(None, Duration::from_secs(60));
        for i in 0..10_000u32 {
            let n = w.record(t0 + i * MS);
            assert_eq!(n, i as usize + 1);
            assert_eq!(w.exceeded(n), None);
        }
    }

    // ---- decisions over the worker table ----

    fn ready(id: usize, generation: u64) -> Entry {
        Entry::for_test(
            id,
            generation,
            State::Ready {
                since: Instant::now(),
                recycle: Recycle::No,
            },
        )
    }

    fn superseded(id: usize, generation: u64) -> Entry {
        Entry::for_test(
            id,
            generation,
            State::Superseded {
                since: Instant::now(),
            },
        )
    }

    fn stopping(id: usize, generation: u64) -> Entry {
        Entry::for_test(id, generation, State::Stopping { ready_since: None })
    }

    #[test]
    fn a_slot_is_served_by_a_starting_or_ready_worker_of_its_generation() {
        let workers = [
            Entry::for_test(0, 2, State::Starting),
            ready(1, 1),
            superseded(2, 2),
            stopping(3, 2),
        ];
        assert!(slot_served(&workers, 0, 2));
        assert!(!slot_served(&workers, 1, 2), "an older generation");
        assert!(slot_served(&workers, 1, 1));
        assert!(!slot_served(&workers, 2, 2), "superseded");
        assert!(!slot_served(&workers, 3, 2), "stopping");
        assert_eq!(ready_slots(&workers, 2, 4), [false, false, false, false]);
        assert_eq!(ready_slots(&workers, 1, 2), [false, true]);
    }

    #[test]
    fn due_slots_spawn_only_where_nothing_serves() {
        let mut slots: Vec<SlotState> = (0..3).map(|_| SlotState::due_now()).collect();
        let now = Instant::now();
        slots[2].respawn_at = Some(now + Duration::from_secs(1));
        let workers = [ready(0, 1)];
        assert_eq!(
            due_slots(&slots, &workers, 1, now),
            [(0, false), (1, true)],
            "slot 0 is served; slot 2 is not due yet"
        );
        assert_eq!(due_slots(&slots, &workers, 2, now), [(0, true), (1, true)]);
    }

    #[test]
    fn a_reload_retires_the_old_generation_only_once_every_new_slot_is_ready() {
        let workers = vec![
            ready(0, 1),
            ready(1, 1),
            ready(0, 2),
            Entry::for_test(1, 2, State::Starting),
        ];
        let slots = ready_slots(&workers, 2, 2);
        assert_eq!(slots, [true, false]);
        assert!(retirements(&workers, 2, &slots, false).is_empty());
        let workers = vec![
            ready(0, 1),
            ready(1, 1),
            ready(0, 2),
            ready(1, 2),
            stopping(0, 1),
        ];
        let slots = ready_slots(&workers, 2, 2);
        assert_eq!(
            retirements(&workers, 2, &slots, true),
            [
                (0, "its generation was replaced"),
                (1, "its generation was replaced")
            ],
            "the stopping worker is not asked again"
        );
    }

    #[test]
    fn lowering_the_count_retires_the_removed_slots_workers() {
        let workers = [
            ready(0, 1),
            ready(1, 1),
            Entry::for_test(2, 1, State::Starting),
        ];
        let slots = ready_slots(&workers, 1, 2);
        assert_eq!(
            retirements(&workers, 1, &slots, false),
            [(2, "the worker count was lowered")]
        );
    }

    #[test]
    fn a_recycled_worker_is_retired_once_its_replacement_is_ready() {
        let booting = [superseded(0, 1), Entry::for_test(0, 1, State::Starting)];
        let slots = ready_slots(&booting, 1, 1);
        assert!(retirements(&booting, 1, &slots, false).is_empty());
        let served = [superseded(0, 1), ready(0, 1)];
        let slots = ready_slots(&served, 1, 1);
        assert_eq!(
            retirements(&served, 1, &slots, false),
            [(0, "its replacement serves")]
        );
    }

    #[test]
    fn recycling_is_one_at_a_time_and_never_during_a_reload() {
        let wants = |id, generation| {
            Entry::for_test(
                id,
                generation,
                State::Ready {
                    since: Instant::now(),
                    recycle: Recycle::Due(RecycleReason::Requests(50)),
                },
            )
        };
        let workers = [ready(0, 1), wants(1, 1), wants(2, 1)];
        assert_eq!(recycle_candidate(&workers, 1, false), Some(1));
        assert_eq!(recycle_candidate(&workers, 1, true), None, "reloading");
        assert_eq!(
            recycle_candidate(&workers, 2, false),
            None,
            "old generation"
        );
        let workers = [superseded(0, 1), wants(1, 1)];
        assert_eq!(recycle_candidate(&workers, 1, false), None, "one at a time");
        let workers = [Entry::for_test(0, 1, State::Starting), stopping(1, 1)];
        assert_eq!(recycle_candidate(&workers, 1, false), None);
    }

    // ---- memory and age limits ----

    const MIB: u64 = 1 << 20;

    /// A ready worker of generation 1 spawned `age` before `now`.
    fn aged(id: usize, now: Instant, age: Duration) -> Entry {
        let mut w = ready(id, 1);
        w.spawned_at = now - age;
        w
    }

    /// `over_limits` with resident sets by worker id (`None`: unreadable).
    fn over(
        workers: &[Entry],
        limits: Limits,
        now: Instant,
        rss: &[Option<u64>],
    ) -> Vec<(usize, RecycleReason)> {
        over_limits(workers, 1, limits, now, |w| rss[w.info.id])
    }

    #[test]
    fn a_worker_over_the_memory_limit_is_replaced_and_an_unread_one_is_not() {
        let now = Instant::now();
        let workers = [aged(0, now, SEC), aged(1, now, SEC), aged(2, now, SEC)];
        let limits = Limits {
            memory: Some(256 * MIB),
            age: None,
        };
        let rss = [Some(300 * MIB), Some(256 * MIB), None];
        assert_eq!(
            over(&workers, limits, now, &rss),
            [(
                0,
                RecycleReason::Memory {
                    rss: 300 * MIB,
                    limit: 256 * MIB
                }
            )],
            "at the limit is not over it; an unreadable one is left alone"
        );
        assert!(over(&workers, Limits::default(), now, &rss).is_empty());
    }

    #[test]
    fn a_worker_past_the_age_limit_is_replaced_before_its_memory_is_read() {
        let now = Instant::now();
        let workers = [aged(0, now, 3 * SEC), aged(1, now, SEC)];
        let limits = Limits {
            memory: Some(MIB),
            age: Some(2 * SEC),
        };
        let mut read = Vec::new();
        let found = over_limits(&workers, 1, limits, now, |w| {
            read.push(w.info.id);
            Some(2 * MIB)
        });
        assert_eq!(
            found,
            [
                (
                    0,
                    RecycleReason::Age {
                        age: 3 * SEC,
                        limit: 2 * SEC
                    }
                ),
                (
                    1,
                    RecycleReason::Memory {
                        rss: 2 * MIB,
                        limit: MIB
                    }
                )
            ]
        );
        assert_eq!(read, [1], "the old worker's memory is not read");
        let no_memory = Limits {
            memory: None,
            age: Some(2 * SEC),
        };
        let found = over_limits(&workers, 1, no_memory, now, |_| {
            panic!("read without a limit")
        });
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn only_ready_workers_of_the_generation_not_yet_due_are_checked() {
        let now = Instant::now();
        let old = 10 * SEC;
        let mut due = aged(0, now, old);
        assert!(due.recycle_due(RecycleReason::Requests(5)));
        let mut kept = aged(1, now, old);
        kept.supersede();
        kept.keep_serving();
        let mut booting = Entry::for_test(2, 1, State::Starting);
        booting.spawned_at = now - old;
        let mut superseded = aged(3, now, old);
        superseded.supersede();
        let mut previous = aged(4, now, old);
        previous.info.generation = 0;
        let fresh = aged(5, now, old);
        let workers = [due, kept, booting, superseded, previous, fresh];
        let limits = Limits {
            memory: None,
            age: Some(SEC),
        };
        let found: Vec<usize> = over(&workers, limits, now, &[None; 6])
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found, [5]);
    }

    #[test]
    fn a_recycle_reason_reads_as_the_log_says_it() {
        assert_eq!(
            RecycleReason::Requests(1000).to_string(),
            "served 1000 requests"
        );
        assert_eq!(
            RecycleReason::Memory {
                rss: 300 * MIB + MIB / 2,
                limit: 256 * MIB
            }
            .to_string(),
            "uses 300.5 MiB of memory (resident), over its limit of 256 MiB"
        );
        assert_eq!(
            RecycleReason::Age {
                age: 2 * SEC + 50 * MS,
                limit: 2 * SEC
            }
            .to_string(),
            "has run for 2.05s, past its age limit of 2s"
        );
        assert_eq!(
            RecycleReason::Age {
                age: 90_061 * SEC,
                limit: 86_400 * SEC
            }
            .to_string(),
            "has run for 1d01h, past its age limit of 1d00h"
        );
    }
}
