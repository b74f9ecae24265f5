//! The gateway's tables laid out in one ordered keyspace of a key-value [`Engine`].
//!
//! Everything lives in one keyspace, each table under a one-byte key prefix, so that a
//! whole group commit is one atomic batch followed by one sync. Operations of a
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

use super::engine::{self, prefix_end, Engine, Entry, Writes};
use super::records::{DeadLetter, Job, Orphan};
use super::{Backend, Group, StoreError, Txn};
use crate::incident::{Incident, IncidentKey, Update};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

const INCIDENTS: u8 = b'i';
const REFERENCES: u8 = b'r';
const UPDATES: u8 = b'u';
const META: u8 = b'm';
const OUTBOX: u8 = b'o';
const DEAD_LETTERS: u8 = b'x';
const ORPHANS: u8 = b'p';

/// The gateway's tables over an engine.
pub struct KvBackend<E: Engine> {
    /// The open engine; `None` only while [`Backend::recover`] reopens it (or failed to).
    /// Readers clone the handle and let the lock go; the writer takes the handle out to
    /// close the engine (its directory lock included) before opening it again.
    engine: std::sync::RwLock<Option<Arc<E>>>,
    /// How to open the engine again after a failed write; `None`: it cannot be.
    reopen: Option<Reopen<E>>,
    ids: std::sync::Mutex<Ids>,
    recent: std::sync::RwLock<Recent>,
}

/// Opens an engine again from its directory.
pub struct Reopen<E> {
    /// The store directory: a test write there tells whether the disk takes writes again.
    pub dir: std::path::PathBuf,
    pub open: Box<dyn Fn() -> Result<E, StoreError> + Send + Sync>,
}

/// Bytes the disk must take (written, synced and removed) before the engine is reopened:
/// reopening needs a little room (a new journal), and a disk still full would only fail
/// the reopen and leave reads without an engine meanwhile.
const REOPEN_ROOM: usize = 256 << 10;

/// How long the reopen waits for readers to let go of the old engine (they hold it for
/// one read; its directory lock goes with the last of them).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The incident records of the latest commits, as committed: a Dispatch attempt reads its
/// incident soon after intake wrote it, and Loomis's answer reads it again to settle, so
/// most reads of an incident follow a write of it by less than a delivery backlog. Only
/// the writer thread changes it, after its commit is durable (and it is emptied when a
/// commit fails, since the engine may then hold writes it does not); readers never fill
/// it, so it holds the last durable value of a record. (While a batch is being synced,
/// the engine may already show it and this the value before: nothing has acknowledged
/// the batch yet, so no reader can know to expect it.) Two generations of at most
/// [`RECENT_GENERATION_BYTES`] of keys and records each bound it, plus the maps'
/// own overhead; a miss reads the engine.
#[derive(Default)]
struct Recent {
    current: HashMap<Vec<u8>, Record>,
    current_bytes: usize,
    previous: HashMap<Vec<u8>, Record>,
}

/// A stored record's bytes, shared.
type Record = Arc<[u8]>;

/// Bytes of keys and records per generation of [`Recent`]: with incident records of
/// about 0.5 KiB, the last 8,000 to 16,000 incidents written.
const RECENT_GENERATION_BYTES: usize = 4 << 20;

impl Recent {
    fn get(&self, k: &[u8]) -> Option<Record> {
        self.current
            .get(k)
            .or_else(|| self.previous.get(k))
            .cloned()
    }

    fn put(&mut self, k: Vec<u8>, v: Option<Record>) {
        self.previous.remove(&k);
        if let Some(old) = self.current.remove(&k) {
            self.current_bytes -= k.len() + old.len();
        }
        if let Some(v) = v {
            let size = k.len() + v.len();
            if self.current_bytes + size > RECENT_GENERATION_BYTES {
                self.previous = std::mem::take(&mut self.current);
                self.current_bytes = 0;
            }
            self.current_bytes += size;
            self.current.insert(k, v);
        }
    }

    fn clear(&mut self) {
        self.current.clear();
        self.current_bytes = 0;
        self.previous.clear();
    }
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

impl<E: Engine> KvBackend<E> {
    /// The tables over `engine` (an opened database), which cannot be reopened: after a
    /// failed write it stays failed until the process restarts.
    pub fn new(engine: E) -> Result<Self, StoreError> {
        Self::build(engine, None)
    }

