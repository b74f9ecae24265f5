//! Black-box tests of the built-in Loomis simulator: it runs on port 0, we talk real
//! HTTP to it, and a small axum receiver on port 0 plays the gateway's callback route.
//! Everything waits on events (`wait_for`, the receiver's counter, `shutdown`, which
//! waits for every simulator task); delays are milliseconds and nothing is timed.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use axum::{Json, Router};
use safepoint_gateway::loomis::message::{is_exact_utc_z, InboundKind, InboundMessage};
use safepoint_gateway::simulator::{
    AckMode, CallbackRetry, Faults, Outcome, ReceivedKind, Secret, Simulator, SimulatorConfig,
    SimulatorHandle,
};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);
const CALLBACK_TOKEN: &str = "cb-token-123";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One callback as the receiver saw it.
#[derive(Debug, Clone)]
struct Got {
    auth: Option<String>,
    body: Value,
    status: u16,
}

/// The gateway's callback route, reduced to what the tests check: it records every
/// POST and answers the scripted statuses first, then 200.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    count: Arc<watch::Sender<usize>>,
    url: String,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/loomis/messages",
            listener.local_addr().unwrap()
        );
        let r = Receiver {
            got: Arc::default(),
            script: Arc::default(),
            count: Arc::new(watch::Sender::new(0)),
            url,
        };
        let app = Router::new()
            .route("/v1/loomis/messages", routing::post(receive))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    fn answer_first(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    /// Waits until `n` POSTs (any status) have arrived.
    async fn wait_posts(&self, n: usize) -> Vec<Got> {
        let mut rx = self.count.subscribe();
        let ok = tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= n))
            .await
            .is_ok();
        assert!(ok, "expected {n} callbacks, got {:#?}", self.all());
        self.all()
    }

    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The callbacks answered 2xx, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|g| g.status == 200)
            .map(|g| g.body)
            .collect()
    }

    fn delivered_types(&self) -> Vec<String> {
        self.delivered()
            .iter()
            .map(|v| v["MessageType"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    r.got.lock().unwrap().push(Got { auth, body, status });
    r.count.send_modify(|c| *c += 1);
    StatusCode::from_u16(status).unwrap()
}

fn fast() -> SimulatorConfig {
    SimulatorConfig {
        accept_after: ms(5),
        close_after: ms(5),
        seed: Some(42),
        callback_retry: CallbackRetry {
            request_timeout: Duration::from_secs(5),
            initial_backoff: ms(5),
            max_backoff: ms(20),
            max_attempts: 10,
            max_elapsed: Duration::from_secs(30),
        },
        ..SimulatorConfig::default()
    }
}

async fn start(config: SimulatorConfig) -> (SimulatorHandle, Receiver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(config, listener).await.unwrap();
    let receiver = Receiver::start().await;
    sim.set_callback(receiver.url.clone(), Some(CALLBACK_TOKEN.to_string()));
    (sim, receiver)
}

fn dispatch(reference: &str) -> Value {
    json!({
        "MessageType": "Dispatch",
        "CustomerNumber": "A123456",
        "IncidentReference": reference,
        "DeviceId": "UG1234",
        "ContactName": "John Smith",
        "ContactNumber": "123-123-1234",
        "ContactEmail": "john.smith@examplecustomer.com",
        "Subject": "Safe Door Issue",
        "Description": "Cannot open the door",
        "FaultCode": "AC12",
        "FaultDateTime": "2021-01-16T15:17:48Z"
    })
}

fn cancel(incident_id: &str, reference: &str) -> Value {
    json!({
        "MessageType": "Cancel",
        "CustomerNumber": "A123456",
        "IncidentId": incident_id,
        "IncidentReference": reference,
        "ResponseText": "Fixed it ourselves",
        "DateTime": "2021-01-16T16:00:00Z"
    })
}

async fn post(sim: &SimulatorHandle, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(sim.incidents_url())
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `GET` of a control route (`state`, `received?limit=N`), as JSON.
async fn control(sim: &SimulatorHandle, route: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/{route}", sim.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn problem_fields(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap().to_string())
        .collect()
}

/// Checks a callback against the spec: exact field set, values, and `Z` times.
fn assert_spec(v: &Value, kind: InboundKind, incident_id: &str, reference: &str) {
    let m = InboundMessage::from_value(v.clone()).unwrap();
    assert_eq!(v["MessageType"], kind.as_str());
    assert_eq!(m.kind, kind);
    assert_eq!(v["CustomerNumber"], "A123456");
    assert_eq!(v["IncidentReference"], reference);
    assert_eq!(v["IncidentId"], incident_id);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = match kind {
        InboundKind::Ack => vec!["Status"],
        InboundKind::Accept => vec!["SLADateTime", "DateTime"],
        InboundKind::Close | InboundKind::Cancel => vec!["DateTime"],
        InboundKind::Nak => unreachable!(),
    };
    want.extend([
        "MessageType",
        "CustomerNumber",
        "IncidentId",
        "IncidentReference",
        "ResponseText",
    ]);
    want.sort_unstable();
    assert_eq!(keys, want, "fields of {v}");
    for t in ["SLADateTime", "DateTime"] {
        if let Some(s) = v.get(t) {
            assert!(is_exact_utc_z(s.as_str().unwrap()), "{t} = {s}");
        }
    }
    if kind != InboundKind::Accept {
        assert!(!v["ResponseText"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn ack_in_body_then_accept_and_close_in_order() {
    let (sim, rx) = start(SimulatorConfig {
        sla: Duration::from_secs(3600),
        ..fast()
    })
    .await;
    let (status, ack) = post(&sim, &dispatch("100001")).await;
    assert_eq!(status, 200);
    assert_eq!(
        ack,
        json!({"MessageType":"ACK","CustomerNumber":"A123456","IncidentId":"INC400300",
            "IncidentReference":"100001","Status":"Open","ResponseText":"Incident created"})
    );
    let got = rx.wait_posts(2).await;
    assert!(got
        .iter()
        .all(|g| g.auth.as_deref() == Some("Bearer cb-token-123")));
    let d = rx.delivered();
    assert_eq!(rx.delivered_types(), ["Accept", "Close"]);
    assert_spec(&d[0], InboundKind::Accept, "INC400300", "100001");
    assert_spec(&d[1], InboundKind::Close, "INC400300", "100001");
    let accept = InboundMessage::from_value(d[0].clone()).unwrap();
    let sla = accept.sla_date_time.unwrap() - accept.date_time.unwrap();
    assert_eq!(sla.as_secs(), 3600);
    assert!(
        sim.wait_for(
            |s| s.acks == 1 && s.callbacks_sent == 2 && s.callbacks_sent_by_kind["Close"] == 1,
            WAIT
        )
        .await
    );
    // A second incident gets the next id.
    let (_, ack2) = post(&sim, &dispatch("100002")).await;
    assert_eq!(ack2["IncidentId"], "INC400301");
    sim.shutdown().await;
}

#[tokio::test]
async fn ack_by_callback_only() {
    let (sim, rx) = start(SimulatorConfig {
        ack: AckMode::Callback,
        ..fast()
    })
    .await;
    let (status, body) = post(&sim, &dispatch("200001")).await;
    assert_eq!((status, body), (200, json!({})));
    rx.wait_posts(3).await;
    assert_eq!(rx.delivered_types(), ["ACK", "Accept", "Close"]);
    assert_spec(&rx.delivered()[0], InboundKind::Ack, "INC400300", "200001");
    sim.shutdown().await;
}

#[tokio::test]
async fn ack_in_body_and_by_callback() {
    let (sim, rx) = start(SimulatorConfig {
        ack: AckMode::Both,
        ..fast()
    })
    .await;
    let (status, ack) = post(&sim, &dispatch("300001")).await;
    assert_eq!(status, 200);
    rx.wait_posts(3).await;
    assert_eq!(rx.delivered_types(), ["ACK", "Accept", "Close"]);
    assert_eq!(
        rx.delivered()[0],
        ack,
        "the callback is an exact second copy"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn nak_by_callback_too() {
    let (sim, rx) = start(SimulatorConfig {
        ack: AckMode::Both,
        ..fast()
    })
    .await;
    let mut d = dispatch("300002");
    d["DeviceId"] = json!("XX0001");
    let (_, nak) = post(&sim, &d).await;
    assert_eq!(nak["ResponseCode"], "DeviceNotFound");
    rx.wait_posts(1).await;
    assert_eq!(rx.delivered(), vec![nak]);
    sim.shutdown().await;
}

#[tokio::test]
async fn close_before_accept_sends_close_only() {
    let (sim, rx) = start(SimulatorConfig {
        outcome: Outcome::CloseBeforeAccept,
        ..fast()
    })
    .await;
    post(&sim, &dispatch("400001")).await;
    rx.wait_posts(1).await;
    sim.shutdown().await; // waits for every incident script to end
    assert_eq!(rx.delivered_types(), ["Close"]);
    assert_spec(
        &rx.delivered()[0],
        InboundKind::Close,
        "INC400300",
        "400001",
    );
}

#[tokio::test]
async fn reordered_callbacks_send_close_before_accept() {
    let (sim, rx) = start(SimulatorConfig {
        faults: Faults {
            reorder_callbacks: true,
            ..Faults::default()
        },
        ..fast()
    })
    .await;
    post(&sim, &dispatch("400002")).await;
    rx.wait_posts(2).await;
    assert_eq!(rx.delivered_types(), ["Close", "Accept"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn loomis_cancel_outcome() {
    let (sim, rx) = start(SimulatorConfig {
        outcome: Outcome::Cancel,
        ..fast()
    })
    .await;
    post(&sim, &dispatch("500001")).await;
    rx.wait_posts(2).await;
    sim.shutdown().await;
    assert_eq!(rx.delivered_types(), ["Accept", "Cancel"]);
    assert_spec(
        &rx.delivered()[1],
        InboundKind::Cancel,
        "INC400300",
        "500001",
    );
}

#[tokio::test]
async fn customer_cancel_before_accept_stops_the_script_and_is_confirmed() {
    let (sim, rx) = start(SimulatorConfig {
        accept_after: Duration::from_secs(600),
        ..fast()
    })
    .await;
    let (_, ack) = post(&sim, &dispatch("600001")).await;
    let id = ack["IncidentId"].as_str().unwrap();
    let (status, body) = post(&sim, &cancel(id, "600001")).await;
    assert_eq!((status, body), (200, json!({})));
    rx.wait_posts(1).await;
    // Again: already cancelled.
    let (status, body) = post(&sim, &cancel(id, "600001")).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "AlreadyCancelled");
    sim.shutdown().await;
    assert_eq!(rx.delivered_types(), ["Cancel"]);
    let confirm = &rx.delivered()[0];
    assert_spec(confirm, InboundKind::Cancel, id, "600001");
    assert!(confirm["ResponseText"]
        .as_str()
        .unwrap()
        .contains("Fixed it ourselves"));
}

#[tokio::test]
async fn customer_cancel_after_accept_stops_the_close() {
    let (sim, rx) = start(SimulatorConfig {
        accept_after: ms(0),
        close_after: Duration::from_secs(600),
        ..fast()
    })
    .await;
    let (_, ack) = post(&sim, &dispatch("600002")).await;
    let id = ack["IncidentId"].as_str().unwrap();
    rx.wait_posts(1).await;
    let (status, _) = post(&sim, &cancel(id, "600002")).await;
    assert_eq!(status, 200);
    rx.wait_posts(2).await;
    sim.shutdown().await;
    assert_eq!(rx.delivered_types(), ["Accept", "Cancel"]);
}

#[tokio::test]
async fn customer_cancel_without_confirmation() {
    let (sim, rx) = start(SimulatorConfig {
        accept_after: Duration::from_secs(600),
        confirm_customer_cancel: false,
        ..fast()
    })
    .await;
    let (_, ack) = post(&sim, &dispatch("600003")).await;
    let id = ack["IncidentId"].as_str().unwrap();
    assert_eq!(post(&sim, &cancel(id, "600003")).await.0, 200);
    sim.shutdown().await;
    assert!(rx.all().is_empty());
}

#[tokio::test]
async fn customer_cancel_unknown_mismatched_and_closed() {
    let (sim, rx) = start(SimulatorConfig {
        outcome: Outcome::CloseBeforeAccept,
        close_after: ms(0),
        ..fast()
    })
    .await;
    let (status, body) = post(&sim, &cancel("INC999999", "1")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "UnknownIncident");
    let (_, ack) = post(&sim, &dispatch("700001")).await;
    let id = ack["IncidentId"].as_str().unwrap();
    let (status, body) = post(&sim, &cancel(id, "other-ref")).await;
    assert_eq!(status, 409);
    assert_eq!(problem_fields(&body), ["IncidentReference"]);
    rx.wait_posts(1).await; // the Close
    let (status, body) = post(&sim, &cancel(id, "700001")).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "AlreadyClosed");
    assert!(
        sim.wait_for(|s| s.unknown_incident == 1 && s.conflicts == 2, WAIT)
            .await
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn naks_device_fault_and_duplicate() {
    let (sim, _rx) = start(SimulatorConfig {
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    let mut d = dispatch("800001");
    d["DeviceId"] = json!("ZZ9999");
    let (status, nak) = post(&sim, &d).await;
    assert_eq!(status, 200);
    assert_eq!(nak["MessageType"], "NAK");
    assert_eq!(nak["ResponseCode"], "DeviceNotFound");
    assert_eq!(
        InboundMessage::from_value(nak.clone()).unwrap().kind,
        InboundKind::Nak
    );
    let mut keys: Vec<&String> = nak.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "CustomerNumber",
            "IncidentReference",
            "MessageType",
            "ResponseCode",
            "ResponseText"
        ]
    );

    let mut d = dispatch("800002");
    d["FaultCode"] = json!("ZZ99");
    assert_eq!(post(&sim, &d).await.1["ResponseCode"], "InvalidFault");

    // Absent FaultCode is fine; a prefix-listed device is known.
    let mut d = dispatch("800003");
    d.as_object_mut().unwrap().remove("FaultCode");
    d["DeviceId"] = json!("UG2417");
    assert_eq!(post(&sim, &d).await.1["MessageType"], "ACK");

    // A NAKed reference may come again once fixed; an ACKed one is a Duplicate.
    assert_eq!(
        post(&sim, &dispatch("800001")).await.1["MessageType"],
        "ACK"
    );
    let (_, dup) = post(&sim, &dispatch("800001")).await;
    assert_eq!(dup["ResponseCode"], "Duplicate");
    assert!(dup["ResponseText"].as_str().unwrap().contains("INC"));
    // Same reference, other customer: not a duplicate.
    let mut d = dispatch("800001");
    d["CustomerNumber"] = json!("B777777");
    assert_eq!(post(&sim, &d).await.1["MessageType"], "ACK");

    let s = sim.stats();
    assert_eq!(s.dispatches, 6);
    assert_eq!(s.acks, 3);
    assert_eq!(
        s.naks.into_iter().collect::<Vec<_>>(),
        [
            ("DeviceNotFound".to_string(), 1),
            ("Duplicate".to_string(), 1),
            ("InvalidFault".to_string(), 1)
        ]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_window_is_configurable() {
    let (sim, _rx) = start(SimulatorConfig {
        duplicate_window: Duration::ZERO,
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    assert_eq!(
        post(&sim, &dispatch("1")).await.1["IncidentId"],
        "INC400300"
    );
    assert_eq!(
        post(&sim, &dispatch("1")).await.1["IncidentId"],
        "INC400301"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_messages_name_every_bad_field() {
    let (sim, _rx) = start(SimulatorConfig {
        customer_numbers: vec!["A123456".into()],
        ..fast()
    })
    .await;
    let bad = json!({
        "MessageType": "dispatch",
        "CustomerNumber": "NOPE",
        "IncidentReference": "900001",
        "ContactName": "John Smith",
        "ContactNumber": "",
        "ContactEmail": "not-an-email",
        "Subject": "Safe Door Issue",
        "Description": 42,
        "FaultDateTime": "2021-01-16T16:17:48+01:00"
    });
    let (status, body) = post(&sim, &bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "ValidationFailed");
    let mut fields = problem_fields(&body);
    fields.sort();
    assert_eq!(
        fields,
        [
            "ContactEmail",
            "ContactNumber",
            "CustomerNumber",
            "Description",
            "DeviceId",
            "FaultDateTime",
            "MessageType"
        ]
    );

    let (status, body) = post(&sim, &json!({"MessageType":"Cancel","IncidentId":"INC1"})).await;
    assert_eq!(status, 400);
    let mut fields = problem_fields(&body);
    fields.sort();
    assert_eq!(
        fields,
        [
            "CustomerNumber",
            "DateTime",
            "IncidentReference",
            "ResponseText"
        ]
    );

    let (status, body) = post(&sim, &json!({"MessageType":"ACK"})).await;
    assert_eq!(
        (status, problem_fields(&body)),
        (400, vec!["MessageType".to_string()])
    );
    let (status, body) = post(&sim, &json!([dispatch("1"), dispatch("2")])).await;
    assert_eq!(
        (status, problem_fields(&body)),
        (400, vec!["(body)".to_string()])
    );

    let client = reqwest::Client::new();
    let resp = client
        .post(sim.incidents_url())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client
        .post(sim.incidents_url())
        .body(vec![b' '; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = client.get(sim.incidents_url()).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    let s = sim.stats();
    assert_eq!((s.invalid, s.too_large, s.dispatches), (6, 1, 0));
    let rec = sim.received();
    assert_eq!(rec.len(), 7);
    assert_eq!(rec[0].kind, ReceivedKind::Dispatch);
    assert_eq!(rec[0].status, Some(400));
    assert_eq!(rec[0].message.as_ref().unwrap(), &bad);
    assert_eq!(rec[1].kind, ReceivedKind::Cancel);
    assert_eq!(rec[2].kind, ReceivedKind::Invalid);
    assert!(rec[4].message.is_none(), "not JSON: no message");
    // The control route shows the same, newest last.
    let shown: serde_json::Value = control(&sim, "received?limit=7").await;
    assert_eq!(shown[0]["message"], bad);
    assert_eq!(shown[0]["kind"], "Dispatch");
    assert_eq!(shown[4]["message"], serde_json::Value::Null);
    assert!(shown[3]["message"].is_array());
    assert_eq!(shown.as_array().unwrap().len(), 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn bearer_auth_is_enforced() {
    let (sim, _rx) = start(SimulatorConfig {
        expect_token: Some(Secret::new("s3cret")),
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    let client = reqwest::Client::new();
    let r = client
        .post(sim.incidents_url())
        .json(&dispatch("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = client
        .post(sim.incidents_url())
        .bearer_auth("wrong")
        .json(&dispatch("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(sim.incidents_url())
        .bearer_auth("s3cret")
        .json(&dispatch("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.stats().unauthorized, 2);
    // The state never shows a token.
    let state = control(&sim, "state").await.to_string();
    assert!(!state.contains("s3cret") && !state.contains(CALLBACK_TOKEN));
    assert!(state.contains("\"expect_token_set\":true"));
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_rate_one_answers_503_without_processing() {
    let (sim, _rx) = start(SimulatorConfig {
        faults: Faults {
            fail_rate: 1.0,
            retry_after_rate: 1.0,
            retry_after_secs: 3,
            ..Faults::default()
        },
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .post(sim.incidents_url())
            .json(&dispatch("1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
    }
    assert_eq!(sim.stats().dispatches, 0);
    assert_eq!(sim.stats().faults_failed, 3);
    // Healed at run time through the handle; the same message is not a duplicate.
    sim.set_faults(Faults::default());
    assert_eq!(post(&sim, &dispatch("1")).await.1["MessageType"], "ACK");
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_sets_a_down_window_and_lifts_it() {
    let (sim, _rx) = start(SimulatorConfig {
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    let client = reqwest::Client::new();
    let faults_url = format!("{}/faults", sim.control_url());
    let r = client
        .post(&faults_url)
        .json(&json!({"down_for_ms": 600000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(sim.incidents_url())
        .json(&dispatch("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "600");
    let state: Value = control(&sim, "state").await;
    assert!(state["down_remaining_ms"].as_u64().unwrap() > 0);
    assert_eq!(state["stats"]["faults_down"], 1);
    assert_eq!(state["seed"], 42);

    // Connection-level down: no HTTP answer at all.
    client
        .post(&faults_url)
        .json(&json!({"down_mode": "drop"}))
        .send()
        .await
        .unwrap();
    let err = client
        .post(sim.incidents_url())
        .json(&dispatch("1"))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status(), "{err}");

    // Bad patches are refused, naming the fields.
    let r = client
        .post(&faults_url)
        .json(&json!({"fail_rate": 2, "timeout_rate": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut fields = problem_fields(&r.json().await.unwrap());
    fields.sort();
    assert_eq!(fields, ["fail_rate", "timeout_rate"]);
    let r = client
        .post(&faults_url)
        .json(&json!({"no_such_fault": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    client
        .post(&faults_url)
        .json(&json!({"down_for_ms": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&sim, &dispatch("1")).await.1["MessageType"], "ACK");
    assert_eq!(sim.stats().faults_down, 2);
    let received: Value = control(&sim, "received?limit=1").await;
    assert_eq!(received[0]["outcome"], "ACK INC400300");
    sim.shutdown().await;
}

async fn timeout_then_retry(process_before_hang: bool) -> Value {
    let (sim, _rx) = start(SimulatorConfig {
        faults: Faults {
            timeout_rate: 1.0,
            ..Faults::default()
        },
        hang: Duration::from_secs(600),
        process_before_hang,
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    let impatient = reqwest::Client::builder().timeout(ms(300)).build().unwrap();
    let err = impatient
        .post(sim.incidents_url())
        .json(&dispatch("T1"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(sim.wait_for(|s| s.faults_timed_out == 1, WAIT).await);
    sim.set_faults(Faults::default());
    let (status, answer) = post(&sim, &dispatch("T1")).await;
    assert_eq!(status, 200);
    let rec = sim.received();
    assert_eq!(rec[0].status, None);
    assert!(rec[0].outcome.starts_with("fault:"));
    sim.shutdown().await; // also drops the held connection
    answer
}

#[tokio::test]
async fn timeout_processed_before_hang_makes_the_retry_a_duplicate() {
    let answer = timeout_then_retry(true).await;
    assert_eq!(answer["ResponseCode"], "Duplicate");
}

#[tokio::test]
async fn timeout_unprocessed_lets_the_retry_through() {
    let answer = timeout_then_retry(false).await;
    assert_eq!(answer["MessageType"], "ACK");
    assert_eq!(answer["IncidentId"], "INC400300");
}

#[tokio::test]
async fn callbacks_are_retried_on_503_and_dropped_on_4xx() {
    let (sim, rx) = start(fast()).await;
    rx.answer_first(&[503, 503, 404]);
    post(&sim, &dispatch("C1")).await;
    // Accept: 503, 503, then 404 (dropped); Close: 200.
    let got = rx.wait_posts(4).await;
    let statuses: Vec<u16> = got.iter().map(|g| g.status).collect();
    assert_eq!(statuses, [503, 503, 404, 200]);
    let types: Vec<&str> = got
        .iter()
        .map(|g| g.body["MessageType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accept", "Accept", "Accept", "Close"]);
    assert!(
        sim.wait_for(
            |s| s.callbacks_sent == 1
                && s.callbacks_retried == 2
                && s.callbacks_rejected == 1
                && s.callback_attempts == 4,
            WAIT
        )
        .await
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_give_up_after_the_retry_budget() {
    let (sim, rx) = start(SimulatorConfig {
        outcome: Outcome::None,
        callback_retry: CallbackRetry {
            max_attempts: 3,
            ..fast().callback_retry
        },
        ..fast()
    })
    .await;
    rx.answer_first(&[500, 500, 500]);
    post(&sim, &dispatch("C2")).await;
    assert!(
        sim.wait_for(
            |s| s.callbacks_failed == 1 && s.callbacks_retried == 2,
            WAIT
        )
        .await
    );
    assert_eq!(rx.all().len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn callbacks_retry_through_connection_refused_until_the_url_works() {
    let (sim, rx) = start(SimulatorConfig {
        outcome: Outcome::None,
        ..fast()
    })
    .await;
    // A port nobody listens on: bind, note it, close it.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/v1/loomis/messages", dead.local_addr().unwrap());
    drop(dead);
    sim.set_callback(dead_url, None);
    post(&sim, &dispatch("C3")).await;
    assert!(sim.wait_for(|s| s.callbacks_retried >= 1, WAIT).await);
    sim.set_callback(rx.url.clone(), Some(CALLBACK_TOKEN.into()));
    rx.wait_posts(1).await;
    assert_eq!(rx.delivered_types(), ["Accept"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_callbacks_send_each_twice_in_order() {
    let (sim, rx) = start(SimulatorConfig {
        faults: Faults {
            duplicate_callbacks: 1.0,
            ..Faults::default()
        },
        ..fast()
    })
    .await;
    post(&sim, &dispatch("D1")).await;
    rx.wait_posts(4).await;
    assert_eq!(rx.delivered_types(), ["Accept", "Accept", "Close", "Close"]);
    let d = rx.delivered();
    assert_eq!(d[0], d[1]);
    assert_eq!(d[2], d[3]);
    assert!(sim.wait_for(|s| s.callbacks_duplicated == 2, WAIT).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn no_callback_url_drops_and_counts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(
        SimulatorConfig {
            outcome: Outcome::None,
            ..fast()
        },
        listener,
    )
    .await
    .unwrap();
    post(&sim, &dispatch("N1")).await;
    assert!(sim.wait_for(|s| s.callbacks_undeliverable == 1, WAIT).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    async fn run(seed: u64) -> Vec<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = Simulator::start(
            SimulatorConfig {
                seed: Some(seed),
                outcome: Outcome::None,
                faults: Faults {
                    fail_rate: 0.5,
                    ..Faults::default()
                },
                ..fast()
            },
            listener,
        )
        .await
        .unwrap();
        assert_eq!(sim.seed(), seed);
        let mut statuses = Vec::new();
        for i in 0..24 {
            statuses.push(post(&sim, &dispatch(&format!("S{i}"))).await.0);
        }
        sim.shutdown().await;
        statuses
    }
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert!(a.contains(&200) && a.contains(&503), "{a:?}");
}

#[tokio::test]
async fn unknown_control_routes_are_not_incidents() {
    let (sim, _rx) = start(fast()).await;
    let r = reqwest::Client::new()
        .post(format!("{}/fault", sim.control_url()))
        .json(&dispatch("X1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(sim.stats().requests, 0);
    sim.shutdown().await;
}
