//! Entry points for forklift's own tools, re-exported hidden from the crate root: the fuzz
//! targets (`fuzz/`) and the CLI's single-process baseline. Not part of the API; they may
//! change at any time.

pub use crate::http::__serve_connection as serve_connection;

/// Sets on `listener` what `Prefork::defer_accept` sets on the workers' listeners (for the
/// CLI's single-process baseline).
pub fn defer_accept(listener: &std::net::TcpListener) {
    crate::http::accept::defer_accept_on(listener)
}

/// The parsers of input that crosses a process boundary, for the fuzz targets.
pub mod fuzz {
    /// `LISTEN_PID`/`LISTEN_FDS` as a worker or master reads them.
    pub fn listen_fds(
        pid: Option<&str>,
        fds: Option<&str>,
        me: u32,
    ) -> Result<Option<usize>, String> {
        crate::protocol::listen_fds(pid, fds, me)
    }

    /// The worker-to-master status channel: returns how many messages a buffer held.
    pub fn status_messages(bytes: &[u8]) -> usize {
        let mut buf = bytes.to_vec();
        crate::protocol::Message::drain(&mut buf).len()
    }

    /// A `LISTEN_FDNAMES` entry of a binary upgrade.
    pub fn fd_name(name: &str) -> Option<(usize, Option<usize>)> {
        crate::sys::listener::parse_fd_name(name)
    }

    /// What the HTTP/1 fast path makes of bytes a client sent.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Http1Head {
        /// A request it serves, taking `len` bytes: method, URI, header fields.
        Request {
            /// Bytes the head took.
            len: usize,
            /// The method.
            method: String,
            /// The request target.
            uri: String,
            /// How many header fields.
            fields: usize,
            /// Whether the connection stays open after it.
            keep_alive: bool,
        },
        /// Not complete yet.
        Partial,
        /// For hyper, with the bytes left as they were.
        Handoff,
        /// Answered 400 at once, whatever follows (a bad byte, a bare LF, the `Host` rule).
        Invalid,
    }

    /// What the screen in front of hyper makes of bytes a client sent, read in pieces that
    /// end at `cuts`: `None` if it lets them through, else where it puts its NUL (an index
    /// into `bytes`) and why it rejects a head.
    pub fn http1_screen(bytes: &[u8], cuts: &[usize]) -> Option<(Option<usize>, &'static str)> {
        crate::http::fast::Screen::default().feed_reads(bytes, cuts)
    }

    /// What a worker taking the PROXY protocol makes of the first bytes of a connection:
    /// `Ok(Some((len, client)))` for a complete header of `len` bytes (`client` empty when it
    /// names none), `Ok(None)` while more bytes may complete it, `Err` for bytes no more
    /// input can make a header.
    pub fn proxy_header(bytes: &[u8]) -> Result<Option<(usize, String)>, String> {
        match crate::http::proxy::parse(bytes) {
            crate::http::proxy::Header::Complete { len, client } => Ok(Some((
                len,
                client.map(|c| c.to_string()).unwrap_or_default(),
            ))),
            crate::http::proxy::Header::Partial => Ok(None),
            crate::http::proxy::Header::Invalid(why) => Err(why),
        }
    }

    /// Parses the head at the start of `bytes` as a worker's fast path does.
    pub fn http1_head(bytes: &[u8]) -> Http1Head {
        let mut buf = bytes::BytesMut::from(bytes);
        match crate::http::fast::parse(&mut buf) {
            crate::http::fast::Parsed::Complete(head) => Http1Head::Request {
                len: bytes.len() - buf.len(),
                method: head.req.method().to_string(),
                uri: head.req.uri().to_string(),
                fields: head.req.headers().len(),
                keep_alive: head.keep_alive,
            },
            crate::http::fast::Parsed::Partial => Http1Head::Partial,
            crate::http::fast::Parsed::Invalid(_) => Http1Head::Invalid,
            crate::http::fast::Parsed::Handoff | crate::http::fast::Parsed::Rejected(_) => {
                Http1Head::Handoff
            }
        }
    }
}

/// What `forklift check` verifies without binding or starting anything.
pub mod check {
    /// Reads PEM certificate chains and private keys (paired by position) as a server would,
    /// and checks that each key matches its certificate, that several certificates name
    /// distinct hosts for SNI, and that the ticket key file holds a secret.
    #[cfg(feature = "tls")]
    pub fn tls_files(
        pairs: &[(&std::path::Path, &std::path::Path)],
        ticket_key_file: Option<&std::path::Path>,
    ) -> crate::Result<()> {
        crate::http::tls::TlsSettings {
            certs: pairs
                .iter()
                .map(|(cert, key)| crate::http::tls::TlsSource::Files {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                })
                .collect(),
            ticket_key_file: ticket_key_file.map(std::path::Path::to_path_buf),
            ..Default::default()
        }
        .check()
    }

    /// Checks that the pid file can be written, as `serve` and `run` do before binding (a
    /// temporary file beside it is created and removed); the error is theirs.
    pub fn pid_file(path: &std::path::Path) -> crate::Result<()> {
        crate::sys::pid_file::check(path).map_err(|e| crate::master::logs::pid_file_error(path, e))
    }

    /// Checks that a log file (`what`: "error log", "access log") can be opened for
    /// appending, as `serve` and `run` do before binding, but without creating it; the error
    /// is theirs.
    pub fn log_file(what: &str, path: &std::path::Path) -> crate::Result<()> {
        crate::sys::log_file::check(path)
            .map_err(|e| crate::master::logs::log_file_error(what, path, e))
    }

    /// Looks up the user and group workers would run as: their (uid, gid).
    pub fn credentials(
        user: Option<&str>,
        group: Option<&str>,
    ) -> crate::Result<Option<(u32, u32)>> {
        crate::sys::process::resolve_credentials(user, group)
    }
}
