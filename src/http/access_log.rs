//! Optional access log: one line per request, when its response body ends, with the client
//! address, method, path, HTTP version, status, body bytes sent, duration, request id, user
//! agent, referer, TLS version and the worker. Off by default; see
//! [`Prefork::access_log`](crate::Prefork::access_log).
//!
//! The lines go through `tracing` (target `forklift::access`, level INFO, inside the worker's
//! span), or, with [`Prefork::access_log_file`](crate::Prefork::access_log_file), straight
//! to a file in the [`LogFormat`] asked for, each with one write(2) on an O_APPEND fd that a
//! reopen (USR1) swaps in place (`sys/log_file.rs`). Each request gets an id: a sane incoming
//! `x-request-id`, or a generated one; either is set on the response too.
//!
//! None of this runs when the access log is off: the wrapper is not there, and the
//! connection code records the TLS version only for it.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue, REFERER, USER_AGENT};
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::http::client::ClientAddr;
use crate::sys::log_file::LogFile;

/// The form of the log lines forklift writes itself (the access log to a file): plain text,
/// or one JSON object a line for log shippers. The `forklift` command uses the same choice
/// (`--log-format`) for its tracing output, master and workers alike.
///
/// ```
/// let server = forklift::Prefork::new()
///     .access_log_file("/var/log/forklift/access.log")
///     .log_format(forklift::LogFormat::Json);
/// # let _ = server;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// `key=value` text, as tracing-subscriber's default formatter writes it.
    #[default]
    Text,
    /// One JSON object a line, shaped as tracing-subscriber's JSON formatter writes it
    /// (`timestamp`, `level`, `fields`, `target`, `span`).
    Json,
}

/// The TLS version of a request's connection (`TLSv1.3`), a request extension the connection
/// code inserts for the access log only.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlsVersion(pub &'static str);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where a worker's access lines go, and its request-id counter: one per worker.
#[derive(Debug)]
pub(crate) struct AccessLogWriter {
    /// `None`: through `tracing`.
    file: Option<LogFile>,
    format: LogFormat,
    /// The worker's id and pid, which a file's lines carry (tracing's carry its span).
    worker: (usize, u32),
    /// Random per worker: generated request ids are this and a counter.
    id_prefix: u64,
    next_id: Cell<u64>,
}

impl AccessLogWriter {
    /// The writer of worker `worker_id`: to `file` (opened now) or through `tracing`.
    pub(crate) fn new(
        file: Option<&Path>,
        format: LogFormat,
        worker_id: usize,
    ) -> io::Result<AccessLogWriter> {
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(AccessLogWriter {
            file: file.map(LogFile::open).transpose()?,
            format,
            worker: (worker_id, pid),
            id_prefix: mix(nanos ^ (u64::from(pid) << 40) ^ worker_id as u64),
            next_id: Cell::new(0),
        })
    }

    /// Reopens the file (after logrotate renamed it); nothing for `tracing`.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }

    /// The request's id: its `x-request-id` if sane (1 to 128 of `A-Za-z0-9-_.:+/=@`, so it
    /// cannot break a log line), else 32 new hex digits, unique per worker and counter.
    fn request_id(&self, incoming: Option<&HeaderValue>) -> HeaderValue {
        if let Some(id) = incoming.filter(|v| sane_request_id(v.as_bytes())) {
            return id.clone();
        }
        let n = self.next_id.get();
        self.next_id.set(n.wrapping_add(1));
        let mut id = [0u8; 32];
        for (i, digit) in id.iter_mut().enumerate() {
            let word = if i < 16 { self.id_prefix } else { n };
            let nibble = (word >> ((15 - i % 16) * 4)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
    }
}

fn sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// splitmix64's finaliser: spreads the bits of a seed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Wraps a service so each request is logged when its response body ends.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S> {
    pub inner: S,
    pub writer: Rc<AccessLogWriter>,
}

impl<S, B> Service<Request<crate::Body>> for AccessLog<S>
where
    S: Service<Request<crate::Body>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<LoggedBody<B>>;
    type Error = S::Error;
    type Future = LoggedFuture<S::Future>;

    fn call(&self, req: Request<crate::Body>) -> Self::Future {
        let headers = req.headers();
        let entry = Entry {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            version: req.version(),
            client: req.extensions().get::<ClientAddr>().map(|c| c.0),
            tls: req.extensions().get::<TlsVersion>().map(|t| t.0),
            user_agent: headers.get(USER_AGENT).cloned(),
            referer: headers.get(REFERER).cloned(),
            request_id: self.writer.request_id(headers.get(X_REQUEST_ID)),
            start: Instant::now(),
            status: StatusCode::OK,
            bytes: 0,
            file: None,
            writer: self.writer.clone(),
        };
        LoggedFuture {
            inner: self.inner.call(req),
            entry: Some(entry),
        }
    }
}

