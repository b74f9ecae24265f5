//! The embedded sled (0.34) backend.
//!
//! Trees and keys (`\0` separates parts; sequence numbers and ids are big-endian so that
//! key order is numeric order):
//! - `incidents`: integration `\0` reference -> [`Incident`] JSON
//! - `references`: customer number `\0` reference -> integration `\0` reference
//! - `incident_ids`: customer number `\0` Loomis IncidentId -> integration `\0` reference
//! - `updates`: integration `\0` sequence -> [`Update`] JSON
//! - `meta`: `seq\0` integration -> last sequence
//! - `outbox`: job id -> [`Job`] JSON
//! - `dead_letters`: id -> [`DeadLetter`] JSON
//! - `orphans`: id -> [`Orphan`] JSON

use super::records::{DeadLetter, Job, Orphan};
use super::{Backend, StoreError, Txn};
use crate::incident::{Incident, IncidentKey, Update};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::collections::HashMap;

const INCIDENTS: usize = 0;
const REFERENCES: usize = 1;
const INCIDENT_IDS: usize = 2;
const UPDATES: usize = 3;
const META: usize = 4;
const OUTBOX: usize = 5;
const DEAD_LETTERS: usize = 6;
const ORPHANS: usize = 7;
const TREE_NAMES: [&str; 8] = [
    "incidents",
    "references",
    "incident_ids",
    "updates",
    "meta",
    "outbox",
    "dead_letters",
    "orphans",
];

/// sled database with the gateway's trees.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn incident_key(key: &IncidentKey) -> Vec<u8> {
    pair(&key.integration, &key.reference)
}

fn parse_key(bytes: &[u8]) -> Result<IncidentKey, StoreError> {
    let s = std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let (i, r) = s
        .split_once('\0')
        .ok_or_else(|| StoreError::Corrupt("index entry without separator".into()))?;
    Ok(IncidentKey::new(i, r))
}

fn seq_key(integration: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(integration.len() + 9);
    k.extend_from_slice(integration.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SledBackend {
    /// Opens (or creates) the database at `path`. `cache_bytes` bounds sled's page cache.
    pub fn open(path: &std::path::Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the writer's explicit flush; the background flush
            // only bounds how much unflushed data a crash can drop before it was acked.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| {
                StoreError::Database(format!("cannot open store at {}: {e}", path.display()))
            })?;
        let trees = TREE_NAMES
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SledBackend { db, trees })
    }

    fn scan<T: DeserializeOwned>(&self, tree: usize, limit: usize) -> Result<Vec<T>, StoreError> {
        self.trees[tree]
            .iter()
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }
}

struct SledTxn<'a> {
    t: &'a [TransactionalTree],
}

fn txerr(e: sled::transaction::UnabortableTransactionError) -> StoreError {
    StoreError::Database(e.to_string())
}

impl SledTxn<'_> {
    fn get<T: DeserializeOwned>(&self, tree: usize, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.t[tree].get(key).map_err(txerr)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }
    fn put<T: Serialize>(&self, tree: usize, key: &[u8], v: &T) -> Result<(), StoreError> {
        self.t[tree].insert(key, encode(v)?).map_err(txerr)?;
        Ok(())
    }
    /// Increments the u64 counter at `key` in `meta` and returns the new value.
    fn bump(&self, key: &[u8]) -> Result<u64, StoreError> {
        let cur = match self.t[META].get(key).map_err(txerr)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("counter".into()))?,
            ),
            None => 0,
        };
        let next = cur + 1;
        self.t[META]
            .insert(key, &next.to_be_bytes())
            .map_err(txerr)?;
        Ok(next)
    }

    fn get_key(&self, tree: usize, key: &[u8]) -> Result<Option<IncidentKey>, StoreError> {
        match self.t[tree].get(key).map_err(txerr)? {
            Some(v) => Ok(Some(parse_key(&v)?)),
            None => Ok(None),
        }
    }
}

