//! Settings from a configuration file, the environment and flags (flag > env > file >
//! PORT/WEB_CONCURRENCY > default), observed from running servers; file errors that name the
//! line and key; `forklift check` catching bad input without binding; a HUP that re-reads
//! the file; and the installable tool's completions, manual page and version.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `forklift <args>` with `env` added to the environment (and `FORKLIFT_*` from the
/// test's own environment removed) to its end: (exit code, stdout, stderr).
fn forklift(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut s = Server::start_command(command(args, env), label(args));
    let status = s
        .try_wait_exit(Instant::now() + EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("forklift {args:?} did not exit within {EXIT_TIMEOUT:?}"));
    s.wait_output_closed(Instant::now() + Duration::from_secs(5));
    (
        status.code().unwrap_or(-1),
        s.stdout_text(),
        s.stderr_text(),
    )
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(forklift_bin());
    cmd.args(args).env("RUST_LOG", DEFAULT_RUST_LOG);
    for (k, _) in std::env::vars() {
        if k.starts_with("FORKLIFT_") || k == "PORT" || k == "WEB_CONCURRENCY" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn label(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Starts a server with `env` and waits for its `ready` line.
fn start_ready(args: &[&str], env: &[(&str, &str)]) -> Server {
    let s = Server::start_command(command(args, env), label(args));
    s.wait_ready();
    s
}

/// A configuration file with `text` in a fresh directory.
struct ConfigFile {
    dir: TempDir,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let f = ConfigFile {
            dir: TempDir::new("config"),
        };
        f.write(text);
        f
    }

    fn path(&self) -> PathBuf {
        self.dir.0.join("forklift.toml")
    }

    fn arg(&self) -> String {
        self.path().display().to_string()
    }

    /// Replaces the file's content (write then rename, as editors and deploy tools do).
    fn write(&self, text: &str) {
        let tmp = self.dir.0.join("forklift.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

/// (file `workers`, FORKLIFT_WORKERS, --workers, WEB_CONCURRENCY, workers started)
type Case = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    usize,
);

#[test]
fn flags_beat_env_beat_file_beat_web_concurrency() {
    // (file workers, FORKLIFT_WORKERS, --workers, WEB_CONCURRENCY) -> workers started
    let table: &[Case] = &[
        (Some("2"), None, None, None, 2),
        (Some("2"), Some("3"), None, None, 3),
        (Some("2"), Some("3"), Some("1"), None, 1),
        (Some("2"), None, Some("1"), None, 1),
        (None, Some("3"), None, Some("1"), 3),
        (Some("2"), None, None, Some("1"), 2),
        (None, None, None, Some("2"), 2),
    ];
    for &(file, env, flag, web, expected) in table {
        let text = match file {
            Some(n) => format!("listen = [\"127.0.0.1:0\"]\nworkers = {n}\n"),
            None => "listen = [\"127.0.0.1:0\"]\n".to_string(),
        };
        let cfg = ConfigFile::new(&text);
        let config = cfg.arg();
        let mut args = vec!["serve", "--config", &config];
        if let Some(n) = flag {
            args.extend(["--workers", n]);
        }
        let mut vars = vec![];
        if let Some(n) = env {
            vars.push(("FORKLIFT_WORKERS", n));
        }
        if let Some(n) = web {
            vars.push(("WEB_CONCURRENCY", n));
        }
        let mut s = start_ready(&args, &vars);
        assert_eq!(
            s.pids_from_ready().len(),
            expected,
            "file={file:?} env={env:?} flag={flag:?} WEB_CONCURRENCY={web:?}"
        );
        assert_greeting(&http_get(s.addr(), "/").unwrap());
        s.stop(Duration::from_secs(10));
    }
}

#[test]
fn listen_address_from_file_env_flag_and_port() {
    let cfg = ConfigFile::new("listen = \"127.0.0.1:0\"\nworkers = 1\n");
    let config = cfg.arg();
    // The file's address.
    let mut s = start_ready(&["serve", "--config", &config], &[("PORT", "1")]);
    assert_eq!(
        s.addr().ip().to_string(),
        "127.0.0.1",
        "PORT must not beat the file"
    );
    s.stop(Duration::from_secs(10));
    // FORKLIFT_LISTEN beats the file; the flag beats both (a unix socket shows which won).
    let sock = TempSock::new("cfg-listen");
    let unix = format!("unix:{}", sock.0.display());
    let mut s = start_ready(
        &["serve", "--config", &config],
        &[("FORKLIFT_LISTEN", &unix)],
    );
    assert!(
        matches!(&s.listeners()[0], Listen::Unix(p) if *p == sock.0),
        "{:?}",
        s.listeners()
    );
    s.stop(Duration::from_secs(10));
    let mut s = start_ready(
        &["serve", "--config", &config, "--listen", "[::1]:0"],
        &[("FORKLIFT_LISTEN", &unix)],
    )
    .skip_unless(ipv6_loopback_available());
    if let Some(s) = s.as_mut() {
        assert!(s.addr().is_ipv6(), "{:?}", s.listeners());
        s.stop(Duration::from_secs(10));
    }
}

/// A server that is dropped (and so killed) when IPv6 loopback is missing.
trait SkipUnless: Sized {
    fn skip_unless(self, ok: bool) -> Option<Self>;
}

impl SkipUnless for Server {
    fn skip_unless(self, ok: bool) -> Option<Server> {
        ok.then_some(self)
    }
}

#[test]
fn port_is_the_listen_port_when_no_address_is_given() {
    // A free port, found by binding it and letting it go.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut s = start_ready(&["serve", "--workers", "1"], &[("PORT", &port)]);
    let addr = s.addr();
    assert_eq!(addr.ip().to_string(), "0.0.0.0");
    assert_eq!(addr.port().to_string(), port);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_greeting(&http_get(local, "/").unwrap());
    s.stop(Duration::from_secs(10));

    let (code, _, err) = forklift(&["serve"], &[("PORT", "http")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PORT=\"http\" is not a port number"), "{err}");
    let (code, _, err) = forklift(&["serve"], &[("WEB_CONCURRENCY", "0")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("WEB_CONCURRENCY=\"0\""), "{err}");
}

#[test]
fn a_broken_file_names_the_line_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "workers = 1\n\ngracefull-timeout = 3\n",
            ":3: unknown key gracefull-timeout (did you mean graceful-timeout?)",
        ),
        (
            "workers = 1\ngraceful_timeout = 3\n",
            ":2: unknown key graceful_timeout (did you mean graceful-timeout?)",
        ),
        ("workers = \"many\"\n", ":1: workers: invalid value 'many'"),
        (
            "reuse-port = \"yes\"\n",
            ":1: reuse-port: expected true or false, found a string",
        ),
        (
            "workers = [1, 2]\n",
            ":1: workers: expected one value, found an array",
        ),
        (
            "[serve]\n\nspawn = \"vfork\"\n",
            ":3: serve.spawn: invalid value 'vfork' for '--spawn <SPAWN>'",
        ),
        (
            "graceful-timeout = -1\n",
            ":1: graceful-timeout: invalid value '-1'",
        ),
        (
            "[serve]\nready-after = 2\n",
            ":2: serve.ready-after: `forklift serve` has no option ready-after",
        ),
        ("workers = 1\n[serve\n", ":2: not valid TOML"),
        (
            "workers = 1\ntls-cert = \"/etc/cert.pem\"\n",
            ":2: tls-cert: the following required arguments were not provided: --tls-key \
             <PATH> (with the flags and environment given)",
        ),
        (
            "workers = 1\n[serve]\n\ntls-ticket-key-file = \"/etc/t.key\"\n",
            ":4: serve.tls-ticket-key-file: the following required arguments were not \
             provided: --tls-key <PATH> --tls-cert <PATH> (with the flags and environment \
             given)",
        ),
    ];
    for (text, expected) in cases {
        let cfg = ConfigFile::new(text);
        let config = cfg.arg();
        let (code, _, err) = forklift(&["serve", "--config", &config], &[]);
        assert_eq!(code, 2, "{text:?}: {err}");
        let want = format!("{config}{expected}");
        assert!(
            err.contains(&want),
            "{text:?}: expected {want:?} in {err:?}"
        );
        // The same file given by FORKLIFT_CONFIG, checked: the same message, exit 1.
        let (code, _, err) = forklift(&["check"], &[("FORKLIFT_CONFIG", &config)]);
        assert_eq!(code, 1, "{text:?}: {err}");
        assert!(
            err.contains(&want),
            "{text:?}: expected {want:?} in {err:?}"
        );
    }
    let (code, _, err) = forklift(&["serve", "--config", "/nonexistent/forklift.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read the configuration file /nonexistent/forklift.toml"),
        "{err}"
    );
}

/// Writes a self-signed certificate and its key; returns (cert, key).
fn cert_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn check_finds_each_kind_of_bad_input_without_binding() {
    let dir = TempDir::new("check");
    let (cert, key) = cert_pair(&dir.0, "a");
    let (_, other_key) = cert_pair(&dir.0, "b");
    // A port in use is no problem for check: nothing is bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let good = format!(
        "listen = [\"{taken_addr}\"]\nworkers = 2\ntls-cert = \"{}\"\ntls-key = \"{}\"\n\
         [serve]\ndir = \"{}\"\n",
        cert.display(),
        key.display(),
        dir.0.display()
    );
    let cfg = ConfigFile::new(&good);
    let config = cfg.arg();
    let (code, out, err) = forklift(&["check", "--config", &config], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ok       listen {taken_addr}")),
        "{out}"
    );
    assert!(out.contains("ok       tls-cert"), "{out}");
    assert!(out.contains("the settings are valid"), "{out}");
    // Nothing listens but the test's own socket: a connection is accepted by it, and the
    // check left no process behind (forklift() waited for the whole group).
    drop(taken);
    assert!(connect_refused(taken_addr.parse().unwrap()));

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--listen".into(), "bogus".into()],
            "PROBLEM  listen bogus",
        ),
        (
            vec![
                "--tls-cert".into(),
                dir.0.join("missing.crt").display().to_string(),
            ],
            "cannot read the TLS certificate",
        ),
        (
            vec!["--tls-key".into(), other_key.display().to_string()],
            "does not match the certificate",
        ),
        (
            vec!["--dir".into(), dir.0.join("nowhere").display().to_string()],
            "PROBLEM  dir",
        ),
        (
            vec!["--user".into(), "forklift-no-such-user".into()],
            "PROBLEM  user forklift-no-such-user",
        ),
        (
            vec!["--group".into(), "forklift-no-such-group".into()],
            "PROBLEM  group forklift-no-such-group",
        ),
        (
            vec!["--workers".into(), "0".into()],
            "workers must be at least 1",
        ),
        (
            vec!["--control".into(), "/nonexistent/dir/ctl.sock".into()],
            "PROBLEM  control /nonexistent/dir/ctl.sock",
        ),
        (
            vec![
                "--proxy-protocol".into(),
                "--trusted-proxies".into(),
                "10.0.0.0/88".into(),
            ],
            "PROBLEM  trusted-proxies 10.0.0.0/88",
        ),
    ];
    for (flags, expected) in &cases {
        let mut args = vec!["check", "serve", "--config", &config];
        args.extend(flags.iter().map(String::as_str));
        let (code, out, err) = forklift(&args, &[]);
        assert_eq!(code, 1, "{flags:?}: {out}{err}");
        assert!(
            out.contains(expected),
            "{flags:?}: expected {expected:?} in {out}"
        );
        assert!(out.contains("1 problem(s) found"), "{flags:?}: {out}");
    }
    // A pid or log file in a missing directory, with the message `serve` refuses it with
    // (`unwritable_log_and_pid_paths_fail_before_binding` in logs.rs).
    for (flag, file, says) in [
        ("--pid-file", "forklift.pid", "cannot write the pid file"),
        ("--error-log", "error.log", "opening the error log"),
        ("--access-log", "access.log", "opening the access log"),
    ] {
        let path = dir.0.join("missing").join(file).display().to_string();
        let (code, out, err) = forklift(&["check", "serve", "--config", &config, flag, &path], &[]);
        assert_eq!(code, 1, "{flag}: {out}{err}");
        let key = flag.trim_start_matches('-');
        let want = format!("PROBLEM  {key} {path}: {says} {path} (does its directory exist");
        assert!(out.contains(&want), "{flag}: expected {want:?} in {out}");
        assert!(out.contains("1 problem(s) found"), "{flag}: {out}");
    }
    // Writable paths are fine, and the check creates none of the files.
    let (code, out, err) = forklift(
        &[
            "check",
            "--config",
            &config,
            "--pid-file",
            &dir.0.join("f.pid").display().to_string(),
            "--error-log",
            &dir.0.join("e.log").display().to_string(),
            "--access-log",
            &dir.0.join("a.log").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    for key in ["pid-file", "error-log", "access-log"] {
        assert!(out.contains(&format!("ok       {key} ")), "{key}: {out}");
    }
    for file in ["f.pid", "e.log", "a.log"] {
        assert!(!dir.0.join(file).exists(), "check created {file}");
    }
    // run's COMMAND is looked up too.
    let (code, out, _) = forklift(
        &["check", "run", "--", "forklift-no-such-program", "x"],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM  command forklift-no-such-program"),
        "{out}"
    );
}

#[test]
fn the_example_file_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/forklift.example.toml");
    let (code, out, err) = forklift(&["check", "--config", example], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = forklift(
        &["check", "run", "--config", example, "--", "sleep", "1"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn run_takes_its_command_from_the_file() {
    let cfg = ConfigFile::new(
        "listen = \"127.0.0.1:0\"\n[run]\nworkers = 2\nready-after = 0.2\n\
         command = [\"sleep\", \"600\"]\n",
    );
    let config = cfg.arg();
    let mut s = start_ready(&["run", "--config", &config], &[]);
    assert_eq!(s.pids_from_ready().len(), 2);
    s.stop(Duration::from_secs(10));
}

#[test]
fn hup_rereads_the_file() {
    let sock = TempSock::new("cfg-hup");
    let control = sock.0.display().to_string();
    let cfg = ConfigFile::new(&format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\ncontrol = \"{control}\"\n"
    ));
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    let addr = s.addr();

    // More workers, new timeouts, and a listen address (which needs USR2).
    cfg.write(&format!(
        "listen = \"127.0.0.1:1\"\nworkers = 3\ngraceful-timeout = 7\nkeep-alive-timeout = 9\n\
         control = \"{control}\"\n"
    ));
    s.send_signal(libc::SIGHUP);
    let line = s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2 "),
        READY_TIMEOUT,
    );
    let pids = parse_pid_list(&hook_field(&line, "pids").unwrap());
    assert_eq!(pids.len(), 3, "{line}");
    let log = s.stderr_text();
    assert!(log.contains("reload: workers 1 -> 3: applies"), "{log}");
    assert!(
        log.contains("reload: graceful-timeout 30 -> 7: applies"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("reload: keep-alive-timeout ")
                && l.ends_with(" -> 9: applies to the new generation")),
        "{log}"
    );
    assert!(
        log.contains(
            "reload: listen 127.0.0.1:0 -> 127.0.0.1:1: not applied; it needs a binary upgrade"
        ),
        "{log}"
    );
    assert_greeting(&http_get(addr, "/").unwrap());

    // A file that no longer parses refuses the reload: `forklift reload` says why, and the
    // three workers serve on.
    cfg.write("workers = \"two\"\n");
    let (code, _, err) = forklift(&["reload", "--control", &control], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reload refused"), "{err}");
    assert!(err.contains("workers: invalid value 'two'"), "{err}");
    let answer = forklift::control(&sock.0, "status-json").unwrap();
    assert!(answer.contains("\"generation\":2"), "{answer}");
    // Generation 1's worker drains away; generation 2's three serve on, and nothing new
    // started.
    let deadline = Instant::now() + READY_TIMEOUT;
    while worker_procs(&s).len() != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(worker_procs(&s).len(), 3);
    assert!(
        !s.stdout_lines()
            .iter()
            .any(|l| l.starts_with("spawned ") && l.ends_with(" generation=3")),
        "{}",
        s.stdout_text()
    );
    assert!(s.stderr_text().contains("refused"), "{}", s.stderr_text());
    assert_greeting(&http_get(addr, "/").unwrap());
    s.stop(Duration::from_secs(10));
}

#[test]
fn hup_in_exec_mode_leaves_the_master_files_to_an_upgrade() {
    let dir = TempDir::new("cfg-exec");
    let text = |name: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nworkers = 1\npid-file = \"{0}/{name}.pid\"\n\
             error-log = \"{0}/{name}.log\"\n[serve]\nspawn = \"exec\"\n",
            dir.0.display()
        )
    };
    let cfg = ConfigFile::new(&text("a"));
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    cfg.write(&text("b"));
    s.send_signal(libc::SIGHUP);
    s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2 "),
        READY_TIMEOUT,
    );
    // The master's log is the error log named at start: the pid file and the error log are
    // the master's, which an exec-mode worker does not open; only a new master takes them.
    let log = std::fs::read_to_string(dir.0.join("a.log")).unwrap();
    let d = dir.0.display();
    for (key, ext) in [("pid-file", "pid"), ("error-log", "log")] {
        let want = format!(
            "reload: {key} {d}/a.{ext} -> {d}/b.{ext}: not applied; it needs a binary upgrade"
        );
        assert!(log.contains(&want), "{want} missing: {log}");
    }
    s.stop(Duration::from_secs(10));
}

