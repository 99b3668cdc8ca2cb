//! Logs people can ship: `--log-format json` from the master and the workers (fork and exec
//! spawn, and `forklift run`), the access log's fields (client, version, user agent,
//! referer, request id kept or generated and echoed), log files renamed and reopened on
//! USR1 or `forklift reopen-logs` under load without losing or splitting a line, and the pid
//! file through a stop and a binary upgrade.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every line of `text` as JSON; panics naming the line that is not.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The `span` name of a tracing JSON line (`master` or `worker`).
fn span_name(v: &Value) -> &str {
    v["span"]["name"].as_str().unwrap_or("")
}

/// Sends one request with these extra header lines on a new connection; returns the
/// response and the client's own address.
fn request(addr: SocketAddr, version: &str, headers: &str) -> (Response, SocketAddr) {
    let mut stream = connect(addr, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = stream.local_addr().unwrap();
    write!(
        stream,
        "GET / {version}\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut stream, &mut Vec::new()).expect("a response");
    (r, local)
}

/// The access lines (target `forklift::access`) among tracing JSON lines.
fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v["target"] == "forklift::access")
        .collect()
}

/// Master and workers log JSON, access lines included, in the given spawn mode.
fn json_logs_from_master_and_workers(spawn: &str) {
    let mut s = Server::start_ready(&serve_args(
        "2",
        &["--spawn", spawn, "--log-format", "json", "--access-log"],
    ));
    let (r, _) = request(s.addr(), "HTTP/1.1", "User-Agent: probe/1\r\n");
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("x-request-id").to_string();
    assert!(
        s.wait_stderr_contains(&id, Duration::from_secs(10))
            .is_some(),
        "no access line with request id {id}"
    );
    s.send_signal(libc::SIGTERM);
    assert!(s
        .wait_exit(Instant::now() + Duration::from_secs(20))
        .success());
    assert!(s.wait_output_closed(Instant::now() + Duration::from_secs(5)));
    let lines = json_lines(&s.stderr_text());
    let master = lines.iter().filter(|v| span_name(v) == "master").count();
    let worker_pids: HashSet<u64> = lines
        .iter()
        .filter(|v| span_name(v) == "worker")
        .filter_map(|v| v["span"]["pid"].as_u64())
        .collect();
    assert!(master > 0, "no master line: {}", s.stderr_text());
    assert_eq!(worker_pids.len(), 2, "lines from both workers: {lines:?}");
    let access = access_lines(&lines);
    assert_eq!(access.len(), 1, "{access:?}");
    let f = &access[0]["fields"];
    assert_eq!(f["request_id"], id.as_str());
    assert_eq!(f["user_agent"], "probe/1");
    assert_eq!(f["version"], "HTTP/1.1");
    assert_eq!(f["status"], 200);
    assert_eq!(f["referer"], "-");
    assert_eq!(f["tls"], "-");
}

#[test]
fn json_logs_from_master_and_forked_workers() {
    json_logs_from_master_and_workers("fork");
}

#[test]
fn json_logs_from_master_and_exec_workers() {
    json_logs_from_master_and_workers("exec");
}

#[test]
fn json_logs_from_the_run_master() {
    let mut s = Server::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--ready-after",
        "0.2",
        "--log-format",
        "json",
        "--",
        "sleep",
        "60",
    ]);
    s.wait_ready();
    s.send_signal(libc::SIGTERM);
    s.wait_exit(Instant::now() + Duration::from_secs(20));
    assert!(s.wait_output_closed(Instant::now() + Duration::from_secs(5)));
    let lines = json_lines(&s.stderr_text());
    assert!(
        lines.iter().any(|v| span_name(v) == "master"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening on"))),
        "{lines:?}"
    );
}

