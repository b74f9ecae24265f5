//! Updates posted back to the legacy tool, black-box: a small axum receiver on loopback
//! plays ServiceNow, checks every XML document it gets (well-formed, the servicenow
//! outbound shape, Basic auth) and answers as each test scripts it. Covers order per
//! incident, a receiver down then back, refusals and exhausted retries going to the
//! dead letters, the operator routes that list and replay them, and a failing incident
//! that must not hold up the others.

mod common;

use base64::Engine;
use common::*;
use safepoint_gateway::incident::State;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One post the receiver got, with the status it answered.
#[derive(Debug, Clone)]
struct Post {
    reference: String,
    sequence: u64,
    /// `u_loomis_state`, e.g. `New`, `In Progress`, `Resolved`.
    loomis_state: String,
    incident_id: Option<String>,
    answered: u16,
    doc: XmlNode,
}

/// Decides the status to answer for a post of `reference`.
type Policy = Arc<dyn Fn(&str) -> u16 + Send + Sync>;

/// The test's stand-in for the ITSM tool.
#[derive(Clone)]
struct Receiver {
    url: String,
    posts: Arc<Mutex<Vec<Post>>>,
    /// Whatever was wrong with a post: auth, content type, document shape.
    problems: Arc<Mutex<Vec<String>>>,
    policy: Arc<Mutex<Policy>>,
    /// Bumped on every post, so tests await posts instead of sleeping.
    seen: watch::Sender<usize>,
}

/// ServiceNow's state number for each `u_loomis_state` label (servicenow.toml lookups).
fn state_code(label: &str) -> Option<&'static str> {
    Some(match label {
        "New" => "1",
        "In Progress" => "2",
        "On Hold" => "3",
        "Resolved" => "6",
        "Canceled" => "8",
        _ => return None,
    })
}

