//! `GET /v1/events/stream` as a test reads it: open a stream (with a token
//! and `Last-Event-ID`), then take its messages one by one, each within a
//! deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::support::{admin_request, client};

/// One message: `id:`, `event:` (`message` when absent), `data:`.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<u64>,
    pub kind: String,
    pub data: String,
}

impl SseMessage {
    /// The data as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("not JSON: {}", self.data))
    }
}

/// An open event stream.
pub struct Sse {
    body: Incoming,
    text: String,
}

/// Opens `path` (`/v1/events/stream?...`); the status and, on 200, the
/// stream. A non-200 answer's body is returned as the error.
pub async fn open_stream(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<u64>,
) -> Result<Sse, (u16, String)> {
    let mut req = admin_request(admin, "GET", path, token, None);
    if let Some(id) = last_event_id {
        req.headers_mut()
            .insert("last-event-id", id.to_string().parse().unwrap());
    }
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    Ok(Sse {
        body: resp.into_body(),
        text: String::new(),
    })
}

/// Opens `path` over HTTP/2 (h2c) with a stream window of `window` bytes:
/// the server may send no more than that until the stream is read, as to
/// a client that stopped reading (hyper releases window only as the body
/// is read).
pub async fn open_stream_h2(admin: SocketAddr, path: &str, window: u32) -> Sse {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .adaptive_window(false)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{admin}{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    Sse {
        body: resp.into_body(),
        text: String::new(),
    }
}

impl Sse {
    /// The next message (comments skipped); fails the test after `within`.
    pub async fn next_within(&mut self, within: Duration) -> SseMessage {
        tokio::time::timeout(within, self.next())
            .await
            .expect("no event stream message in time")
    }

    /// Waits until the server ends the stream; fails the test if a message
    /// comes first or it does not end within `within`.
    pub async fn ends_within(&mut self, within: Duration) {
        let end = tokio::time::timeout(within, async {
            loop {
                match self.body.frame().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            self.text.push_str(std::str::from_utf8(data).unwrap());
                        }
                        assert!(
                            !self.text.contains("data:"),
                            "a message instead of the end: {}",
                            self.text
                        );
                    }
                }
            }
        });
        end.await.expect("the event stream did not end");
    }

    /// The next message, waiting as long as it takes.
    pub async fn next(&mut self) -> SseMessage {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut msg = SseMessage {
                    id: None,
                    kind: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        msg.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        msg.kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        msg.data.push_str(v);
                        has_data = true;
                    }
                }
                if has_data {
                    return msg;
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the event stream ended")
                .unwrap();
            if let Some(data) = frame.data_ref() {
                self.text.push_str(std::str::from_utf8(data).unwrap());
            }
        }
    }
}
