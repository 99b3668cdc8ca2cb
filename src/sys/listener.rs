//! Binding listening sockets in the master, and handing them to workers.
//!
//! The master always binds, so a taken port or a bad address fails before any worker exists.
//! In shared-socket mode there is one socket per address and every worker inherits it. In
//! reuseport mode the master binds one `SO_REUSEPORT` socket per address *per worker slot* and
//! keeps it open across that slot's restarts, so connections queued on it are not lost when its
//! worker crashes: the replacement inherits the same queue.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Socket, Type};

use crate::addr::ListenAddr;
use crate::error::{Error, Result};

/// A listening socket as a worker receives it: a plain std listener, in blocking mode.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain socket listener.
    Unix(UnixListener),
}

impl Listener {
    /// Binds and listens on `addr` as the master does (`SO_REUSEADDR`, the address's family
    /// rule, an explicit backlog), for code that serves from a single process.
    ///
    /// # Errors
    /// A taken port ([`Error::AddrInUse`]) or a refused address ([`Error::Bind`]).
    ///
    /// ```
    /// let addr = "127.0.0.1:0".parse()?;
    /// let listener = forklift::Listener::bind(&addr, forklift::DEFAULT_BACKLOG)?;
    /// assert!(listener.tcp_addr().unwrap().port() != 0);
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn bind(addr: &ListenAddr, backlog: u32) -> Result<Listener> {
        let opts = BindOptions {
            backlog: i32::try_from(backlog).unwrap_or(i32::MAX),
            reuse_port: false,
        };
        match addr {
            ListenAddr::Unix(path) => Ok(Listener::Unix(bind_unix(path, opts.backlog)?.into())),
            ListenAddr::Tcp { addr: a, .. } => Ok(Listener::Tcp(bind_tcp(addr, *a, opts)?.into())),
        }
    }

    /// Takes ownership of an inherited listening socket, telling TCP from Unix by its address.
    ///
    /// # Errors
    /// If `fd` is not a socket, or not of a supported family.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let listener = forklift::Listener::from_fd(OwnedFd::from(std_listener))?;
    /// assert!(matches!(listener, forklift::Listener::Tcp(_)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_fd(fd: OwnedFd) -> io::Result<Listener> {
        let socket = Socket::from(fd);
        let local = socket.local_addr()?;
        if local.is_unix() {
            Ok(Listener::Unix(socket.into()))
        } else if local.as_socket().is_some() {
            Ok(Listener::Tcp(socket.into()))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "inherited fd is neither a TCP nor a Unix socket",
            ))
        }
    }

    /// The address, formatted as forklift prints it: `127.0.0.1:8080` or `unix:/path`.
    ///
    /// ```
    /// let listener = forklift::Listener::bind(&"127.0.0.1:0".parse()?, 16)?;
    /// assert!(listener.local_addr_string().starts_with("127.0.0.1:"));
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn local_addr_string(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("<unknown: {e}>")),
            Listener::Unix(l) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:<unnamed>".to_string(),
                },
                Err(e) => format!("<unknown: {e}>"),
            },
        }
    }

    /// The TCP address, if this is a TCP listener.
    ///
    /// ```
    /// let listener = forklift::Listener::bind(&"[::1]:0".parse()?, 16);
    /// # let Ok(listener) = listener else { return Ok(()) }; // a machine without IPv6
    /// assert!(listener.tcp_addr().unwrap().is_ipv6());
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl IntoRawFd for Listener {
    fn into_raw_fd(self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.into_raw_fd(),
            Listener::Unix(l) => l.into_raw_fd(),
        }
    }
}

/// How sockets are bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions {
    pub backlog: i32,
    pub reuse_port: bool,
}

/// The kernel's cap on listen backlogs, if it can be read.
pub(crate) fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The master's sockets for one configured address.
#[derive(Debug)]
pub(crate) struct BoundAddr {
    /// The bound address: the real port, for display and for more reuseport sockets.
    pub actual: ListenAddr,
    /// One socket shared by every worker, or one per worker slot (reuseport mode).
    pub sockets: Sockets,
    /// A Unix socket file this master created and removes when it stops.
    pub unix_path: Option<PathBuf>,
    /// A Unix socket file a previous master made, this master's to remove once it has taken
    /// over (if it fails first, the previous master still serves on it).
    pub adoptable_path: Option<PathBuf>,
}

#[derive(Debug)]
pub(crate) enum Sockets {
    Shared(Socket),
    PerSlot(Vec<Socket>),
}

