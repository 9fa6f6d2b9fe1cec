//! `turnout ctl`: the admin API from a shell or a CD pipeline.
//!
//! Every subcommand is one or two admin calls; `--wait` follows a rollout by
//! polling the tenant view and turns its outcome into the exit code, so a
//! pipeline step can gate on it: 0 when the candidate became stable, 2 when
//! it was reverted, 3 when the ramp ended any other way, 1 for errors.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How often `--wait` looks at the tenant.
const POLL: Duration = Duration::from_millis(500);
/// How long `--wait` waits for a revert's event (the file write comes first,
/// and its lock wait is bounded at half a second).
const REVERT_EVENT_POLL: Duration = Duration::from_millis(100);
const REVERT_EVENT_TRIES: u32 = 30;
/// The newest events looked through for it (others may follow it).
const REVERT_EVENT_WINDOW: usize = 20;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_REVERTED: u8 = 2;
pub const EXIT_ENDED: u8 = 3;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The admin API.
    #[arg(long, env = "TURNOUT_ADMIN", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// Print the admin API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Exit 0 when turnout is ready to serve (`/readyz`), 1 otherwise: for
    /// container health checks.
    Ready,
    /// Show every tenant, or one.
    Status { tenant: Option<String> },
    /// Set a tenant's weights.
    Weights {
        tenant: String,
        blue: u32,
        green: u32,
        /// Only if the control state is still at this generation.
        #[arg(long)]
        if_match: Option<u64>,
        /// Even if the candidate has no healthy endpoint.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start the tenant's configured ramp.
    Rollout(StartArgs),
    /// Candidate to 100, bake, then make it stable.
    Promote(StartArgs),
    /// All traffic to the stable pool now.
    Rollback {
        tenant: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The change history, oldest first.
    Events {
        tenant: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// What `rollout` and `promote` take.
#[derive(Args, Debug)]
pub struct StartArgs {
    tenant: String,
    /// Follow it; exit 0 when promoted, 2 when reverted.
    #[arg(long)]
    wait: bool,
    /// Even if the candidate has no healthy endpoint.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    reason: Option<String>,
}

/// A failed call, ready to print.
struct CtlError(String);

struct Admin {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Admin {
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
    let admin = Admin {
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

async fn execute(admin: &Admin, command: CtlCommand, json: bool) -> Result<u8, CtlError> {
    let with_reason = |reason: Option<String>| reason.map(|r| serde_json::json!({ "reason": r }));
    let flag = |force: bool| if force { "?force=true" } else { "" };
    match command {
        CtlCommand::Ready => {
            admin.call(Method::GET, "/readyz", None).await?;
            Ok(EXIT_OK)
        }
        CtlCommand::Status { tenant } => {
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
        CtlCommand::Rollout(args) => start(admin, "rollout", args, json).await,
        CtlCommand::Promote(args) => start(admin, "promote", args, json).await,
        CtlCommand::Events { tenant, limit } => {
            let mut path = format!("/v1/events?limit={limit}");
            if let Some(t) = tenant {
                path.push_str(&format!("&tenant={t}"));
            }
            let events = admin.call(Method::GET, &path, None).await?;
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

/// Starts a rollout or a promotion, and follows it with `--wait`.
async fn start(admin: &Admin, action: &str, args: StartArgs, json: bool) -> Result<u8, CtlError> {
    let StartArgs {
        tenant,
        wait,
        force,
        reason,
    } = args;
    let tenant = tenant.as_str();
    let before = admin
        .call(Method::GET, &format!("/v1/tenants/{tenant}"), None)
        .await?;
    let path = format!(
        "/v1/tenants/{tenant}/{action}{}",
        if force { "?force=true" } else { "" }
    );
    let answer = admin
        .call(
            Method::POST,
            &path,
            reason.map(|r| serde_json::json!({ "reason": r })),
        )
        .await?;
    report(&answer, json, &format!("{tenant}: {action} started"));
    if !wait {
        return Ok(EXIT_OK);
    }
    follow(admin, tenant, &before, json).await
}

/// Polls the tenant until its ramp ends; prints each step.
async fn follow(admin: &Admin, tenant: &str, before: &Value, json: bool) -> Result<u8, CtlError> {
    let candidate = before["candidate"].as_str().unwrap_or_default().to_owned();
    let mut last = String::new();
    loop {
        let view = admin
            .call(Method::GET, &format!("/v1/tenants/{tenant}"), None)
            .await?;
        let line = if json {
            view.to_string()
        } else {
            status_line(&view)
        };
        let state = format!("{} {} {}", view["status"], view["weights"], view["stable"]);
        if state != last {
            println!("{line}");
            last = state;
        }
        if view["stable"].as_str() == Some(candidate.as_str()) {
            if !json {
                println!("{tenant}: promoted, {candidate} is now the stable pool");
            }
            return Ok(EXIT_OK);
        }
        match view["status"].as_str() {
            Some("reverted") => {
                let reason = revert_reason(admin, tenant, before).await;
                eprintln!("turnout ctl: {tenant}: the candidate was reverted: {reason}");
                return Ok(EXIT_REVERTED);
            }
            Some("ramping" | "baking") => {}
            _ => {
                eprintln!("turnout ctl: {tenant}: the rollout ended without a promotion");
                return Ok(EXIT_ENDED);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The reason the SLO check gave for a revert since `before` (the tenant
/// as it was when the rollout started). The tenant reads `reverted` as soon
/// as its traffic has moved back; the event is recorded once the control
/// file has been written, a moment later, so it is waited for.
async fn revert_reason(admin: &Admin, tenant: &str, before: &Value) -> String {
    let since = before["generation"].as_u64().unwrap_or(0);
    let path = format!("/v1/events?tenant={tenant}&limit={REVERT_EVENT_WINDOW}");
    for _ in 0..REVERT_EVENT_TRIES {
        if let Ok(Value::Array(events)) = admin.call(Method::GET, &path, None).await {
            let revert = events.iter().rev().find(|e| {
                e["source"].as_str() == Some("slo")
                    && e["generation"].as_u64().is_some_and(|g| g > since)
            });
            if let Some(reason) = revert.and_then(|e| e["reason"].as_str()) {
                return reason.to_owned();
            }
        }
        tokio::time::sleep(REVERT_EVENT_POLL).await;
    }
    "no reason recorded".to_owned()
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
    line
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
        e["actor"].as_str().unwrap_or("-"),
        weights(&e["from"]),
        weights(&e["to"]),
        e["stable"].as_str().unwrap_or("-"),
        e["reason"].as_str().unwrap_or(""),
        if e["persisted"] == Value::Bool(false) {
            " (not persisted)"
        } else {
            ""
        },
    )
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