impl Receiver {
    async fn start() -> Receiver {
        let (seen, _) = watch::channel(0);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}/api/loomis-updates", l.local_addr().unwrap()),
            posts: Default::default(),
            problems: Default::default(),
            policy: Arc::new(Mutex::new(Arc::new(|_: &str| 200))),
            seen,
        };
        let me = r.clone();
        let app = axum::Router::new().route(
            "/api/loomis-updates",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let me = me.clone();
                async move { axum::http::StatusCode::from_u16(me.receive(&headers, &body)).unwrap() }
            }),
        );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        r
    }

    fn set_policy(&self, p: impl Fn(&str) -> u16 + Send + Sync + 'static) {
        *self.policy.lock().unwrap() = Arc::new(p);
    }

    fn receive(&self, headers: &axum::http::HeaderMap, body: &str) -> u16 {
        let mut problems = Vec::new();
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gw:tool-pw")
        );
        if headers.get("authorization").map(|v| v.as_bytes()) != Some(expected_auth.as_bytes()) {
            problems.push(format!("authorization {:?}", headers.get("authorization")));
        }
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/xml") {
            problems.push(format!("content-type {ct:?}"));
        }
        let doc = match parse_xml(body) {
            Ok(d) => d,
            Err(e) => {
                self.problems
                    .lock()
                    .unwrap()
                    .push(format!("not well-formed ({e}): {body}"));
                // A broken document is the tool's to refuse.
                return 400;
            }
        };
        if doc.name != "u_loomis_update" {
            problems.push(format!("root <{}>", doc.name));
        }
        for required in [
            "number",
            "state",
            "u_loomis_state",
            "u_loomis_sequence",
            "work_notes",
            "sys_updated_on",
        ] {
            if doc.all(required).count() != 1 {
                problems.push(format!("needs one <{required}>"));
            }
        }
        let reference = doc.opt_text("number").unwrap_or("").to_string();
        let loomis_state = doc.opt_text("u_loomis_state").unwrap_or("").to_string();
        let code = doc.opt_text("state").unwrap_or("");
        if state_code(&loomis_state) != Some(code) {
            problems.push(format!(
                "state {code:?} with u_loomis_state {loomis_state:?}"
            ));
        }
        if !doc
            .opt_text("work_notes")
            .unwrap_or("")
            .starts_with("Loomis ")
        {
            problems.push("work_notes".into());
        }
        // A ServiceNow glide date-time: 2021-01-16 09:18:00.
        let updated = doc.opt_text("sys_updated_on").unwrap_or("");
        if jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", updated).is_err() {
            problems.push(format!("sys_updated_on {updated:?}"));
        }
        let sequence = doc
            .opt_text("u_loomis_sequence")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                problems.push("u_loomis_sequence is not a number".into());
                0
            });
        let answered = {
            let policy = self.policy.lock().unwrap().clone();
            policy(&reference)
        };
        if !problems.is_empty() {
            self.problems
                .lock()
                .unwrap()
                .push(format!("{}: {body}", problems.join("; ")));
        }
        self.posts.lock().unwrap().push(Post {
            reference,
            sequence,
            loomis_state,
            incident_id: doc.opt_text("u_loomis_incident").map(str::to_string),
            answered,
            doc,
        });
        self.seen.send_modify(|n| *n += 1);
        answered
    }

    fn posts_of(&self, reference: &str) -> Vec<Post> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.reference == reference)
            .cloned()
            .collect()
    }

    /// The posts of `reference` the receiver took (answered 2xx), in arrival order.
    fn taken(&self, reference: &str) -> Vec<Post> {
        self.posts_of(reference)
            .into_iter()
            .filter(|p| p.answered < 300)
            .collect()
    }

    /// Waits (on each post) until `pred` holds over every post so far.
    async fn wait(&self, what: &str, pred: impl Fn(&[Post]) -> bool) {
        let mut rx = self.seen.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if pred(&self.posts.lock().unwrap()) {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(_) => {}
                Err(_) => panic!(
                    "timed out waiting for {what}; posts: {:?}",
                    self.posts
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|p| (&p.reference, p.sequence, &p.loomis_state, p.answered))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    fn assert_no_problems(&self) {
        let p = self.problems.lock().unwrap();
        assert!(p.is_empty(), "the receiver found problems: {p:#?}");
    }
}

/// How many of `reference`'s posts were taken.
fn taken_count(posts: &[Post], reference: &str) -> usize {
    posts
        .iter()
        .filter(|p| p.reference == reference && p.answered < 300)
        .count()
}

fn options(receiver: &Receiver, outcome: &str, max_attempts: u32) -> Options {
    Options {
        simulator: format!(
            "ack = \"body\"\naccept_after_ms = 10\nclose_after_ms = 10\noutcome = \"{outcome}\"\n"
        ),
        delivery_url: Some(receiver.url.clone()),
        delivery_max_attempts: max_attempts,
        ..Options::default()
    }
}

/// Checks that the taken posts of `reference` are exactly its stored updates, once
/// each, in sequence order, with the labels of `labels`.
fn assert_delivered_in_order(h: &Harness, rx: &Receiver, reference: &str, labels: &[&str]) {
    let taken = rx.taken(reference);
    let stored: Vec<u64> = h
        .updates_of(reference)
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    let got: Vec<u64> = taken.iter().map(|p| p.sequence).collect();
    assert_eq!(got, stored, "{reference}: each update once, in order");
    let got_labels: Vec<&str> = taken.iter().map(|p| p.loomis_state.as_str()).collect();
    assert_eq!(got_labels, labels, "{reference}");
    let inc = h.incident(reference).unwrap();
    for p in &taken {
        assert_eq!(
            p.incident_id,
            inc.incident_id.as_ref().map(ToString::to_string),
            "{reference}"
        );
    }
}

async fn dead_letters(h: &Harness) -> Vec<Value> {
    let r = h.get("/v1/admin/dead-letters", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["dead_letters"].as_array().unwrap().clone()
}

fn dead_of<'a>(list: &'a [Value], reference: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|d| d["job"]["incident"]["reference"] == reference)
        .collect()
}

