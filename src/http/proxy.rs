//! The PROXY protocol (HAProxy's, versions 1 and 2) on TCP listeners: a balancer in front
//! of forklift that passes connections through at layer 4 starts each one with a header
//! naming the client, and forklift takes the client address from it (as
//! [`ClientAddr`](crate::ClientAddr)) instead of the balancer's.
//!
//! Only sources in the trusted ranges may send a header: anyone else could claim any address.
//! A connection from elsewhere, or whose first bytes are not a complete, valid header within
//! the header-read timeout, is closed without an answer, before TLS or HTTP sees a byte.
//!
//! The header is read with `MSG_PEEK` first and only its own bytes are taken from the socket,
//! so the bytes after it (the request, a TLS ClientHello) stay in the socket for the code
//! that serves the connection, whatever the segments the header came in. Parsing is the
//! `ppp` crate's; this file decides what to trust.

use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// The longest header read: a v2 header with its TLVs (16 bytes and a 16-bit length) may
/// be longer than this, but HAProxy's TLVs (unique id, TLS details, ALPN) fit, and a longer
/// one is refused rather than buffered.
const MAX_HEADER: usize = 4096;

/// An address range a PROXY header is taken from: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// The network address, its host bits cleared.
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range. An IPv4 address mapped into IPv6 (a dual-stack
    /// listener's peers) matches the IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` with all but the first `prefix` bits cleared.
fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p))),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p))),
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = |why: &str| {
            format!(
                "invalid trusted proxy range {s:?}: {why}; write an address or ADDRESS/PREFIX, \
                 as in 10.0.0.0/8, 127.0.0.1 or fd00::/8"
            )
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| bad(&format!("{addr:?} is not an IP address")))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad(&format!("the prefix length must be 0 to {max}"))),
            },
        };
        let net = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(u128::from(v6), prefix).into()),
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The PROXY protocol settings of a worker's TCP listeners: the sources whose headers are
/// believed.
#[derive(Debug, Clone)]
pub(crate) struct ProxyProtocol {
    pub trusted: Vec<Cidr>,
}

impl ProxyProtocol {
    /// From the ranges as written; an empty list is refused (nobody could connect).
    pub fn parse<I>(trusted: I) -> Result<ProxyProtocol, String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let trusted = trusted
            .into_iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<Cidr>, String>>()?;
        if trusted.is_empty() {
            return Err(
                "the PROXY protocol needs at least one trusted proxy range (the \
                        balancer's addresses, as in 10.0.0.0/8): with none, every \
                        connection would be refused"
                    .into(),
            );
        }
        Ok(ProxyProtocol { trusted })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// What the bytes at the start of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Not all of a header yet, and every byte so far is part of one.
    Partial,
    /// A complete header of `len` bytes naming the client `client`; `None`: the proxy
    /// speaks for itself (v2 LOCAL, as in its health checks; v1 UNKNOWN), or the client is
    /// not an IP address (a Unix socket).
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(String),
}

/// The longest v1 header, its CRLF included (the protocol's own bound).
const MAX_V1: usize = 107;

