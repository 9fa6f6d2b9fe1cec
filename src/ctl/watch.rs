//! `ctl status --watch` and `ctl events --follow`: the overview and the
//! history kept current from the event stream, until Ctrl-C.
//!
//! On a terminal `status --watch` redraws a screen (on the alternate
//! screen, like `watch(1)` or `kubectl argo rollouts get rollout --watch`)
//! on each event and every [`REDRAW`], and gives the terminal back as it
//! was on Ctrl-C. When stdout is not a terminal it prints plain lines
//! instead: the overview once, then the line of the tenant each event is
//! about, as it stands after it — no escape codes, fit for a log or `grep`
//! (with `--json`, on a terminal too: the tenant views, one JSON a line).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::sse::{self, Update};
use super::{AdminClient, CtlError, EXIT_OK, event_line, printable, status_line};

/// How often the terminal screen is redrawn without an event (the SLO
/// counters move with traffic, not with events).
const REDRAW: Duration = Duration::from_secs(2);

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// The header of the overview table.
fn header() -> String {
    format!(
        "{:<20} {:<9} {:<6} {:<9} {:<13} {:>10}",
        "TENANT", "STATUS", "STABLE", "WEIGHTS", "VERDICT", "GENERATION"
    )
}

/// The tenant's line, then one per pool: share, error rate, p99, health.
fn tenant_block(t: &Value) -> String {
    let mut out = status_line(t);
    for pool in ["blue", "green"] {
        let slo = &t["slo"][pool];
        let endpoints = t["pools"][pool]["endpoints"].as_array();
        let healthy = endpoints.map_or(0, |e| e.iter().filter(|e| e["healthy"] == true).count());
        let p99 = slo["p99_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.0} ms"));
        out.push_str(&format!(
            "\n    {pool:<5} {:<9} {:>5}%  errors {:.2}% of {}  p99 {p99}  {healthy}/{} healthy",
            if t["stable"] == pool {
                "stable"
            } else {
                "candidate"
            },
            t["pools"][pool]["share"],
            slo["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            slo["requests"],
            endpoints.map_or(0, Vec::len),
        ));
    }
    out
}

/// `GET /v1/events`: the last `limit` events kept (of `tenant`, when
/// given), oldest first, as the admin API sends them.
pub(super) async fn recent_events(
    admin: &AdminClient,
    tenant: Option<&str>,
    limit: usize,
) -> Result<Value, CtlError> {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(t) = tenant {
        path.push_str(&format!("&tenant={t}"));
    }
    admin.call(Method::GET, &path, None).await
}

/// The `seq` of the last event kept (of `tenant`, when given); 0 when
/// none is.
async fn last_seq(admin: &AdminClient, tenant: Option<&str>) -> Result<u64, CtlError> {
    let recent = recent_events(admin, tenant, 1).await?;
    Ok(recent
        .as_array()
        .and_then(|events| events.last())
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0))
}

async fn tenants(admin: &AdminClient, tenant: Option<&str>) -> Result<Vec<Value>, CtlError> {
    let path = tenant.map_or_else(|| "/v1/tenants".to_owned(), |t| format!("/v1/tenants/{t}"));
    Ok(match admin.call(Method::GET, &path, None).await? {
        Value::Array(list) => list,
        one => vec![one],
    })
}

/// The terminal's state to give back; `LEAVE` is written when dropped, so
/// an error return restores it too.
struct Screen;

impl Screen {
    fn enter() -> Screen {
        print!("{ENTER}");
        let _ = std::io::stdout().flush();
        Screen
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("{LEAVE}");
        let _ = std::io::stdout().flush();
    }
}

