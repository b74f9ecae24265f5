//! Two gateways on one PostgreSQL database (a database of the test's own), each with its
//! built-in simulator as Loomis: intake on either, streams and status on the other,
//! idempotency across instances, every Dispatch sent by exactly one instance, and one
//! gap-free update sequence whoever committed the updates.

mod common;

use common::pg::TestDb;
use common::{sn_xml, Harness, Options, INTERNAL_KEY, SN_KEY};
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::{CreateIncidentRequest, WatchUpdatesRequest};
use safepoint_gateway::incident::{Direction, EntryOutcome, State};
use std::collections::HashMap;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Request;

const WAIT: Duration = Duration::from_secs(60);

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

async fn grpc(h: &Harness) -> IncidentGatewayClient<tonic::transport::Channel> {
    IncidentGatewayClient::connect(format!("http://{}", h.running().grpc_addr))
        .await
        .unwrap()
}

/// Posts a servicenow incident to `h`: (status, body).
async fn post(h: &Harness, xml: &str) -> (u16, String) {
    let r = h
        .client
        .post(format!("{}/v1/integrations/servicenow/incidents", h.base()))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .body(xml.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_serve_as_one() {
    let Some(db) = TestDb::create("active_active") else {
        return;
    };
    let options = Options {
        database_url: Some(db.url.clone()),
        ..Options::default()
    };
    let a = Harness::start(options.clone()).await;
    let b = Harness::start(options).await;
    let both = [&a, &b];
    // The lanes are shared out: A claimed all of them alone, lets half go when it sees
    // B, and B claims them once their lease (3 s here) runs out.
    common::eventually("both instances hold lanes", || async {
        let holders = db.count(
            "SELECT count(DISTINCT holder) FROM spg_leases WHERE holder IS NOT NULL \
             AND expires_at > now()",
        );
        (holders == 2).then_some(())
    })
    .await;

    // A stream on B from the start, before anything exists.
    let mut stream = grpc(&b)
        .await
        .watch_updates(authed(
            WatchUpdatesRequest {
                integration: "internal".into(),
                after_sequence: 0,
            },
            INTERNAL_KEY,
        ))
        .await
        .unwrap()
        .into_inner();

    const N: usize = 30;
    for i in 0..N {
        let (status, body) = post(both[i % 2], &sn_xml(&format!("AA-{i}"), "UG1234", "AC12")).await;
        assert_eq!(status, 202, "{body}");
        let reply = grpc(both[(i + 1) % 2])
            .await
            .create_incident(authed(
                CreateIncidentRequest {
                    integration: "internal".into(),
                    fields: fields(&format!("OPS-{i}")),
                },
                INTERNAL_KEY,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.created);
    }
    // Idempotency holds across instances: the same incident again at the other
    // instance is the same receipt (200); changed content is a conflict (409).
    let (status, body) = post(&b, &sn_xml("AA-0", "UG1234", "AC12")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(&b, &sn_xml("AA-0", "UG9999", "AC12")).await;
    assert_eq!(status, 409);

    // Every incident reaches Closed, as either instance sees it.
    for i in 0..N {
        let reference = format!("AA-{i}");
        b.wait_state(&reference, State::Closed).await;
        a.wait_for_in("internal", &format!("OPS-{i}"), "Closed", |inc| {
            inc.state == State::Closed
        })
        .await;
    }
    // Each Dispatch went out once, from one instance (two would have reached two
    // simulators, whose different IncidentIds conflict), and nothing conflicted.
    for i in 0..N {
        for (integration, reference) in [
            ("servicenow", format!("AA-{i}")),
            ("internal", format!("OPS-{i}")),
        ] {
            let inc = a.incident_in(integration, &reference).unwrap();
            let sent = inc
                .timeline
                .iter()
                .filter(|e| {
                    // (A note says a lane changed hands with the Dispatch queued.)
                    e.direction == Direction::ToLoomis
                        && e.kind == "Dispatch"
                        && e.outcome != EntryOutcome::Note
                })
                .count();
            assert_eq!(sent, 1, "{reference}: {:#?}", inc.timeline);
            assert!(
                inc.timeline
                    .iter()
                    .all(|e| e.outcome != EntryOutcome::Conflict),
                "{reference}: {:#?}",
                inc.timeline
            );
        }
    }
    // Both instances read the same gap-free update log.
    for integration in ["servicenow", "internal"] {
        let seqs = |h: &Harness| -> Vec<u64> {
            h.running()
                .gateway
                .store()
                .updates_after(integration, 0, 10_000)
                .unwrap()
                .iter()
                .map(|u| u.sequence.get())
                .collect()
        };
        for h in both {
            // Each instance follows what the other commits (a moment later).
            let mut w = h.running().gateway.store().watch_sequence(integration);
            tokio::time::timeout(WAIT, w.wait_for(|s| *s >= 3 * N as u64))
                .await
                .expect("watermark stalled")
                .unwrap();
        }
        let on_a = seqs(&a);
        // ACK, Accept and Close for each incident.
        assert_eq!(
            on_a,
            (1..=3 * N as u64).collect::<Vec<_>>(),
            "{integration}"
        );
        assert_eq!(seqs(&b), on_a, "{integration}");
    }
    // The stream on B saw every update of internal, committed by either instance, in
    // order, once.
    let mut seen = Vec::new();
    while seen.len() < 3 * N {
        let u = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("stream stalled")
            .expect("stream ended")
            .expect("stream failed");
        seen.push(u.sequence);
    }
    assert_eq!(seen, (1..=3 * N as u64).collect::<Vec<_>>());
    println!(
        "two instances: {N} XML + {N} gRPC incidents closed, {} updates per integration streamed gap-free",
        3 * N
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instances_deliveries_are_taken_over() {
    let Some(db) = TestDb::create("takeover") else {
        return;
    };
    let options = Options {
        database_url: Some(db.url.clone()),
        ..Options::default()
    };
    let a = Harness::start(options.clone()).await;
    let b = Harness::start(options).await;
    // Both take a share of the lanes. When A stops it gives its share up, and B, alone
    // now, claims it: every incident is delivered, whichever lane it falls in (B holding
    // only its own half would leave about half of them queued for ever).
    a.stop().await;
    for i in 0..20 {
        let (status, body) = post(&b, &sn_xml(&format!("TO-{i}"), "UG1234", "AC12")).await;
        assert_eq!(status, 202, "{body}");
    }
    for i in 0..20 {
        b.wait_state(&format!("TO-{i}"), State::Closed).await;
    }
    b.stop().await;
}
