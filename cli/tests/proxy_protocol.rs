//! The PROXY protocol (`forklift serve --proxy-protocol --trusted-proxies ...`) and the
//! client address it gives requests (`forklift::ClientAddr`, which the demo's `GET /client`
//! prints): behind Debian's HAProxy in TCP mode with `send-proxy` and `send-proxy-v2`, the
//! demo sees the real client (127.0.0.1 and the client's own port); headers written by hand
//! cover what HAProxy does not send (v2 LOCAL, a header trickled byte by byte, requests
//! pipelined behind the header) and what must be refused (an untrusted source, a malformed
//! or missing header), and that the access log names the client from the header, not the
//! proxy's connection. The HAProxy test is skipped with a notice where `haproxy` is not
//! installed (`.ci/run` installs it).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A forklift with one worker taking the PROXY protocol from `trusted`.
fn proxied(trusted: &str) -> Server {
    Server::start_ready(&serve_args(
        "1",
        &["--proxy-protocol", "--trusted-proxies", trusted],
    ))
}

/// What the server answers to `bytes` written on a new connection (read until it closes
/// or stays silent for a while), and the connection's own address.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (RawAnswer, SocketAddr) {
    let stream = TcpStream::connect(addr).expect("connect");
    let local = stream.local_addr().unwrap();
    let answer = send_raw_on(stream, bytes, Duration::from_secs(5)).expect("socket setup");
    (answer, local)
}

/// The bodies of the responses in `text` (each `GET /client` answer is one line).
fn client_lines(text: &str) -> Vec<&str> {
    text.split("\r\n\r\n")
        .skip(1)
        .map(|b| b.split("HTTP/1.1").next().unwrap().trim_end())
        .collect()
}

fn get_client(close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET /client HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n")
}

fn v2_header(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(addrs);
    h
}

/// The body of `GET /client` sent through `front` on a connection of our own, and that
/// connection's address.
fn client_through(front: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let mut s = TcpStream::connect(front)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let local = s.local_addr()?;
    s.write_all(get_client(true).as_bytes())?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    let r = parse_response(&got)?;
    Ok((r.body_str().trim_end().to_string(), local))
}

/// `n` distinct free ports on 127.0.0.1, outside the ephemeral range the connections take
/// their ports from (as in `fleet.rs`).
fn free_ports(n: usize) -> Vec<u16> {
    let seed = std::process::id() as usize * 7919 + 17;
    let held: Vec<TcpListener> = (0..10_000)
        .map(|i| 20_000 + (seed + i * 104_729) % 10_000)
        .filter_map(|p| TcpListener::bind(("127.0.0.1", p as u16)).ok())
        .take(n)
        .collect();
    assert_eq!(held.len(), n, "no {n} free ports in 20000-29999");
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

#[test]
fn behind_haproxy_send_proxy_and_send_proxy_v2_the_demo_sees_the_real_client() {
    if !haproxy_installed() {
        eprintln!(
            "notice: haproxy is not installed (apt-get install haproxy): the HAProxy test of \
             the PROXY protocol is skipped"
        );
        return;
    }
    let s = proxied("127.0.0.1");
    let backend = s.addr();
    let ports = free_ports(2);
    let fronts: Vec<SocketAddr> = ports.iter().map(|p| ([127, 0, 0, 1], *p).into()).collect();
    let dir = TempDir::new("proxy-protocol");
    let cfg = dir.0.join("haproxy.cfg");
    let text = format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n\
         listen v1\n    bind {}\n    server forklift {backend} send-proxy\n\
         listen v2\n    bind {}\n    server forklift {backend} send-proxy-v2\n",
        fronts[0], fronts[1]
    );
    std::fs::write(&cfg, &text).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let _haproxy = Server::spawn(cmd, Launch::new("haproxy", vec![text.clone()]));
    for front in &fronts {
        let mut last = None;
        let ok = poll_until(Instant::now() + WAIT, || {
            last = Some(client_through(*front));
            matches!(last, Some(Ok(_)))
        });
        assert!(ok, "no answer through HAProxy's {front}: {last:?}\n{text}");
        // Several connections, each from its own port.
        for _ in 0..3 {
            let (seen, local) = client_through(*front).expect("GET /client through HAProxy");
            assert_eq!(seen, local.to_string(), "through {front}");
        }
    }
    assert_eq!(stderr_count(&s, "PROXY protocol: closed"), 0);
}

