//! [`StaticFiles::respond`] on a real directory: what each request gets, the symlink policy,
//! and the open-file cache noticing changes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use super::*;

/// `<base>/root` is served; `<base>/outside.txt` is next to it.
struct Tree {
    base: PathBuf,
    root: PathBuf,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let base = std::env::temp_dir().join(format!(
            "forklift-files-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("digits.txt"), "0123456789").unwrap();
        std::fs::write(root.join("sub/index.html"), "<p>sub</p>").unwrap();
        std::fs::write(root.join("sub/deeper/a.json"), "{}").unwrap();
        std::fs::write(root.join("blob"), "??").unwrap();
        std::fs::write(root.join("empty.txt"), "").unwrap();
        std::fs::write(base.join("outside.txt"), "SECRET").unwrap();
        Tree { base, root }
    }

    fn files(&self) -> StaticFiles {
        StaticFiles::new(&self.root).unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn get(files: &StaticFiles, uri: &str, headers: &[(&str, &str)]) -> Response<FileBody> {
    files.respond(&req("GET", uri, headers))
}

fn text<'a>(resp: &'a Response<FileBody>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {resp:?}"))
        .to_str()
        .unwrap()
}

async fn body(resp: Response<FileBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn files_directories_and_methods() {
    let tree = Tree::new("basics");
    let files = tree.files();
    let r = get(&files, "/digits.txt", &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(text(&r, "content-type"), "text/plain");
    assert_eq!(text(&r, "accept-ranges"), "bytes");
    assert!(
        r.extensions().get::<FileRegion>().is_some(),
        "the server may send it"
    );
    assert_eq!(body(r).await, "0123456789");
    let r = get(&files, "/sub/deeper/a.json", &[]);
    assert_eq!(text(&r, "content-type"), "application/json");
    assert_eq!(
        text(&get(&files, "/blob", &[]), "content-type"),
        "application/octet-stream"
    );
    assert_eq!(body(get(&files, "/", &[])).await, "<h1>home</h1>");
    assert_eq!(body(get(&files, "/sub/", &[])).await, "<p>sub</p>");
    assert_eq!(
        body(get(&files, "/%73ub/", &[])).await,
        "<p>sub</p>",
        "decoded"
    );
    let empty = get(&files, "/empty.txt", &[]);
    assert_eq!(
        (empty.status(), body(empty).await.as_str()),
        (StatusCode::OK, "")
    );

    let r = get(&files, "/sub?x=1", &[]);
    assert_eq!(r.status(), 307);
    assert_eq!(text(&r, "location"), "/sub/?x=1");
    let r = get(&files, "http://example.com/sub", &[]);
    assert_eq!(text(&r, "location"), "http://example.com/sub/");
    for missing in [
        "/nope",
        "/sub/deeper/",
        "/digits.txt/",
        "/digits.txt/x",
        "/%ff",
    ] {
        assert_eq!(get(&files, missing, &[]).status(), 404, "{missing}");
    }
    let head = files.respond(&req("HEAD", "/digits.txt", &[]));
    assert_eq!(head.status(), 200);
    assert_eq!(text(&head, "content-length"), "10");
    assert_eq!(body(head).await, "");
    let post = files.respond(&req("POST", "/digits.txt", &[]));
    assert_eq!(post.status(), 405);
    assert_eq!(text(&post, "allow"), "GET,HEAD");
}

#[tokio::test(flavor = "current_thread")]
async fn ranges_and_conditions() {
    let tree = Tree::new("ranges");
    let files = tree.files();
    let full = get(&files, "/digits.txt", &[]);
    let etag = text(&full, "etag").to_string();
    let lm = text(&full, "last-modified").to_string();
    assert!(etag.starts_with("W/\"a-"), "{etag}");

    let r = get(&files, "/digits.txt", &[("range", "bytes=2-4")]);
    assert_eq!(r.status(), 206);
    assert_eq!(text(&r, "content-range"), "bytes 2-4/10");
    assert_eq!(text(&r, "etag"), etag);
    assert_eq!(body(r).await, "234");
    let r = files.respond(&req("HEAD", "/digits.txt", &[("range", "bytes=-3")]));
    assert_eq!(
        (r.status().as_u16(), text(&r, "content-length")),
        (206, "3")
    );
    let r = get(&files, "/digits.txt", &[("range", "bytes=20-")]);
    assert_eq!(r.status(), 416);
    assert_eq!(text(&r, "content-range"), "bytes */10");
    let r = get(&files, "/digits.txt", &[("range", "bytes=0-1,5-6")]);
    assert_eq!(r.status(), 416);
    assert_eq!(body(r).await, "Cannot serve multipart range requests");

    let r = get(&files, "/digits.txt", &[("if-none-match", &etag)]);
    assert_eq!(r.status(), 304);
    assert_eq!(text(&r, "etag"), etag);
    assert_eq!(text(&r, "last-modified"), lm);
    assert_eq!(body(r).await, "");
    let r = get(&files, "/digits.txt", &[("if-modified-since", &lm)]);
    assert_eq!(r.status(), 304);
    let r = get(
        &files,
        "/digits.txt",
        &[("if-unmodified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    );
    assert_eq!(r.status(), 412);
    let r = get(&files, "/digits.txt", &[("if-unmodified-since", &lm)]);
    assert_eq!(r.status(), 200);
    let r = get(
        &files,
        "/digits.txt",
        &[("range", "bytes=2-4"), ("if-range", &lm)],
    );
    assert_eq!(r.status(), 206);
    let stale = [("range", "bytes=2-4"), ("if-range", etag.as_str())];
    let r = get(&files, "/digits.txt", &stale);
    assert_eq!(r.status(), 200, "a weak tag never passes If-Range");
    assert_eq!(body(r).await, "0123456789");
}

#[tokio::test(flavor = "current_thread")]
async fn links_are_followed_only_inside_the_root() {
    let tree = Tree::new("links");
    let root = &tree.root;
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, root.join(name)).unwrap()
    };
    link("digits.txt".as_ref(), "in.txt");
    link("sub".as_ref(), "subdir");
    link("../outside.txt".as_ref(), "out.txt");
    link(&tree.base.join("outside.txt"), "abs-out.txt");
    link(&tree.base, "up");
    link("/etc".as_ref(), "etc");
    assert_eq!(body(get(&tree.files(), "/in.txt", &[])).await, "0123456789");
    assert_eq!(
        body(get(&tree.files(), "/subdir/", &[])).await,
        "<p>sub</p>"
    );
    for escape in [
        "/out.txt",
        "/abs-out.txt",
        "/up/outside.txt",
        "/etc/passwd",
        "/up/",
    ] {
        let r = get(&tree.files(), escape, &[]);
        assert_eq!(r.status(), 404, "{escape}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "current_thread")]
async fn what_is_not_a_regular_file_is_forbidden() {
    let tree = Tree::new("fifo");
    let fifo = tree.root.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // Opened without blocking (no writer), then refused.
    assert_eq!(get(&tree.files(), "/pipe", &[]).status(), 403);
}

#[tokio::test(flavor = "current_thread")]
async fn the_cache_sees_rewrites_and_renames_at_once_and_links_after_the_validity() {
    let tree = Tree::new("cache");
    let validity = Duration::from_millis(200);
    let files = tree.files().cache_validity(validity);
    let path = tree.root.join("digits.txt");
    assert_eq!(body(get(&files, "/digits.txt", &[])).await, "0123456789");

    std::fs::write(&path, "rewritten in place").unwrap();
    let r = get(&files, "/digits.txt", &[]);
    assert!(!text(&r, "etag").starts_with("W/\"a-"), "a new tag");
    assert_eq!(body(r).await, "rewritten in place");

    let tmp = tree.root.join("digits.tmp");
    std::fs::write(&tmp, "replaced by a rename").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(
        body(get(&files, "/digits.txt", &[])).await,
        "replaced by a rename"
    );

    std::fs::remove_file(&path).unwrap();
    assert_eq!(get(&files, "/digits.txt", &[]).status(), 404, "deleted");

    // A link pointed elsewhere: the cached path is trusted until the validity ends.
    std::fs::write(tree.root.join("a.txt"), "a").unwrap();
    std::fs::write(tree.root.join("b.txt"), "b").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.root.join("current")).unwrap();
    assert_eq!(body(get(&files, "/current", &[])).await, "a");
    let started = Instant::now();
    std::fs::remove_file(tree.root.join("current")).unwrap();
    std::os::unix::fs::symlink("b.txt", tree.root.join("current")).unwrap();
    let deadline = started + Duration::from_secs(10);
    loop {
        if body(get(&files, "/current", &[])).await == "b" {
            break;
        }
        assert!(Instant::now() < deadline, "still the old target");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() >= validity / 2,
        "served from the cache for a while, not re-resolved at once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_cache_every_request_resolves_its_path() {
    let tree = Tree::new("nocache");
    let files = tree.files().cache_validity(Duration::ZERO);
    std::fs::write(tree.root.join("a.txt"), "a").unwrap();
    std::fs::write(tree.root.join("b.txt"), "b").unwrap();
    std::os::unix::fs::symlink("a.txt", tree.root.join("current")).unwrap();
    assert_eq!(body(get(&files, "/current", &[])).await, "a");
    std::fs::remove_file(tree.root.join("current")).unwrap();
    std::os::unix::fs::symlink("b.txt", tree.root.join("current")).unwrap();
    assert_eq!(body(get(&files, "/current", &[])).await, "b");
}

#[test]
fn a_bad_root_is_a_clear_error() {
    let tree = Tree::new("badroot");
    let e = StaticFiles::new(tree.root.join("digits.txt")).unwrap_err();
    assert!(
        e.to_string().ends_with("digits.txt: not a directory"),
        "{e}"
    );
    let e = StaticFiles::new(tree.root.join("nope")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains("nope"), "{e}");
    assert_eq!(
        tree.files().root(),
        tree.root.canonicalize().unwrap().as_path()
    );
}
