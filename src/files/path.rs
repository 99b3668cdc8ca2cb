//! From a request path to the file it names under the root: percent-decoding, the segments
//! that may never reach the file system, and the index file of a directory.

use percent_encoding::percent_decode_str;

/// What a request path names, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Relative {
    /// Segments joined by `/`, without a leading one; empty for the root itself.
    pub path: String,
    /// The request path ended with `/` and `path` ends with the index file's name.
    pub index: bool,
}

/// The file `raw` (a request URI's path, still percent-encoded) names, as tower-http's
/// `ServeDir` finds it: leading slashes dropped, percent-decoded as UTF-8, then split on
/// `/` with empty and `.` segments dropped; a path ending with `/` names the `index` file of
/// that directory.
///
/// `None` for a path that must not reach the file system: not UTF-8 once decoded, a `..`
/// segment (decoded, so `%2e%2e` and `..%2f` count), or a NUL byte. Absolute paths cannot
/// come out: every segment is appended to the root, and the file is then opened beneath it.
pub(super) fn relative(raw: &str, index: &str) -> Option<Relative> {
    let decoded = percent_decode_str(raw).decode_utf8().ok()?;
    if decoded.contains('\0') {
        return None;
    }
    let mut path = String::with_capacity(decoded.len() + index.len());
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s => {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(s);
            }
        }
    }
    let index_wanted = raw.ends_with('/');
    if index_wanted {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(index);
    }
    Some(Relative {
        path,
        index: index_wanted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(raw: &str) -> Option<String> {
        relative(raw, "index.html").map(|r| r.path)
    }

    #[test]
    fn plain_paths_and_indexes() {
        assert_eq!(rel("/hello.txt").as_deref(), Some("hello.txt"));
        assert_eq!(rel("/a/b/c.txt").as_deref(), Some("a/b/c.txt"));
        assert_eq!(rel("/").as_deref(), Some("index.html"));
        assert_eq!(rel("/sub/").as_deref(), Some("sub/index.html"));
        assert_eq!(rel("/sub").as_deref(), Some("sub"));
        assert!(relative("/sub/", "index.html").unwrap().index);
        assert!(!relative("/sub", "index.html").unwrap().index);
    }

    #[test]
    fn percent_decoding_empty_and_dot_segments() {
        assert_eq!(rel("/a%20b.txt").as_deref(), Some("a b.txt"));
        assert_eq!(rel("/caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(rel("//a///b").as_deref(), Some("a/b"));
        assert_eq!(rel("/./a/./b").as_deref(), Some("a/b"));
        // An encoded slash separates segments once decoded, as in ServeDir.
        assert_eq!(rel("/a%2fb").as_deref(), Some("a/b"));
        assert_eq!(rel("/%2fetc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(rel("//etc/passwd").as_deref(), Some("etc/passwd"));
        // A backslash is an ordinary byte of a Unix file name.
        assert_eq!(rel("/..%5csecret").as_deref(), Some("..\\secret"));
    }

    #[test]
    fn parent_segments_nul_and_bad_utf8_never_reach_the_disk() {
        for raw in [
            "/..",
            "/../secret",
            "/%2e%2e/secret",
            "/%2E%2E/secret",
            "/sub/../../secret",
            "/sub/%2e%2e/%2e%2e/secret",
            "/..%2fsecret",
            "/%2e%2e%2fsecret",
            "/sub/..%2f..%2fsecret",
            "/a/..",
            "/%00",
            "/a%00b",
            "/%ff",
            "/%c3",
        ] {
            assert_eq!(rel(raw), None, "{raw}");
        }
    }
}