impl BoundAddr {
    /// The socket worker `slot` serves on.
    pub fn socket_for(&self, slot: usize) -> &Socket {
        match &self.sockets {
            Sockets::Shared(s) => s,
            Sockets::PerSlot(v) => &v[slot],
        }
    }

    /// Every socket of this address (the master closes the rest of them in a forked worker).
    pub fn all_sockets(&self) -> impl Iterator<Item = &Socket> {
        let v: Vec<&Socket> = match &self.sockets {
            Sockets::Shared(s) => vec![s],
            Sockets::PerSlot(v) => v.iter().collect(),
        };
        v.into_iter()
    }
}

impl BoundAddr {
    /// True in reuseport mode: one socket per worker slot.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    pub fn is_per_slot(&self) -> bool {
        matches!(self.sockets, Sockets::PerSlot(_))
    }

    /// Makes an inherited reuseport address have one socket per worker slot.
    pub fn fit_slots(&mut self, slots: usize, opts: BindOptions) -> Result<()> {
        while let Sockets::PerSlot(v) = &self.sockets {
            match v.len() {
                n if n < slots => add_slot(self, opts)?,
                n if n > slots => remove_slot(self),
                _ => break,
            }
        }
        Ok(())
    }

    /// Keeps the Unix socket file when this master goes: another master now serves on it.
    pub fn hand_over(&mut self) {
        self.unix_path = None;
    }

    /// Takes charge of the socket file a previous master made (this master has taken over).
    pub fn adopt(&mut self) {
        if let Some(path) = self.adoptable_path.take() {
            self.unix_path = Some(path);
        }
    }
}

