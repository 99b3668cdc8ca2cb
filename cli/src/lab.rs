//! Test-only routes, served with the hidden `forklift serve --lab-routes` flag: `/lab?...`
//! builds a response from its query, so forklift's tests can compare how the HTTP/1 fast
//! path and hyper frame unusual responses (1xx, 204 and 304 statuses, a handler's own
//! `Content-Length`, `Transfer-Encoding` or `Connection`, streamed bodies, trailers, bodies
//! that fail or do not match the size they announce). Any method; never on by default.
//!
//! Query parameters, all optional, values percent-decoded:
//!
//! - `status=N`: the status code (default 200).
//! - `hdr=name:value`: a response header, repeatable, kept in order. `cl=V`, `te=V`,
//!   `conn=V` and `trailer=V` add `content-length`, `transfer-encoding`, `connection` and
//!   `trailer` headers the same way.
//! - `body=full|stream|empty`: one data frame whose size the body announces (default);
//!   `chunks` frames of unknown total size; no frame, the body ends at once.
//! - `size=N`: bytes per frame (default 5); `chunks=N`: frames of `stream` (default 3).
//!   Frame i is made of the letter `a + i`.
//! - `hint=N|none`: announce an exact size of N bytes (or none) whatever the frames hold.
//!   A numeric `content-length` header that differs from the exact size makes the body
//!   announce no size: hyper's debug builds assert that the two agree (release builds send
//!   the header and frame by the size), and the tests compare against a debug build.
//! - `eos=0`: never report the end of the stream ahead (`is_end_stream` false even when
//!   no frame is left).
//! - `fail=N`: after N data frames, fail with an error.
//! - `trailers=name:value,...`: a trailers frame after the data.
//! - `pending=1`: every frame is Pending once before it is ready; `delay=MS`: each frame
//!   comes after this many milliseconds.
//! - `version=1.0|2`: the response's `http::Version` (a handler may set one).
//!
//! `/lab/leak?mib=N` keeps N MiB (at most 1024) allocated and written to for the rest of the
//! worker's life, so its resident memory grows as a leak's would: what the tests of
//! `--max-worker-memory` use. It answers `leaked N MiB` with the worker's pid in
//! `x-forklift-worker`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, SizeHint};

use forklift::BoxError;

/// The body of a lab response.
pub(crate) type LabBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body `forklift serve` answers with: the demo's, or a lab route's.
pub(crate) type DemoOrLab = Either<Full<Bytes>, LabBody>;

/// Serves `req` with a lab route if its path is `/lab` or `/lab/leak`, else with `demo`.
pub(crate) async fn route<F, Fut>(
    req: Request<forklift::Body>,
    demo: F,
) -> Result<Response<DemoOrLab>, Infallible>
where
    F: FnOnce(Request<forklift::Body>) -> Fut,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
{
    if let Some(resp) = lab(&req) {
        return Ok(resp.map(Either::Right));
    }
    demo(req).await.map(|resp| resp.map(Either::Left))
}

