//! The embedded sled (0.34) backend.
//!
//! Everything lives in one sled tree, each table under a one-byte key prefix, so that a
//! whole group commit is one atomic `apply_batch` followed by one flush. Operations of a
//! group run one after another on the single writer thread, each against an overlay of
//! the writes before it; an operation that fails leaves no write behind.
//!
//! Tables and keys (`\0` separates parts; sequence numbers and ids are big-endian so that
//! key order is numeric order):
//! - `i` incidents: integration `\0` reference -> [`Incident`] (binary)
//! - `r` references: customer number `\0` reference -> integration `\0` reference
//! - `u` updates: integration `\0` sequence -> [`Update`] (binary)
//! - `m` meta: `seq\0` integration -> last sequence; `pruned\0` integration -> last
//!   sequence removed by retention; `id` -> id reservation
//! - `o` outbox: job id -> [`Job`] (binary)
//! - `x` dead letters: id -> [`DeadLetter`] JSON
//! - `p` orphans: id -> [`Orphan`] JSON
//!
//! Binary records and JSON records: see [`super::codec`].

use super::records::{DeadLetter, Job, Orphan};
use super::{Backend, Group, StoreError, Txn};
use crate::incident::{Incident, IncidentKey, Update};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

const INCIDENTS: u8 = b'i';
const REFERENCES: u8 = b'r';
const UPDATES: u8 = b'u';
const META: u8 = b'm';
const OUTBOX: u8 = b'o';
const DEAD_LETTERS: u8 = b'x';
const ORPHANS: u8 = b'p';

/// sled database with the gateway's table.
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
    ids: std::sync::Mutex<Ids>,
}

/// Ids are handed out from memory and reserved on disk in blocks: a group that used an
/// id beyond the reservation writes a new one (`m id`) in its own batch, so every id in
/// the store is below the stored reservation and a restart never hands one out twice.
/// Ids lost to a restart are a gap, which ids may have.
struct Ids {
    last: u64,
    reserved: u64,
}

/// How many ids one reservation covers.
const ID_BLOCK: u64 = 1024;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

fn key(table: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(table);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn incident_key(k: &IncidentKey) -> Vec<u8> {
    key(
        INCIDENTS,
        &[k.integration.as_bytes(), k.reference.as_bytes()],
    )
}

fn key_value(k: &IncidentKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.integration.len() + k.reference.len() + 1);
    v.extend_from_slice(k.integration.as_bytes());
    v.push(0);
    v.extend_from_slice(k.reference.as_bytes());
    v
}

fn parse_key(bytes: &[u8]) -> Result<IncidentKey, StoreError> {
    let s = std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let (i, r) = s
        .split_once('\0')
        .ok_or_else(|| StoreError::Corrupt("index entry without separator".into()))?;
    Ok(IncidentKey::new(i, r))
}

fn seq_key(integration: &str, seq: u64) -> Vec<u8> {
    key(UPDATES, &[integration.as_bytes(), &seq.to_be_bytes()])
}

fn id_key(table: u8, id: u64) -> Vec<u8> {
    key(table, &[&id.to_be_bytes()])
}

use super::codec::{decode, encode_binary, encode_json};

fn counter(v: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        v.try_into()
            .map_err(|_| StoreError::Corrupt("counter".into()))?,
    ))
}

impl SledBackend {
    /// Opens (or creates) the database at `path`. `cache_bytes` bounds sled's page cache.
    pub fn open(path: &std::path::Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the writer's explicit flush after every group; the
            // background flush only bounds how much un-acknowledged work a crash drops.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| {
                StoreError::Database(format!("cannot open store at {}: {e}", path.display()))
            })?;
        let tree = db.open_tree("gateway")?;
        let reserved = match tree.get(key(META, &[b"id"]))? {
            Some(v) => counter(&v)?,
            None => 0,
        };
        Ok(SledBackend {
            db,
            tree,
            ids: std::sync::Mutex::new(Ids {
                last: reserved,
                reserved,
            }),
        })
    }

    fn scan<T: DeserializeOwned>(&self, table: u8, limit: usize) -> Result<Vec<T>, StoreError> {
        self.tree
            .scan_prefix([table])
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }
}

/// Writes of a group not yet applied: key -> Some(value) or None (removed).
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A group commit in progress.
struct SledGroup<'a> {
    backend: &'a SledBackend,
    pending: Overlay,
}

