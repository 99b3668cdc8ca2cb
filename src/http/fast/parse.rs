//! Parsing a request head for the fast path: what it serves itself ([`Parsed::Complete`]) and
//! what goes to hyper.

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
}

/// Parses the head at the start of `buf`, taking it out of `buf` if the fast path serves it;
/// see the [`fast`](super) module doc for what it takes.
pub(crate) fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Offsets into the head (at most MAX_HEAD bytes: u16 holds them): name and value.
    let mut offsets = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let (len, method, path, version, count, keep_alive, te_trailers) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match req.parse_with_uninit_headers(bytes, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Handoff,
        };
        if len > MAX_HEAD {
            return Parsed::Handoff;
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::Handoff;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Handoff;
        };
        if method == Method::CONNECT {
            return Parsed::Handoff;
        }
        let version = if version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let base = bytes.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        let path_start = offset(path.as_bytes());
        let path = (path_start, path_start + path.len() as u16);
        let mut keep_alive = version == Version::HTTP_11;
        let mut te_trailers = false;
        let mut close = false;
        for (h, slot) in req.headers.iter().zip(offsets.iter_mut()) {
            let name = h.name.as_bytes();
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("content-length") || is("transfer-encoding") || is("expect") || is("upgrade") {
                return Parsed::Handoff;
            }
            if is("connection") {
                if close || bytes_list_token(h.value, "close") {
                    close = true;
                    keep_alive = false;
                } else if version == Version::HTTP_10 && bytes_list_token(h.value, "keep-alive") {
                    keep_alive = true;
                }
            } else if is("te") {
                te_trailers = te_trailers || bytes_list_token(h.value, "trailers");
            }
            let ns = offset(name);
            let vs = offset(h.value);
            *slot = (ns, ns + name.len() as u16, vs, vs + h.value.len() as u16);
        }
        let count = req.headers.len();
        (len, method, path, version, count, keep_alive, te_trailers)
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &offsets[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize]);
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Parsed::Rejected(head);
        };
        headers.append(name, value);
    }
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0 as usize..path.1 as usize)) else {
        return Parsed::Rejected(head);
    };
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Parsed::Complete(Head {
        req,
        keep_alive,
        te_trailers,
    })
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
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
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
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET\x00 / HTTP/1.1\r\n\r\n",
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
    fn too_many_fields_go_to_hyper() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            req.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert!(matches!(head_of(&req).0, Parsed::Handoff));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for req in [&b"G"[..], b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert!(matches!(head_of(req).0, Parsed::Partial));
        }
        // Not HTTP/1 as soon as the version says so: hyper reads the rest.
        assert!(matches!(head_of(b"PRI * HTTP/2").0, Parsed::Handoff));
    }
}
