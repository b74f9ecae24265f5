//! Traces across the whole path, against the real binary: a caller's W3C `traceparent`
//! is continued on intake (XML over HTTP, gRPC metadata), the Dispatch reaches Loomis
//! (a double here) with a `traceparent` of the same trace, so do the update posts to the
//! tool, and a callback that arrives after a restart of the gateway still continues the
//! incident's trace. The spans themselves are read by a small OTLP/HTTP receiver in
//! this test, decoded with the OpenTelemetry protocol's own types. Without
//! `[telemetry]`, nothing of this happens: no `traceparent` goes out.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::CreateIncidentRequest;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// The caller's trace and span (the W3C specification's example ids).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// Another caller's trace, for the gRPC intake.
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
/// Loomis's own trace, sent with its callback.
const LOOMIS_TRACE: &str = "11111111111111111111111111111111";

/// One request a double received: its `traceparent` header and body.
#[derive(Debug, Clone)]
struct Seen {
    traceparent: Option<String>,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn record(log: &Log, headers: &HeaderMap, body: &Bytes) {
    log.lock().unwrap().push(Seen {
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: String::from_utf8_lossy(body).into_owned(),
    });
}

/// Starts `router` on a loopback port; its base URL.
async fn serve(router: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    base
}

/// The Loomis double and the tool endpoint every test here starts, with what each saw.
struct Doubles {
    dispatches: Log,
    posts: Log,
    loomis: String,
    tool: String,
}

impl Doubles {
    async fn start() -> Doubles {
        let (dispatches, posts): (Log, Log) = Default::default();
        let loomis = loomis(dispatches.clone()).await;
        let tool = tool(posts.clone()).await;
        Doubles {
            dispatches,
            posts,
            loomis,
            tool,
        }
    }
}

/// Loomis: records each Dispatch and ACKs it in the response body.
async fn loomis(log: Log) -> String {
    async fn dispatch(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> String {
        record(&log, &headers, &body);
        let d: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json!({"MessageType": "ACK", "CustomerNumber": d["CustomerNumber"],
            "IncidentReference": d["IncidentReference"],
            "IncidentId": format!("LM-{}", d["IncidentReference"].as_str().unwrap()),
            "Status": "Open"})
        .to_string()
    }
    serve(
        Router::new()
            .route("/incidents", post(dispatch))
            .with_state(log),
    )
    .await
}

/// The legacy tool: records each update posted to it.
async fn tool(log: Log) -> String {
    async fn update(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> StatusCode {
        record(&log, &headers, &body);
        StatusCode::OK
    }
    serve(
        Router::new()
            .route("/updates", post(update))
            .with_state(log),
    )
    .await
}

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    service: String,
    /// Trace ids of its links.
    links: Vec<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP receiver (protobuf): every span exported to it.
async fn collector(spans: Arc<Mutex<Vec<Exported>>>) -> String {
    async fn traces(
        State(spans): State<Arc<Mutex<Vec<Exported>>>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/x-protobuf"
        );
        let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.lock().unwrap().push(Exported {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        service: service.clone(),
                        links: s.links.iter().map(|l| hex(&l.trace_id)).collect(),
                    });
                }
            }
        }
        (
            StatusCode::OK,
            [("content-type", "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
    serve(
        Router::new()
            .route("/v1/traces", post(traces))
            .with_state(spans),
    )
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process and its addresses.
struct Gateway {
    child: Child,
    http: String,
    grpc: String,
    log: std::path::PathBuf,
}

impl Gateway {
    /// Starts `safepoint-gateway serve` on `dir`'s store with `telemetry` (a
    /// `[telemetry]` section, or nothing) and waits until it is ready.
    async fn spawn(dir: &std::path::Path, loomis: &str, tool: &str, telemetry: &str) -> Gateway {
        let (hp, gp) = (free_port(), free_port());
        let manifest = env!("CARGO_MANIFEST_DIR");
        let config = format!(
            r#"
[server]
http_listen = "127.0.0.1:{hp}"
grpc_listen = "127.0.0.1:{gp}"
[store]
path = "{store}"
[loomis]
url = "{loomis}/incidents"
timeout_ms = 2000
retry = {{ initial_ms = 20, max_ms = 200 }}
[callbacks]
auth = {{ type = "bearer", token_env = "CB_TOKEN" }}
[log]
level = "info"
{telemetry}
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "{manifest}/mappings/servicenow.toml"
api_key_env = "SN_KEY"
[integrations.delivery]
url = "{tool}/updates"
retry = {{ initial_ms = 20, max_ms = 100 }}

[[integrations]]
name = "internal"
customer_number = "B777"
mapping = "{manifest}/mappings/internal-grpc.toml"
api_key_env = "INTERNAL_KEY"
"#,
            store = dir.join("data").display()
        );
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("gateway-{hp}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("SN_KEY", SN_KEY)
            .env("INTERNAL_KEY", INTERNAL_KEY)
            .env("CB_TOKEN", CB_TOKEN)
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gateway");
        let gw = Gateway {
            child,
            http: format!("http://127.0.0.1:{hp}"),
            grpc: format!("http://127.0.0.1:{gp}"),
            log,
        };
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", gw.http);
        eventually("the gateway to be ready", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        gw
    }

    /// SIGTERM, and waits for the exit (the last spans are exported on the way out);
    /// what the gateway logged.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the gateway exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}\n{}", self.log_text());
        self.log_text()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits for the request in `log` whose body contains every one of `parts`.
async fn seen(log: &Log, what: &str, parts: &[&str]) -> Seen {
    eventually(what, || {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .find(|s| parts.iter().all(|p| s.body.contains(p)))
            .cloned();
        async move { found }
    })
    .await
}

/// The trace id and span id of a `traceparent` header value.
fn ids(traceparent: &Option<String>) -> (String, String) {
    let tp = traceparent.as_deref().expect("a traceparent header");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    assert_eq!(parts[3], "01", "sampled: {tp}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_intake_through_loomis_to_the_tool_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Doubles {
        dispatches,
        posts,
        loomis,
        tool,
    } = Doubles::start().await;
    let spans: Arc<Mutex<Vec<Exported>>> = Default::default();
    let collector = collector(spans.clone()).await;
    // The base URL: the gateway appends /v1/traces.
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"gateway-under-test\"\n"
    );
    let gw = Gateway::spawn(dir.path(), &loomis, &tool, &telemetry).await;
    let client = reqwest::Client::new();

    // Intake over HTTP, in the caller's trace.
    let r = client
        .post(format!("{}/v1/integrations/servicenow/incidents", gw.http))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(sn_xml("INC7001", "UG1234", "AC12"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", gw.log_text());

    // Loomis gets the Dispatch in the same trace, from a span of the gateway's.
    let dispatch = seen(&dispatches, "the Dispatch", &["\"INC7001\""]).await;
    let (trace, dispatch_span) = ids(&dispatch.traceparent);
    assert_eq!(trace, TRACE);
    assert_ne!(dispatch_span, CALLER_SPAN);
    // The tool gets the ACK, in the same trace.
    let ack = seen(&posts, "the ACK post", &["INC7001", "Loomis ACK"]).await;
    let (trace, ack_span) = ids(&ack.traceparent);
    assert_eq!(trace, TRACE);

    // Intake over gRPC, the traceparent in the metadata.
    let mut grpc = IncidentGatewayClient::connect(gw.grpc.clone())
        .await
        .unwrap();
    let create = |reference: &str| CreateIncidentRequest {
        integration: "internal".into(),
        fields: [
            ("reference", reference),
            ("device", "UG1234"),
            ("contact.name", "Ann Lee"),
            ("contact.phone", "+1 555 0100"),
            ("subject", "Door jammed"),
            ("description", "Door does not open"),
            ("fault_time", "2026-01-16T09:17:48-06:00"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    let traced = |md: &mut tonic::metadata::MetadataMap| {
        let key = format!("Bearer {INTERNAL_KEY}");
        md.insert("authorization", key.parse().unwrap());
        let tp = format!("00-{GRPC_TRACE}-{CALLER_SPAN}-01");
        md.insert("traceparent", tp.parse().unwrap());
    };
    let mut req = tonic::Request::new(create("SVC-7"));
    traced(req.metadata_mut());
    grpc.create_incident(req).await.expect("gRPC intake");
    let grpc_dispatch = seen(&dispatches, "the gRPC incident's Dispatch", &["\"SVC-7\""]).await;
    assert_eq!(ids(&grpc_dispatch.traceparent).0, GRPC_TRACE);
    // The stream's requests too: the traceparent of the call covers each of them.
    let mut req = tonic::Request::new(tokio_stream::iter(vec![create("SVC-8")]));
    traced(req.metadata_mut());
    let mut answers = grpc.create_incidents(req).await.unwrap().into_inner();
    answers.message().await.unwrap().expect("an answer");
    let streamed = seen(
        &dispatches,
        "the streamed incident's Dispatch",
        &["\"SVC-8\""],
    )
    .await;
    assert_eq!(ids(&streamed.traceparent).0, GRPC_TRACE);

    // A restart between intake and the callback: the trace is stored with the incident.
    let log = gw.stop().await;
    // Spans opened for traces only stay out of the log lines.
    assert!(log.contains("incident queued for Loomis"), "{log}");
    assert!(
        !log.contains("otel.name") && !log.contains("request{"),
        "{log}"
    );
    let gw = Gateway::spawn(dir.path(), &loomis, &tool, &telemetry).await;
    let r = client
        .post(format!("{}/v1/loomis/messages", gw.http))
        .bearer_auth(CB_TOKEN)
        .header("traceparent", format!("00-{LOOMIS_TRACE}-{CALLER_SPAN}-01"))
        .json(
            &json!({"MessageType": "Accept", "CustomerNumber": "A123456",
            "IncidentId": "LM-INC7001", "IncidentReference": "INC7001",
            "SLADateTime": "2026-02-01T00:00:00Z", "DateTime": "2026-01-31T20:00:00Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log_text());
    let accept = seen(&posts, "the ACCEPT post", &["INC7001", "Loomis ACCEPT"]).await;
    let (trace, accept_span) = ids(&accept.traceparent);
    assert_eq!(trace, TRACE, "the trace goes on after the restart");
    gw.stop().await;

    // The collector has the spans of both processes, all in the caller's trace.
    let spans = spans.lock().unwrap().clone();
    let of_trace: Vec<&Exported> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
    let names: Vec<&str> = of_trace.iter().map(|s| s.name.as_str()).collect();
    let named = |name: &str| of_trace.iter().filter(|s| s.name == name).count();
    assert!(
        of_trace.iter().all(|s| s.service == "gateway-under-test"),
        "{of_trace:#?}"
    );
    // The intake request continues the caller's span.
    let intake = of_trace
        .iter()
        .find(|s| s.name == "POST /v1/integrations/{name}/incidents")
        .unwrap_or_else(|| panic!("no intake span: {names:?}"));
    assert_eq!(intake.parent_span_id, CALLER_SPAN);
    assert!(
        named("mapping") >= 1 && named("store.write") >= 1,
        "{names:?}"
    );
    // Loomis and the tool were sent the ids of exported spans: a trace back end shows
    // where each request came from.
    let span = |id: &str| of_trace.iter().find(|s| s.span_id == id).copied();
    let deliver = span(&dispatch_span).unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(deliver.name, "deliver");
    assert_eq!(
        deliver.parent_span_id, intake.span_id,
        "the Dispatch follows the intake"
    );
    for post in [&ack_span, &accept_span] {
        let s = span(post).unwrap_or_else(|| panic!("{post}: {names:?}"));
        assert_eq!(s.name, "post_update");
        assert_eq!(s.parent_span_id, intake.span_id);
    }
    // The callback after the restart: a span of the incident's trace, linked to the
    // trace Loomis sent.
    let callback = of_trace
        .iter()
        .find(|s| s.name == "loomis.callback")
        .unwrap_or_else(|| panic!("no callback span: {names:?}"));
    assert_eq!(callback.parent_span_id, intake.span_id);
    assert_eq!(callback.links, vec![LOOMIS_TRACE.to_string()]);
    // The callback request itself stays in Loomis's trace.
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == LOOMIS_TRACE && s.name == "POST /v1/loomis/messages"),
        "{spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.trace_id == GRPC_TRACE
            && s.name == "/safepoint.gateway.v1.IncidentGateway/CreateIncident"
            && s.parent_span_id == CALLER_SPAN),
        "{spans:#?}"
    );
    // Probes are not traced.
    assert!(
        !spans.iter().any(|s| s.name.contains("readyz")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_no_traceparent_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let Doubles {
        dispatches,
        posts,
        loomis,
        tool,
    } = Doubles::start().await;
    let gw = Gateway::spawn(dir.path(), &loomis, &tool, "").await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/integrations/servicenow/incidents", gw.http))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(sn_xml("INC7002", "UG1234", "AC12"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let dispatch = seen(&dispatches, "the Dispatch", &["\"INC7002\""]).await;
    assert_eq!(dispatch.traceparent, None);
    let ack = seen(&posts, "the ACK post", &["INC7002", "Loomis ACK"]).await;
    assert_eq!(ack.traceparent, None);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_spans_costs_no_incident_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Doubles {
        dispatches,
        posts,
        loomis,
        tool,
    } = Doubles::start().await;
    let refused = Arc::new(Mutex::new(0u32));
    let collector = {
        let refused = refused.clone();
        serve(Router::new().route(
            "/v1/traces",
            post(move || {
                *refused.lock().unwrap() += 1;
                async { StatusCode::SERVICE_UNAVAILABLE }
            }),
        ))
        .await
    };
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{collector}/v1/traces\"\n");
    let gw = Gateway::spawn(dir.path(), &loomis, &tool, &telemetry).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/integrations/servicenow/incidents", gw.http))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .body(sn_xml("INC7003", "UG1234", "AC12"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // No traceparent came in: the trace starts at the gateway, and still goes out.
    let dispatch = seen(&dispatches, "the Dispatch", &["\"INC7003\""]).await;
    let (trace, _) = ids(&dispatch.traceparent);
    let ack = seen(&posts, "the ACK post", &["INC7003", "Loomis ACK"]).await;
    assert_eq!(ids(&ack.traceparent).0, trace);
    // The refused batch is counted and logged.
    eventually("the export failure counted", || {
        let (client, base) = (client.clone(), gw.http.clone());
        async move {
            let metrics = scrape(&client, &base).await;
            metrics
                .lines()
                .any(|l| {
                    l.starts_with("gateway_trace_export_failures_total ") && !l.ends_with(" 0")
                })
                .then_some(())
        }
    })
    .await;
    assert!(*refused.lock().unwrap() >= 1);
    let log = gw.stop().await;
    assert!(
        log.contains("cannot export traces to the collector")
            && log.contains("the collector answered HTTP 503"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_sampling_decision_is_kept_and_the_ratio_decides_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let Doubles {
        dispatches,
        posts,
        loomis,
        tool,
    } = Doubles::start().await;
    let spans: Arc<Mutex<Vec<Exported>>> = Default::default();
    let collector = collector(spans.clone()).await;
    // Record no trace that starts here.
    let telemetry = format!("[telemetry]\notlp_endpoint = \"{collector}\"\nsample_ratio = 0.0\n");
    let gw = Gateway::spawn(dir.path(), &loomis, &tool, &telemetry).await;
    let client = reqwest::Client::new();
    for (reference, traceparent) in [
        ("INC7004", None),
        ("INC7005", Some(format!("00-{TRACE}-{CALLER_SPAN}-01"))),
    ] {
        let mut req = client
            .post(format!("{}/v1/integrations/servicenow/incidents", gw.http))
            .bearer_auth(SN_KEY)
            .header("content-type", "application/xml")
            .body(sn_xml(reference, "UG1234", "AC12"));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        assert_eq!(req.send().await.unwrap().status(), 202);
    }
    // A trace begun here and not recorded still travels, marked unsampled.
    let unsampled = seen(&dispatches, "the first Dispatch", &["\"INC7004\""]).await;
    let tp = unsampled.traceparent.expect("a traceparent");
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    assert!(!tp.contains(TRACE));
    // The caller's sampled trace is recorded whatever the ratio.
    let sampled = seen(&dispatches, "the second Dispatch", &["\"INC7005\""]).await;
    assert_eq!(ids(&sampled.traceparent).0, TRACE);
    seen(&posts, "the ACK posts", &["INC7004", "Loomis ACK"]).await;
    seen(&posts, "the ACK posts", &["INC7005", "Loomis ACK"]).await;
    gw.stop().await;
    let spans = spans.lock().unwrap().clone();
    let unsampled_trace = &tp[3..35];
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == TRACE && s.name == "deliver"),
        "{spans:#?}"
    );
    assert!(
        !spans.iter().any(|s| s.trace_id == unsampled_trace),
        "{spans:#?}"
    );
}
