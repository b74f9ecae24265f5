//! End-to-end load: N incidents as XML through the gateway (a child process running the
//! release binary, durable receipts) to a Loomis simulator in this process, on loopback.
//! Prints end-to-end incidents/s (until the last Dispatch reached the simulator), receipt
//! latency percentiles, and the gateway's peak RSS.
//!
//! Run: `cargo bench --bench e2e` (env: `E2E_INCIDENTS`, default 50000; `E2E_LIFECYCLE=1` for
//! Accept and Close callbacks too; `E2E_FRONT=grpc` for unary gRPC CreateIncident; `E2E_SENDERS`,
//! default 64; `E2E_ENGINE=sled` for the sled store engine instead of fjall;
//! `E2E_LOOMIS=minimal` for a minimal Loomis stand-in instead of the simulator, see
//! [`minimal_loomis`]; `E2E_LOOMIS_CONCURRENCY`, default 64, sets `loomis.concurrency`;
//! `E2E_ENGINE=postgres` for PostgreSQL, in a database created for the run on the server
//! `SPG_TEST_DATABASE_URL` names (default `postgres://postgres@127.0.0.1:5432/test`) and
//! dropped after it, with `E2E_INSTANCES`, default 1, gateways on it, the senders spread
//! over them round-robin).
//! The load tool, the Loomis side and the gateway share the machine's
//! cores.

use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::CreateIncidentRequest;
use safepoint_gateway::simulator::{Simulator, SimulatorConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same allocator as the gateway binary (and so as `safepoint-gateway simulator`):
/// the simulator and the senders here allocate on one thread and free on another.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn xml(reference: &str) -> String {
    format!(
        "<incident><number>{reference}</number><cmdb_ci><serial_number>ug1234</serial_number></cmdb_ci>\
<caller_id><name>John Smith</name><phone>123-123-1234</phone><email>john.smith@example.com</email></caller_id>\
<short_description>Safe Door Issue</short_description><description>Cannot open the door</description>\
<u_fault_code>AC12</u_fault_code><opened_at>2021-01-16 09:17:48</opened_at></incident>"
    )
}

