//! Where a worker's parked connections wait (`conn.rs`, `Parking`): their keep-alive
//! deadlines in one list, swept by one task that wakes those whose deadline passed, or all of
//! them when the worker stops.
//!
//! Why: a parked connection is a task of its own, and its size is what an idle keep-alive
//! connection costs. With a tokio timer (112 bytes) and a wait on the worker's stop (144) in
//! each, that task took 896 bytes; with its place here instead (48 bytes in this list) it
//! takes 384. A sweep scans every entry, so it runs at most every [`SOONEST`]: a deadline is
//! met that much late at worst, against the keep-alive timeout's seconds.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use slab::Slab;
use tokio::sync::watch;
use tokio::time::Instant;

/// The parked connections of a worker and their deadlines.
#[derive(Default)]
pub(super) struct Lot {
    entries: RefCell<Slab<Entry>>,
    /// Whether a [`sweep`] task runs (while any entry waits for its deadline).
    sweeping: Cell<bool>,
}

struct Entry {
    until: Instant,
    /// The parked connection's task, as it last polled [`Lot::expired`].
    waker: Option<Waker>,
    /// The deadline passed or the worker stopped: the connection closes.
    expired: bool,
}

/// A sweep runs no sooner than this after the one before, so that deadlines a little apart
/// cost one scan (the latest a deadline is met).
const SOONEST: Duration = Duration::from_millis(100);

/// A sweep runs at least this often while connections wait, so that a deadline earlier than
/// those the last sweep saw is met within it.
const LATEST: Duration = Duration::from_secs(1);

impl Lot {
    /// Enters a connection parked until `until`; its key, and whether a [`sweep`] must be
    /// started (none runs).
    pub(super) fn enter(&self, until: Instant) -> (usize, bool) {
        let entry = Entry {
            until,
            waker: None,
            expired: false,
        };
        let key = self.entries.borrow_mut().insert(entry);
        (key, !self.sweeping.replace(true))
    }

    /// Whether the deadline of the connection `key` passed (or the worker stopped); if not,
    /// `waker` is woken when it does.
    pub(super) fn expired(&self, key: usize, waker: &Waker) -> bool {
        let mut entries = self.entries.borrow_mut();
        let entry = &mut entries[key];
        if !entry.expired && !entry.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            entry.waker = Some(waker.clone());
        }
        entry.expired
    }

    /// The connection `key` goes on or closes.
    pub(super) fn leave(&self, key: usize) {
        let entry = self.entries.borrow_mut().remove(key);
        // Its waker is dropped here, with the list no longer borrowed.
        drop(entry);
    }

    /// The entries in the list (waiting or expired).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.borrow().len()
    }
}

/// Wakes the connections of `lot` whose deadline passed, every one once `stop` turns true (or
/// its sender is gone: the worker is ending), until none waits for a deadline.
pub(super) async fn sweep(lot: Rc<Lot>, mut stop: watch::Receiver<bool>) {
    let mut woken = Vec::new();
    let mut stopped = false;
    loop {
        stopped = stopped || *stop.borrow_and_update();
        let now = Instant::now();
        let mut earliest = None;
        for (_, entry) in lot.entries.borrow_mut().iter_mut() {
            if entry.expired {
                continue;
            }
            if stopped || entry.until <= now {
                entry.expired = true;
                woken.extend(entry.waker.take());
            } else if earliest.is_none_or(|at| entry.until < at) {
                earliest = Some(entry.until);
            }
        }
        // Woken with the list no longer borrowed: a task may run its drop as its waker goes.
        woken.drain(..).for_each(Waker::wake);
        let Some(earliest) = earliest else {
            lot.sweeping.set(false);
            let mut entries = lot.entries.borrow_mut();
            if entries.is_empty() {
                // After a burst, its 10,000 places go back.
                entries.shrink_to_fit();
            }
            return;
        };
        let next = earliest.clamp(now + SOONEST, now + LATEST);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            // The stop's value is read at the top of the loop; a sender gone ends it too.
            changed = stop.changed() => stopped = changed.is_err(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Runs the sweep on a paused clock until it ends or `for_` passes.
    async fn run_for(lot: &Rc<Lot>, stop: &watch::Receiver<bool>, for_: Duration) -> bool {
        let swept = sweep(lot.clone(), stop.clone());
        tokio::time::timeout(for_, swept).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_wakes_its_connection_alone_and_the_sweep_ends_with_the_last() {
        let lot = Rc::new(Lot::default());
        let (_stop_tx, stop) = watch::channel(false);
        let start = Instant::now();
        let (first, started) = lot.enter(start + Duration::from_secs(2));
        assert!(started, "the first entry starts a sweep");
        let (second, started) = lot.enter(start + Duration::from_secs(5));
        assert!(!started, "one sweep at a time");
        let (count1, waker1) = counter();
        let (count2, waker2) = counter();
        assert!(!lot.expired(first, &waker1));
        assert!(!lot.expired(second, &waker2));

        // Within a sweep's lateness of the first deadline, it alone has passed.
        assert!(!run_for(&lot, &stop, Duration::from_millis(2100)).await);
        assert_eq!(count1.0.load(Ordering::SeqCst), 1);
        assert_eq!(count2.0.load(Ordering::SeqCst), 0);
        assert!(lot.expired(first, &waker1));
        assert!(!lot.expired(second, &waker2));
        lot.leave(first);

        // The sweep that starts now wakes the second at its deadline, then ends.
        let swept_at = Instant::now();
        assert!(run_for(&lot, &stop, Duration::from_secs(10)).await);
        let at = swept_at.elapsed();
        assert!(at >= Duration::from_millis(2900) && at <= Duration::from_millis(3100));
        assert_eq!(count2.0.load(Ordering::SeqCst), 1);
        assert!(lot.expired(second, &waker2));
        assert!(!lot.sweeping.get());
        lot.leave(second);
        assert_eq!(lot.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_wakes_every_connection_at_once() {
        let lot = Rc::new(Lot::default());
        let (stop_tx, stop) = watch::channel(false);
        let far = Instant::now() + Duration::from_secs(75);
        let counted: Vec<_> = (0..3)
            .map(|_| {
                let (key, _) = lot.enter(far);
                let (count, waker) = counter();
                assert!(!lot.expired(key, &waker));
                (key, count, waker)
            })
            .collect();
        let swept = tokio::task::LocalSet::new();
        let sweeping = swept.spawn_local(sweep(lot.clone(), stop.clone()));
        swept
            .run_until(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                for (key, count, waker) in &counted {
                    assert_eq!(count.0.load(Ordering::SeqCst), 0);
                    assert!(!lot.expired(*key, waker));
                }
                let stopped_at = Instant::now();
                stop_tx.send_replace(true);
                sweeping.await.expect("the sweep ends");
                assert_eq!(stopped_at.elapsed(), Duration::ZERO, "at once");
            })
            .await;
        for (key, count, waker) in &counted {
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert!(lot.expired(*key, waker));
        }
        // A connection parked after the stop is woken by the sweep it starts.
        let (key, started) = lot.enter(far);
        assert!(started);
        let (count, waker) = counter();
        assert!(!lot.expired(key, &waker));
        assert!(run_for(&lot, &stop, Duration::from_secs(1)).await);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
