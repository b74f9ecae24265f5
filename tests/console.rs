//! The web console, black-box over real HTTP: sign-in and its refusals, what a session
//! cookie looks like, search, a timeline with what the tool sent, the actions (with
//! confirmation, CSRF, read-only refusal and the audit log), live steps by server-sent
//! events, and the mapping playground.

mod common;

use common::*;
use safepoint_gateway::incident::State;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// A browser-like client of the console: follows no redirect, keeps the session cookie.
struct Console {
    base: String,
    client: reqwest::Client,
    cookie: String,
    csrf: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the hidden `csrf` field on a page.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

impl Console {
    async fn sign_in(base: &str, token: &str, name: &str) -> Console {
        let client = no_redirects();
        let r = client
            .post(format!("{base}/console/login"))
            .form(&[("token", token), ("name", name)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let mut c = Console {
            base: base.into(),
            client,
            cookie,
            csrf: String::new(),
        };
        let (status, page) = c.get("/console").await;
        assert_eq!(status, 200);
        c.csrf = csrf_of(&page);
        c
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// An action with this session's CSRF token, confirmed.
    async fn act(&self, action: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let mut form = fields.to_vec();
        form.push(("csrf", &self.csrf));
        let (status, page) = self
            .post(&format!("/console/actions/{action}"), &form)
            .await;
        assert_eq!(status, 200, "the confirmation page first: {page}");
        assert!(page.contains(r#"id="confirm""#), "{page}");
        form.push(("confirmed", "yes"));
        self.post(&format!("/console/actions/{action}"), &form)
            .await
    }
}

#[tokio::test]
async fn sign_in_refuses_wrong_tokens_and_shows_no_data_without_a_session() {
    let h = Harness::start(Options {
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let (status, _) = h.create(&sn_xml("INC-SECRET-1", "UG1234", "AC12")).await;
    assert_eq!(status, 202);
    let client = no_redirects();
    let base = h.base();
    // Without a session every page is the sign-in form, never data.
    for path in [
        "/console/incidents",
        "/console/incidents/servicenow/INC-SECRET-1",
        "/console/dead-letters",
        "/console/audit",
        "/console/events/overview",
        "/console/playground",
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(r#"id="token""#), "{path}: {body}");
        assert!(!body.contains("INC-SECRET-1"), "{path}");
    }
    // A wrong token, an empty one, or a forged cookie sign nobody in.
    for token in ["wrong", "", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]] {
        let r = client
            .post(format!("{base}/console/login"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("signin-error"));
    }
    let r = client
        .get(format!("{base}/console/incidents"))
        .header("cookie", format!("spg_console={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The right token: a locked-down cookie (no Secure: this listener is plain HTTP).
    let r = client
        .post(format!("{base}/console/login"))
        .form(&[("token", ADMIN_TOKEN), ("name", "alice")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let c = Console::sign_in(&base, ADMIN_TOKEN, "alice").await;
    let (status, page) = c.get("/console").await;
    assert_eq!(status, 200);
    assert!(page.contains("alice (admin)"), "{page}");
    assert!(page.contains(r#"id="f-servicenow-intake""#), "{page}");
    // Every asset comes from the gateway itself.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for asset in ["/console/assets/console.js", "/console/assets/console.css"] {
        assert_eq!(c.get(asset).await.0, 200, "{asset}");
    }
    // Signing out ends the session.
    let (status, _) = c.post("/console/logout", &[("csrf", &c.csrf)]).await;
    assert_eq!(status, 303);
    assert_eq!(c.get("/console/incidents").await.0, 401);
    h.stop().await;
}

#[tokio::test]
async fn search_finds_incidents_and_the_timeline_tells_their_story() {
    let h = Harness::start(Options {
        read_only_token: true,
        ..Options::default()
    })
    .await;
    for n in 1..=3 {
        let (status, body) = h
            .create(&sn_xml(&format!("INC-S{n}"), "UG1234", "AC12"))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let inc = h.wait_state("INC-S2", State::Closed).await;
    let c = Console::sign_in(&h.base(), READONLY_TOKEN, "").await;

    let (status, page) = c.get("/console/incidents?reference=INC-S2").await;
    assert_eq!(status, 200);
    assert!(page.contains(">INC-S2</a>"), "{page}");
    assert!(!page.contains(">INC-S1</a>"), "{page}");
    let id = inc.incident_id.clone().unwrap();
    let (_, page) = c.get(&format!("/console/incidents?incident_id={id}")).await;
    assert!(page.contains(">INC-S2</a>"), "{page}");
    let (_, page) = c.get("/console/incidents?integration=internal").await;
    assert!(page.contains("no-incidents"), "{page}");
    // Newest first, paged.
    for n in [1, 3] {
        h.wait_state(&format!("INC-S{n}"), State::Closed).await;
    }
    let (_, page) = c.get("/console/incidents?state=Closed&limit=2").await;
    let (a, b) = (
        page.find(">INC-S3<").unwrap(),
        page.find(">INC-S2<").unwrap(),
    );
    assert!(a < b, "newest first");
    assert!(!page.contains(">INC-S1<"), "{page}");
    let at = page.find(r#"id="next-page" href=""#).unwrap() + 21;
    let next = page[at..].split('"').next().unwrap().replace("&amp;", "&");
    let (_, page) = c.get(&next).await;
    assert!(
        page.contains(">INC-S1<") && !page.contains(">INC-S3<"),
        "{page}"
    );

    let (status, page) = c.get("/console/incidents/servicenow/INC-S2").await;
    assert_eq!(status, 200);
    // What the tool sent, pretty-printed and escaped; the mapped Dispatch; Loomis's
    // messages; the updates.
    assert!(page.contains("Received"), "{page}");
    assert!(
        page.contains("&lt;number&gt;INC-S2&lt;/number&gt;"),
        "{page}"
    );
    assert!(page.contains("Dispatch (mapped)"), "{page}");
    assert!(page.contains("mapped by"), "{page}");
    assert!(
        page.contains("&quot;DeviceId&quot;: &quot;UG1234&quot;"),
        "{page}"
    );
    for step in [
        "Attempt: Dispatch",
        "answered in ",
        "ACK",
        "Accept",
        "Close",
        "Update #",
        "available to WatchUpdates streams",
    ] {
        assert!(page.contains(step), "{step}: {page}");
    }
    assert!(page.contains(id.as_str()));
    // A read-only session sees no action.
    assert!(!page.contains("/console/actions/"), "{page}");
    assert_eq!(c.get("/console/incidents/servicenow/NOPE").await.0, 404);
    h.stop().await;
}

#[tokio::test]
async fn cancel_from_the_console_reaches_loomis_and_is_audited_and_only_admins_with_the_token_may()
{
    let h = Harness::start(Options {
        simulator: "ack = \"body\"\naccept_after_ms = 10\noutcome = \"none\"\n".into(),
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let (status, _) = h.create(&sn_xml("INC-C1", "UG1234", "AC12")).await;
    assert_eq!(status, 202);
    h.wait_state("INC-C1", State::Accepted).await;
    let fields = [
        ("integration", "servicenow"),
        ("reference", "INC-C1"),
        ("reason", "branch closed"),
        ("confirmed", "yes"),
    ];
    // Read-only: refused, even with its own CSRF token.
    let ro = Console::sign_in(&h.base(), READONLY_TOKEN, "bob").await;
    let mut with = fields.to_vec();
    with.push(("csrf", &ro.csrf));
    let (status, page) = ro.post("/console/actions/cancel", &with).await;
    assert_eq!(status, 403, "{page}");
    // Admin without the CSRF token (a cross-site form): refused.
    let admin = Console::sign_in(&h.base(), ADMIN_TOKEN, "alice").await;
    let (status, _) = admin.post("/console/actions/cancel", &fields).await;
    assert_eq!(status, 403);
    let mut wrong = fields.to_vec();
    wrong.push(("csrf", &ro.csrf));
    assert_eq!(admin.post("/console/actions/cancel", &wrong).await.0, 403);
    assert_eq!(h.incident("INC-C1").unwrap().state, State::Accepted);

    let (status, _) = admin
        .act(
            "cancel",
            &[
                ("integration", "servicenow"),
                ("reference", "INC-C1"),
                ("reason", "branch closed"),
                ("back", "/console/incidents/servicenow/INC-C1"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    h.wait_state("INC-C1", State::Cancelled).await;
    let cancel = h
        .sim()
        .received()
        .into_iter()
        .find_map(|m| m.message.filter(|v| v["MessageType"] == "Cancel"))
        .expect("Loomis got a Cancel");
    assert_eq!(cancel["ResponseText"], "branch closed");
    let (_, page) = admin.get("/console/audit").await;
    assert!(
        page.contains("alice (admin)") && page.contains("cancel"),
        "{page}"
    );
    assert!(page.contains("servicenow/INC-C1"), "{page}");
    let (_, page) = admin.get("/console/incidents/servicenow/INC-C1").await;
    assert!(page.contains("cancel by alice (admin)"), "{page}");
    h.stop().await;
}

#[tokio::test]
async fn dead_letters_are_replayed_from_the_console() {
    let status = Arc::new(AtomicU16::new(400));
    let o = Options {
        delivery_url: Some(common::status_tool(status.clone()).await),
        delivery_max_attempts: 1,
        ..Options::default()
    };
    let h = Harness::start(o).await;
    let (code, _) = h.create(&sn_xml("INC-D1", "UG1234", "AC12")).await;
    assert_eq!(code, 202);
    let store = h.running().gateway.store().clone();
    let dead = eventually("three dead letters", || {
        let store = store.clone();
        async move { Some(store.dead_letters(10).unwrap()).filter(|d| d.len() == 3) }
    })
    .await;
    let admin = Console::sign_in(&h.base(), ADMIN_TOKEN, "carol").await;
    let (_, page) = admin.get("/console/dead-letters").await;
    assert!(
        page.contains("INC-D1") && page.contains("replay-selected"),
        "{page}"
    );
    status.store(200, Ordering::SeqCst);
    // Replay two at once, then the last one from the incident's page.
    let (a, b) = (dead[0].id.to_string(), dead[1].id.to_string());
    let (code, _) = admin
        .act(
            "replay",
            &[("id", &a), ("id", &b), ("back", "/console/dead-letters")],
        )
        .await;
    assert_eq!(code, 303);
    let (_, page) = admin.get("/console/incidents/servicenow/INC-D1").await;
    let c = dead[2].id.to_string();
    assert!(page.contains(&format!("Replay dead letter {c}")), "{page}");
    let (code, _) = admin.act("replay", &[("id", &c)]).await;
    assert_eq!(code, 303);
    let store2 = store.clone();
    eventually("every replayed post delivered", || {
        let store = store2.clone();
        async move {
            let jobs = store.jobs().unwrap();
            (store.dead_letters(10).unwrap().is_empty() && jobs.is_empty()).then_some(())
        }
    })
    .await;
    let (_, page) = admin.get("/console/incidents/servicenow/INC-D1").await;
    assert_eq!(page.matches("posted to the tool").count(), 3, "{page}");
    assert_eq!(page.matches("replay by carol (admin)").count(), 3, "{page}");
    let (_, page) = admin.get("/console/audit").await;
    assert_eq!(page.matches("<td>replay</td>").count(), 3, "{page}");
    // Replaying one that is gone says so.
    let (code, page) = admin.act("replay", &[("id", &a)]).await;
    assert_eq!(code, 409, "{page}");
    h.stop().await;
}

/// Reads server-sent events from `resp` until one named `name` satisfies `pred`.
async fn next_event(
    stream: &mut reqwest::Response,
    buf: &mut String,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = String::new();
            for line in event.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if kind == name {
                let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn an_open_timeline_and_the_overview_update_live() {
    // The ACK comes in the body; Accept is the callback the test sends itself. The
    // whole-request deadline is shorter than the overview's first event: an event
    // stream outlives it (the deadline bounds a request, not a stream's body).
    let h = Harness::start(Options {
        simulator: "ack = \"body\"\naccept_after_ms = 600000\noutcome = \"none\"\n".into(),
        request_timeout_ms: Some(500),
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let (code, _) = h.create(&sn_xml("INC-L1", "UG1234", "AC12")).await;
    assert_eq!(code, 202);
    let inc = h.wait_state("INC-L1", State::Acknowledged).await;
    let c = Console::sign_in(&h.base(), READONLY_TOKEN, "").await;
    let resp = c
        .client
        .get(format!(
            "{}/console/events/incidents/servicenow/INC-L1",
            h.base()
        ))
        .header("cookie", &c.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp;
    let mut buf = String::new();
    let first = next_event(&mut stream, &mut buf, "steps", |_| true).await;
    assert_eq!(first["state"], "Acknowledged");
    assert!(!first["rows"].as_str().unwrap().contains(">Accept<"));
    let (code, body) = h
        .callback(serde_json::json!({
            "MessageType": "Accept",
            "CustomerNumber": "A123456",
            "IncidentReference": "INC-L1",
            "IncidentId": inc.incident_id.clone().unwrap(),
            "SLADateTime": "2031-01-01T10:00:00Z",
            "DateTime": "2030-01-01T10:00:00Z",
        }))
        .await;
    assert_eq!(code, 200, "{body}");
    let next = next_event(&mut stream, &mut buf, "steps", |v| v["state"] == "Accepted").await;
    assert!(
        next["rows"].as_str().unwrap().contains(">Accept<"),
        "{next}"
    );

    // The overview's figures come the same way.
    let resp = c
        .client
        .get(format!("{}/console/events/overview", h.base()))
        .header("cookie", &c.cookie)
        .send()
        .await
        .unwrap();
    let mut stream = resp;
    let mut buf = String::new();
    let figs = next_event(&mut stream, &mut buf, "figures", |_| true).await;
    assert_eq!(figs["f-outbox-loomis"], "0", "{figs}");
    assert_eq!(figs["f-servicenow-updates"], "2", "{figs}");
    assert!(figs["f-store-size"].as_str().unwrap().ends_with("MiB"));
    h.stop().await;
}

#[tokio::test]
async fn the_playground_maps_a_sample_or_names_every_problem_and_exports_a_fixture() {
    let h = Harness::start(Options {
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let c = Console::sign_in(&h.base(), READONLY_TOKEN, "").await;
    let good = sn_xml("INC-P1", "UG1234", "AC12");
    let (status, page) = c
        .post(
            "/console/playground",
            &[
                ("integration", "servicenow"),
                ("sample", &good),
                ("kind", "ACCEPT"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"id="pg-dispatch""#), "{page}");
    assert!(
        page.contains("&quot;IncidentReference&quot;: &quot;INC-P1&quot;"),
        "{page}"
    );
    assert!(page.contains(r#"id="pg-post""#), "{page}");
    // A sample with two problems: both named.
    let broken = good
        .replace("<serial_number>UG1234</serial_number>", "")
        .replace("2021-01-16 09:17:48", "16/01/2021");
    let (_, page) = c
        .post(
            "/console/playground",
            &[
                ("integration", "servicenow"),
                ("sample", &broken),
                ("kind", "ACK"),
            ],
        )
        .await;
    assert!(page.contains("2 problems"), "{page}");
    assert!(
        page.contains("DeviceId") && page.contains("FaultDateTime"),
        "{page}"
    );
    // Not XML at all: where it broke.
    let (_, page) = c
        .post(
            "/console/playground",
            &[
                ("integration", "servicenow"),
                ("sample", "<a>\n<b></a>"),
                ("kind", "ACK"),
            ],
        )
        .await;
    assert!(
        page.contains("pg-errors") && page.contains("line 2"),
        "{page}"
    );
    // The fixture: a tar holding the input and what it gave.
    let r = c
        .client
        .post(format!("{}/console/playground/fixture", h.base()))
        .header("cookie", &c.cookie)
        .form(&[
            ("integration", "servicenow"),
            ("sample", good.as_str()),
            ("kind", "CLOSE"),
            ("case", "happy"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tar = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&tar);
    for name in [
        "happy.input.xml",
        "happy.expected.json",
        "happy-close.update.json",
        "happy-close.expected.xml",
    ] {
        assert!(text.contains(name), "{name}");
    }
    assert!(text.contains("INC-P1"));
    h.stop().await;
}

#[tokio::test]
async fn retry_now_sends_a_delivery_that_waits_for_its_backoff() {
    // A Loomis that asks to be left alone for an hour, until it is not.
    let status = Arc::new(AtomicU16::new(503));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/incidents", l.local_addr().unwrap());
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/incidents",
        axum::routing::post(move || {
            let s = answer.load(Ordering::SeqCst);
            async move {
                (
                    axum::http::StatusCode::from_u16(s).unwrap(),
                    [("retry-after", "3600")],
                    "",
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let h = Harness::start(Options {
        loomis_url: Some(url),
        read_only_token: true,
        ..Options::default()
    })
    .await;
    let (code, _) = h.create(&sn_xml("INC-R1", "UG1234", "AC12")).await;
    assert_eq!(code, 202);
    let store = h.running().gateway.store().clone();
    let job = eventually("the Dispatch waiting after a 503", || {
        let store = store.clone();
        async move {
            store
                .jobs()
                .unwrap()
                .into_iter()
                .find(|j| j.attempts >= 1 && j.next_attempt_at > jiff::Timestamp::now())
        }
    })
    .await;
    status.store(200, Ordering::SeqCst);
    let admin = Console::sign_in(&h.base(), ADMIN_TOKEN, "dave").await;
    let (_, page) = admin.get("/console/incidents/servicenow/INC-R1").await;
    assert!(page.contains("Retry Dispatch to Loomis now"), "{page}");
    let id = job.id.to_string();
    let (code, _) = admin.act("retry", &[("job", &id)]).await;
    assert_eq!(code, 303);
    h.wait_state("INC-R1", State::Sent).await;
    let (_, page) = admin.get("/console/incidents/servicenow/INC-R1").await;
    assert!(page.contains("retry-now by dave (admin)"), "{page}");
    h.stop().await;
}

/// On a cluster the console of any instance shows what any instance took in, and an
/// action taken on one is in the audit log every instance shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_of_a_cluster_shows_the_same_incidents_and_audit_log() {
    let Some(db) = common::pg::TestDb::create("console_cluster") else {
        return;
    };
    let options = Options {
        simulator: "ack = \"body\"\naccept_after_ms = 10\noutcome = \"none\"\n".into(),
        database_url: Some(db.url.clone()),
        ..Options::default()
    };
    let a = Harness::start(options.clone()).await;
    let b = Harness::start(options).await;
    let (status, body) = a.create(&sn_xml("INC-PG1", "UG1234", "AC12")).await;
    assert_eq!(status, 202, "{body}");
    let inc = a.wait_state("INC-PG1", State::Accepted).await;

    let on_b = Console::sign_in(&b.base(), ADMIN_TOKEN, "carol").await;
    let id = inc.incident_id.clone().unwrap();
    let (status, page) = on_b
        .get(&format!("/console/incidents?incident_id={id}"))
        .await;
    assert_eq!(status, 200);
    assert!(page.contains(">INC-PG1</a>"), "{page}");
    let (_, page) = on_b.get("/console/incidents/servicenow/INC-PG1").await;
    assert!(
        page.contains("&lt;number&gt;INC-PG1&lt;/number&gt;"),
        "what the tool sent, kept by instance A: {page}"
    );
    let (status, _) = on_b
        .act(
            "cancel",
            &[
                ("integration", "servicenow"),
                ("reference", "INC-PG1"),
                ("reason", "branch closed"),
                ("back", "/console/incidents/servicenow/INC-PG1"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    a.wait_state("INC-PG1", State::Cancelled).await;

    let on_a = Console::sign_in(&a.base(), ADMIN_TOKEN, "dave").await;
    let (_, page) = on_a.get("/console/audit").await;
    assert!(
        page.contains("carol (admin)") && page.contains("servicenow/INC-PG1"),
        "{page}"
    );
    let (_, page) = on_a.get("/console/incidents?state=Cancelled").await;
    assert!(page.contains(">INC-PG1</a>"), "{page}");
    a.stop().await;
    b.stop().await;
}
