//! The `turnout` command: parse the command line, set up logging, and hand
//! over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use turnout::app;
use turnout::config::{self, Config, ListenOverrides};

/// mimalloc rather than glibc's malloc: applying a control file of 10 000
/// tenants allocates and frees hundreds of thousands of small strings, and
/// glibc spent most of that time consolidating its free lists (criterion:
/// 227–326 ms with glibc, 129 ms with mimalloc; benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes of every subcommand but `ctl` (which lists its own).
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done (`check`: the file is valid; unset *_env secrets only warn)
  1    error (`check`: the file is invalid; `run`: cannot start)
  64   usage error: unknown flag, missing or malformed argument (EX_USAGE)
`turnout ctl --help` lists the codes of `ctl`.";

#[derive(Parser)]
#[command(
    name = "turnout",
    version,
    about = "A traffic-shifting edge proxy for blue/green delivery",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log line format.
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the control file (the default).
    Run(RunArgs),
    /// Validate a control file and print a summary per tenant.
    Check {
        #[arg(long, env = "TURNOUT_CONFIG", default_value = "config/turnout.toml")]
        config: PathBuf,
    },
    /// Serve a built-in example with two demo upstreams on loopback.
    Demo,
    /// Drive a running turnout through its admin API (token: TURNOUT_TOKEN).
    Ctl(turnout::ctl::CtlArgs),
    /// A demo upstream answering its name (POST /admin/fail, /admin/heal).
    Upstream {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Serve gRPC over h2c instead: grpc.health.v1.Health and server
        /// reflection; /admin/fail makes Health/Check answer NOT_SERVING.
        #[arg(long)]
        grpc: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The control file.
    #[arg(long, env = "TURNOUT_CONFIG", default_value = "config/turnout.toml")]
    config: PathBuf,
    /// Overrides `[listen] http`.
    #[arg(long)]
    listen_http: Option<SocketAddr>,
    /// Overrides `[listen] https`.
    #[arg(long)]
    listen_https: Option<SocketAddr>,
    /// Overrides `[listen] admin`.
    #[arg(long)]
    listen_admin: Option<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Demo) => block_on(async { turnout::demo::run().await }),
        Some(Command::Ctl(args)) => ctl(args),
        Some(Command::Upstream { name, listen, grpc }) => {
            block_on(async move { turnout::demo::run_upstream(name, listen, grpc).await })
        }
        Some(Command::Run(args)) => block_on(run(args)),
        None => block_on(run(cli.run)),
    }
}

