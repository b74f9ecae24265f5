//! The database goes away under a running gateway (store.engine = "postgres"): a TCP
//! proxy written here sits between the gateway and PostgreSQL and is cut, then mended.
//! While cut, intake answers 503 / UNAVAILABLE with Retry-After, /readyz is not ready,
//! /healthz passes (a restart would not bring the database back), and nothing is
//! acknowledged; once mended, the same process takes writes again by itself and every
//! acknowledged incident reaches its end.

mod common;

use common::pg::TestDb;
use common::{sn_xml, Harness, Options, INTERNAL_KEY, SN_KEY};
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::CreateIncidentRequest;
use safepoint_gateway::incident::State;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy to PostgreSQL that can be cut (every connection closed, new ones
/// closed at once) and mended.
#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<(bool, CancellationToken)>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new((false, CancellationToken::new()))),
        };
        let state = proxy.state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let (cut, token) = {
                    let s = state.lock().unwrap();
                    (s.0, s.1.clone())
                };
                if cut {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        s.1.cancel();
        s.1 = CancellationToken::new();
    }

    fn mend(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

fn fields(reference: &str) -> HashMap<String, String> {
    [
        ("reference", reference),
        ("device", "ug1234"),
        ("contact.name", "John Smith"),
        ("contact.phone", "123-123-1234"),
        ("subject", "Safe door does not open"),
        ("description", "The door is stuck."),
        ("fault_code", "ac12"),
        ("fault_time", "2021-01-16T16:17:48+01:00"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn post(h: &Harness, reference: &str) -> reqwest::Response {
    h.client
        .post(format!("{}/v1/integrations/servicenow/incidents", h.base()))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .body(sn_xml(reference, "UG1234", "AC12"))
        .send()
        .await
        .unwrap()
}

async fn status_of(h: &Harness, path: &str) -> u16 {
    h.client
        .get(format!("{}{path}", h.base()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_intake_and_heals_without_a_restart() {
    let Some(db) = TestDb::create("outage") else {
        return;
    };
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    let h = Harness::start(Options {
        database_url: Some(url.to_string()),
        ..Options::default()
    })
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let r = post(&h, &format!("OUT-{i}")).await;
        let status = r.status().as_u16();
        assert_eq!(status, 202, "{}", r.text().await.unwrap());
        acknowledged.push(format!("OUT-{i}"));
    }
    assert_eq!(status_of(&h, "/readyz").await, 200);

    proxy.cut();
    // Intake is refused, and says when to come back; nothing is acknowledged.
    let mut refused = Vec::new();
    for i in 0..5 {
        let reference = format!("CUT-{i}");
        let r = post(&h, &reference).await;
        let status = r.status().as_u16();
        if status == 202 {
            acknowledged.push(reference);
            continue;
        }
        assert_eq!(status, 503);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("5")
        );
        let body = r.text().await.unwrap();
        assert!(body.contains("StoreUnavailable"), "{body}");
        refused.push(reference);
    }
    assert!(
        !refused.is_empty(),
        "with the database cut off, intake must refuse"
    );
    let mut grpc = IncidentGatewayClient::connect(format!("http://{}", h.running().grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(CreateIncidentRequest {
        integration: "internal".into(),
        fields: fields("CUT-GRPC"),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {INTERNAL_KEY}").parse().unwrap(),
    );
    let err = grpc.create_incident(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        err.metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    common::eventually("readiness to fail", || async {
        (status_of(&h, "/readyz").await == 503).then_some(())
    })
    .await;
    // Liveness passes: a restart would not bring the database back.
    assert_eq!(status_of(&h, "/healthz").await, 200);

    proxy.mend();
    // The same process comes back by itself (its store probes the database).
    common::eventually("readiness to come back", || async {
        (status_of(&h, "/readyz").await == 200).then_some(())
    })
    .await;
    // What was refused was not stored: sending it again is a new incident (202).
    for reference in &refused {
        let r = post(&h, reference).await;
        assert_eq!(r.status().as_u16(), 202, "{reference}");
        acknowledged.push(reference.clone());
    }
    for reference in &acknowledged {
        h.wait_state(reference, State::Closed).await;
    }
    println!(
        "outage: {} refused with 503 while cut, {} acknowledged incidents all closed",
        refused.len(),
        acknowledged.len()
    );
    h.stop().await;
}
