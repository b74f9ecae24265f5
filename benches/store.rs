//! The store path under group commit: incidents committed per second at 1, 16 and 256
//! concurrent submitters, commit latency percentiles, and fsyncs per commit.
//!
//! Run: `cargo bench --bench store` (release; `BENCH_ENGINE=sled` or `fjall` for one
//! engine, default both). Uses a temp directory on the working disk; every commit is
//! flushed before it is answered, as in production.

use safepoint_gateway::gateway::{Gateway, IntegrationInfo};
use safepoint_gateway::loomis::message::Dispatch;
use safepoint_gateway::store::engine::EngineKind;
use safepoint_gateway::store::Store;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn dispatch(reference: String) -> Dispatch {
    Dispatch {
        message_type: "Dispatch".into(),
        customer_number: "A123456".into(),
        incident_reference: reference,
        device_id: "UG1234".into(),
        contact_name: "John Smith".into(),
        contact_number: "123-123-1234".into(),
        contact_email: Some("john.smith@example.com".into()),
        subject: "Safe Door Issue".into(),
        description: "Cannot open the door".into(),
        fault_code: Some("AC12".into()),
        fault_date_time: "2021-01-16T15:17:48Z".into(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_run: usize = std::env::var("BENCH_INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let engines: Vec<EngineKind> = match std::env::var("BENCH_ENGINE").as_deref() {
        Ok("sled") => vec![EngineKind::Sled],
        Ok("fjall") => vec![EngineKind::Fjall],
        _ => vec![EngineKind::Fjall, EngineKind::Sled],
    };
    for engine in engines {
        println!("store group-commit benchmark: {per_run} incidents per run, engine {}, flush before every answer", engine.name());
        println!(
            "{:>11} {:>12} {:>10} {:>10} {:>10} {:>14} {:>12}",
            "submitters", "incidents/s", "p50", "p99", "max", "fsyncs/commit", "CPU/incident"
        );
        for submitters in [1usize, 16, 256] {
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let store = Store::open(engine, dir.path(), 32 << 20).unwrap();
                let gw = Gateway::new(
                    store.clone(),
                    vec![IntegrationInfo {
                        name: "bench".into(),
                        customer_number: "A123456".into(),
                        delivers: false,
                    }],
                );
                let n = if submitters == 1 {
                    per_run / 4
                } else {
                    per_run
                };
                let (c0, f0) = (
                    store.stats().commits.load(Ordering::Relaxed),
                    store.stats().flushes.load(Ordering::Relaxed),
                );
                let started = Instant::now();
                let cpu0 = cpu_time();
                let mut tasks = Vec::new();
                for s in 0..submitters {
                    let gw = gw.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = s;
                        while i < n {
                            let t = Instant::now();
                            gw.submit("bench", dispatch(format!("R{i:08}")))
                                .await
                                .unwrap();
                            lat.push(t.elapsed());
                            i += submitters;
                        }
                        lat
                    }));
                }
                let mut lat = Vec::with_capacity(n);
                for t in tasks {
                    lat.extend(t.await.unwrap());
                }
                let elapsed = started.elapsed();
                let cpu = cpu_time() - cpu0;
                lat.sort();
                let commits = store.stats().commits.load(Ordering::Relaxed) - c0;
                let flushes = store.stats().flushes.load(Ordering::Relaxed) - f0;
                println!(
                    "{:>11} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?} {:>14.3} {:>9.1} us",
                    submitters,
                    n as f64 / elapsed.as_secs_f64(),
                    pct(&lat, 0.50),
                    pct(&lat, 0.99),
                    lat.last().unwrap(),
                    flushes as f64 / commits as f64,
                    cpu.as_secs_f64() * 1e6 / n as f64
                );
                store.close().await.unwrap();
            });
        }
    }
}

/// CPU time (user + system) this process has used, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
