//! Active health checks: one probe task per distinct endpoint address.
//!
//! The registry of probes is reconciled after every applied change: a task
//! is spawned for each new address, cancelled for each removed one, and
//! restarted when the address's health settings change. An address listed
//! by several tenants is probed once, with the settings of the first tenant
//! (by name) that lists it. At start-up each task begins at a random point
//! of its interval (so probes of many endpoints spread out); an endpoint
//! added later is probed at once. Each task ticks with
//! `MissedTickBehavior::Skip`, keeps its pass/fail streaks to itself, and
//! publishes only the verdict — the endpoint's `AtomicBool`, which outlives
//! routing tables, so health survives reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::AbortHandle;

mod protocol;

use crate::config::{HealthSettings, Pool, Protocol};
use crate::metrics::{LocalError, Metrics};
use crate::route::{Endpoint, RoutingTable};

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

struct Probe {
    settings: HealthSettings,
    task: AbortHandle,
}

/// The probe tasks, by endpoint address.
pub struct Checker {
    probes: Mutex<HashMap<Box<str>, Probe>>,
    client: ProbeClient,
    /// Set after the first reconcile: endpoints added later are probed at
    /// once rather than at a random point of their interval.
    started: std::sync::atomic::AtomicBool,
    /// Where probes the proxy could not send are counted.
    metrics: Arc<Metrics>,
}

impl Checker {
    /// A checker with no probes yet; probes it cannot send for lack of
    /// resources are counted in `metrics` (`turnout_local_errors_total`).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Checker {
            probes: Mutex::default(),
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .build(connector),
            started: Default::default(),
            metrics,
        }
    }

    /// Makes the running probes match the endpoints of `table`.
    pub fn reconcile(&self, table: &RoutingTable) {
        let mut wanted: HashMap<&str, (&Arc<Endpoint>, &HealthSettings)> = HashMap::new();
        for tenant in table.tenants() {
            for color in Pool::ALL {
                for ep in tenant.endpoints(color) {
                    wanted
                        .entry(&ep.address)
                        .or_insert((ep, &tenant.config.settings.health));
                }
            }
        }
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let spread = !self
            .started
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        probes.retain(|address, probe| {
            let keep = wanted
                .get(&**address)
                .is_some_and(|(_, s)| **s == probe.settings);
            if !keep {
                probe.task.abort();
            }
            keep
        });
        for (address, (endpoint, settings)) in wanted {
            if probes.contains_key(address) {
                continue;
            }
            let task = tokio::spawn(probe_loop(
                Arc::clone(endpoint),
                settings.clone(),
                self.client.clone(),
                Arc::clone(&self.metrics),
                spread,
            ));
            probes.insert(
                address.into(),
                Probe {
                    settings: settings.clone(),
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Stops every probe.
    pub fn stop(&self) {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        for (_, probe) in probes.drain() {
            probe.task.abort();
        }
    }
}

/// Probes one endpoint forever; `spread` starts at a random point of the
/// interval (at start-up, so many endpoints' probes do not bunch up).
async fn probe_loop(
    endpoint: Arc<Endpoint>,
    settings: HealthSettings,
    client: ProbeClient,
    metrics: Arc<Metrics>,
    spread: bool,
) {
    if spread {
        tokio::time::sleep(settings.interval.mul_f64(fastrand::f64())).await;
    }
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        tick.tick().await;
        // The probe loop is the endpoint's one periodic task: it also closes
        // keep-alive connections that have idled too long.
        endpoint.connections.sweep();
        let outcome = probe(&client, &endpoint, &settings).await;
        let healthy = endpoint.is_healthy();
        match outcome {
            // The proxy could not even try (out of file descriptors or
            // ports): says nothing of the endpoint (SPEC section 6).
            Err(Failed::Local(reason, why)) => {
                metrics.local_error(reason);
                tracing::debug!(endpoint = %endpoint.address, reason = %why, "health probe not sent: the proxy is out of resources");
            }
            Ok(()) => {
                passes = passes.saturating_add(1);
                failures = 0;
                if endpoint.outlier.probe_passed(std::time::SystemTime::now()) {
                    tracing::info!(endpoint = %endpoint.address, "endpoint back from outlier ejection: its ejection ended and a probe passed");
                }
                if !healthy && passes >= settings.healthy_after {
                    endpoint.set_healthy(true);
                    tracing::info!(endpoint = %endpoint.address, passes, "endpoint healthy again");
                }
            }
            Err(Failed::Endpoint(why)) => {
                failures = failures.saturating_add(1);
                passes = 0;
                if healthy && failures >= settings.unhealthy_after {
                    endpoint.set_healthy(false);
                    tracing::warn!(endpoint = %endpoint.address, failures, reason = %why, "endpoint unhealthy: no more traffic");
                }
            }
        }
    }
}

/// Why a probe did not pass.
enum Failed {
    /// The endpoint failed it.
    Endpoint(String),
    /// The proxy could not send it.
    Local(LocalError, String),
}

/// One probe: a GET of the health path, passing on 2xx or 3xx in time,
/// sent to the address dialled with the name it came from as `Host` — or,
/// for an `h2c://` or `https://` endpoint or with `grpc = true`, a probe in
/// the endpoint's protocol (`protocol`).
async fn probe(
    client: &ProbeClient,
    endpoint: &Endpoint,
    settings: &HealthSettings,
) -> Result<(), Failed> {
    if endpoint.protocol != Protocol::Http1 || settings.grpc {
        let probed = protocol::probe(endpoint, settings, settings.timeout);
        return match tokio::time::timeout(settings.timeout, probed).await {
            Err(_) => Err(Failed::Endpoint(format!(
                "no answer within {:?}",
                settings.timeout
            ))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(protocol::ProbeError::Answer(why))) => Err(Failed::Endpoint(why)),
            Ok(Err(protocol::ProbeError::Exchange(e))) => Err(match local_cause(&*e) {
                Some(reason) => Failed::Local(reason, e.to_string()),
                None => Failed::Endpoint(e.to_string()),
            }),
        };
    }
    let uri = format!("http://{}{}", endpoint.dial(), settings.path);
    let mut req = Request::get(uri).header(header::USER_AGENT, "turnout-health");
    if let Some(name) = &endpoint.name {
        // An address of a name is probed as the name (SPEC section 13):
        // virtual hosts and ingress rules upstream match on it.
        req = req.header(header::HOST, &**name);
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| Failed::Endpoint(e.to_string()))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| match local_cause(&e) {
                Some(reason) => Failed::Local(reason, e.to_string()),
                None => Failed::Endpoint(e.to_string()),
            })?;
        let status = resp.status();
        // Read the body so the connection can be reused for the next probe.
        let _ = resp.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(Failed::Endpoint(format!("status {status}")))
        }
    };
    tokio::time::timeout(settings.timeout, exchange)
        .await
        .map_err(|_| Failed::Endpoint(format!("no answer within {:?}", settings.timeout)))?
}

/// The proxy's own failure behind an error, if that is what it is.
fn local_cause(e: &(dyn std::error::Error + 'static)) -> Option<LocalError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(local) = c.downcast_ref::<std::io::Error>().and_then(LocalError::of) {
            return Some(local);
        }
        cause = c.source();
    }
    None
}
