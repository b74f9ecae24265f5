//! A cluster of the real binary: three gateways on one PostgreSQL database (a database of
//! the test's own), the built-in simulator as Loomis, a legacy tool receiving update
//! posts, 2,000 incidents sent round-robin across the instances over XML and gRPC,
//! WatchUpdates subscribers on two instances, and one instance killed with SIGKILL in
//! the middle of the run and started again later.
//!
//! Asserted: every acknowledged incident reaches Closed and none is lost; every
//! subscriber of an integration saw the same gap-free sequence; Loomis got a second
//! Dispatch only for incidents whose Dispatch may have been in flight at the killed
//! instance, and each such one was answered `Duplicate` and still closed; the tool got
//! each incident's posts in order. The counts are printed.

mod common;

use common::pg::TestDb;
use common::{sn_xml, CB_TOKEN, INTERNAL_KEY, SN_KEY, WAIT};
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::{
    CreateIncidentRequest, UpdateKind, WatchUpdatesRequest,
};
use safepoint_gateway::simulator::SimulatorConfig;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Incidents sent, half XML (servicenow) and half gRPC (internal).
const INCIDENTS: usize = 2000;
/// Requests in flight at once across the cluster.
const SENDERS: usize = 24;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One gateway process and its addresses.
struct Instance {
    child: Child,
    http: String,
    grpc: Channel,
}