/// One operation of a group: reads see its own writes, then the group's, then the tree.
struct SledTxn<'a> {
    tree: &'a sled::Tree,
    ids: &'a std::sync::Mutex<Ids>,
    group: &'a Overlay,
    writes: RefCell<Overlay>,
}

impl SledTxn<'_> {
    /// Looks `k` up (own writes, then the group's, then the tree) and hands the bytes to
    /// `f` without copying them.
    fn raw<R>(
        &self,
        k: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if let Some(v) = self.writes.borrow().get(k) {
            return f(v.as_deref());
        }
        if let Some(v) = self.group.get(k) {
            return f(v.as_deref());
        }
        let v = self.tree.get(k)?;
        f(v.as_deref())
    }
    fn set(&self, k: Vec<u8>, v: Vec<u8>) {
        self.writes.borrow_mut().insert(k, Some(v));
    }
    fn del(&self, k: Vec<u8>) {
        self.writes.borrow_mut().insert(k, None);
    }
    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StoreError> {
        self.raw(k, |v| v.map(decode).transpose())
    }
    fn put(&self, k: Vec<u8>, v: Result<Vec<u8>, StoreError>) -> Result<(), StoreError> {
        self.set(k, v?);
        Ok(())
    }
    fn get_key(&self, k: &[u8]) -> Result<Option<IncidentKey>, StoreError> {
        self.raw(k, |v| v.map(parse_key).transpose())
    }
    /// Increments the u64 counter at `k` and returns the new value.
    fn bump(&self, k: Vec<u8>) -> Result<u64, StoreError> {
        let next = self.raw(&k, |v| match v {
            Some(v) => Ok(counter(v)? + 1),
            None => Ok(1),
        })?;
        self.set(k, next.to_be_bytes().to_vec());
        Ok(next)
    }
}

impl Txn for SledTxn<'_> {
    fn incident(&self, k: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        self.get(&incident_key(k))
    }
    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.put(incident_key(&incident.key()), encode_binary(incident))
    }
    fn by_reference(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<IncidentKey>, StoreError> {
        self.get_key(&key(
            REFERENCES,
            &[customer.as_bytes(), reference.as_bytes()],
        ))
    }
    fn put_reference(
        &self,
        customer: &str,
        reference: &str,
        k: &IncidentKey,
    ) -> Result<(), StoreError> {
        self.set(
            key(REFERENCES, &[customer.as_bytes(), reference.as_bytes()]),
            key_value(k),
        );
        Ok(())
    }
    fn next_sequence(&self, integration: &str) -> Result<u64, StoreError> {
        self.bump(key(META, &[b"seq", integration.as_bytes()]))
    }
    fn put_update(&self, update: &Update) -> Result<(), StoreError> {
        self.put(
            seq_key(&update.integration, update.sequence),
            encode_binary(update),
        )
    }
    fn update(&self, integration: &str, sequence: u64) -> Result<Option<Update>, StoreError> {
        self.get(&seq_key(integration, sequence))
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        let mut ids = self.ids.lock().expect("id lock");
        ids.last += 1;
        Ok(ids.last)
    }
    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.get(&id_key(OUTBOX, id))
    }
    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(id_key(OUTBOX, job.id), encode_binary(job))
    }
    fn remove_job(&self, id: u64) -> Result<(), StoreError> {
        self.del(id_key(OUTBOX, id));
        Ok(())
    }
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.get(&id_key(DEAD_LETTERS, id))
    }
    fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.put(id_key(DEAD_LETTERS, dl.id), encode_json(dl))
    }
    fn remove_dead_letter(&self, id: u64) -> Result<(), StoreError> {
        self.del(id_key(DEAD_LETTERS, id));
        Ok(())
    }
    fn put_orphan(&self, orphan: &Orphan) -> Result<(), StoreError> {
        self.put(id_key(ORPHANS, orphan.id), encode_json(orphan))
    }
    fn remove_incident(&self, k: &IncidentKey) -> Result<(), StoreError> {
        self.del(incident_key(k));
        Ok(())
    }
    fn remove_reference(&self, customer: &str, reference: &str) -> Result<(), StoreError> {
        self.del(key(
            REFERENCES,
            &[customer.as_bytes(), reference.as_bytes()],
        ));
        Ok(())
    }
    fn remove_update(&self, integration: &str, sequence: u64) -> Result<(), StoreError> {
        self.del(seq_key(integration, sequence));
        Ok(())
    }
    fn remove_orphan(&self, id: u64) -> Result<(), StoreError> {
        self.del(id_key(ORPHANS, id));
        Ok(())
    }
    fn set_pruned(&self, integration: &str, sequence: u64) -> Result<(), StoreError> {
        self.set(
            key(META, &[b"pruned", integration.as_bytes()]),
            sequence.to_be_bytes().to_vec(),
        );
        Ok(())
    }
}