/// Prints clap's message and exits: 0 for `--help` and `--version`,
/// `EX_USAGE` (64) for a usage error of any subcommand, not clap's 2,
/// which `turnout ctl --wait` uses for "reverted".
fn usage(e: &clap::Error) -> ExitCode {
    // Nothing sensible is left to do when stdout or stderr is closed.
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(turnout::ctl::EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

fn ctl(args: turnout::ctl::CtlArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => ExitCode::from(rt.block_on(turnout::ctl::run(args))),
        Err(e) => {
            eprintln!("turnout: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TURNOUT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, and never with NO_COLOR set
    // (https://no-color.org): escape codes would litter a log pipeline.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.fmt_fields(escaped_fields()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Text-format fields with every character that could forge or hide a log
/// line escaped (`\n`, `\u{1b}`, ...): field values carry text from outside
/// (hosts, paths, file contents in errors), and the default format writes
/// `%display` values as they are (SPEC §11). JSON lines are escaped by
/// serde_json already.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use std::fmt::Write as _;
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() != "message" {
            write!(w, "{}=", field.name())?;
        }
        write!(Escaping(w), "{value:?}")
    })
    .delimited(" ")
}

/// Writes through, escaping what [`turnout::config::validate::is_log_unsafe`] names.
struct Escaping<'a, W: std::fmt::Write>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        use turnout::config::validate::is_log_unsafe;
        if !s.chars().any(is_log_unsafe) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            if is_log_unsafe(c) {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The most worker threads `TOKIO_WORKER_THREADS` may ask for: far above
/// any core count a proxy runs on (HAProxy's `nbthread` stops at its
/// compile-time `MAX_THREADS`, 64 by default), and low enough that a typo
/// cannot start millions of threads or overflow tokio's allocation.
const MAX_WORKER_THREADS: usize = 1024;

/// Runs `fut` on tokio's runtime and turns its error into exit status 1.
///
/// `TOKIO_WORKER_THREADS` (tokio's own variable) sets how many threads serve
/// traffic; unset, one per core; anything but a whole number from 1 to
/// [`MAX_WORKER_THREADS`] is refused with a message (tokio itself would
/// panic, or start as many threads as asked). With `1`, turnout runs tokio's
/// current-thread scheduler instead of the multi-thread one with one worker:
/// one thread polls every connection, the I/O driver and the timers, with
/// no work-stealing queues or cross-thread wake-ups — how an nginx worker
/// or HAProxy with `nbthread 1` runs; at a fixed rate its p99 is a sixth
/// lower (benches/RESULTS.md, "Issue 20, eighth session"). File work
/// still runs on the blocking pool in both cases.
fn block_on<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let workers = match std::env::var_os("TOKIO_WORKER_THREADS") {
        None => None,
        Some(n) => match n.to_str().and_then(|n| n.trim().parse::<usize>().ok()) {
            Some(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Some(n),
            _ => {
                eprintln!(
                    "turnout: TOKIO_WORKER_THREADS={n:?} is not a number of threads (1 to {MAX_WORKER_THREADS})"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnout: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let overrides = ListenOverrides {
        http: args.listen_http,
        https: args.listen_https,
        admin: args.listen_admin,
    };
    let mut running = app::start(&args.config, overrides).await?;
    running.shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// SPEC §2: errors exit 1; a `*_env` secret missing from this environment is
/// only a warning (files are checked where secrets are not, such as CI).
fn check(path: &std::path::Path) -> ExitCode {
    let checked = config::load(
        path,
        &|var| std::env::var(var).ok(),
        &ListenOverrides::default(),
    );
    if let Some(warnings) = checked.warnings() {
        eprintln!("{warnings}");
        eprintln!(
            "turnout: {} secret(s) not set in this environment: `turnout run` refuses to start without them",
            checked.unset_secrets.len()
        );
    }
    match checked.config {
        Ok(config) => {
            warn_unresolved(path, &config);
            print!("{}", summary(&config));
            if let Some(store) = &config.store {
                print!("{}", store.summary());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// SPEC §13: an endpoint name that does not resolve here is a warning
/// (`PATH:LINE:COL: warning: KEY: cannot resolve ...`), not an error — a
/// file is often checked where its names mean nothing (a CI job), and
/// `run` serves such a pool as empty until the name resolves.
fn warn_unresolved(path: &std::path::Path, config: &Config) {
    if config::dns::names(config).is_empty() {
        return;
    }
    let failed = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(turnout::dns::unresolvable(config)),
        Err(e) => {
            eprintln!("turnout: endpoint names not checked: cannot start the runtime: {e}");
            return;
        }
    };
    if failed.is_empty() {
        return;
    }
    let text = config::read(path).unwrap_or_default();
    for p in config::dns::unresolved_entries(&text, config, &failed) {
        let key = p.key.as_deref().unwrap_or("-");
        eprintln!(
            "{}:{}:{}: warning: {key}: {}",
            path.display(),
            p.line,
            p.col,
            p.message
        );
    }
    eprintln!(
        "turnout: {} endpoint name(s) do not resolve here: their pools have no endpoints until they do",
        failed.len()
    );
}

/// One line per tenant: hosts, stable pool, weights, endpoint counts.
fn summary(config: &Config) -> String {
    let mut out = String::new();
    for t in &config.tenants {
        let hosts: Vec<String> = t.hosts.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "{}: hosts {}; stable {}; weights blue {} / green {}; endpoints blue {}, green {}{}{}\n",
            t.name,
            hosts.join(", "),
            t.stable,
            t.weights.blue(),
            t.weights.green(),
            t.pool(config::Pool::Blue).len(),
            t.pool(config::Pool::Green).len(),
            if t.preview_hosts.is_empty() {
                ""
            } else {
                "; preview"
            },
            config::limit::summary(&t.settings),
        ));
    }
    if config.tenants.is_empty() {
        out.push_str("no tenants\n");
    }
    out
}