/// Reads `buf`, the first bytes of a connection.
pub(crate) fn parse(buf: &[u8]) -> Header {
    let v2 = buf.starts_with(v2::PROTOCOL_PREFIX) || v2::PROTOCOL_PREFIX.starts_with(buf);
    if !v2 && !buf.contains(&b'\r') {
        // A v1 line not ended yet. Judged here, not by `ppp`: ppp 2.3 calls a line cut
        // after the space before the destination port a bad port, where more bytes may
        // make it good.
        let prefix = b"PROXY ";
        if !(buf.starts_with(prefix) || prefix.starts_with(buf)) {
            return Header::Invalid("not a PROXY header (HAProxy's PROXY protocol)".into());
        }
        if buf.len() >= MAX_V1 {
            return Header::Invalid(format!("no end of the PROXY v1 line in {MAX_V1} bytes"));
        }
        if buf.contains(&b'\n') {
            return Header::Invalid("a bare LF in a PROXY v1 line".into());
        }
        return Header::Partial;
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        let line_ended = buf
            .iter()
            .position(|&b| b == b'\r')
            .map(|cr| cr + 1 < buf.len());
        if !v2 && line_ended == Some(true) {
            // ppp calls "PROXY TCP4 1.2.3.4\r\n" incomplete (a part is missing).
            return Header::Invalid("a PROXY v1 line with parts missing".into());
        }
        if buf.len() >= MAX_HEADER {
            return Header::Invalid(format!("a PROXY header longer than {MAX_HEADER} bytes"));
        }
        return Header::Partial;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            // ppp takes "PROXY UNKNOWN \n\r" for a whole line (the "\n" as its end).
            let line = h.header.as_bytes();
            if !line.ends_with(b"\r\n") || line.iter().filter(|&&b| b == b'\n').count() != 1 {
                return Header::Invalid("a PROXY v1 line not ended by its only CRLF".into());
            }
            let client = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Header::Complete {
                len: h.header.len(),
                client,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            if h.header.len() > MAX_HEADER {
                return Header::Invalid(format!(
                    "a PROXY v2 header of {} bytes (at most {MAX_HEADER} taken)",
                    h.header.len()
                ));
            }
            let client = match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, _) => None,
            };
            Header::Complete {
                len: h.header.len(),
                client,
            }
        }
        HeaderResult::V1(Err(e)) => Header::Invalid(format!("not a PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => Header::Invalid(format!("a bad PROXY v2 header: {e}")),
    }
}

/// Counts the connections a worker refused, and says so once at WARN.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    count: Cell<u64>,
}

impl Refusals {
    fn refuse(&self, peer: SocketAddr, why: &str) {
        let n = self.count.get() + 1;
        self.count.set(n);
        if n == 1 {
            warn!(
                "PROXY protocol: closed a connection from {peer}: {why} (this worker logs \
                 further refusals at DEBUG)"
            );
        } else {
            debug!("PROXY protocol: closed a connection from {peer}: {why} ({n} so far)");
        }
    }
}

/// Reads the PROXY header of a connection from `peer`, taking only its bytes from the
/// socket, within `timeout`. The client it names (or `peer`, for a header that names none),
/// or `None` when the connection must close: an untrusted peer, a malformed or missing
/// header, a timeout.
pub(crate) async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy: &ProxyProtocol,
    refusals: &Refusals,
    timeout: Duration,
) -> Option<SocketAddr> {
    if !proxy.trusts(peer.ip()) {
        refusals.refuse(peer, "not a trusted proxy (--trusted-proxies)");
        return None;
    }
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(Ok(client)) => Some(client.unwrap_or(peer)),
        Ok(Err(why)) => {
            refusals.refuse(peer, &why);
            None
        }
        Err(_) => {
            refusals.refuse(peer, &format!("no PROXY header within {timeout:?}"));
            None
        }
    }
}

/// Peeks at the socket until its bytes hold a complete header, then takes the header's
/// bytes (those only) out of it.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    // Bytes taken out of the socket already: all of them part of the header.
    let mut taken = Vec::new();
    let mut peeked = vec![0u8; 256];
    loop {
        let n = stream
            .peek(&mut peeked)
            .await
            .map_err(|e| format!("reading the PROXY header failed: {e}"))?;
        if n == 0 {
            return Err(if taken.is_empty() {
                "closed before sending a PROXY header".into()
            } else {
                "closed inside its PROXY header".into()
            });
        }
        let have = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        match parse(&taken) {
            Header::Complete { len, client } => {
                take(stream, len - have).await?;
                return Ok(client);
            }
            Header::Invalid(why) => return Err(why),
            Header::Partial => {
                // Every byte peeked belongs to the header: take them, so that the next
                // peek waits for more.
                take(stream, n).await?;
                if n == peeked.len() && peeked.len() < MAX_HEADER {
                    peeked.resize(MAX_HEADER, 0);
                }
            }
        }
    }
}