impl Group for SledGroup<'_> {
    fn run(&mut self, f: &dyn Fn(&dyn Txn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let txn = SledTxn {
            tree: &self.backend.tree,
            ids: &self.backend.ids,
            group: &self.pending,
            writes: RefCell::new(Overlay::new()),
        };
        f(&txn)?;
        let writes = txn.writes.into_inner();
        self.pending.extend(writes);
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        // Only this (the writer) thread hands out ids, so `last` cannot move under us.
        let reserve = {
            let ids = self.backend.ids.lock().expect("id lock");
            (ids.last > ids.reserved).then_some(ids.last + ID_BLOCK)
        };
        if let Some(r) = reserve {
            self.pending
                .insert(key(META, &[b"id"]), Some(r.to_be_bytes().to_vec()));
        }
        if !self.pending.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in self.pending {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.backend.tree.apply_batch(batch)?;
        }
        if let Some(r) = reserve {
            self.backend.ids.lock().expect("id lock").reserved = r;
        }
        self.backend.db.flush()?;
        Ok(())
    }
}

impl Backend for SledBackend {
    fn group(&self) -> Box<dyn Group + '_> {
        Box::new(SledGroup {
            backend: self,
            pending: Overlay::new(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn incident(&self, k: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        self.tree
            .get(incident_key(k))?
            .map(|v| decode(&v))
            .transpose()
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
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    fn incidents_after(
        &self,
        after: Option<&IncidentKey>,
        limit: usize,
    ) -> Result<Vec<Incident>, StoreError> {
        let start = match after {
            // The smallest key greater than `after`'s.
            Some(k) => {
                let mut s = incident_key(k);
                s.push(0);
                s
            }
            None => vec![INCIDENTS],
        };
        self.tree
            .range(start..vec![INCIDENTS + 1])
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    fn pruned_sequences(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.counters(b"pruned")
    }

    fn last_sequences(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.counters(b"seq")
    }

    fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.scan(OUTBOX, usize::MAX)
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.scan(DEAD_LETTERS, limit)
    }

    fn orphans(&self, limit: usize) -> Result<Vec<Orphan>, StoreError> {
        self.scan(ORPHANS, limit)
    }
}

impl SledBackend {
    /// The `m name\0 integration -> u64` counters, by integration.
    fn counters(&self, name: &[u8]) -> Result<HashMap<String, u64>, StoreError> {
        let prefix = key(META, &[name, b""]);
        let mut out = HashMap::new();
        for r in self.tree.scan_prefix(&prefix) {
            let (k, v) = r?;
            out.insert(
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                counter(&v)?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(backend: &SledBackend, n: usize) -> Vec<u64> {
        let out = RefCell::new(Vec::new());
        let mut group = backend.group();
        for _ in 0..n {
            group
                .run(&|txn| {
                    out.borrow_mut().push(txn.next_id()?);
                    Ok(())
                })
                .unwrap();
        }
        group.commit().unwrap();
        out.into_inner()
    }

    #[test]
    fn ids_increase_across_reopen_and_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for round in 0..3 {
            // sled's background threads may hold the previous handle's file lock for a
            // moment after it is dropped.
            let mut tries = 0;
            let backend = loop {
                match SledBackend::open(dir.path(), 1 << 20) {
                    Ok(b) => break b,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        eprintln!("reopen: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => panic!("cannot reopen the store: {e}"),
                }
            };
            // Cross a reservation block boundary in the middle round.
            let n = if round == 1 {
                ID_BLOCK as usize + 10
            } else {
                5
            };
            seen.extend(ids(&backend, n));
            backend.flush().unwrap();
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "ids must only grow: {seen:?}"
        );
    }

    #[test]
    fn records_from_a_failed_operation_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path(), 1 << 20).unwrap();
        let mut group = backend.group();
        let k = IncidentKey::new("servicenow", "INC1");
        let err = group.run(&|txn| {
            txn.put_reference("A1", "INC1", &k)?;
            Err(StoreError::Database("refused".into()))
        });
        assert!(err.is_err());
        group.commit().unwrap();
        let mut group = backend.group();
        group
            .run(&|txn| {
                assert_eq!(txn.by_reference("A1", "INC1")?, None);
                Ok(())
            })
            .unwrap();
    }
}
