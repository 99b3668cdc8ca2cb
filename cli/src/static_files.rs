//! `forklift serve --dir PATH`: a pre-forked static file server, with the same
//! `x-forklift-worker` header as the demo.
//!
//! tower-http's `ServeDir` finds the file (no path traversal: `..` and absolute paths are
//! refused), picks its content type, serves ranges and `Last-Modified`, and answers
//! `If-Unmodified-Since`. It has no entity tags, so [`Validate`] wraps it and owns the other
//! conditional requests: it gives every file a weak `ETag` made of its size and modification
//! time (as nginx's are), which every worker computes alike without sharing any state, and
//! answers `If-None-Match`, `If-Modified-Since` and `If-Range` (RFC 9110, section 13).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeader;
use tower_service::Service;

/// The directory service, as each worker builds it.
pub type DirService = SetResponseHeader<Validate<ServeDir>, HeaderValue>;

/// Checks `root` before any worker starts: a missing directory is a clear error, not a
/// server that answers 404 to everything.
pub fn check_root(root: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("--dir {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("--dir {}: not a directory", root.display()));
    }
    root.canonicalize()
        .map_err(|e| format!("--dir {}: {e}", root.display()))
}

/// The service for one worker: files under `root`, `index.html` for directories.
pub fn service(root: &Path) -> DirService {
    let dir = ServeDir::new(root).append_index_html_on_directories(true);
    SetResponseHeader::overriding(
        Validate::new(dir),
        HeaderName::from_static("x-forklift-worker"),
        HeaderValue::from(std::process::id()),
    )
}

// ---------------------------------------------------------------------------------------------
// Conditional requests
// ---------------------------------------------------------------------------------------------

/// Adds entity tags to a file service's responses and answers the conditional requests that
/// use them. The inner service sees every request without its body (a file service reads
/// none) and without `If-Modified-Since`, which this layer evaluates itself so that each
/// `304 Not Modified` carries the file's `ETag` and `Last-Modified`.
#[derive(Debug, Clone)]
pub struct Validate<S> {
    inner: S,
}

impl<S> Validate<S> {
    /// Wraps a service that answers with files and their `Last-Modified`.
    pub fn new(inner: S) -> Self {
        Validate { inner }
    }
}

/// A response body: the file service's, or the empty body of a 304.
pub type ValidateBody<B> = Either<B, Empty<Bytes>>;

type LocalFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>>>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Validate<S>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<ResBody>> + Clone + 'static,
    S::Future: 'static,
{
    type Response = Response<ValidateBody<ResBody>>;
    type Error = S::Error;
    type Future = LocalFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Keep the service that was polled ready for this call; leave a fresh clone behind.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (mut parts, _body) = req.into_parts();
        let cond = if parts.method == Method::GET || parts.method == Method::HEAD {
            Conditions::take(&mut parts.headers)
        } else {
            Conditions::default()
        };
        Box::pin(async move {
            let first = Request::from_parts(parts.clone(), Empty::new());
            let mut resp = inner.call(first).await?;
            if let Some(if_range) = &cond.if_range {
                let partial = matches!(
                    resp.status(),
                    StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE
                );
                let current = Validators::of(&resp);
                if partial && !current.is_some_and(|v| if_range.matches(&v)) {
                    // The client's copy is stale: it gets the whole file, not a piece of it.
                    parts.headers.remove(header::RANGE);
                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    resp = inner.call(Request::from_parts(parts, Empty::new())).await?;
                }
            }
            let Some(current) = Validators::of(&resp) else {
                return Ok(resp.map(Either::Left));
            };
            if cond.not_modified(&current) {
                return Ok(not_modified(&resp, &current));
            }
            if matches!(resp.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT) {
                resp.headers_mut()
                    .insert(header::ETAG, current.etag().to_header_value());
            }
            Ok(resp.map(Either::Left))
        })
    }
}

/// A `304 Not Modified` for the representation `resp` describes: no body, and the headers a
/// cache needs to refresh its copy (RFC 9110, section 15.4.5).
fn not_modified<B>(resp: &Response<B>, current: &Validators) -> Response<ValidateBody<B>> {
    let mut out = Response::new(Either::Right(Empty::new()));
    *out.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = out.headers_mut();
    headers.insert(header::ETAG, current.etag().to_header_value());
    for name in [
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::EXPIRES,
        header::VARY,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    out
}

/// What identifies one version of a file: its size and its modification time (whole seconds,
/// as `Last-Modified` has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validators {
    size: u64,
    modified: u64,
}