/// Takes `n` bytes, known to be in the socket's receive queue, out of it.
async fn take(stream: &mut TcpStream, n: usize) -> Result<(), String> {
    let mut sink = [0u8; 512];
    let mut left = n;
    while left > 0 {
        let chunk = left.min(sink.len());
        stream
            .read_exact(&mut sink[..chunk])
            .await
            .map_err(|e| format!("reading the PROXY header failed: {e}"))?;
        left -= chunk;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tail);
        h
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.9".parse().unwrap()), "v4-mapped");
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        let host6: Cidr = "::1".parse().unwrap();
        assert!(host6.contains("::1".parse().unwrap()));
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        for (input, says) in [
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0/8", "not an IP address"),
            ("localhost", "not an IP address"),
            ("10.0.0.0/x", "0 to 32"),
        ] {
            let err = input.parse::<Cidr>().unwrap_err();
            assert!(err.contains(says), "{input}: {err}");
            assert!(err.contains("10.0.0.0/8"), "{err}");
        }
        let err = ProxyProtocol::parse(Vec::<String>::new()).unwrap_err();
        assert!(err.contains("at least one"), "{err}");
        let p = ProxyProtocol::parse(["10.0.0.0/8", "::1"]).unwrap();
        assert!(p.trusts("::1".parse().unwrap()));
        assert!(!p.trusts("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Header::Complete {
                len: 44,
                client: Some("192.0.2.1:51234".parse().unwrap())
            }
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        assert_eq!(
            parse(h6),
            Header::Complete {
                len: h6.len(),
                client: Some("[2001:db8::1]:4000".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Complete {
                len: 15,
                client: None
            }
        );
        // Every prefix of a header is partial.
        for end in 0..44 {
            assert_eq!(parse(&h[..end]), Header::Partial, "{end}");
        }
    }

    #[test]
    fn v2_headers() {
        let addrs = [192, 0, 2, 1, 198, 51, 100, 2, 0xc8, 0x22, 0, 80];
        let h = v2(1, 0x11, &addrs, b"GET /");
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 28,
                client: Some("192.0.2.1:51234".parse().unwrap())
            }
        );
        for end in 0..28 {
            assert_eq!(parse(&h[..end]), Header::Partial, "{end}");
        }
        // LOCAL: the proxy's own connection.
        let local = v2(0, 0x00, &[], b"");
        assert_eq!(
            parse(&local),
            Header::Complete {
                len: 16,
                client: None
            }
        );
        // TLVs after the addresses are part of the header.
        let mut with_tlv = addrs.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0, 2, 1, 2]);
        let h = v2(1, 0x11, &with_tlv, b"rest");
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 33,
                client: Some("192.0.2.1:51234".parse().unwrap())
            }
        );
        let mut v6 = [0u8; 36];
        v6[15] = 1;
        v6[32..34].copy_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x21, &v6, b"");
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 52,
                client: Some("[::1]:443".parse().unwrap())
            }
        );
    }

    #[test]
    fn bad_and_missing_headers_are_invalid_at_once() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"G",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",
            b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 1.2.3.4\r\nGET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r",
            b"PROXY UNKNOWN \n\r\n",
            b"PROXY UNKNOWN \n\r",
        ] {
            assert!(
                matches!(parse(input), Header::Invalid(_)),
                "{}: {:?}",
                input.escape_ascii(),
                parse(input)
            );
        }
        // A v2 signature with a bad version or command.
        let mut h = v2(1, 0x11, &[0; 12], b"");
        h[12] = 0x31;
        assert!(matches!(parse(&h), Header::Invalid(_)));
        h[12] = 0x2f;
        assert!(matches!(parse(&h), Header::Invalid(_)));
        // A v1 line that never ends.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Header::Invalid(_)));
    }
}