struct Entry {
    method: Method,
    path: String,
    version: Version,
    client: Option<SocketAddr>,
    tls: Option<&'static str>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    request_id: HeaderValue,
    start: Instant,
    status: StatusCode,
    bytes: u64,
    /// A file the server may send without reading the body (`http/fast/sendfile.rs`).
    file: Option<crate::files::FileRegion>,
    writer: Rc<AccessLogWriter>,
}

impl Entry {
    fn log(&self, outcome: &str) {
        let bytes = self.bytes + self.file.as_ref().map_or(0, |f| f.0.sent_directly());
        let duration_ms = self.start.elapsed().as_secs_f64() * 1e3;
        let Some(file) = &self.writer.file else {
            tracing::info!(
                target: "forklift::access",
                method = %self.method,
                path = %self.path,
                status = self.status.as_u16(),
                bytes,
                duration_ms,
                client = %Dash(self.client),
                version = ?self.version,
                request_id = header_str(Some(&self.request_id)).as_ref(),
                user_agent = header_str(self.user_agent.as_ref()).as_ref(),
                referer = header_str(self.referer.as_ref()).as_ref(),
                tls = self.tls.unwrap_or("-"),
                "{outcome}"
            );
            return;
        };
        let line = match self.writer.format {
            LogFormat::Text => self.text_line(outcome, bytes, duration_ms),
            LogFormat::Json => self.json_line(outcome, bytes, duration_ms),
        };
        if let Err(e) = file.write_line(line.as_bytes()) {
            tracing::debug!("access log write failed: {e}");
        }
    }

    /// As tracing-subscriber's text formatter writes the event (fields in the same order),
    /// with strings quoted and JSON-escaped.
    fn text_line(&self, outcome: &str, bytes: u64, duration_ms: f64) -> String {
        let (id, pid) = self.writer.worker;
        let mut line = String::with_capacity(256);
        push_timestamp(&mut line, SystemTime::now());
        line.push_str("  INFO worker{id=");
        push_u64(&mut line, id as u64);
        line.push_str(" pid=");
        push_u64(&mut line, u64::from(pid));
        line.push_str("}: forklift::access: ");
        line.push_str(outcome);
        line.push_str(" method=");
        line.push_str(self.method.as_str());
        line.push_str(" path=");
        json_str(&mut line, &self.path);
        line.push_str(" status=");
        push_u64(&mut line, u64::from(self.status.as_u16()));
        line.push_str(" bytes=");
        push_u64(&mut line, bytes);
        line.push_str(" duration_ms=");
        push_ms(&mut line, duration_ms);
        line.push_str(" client=");
        push_client(&mut line, self.client);
        line.push_str(" version=");
        line.push_str(version_str(self.version));
        line.push_str(" request_id=");
        json_str(&mut line, &header_str(Some(&self.request_id)));
        line.push_str(" user_agent=");
        json_str(&mut line, &header_str(self.user_agent.as_ref()));
        line.push_str(" referer=");
        json_str(&mut line, &header_str(self.referer.as_ref()));
        line.push_str(" tls=");
        line.push_str(self.tls.unwrap_or("-"));
        line.push('\n');
        line
    }

    /// As tracing-subscriber's JSON formatter: the event's fields under `fields`, the
    /// worker's span under `span`.
    fn json_line(&self, outcome: &str, bytes: u64, duration_ms: f64) -> String {
        let (id, pid) = self.writer.worker;
        let mut line = String::with_capacity(384);
        line.push_str("{\"timestamp\":\"");
        push_timestamp(&mut line, SystemTime::now());
        line.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":");
        json_str(&mut line, outcome);
        line.push_str(",\"method\":");
        json_str(&mut line, self.method.as_str());
        line.push_str(",\"path\":");
        json_str(&mut line, &self.path);
        line.push_str(",\"status\":");
        push_u64(&mut line, u64::from(self.status.as_u16()));
        line.push_str(",\"bytes\":");
        push_u64(&mut line, bytes);
        line.push_str(",\"duration_ms\":");
        push_ms(&mut line, duration_ms);
        line.push_str(",\"client\":\"");
        push_client(&mut line, self.client);
        line.push_str("\",\"version\":\"");
        line.push_str(version_str(self.version));
        line.push_str("\",\"request_id\":");
        json_str(&mut line, &header_str(Some(&self.request_id)));
        line.push_str(",\"user_agent\":");
        json_str(&mut line, &header_str(self.user_agent.as_ref()));
        line.push_str(",\"referer\":");
        json_str(&mut line, &header_str(self.referer.as_ref()));
        line.push_str(",\"tls\":");
        json_str(&mut line, self.tls.unwrap_or("-"));
        line.push_str("},\"target\":\"forklift::access\",\"span\":{\"id\":");
        push_u64(&mut line, id as u64);
        line.push_str(",\"pid\":");
        push_u64(&mut line, u64::from(pid));
        line.push_str(",\"name\":\"worker\"}}\n");
        line
    }
}