#[test]
fn completions_man_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = forklift(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("forklift") && out.contains("graceful-timeout"),
            "{shell}: {out}"
        );
    }
    let (code, out, err) = forklift(&["man"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(".ie") || out.contains(".TH forklift"),
        "{out}"
    );
    let (code, out, err) = forklift(&["man", "serve"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FORKLIFT_GRACEFUL_TIMEOUT"), "{out}");

    let (code, out, _) = forklift(&["--version"], &[]);
    assert_eq!(code, 0);
    let commit = out
        .trim()
        .strip_prefix(&format!("forklift {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {out:?}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{out}"
    );
}

#[test]
fn hup_applies_http_settings_to_forked_workers() {
    let cfg = ConfigFile::new("listen = \"127.0.0.1:0\"\nworkers = 1\n");
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    let addr = s.addr();
    assert_greeting(&http_get(addr, "/").unwrap());
    assert!(!s.stderr_text().contains("forklift::access"));

    cfg.write("listen = \"127.0.0.1:0\"\nworkers = 1\n[serve]\naccess-log = true\n");
    s.send_signal(libc::SIGHUP);
    s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2 "),
        READY_TIMEOUT,
    );
    assert!(
        s.stderr_text()
            .contains("reload: access-log (unset) -> -: applies to the new generation"),
        "{}",
        s.stderr_text()
    );
    // Generation 1's worker may still take a connection while it drains: ask until the new
    // generation answers (and logs).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.stderr_text().contains("forklift::access") && Instant::now() < deadline {
        assert_greeting(&http_get(addr, "/").unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        s.stderr_text().contains("forklift::access"),
        "the new generation logs each request: {}",
        s.stderr_text()
    );
    s.stop(Duration::from_secs(10));
}

/// The access lines (`GET / HTTP/1.1` requests) in the file at `path`.
/// The access lines in `path` once there are `n`, or at a 10 s deadline (each line is
/// written before the next request on a fresh connection is read, but poll rather than
/// assume it).
fn access_lines_reach(path: &Path, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while access_lines_in(path) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    access_lines_in(path)
}

fn access_lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("path=\"/\""))
        .count()
}

