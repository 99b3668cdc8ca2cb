//! The body of a request forklift serves: [`Body`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

/// The body of a request handed to a service by [`Prefork::serve`](crate::Prefork::serve).
///
/// Requests without a body (most GETs) are parsed by forklift's own HTTP/1 fast path and
/// carry an empty `Body`; requests with a body, and every HTTP/2 request, are read by hyper
/// and carry hyper's streaming body. Either way it is an [`http_body::Body`] of [`Bytes`],
/// so `http_body_util::BodyExt::collect` and axum's extractors take it as they are.
///
/// ```
/// use http_body_util::BodyExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = forklift::Body::from("a test body");
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "a test body");
/// # }
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
}

impl Body {
    /// A body with no data, as GET requests have.
    ///
    /// ```
    /// use http_body::Body as _;
    /// assert!(forklift::Body::empty().is_end_stream());
    /// ```
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("Body(empty)"),
            Kind::Full(b) => write!(f, "Body({} bytes)", b.as_ref().map_or(0, Bytes::len)),
            Kind::Incoming(b) => write!(f, "Body({b:?})"),
        }
    }
}

/// hyper's streaming request body.
impl From<Incoming> for Body {
    fn from(body: Incoming) -> Body {
        Body {
            kind: Kind::Incoming(body),
        }
    }
}

/// A body of these bytes (for tests of a handler, say).
impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body {
            kind: Kind::Full(Some(bytes)),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from(Bytes::from(v))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test(flavor = "current_thread")]
    async fn full_body_yields_its_bytes_once() {
        let mut body = Body::from("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(Body::empty().size_hint().exact(), Some(0));
    }
}