async fn spawn(
    dir: &std::path::Path,
    n: usize,
    db_url: &str,
    loomis: &str,
    tool: &str,
) -> Instance {
    let (hp, gp) = (free_port(), free_port());
    let manifest = env!("CARGO_MANIFEST_DIR");
    let config = format!(
        r#"
[server]
http_listen = "127.0.0.1:{hp}"
grpc_listen = "127.0.0.1:{gp}"
[store]
engine = "postgres"
url_env = "SPG_CLUSTER_DB"
lease_secs = 3
[loomis]
url = "{loomis}"
timeout_ms = 2000
retry = {{ initial_ms = 50, max_ms = 500 }}
[callbacks]
auth = {{ type = "bearer", token_env = "CB_TOKEN" }}
[log]
level = "error"
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "{manifest}/mappings/servicenow.toml"
api_key_env = "SN_KEY"
[integrations.delivery]
url = "{tool}"
auth = {{ type = "none" }}
retry = {{ initial_ms = 50, max_ms = 500 }}
[[integrations]]
name = "internal"
customer_number = "B777"
mapping = "{manifest}/mappings/internal-grpc.toml"
api_key_env = "INTERNAL_KEY"
"#
    );
    let path = dir.join(format!("gateway-{n}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("SPG_CLUSTER_DB", db_url)
        .env("SN_KEY", SN_KEY)
        .env("INTERNAL_KEY", INTERNAL_KEY)
        .env("CB_TOKEN", CB_TOKEN)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let http = format!("http://127.0.0.1:{hp}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(format!("{http}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {n} did not become ready"
        );
        // Process start-up has no event to await from here; poll readiness.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grpc = Channel::from_shared(format!("http://127.0.0.1:{gp}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Instance { child, http, grpc }
}

fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
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

/// Where instances can be reached now (`None` while one is down).
type Addresses = Arc<Mutex<Vec<Option<(String, Channel)>>>>;

/// Sends incident `i` to instance `i % 3` (or the next one up) until it is acknowledged.
async fn send(i: usize, at: &Addresses, client: &reqwest::Client) {
    let mut target = i % 3;
    loop {
        let here = at.lock().unwrap()[target].clone();
        let ok = match here {
            None => false,
            Some((http, _)) if i % 2 == 0 => {
                let reference = format!("CL-{i:05}");
                let r = client
                    .post(format!("{http}/v1/integrations/servicenow/incidents"))
                    .bearer_auth(SN_KEY)
                    .header("content-type", "application/xml")
                    .body(sn_xml(&reference, "UG1234", "AC12"))
                    .send()
                    .await;
                matches!(r, Ok(r) if r.status() == 202 || r.status() == 200)
            }
            Some((_, grpc)) => {
                let mut c = IncidentGatewayClient::new(grpc);
                c.create_incident(authed(
                    CreateIncidentRequest {
                        integration: "internal".into(),
                        fields: fields(&format!("CL-{i:05}")),
                    },
                    INTERNAL_KEY,
                ))
                .await
                .is_ok()
            }
        };
        if ok {
            return;
        }
        // Not acknowledged (instance down, or cut off mid-request): the caller sends it
        // to another instance, as a client behind a load balancer would.
        target = (target + 1) % 3;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An update as a subscriber saw it: sequence, incident reference, kind.
type Seen = (u64, String, i32);

/// Follows `integration` on `grpc` from the start, recording each update.
fn watch(grpc: Channel, integration: &'static str, key: &'static str) -> Arc<Mutex<Vec<Seen>>> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut c = IncidentGatewayClient::new(grpc);
        let mut stream = c
            .watch_updates(authed(
                WatchUpdatesRequest {
                    integration: integration.into(),
                    after_sequence: 0,
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner();
        while let Some(u) = stream.next().await {
            match u {
                Ok(u) => out
                    .lock()
                    .unwrap()
                    .push((u.sequence, u.incident_reference, u.kind)),
                // The end of the test kills the instances; a failure before shows as
                // missing updates.
                Err(e) => {
                    eprintln!("stream of {integration} ended: {e:?}");
                    return;
                }
            }
        }
        eprintln!("stream of {integration} ended by the gateway");
    });
    seen
}

/// The legacy tool: records each post's (incident reference, update sequence).
async fn tool() -> (String, Arc<Mutex<Vec<(String, u64)>>>) {
    let posts: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let p = posts.clone();
    let app = axum::Router::new().route(
        "/updates",
        axum::routing::post(move |body: String| {
            let p = p.clone();
            async move {
                let field = |name: &str| {
                    let open = format!("<{name}>");
                    let start = body.find(&open)? + open.len();
                    let end = body[start..].find('<')? + start;
                    Some(body[start..end].to_string())
                };
                if let (Some(r), Some(s)) = (field("number"), field("u_loomis_sequence")) {
                    p.lock().unwrap().push((r, s.parse().unwrap_or(0)));
                }
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/updates", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_lose_nothing_and_keep_order() {
    let Some(db) = TestDb::create("cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = common::simulator(SimulatorConfig::default()).await;
    let (tool_url, posts) = tool().await;
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(spawn(dir.path(), n, &db.url, &sim.incidents_url(), &tool_url).await);
    }
    // Loomis calls back to instance 0, which is never killed.
    sim.set_callback(
        format!("{}/v1/loomis/messages", instances[0].http),
        Some(CB_TOKEN.into()),
    );
    let at: Addresses = Arc::new(Mutex::new(
        instances
            .iter()
            .map(|i| Some((i.http.clone(), i.grpc.clone())))
            .collect(),
    ));
    // Subscribers on instances 0 and 1, for both integrations.
    let watchers: Vec<(&str, Arc<Mutex<Vec<Seen>>>)> = vec![
        (
            "servicenow",
            watch(instances[0].grpc.clone(), "servicenow", SN_KEY),
        ),
        (
            "servicenow",
            watch(instances[1].grpc.clone(), "servicenow", SN_KEY),
        ),
        (
            "internal",
            watch(instances[0].grpc.clone(), "internal", INTERNAL_KEY),
        ),
        (
            "internal",
            watch(instances[1].grpc.clone(), "internal", INTERNAL_KEY),
        ),
    ];

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (next, done, at, client) = (next.clone(), done.clone(), at.clone(), client.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= INCIDENTS {
                    return;
                }
                send(i, &at, &client).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Mid-run: kill instance 2 with SIGKILL; later, start it again.
    common::eventually("a third of the incidents", || async {
        (done.load(Ordering::SeqCst) >= INCIDENTS / 3).then_some(())
    })
    .await;
    at.lock().unwrap()[2] = None;
    instances[2].child.start_kill().unwrap();
    instances[2].child.wait().await.unwrap();
    let killed_at = done.load(Ordering::SeqCst);
    common::eventually("two thirds of the incidents", || async {
        (done.load(Ordering::SeqCst) >= 2 * INCIDENTS / 3).then_some(())
    })
    .await;
    instances[2] = spawn(dir.path(), 2, &db.url, &sim.incidents_url(), &tool_url).await;
    at.lock().unwrap()[2] = Some((instances[2].http.clone(), instances[2].grpc.clone()));
    for s in senders {
        s.await.unwrap();
    }
    let submitted_in = started.elapsed();

    // Every acknowledged incident reaches Closed; none is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let closed = db.count("SELECT count(*) FROM spg_incidents WHERE state = 'Closed'");
        if closed == INCIDENTS as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{closed} of {INCIDENTS} closed; states: {}",
            db.count("SELECT count(*) FROM spg_incidents")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        db.count("SELECT count(*) FROM spg_incidents"),
        INCIDENTS as i64
    );
    let closed_in = started.elapsed();

    // Every subscriber of an integration saw the same gap-free sequence, up to the last
    // one stored, and one CLOSE per incident. (An incident whose callbacks overtook the
    // answer to its Dispatch has fewer updates: a Close before the ACK ends it.)
    let mut streamed: HashMap<&str, Vec<Seen>> = HashMap::new();
    for (integration, seen) in &watchers {
        let last = db.count(&format!(
            "SELECT last_sequence FROM spg_counters WHERE integration = '{integration}'"
        )) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while (seen.lock().unwrap().len() as u64) < last {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{integration}: a subscriber saw {} of {last} updates",
                seen.lock().unwrap().len(),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = seen.lock().unwrap().clone();
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "{integration}: not gap-free, once each"
        );
        let closes = seen
            .iter()
            .filter(|s| s.2 == UpdateKind::Close as i32)
            .count();
        assert_eq!(
            closes,
            INCIDENTS / 2,
            "{integration}: one CLOSE per incident"
        );
        if let Some(other) = streamed.get(integration) {
            assert_eq!(other, &seen, "{integration}: subscribers differ");
        }
        streamed.insert(integration, seen);
    }
    let per_integration: u64 =
        streamed["servicenow"].len() as u64 + streamed["internal"].len() as u64;

    // Loomis: one ACK per incident; any second Dispatch was answered Duplicate and
    // only the killed instance's in-flight ones can have been sent twice.
    let stats = sim.stats();
    let duplicates = stats.naks.get("Duplicate").copied().unwrap_or(0);
    assert_eq!(stats.acks, INCIDENTS as u64, "{stats:?}");
    assert_eq!(stats.dispatches, INCIDENTS as u64 + duplicates, "{stats:?}");
    assert_eq!(
        stats.naks.values().sum::<u64>(),
        duplicates,
        "no NAK but Duplicate: {stats:?}"
    );
    assert!(
        duplicates <= 64,
        "{duplicates} Dispatches sent twice: more than one instance's slots in flight"
    );

    // The tool got each incident's posts in order (a post in flight at the kill may
    // come twice, never after a later one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = db.count("SELECT count(*) FROM spg_jobs");
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} deliveries still in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.count("SELECT count(*) FROM spg_dead_letters"), 0);
    let posts = posts.lock().unwrap().clone();
    let mut by_incident: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (reference, seq) in &posts {
        by_incident.entry(reference.clone()).or_default().push(*seq);
    }
    assert_eq!(
        by_incident.len(),
        INCIDENTS / 2,
        "every XML incident posted back"
    );
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (seq, reference, _) in &streamed["servicenow"] {
        expected.entry(reference.clone()).or_default().push(*seq);
    }
    let mut repeated = 0;
    for (reference, seqs) in &by_incident {
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{reference}: posts out of order {seqs:?}"
        );
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert_eq!(
            Some(&distinct),
            expected.get(reference),
            "{reference}: every update posted"
        );
        repeated += seqs.len() - distinct.len();
    }

    println!(
        "cluster: {INCIDENTS} incidents acknowledged over 3 instances ({killed_at} before the kill) \
         in {:.1} s, all closed after {:.1} s; {} updates (both integrations) streamed gap-free to 2 \
         subscribers each; Loomis: {} Dispatches, {} ACKs, {duplicates} Duplicate; tool: {} posts, \
         {repeated} repeated",
        submitted_in.as_secs_f64(),
        closed_in.as_secs_f64(),
        per_integration,
        stats.dispatches,
        stats.acks,
        posts.len()
    );
    for mut i in instances {
        let _ = i.child.start_kill();
        let _ = i.child.wait().await;
    }
}