#[test]
fn hup_moves_the_access_log_to_the_file_named() {
    let dir = TempDir::new("cfg-access");
    let (first, second) = (dir.0.join("a.log"), dir.0.join("b.log"));
    let base = "listen = \"127.0.0.1:0\"\nworkers = 1\n";
    let cfg = ConfigFile::new(base);
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    let addr = s.addr();
    let mut before = "(unset)".to_string();
    for (generation, path) in [(2, &first), (3, &second)] {
        cfg.write(&format!(
            "{base}[serve]\naccess-log = \"{}\"\n",
            path.display()
        ));
        s.send_signal(libc::SIGHUP);
        s.expect_line(
            &format!("`reloaded generation={generation}`"),
            |l| l.starts_with(&format!("reloaded generation={generation} ")),
            READY_TIMEOUT,
        );
        let said = format!(
            "reload: access-log {before} -> {}: applies to the new generation",
            path.display()
        );
        assert!(
            s.stderr_text().contains(&said),
            "{said}: {}",
            s.stderr_text()
        );
        before = path.display().to_string();
        // The master opened (created) the file before the new generation started.
        assert!(path.exists(), "{} was not created", path.display());
        // The previous generation drains away; then every request is the new worker's.
        let deadline = Instant::now() + READY_TIMEOUT;
        while worker_procs(&s).len() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            worker_procs(&s).len(),
            1,
            "the old generation did not leave"
        );
        let earlier = access_lines_in(&first);
        for _ in 0..5 {
            assert_greeting(&http_get(addr, "/").unwrap());
        }
        assert_eq!(access_lines_reach(path, 5), 5, "{}", path.display());
        if path == &second {
            assert_eq!(
                access_lines_in(&first),
                earlier,
                "the new generation still writes to the old file"
            );
        }
        assert!(
            !s.stderr_text().contains("forklift::access"),
            "an access line went to stderr: {}",
            s.stderr_text()
        );
    }
    // A file the workers could not open refuses the reload: the worker serves on, to the
    // file it has.
    let missing = dir.0.join("missing").join("c.log");
    cfg.write(&format!(
        "{base}[serve]\naccess-log = \"{}\"\n",
        missing.display()
    ));
    s.send_signal(libc::SIGHUP);
    let refused = s
        .wait_stderr_contains("refused", READY_TIMEOUT)
        .unwrap_or_else(|| panic!("no refusal: {}", s.stderr_text()));
    assert!(
        refused.contains(&format!("opening the access log {}", missing.display())),
        "{refused}"
    );
    assert_greeting(&http_get(addr, "/").unwrap());
    assert_eq!(access_lines_reach(&second, 6), 6);
    s.stop(Duration::from_secs(10));
}

