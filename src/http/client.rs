//! Who a request came from, as a request extension services can read.

use std::net::SocketAddr;

/// The address of the client a request came from: the TCP peer, or, on a listener with
/// PROXY protocol from a trusted proxy, the client address the proxy reported.
///
/// Read it from a request's extensions (`req.extensions().get::<ClientAddr>()`); it is
/// absent on Unix-socket listeners and where forklift does not know the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);
