//! Binary upgrade (USR2): the master executes its binary again (the file may have been
//! replaced) as a new master that inherits the listening sockets and the control socket. Once
//! the new master's workers serve, it asks this one to drain and exit (SIGTERM); if it fails
//! first, this master keeps serving.

use std::os::fd::AsRawFd;

use tracing::{error, info, warn};

use super::command::Origin;
use super::Master;
use crate::hooks::Event;
use crate::spawn;
use crate::sys::listener;
use crate::sys::process::{self, Wait};

impl Master {
    /// Starts the new master, unless one is already starting: the new master's pid, or why
    /// none started. A new master that cannot be started is counted and reported as a failed
    /// upgrade (`status`, `/metrics`, `upgrade --wait`), as one that exits before taking over.
    pub(super) fn start_upgrade(&mut self, origin: Origin) -> Result<u32, String> {
        if !self.open_to_changes() {
            return Err("the master is stopping".into());
        }
        if let Some(pid) = self.upgrade {
            warn!(
                "upgrade requested by {origin}: an upgrade (new master pid {pid}) is already \
                 under way"
            );
            return Ok(pid);
        }
        match self.spawn_new_master(origin) {
            Ok(pid) => Ok(pid),
            Err(why) => {
                error!("upgrade requested by {origin}: binary upgrade failed: {why}; this master keeps serving");
                self.stats.upgrades_failed += 1;
                self.last_upgrade_failure = Some((None, why.clone()));
                Err(why)
            }
        }
    }

    fn spawn_new_master(&mut self, origin: Origin) -> Result<u32, String> {
        let Some(line) = self.upgrade_line.clone() else {
            return Err("the path of this binary is unknown".into());
        };
        let mut sockets: Vec<(i32, String)> = listener::handover_list(&self.bound)
            .into_iter()
            .map(|(s, name)| (s.as_raw_fd(), name))
            .collect();
        if let Some(c) = &self.control {
            sockets.push((c.handover_fd(), listener::CONTROL_FD_NAME.to_string()));
        }
        if let Some(h) = &self.health {
            sockets.push((h.handover_fd(), listener::HEALTH_FD_NAME.to_string()));
        }
        // The new master's workers must open the tickets this one's issued. Closed here
        // once the new master has its copy.
        #[cfg(feature = "tls")]
        let tickets = crate::http::tickets::handover_pipe()
            .map_err(|e| format!("cannot hand over the TLS ticket secret: {e}"))?;
        #[cfg(feature = "tls")]
        if let Some(pipe) = &tickets {
            sockets.push((pipe.as_raw_fd(), listener::TICKETS_FD_NAME.to_string()));
        }
        let pid =
            spawn::exec::spawn_master(&line, &sockets, self.pid).map_err(|e| e.to_string())?;
        info!(
            "upgrade requested by {origin}: new master pid {pid} ({}) starting with {} sockets",
            line.program.display(),
            sockets.len()
        );
        self.upgrade = Some(pid);
        self.stats.upgrades_started += 1;
        self.emit(Event::UpgradeStarted { pid });
        Ok(pid)
    }

    /// Reaps a new master that exited before it took over.
    pub(super) fn reap_upgrade(&mut self) {
        let Some(pid) = self.upgrade else { return };
        if let Wait::Exited(status) = process::try_wait(pid) {
            error!(
                "binary upgrade failed: the new master (pid {pid}) {status} before it took over; \
                 this master keeps serving (see the new master's log above)"
            );
            self.upgrade = None;
            self.stats.upgrades_failed += 1;
            self.last_upgrade_failure = Some((Some(pid), format!("the new master {status}")));
            self.emit(Event::UpgradeFailed { pid, status });
        }
    }

    /// Leaves the sockets and the control socket's file to the new master: this one stops
    /// without removing them.
    pub(super) fn hand_over_sockets(&mut self) {
        for b in &mut self.bound {
            b.hand_over();
        }
        if let Some(c) = &mut self.control {
            c.hand_over();
        }
        // Only the new master answers the control socket and health checks from now on:
        // this one is going (its copies close; the socket file stays the new master's).
        self.control = None;
        self.health = None;
    }

    /// In a master started by a binary upgrade: retire the old master now that this one serves.
    pub(super) fn retire_old_master(&mut self) {
        let Some(old) = self.upgrade_from.take() else {
            return;
        };
        for b in &mut self.bound {
            b.adopt();
        }
        if let Some(c) = &mut self.control {
            c.adopt();
        }
        if process::parent_pid() == old {
            info!("serving: asking the previous master (pid {old}) to drain and exit");
            process::kill(old, libc::SIGTERM);
        }
    }
}