fn main() {
    let n = env_or("E2E_INCIDENTS", 50_000);
    let senders = env_or("E2E_SENDERS", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = std::env::var("E2E_ENGINE").unwrap_or_else(|_| "fjall".into());
        let instances = env_or("E2E_INSTANCES", 1).max(1);
        assert!(instances == 1 || engine == "postgres", "E2E_INSTANCES > 1 needs E2E_ENGINE=postgres");
        let ports: Vec<(u16, u16)> = (0..instances).map(|_| (free_port(), free_port())).collect();
        let hp = ports[0].0;
        // Loomis: ACK in the body. By default the Accept is an hour away, so only intake
        // and dispatch run; with E2E_LIFECYCLE=1 Loomis also calls back Accept and Close
        // 100 ms apart and the run ends when the last Close was accepted.
        let lifecycle = env_or("E2E_LIFECYCLE", 0) == 1;
        let sim_cfg = SimulatorConfig {
            accept_after: Duration::from_millis(if lifecycle { 100 } else { 3_600_000 }),
            close_after: Duration::from_millis(100),
            callback_url: Some(format!("http://127.0.0.1:{hp}/v1/loomis/messages")),
            callback_token: Some(safepoint_gateway::simulator::Secret::new("bench-cb")),
            max_records: 16,
            seed: Some(1),
            ..SimulatorConfig::default()
        };
        let sim = Simulator::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
        let minimal = std::env::var("E2E_LOOMIS").is_ok_and(|v| v == "minimal");
        assert!(!(minimal && lifecycle), "E2E_LOOMIS=minimal sends no callbacks; it cannot run with E2E_LIFECYCLE=1");
        let acked = Arc::new(AtomicUsize::new(0));
        let loomis_url = if minimal { minimal_loomis(acked.clone()).await } else { sim.incidents_url() };
        let dir = tempfile::tempdir().unwrap();
        let database = (engine == "postgres").then(bench_database);
        let loomis_concurrency = env_or("E2E_LOOMIS_CONCURRENCY", 64);
        let store = match &database {
            Some(_) => "engine = \"postgres\"\nurl_env = \"SPG_BENCH_DB\"\nlease_secs = 3\n".to_string(),
            None => format!("path = \"{}\"\nengine = \"{engine}\"\n", dir.path().join("data").display()),
        };
        let config = |hp: u16, gp: u16| format!(
            "[server]\nhttp_listen = \"127.0.0.1:{hp}\"\ngrpc_listen = \"127.0.0.1:{gp}\"\n[store]\n{store}\
[loomis]\nurl = \"{}\"\nconcurrency = {loomis_concurrency}\n[callbacks]\nauth = {{ type = \"bearer\", token_env = \"CB_TOKEN\" }}\n[log]\nlevel = \"warn\"\n\
[[integrations]]\nname = \"servicenow\"\ncustomer_number = \"A123456\"\nmapping = \"{}/mappings/servicenow.toml\"\napi_key_env = \"SN_KEY\"\n\
[[integrations]]\nname = \"internal\"\ncustomer_number = \"A123458\"\nmapping = \"{}/mappings/internal-grpc.toml\"\napi_key_env = \"SN_KEY\"\n",
            loomis_url,
            env!("CARGO_MANIFEST_DIR"),
            env!("CARGO_MANIFEST_DIR")
        );
        let client = reqwest::Client::new();
        let mut children = Vec::new();
        for (k, (hp, gp)) in ports.iter().enumerate() {
            let cfg_path = dir.path().join(format!("gateway-{k}.toml"));
            std::fs::write(&cfg_path, config(*hp, *gp)).unwrap();
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
                .args(["serve", "--config"])
                .arg(&cfg_path)
                .env("SN_KEY", "bench-key")
                .env("CB_TOKEN", "bench-cb")
                .env("SPG_BENCH_DB", database.as_ref().map(|d| d.1.clone()).unwrap_or_default())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let base = format!("http://127.0.0.1:{hp}");
            while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            children.push(child);
        }
        if instances > 1 {
            // Let the instances share the delivery lanes out (a lease and a renewal).
            tokio::time::sleep(Duration::from_secs(8)).await;
        }
        let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap()).collect();
        let pid = pids[0];
        let base = format!("http://127.0.0.1:{hp}");
        let rss_idle = vm_hwm_kib(pid);
        let front = if std::env::var("E2E_FRONT").is_ok_and(|v| v == "grpc") { "gRPC CreateIncident calls" } else { "XML" };
        let loomis_side = if minimal { "minimal Loomis stand-in" } else { "simulator" };
        println!("e2e load: {n} incidents as {front}, {senders} concurrent senders, {instances} gateway(s), pid {pid} (release, {engine} store), {loomis_side} in the load tool");
        let gateways_cpu = || pids.iter().map(|p| cpu_time(&p.to_string())).sum::<Duration>();
        let next = Arc::new(AtomicUsize::new(0));
        let (gw_cpu0, tool_cpu0) = (gateways_cpu(), cpu_time("self"));
        let started = Instant::now();
        let mut tasks = Vec::new();
        // Each sender is one keep-alive HTTP/1.1 connection driven by hyper's bare client
        // (like wrk), so the load tool spends little of the shared CPU on itself.
        // E2E_FRONT=grpc: unary CreateIncident calls instead, over 4 HTTP/2 channels.
        let grpc_front = std::env::var("E2E_FRONT").is_ok_and(|v| v == "grpc");
        let channels: Vec<tonic::transport::Channel> = if grpc_front {
            let mut v = Vec::new();
            for k in 0..4 {
                let gp = ports[k % instances].1;
                v.push(tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{gp}")).unwrap().connect().await.expect("gRPC connect"));
            }
            v
        } else {
            Vec::new()
        };
        for sender in 0..senders {
            let next = next.clone();
            if grpc_front {
                let mut client = IncidentGatewayClient::new(channels[sender % channels.len()].clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let fields = [
                            ("reference", format!("E2E{i:08}")),
                            ("device", "UG1234".into()),
                            ("contact.name", "John Smith".into()),
                            ("contact.phone", "123-123-1234".into()),
                            ("subject", "Safe Door Issue".into()),
                            ("fault_time", "2021-01-16T15:17:48Z".into()),
                        ];
                        let mut req = tonic::Request::new(CreateIncidentRequest {
                            integration: "internal".into(),
                            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        });
                        req.metadata_mut().insert("authorization", "Bearer bench-key".parse().unwrap());
                        let t = Instant::now();
                        client.create_incident(req).await.expect("gateway answers");
                        lat.push(t.elapsed());
                    }
                    lat
                }));
                continue;
            }
            let hp = ports[sender % instances].0;
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", hp)).await.expect("connect to the gateway");
                stream.set_nodelay(true).unwrap();
                let (mut conn, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                tokio::spawn(driver);
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let req = http::Request::post("/v1/integrations/servicenow/incidents")
                        .header("host", "127.0.0.1")
                        .header("authorization", "Bearer bench-key")
                        .header("content-type", "application/xml")
                        .body(http_body_util::Full::new(bytes::Bytes::from(xml(&format!("E2E{i:08}")))))
                        .unwrap();
                    let t = Instant::now();
                    conn.ready().await.expect("connection open");
                    let r = conn.send_request(req).await.expect("gateway answers");
                    assert_eq!(r.status(), 202);
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::with_capacity(n);
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let intake = started.elapsed();
        if minimal {
            let deadline = Instant::now() + Duration::from_secs(600);
            while acked.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "dispatches did not all arrive");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            assert!(sim.wait_for(|s| s.dispatches as usize >= n, Duration::from_secs(600)).await, "dispatches did not all arrive");
        }
        let e2e = started.elapsed();
        let closed = if lifecycle {
            let all_closed = |st: &safepoint_gateway::simulator::SimulatorStats| {
                st.callbacks_sent_by_kind.get("Close").copied().unwrap_or(0) as usize >= n
            };
            assert!(sim.wait_for(all_closed, Duration::from_secs(600)).await, "not every incident closed");
            Some(started.elapsed())
        } else {
            None
        };
        let gw_cpu = gateways_cpu() - gw_cpu0;
        let tool_cpu = cpu_time("self") - tool_cpu0;
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!("  receipts:    {:>9.0} incidents/s ({:.2?} for all receipts)", n as f64 / intake.as_secs_f64(), intake);
        println!("  end to end:  {:>9.0} incidents/s (last Dispatch at the {loomis_side} after {:.2?})", n as f64 / e2e.as_secs_f64(), e2e);
        if let Some(closed) = closed {
            println!("  full lifecycle: {:>9.0} incidents/s (ACK in the body, Accept and Close by callback; last Close accepted after {:.2?})", n as f64 / closed.as_secs_f64(), closed);
        }
        println!("  receipt latency: p50 {:.2?}  p99 {:.2?}  max {:.2?}", pct(0.50), pct(0.99), lat[lat.len() - 1]);
        println!(
            "  CPU per incident: gateway {:.0} us, load tool + {loomis_side} {:.0} us",
            gw_cpu.as_secs_f64() * 1e6 / n as f64,
            tool_cpu.as_secs_f64() * 1e6 / n as f64
        );
        println!("  gateway peak RSS: {:.1} MiB (idle {:.1} MiB)", vm_hwm_kib(pid) as f64 / 1024.0, rss_idle as f64 / 1024.0);
        let (mut commits, mut flushes) = (0.0, 0.0);
        for (hp, _) in &ports {
            let metrics = client.get(format!("http://127.0.0.1:{hp}/metrics")).send().await.unwrap().text().await.unwrap();
            let metric = |name: &str| -> f64 {
                metrics
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().last()?.parse().ok())
                    .unwrap_or(0.0)
            };
            commits += metric("gateway_store_commits_total");
            flushes += metric("gateway_store_flushes_total");
        }
        println!("  store: {commits:.0} commits in {flushes:.0} flushes ({:.1} per flush)", commits / flushes.max(1.0));
        let _ = &base;
        for mut child in children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        sim.shutdown().await;
        if let Some((name, _)) = database {
            admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
        }
    });
}

