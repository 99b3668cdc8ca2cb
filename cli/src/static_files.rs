//! `forklift serve --dir PATH`: a pre-forked static file server, built on tower-http's
//! `ServeDir` (ranges, ETag and Last-Modified, content types, no path traversal), with the
//! same `x-forklift-worker` header as the demo.

use std::path::{Path, PathBuf};

use http::header::HeaderName;
use http::HeaderValue;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeader;

/// The directory service, as each worker builds it.
pub type DirService = SetResponseHeader<ServeDir, HeaderValue>;

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
        dir,
        HeaderName::from_static("x-forklift-worker"),
        HeaderValue::from(std::process::id()),
    )
}
