//! The whole life of incidents through the real gateway on loopback: intake over HTTP,
//! delivery to the built-in simulator (or a scripted Loomis double that checks every
//! message against the spec), callbacks over HTTP, state, timeline and updates.

mod common;

use axum::http::StatusCode;
use common::*;
use safepoint_gateway::incident::State;
use safepoint_gateway::loomis::message::{CustomerCancel, Dispatch};
use safepoint_gateway::simulator::{Faults, SimulatorConfig};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn sim(ack: &str, outcome: &str) -> Options {
    Options {
        simulator: format!(
            "ack = \"{ack}\"\naccept_after_ms = 10\nclose_after_ms = 10\noutcome = \"{outcome}\"\n"
        ),
        ..Options::default()
    }
}

#[tokio::test]
async fn ack_in_body_then_accept_then_close() {
    let h = Harness::start(sim("body", "close")).await;
    let (status, body) = h.create(&sn_xml("INC1001", "ug1234", "AC12")).await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("<State>Queued</State>"), "{body}");
    let inc = h.wait_state("INC1001", State::Closed).await;
    assert!(inc.incident_id.as_deref().unwrap().starts_with("INC4"));
    assert!(inc.sla_time.is_some());
    assert_eq!(kinds(&h.updates_of("INC1001")), ["ACK", "ACCEPT", "CLOSE"]);
    // The simulator checked the Dispatch strictly; it saw the mapped one.
    let sent = &h.sim().received()[0];
    assert_eq!(sent.message.as_ref().unwrap()["DeviceId"], "UG1234");
    assert_eq!(
        sent.message.as_ref().unwrap()["FaultDateTime"],
        "2021-01-16T15:17:48Z"
    );
    // Sequences are gap-free per integration.
    let seqs: Vec<u64> = h
        .updates("servicenow")
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The ACK from the answer's body is counted like a callback.
    assert!(
        h.loomis_message_counted("ACK", "applied", "response_body")
            .await
    );
    let ok = [("kind", "dispatch"), ("result", "ok")];
    assert!(h.counted("gateway_loomis_requests_total", &ok).await);
    let created = [("integration", "servicenow")];
    assert!(h.counted("gateway_incidents_created_total", &created).await);
    assert!(
        h.counted(
            "gateway_loomis_request_seconds_count",
            &[("kind", "dispatch")]
        )
        .await
    );
    h.stop().await;
}

