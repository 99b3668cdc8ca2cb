//! The properties forklift's fuzz targets check, shared by the libFuzzer targets
//! (`fuzz_targets/`, run by `cargo fuzz`) and the stable `smoke` runner (`src/bin/smoke.rs`).
//!
//! Each function takes raw bytes and panics if forklift misbehaves: a panic inside forklift
//! or a broken property (for example, an accepted address whose printed form does not parse
//! back to the same address).

use std::net::IpAddr;

use forklift::ListenAddr;

/// `str::parse::<ListenAddr>()`: never panics; an accepted TCP address prints as a form
/// that parses back to the same socket address.
///
/// Host names are never looked up: an input that would make forklift resolve a name (a
/// non-IP host with a valid port) is skipped, so the fuzzer sends no DNS query.
pub fn listen_addr(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if would_resolve(input) {
        return;
    }
    let Ok(addr) = input.parse::<ListenAddr>() else {
        return;
    };
    if let ListenAddr::Tcp { addr: sock, .. } = &addr {
        let shown = addr.to_string();
        assert!(
            !would_resolve(&shown),
            "{input:?} printed as a name: {shown:?}"
        );
        let again: ListenAddr = shown
            .parse()
            .unwrap_or_else(|e| panic!("{input:?} printed as {shown:?}, which fails: {e}"));
        match again {
            ListenAddr::Tcp { addr: back, .. } => {
                assert_eq!(back, *sock, "{input:?} -> {shown:?} -> a different address")
            }
            other => panic!("{input:?} printed as {shown:?}, which parses as {other:?}"),
        }
    }
}

/// Whether parsing `input` as a [`ListenAddr`] would resolve a host name (getaddrinfo, and
/// so possibly DNS). Mirrors `ListenAddr::from_str` up to its call to `to_socket_addrs`;
/// errs on the side of "yes".
pub fn would_resolve(input: &str) -> bool {
    let s = input.trim();
    if s.starts_with("unix:") {
        return false;
    }
    let hostport = if let Some(rest) = s.strip_prefix("tcp4://") {
        rest
    } else if let Some(rest) = s.strip_prefix("tcp6://") {
        rest
    } else if let Some(rest) = s.strip_prefix("tcp://") {
        rest
    } else if s.contains("://") {
        return false;
    } else {
        s
    };
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().is_err() {
        return false;
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !(host.is_empty() || host.parse::<IpAddr>().is_ok())
}

/// `LISTEN_PID` / `LISTEN_FDS` as forklift reads them. The input is split into the pid the
/// reader has (first 4 bytes), then the two variables separated by a 0xff byte (a missing
/// separator means LISTEN_FDS is unset; a leading 0xfe means LISTEN_PID is unset).
///
/// Properties: never panics; a count is only returned for this process's pid, and is at
/// most 1024; an unset variable means "not for us".
pub fn listen_fds(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let me = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let rest = &data[4..];
    let (pid_raw, fds_raw) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let pid = match pid_raw.first() {
        Some(0xfe) => None,
        _ => Some(String::from_utf8_lossy(pid_raw).into_owned()),
    };
    let fds = fds_raw.map(|f| String::from_utf8_lossy(f).into_owned());
    let got = forklift::__fuzz::listen_fds(pid.as_deref(), fds.as_deref(), me);
    match (&pid, &fds, &got) {
        (None, _, r) | (_, None, r) => {
            assert_eq!(*r, Ok(None), "an unset variable: {pid:?} {fds:?}")
        }
        (Some(p), Some(_), Ok(Some(n))) => {
            assert!(*n <= 1024, "LISTEN_FDS={fds:?} gave {n} fds");
            assert_eq!(
                p.trim().parse::<u32>().ok(),
                Some(me),
                "LISTEN_PID={p:?} is not {me}"
            );
        }
        (Some(p), Some(_), Ok(None)) => {
            assert_ne!(
                p.trim().parse::<u32>().ok(),
                Some(me),
                "LISTEN_PID={p:?} is ours, yet ignored"
            );
        }
        (Some(_), Some(_), Err(e)) => assert!(!e.is_empty(), "an empty error message"),
    }
}

/// The worker-to-master status channel: never panics, never finds more messages than the
/// buffer has lines.
pub fn status_messages(data: &[u8]) {
    let n = forklift::__fuzz::status_messages(data);
    let lines = data.iter().filter(|&&b| b == b'\n').count();
    assert!(n <= lines, "{n} messages out of {lines} lines");
}

/// A `LISTEN_FDNAMES` entry of a binary upgrade (`forklift.INDEX.SLOT|shared`): never
/// panics, and what it accepts prints back to a name that parses the same.
pub fn fd_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let Some((index, slot)) = forklift::__fuzz::fd_name(name) else {
        return;
    };
    assert!(name.starts_with("forklift."), "{name:?} accepted");
    let canonical = match slot {
        Some(s) => format!("forklift.{index}.{s}"),
        None => format!("forklift.{index}.shared"),
    };
    assert_eq!(
        forklift::__fuzz::fd_name(&canonical),
        Some((index, slot)),
        "{name:?} -> {canonical:?}"
    );
}

