//! The web console with a full store: 100,000 incidents (each with its raw input and
//! three updates) written through the gateway's store, then the incident list (several
//! filters, first and later pages) and timelines fetched over loopback HTTP, signed in.
//! Prints each page's latency percentiles; the target is under 100 ms (docs/console.md).
//!
//! Run: `cargo bench --bench console` (env: `CONSOLE_INCIDENTS`, default 100000;
//! `CONSOLE_ENGINE=sled` for the sled engine; `CONSOLE_REQUESTS` per page, default 200).

use safepoint_gateway::app;
use safepoint_gateway::config::Config;
use safepoint_gateway::incident::{Incident, IncidentKey, Sequence, State, UpdateKind};
use safepoint_gateway::store::query::RawInput;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ADMIN: &str = "bench-admin-token";

/// The path of a page's k-th request.
type PathOf = Box<dyn Fn(usize) -> String>;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn xml(reference: &str) -> String {
    format!(
        "<incident><number>{reference}</number><cmdb_ci><serial_number>UG1234</serial_number></cmdb_ci>\
<caller_id><name>John Smith</name><phone>123-123-1234</phone><email>john.smith@example.com</email></caller_id>\
<short_description>Safe Door Issue</short_description><description>Cannot open the door</description>\
<u_fault_code>AC12</u_fault_code><opened_at>2021-01-16 09:17:48</opened_at></incident>"
    )
}

/// The i-th incident: two integrations, states spread like a live store's (most closed).
fn incident(i: usize, base: jiff::Timestamp) -> (Incident, RawInput) {
    let integration = if i % 4 == 0 { "remedy" } else { "servicenow" };
    let reference = format!("INC{i:07}");
    let d = safepoint_gateway::loomis::message::Dispatch::from_json(&serde_json::json!({
        "MessageType": "Dispatch",
        "CustomerNumber": if i % 4 == 0 { "R1" } else { "A123456" },
        "IncidentReference": reference,
        "DeviceId": "UG1234",
        "ContactName": "John Smith",
        "ContactNumber": "123-123-1234",
        "ContactEmail": "john.smith@example.com",
        "Subject": "Safe Door Issue",
        "Description": "Cannot open the door",
        "FaultCode": "AC12",
        "FaultDateTime": "2021-01-16T15:17:48Z",
    }))
    .expect("a valid Dispatch");
    // One incident every 26 s: 100,000 span about a month.
    let at = base + jiff::SignedDuration::from_secs(26 * i as i64);
    let mut inc = Incident::new(integration, d, at);
    inc.state = match i % 20 {
        0 => State::Failed,
        1 | 2 => State::Accepted,
        3 => State::Cancelled,
        _ => State::Closed,
    };
    inc.incident_id = Some(format!("INC4{i:07}").into());
    let raw = RawInput::new("xml", xml(&reference).as_bytes(), at);
    (inc, raw)
}