/// The `client=` fields of the access log's text lines in the file at `path`.
fn logged_clients(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("client="))
                .map(str::to_string)
        })
        .collect()
}

/// Polls until the access log at `path` holds `n` lines; returns their client fields.
fn wait_logged_clients(path: &std::path::Path, n: usize) -> Vec<String> {
    poll_until(Instant::now() + WAIT, || logged_clients(path).len() >= n);
    logged_clients(path)
}

#[test]
fn headers_by_hand_v1_v2_local_trickled_and_pipelined_and_refusals() {
    let dir = TempDir::new("proxy-access");
    let log = dir.0.join("access.log");
    let s = Server::start_ready(&serve_args(
        "1",
        &[
            "--proxy-protocol",
            "--trusted-proxies",
            "127.0.0.1,::1",
            "--access-log",
            log.to_str().unwrap(),
        ],
    ));
    let addr = s.addr();

    // v1, with two requests pipelined behind the header in the same write. The access log
    // names the client from the header, not the proxy's connection (127.0.0.1, its port).
    let bytes = [
        b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\n".as_slice(),
        get_client(false).as_bytes(),
        get_client(true).as_bytes(),
    ]
    .concat();
    let (answer, peer) = exchange(addr, &bytes);
    assert_eq!(answer.statuses, [200, 200], "{}", answer.text);
    assert_eq!(
        client_lines(&answer.text),
        ["192.0.2.7:4242", "192.0.2.7:4242"]
    );
    let logged = wait_logged_clients(&log, 2);
    assert_eq!(logged, ["192.0.2.7:4242", "192.0.2.7:4242"], "not {peer}");

    // v2 over IPv6, the request behind it; and a request with a body (hyper's path).
    let mut addrs = [0u8; 36];
    addrs[..16].copy_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    addrs[32..34].copy_from_slice(&5000u16.to_be_bytes());
    addrs[34..36].copy_from_slice(&80u16.to_be_bytes());
    let post = "GET /client HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let bytes = [v2_header(1, 0x21, &addrs).as_slice(), post.as_bytes()].concat();
    let (answer, _) = exchange(addr, &bytes);
    assert_eq!(answer.statuses, [200], "{}", answer.text);
    assert_eq!(client_lines(&answer.text), ["[2001:db8::5]:5000"]);
    assert_eq!(wait_logged_clients(&log, 3)[2], "[2001:db8::5]:5000");

    // v2 LOCAL (the proxy's own health check): the peer's address.
    let bytes = [
        v2_header(0, 0x00, &[]).as_slice(),
        get_client(true).as_bytes(),
    ]
    .concat();
    let (answer, local) = exchange(addr, &bytes);
    assert_eq!(answer.statuses, [200], "{}", answer.text);
    assert_eq!(client_lines(&answer.text), [local.to_string()]);
    assert_eq!(wait_logged_clients(&log, 4)[3], local.to_string());

    // A header and request trickled one byte per segment.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let bytes = [
        b"PROXY TCP4 198.51.100.9 127.0.0.1 6000 80\r\n".as_slice(),
        get_client(true).as_bytes(),
    ]
    .concat();
    for b in &bytes {
        stream.write_all(&[*b]).unwrap();
        // Not a synchronisation: spaces the bytes so that each is its own segment.
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(client_lines(&text), ["198.51.100.9:6000"], "{text}");

    // Refused without an answer: no header, a malformed one, a v2 one with a bad command.
    let mut bad_v2 = v2_header(1, 0x11, &[0; 12]);
    bad_v2[12] = 0x2f;
    for bytes in [
        get_client(true).into_bytes(),
        [
            b"PROXY TCP4 1.2.3.999 127.0.0.1 1 2\r\n".as_slice(),
            get_client(true).as_bytes(),
        ]
        .concat(),
        [
            b"PROXY HTTP/1.1\r\n".as_slice(),
            get_client(true).as_bytes(),
        ]
        .concat(),
        [bad_v2.as_slice(), get_client(true).as_bytes()].concat(),
    ] {
        let (answer, _) = exchange(addr, &bytes);
        assert!(
            answer.closed && answer.text.is_empty(),
            "{}: answered {:?}",
            bytes.escape_ascii(),
            answer.text
        );
    }
    // One WARN for the first refusal, DEBUG after it.
    let warned = poll_until(Instant::now() + WAIT, || {
        stderr_count(&s, "PROXY protocol: closed") >= 4
    });
    assert!(warned, "{}", s.stderr_text());
    assert_eq!(stderr_count(&s, "further refusals at DEBUG"), 1);
}

