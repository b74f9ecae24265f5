//! The web console in a real browser: Debian's chromium, driven over WebDriver
//! (chromedriver) with fantoccini. One gateway and one browser go through what a person
//! does: a refused sign-in, then sign-in; an XML incident found by reference; its
//! timeline with the Dispatch, the callbacks and the post back; a post back that
//! dead-letters, replayed from the console and then delivered; the playground with a
//! good and a broken sample; a callback appearing on an open timeline without a reload;
//! a read-only user who sees no action and whose forged action is refused.
//!
//! `.ci/console-deps` installs chromium and chromium-driver. When `CI` is set and they
//! are missing the test fails; elsewhere it says why and skips. With
//! `CONSOLE_SCREENSHOTS=DIR` it saves the overview, a timeline and the playground there
//! as PNG (docs/ keeps the ones the README shows).

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use safepoint_gateway::incident::State;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a loopback port, stopped when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let status = format!("{url}/status");
        eventually("chromedriver answers", || {
            let (client, status) = (client.clone(), status.clone());
            async move {
                client
                    .get(&status)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
            }
        })
        .await;
        Driver { child, url }
    }

    async fn browser(&self) -> Client {
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Whether the browser is here; in CI its absence is a failure.
fn browser_present() -> bool {
    let present =
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: {CHROMIUM} or {CHROMEDRIVER} is missing; .ci/console-deps installs them"
        );
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
    }
    present
}

