//! One store contract, three engines: every test here runs unchanged against fjall, sled
//! and PostgreSQL (a database of the test's own; see `common::pg`), so an engine cannot
//! drift from the others.

mod common;

use common::pg::TestDb;
use jiff::Timestamp;
use safepoint_gateway::incident::{Incident, IncidentKey, State, Update, UpdateKind};
use safepoint_gateway::loomis::message::Dispatch;
use safepoint_gateway::store::audit::AuditEntry;
use safepoint_gateway::store::engine::EngineKind;
use safepoint_gateway::store::pg::{PgBackend, PgSettings};
use safepoint_gateway::store::query::{Cursor, IncidentFilter, RawInput};
use safepoint_gateway::store::records::{DeadLetter, Job, JobKind, Orphan, Target};
use safepoint_gateway::store::{Hints, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Where one test's store lives; it can be opened again after a close.
struct Place {
    kind: EngineKind,
    dir: tempfile::TempDir,
    db: Option<TestDb>,
}

impl Place {
    fn new(kind: EngineKind, test: &str) -> Option<Place> {
        let db = match kind {
            EngineKind::Postgres => Some(TestDb::create(test)?),
            _ => None,
        };
        Some(Place {
            kind,
            dir: tempfile::tempdir().unwrap(),
            db,
        })
    }

    /// Closes `store` (every handle of it) and opens the same place again.
    async fn reopen(&self, store: Store) -> Store {
        store.close().await.unwrap();
        drop(store);
        self.open()
    }

    fn open(&self) -> Store {
        match &self.db {
            Some(db) => Store::new(Arc::new(
                PgBackend::open(PgSettings {
                    url: db.url.clone(),
                    pool_size: 4,
                    statement_timeout: Duration::from_secs(10),
                    lease: Duration::from_secs(15),
                })
                .unwrap(),
            )),
            None => Store::open(self.kind, self.dir.path(), 1 << 20).unwrap(),
        }
    }
}

macro_rules! engine_tests {
    ($engine:ident, $kind:expr, [$($name:ident),* $(,)?]) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = concat!(stringify!($engine), "_", stringify!($name));
                    if let Some(place) = super::Place::new($kind, test) {
                        super::$name(place).await;
                    }
                }
            )*
        }
    };
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        engine_tests!(fjall, safepoint_gateway::store::engine::EngineKind::Fjall, [$($name),*]);
        engine_tests!(sled, safepoint_gateway::store::engine::EngineKind::Sled, [$($name),*]);
        engine_tests!(postgres, safepoint_gateway::store::engine::EngineKind::Postgres, [$($name),*]);
    };
}

contract!(
    incidents_and_references_round_trip_and_survive_a_reopen,
    a_failed_write_leaves_nothing_behind_and_no_sequence_used,
    concurrent_writers_get_gap_free_sequences,
    jobs_are_handed_out_after_commit_and_listed_in_id_order,
    dead_letters_and_orphans_are_kept_listed_and_removed,
    incidents_are_scanned_in_key_order,
    updates_are_read_within_bounds_and_limits,
    retention_marks_and_removals_persist,
    ids_keep_growing_across_a_reopen,
    incidents_are_listed_newest_first_by_filter_and_cursor,
    raw_input_and_timeline_are_kept_beside_the_incident,
    audit_entries_are_kept_newest_first,
    hinted_writes_read_what_unhinted_ones_do,
);

