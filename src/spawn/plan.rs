//! What one new worker inherits, decided here: its slot's listening sockets, the worker's
//! end of a fresh status channel, for a foreign program a NOTIFY_SOCKET and output pipes, its
//! CPU and its user; and the list of master-only fds a forked child closes (every other
//! worker's channel and socket, the signal pipe, the control socket).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::exec::CommandLine;
use super::{ChildSetup, Readiness, Spawn, SpawnSpec, WorkerSlot};
use crate::error::{Error, Result};
use crate::sys::listener::BoundAddr;
use crate::sys::notify::NotifyListener;
use crate::sys::output::Relay;
use crate::worker::WorkerMain;

/// Everything the master knows that decides what one worker inherits.
pub(crate) struct Plan<'a> {
    pub slot: WorkerSlot,
    pub master_pid: u32,
    /// Every address the master listens on; the worker gets its slot's socket of each.
    pub bound: &'a [BoundAddr],
    /// The master's own fds (signal pipe, control socket, the other workers' channels): a
    /// forked worker closes them.
    pub master_fds: Vec<RawFd>,
    /// Pin the worker (and, on Linux, its reuseport sockets) to this CPU.
    pub cpu: Option<usize>,
    /// Drop to this (uid, gid).
    pub credentials: Option<(u32, u32)>,
    pub spawn: &'a Spawn,
    pub readiness: Readiness,
    /// Relay a foreign worker's output (`Some`), each line prefixed with the worker when
    /// `Some(true)`.
    pub relay_output: Option<bool>,
    /// A number unique to this spawn within the master (names the NOTIFY_SOCKET).
    pub serial: u64,
}

/// A worker process just started, with the master's ends of what it was given.
pub(crate) struct Started {
    pub pid: u32,
    pub channel: UnixStream,
    pub notify: Option<NotifyListener>,
    pub relays: Vec<Relay>,
}

impl Plan<'_> {
    /// Starts the worker: by fork with `main`, or by executing a command (the re-executed
    /// binary's line is kept in `exec_line` for the next spawn).
    ///
    /// # Errors
    /// [`Error::Spawn`] with what could not be created or started.
    pub(crate) fn start(
        self,
        main: &WorkerMain,
        exec_line: &mut Option<CommandLine>,
    ) -> Result<Started> {
        let id = self.slot.id;
        let fail = |context: &str| {
            let context = context.to_string();
            move |source: std::io::Error| Error::Spawn {
                id,
                context,
                source,
            }
        };
        let (master_end, worker_end) =
            UnixStream::pair().map_err(fail("cannot create its status channel"))?;
        master_end
            .set_nonblocking(true)
            .map_err(fail("cannot make its status channel non-blocking"))?;
        let listeners = self
            .bound
            .iter()
            .map(|b| b.socket_for(id).as_fd())
            .collect::<Vec<_>>();
        let mine: Vec<RawFd> = listeners.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut close_in_child = self.master_fds.clone();
        close_in_child.push(master_end.as_raw_fd());
        close_in_child.extend(
            self.bound
                .iter()
                .flat_map(|b| b.all_sockets())
                .map(|s| s.as_raw_fd())
                .filter(|fd| !mine.contains(fd)),
        );
        self.pin_sockets();
        let foreign = !matches!(self.spawn, Spawn::Fork);
        let notify = match (self.readiness, foreign) {
            (Readiness::Notify, true) => Some(
                NotifyListener::new(self.master_pid, self.serial)
                    .map_err(fail("cannot create its NOTIFY_SOCKET"))?,
            ),
            _ => None,
        };
        let mut relays = Vec::new();
        let mut relay_writers = Vec::new();
        if self.relay_output.is_some() && foreign {
            for to_stderr in [false, true] {
                let (relay, writer) =
                    Relay::pipe(to_stderr).map_err(fail("cannot create its output pipe"))?;
                relays.push(relay);
                relay_writers.push(writer);
            }
        }
        let spec = SpawnSpec {
            slot: self.slot,
            master_pid: self.master_pid,
            listeners,
            status: worker_end.as_fd(),
            close_in_child,
            setup: ChildSetup {
                cpu: self.cpu,
                credentials: self.credentials,
            },
            stdio: match relay_writers.as_slice() {
                [out, err] => Some([out.as_raw_fd(), err.as_raw_fd()]),
                _ => None,
            },
        };
        // An exec'd worker reads the TLS ticket secret first on its channel (a forked one has
        // it in memory): never in its environment or arguments.
        #[cfg(feature = "tls")]
        let secret_line = match self.spawn {
            Spawn::Fork => None,
            _ => crate::http::tickets::channel_line(),
        };
        #[cfg(feature = "tls")]
        if let Some(line) = &secret_line {
            // A fresh socket buffer takes the line whole: this never blocks or splits it.
            std::io::Write::write_all(&mut &master_end, line)
                .map_err(fail("cannot send it the TLS ticket secret"))?;
        }
        let pid = match self.spawn {
            Spawn::Fork => super::fork::spawn(&spec, main).map_err(fail("fork(2) failed"))?,
            other => {
                let line = match (&*exec_line, other) {
                    (Some(line), Spawn::Exec) => Ok(line.clone()),
                    _ => CommandLine::for_spawn(other, &spec),
                }
                .map_err(fail("cannot find the command to run"))?;
                if matches!(other, Spawn::Exec) && exec_line.is_none() {
                    *exec_line = Some(line.clone());
                }
                let mut line = line;
                #[cfg(feature = "tls")]
                if secret_line.is_some() {
                    line.env.push((
                        crate::protocol::ENV_TLS_TICKETS.into(),
                        Some("channel".into()),
                    ));
                }
                if let Some(n) = &notify {
                    line.env
                        .push(("NOTIFY_SOCKET".into(), Some(n.env_value().into())));
                }
                super::exec::spawn(&line, &spec).map_err(fail("cannot run its command"))?
            }
        };
        if self.relay_output == Some(true) {
            for r in &mut relays {
                r.set_prefix(format!("[worker {id} pid {pid}] "));
            }
        }
        Ok(Started {
            pid,
            channel: master_end,
            notify,
            relays,
        })
    }

    /// SO_INCOMING_CPU on the worker's own reuseport sockets, so the kernel hands it the
    /// connections that arrive on its CPU. Linux only; elsewhere pinning is the affinity alone.
    fn pin_sockets(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(cpu) = self.cpu {
            for b in self.bound {
                if b.is_per_slot() {
                    if let Err(e) = b.socket_for(self.slot.id).set_cpu_affinity(cpu) {
                        tracing::debug!(
                            "SO_INCOMING_CPU {cpu} on worker {}'s socket: {e}",
                            self.slot.id
                        );
                    }
                }
            }
        }
    }
}
