//! Static files: [`StaticFiles`], the service behind `forklift serve --dir`.
//!
//! `path.rs` turns a request path into a relative path, `cache.rs` keeps open files and what
//! their metadata gives, `validators.rs` answers conditional requests, `range.rs` reads
//! `Range`, and `body.rs` is the response body with the region a server may send by itself
//! (`http/fast/sendfile.rs` does, with `sendfile(2)`). The system calls are in
//! `sys/file.rs`.
//!
//! Why not tower-http's `ServeDir`, which `--dir` used before: each of its file operations
//! (metadata, open, read) is a `tokio::fs` call that crosses to the blocking thread pool and
//! back. In a forklift worker, one thread serving thousands of connections, those hops were
//! the bulk of the cost: 4 KiB files at 256 keep-alive connections took 134 µs of CPU per
//! request, of which `perf` put 45% in futex calls and another 35% in the pool's threads;
//! `strace -c -f` counted 54.7 system calls per request, 46 of them futex. This service makes
//! the few calls a cached file needs on the worker's own thread, as nginx does.

mod body;
mod cache;
mod path;
mod range;
mod validators;

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tracing::debug;

pub use self::body::FileBody;
pub(crate) use self::body::{FileRegion, Region};
use self::cache::{Cache, FileEntry, Found};
use self::range::Ranged;
use self::validators::Conditions;
use crate::sys::file::{open_beneath, open_dir};

/// How long a cached path is trusted before it is resolved again.
const DEFAULT_CACHE_VALIDITY: Duration = Duration::from_secs(1);
/// How many paths the open-file cache keeps.
const DEFAULT_CACHE_CAPACITY: usize = 256;

/// A service that answers `GET` and `HEAD` with the files under a directory: the static
/// file server of `forklift serve --dir`, for any hyper or tower server (an axum `Router`
/// mounts it with `fallback_service` or `nest_service`).
///
/// ```no_run
/// let files = forklift::StaticFiles::new("./public")?;
/// forklift::Prefork::new()
///     .listen("127.0.0.1:8080")?
///     .serve(move || files.clone())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// What it answers:
/// - **Files** with `Content-Type` (by extension, from `mime_guess`), `Content-Length`,
///   `Accept-Ranges: bytes`, `Last-Modified` and a weak `ETag` made of the size and the
///   modification time (`W/"<size hex>-<mtime hex>"`, as nginx's), which every worker computes
///   alike. `HEAD` gets the same headers and no body.
/// - **Directories**: `index.html` for a path that ends with `/`; without the slash, a `307`
///   redirect to it (relative links in the index then work).
/// - **Conditional requests**: `If-None-Match` (weak comparison) and `If-Modified-Since` give
///   `304 Not Modified` with the validators; `If-Unmodified-Since` gives `412`; `If-Range`
///   serves the range only for the current file (a weak tag never passes its strong
///   comparison, a date must equal `Last-Modified`).
/// - **Ranges**: one range gives `206` with `Content-Range`; an unsatisfiable or malformed one
///   gives `416` with `Content-Range: bytes */<size>`; several ranges are refused with `416`
///   (no `multipart/byteranges`).
/// - **Errors**: `404` for a missing file, a path with a `..` segment or a NUL, a file that is
///   only reached through a link out of the root; `403` for a file the worker may not read
///   and for anything that is not a regular file (a FIFO, a device); `405` with
///   `Allow: GET,HEAD` for other methods; `503` if the worker is out of file descriptors.
///
/// **The root, and symbolic links.** Paths are percent-decoded and resolved beneath the
/// root's canonical path. Symbolic links inside the root are followed as long as every step
/// stays inside the root: on Linux the kernel resolves the path with `openat2(2)` and
/// `RESOLVE_BENEATH`, so a link that climbs out (`../x`) or an absolute link fails before
/// anything outside is opened; where `openat2` is missing (macOS, Linux before 5.6) the
/// opened file's own path must lie inside the root (which also admits absolute links that
/// point inside). A hard link to a file outside cannot be told apart and is served.
///
/// **The cost of a request.** No call goes to a blocking thread pool: the service runs on
/// the caller's thread and makes the few system calls a file needs there, as nginx does. A
/// file served before is in the open-file cache ([`cache_validity`](Self::cache_validity),
/// [`cache_capacity`](Self::cache_capacity)) and costs one `fstat(2)`, which also notices a
/// file changed or deleted since; a new path costs an `openat2(2)` and an `fstat(2)`. The body
/// is read in 64 KiB `pread(2)`s as the connection takes it ([`FileBody`]); on a plain HTTP/1
/// connection of a forklift worker the server sends small files from one `pread(2)` into its
/// write buffer and larger ones with `sendfile(2)` from the cached fd, a slice at a time so that
/// other connections of the worker keep being served. Like nginx without `aio threads`, a file
/// that is not in the page cache is read from disk on the worker's thread.
///
/// Clones share one open-file cache. The service is `Send + Sync`, so axum takes it; its
/// cache is behind a mutex, which in a forklift worker (one thread) is never contended.
#[derive(Clone)]
pub struct StaticFiles {
    shared: Arc<Shared>,
    validity: Duration,
    capacity: usize,
}

