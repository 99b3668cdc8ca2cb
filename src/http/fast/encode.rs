//! Encoding a response for the fast path as hyper encodes it: the status line and headers
//! with the body's framing, chunk sizes and trailers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

pub(super) struct Framed {
    pub(super) kind: Framing,
    /// The connection closes after this response.
    pub(super) last: bool,
    /// Trailer fields the response declared (chunked responses only).
    pub(super) trailers: Option<Vec<HeaderName>>,
}

/// hyper's automatic answer to a malformed request head, byte for byte: a 400 without a
/// body, in HTTP/1.0 (which closes by default) if the request before it was HTTP/1.0, else
/// in HTTP/1.1 with `connection: close`. The connection closes after it.
pub(super) fn encode_bad_request(last_version: Version, dst: &mut Vec<u8>) {
    dst.extend_from_slice(if last_version == Version::HTTP_10 {
        b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: "
    } else {
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: "
    });
    crate::http::date::extend(dst);
    dst.extend_from_slice(b"\r\n\r\n");
}

/// Encodes the status line and headers as hyper does (see the [`fast`](super) module doc)
/// into `dst`.
pub(super) fn encode_head(
    parts: &mut http::response::Parts,
    length: Option<Option<u64>>,
    method: &Method,
    req_version: Version,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<Framed, &'static str> {
    let status = parts.status;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        // A service cannot send an interim response: hyper answers this 500 in its place,
        // to any client, and closes.
        tracing::warn!("response with 1xx status code not supported");
        dst.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\n");
        if method != Method::HEAD {
            dst.extend_from_slice(b"content-length: 0\r\n");
        }
        dst.extend_from_slice(b"date: ");
        crate::http::date::extend(dst);
        dst.extend_from_slice(b"\r\n\r\n");
        return Ok(Framed {
            kind: Framing::Length(0),
            last: true,
            trailers: None,
        });
    }
    // A 101 that is not an upgrade (upgrades go to hyper) ends the connection, as in hyper.
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;
    // The status line's version: an HTTP/1.0 client gets HTTP/1.0; otherwise the response's.
    let http10 = if req_version == Version::HTTP_10 {
        if !has_token(&parts.headers, "keep-alive") {
            match parts.version {
                Version::HTTP_10 => last = true,
                Version::HTTP_11 if keep_alive => {
                    parts
                        .headers
                        .append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
                }
                _ => {}
            }
        }
        true
    } else {
        if !keep_alive && !has_token(&parts.headers, "close") {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("close"));
        }
        parts.version == Version::HTTP_10
    };
    if status == StatusCode::OK && !http10 {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let can_chunk = !http10 && can_have_body(method, status);
    let mut kind = None;
    let mut wrote_date = false;
    let mut trailers: Option<Vec<HeaderName>> = None;
    let mut joined: Option<HeaderName> = None; // a special header whose line is still open
    let mut te_needs_chunked = false;
    for (name, value) in parts.headers.iter() {
        let special = matches!(
            *name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONNECTION
                | header::TRAILER
        );
        if joined.as_ref().is_some_and(|open| open != name) {
            end_joined(dst, &mut joined, te_needs_chunked);
        }
        if !special {
            if *name == header::DATE {
                wrote_date = true;
            }
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
            continue;
        }
        let continuing = joined.as_ref() == Some(name);
        match *name {
            header::CONTENT_LENGTH => {
                if kind.is_some() && !continuing {
                    return Err("a Content-Length next to another length or Transfer-Encoding");
                }
                match length {
                    // Trust the header as hyper does; later values of it are dropped.
                    Some(Some(n)) if !continuing => {
                        kind = Some(Framing::Length(n));
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        joined = Some(name.clone());
                    }
                    Some(Some(_)) => {}
                    Some(None) => {
                        let n =
                            parse_digits(value.as_bytes()).ok_or("an invalid Content-Length")?;
                        match kind {
                            Some(Framing::Length(prev)) if prev != n => {
                                return Err("Content-Length headers that differ")
                            }
                            Some(_) => {}
                            None => {
                                kind = Some(Framing::Length(n));
                                dst.extend_from_slice(b"content-length: ");
                                dst.extend_from_slice(value.as_bytes());
                                joined = Some(name.clone());
                            }
                        }
                    }
                    // A HEAD response may state the length its GET would have.
                    None if method == Method::HEAD && !continuing => {
                        kind = Some(Framing::Length(0));
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        joined = Some(name.clone());
                    }
                    None => {}
                }
            }
            header::TRANSFER_ENCODING => {
                if kind.is_some() && !continuing {
                    return Err("a Transfer-Encoding next to a Content-Length");
                }
                if !can_chunk {
                    continue;
                }
                kind = Some(Framing::Chunked);
                te_needs_chunked = !last_token_is(value, "chunked");
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"transfer-encoding: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
            }
            header::CONNECTION => {
                if token_in(value, "close") {
                    last = true;
                }
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"connection: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
            }
            _ => {
                // Trailer
                if !can_chunk {
                    continue;
                }
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"trailer: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
                if let Ok(list) = value.to_str() {
                    trailers.get_or_insert_with(Vec::new).extend(
                        list.split(',')
                            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok()),
                    );
                }
            }
        }
    }
    end_joined(dst, &mut joined, te_needs_chunked);
    let mut kind = match kind {
        Some(kind) => kind,
        None => match length {
            Some(None) if !can_chunk => Framing::Close,
            Some(None) => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None | Some(Some(0)) => {
                if can_have_content_length(status) && method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if can_have_content_length(status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    Framing::Length(n)
                } else {
                    Framing::Length(0)
                }
            }
        },
    };
    if !can_have_body(method, status) {
        kind = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        crate::http::date::extend(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    if kind == Framing::Close {
        last = true;
    }
    Ok(Framed {
        kind,
        last,
        trailers: if kind == Framing::Chunked {
            trailers
        } else {
            None
        },
    })
}

/// Ends a joined header line (`name: a, b`), adding `chunked` to a Transfer-Encoding that
/// does not end with it.
fn end_joined(dst: &mut Vec<u8>, joined: &mut Option<HeaderName>, te_needs_chunked: bool) {
    if let Some(name) = joined.take() {
        if name == header::TRANSFER_ENCODING && te_needs_chunked {
            dst.extend_from_slice(b", chunked");
        }
        dst.extend_from_slice(b"\r\n");
    }
}

pub(super) fn write_trailers(trailers: &HeaderMap, allowed: &[HeaderName], dst: &mut Vec<u8>) {
    for (name, value) in trailers {
        let forbidden = matches!(
            *name,
            header::AUTHORIZATION
                | header::CACHE_CONTROL
                | header::CONTENT_ENCODING
                | header::CONTENT_LENGTH
                | header::CONTENT_RANGE
                | header::CONTENT_TYPE
                | header::HOST
                | header::MAX_FORWARDS
                | header::SET_COOKIE
                | header::TRAILER
                | header::TRANSFER_ENCODING
                | header::TE
        );
        if allowed.contains(name) && !forbidden {
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
    }
}

fn can_have_body(method: &Method, status: StatusCode) -> bool {
    *method != Method::HEAD
        && !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

/// Digits only: no sign, no spaces (as hyper reads Content-Length).
fn parse_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
fn token_in(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn last_token_is(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| token_in(v, token))
}

/// Appends `n` in upper-case hexadecimal (a chunk size).
pub(super) fn push_hex(dst: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use http::Response;

    use super::*;

    fn encode(
        resp: Response<()>,
        length: Option<Option<u64>>,
        method: Method,
        version: Version,
        keep_alive: bool,
    ) -> (String, Result<Framing, &'static str>, bool) {
        let (mut parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let framed = encode_head(&mut parts, length, &method, version, keep_alive, &mut out);
        let text = String::from_utf8(out).unwrap();
        // Drop the date line: it changes.
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("|");
        let last = framed.as_ref().map(|f| f.last).unwrap_or(true);
        (text, framed.map(|f| f.kind), last)
    }

    fn resp(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn lengths_are_framed_as_hyper_frames_them() {
        let get = || Method::GET;
        let v11 = Version::HTTP_11;
        assert_eq!(
            encode(resp(200, &[("x", "1")]), Some(Some(11)), get(), v11, true),
            (
                "HTTP/1.1 200 OK|x: 1|content-length: 11|".into(),
                Ok(Framing::Length(11)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(None), get(), v11, true),
            (
                "HTTP/1.1 200 OK|transfer-encoding: chunked|".into(),
                Ok(Framing::Chunked),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(None), get(), Version::HTTP_10, true),
            (
                "HTTP/1.0 200 OK|connection: keep-alive|".into(),
                Ok(Framing::Close),
                true
            )
        );
        assert_eq!(
            encode(resp(200, &[]), None, get(), v11, true),
            (
                "HTTP/1.1 200 OK|content-length: 0|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(Some(5)), Method::HEAD, v11, true),
            (
                "HTTP/1.1 200 OK|content-length: 5|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), None, Method::HEAD, v11, true),
            ("HTTP/1.1 200 OK|".into(), Ok(Framing::Length(0)), false)
        );
        assert_eq!(
            encode(resp(204, &[]), Some(Some(5)), get(), v11, true),
            (
                "HTTP/1.1 204 No Content|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(304, &[]), None, get(), v11, true),
            (
                "HTTP/1.1 304 Not Modified|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
    }

    #[test]
    fn user_framing_headers_are_honoured_or_refused() {
        let get = || Method::GET;
        let v11 = Version::HTTP_11;
        assert_eq!(
            encode(
                resp(200, &[("transfer-encoding", "gzip")]),
                Some(None),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|transfer-encoding: gzip, chunked|".into(),
                Ok(Framing::Chunked),
                false
            )
        );
        assert_eq!(
            encode(
                resp(200, &[("content-length", "7")]),
                Some(None),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|content-length: 7|".into(),
                Ok(Framing::Length(7)),
                false
            )
        );
        assert!(encode(
            resp(200, &[("content-length", "x")]),
            Some(None),
            get(),
            v11,
            true
        )
        .1
        .is_err());
        assert!(encode(
            resp(200, &[("content-length", "1"), ("content-length", "2")]),
            Some(None),
            get(),
            v11,
            true
        )
        .1
        .is_err());
        assert_eq!(
            encode(
                resp(200, &[("connection", "close")]),
                Some(Some(0)),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|connection: close|content-length: 0|".into(),
                Ok(Framing::Length(0)),
                true
            )
        );
        assert_eq!(
            encode(resp(404, &[]), Some(Some(2)), get(), v11, false),
            (
                "HTTP/1.1 404 Not Found|connection: close|content-length: 2|".into(),
                Ok(Framing::Length(2)),
                true
            )
        );
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        for (n, hex) in [(0, "0"), (9, "9"), (10, "A"), (255, "FF"), (4096, "1000")] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(out, hex.as_bytes());
        }
    }
}
