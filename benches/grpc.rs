//! Benchmarks of the gRPC front door's `WatchUpdates` (`cargo bench --bench grpc`).
//!
//! Runs the real gateway in process (its default store in a temp dir, built-in simulator) and
//! real tonic clients over loopback, and prints:
//! * updates/s delivered live to one stream, to 100 and to 1,000 concurrent streams;
//! * the replay rate of 100,000 stored updates;
//! * p99 latency from a Loomis callback's `200` to the event on a live stream, with
//!   callbacks posted over HTTP at 1,000/s;
//! * memory per idle stream (RSS delta / streams, from /proc/self/status; client and
//!   server share the process, so this is an upper bound for the gateway's share).
//!
//! Targets: >= 50,000 updates/s to one stream, replay of 100,000 in < 2 s, p99 < 10 ms,
//! < 64 KiB per idle stream. Stream-rate updates are written straight into the store's
//! update log (as the gateway core does, many per transaction) so that the gRPC path,
//! not the Loomis simulator, is what is measured; the latency figure goes through the
//! whole callback route.

use safepoint_gateway::app::{self, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::{
    CreateIncidentRequest, IncidentUpdate, UpdateKind as PKind, WatchUpdatesRequest,
};
use safepoint_gateway::incident::{State, Update, UpdateKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Streaming};

const KEY: &str = "bench-key-0123456789";
const CB_TOKEN: &str = "bench-callback-token-0123456789";
const INTEGRATION: &str = "internal";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let addr = running.grpc_addr;
    let channel = connect(addr).await;
    let mut client = IncidentGatewayClient::new(channel.clone());

    println!(
        "gRPC WatchUpdates benchmark (release: {})",
        !cfg!(debug_assertions)
    );

    // Memory per idle stream, first, while the allocator has little freed memory to
    // reuse (which would hide growth). Connections are opened before the baseline.
    let mut idle_channels = Vec::new();
    for _ in 0..4 {
        idle_channels.push(connect(addr).await);
    }
    let idle = 1_000;
    let before = rss_kib();
    let mut held = Vec::with_capacity(idle);
    let end = last_sequence(&running);
    for i in 0..idle {
        let mut c = IncidentGatewayClient::new(idle_channels[i % idle_channels.len()].clone());
        held.push(watch(&mut c, end).await);
    }
    // One update through all of them proves every stream is set up server-side.
    append(&running, 1).await;
    for s in held.iter_mut() {
        drain(s, 1).await;
    }
    let after = rss_kib();
    println!(
        "idle streams: {idle} use {} KiB of RSS = {:.1} KiB per stream, client side included (target < 64 KiB)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / idle as f64
    );
    drop(held);

    // What the store can produce, for scale: live figures cannot exceed it.
    let t = Instant::now();
    append(&running, 100_000).await;
    println!(
        "store: appends 100000 updates at {:.0} updates/s with no stream open",
        100_000.0 / t.elapsed().as_secs_f64()
    );

    // Replay of 100,000 stored updates.
    let n = 100_000;
    let base = last_sequence(&running);
    append(&running, n).await;
    let mut s = watch(&mut client, base).await;
    let t = Instant::now();
    let got = drain(&mut s, n).await;
    let replay = t.elapsed();
    assert_eq!(got, base + n as u64);
    drop(s);
    println!(
        "replay: {n} stored updates in {:.3} s = {:.0} updates/s (target < 2 s)",
        replay.as_secs_f64(),
        n as f64 / replay.as_secs_f64()
    );

    // Live, one stream.
    let n = 100_000;
    let rate = live(&running, std::slice::from_ref(&channel), 1, n).await;
    println!("live, 1 stream: {rate:.0} updates/s delivered (target >= 50,000)");

    // Live, 100 and 1,000 streams, spread over a few connections as real clients would.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(connect(addr).await);
    }
    for (streams, n) in [(100, 20_000), (1_000, 2_000)] {
        let rate = live(&running, &channels, streams, n).await;
        println!(
            "live, {streams} streams: {rate:.0} updates/s delivered in total ({:.0} per stream, {n} updates each)",
            rate / streams as f64
        );
    }

    latency(&running, &mut client).await;
    running.stop().await.unwrap();
}

async fn start(dir: &std::path::Path) -> Running {
    let mapping = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/internal-grpc.toml");
    let toml = format!(
        r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
[store]
path = "{store}"
[loomis]
url = "simulator"
auth = {{ type = "none" }}
[callbacks]
auth = {{ type = "bearer", token_env = "CB" }}
[simulator]
accept_after_ms = 3600000
close_after_ms = 3600000
outcome = "none"
[[integrations]]
name = "{INTEGRATION}"
customer_number = "C000001"
mapping = "{mapping}"
api_key_env = "KEY"
"#,
        store = dir.join("store").display()
    );
    let env = |k: &str| match k {
        "KEY" => Some(KEY.to_string()),
        "CB" => Some(CB_TOKEN.to_string()),
        _ => None,
    };
    let config = Config::parse(&toml, "bench", false, &env).expect("bench config");
    app::start(config).await.expect("gateway starts")
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    r
}

async fn watch(
    client: &mut IncidentGatewayClient<Channel>,
    after: u64,
) -> Streaming<IncidentUpdate> {
    client
        .watch_updates(authed(WatchUpdatesRequest {
            integration: INTEGRATION.into(),
            after_sequence: after,
        }))
        .await
        .expect("watch")
        .into_inner()
}

/// Reads `n` updates, checking they are consecutive; returns the last sequence.
async fn drain(s: &mut Streaming<IncidentUpdate>, n: usize) -> u64 {
    let mut last = None;
    for _ in 0..n {
        let u = s.next().await.expect("stream open").expect("update");
        if let Some(l) = last {
            assert_eq!(u.sequence, l + 1, "gap or duplicate");
        }
        last = Some(u.sequence);
    }
    last.unwrap_or(0)
}

