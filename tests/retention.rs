//! Retention over a running gateway: old terminal incidents and old updates go, open
//! incidents and everything newer stay, a freed reference can be used again, and a watch
//! stream resuming from a removed position is told so (OUT_OF_RANGE), never given a gap.

mod common;

use common::*;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::WatchUpdatesRequest;
use safepoint_gateway::incident::State;
use safepoint_gateway::retention;
use serde_json::json;

/// ACK in the body, Accept, then nothing: incidents rest in Accepted until a test callback.
fn resting() -> Options {
    Options {
        simulator: "ack = \"body\"\naccept_after_ms = 10\nclose_after_ms = 10\noutcome = \"none\""
            .into(),
        ..Options::default()
    }
}

#[tokio::test]
async fn old_terminal_incidents_and_updates_go_open_ones_stay() {
    let h = Harness::start(resting()).await;
    for r in ["RET1", "RET2"] {
        assert_eq!(h.create(&sn_xml(r, "UG1234", "AC12")).await.0, 202);
        h.wait_state(r, State::Accepted).await;
    }
    let id = h.incident("RET1").unwrap().incident_id.unwrap();
    let (s, _) = h
        .callback(
            json!({"MessageType":"Close","CustomerNumber":"A123456","IncidentId":id,
            "IncidentReference":"RET1","ResponseText":"done","DateTime":"2026-01-01T10:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200);
    h.wait_state("RET1", State::Closed).await;
    let store = h.running().gateway.store().clone();
    let before = h.updates("servicenow");
    let last = before.last().unwrap().sequence.get();
    assert_eq!(last, 5, "ACK+ACCEPT for each, CLOSE for one: {before:?}");

    // Nothing is old yet.
    let cutoff = jiff::Timestamp::now() - std::time::Duration::from_secs(3600);
    assert_eq!(retention::prune(&store, cutoff).await.unwrap().total(), 0);
    assert_eq!(h.updates("servicenow").len(), 5);

    // A callback for an incident the gateway does not know becomes an orphan.
    let (s, _) = h
        .callback(
            json!({"MessageType":"Close","CustomerNumber":"A123456","IncidentId":"INC9",
            "IncidentReference":"NOPE","ResponseText":"done","DateTime":"2026-01-01T10:00:00Z"}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(store.orphans(10).unwrap().len(), 1);

    // Everything is old: the closed incident and all updates but the last go.
    let cutoff = jiff::Timestamp::now() + std::time::Duration::from_secs(1);
    let removed = retention::prune(&store, cutoff).await.unwrap();
    assert_eq!((removed.incidents, removed.updates), (1, 4), "{removed:?}");
    assert_eq!(removed.orphans, 1, "{removed:?}");
    assert!(store.orphans(10).unwrap().is_empty());
    assert!(h.incident("RET1").is_none());
    assert_eq!(
        h.incident("RET2").unwrap().state,
        State::Accepted,
        "open incidents stay"
    );
    let kept = h.updates("servicenow");
    assert_eq!(
        kept.iter().map(|u| u.sequence.get()).collect::<Vec<_>>(),
        [5]
    );
    assert_eq!(store.pruned_through("servicenow"), 4);

    // A second pass finds nothing more; the freed reference is accepted again.
    assert_eq!(retention::prune(&store, cutoff).await.unwrap().total(), 0);
    // (The simulator, like Loomis within its day, answers the reused reference with a
    // Duplicate NAK; after 90 days Loomis has long forgotten it.)
    assert_eq!(h.create(&sn_xml("RET1", "UG1234", "AC12")).await.0, 202);
    h.wait_state("RET1", State::Rejected).await;

    // Watch streams: from a removed position, OUT_OF_RANGE naming retention; from the
    // last removed one, the kept and new updates in order.
    let mut client = IncidentGatewayClient::connect(format!("http://{}", h.running().grpc_addr))
        .await
        .unwrap();
    let watch = |after: u64| {
        let mut r = tonic::Request::new(WatchUpdatesRequest {
            integration: "servicenow".into(),
            after_sequence: after,
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {SN_KEY}").parse().unwrap());
        r
    };
    let err = client.watch_updates(watch(2)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("retention"), "{}", err.message());
    let mut s = client.watch_updates(watch(4)).await.unwrap().into_inner();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        seqs.push(s.message().await.unwrap().unwrap().sequence);
    }
    assert_eq!(seqs, [5, 6]);
    h.stop().await;
}
