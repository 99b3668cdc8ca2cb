//! Every fd and system call wrapper: fd flags and pipes, files (opening beneath a directory,
//! `sendfile`), `EPOLLEXCLUSIVE` for shared listeners, log files and the pid file, signals,
//! sockets, the control socket, readiness notification, output relays, page trimming, process
//! control and resource limits. Nothing here knows about HTTP or about the master's decisions.

pub(crate) mod control;
pub(crate) mod epoll;
pub(crate) mod fd;
pub(crate) mod file;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod log_file;
pub(crate) mod notify;
pub(crate) mod output;
pub(crate) mod pid_file;
pub(crate) mod process;
pub(crate) mod signals;
pub(crate) mod trim;