/// The PostgreSQL server the benchmark creates its database on.
fn server_url() -> String {
    std::env::var("SPG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs one statement on the server's own database.
async fn admin(sql: &str) {
    let (client, conn) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL for E2E_ENGINE=postgres");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = driver.await;
}

/// A fresh database for the run: (name, URL).
fn bench_database() -> (String, String) {
    let name = format!("spg_bench_{}", std::process::id());
    let server = server_url();
    let base = server
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(server.clone());
    let sql = format!("CREATE DATABASE \"{name}\"");
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(admin(&sql))
    })
    .join()
    .unwrap();
    (name.clone(), format!("{base}/{name}"))
}

/// A minimal Loomis stand-in (`E2E_LOOMIS=minimal`): answers each Dispatch with an ACK
/// carrying its CustomerNumber and IncidentReference, checks only that the body is a
/// Dispatch, records nothing and calls nothing back. It shows what the gateway does when
/// the Loomis side costs little CPU (the built-in simulator validates every field, keeps
/// state per incident and schedules its lifecycle, which costs more than the load tool).
async fn minimal_loomis(acked: Arc<AtomicUsize>) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Dispatch {
        message_type: String,
        customer_number: String,
        incident_reference: String,
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).unwrap();
            let acked = acked.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let acked = acked.clone();
                        async move {
                            let body = http_body_util::BodyExt::collect(req.into_body())
                                .await?
                                .to_bytes();
                            let d: Dispatch = serde_json::from_slice(&body)
                                .expect("the gateway sends a Dispatch");
                            assert_eq!(d.message_type, "Dispatch");
                            let id = acked.fetch_add(1, Ordering::Relaxed) + 1;
                            let ack = serde_json::json!({
                                "MessageType": "ACK",
                                "CustomerNumber": d.customer_number,
                                "IncidentId": format!("INC{id}"),
                                "IncidentReference": d.incident_reference,
                                "Status": "Open",
                            });
                            let body = bytes::Bytes::from(serde_json::to_vec(&ack).unwrap());
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    format!("http://{addr}/incidents")
}
