//! A damaged record, end to end: written by the gateway, damaged on disk through the
//! engine while the gateway is stopped, then found by `store verify` (exit 1, the record
//! named) and, after a restart, refused with 500 "will not help to send again" rather
//! than 503 "send it again", with readiness failing and the damage counted.

mod common;

use common::*;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::GetIncidentRequest;
use safepoint_gateway::store::engine::{Engine, FjallEngine, Writes};
use std::path::Path;
use std::time::{Duration, Instant};

/// Opens the stopped gateway's store once the last handle let go of its lock.
fn open_engine(path: &Path) -> FjallEngine {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match FjallEngine::open(path, 1 << 20) {
            Ok(e) => return e,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the store: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn verify(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
        .args(["store", "verify", "--path"])
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_named_by_verify_and_refused_as_permanent() {
    let mut h = Harness::start(Options::default()).await;
    for r in ["INCDMG1", "INCDMG2"] {
        let (status, body) = h.create(&sn_xml(r, "UG1234", "AC12")).await;
        assert_eq!(status, 202, "{body}");
        h.wait_state(r, safepoint_gateway::incident::State::Closed)
            .await;
    }
    h.running.take().unwrap().stop().await.unwrap();
    let data = h.dir.path().join("data");

    let clean = verify(&data);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    assert!(
        String::from_utf8_lossy(&clean.stdout).contains(" 0 damaged"),
        "{clean:?}"
    );

    // Cut INCDMG1's record short, through the engine.
    {
        let engine = open_engine(&data);
        let key = b"iservicenow\0INCDMG1".to_vec();
        let mut v = engine.get(&key).unwrap().expect("stored").to_vec();
        v.truncate(v.len() / 2);
        let mut w = Writes::new();
        w.insert(key, Some(v));
        engine.commit(w).unwrap();
    }
    let damaged = verify(&data);
    let out = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    assert!(
        out.contains("damaged: incident servicenow/INCDMG1:"),
        "{out}"
    );
    assert!(!out.contains("INCDMG2"), "{out}");
    assert!(out.contains(" 1 damaged"), "{out}");

    // The gateway refuses what needs the record, as permanent, and says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    h.running = Some(loop {
        let text = config_text(h.dir.path(), &h.options);
        let config = safepoint_gateway::config::Config::parse(&text, "test", false, &env).unwrap();
        match safepoint_gateway::app::start(config).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    });
    assert_eq!(h.get("/readyz", None).await.status, 200);
    let status = h
        .get(
            "/v1/integrations/servicenow/incidents/INCDMG1",
            Some(SN_KEY),
        )
        .await;
    assert_eq!(status.status, 500, "{}", status.body);
    assert!(status.body.contains("StoreDamaged"), "{}", status.body);
    assert!(status.body.contains("will not help"), "{}", status.body);
    let again = h.create(&sn_xml("INCDMG1", "UG1234", "AC12")).await;
    assert_eq!(again.0, 500, "{}", again.1);
    // gRPC says INTERNAL, not UNAVAILABLE: retrying will not help.
    let mut grpc = IncidentGatewayClient::connect(format!("http://{}", h.running().grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(GetIncidentRequest {
        integration: "servicenow".into(),
        incident_reference: "INCDMG1".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {SN_KEY}").parse().unwrap());
    let refused = grpc.get_incident(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
    assert!(refused.message().contains("will not help"), "{refused:?}");
    // The other incident is served.
    let other = h
        .get(
            "/v1/integrations/servicenow/incidents/INCDMG2",
            Some(SN_KEY),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);

    let ready = h.get("/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("\"store\":\"damaged\""),
        "{}",
        ready.body
    );
    assert!(ready.body.contains("store verify"), "{}", ready.body);
    let metrics = h.get("/metrics", None).await.body;
    assert!(
        metrics.contains("gateway_store_corrupt_records_total 1"),
        "one record, however often met:\n{metrics}"
    );
    h.stop().await;
}
