//! A reload (HUP, `forklift reload`) re-reads the settings: the same command line, with the
//! environment and the configuration file as they are now. What the master can change in
//! place (worker count, timeouts, limits, and `serve`'s HTTP settings: TLS files, access log,
//! header and keep-alive timeouts, request and connection limits) applies to the new
//! generation; the log says what else changed and that it needs a binary upgrade (USR2). A
//! file that no longer parses refuses the reload: the workers serve on with the old
//! settings, and the error is logged and is what `forklift reload` answers.

use std::collections::BTreeMap;
use std::ffi::OsString;

use forklift::{Prefork, ReloadSettings};
use tracing::{info, warn};

use crate::{settings, Cli, Command, SpawnMode};

/// What the master applies on a reload (see [`ReloadSettings`]).
const RELOADED: &[&str] = &[
    "workers",
    "graceful-timeout",
    "boot-timeout",
    "worker-timeout",
    "shutdown-delay",
    "max-worker-memory",
    "max-worker-age",
];

/// What `serve`'s workers take from the master on a reload, fork mode included (see
/// [`ReloadSettings::http`]).
const HTTP_RELOADED: &[&str] = &[
    "header-read-timeout",
    "keep-alive-timeout",
    "access-log",
    "tls-cert",
    "tls-key",
    "max-requests",
    "max-requests-jitter",
    "max-connections",
    "no-fast-path",
];

/// What the master holds from its start (sockets, credentials, how workers start, the pid
/// file and the error log it opened): only a new master (USR2) takes a change.
const MASTER_BOUND: &[&str] = &[
    "listen",
    "reuse-port",
    "backlog",
    "user",
    "group",
    "control",
    "health",
    "reexec-as",
    "spawn",
    "recover-threshold",
    "recover-window",
    "pin-workers",
    "single-process",
    "ready-notify",
    "ready-after",
    "prefix-output",
    "command",
    "pid-file",
    "error-log",
];

type Raw = BTreeMap<String, Vec<OsString>>;

/// Re-reads the settings of `subcommand` (`serve` or `run`) on each reload.
pub fn on_hup(server: Prefork, subcommand: &'static str) -> Prefork {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut before = match read(&argv, subcommand) {
        Ok((_, raw)) => raw,
        Err(_) => return server,
    };
    server.on_reload(move |settings| {
        let (cli, after) = read(&argv, subcommand)
            .map_err(|e| format!("the settings cannot be read again: {e}"))?;
        let exec_workers = match &cli.command {
            Command::Serve(a) => matches!(a.spawn, SpawnMode::Exec),
            _ => false,
        };
        say_changes(&before, &after, exec_workers);
        // The worker count as TTIN/TTOU left it stands unless the configured one changed.
        let workers = settings.workers;
        apply(&cli, settings)?;
        if before.get("workers") == after.get("workers") {
            settings.workers = workers;
        }
        before = after;
        Ok(())
    })
}

fn read(argv: &[OsString], subcommand: &str) -> Result<(Cli, Raw), settings::Error> {
    let (cli, matches) = settings::load::<Cli>(argv)?;
    let cmd = settings::command::<Cli>(argv)?;
    let raw = match (
        settings::find_subcommand(&cmd, &[subcommand]),
        matches.subcommand_matches(subcommand),
    ) {
        (Some(sub), Some(m)) => settings::raw_values(sub, m),
        _ => Raw::new(),
    };
    Ok((cli, raw))
}

/// Logs each setting that changed, and whether this reload applies it.
fn say_changes(before: &Raw, after: &Raw, exec_workers: bool) {
    let show = |v: Option<&Vec<OsString>>| match v {
        None => "(unset)".to_string(),
        Some(v) => v
            .iter()
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(","),
    };
    let mut changed = 0;
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if old == new {
            continue;
        }
        changed += 1;
        let (old, new) = (show(old), show(new));
        if RELOADED.contains(&key.as_str()) || HTTP_RELOADED.contains(&key.as_str()) {
            info!("reload: {key} {old} -> {new}: applies to the new generation");
        } else if exec_workers && !MASTER_BOUND.contains(&key.as_str()) {
            info!("reload: {key} {old} -> {new}: the new workers read it as they start (exec)");
        } else {
            warn!(
                "reload: {key} {old} -> {new}: not applied; it needs a binary upgrade (USR2, \
                 forklift upgrade)"
            );
        }
    }
    if changed == 0 {
        info!("reload: the settings are unchanged");
    }
}

/// Writes the re-read settings the master can change in place into `settings`.
fn apply(cli: &Cli, settings: &mut ReloadSettings) -> Result<(), String> {
    let (pool, limits, worker_timeout) = match &cli.command {
        Command::Serve(a) => (&a.pool, &a.limits, a.worker_timeout.0),
        Command::Run(a) => (&a.pool, &a.limits, a.worker_timeout.0),
        _ => return Ok(()),
    };
    settings.workers = pool.workers.unwrap_or_else(forklift::default_workers);
    settings.graceful_timeout = pool.graceful_timeout.0;
    settings.boot_timeout = pool.boot_timeout.0;
    settings.shutdown_delay = pool.shutdown_delay;
    settings.worker_timeout = (!worker_timeout.is_zero()).then_some(worker_timeout);
    settings.max_worker_memory = limits.max_worker_memory.map(|mib| mib << 20);
    settings.max_worker_age = limits.max_worker_age.map(|a| a.0);
    if let Command::Serve(a) = &cli.command {
        let tls = a.tls_pairs()?;
        settings.http(|mut http| {
            http = http
                .header_read_timeout(a.header_read_timeout.0)
                .keep_alive_timeout(a.keep_alive_timeout.0)
                .http1_fast_path(!a.no_fast_path)
                .tls_clear();
            // Off first: `access-log` unset turns it off, `-` sends it through tracing, a
            // path moves the new generation to that file (the master opens it first).
            http = crate::logs::apply_access_log(http.access_log(false), &a.access_log);
            for (cert, key) in tls {
                http = http.tls_files(cert, key);
            }
            if let Some(n) = a.max_requests {
                http = http.max_requests(n, a.max_requests_jitter);
            }
            if let Some(n) = a.max_connections {
                http = http.max_connections(usize::try_from(n).unwrap_or(usize::MAX));
            }
            http
        });
    }
    Ok(())
}
