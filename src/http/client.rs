//! Who a request came from, as a request extension services can read.

use std::net::SocketAddr;

/// The address of the client a request came from: the TCP peer, or, on a listener with
/// the PROXY protocol ([`Prefork::proxy_protocol`](crate::Prefork::proxy_protocol)), the
/// client address the trusted proxy reported.
///
/// Read it from a request's extensions: `req.extensions().get::<ClientAddr>()`. Workers
/// insert it on TCP listeners when something reads it: the access log, the PROXY protocol,
/// or [`Prefork::client_addr(true)`](crate::Prefork::client_addr) (off otherwise: it costs
/// an allocation per request). It is absent on Unix-socket listeners, and behind a PROXY
/// header that names no address (v2 LOCAL, v1 UNKNOWN) it is the proxy's own.
///
/// ```
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::{body::Bytes, Request, Response};
///
/// async fn who(req: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
///     let client = match req.extensions().get::<forklift::ClientAddr>() {
///         Some(forklift::ClientAddr(addr)) => addr.to_string(),
///         None => "-".to_string(),
///     };
///     Ok(Response::new(Full::new(Bytes::from(client))))
/// }
///
/// let server = forklift::Prefork::new().client_addr(true);
/// # let _ = (server, who);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);
