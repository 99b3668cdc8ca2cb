//! A forklift server under test: `forklift serve` on forklift-testkit's guard, with what the
//! scenarios add (the server's log file, an open-file limit, the command line the report
//! shows).

use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use forklift_testkit::groups;
use forklift_testkit::hooks::{hook_field, parse_pid_list};
use forklift_testkit::{Launch, Server};

use crate::context::Ctx;
use crate::report::shell_quote;

/// How long a server may take to print its `ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Output lines kept in memory per stream (the log file gets them all).
const MAX_LINES: usize = 200_000;

/// How a scenario's server differs from the default one.
#[derive(Default)]
pub struct Opts {
    /// RLIMIT_NOFILE (soft and hard) for the server, as `ulimit -n`.
    pub nofile: Option<u64>,
}

/// Starts `forklift <args>` with `RUST_LOG=info`, its output copied to
/// target/chaos-logs/NAME.log. It gets SIGTERM if this harness dies, and its process group
/// is killed by [`groups::kill_all`] at the end of the scenario. The guard's label is the
/// command line as the report shows it.
pub fn start(ctx: &Ctx, name: &str, args: &[&str], opts: Opts) -> Server {
    let mut cmd = Command::new(&ctx.bin);
    cmd.args(args).env("RUST_LOG", "info");
    groups::term_with_parent(&mut cmd);
    if let Some(n) = opts.nofile {
        // SAFETY: only setrlimit(2), which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let launch = Launch::new(&ctx.bin, vec![command_line(args, opts.nofile)])
        .log(ctx.logs.join(format!("{name}.log")))
        .max_lines(MAX_LINES);
    Server::spawn(cmd, launch)
}

/// The command line of a server, as a shell would run it.
fn command_line(args: &[&str], nofile: Option<u64>) -> String {
    let mut s = String::new();
    if let Some(n) = nofile {
        let _ = write!(s, "prlimit --nofile={n}:{n} -- ");
    }
    s.push_str("target/release/forklift");
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

/// Waits for `ready pids=...` and returns the pids; panics with the end of stderr if it does
/// not come within 20 s or the master exits first.
pub fn ready(server: &Server) -> Vec<u32> {
    match server.wait_for_line_while_alive(|l| l.starts_with("ready "), READY_TIMEOUT) {
        Some((_, l)) => parse_pid_list(&hook_field(&l, "pids").unwrap_or_default()),
        None => {
            let err = server.stderr.snapshot();
            panic!(
                "forklift {:?} did not get ready; stderr tail:\n{}",
                server.label,
                err[err.len().saturating_sub(20)..].join("\n")
            )
        }
    }
}

/// The respawn delays the master logged (`... restarts in 200ms (backoff)`), in order.
pub fn respawn_delays(server: &Server) -> Vec<String> {
    server
        .stderr
        .snapshot()
        .iter()
        .filter_map(|l| {
            l.split("restarts in ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap_or("").to_string())
        })
        .collect()
}
