//! Resolving endpoint names (SPEC section 13): one background task per
//! distinct name, never on the request path.
//!
//! Each task asks the resolver for the name's A and AAAA records every
//! `[dns] refresh` — whatever the answer's TTL, as Envoy's STRICT_DNS does
//! by default — and hands an answer that differs from the last to the
//! control task as a [`Resolution`]. The control task records it and
//! rebuilds the routing table through its one change path, so the table
//! stays immutable and the swap stays the only way the data plane changes;
//! `route::named` expands each name into one endpoint per address. A failed
//! lookup (no answer, an error, no address at all) sends nothing: the name
//! keeps its last addresses, and the failure is logged and counted in
//! `turnout_dns_failures_total{name}`.
//!
//! The resolver is hickory's, configured from `/etc/resolv.conf` (its name
//! servers, search domains and `ndots`, so Kubernetes' short Service names
//! work) unless `[dns] servers` names the servers to ask. `/etc/hosts` is
//! read first, as the C library does.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use metrics::Counter;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::config::dns::names;
use crate::config::{Config, DnsSettings};
use crate::metrics::Metrics;
use crate::route::Addresses;

/// How long one query to one name server may take before the resolver
/// tries again or gives up (twice in all, across the servers).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a new version of the state waits for its new names
/// ([`Discovery::resolve_new`]); past it, they join when their task
/// resolves them.
const RESOLVE_NEW_LIMIT: Duration = Duration::from_secs(3);

/// A name's new set of addresses, for the control task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The name as the pools spell it (without the port).
    pub name: String,
    /// Its addresses, sorted, deduplicated, never empty.
    pub addresses: Vec<IpAddr>,
}

/// The resolver of one `[dns]` table, or why it could not be made (every
/// lookup through it then fails with that reason, counted like any
/// failure).
type Shared = Result<Arc<TokioResolver>, Arc<str>>;

struct Task {
    abort: AbortHandle,
    /// The resolver generation it was started with.
    epoch: u64,
}

/// The resolution tasks, by name. Owned by the control task, its only user.
pub struct Discovery {
    settings: Option<DnsSettings>,
    resolver: Shared,
    /// Grows when the `[dns]` settings change: tasks of an older epoch
    /// are restarted with the new resolver.
    epoch: u64,
    tasks: HashMap<String, Task>,
    /// Names [`Discovery::resolve_new`] just looked up: their tasks wait
    /// one refresh before their first lookup.
    primed: HashSet<String>,
    tx: mpsc::UnboundedSender<Resolution>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// No tasks yet; their answers arrive on the receiver.
    pub fn new(metrics: Arc<Metrics>) -> (Discovery, mpsc::UnboundedReceiver<Resolution>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let discovery = Discovery {
            settings: None,
            resolver: Err("not configured".into()),
            epoch: 0,
            tasks: HashMap::new(),
            primed: HashSet::new(),
            tx,
            metrics,
        };
        (discovery, rx)
    }

    /// The resolver for `settings`, made anew when they changed.
    fn resolver(&mut self, settings: &DnsSettings) -> Shared {
        if self.settings.as_ref() != Some(settings) {
            self.resolver = resolver(settings).map(Arc::new).map_err(|e| {
                tracing::error!(error = %e, "no DNS resolver: endpoint names will not resolve");
                Arc::from(e)
            });
            self.settings = Some(settings.clone());
            self.epoch += 1;
        }
        self.resolver.clone()
    }

    /// Resolves, at once and all together, the names of `config` that have
    /// no addresses in `known` and no task trying yet, so a table built
    /// next has them (Envoy warms a STRICT_DNS cluster the same way before
    /// using it). Waits at most [`RESOLVE_NEW_LIMIT`]; a failure is logged
    /// and counted, and the name's task tries again.
    pub async fn resolve_new(&mut self, config: &Config, known: &Addresses) -> Vec<Resolution> {
        let resolver = self.resolver(&config.dns);
        let mut lookups = JoinSet::new();
        for name in names(config) {
            let trying = self.tasks.get(name).is_some_and(|t| t.epoch == self.epoch);
            if known.get(name).is_some() || trying {
                continue;
            }
            self.primed.insert(name.to_owned());
            let (resolver, name) = (resolver.clone(), name.to_owned());
            lookups.spawn(async move {
                let result = lookup(&resolver, &name).await;
                (name, result)
            });
        }
        let mut found = Vec::new();
        let collect = async {
            while let Some(joined) = lookups.join_next().await {
                let Ok((name, result)) = joined else { continue };
                match result {
                    Ok(addresses) => found.push(Resolution { name, addresses }),
                    Err(error) => {
                        self.metrics.dns_failures(&name).increment(1);
                        tracing::warn!(%name, %error, "endpoint name does not resolve: its pool entries have no endpoint yet");
                    }
                }
            }
        };
        if tokio::time::timeout(RESOLVE_NEW_LIMIT, collect)
            .await
            .is_err()
        {
            tracing::warn!(
                "endpoint names still resolving after {RESOLVE_NEW_LIMIT:?}: they join when they resolve"
            );
        }
        found
    }