fn main() {
    let n = env_or("CONSOLE_INCIDENTS", 100_000);
    let requests = env_or("CONSOLE_REQUESTS", 200);
    let engine = std::env::var("CONSOLE_ENGINE").unwrap_or_else(|_| "fjall".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let manifest = env!("CARGO_MANIFEST_DIR");
        let toml = format!(
            r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
[store]
engine = "{engine}"
path = "{store}"
[loomis]
url = "simulator"
[callbacks]
auth = {{ type = "none" }}
[admin]
token_env = "ADMIN"
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "{manifest}/mappings/servicenow.toml"
api_key_env = "KEY"
"#,
            store = dir.path().join("store").display()
        );
        let env = |k: &str| match k {
            "ADMIN" => Some(ADMIN.to_string()),
            "KEY" => Some("bench-key".to_string()),
            _ => None,
        };
        let config = Config::parse(&toml, "bench", false, &env).expect("bench config");
        let running = app::start(config).await.expect("gateway starts");
        let store = running.gateway.store().clone();

        let started = Instant::now();
        let base = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 31);
        let mut i = 0;
        while i < n {
            let upto = (i + 1000).min(n);
            let batch: Vec<(Incident, RawInput)> = (i..upto).map(|j| incident(j, base)).collect();
            store
                .write(move |tx| {
                    for (inc, raw) in &batch {
                        let key = inc.key();
                        tx.put_incident(inc)?;
                        tx.put_reference(&inc.customer_number, &inc.reference, &key)?;
                        tx.put_raw_input(&key, raw)?;
                        for (kind, state) in [
                            (UpdateKind::Ack, State::Acknowledged),
                            (UpdateKind::Accept, State::Accepted),
                            (UpdateKind::Close, inc.state),
                        ] {
                            let seq = tx.next_sequence(&inc.integration)?;
                            let mut u = inc.update_from(
                                &safepoint_gateway::incident::UpdateDraft {
                                    kind,
                                    state,
                                    response_code: None,
                                    response_text: None,
                                    event_time: None,
                                },
                                Sequence::new(seq),
                                inc.created_at,
                            );
                            u.sequence = Sequence::new(seq);
                            tx.append_update(&u)?;
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap();
            i = upto;
        }
        println!(
            "stored {n} incidents (with raw input and 3 updates each) on {engine} in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let http = format!("http://{}", running.http_addr);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .post(format!("{http}/console/login"))
            .form(&[("token", ADMIN), ("name", "bench")])
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        // A cursor a few pages in, for "a later page".
        let later = {
            let page = store
                .incidents_page(&Default::default(), None, 200)
                .unwrap();
            page.next.unwrap().encode()
        };
        let mid = n / 2;
        let pages: Vec<(String, PathOf)> = vec![
            ("list, newest 50".into(), Box::new(|_| "/console/incidents".into())),
            (
                "list, a later page".into(),
                Box::new(move |_| format!("/console/incidents?cursor={later}")),
            ),
            (
                "list, integration".into(),
                Box::new(|_| "/console/incidents?integration=remedy".into()),
            ),
            (
                "list, state Failed".into(),
                Box::new(|_| "/console/incidents?state=Failed".into()),
            ),
            (
                "list, state + integration + a week".into(),
                Box::new(move |_| {
                    let to = base + jiff::SignedDuration::from_hours(24 * 14);
                    let from = base + jiff::SignedDuration::from_hours(24 * 7);
                    format!(
                        "/console/incidents?state=Accepted&integration=servicenow&since={from}&until={to}"
                    )
                }),
            ),
            (
                // Cancelled incidents are all servicenow's: every Cancelled index entry
                // is read and none matches (the worst case short of the scan budget).
                "list, state + integration, no match".into(),
                Box::new(|_| "/console/incidents?state=Cancelled&integration=remedy".into()),
            ),
            (
                "list, by reference".into(),
                Box::new(move |k| format!("/console/incidents?reference=INC{:07}", (mid + k * 37) % n)),
            ),
            (
                "list, by Loomis IncidentId".into(),
                Box::new(move |k| format!("/console/incidents?incident_id=INC4{:07}", (mid + k * 41) % n)),
            ),
            (
                "timeline".into(),
                Box::new(move |k| {
                    let i = (k * 7919) % n;
                    let key = IncidentKey::new(
                        if i % 4 == 0 { "remedy" } else { "servicenow" },
                        format!("INC{i:07}"),
                    );
                    format!("/console/incidents/{}/{}", key.integration, key.reference)
                }),
            ),
        ];
        println!("{:<36} {:>9} {:>9} {:>9} {:>9} {:>8}", "page", "p50 ms", "p95 ms", "p99 ms", "max ms", "KiB");
        for (name, path) in &pages {
            let mut times = Vec::with_capacity(requests);
            let mut size = 0;
            for k in 0..requests {
                let t = Instant::now();
                let r = client
                    .get(format!("{http}{}", path(k)))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{name}");
                let body = r.bytes().await.unwrap();
                times.push(t.elapsed());
                size = body.len();
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{name:<36} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                ms(pct(&times, 0.5)),
                ms(pct(&times, 0.95)),
                ms(pct(&times, 0.99)),
                ms(*times.last().unwrap()),
                size / 1024
            );
        }
        running.stop().await.unwrap();
    });
}