impl Validators {
    /// The validators of a file response: 200 (size from `content-length`), 206 or 416 (size
    /// after the `/` of `content-range`), with a `last-modified`. `None` for anything else.
    fn of<B>(resp: &Response<B>) -> Option<Validators> {
        let headers = resp.headers();
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let size = match resp.status() {
            StatusCode::OK => text(&header::CONTENT_LENGTH)?.trim().parse().ok()?,
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                complete_length(text(&header::CONTENT_RANGE)?)?
            }
            _ => return None,
        };
        let modified = http_date_secs(text(&header::LAST_MODIFIED)?)?;
        Some(Validators { size, modified })
    }

    /// `W/"<size hex>-<modified hex>"`: weak, since a file rewritten with the same size within
    /// the same second keeps its tag.
    fn etag(&self) -> EntityTag {
        EntityTag {
            weak: true,
            opaque: format!("{:x}-{:x}", self.size, self.modified),
        }
    }
}

/// The complete length of a `content-range` value: `bytes 2-4/10` and `bytes */10` give 10.
fn complete_length(content_range: &str) -> Option<u64> {
    let (_, total) = content_range.rsplit_once('/')?;
    total.trim().parse().ok()
}

/// An HTTP date as seconds since the Unix epoch.
fn http_date_secs(value: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// An entity tag: `"xyz"` (strong) or `W/"xyz"` (weak).
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntityTag {
    weak: bool,
    /// The characters between the quotes.
    opaque: String,
}

impl EntityTag {
    /// Parses one tag at the start of `s` (leading whitespace skipped); returns it and the rest.
    fn parse_prefix(s: &str) -> Option<(EntityTag, &str)> {
        let s = s.trim_start();
        let (weak, s) = match s.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let s = s.strip_prefix('"')?;
        let end = s.find('"')?;
        let opaque = &s[..end];
        // etagc: %x21 / %x23-7E / obs-text, so no spaces, controls or quotes.
        if opaque.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        let tag = EntityTag {
            weak,
            opaque: opaque.to_string(),
        };
        Some((tag, &s[end + 1..]))
    }

    /// Parses a value that is exactly one tag (an `If-Range`).
    fn parse(s: &str) -> Option<EntityTag> {
        match EntityTag::parse_prefix(s)? {
            (tag, rest) if rest.trim().is_empty() => Some(tag),
            _ => None,
        }
    }

    /// Weak comparison (`If-None-Match`): the opaque parts are equal, weak or not.
    fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    /// Strong comparison (`If-Range`): both strong and equal. A weak tag never matches.
    fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("an entity tag is a valid header value")
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

/// The value of `If-None-Match`: `*` or a list of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList {
    Any,
    Tags(Vec<EntityTag>),
}

impl TagList {
    /// Parses `*` or `#entity-tag` (empty list elements allowed, as RFC 9110 section 5.6.1
    /// asks). `None` if the value is malformed, and then the header is ignored.
    fn parse(s: &str) -> Option<TagList> {
        if s.trim() == "*" {
            return Some(TagList::Any);
        }
        let mut tags = Vec::new();
        let mut rest = s;
        loop {
            rest = rest.trim_start_matches([',', ' ', '\t']);
            if rest.is_empty() {
                break;
            }
            let (tag, after) = EntityTag::parse_prefix(rest)?;
            tags.push(tag);
            rest = after.trim_start_matches([' ', '\t']);
            if !(rest.is_empty() || rest.starts_with(',')) {
                return None;
            }
        }
        (!tags.is_empty()).then_some(TagList::Tags(tags))
    }

    /// True if `current` matches the list by weak comparison (`*` matches any file).
    fn matches_weak(&self, current: &EntityTag) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| t.weak_eq(current)),
        }
    }
}

/// The value of `If-Range`: a tag or a date.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfRange {
    Tag(EntityTag),
    Date(u64),
}

impl IfRange {
    fn parse(s: &str) -> Option<IfRange> {
        EntityTag::parse(s)
            .map(IfRange::Tag)
            .or_else(|| http_date_secs(s).map(IfRange::Date))
    }

    /// Whether the range may be served: the client's copy is the current one. A tag needs the
    /// strong comparison, which forklift's weak tags never pass; a date must equal
    /// `Last-Modified` exactly.
    fn matches(&self, current: &Validators) -> bool {
        match self {
            IfRange::Tag(tag) => tag.strong_eq(&current.etag()),
            IfRange::Date(secs) => *secs == current.modified,
        }
    }
}

