//! `store copy`: an embedded store moved into PostgreSQL and back keeps every incident
//! with its timeline, the update log at its sequence numbers (with retention's mark),
//! the outbox with its schedules, dead letters and orphans; a non-empty target is
//! refused. Then the command itself, on two configuration files.

mod common;

use common::pg::TestDb;
use jiff::Timestamp;
use safepoint_gateway::incident::{Incident, IncidentKey, State, Update, UpdateKind};
use safepoint_gateway::loomis::message::Dispatch;
use safepoint_gateway::store::audit::AuditEntry;
use safepoint_gateway::store::copy::{copy, CopyError};
use safepoint_gateway::store::engine::EngineKind;
use safepoint_gateway::store::pg::{PgBackend, PgSettings};
use safepoint_gateway::store::query::RawInput;
use safepoint_gateway::store::records::{DeadLetter, Job, JobKind, Orphan, Target};
use safepoint_gateway::store::Store;
use std::sync::Arc;
use std::time::Duration;

fn pg(url: &str) -> Store {
    Store::new(Arc::new(
        PgBackend::open(PgSettings {
            url: url.to_string(),
            pool_size: 4,
            statement_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(15),
        })
        .unwrap(),
    ))
}

fn incident(reference: &str) -> Incident {
    let d: Dispatch = serde_json::from_value(serde_json::json!({
        "MessageType": "Dispatch",
        "CustomerNumber": "A123456",
        "IncidentReference": reference,
        "DeviceId": "UG1234",
        "ContactName": "John Smith",
        "ContactNumber": "123-123-1234",
        "Subject": "Safe Door Issue",
        "Description": "Cannot open the door",
        "FaultDateTime": "2021-01-16T15:17:48Z"
    }))
    .unwrap();
    let mut inc = Incident::new("servicenow", d, Timestamp::UNIX_EPOCH);
    inc.state = State::Acknowledged;
    inc
}

fn update(reference: &str, sequence: u64) -> Update {
    Update {
        sequence: sequence.into(),
        integration: "servicenow".into(),
        incident_reference: reference.into(),
        incident_id: None,
        customer_number: "A123456".into(),
        kind: UpdateKind::Ack,
        state: State::Acknowledged,
        response_code: None,
        response_text: Some(format!("update {sequence}")),
        sla_time: None,
        event_time: None,
        received_at: Timestamp::UNIX_EPOCH,
    }
}

