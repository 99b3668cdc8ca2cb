//! Optional access log: one `tracing` event per request (target `forklift::access`, level
//! INFO) with method, path, status, body bytes sent, and duration, inside the worker's span
//! (so each line names the worker). Off by default; see
//! [`Prefork::access_log`](crate::Prefork::access_log).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};

/// Wraps a service so each request is logged when its response body ends.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S>(pub S);

impl<S, B> Service<Request<crate::Body>> for AccessLog<S>
where
    S: Service<Request<crate::Body>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<LoggedBody<B>>;
    type Error = S::Error;
    type Future = LoggedFuture<S::Future>;

    fn call(&self, req: Request<crate::Body>) -> Self::Future {
        let entry = Entry {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            start: Instant::now(),
            status: StatusCode::OK,
            bytes: 0,
            file: None,
        };
        LoggedFuture {
            inner: self.0.call(req),
            entry: Some(entry),
        }
    }
}

struct Entry {
    method: Method,
    path: String,
    start: Instant,
    status: StatusCode,
    bytes: u64,
    /// A file the server may send without reading the body (`http/fast/sendfile.rs`).
    file: Option<crate::files::FileRegion>,
}

impl Entry {
    fn log(&self, outcome: &str) {
        tracing::info!(
            target: "forklift::access",
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes + self.file.as_ref().map_or(0, |f| f.0.sent_directly()),
            duration_ms = self.start.elapsed().as_secs_f64() * 1e3,
            "{outcome}"
        );
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLog`].
    pub(crate) struct LoggedFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Entry>,
    }
}

impl<F, B, E> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<LoggedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut entry = this.entry.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(resp) => {
                entry.status = resp.status();
                entry.file = resp.extensions().get().cloned();
                Ok(resp.map(|body| LoggedBody {
                    inner: body,
                    entry: Some(entry),
                }))
            }
            Err(e) => {
                entry.status = StatusCode::INTERNAL_SERVER_ERROR;
                entry.log("handler error");
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes sent and logs the request when it ends.
    pub(crate) struct LoggedBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        entry: Option<Entry>,
    }

    impl<B> PinnedDrop for LoggedBody<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(entry) = this.entry.take() {
                // hyper stops polling a body that says it has ended; one that has not, and
                // is dropped anyway, lost its client.
                if this.inner.is_end_stream() {
                    entry.log("request");
                } else {
                    entry.log("response cut short");
                }
            }
        }
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let (Some(Ok(f)), Some(entry)) = (&frame, this.entry.as_mut()) {
            if let Some(data) = f.data_ref() {
                entry.bytes += bytes::Buf::remaining(data) as u64;
            }
        }
        if frame.is_none() || this.inner.is_end_stream() {
            if let Some(entry) = this.entry.take() {
                entry.log("request");
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