fn last_sequence(running: &Running) -> u64 {
    *running.gateway.store().watch_sequence(INTEGRATION).borrow()
}

/// Appends `n` updates to the integration's log, 1,000 per transaction, with several
/// transactions queued at once so the store's group commit flushes them together.
async fn append(running: &Running, n: usize) {
    const PER_TX: usize = 1_000;
    const IN_FLIGHT: usize = 8;
    let store = running.gateway.store().clone();
    let sizes = (0..n.div_ceil(PER_TX)).map(|i| PER_TX.min(n - i * PER_TX));
    let writes = tokio_stream::iter(sizes).map(|k| {
        let store = store.clone();
        async move {
            store
                .write(move |tx| {
                    let now = jiff::Timestamp::now();
                    for i in 0..k {
                        let sequence = tx.next_sequence(INTEGRATION)?;
                        tx.append_update(&Update {
                            sequence: sequence.into(),
                            integration: INTEGRATION.into(),
                            incident_reference: format!("BENCH-{}", sequence / 3).into(),
                            incident_id: Some(format!("INC{}", 400_000 + sequence / 3).into()),
                            customer_number: "C000001".into(),
                            kind: [UpdateKind::Ack, UpdateKind::Accept, UpdateKind::Close][i % 3],
                            state: [State::Acknowledged, State::Accepted, State::Closed][i % 3],
                            response_code: None,
                            response_text: Some("Open".into()),
                            sla_time: Some(now),
                            event_time: Some(now),
                            received_at: now,
                        })?;
                    }
                    Ok(())
                })
                .await
                .expect("append updates")
        }
    });
    futures::StreamExt::buffer_unordered(writes, IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// Opens `streams` streams at the end of the log, appends `n` updates, and returns the
/// total delivery rate (updates received by all streams / time until the last got all).
async fn live(running: &Running, channels: &[Channel], streams: usize, n: usize) -> f64 {
    let end = last_sequence(running);
    let mut handles = Vec::with_capacity(streams);
    let mut opened = Vec::with_capacity(streams);
    for i in 0..streams {
        let mut c = IncidentGatewayClient::new(channels[i % channels.len()].clone());
        opened.push(watch(&mut c, end).await);
    }
    let start = Instant::now();
    for mut s in opened {
        handles.push(tokio::spawn(async move { drain(&mut s, n).await }));
    }
    append(running, n).await;
    for h in handles {
        assert_eq!(h.await.unwrap(), end + n as u64);
    }
    (streams * n) as f64 / start.elapsed().as_secs_f64()
}

/// p99 from a callback's 200 to its update on a live stream, at 1,000 callbacks/s.
async fn latency(running: &Running, client: &mut IncidentGatewayClient<Channel>) {
    const INCIDENTS: usize = 2_000;
    let start_seq = last_sequence(running);
    let mut s = watch(client, start_seq).await;
    // Incidents the simulator ACKs (in the Dispatch answer) and then leaves to us.
    let reqs: Vec<_> = (0..INCIDENTS)
        .map(|i| CreateIncidentRequest {
            integration: INTEGRATION.into(),
            fields: [
                ("reference", format!("LAT-{i:05}")),
                ("device", "UG1234".into()),
                ("contact.name", "Bench".into()),
                ("contact.phone", "1".into()),
                ("subject", "bench".into()),
                ("fault_time", "2021-01-16T15:17:48Z".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        })
        .collect();
    let answers: Vec<_> = client
        .create_incidents(authed(tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(answers.len(), INCIDENTS);
    let mut ids = HashMap::new();
    while ids.len() < INCIDENTS {
        let u = s.next().await.unwrap().unwrap();
        if u.kind() == PKind::Ack {
            ids.insert(u.incident_reference.clone(), u.incident_id.clone());
        }
    }

    let acked: Arc<Mutex<HashMap<(String, i32), Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<(String, i32), Instant>>> = Arc::default();
    let total = INCIDENTS * 2;
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while n < total {
                let u = s.next().await.unwrap().unwrap();
                let now = Instant::now();
                if matches!(u.kind(), PKind::Accept | PKind::Close) {
                    seen.lock()
                        .unwrap()
                        .insert((u.incident_reference.clone(), u.kind), now);
                    n += 1;
                }
            }
        })
    };
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/loomis/messages", running.http_addr);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = Vec::with_capacity(total);
    let began = Instant::now();
    for (kind, pkind) in [("Accept", PKind::Accept), ("Close", PKind::Close)] {
        for i in 0..INCIDENTS {
            tick.tick().await;
            let reference = format!("LAT-{i:05}");
            let body = serde_json::json!({
                "MessageType": kind, "CustomerNumber": "C000001",
                "IncidentId": ids[&reference], "IncidentReference": reference,
                "SLADateTime": "2030-01-01T00:00:00Z", "DateTime": "2026-01-01T00:00:00Z",
                "ResponseText": "done",
            });
            let (http, url, acked) = (http.clone(), url.clone(), acked.clone());
            posts.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(CB_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let now = Instant::now();
                assert_eq!(r.status().as_u16(), 200, "callback refused");
                acked.lock().unwrap().insert((reference, pkind as i32), now);
            }));
        }
    }
    for p in posts {
        p.await.unwrap();
    }
    let offered = total as f64 / began.elapsed().as_secs_f64();
    watcher.await.unwrap();
    let acked = acked.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut lat: Vec<Duration> = acked
        .iter()
        .map(|(k, ok)| seen[k].saturating_duration_since(*ok))
        .collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "latency, callback 200 -> event on a live stream, {total} callbacks at {offered:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 10 ms)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// This process's resident set size in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