// The file's lines are built with these rather than `write!`: the formatting machinery
// costs more per request than the rest of the line.

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Milliseconds with three decimals (microseconds), as `0.123`.
fn push_ms(out: &mut String, ms: f64) {
    let micros = (ms * 1e3).round() as u64;
    push_u64(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

/// `n` with leading zeros to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// The client's address and port, or `-`; an IPv6 address in brackets.
fn push_client(out: &mut String, client: Option<SocketAddr>) {
    match client {
        Some(addr) => {
            let _ = write!(out, "{addr}");
        }
        None => out.push('-'),
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

/// A value, or `-` when there is none.
struct Dash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A header's value as text (bytes outside UTF-8 replaced), or `-`.
fn header_str(v: Option<&HeaderValue>) -> Cow<'_, str> {
    match v {
        Some(v) => String::from_utf8_lossy(v.as_bytes()),
        None => Cow::Borrowed("-"),
    }
}

/// Appends `s` as a JSON string: quoted, with quotes, backslashes and control characters
/// escaped (so a header cannot end a log line or forge a field).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

thread_local! {
    /// The last second formatted, `2026-11-30T14:35:06`: a busy worker formats the date once
    /// a second, not once a line.
    static SECOND: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new()))
    };
}

/// Appends `t` in RFC 3339, UTC, to the microsecond: `2026-11-30T14:35:06.123456Z`.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, date_time(secs));
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    push_padded(out, u64::from(d.subsec_micros()), 6);
    out.push('Z');
}

/// `secs` since the epoch as `2026-11-30T14:35:06` (UTC).
fn date_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    pub(crate) struct LoggedFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Entry>,
    }
}

impl<F, B, E> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<LoggedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut entry = this.entry.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(mut resp) => {
                entry.status = resp.status();
                resp.headers_mut()
                    .insert(X_REQUEST_ID, entry.request_id.clone());
                entry.file = resp.extensions().get().cloned();
                Ok(resp.map(|body| LoggedBody {
                    inner: body,
                    entry: Some(entry),
                }))
            }
            Err(e) => {
                entry.status = StatusCode::INTERNAL_SERVER_ERROR;
                entry.log("handler error");
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes sent and logs the request when it ends.
    pub(crate) struct LoggedBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        entry: Option<Entry>,
    }

    impl<B> PinnedDrop for LoggedBody<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(entry) = this.entry.take() {
                // hyper stops polling a body that says it has ended; one that has not, and
                // is dropped anyway, lost its client.
                if this.inner.is_end_stream() {
                    entry.log("request");
                } else {
                    entry.log("response cut short");
                }
            }
        }
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let (Some(Ok(f)), Some(entry)) = (&frame, this.entry.as_mut()) {
            if let Some(data) = f.data_ref() {
                entry.bytes += bytes::Buf::remaining(data) as u64;
            }
        }
        if frame.is_none() || this.inner.is_end_stream() {
            if let Some(entry) = this.entry.take() {
                entry.log("request");
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339(t: SystemTime) -> String {
        let mut out = String::new();
        push_timestamp(&mut out, t);
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_796_049_306_123_456);
        assert_eq!(rfc3339(t), "2026-11-30T14:35:06.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn json_strings_escape_what_could_break_a_line() {
        let mut out = String::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        out.clear();
        json_str(&mut out, "plain/1.0 (x)");
        assert_eq!(out, r#""plain/1.0 (x)""#);
    }

    #[test]
    fn numbers_are_written_as_write_would() {
        let mut out = String::new();
        push_ms(&mut out, 12.3456);
        out.push(' ');
        push_ms(&mut out, 0.0004);
        out.push(' ');
        push_padded(&mut out, 42, 6);
        assert_eq!(out, "12.346 0.000 000042");
        assert_eq!(version_str(Version::HTTP_2), "HTTP/2.0");
    }

    #[test]
    fn generated_request_ids_are_the_prefix_then_the_counter_in_hex() {
        let w = AccessLogWriter::new(None, LogFormat::Text, 0).unwrap();
        w.next_id.set(0xabc);
        let id = w.request_id(None);
        assert_eq!(id, format!("{:016x}{:016x}", w.id_prefix, 0xabc).as_str());
    }

    #[test]
    fn incoming_request_ids_are_kept_only_when_sane() {
        let w = AccessLogWriter::new(None, LogFormat::Text, 0).unwrap();
        let kept = HeaderValue::from_static("abc-123_x.y");
        assert_eq!(w.request_id(Some(&kept)), kept);
        let bad = HeaderValue::from_static("has space");
        let a = w.request_id(Some(&bad));
        let b = w.request_id(None);
        assert_ne!(a, bad);
        assert_ne!(a, b, "generated ids differ");
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!sane_request_id(&[b'a'; 129]));
        assert!(!sane_request_id(b""));
    }
}
