//! The `Range` header: which part of a file a GET asks for. Parsed and checked by the
//! `http-range-header` crate, as tower-http's `ServeDir` does, so the answers are the ones
//! `forklift serve --dir` gave before it had its own file service.

use http::HeaderValue;

/// What to send of a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ranged {
    /// No range asked (or the header is not text): the whole file, 200.
    Full,
    /// One range, first and last byte inclusive: 206.
    Part(u64, u64),
    /// A malformed, reversed, overlapping or out-of-bounds range, or any range of an empty
    /// file: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
    /// Several valid ranges: refused with 416, as `ServeDir` does, since a
    /// `multipart/byteranges` answer is rarely asked for and costs a body format of its own.
    Multiple,
}

/// Reads `range` for a file of `size` bytes.
pub(super) fn select(range: Option<&HeaderValue>, size: u64) -> Ranged {
    let Some(text) = range.and_then(|v| v.to_str().ok()) else {
        return Ranged::Full;
    };
    if size == 0 {
        // Not one byte can be selected (RFC 9110, 14.1.1).
        return Ranged::Unsatisfiable;
    }
    let valid = http_range_header::parse_range_header(text).and_then(|r| r.validate(size));
    match valid.as_deref() {
        Ok([one]) => Ranged::Part(*one.start(), *one.end()),
        Ok([]) | Err(_) => Ranged::Unsatisfiable,
        Ok(_) => Ranged::Multiple,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: &str, size: u64) -> Ranged {
        select(Some(&HeaderValue::from_str(v).unwrap()), size)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(select(None, 10), Ranged::Full);
        assert_eq!(sel("bytes=2-4", 10), Ranged::Part(2, 4));
        assert_eq!(sel("bytes=-3", 10), Ranged::Part(7, 9));
        assert_eq!(sel("bytes=7-", 10), Ranged::Part(7, 9));
        assert_eq!(sel("bytes=0-0", 10), Ranged::Part(0, 0));
        assert_eq!(sel("bytes=5-100", 10), Ranged::Part(5, 9), "end clamped");
        assert_eq!(sel("bytes=0-", 10), Ranged::Part(0, 9));
    }

    #[test]
    fn unsatisfiable_and_malformed_ranges() {
        for v in [
            "bytes=20-30",
            "bytes=4-2",
            "bytes=-0",
            "bytes=-11",
            "items=0-1",
            "bytes=a-b",
            "bytes= 0-1",
            "bytes=0-1,1-2",
        ] {
            assert_eq!(sel(v, 10), Ranged::Unsatisfiable, "{v}");
        }
        assert_eq!(sel("bytes=0-", 0), Ranged::Unsatisfiable, "an empty file");
    }

    #[test]
    fn several_ranges_are_refused() {
        assert_eq!(sel("bytes=0-1,4-5", 10), Ranged::Multiple);
        assert_eq!(sel("bytes=0-1, 4-5", 10), Ranged::Multiple);
    }

    #[test]
    fn a_header_that_is_not_text_is_ignored() {
        let v = HeaderValue::from_bytes(b"bytes=\xff").unwrap();
        assert_eq!(select(Some(&v), 10), Ranged::Full);
    }
}
