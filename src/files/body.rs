//! The body of a file response: [`FileBody`], and the [`FileRegion`] a server can send by
//! itself instead of reading the body.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use crate::sys::file::pread_append;

/// How much of a file one frame of a [`FileBody`] carries, read with one `pread(2)`.
pub(crate) const CHUNK: usize = 64 * 1024;

/// The body of a [`StaticFiles`](crate::StaticFiles) response: a range of an open file, a
/// short text, or nothing.
///
/// Read as an [`http_body::Body`], a file comes in frames of 64 KiB, each read with one
/// `pread(2)` on the task's own thread when the connection asks for it: never the whole file
/// in memory, and never a hop to a blocking thread pool (a read of cached pages takes
/// microseconds). On a plain HTTP/1.1 connection of a forklift worker, the server does not
/// read the body at all: it sends the file with `sendfile(2)` (see [`StaticFiles`]). A
/// middleware that rewrites body bytes without changing their length (rare: compression
/// changes the length and so keeps the bytes going through the body) must remove the
/// response's extensions, which carry the file to the server.
///
/// [`StaticFiles`]: crate::StaticFiles
pub struct FileBody {
    kind: Kind,
}

enum Kind {
    Empty,
    Text(Option<Bytes>),
    File(Arc<Region>),
}

impl FileBody {
    pub(super) fn empty() -> FileBody {
        FileBody { kind: Kind::Empty }
    }

    pub(super) fn text(text: &'static str) -> FileBody {
        FileBody {
            kind: Kind::Text(Some(Bytes::from_static(text.as_bytes()))),
        }
    }

    pub(super) fn file(region: Arc<Region>) -> FileBody {
        FileBody {
            kind: Kind::File(region),
        }
    }
}

impl fmt::Debug for FileBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("FileBody(empty)"),
            Kind::Text(t) => write!(f, "FileBody({} bytes)", t.as_ref().map_or(0, Bytes::len)),
            Kind::File(r) => write!(f, "FileBody({:?})", r),
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Text(t) => Poll::Ready(t.take().map(|t| Ok(Frame::data(t)))),
            Kind::File(region) => {
                Poll::Ready(region.read_chunk().transpose().map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Text(t) => t.is_none(),
            Kind::File(region) => region.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(match &self.kind {
            Kind::Empty => 0,
            Kind::Text(t) => t.as_ref().map_or(0, |t| t.len() as u64),
            Kind::File(region) => region.remaining(),
        })
    }
}

/// A byte range of an open file still to be sent, shared by a [`FileBody`] and its
/// response's [`FileRegion`] extension: whoever sends bytes (the body as it is read, or the
/// server with `sendfile(2)`) advances it, so the other sees what is left.
pub(crate) struct Region {
    file: Arc<File>,
    next: AtomicU64,
    end: u64,
    /// Bytes the server sent by itself, without reading the body (for the access log).
    direct: AtomicU64,
}

impl Region {
    pub(super) fn new(file: Arc<File>, start: u64, end: u64) -> Region {
        Region {
            file,
            next: AtomicU64::new(start),
            end,
            direct: AtomicU64::new(0),
        }
    }

    /// The open file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The offset of the next byte to send.
    pub(crate) fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// How many bytes are left to send.
    pub(crate) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next())
    }

    /// Records `n` more bytes sent by the server itself.
    pub(crate) fn advance_direct(&self, n: u64) {
        self.next.fetch_add(n, Ordering::Relaxed);
        self.direct.fetch_add(n, Ordering::Relaxed);
    }

    /// How many bytes the server sent by itself.
    pub(crate) fn sent_directly(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Reads the next chunk, `None` at the end. A file that ends before the region does (it
    /// was truncated while being sent) is an error: the response cannot be completed.
    fn read_chunk(&self) -> io::Result<Option<Bytes>> {
        let next = self.next();
        let n = self.end.saturating_sub(next).min(CHUNK as u64) as usize;
        if n == 0 {
            return Ok(None);
        }
        let mut buf = Vec::new();
        pread_append(self.file.as_fd(), &mut buf, n, next)?;
        self.next.store(next + n as u64, Ordering::Relaxed);
        Ok(Some(Bytes::from(buf)))
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}..{} of a file", self.next(), self.end)
    }
}

/// A response extension that hands the file behind a [`FileBody`] to the server, which may
/// send it by itself (with `sendfile(2)`) instead of reading the body. It checks first that
/// the body still promises exactly the region's bytes.
#[derive(Clone)]
pub(crate) struct FileRegion(pub(crate) Arc<Region>);

impl fmt::Debug for FileRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn file_with(tag: &str, bytes: &[u8]) -> (std::path::PathBuf, Arc<File>) {
        let path = std::env::temp_dir().join(format!("forklift-body-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        (path, file)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_region_is_read_in_chunks_and_only_once() {
        let data: Vec<u8> = (0..CHUNK * 2 + 100).map(|i| (i % 251) as u8).collect();
        let (path, file) = file_with("chunks", &data);
        let region = Arc::new(Region::new(file, 10, data.len() as u64 - 5));
        let mut body = FileBody::file(region.clone());
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64 - 15));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), CHUNK, "one pread per frame, 64 KiB");
        let rest = body.collect().await.unwrap().to_bytes();
        let mut all = first.to_vec();
        all.extend_from_slice(&rest);
        assert_eq!(all, &data[10..data.len() - 5]);
        assert_eq!(region.remaining(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn what_the_server_sent_is_not_read_again() {
        let (path, file) = file_with("direct", b"0123456789");
        let region = Arc::new(Region::new(file, 0, 10));
        let mut body = FileBody::file(region.clone());
        region.advance_direct(10);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(region.sent_directly(), 10);
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_file_that_shrank_fails_the_body() {
        let (path, file) = file_with("shrank", b"0123456789");
        let region = Arc::new(Region::new(file, 0, 10));
        std::fs::write(&path, b"01234").unwrap();
        let mut body = FileBody::file(region);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        std::fs::remove_file(path).unwrap();
    }
}
