//! Reading `GET /v1/events/stream` from `ctl`: the `text/event-stream`
//! format (HTML Living Standard, "Server-sent events") parsed as bytes come,
//! and a follower that reconnects with `Last-Event-ID` so nothing is missed
//! across a dropped connection.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::{AdminClient, CtlError};

/// The server sends a comment every 15 s; three missed mean the connection
/// is dead, and the follower reconnects.
const SILENCE: Duration = Duration::from_secs(45);
/// How long to wait before reconnecting after a dropped stream.
const RECONNECT: Duration = Duration::from_secs(1);

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    /// `event:`; `message` when absent.
    pub kind: String,
    /// `id:`, when given.
    pub id: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Splits a byte stream into messages: lines end in LF, CRLF or CR, a blank
/// line ends a message, `:` starts a comment.
#[derive(Default)]
pub(super) struct Parser {
    pending: Vec<u8>,
    kind: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl Parser {
    /// Takes the next bytes; returns the messages they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A CR at the very end may be the first half of a CRLF.
            if self.pending[end] == b'\r' && end + 1 == self.pending.len() {
                break;
            }
            let skip = if self.pending[end] == b'\r' && self.pending.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.pending.drain(..end + skip).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(Message {
                        kind: self.kind.take().unwrap_or_else(|| "message".to_owned()),
                        id: self.id.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.kind = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (&*line, ""),
            };
            match field {
                "event" => self.kind = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// What a follower is told.
pub(super) enum Update {
    /// An event, as `GET /v1/events` lists it.
    Event(Value),
    /// Events after this seq were lost (the client fell more than the
    /// server's history behind): re-read the state.
    Gap(u64),
}

/// Follows the stream (of one tenant, if given) from `after` (a seq; `None`:
/// from now), reconnecting with `Last-Event-ID`, and hands each update to
/// `on_update`. Returns only on an error the server gives (401, 403, 404),
/// so a caller ends it with a `select!` (Ctrl-C).
pub(super) async fn follow(
    admin: &AdminClient,
    tenant: Option<&str>,
    mut after: Option<u64>,
    mut on_update: impl FnMut(Update),
) -> Result<(), CtlError> {
    let mut path = "/v1/events/stream".to_owned();
    if let Some(t) = tenant {
        path.push_str(&format!("?tenant={t}"));
    }
    loop {
        match read(admin, &path, &mut after, &mut on_update).await {
            Err(Fatal(e)) => return Err(e),
            Ok(()) => tokio::time::sleep(RECONNECT).await,
        }
    }
}

/// An error that reconnecting will not fix.
struct Fatal(CtlError);

/// One connection: `Ok` when it dropped (reconnect), `Fatal` when refused.
async fn read(
    admin: &AdminClient,
    path: &str,
    after: &mut Option<u64>,
    on_update: &mut impl FnMut(Update),
) -> Result<(), Fatal> {
    let url = format!("{}{path}", admin.base.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(&url)
        .header(http::header::ACCEPT, "text/event-stream");
    if let Some(t) = &admin.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(seq) = after {
        req = req.header("last-event-id", seq.to_string());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| Fatal(CtlError(format!("bad admin URL {url}: {e}"))))?;
    let Ok(Ok(resp)) = tokio::time::timeout(SILENCE, admin.client.request(req)).await else {
        return Ok(());
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let value: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let message = value["error"].as_str().unwrap_or("no error message");
        return Err(Fatal(CtlError(format!("{status}: {message}"))));
    }
    let mut body = resp.into_body();
    let mut parser = Parser::default();
    loop {
        let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => return Ok(()),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for message in parser.push(data) {
            match message.kind.as_str() {
                "gap" => {
                    let from: Value = serde_json::from_str(&message.data).unwrap_or(Value::Null);
                    on_update(Update::Gap(from["after"].as_u64().unwrap_or(0)));
                }
                "message" => {
                    let Ok(event) = serde_json::from_str::<Value>(&message.data) else {
                        continue;
                    };
                    if let Some(seq) = event["seq"].as_u64() {
                        *after = Some(seq);
                    }
                    on_update(Update::Event(event));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_split_anywhere_with_any_line_ending() {
        let text = b"retry: 2000\n: turnout events\n\nid: 7\ndata: {\"seq\":7}\n\n: heartbeat\r\n\r\nevent: gap\rdata: {\"after\":3}\r\rid: 9\ndata: a\ndata:b\n\n";
        for cut in 0..text.len() {
            let mut p = Parser::default();
            let mut got = p.push(&text[..cut]);
            got.extend(p.push(&text[cut..]));
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert_eq!(got[0].id.as_deref(), Some("7"));
            assert_eq!(got[0].data, "{\"seq\":7}");
            assert_eq!(got[1].kind, "gap");
            assert_eq!(got[2].data, "a\nb");
            assert_eq!(got[2].kind, "message");
        }
    }
}
