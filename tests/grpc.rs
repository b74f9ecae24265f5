//! Black-box tests of the gRPC front door: the real gateway (`app::start`) on port 0 with
//! the built-in Loomis simulator and a sled store in a temp dir, and a real tonic client
//! over loopback. Everything waits on events (stream messages, the store's durable
//! sequence watermark); nothing is timed.

use safepoint_gateway::app::{self, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::{
    create_incidents_response, CancelIncidentRequest, CreateIncidentRequest, GetIncidentRequest,
    IncidentState, IncidentUpdate, UpdateKind, WatchUpdatesRequest,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tonic_types::StatusExt;

const KEY: &str = "internal-key-0123456789";
const OTHER_KEY: &str = "other-key-0123456789";
/// A bound on every wait, so a broken gateway fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);

/// A running gateway and what the tests need of it.
struct Gw {
    running: Running,
    _dir: tempfile::TempDir,
}

/// How the simulator ends incidents.
#[derive(Clone, Copy)]
enum Sim {
    /// ACK, Accept, Close, each a few milliseconds apart.
    Close,
    /// ACK, then nothing for an hour: the incident stays open for cancels.
    Open,
}

impl Gw {
    async fn start(sim: Sim) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let mapping = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/internal-grpc.toml");
        let (accept, close, outcome) = match sim {
            Sim::Close => (5, 5, "close"),
            Sim::Open => (3_600_000, 3_600_000, "none"),
        };
        let toml = format!(
            r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
shutdown_grace_ms = 5000

[store]
path = "{store}"

[loomis]
url = "simulator"
auth = {{ type = "none" }}

[callbacks]
auth = {{ type = "bearer", token_env = "CALLBACK_TOKEN" }}

[simulator]
accept_after_ms = {accept}
close_after_ms = {close}
outcome = "{outcome}"

[[integrations]]
name = "internal"
customer_number = "C000001"
mapping = "{mapping}"
api_key_env = "INTERNAL_KEY"

[[integrations]]
name = "other"
customer_number = "C000002"
mapping = "{mapping}"
api_key_env = "OTHER_KEY"
"#,
            store = dir.path().join("store").display(),
        );
        let env = |k: &str| match k {
            "INTERNAL_KEY" => Some(KEY.to_string()),
            "OTHER_KEY" => Some(OTHER_KEY.to_string()),
            "CALLBACK_TOKEN" => Some("callback-token-0123456789".to_string()),
            _ => None,
        };
        let config = Config::parse(&toml, "test", false, &env).expect("test config is valid");
        let running = app::start(config).await.expect("gateway starts");
        Gw { running, _dir: dir }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to gRPC")
    }

    async fn client(&self) -> IncidentGatewayClient<Channel> {
        IncidentGatewayClient::new(self.channel().await)
    }

    /// Waits until `integration` has `n` durable updates.
    async fn wait_updates(&self, integration: &str, n: u64) {
        let mut seq = self.running.gateway.store().watch_sequence(integration);
        tokio::time::timeout(WAIT, seq.wait_for(|s| *s >= n))
            .await
            .unwrap_or_else(|_| panic!("{integration} never reached {n} updates"))
            .expect("store open");
    }

    async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

/// `msg` with `authorization: Bearer <key>`.
fn authed<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn fields(reference: &str) -> HashMap<String, String> {
    [
        ("reference", reference),
        ("device", "ug1234"),
        ("contact.name", "John  Smith"),
        ("contact.phone", "123-123-1234"),
        ("contact.email", "john.smith@example.com"),
        ("subject", "Safe door does not open"),
        ("description", "The door is stuck."),
        ("fault_code", "ac12"),
        ("fault_time", "2021-01-16T16:17:48+01:00"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn create_req(reference: &str) -> CreateIncidentRequest {
    CreateIncidentRequest {
        integration: "internal".into(),
        fields: fields(reference),
    }
}

async fn watch(
    client: &mut IncidentGatewayClient<Channel>,
    after: u64,
) -> Result<Streaming<IncidentUpdate>, Status> {
    client
        .watch_updates(authed(
            WatchUpdatesRequest {
                integration: "internal".into(),
                after_sequence: after,
            },
            KEY,
        ))
        .await
        .map(|r| r.into_inner())
}

/// The next `n` updates of a stream.
async fn take(stream: &mut Streaming<IncidentUpdate>, n: usize) -> Vec<IncidentUpdate> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("stream stalled after {} of {n} updates", out.len()));
        match next {
            Some(Ok(u)) => out.push(u),
            Some(Err(s)) => panic!("stream failed after {} updates: {s:?}", out.len()),
            None => panic!("stream ended after {} of {n} updates", out.len()),
        }
    }
    out
}

fn sequences(updates: &[IncidentUpdate]) -> Vec<u64> {
    updates.iter().map(|u| u.sequence).collect()
}

#[tokio::test]
async fn create_is_idempotent_and_refuses_changed_content() {
    let gw = Gw::start(Sim::Open).await;
    let mut c = gw.client().await;

    let first = c
        .create_incident(authed(create_req("OPS-1"), KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert_eq!(first.integration, "internal");
    assert_eq!(first.incident_reference, "OPS-1");
    assert_ne!(first.state(), IncidentState::Unspecified);
    assert!(first.created_at.is_some());

    let again = c
        .create_incident(authed(create_req("OPS-1"), KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !again.created,
        "same reference, same content: not created again"
    );
    assert_eq!(again.created_at, first.created_at);

    let mut changed = create_req("OPS-1");
    changed
        .fields
        .insert("subject".into(), "Another subject".into());
    changed.fields.insert("device".into(), "UG1235".into());
    let err = c.create_incident(authed(changed, KEY)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("Subject"), "{}", err.message());
    assert!(err.message().contains("DeviceId"), "{}", err.message());

    // The same reference through another integration of another customer is its own incident.
    let mut other = create_req("OPS-1");
    other.integration = "other".into();
    let o = c
        .create_incident(authed(other, OTHER_KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(o.created);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_all_reported_as_bad_request_violations() {
    let gw = Gw::start(Sim::Open).await;
    let mut c = gw.client().await;
    let mut req = create_req("OPS-2");
    req.fields.insert("device".into(), "   ".into());
    req.fields.remove("contact.name");
    req.fields
        .insert("fault_time".into(), "2021-01-16 09:17:48".into());
    let err = c.create_incident(authed(req, KEY)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let bad = err
        .get_details_bad_request()
        .expect("google.rpc.BadRequest details");
    let mut got: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    got.sort();
    assert_eq!(got, ["ContactName", "DeviceId", "FaultDateTime"], "{bad:?}");
    for v in &bad.field_violations {
        assert!(!v.description.is_empty());
        assert!(
            err.message().contains(&v.field),
            "message names {}: {}",
            v.field,
            err.message()
        );
    }
    assert!(err.message().contains("3 problems"), "{}", err.message());
    // Huge values are quoted in part: the error keeps its code instead of overflowing
    // the client's header limit (8 KiB in grpcio).
    let mut req = create_req("OPS-2");
    req.fields.insert("reference".into(), "R".repeat(20_000));
    req.fields
        .insert("contact.phone".into(), "9".repeat(20_000));
    req.fields.insert("fault_time".into(), "x".repeat(20_000));
    let huge = c.create_incident(authed(req, KEY)).await.unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    assert!(huge.message().len() < 2_000, "{}", huge.message().len());
    let bad = huge.get_details_bad_request().expect("details");
    assert!(bad.field_violations.len() >= 2, "{bad:?}");
    assert!(
        bad.field_violations
            .iter()
            .all(|v| v.description.chars().count() <= 161),
        "{bad:?}"
    );
    let mut far = GetIncidentRequest {
        integration: "internal".into(),
        incident_reference: "R".repeat(20_000),
    };
    let e = c.get_incident(authed(far.clone(), KEY)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().len() < 300, "{}", e.message());
    // A message over the 1 MiB limit is refused before it is decoded.
    let mut req = create_req("OPS-2");
    req.fields.insert("description".into(), "d".repeat(2 << 20));
    let e = c.create_incident(authed(req, KEY)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("message length too large"), "{e:?}");
    far.integration = "i".repeat(20_000);
    let e = c.get_incident(authed(far, KEY)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Nothing was stored.
    let get = c
        .get_incident(authed(
            GetIncidentRequest {
                integration: "internal".into(),
                incident_reference: "OPS-2".into(),
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    gw.stop().await;
}

#[tokio::test]
async fn keys_are_checked_per_integration() {
    let gw = Gw::start(Sim::Open).await;
    let mut c = gw.client().await;

    let none = c
        .create_incident(Request::new(create_req("OPS-3")))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert!(
        none.message().contains("send `authorization: Bearer"),
        "{none:?}"
    );
    let wrong = c
        .create_incident(authed(create_req("OPS-3"), "nope"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        wrong.message().contains("is not valid"),
        "a key was sent: {wrong:?}"
    );
    let other = c
        .create_incident(authed(create_req("OPS-3"), OTHER_KEY))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    let mut unknown = create_req("OPS-3");
    unknown.integration = "nosuch".into();
    let e = c
        .create_incident(authed(unknown.clone(), KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Without a valid key, an unknown integration is not revealed as such.
    let e = c
        .create_incident(authed(unknown, "nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let w = watch(&mut c, 0).await;
    assert!(w.is_ok());
    let e = c
        .watch_updates(authed(
            WatchUpdatesRequest {
                integration: "internal".into(),
                after_sequence: 0,
            },
            OTHER_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .get_incident(Request::new(GetIncidentRequest {
            integration: "internal".into(),
            incident_reference: "OPS-3".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .cancel_incident(authed(
            CancelIncidentRequest {
                integration: "internal".into(),
                incident_reference: "OPS-3".into(),
                ..Default::default()
            },
            OTHER_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Nothing was created by any of the refused calls.
    assert!(gw
        .running
        .gateway
        .get("internal", "OPS-3")
        .unwrap()
        .is_none());
    gw.stop().await;
}

#[tokio::test]
async fn cancel_with_a_reason_or_mapped_fields() {
    let gw = Gw::start(Sim::Open).await;
    let mut c = gw.client().await;
    let mut updates = watch(&mut c, 0).await.unwrap();
    for r in ["OPS-10", "OPS-11", "OPS-12"] {
        c.create_incident(authed(create_req(r), KEY)).await.unwrap();
    }
    // All ACKed (the simulator answers in the Dispatch response body).
    let acks = take(&mut updates, 3).await;
    assert!(acks
        .iter()
        .all(|u| u.kind() == UpdateKind::Ack && !u.incident_id.is_empty()));

    let cancel =
        |reference: &str, reason: &str, fields: HashMap<String, String>| CancelIncidentRequest {
            integration: "internal".into(),
            incident_reference: reference.into(),
            reason: reason.into(),
            fields,
        };
    let r = c
        .cancel_incident(authed(
            cancel("OPS-10", "Customer found the key", HashMap::new()),
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, "Customer found the key");
    assert!(
        matches!(
            r.state(),
            IncidentState::CancelRequested | IncidentState::Cancelled
        ),
        "{r:?}"
    );
    assert!(!r.incident_id.is_empty());

    // No reason: it comes from `fields` through the mapping's [cancel] part.
    let mapped = HashMap::from([("reason".to_string(), "Customer   withdrew".to_string())]);
    let r = c
        .cancel_incident(authed(cancel("OPS-11", "", mapped), KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, "Customer withdrew", "collapsed by the mapping");

    // A reason given directly is cut to the same 1000 characters a mapped one is.
    let long = "é".repeat(5000);
    let r = c
        .cancel_incident(authed(cancel("OPS-12", &long, HashMap::new()), KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reason, "é".repeat(1000));

    // Loomis (the simulator) confirms all three.
    let mut confirmed: Vec<String> = take(&mut updates, 3)
        .await
        .into_iter()
        .inspect(|u| {
            assert_eq!(u.kind(), UpdateKind::Cancel);
            assert_eq!(u.state(), IncidentState::Cancelled);
        })
        .map(|u| u.incident_reference)
        .collect();
    confirmed.sort();
    assert_eq!(confirmed, ["OPS-10", "OPS-11", "OPS-12"]);

    let e = c
        .cancel_incident(authed(cancel("OPS-10", "again", HashMap::new()), KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .cancel_incident(authed(cancel("OPS-99", "x", HashMap::new()), KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .cancel_incident(authed(cancel("", "x", HashMap::new()), KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    gw.stop().await;
}

#[tokio::test]
async fn get_returns_state_incident_id_sla_and_timeline() {
    let gw = Gw::start(Sim::Close).await;
    let mut c = gw.client().await;
    let mut updates = watch(&mut c, 0).await.unwrap();
    c.create_incident(authed(create_req("OPS-20"), KEY))
        .await
        .unwrap();
    let seen = take(&mut updates, 3).await;
    let kinds: Vec<_> = seen.iter().map(|u| u.kind()).collect();
    assert_eq!(
        kinds,
        [UpdateKind::Ack, UpdateKind::Accept, UpdateKind::Close]
    );

    let inc = c
        .get_incident(authed(
            GetIncidentRequest {
                integration: "internal".into(),
                incident_reference: "OPS-20".into(),
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inc.state(), IncidentState::Closed);
    assert_eq!(inc.incident_id, seen[0].incident_id);
    assert!(!inc.incident_id.is_empty());
    assert!(inc.sla_time.is_some());
    assert_eq!(inc.sla_time, seen[1].sla_time);
    assert_eq!(inc.customer_number, "C000001");
    let d = inc.dispatch.as_ref().unwrap();
    assert_eq!(d.device_id, "UG1234", "mapped (upper-cased)");
    assert_eq!(d.contact_name, "John Smith", "mapped (collapsed)");
    assert_eq!(
        d.fault_time.as_ref().unwrap().seconds,
        1_610_810_268,
        "normalized to UTC"
    );
    let kinds: Vec<&str> = inc.timeline.iter().map(|e| e.kind.as_str()).collect();
    for k in ["Dispatch", "ACK", "Accept", "Close"] {
        assert!(
            kinds.iter().any(|x| x.eq_ignore_ascii_case(k)),
            "timeline has {k}: {kinds:?}"
        );
    }
    assert!(inc.timeline.iter().all(|e| e.at.is_some()));

    let e = c
        .get_incident(authed(
            GetIncidentRequest {
                integration: "internal".into(),
                incident_reference: "nope".into(),
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    gw.stop().await;
}

#[tokio::test]
async fn watch_from_start_middle_and_end_then_live() {
    let gw = Gw::start(Sim::Close).await;
    let mut c = gw.client().await;
    for r in ["OPS-30", "OPS-31", "OPS-32"] {
        c.create_incident(authed(create_req(r), KEY)).await.unwrap();
    }
    gw.wait_updates("internal", 9).await;

    let mut all = watch(&mut c, 0).await.unwrap();
    let replay = take(&mut all, 9).await;
    assert_eq!(sequences(&replay), (1..=9).collect::<Vec<_>>());
    for u in &replay {
        assert_eq!(u.integration, "internal");
        assert_eq!(u.customer_number, "C000001");
        assert!(u.received_at.is_some());
        assert_ne!(u.kind(), UpdateKind::Unspecified);
        assert_ne!(u.state(), IncidentState::Unspecified);
    }
    // Per incident: ACK, ACCEPT, CLOSE in that order, with its state.
    for r in ["OPS-30", "OPS-31", "OPS-32"] {
        let mine: Vec<_> = replay
            .iter()
            .filter(|u| u.incident_reference == r)
            .collect();
        let ks: Vec<_> = mine.iter().map(|u| (u.kind(), u.state())).collect();
        assert_eq!(
            ks,
            [
                (UpdateKind::Ack, IncidentState::Acknowledged),
                (UpdateKind::Accept, IncidentState::Accepted),
                (UpdateKind::Close, IncidentState::Closed)
            ]
        );
        assert!(mine[1].sla_time.is_some() && mine[2].event_time.is_some());
    }

    let mut middle = watch(&mut c, 4).await.unwrap();
    let rest = take(&mut middle, 5).await;
    assert_eq!(sequences(&rest), (5..=9).collect::<Vec<_>>());
    assert_eq!(rest, replay[4..].to_vec(), "a replay is the same updates");

    let mut end = watch(&mut c, 9).await.unwrap();
    // Live: all three streams see the next incident's updates, and only those.
    c.create_incident(authed(create_req("OPS-33"), KEY))
        .await
        .unwrap();
    for s in [&mut all, &mut middle, &mut end] {
        let live = take(s, 3).await;
        assert_eq!(sequences(&live), [10, 11, 12]);
        assert!(live.iter().all(|u| u.incident_reference == "OPS-33"));
    }

    let e = watch(&mut c, 13).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("12"), "{}", e.message());
    // Another integration's log is separate: nothing there yet, so 0 is the end.
    let e = c
        .watch_updates(authed(
            WatchUpdatesRequest {
                integration: "other".into(),
                after_sequence: 1,
            },
            OTHER_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    gw.stop().await;
}

#[tokio::test]
async fn reconnecting_during_a_burst_misses_nothing_and_repeats_nothing() {
    let gw = Gw::start(Sim::Close).await;
    const INCIDENTS: usize = 150;
    const TOTAL: usize = INCIDENTS * 3;
    let mut c = gw.client().await;
    let mut first = watch(&mut c, 0).await.unwrap();

    // The burst: a producer streams incidents while the simulator answers each with
    // ACK, Accept and Close callbacks.
    let mut producer = c.clone();
    let burst = tokio::spawn(async move {
        let reqs = (0..INCIDENTS).map(|i| create_req(&format!("BURST-{i:04}")));
        let answers = producer
            .create_incidents(authed(tokio_stream::iter(reqs), KEY))
            .await
            .unwrap()
            .into_inner();
        answers.collect::<Vec<_>>().await
    });

    // Read part of it, hang up mid-burst, and resume from the last sequence seen.
    let mut got = take(&mut first, 40).await;
    drop(first);
    let mut resumed = watch(&mut c, got.last().unwrap().sequence).await.unwrap();
    got.extend(take(&mut resumed, 60).await);
    drop(resumed);
    let mut resumed = watch(&mut c, got.last().unwrap().sequence).await.unwrap();
    got.extend(take(&mut resumed, TOTAL - got.len()).await);

    assert_eq!(sequences(&got), (1..=TOTAL as u64).collect::<Vec<_>>());
    let answers = burst.await.unwrap();
    assert_eq!(answers.len(), INCIDENTS);
    assert!(answers.iter().all(|a| a.is_ok()));
    // Every incident's three updates arrived, in their order.
    let mut per: HashMap<&str, Vec<UpdateKind>> = HashMap::new();
    for u in &got {
        per.entry(&u.incident_reference).or_default().push(u.kind());
    }
    assert_eq!(per.len(), INCIDENTS);
    assert!(per
        .values()
        .all(|k| k == &[UpdateKind::Ack, UpdateKind::Accept, UpdateKind::Close]));
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_reader_holds_back_only_itself() {
    let gw = Gw::start(Sim::Close).await;
    const INCIDENTS: usize = 400;
    const TOTAL: usize = INCIDENTS * 3;
    // The stalled reader's connection has a small HTTP/2 window, so the gateway feels
    // its backpressure after a few updates rather than after megabytes of buffering.
    let slow_channel = Endpoint::from_shared(format!("http://{}", gw.running.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(8192))
        .connect()
        .await
        .unwrap();
    let mut slow_client = IncidentGatewayClient::new(slow_channel);
    let mut stalled = watch(&mut slow_client, 0).await.unwrap();
    let mut c = gw.client().await;
    let mut fast = watch(&mut c, 0).await.unwrap();

    let mut producer = c.clone();
    let burst = tokio::spawn(async move {
        let reqs = (0..INCIDENTS).map(|i| create_req(&format!("SLOW-{i:04}")));
        let answers = producer
            .create_incidents(authed(tokio_stream::iter(reqs), KEY))
            .await
            .unwrap()
            .into_inner();
        answers.collect::<Vec<_>>().await
    });
    // The fast reader gets everything while the stalled one reads nothing.
    let all = take(&mut fast, TOTAL).await;
    assert_eq!(sequences(&all), (1..=TOTAL as u64).collect::<Vec<_>>());
    assert_eq!(burst.await.unwrap().len(), INCIDENTS);
    // A stream opened now replays everything too.
    let mut late = watch(&mut c, 0).await.unwrap();
    assert_eq!(take(&mut late, TOTAL).await, all);

    // The stalled reader then gets every update, in order, without gap or duplicate.
    let got = take(&mut stalled, TOTAL).await;
    assert_eq!(got, all);
    drop((stalled, fast, late));
    gw.stop().await;
}

#[tokio::test]
async fn create_incidents_answers_each_request_in_order() {
    let gw = Gw::start(Sim::Open).await;
    let mut c = gw.client().await;
    let mut bad = create_req("BULK-bad");
    bad.fields.remove("device");
    let mut conflicting = create_req("BULK-0001");
    conflicting
        .fields
        .insert("subject".into(), "changed".into());
    let mut reqs: Vec<_> = (0..100)
        .map(|i| create_req(&format!("BULK-{i:04}")))
        .collect();
    reqs.insert(50, bad);
    reqs.push(create_req("BULK-0002"));
    reqs.push(conflicting);
    let n = reqs.len();
    let answers: Vec<_> = c
        .create_incidents(authed(tokio_stream::iter(reqs), KEY))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|a| a.unwrap())
        .collect();
    assert_eq!(answers.len(), n);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.index, i as u64);
    }
    use create_incidents_response::Result as R;
    let refs: Vec<_> = answers
        .iter()
        .filter_map(|a| match &a.result {
            Some(R::Created(c)) => Some(c.incident_reference.clone()),
            _ => None,
        })
        .collect();
    let mut expected: Vec<_> = (0..100).map(|i| format!("BULK-{i:04}")).collect();
    expected.push("BULK-0002".into());
    assert_eq!(refs, expected, "created answers in request order");
    match &answers[50].result {
        Some(R::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert_eq!(e.field_violations.len(), 1);
            assert_eq!(e.field_violations[0].field, "DeviceId");
        }
        other => panic!("expected an error: {other:?}"),
    }
    match &answers[n - 2].result {
        Some(R::Created(c)) => assert!(!c.created, "a repeat is answered, not created"),
        other => panic!("{other:?}"),
    }
    match &answers[n - 1].result {
        Some(R::Error(e)) => assert_eq!(e.code, Code::AlreadyExists as i32),
        other => panic!("{other:?}"),
    }
    // Unauthenticated streams are refused as a whole.
    let e = c
        .create_incidents(Request::new(tokio_stream::iter(vec![create_req("X")])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    gw.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_key() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let gw = Gw::start(Sim::Open).await;
    let channel = gw.channel().await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "safepoint.gateway.v1.IncidentGateway"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }

    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(channel.clone());
        let ask = |m: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let mut answers = r
            .server_reflection_info(tokio_stream::iter(vec![
                ask(MessageRequest::ListServices(String::new())),
                ask(MessageRequest::FileContainingSymbol(
                    "safepoint.gateway.v1.IncidentGateway".into(),
                )),
                ask(MessageRequest::FileByFilename(
                    "google/protobuf/timestamp.proto".into(),
                )),
            ]))
            .await
            .unwrap()
            .into_inner();
        match answers.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
                for s in [
                    "safepoint.gateway.v1.IncidentGateway",
                    "grpc.health.v1.Health",
                ] {
                    assert!(names.contains(&s), "{names:?}");
                }
            }
            other => panic!("{other:?}"),
        }
        for _ in 0..2 {
            match answers.next().await.unwrap().unwrap().message_response {
                Some(MessageResponse::FileDescriptorResponse(f)) => {
                    assert!(!f.file_descriptor_proto.is_empty())
                }
                other => panic!("{other:?}"),
            }
        }
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(channel.clone());
        let mut answers = r
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .unwrap()
            .into_inner();
        match answers.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                assert!(l
                    .service
                    .iter()
                    .any(|s| s.name == "safepoint.gateway.v1.IncidentGateway"));
            }
            other => panic!("{other:?}"),
        }
    }

    // Shutdown: health watchers hear NOT_SERVING, watch streams end with UNAVAILABLE.
    let mut status = health
        .watch(HealthCheckRequest {
            service: "safepoint.gateway.v1.IncidentGateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let mut c = gw.client().await;
    let mut updates = watch(&mut c, 0).await.unwrap();
    gw.running.shutdown_token().cancel();
    let next = tokio::time::timeout(WAIT, status.next()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    drop(status);
    let end = tokio::time::timeout(WAIT, updates.next()).await.unwrap();
    match end {
        Some(Err(s)) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    gw.stop().await;
}