/// The access log file in text and JSON: client, version, user agent, referer, the request
/// id kept when sane, generated otherwise, and echoed.
fn access_log_file_fields(format: &str) {
    let dir = TempDir::new("access-fields");
    let log = dir.0.join("access.log");
    let mut s = Server::start_ready(&serve_args(
        "1",
        &[
            "--log-format",
            format,
            "--access-log",
            log.to_str().unwrap(),
        ],
    ));
    let (kept, client) = request(
        s.addr(),
        "HTTP/1.1",
        "User-Agent: curl/8.5 \"quoted\"\r\nReferer: http://example.test/from\r\n\
         X-Request-Id: abc-123.def\r\n",
    );
    assert_eq!(kept.header("x-request-id"), Some("abc-123.def"));
    let (generated, _) = request(s.addr(), "HTTP/1.0", "X-Request-Id: has space\r\n");
    let id = generated.header("x-request-id").expect("a generated id");
    assert_ne!(id, "has space");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let (other, _) = request(s.addr(), "HTTP/1.1", "");
    assert_ne!(other.header("x-request-id"), Some(id), "ids are unique");
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || read(&log)
            .lines()
            .count()
            == 3),
        "three lines: {}",
        read(&log)
    );
    s.send_signal(libc::SIGTERM);
    s.wait_exit(Instant::now() + Duration::from_secs(20));
    let text = read(&log);
    let lines: Vec<&str> = text.lines().collect();
    if format == "json" {
        let v = json_lines(&text);
        let f = &v[0]["fields"];
        assert_eq!(f["request_id"], "abc-123.def");
        assert_eq!(f["user_agent"], "curl/8.5 \"quoted\"");
        assert_eq!(f["referer"], "http://example.test/from");
        assert_eq!(f["version"], "HTTP/1.1");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/");
        assert_eq!(f["status"], 200);
        assert_eq!(f["bytes"], 11);
        assert_eq!(f["tls"], "-");
        assert_eq!(v[0]["target"], "forklift::access");
        assert_eq!(v[0]["span"]["name"], "worker");
        let client_field = f["client"]
            .as_str()
            .unwrap_or_else(|| panic!("no client field: {}", v[0]));
        assert_client(client_field, client);
        assert_eq!(v[1]["fields"]["request_id"], id);
        assert_eq!(v[1]["fields"]["version"], "HTTP/1.0");
        assert_eq!(v[1]["fields"]["user_agent"], "-");
    } else {
        let l = lines[0];
        for want in [
            "forklift::access",
            "method=GET",
            "path=\"/\"",
            "status=200",
            "bytes=11",
            "version=HTTP/1.1",
            "request_id=\"abc-123.def\"",
            r#"user_agent="curl/8.5 \"quoted\"""#,
            "referer=\"http://example.test/from\"",
            "tls=-",
        ] {
            assert!(l.contains(want), "{want} missing: {l}");
        }
        let client_field = l
            .split(' ')
            .find_map(|w| w.strip_prefix("client="))
            .unwrap_or_else(|| panic!("no client field: {l}"));
        assert_client(client_field, client);
        assert!(
            lines[1].contains(&format!("request_id=\"{id}\"")),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("version=HTTP/1.0"), "{}", lines[1]);
    }
}

/// The client field names the client's own address and port (the `forklift::ClientAddr` the
/// connection code sets whenever the access log is on): `-` or another address fails.
fn assert_client(field: &str, client: SocketAddr) {
    assert_eq!(field, client.to_string(), "the access line's client field");
}

#[test]
fn access_log_file_text_fields() {
    access_log_file_fields("text");
}

#[test]
fn access_log_file_json_fields() {
    access_log_file_fields("json");
}

/// One client thread: `n` requests on keep-alive connections (a new one after an error),
/// counting the 200 answers.
fn keep_alive_client(addr: SocketAddr, n: usize, ok: &AtomicUsize) {
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let req = get_request(&addr.to_string(), "/", false);
    for _ in 0..n {
        let s = match &mut stream {
            Some(s) => s,
            None => {
                let Ok(s) = connect(addr, Duration::from_secs(10)) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                stream.insert(s)
            }
        };
        let answered =
            s.write_all(&req).is_ok() && read_response(s, &mut buf).is_ok_and(|r| r.status == 200);
        if answered {
            ok.fetch_add(1, Ordering::SeqCst);
        } else {
            stream = None;
        }
    }
}

fn line_count(path: &Path) -> usize {
    read(path).lines().count()
}

