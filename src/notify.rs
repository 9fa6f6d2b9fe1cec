//! Webhook notifications of `slo` and `rollout` events.
//!
//! Events are queued to one sender task and POSTed as JSON there, never on
//! the request path nor in the control task: a slow or dead receiver delays
//! nothing but its own notifications. Each is tried a few times with growing
//! pauses; a final failure is logged and counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;

use crate::control::Event;
use crate::metrics::Metrics;

/// Notifications waiting to be sent; beyond this they are dropped (counted).
const QUEUE: usize = 1024;
/// Attempts per notification, and the pause before the second.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The handle the control task queues notifications on.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<(String, Event)>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the sender task.
    pub fn spawn(metrics: Arc<Metrics>) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<(String, Event)>(QUEUE);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(HttpConnector::new());
        let task_metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            while let Some((url, event)) = rx.recv().await {
                if let Err(error) = deliver(&client, &url, &event).await {
                    task_metrics.notify_failures.increment(1);
                    tracing::warn!(%url, seq = event.seq, %error, "webhook notification failed");
                }
            }
        });
        Notifier { tx, metrics }
    }

    /// Queues `event` for `url` without waiting.
    pub fn send(&self, url: &str, event: Event) {
        if self.tx.try_send((url.to_owned(), event)).is_err() {
            self.metrics.notify_failures.increment(1);
            tracing::warn!(%url, "webhook queue full: notification dropped");
        }
    }
}

async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    event: &Event,
) -> Result<(), String> {
    let body = Bytes::from(serde_json::to_vec(event).map_err(|e| e.to_string())?);
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "turnout")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(format!("{ATTEMPTS} attempts failed, last: {last}"))
}