impl Txn for SledTxn<'_> {
    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        self.get(INCIDENTS, &incident_key(key))
    }
    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.put(
            INCIDENTS,
            &pair(&incident.integration, &incident.reference),
            incident,
        )
    }
    fn by_reference(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<IncidentKey>, StoreError> {
        self.get_key(REFERENCES, &pair(customer, reference))
    }
    fn put_reference(
        &self,
        customer: &str,
        reference: &str,
        key: &IncidentKey,
    ) -> Result<(), StoreError> {
        self.t[REFERENCES]
            .insert(pair(customer, reference), incident_key(key))
            .map_err(txerr)?;
        Ok(())
    }
    fn by_incident_id(
        &self,
        customer: &str,
        incident_id: &str,
    ) -> Result<Option<IncidentKey>, StoreError> {
        self.get_key(INCIDENT_IDS, &pair(customer, incident_id))
    }
    fn put_incident_id(
        &self,
        customer: &str,
        incident_id: &str,
        key: &IncidentKey,
    ) -> Result<(), StoreError> {
        self.t[INCIDENT_IDS]
            .insert(pair(customer, incident_id), incident_key(key))
            .map_err(txerr)?;
        Ok(())
    }
    fn next_sequence(&self, integration: &str) -> Result<u64, StoreError> {
        self.bump(&pair("seq", integration))
    }
    fn put_update(&self, update: &Update) -> Result<(), StoreError> {
        self.put(
            UPDATES,
            &seq_key(&update.integration, update.sequence),
            update,
        )
    }
    fn update(&self, integration: &str, sequence: u64) -> Result<Option<Update>, StoreError> {
        self.get(UPDATES, &seq_key(integration, sequence))
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        // A counter of our own: sled's generate_id may flush while the transaction holds
        // its locks.
        self.bump(b"id")
    }
    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.get(OUTBOX, &id.to_be_bytes())
    }
    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(OUTBOX, &job.id.to_be_bytes(), job)
    }
    fn remove_job(&self, id: u64) -> Result<(), StoreError> {
        self.t[OUTBOX].remove(&id.to_be_bytes()).map_err(txerr)?;
        Ok(())
    }
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.get(DEAD_LETTERS, &id.to_be_bytes())
    }
    fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.put(DEAD_LETTERS, &dl.id.to_be_bytes(), dl)
    }
    fn remove_dead_letter(&self, id: u64) -> Result<(), StoreError> {
        self.t[DEAD_LETTERS]
            .remove(&id.to_be_bytes())
            .map_err(txerr)?;
        Ok(())
    }
    fn put_orphan(&self, orphan: &Orphan) -> Result<(), StoreError> {
        self.put(ORPHANS, &orphan.id.to_be_bytes(), orphan)
    }
}

impl Backend for SledBackend {
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let res: Result<(), TransactionError<StoreError>> =
            self.trees.as_slice().transaction(|trees| {
                let txn = SledTxn { t: trees };
                f(&txn).map_err(ConflictableTransactionError::Abort)
            });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        match self.trees[INCIDENTS].get(incident_key(key))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn updates_between(
        &self,
        integration: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Update>, StoreError> {
        let start = seq_key(integration, after.saturating_add(1));
        let end = seq_key(integration, upto);
        self.trees[UPDATES]
            .range(start..=end)
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    fn last_sequences(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut out = HashMap::new();
        for r in self.trees[META].scan_prefix(b"seq\0") {
            let (k, v) = r?;
            let name = String::from_utf8_lossy(&k[4..]).into_owned();
            let seq = u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("sequence counter".into()))?,
            );
            out.insert(name, seq);
        }
        Ok(out)
    }

    fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.scan(OUTBOX, usize::MAX)
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.scan(DEAD_LETTERS, usize::MAX)
    }

    fn orphans(&self, limit: usize) -> Result<Vec<Orphan>, StoreError> {
        self.scan(ORPHANS, limit)
    }

    fn counts(&self) -> (usize, usize) {
        (self.trees[INCIDENTS].len(), self.trees[OUTBOX].len())
    }
}