/// logrotate's way: rename the files, then USR1 to the master (and once `forklift
/// reopen-logs`), while clients keep requesting. Every request served has exactly one whole
/// line, in the old files or the new ones; the master and the workers write the error log
/// to the new file after each reopen.
#[test]
fn rename_and_reopen_under_load_loses_no_access_line() {
    let dir = TempDir::new("reopen-logs");
    let access = dir.0.join("access.log");
    let error = dir.0.join("error.log");
    let ctl = dir.0.join("ctl.sock");
    let mut s = Server::start_ready(&serve_args(
        "2",
        &[
            "--log-format",
            "json",
            "--access-log",
            access.to_str().unwrap(),
            "--error-log",
            error.to_str().unwrap(),
            "--control",
            ctl.to_str().unwrap(),
        ],
    ));
    let addr = s.addr();
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1500;
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..THREADS)
        .map(|_| {
            let ok = ok.clone();
            std::thread::spawn(move || keep_alive_client(addr, PER_THREAD, &ok))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = THREADS * PER_THREAD;
    let rotated = [dir.0.join("access.log.1"), dir.0.join("access.log.2")];
    let rotated_errors = [dir.0.join("error.log.1"), dir.0.join("error.log.2")];
    for (i, (old, old_error)) in rotated.iter().zip(&rotated_errors).enumerate() {
        // Under load: a quarter, then half, of the requests are answered.
        assert!(
            poll_until(deadline, || ok.load(Ordering::SeqCst)
                >= total * (i + 1) / 4
                && line_count(&access) > 0),
            "the load did not get going"
        );
        std::fs::rename(&access, old).unwrap();
        std::fs::rename(&error, old_error).unwrap();
        if i == 0 {
            s.send_signal(libc::SIGUSR1);
        } else {
            let out = std::process::Command::new(forklift_bin())
                .args(["reopen-logs", "--control", ctl.to_str().unwrap()])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{said}");
            assert!(said.contains("2 workers"), "{said}");
        }
        assert!(
            poll_until(deadline, || read(&error).contains("log files reopened")),
            "the master did not reopen the error log"
        );
    }
    for c in clients {
        c.join().unwrap();
    }
    let served = ok.load(Ordering::SeqCst);
    assert!(served > total / 2, "most requests are answered: {served}");
    let files = [&rotated[0], &rotated[1], &access];
    let logged = || files.iter().map(|f| line_count(f)).sum::<usize>();
    poll_until(Instant::now() + Duration::from_secs(10), || {
        logged() >= served
    });
    s.send_signal(libc::SIGTERM);
    assert!(s
        .wait_exit(Instant::now() + Duration::from_secs(20))
        .success());
    // Every write is done now: every line must be whole.
    let mut ids = HashSet::new();
    for f in files {
        let lines = json_lines(&read(f));
        assert!(!lines.is_empty(), "{} got no line", f.display());
        for v in lines {
            assert_eq!(v["target"], "forklift::access");
            assert!(ids.insert(v["fields"]["request_id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(
        ids.len(),
        served,
        "one access line per answered request (per file: {:?})",
        files.map(|f| line_count(f))
    );
    // The workers reopened the error log too: their lines follow the last rename.
    let errors = json_lines(&read(&error));
    assert!(
        errors
            .iter()
            .any(|v| span_name(v) == "worker" || v["spans"][0]["name"] == "worker"),
        "no worker line in the new error log: {errors:?}"
    );
    for old in &rotated_errors {
        json_lines(&read(old));
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn pid_file_holds_the_master_while_it_runs() {
    let dir = TempDir::new("pid-file");
    let pid_file = dir.0.join("forklift.pid");
    let mut s = Server::start_ready(&serve_args(
        "1",
        &["--pid-file", pid_file.to_str().unwrap()],
    ));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || read_pid(
            &pid_file
        ) == Some(
            s.pid
        )),
        "pid file: {:?}",
        read(&pid_file)
    );
    s.send_signal(libc::SIGTERM);
    assert!(s
        .wait_exit(Instant::now() + Duration::from_secs(20))
        .success());
    assert!(!pid_file.exists(), "removed at exit");
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "no temporary left"
    );
}

#[test]
fn pid_file_follows_a_binary_upgrade() {
    let dir = TempDir::new("pid-file-upgrade");
    let bin = install_binary(&dir.0, None);
    let pid_file = dir.0.join("forklift.pid");
    let mut s = Server::start_program(
        &bin,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    s.wait_ready();
    let old_master = s.pid;
    assert!(poll_until(
        Instant::now() + Duration::from_secs(10),
        || read_pid(&pid_file) == Some(old_master)
    ));
    s.send_signal(libc::SIGUSR2);
    let upgrading = s.expect_line(
        "`upgrading new_master_pid=...`",
        |l| l.starts_with("upgrading "),
        Duration::from_secs(10),
    );
    let new_master: u32 = parse_hook(&upgrading).1["new_master_pid"].parse().unwrap();
    let status = s.wait_exit(Instant::now() + Duration::from_secs(30));
    assert!(status.success(), "the old master hands over and exits 0");
    assert_eq!(
        read_pid(&pid_file),
        Some(new_master),
        "after the old master ({old_master}) exited"
    );
    kill_pid(new_master, libc::SIGTERM);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(20), || !pid_file
            .exists()),
        "the new master removes its pid file when it stops"
    );
}

#[test]
fn unwritable_log_and_pid_paths_fail_before_binding() {
    let dir = TempDir::new("log-paths");
    let missing = dir.0.join("missing");
    for (flag, file, says) in [
        ("--pid-file", "forklift.pid", "cannot write the pid file"),
        ("--error-log", "error.log", "opening the error log"),
        ("--access-log", "access.log", "opening the access log"),
    ] {
        let path = missing.join(file);
        let (s, status) = run_to_exit(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                flag,
                path.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        );
        assert!(!status.success(), "{flag}");
        let err = s.stderr_text();
        assert!(err.contains(says), "{flag}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "{flag}: {err}");
        assert!(err.contains("directory exist"), "{flag}: {err}");
        assert!(
            !s.stdout_text().contains("listening on"),
            "{flag}: failed before binding"
        );
    }
}

/// One HTTPS request over a blocking rustls client limited to `version`; returns the
/// response.
fn https_request(
    addr: SocketAddr,
    root: rustls::pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Response {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = connect(addr, Duration::from_secs(10)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&get_request("localhost", "/", true)).unwrap();
    read_response(&mut tls, &mut Vec::new()).expect("an HTTPS response")
}

#[test]
fn access_log_names_the_tls_version() {
    let dir = TempDir::new("access-tls");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key, log) = (
        dir.0.join("cert.pem"),
        dir.0.join("key.pem"),
        dir.0.join("access.log"),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let s = Server::start_ready(&serve_args(
        "1",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--log-format",
            "json",
            "--access-log",
            log.to_str().unwrap(),
        ],
    ));
    let root = made.cert.der().clone();
    for (version, name) in [
        (&rustls::version::TLS13, "TLSv1.3"),
        (&rustls::version::TLS12, "TLSv1.2"),
    ] {
        let r = https_request(s.addr(), root.clone(), version);
        assert_eq!(r.status, 200);
        let id = r.header("x-request-id").unwrap().to_string();
        let mut line = None;
        poll_until(Instant::now() + Duration::from_secs(10), || {
            line = read(&log)
                .lines()
                .find(|l| l.contains(&id))
                .map(str::to_string);
            line.is_some()
        });
        let line = line.unwrap_or_else(|| panic!("no line for {id}: {}", read(&log)));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["fields"]["tls"], name, "{line}");
        assert_eq!(v["fields"]["version"], "HTTP/1.1", "{line}");
    }
}

/// Workers that drop to `nobody` reopen files the root master created: the master gives
/// each log file (and each new one at a reopen) to the workers' user, as nginx does.
#[test]
fn workers_that_dropped_privileges_reopen_their_logs() {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: not running as root (privilege drop needs root)");
        return;
    }
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam with a valid C string, its result read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        println!("SKIP: no user `nobody`");
        return;
    }
    // SAFETY: a non-null result of getpwnam.
    let uid = unsafe { (*pw).pw_uid };
    let dir = TempDir::new("logs-nobody");
    let access = dir.0.join("access.log");
    let error = dir.0.join("error.log");
    let s = Server::start_ready(&serve_args(
        "1",
        &[
            "--user",
            "nobody",
            "--access-log",
            access.to_str().unwrap(),
            "--error-log",
            error.to_str().unwrap(),
        ],
    ));
    assert_eq!(request(s.addr(), "HTTP/1.1", "").0.status, 200);
    for f in [&access, &error] {
        std::fs::rename(f, f.with_extension("log.1")).unwrap();
    }
    s.send_signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        poll_until(deadline, || read(&error).contains("log files reopened")),
        "{}",
        read(&error)
    );
    assert_eq!(std::fs::metadata(&access).unwrap().uid(), uid, "{access:?}");
    assert_eq!(request(s.addr(), "HTTP/1.1", "").0.status, 200);
    assert!(
        poll_until(deadline, || line_count(&access) == 1),
        "the worker writes to the new access log: {:?} / old {:?}",
        read(&access),
        read(&access.with_extension("log.1"))
    );
    assert!(!read(&error).contains("cannot reopen"), "{}", read(&error));
    assert_eq!(line_count(&access.with_extension("log.1")), 1);
}
