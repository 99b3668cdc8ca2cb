//! The library's own forms, driven through its examples as real processes: the raw form with
//! each way of spawning (fork, exec, a command producer), and `on_master_death` in the HTTP
//! form, and `StaticFiles` in an axum application. The examples are built by
//! `cargo test`/`cargo nextest` before tests run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples` (cargo test builds it)",
        path.display()
    );
    path
}

/// A process in its own group, killed with the whole group on drop.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start example");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let text = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn line_with(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line starting with {prefix:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn port(&self) -> u16 {
        let line = self.line_with("listening on ", Duration::from_secs(10));
        line.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn ready_pids(&self) -> Vec<u32> {
        let line = self.line_with("ready pids=", Duration::from_secs(10));
        line["ready pids=".len()..]
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stdout\n{}", self.stdout.lock().unwrap().join("\n"));
            eprintln!("--- stderr\n{}", self.stderr.lock().unwrap());
        }
    }
}

/// Dead or a zombie.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) -> Duration {
    let start = Instant::now();
    while !pids.iter().all(|&p| gone(p)) {
        assert!(
            start.elapsed() < timeout,
            "workers {pids:?} still alive after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn line_request(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hi\n").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
}

fn raw_form(mode: &str, spawned_by: &str) {
    let mut p = Proc::start("raw", &["127.0.0.1:0", mode]);
    let port = p.port();
    let pids = p.ready_pids();
    assert_eq!(pids.len(), 2);
    for _ in 0..4 {
        let reply = line_request(port);
        assert!(reply.ends_with("echo=hi\n"), "{reply:?}");
        assert!(
            reply.contains(&format!("spawned_by={spawned_by}")),
            "{reply:?}"
        );
        let pid: u32 = reply
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("pid="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(pids.contains(&pid), "{pid} not in {pids:?}");
    }
    // Raw workers keep the default TERM disposition: a graceful stop ends them at once.
    p.signal(libc::SIGTERM);
    let status = p.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    wait_gone(&pids, Duration::from_secs(2));
}

#[test]
fn raw_form_with_fork() {
    raw_form("fork", "master");
}

#[test]
fn raw_form_with_exec() {
    raw_form("exec", "master");
}

#[test]
fn raw_form_with_a_command_producer() {
    raw_form("command", "producer");
}

#[test]
fn on_master_death_runs_in_every_worker() {
    let mut p = Proc::start("hello", &["127.0.0.1:0"]);
    let port = p.port();
    let pids = p.ready_pids();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    p.signal(libc::SIGKILL);
    let status = p.wait(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let took = wait_gone(&pids, Duration::from_secs(1));
    eprintln!("workers gone {took:?} after kill -9 of the master");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = p.stderr.lock().unwrap().clone();
        let hooks = pids
            .iter()
            .filter(|pid| text.contains(&format!("master died: worker {pid} drains")))
            .count();
        if hooks == pids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "on_master_death ran in {hooks} of {} workers",
            pids.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET` (with extra headers) over a new connection: the status line, the head, the body.
#[cfg(feature = "axum")]
fn http_get(port: u16, path: &str, headers: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.lines().next().unwrap().to_string();
    (status, head, raw[end + 4..].to_vec())
}

#[cfg(feature = "axum")]
#[test]
fn static_files_mount_in_an_axum_router() {
    let dir = std::env::temp_dir().join(format!("forklift-example-files-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::write(dir.join("docs/index.html"), "<p>docs</p>").unwrap();
    let p = Proc::start("static_files", &["127.0.0.1:0", dir.to_str().unwrap()]);
    let port = p.port();
    p.ready_pids();
    let (status, _, body) = http_get(port, "/api/hello", "");
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("http/1.1 200 ok", &b"hello from axum\n"[..])
    );
    let (status, head, body) = http_get(port, "/big.bin", "");
    assert_eq!(status, "http/1.1 200 ok");
    assert!(head.contains("etag: w/\""), "{head}");
    assert!(body == big, "the file, {} bytes", body.len());
    let (status, head, body) = http_get(port, "/big.bin", "Range: bytes=100000-\r\n");
    assert_eq!(status, "http/1.1 206 partial content");
    assert!(
        head.contains("content-range: bytes 100000-199999/200000"),
        "{head}"
    );
    assert!(body == big[100_000..]);
    let (status, head, _) = http_get(port, "/docs", "");
    assert_eq!(status, "http/1.1 307 temporary redirect");
    assert!(head.contains("location: /docs/"), "{head}");
    assert_eq!(http_get(port, "/docs/", "").2, b"<p>docs</p>");
    assert_eq!(
        http_get(port, "/../etc/passwd", "").0,
        "http/1.1 404 not found"
    );
    assert_eq!(http_get(port, "/missing", "").0, "http/1.1 404 not found");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