/// Kills the server's one worker, waits for its respawn to serve, and checks that the
/// respawn logs its requests to `log`: the settings a respawn takes.
fn respawn_logs_to(s: &Server, log: &Path) {
    let addr = s.addr();
    let old: Vec<u32> = worker_procs(s).into_iter().collect();
    assert_eq!(old.len(), 1);
    unsafe { libc::kill(old[0] as i32, libc::SIGKILL) };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let now = worker_procs(s);
        if now.len() == 1 && !now.contains(&old[0]) && http_get(addr, "/").is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no respawn: {}", s.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = access_lines_in(log);
    for _ in 0..3 {
        assert_greeting(&http_get(addr, "/").unwrap());
    }
    assert_eq!(
        access_lines_reach(log, before + 3),
        before + 3,
        "{}",
        s.stderr_text()
    );
}

/// A reload its pool settings refuse (here `max-worker-age = 0`) changes nothing, HTTP
/// settings included: a worker respawned after it still logs to the file from before.
#[test]
fn a_refused_reload_leaves_the_http_settings_for_later_respawns() {
    let dir = TempDir::new("cfg-respawn");
    let (kept, later) = (dir.0.join("a.log"), dir.0.join("b.log"));
    let base = "listen = \"127.0.0.1:0\"\nworkers = 1\n";
    let cfg = ConfigFile::new(&format!(
        "{base}[serve]\naccess-log = \"{}\"\n",
        kept.display()
    ));
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    cfg.write(&format!(
        "{base}max-worker-age = 0\n[serve]\naccess-log = \"{}\"\n",
        later.display()
    ));
    s.send_signal(libc::SIGHUP);
    let refused = s
        .wait_stderr_contains("refused", READY_TIMEOUT)
        .unwrap_or_else(|| panic!("no refusal: {}", s.stderr_text()));
    assert!(refused.contains("max_worker_age"), "{refused}");
    respawn_logs_to(&s, &kept);
    assert!(
        !later.exists(),
        "the refused reload's access log was opened"
    );
    s.stop(Duration::from_secs(10));
}

