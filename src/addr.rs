//! Listen addresses: `127.0.0.1:8080`, `[::]:8080`, `:8080`, `tcp4://host:port`, `unix:/path`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// The IP family a TCP address may use, as in Go's `net.Listen` (fasthttp's `Network`).
///
/// ```
/// use forklift::{ListenAddr, Network};
/// let ListenAddr::Tcp { network, addr } = "tcp6://[::1]:8080".parse()? else { unreachable!() };
/// assert_eq!((network, addr.port()), (Network::Tcp6, 8080));
/// # Ok::<(), forklift::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// IPv4 or IPv6. An empty host (`:8080`) listens on both (a dual-stack `[::]` socket).
    #[default]
    Tcp,
    /// IPv4 only.
    Tcp4,
    /// IPv6 only (the socket is `IPV6_V6ONLY`).
    Tcp6,
}

impl Network {
    fn scheme(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Tcp4 => "tcp4",
            Network::Tcp6 => "tcp6",
        }
    }
}

/// Where forklift listens.
///
/// Parsed from a string with [`str::parse`] or by [`Prefork::listen`](crate::Prefork::listen):
///
/// | input | meaning |
/// |---|---|
/// | `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` | TCP on that address (names are resolved once, at start) |
/// | `:8080` | TCP on every interface, IPv4 and IPv6 |
/// | `tcp4://:8080`, `tcp4://0.0.0.0:8080` | IPv4 only |
/// | `tcp6://[::]:8080` | IPv6 only |
/// | `unix:/run/app.sock` | a Unix domain socket at that path |
///
/// Port 0 picks a free port; the master binds it once, so every worker serves the same one.
///
/// ```
/// use forklift::ListenAddr;
/// let addr: ListenAddr = "tcp4://:8080".parse()?;
/// assert_eq!(addr.to_string(), "0.0.0.0:8080");
/// let unix: ListenAddr = "unix:/tmp/app.sock".parse()?;
/// assert!(matches!(unix, ListenAddr::Unix(_)));
/// # Ok::<(), forklift::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP socket address.
    Tcp {
        /// The IP family rule it was given with.
        network: Network,
        /// The resolved address.
        addr: SocketAddr,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// A TCP address with the default network rule.
    ///
    /// ```
    /// let addr = forklift::ListenAddr::tcp("127.0.0.1:8080".parse().unwrap());
    /// assert_eq!(addr.to_string(), "127.0.0.1:8080");
    /// ```
    pub fn tcp(addr: SocketAddr) -> Self {
        ListenAddr::Tcp {
            network: Network::Tcp,
            addr,
        }
    }

    /// For TCP: whether the IPv6 socket must refuse IPv4 (`IPV6_V6ONLY`), or `None` for IPv4.
    pub(crate) fn v6_only(&self) -> Option<bool> {
        match self {
            ListenAddr::Tcp { network, addr } if addr.is_ipv6() => {
                // Only the unspecified `[::]` given as plain `tcp` serves both families.
                let dual = *network == Network::Tcp && addr.ip().is_unspecified();
                Some(!dual)
            }
            _ => None,
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::tcp(addr)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp { addr, .. } => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidAddress {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("a unix socket needs a path, as in unix:/run/app.sock"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let (network, hostport) = if let Some(rest) = s.strip_prefix("tcp4://") {
            (Network::Tcp4, rest)
        } else if let Some(rest) = s.strip_prefix("tcp6://") {
            (Network::Tcp6, rest)
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            (Network::Tcp, rest)
        } else if s.contains("://") {
            return Err(bad(
                "unknown scheme; use tcp://, tcp4://, tcp6:// or unix:/path",
            ));
        } else {
            (Network::Tcp, s)
        };
        let addr = resolve(network, hostport).map_err(|reason| bad(&reason))?;
        Ok(ListenAddr::Tcp { network, addr })
    }
}

fn resolve(network: Network, hostport: &str) -> Result<SocketAddr, String> {
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT, [IPV6]:PORT or :PORT".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        let ip = match network {
            Network::Tcp4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Network::Tcp | Network::Tcp6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        return Ok(SocketAddr::new(ip, port));
    }
    let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
            .collect(),
    };
    candidates
        .iter()
        .copied()
        .find(|a| match network {
            Network::Tcp => true,
            Network::Tcp4 => a.is_ipv4(),
            Network::Tcp6 => a.is_ipv6(),
        })
        .ok_or_else(|| match network {
            Network::Tcp4 | Network::Tcp6 => {
                format!("{host} has no {} address", network.scheme())
            }
            Network::Tcp => format!("{host} resolves to no address"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ListenAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(parse("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
        assert_eq!(parse("[::1]:0").to_string(), "[::1]:0");
        assert_eq!(parse(" 127.0.0.1:1 ").to_string(), "127.0.0.1:1");
    }

    #[test]
    fn empty_host_means_every_interface() {
        let any = parse(":8080");
        assert_eq!(any.to_string(), "[::]:8080");
        assert_eq!(any.v6_only(), Some(false), "plain tcp is dual-stack");
        let v4 = parse("tcp4://:8080");
        assert_eq!(v4.to_string(), "0.0.0.0:8080");
        assert_eq!(v4.v6_only(), None);
        let v6 = parse("tcp6://:8080");
        assert_eq!(v6.v6_only(), Some(true));
        assert_eq!(parse("[::1]:80").v6_only(), Some(true));
    }

    #[test]
    fn network_must_match_family() {
        let err = "tcp4://[::1]:80".parse::<ListenAddr>().unwrap_err();
        assert!(err.to_string().contains("no tcp4 address"), "{err}");
        let err = "tcp6://127.0.0.1:80".parse::<ListenAddr>().unwrap_err();
        assert!(err.to_string().contains("no tcp6 address"), "{err}");
    }

    #[test]
    fn names_resolve() {
        let a = parse("tcp4://localhost:80");
        assert_eq!(a.to_string(), "127.0.0.1:80");
    }

    #[test]
    fn unix_paths() {
        assert_eq!(
            parse("unix:/tmp/a.sock"),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            parse("unix:///tmp/a.sock"),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        for (input, needle) in [
            ("127.0.0.1:notaport", "is not a number"),
            ("127.0.0.1:70000", "is not a number"),
            ("nonsense", "expected HOST:PORT"),
            ("http://127.0.0.1:80", "unknown scheme"),
        ] {
            let err = input.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains(input), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }
}