#[tokio::test]
async fn ack_by_callback_and_by_both_counts_once() {
    for mode in ["callback", "both"] {
        let h = Harness::start(sim(mode, "close")).await;
        h.create(&sn_xml("INC1002", "UG1234", "AC12")).await;
        let inc = h.wait_state("INC1002", State::Closed).await;
        assert_eq!(
            kinds(&h.updates_of("INC1002")),
            ["ACK", "ACCEPT", "CLOSE"],
            "mode {mode}"
        );
        if mode == "both" {
            assert_eq!(inc.duplicates, 1, "the second ACK copy is a duplicate");
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn close_before_accept_and_loomis_cancel() {
    let h = Harness::start(sim("body", "close-before-accept")).await;
    h.create(&sn_xml("INC1003", "UG1234", "AC12")).await;
    h.wait_state("INC1003", State::Closed).await;
    assert_eq!(kinds(&h.updates_of("INC1003")), ["ACK", "CLOSE"]);
    h.stop().await;

    let h = Harness::start(sim("body", "cancel")).await;
    h.create(&sn_xml("INC1004", "UG1234", "AC12")).await;
    h.wait_state("INC1004", State::Cancelled).await;
    assert_eq!(kinds(&h.updates_of("INC1004")), ["ACK", "ACCEPT", "CANCEL"]);
    h.stop().await;
}

#[tokio::test]
async fn nak_of_each_listed_code() {
    // A reference Loomis already has (sent there by someone else) is a Duplicate. Its
    // own Accept/Close go nowhere: the stand-alone simulator has no callback URL yet.
    let sim = simulator(SimulatorConfig::default()).await;
    let d = Dispatch::from_json(&json!({"MessageType":"Dispatch","CustomerNumber":"A123456","IncidentReference":"INC2003",
        "DeviceId":"UG1234","ContactName":"x","ContactNumber":"1","Subject":"s","Description":"d","FaultDateTime":"2021-01-16T15:17:48Z"}))
    .unwrap();
    let r = reqwest::Client::new()
        .post(sim.incidents_url())
        .json(&d)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sim.wait_for(|s| s.callbacks_undeliverable >= 2, WAIT).await);

    let h = Harness::start(Options {
        loomis_url: Some(sim.incidents_url()),
        ..Options::default()
    })
    .await;
    sim.set_callback(h.callback_url(), Some(CB_TOKEN.into()));
    h.create(&sn_xml("INC2001", "XX9999", "AC12")).await;
    h.create(&sn_xml("INC2002", "UG1234", "ZZ99")).await;
    h.create(&sn_xml("INC2003", "UG1234", "AC12")).await;
    for (reference, code) in [
        ("INC2001", "DeviceNotFound"),
        ("INC2002", "InvalidFault"),
        ("INC2003", "Duplicate"),
    ] {
        let inc = h.wait_state(reference, State::Rejected).await;
        assert_eq!(inc.response_code.as_deref(), Some(code));
        let ups = h.updates_of(reference);
        assert_eq!(kinds(&ups), ["NAK"]);
        assert_eq!(ups[0].response_code.as_deref(), Some(code));
    }
    h.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_answer_to_our_own_retry_waits_for_loomis() {
    // Loomis processes the first Dispatch but the answer never arrives (the request is
    // held past our timeout); the retry is answered Duplicate. The incident must not be
    // rejected: Loomis has it, and its Accept/Close follow.
    let mut o = sim("body", "close");
    // Accept comes well after our retry, so the retry meets the Duplicate first.
    o.simulator = o
        .simulator
        .replace("accept_after_ms = 10", "accept_after_ms = 1500");
    o.loomis_timeout_ms = 300;
    o.simulator.push_str("timeout_rate = 1.0\n");
    let h = Harness::start(o).await;
    h.create(&sn_xml("INC3001", "UG1234", "AC12")).await;
    assert!(h.sim().wait_for(|s| s.faults_timed_out >= 1, WAIT).await);
    h.sim().set_faults(Faults::default());
    let inc = h.wait_state("INC3001", State::Closed).await;
    assert!(inc.dispatch_uncertain);
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.detail.contains("Duplicate answer to our own retry")),
        "{:?}",
        inc.timeline
    );
    let k = kinds(&h.updates_of("INC3001"));
    assert!(!k.contains(&"NAK") && !k.contains(&"REJECTED"), "{k:?}");
    assert_eq!(k.last(), Some(&"CLOSE"));
    h.stop().await;
}

#[tokio::test]
async fn customer_cancel_before_and_after_ack() {
    let h = Harness::start(sim("body", "none")).await;
    // Before ACK: Loomis is down, so the Dispatch waits; the cancel waits with it.
    h.sim().set_faults(Faults {
        fail_rate: 1.0,
        retry_after_rate: 0.0,
        ..Faults::default()
    });
    h.create(&sn_xml("INC4001", "UG1234", "AC12")).await;
    assert!(h.sim().wait_for(|s| s.faults_failed >= 1, WAIT).await);
    let (status, body) = h
        .post_xml(
            "/v1/integrations/servicenow/incidents/INC4001/cancel",
            "<cancel><reason>Fixed  by   staff</reason></cancel>",
            "application/xml",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("CancelRequested"), "{body}");
    h.sim().set_faults(Faults::default());
    let inc = h.wait_state("INC4001", State::Cancelled).await;
    assert_eq!(inc.cancel_reason.as_deref(), Some("Fixed by staff"));
    let cancels: Vec<_> = h
        .sim()
        .received()
        .into_iter()
        .filter(|m| {
            m.message
                .as_ref()
                .is_some_and(|v| v["MessageType"] == "Cancel")
        })
        .collect();
    assert_eq!(cancels.len(), 1);
    let c = CustomerCancel::from_json(cancels[0].message.as_ref().unwrap()).unwrap();
    assert_eq!(inc.incident_id.clone().unwrap(), c.incident_id);
    assert_eq!(c.response_text, "Fixed by staff");

    // After ACK (and Accept): cancel is sent at once.
    h.create(&sn_xml("INC4002", "UG1234", "AC12")).await;
    h.wait_state("INC4002", State::Accepted).await;
    let (status, _) = h
        .post_xml(
            "/v1/integrations/servicenow/incidents/INC4002/cancel",
            "",
            "application/xml",
        )
        .await;
    assert_eq!(status, 202);
    let inc = h.wait_state("INC4002", State::Cancelled).await;
    assert_eq!(
        inc.cancel_reason.as_deref(),
        Some("Cancelled in ServiceNow")
    );
    assert_eq!(kinds(&h.updates_of("INC4002")), ["ACK", "ACCEPT", "CANCEL"]);
    // Terminal now: a second cancel is a 409, unknown reference 404.
    let (status, _) = h
        .post_xml(
            "/v1/integrations/servicenow/incidents/INC4002/cancel",
            "",
            "application/xml",
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = h
        .post_xml(
            "/v1/integrations/servicenow/incidents/NOPE/cancel",
            "",
            "application/xml",
        )
        .await;
    assert_eq!(status, 404);
    h.stop().await;
}

#[tokio::test]
async fn loomis_down_then_back_loses_nothing() {
    let h = Harness::start(sim("body", "close")).await;
    h.sim().set_faults(Faults {
        fail_rate: 1.0,
        retry_after_rate: 0.0,
        ..Faults::default()
    });
    for i in 0..30 {
        let (s, _) = h
            .create(&sn_xml(&format!("DOWN{i:03}"), "UG1234", "AC12"))
            .await;
        assert_eq!(s, 202);
    }
    assert!(h.sim().wait_for(|s| s.faults_failed >= 30, WAIT).await);
    h.sim().set_faults(Faults::default());
    for i in 0..30 {
        h.wait_state(&format!("DOWN{i:03}"), State::Closed).await;
    }
    let dispatched = h
        .sim()
        .received()
        .iter()
        .filter(|m| m.status == Some(200))
        .count();
    assert_eq!(dispatched, 30, "each incident reached Loomis exactly once");
    h.stop().await;
}

/// A Loomis double: answers from a script of (status, body, retry-after) and checks
/// every message against the spec.
/// One scripted answer: status, body, and an optional Retry-After.
type Answer = (u16, String, Option<&'static str>);

#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Value>>>,
    invalid: Arc<Mutex<Vec<String>>>,
}

impl Script {
    /// A gateway whose Loomis is this script.
    async fn gateway(&self) -> Harness {
        let url = scripted(self.clone()).await;
        Harness::start(Options {
            loomis_url: Some(url),
            ..Options::default()
        })
        .await
    }

    /// Every message the gateway sent was valid by the spec.
    fn assert_all_valid(&self) {
        let invalid = self.invalid.lock().unwrap();
        assert!(invalid.is_empty(), "{invalid:?}");
    }
}

async fn scripted(script: Script) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/incidents",
        post(move |axum::Json(v): axum::Json<Value>| {
            let s = script.clone();
            async move {
                let valid = match v["MessageType"].as_str() {
                    Some("Dispatch") => Dispatch::from_json(&v).map(|_| ()),
                    Some("Cancel") => CustomerCancel::from_json(&v).map(|_| ()),
                    _ => Err(safepoint_gateway::loomis::message::ValidationErrors(vec![])),
                };
                if let Err(e) = valid {
                    s.invalid.lock().unwrap().push(format!("{v}: {e}"));
                }
                s.seen.lock().unwrap().push(v);
                let (status, body, ra) =
                    s.answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((200, String::new(), None));
                let mut resp = axum::response::Response::builder().status(status);
                if let Some(ra) = ra {
                    resp = resp.header("retry-after", ra);
                }
                resp.body(axum::body::Body::from(body)).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/incidents")
}

#[tokio::test]
async fn retry_classes_408_429_5xx_3xx_then_success_and_4xx_rejects() {
    let script = Script::default();
    script.answers.lock().unwrap().extend([
        (503, "busy".to_string(), Some("0")),
        (429, "slow down".to_string(), Some("0")),
        (408, String::new(), None),
        (500, "oops".to_string(), None),
        // A redirect is not followed (it would turn the POST into a GET) but retried.
        (307, String::new(), Some("0")),
        (200, String::new(), None),
    ]);
    let h = script.gateway().await;
    h.create(&sn_xml("INC5001", "UG1234", "AC12")).await;
    let inc = h.wait_state("INC5001", State::Sent).await;
    assert_eq!(script.seen.lock().unwrap().len(), 6);
    // The timeline says why it waited, once per cause.
    let notes: Vec<&str> = inc.timeline.iter().map(|e| e.detail.as_str()).collect();
    for want in [
        "not delivered yet (HTTP 503: busy); retrying",
        "not delivered yet (HTTP 429: slow down); retrying",
        "outcome unknown (HTTP 408: )",
        "outcome unknown (HTTP 500: oops); sending again unless Loomis answers first",
        "check the configured URL",
    ] {
        assert!(
            notes.iter().any(|n| n.contains(want)),
            "{want:?} in {notes:#?}"
        );
    }
    // The ACK then comes by callback.
    let (s, b) = h
        .callback(json!({"MessageType":"ACK","CustomerNumber":"A123456","IncidentId":"INC9","IncidentReference":"INC5001","Status":"Open"}))
        .await;
    assert_eq!((s, b["result"].as_str()), (200, Some("applied")));
    assert!(inc.dispatch_uncertain, "a 500/408 may have been processed");
    let retried = [("kind", "dispatch"), ("result", "retry")];
    assert!(h.counted("gateway_loomis_requests_total", &retried).await);

    // Non-retryable 4xx: rejected with Loomis's answer, never retried.
    script
        .answers
        .lock()
        .unwrap()
        .push_back((400, "{\"error\":\"bad device\"}".to_string(), None));
    h.create(&sn_xml("INC5002", "UG1234", "AC12")).await;
    let inc = h.wait_state("INC5002", State::Rejected).await;
    assert_eq!(inc.response_code.as_deref(), Some("HTTP 400"));
    let refused = [("kind", "dispatch"), ("result", "refused")];
    assert!(h.counted("gateway_loomis_requests_total", &refused).await);
    let ups = h.updates_of("INC5002");
    assert_eq!(kinds(&ups), ["REJECTED"]);
    assert!(ups[0]
        .response_text
        .as_deref()
        .unwrap()
        .contains("bad device"));
    assert_eq!(
        script.seen.lock().unwrap().len(),
        7,
        "a 4xx is never retried"
    );

    // A NAK in the body of a 4xx is applied as the NAK it is.
    script.answers.lock().unwrap().push_back((
        422,
        json!({"MessageType":"NAK","CustomerNumber":"A123456","IncidentReference":"INC5003","ResponseCode":"DeviceNotFound","ResponseText":"no"}).to_string(),
        None,
    ));
    h.create(&sn_xml("INC5003", "UG1234", "AC12")).await;
    let inc = h.wait_state("INC5003", State::Rejected).await;
    assert_eq!(inc.response_code.as_deref(), Some("DeviceNotFound"));

    // A 2xx whose body is no usable Loomis message (an ACK without IncidentId, a page of
    // HTML): delivered, and the timeline says why the body was not used.
    for (reference, body) in [
        ("INC5004", json!({"MessageType":"ACK","CustomerNumber":"A123456","IncidentReference":"INC5004","Status":"Open"}).to_string()),
        ("INC5005", "<html><body>Service Unavailable</body></html>".to_string()),
    ] {
        script.answers.lock().unwrap().push_back((200, body, None));
        h.create(&sn_xml(reference, "UG1234", "AC12")).await;
        let inc = h
            .wait_for(reference, "a note on the answer", |i| {
                i.timeline.iter().any(|e| e.detail.contains("the answer's body was not used"))
            })
            .await;
        assert_eq!(inc.state, State::Sent, "{reference}");
        let note = inc.timeline.iter().find(|e| e.detail.contains("not used")).unwrap();
        let why = if reference == "INC5004" { "IncidentId" } else { "not valid JSON" };
        assert!(note.detail.contains(why), "{reference}: {}", note.detail);
    }
    script.assert_all_valid();
    h.stop().await;
}

#[tokio::test]
async fn a_nak_answering_a_customer_cancel_refuses_it() {
    // Loomis answers the customer's Cancel with a NAK in the body (of a 2xx or of a
    // 4xx): the cancel is refused, the incident goes back to where it was, and Loomis's
    // later Close still applies.
    let script = Script::default();
    let h = script.gateway().await;
    let ack = |r: &str, id: &str| {
        json!({"MessageType":"ACK","CustomerNumber":"A123456","IncidentId":id,"IncidentReference":r,"Status":"Open"}).to_string()
    };
    let nak = |r: &str| {
        json!({"MessageType":"NAK","CustomerNumber":"A123456","IncidentReference":r,"ResponseCode":"TooLate","ResponseText":"technician on site"}).to_string()
    };
    for (n, (reference, status)) in [("INC5101", 200), ("INC5102", 409)].into_iter().enumerate() {
        let id = format!("INC9{n}");
        script
            .answers
            .lock()
            .unwrap()
            .push_back((200, ack(reference, &id), None));
        h.create(&sn_xml(reference, "UG1234", "AC12")).await;
        h.wait_state(reference, State::Acknowledged).await;
        script
            .answers
            .lock()
            .unwrap()
            .push_back((status, nak(reference), None));
        let (s, body) = h
            .post_xml(
                &format!("/v1/integrations/servicenow/incidents/{reference}/cancel"),
                "",
                "application/xml",
            )
            .await;
        assert_eq!(s, 202, "{body}");
        // The 202 left it CancelRequested; back to Acknowledged means the NAK applied.
        h.wait_state(reference, State::Acknowledged).await;
        let ups = h.updates_of(reference);
        assert_eq!(kinds(&ups), ["ACK", "NAK"], "{reference} answered {status}");
        assert_eq!(ups[1].response_code.as_deref(), Some("TooLate"));
        assert_eq!(ups[1].state, State::Acknowledged);
        let inc = h.incident(reference).unwrap();
        assert_eq!(
            inc.state,
            State::Acknowledged,
            "{reference} answered {status}"
        );
        let (s, b) = h
            .callback(json!({"MessageType":"Close","CustomerNumber":"A123456","IncidentId":id,"IncidentReference":reference,"ResponseText":"fixed","DateTime":"2026-01-02T00:00:00Z"}))
            .await;
        assert_eq!((s, b["result"].as_str()), (200, Some("applied")));
        assert_eq!(kinds(&h.updates_of(reference)), ["ACK", "NAK", "CLOSE"]);
    }
    script.assert_all_valid();
    h.stop().await;
}

#[tokio::test]
async fn delivery_gives_up_after_its_age_with_delivery_failed() {
    let script = Script::default();
    script
        .answers
        .lock()
        .unwrap()
        .extend((0..1000).map(|_| (503, String::new(), None)));
    let url = scripted(script.clone()).await;
    let h = Harness::start(Options {
        loomis_url: Some(url),
        retry_max_age_secs: 1,
        ..Options::default()
    })
    .await;
    h.create(&sn_xml("INC6001", "UG1234", "AC12")).await;
    let inc = h.wait_state("INC6001", State::Failed).await;
    assert_eq!(kinds(&h.updates_of("INC6001")), ["DELIVERY_FAILED"]);
    assert!(inc.timeline.iter().any(|e| e.detail.contains("gave up")));
    h.stop().await;
}

#[tokio::test]
async fn restart_in_the_middle_of_retries_resumes_the_schedule() {
    let script = Script::default();
    script
        .answers
        .lock()
        .unwrap()
        .extend((0..3).map(|_| (503, String::new(), None)));
    let url = scripted(script.clone()).await;
    let mut h = Harness::start(Options {
        loomis_url: Some(url),
        ..Options::default()
    })
    .await;
    h.create(&sn_xml("INC7001", "UG1234", "AC12")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while script.seen.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.restart().await;
    let inc = h.wait_state("INC7001", State::Sent).await;
    assert!(script.seen.lock().unwrap().len() >= 4);
    assert_eq!(inc.reference, "INC7001");
    assert!(
        h.running().gateway.store().jobs().unwrap().is_empty(),
        "outbox drained"
    );
    h.stop().await;
}

#[tokio::test]
async fn callbacks_auth_validation_orphans_conflicts_and_duplicates() {
    let h = Harness::start(sim("body", "none")).await;
    h.create(&sn_xml("INC8001", "UG1234", "AC12")).await;
    let inc = h.wait_state("INC8001", State::Accepted).await;
    let id = inc.incident_id.clone().unwrap();
    let close = json!({"MessageType":"close","CustomerNumber":"A123456","IncidentId":id,"IncidentReference":"INC8001",
        "ResponseText":"done","DateTime":"2026-01-01T10:00:00+01:00","Technician":"kept"});

    // Auth: none, wrong, right.
    let r = h
        .client
        .post(h.callback_url())
        .json(&close)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = h
        .client
        .post(h.callback_url())
        .bearer_auth("wrong")
        .json(&close)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.incident("INC8001").unwrap().state,
        State::Accepted,
        "refused callbacks change nothing"
    );

    // Over the size limit: 413 as a JSON error (after the credentials are checked).
    let huge = json!({"MessageType":"Close","ResponseText":"x".repeat(100_000)});
    for (token, status) in [(None, 401), (Some(CB_TOKEN), 413)] {
        let mut req = h.client.post(h.callback_url()).json(&huge);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let b: Value = r.json().await.expect("a JSON error body");
        if status == 413 {
            assert_eq!(b["error"]["code"], "PayloadTooLarge", "{b}");
        }
    }

    // Invalid: every missing field named.
    let (s, b) = h
        .callback(json!({"MessageType":"Close","IncidentReference":"INC8001"}))
        .await;
    assert_eq!(s, 400);
    let fields: Vec<&str> = b["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["CustomerNumber", "IncidentId", "ResponseText", "DateTime"]
    );
    let r = h
        .client
        .post(h.callback_url())
        .bearer_auth(CB_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Contradicting IncidentId: 409, nothing applied.
    let mut other = close.clone();
    other["IncidentId"] = json!("INC-OTHER");
    let (s, _) = h.callback(other).await;
    assert_eq!(s, 409);
    assert_eq!(h.incident("INC8001").unwrap().state, State::Accepted);

    // Applied once, then a duplicate.
    let (s, b) = h.callback(close.clone()).await;
    assert_eq!((s, b["result"].as_str()), (200, Some("applied")));
    let (s, b) = h.callback(close.clone()).await;
    assert_eq!((s, b["result"].as_str()), (200, Some("duplicate")));
    let inc = h.incident("INC8001").unwrap();
    assert_eq!(inc.state, State::Closed);
    assert_eq!(kinds(&h.updates_of("INC8001")), ["ACK", "ACCEPT", "CLOSE"]);
    assert_eq!(
        h.updates_of("INC8001")[2].event_time.unwrap().to_string(),
        "2026-01-01T09:00:00Z"
    );
    let applied = inc.timeline.iter().find(|e| e.kind == "Close").unwrap();
    assert_eq!(
        applied.message.as_ref().and_then(|m| m.value()).unwrap()["Technician"],
        "kept",
        "unknown fields kept for audit"
    );

    // A late Accept after Close: recorded, not applied.
    let (s, b) = h
        .callback(json!({"MessageType":"Accept","CustomerNumber":"A123456","IncidentId":id,"IncidentReference":"INC8001","SLADateTime":"2026-02-01T00:00:00Z"}))
        .await;
    assert_eq!((s, b["result"].as_str()), (200, Some("ignored")));
    assert_eq!(h.incident("INC8001").unwrap().state, State::Closed);

    // Unknown incident: 404, kept as an orphan operators can list.
    let (s, _) = h
        .callback(json!({"MessageType":"ACK","CustomerNumber":"A123456","IncidentId":"INC1","IncidentReference":"NOPE","Status":"Open"}))
        .await;
    assert_eq!(s, 404);
    let r = h
        .client
        .get(format!("{}/v1/admin/orphans", h.base()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["orphans"][0]["message"]["IncidentReference"], "NOPE");

    // Every message is counted, orphans and conflicts too, by how it came.
    for (kind, outcome) in [
        ("ACK", "orphan"),
        ("Close", "conflict"),
        ("Close", "duplicate"),
    ] {
        assert!(
            h.loomis_message_counted(kind, outcome, "callback").await,
            "{kind} {outcome}"
        );
    }
    h.stop().await;
}