impl Drop for BoundAddr {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The name an inherited fd carries in `LISTEN_FDNAMES` when one forklift master hands its
/// sockets to the next (binary upgrade): `forklift.<address index>.<slot or "shared">`.
pub(crate) fn fd_name(addr_index: usize, slot: Option<usize>) -> String {
    match slot {
        Some(s) => format!("forklift.{addr_index}.{s}"),
        None => format!("forklift.{addr_index}.shared"),
    }
}

/// Every socket of every address, with its `LISTEN_FDNAMES` name, in handing-over order.
pub(crate) fn handover_list(bound: &[BoundAddr]) -> Vec<(&Socket, String)> {
    let mut out = Vec::new();
    for (i, b) in bound.iter().enumerate() {
        match &b.sockets {
            Sockets::Shared(s) => out.push((s, fd_name(i, None))),
            Sockets::PerSlot(v) => out.extend(
                v.iter()
                    .enumerate()
                    .map(|(slot, s)| (s, fd_name(i, Some(slot)))),
            ),
        }
    }
    out
}

/// Takes the listening sockets this process was started with (systemd socket activation, or
/// a binary upgrade from a previous master), if `LISTEN_PID` names this process.
///
/// Sockets named by a previous forklift master keep their layout (one per worker slot in
/// reuseport mode); any other inherited socket is shared by all workers.
/// The `LISTEN_FDNAMES` name of a control socket handed to the next master.
pub(crate) const CONTROL_FD_NAME: &str = "forklift.control";

/// The `LISTEN_FDNAMES` name of a health port handed to the next master.
pub(crate) const HEALTH_FD_NAME: &str = "forklift.health";

/// The `LISTEN_FDNAMES` name of the pipe that hands the TLS ticket secret to the next master
/// (`http/tickets.rs`).
pub(crate) const TICKETS_FD_NAME: &str = "forklift.tls-tickets";

/// What a master was started with: listening sockets, and the previous master's control
/// socket, health port and TLS ticket secret (binary upgrade).
#[derive(Debug)]
pub(crate) struct Inherited {
    pub bound: Vec<BoundAddr>,
    pub control: Option<UnixListener>,
    pub health: Option<std::net::TcpListener>,
    /// The read end of a pipe holding the previous master's TLS ticket secret.
    pub tickets: Option<OwnedFd>,
}

pub(crate) fn inherited() -> Result<Option<Inherited>> {
    let var = |name: &str| std::env::var(name).ok();
    let n = crate::protocol::listen_fds(
        var(crate::protocol::ENV_LISTEN_PID).as_deref(),
        var(crate::protocol::ENV_LISTEN_FDS).as_deref(),
        std::process::id(),
    )
    .map_err(|e| Error::Config(format!("inherited sockets: {e}")))?;
    let Some(n) = n else { return Ok(None) };
    let names: Vec<String> = var(crate::protocol::ENV_LISTEN_FDNAMES)
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut bound: Vec<BoundAddr> = Vec::new();
    let mut control = None;
    let mut health = None;
    let mut tickets = None;
    // (forklift address index, position in `bound`) of reuseport addresses seen so far.
    let mut per_slot: Vec<(usize, usize)> = Vec::new();
    for i in 0..n {
        let fd = crate::protocol::LISTEN_FDS_START + i as i32;
        // SAFETY: LISTEN_PID names this process, so fds 3..3+LISTEN_FDS were passed to it
        // and nothing in it owns them yet.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        socket
            .set_cloexec(true)
            .map_err(|e| Error::io(format!("inherited fd {fd}"), e))?;
        // A pipe, not a socket: taken before the socket checks.
        if names.get(i).map(String::as_str) == Some(TICKETS_FD_NAME) {
            tickets = Some(OwnedFd::from(socket));
            continue;
        }
        let local = socket
            .local_addr()
            .map_err(|e| Error::io(format!("inherited fd {fd} is not a socket"), e))?;
        let actual = if let Some(a) = local.as_socket() {
            ListenAddr::tcp(a)
        } else if let Some(p) = local.as_pathname() {
            ListenAddr::Unix(p.to_path_buf())
        } else {
            return Err(Error::Config(format!(
                "inherited fd {fd} is neither a TCP nor a named Unix socket"
            )));
        };
        if names.get(i).map(String::as_str) == Some(CONTROL_FD_NAME) {
            control = Some(UnixListener::from(OwnedFd::from(socket)));
            continue;
        }
        if names.get(i).map(String::as_str) == Some(HEALTH_FD_NAME) {
            health = Some(std::net::TcpListener::from(OwnedFd::from(socket)));
            continue;
        }
        let parsed = names.get(i).and_then(|name| parse_fd_name(name));
        if let Some((index, Some(_))) = parsed {
            if let Some(&(_, pos)) = per_slot.iter().find(|(x, _)| *x == index) {
                if let Sockets::PerSlot(v) = &mut bound[pos].sockets {
                    v.push(socket);
                    continue;
                }
            }
            per_slot.push((index, bound.len()));
            bound.push(BoundAddr {
                actual,
                sockets: Sockets::PerSlot(vec![socket]),
                unix_path: None,
                adoptable_path: None,
            });
            continue;
        }
        let adoptable_path = match (&actual, parsed) {
            // A socket file a previous forklift master made becomes ours to remove once we
            // have taken over; systemd's are systemd's.
            (ListenAddr::Unix(p), Some(_)) => Some(p.clone()),
            _ => None,
        };
        bound.push(BoundAddr {
            actual,
            sockets: Sockets::Shared(socket),
            unix_path: None,
            adoptable_path,
        });
    }
    Ok(Some(Inherited {
        bound,
        control,
        health,
        tickets,
    }))
}

pub(crate) fn parse_fd_name(name: &str) -> Option<(usize, Option<usize>)> {
    let rest = name.strip_prefix("forklift.")?;
    let (index, slot) = rest.split_once('.')?;
    let index = index.parse().ok()?;
    let slot = if slot == "shared" {
        None
    } else {
        Some(slot.parse().ok()?)
    };
    Some((index, slot))
}

/// Binds every address for `slots` workers.
pub(crate) fn bind_all(
    addrs: &[ListenAddr],
    slots: usize,
    opts: BindOptions,
) -> Result<Vec<BoundAddr>> {
    addrs.iter().map(|a| bind_addr(a, slots, opts)).collect()
}

fn bind_addr(requested: &ListenAddr, slots: usize, opts: BindOptions) -> Result<BoundAddr> {
    match requested {
        ListenAddr::Unix(path) => {
            // SO_REUSEPORT does not spread load over Unix sockets: one shared socket serves.
            let socket = bind_unix(path, opts.backlog)?;
            Ok(BoundAddr {
                actual: requested.clone(),
                sockets: Sockets::Shared(socket),
                unix_path: Some(path.clone()),
                adoptable_path: None,
            })
        }
        ListenAddr::Tcp { network, addr } => {
            let first = bind_tcp(requested, *addr, opts)?;
            let bound = first
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(*addr);
            let actual = ListenAddr::Tcp {
                network: *network,
                addr: bound,
            };
            let sockets = if opts.reuse_port {
                let mut v = vec![first];
                for _ in 1..slots {
                    v.push(bind_tcp(&actual, bound, opts)?);
                }
                Sockets::PerSlot(v)
            } else {
                Sockets::Shared(first)
            };
            Ok(BoundAddr {
                actual,
                sockets,
                unix_path: None,
                adoptable_path: None,
            })
        }
    }
}

/// Binds one more reuseport socket, for a worker slot added while running (TTIN). Shared
/// sockets need nothing.
pub(crate) fn add_slot(bound: &mut BoundAddr, opts: BindOptions) -> Result<()> {
    if let (Sockets::PerSlot(v), ListenAddr::Tcp { addr, .. }) = (&mut bound.sockets, &bound.actual)
    {
        let socket = bind_tcp(&bound.actual, *addr, opts)?;
        v.push(socket);
    }
    Ok(())
}

/// Closes the master's copy of the last slot's reuseport socket (TTOU). Connections still
/// queued on it are lost when its worker has closed it too, unless the kernel migrates them
/// (`net.ipv4.tcp_migrate_req = 1`).
pub(crate) fn remove_slot(bound: &mut BoundAddr) {
    if let Sockets::PerSlot(v) = &mut bound.sockets {
        if v.len() > 1 {
            v.pop();
        }
    }
}

/// Binds and listens on `addr` with the family rule of `spec` (whose port may still be 0).
fn bind_tcp(spec: &ListenAddr, addr: SocketAddr, opts: BindOptions) -> Result<Socket> {
    let shown = addr.to_string();
    let fail = |source: io::Error| bind_error(&shown, source);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    if let Some(v6_only) = spec.v6_only() {
        socket.set_only_v6(v6_only).map_err(fail)?;
    }
    // Lets a restarted server bind while old connections linger in TIME_WAIT.
    socket.set_reuse_address(true).map_err(fail)?;
    // Accepted connections inherit TCP_NODELAY from the listener on Linux: one setsockopt
    // here instead of one per connection.
    socket.set_tcp_nodelay(true).map_err(fail)?;
    if opts.reuse_port {
        set_reuse_port(&socket).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(opts.backlog).map_err(fail)?;
    Ok(socket)
}

#[cfg(unix)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

fn bind_unix(path: &Path, backlog: i32) -> Result<Socket> {
    let shown = format!("unix:{}", path.display());
    let fail = |source: io::Error| bind_error(&shown, source);
    if path.exists() {
        // A socket file left by a dead server is stale; one that still answers is in use.
        match UnixStream::connect(path) {
            Ok(_) => return Err(Error::AddrInUse { addr: shown }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                remove_stale_socket(path).map_err(fail)?;
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    let addr = socket2::SockAddr::unix(path).map_err(fail)?;
    socket.bind(&addr).map_err(fail)?;
    socket.listen(backlog).map_err(fail)?;
    Ok(socket)
}

/// Removes a socket file nothing listens on; refuses to remove anything that is not a socket.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::symlink_metadata(path)?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; remove it or choose another path",
        ));
    }
    std::fs::remove_file(path)
}

fn bind_error(addr: &str, source: io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::EADDRINUSE) => Error::AddrInUse {
            addr: addr.to_string(),
        },
        Some(libc::EACCES) => Error::Bind {
            addr: addr.to_string(),
            source,
            hint: " (ports below 1024 need root or CAP_NET_BIND_SERVICE; pick a port above 1023)",
        },
        Some(libc::EADDRNOTAVAIL) => Error::Bind {
            addr: addr.to_string(),
            source,
            hint: " (no interface of this machine has that address)",
        },
        Some(libc::EAFNOSUPPORT) => Error::Bind {
            addr: addr.to_string(),
            source,
            hint: " (this machine has no IPv6; use an IPv4 address or tcp4://)",
        },
        _ => Error::Bind {
            addr: addr.to_string(),
            source,
            hint: "",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_inherit_nodelay() {
        let addr: ListenAddr = "127.0.0.1:0".parse().unwrap();
        let Listener::Tcp(listener) = Listener::bind(&addr, 16).unwrap() else {
            unreachable!()
        };
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        if cfg!(any(target_os = "linux", target_os = "android")) {
            assert!(accepted.nodelay().unwrap());
        }
    }

    #[test]
    fn fd_names_round_trip() {
        assert_eq!(parse_fd_name(&fd_name(2, Some(5))), Some((2, Some(5))));
        assert_eq!(parse_fd_name(&fd_name(0, None)), Some((0, None)));
        assert_eq!(parse_fd_name("listener0"), None);
        assert_eq!(parse_fd_name("forklift.x.1"), None);
        assert_eq!(parse_fd_name("forklift.1.y"), None);
    }
}
