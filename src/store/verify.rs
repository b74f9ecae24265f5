//! `safepoint-gateway store verify`: reads every record of a stopped gateway's store as
//! the gateway would, and names each one that is damaged. The gateway itself only finds
//! a damaged record when a request needs it (and then refuses that request with 500,
//! counts it in `gateway_store_corrupt_records_total` and fails readiness); this finds
//! all of them at once, before or after a restore.

use super::engine::{self, Engine, EngineKind};
use super::StoreError;
use std::path::Path;

/// One damaged entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The record, as an operator reads it (`incident servicenow/INC1`, `job 40`).
    pub key: String,
    pub problem: String,
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Entries read (damaged ones included).
    pub records: u64,
    pub damaged: Vec<Damage>,
}

/// Entries read per range request.
const PAGE: usize = 1000;

/// Verifies the store in `path` (the gateway must be stopped: the engine's lock keeps a
/// second process out). The engine is the one whose files the directory holds.
pub fn verify(path: &Path) -> Result<Report, StoreError> {
    let Some(kind) = engine::detect(path) else {
        return Err(StoreError::Database(format!(
            "no store at {} (neither fjall nor sled files are there)",
            path.display()
        )));
    };
    // A small cache: every block is read once.
    let cache = 16 << 20;
    match kind {
        EngineKind::Fjall => walk(&engine::FjallEngine::open(path, cache)?),
        EngineKind::Sled => walk(&engine::SledEngine::open(path, cache)?),
        EngineKind::Postgres => unreachable!("detect names embedded engines only"),
    }
}

/// Reads every entry of `engine` in key order and checks each record.
pub fn walk<E: Engine>(engine: &E) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let end = [u8::MAX; 2];
    let mut start: Vec<u8> = Vec::new();
    loop {
        let page = match engine.range(&start, &end, PAGE) {
            Ok(p) => p,
            Err(e @ StoreError::Corrupt(_)) => {
                // The engine cannot read on from here (a block whose checksum fails):
                // what follows stays unchecked, which the report says.
                report.damaged.push(Damage {
                    key: format!(
                        "entries after {} (not read further)",
                        if start.is_empty() {
                            "the first".to_string()
                        } else {
                            super::kv::describe_key(&start[..start.len() - 1])
                        }
                    ),
                    problem: e.to_string(),
                });
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        let n = page.len();
        for (k, v) in &page {
            report.records += 1;
            if let Err(problem) = super::kv::check_record(k.as_ref(), v.as_ref()) {
                report.damaged.push(Damage {
                    key: super::kv::describe_key(k.as_ref()),
                    problem,
                });
            }
        }
        match page.last() {
            Some((k, _)) if n == PAGE => {
                start = k.as_ref().to_vec();
                start.push(0);
            }
            _ => return Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{Incident, IncidentKey};
    use crate::store::engine::{FjallEngine, Writes};
    use crate::store::kv::KvBackend;
    use crate::store::{Backend, Store};
    use std::sync::Arc;

    fn incident(reference: &str) -> Incident {
        let d = crate::loomis::message::Dispatch::sample(reference);
        Incident::new("servicenow", d, jiff::Timestamp::UNIX_EPOCH)
    }

    /// The stored bytes of `key`, damaged by `f`, written back through the engine.
    fn damage(engine: &FjallEngine, key: &[u8], f: impl Fn(&mut Vec<u8>)) {
        let mut v = engine.get(key).unwrap().expect("record present").to_vec();
        f(&mut v);
        let mut w = Writes::new();
        w.insert(key.to_vec(), Some(v));
        engine.commit(w).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_record_is_refused_as_corrupt_counted_and_named_by_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(EngineKind::Fjall, dir.path(), 1 << 20).unwrap();
        for r in ["INC1", "INC2", "INC3"] {
            let inc = incident(r);
            store.write(move |tx| tx.put_incident(&inc)).await.unwrap();
        }
        store.close().await.unwrap();
        drop(store);

        let engine = reopen(dir.path());
        let k1 = b"iservicenow\0INC1".to_vec();
        let k3 = b"iservicenow\0INC3".to_vec();
        // A record cut short, and one whose format tag was flipped.
        damage(&engine, &k1, |v| v.truncate(v.len() / 2));
        damage(&engine, &k3, |v| v[0] ^= 0xff);
        let report = walk(&engine).unwrap();
        let keys: Vec<&str> = report.damaged.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            ["incident servicenow/INC1", "incident servicenow/INC3"],
            "{report:?}"
        );
        assert!(report.records >= 3, "{report:?}");

        // The gateway's reads say Corrupt, naming the record, and readiness learns it.
        let backend: Arc<dyn Backend> = Arc::new(KvBackend::new(engine).unwrap());
        let store = Store::new(backend);
        assert_eq!(store.damaged_records(), 0);
        let err = store
            .incident(&IncidentKey::new("servicenow", "INC1"))
            .unwrap_err();
        assert!(!err.is_passing(), "{err}");
        assert!(
            err.to_string().contains("incident servicenow/INC1"),
            "{err}"
        );
        assert!(store
            .incident(&IncidentKey::new("servicenow", "INC2"))
            .unwrap()
            .is_some());
        // Met again: still one damaged record.
        let _ = store.incident(&IncidentKey::new("servicenow", "INC1"));
        assert_eq!(store.damaged_records(), 1);
        // A write that reads it fails the same way; others in its group commit.
        let k = IncidentKey::new("servicenow", "INC3");
        let err = store
            .write(move |tx| tx.incident(&k).map(drop))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(store.damaged_records(), 2);
        assert!(
            store.is_healthy(),
            "writes still work: {:?}",
            store.failure()
        );
        store.close().await.unwrap();
    }

    #[test]
    fn verify_refuses_a_directory_without_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no store at"), "{err}");
    }

    #[test]
    fn verify_pages_through_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        let mut w = Writes::new();
        for id in 0..2500u64 {
            let mut k = vec![b'o'];
            k.extend_from_slice(&id.to_be_bytes());
            // Every 1000th job is not a record at all.
            let v = if id % 1000 == 999 {
                b"\x02".to_vec()
            } else {
                crate::store::codec::encode_json(&serde_json::json!({})).unwrap()
            };
            w.insert(k, Some(v));
        }
        engine.commit(w).unwrap();
        let report = walk(&engine).unwrap();
        assert_eq!(report.records, 2500);
        // Every entry is checked: the empty JSON objects are not jobs either.
        assert_eq!(report.damaged.len(), 2500);
        assert_eq!(report.damaged[999].key, "job 999");
        assert_eq!(report.damaged[2499].key, "job 2499");
    }

    /// Opens the store directory again once the previous handle let go of its lock.
    fn reopen(path: &Path) -> FjallEngine {
        for _ in 0..100 {
            match FjallEngine::open(path, 1 << 20) {
                Ok(e) => return e,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        panic!("cannot reopen {}", path.display())
    }
}
