//! `turnout ctl`: the admin API from a shell or a CD pipeline.
//!
//! Every subcommand is one or two admin calls; `--wait` follows a rollout by
//! polling the tenant view and turns its outcome into the exit code, so a
//! pipeline step can gate on it (see [`EXIT_CODES_HELP`]). Each outcome has
//! a code of its own: a usage error must never read as a revert.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

mod follow;
mod sse;
mod watch;

/// Done: the call succeeded; with `--wait`, the candidate became stable.
pub const EXIT_OK: u8 = 0;
/// The call failed: the admin API refused it or could not be reached.
pub const EXIT_ERROR: u8 = 1;
/// `--wait`: the SLO guard reverted the candidate.
pub const EXIT_REVERTED: u8 = 2;
/// `--wait`: the rollout ended without a promotion (a rollback, new weights).
pub const EXIT_ENDED: u8 = 3;
/// The command line is wrong (an unknown flag, a missing or malformed
/// argument): `EX_USAGE` of sysexits(3), the conventional code for it, and
/// far from the codes above, so a typo in a pipeline never reads as a
/// revert (clap's own default, 2, would). `turnout` uses it for every
/// subcommand.
pub const EXIT_USAGE: u8 = 64;
/// `--wait --timeout`: the rollout was still running when the time was up
/// (it keeps running). 124 is what timeout(1) exits with, so wrapping the
/// command in `timeout` or not gives a pipeline the same code.
pub const EXIT_TIMEOUT: u8 = 124;

/// The exit codes, as `turnout ctl --help` lists them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done; with --wait: the candidate was promoted (it is now stable)
  1    error: the admin API refused the call or could not be reached
  2    --wait: the candidate was reverted (the SLO guard pulled it back)
  3    --wait: the rollout ended without a promotion (rollback, new weights)
  64   usage error: unknown flag, missing or malformed argument (EX_USAGE)
  124  --wait --timeout: still running when the time was up (it keeps running)";

/// `turnout ctl`: its flags and subcommand.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct CtlArgs {
    /// The admin API: an http:// URL.
    #[arg(long, env = "TURNOUT_ADMIN", default_value = "http://127.0.0.1:9901", value_parser = parse_admin_url)]
    pub admin: String,
    /// Print the admin API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The call to make.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The admin calls `turnout ctl` makes.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Exit 0 when turnout is ready to serve (`/readyz`), 1 otherwise: for
    /// container health checks.
    Ready,
    /// Show every tenant, or one.
    Status {
        /// The tenant to show; every tenant the token may see when absent.
        tenant: Option<String>,
        /// Keep showing it until Ctrl-C: a screen redrawn on each event on a
        /// terminal; otherwise (or with --json) the line (JSON) of the
        /// tenant each event is about.
        #[arg(long)]
        watch: bool,
    },
    /// Set a tenant's weights.
    Weights {
        /// The tenant whose weights to set.
        tenant: String,
        /// The blue pool's weight (0 to 1000000; not both 0).
        blue: u32,
        /// The green pool's weight (0 to 1000000; not both 0).
        green: u32,
        /// Only if the control state is still at this generation.
        #[arg(long)]
        if_match: Option<u64>,
        /// Even if the candidate has no healthy endpoint.
        #[arg(long)]
        force: bool,
        /// Why, recorded in the event (one line, at most 1024 bytes).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start the tenant's configured ramp; while one runs, leave it as it is.
    #[command(after_help = EXIT_CODES_HELP)]
    Rollout(StartArgs),
    /// Candidate to 100, bake, then make it stable; while a bake runs, leave
    /// it as it is.
    #[command(after_help = EXIT_CODES_HELP)]
    Promote(StartArgs),
    /// All traffic to the stable pool now.
    Rollback {
        /// The tenant to roll back.
        tenant: String,
        /// Why, recorded in the event (one line, at most 1024 bytes).
        #[arg(long)]
        reason: Option<String>,
    },
    /// The change history, oldest first.
    Events {
        /// Only this tenant's events; every tenant's when absent.
        tenant: Option<String>,
        /// At most this many, the latest.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Then print each new event as it is recorded (from the event
        /// stream; with --json one JSON document a line), until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// What `rollout` and `promote` take.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The tenant whose candidate to ramp or promote.
    tenant: String,
    /// Follow it, one line per change of step (with --json one JSON document
    /// per line); exit 0 when promoted, 2 when reverted, 3 when it ended
    /// otherwise.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long ("90s", "10m") and exit 124; the
    /// rollout keeps running.
    #[arg(long, requires = "wait", value_parser = parse_timeout, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Even if the candidate has no healthy endpoint.
    #[arg(long)]
    force: bool,
    /// Why, recorded in the event (one line, at most 1024 bytes).
    #[arg(long)]
    reason: Option<String>,
}

/// `--admin`: `http://host[:port]` and nothing more (the admin API speaks
/// plain HTTP; a path would be dropped). A bad URL is a usage error.
fn parse_admin_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("must be an http:// URL such as http://127.0.0.1:9901".to_owned());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must have no path, such as http://127.0.0.1:9901".to_owned());
    }
    Ok(text.to_owned())
}

