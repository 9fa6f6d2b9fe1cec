//! `rollout` and `promote`: start one, and with `--wait` follow it to its
//! outcome — one line per change of step, NDJSON with `--json`, an end at
//! `--timeout` — and turn that outcome into the exit code.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::{
    AdminClient, CtlError, EXIT_ENDED, EXIT_OK, EXIT_REVERTED, EXIT_TIMEOUT, StartArgs, report,
    status_line,
};

/// How often `--wait` looks at the tenant.
const POLL: Duration = Duration::from_millis(500);
/// How long `--wait` waits for a revert's event (the file write comes first,
/// and its lock wait is bounded at half a second).
const REVERT_EVENT_POLL: Duration = Duration::from_millis(100);
const REVERT_EVENT_TRIES: u32 = 30;
/// The newest events looked through for it (others may follow it).
const REVERT_EVENT_WINDOW: usize = 20;

/// Starts a rollout or a promotion, and follows it with `--wait`.
pub(super) async fn start(
    admin: &AdminClient,
    action: &str,
    args: StartArgs,
    json: bool,
) -> Result<u8, CtlError> {
    let StartArgs {
        tenant,
        wait,
        timeout,
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
    if json && wait {
        // NDJSON: every document of a --wait run is one line.
        println!("{answer}");
    } else if answer["already_running"] == Value::Bool(true) {
        report(
            &answer,
            json,
            &format!(
                "{tenant}: {action} already running, left as it is{}",
                progress_text(&answer["rollout"])
            ),
        );
    } else {
        report(&answer, json, &format!("{tenant}: {action} started"));
    }
    if !wait {
        return Ok(EXIT_OK);
    }
    let candidate = before["candidate"].as_str().unwrap_or_default().to_owned();
    let mut progress = Progress::default();
    let followed = match timeout {
        Some(t) => tokio::time::timeout(t, follow(admin, tenant, &candidate, json, &mut progress))
            .await
            .ok(),
        None => Some(follow(admin, tenant, &candidate, json, &mut progress).await),
    };
    let (end, reason) = match followed {
        None => (End::Timeout, None),
        Some(Err(e)) => return Err(e),
        Some(Ok(End::Reverted)) => (
            End::Reverted,
            Some(revert_reason(admin, tenant, &before).await),
        ),
        Some(Ok(end)) => (end, None),
    };
    let code = end.exit_code();
    if json {
        let mut doc = serde_json::json!({
            "tenant": tenant,
            "outcome": end.as_str(),
            "exit_code": code,
        });
        if let Some(r) = &reason {
            doc["reason"] = Value::String(r.clone());
        }
        println!("{doc}");
    }
    match end {
        End::Promoted if !json => {
            println!("{tenant}: promoted, {candidate} is now the stable pool");
        }
        End::Reverted => eprintln!(
            "turnout ctl: {tenant}: the candidate was reverted: {}",
            reason.as_deref().unwrap_or_default()
        ),
        End::Ended => eprintln!("turnout ctl: {tenant}: the rollout ended without a promotion"),
        End::Timeout => eprintln!(
            "turnout ctl: {tenant}: still {} after {}; stopped waiting, the rollout keeps running",
            progress.described(),
            humantime::format_duration(timeout.unwrap_or_default())
        ),
        End::Promoted => {}
    }
    Ok(code)
}

/// How a followed rollout ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Promoted,
    Reverted,
    Ended,
    Timeout,
}

impl End {
    fn exit_code(self) -> u8 {
        match self {
            End::Promoted => EXIT_OK,
            End::Reverted => EXIT_REVERTED,
            End::Ended => EXIT_ENDED,
            End::Timeout => EXIT_TIMEOUT,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            End::Promoted => "promoted",
            End::Reverted => "reverted",
            End::Ended => "ended",
            End::Timeout => "timeout",
        }
    }
}

/// The last view `follow` printed, kept outside it so a timeout can still
/// say where the rollout stood.
#[derive(Default)]
struct Progress {
    /// What a line is printed for: status, weights, stable pool and step.
    key: String,
    view: Value,
}

impl Progress {
    /// Takes a new view; true when it differs from the last one in a way
    /// worth a line (a new step, phase or split; not a counter ticking).
    fn update(&mut self, view: Value) -> bool {
        let key = format!(
            "{} {} {} {} {}",
            view["status"],
            view["weights"],
            view["stable"],
            view["rollout"]["step"],
            view["rollout"]["phase"]
        );
        self.view = view;
        if key == self.key {
            return false;
        }
        self.key = key;
        true
    }

    fn described(&self) -> String {
        format!(
            "{}{}",
            self.view["status"].as_str().unwrap_or("running"),
            progress_text(&self.view["rollout"])
        )
    }
}

/// Polls the tenant until its ramp ends; prints a line (a status line, or
/// with `json` the tenant view as one JSON line) each time the step, phase
/// or split changes.
async fn follow(
    admin: &AdminClient,
    tenant: &str,
    candidate: &str,
    json: bool,
    progress: &mut Progress,
) -> Result<End, CtlError> {
    loop {
        let view = admin
            .call(Method::GET, &format!("/v1/tenants/{tenant}"), None)
            .await?;
        if progress.update(view) {
            let view = &progress.view;
            if json {
                println!("{view}");
            } else {
                println!("{}", status_line(view));
            }
        }
        let view = &progress.view;
        if view["stable"].as_str() == Some(candidate) {
            return Ok(End::Promoted);
        }
        match view["status"].as_str() {
            Some("reverted") => return Ok(End::Reverted),
            Some("ramping" | "baking") => {}
            _ => return Ok(End::Ended),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `", step 2/3 at 50%"` for a rollout view; empty when there is none.
fn progress_text(rollout: &Value) -> String {
    match rollout["step"].as_u64() {
        Some(step) => format!(
            ", step {step}/{} at {}%",
            rollout["steps"].as_array().map_or(0, Vec::len),
            rollout["share"]
        ),
        None if rollout.is_object() => format!(", baking at {}%", rollout["share"]),
        None => String::new(),
    }
}

/// The reason the SLO check gave for a revert since `before` (the tenant
/// as it was when the rollout started). The tenant reads `reverted` as soon
/// as its traffic has moved back; the event is recorded once the control
/// file has been written, a moment later, so it is waited for.
async fn revert_reason(admin: &AdminClient, tenant: &str, before: &Value) -> String {
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
