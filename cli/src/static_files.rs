//! `forklift serve --dir PATH`: the library's [`StaticFiles`] (ranges, ETag and
//! Last-Modified with their conditional requests, index.html, no way out of the root,
//! `sendfile(2)` on plain HTTP), with the same `x-forklift-worker` header as the demo.

use std::convert::Infallible;
use std::future::Ready;
use std::path::Path;

use forklift::{FileBody, StaticFiles};
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::service::Service;

/// Opens `root` before any worker starts: a missing directory is a clear error, not a
/// server that answers 404 to everything.
pub fn check_root(root: &Path) -> Result<StaticFiles, String> {
    StaticFiles::new(root).map_err(|e| format!("--dir {e}"))
}

/// The service for one worker: the files, and the worker's pid on every answer.
pub fn service(files: &StaticFiles) -> DirService {
    DirService {
        files: files.clone(),
        worker: HeaderValue::from(std::process::id()),
    }
}

/// [`StaticFiles`] with the `x-forklift-worker` header.
#[derive(Clone)]
pub struct DirService {
    files: StaticFiles,
    worker: HeaderValue,
}

const X_FORKLIFT_WORKER: HeaderName = HeaderName::from_static("x-forklift-worker");

impl Service<Request<forklift::Body>> for DirService {
    type Response = Response<FileBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<FileBody>, Infallible>>;

    fn call(&self, req: Request<forklift::Body>) -> Self::Future {
        let mut resp = self.files.respond(&req);
        resp.headers_mut()
            .insert(X_FORKLIFT_WORKER, self.worker.clone());
        std::future::ready(Ok(resp))
    }
}
