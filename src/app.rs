//! Wiring: start the control plane (which loads the control file and makes
//! generation 1), bind the listeners, spawn the serving tasks, and drain on
//! request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config;
pub use crate::config::ListenOverrides;
use crate::control::store::{FileStore, Load, Store};
use crate::control::{self, Control};
use crate::health;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::proxy::Proxy;
use crate::route::TableBuilder;
use crate::server::{self, Transport};

/// Why turnout could not start.
#[derive(Debug)]
pub enum StartError {
    /// The control file does not load or validate (every problem, located).
    Config(config::ConfigError),
    /// A listener could not be bound.
    Bind {
        /// Which listener: `HTTP`, `HTTPS` or `the admin API`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer (address in use, permission).
        error: std::io::Error,
    },
    /// The configuration is valid but cannot be served as asked.
    Refused(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind { what, addr, error } => {
                write!(f, "cannot listen for {what} on {addr}: {error}")
            }
            StartError::Refused(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for StartError {}

/// How often histogram samples are folded into their buckets, bounding the
/// memory the exporter holds between scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A started turnout: its bound addresses and the handle to stop it.
pub struct Running {
    /// The bound HTTP listener (its real port when `:0` was asked for).
    pub http_addr: SocketAddr,
    /// The bound HTTPS listener, when configured.
    pub https_addr: Option<SocketAddr>,
    /// The bound admin listener.
    pub admin_addr: SocketAddr,
    /// The control file being served.
    pub config_path: PathBuf,
    /// The data plane: the routing table and its metrics.
    pub proxy: Arc<Proxy>,
    /// The state routing tables link to (endpoints and tenants by name).
    pub registry: Arc<TableBuilder>,
    /// The handle to submit changes to the control task.
    pub control: Control,
    admin: Arc<Admin>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    admin_stop: watch::Sender<bool>,
    admin_task: tokio::task::JoinHandle<()>,
    signals: Signals,
}

/// The store the control file asks for: the file itself, or with
/// `[store]` etcd for the runtime state (SPEC section 12). A file that does
/// not load is the located error of start-up.
async fn open_store(
    path: &Path,
    overrides: ListenOverrides,
    metrics: &Metrics,
) -> Result<Box<dyn Store>, StartError> {
    let mut file = FileStore::new(path.to_owned(), overrides);
    let first = file.load(Load::Always).await.map_err(StartError::Config)?;
    #[cfg(feature = "etcd")]
    if let Some(store) = first.and_then(|s| s.config.store) {
        return Ok(Box::new(crate::control::etcd::EtcdStore::new(
            file, store, metrics,
        )));
    }
    #[cfg(not(feature = "etcd"))]
    let _ = (first, metrics);
    Ok(Box::new(file))
}

/// Loads `config_path` and starts serving it.
pub async fn start(config_path: &Path, overrides: ListenOverrides) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let (breach_tx, breaches) = tokio::sync::mpsc::unbounded_channel();
    let registry = Arc::new(TableBuilder::new(Arc::clone(&metrics), breach_tx));
    // The admin API and the control plane keep working while the data plane
    // drains, so `/readyz` can say so; they stop last. (Dropped on an early
    // return, the sender stops the control task too.)
    let (admin_stop, admin_stopped) = watch::channel(false);
    let (control, proxy) = control::start(control::Wiring {
        store: open_store(config_path, overrides, &metrics).await?,
        registry: Arc::clone(&registry),
        metrics: Arc::clone(&metrics),
        health: Arc::new(health::Checker::new(Arc::clone(&metrics))),
        notifier: Notifier::spawn(Arc::clone(&metrics)),
        breaches,
        stop: admin_stopped.clone(),
    })
    .await
    .map_err(StartError::Config)?;
    let config = Arc::clone(&proxy.table.load().config);
    let (drain, idle_timeout) = (config.defaults.drain_timeout, config.listen.idle_timeout);
    let listen = config.listen.clone();

    let http = bind("HTTP", listen.http)?;
    let https = listen.https.map(|addr| bind("HTTPS", addr)).transpose()?;
    let admin_listener = bind("the admin API", listen.admin)?;
    let http_addr = local_addr(&http, listen.http);
    let https_addr = https
        .as_ref()
        .zip(listen.https)
        .map(|(l, a)| local_addr(l, a));
    let admin_addr = local_addr(&admin_listener, listen.admin);

    let admin = Arc::new(Admin {
        proxy: Arc::clone(&proxy),
        control: control.clone(),
        ready: false.into(),
        streams: Default::default(),
    });

    let serving = server::ServeSettings {
        drain,
        idle_timeout,
        metrics: Some(Arc::clone(&metrics)),
        connections: Some(metrics.client_connections()),
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(server::serve_proxy(
        http,
        Transport::Plain,
        Arc::clone(&proxy),
        stopped.clone(),
        serving.clone(),
    ));
    if let Some(https) = https {
        let acceptor = crate::server::tls::acceptor(Arc::clone(&proxy.table))
            .map_err(|e| StartError::Refused(format!("cannot set up TLS: {e}")))?;
        tasks.spawn(server::serve_proxy(
            https,
            Transport::Tls(acceptor),
            Arc::clone(&proxy),
            stopped.clone(),
            serving.clone(),
        ));
    }
    let admin_handler = {
        let admin = Arc::clone(&admin);
        move |req, _info| {
            let admin = Arc::clone(&admin);
            async move { admin.handle(req).await }
        }
    };
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        Transport::Plain,
        admin_handler,
        admin_stopped,
        server::ServeSettings {
            drain: Duration::ZERO,
            connections: None,
            ..serving
        },
        None,
    ));
    tasks.spawn(upkeep(Arc::clone(&metrics), stopped.clone()));
    let hup = register(SignalKind::hangup(), "SIGHUP")?;
    tasks.spawn(control::watch::reload_on_sighup(
        control.clone(),
        hup,
        stopped,
    ));
    let signals = Signals {
        term: register(SignalKind::terminate(), "SIGTERM")?,
        int: register(SignalKind::interrupt(), "SIGINT")?,
    };

    admin.ready.store(true, Ordering::Relaxed);
    let https_shown = https_addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
    // How many threads serve traffic, and on which tokio scheduler
    // (`TOKIO_WORKER_THREADS`, src/main.rs): an operator sizing a replica
    // reads it here.
    let runtime = tokio::runtime::Handle::current();
    let scheduler = match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    };
    let workers = runtime.metrics().num_workers();
    tracing::info!(%http_addr, https_addr = %https_shown, %admin_addr, config = %config_path.display(), workers, scheduler, "turnout serving");
    Ok(Running {
        http_addr,
        https_addr,
        admin_addr,
        config_path: config_path.to_owned(),
        proxy,
        registry,
        control,
        admin,
        stop,
        tasks,
        admin_stop,
        admin_task,
        signals,
    })
}

impl Running {
    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn shutdown_signal(&mut self) {
        tokio::select! {
            _ = self.signals.term.recv() => tracing::info!("SIGTERM: draining"),
            _ = self.signals.int.recv() => tracing::info!("SIGINT: draining"),
        }
    }

    /// Stops accepting, lets requests in flight finish (up to the drain
    /// timeout), and returns when they have.
    pub async fn shutdown(mut self) {
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        tracing::info!("turnout stopped");
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    server::bind(addr).map_err(|error| StartError::Bind { what, addr, error })
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

async fn upkeep(metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.run_upkeep(),
            _ = server::stopped(&mut stop) => return,
        }
    }
}

/// The signals turnout acts on, registered before it reports ready so that
/// none can arrive to find the default action (which would kill it).
struct Signals {
    term: Signal,
    int: Signal,
}

fn register(kind: SignalKind, name: &'static str) -> Result<Signal, StartError> {
    signal(kind).map_err(|e| StartError::Refused(format!("cannot listen for {name}: {e}")))
}