struct Shared {
    /// The root's canonical path.
    root: PathBuf,
    /// The root, open, for `openat2`.
    dir: OwnedFd,
    cache: Mutex<Cache>,
}

impl fmt::Debug for StaticFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticFiles")
            .field("root", &self.shared.root)
            .field("cache_validity", &self.validity)
            .field("cache_capacity", &self.capacity)
            .finish()
    }
}

/// What a request path led to, when it is not a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Forbidden,
    Unavailable,
    Failed,
}

impl StaticFiles {
    /// Serves the files under `root`, which must be a directory. It is opened now and
    /// resolved to its canonical path; later changes of what `root` names (a symbolic link
    /// pointed elsewhere) are not followed.
    ///
    /// # Errors
    /// `root` does not exist, is not a directory, or cannot be opened; the error names it.
    pub fn new(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        let given = root.as_ref();
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", given.display()));
        let meta = std::fs::metadata(given).map_err(named)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a directory", given.display()),
            ));
        }
        let root = given.canonicalize().map_err(named)?;
        let dir = open_dir(&root).map_err(named)?;
        Ok(StaticFiles {
            shared: Arc::new(Shared {
                root,
                dir,
                cache: Mutex::new(Cache::default()),
            }),
            validity: DEFAULT_CACHE_VALIDITY,
            capacity: DEFAULT_CACHE_CAPACITY,
        })
    }

    /// How long a path in the open-file cache is trusted before it is resolved again
    /// (default 1 s; nginx's `open_file_cache_valid`).
    ///
    /// Within it, each request still checks the cached file with one `fstat(2)`: a file
    /// rewritten in place, deleted, or replaced by a rename is served fresh at once. The
    /// validity bounds the rest: a symbolic link pointed elsewhere, a renamed directory.
    /// `Duration::ZERO` turns the cache off (every request opens its file).
    #[must_use]
    pub fn cache_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// How many paths the open-file cache keeps, each with an open file descriptor (default
    /// 256; nginx's `open_file_cache max=`). Keep it well below the
    /// worker's descriptor limit (`ulimit -n`), which connections need too. 0 turns the cache
    /// off.
    #[must_use]
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The root's canonical path.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Answers one request (only its method, URI and headers are read). This is what the
    /// service implementations call; use it to serve files from inside a handler.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<FileBody> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut resp = status(StatusCode::METHOD_NOT_ALLOWED);
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
                return resp;
            }
        };
        let entry = match self.find(req.uri().path()) {
            Ok(Found::File(entry)) => entry,
            Ok(Found::Dir) => return redirect_to_slash(req.uri()),
            Err(refusal) => return status(refusal.status()),
        };
        file_response(&entry, req.headers(), head)
    }

    /// What `path` names: from the cache, checked with fstat(2), or resolved anew.
    fn find(&self, path: &str) -> Result<Found, Refusal> {
        let now = Instant::now();
        let cached = self.cache().get(path, now, self.validity);
        match cached {
            Some(Found::File(entry)) => match entry.refresh() {
                Ok(None) => return Ok(Found::File(entry)),
                Ok(Some(changed)) => {
                    let changed = Arc::new(changed);
                    self.cache().update(path, changed.clone());
                    return Ok(Found::File(changed));
                }
                // No name left (deleted, or replaced by a rename): resolve the path again.
                Err(_) => self.cache().remove(path),
            },
            Some(found) => return Ok(found),
            None => {}
        }
        let found = self.resolve(path)?;
        self.cache()
            .insert(path, found.clone(), now, self.validity, self.capacity);
        Ok(found)
    }

    /// Opens what `path` names beneath the root.
    fn resolve(&self, path: &str) -> Result<Found, Refusal> {
        let rel = path::relative(path, "index.html").ok_or(Refusal::NotFound)?;
        let shared = &*self.shared;
        let file = open_beneath(shared.dir.as_fd(), &shared.root, &rel.path)
            .map_err(|e| refusal(&e, path))?;
        let meta = file.metadata().map_err(|e| refusal(&e, path))?;
        if meta.is_dir() {
            // `/sub` is a directory: redirect to `/sub/`. An index that is a directory is not
            // a file to serve.
            return if rel.index {
                Err(Refusal::NotFound)
            } else {
                Ok(Found::Dir)
            };
        }
        if !meta.is_file() {
            debug!("{path}: not a regular file: 403");
            return Err(Refusal::Forbidden);
        }
        let content_type = mime_guess::from_path(&rel.path)
            .first_raw()
            .map_or(OCTET_STREAM, HeaderValue::from_static);
        let entry = FileEntry::new(Arc::new(file), &meta, content_type);
        Ok(Found::File(Arc::new(entry)))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while the cache was locked leaves it consistent (each method makes one
        // change to a map): keep using it.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// The status for an error opening or checking a file.
fn refusal(e: &io::Error, path: &str) -> Refusal {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::EXDEV | libc::ELOOP | libc::ENAMETOOLONG) => {
            Refusal::NotFound
        }
        Some(libc::EACCES | libc::EPERM) => Refusal::Forbidden,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => {
            debug!("{path}: {e}: 503");
            Refusal::Unavailable
        }
        _ if e.kind() == io::ErrorKind::NotFound => Refusal::NotFound,
        _ => {
            debug!("{path}: {e}: 500");
            Refusal::Failed
        }
    }
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The answer for a file: 200, 206, 304, 412 or 416.
fn file_response(entry: &FileEntry, headers: &http::HeaderMap, head: bool) -> Response<FileBody> {
    let current = entry.validators;
    let cond = Conditions::parse(headers);
    if cond.precondition_failed(&current) {
        return status(StatusCode::PRECONDITION_FAILED);
    }
    if cond.not_modified(&current) {
        let mut resp = status(StatusCode::NOT_MODIFIED);
        let h = resp.headers_mut();
        h.insert(header::ETAG, entry.etag.clone());
        h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
        return resp;
    }
    let size = current.size;
    let range = if cond.range_allowed(&current) {
        headers.get(header::RANGE)
    } else {
        None
    };
    let (code, start, end) = match range::select(range, size) {
        Ranged::Full => (StatusCode::OK, 0, size),
        Ranged::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
        refused @ (Ranged::Unsatisfiable | Ranged::Multiple) => {
            let mut resp = if refused == Ranged::Multiple {
                let mut r = Response::new(FileBody::text("Cannot serve multipart range requests"));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            } else {
                Response::new(FileBody::empty())
            };
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            h.insert(header::CONTENT_RANGE, unsatisfied_range(size));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
            return resp;
        }
    };
    let mut resp = if head || start == end {
        Response::new(FileBody::empty())
    } else {
        let region = Arc::new(Region::new(entry.file.clone(), start, end));
        let mut resp = Response::new(FileBody::file(region.clone()));
        resp.extensions_mut().insert(FileRegion(region));
        resp
    };
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, entry.content_type.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    h.insert(header::ETAG, entry.etag.clone());
    if code == StatusCode::PARTIAL_CONTENT {
        let text = format!("bytes {}-{}/{size}", start, end - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&text).expect("digits are a header value"),
        );
    }
    if head {
        // A GET's length comes from the body; a HEAD states the length its GET would have.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    resp
}

fn unsatisfied_range(size: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{size}")).expect("digits are a header value")
}

fn status(code: StatusCode) -> Response<FileBody> {
    let mut resp = Response::new(FileBody::empty());
    *resp.status_mut() = code;
    resp
}

/// `307` to the same URI with a `/` after its path (and its query kept), as `ServeDir` does.
fn redirect_to_slash(uri: &Uri) -> Response<FileBody> {
    let mut location = String::with_capacity(uri.path().len() + 1);
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        location.push_str(scheme);
        location.push_str("://");
        location.push_str(authority.as_str());
    }
    location.push_str(uri.path());
    location.push('/');
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut resp = status(StatusCode::TEMPORARY_REDIRECT);
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

impl<B> hyper::service::Service<Request<B>> for StaticFiles {
    type Response = Response<FileBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<FileBody>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
impl<B> tower_service::Service<Request<B>> for StaticFiles {
    type Response = Response<FileBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<FileBody>, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<StaticFiles>();
    is::<FileBody>();
}

#[cfg(test)]
mod tests;