fn incident(integration: &str, reference: &str, subject: &str) -> Incident {
    let mut d: Dispatch = serde_json::from_value(serde_json::json!({
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
    d.subject = subject.into();
    Incident::new(integration, d, Timestamp::UNIX_EPOCH)
}

fn update(integration: &str, reference: &str, sequence: u64) -> Update {
    Update {
        sequence: sequence.into(),
        integration: integration.into(),
        incident_reference: reference.into(),
        incident_id: None,
        customer_number: "A123456".into(),
        kind: UpdateKind::Ack,
        state: State::Acknowledged,
        response_code: None,
        response_text: None,
        sla_time: None,
        event_time: None,
        received_at: Timestamp::UNIX_EPOCH,
    }
}

fn job(id: u64, reference: &str, kind: JobKind) -> Job {
    Job {
        id,
        target: Target::Loomis,
        kind,
        incident: IncidentKey::new("servicenow", reference),
        attempts: 0,
        created_at: Timestamp::UNIX_EPOCH,
        next_attempt_at: Timestamp::UNIX_EPOCH,
        last_error: None,
    }
}

async fn incidents_and_references_round_trip_and_survive_a_reopen(place: Place) {
    let store = place.open();
    let key = IncidentKey::new("servicenow", "INC1");
    store
        .write(|tx| {
            assert!(tx
                .incident(&IncidentKey::new("servicenow", "INC1"))?
                .is_none());
            assert!(tx.by_reference("A123456", "INC1")?.is_none());
            let inc = incident("servicenow", "INC1", "first");
            tx.put_incident(&inc)?;
            tx.put_reference("A123456", "INC1", &inc.key())?;
            // Later reads of the same write see it.
            assert_eq!(
                tx.incident(&inc.key())?.map(|i| i.dispatch.subject),
                Some("first".to_string())
            );
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(
        store.incident(&key).unwrap().unwrap().dispatch.subject,
        "first"
    );
    // A read in a write, then an overwrite.
    store
        .write(|tx| {
            let k = tx
                .by_reference("A123456", "INC1")?
                .expect("reference stored");
            let mut inc = tx.incident(&k)?.expect("incident stored");
            inc.dispatch.subject = "second".into();
            inc.state = State::Sent;
            tx.put_incident(&inc)
        })
        .await
        .unwrap();
    let store = place.reopen(store).await;
    let inc = store.incident(&key).unwrap().expect("kept across a reopen");
    assert_eq!(
        (inc.dispatch.subject.as_str(), inc.state),
        ("second", State::Sent)
    );
    let found = store
        .write(|tx| tx.by_reference("A123456", "INC1"))
        .await
        .unwrap();
    assert_eq!(found, Some(key.clone()));
    assert!(store
        .incident(&IncidentKey::new("servicenow", "INC2"))
        .unwrap()
        .is_none());
    store.close().await.unwrap();
}

async fn a_failed_write_leaves_nothing_behind_and_no_sequence_used(place: Place) {
    let store = place.open();
    let err = store
        .write(|tx| {
            tx.put_incident(&incident("servicenow", "INC1", "lost"))?;
            let seq = tx.next_sequence("servicenow")?;
            tx.append_update(&update("servicenow", "INC1", seq))?;
            Err::<(), _>(StoreError::Database("refused by the test".into()))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert!(store
        .incident(&IncidentKey::new("servicenow", "INC1"))
        .unwrap()
        .is_none());
    // The number the failed write took is handed out again: no gap.
    let seq = store
        .write(|tx| {
            let seq = tx.next_sequence("servicenow")?;
            tx.append_update(&update("servicenow", "INC2", seq))?;
            Ok(seq)
        })
        .await
        .unwrap();
    assert_eq!(seq, 1);
    let ups = store.updates_after("servicenow", 0, 10).unwrap();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].incident_reference, "INC2");
    store.close().await.unwrap();
}

async fn concurrent_writers_get_gap_free_sequences(place: Place) {
    let store = place.open();
    let mut watch = store.watch_sequence("servicenow");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let integration = if i % 4 == 0 { "internal" } else { "servicenow" };
            store
                .write(move |tx| {
                    let reference = format!("INC{i}");
                    tx.put_incident(&incident(integration, &reference, "x"))?;
                    let seq = tx.next_sequence(integration)?;
                    tx.append_update(&update(integration, &reference, seq))?;
                    Ok(seq)
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (integration, n) in [("servicenow", 150u64), ("internal", 50)] {
        let seqs: Vec<u64> = store
            .updates_after(integration, 0, 1000)
            .unwrap()
            .iter()
            .map(|u| u.sequence.get())
            .collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{integration}");
    }
    watch.wait_for(|s| *s == 150).await.unwrap();
    assert_eq!(store.last_sequences()["internal"], 50);
    store.close().await.unwrap();
}

async fn jobs_are_handed_out_after_commit_and_listed_in_id_order(place: Place) {
    let store = place.open();
    let (sink, mut handed) = tokio::sync::mpsc::unbounded_channel();
    store.attach_jobs(Target::Loomis, sink);
    let ids = store
        .write(|tx| {
            let mut ids = Vec::new();
            for (i, kind) in [JobKind::Dispatch, JobKind::Cancel, JobKind::Dispatch]
                .into_iter()
                .enumerate()
            {
                let id = tx.next_id()?;
                tx.enqueue(job(id, &format!("INC{i}"), kind))?;
                ids.push(id);
            }
            Ok(ids)
        })
        .await
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // In commit order. (On a shared database a job may be handed out again by the poll
    // of this instance's lanes; the scheduler drops a second copy by id.)
    let mut first_seen = Vec::new();
    while first_seen.len() < ids.len() {
        let id = handed.recv().await.unwrap().id;
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, ids);
    let listed: Vec<u64> = store.jobs().unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, ids);
    // A job rescheduled keeps its id and shows its new schedule; a removed one is gone.
    store
        .write(move |tx| {
            let mut j = tx.job(ids[0])?.expect("job stored");
            j.attempts = 3;
            j.last_error = Some("503".into());
            tx.put_job(&j)?;
            tx.remove_job(ids[1])
        })
        .await
        .unwrap();
    let jobs = store.jobs().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].attempts, 3);
    assert_eq!(jobs[0].last_error.as_deref(), Some("503"));
    assert_eq!(jobs[0].kind, JobKind::Dispatch);
    // A failed write hands nothing out.
    let _ = store
        .write(|tx| {
            let id = tx.next_id()?;
            tx.enqueue(job(id, "INC9", JobKind::Dispatch))?;
            Err::<(), _>(StoreError::Database("no".into()))
        })
        .await;
    let kept: Vec<u64> = store.jobs().unwrap().iter().map(|j| j.id).collect();
    assert_eq!(kept.len(), 2);
    while let Ok(j) = handed.try_recv() {
        assert!(
            kept.contains(&j.id),
            "job {} of a failed write handed out",
            j.id
        );
    }
    store.close().await.unwrap();
}

async fn dead_letters_and_orphans_are_kept_listed_and_removed(place: Place) {
    let store = place.open();
    store
        .write(|tx| {
            for n in 0..3 {
                let id = tx.next_id()?;
                tx.put_dead_letter(&DeadLetter {
                    id,
                    job: job(id, &format!("INC{n}"), JobKind::PostUpdate { sequence: n }),
                    failed_at: Timestamp::UNIX_EPOCH,
                    reason: format!("gave up {n}"),
                })?;
                let id = tx.next_id()?;
                tx.put_orphan(&Orphan {
                    id,
                    received_at: Timestamp::UNIX_EPOCH,
                    reason: "unknown incident".into(),
                    message: serde_json::json!({ "MessageType": "ACK", "n": n }),
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let dls = store.dead_letters(10).unwrap();
    assert_eq!(dls.len(), 3);
    assert_eq!(dls[0].reason, "gave up 0");
    assert_eq!(store.dead_letters(2).unwrap().len(), 2);
    assert_eq!(store.dead_letter_count().unwrap(), 3);
    let orphans = store.orphans(10).unwrap();
    assert_eq!(orphans.len(), 3);
    assert_eq!(orphans[2].message["n"], 2);
    let (first_dl, first_orphan) = (dls[0].id, orphans[0].id);
    store
        .write(move |tx| {
            assert_eq!(tx.dead_letter(first_dl)?.map(|d| d.id), Some(first_dl));
            tx.remove_dead_letter(first_dl)?;
            tx.remove_orphan(first_orphan)
        })
        .await
        .unwrap();
    assert_eq!(store.dead_letter_count().unwrap(), 2);
    assert_eq!(store.orphans(10).unwrap().len(), 2);
    store.close().await.unwrap();
}

async fn incidents_are_scanned_in_key_order(place: Place) {
    let store = place.open();
    let keys = [
        ("a", "B"),
        ("a", "A"),
        ("ab", "0"),
        ("a", "A-1"),
        ("b", "Z"),
        ("a", "a"),
    ];
    store
        .write(move |tx| {
            for (i, r) in keys {
                tx.put_incident(&incident(i, r, "x"))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<IncidentKey> = None;
    loop {
        let page = store.incidents_after(after.as_ref(), 2).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|i| i.key());
        seen.extend(
            page.iter()
                .map(|i| (i.integration.clone(), i.reference.to_string())),
        );
    }
    let want: Vec<(String, String)> = [
        ("a", "A"),
        ("a", "A-1"),
        ("a", "B"),
        ("a", "a"),
        ("ab", "0"),
        ("b", "Z"),
    ]
    .iter()
    .map(|(i, r)| (i.to_string(), r.to_string()))
    .collect();
    assert_eq!(seen, want);
    store.close().await.unwrap();
}

async fn updates_are_read_within_bounds_and_limits(place: Place) {
    let store = place.open();
    for integration in ["a", "ab"] {
        for _ in 0..5 {
            store
                .write(move |tx| {
                    let seq = tx.next_sequence(integration)?;
                    tx.append_update(&update(integration, "INC1", seq))
                })
                .await
                .unwrap();
        }
    }
    let seqs = |after, limit| -> Vec<u64> {
        store
            .updates_after("a", after, limit)
            .unwrap()
            .iter()
            .map(|u| u.sequence.get())
            .collect()
    };
    assert_eq!(seqs(0, 10), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(2, 2), vec![3, 4]);
    assert_eq!(seqs(5, 10), Vec::<u64>::new());
    assert_eq!(store.update("ab", 3).unwrap().unwrap().integration, "ab");
    assert!(store.update("ab", 6).unwrap().is_none());
    let read = store
        .write(|tx| Ok(tx.update("a", 4)?.map(|u| u.sequence.get())))
        .await
        .unwrap();
    assert_eq!(read, Some(4));
    store.close().await.unwrap();
}

async fn retention_marks_and_removals_persist(place: Place) {
    let store = place.open();
    store
        .write(|tx| {
            let inc = incident("servicenow", "INC1", "old");
            tx.put_incident(&inc)?;
            tx.put_reference("A123456", "INC1", &inc.key())?;
            for _ in 0..3 {
                let seq = tx.next_sequence("servicenow")?;
                tx.append_update(&update("servicenow", "INC1", seq))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    store
        .write(|tx| {
            tx.remove_update("servicenow", 1)?;
            tx.remove_update("servicenow", 2)?;
            tx.set_pruned("servicenow", 2)?;
            tx.remove_incident(&IncidentKey::new("servicenow", "INC1"))?;
            tx.remove_reference("A123456", "INC1")
        })
        .await
        .unwrap();
    let store = place.reopen(store).await;
    assert_eq!(store.pruned_through("servicenow"), 2);
    let left: Vec<u64> = store
        .updates_after("servicenow", 0, 10)
        .unwrap()
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    assert_eq!(left, vec![3]);
    assert!(store
        .incident(&IncidentKey::new("servicenow", "INC1"))
        .unwrap()
        .is_none());
    // The sequence goes on after the removed ones.
    let next = store
        .write(|tx| tx.next_sequence("servicenow"))
        .await
        .unwrap();
    assert_eq!(next, 4);
    assert!(store
        .write(|tx| tx.by_reference("A123456", "INC1"))
        .await
        .unwrap()
        .is_none());
    store.close().await.unwrap();
}

async fn ids_keep_growing_across_a_reopen(place: Place) {
    let store = place.open();
    let before = store
        .write(|tx| {
            (0..2000)
                .map(|_| tx.next_id())
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    // Stored, so that the reservation covering them is durable too.
    let last = *before.last().unwrap();
    store
        .write(move |tx| tx.put_job(&job(last, "INC1", JobKind::Dispatch)))
        .await
        .unwrap();
    assert!(before.windows(2).all(|w| w[0] < w[1]));
    let store = place.reopen(store).await;
    let after = store.write(|tx| tx.next_id()).await.unwrap();
    assert!(after > last, "{after} after {last}");
    store.close().await.unwrap();
}

/// Every page of `filter`, `size` at a time, as (integration, reference): a page may be
/// short while more follow (an indexed scan stops at its budget), so the pages are read
/// to the end.
fn listing(store: &Store, filter: &IncidentFilter, size: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    for _ in 0..1000 {
        let page = store.incidents_page(filter, cursor.as_ref(), size).unwrap();
        assert!(page.incidents.len() <= size);
        out.extend(
            page.incidents
                .iter()
                .map(|i| (i.integration.clone(), i.reference.to_string())),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("the listing did not end")
}

async fn incidents_are_listed_newest_first_by_filter_and_cursor(place: Place) {
    let store = place.open();
    // (integration, reference, seconds after the epoch, state, Loomis id); two pairs
    // share a creation time, so the key orders them.
    let rows: [(&str, &str, i64, State, Option<&str>); 7] = [
        ("a", "R1", 10, State::Queued, None),
        ("a", "R2", 20, State::Acknowledged, Some("L2")),
        ("b", "R2", 20, State::Closed, Some("L9")),
        ("a", "R3", 30, State::Closed, Some("L3")),
        ("b", "R4", 40, State::Queued, None),
        ("a", "R5", 50, State::Acknowledged, Some("L5")),
        ("a", "R0", 50, State::Queued, None),
    ];
    store
        .write(move |tx| {
            for (i, r, secs, state, id) in rows {
                let mut inc = incident(i, r, "x");
                inc.created_at = Timestamp::from_second(secs).unwrap();
                inc.state = state;
                inc.incident_id = id.map(Into::into);
                tx.put_incident(&inc)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let keys = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(i, r)| (i.to_string(), r.to_string()))
            .collect()
    };
    let all = keys(&[
        ("a", "R0"),
        ("a", "R5"),
        ("b", "R4"),
        ("a", "R3"),
        ("a", "R2"),
        ("b", "R2"),
        ("a", "R1"),
    ]);
    for size in [1, 2, 3, 100] {
        assert_eq!(
            listing(&store, &IncidentFilter::default(), size),
            all,
            "pages of {size}"
        );
    }
    let by = |f: IncidentFilter| listing(&store, &f, 2);
    assert_eq!(
        by(IncidentFilter {
            reference: Some("R2".into()),
            ..Default::default()
        }),
        keys(&[("a", "R2"), ("b", "R2")])
    );
    assert_eq!(
        by(IncidentFilter {
            incident_id: Some("L9".into()),
            ..Default::default()
        }),
        keys(&[("b", "R2")])
    );
    assert_eq!(
        by(IncidentFilter {
            integration: Some("a".into()),
            state: Some(State::Queued),
            ..Default::default()
        }),
        keys(&[("a", "R0"), ("a", "R1")])
    );
    assert_eq!(
        by(IncidentFilter {
            since: Some(Timestamp::from_second(20).unwrap()),
            until: Some(Timestamp::from_second(40).unwrap()),
            ..Default::default()
        }),
        keys(&[("b", "R4"), ("a", "R3"), ("a", "R2"), ("b", "R2")])
    );
    assert!(by(IncidentFilter {
        reference: Some("nothing".into()),
        ..Default::default()
    })
    .is_empty());
    // A changed state is what the next listing filters by.
    store
        .write(|tx| {
            let key = IncidentKey::new("a", "R1");
            let mut inc = tx.incident(&key)?.expect("stored");
            inc.state = State::Closed;
            tx.put_incident(&inc)
        })
        .await
        .unwrap();
    let store = place.reopen(store).await;
    assert_eq!(
        listing(
            &store,
            &IncidentFilter {
                state: Some(State::Closed),
                ..Default::default()
            },
            10
        ),
        keys(&[("a", "R3"), ("b", "R2"), ("a", "R1")])
    );
    store.close().await.unwrap();
}

async fn raw_input_and_timeline_are_kept_beside_the_incident(place: Place) {
    let store = place.open();
    let key = IncidentKey::new("a", "INC1");
    let raw = RawInput::new(
        "xml",
        b"<Incident><Ref>INC1</Ref></Incident>",
        Timestamp::UNIX_EPOCH,
    );
    let kept = raw.clone();
    store
        .write(move |tx| {
            let inc = incident("a", "INC1", "x");
            tx.put_incident(&inc)?;
            tx.put_raw_input(&inc.key(), &kept)?;
            tx.put_incident(&incident("a", "INC2", "x"))?;
            for reference in ["INC1", "INC2", "INC1"] {
                let seq = tx.next_sequence("a")?;
                tx.append_update(&update("a", reference, seq))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let store = place.reopen(store).await;
    assert_eq!(store.raw_input(&key).unwrap(), Some(raw));
    assert_eq!(
        store.raw_input(&IncidentKey::new("a", "INC2")).unwrap(),
        None
    );
    let seqs: Vec<u64> = store
        .updates_of(&key, 10)
        .unwrap()
        .iter()
        .map(|u| u.sequence.get())
        .collect();
    assert_eq!(seqs, vec![1, 3]);
    assert_eq!(store.updates_of(&key, 1).unwrap().len(), 1);
    store
        .write(|tx| tx.remove_incident(&IncidentKey::new("a", "INC1")))
        .await
        .unwrap();
    assert_eq!(
        store.raw_input(&key).unwrap(),
        None,
        "removed with its incident"
    );
    store.close().await.unwrap();
}

async fn audit_entries_are_kept_newest_first(place: Place) {
    let store = place.open();
    for n in 0..3u64 {
        store
            .write(move |tx| {
                let id = tx.next_id()?;
                tx.put_audit(&AuditEntry {
                    id,
                    at: Timestamp::from_second(n as i64).unwrap(),
                    who: "alice (admin)".into(),
                    action: "replay".into(),
                    target: format!("dead letter {n}"),
                    outcome: "replayed".into(),
                })
            })
            .await
            .unwrap();
    }
    let store = place.reopen(store).await;
    let log = store.audit_log(10).unwrap();
    let targets: Vec<&str> = log.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["dead letter 2", "dead letter 1", "dead letter 0"]);
    assert_eq!(store.audit_log(1).unwrap().len(), 1);
    store.close().await.unwrap();
}

async fn hinted_writes_read_what_unhinted_ones_do(place: Place) {
    let store = place.open();
    store
        .write(|tx| {
            let inc = incident("a", "INC1", "stored");
            tx.put_incident(&inc)?;
            tx.put_reference("A123456", "INC1", &inc.key())
        })
        .await
        .unwrap();
    // Right, missing and wrong hints (an integration never written, a reference of
    // another customer), in one group of concurrent writes.
    let hints = || Hints {
        incidents: vec![
            IncidentKey::new("a", "INC1"),
            IncidentKey::new("a", "INC2"),
            IncidentKey::new("zz-none", "INC1"),
        ],
        references: vec![
            ("A123456".into(), "INC1".into()),
            ("A123456".into(), "INC2".into()),
            ("OTHER".into(), "INC1".into()),
        ],
    };
    let reads = store.write_hinted(hints(), |tx| {
        Ok((
            tx.incident(&IncidentKey::new("a", "INC1"))?
                .map(|i| i.dispatch.subject),
            tx.incident(&IncidentKey::new("a", "INC2"))?.is_some(),
            tx.by_reference("A123456", "INC1")?,
            tx.by_reference("A123456", "INC2")?,
            tx.by_reference("OTHER", "INC1")?,
        ))
    });
    let create = store.write_hinted(hints(), |tx| {
        let key = IncidentKey::new("a", "INC2");
        if tx.incident(&key)?.is_none() {
            tx.put_incident(&incident("a", "INC2", "new"))?;
            tx.put_reference("A123456", "INC2", &key)?;
        }
        let mut one = tx
            .incident(&IncidentKey::new("a", "INC1"))?
            .expect("stored");
        one.dispatch.subject = "changed".into();
        tx.put_incident(&one)
    });
    let (reads, created) = tokio::join!(reads, create);
    created.unwrap();
    let (subject, two, one_ref, two_ref, other) = reads.unwrap();
    assert!(
        subject.as_deref() == Some("stored") || subject.as_deref() == Some("changed"),
        "{subject:?}"
    );
    assert_eq!(one_ref, Some(IncidentKey::new("a", "INC1")));
    // Either order of the two writes is right; what the reader saw must be one of them.
    assert_eq!(two, two_ref.is_some());
    assert_eq!(other, None);
    // And after both: a hinted read sees what was written, in a new group.
    let after = store
        .write_hinted(hints(), |tx| {
            Ok((
                tx.incident(&IncidentKey::new("a", "INC1"))?
                    .map(|i| i.dispatch.subject),
                tx.incident(&IncidentKey::new("a", "INC2"))?
                    .map(|i| i.dispatch.subject),
                tx.by_reference("A123456", "INC2")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        after,
        (
            Some("changed".to_string()),
            Some("new".to_string()),
            Some(IncidentKey::new("a", "INC2"))
        )
    );
    store.close().await.unwrap();
}