/// Waits until the tool outbox is empty (jobs are removed just after the tool's 2xx).
async fn outbox_drained(h: &Harness) {
    eventually("the outbox to drain", || async {
        h.running()
            .gateway
            .store()
            .jobs()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn updates_are_posted_in_order_with_basic_auth() {
    let rx = Receiver::start().await;
    let h = Harness::start(options(&rx, "close", 5)).await;
    let refs = ["TD1001", "TD1002", "TD1003"];
    for r in refs {
        let (s, b) = h.create(&sn_xml(r, "UG1234", "AC12")).await;
        assert_eq!(s, 202, "{b}");
    }
    rx.wait("3 updates taken per incident", |p| {
        refs.iter().all(|r| taken_count(p, r) == 3)
    })
    .await;
    for r in refs {
        h.wait_state(r, State::Closed).await;
        assert_delivered_in_order(&h, &rx, r, &["New", "In Progress", "Resolved"]);
        let close = &rx.taken(r)[2].doc;
        assert!(close.opt_text("resolved_at").is_some(), "{close:#?}");
        assert!(close.opt_text("close_notes").is_some(), "{close:#?}");
    }
    // Every update of the integration reached the tool exactly once.
    let all: Vec<u64> = rx
        .posts
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.sequence)
        .collect();
    assert_eq!(
        all.iter().copied().collect::<BTreeSet<_>>().len(),
        all.len()
    );
    assert_eq!(all.len(), 9);
    rx.assert_no_problems();
    outbox_drained(&h).await;
    assert!(dead_letters(&h).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn receiver_down_then_back_loses_nothing_and_keeps_order() {
    let rx = Receiver::start().await;
    rx.set_policy(|_| 503);
    let h = Harness::start(options(&rx, "close", 0)).await;
    let refs = ["TD2001", "TD2002", "TD2003"];
    for r in refs {
        h.create(&sn_xml(r, "UG1234", "AC12")).await;
    }
    for r in refs {
        h.wait_state(r, State::Closed).await;
    }
    // Down for a while: every lane has been refused a few times.
    rx.wait("three refusals per incident", |p| {
        refs.iter().all(|r| {
            p.iter()
                .filter(|x| x.reference == *r && x.answered == 503)
                .count()
                >= 3
        })
    })
    .await;
    rx.set_policy(|_| 200);
    rx.wait("every update taken", |p| {
        refs.iter().all(|r| taken_count(p, r) == 3)
    })
    .await;
    for r in refs {
        assert_delivered_in_order(&h, &rx, r, &["New", "In Progress", "Resolved"]);
        // While down, the lane retried its head and never skipped ahead of it.
        let posts = rx.posts_of(r);
        let mut taken = BTreeSet::new();
        for p in &posts {
            let earlier: Vec<u64> = h
                .updates_of(r)
                .iter()
                .map(|u| u.sequence.get())
                .filter(|s| *s < p.sequence)
                .collect();
            assert!(
                earlier.iter().all(|s| taken.contains(s)),
                "{r}: update {} posted before {earlier:?} were taken",
                p.sequence
            );
            if p.answered == 200 {
                assert!(taken.insert(p.sequence), "{r}: {} taken twice", p.sequence);
            }
        }
    }
    rx.assert_no_problems();
    outbox_drained(&h).await;
    assert!(dead_letters(&h).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn refused_update_is_dead_lettered_then_listed_and_replayed() {
    let rx = Receiver::start().await;
    rx.set_policy(|r| if r == "TD3001" { 400 } else { 200 });
    let h = Harness::start(options(&rx, "none", 5)).await;
    h.create(&sn_xml("TD3001", "UG1234", "AC12")).await;
    h.create(&sn_xml("TD3002", "UG1234", "AC12")).await;
    h.wait_state("TD3001", State::Accepted).await;
    rx.wait("TD3002 delivered, TD3001 refused twice", |p| {
        taken_count(p, "TD3002") == 2
            && p.iter()
                .filter(|x| x.reference == "TD3001" && x.answered == 400)
                .count()
                == 2
    })
    .await;
    let list = eventually("two dead letters", || async {
        let l = dead_letters(&h).await;
        (dead_of(&l, "TD3001").len() == 2).then_some(l)
    })
    .await;
    assert_eq!(list.len(), 2, "{list:#?}");
    let stored: Vec<u64> = h
        .updates_of("TD3001")
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    let mut ids = Vec::new();
    for (d, seq) in list.iter().zip(&stored) {
        assert_eq!(d["job"]["kind"]["PostUpdate"]["sequence"], *seq, "{d:#}");
        assert_eq!(d["job"]["target"], "Tool");
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("HTTP 400"), "{reason}");
        ids.push(d["id"].as_u64().unwrap());
    }
    // A refusal is final: each update was posted once, not retried.
    assert_eq!(rx.posts_of("TD3001").len(), 2);
    assert_delivered_in_order(&h, &rx, "TD3002", &["New", "In Progress"]);

    // The operator routes want the admin token.
    for key in [None, Some("wrong")] {
        let r = h.get("/v1/admin/dead-letters", key).await;
        assert_eq!(r.status, 401, "{}", r.body);
        let r = h
            .post(
                &format!("/v1/admin/dead-letters/{}/replay", ids[0]),
                key,
                None,
                "",
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(
        dead_letters(&h).await.len(),
        2,
        "refused replays change nothing"
    );

    // The tool is fixed; the operator replays both, in order, and they are delivered.
    rx.set_policy(|_| 200);
    for id in &ids {
        let r = h
            .post(
                &format!("/v1/admin/dead-letters/{id}/replay"),
                Some(ADMIN_TOKEN),
                None,
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["replayed"], *id);
    }
    rx.wait("TD3001 delivered after replay", |p| {
        taken_count(p, "TD3001") == 2
    })
    .await;
    assert_delivered_in_order(&h, &rx, "TD3001", &["New", "In Progress"]);
    assert!(dead_letters(&h).await.is_empty());
    let r = h
        .post(
            &format!("/v1/admin/dead-letters/{}/replay", ids[0]),
            Some(ADMIN_TOKEN),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, 404, "a replayed dead letter is gone: {}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "UnknownDeadLetter");
    let r = h
        .post(
            "/v1/admin/dead-letters/abc/replay",
            Some(ADMIN_TOKEN),
            None,
            "",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "InvalidPath");
    rx.assert_no_problems();
    outbox_drained(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_a_dead_letter() {
    let rx = Receiver::start().await;
    rx.set_policy(|r| if r == "TD4001" { 503 } else { 200 });
    let h = Harness::start(options(&rx, "close", 3)).await;
    h.create(&sn_xml("TD4001", "UG1234", "AC12")).await;
    h.create(&sn_xml("TD4002", "UG1234", "AC12")).await;
    h.wait_state("TD4001", State::Closed).await;
    let list = eventually("three dead letters of TD4001", || async {
        let l = dead_letters(&h).await;
        (dead_of(&l, "TD4001").len() == 3).then_some(l)
    })
    .await;
    for d in dead_of(&list, "TD4001") {
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("gave up after 3 attempts"), "{reason}");
        assert!(reason.contains("503"), "{reason}");
        assert_eq!(
            d["job"]["attempts"], 3,
            "the list counts every attempt: {d}"
        );
    }
    // Exactly max_attempts posts of each update, in sequence order.
    let mut per_seq: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last = 0;
    for p in rx.posts_of("TD4001") {
        assert!(p.sequence >= last, "order kept while retrying");
        last = p.sequence;
        *per_seq.entry(p.sequence).or_default() += 1;
    }
    let stored: Vec<u64> = h
        .updates_of("TD4001")
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    assert_eq!(per_seq.keys().copied().collect::<Vec<_>>(), stored);
    assert!(per_seq.values().all(|n| *n == 3), "{per_seq:?}");
    // The healthy incident was delivered all along.
    rx.wait("TD4002 delivered", |p| taken_count(p, "TD4002") == 3)
        .await;
    assert_delivered_in_order(&h, &rx, "TD4002", &["New", "In Progress", "Resolved"]);
    rx.assert_no_problems();
    h.stop().await;
}

#[tokio::test]
async fn one_failing_incident_does_not_hold_up_the_others() {
    let rx = Receiver::start().await;
    rx.set_policy(|r| if r == "TD5000" { 503 } else { 200 });
    let h = Harness::start(options(&rx, "close", 0)).await;
    h.create(&sn_xml("TD5000", "UG1234", "AC12")).await;
    let others: Vec<String> = (1..=10).map(|i| format!("TD50{i:02}")).collect();
    for r in &others {
        h.create(&sn_xml(r, "UG1234", "AC12")).await;
    }
    rx.wait("every other incident delivered", |p| {
        others.iter().all(|r| taken_count(p, r) == 3)
    })
    .await;
    for r in &others {
        assert_delivered_in_order(&h, &rx, r, &["New", "In Progress", "Resolved"]);
    }
    // The stuck incident kept retrying its first update and nothing after it.
    let stuck = rx.posts_of("TD5000");
    assert!(!stuck.is_empty());
    let first = h.updates_of("TD5000")[0].sequence.get();
    assert!(
        stuck
            .iter()
            .all(|p| p.sequence == first && p.answered == 503),
        "{:?}",
        stuck.iter().map(|p| p.sequence).collect::<Vec<_>>()
    );
    // Once the tool takes it, the rest follows in order.
    h.wait_state("TD5000", State::Closed).await;
    rx.set_policy(|_| 200);
    rx.wait("TD5000 delivered", |p| taken_count(p, "TD5000") == 3)
        .await;
    assert_delivered_in_order(&h, &rx, "TD5000", &["New", "In Progress", "Resolved"]);
    rx.assert_no_problems();
    outbox_drained(&h).await;
    assert!(dead_letters(&h).await.is_empty());
    h.stop().await;
}