/// Fills `store`: 1,200 incidents (more than one page), their updates, retention's
/// removal of the first 10, outbox jobs with a schedule, dead letters and orphans.
async fn fill(store: &Store) {
    for chunk in 0..3u64 {
        store
            .write(move |tx| {
                for i in chunk * 400..(chunk + 1) * 400 {
                    let reference = format!("INC{i:05}");
                    let inc = incident(&reference);
                    tx.put_incident(&inc)?;
                    tx.put_reference("A123456", &reference, &inc.key())?;
                    if i % 2 == 0 {
                        let body = format!("<Incident><Ref>{reference}</Ref></Incident>");
                        tx.put_raw_input(
                            &inc.key(),
                            &RawInput::new("xml", body.as_bytes(), Timestamp::UNIX_EPOCH),
                        )?;
                    }
                    let seq = tx.next_sequence("servicenow")?;
                    tx.append_update(&update(&reference, seq))?;
                }
                for n in 0..5 {
                    let id = tx.next_id()?;
                    tx.enqueue(Job {
                        id,
                        target: Target::Loomis,
                        kind: JobKind::Dispatch,
                        incident: IncidentKey::new(
                            "servicenow",
                            format!("INC{:05}", chunk * 400 + n),
                        ),
                        attempts: 3,
                        created_at: Timestamp::UNIX_EPOCH,
                        next_attempt_at: Timestamp::from_second(1_900_000_000).unwrap(),
                        last_error: Some("HTTP 503".into()),
                    })?;
                    let id = tx.next_id()?;
                    tx.put_dead_letter(&DeadLetter {
                        id,
                        job: Job {
                            id,
                            target: Target::Tool,
                            kind: JobKind::PostUpdate { sequence: 1 },
                            incident: IncidentKey::new("servicenow", "INC00001"),
                            attempts: 5,
                            created_at: Timestamp::UNIX_EPOCH,
                            next_attempt_at: Timestamp::UNIX_EPOCH,
                            last_error: Some("HTTP 500".into()),
                        },
                        failed_at: Timestamp::UNIX_EPOCH,
                        reason: "gave up".into(),
                    })?;
                    let id = tx.next_id()?;
                    tx.put_orphan(&Orphan {
                        id,
                        received_at: Timestamp::UNIX_EPOCH,
                        reason: "unknown incident".into(),
                        message: serde_json::json!({ "MessageType": "ACK", "n": n }),
                    })?;
                    let id = tx.next_id()?;
                    tx.put_audit(&AuditEntry {
                        id,
                        at: Timestamp::UNIX_EPOCH,
                        who: "alice (admin)".into(),
                        action: "replay".into(),
                        target: format!("dead letter {id}"),
                        outcome: "replayed".into(),
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    store
        .write(|tx| {
            for seq in 1..=10 {
                tx.remove_update("servicenow", seq)?;
            }
            tx.set_pruned("servicenow", 10)
        })
        .await
        .unwrap();
    // As retention does: announced, then recorded.
    store.raise_pruned("servicenow", 10);
}

/// Everything a store holds, for comparison.
#[derive(Debug, PartialEq)]
struct Contents {
    incidents: Vec<Incident>,
    updates: Vec<Update>,
    last: Option<u64>,
    pruned: u64,
    jobs: Vec<Job>,
    dead_letters: Vec<DeadLetter>,
    orphans: Vec<Orphan>,
    raw_inputs: Vec<RawInput>,
    audit: Vec<AuditEntry>,
}

async fn contents(store: &Store) -> Contents {
    let mut incidents = Vec::new();
    let mut after = None;
    loop {
        let page = store.incidents_after(after.as_ref(), 300).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        incidents.extend(page);
    }
    let raw_inputs = incidents
        .iter()
        .filter_map(|i: &Incident| store.raw_input(&i.key()).unwrap())
        .collect();
    Contents {
        incidents,
        updates: store.updates_after("servicenow", 0, 100_000).unwrap(),
        last: store.last_sequences().get("servicenow").copied(),
        pruned: store.pruned_through("servicenow"),
        jobs: store.jobs().unwrap(),
        dead_letters: store.dead_letters(usize::MAX).unwrap(),
        orphans: store.orphans(usize::MAX).unwrap(),
        raw_inputs,
        audit: store.audit_log(usize::MAX).unwrap(),
    }
}

/// Compares two stores' contents part by part (a failure names the part, not the whole).
fn assert_same(got: &Contents, want: &Contents) {
    assert_eq!(got.incidents.len(), want.incidents.len(), "incident count");
    for (g, w) in got.incidents.iter().zip(&want.incidents) {
        assert_eq!(g, w, "incident");
    }
    assert_eq!(got.updates.len(), want.updates.len(), "update count");
    for (g, w) in got.updates.iter().zip(&want.updates) {
        assert_eq!(g, w, "update");
    }
    assert_eq!((got.last, got.pruned), (want.last, want.pruned), "counters");
    assert_eq!(got.jobs, want.jobs, "jobs");
    assert_eq!(got.dead_letters, want.dead_letters, "dead letters");
    assert_eq!(got.orphans, want.orphans, "orphans");
    assert_eq!(got.raw_inputs, want.raw_inputs, "raw inputs");
    assert_eq!(got.audit, want.audit, "audit log");
}

async fn reopened_pg(store: Store, url: &str) -> Store {
    store.close().await.unwrap();
    drop(store);
    pg(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_into_postgres_and_back_whole() {
    let Some(db) = TestDb::create("store_copy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fjall = Store::open(EngineKind::Fjall, &dir.path().join("fjall"), 1 << 20).unwrap();
    fill(&fjall).await;
    let before = contents(&fjall).await;
    assert_eq!(before.incidents.len(), 1200);
    assert_eq!(before.updates.len(), 1190);
    assert_eq!((before.last, before.pruned), (Some(1200), 10));

    let target = pg(&db.url);
    let copied = copy(&fjall, &target).await.unwrap();
    assert_eq!(
        (
            copied.incidents,
            copied.updates,
            copied.jobs,
            copied.dead_letters,
            copied.orphans,
            copied.raw_inputs,
            copied.audit_entries
        ),
        (1200, 1190, 15, 15, 15, 600, 15)
    );
    // Read back from a fresh connection: what is in the database, not in memory.
    let target = reopened_pg(target, &db.url).await;
    assert_same(&contents(&target).await, &before);
    // References, and the counter: the next update is 1201, new ids are above the old.
    let (found, next_seq, next_id) = target
        .write(|tx| {
            let seq = tx.next_sequence("servicenow")?;
            tx.append_update(&update("INC00777", seq))?;
            Ok((tx.by_reference("A123456", "INC00777")?, seq, tx.next_id()?))
        })
        .await
        .unwrap();
    assert_eq!(found, Some(IncidentKey::new("servicenow", "INC00777")));
    assert_eq!(next_seq, 1201);
    let top = before.orphans.iter().map(|o| o.id).max().unwrap();
    assert!(next_id > top, "{next_id} after {top}");
    // The write above added an update; copy what is there now.
    let expected = contents(&target).await;

    // Not into a store that holds anything.
    let err = copy(&target, &fjall).await.unwrap_err();
    assert!(matches!(err, CopyError::TargetNotEmpty(_)), "{err}");

    // And back, into sled.
    let sled = Store::open(EngineKind::Sled, &dir.path().join("sled"), 1 << 20).unwrap();
    copy(&target, &sled).await.unwrap();
    assert_same(&contents(&sled).await, &expected);
    sled.close().await.unwrap();
    target.close().await.unwrap();
    fjall.close().await.unwrap();
}

#[test]
fn the_command_copies_between_two_configurations_and_refuses_a_full_target() {
    let Some(db) = TestDb::create("store_copy_cli") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("data");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = Store::open(EngineKind::Fjall, &store_dir, 1 << 20).unwrap();
            fill(&s).await;
            s.close().await.unwrap();
        });
    }
    // Two configurations that differ in [store] only, as an operator's would.
    let rest = format!(
        "[loomis]\nurl = \"simulator\"\n\n[callbacks]\nauth = {{ type = \"bearer\", token_env = \"CB\" }}\n\n\
         [[integrations]]\nname = \"servicenow\"\ncustomer_number = \"A123456\"\n\
         mapping = \"{}/mappings/servicenow.toml\"\napi_key_env = \"SN\"\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let from = dir.path().join("embedded.toml");
    std::fs::write(
        &from,
        format!("[store]\npath = \"{}\"\n\n{rest}", store_dir.display()),
    )
    .unwrap();
    let to = dir.path().join("cluster.toml");
    std::fs::write(
        &to,
        format!("[store]\nengine = \"postgres\"\nurl_env = \"SPG_COPY_TARGET\"\n\n{rest}"),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
            .args(["store", "copy", "--from"])
            .arg(&from)
            .arg("--to")
            .arg(&to)
            .env("SPG_COPY_TARGET", &db.url)
            .env("CB", "callback-token")
            .env("SN", "sn-key")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied 1200 incidents, 1190 updates"),
        "{stdout}"
    );
    assert_eq!(db.count("SELECT count(*) FROM spg_incidents"), 1200);
    assert_eq!(
        db.count("SELECT last_sequence FROM spg_counters WHERE integration = 'servicenow'"),
        1200
    );
    // Again: the target is no longer empty.
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
}