/// The response `/lab?...` or `/lab/leak?...` asks for (see the module doc); `None` for any
/// other path.
pub(crate) fn lab<B>(req: &Request<B>) -> Option<Response<LabBody>> {
    if req.uri().path() == "/lab/leak" {
        return Some(leak(req));
    }
    if req.uri().path() != "/lab" {
        return None;
    }
    let params = parse_query(req.uri().query().unwrap_or(""));
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let num = |name: &str, default: u64| {
        get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let status = get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let size = num("size", 5).min(1 << 20) as usize;
    let mut frames = VecDeque::new();
    let (count, mut hint) = match get("body").as_deref() {
        Some("empty") => (0, SizeHint::with_exact(0)),
        Some("stream") => (num("chunks", 3).min(1000), SizeHint::default()),
        _ => (1, SizeHint::with_exact(size as u64)),
    };
    let fail = get("fail").and_then(|v| v.parse::<u64>().ok());
    for i in 0..count {
        if fail == Some(i) {
            break;
        }
        let letter = b'a' + (i % 26) as u8;
        frames.push_back(Ok(Frame::data(Bytes::from(vec![letter; size]))));
    }
    if fail.is_some_and(|n| n <= count) {
        frames.push_back(Err(BoxError::from("lab: the body failed (fail=N)")));
    } else if let Some(list) = get("trailers") {
        let mut trailers = HeaderMap::new();
        for item in list.split(',') {
            if let Some((name, value)) = header(item.as_bytes()) {
                trailers.append(name, value);
            }
        }
        frames.push_back(Ok(Frame::trailers(trailers)));
    }
    match get("hint").as_deref() {
        Some("none") => hint = SizeHint::default(),
        Some(n) => {
            if let Ok(n) = n.parse::<u64>() {
                hint = SizeHint::with_exact(n);
            }
        }
        None => {}
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    match get("version").as_deref() {
        Some("1.0") => *resp.version_mut() = Version::HTTP_10,
        Some("2") => *resp.version_mut() = Version::HTTP_2,
        _ => {}
    }
    for (key, value) in &params {
        let name: &[u8] = match key.as_str() {
            "cl" => b"content-length",
            "te" => b"transfer-encoding",
            "conn" => b"connection",
            "trailer" => b"trailer",
            "hdr" => {
                if let Some((name, value)) = header(value) {
                    resp.headers_mut().append(name, value);
                }
                continue;
            }
            _ => continue,
        };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            resp.headers_mut().append(name, value);
        }
    }
    // See the module doc: hyper's debug builds panic on a length header that disagrees.
    let disagrees = resp
        .headers()
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u64>().ok())
        .any(|n| hint.exact().is_some_and(|exact| exact != n));
    if disagrees {
        hint = SizeHint::default();
    }
    let body = Frames {
        frames,
        hint,
        ends_early: get("eos").as_deref() != Some("0"),
        pending: get("pending").as_deref() == Some("1"),
        parked: false,
        delay: get("delay")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms.min(2000))),
        sleep: None,
    };
    Some(resp.map(|()| body.boxed_unsync()))
}

/// `/lab/leak?mib=N`: see the module doc.
fn leak<B>(req: &Request<B>) -> Response<LabBody> {
    let params = parse_query(req.uri().query().unwrap_or(""));
    let mib = params
        .iter()
        .find(|(k, _)| k == "mib")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .min(1024);
    // Written, not just allocated: zeroed pages would not be resident until touched.
    Vec::leak(vec![0x5a_u8; mib << 20]);
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("leaked {mib} MiB\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-forklift-worker"),
        HeaderValue::from(std::process::id()),
    );
    resp
}

/// `name:value` as a header, if both are valid.
fn header(item: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = item.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&item[..colon]).ok()?;
    let value = HeaderValue::from_bytes(&item[colon + 1..]).ok()?;
    Some((name, value))
}

/// The query's `key=value` pairs in order, values percent-decoded.
fn parse_query(query: &str) -> Vec<(String, Vec<u8>)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v.as_bytes()))
        })
        .collect()
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// A body of prepared frames (see the module doc).
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    hint: SizeHint,
    /// `is_end_stream` is true once no frame is left (false: never).
    ends_early: bool,
    /// Each frame is Pending once first.
    pending: bool,
    /// The next frame has been Pending once.
    parked: bool,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.frames.is_empty() {
            return Poll::Ready(None);
        }
        if let Some(delay) = this.delay {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.pending && !this.parked {
            this.parked = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.parked = false;
        Poll::Ready(this.frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.ends_early && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded_in_order() {
        let q = parse_query("hdr=a:b%2C%20c&te=gzip&x&hdr=%zz");
        assert_eq!(
            q,
            vec![
                ("hdr".to_string(), b"a:b, c".to_vec()),
                ("te".to_string(), b"gzip".to_vec()),
                ("x".to_string(), Vec::new()),
                ("hdr".to_string(), b"%zz".to_vec()),
            ]
        );
        assert_eq!(percent_decode(b"%4"), b"%4");
        assert_eq!(percent_decode(b"a%41"), b"aA");
    }

    #[test]
    fn lab_builds_the_response_asked_for() {
        let req = Request::get("/lab?status=204&cl=0&body=stream&chunks=2&trailer=x-t")
            .body(())
            .unwrap();
        let resp = lab(&req).unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["content-length"], "0");
        assert_eq!(resp.headers()["trailer"], "x-t");
        assert_eq!(resp.body().size_hint().exact(), None);
        assert!(lab(&Request::get("/").body(()).unwrap()).is_none());
    }
}
