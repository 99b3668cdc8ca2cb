//! Parsing a request head for the fast path: what it serves itself ([`Parsed::Complete`]),
//! what goes to hyper, and what no server should take ([`Parsed::Invalid`]); the two rules
//! forklift adds to httparse's, which [`screen`](super::screen) applies to the heads hyper
//! reads as well.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::http::body::Body;

/// The largest request head the fast path reads; a longer one goes to hyper (which accepts
/// up to about 400 KiB and answers 431 beyond).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most header fields the fast path parses; more go to hyper (which answers 431 past 100).
pub(crate) const MAX_HEADERS: usize = 64;

/// A request the fast path serves.
pub(crate) struct Head {
    pub(crate) req: Request<Body>,
    /// The client lets the connection stay open after the response.
    pub(crate) keep_alive: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub(super) te_trailers: bool,
}

// Returned by value once per request: boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Complete(Head),
    Partial,
    /// Not for the fast path: hyper takes the connection, with the buffer as it is.
    Handoff,
    /// Not for the fast path after all: `http` rejected a name, value or URI that httparse
    /// let through. These are the head's bytes, taken out of the buffer.
    Rejected(Bytes),
    /// A head no server should take, complete or not: httparse rejects a byte of it, a line
    /// ends in a bare LF, or it breaks the `Host` rule. Answered at once, as hyper answers a
    /// malformed head; the text says why.
    Invalid(&'static str),
}

/// Parses the head at the start of `buf`, taking it out of `buf` if the fast path serves it;
/// see the [`fast`](super) module doc for what it takes. A complete request gets the
/// worker's spare header map, if it has one (see [`recycle`]).
pub(crate) fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Offsets into the head (at most MAX_HEAD bytes: u16 holds them): name and value. Left
    // uninitialised past the fields the head has: zeroing all 64 cost ~50 instructions a
    // request (`bench/instructions`).
    let mut offsets = [const { MaybeUninit::<(u16, u16, u16, u16)>::uninit() }; MAX_HEADERS];
    let (len, method, path, version, count, keep_alive, te_trailers) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match req.parse_with_uninit_headers(bytes, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            // httparse stops at the first byte it rejects, so a bad head is known as soon as
            // that byte is in, blank line or not (hyper parses a partial head again only once
            // an end of head has arrived).
            Ok(httparse::Status::Partial) => {
                return match bare_lf(bytes, 0) {
                    Some(_) => Parsed::Invalid(BARE_LF),
                    None => Parsed::Partial,
                }
            }
            // hyper takes more fields (and answers 431 past its limit) and the HTTP/2 preface.
            Err(httparse::Error::TooManyHeaders) => return Parsed::Handoff,
            Err(_) if bytes.starts_with(H2_START) => return Parsed::Handoff,
            Err(_) => return Parsed::Invalid("malformed request head"),
        };
        if len > MAX_HEAD {
            // Too long for the fast path, so hyper's; one with a bare LF is answered here, as
            // the screen in front of hyper would have it answered.
            return match bare_lf(&bytes[..len], 0) {
                Some(_) => Parsed::Invalid(BARE_LF),
                None => Parsed::Handoff,
            };
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::Handoff;
        };
        let base = bytes.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        // Every LF in a head httparse took ends a line, so checking the CR before each LF
        // costs a byte per field: the one before each field's name, and the ends of the last
        // field and of the blank line. Empty lines httparse skipped may come first.
        let skipped = usize::from(offset(method.as_bytes()));
        let mut crlf =
            bytes[..len].ends_with(b"\r\n\r\n") && bare_lf(&bytes[..skipped], 0).is_none();
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Handoff;
        };
        let mut handoff = method == Method::CONNECT;
        let version = if version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let path_start = offset(path.as_bytes());
        let path = (path_start, path_start + path.len() as u16);
        let mut keep_alive = version == Version::HTTP_11;
        let mut te_trailers = false;
        let mut close = false;
        let mut hosts = 0;
        for (h, slot) in req.headers.iter().zip(offsets.iter_mut()) {
            let name = h.name.as_bytes();
            let ns = offset(name);
            crlf &= bytes[usize::from(ns) - 2] == b'\r';
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("content-length") || is("transfer-encoding") || is("expect") || is("upgrade") {
                handoff = true;
            } else if is("connection") {
                if close || bytes_list_token(h.value, "close") {
                    close = true;
                    keep_alive = false;
                } else if version == Version::HTTP_10 && bytes_list_token(h.value, "keep-alive") {
                    keep_alive = true;
                }
            } else if is("te") {
                te_trailers = te_trailers || bytes_list_token(h.value, "trailers");
            } else if is("host") {
                hosts += 1;
            }
            let vs = offset(h.value);
            slot.write((ns, ns + name.len() as u16, vs, vs + h.value.len() as u16));
        }
        if !crlf {
            return Parsed::Invalid(BARE_LF);
        }
        if let Some(why) = host_rule(version == Version::HTTP_11, hosts) {
            return Parsed::Invalid(why);
        }
        if handoff {
            return Parsed::Handoff;
        }
        let count = req.headers.len();
        (len, method, path, version, count, keep_alive, te_trailers)
    };
    let head = buf.split_to(len).freeze();
    let mut req = Request::new(Body::empty());
    let headers = req.headers_mut();
    // (A swap: the empty map `Request::new` made goes to the spare's place, not to a drop.)
    SPARE.with_borrow_mut(|spare| std::mem::swap(headers, spare));
    headers.reserve(count);
    // SAFETY: the loop over httparse's fields wrote the first `count` slots, one per field
    // (`count` is the number of fields, at most MAX_HEADERS, the length of both arrays).
    let offsets: &[(u16, u16, u16, u16)] =
        unsafe { std::slice::from_raw_parts(offsets.as_ptr().cast(), count) };
    for &(ns, ne, vs, ve) in offsets {
        let Ok(name) = HeaderName::from_bytes(&head[ns as usize..ne as usize]) else {
            return Parsed::Rejected(head);
        };
        // SAFETY: httparse took these bytes as a field value: HTAB, SP, visible ASCII and
        // obs-text (0x80-0xFF), which are the bytes a HeaderValue may hold. hyper builds its
        // values from httparse's the same way.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(head.slice(vs as usize..ve as usize))
        };
        headers.append(name, value);
    }
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0 as usize..path.1 as usize)) else {
        return Parsed::Rejected(head);
    };
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    Parsed::Complete(Head {
        req,
        keep_alive,
        te_trailers,
    })
}

