//! A plain Rust server that knows nothing of forklift, run under `forklift run`: it takes its
//! socket with the `listenfd` crate (systemd's LISTEN_FDS protocol), says READY=1 on
//! NOTIFY_SOCKET, and answers each connection with a line naming its worker.
//!
//! Shows that `forklift run` pre-forks any program that accepts an inherited socket:
//!
//! ```text
//! cargo build --example listenfd_server
//! forklift run --listen 127.0.0.1:7000 --workers 2 --ready-notify -- target/debug/examples/listenfd_server
//! nc 127.0.0.1 7000
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;

fn main() -> std::io::Result<()> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds.take_tcp_listener(0)?.ok_or_else(|| {
        std::io::Error::other("no socket in LISTEN_FDS: run me under `forklift run` or systemd")
    })?;
    let worker = std::env::var("FORKLIFT_WORKER_ID").unwrap_or_else(|_| "?".into());
    notify_ready()?;
    // A blocking accept(2): the kernel wakes one waiting process per connection.
    for conn in listener.incoming() {
        // One client's error (a reset, a closed pipe) is no reason to stop serving the rest.
        if let Err(e) = conn.and_then(|conn| answer(conn, &worker)) {
            eprintln!("connection failed: {e}");
        }
    }
    Ok(())
}

fn answer(mut conn: std::net::TcpStream, worker: &str) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = format!(
        "worker={worker} pid={} echo={}\n",
        std::process::id(),
        line.trim_end()
    );
    conn.write_all(reply.as_bytes())
}

/// sd_notify(READY=1), by hand: one datagram to the socket named in NOTIFY_SOCKET.
fn notify_ready() -> std::io::Result<()> {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(b"READY=1", &addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = name;
    } else {
        socket.send_to(b"READY=1", path)?;
    }
    Ok(())
}