/// `ctl status --watch [TENANT]`.
pub(super) async fn status(
    admin: &AdminClient,
    tenant: Option<&str>,
    json: bool,
) -> Result<u8, CtlError> {
    // The first reads fail fast (a wrong URL, 401) before the screen
    // changes. Events are followed from the last one recorded before the
    // tenants are read: the stream alone sends only what is recorded once
    // it is connected, and a change made between the read and that moment
    // would be missed — its tenant shown as it was until the next event.
    // (A change made between the two reads is shown twice, the same.)
    let after = last_seq(admin, tenant).await?;
    let first = tenants(admin, tenant).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follow = sse::follow(admin, tenant, Some(after), move |update| {
        let _ = tx.send(update);
    });
    let mut follow = std::pin::pin!(follow);
    let mut stop = Stop::listen()?;
    if !json && std::io::stdout().is_terminal() {
        let _screen = Screen::enter();
        let mut last_event = String::from("none yet");
        draw(&first, &last_event);
        let mut tick = tokio::time::interval(REDRAW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.wait() => return Ok(EXIT_OK),
                ended = &mut follow => return ended.map(|()| EXIT_OK),
                Some(update) = rx.recv() => {
                    if let Update::Event(e) = &update {
                        last_event = event_line(e);
                    }
                }
                _ = tick.tick() => {}
            }
            // A view that cannot be read now keeps the last screen.
            if let Ok(list) = tenants(admin, tenant).await {
                draw(&list, &last_event);
            }
        }
    }
    let line = |t: &Value| if json { t.to_string() } else { status_line(t) };
    if !json {
        println!("{}", header());
    }
    for t in &first {
        println!("{}", line(t));
    }
    loop {
        let update = tokio::select! {
            () = stop.wait() => return Ok(EXIT_OK),
            ended = &mut follow => return ended.map(|()| EXIT_OK),
            Some(update) = rx.recv() => update,
        };
        // The tenant the event is about, as it stands now; every tenant
        // after a change outside any tenant, or events lost.
        let about = match &update {
            Update::Event(e) => e["tenant"].as_str().map(str::to_owned),
            Update::Gap(_) => None,
        };
        let list = match about {
            Some(t) => match tenants(admin, Some(&t)).await {
                Ok(list) => list,
                Err(_) => {
                    println!("{t:<20} (gone: {})", printable_event(&update));
                    continue;
                }
            },
            None => tenants(admin, tenant).await.unwrap_or_default(),
        };
        for t in &list {
            println!("{}", line(t));
        }
        let _ = std::io::stdout().flush();
    }
}

/// The reason of an event update, for a tenant that is gone.
fn printable_event(update: &Update) -> String {
    match update {
        Update::Event(e) => printable(e["reason"].as_str().unwrap_or("removed")).into_owned(),
        Update::Gap(_) => "events lost".to_owned(),
    }
}

fn draw(list: &[Value], last_event: &str) {
    let mut screen = format!(
        "{CLEAR}turnout · {} · Ctrl-C to quit\n\n{}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        header()
    );
    for t in list {
        screen.push_str(&tenant_block(t));
        screen.push('\n');
    }
    screen.push_str(&format!("\nlast event: {last_event}\n"));
    print!("{screen}");
    let _ = std::io::stdout().flush();
}

/// `ctl events --follow [TENANT]`: the last `limit` events, then each new
/// one as it is recorded (one line, or one JSON document a line with
/// `json`), until Ctrl-C.
pub(super) async fn events(
    admin: &AdminClient,
    tenant: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<u8, CtlError> {
    let recent = recent_events(admin, tenant, limit).await?;
    let print = |e: &Value| {
        if json {
            println!("{e}");
        } else {
            println!("{}", event_line(e));
        }
        let _ = std::io::stdout().flush();
    };
    let mut stop = Stop::listen()?;
    let recent = recent.as_array().cloned().unwrap_or_default();
    recent.iter().for_each(print);
    // From the last one shown; with none kept, from the start of the kept
    // history (so an event recorded since the call above is not missed).
    let after = match recent.last() {
        Some(e) => e["seq"].as_u64(),
        None if limit > 0 => Some(0),
        None => None,
    };
    let follow = sse::follow(admin, tenant, after, |update| match update {
        Update::Event(e) => print(&e),
        Update::Gap(after) => eprintln!(
            "turnout ctl: events after #{after} were lost (more than the server keeps); `ctl status` shows the state now"
        ),
    });
    tokio::select! {
        () = stop.wait() => Ok(EXIT_OK),
        ended = follow => ended.map(|()| EXIT_OK),
    }
}

/// Ctrl-C (`SIGINT`) or `SIGTERM`: the end of a watch, a clean exit 0.
/// Listened for from the start, so none is missed while the first screen
/// is drawn.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    fn listen() -> Result<Stop, CtlError> {
        let listen =
            |kind| signal(kind).map_err(|e| CtlError(format!("cannot listen for Ctrl-C: {e}")));
        Ok(Stop {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
