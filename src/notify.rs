//! Webhook notifications of `slo` and `rollout` events.
//!
//! Events are queued to one sender task and POSTed as JSON there, never on
//! the request path nor in the control task: a slow or dead receiver delays
//! nothing but its own notifications. Each is tried a few times with growing
//! pauses; a final failure is logged and counted.
//!
//! `https://` receivers are reached over rustls (hyper-rustls on hyper-util's
//! pooled client, the connector hyper's own examples use), with the URL's
//! host as SNI and as the name the certificate must carry. The certificate
//! must chain to the `[notify] ca` bundle when one is set, else to the
//! system's trust store (`rustls-native-certs`: the roots the machine's
//! operator manages, honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`, rather
//! than a copy of Mozilla's list frozen into the binary). A certificate that
//! does not verify fails the attempt like a refused connection.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tokio::sync::mpsc;

use crate::config::{CaBundle, Webhook};
use crate::metrics::Metrics;

/// Notifications waiting to be sent; beyond this they are dropped (counted).
const QUEUE: usize = 1024;
/// Attempts per notification, and the pause before the second.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for plain and TLS receivers alike.
type HookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One notification: an event already serialised as the JSON body to POST,
/// and its sequence number for logs.
struct Notification {
    seq: u64,
    body: Bytes,
}

/// The handle the control task queues notifications on.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<(Webhook, Notification)>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the sender task.
    pub fn spawn(metrics: Arc<Metrics>) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<(Webhook, Notification)>(QUEUE);
        let task_metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut clients = Clients::default();
            while let Some((hook, note)) = rx.recv().await {
                let client = clients.for_hook(&hook).await;
                if let Err(error) = deliver(client, &hook.url, note.body).await {
                    task_metrics.notify_failures.increment(1);
                    tracing::warn!(url = %hook.url, seq = note.seq, %error, "webhook notification failed");
                }
            }
        });
        Notifier { tx, metrics }
    }

    /// Queues `event` (numbered `seq`, for logs) for `hook` without
    /// waiting: it is serialised as JSON here, POSTed by the sender task.
    /// An event that cannot be serialised, or a full queue, is a failure
    /// (logged and counted).
    pub fn send(&self, hook: &Webhook, seq: u64, event: &impl serde::Serialize) {
        let body = match serde_json::to_vec(event) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                self.metrics.notify_failures.increment(1);
                tracing::warn!(url = %hook.url, seq, %error, "webhook notification not serialisable");
                return;
            }
        };
        if self
            .tx
            .try_send((hook.clone(), Notification { seq, body }))
            .is_err()
        {
            self.metrics.notify_failures.increment(1);
            tracing::warn!(url = %hook.url, "webhook queue full: notification dropped");
        }
    }
}

/// One pooled client per trust, made when first needed.
#[derive(Default)]
struct Clients {
    /// For `http://` receivers: never verifies anything, trusts nothing.
    plain: Option<HookClient>,
    /// Verifies against the system's trust store.
    system: Option<HookClient>,
    /// Verifies against the current `[notify] ca` (rebuilt when it changes).
    bundle: Option<(CaBundle, HookClient)>,
}

impl Clients {
    async fn for_hook(&mut self, hook: &Webhook) -> &HookClient {
        match &hook.ca {
            Some(ca) => {
                if self.bundle.as_ref().is_some_and(|(have, _)| have != ca) {
                    self.bundle = None;
                }
                &self
                    .bundle
                    .get_or_insert_with(|| (ca.clone(), client(bundle_roots(ca))))
                    .1
            }
            None if hook.url.starts_with("https://") => {
                if self.system.is_none() {
                    // Reads the store's files: off the runtime's workers.
                    let roots = tokio::task::spawn_blocking(system_roots)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot load the system's root certificates");
                            RootCertStore::empty()
                        });
                    self.system = Some(client(roots));
                }
                self.system
                    .get_or_insert_with(|| client(RootCertStore::empty()))
            }
            None => self
                .plain
                .get_or_insert_with(|| client(RootCertStore::empty())),
        }
    }
}

/// The roots of a `[notify] ca` bundle (validation made sure they parse).
fn bundle_roots(ca: &CaBundle) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(ca.roots.iter().cloned());
    tracing::debug!(ca = %ca.path.display(), added, ignored, "webhook roots loaded");
    roots
}

/// The system's trust store (logged when it is empty: every `https://`
/// delivery without `[notify] ca` then fails).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "a system root certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        tracing::warn!(
            "no system root certificates found (install ca-certificates, set SSL_CERT_FILE, or set [notify] ca): https:// webhooks will fail"
        );
    } else {
        tracing::debug!(
            added,
            ignored,
            "system root certificates loaded for webhooks"
        );
    }
    roots
}

fn client(roots: RootCertStore) -> HookClient {
    let tls = rustls::ClientConfig::builder_with_provider(crate::config::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// An error and its causes, as one line (`client error (Connect): invalid
/// peer certificate: UnknownIssuer`): the outermost alone says little.
fn with_causes(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn deliver(client: &HookClient, url: &str, body: Bytes) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "turnout")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            let resp = client.request(req).await.map_err(|e| with_causes(&e))?;
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
