//! Replacing workers while the server serves: a rolling reload (HUP: a new generation of
//! every worker; the old one drains once all of the new one is ready), recycling (a worker
//! that reached its request, memory or age limit is replaced, one at a time), and scaling
//! (TTIN/TTOU: one worker slot more or fewer).
//!
//! Nothing here stops a worker before its replacement serves; which workers to retire is
//! [`policy::retirements`], a pure function.

use std::time::Instant;

use tracing::{error, info, warn};

use super::command::Origin;
use super::pool::{Recycle, SlotState, State};
use super::{policy, release_startup_pages, Master};
use crate::hooks::{Event, WorkerInfo};
use crate::reload_settings::ReloadSettings;
use crate::sys::{listener, process};

/// A rolling reload in progress: the new generation starts; the old one serves until every
/// new worker is ready.
pub(super) struct Reload {
    pub(super) previous: u64,
    /// The settings the previous generation runs with: put back if this reload is given up.
    pub(super) before: ReloadSettings,
}

/// How the last reload ended, for `status-json` (and `forklift reload --wait`).
pub(super) struct ReloadOutcome {
    pub(super) generation: u64,
    /// Why it was given up; `None` when the new generation serves.
    pub(super) failure: Option<String>,
}

impl Master {
    /// Starts a new generation of every worker; the old one keeps serving until all of the new
    /// one is ready, then drains gracefully. A reload asked for during a reload runs once the
    /// current one ends. An [`on_reload`](crate::Prefork::on_reload) hook that fails refuses
    /// it: the error says why.
    pub(super) fn start_reload(&mut self, origin: Origin) -> Result<(), String> {
        if !self.open_to_changes() {
            return Ok(());
        }
        if self.reload.is_some() {
            info!("reload requested by {origin} during a reload: reloading again once it is done");
            self.reload_queued = Some(origin);
            return Ok(());
        }
        let before = ReloadSettings::from_config(&self.config, self.slots.len(), self.credentials);
        if let Err(reason) = self.reread_settings(origin) {
            error!(
                "reload requested by {origin} refused: {reason}; the workers serve on unchanged"
            );
            self.stats.reloads_failed += 1;
            self.last_reload = Some(ReloadOutcome {
                generation: self.generation + 1,
                failure: Some(reason.clone()),
            });
            self.emit(Event::ReloadFailed {
                generation: self.generation + 1,
                reason: reason.clone(),
            });
            return Err(reason);
        }
        let previous = self.generation;
        self.generation += 1;
        info!(
            "reload requested by {origin}: starting generation {} ({} workers)",
            self.generation,
            self.slots.len()
        );
        self.reload = Some(Reload { previous, before });
        self.stats.reloads_started += 1;
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.respawn_at = Some(now);
            slot.replaces = None;
        }
        self.emit(Event::ReloadStarted {
            generation: self.generation,
        });
        Ok(())
    }

    /// Runs the `on_reload` hook and applies the settings it leaves: the worker count by
    /// scaling, the rest to the config the master reads.
    fn reread_settings(&mut self, origin: Origin) -> Result<(), String> {
        let Some(hook) = &mut self.hooks.on_reload else {
            return Ok(());
        };
        let mut settings =
            ReloadSettings::from_config(&self.config, self.slots.len(), self.credentials);
        hook(&mut settings).map_err(|e| format!("hook on_reload failed: {e}"))?;
        settings
            .apply_to(&mut self.config)
            .map_err(|e| e.to_string())?;
        if settings.workers != self.slots.len() {
            self.scale(settings.workers, origin);
        }
        Ok(())
    }

    /// Gives up a reload whose new generation cannot boot: its workers stop, the previous
    /// generation keeps serving.
    pub(super) fn abort_reload(&mut self, reason: String) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        let failed = self.generation;
        self.stats.reloads_failed += 1;
        self.last_reload = Some(ReloadOutcome {
            generation: failed,
            failure: Some(reason.clone()),
        });
        error!(
            "reload to generation {failed} failed: {reason}; generation {} keeps serving",
            reload.previous
        );
        for w in &mut self.workers {
            if w.info.generation == failed && w.mark_stopping() {
                process::kill(w.info.pid, libc::SIGTERM);
            }
        }
        self.generation = reload.previous;
        // The generation that serves on keeps its settings, for its respawns too (the worker
        // count excepted: scaling already happened).
        if let Err(e) = reload.before.apply_to(&mut self.config) {
            warn!("the settings from before the reload could not be put back: {e}");
        }
        if let Some(revert) = &mut self.hooks.revert_reload {
            revert();
        }
        for slot in &mut self.slots {
            slot.respawn_at = None;
        }
        // Slots the previous generation does not fill (a worker of it died meanwhile) start
        // again now.
        let now = Instant::now();
        for id in 0..self.slots.len() {
            if !policy::slot_served(&self.workers, id, self.generation) {
                self.slots[id].respawn_at = Some(now);
            }
        }
        self.reload_queued = None;
        if let Some(n) = &self.notifier {
            n.ready(&format!(
                "reload failed; generation {} serving",
                self.generation
            ));
        }
        self.emit(Event::ReloadFailed {
            generation: failed,
            reason,
        });
    }

    /// Sets the number of worker slots to `target` (TTIN/TTOU: one more or one fewer). Never
    /// below one.
    pub(super) fn scale(&mut self, target: usize, origin: Origin) {
        if !self.open_to_changes() {
            return;
        }
        if target == 0 {
            warn!("one worker fewer requested by {origin} with one worker left: ignored");
            return;
        }
        let opts = self.bind_options();
        while self.slots.len() < target {
            for b in &mut self.bound {
                if let Err(e) = listener::add_slot(b, opts) {
                    error!("cannot add a worker: {e}");
                    return;
                }
            }
            self.slots.push(SlotState::due_now());
        }
        while self.slots.len() > target {
            self.slots.pop();
            for b in &mut self.bound {
                listener::remove_slot(b);
            }
        }
        info!("workers: {} (requested by {origin})", self.slots.len());
        self.emit(Event::WorkersChanged {
            workers: self.slots.len(),
        });
    }

    /// Retires the workers whose replacements serve: the previous generation once every
    /// slot of the new one is ready, a recycled worker once its slot's replacement is, and
    /// the workers of slots removed by TTOU.
    pub(super) fn retire_replaced(&mut self) {
        let now = Instant::now();
        let generation = self.generation;
        let ready_slots = policy::ready_slots(&self.workers, generation, self.slots.len());
        let reload_done = self.reload.is_some() && ready_slots.iter().all(|&r| r);
        for (i, why) in policy::retirements(&self.workers, generation, &ready_slots, reload_done) {
            self.workers[i].retire(why, now);
        }
        if reload_done {
            self.reload = None;
            self.stats.reloads_completed += 1;
            self.last_reload = Some(ReloadOutcome {
                generation,
                failure: None,
            });
            let workers: Vec<WorkerInfo> = self
                .workers
                .iter()
                .filter(|w| w.info.generation == generation && w.serves())
                .map(|w| w.info)
                .collect();
            info!("generation {generation} serves: {} workers", workers.len());
            if let Some(n) = &self.notifier {
                n.ready(&format!(
                    "generation {generation}: {} workers serving",
                    workers.len()
                ));
            }
            self.emit(Event::GenerationReady {
                generation,
                workers,
            });
            release_startup_pages();
            if let Some(origin) = self.reload_queued.take() {
                // A refusal is logged and reported where it happens.
                let _ = self.start_reload(origin);
            }
        }
    }

    /// Replaces, one at a time, the workers that reached their request, memory or age limit.
    pub(super) fn start_recycle(&mut self, now: Instant) {
        let Some(i) =
            policy::recycle_candidate(&self.workers, self.generation, self.reload.is_some())
        else {
            return;
        };
        let w = &mut self.workers[i];
        if let State::Ready {
            recycle: Recycle::Due(why),
            ..
        } = w.state
        {
            info!(
                "worker {} (pid {}) {why}: replacing it",
                w.info.id, w.info.pid
            );
        }
        w.supersede();
        self.slots[w.info.id].respawn_at = Some(now);
    }
}