#[test]
fn a_header_from_an_untrusted_source_is_refused() {
    // 127.0.0.1 is not in 10.0.0.0/8: its header is a spoof.
    let s = proxied("10.0.0.0/8");
    let bytes = [
        b"PROXY TCP4 10.1.2.3 127.0.0.1 4242 80\r\n".as_slice(),
        get_client(true).as_bytes(),
    ]
    .concat();
    let (answer, _) = exchange(s.addr(), &bytes);
    assert!(answer.closed && answer.text.is_empty(), "{:?}", answer.text);
    let said = s.wait_stderr_contains("not a trusted proxy", WAIT);
    assert!(said.is_some(), "{}", s.stderr_text());
}

#[test]
fn without_the_proxy_protocol_requests_carry_the_peer_when_something_reads_it() {
    // The access log turns the extension on: the fast path and hyper both set it.
    let s = Server::start_ready(&serve_args("1", &["--access-log"]));
    let (answer, local) = exchange(s.addr(), get_client(true).as_bytes());
    assert_eq!(
        client_lines(&answer.text),
        [local.to_string()],
        "{}",
        answer.text
    );
    let post = "GET /client HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (answer, local) = exchange(s.addr(), post.as_bytes());
    assert_eq!(
        client_lines(&answer.text),
        [local.to_string()],
        "{}",
        answer.text
    );
    drop(s);
    // Nothing reads it: not inserted (see Prefork::client_addr).
    let s = Server::start_ready(&serve_args("1", &[]));
    let (answer, _) = exchange(s.addr(), get_client(true).as_bytes());
    assert_eq!(client_lines(&answer.text), ["-"], "{}", answer.text);
}

#[test]
fn bad_trusted_ranges_are_refused_with_the_fix() {
    let (s, st) = run_to_exit(
        &serve_args(
            "1",
            &["--proxy-protocol", "--trusted-proxies", "10.0.0.0/33"],
        ),
        WAIT,
    );
    assert!(!st.success());
    let err = s.stderr_text();
    assert!(
        err.contains("invalid trusted proxy range \"10.0.0.0/33\"") && err.contains("0 to 32"),
        "{err}"
    );
    // --proxy-protocol without the ranges: the error says what is missing.
    let (s, st) = run_to_exit(&serve_args("1", &["--proxy-protocol"]), WAIT);
    assert!(!st.success());
    let err = s.stderr_text();
    assert!(
        err.contains("--trusted-proxies") || err.contains("needs at least one trusted proxy range"),
        "{err}"
    );
}

#[test]
fn on_a_tls_listener_the_header_comes_before_the_handshake() {
    let dir = TempDir::new("proxy-tls");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Server::start_ready(&serve_args(
        "1",
        &[
            "--proxy-protocol",
            "--trusted-proxies",
            "127.0.0.1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(s.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.4 127.0.0.1 7000 443\r\n")
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(get_client(true).as_bytes()).unwrap();
    let mut got = Vec::new();
    // The server closes without close_notify after `Connection: close`; what came is enough.
    let _ = tls.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(client_lines(&text), ["203.0.113.4:7000"], "{text}");
}
