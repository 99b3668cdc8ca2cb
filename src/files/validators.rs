//! Validators and conditional requests (RFC 9110, section 13): every file gets a weak
//! `ETag` made of its size and modification time (as nginx's are), which every worker
//! computes alike without sharing any state, and a `Last-Modified`; `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` and `If-Range` are answered from them.

use std::fmt;
use std::time::UNIX_EPOCH;

use http::header::{self, HeaderMap};
use http::HeaderValue;

/// What identifies one version of a file: its size and its modification time (whole seconds,
/// as `Last-Modified` has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Validators {
    pub size: u64,
    pub modified: u64,
}

impl Validators {
    /// `W/"<size hex>-<modified hex>"`: weak, since a file rewritten with the same size within
    /// the same second keeps its tag.
    pub fn etag(&self) -> EntityTag {
        EntityTag {
            weak: true,
            opaque: format!("{:x}-{:x}", self.size, self.modified),
        }
    }
}

/// An HTTP date as seconds since the Unix epoch.
pub(super) fn http_date_secs(value: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// An entity tag: `"xyz"` (strong) or `W/"xyz"` (weak).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntityTag {
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

    pub fn to_header_value(&self) -> HeaderValue {
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

/// The conditional headers of a GET or HEAD.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Conditions {
    if_none_match: Option<TagList>,
    if_modified_since: Option<u64>,
    if_unmodified_since: Option<u64>,
    if_range: Option<IfRange>,
}

impl Conditions {
    /// Reads the conditions; `If-Range` counts only with a `Range`, and malformed values are
    /// ignored. A request without any (most) costs four header look-ups.
    pub fn parse(headers: &HeaderMap) -> Conditions {
        let mut if_none_match: Option<TagList> = None;
        for v in headers.get_all(header::IF_NONE_MATCH) {
            let Some(list) = v.to_str().ok().and_then(TagList::parse) else {
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
        let date = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .and_then(http_date_secs)
        };
        let if_range = if headers.contains_key(header::RANGE) {
            headers
                .get(header::IF_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(IfRange::parse)
        } else {
            None
        };
        Conditions {
            if_none_match,
            if_modified_since: date(header::IF_MODIFIED_SINCE),
            if_unmodified_since: date(header::IF_UNMODIFIED_SINCE),
            if_range,
        }
    }

    /// `If-Unmodified-Since` fails: the file changed after the client's date (412).
    pub fn precondition_failed(&self, current: &Validators) -> bool {
        self.if_unmodified_since
            .is_some_and(|since| current.modified > since)
    }

    /// Whether the client's copy is current (RFC 9110, section 13.2.2): `If-None-Match` when
    /// present, else `If-Modified-Since`.
    pub fn not_modified(&self, current: &Validators) -> bool {
        match (&self.if_none_match, self.if_modified_since) {
            (Some(list), _) => list.matches_weak(&current.etag()),
            (None, Some(since)) => current.modified <= since,
            (None, None) => false,
        }
    }

    /// Whether a `Range` may be served: no `If-Range`, or one that names the current file.
    /// Otherwise the client's copy is stale and it gets the whole file.
    pub fn range_allowed(&self, current: &Validators) -> bool {
        match &self.if_range {
            None => true,
            Some(r) => r.matches(current),
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

    fn conditions(headers: &[(&str, &str)]) -> Conditions {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Conditions::parse(&map)
    }

    const CURRENT: Validators = Validators {
        size: 26,
        modified: LM_SECS,
    };

    #[test]
    fn the_tag_is_weak_size_and_seconds_in_hex() {
        assert_eq!(CURRENT.etag().to_string(), "W/\"1a-2ebc98a1\"");
        assert_eq!(http_date_secs(LM), Some(LM_SECS));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let c = conditions(&[("if-none-match", "\"other\""), ("if-modified-since", LM)]);
        assert!(
            !c.not_modified(&CURRENT),
            "a tag mismatch wins over the date"
        );
        let c = conditions(&[("if-none-match", "W/\"1a-2ebc98a1\"")]);
        assert!(c.not_modified(&CURRENT));
        let c = conditions(&[
            ("if-none-match", "\"a\""),
            ("if-none-match", "\"1a-2ebc98a1\""),
        ]);
        assert!(c.not_modified(&CURRENT), "tags from repeated headers count");
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let c = conditions(&[("if-modified-since", LM)]);
        assert!(c.not_modified(&CURRENT));
        let c = conditions(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]);
        assert!(!c.not_modified(&CURRENT), "modified one second later");
        let c = conditions(&[("if-modified-since", "yesterday")]);
        assert!(!c.not_modified(&CURRENT), "a bad date is ignored");
        let c = conditions(&[]);
        assert!(!c.not_modified(&CURRENT));
    }

    #[test]
    fn if_range_counts_only_with_a_range_and_an_exact_validator() {
        let c = conditions(&[("if-range", LM)]);
        assert_eq!(c.if_range, None, "no Range header");
        let c = conditions(&[("range", "bytes=0-1"), ("if-range", LM)]);
        assert!(c.if_range.unwrap().matches(&CURRENT));
        let c = conditions(&[
            ("range", "bytes=0-1"),
            ("if-range", "Sun, 06 Nov 1994 08:49:38 GMT"),
        ]);
        assert!(!c.if_range.unwrap().matches(&CURRENT), "a later date");
        let c = conditions(&[("range", "bytes=0-1"), ("if-range", "W/\"1a-2ebc98a1\"")]);
        assert!(
            !c.if_range.unwrap().matches(&CURRENT),
            "a weak tag never passes the strong comparison"
        );
        let c = conditions(&[("range", "bytes=0-1"), ("if-range", "\"1a-2ebc98a1\"")]);
        assert!(!c.if_range.unwrap().matches(&CURRENT), "ours is weak");
        let c = conditions(&[("range", "bytes=0-1"), ("if-range", "yesterday")]);
        assert_eq!(c.if_range, None, "a malformed If-Range is ignored");
        assert!(c.range_allowed(&CURRENT));
    }

    #[test]
    fn if_unmodified_since_fails_for_a_later_file() {
        assert!(!conditions(&[("if-unmodified-since", LM)]).precondition_failed(&CURRENT));
        let earlier = conditions(&[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]);
        assert!(earlier.precondition_failed(&CURRENT));
        assert!(!conditions(&[("if-unmodified-since", "junk")]).precondition_failed(&CURRENT));
        assert!(!conditions(&[]).precondition_failed(&CURRENT));
    }
}
