//! What passes between the master and a worker: the environment of an exec'd worker
//! (systemd's `LISTEN_FDS` protocol plus forklift's own variables), the status channel's
//! messages, and the exit codes that mean something to the master.

/// The first inherited fd, as in systemd's `sd_listen_fds`.
pub(crate) const LISTEN_FDS_START: i32 = 3;

pub(crate) const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const ENV_LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The worker's index (0-based): the marker that makes [`is_worker`](crate::is_worker) true.
pub(crate) const ENV_WORKER_ID: &str = "FORKLIFT_WORKER_ID";
pub(crate) const ENV_GENERATION: &str = "FORKLIFT_GENERATION";
pub(crate) const ENV_MASTER_PID: &str = "FORKLIFT_MASTER_PID";
/// The fd of the worker's end of its status channel.
pub(crate) const ENV_STATUS_FD: &str = "FORKLIFT_STATUS_FD";

/// Set for a master started by a binary upgrade: the pid of the master it replaces.
pub(crate) const ENV_UPGRADE_FROM: &str = "FORKLIFT_UPGRADE_FROM";
/// `channel` when the first line on the worker's status channel is the TLS ticket secret
/// (never the secret itself: see `http/tickets.rs`).
pub(crate) const ENV_TLS_TICKETS: &str = "FORKLIFT_TLS_TICKETS";

/// Every variable the master sets for a worker or a new master; stripped from what it
/// passes on otherwise.
pub(crate) const WORKER_ENV: [&str; 9] = [
    ENV_UPGRADE_FROM,
    ENV_TLS_TICKETS,
    ENV_LISTEN_FDS,
    ENV_LISTEN_PID,
    ENV_LISTEN_FDNAMES,
    ENV_WORKER_ID,
    ENV_GENERATION,
    ENV_MASTER_PID,
    ENV_STATUS_FD,
];

/// Exit code of a worker that could not boot: the master stops instead of respawning it
/// (gunicorn's `WORKER_BOOT_ERROR`).
///
/// ```
/// let server = forklift::Prefork::new().on_worker_exit(|w, status| {
///     if status == forklift::ExitStatus::Exited(forklift::BOOT_ERROR_EXIT_CODE) {
///         eprintln!("worker {} could not boot", w.id);
///     }
/// });
/// # let _ = server;
/// ```
pub const BOOT_ERROR_EXIT_CODE: i32 = 3;

/// A message from a worker to the master, one line each on the status channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// The worker serves.
    Ready,
    /// The worker cannot boot, and why.
    BootError(String),
    /// The worker's event loop is alive; it has served this many requests and holds this
    /// many connections open.
    Heartbeat {
        /// Requests served since the worker started.
        requests: u64,
        /// Connections open now (0 from a worker that does not count them: `forklift run`'s
        /// programs send no heartbeat, a newer worker may send more fields).
        connections: u64,
    },
    /// The worker reached its request limit and asks to be replaced.
    Recycle,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Ready => b"ready\n".to_vec(),
            Message::Heartbeat {
                requests,
                connections,
            } => format!("hb {requests} {connections}\n").into_bytes(),
            Message::Recycle => b"recycle\n".to_vec(),
            Message::BootError(text) => {
                let mut line = String::from("boot-error ");
                for c in text.chars() {
                    match c {
                        '\\' => line.push_str("\\\\"),
                        '\n' => line.push_str("\\n"),
                        c => line.push(c),
                    }
                }
                line.push('\n');
                line.into_bytes()
            }
        }
    }

    /// Takes every complete message out of `buf`, leaving a partial line in place. Unknown
    /// lines are skipped, so an older master tolerates a newer worker.
    pub fn drain(buf: &mut Vec<u8>) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            if line == "ready" {
                out.push(Message::Ready);
            } else if line == "recycle" {
                out.push(Message::Recycle);
            } else if let Some(fields) = line.strip_prefix("hb ") {
                // `hb REQUESTS [CONNECTIONS ...]`: fields a newer worker adds are ignored.
                let mut fields = fields.split(' ').map(str::parse::<u64>);
                if let Some(Ok(requests)) = fields.next() {
                    let connections = fields.next().and_then(Result::ok).unwrap_or(0);
                    out.push(Message::Heartbeat {
                        requests,
                        connections,
                    });
                }
            } else if let Some(text) = line.strip_prefix("boot-error ") {
                out.push(Message::BootError(unescape(text)));
            }
        }
        out
    }
}

/// What the master tells a worker on its status channel, one line each: `drain` (the
/// shutdown delay has begun: answer with `Connection: close` / GOAWAY, keep accepting),
/// [`REOPEN_LINE`], and, first of all for an exec'd TLS worker, `tls-tickets HEX`
/// (`http/tickets.rs`). End of file means the master is gone.
pub(crate) const DRAIN_LINE: &[u8] = b"drain\n";

/// Tells a worker to reopen its log files (USR1 to the master: logrotate renamed them).
pub(crate) const REOPEN_LINE: &[u8] = b"reopen\n";

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads systemd's socket-activation variables: how many fds from fd 3 belong to this
/// process. `None` if the variables are absent or meant for another process.
pub(crate) fn listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    my_pid: u32,
) -> Result<Option<usize>, String> {
    let (Some(pid), Some(n)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != my_pid {
        return Ok(None);
    }
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={n:?} is not a count"))?;
    if n > 1024 {
        return Err(format!("LISTEN_FDS={n} is implausibly large"));
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_partial_lines() {
        let mut buf = Vec::new();
        buf.extend(Message::Ready.encode());
        buf.extend(Message::BootError("line one\nback\\slash".into()).encode());
        buf.extend(
            Message::Heartbeat {
                requests: 42,
                connections: 7,
            }
            .encode(),
        );
        buf.extend(Message::Recycle.encode());
        buf.extend(b"hb 5\nhb 6 2 future\nhb notanumber\nunknown thing\nrea");
        let got = Message::drain(&mut buf);
        assert_eq!(
            got,
            vec![
                Message::Ready,
                Message::BootError("line one\nback\\slash".into()),
                Message::Heartbeat {
                    requests: 42,
                    connections: 7
                },
                Message::Recycle,
                Message::Heartbeat {
                    requests: 5,
                    connections: 0
                },
                Message::Heartbeat {
                    requests: 6,
                    connections: 2
                },
            ]
        );
        assert_eq!(buf, b"rea");
        buf.extend(b"dy\n");
        assert_eq!(Message::drain(&mut buf), vec![Message::Ready]);
        assert!(buf.is_empty());
    }

    #[test]
    fn listen_fds_for_this_process() {
        assert_eq!(listen_fds(Some("42"), Some("2"), 42), Ok(Some(2)));
        assert_eq!(listen_fds(Some("43"), Some("2"), 42), Ok(None));
        assert_eq!(listen_fds(None, Some("2"), 42), Ok(None));
        assert_eq!(listen_fds(Some("42"), None, 42), Ok(None));
        assert!(listen_fds(Some("x"), Some("2"), 42).is_err());
        assert!(listen_fds(Some("42"), Some("-1"), 42).is_err());
        assert!(listen_fds(Some("42"), Some("99999"), 42).is_err());
    }
}
