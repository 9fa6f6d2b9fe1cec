//! Raw sockets, for what hyper will not do: upstreams that answer with
//! exactly the bytes a test gives (bad framing, trailers, an unasked 101),
//! that never answer or close at a chosen moment; and a client that writes
//! bytes as they are.
//!
//! ```ignore
//! let up = RawUpstream::answering(ok_with_head).spawn().await;   // records heads
//! let up = RawUpstream::replying(OK).closing_after(1).spawn().await;
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a raw upstream sends for a request head; `None`: nothing.
type UpstreamResponse = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A raw HTTP/1.1 upstream, running. It answers `GET /healthz` probes with
/// an empty 200 (not recorded); every other request head is recorded in
/// `heads` and answered as it was built to, whatever the body.
pub struct RawUpstream {
    pub addr: SocketAddr,
    /// The request heads read, probes left out, oldest first.
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
}

/// How a `RawUpstream` behaves; `spawn` starts it.
#[must_use]
pub struct RawBuilder {
    answer: UpstreamResponse,
    per_connection: Option<usize>,
    close_each: bool,
}

impl RawUpstream {
    /// Answers each request with `answer(head)` and keeps the connection.
    pub fn answering(answer: fn(&str) -> String) -> RawBuilder {
        RawBuilder::new(Arc::new(move |head: &str| Some(answer(head))))
    }

    /// Answers each request with `reply` and keeps the connection.
    pub fn replying(reply: &'static str) -> RawBuilder {
        RawBuilder::new(Arc::new(move |_: &str| Some(reply.to_owned())))
    }

    /// Reads requests and never answers one (probes still are).
    pub fn silent() -> RawBuilder {
        RawBuilder::new(Arc::new(|_: &str| None))
    }
}

impl RawBuilder {
    fn new(answer: UpstreamResponse) -> RawBuilder {
        RawBuilder {
            answer,
            per_connection: None,
            close_each: false,
        }
    }

    /// After `n` answers on a connection, closes it without a word when the
    /// next request comes (as an upstream whose keep-alive timer fired at
    /// that moment would).
    pub fn closing_after(mut self, n: usize) -> RawBuilder {
        self.per_connection = Some(n);
        self
    }

    /// Closes the connection after each answer.
    pub fn closing_each(mut self) -> RawBuilder {
        self.close_each = true;
        self
    }

    /// Binds `127.0.0.1:0` and serves.
    pub async fn spawn(self) -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = RawUpstream {
            addr: listener.local_addr().unwrap(),
            heads: Arc::default(),
            accepted: Arc::default(),
        };
        let (heads, accepted) = (Arc::clone(&up.heads), Arc::clone(&up.accepted));
        let behaviour = Arc::new(self);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let (heads, behaviour) = (Arc::clone(&heads), Arc::clone(&behaviour));
                tokio::spawn(behaviour.serve(stream, heads));
            }
        });
        up
    }

    async fn serve(
        self: Arc<Self>,
        mut stream: tokio::net::TcpStream,
        heads: Arc<Mutex<Vec<String>>>,
    ) {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = 0;
        loop {
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
                pending.drain(..end + 4);
                if head.starts_with("GET /healthz") {
                    let probe_ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(probe_ok.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                heads.lock().unwrap().push(head.clone());
                if self.per_connection.is_some_and(|n| answered >= n) {
                    return;
                }
                answered += 1;
                let Some(reply) = (self.answer)(&head) else {
                    continue;
                };
                if stream.write_all(reply.as_bytes()).await.is_err() || self.close_each {
                    return;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// A 200 whose body is the request head it answers.
pub fn ok_with_head(head: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
        head.len()
    )
}

/// The status code of a raw HTTP/1.x reply (`""` if there is none).
pub fn status_of(reply: &str) -> &str {
    reply.get(9..12).unwrap_or("")
}

/// Writes `request` on a fresh connection and reads until the server closes
/// it or stops sending for a moment.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `bytes` hold a whole response with a Content-Length body.
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = declared_length(&text[..head_end]).map(|v| v.parse::<usize>().unwrap_or(0));
    len.is_some_and(|n| bytes.len() >= head_end + 4 + n)
}

/// The value of a response head's `Content-Length` field (name in any
/// case), trimmed; `None` without one.
fn declared_length(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then_some(value.trim())
    })
}

/// Reads one whole response (its head's `content-length` body) from `s`,
/// a client's connection; returns the head and the body. Fails on a
/// close, on more bytes than one response, or after 15 s without bytes.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length: usize = declared_length(&head)
                .expect("a content-length")
                .parse()
                .unwrap();
            if got.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).to_string();
                got.drain(..end + 4 + length);
                assert!(got.is_empty(), "more bytes than one response");
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}