/// The most fields a response's header map may have room for to be kept for a request:
/// beyond, it is freed (a response with many fields would pin its large map to the worker).
const RECYCLE_MAX: usize = 32;

thread_local! {
    /// A sent response's header map, cleared, for the worker's next request (see
    /// [`recycle`]); empty, without room, when there is none. One per worker thread, not per
    /// connection: a worker parses and answers one request at a time, and an idle connection
    /// holds no map.
    static SPARE: RefCell<HeaderMap> = RefCell::new(HeaderMap::new());
}

/// Keeps `headers` (a sent response's), cleared, as the worker's spare header map if it has
/// none, leaving an empty map in its place: the next request's fields then need no
/// allocation (`bench/instructions`). One with room for more than [`RECYCLE_MAX`] fields stays
/// where it is, to be dropped with its response.
pub(crate) fn recycle(headers: &mut HeaderMap) {
    if headers.capacity() == 0 || headers.capacity() > RECYCLE_MAX {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.capacity() == 0 {
            headers.clear();
            std::mem::swap(headers, spare);
        }
    });
}

/// What an HTTP/2 client sends first: a head that starts so is hyper's (HTTP/2, or its answer
/// to an HTTP/2 preface after HTTP/1 requests).
pub(super) const H2_START: &[u8] = b"PRI * HTTP/2";

/// Why a head with a bare LF is refused, for the log.
pub(super) const BARE_LF: &str = "a line of the request head ends in a bare LF";

/// Where the first LF not preceded by a CR is in `bytes`, `prev` being the byte before them.
///
/// RFC 9112 §2.2 lets a recipient take a bare LF as a line end, and httparse and hyper do;
/// forklift does not, since a front end that does not (llhttp, say) reads another head from
/// the same bytes: `Dummy: x\nContent-Length: 23` is one field to it and two to httparse,
/// which is how a request hides in a header.
pub(super) fn bare_lf(bytes: &[u8], mut prev: u8) -> Option<usize> {
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return Some(i);
        }
        prev = b;
    }
    None
}

/// RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without a `Host` field and to
/// any request with more than one. `None` if `hosts` fields are fine.
pub(super) fn host_rule(http11: bool, hosts: usize) -> Option<&'static str> {
    match hosts {
        0 if http11 => Some("an HTTP/1.1 request without Host"),
        0 | 1 => None,
        _ => Some("a request with more than one Host"),
    }
}