/// A reload whose new generation cannot boot is given up, and the generation that serves on
/// keeps its HTTP settings: a worker of it respawned afterwards logs to the file from before,
/// not to the one the failed reload named.
#[test]
fn a_reload_given_up_leaves_the_http_settings_for_later_respawns() {
    let dir = TempDir::new("cfg-given-up");
    let (kept, later) = (dir.0.join("a.log"), dir.0.join("b.log"));
    let fault = dir.0.join("fault");
    let fault = fault.to_str().unwrap();
    let base = "listen = \"127.0.0.1:0\"\nworkers = 1\n";
    let cfg = ConfigFile::new(&format!(
        "{base}[serve]\naccess-log = \"{}\"\n",
        kept.display()
    ));
    let config = cfg.arg();
    let args = [
        "serve",
        "--config",
        &config,
        "--fault",
        "boot-panic-if-file",
        "--fault-file",
        fault,
    ];
    let mut s = start_ready(&args, &[]);
    cfg.write(&format!(
        "{base}[serve]\naccess-log = \"{}\"\n",
        later.display()
    ));
    std::fs::write(fault, b"fail\n").unwrap();
    s.send_signal(libc::SIGHUP);
    s.wait_stderr_contains("reload to generation 2 failed", READY_TIMEOUT)
        .unwrap_or_else(|| panic!("the reload was not given up: {}", s.stderr_text()));
    std::fs::remove_file(fault).unwrap();
    respawn_logs_to(&s, &kept);
    assert_eq!(
        access_lines_in(&later),
        0,
        "the old generation's respawn logged to the given-up reload's file"
    );
    s.stop(Duration::from_secs(10));
}