/// The HTTP/1 fast path's head parser: never panics; a request it takes is a prefix of the
/// input, at most 16 KiB, that parses the same on its own and with anything after it; what
/// it leaves to hyper or waits on is the whole input; what it answers 400 stays so with more
/// bytes after it.
pub fn http1_head(data: &[u8]) {
    use forklift::__fuzz::Http1Head;
    match forklift::__fuzz::http1_head(data) {
        Http1Head::Request {
            len,
            method,
            uri,
            fields,
            keep_alive,
        } => {
            assert!(
                len > 0 && len <= data.len() && len <= 16 * 1024,
                "len {len}"
            );
            assert!(!method.is_empty() && method != "CONNECT", "{method:?}");
            assert!(!uri.is_empty(), "empty URI");
            assert!(fields <= 64, "{fields} fields");
            let alone = forklift::__fuzz::http1_head(&data[..len]);
            let Http1Head::Request {
                len: len2,
                keep_alive: ka2,
                ..
            } = alone
            else {
                panic!("the head alone parses as {alone:?}");
            };
            assert_eq!((len2, ka2), (len, keep_alive));
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert!(matches!(
                forklift::__fuzz::http1_head(&more),
                Http1Head::Request { len: l, .. } if l == len
            ));
        }
        // A head answered 400 stays so whatever follows it: nothing can make it right.
        Http1Head::Invalid => {
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let again = forklift::__fuzz::http1_head(&more);
            assert_eq!(again, Http1Head::Invalid, "followed by more: {again:?}");
        }
        Http1Head::Partial | Http1Head::Handoff => {}
    }
}

/// The screen in front of hyper (`src/http/fast/screen.rs`): never panics; whether it
/// rejects a head does not depend on how the bytes are cut into reads (the first input byte
/// picks the cuts), for inputs under 16 KiB of fewer than 100 lines (past either, a bad byte
/// or the field limit may be seen a read later or not at all, as in hyper); a NUL it puts
/// lands on an LF or on a head's last byte.
pub fn http1_screen(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let whole = forklift::__fuzz::http1_screen(bytes, &[]);
    let step = usize::from(pick % 32) + 1;
    let cuts: Vec<usize> = (step..bytes.len()).step_by(step).collect();
    let cut = forklift::__fuzz::http1_screen(bytes, &cuts);
    for (nul, why) in [whole, cut].into_iter().flatten() {
        if let Some(at) = nul {
            assert!(at < bytes.len(), "NUL at {at} of {}: {why}", bytes.len());
            assert_eq!(bytes[at], b'\n', "the NUL replaces an LF ({why})");
        }
    }
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    if bytes.len() < 16 * 1024 && lines < 100 {
        assert_eq!(
            whole.is_some(),
            cut.is_some(),
            "whole: {whole:?}, in reads of {step}: {cut:?}"
        );
    }
}

/// The PROXY protocol header a worker reads before a connection's first request
/// (`src/http/proxy.rs`): never panics; a complete header is a prefix of the input that
/// parses the same alone and with any bytes after it, and every shorter prefix of it waits
/// for more (so the worker may take a partial header's bytes out of the socket); bytes it
/// refuses stay refused with more bytes after them.
pub fn proxy_header(data: &[u8]) {
    use forklift::__fuzz::proxy_header;
    match proxy_header(data) {
        Ok(Some((len, client))) => {
            assert!(len > 0 && len <= data.len(), "len {len} of {}", data.len());
            assert_eq!(proxy_header(&data[..len]), Ok(Some((len, client.clone()))));
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"\r\nGET / HTTP/1.1\r\n\r\n");
            assert_eq!(proxy_header(&more), Ok(Some((len, client))));
            for end in 0..len {
                let part = proxy_header(&data[..end]);
                assert_eq!(
                    part,
                    Ok(None),
                    "the first {end} bytes of a {len}-byte header"
                );
            }
        }
        Ok(None) => {}
        Err(why) => {
            let mut more = data.to_vec();
            more.extend_from_slice(b" 1 2\r\nGET / HTTP/1.1\r\n\r\n");
            let again = proxy_header(&more);
            assert!(again.is_err(), "refused ({why}), then {again:?} with more");
        }
    }
}

/// A fuzz target: takes raw bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// The targets by name, for the runners.
pub const TARGETS: [(&str, Target); 7] = [
    ("listen_addr", listen_addr),
    ("listen_fds", listen_fds),
    ("status_messages", status_messages),
    ("fd_name", fd_name),
    ("http1_head", http1_head),
    ("http1_screen", http1_screen),
    ("proxy_header", proxy_header),
];