/// Whether a comma-separated field value lists `token` (ASCII case-insensitive); like
/// hyper, a value that is not visible ASCII lists nothing.
fn bytes_list_token(value: &[u8], token: &str) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf), buf)
    }

    #[test]
    fn a_get_is_parsed_and_taken_out_of_the_buffer() {
        let (parsed, rest) =
            head_of(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        let Parsed::Complete(head) = parsed else {
            panic!("not complete");
        };
        assert_eq!(head.req.method(), Method::GET);
        assert_eq!(head.req.uri(), "/a?b=c");
        assert_eq!(head.req.version(), Version::HTTP_11);
        assert_eq!(head.req.headers()["host"], "x");
        assert_eq!(head.req.headers().get_all("x-a").iter().count(), 2);
        assert!(head.keep_alive && !head.te_trailers);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let ka = |req: &[u8]| match head_of(req).0 {
            Parsed::Complete(h) => h.keep_alive,
            _ => panic!("not complete: {}", String::from_utf8_lossy(req)),
        };
        assert!(ka(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn what_the_fast_path_does_not_take_goes_to_hyper() {
        for req in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let (parsed, rest) = head_of(req);
            assert!(
                matches!(parsed, Parsed::Handoff),
                "{}",
                String::from_utf8_lossy(req)
            );
            assert_eq!(&rest[..], req, "the buffer is left whole for hyper");
        }
    }

    #[test]
    fn a_bad_head_is_invalid_as_soon_as_its_first_bad_byte_is_in() {
        for req in [
            // Complete.
            &b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header: x\r\nHost: x\r\n\r\n",
            b"GET\x00 / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            // Partial: no blank line will ever make these right.
            b"GET / HTTP/1.1\r\nHost: x\r\n\rZ",
            b"GET /two HTTP/1.1\r\nHost: example.com\r\n\x05\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7f",
            b"GET / HTTP/1.1\r\nHo\x00",
            b"GET / HTTP/2",
        ] {
            let (parsed, rest) = head_of(req);
            assert!(
                matches!(parsed, Parsed::Invalid(_)),
                "{}",
                req.escape_ascii()
            );
            assert_eq!(&rest[..], req);
        }
    }

    #[test]
    fn a_bare_lf_in_a_head_is_invalid_complete_or_not() {
        for req in [
            &b"GET / HTTP/1.1\nHost: x\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            // llhttp's "Missing CR between headers": a body, and a request inside it, to
            // whoever reads a bare LF as a line end.
            b"GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\n",
            // Partial.
            b"GET / HTTP/1.1\r\nHost: x\nX-A",
            b"GET / HTTP/1.1\n",
        ] {
            assert!(
                matches!(head_of(req).0, Parsed::Invalid(BARE_LF)),
                "{}",
                req.escape_ascii()
            );
        }
        // Empty lines first are fine when they end in CRLF (RFC 9112 §2.2).
        assert!(matches!(
            head_of(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").0,
            Parsed::Complete(_)
        ));
    }

    #[test]
    fn http11_needs_exactly_one_host_and_no_request_may_have_two() {
        let verdict = |req: &[u8]| match head_of(req).0 {
            Parsed::Complete(_) => "complete",
            Parsed::Handoff => "handoff",
            Parsed::Invalid(_) => "invalid",
            _ => "other",
        };
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n\r\n"), "invalid");
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            "invalid"
        );
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            "invalid"
        );
        assert_eq!(
            verdict(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            "invalid"
        );
        // Before the hand-off: hyper would serve these.
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            "invalid"
        );
        assert_eq!(verdict(b"CONNECT a:1 HTTP/1.1\r\n\r\n"), "invalid");
        assert_eq!(verdict(b"GET http://a/ HTTP/1.1\r\n\r\n"), "invalid");
        // Fine.
        assert_eq!(verdict(b"GET / HTTP/1.0\r\n\r\n"), "complete");
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n"), "complete");
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"), "complete");
        assert_eq!(
            verdict(b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
            "complete"
        );
    }

    #[test]
    fn too_many_fields_go_to_hyper() {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            req.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert!(matches!(head_of(&req).0, Parsed::Handoff));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for req in [
            &b"G"[..],
            b"GET / HT",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r",
        ] {
            assert!(matches!(head_of(req).0, Parsed::Partial));
        }
        // Not HTTP/1 as soon as the version says so: hyper reads the rest.
        assert!(matches!(head_of(b"PRI * HTTP/2").0, Parsed::Handoff));
    }
}