/// Waits (bounded) until the element's text satisfies `pred`; returns the text.
async fn text_until(b: &Client, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(el) = b.find(Locator::Css(css)).await {
            if let Ok(t) = el.text().await {
                if pred(&t) {
                    return t;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} in {css}: {}",
            b.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(b: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
        let png = b.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

async fn sign_in(b: &Client, base: &str, token: &str, name: &str) {
    b.goto(&format!("{base}/console")).await.unwrap();
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    b.find(Locator::Id("signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks the element, again while the page is still being replaced (a stale element).
async fn click(b: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let clicked = match b.find(Locator::Css(css)).await {
            Ok(el) => el.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the browser is at a URL containing `part`.
async fn at(b: &Client, part: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !b.current_url().await.unwrap().as_str().contains(part) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never got to {part}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_person_uses_the_console_in_a_real_browser() {
    if !browser_present() {
        return;
    }
    let tool_status = Arc::new(AtomicU16::new(200));
    let h = Harness::start(Options {
        simulator: "ack = \"body\"\naccept_after_ms = 10\noutcome = \"none\"\n".into(),
        delivery_url: Some(common::status_tool(tool_status.clone()).await),
        delivery_max_attempts: 1,
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let base = h.base();
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // A wrong token is refused and shows nothing.
    sign_in(&b, &base, "not-the-token", "mallory").await;
    let err = text_until(&b, "#signin-error", "the refusal", |t| !t.is_empty()).await;
    assert!(err.contains("does not sign in"), "{err}");
    assert!(b.find(Locator::Id("figures")).await.is_err());
    sign_in(&b, &base, ADMIN_TOKEN, "alice").await;
    text_until(&b, "nav .who", "the signed-in name", |t| {
        t.contains("alice (admin)")
    })
    .await;

    // An incident over XML, found by its reference.
    let (code, body) = h.create(&sn_xml("INC-B1", "UG1234", "AC12")).await;
    assert_eq!(code, 202, "{body}");
    h.wait_state("INC-B1", State::Accepted).await;
    // Live figures: the intake rate is filled in by the events, not by a reload.
    text_until(
        &b,
        "#f-servicenow-intake",
        "a rate from the live events",
        |t| t.ends_with("/s"),
    )
    .await;
    screenshot(&b, "console-overview.png").await;
    b.goto(&format!("{base}/console/incidents")).await.unwrap();
    b.find(Locator::Id("q-reference"))
        .await
        .unwrap()
        .send_keys("INC-B1")
        .await
        .unwrap();
    click(&b, "#search-go").await;
    at(&b, "reference=INC-B1").await;
    click(&b, "#incidents a").await;
    at(&b, "/console/incidents/servicenow/INC-B1").await;

    // Its timeline: what the tool sent, the Dispatch, the callbacks, the posts back.
    let steps = text_until(&b, "#steps", "the post back", |t| {
        t.contains("posted to the tool")
    })
    .await;
    for step in ["Received", "Dispatch (mapped)", "ACK", "Accept", "Update #"] {
        assert!(steps.contains(step), "{step}: {steps}");
    }
    // A callback appears on the open page without a reload.
    let id = h.incident("INC-B1").unwrap().incident_id.unwrap();
    let (code, body) = h
        .callback(serde_json::json!({
            "MessageType": "Close",
            "CustomerNumber": "A123456",
            "IncidentReference": "INC-B1",
            "IncidentId": id.as_str(),
            "ResponseText": "Door repaired",
            "DateTime": "2030-01-01T10:00:00Z",
        }))
        .await;
    assert_eq!(code, 200, "{body}");
    text_until(&b, "#state", "the Close", |t| t == "Closed").await;
    text_until(&b, "#steps", "the Close step", |t| t.contains("Close")).await;
    assert!(
        b.find(Locator::Id("cancel")).await.is_err(),
        "no cancel once Closed"
    );
    screenshot(&b, "console-timeline.png").await;

    // The tool refuses: the post back dead-letters; replayed from the console, delivered.
    tool_status.store(400, Ordering::SeqCst);
    let (code, _) = h.create(&sn_xml("INC-B2", "UG1234", "AC12")).await;
    assert_eq!(code, 202);
    let store = h.running().gateway.store().clone();
    eventually("a dead letter", || {
        let store = store.clone();
        async move { Some(()).filter(|_| !store.dead_letters(10).unwrap().is_empty()) }
    })
    .await;
    tool_status.store(200, Ordering::SeqCst);
    b.goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    for pick in b.find_all(Locator::Css("input.pick")).await.unwrap() {
        pick.click().await.unwrap();
    }
    click(&b, "#replay-selected").await;
    at(&b, "/console/actions/replay").await;
    text_until(&b, "#confirm-what", "the confirmation", |t| {
        t.contains("Replay")
    })
    .await;
    click(&b, "#confirm").await;
    eventually("the replayed posts delivered", || {
        let store = store.clone();
        async move {
            Some(()).filter(|_| {
                store.dead_letters(10).unwrap().is_empty() && store.jobs().unwrap().is_empty()
            })
        }
    })
    .await;
    b.goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    text_until(&b, "main", "an empty list", |t| {
        t.contains("No dead letters")
    })
    .await;
    b.goto(&format!("{base}/console/incidents/servicenow/INC-B2"))
        .await
        .unwrap();
    let steps = text_until(&b, "#steps", "posted", |t| t.contains("posted to the tool")).await;
    assert!(steps.contains("replay by alice (admin)"), "{steps}");
    assert!(!steps.contains("dead-lettered"), "{steps}");

    // The playground: a Dispatch for a good sample, every problem for a broken one.
    b.goto(&format!("{base}/console/playground")).await.unwrap();
    let sample = b.find(Locator::Id("pg-sample")).await.unwrap();
    sample
        .send_keys(&sn_xml("INC-PG1", "UG1234", "AC12"))
        .await
        .unwrap();
    b.find(Locator::Id("pg-integration"))
        .await
        .unwrap()
        .select_by_value("servicenow")
        .await
        .unwrap();
    b.find(Locator::Id("pg-kind"))
        .await
        .unwrap()
        .select_by_label("ACCEPT")
        .await
        .unwrap();
    click(&b, "#pg-run").await;
    let dispatch = text_until(&b, "#pg-dispatch", "the Dispatch", |t| !t.is_empty()).await;
    assert!(dispatch.contains("\"DeviceId\": \"UG1234\""), "{dispatch}");
    screenshot(&b, "console-playground.png").await;
    let sample = b.find(Locator::Id("pg-sample")).await.unwrap();
    sample.clear().await.unwrap();
    sample
        .send_keys(&sn_xml("INC-PG2", "", "AC12").replace("2021-01-16 09:17:48", "yesterday"))
        .await
        .unwrap();
    click(&b, "#pg-run").await;
    let errors = text_until(&b, "#pg-errors", "the problems", |t| !t.is_empty()).await;
    assert!(
        errors.contains("DeviceId") && errors.contains("FaultDateTime"),
        "{errors}"
    );

    // A read-only user sees the timeline but no action, and a forged one is refused.
    click(&b, "nav form button").await;
    sign_in(&b, &base, READONLY_TOKEN, "bob").await;
    text_until(&b, "nav .who", "the read-only name", |t| {
        t.contains("bob (read-only)")
    })
    .await;
    let (code, _) = h.create(&sn_xml("INC-B3", "UG1234", "AC12")).await;
    assert_eq!(code, 202);
    h.wait_state("INC-B3", State::Accepted).await;
    b.goto(&format!("{base}/console/incidents/servicenow/INC-B3"))
        .await
        .unwrap();
    text_until(&b, "#steps", "the timeline", |t| t.contains("Accept")).await;
    assert!(
        b.find(Locator::Id("cancel")).await.is_err(),
        "no cancel button"
    );
    // The same form an admin gets, built in the page by hand: refused.
    let csrf = b
        .find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    b.execute(
        r#"const f = document.createElement('form'); f.method = 'post'; f.action = '/console/actions/cancel';
           for (const [k, v] of Object.entries({integration: 'servicenow', reference: 'INC-B3', confirmed: 'yes', csrf: arguments[0]})) {
             const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }
           document.body.appendChild(f); f.submit();"#,
        vec![serde_json::Value::String(csrf)],
    )
    .await
    .unwrap();
    let refused = text_until(&b, "#refused", "the refusal", |t| !t.is_empty()).await;
    assert!(refused.contains("read-only"), "{refused}");
    assert_eq!(h.incident("INC-B3").unwrap().state, State::Accepted);

    b.close().await.unwrap();
    drop(driver);
    h.stop().await;
}