/// Seed inputs per target (also written to `seeds/TARGET/` for cargo fuzz).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let strs: &[&str] = match target {
        "listen_addr" => &[
            "127.0.0.1:8080",
            "[::1]:8080",
            ":8080",
            "tcp4://:8080",
            "tcp6://[::]:8080",
            "tcp://127.0.0.1:0",
            "unix:/run/app.sock",
            "unix:///tmp/a.sock",
            " 127.0.0.1:1 ",
            "[::ffff:127.0.0.1]:80",
            "[fe80::1%lo]:80",
            "tcp4://[::1]:80",
            "127.0.0.1:70000",
            "http://127.0.0.1:80",
        ],
        "listen_fds" => &[
            "\x2a\x00\x00\x0042\u{ff}2",
            "\x2a\x00\x00\x00 42 \u{ff} 3 ",
            "\x2a\x00\x00\x0043\u{ff}2",
            "\x2a\x00\x00\x0042\u{ff}99999",
            "\x2a\x00\x00\x0042\u{ff}-1",
            "\x2a\x00\x00\x00\u{fe}\u{ff}2",
        ],
        "status_messages" => &[
            "ready\n",
            "hb 42\nrecycle\n",
            "boot-error line one\\nback\\\\slash\n",
            "hb notanumber\nunknown thing\nrea",
        ],
        "http1_head" => &[
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a?b HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "HEAD / HTTP/1.1\r\nConnection: close\r\nTE: trailers\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "\r\nGET http://x/y HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \u{fe}\r\n\r\n",
        ],
        // The first byte picks how the rest is cut into reads.
        "http1_screen" => &[
            "\x03GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "\x05POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na\nbGET / HTTP/1.1\r\nHost: x\n\r\n",
            "\x07POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\n\n\n\n\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\rZ",
            "\x01GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\n",
            "\x02PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x04GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nGET /\n",
        ],
        "proxy_header" => &[
            "PROXY TCP4 192.0.2.1 198.51.100.2 51234 80\r\nGET / HTTP/1.1\r\n\r\n",
            "PROXY TCP6 2001:db8::1 ::1 4000 443\r\n",
            "PROXY UNKNOWN\r\n",
            "PROXY UNKNOWN whatever here\r\nGET /",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\x11\x22\x00\x50GET",
            "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
            "\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x29\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x11\x22\x00\x50\x04\x00\x02ab",
            "\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x00",
            "GET / HTTP/1.1\r\n\r\n",
        ],
        "fd_name" => &[
            "forklift.0.shared",
            "forklift.1.3",
            "forklift.x.1",
            "forklift.0.",
            "forklift.18446744073709551615.0",
        ],
        _ => &[],
    };
    strs.iter()
        .map(|s| {
            // `\u{ff}`/`\u{fe}` above stand for the raw separator bytes.
            let mut out = Vec::new();
            for c in s.chars() {
                match c {
                    '\u{ff}' => out.push(0xff),
                    '\u{fe}' => out.push(0xfe),
                    c => {
                        let mut b = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    }
                }
            }
            out
        })
        .collect()
}

/// Tokens the stable runner splices into inputs.
pub const DICTIONARY: &[&str] = &[
    "tcp4://",
    "tcp6://",
    "tcp://",
    "unix:",
    "unix://",
    "://",
    "[",
    "]",
    ":",
    "::",
    "::1",
    "127.0.0.1",
    "0.0.0.0",
    "::ffff:",
    "%",
    "65535",
    "65536",
    "0",
    "-1",
    "+1",
    " ",
    "\t",
    "\n",
    "\r",
    "hb ",
    "ready",
    "recycle",
    "boot-error ",
    "\\",
    "\\n",
    "forklift.",
    "shared",
    ".",
    "18446744073709551616",
    "4294967295",
    "1024",
    "1025",
    "\u{feff}",
    "\u{a0}",
    "\u{2028}",
    "é",
    "PROXY ",
    "TCP4 ",
    "TCP6 ",
    "UNKNOWN",
    "\r\n\r\n\x00\r\nQUIT\n",
    "\x21\x11",
    "\x20\x00",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass() {
        for (name, f) in TARGETS {
            for s in seeds(name) {
                f(&s);
            }
        }
    }

    #[test]
    fn names_are_not_resolved() {
        assert!(would_resolve("localhost:80"));
        assert!(would_resolve("tcp4://example.invalid:80"));
        assert!(!would_resolve("localhost:notaport"));
        assert!(!would_resolve("[::1]:80"));
        assert!(!would_resolve(":80"));
        assert!(!would_resolve("unix:/x"));
        assert!(!would_resolve("http://x:80"));
    }
}
