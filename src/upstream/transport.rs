//! Opening a connection to an endpoint in its protocol (SPEC section 15):
//! TCP, then TLS for `https://` (ALPN `h2`, then `http/1.1`), then hyper's
//! HTTP/1.1 or HTTP/2 client handshake — and the request form each needs.
//!
//! Everything here runs when a connection is opened, not per request; the
//! one per-request piece is [`h2_form`], a URI rewrite for HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Version, header};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::UpstreamBody;
use crate::config::Protocol;

/// The request half of an HTTP/2 connection to an endpoint (hyper's
/// `SendRequest`): cloned by every request that shares the connection.
pub type H2Sender = http2::SendRequest<UpstreamBody>;

/// How long an HTTP/2 connection may go without an answer to its keep-alive
/// PING before it is closed (and the next request opens a new one).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The TLS an `https://` endpoint is reached with: the client
/// configuration in force (roots, client certificate, ALPN) and the name
/// verified in its certificate.
#[derive(Debug)]
pub struct TlsTarget {
    /// From the tenant's `upstream_tls`, or the system roots.
    pub client: Arc<rustls::ClientConfig>,
    /// `upstream_tls.server_name`, or the endpoint's host.
    pub server_name: ServerName<'static>,
}

/// A new connection, in the protocol the endpoint speaks (for `https://`,
/// the one ALPN agreed), sending bodies of type `B`.
pub(super) enum Connected<B = UpstreamBody> {
    /// HTTP/1.1: one request at a time, kept alive in the idle queue.
    Http1(http1::SendRequest<B>),
    /// HTTP/2: shared by every request to the endpoint.
    Http2(http2::SendRequest<B>),
}

/// What a request body sent upstream must be (hyper's client bounds).
pub(super) trait SendBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> SendBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect_timeout elapsed")
}

/// Opens a connection to `address` (`host:port`) in `protocol`, within
/// `timeout` for TCP and TLS together, and starts its connection task.
///
/// # Errors
///
/// The connect's, the TLS handshake's (a certificate that does not verify
/// is `InvalidData`) or hyper's handshake's; all are connect failures,
/// errors of the endpoint (`kind="connect"`).
pub(super) async fn connect<B: SendBody>(
    address: &str,
    protocol: Protocol,
    tls: Option<Arc<TlsTarget>>,
    timeout: Duration,
) -> std::io::Result<Connected<B>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(address))
        .await
        .map_err(|_| timed_out())??;
    // Request heads are small and written at once; do not wait for ACKs.
    stream.set_nodelay(true)?;
    match protocol {
        Protocol::Http1 => http1_over(stream).await.map(Connected::Http1),
        Protocol::H2c => http2_over(stream).await.map(Connected::Http2),
        Protocol::Https => {
            let target = tls.ok_or_else(|| std::io::Error::other("no TLS settings"))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&target.client));
            let stream = tokio::time::timeout_at(
                deadline,
                connector.connect(target.server_name.clone(), stream),
            )
            .await
            .map_err(|_| timed_out())??;
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                http2_over(stream).await.map(Connected::Http2)
            } else {
                http1_over(stream).await.map(Connected::Http1)
            }
        }
    }
}

async fn http1_over<T, B: SendBody>(stream: T) -> std::io::Result<http1::SendRequest<B>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // Ends when the upstream closes, the sender is dropped, or an
        // upgrade takes the socket over.
        if let Err(e) = connection.with_upgrades().await {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

async fn http2_over<T, B: SendBody>(stream: T) -> std::io::Result<http2::SendRequest<B>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // Ends when the upstream sends GOAWAY or closes, or when every
        // sender (the endpoint's and the requests') is gone.
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// Puts a request (origin-form, with `Host`, as `proxy::forward` makes it)
/// into the form HTTP/2 sends: `:scheme` and `:authority` from the URI
/// (RFC 9113 §8.3.1), the authority taken from `Host`, which is kept, as
/// RFC 9113 §8.3.1 allows an intermediary to.
pub(super) fn h2_form<B>(request: &mut Request<B>, scheme: http::uri::Scheme) {
    *request.version_mut() = Version::HTTP_2;
    if request.uri().scheme().is_some() {
        return;
    }
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(authority) = authority else { return };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Undoes [`h2_form`] for a request that goes out on HTTP/1.1 after all
/// (an `https://` endpoint that agreed to `http/1.1` on a new connection).
pub(super) fn http1_form<B>(request: &mut Request<B>) {
    if request.version() != Version::HTTP_2 {
        return;
    }
    *request.version_mut() = Version::HTTP_11;
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Either, Empty};

    #[test]
    fn h2_form_takes_the_authority_from_host_and_back() {
        let mut req: Request<UpstreamBody> = Request::get("/a?b=1")
            .header(header::HOST, "shop.test:8080")
            .body(Either::Right(Empty::new()))
            .unwrap();
        h2_form(&mut req, http::uri::Scheme::HTTP);
        assert_eq!(req.uri().to_string(), "http://shop.test:8080/a?b=1");
        assert_eq!(req.version(), Version::HTTP_2);
        h2_form(&mut req, http::uri::Scheme::HTTP);
        assert_eq!(req.uri().to_string(), "http://shop.test:8080/a?b=1");
        http1_form(&mut req);
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