    /// The tables over `engine`, reopened by `reopen` after a failed write once the disk
    /// takes writes again.
    pub fn reopening(engine: E, reopen: Reopen<E>) -> Result<Self, StoreError> {
        Self::build(engine, Some(reopen))
    }

    fn build(engine: E, reopen: Option<Reopen<E>>) -> Result<Self, StoreError> {
        let reserved = reserved_ids(&engine)?;
        Ok(KvBackend {
            engine: std::sync::RwLock::new(Some(Arc::new(engine))),
            reopen,
            ids: std::sync::Mutex::new(Ids {
                last: reserved,
                reserved,
            }),
            recent: Default::default(),
        })
    }

    /// The open engine.
    fn engine(&self) -> Result<Arc<E>, StoreError> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::Database(
                    "the store is being reopened after failed writes; try again".into(),
                )
            })
    }

    /// All entries whose key starts with `prefix`, in key order, at most `limit`.
    fn prefixed(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry<E::Bytes>>, StoreError> {
        match prefix_end(prefix) {
            Some(end) => self.engine()?.range(prefix, &end, limit),
            None => Err(StoreError::Corrupt("unbounded key prefix".into())),
        }
    }

    fn scan<T: DeserializeOwned>(&self, table: u8, limit: usize) -> Result<Vec<T>, StoreError> {
        self.prefixed(&[table], limit)?
            .iter()
            .map(|(k, v)| decode_at(k.as_ref(), v.as_ref()))
            .collect()
    }
}

/// The id reservation stored in `engine`.
fn reserved_ids<E: Engine>(engine: &E) -> Result<u64, StoreError> {
    match engine.get(&key(META, &[b"id"]))? {
        Some(v) => counter(v.as_ref()),
        None => Ok(0),
    }
}

/// Decodes the record stored at `k`; damage names the record.
fn decode_at<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    decode(v).map_err(|e| match e {
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("{}: {why}", describe_key(k))),
        e => e,
    })
}

/// A stored key as an operator reads it: `incident servicenow/INC1`, `update
/// servicenow #12`, `job 40`; bytes that are not text are escaped.
pub fn describe_key(k: &[u8]) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\0', "/");
    let number = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
    let Some((&table, rest)) = k.split_first() else {
        return "empty key".into();
    };
    let id = |name: &str| match number(rest) {
        Some(n) => format!("{name} {n}"),
        None => format!("{name} {}", rest.escape_ascii()),
    };
    match table {
        INCIDENTS => format!("incident {}", text(rest)),
        REFERENCES => format!("reference {}", text(rest)),
        UPDATES if rest.len() > 9 => {
            let (name, seq) = rest.split_at(rest.len() - 9);
            match number(&seq[1..]) {
                Some(n) => format!("update {} #{n}", text(name)),
                None => format!("update {}", rest.escape_ascii()),
            }
        }
        META => format!("meta {}", text(rest)),
        OUTBOX => id("job"),
        DEAD_LETTERS => id("dead letter"),
        ORPHANS => id("orphan"),
        _ => format!("key {}", k.escape_ascii()),
    }
}

/// A group commit in progress.
struct KvGroup<'a, E: Engine> {
    backend: &'a KvBackend<E>,
    /// The engine for the whole group (`Err`: none is open, every operation fails).
    engine: Result<Arc<E>, StoreError>,
    pending: Writes,
}

/// One operation of a group: reads see its own writes, then the group's, then the engine.
struct KvTxn<'a, E: Engine> {
    engine: &'a E,
    recent: &'a std::sync::RwLock<Recent>,
    ids: &'a std::sync::Mutex<Ids>,
    group: &'a Writes,
    writes: RefCell<Writes>,
}