#[test]
fn a_command_table_beats_the_top_level_and_flags_come_from_the_environment() {
    let cfg = ConfigFile::new(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n[serve]\nworkers = 2\n[run]\nworkers = 3\n",
    );
    let config = cfg.arg();
    let mut s = start_ready(&["serve", "--config", &config], &[]);
    assert_eq!(s.pids_from_ready().len(), 2);
    s.stop(Duration::from_secs(10));

    // A flag from the environment takes 1/0, true/false, yes/no, on/off; the file's `true`
    // is turned off by the variable.
    let cfg = ConfigFile::new("listen = \"127.0.0.1:0\"\nworkers = 1\nreuse-port = true\n");
    let config = cfg.arg();
    for (value, shared) in [("0", true), ("false", true), ("1", false), ("on", false)] {
        let mut s = start_ready(
            &["serve", "--config", &config],
            &[("FORKLIFT_REUSE_PORT", value)],
        );
        let line = s
            .wait_stderr_contains("workers (", Duration::from_secs(10))
            .expect("the master's `listening on ... with N workers (...)` log line");
        assert_eq!(
            line.contains("shared socket"),
            shared,
            "FORKLIFT_REUSE_PORT={value}: {line}"
        );
        s.stop(Duration::from_secs(10));
    }
    let (code, _, err) = forklift(&["serve"], &[("FORKLIFT_REUSE_PORT", "maybe")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("maybe"), "{err}");
}