/// The conditional headers of a GET or HEAD that this layer evaluates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Conditions {
    if_none_match: Option<TagList>,
    if_modified_since: Option<u64>,
    if_range: Option<IfRange>,
}

impl Conditions {
    /// Reads the conditions, and removes `If-Modified-Since` so that the inner service answers
    /// with the file and its validators instead of a bare 304. `If-Range` counts only with a
    /// `Range`; malformed values are ignored.
    fn take(headers: &mut HeaderMap) -> Conditions {
        let text = |v: &HeaderValue| v.to_str().ok().map(str::to_owned);
        let mut if_none_match: Option<TagList> = None;
        for v in headers.get_all(header::IF_NONE_MATCH) {
            let Some(list) = text(v).as_deref().and_then(TagList::parse) else {
                continue;
            };
            if_none_match = Some(match (if_none_match, list) {
                (Some(TagList::Tags(mut a)), TagList::Tags(b)) => {
                    a.extend(b);
                    TagList::Tags(a)
                }
                (Some(TagList::Any), _) | (_, TagList::Any) => TagList::Any,
                (None, list) => list,
            });
        }
        let if_modified_since = headers
            .remove(header::IF_MODIFIED_SINCE)
            .and_then(|v| text(&v))
            .and_then(|s| http_date_secs(&s));
        let if_range = if headers.contains_key(header::RANGE) {
            headers
                .get(header::IF_RANGE)
                .and_then(text)
                .and_then(|s| IfRange::parse(&s))
        } else {
            None
        };
        Conditions {
            if_none_match,
            if_modified_since,
            if_range,
        }
    }

