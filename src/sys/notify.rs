//! systemd's readiness protocol (`sd_notify`): when `NOTIFY_SOCKET` is set, the master says
//! READY once every worker serves, RELOADING during a rolling reload (as `Type=notify-reload`
//! expects), and STOPPING when it begins to stop.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

/// A datagram socket to the service manager.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if any.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let path = path.to_string_lossy().into_owned();
        let addr = if let Some(name) = path.strip_prefix('@') {
            abstract_addr(name)?
        } else {
            SocketAddr::from_pathname(&path)?
        };
        let socket = UnixDatagram::unbound()?;
        // The master's fds are close-on-exec; std's sockets are.
        Ok(Some(Notifier { socket, addr }))
    }

    /// Sends one state update; failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            debug!("sd_notify {state:?} failed: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// forklift as the service manager of its workers: a datagram socket per worker, named by
/// the worker's `NOTIFY_SOCKET`, on which it says `READY=1` (and `WATCHDOG=1`, counted as a
/// heartbeat), as it would to systemd.
#[derive(Debug)]
pub(crate) struct NotifyListener {
    socket: UnixDatagram,
    /// The value of the worker's NOTIFY_SOCKET.
    name: String,
    /// A socket file to remove (where abstract names do not exist).
    path: Option<std::path::PathBuf>,
}

/// What a worker said on its notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerNotice {
    Ready,
    Watchdog,
}

impl NotifyListener {
    pub fn new(master_pid: u32, seq: u64) -> io::Result<NotifyListener> {
        let name = format!("forklift-{master_pid}-{seq}");
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let (socket, name, path) = {
            let addr = abstract_addr(&name)?;
            (UnixDatagram::bind_addr(&addr)?, format!("@{name}"), None)
        };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let (socket, name, path) = {
            let path = std::env::temp_dir().join(format!("{name}.sock"));
            let _ = std::fs::remove_file(&path);
            (
                UnixDatagram::bind(&path)?,
                path.display().to_string(),
                Some(path),
            )
        };
        socket.set_nonblocking(true)?;
        Ok(NotifyListener { socket, name, path })
    }

    pub fn env_value(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }

    /// The notices waiting on the socket.
    pub fn read(&self) -> Vec<WorkerNotice> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                match line.trim() {
                    "READY=1" => out.push(WorkerNotice::Ready),
                    "WATCHDOG=1" => out.push(WorkerNotice::Watchdog),
                    other if other.starts_with("STATUS=") => {
                        debug!("worker status: {}", &other[7..])
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &str) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET addresses exist on Linux only",
    ))
}

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) fills a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_notice_is_read_by_its_listener() {
        let listener = NotifyListener::new(std::process::id(), 7).unwrap();
        let sender = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: if let Some(name) = listener.env_value().strip_prefix('@') {
                abstract_addr(name).unwrap()
            } else {
                SocketAddr::from_pathname(listener.env_value()).unwrap()
            },
        };
        sender.send("STATUS=warming up\nREADY=1");
        sender.send("WATCHDOG=1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut got = Vec::new();
        while got.len() < 2 && std::time::Instant::now() < deadline {
            got.extend(listener.read());
        }
        assert_eq!(got, vec![WorkerNotice::Ready, WorkerNotice::Watchdog]);
    }

    #[test]
    fn messages_reach_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("forklift-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: SocketAddr::from_pathname(&path).unwrap(),
        };
        n.ready("serving");
        n.reloading();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert!(
            got[0].starts_with("READY=1\nSTATUS=serving\nMAINPID="),
            "{}",
            got[0]
        );
        assert!(
            got[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{}",
            got[1]
        );
        assert_eq!(got[2], "STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