/// `--timeout`: a humantime duration above zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        Ok(_) => Err("must be greater than 0".to_owned()),
        Err(e) => Err(format!("{e} (write it as \"90s\", \"10m\" or \"1h\")")),
    }
}

/// A failed call, ready to print.
struct CtlError(String);

struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        self.call_with(method, path, body, None).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base.trim_end_matches('/'));
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(g) = if_match {
            req = req.header(http::header::IF_MATCH, format!("\"{g}\""));
        }
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(body))
            .map_err(|e| CtlError(format!("bad admin URL {url}: {e}")))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| {
                CtlError(format!(
                    "the admin API at {} did not answer within 30s",
                    self.base
                ))
            })?
            .map_err(|e| CtlError(format!("cannot reach the admin API at {}: {e}", self.base)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CtlError(format!("the admin API's answer broke off: {e}")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_owned();
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (set TURNOUT_TOKEN to a token of [admin.tokens])",
            StatusCode::FORBIDDEN => " (the token is scoped to other tenants)",
            _ => "",
        };
        Err(CtlError(format!("{status}: {message}{hint}")))
    }
}

/// Runs a `ctl` subcommand; returns the process exit code.
pub async fn run(args: CtlArgs) -> u8 {
    let admin = AdminClient {
        base: args.admin.clone(),
        token: std::env::var("TURNOUT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    match execute(&admin, args.command, args.json).await {
        Ok(code) => code,
        Err(CtlError(message)) => {
            eprintln!("turnout ctl: {message}");
            EXIT_ERROR
        }
    }
}

async fn execute(admin: &AdminClient, command: CtlCommand, json: bool) -> Result<u8, CtlError> {
    let with_reason = |reason: Option<String>| reason.map(|r| serde_json::json!({ "reason": r }));
    let flag = |force: bool| if force { "?force=true" } else { "" };
    match command {
        CtlCommand::Ready => {
            admin.call(Method::GET, "/readyz", None).await?;
            Ok(EXIT_OK)
        }
        CtlCommand::Status {
            tenant,
            watch: true,
        } => watch::status(admin, tenant.as_deref(), json).await,
        CtlCommand::Status {
            tenant,
            watch: false,
        } => {
            let path =
                tenant.map_or_else(|| "/v1/tenants".to_owned(), |t| format!("/v1/tenants/{t}"));
            let value = admin.call(Method::GET, &path, None).await?;
            let tenants = match value {
                Value::Array(list) => list,
                one => vec![one],
            };
            if json {
                print_json(&Value::Array(tenants));
            } else {
                println!(
                    "{:<20} {:<9} {:<6} {:<9} {:<13} {:>10}",
                    "TENANT", "STATUS", "STABLE", "WEIGHTS", "VERDICT", "GENERATION"
                );
                for t in &tenants {
                    println!("{}", status_line(t));
                }
            }
            Ok(EXIT_OK)
        }
        CtlCommand::Weights {
            tenant,
            blue,
            green,
            if_match,
            force,
            reason,
        } => {
            // Checked here too, so a pipeline learns of `0 0` without a server.
            let weights = crate::config::Weights::new(blue, green)
                .map_err(|e| CtlError(format!("{tenant}: {e}")))?;
            let mut body = serde_json::json!(weights);
            if let Some(r) = reason {
                body["reason"] = Value::String(r);
            }
            let path = format!("/v1/tenants/{tenant}/weights{}", flag(force));
            let answer = admin
                .call_with(Method::PUT, &path, Some(body), if_match)
                .await?;
            report(
                &answer,
                json,
                &format!("{tenant}: weights blue {blue} / green {green}"),
            );
            Ok(EXIT_OK)
        }
        CtlCommand::Rollback { tenant, reason } => {
            let answer = admin
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/rollback"),
                    with_reason(reason),
                )
                .await?;
            report(
                &answer,
                json,
                &format!("{tenant}: rolled back to the stable pool"),
            );
            Ok(EXIT_OK)
        }
        CtlCommand::Rollout(args) => follow::start(admin, "rollout", args, json).await,
        CtlCommand::Promote(args) => follow::start(admin, "promote", args, json).await,
        CtlCommand::Events {
            tenant,
            limit,
            follow: true,
        } => watch::events(admin, tenant.as_deref(), limit, json).await,
        CtlCommand::Events {
            tenant,
            limit,
            follow: false,
        } => {
            let events = watch::recent_events(admin, tenant.as_deref(), limit).await?;
            if json {
                print_json(&events);
            } else {
                for e in events.as_array().into_iter().flatten() {
                    println!("{}", event_line(e));
                }
            }
            Ok(EXIT_OK)
        }
    }
}

