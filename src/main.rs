//! The `turnout` command: parse the command line, set up logging, and hand
//! over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use turnout::app::{self, ListenOverrides};
use turnout::config::{self, Config};

/// mimalloc rather than glibc's malloc: applying a control file of 10 000
/// tenants allocates and frees hundreds of thousands of small strings, and
/// glibc spent most of that time consolidating its free lists (criterion:
/// 227–326 ms with glibc, 129 ms with mimalloc; benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "turnout",
    version,
    about = "A traffic-shifting edge proxy for blue/green delivery"
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
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Demo) => block_on(async { turnout::demo::run().await }),
        Some(Command::Ctl(args)) => ctl(args),
        Some(Command::Upstream { name, listen }) => {
            block_on(async move { turnout::demo::run_upstream(name, listen).await })
        }
        Some(Command::Run(args)) => block_on(run(args)),
        None => block_on(run(cli.run)),
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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn block_on<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            print!("{}", summary(&config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// One line per tenant: hosts, stable pool, weights, endpoint counts.
fn summary(config: &Config) -> String {
    let mut out = String::new();
    for t in &config.tenants {
        let hosts: Vec<String> = t.hosts.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "{}: hosts {}; stable {}; weights blue {} / green {}; endpoints blue {}, green {}{}\n",
            t.name,
            hosts.join(", "),
            t.stable,
            t.weights.blue(),
            t.weights.green(),
            t.pool(config::Color::Blue).len(),
            t.pool(config::Color::Green).len(),
            if t.preview_hosts.is_empty() {
                ""
            } else {
                "; preview"
            },
        ));
    }
    if config.tenants.is_empty() {
        out.push_str("no tenants\n");
    }
    out
}