    /// Whether the client's copy is current (RFC 9110, section 13.2.2): `If-None-Match` when
    /// present, else `If-Modified-Since`.
    fn not_modified(&self, current: &Validators) -> bool {
        match (&self.if_none_match, self.if_modified_since) {
            (Some(list), _) => list.matches_weak(&current.etag()),
            (None, Some(since)) => current.modified <= since,
            (None, None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: opaque.to_string(),
        }
    }

    #[test]
    fn single_tags_parse_strong_and_weak() {
        assert_eq!(EntityTag::parse("\"abc\""), Some(tag(false, "abc")));
        assert_eq!(EntityTag::parse(" W/\"a-1\" "), Some(tag(true, "a-1")));
        assert_eq!(EntityTag::parse("\"\""), Some(tag(false, "")));
        assert_eq!(EntityTag::parse("abc"), None, "unquoted");
        assert_eq!(EntityTag::parse("\"abc"), None, "unterminated");
        assert_eq!(EntityTag::parse("w/\"abc\""), None, "W/ is case-sensitive");
        assert_eq!(EntityTag::parse("\"a\" \"b\""), None, "two tags");
        assert_eq!(EntityTag::parse("\"a b\""), None, "space inside");
    }

    #[test]
    fn tags_print_as_they_parse() {
        for text in ["\"x\"", "W/\"a-5f\""] {
            assert_eq!(EntityTag::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn tag_lists_parse_star_lists_and_commas_inside_tags() {
        assert_eq!(TagList::parse("*"), Some(TagList::Any));
        assert_eq!(TagList::parse(" * "), Some(TagList::Any));
        assert_eq!(
            TagList::parse("\"a\", W/\"b\",\"c,d\""),
            Some(TagList::Tags(vec![
                tag(false, "a"),
                tag(true, "b"),
                tag(false, "c,d")
            ]))
        );
        assert_eq!(
            TagList::parse(", \"a\" ,, "),
            Some(TagList::Tags(vec![tag(false, "a")]))
        );
        assert_eq!(TagList::parse(""), None);
        assert_eq!(TagList::parse("\"a\" \"b\""), None, "missing comma");
        assert_eq!(TagList::parse("\"a\", b"), None, "unquoted element");
        assert_eq!(TagList::parse("*, \"a\""), None, "star in a list");
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let current = tag(true, "a-1");
        let list = |s: &str| TagList::parse(s).unwrap();
        assert!(list("W/\"a-1\"").matches_weak(&current));
        assert!(
            list("\"a-1\"").matches_weak(&current),
            "strong form of the tag"
        );
        assert!(list("\"x\", W/\"a-1\"").matches_weak(&current));
        assert!(list("*").matches_weak(&current));
        assert!(!list("W/\"a-2\"").matches_weak(&current));
        assert!(!list("\"A-1\"").matches_weak(&current), "case-sensitive");
    }

    #[test]
    fn strong_comparison_refuses_weak_tags() {
        assert!(tag(false, "a").strong_eq(&tag(false, "a")));
        assert!(!tag(true, "a").strong_eq(&tag(true, "a")));
        assert!(!tag(false, "a").strong_eq(&tag(true, "a")));
        assert!(!tag(false, "a").strong_eq(&tag(false, "b")));
    }

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LM_SECS: u64 = 784_111_777;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn validators_come_from_length_or_content_range_and_last_modified() {
        let full = response(200, &[("content-length", "26"), ("last-modified", LM)]);
        let v = Validators::of(&full).unwrap();
        assert_eq!(
            v,
            Validators {
                size: 26,
                modified: LM_SECS
            }
        );
        assert_eq!(v.etag().to_string(), "W/\"1a-2ebc98a1\"");
        let part = response(
            206,
            &[
                ("content-length", "3"),
                ("content-range", "bytes 2-4/26"),
                ("last-modified", LM),
            ],
        );
        assert_eq!(Validators::of(&part), Some(v), "206: the size of the file");
        let unsat = response(
            416,
            &[("content-range", "bytes */26"), ("last-modified", LM)],
        );
        assert_eq!(Validators::of(&unsat), Some(v));
        assert_eq!(
            Validators::of(&response(200, &[("content-length", "26")])),
            None,
            "no last-modified"
        );
        assert_eq!(
            Validators::of(&response(
                404,
                &[("content-length", "0"), ("last-modified", LM)]
            )),
            None
        );
        assert_eq!(
            Validators::of(&response(200, &[("last-modified", LM)])),
            None,
            "no size"
        );
    }

    fn conditions(headers: &[(&str, &str)]) -> (Conditions, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        (Conditions::take(&mut map), map)
    }

    const CURRENT: Validators = Validators {
        size: 26,
        modified: LM_SECS,
    };

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let (c, left) = conditions(&[("if-none-match", "\"other\""), ("if-modified-since", LM)]);
        assert!(
            !c.not_modified(&CURRENT),
            "a tag mismatch wins over the date"
        );
        assert!(!left.contains_key(header::IF_MODIFIED_SINCE), "taken away");
        let (c, _) = conditions(&[("if-none-match", "W/\"1a-2ebc98a1\"")]);
        assert!(c.not_modified(&CURRENT));
        let (c, _) = conditions(&[
            ("if-none-match", "\"a\""),
            ("if-none-match", "\"1a-2ebc98a1\""),
        ]);
        assert!(c.not_modified(&CURRENT), "tags from repeated headers count");
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let (c, _) = conditions(&[("if-modified-since", LM)]);
        assert!(c.not_modified(&CURRENT));
        let (c, _) = conditions(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]);
        assert!(!c.not_modified(&CURRENT), "modified one second later");
        let (c, _) = conditions(&[("if-modified-since", "yesterday")]);
        assert!(!c.not_modified(&CURRENT), "a bad date is ignored");
        let (c, _) = conditions(&[]);
        assert!(!c.not_modified(&CURRENT));
    }

    #[test]
    fn if_range_counts_only_with_a_range_and_an_exact_validator() {
        let (c, _) = conditions(&[("if-range", LM)]);
        assert_eq!(c.if_range, None, "no Range header");
        let (c, _) = conditions(&[("range", "bytes=0-1"), ("if-range", LM)]);
        assert!(c.if_range.unwrap().matches(&CURRENT));
        let (c, _) = conditions(&[
            ("range", "bytes=0-1"),
            ("if-range", "Sun, 06 Nov 1994 08:49:38 GMT"),
        ]);
        assert!(!c.if_range.unwrap().matches(&CURRENT), "a later date");
        let (c, _) = conditions(&[("range", "bytes=0-1"), ("if-range", "W/\"1a-2ebc98a1\"")]);
        assert!(
            !c.if_range.unwrap().matches(&CURRENT),
            "a weak tag never passes the strong comparison"
        );
        let (c, _) = conditions(&[("range", "bytes=0-1"), ("if-range", "\"1a-2ebc98a1\"")]);
        assert!(!c.if_range.unwrap().matches(&CURRENT), "ours is weak");
    }

    #[test]
    fn complete_lengths_are_read_after_the_slash() {
        assert_eq!(complete_length("bytes 2-4/10"), Some(10));
        assert_eq!(complete_length("bytes */10"), Some(10));
        assert_eq!(complete_length("bytes 2-4/*"), None);
        assert_eq!(complete_length("bytes 2-4"), None);
    }
}