fn status_line(t: &Value) -> String {
    let weights = format!("{}/{}", t["weights"]["blue"], t["weights"]["green"]);
    let mut line = format!(
        "{:<20} {:<9} {:<6} {:<9} {:<13} {:>10}",
        t["name"].as_str().unwrap_or("?"),
        t["status"].as_str().unwrap_or("?"),
        t["stable"].as_str().unwrap_or("?"),
        weights,
        t["verdict"].as_str().unwrap_or("?"),
        t["generation"],
    );
    if let Some(step) = t["rollout"]["step"].as_u64() {
        line.push_str(&format!(
            "  step {step}/{} at {}%",
            t["rollout"]["steps"].as_array().map_or(0, Vec::len),
            t["rollout"]["share"]
        ));
    }
    line.push_str(&evidence(&t["judgement"]));
    line
}

/// The bounds behind the verdict: `  errors 0.040 [0.021, 0.061] of 0.05
/// over 1200`, and how many more requests an `ok` needs while inconclusive.
fn evidence(j: &Value) -> String {
    let e = &j["error_rate"];
    let (Some(value), Some(lower), Some(upper)) = (
        e["value"].as_f64(),
        e["lower"].as_f64(),
        e["upper"].as_f64(),
    ) else {
        return String::new();
    };
    let mut out = format!(
        "  errors {value:.3} [{lower:.3}, {upper:.3}] of {} over {}",
        e["limit"], j["requests"]
    );
    if j["standing"] == "inconclusive"
        && let Some(more) = j["more_requests"].as_u64()
    {
        out.push_str(&format!(" (~{more} more for ok)"));
    }
    out
}

fn event_line(e: &Value) -> String {
    let weights = |w: &Value| {
        if w.is_null() {
            "-".to_owned()
        } else {
            format!("{}/{}", w["blue"], w["green"])
        }
    };
    format!(
        "{:>5} {} {:<12} {:<8} {:<10} {} -> {} stable {} {}{}",
        e["seq"],
        e["at"].as_str().unwrap_or("?"),
        e["tenant"].as_str().unwrap_or("-"),
        e["source"].as_str().unwrap_or("?"),
        printable(e["actor"].as_str().unwrap_or("-")),
        weights(&e["from"]),
        weights(&e["to"]),
        e["stable"].as_str().unwrap_or("-"),
        printable(e["reason"].as_str().unwrap_or("")),
        if e["persisted"] == Value::Bool(false) {
            " (not persisted)"
        } else {
            ""
        },
    )
}

/// Free text from the server with control characters escaped, so it can
/// neither break a line of output nor send a terminal sequence.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if crate::config::validate::log_unsafe_char(text).is_none() {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if crate::config::validate::is_log_unsafe(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn report(answer: &Value, json: bool, text: &str) {
    if json {
        print_json(answer);
    } else {
        let persisted = if answer["persisted"] == Value::Bool(false) {
            ", kept in memory only"
        } else {
            ""
        };
        println!("{text} (generation {}{persisted})", answer["generation"]);
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
