//! The operator console (`GET /ui`, SPEC section 14) in a real headless
//! Chromium, driven over WebDriver (Debian's `chromium-driver` and the
//! `fantoccini` client). Without Chromium or its driver the test fails, it
//! does not skip: `.ci/run` installs both.
//!
//! One browser session walks the page as an operator would, to keep the
//! browser part short on a 2-core CI: the 401 asks for a token; the
//! tenants are listed; an event made by an admin call appears live; a
//! rollback clicked with a valid token changes the status without a
//! reload; a token scoped to another tenant shows the 403 message. With
//! `TURNOUT_UPDATE_SCREENSHOT=1` it saves the page to `docs/console.png`
//! (the README's screenshot); otherwise it writes nothing to the tree.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

const OPS: &str = "ops-secret";
const BLOG_CI: &str = "blog-secret";
/// How long the page gets to show a change.
const SHOWN: Duration = Duration::from_secs(20);

/// The flags Chromium runs with: headless, and nothing that would reach
/// out to the network or depend on a GPU.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
];

/// A program on `PATH`, or a failure saying how to get it.
fn program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: apt-get install chromium chromium-driver")
        })
}

/// Chromium under chromedriver, with a fresh profile; the driver (and so
/// the browser) ends when this is dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// chromedriver listening on a free port: the driver and its port.
///
/// chromedriver takes its port on the command line (it cannot report one
/// the system picked), so a port is found free and then handed to it; a
/// test running beside this one may take it in between (the suite opens
/// connections from ephemeral ports all the time). A driver that cannot
/// bind its port exits: then another port is tried.
async fn driver() -> (tokio::process::Child, u16) {
    for _ in 0..5 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut driver = tokio::process::Command::new(program("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromedriver: {e}"));
        let mut exited = false;
        wait_until(SHOWN, "chromedriver to listen", || {
            exited = driver.try_wait().unwrap().is_some();
            let exited = exited;
            async move {
                exited
                    || tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
            }
        })
        .await;
        // Listening, and it is chromedriver that listens (it still runs).
        if !exited && driver.try_wait().unwrap().is_none() {
            return (driver, port);
        }
    }
    panic!("chromedriver could not listen on any of five free ports");
}

async fn browser() -> Browser {
    let chromium = program("chromium");
    let (driver, port) = driver().await;
    let url = format!("http://127.0.0.1:{port}");
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let caps = json!({
        "goog:chromeOptions": { "binary": chromium, "args": args }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));
    Browser {
        client,
        _driver: driver,
        _profile: profile,
    }
}

impl Browser {
    /// The text of the first element matching `css`; `None` if there is
    /// none.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await
            .unwrap();
        v.as_str().map(str::to_owned)
    }

    /// Waits until the text of `css` contains `wanted`.
    async fn shows(&self, css: &str, wanted: &str) {
        let what = format!("{css} to show {wanted:?}");
        wait_until(SHOWN, &what, || async {
            self.text(css).await.is_some_and(|t| t.contains(wanted))
        })
        .await;
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Enters `token` in the token form and submits it.
    async fn use_token(&self, token: &str) {
        if self.text("#token-section[hidden]").await.is_some() {
            self.click("#token-toggle").await;
        }
        self.type_into("#token-input", token).await;
        self.click("#token-use").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_tenants_acts_and_updates_live() {
    let (b, g) = (spawn_upstream("blue").await, spawn_upstream("green").await);
    let hex = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let tokens = format!(
        "[admin.tokens.ops]\ntoken_sha256 = \"{}\"\ntenants = [\"*\"]\n\n[admin.tokens.blog-ci]\ntoken_sha256 = \"{}\"\ntenants = [\"blog\"]\n\n",
        hex(OPS),
        hex(BLOG_CI)
    );
    let proxy = Setup::shop()
        .pools(&b, &g)
        .weights(90, 10)
        .and_tenant("blog")
        .pools(&b, &g)
        .preamble(&tokens)
        .spawn()
        .await;
    for _ in 0..20 {
        proxy.get("shop.test", "/").await;
    }
    let browser = browser().await;
    browser.client.goto(&proxy.admin_url("/ui")).await.unwrap();

    // Tokens are configured: the page says so and asks for one.
    browser.shows("#message", "401 Unauthorized").await;
    assert!(browser.text("#token-section[hidden]").await.is_none());
    browser.use_token(OPS).await;
    browser
        .shows("article[data-tenant=shop] .status", "split")
        .await;
    browser
        .shows("article[data-tenant=blog] .status", "steady")
        .await;
    let listed = browser
        .client
        .execute(
            "return [...document.querySelectorAll('article[data-tenant]')].map(a => a.dataset.tenant);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(listed, json!(["blog", "shop"]));
    assert!(
        browser.text("#message[hidden]").await.is_some(),
        "the 401 message is gone"
    );

    // The tenant page; a marker in the window tells a reload apart.
    browser.click("article[data-tenant=shop] h3 a").await;
    browser.shows("#tenant-heading", "Tenant shop").await;
    browser
        .shows("#tenant-card [data-field=weights]", "blue 90 / green 10")
        .await;
    browser
        .client
        .execute("window.turnoutMarker = 'same page';", vec![])
        .await
        .unwrap();

    // An event made by an admin call elsewhere appears live.
    let r = proxy
        .admin(
            "PUT",
            "/v1/tenants/shop/weights",
            Some(OPS),
            Some(r#"{"blue":80,"green":20,"reason":"canary from the pipeline"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    browser.shows("#events", "canary from the pipeline").await;
    browser
        .shows("#tenant-card [data-field=weights]", "blue 80 / green 20")
        .await;
    if std::env::var_os("TURNOUT_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let png = browser.client.screenshot().await.unwrap();
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("console.png"), png).unwrap();
    }

    // A rollback clicked with a valid token: the status changes in place.
    browser.type_into("#reason", "bad checkout").await;
    browser.click("#rollback").await;
    browser
        .shows("#tenant-card [data-field=status]", "steady")
        .await;
    browser.shows("#notice", "Rolled back").await;
    browser
        .shows("#events li:first-child", "bad checkout")
        .await;
    let marker = browser
        .client
        .execute("return window.turnoutMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the page was not reloaded");
    assert_eq!(proxy.weights_with(OPS, "shop").await, (100, 0));

    // A token scoped to another tenant: the API's 403, readable.
    browser.use_token(BLOG_CI).await;
    browser.shows("#message", "403 Forbidden").await;
    browser
        .shows("#message", "this token may not act on tenant shop")
        .await;
    browser.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy_and_cross_site_writes_are_refused() {
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop().on(&up).weights(90, 10).spawn().await;
    let page = proxy.admin_get("/ui").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert!(
        page.text()
            .contains("<script src=\"/ui/console.js\" defer>")
    );
    let script = proxy.admin_get("/ui/console.js").await;
    assert_eq!(script.status, 200);
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(proxy.admin_get("/ui/secrets.txt").await.status, 404);

    // A form another web site posts to the (token-less) admin API.
    let mut req = admin_request(
        proxy.running.admin_addr,
        "POST",
        "/v1/tenants/shop/rollback",
        None,
        None,
    );
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let r = proxy.send(req).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(proxy.weights("shop").await, (90, 10), "nothing changed");
    let mut req = admin_request(
        proxy.running.admin_addr,
        "POST",
        "/v1/tenants/shop/rollback",
        None,
        None,
    );
    req.headers_mut()
        .insert("sec-fetch-site", "same-origin".parse().unwrap());
    assert_eq!(proxy.send(req).await.status, 200, "the console's own call");
    assert_eq!(proxy.weights("shop").await, (100, 0));
}
