//! Every request of a worker passes through [`Guarded`]: it is counted (for recycling and
//! the status table), a handler that panics answers 500 Internal Server Error instead of
//! dropping the connection while the worker keeps serving, and during a shutdown delay an
//! HTTP/1 response carries `Connection: close`, so its client moves to another host on its
//! next request instead of racing a close.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version};

/// Counts requests, turns handler panics into 500 responses, and closes HTTP/1
/// connections after their response while the worker drains.
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    pub inner: S,
    pub served: Rc<Cell<u64>>,
    /// The shutdown delay has begun: HTTP/1 responses say `Connection: close`.
    pub draining: Rc<Cell<bool>>,
}

impl<S, T, B> Service<Request<T>> for Guarded<S>
where
    S: Service<Request<T>, Response = Response<B>>,
{
    type Response = Response<GuardedBody<B>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future>;

    fn call(&self, req: Request<T>) -> Self::Future {
        self.served.set(self.served.get() + 1);
        let close = self.draining.get() && req.version() < Version::HTTP_2;
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => GuardedFuture {
                inner: Some(fut),
                close,
            },
            Err(payload) => {
                log_panic(&*payload);
                GuardedFuture { inner: None, close }
            }
        }
    }
}

/// Marks `resp` as the connection's last one if `close` (by reference: a response moved
/// through here cost a copy of it on every request).
fn mark_close<B>(resp: &mut Response<B>, close: bool) {
    if close {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
}

fn log_panic(payload: &(dyn std::any::Any + Send)) {
    tracing::error!(
        "a request handler panicked: {}; answered 500",
        crate::worker::panic_message(payload)
    );
}

/// The 500 that stands for a handler that panicked; the connection's last one if `close`.
fn internal_error<B>(close: bool) -> Response<GuardedBody<B>> {
    let mut resp = Response::new(GuardedBody::Panicked(Some(Bytes::from_static(
        b"internal server error\n",
    ))));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    mark_close(&mut resp, close);
    resp
}

pin_project_lite::pin_project! {
    /// The future of [`Guarded`]: `None` when the handler panicked before returning one.
    pub(crate) struct GuardedFuture<F> {
        #[pin]
        inner: Option<F>,
        close: bool,
    }
}

impl<F, B, E> Future for GuardedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let last = *this.close;
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(internal_error(last)));
        };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(Ok(resp))) => {
                let mut resp = resp.map(GuardedBody::Inner);
                mark_close(&mut resp, last);
                Poll::Ready(Ok(resp))
            }
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                log_panic(&*payload);
                Poll::Ready(Ok(internal_error(last)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's body, or the 500 body of a handler that panicked.
    #[project = GuardedBodyProj]
    pub(crate) enum GuardedBody<B> {
        Inner { #[pin] body: B },
        Panicked { text: Option<Bytes> },
    }
}

#[allow(non_snake_case)]
impl<B> GuardedBody<B> {
    fn Inner(body: B) -> Self {
        GuardedBody::Inner { body }
    }

    fn Panicked(text: Option<Bytes>) -> Self {
        GuardedBody::Panicked { text }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
{
    // Bytes whatever the handler's data type: `copy_to_bytes` of a `Bytes` is a cheap split.
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            GuardedBodyProj::Inner { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
            }),
            GuardedBodyProj::Panicked { text } => {
                Poll::Ready(text.take().map(|t| Ok(Frame::data(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GuardedBody::Inner { body } => body.is_end_stream(),
            GuardedBody::Panicked { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GuardedBody::Inner { body } => body.size_hint(),
            GuardedBody::Panicked { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
