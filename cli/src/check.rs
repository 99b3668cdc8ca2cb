//! `forklift check [serve|run] [--config FILE] [flags]`: checks every setting as `serve` or
//! `run` would resolve it (flags, environment, file) without binding or starting anything,
//! like `nginx -t`. It prints one line per thing checked, then exits 0, or 1 if anything is
//! wrong (a file or flag that cannot even be parsed is a 1 too).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use forklift::Prefork;

use crate::logs::LogArgs;
use crate::{say, PoolArgs, PrivilegeArgs, RunArgs, ServeArgs};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(subcommand)]
    what: CheckWhat,
}

/// Which command's settings to check.
#[derive(Debug, Subcommand)]
enum CheckWhat {
    /// Check the settings of `forklift serve` (the default)
    Serve(Box<ServeArgs>),
    /// Check the settings of `forklift run`, COMMAND included
    Run(Box<RunArgs>),
}

/// `forklift check ...` without `serve` or `run` checks `serve`'s settings.
pub fn default_mode(mut argv: Vec<OsString>) -> Vec<OsString> {
    let is_check = argv.get(1).is_some_and(|a| a == "check");
    let named = argv
        .get(2)
        .is_some_and(|a| ["serve", "run", "help", "-h", "--help"].contains(&&*a.to_string_lossy()));
    if is_check && !named {
        argv.insert(2, "serve".into());
    }
    argv
}

/// What was checked: each line `ok` or a problem.
#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => say!("ok       {what}"),
            Err(e) => {
                self.problems += 1;
                say!("PROBLEM  {what}: {e}");
            }
        }
    }
}

pub fn run(args: CheckArgs) -> ExitCode {
    let mut report = Report::default();
    match args.what {
        CheckWhat::Serve(s) => {
            say!("checking the settings of forklift serve (nothing is bound or started)");
            pool(&mut report, &s.pool, &s.privileges, |p| {
                let timeout = s.worker_timeout.0;
                s.limits
                    .apply(p)
                    .worker_timeout((!timeout.is_zero()).then_some(timeout))
            });
            match s.tls_pairs() {
                Err(e) => report.check("tls-cert and tls-key", Err(e)),
                Ok(pairs) if pairs.is_empty() => {}
                Ok(pairs) => {
                    let shown: Vec<String> = pairs
                        .iter()
                        .map(|(c, k)| {
                            format!("tls-cert {} with tls-key {}", c.display(), k.display())
                        })
                        .collect();
                    report.check(
                        &shown.join(", "),
                        forklift::__check::tls_files(&pairs, s.tls_ticket_key_file.as_deref())
                            .map_err(|e| e.to_string()),
                    );
                }
            }
            if let Some(dir) = &s.dir {
                report.check(
                    &format!("dir {}", dir.display()),
                    crate::static_files::check_root(dir).map(drop),
                );
            }
            let access_log = match &s.access_log {
                Some(Some(path)) if path.as_os_str() != "-" => Some(path.as_path()),
                _ => None,
            };
            log_files(&mut report, &s.logs, access_log);
            if s.proxy_protocol {
                report.check(
                    &format!("trusted-proxies {}", s.trusted_proxies.join(",")),
                    forklift::Prefork::new()
                        .proxy_protocol(&s.trusted_proxies)
                        .map(drop)
                        .map_err(|e| e.to_string()),
                );
            }
        }
        CheckWhat::Run(r) => {
            say!("checking the settings of forklift run (nothing is bound or started)");
            pool(&mut report, &r.pool, &r.privileges, |p| {
                let timeout = r.worker_timeout.0;
                r.limits
                    .apply(p)
                    .worker_timeout((!timeout.is_zero()).then_some(timeout))
            });
            log_files(&mut report, &r.logs, None);
            let program = r.command.first().map(Path::new);
            report.check(
                &format!(
                    "command {}",
                    program.map(|p| p.display().to_string()).unwrap_or_default()
                ),
                program.map_or(Err("no COMMAND given".into()), find_program),
            );
        }
    }
    if report.problems == 0 {
        say!("the settings are valid");
        ExitCode::SUCCESS
    } else {
        say!("{} problem(s) found", report.problems);
        ExitCode::FAILURE
    }
}

/// The settings `serve` and `run` share.
fn pool(
    report: &mut Report,
    pool: &PoolArgs,
    privileges: &PrivilegeArgs,
    extra: impl FnOnce(Prefork) -> Prefork,
) {
    let mut addrs_ok = true;
    for addr in &pool.listen {
        let parsed = addr.parse::<forklift::ListenAddr>();
        addrs_ok &= parsed.is_ok();
        report.check(
            &format!("listen {addr}"),
            parsed.map(drop).map_err(|e| e.to_string()),
        );
    }
    if addrs_ok {
        report.check(
            "workers, timeouts and limits",
            pool.apply(Prefork::new())
                .and_then(|p| extra(p).__validate())
                .map_err(|e| e.to_string()),
        );
    }
    if privileges.user.is_some() || privileges.group.is_some() {
        let who = [
            privileges.user.as_ref().map(|u| format!("user {u}")),
            privileges.group.as_ref().map(|g| format!("group {g}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        report.check(
            &who,
            forklift::__check::credentials(privileges.user.as_deref(), privileges.group.as_deref())
                .map(drop)
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(path) = &pool.control {
        report.check(
            &format!("control {}", path.display()),
            parent_dir_exists(path),
        );
    }
    if let Some(path) = &pool.reexec_as {
        report.check(&format!("reexec-as {}", path.display()), find_program(path));
    }
}

/// The pid file and the log files can be written, as `serve` and `run` check before binding
/// (with the same errors), without creating them.
fn log_files(report: &mut Report, logs: &LogArgs, access_log: Option<&Path>) {
    if let Some(path) = &logs.pid_file {
        report.check(
            &format!("pid-file {}", path.display()),
            forklift::__check::pid_file(path).map_err(|e| e.to_string()),
        );
    }
    for (key, what, path) in [
        ("error-log", "error log", logs.error_log.as_deref()),
        ("access-log", "access log", access_log),
    ] {
        if let Some(path) = path {
            report.check(
                &format!("{key} {}", path.display()),
                forklift::__check::log_file(what, path).map_err(|e| e.to_string()),
            );
        }
    }
}

/// The directory a socket or file would be created in exists.
fn parent_dir_exists(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("the directory {} does not exist", dir.display()))
    }
}

/// `program` is an executable file, as given or found in `PATH`.
fn find_program(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return if executable(program) {
            Ok(())
        } else {
            Err(format!("{} is not an executable file", program.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err(format!(
            "{} is not an executable in PATH (give its full path)",
            program.display()
        ))
    }
}