    /// Makes the running tasks match the names of `config`: one per name,
    /// started for new names (with the last addresses in `known`, so an
    /// unchanged answer is not sent again), stopped for names no pool
    /// lists, restarted all when `[dns]` changed.
    pub fn reconcile(&mut self, config: &Config, known: &Addresses) {
        let resolver = self.resolver(&config.dns);
        let wanted = names(config);
        let epoch = self.epoch;
        self.tasks.retain(|name, task| {
            let keep = task.epoch == epoch && wanted.contains(name.as_str());
            if !keep {
                task.abort.abort();
            }
            keep
        });
        for name in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            let every = config.dns.refresh;
            let first = match self.primed.contains(name) {
                true => tokio::time::Instant::now() + every,
                false => tokio::time::Instant::now(),
            };
            let task = tokio::spawn(refresh(
                name.to_owned(),
                resolver.clone(),
                (first, every),
                known.get(name).map(<[IpAddr]>::to_vec),
                self.tx.clone(),
                self.metrics.dns_failures(name),
            ));
            let abort = task.abort_handle();
            self.tasks.insert(name.to_owned(), Task { abort, epoch });
        }
        self.primed.clear();
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort.abort();
        }
    }
}

/// One name's task: a lookup at `first` (at once, or a refresh after the
/// lookup that primed it), then every `every`; sends each answer that
/// differs from `last`.
async fn refresh(
    name: String,
    resolver: Shared,
    (first, every): (tokio::time::Instant, Duration),
    mut last: Option<Vec<IpAddr>>,
    tx: mpsc::UnboundedSender<Resolution>,
    failures: Counter,
) {
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tick.tick().await;
        match lookup(&resolver, &name).await {
            Ok(addresses) => {
                if failing {
                    tracing::info!(%name, "endpoint name resolves again");
                    failing = false;
                }
                if last.as_ref() != Some(&addresses) {
                    last = Some(addresses.clone());
                    let resolution = Resolution {
                        name: name.clone(),
                        addresses,
                    };
                    if tx.send(resolution).is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                failures.increment(1);
                // Once per outage at WARN, not every refresh.
                if failing {
                    tracing::debug!(%name, %error, "endpoint name still does not resolve");
                } else {
                    tracing::warn!(%name, %error, "endpoint name does not resolve: keeping its last addresses");
                    failing = true;
                }
            }
        }
    }
}

/// The A and AAAA addresses of `name`, sorted and deduplicated; an answer
/// without any is an error.
pub async fn lookup(resolver: &Shared, name: &str) -> Result<Vec<IpAddr>, String> {
    let resolver = resolver.as_ref().map_err(|e| e.to_string())?;
    let answer = resolver.lookup_ip(name).await.map_err(|e| {
        if e.is_nx_domain() {
            "no such name (NXDOMAIN)".to_owned()
        } else if e.is_no_records_found() {
            "no A or AAAA record".to_owned()
        } else {
            e.to_string()
        }
    })?;
    let mut addresses: Vec<IpAddr> = answer.iter().collect();
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.is_empty() {
        return Err("no A or AAAA record".to_owned());
    }
    Ok(addresses)
}

/// A resolver for `settings`: the system's (`/etc/resolv.conf`), or one
/// asking exactly `servers` (UDP, TCP for truncated answers) with no
/// search domains. Answers are not cached beyond the lookup, so every
/// refresh asks the servers.
pub fn resolver(settings: &DnsSettings) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let servers = settings
            .servers
            .iter()
            .map(|server| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = server.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(server.ip(), true, connections)
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            provider,
        );
        *builder.options_mut() = ResolverOpts::default();
        builder
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = QUERY_TIMEOUT.min(options.timeout);
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    builder
        .build()
        .map_err(|e| format!("cannot make the resolver: {e}"))
}

/// The names of `config` that do not resolve now, with why, sorted by
/// name: what `turnout check` warns about (a file may well be checked where
/// its names do not resolve, such as a CI job).
pub async fn unresolvable(config: &Config) -> Vec<(String, String)> {
    let shared: Shared = resolver(&config.dns).map(Arc::new).map_err(Arc::from);
    let mut lookups = JoinSet::new();
    for name in names(config) {
        let (resolver, name) = (shared.clone(), name.to_owned());
        lookups.spawn(async move {
            let result = lookup(&resolver, &name).await;
            (name, result)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((name, Err(error))) = joined {
            failed.push((name, error));
        }
    }
    failed.sort();
    failed
}