impl<E: Engine> KvTxn<'_, E> {
    /// Looks `k` up (own writes, then the group's, then the engine) and hands the bytes to
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
        if k.first() == Some(&INCIDENTS) {
            let recent = self.recent.read().expect("recent lock").get(k);
            if let Some(v) = recent {
                return f(Some(&v));
            }
        }
        let v = self.engine.get(k)?;
        f(v.as_ref().map(|b| b.as_ref()))
    }
    fn decoded<T: DeserializeOwned>(k: &[u8], v: Option<&[u8]>) -> Result<Option<T>, StoreError> {
        v.map(|v| decode_at(k, v)).transpose()
    }
    fn set(&self, k: Vec<u8>, v: Vec<u8>) {
        self.writes.borrow_mut().insert(k, Some(v));
    }
    fn del(&self, k: Vec<u8>) {
        self.writes.borrow_mut().insert(k, None);
    }
    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, StoreError> {
        self.raw(k, |v| Self::decoded(k, v))
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

impl<E: Engine> Txn for KvTxn<'_, E> {
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
            seq_key(&update.integration, update.sequence.get()),
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

impl<E: Engine> Group for KvGroup<'_, E> {
    fn run(&mut self, f: &dyn Fn(&dyn Txn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let engine = self.engine.as_ref().map_err(Clone::clone)?;
        let txn = KvTxn {
            engine: &**engine,
            recent: &self.backend.recent,
            ids: &self.backend.ids,
            group: &self.pending,
            writes: RefCell::new(Writes::new()),
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
        let incidents: Vec<(Vec<u8>, Option<Record>)> = self
            .pending
            .range(vec![INCIDENTS]..vec![INCIDENTS + 1])
            .map(|(k, v)| (k.clone(), v.as_deref().map(Arc::from)))
            .collect();
        let engine = self.engine.as_ref().map_err(Clone::clone)?;
        if let Err(e) = engine.commit(self.pending) {
            self.backend.recent.write().expect("recent lock").clear();
            return Err(e);
        }
        {
            let mut recent = self.backend.recent.write().expect("recent lock");
            for (k, v) in incidents {
                recent.put(k, v);
            }
        }
        if let Some(r) = reserve {
            self.backend.ids.lock().expect("id lock").reserved = r;
        }
        Ok(())
    }
}

impl<E: Engine> Backend for KvBackend<E> {
    fn group(&self) -> Box<dyn Group + '_> {
        Box::new(KvGroup {
            backend: self,
            engine: self.engine(),
            pending: Writes::new(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.engine()?.sync()
    }

    fn takes_writes(&self) -> Result<(), StoreError> {
        match &self.reopen {
            Some(reopen) => disk_takes_writes(&reopen.dir),
            None => Ok(()),
        }
    }

    fn recover(&self) -> Result<(), StoreError> {
        let Some(reopen) = &self.reopen else {
            return Err(StoreError::Database(
                "this store cannot be reopened in place; restart the gateway".into(),
            ));
        };
        let mut slot = self.engine.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let old = Arc::downgrade(&old);
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while old.strong_count() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // The cache may hold records of a batch that did not reach the disk.
        self.recent.write().expect("recent lock").clear();
        let engine = (reopen.open)()?;
        let reserved = reserved_ids(&engine)?;
        {
            // Keep every id handed out before (they may sit in records that did reach
            // the disk), and reserve again past them with the next commit.
            let mut ids = self.ids.lock().expect("id lock");
            ids.last = ids.last.max(reserved);
            ids.reserved = reserved;
        }
        *slot = Some(Arc::new(engine));
        Ok(())
    }

    fn incident(&self, k: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        let k = incident_key(k);
        let recent = self.recent.read().expect("recent lock").get(&k);
        if let Some(v) = recent {
            return decode_at(&k, &v).map(Some);
        }
        self.engine()?
            .get(&k)?
            .map(|v| decode_at(&k, v.as_ref()))
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
        // The smallest key past `upto`'s, so that `upto` itself is included.
        let mut end = seq_key(integration, upto);
        end.push(0);
        self.engine()?
            .range(&start, &end, limit)?
            .iter()
            .map(|(k, v)| decode_at(k.as_ref(), v.as_ref()))
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
        self.engine()?
            .range(&start, &[INCIDENTS + 1], limit)?
            .iter()
            .map(|(k, v)| decode_at(k.as_ref(), v.as_ref()))
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

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        Ok(self.prefixed(&[DEAD_LETTERS], usize::MAX)?.len() as u64)
    }

    fn orphans(&self, limit: usize) -> Result<Vec<Orphan>, StoreError> {
        self.scan(ORPHANS, limit)
    }
}

impl<E: Engine> KvBackend<E> {
    /// The `m name\0 integration -> u64` counters, by integration.
    fn counters(&self, name: &[u8]) -> Result<HashMap<String, u64>, StoreError> {
        let prefix = key(META, &[name, b""]);
        let mut out = HashMap::new();
        for (k, v) in self.prefixed(&prefix, usize::MAX)? {
            out.insert(
                String::from_utf8_lossy(&k.as_ref()[prefix.len()..]).into_owned(),
                counter(v.as_ref())?,
            );
        }
        Ok(out)
    }
}

/// Opens (or creates) the store at `path` with the engine `kind`, refusing a directory
/// that holds the other engine's files. `cache_bytes` bounds the engine's block cache.
pub fn open(
    kind: engine::EngineKind,
    path: &std::path::Path,
    cache_bytes: u64,
) -> Result<Arc<dyn Backend>, StoreError> {
    let found = engine::detect(path);
    if let Some(found) = found.filter(|f| *f != kind) {
        return Err(StoreError::Database(format!(
            "the store at {} was written by the {} engine, but store.engine is \"{}\": \
             set store.engine = \"{}\" to keep using it, or point store.path at another directory",
            path.display(),
            found.name(),
            kind.name(),
            found.name()
        )));
    }
    fn reopening<E: Engine>(
        path: &std::path::Path,
        cache_bytes: u64,
        open: fn(&std::path::Path, u64) -> Result<E, StoreError>,
    ) -> Result<Arc<dyn Backend>, StoreError> {
        let dir = path.to_path_buf();
        let reopen = Reopen {
            dir: dir.clone(),
            open: Box::new(move || open(&dir, cache_bytes)),
        };
        Ok(Arc::new(KvBackend::reopening(
            open(path, cache_bytes)?,
            reopen,
        )?))
    }
    match kind {
        engine::EngineKind::Fjall => reopening(path, cache_bytes, engine::FjallEngine::open),
        engine::EngineKind::Sled => reopening(path, cache_bytes, engine::SledEngine::open),
        engine::EngineKind::Postgres => Err(StoreError::Database(
            "engine \"postgres\" keeps no directory; open it with its URL".into(),
        )),
    }
}

/// Checks one stored entry as the gateway would read it: `Err(problem)` when its record
/// cannot be decoded, or its key belongs to no table.
pub(super) fn check_record(k: &[u8], v: &[u8]) -> Result<(), String> {
    let result = match k.first() {
        Some(&INCIDENTS) => decode::<Incident>(v).map(drop),
        Some(&REFERENCES) => parse_key(v).map(drop),
        Some(&UPDATES) => decode::<Update>(v).map(drop),
        Some(&META) => counter(v).map(drop),
        Some(&OUTBOX) => decode::<Job>(v).map(drop),
        Some(&DEAD_LETTERS) => decode::<DeadLetter>(v).map(drop),
        Some(&ORPHANS) => decode::<Orphan>(v).map(drop),
        _ => return Err("a key of no known table".into()),
    };
    result.map_err(|e| match e {
        StoreError::Corrupt(why) => why,
        e => e.to_string(),
    })
}

/// Whether the disk under `dir` takes [`REOPEN_ROOM`] bytes again: written, synced and
/// removed.
fn disk_takes_writes(dir: &std::path::Path) -> Result<(), StoreError> {
    use std::io::Write;
    let probe = dir.join(".write-probe");
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&vec![0u8; REOPEN_ROOM])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| {
        StoreError::Database(format!(
            "the disk under {} does not take writes yet: {e}",
            dir.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::{self, EngineKind};

    const ENGINES: [EngineKind; 2] = [EngineKind::Fjall, EngineKind::Sled];

    fn ids(backend: &dyn Backend, n: usize) -> Vec<u64> {
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
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let mut seen = Vec::new();
            for round in 0..3 {
                // An engine's background threads may hold the previous handle's file
                // lock for a moment after it is dropped.
                let mut tries = 0;
                let backend = loop {
                    match super::open(kind, dir.path(), 1 << 20) {
                        Ok(b) => break b,
                        Err(e) if tries < 100 => {
                            tries += 1;
                            eprintln!("reopen: {e}");
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => panic!("cannot reopen the {kind:?} store: {e}"),
                    }
                };
                // Cross a reservation block boundary in the middle round.
                let n = if round == 1 {
                    ID_BLOCK as usize + 10
                } else {
                    5
                };
                seen.extend(ids(&*backend, n));
                backend.flush().unwrap();
            }
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "{kind:?}: ids must only grow: {seen:?}"
            );
        }
    }

    #[test]
    fn records_from_a_failed_operation_are_not_written() {
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let backend = super::open(kind, dir.path(), 1 << 20).unwrap();
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
                    assert_eq!(txn.by_reference("A1", "INC1")?, None, "{kind:?}");
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn updates_between_includes_both_ends_and_stays_in_its_integration() {
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let backend = super::open(kind, dir.path(), 1 << 20).unwrap();
            let mut group = backend.group();
            for integration in ["a", "ab"] {
                for _ in 0..5 {
                    group
                        .run(&|txn| {
                            let sequence = txn.next_sequence(integration)?;
                            txn.put_update(&Update {
                                sequence: sequence.into(),
                                integration: integration.into(),
                                incident_reference: "INC1".into(),
                                incident_id: None,
                                customer_number: "A1".into(),
                                kind: crate::incident::UpdateKind::Ack,
                                state: crate::incident::State::Acknowledged,
                                response_code: None,
                                response_text: None,
                                sla_time: None,
                                event_time: None,
                                received_at: jiff::Timestamp::UNIX_EPOCH,
                            })
                        })
                        .unwrap();
                }
            }
            group.commit().unwrap();
            let seqs = |after, upto, limit| -> Vec<u64> {
                backend
                    .updates_between("a", after, upto, limit)
                    .unwrap()
                    .iter()
                    .map(|u| u.sequence.get())
                    .collect()
            };
            assert_eq!(seqs(1, 4, 10), vec![2, 3, 4], "{kind:?}");
            assert_eq!(seqs(0, u64::MAX, 10), vec![1, 2, 3, 4, 5], "{kind:?}");
            assert_eq!(seqs(0, 5, 2), vec![1, 2], "{kind:?}");
            let last = backend.last_sequences().unwrap();
            assert_eq!((last["a"], last["ab"]), (5, 5), "{kind:?}");
        }
    }

    fn incident(reference: &str, subject: &str) -> Incident {
        let mut d = crate::loomis::message::Dispatch::sample(reference);
        d.subject = subject.into();
        Incident::new("servicenow", d, jiff::Timestamp::UNIX_EPOCH)
    }

    fn put(backend: &dyn Backend, inc: &Incident) -> Result<(), StoreError> {
        let mut group = backend.group();
        group.run(&|txn| txn.put_incident(inc))?;
        group.commit()
    }

    /// What a read sees through the writer's transaction and through the backend.
    fn subjects(backend: &dyn Backend, reference: &str) -> (Option<String>, Option<String>) {
        let k = IncidentKey::new("servicenow", reference);
        let in_txn = RefCell::new(None);
        let mut group = backend.group();
        group
            .run(&|txn| {
                *in_txn.borrow_mut() = txn.incident(&k)?.map(|i| i.dispatch.subject);
                Ok(())
            })
            .unwrap();
        let direct = backend.incident(&k).unwrap().map(|i| i.dispatch.subject);
        (in_txn.into_inner(), direct)
    }

    #[test]
    fn recent_keeps_at_most_two_generations_of_bytes() {
        let mut r = Recent::default();
        let record: Record = vec![7u8; 1000].into();
        let per_generation = RECENT_GENERATION_BYTES / 1004;
        for i in 0..5 * per_generation {
            r.put(format!("k{i:06}").into_bytes(), Some(record.clone()));
            assert!(r.current_bytes <= RECENT_GENERATION_BYTES);
            assert!(r.current.len() + r.previous.len() <= 2 * per_generation + 2);
        }
        let last = format!("k{:06}", 5 * per_generation - 1).into_bytes();
        assert!(r.get(&last).is_some());
        assert!(r.get(b"k000000").is_none(), "the oldest generation is gone");
        // A replaced record counts once; a removed one is gone from both generations.
        let before = r.current_bytes;
        r.put(last.clone(), Some(vec![1u8; 10].into()));
        assert_eq!(r.current_bytes, before - 1000 + 10);
        assert_eq!(r.get(&last).as_deref(), Some(&[1u8; 10][..]));
        let older = format!("k{:06}", 5 * per_generation - per_generation - 10).into_bytes();
        assert!(r.previous.contains_key(&older));
        r.put(older.clone(), None);
        assert!(r.get(&older).is_none());
    }

    #[test]
    fn reads_see_the_latest_commit_across_the_recent_generations() {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            KvBackend::new(engine::FjallEngine::open(dir.path(), 1 << 20).unwrap()).unwrap();
        // Incidents written twice, then about one and a half generations of other
        // records: the generations turn over once, so the incidents' latest values are
        // in the older one, and the first fill records in the newer.
        let size = incident_key(&IncidentKey::new("servicenow", "FILL00000")).len()
            + encode_binary(&incident("FILL00000", "x")).unwrap().len();
        let fill = RECENT_GENERATION_BYTES / size * 3 / 2;
        for round in ["first", "second"] {
            for i in 0..10 {
                put(&backend, &incident(&format!("INC{i}"), round)).unwrap();
            }
        }
        let mut group = backend.group();
        for i in 0..fill {
            let inc = incident(&format!("FILL{i:05}"), "fill");
            group.run(&|txn| txn.put_incident(&inc)).unwrap();
        }
        group.commit().unwrap();
        let held = |reference: &str| {
            let k = incident_key(&IncidentKey::new("servicenow", reference));
            let r = backend.recent.read().unwrap();
            (r.previous.contains_key(&k), r.current.contains_key(&k))
        };
        let second = Some("second".to_string());
        for i in 0..10 {
            let reference = format!("INC{i}");
            assert_eq!(held(&reference), (true, false), "in the older generation");
            assert_eq!(
                subjects(&backend, &reference),
                (second.clone(), second.clone())
            );
        }
        // A removed incident is gone for both kinds of read, from either generation.
        let last = format!("FILL{:05}", fill - 1);
        assert_eq!(held(&last), (false, true));
        let mut group = backend.group();
        for reference in ["INC3", last.as_str()] {
            group
                .run(&|txn| txn.remove_incident(&IncidentKey::new("servicenow", reference)))
                .unwrap();
        }
        group.commit().unwrap();
        for reference in ["INC3", last.as_str()] {
            assert_eq!(held(reference), (false, false));
            assert_eq!(subjects(&backend, reference), (None, None));
        }
        assert_eq!(subjects(&backend, "INC4").1, second);
    }

    #[test]
    fn a_failed_commit_leaves_no_older_value_than_the_engines() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, fail) = crate::store::testing::Flaky::open_applying(dir.path());
        put(&*backend, &incident("INC1", "old")).unwrap();
        assert_eq!(subjects(&*backend, "INC1").1.as_deref(), Some("old"));
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(put(&*backend, &incident("INC1", "new")).is_err());
        // The engine shows the applied batch; so must every read.
        let new = Some("new".to_string());
        assert_eq!(subjects(&*backend, "INC1"), (new.clone(), new));
    }

    #[test]
    fn a_second_gateway_cannot_open_a_store_in_use() {
        for kind in [EngineKind::Fjall, EngineKind::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let first = super::open(kind, dir.path(), 1 << 20).unwrap();
            let err = super::open(kind, dir.path(), 1 << 20)
                .err()
                .unwrap_or_else(|| panic!("two writers on one {} directory", kind.name()))
                .to_string();
            assert!(err.contains("in use by another process"), "{err}");
            drop(first);
        }
    }

    #[test]
    fn a_directory_of_the_other_engine_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(engine::FjallEngine::open(dir.path(), 1 << 20).unwrap());
        assert_eq!(engine::detect(dir.path()), Some(EngineKind::Fjall));
        let err = super::open(EngineKind::Sled, dir.path(), 1 << 20)
            .err()
            .expect("sled must refuse a fjall store")
            .to_string();
        assert!(err.contains("fjall engine"), "{err}");
        assert!(err.contains("store.engine = \"fjall\""), "{err}");

        let dir = tempfile::tempdir().unwrap();
        drop(engine::SledEngine::open(dir.path(), 1 << 20).unwrap());
        assert_eq!(engine::detect(dir.path()), Some(EngineKind::Sled));
        assert!(super::open(EngineKind::Fjall, dir.path(), 1 << 20).is_err());
        // An empty directory is new: either engine may create its store there.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(engine::detect(empty.path()), None);
    }
}
