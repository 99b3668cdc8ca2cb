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
