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
//! - `w` raw inputs: integration `\0` reference -> [`RawInput`] JSON (what the caller
//!   sent, bounded and redacted)
//!
//! Index keys for the console's search ([`super::query`]); their values are empty.
//! `time` is `created_at` in nanoseconds, as 8 big-endian bytes that sort newest first:
//! - `t` time `\0` integration `\0` reference
//! - `g` integration `\0` time `\0` reference
//! - `s` state (one byte) `\0` time `\0` integration `\0` reference
//! - `f` reference `\0` integration
//! - `l` Loomis IncidentId `\0` integration `\0` reference
//! - `v` updates of an incident: integration `\0` reference `\0` sequence
//! - `a` audit log: id -> [`AuditEntry`] JSON
//! - `k` index mark: integration `\0` reference -> state byte, IncidentId indexed (0/1):
//!   what the index holds for the incident, so a write changes only what moved without
//!   decoding the incident's previous record. `m index` marks a store whose incidents
//!   all have their keys (built once at open for a store written before them).
//!
//! Binary records and JSON records: see [`super::codec`].

use super::audit::AuditEntry;
use super::engine::{self, prefix_end, Engine, Entry, Writes};
use super::query::{self, Cursor, IncidentFilter, IncidentPage, RawInput};
use super::records::{DeadLetter, Job, Orphan};
use super::{Backend, Group, StoreError, Txn};
use crate::incident::{Incident, IncidentKey, State, Update};
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
const RAW_INPUTS: u8 = b'w';
const BY_TIME: u8 = b't';
const BY_INTEGRATION: u8 = b'g';
const BY_STATE: u8 = b's';
const BY_REFERENCE: u8 = b'f';
const BY_INCIDENT_ID: u8 = b'l';
const INDEX_MARKS: u8 = b'k';
const AUDIT: u8 = b'a';
const UPDATES_BY_INCIDENT: u8 = b'v';
/// The meta key saying every incident has its index keys.
const INDEXED: &[u8] = b"mindex";

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

fn raw_key(k: &IncidentKey) -> Vec<u8> {
    key(
        RAW_INPUTS,
        &[k.integration.as_bytes(), k.reference.as_bytes()],
    )
}

/// `created_at` as 8 bytes whose order is newest first.
fn time_bytes(t: jiff::Timestamp) -> [u8; 8] {
    let nanos = t.as_nanosecond().clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let ordered = (nanos as u64) ^ (1 << 63);
    (u64::MAX - ordered).to_be_bytes()
}

fn state_byte(s: State) -> u8 {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// What the index holds for one incident (stored under `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    state: u8,
    id_indexed: bool,
}

impl Mark {
    fn of(inc: &Incident) -> Self {
        Mark {
            state: state_byte(inc.state),
            id_indexed: inc.incident_id.is_some(),
        }
    }
    fn bytes(self) -> [u8; 2] {
        [self.state, self.id_indexed as u8]
    }
    fn parse(v: &[u8]) -> Result<Mark, StoreError> {
        match v {
            [state, id] if (*state as usize) < State::ALL.len() && *id <= 1 => Ok(Mark {
                state: *state,
                id_indexed: *id == 1,
            }),
            _ => Err(StoreError::Corrupt("index mark".into())),
        }
    }
}

fn state_key(inc: &Incident, state: u8) -> Vec<u8> {
    key(
        BY_STATE,
        &[
            &[state],
            &time_bytes(inc.created_at),
            inc.integration.as_bytes(),
            inc.reference.as_bytes(),
        ],
    )
}

/// Every index key of `inc` as `mark` describes it.
fn index_keys(inc: &Incident, mark: Mark) -> Vec<Vec<u8>> {
    let (i, r) = (inc.integration.as_bytes(), inc.reference.as_bytes());
    let t = time_bytes(inc.created_at);
    let mut keys = vec![
        key(BY_TIME, &[&t, i, r]),
        key(BY_INTEGRATION, &[i, &t, r]),
        key(BY_REFERENCE, &[r, i]),
        state_key(inc, mark.state),
    ];
    if let (true, Some(id)) = (mark.id_indexed, inc.incident_id.as_deref()) {
        keys.push(key(BY_INCIDENT_ID, &[id.as_bytes(), i, r]));
    }
    keys
}

/// The writes that move the index of `inc` from `old` (`None`: not indexed) to `new`.
/// Time, integration and reference never change; state and IncidentId may.
fn index_changes(inc: &Incident, old: Option<Mark>, new: Mark) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let Some(old) = old else {
        return index_keys(inc, new)
            .into_iter()
            .map(|k| (k, Some(Vec::new())))
            .collect();
    };
    let mut out = Vec::new();
    if old.state != new.state {
        out.push((state_key(inc, old.state), None));
        out.push((state_key(inc, new.state), Some(Vec::new())));
    }
    if !old.id_indexed && new.id_indexed {
        if let Some(id) = inc.incident_id.as_deref() {
            out.push((
                key(
                    BY_INCIDENT_ID,
                    &[
                        id.as_bytes(),
                        inc.integration.as_bytes(),
                        inc.reference.as_bytes(),
                    ],
                ),
                Some(Vec::new()),
            ));
        }
    }
    out
}

/// Reads the incident key and time at the end of an index key: `time \0 integration \0
/// reference` (`integration` given when the index key holds it before the time).
fn parse_indexed(rest: &[u8], integration: Option<&str>) -> Result<IncidentKey, StoreError> {
    let bad = || StoreError::Corrupt("index entry".into());
    let after_time = rest.get(9..).ok_or_else(bad)?;
    match integration {
        Some(i) => {
            let r = std::str::from_utf8(after_time).map_err(|_| bad())?;
            Ok(IncidentKey::new(i, r))
        }
        None => parse_key(after_time),
    }
}

fn update_of_incident_key(u: &Update) -> Vec<u8> {
    key(
        UPDATES_BY_INCIDENT,
        &[
            u.integration.as_bytes(),
            u.incident_reference.as_bytes(),
            &u.sequence.get().to_be_bytes(),
        ],
    )
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
        build_indexes(&engine)?;
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

/// Gives every incident its index keys once, for a store written before they existed
/// (marked done by `m index`). Runs at open, before the writer starts.
fn build_indexes<E: Engine>(engine: &E) -> Result<(), StoreError> {
    if engine.get(INDEXED)?.is_some() {
        return Ok(());
    }
    let mut start = vec![INCIDENTS];
    let mut count = 0usize;
    loop {
        let chunk = engine.range(&start, &[INCIDENTS + 1], 2048)?;
        let Some((last, _)) = chunk.last() else { break };
        start = last.as_ref().to_vec();
        start.push(0);
        let mut writes = Writes::new();
        for (k, v) in &chunk {
            let inc: Incident = decode_at(k.as_ref(), v.as_ref())?;
            let mark = Mark::of(&inc);
            for ik in index_keys(&inc, mark) {
                writes.insert(ik, Some(Vec::new()));
            }
            let ik = inc.key();
            writes.insert(
                key(
                    INDEX_MARKS,
                    &[ik.integration.as_bytes(), ik.reference.as_bytes()],
                ),
                Some(mark.bytes().to_vec()),
            );
            count += 1;
        }
        engine.commit(writes)?;
    }
    let mut start = vec![UPDATES];
    loop {
        let chunk = engine.range(&start, &[UPDATES + 1], 4096)?;
        let Some((last, _)) = chunk.last() else { break };
        start = last.as_ref().to_vec();
        start.push(0);
        let mut writes = Writes::new();
        for (k, v) in &chunk {
            let u: Update = decode_at(k.as_ref(), v.as_ref())?;
            writes.insert(update_of_incident_key(&u), Some(Vec::new()));
        }
        engine.commit(writes)?;
    }
    let mut done = Writes::new();
    done.insert(INDEXED.to_vec(), Some(1u64.to_be_bytes().to_vec()));
    engine.commit(done)?;
    engine.sync()?;
    if count > 0 {
        tracing::info!(
            incidents = count,
            "built the search index of an existing store"
        );
    }
    Ok(())
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
        RAW_INPUTS => format!("raw input {}", text(rest)),
        AUDIT => id("audit entry"),
        BY_TIME | BY_INTEGRATION | BY_STATE | BY_REFERENCE | BY_INCIDENT_ID
        | UPDATES_BY_INCIDENT => {
            format!("index {} {}", table as char, rest.escape_ascii())
        }
        INDEX_MARKS => format!("index mark {}", text(rest)),
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
        if matches!(k.first(), Some(&INCIDENTS | &INDEX_MARKS)) {
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
        let k = incident.key();
        let mark_key = key(
            INDEX_MARKS,
            &[k.integration.as_bytes(), k.reference.as_bytes()],
        );
        let old = self.raw(&mark_key, |v| v.map(Mark::parse).transpose())?;
        let new = Mark::of(incident);
        if old != Some(new) {
            for (kk, v) in index_changes(incident, old, new) {
                self.writes.borrow_mut().insert(kk, v);
            }
            self.set(mark_key, new.bytes().to_vec());
        }
        self.put(incident_key(&k), encode_binary(incident))
    }
    fn put_raw_input(&self, k: &IncidentKey, raw: &RawInput) -> Result<(), StoreError> {
        self.put(raw_key(k), encode_json(raw))
    }
    fn put_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.put(id_key(AUDIT, entry.id), encode_json(entry))
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
        self.set(update_of_incident_key(update), Vec::new());
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
        if let Some(inc) = self.incident(k)? {
            for kk in index_keys(&inc, Mark::of(&inc)) {
                self.del(kk);
            }
        }
        self.del(key(
            INDEX_MARKS,
            &[k.integration.as_bytes(), k.reference.as_bytes()],
        ));
        self.del(raw_key(k));
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
        if let Some(u) = self.update(integration, sequence)? {
            self.del(update_of_incident_key(&u));
        }
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
        // Incident records and their index marks: the next write of the incident reads
        // both.
        let incidents: Vec<(Vec<u8>, Option<Record>)> = self
            .pending
            .range(vec![INCIDENTS]..vec![INCIDENTS + 1])
            .chain(self.pending.range(vec![INDEX_MARKS]..vec![INDEX_MARKS + 1]))
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

    fn updates_of(&self, k: &IncidentKey, limit: usize) -> Result<Vec<Update>, StoreError> {
        let prefix = key(
            UPDATES_BY_INCIDENT,
            &[k.integration.as_bytes(), k.reference.as_bytes(), b""],
        );
        let engine = self.engine()?;
        let mut out = Vec::new();
        for (ik, _) in self.prefixed(&prefix, limit)? {
            let seq = counter(&ik.as_ref()[prefix.len()..])?;
            let sk = seq_key(&k.integration, seq);
            if let Some(v) = engine.get(&sk)? {
                out.push(decode_at(&sk, v.as_ref())?);
            }
        }
        Ok(out)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        // Few entries (people's actions): read them all, keep the newest.
        let mut all: Vec<AuditEntry> = self.scan(AUDIT, usize::MAX)?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    fn raw_input(&self, k: &IncidentKey) -> Result<Option<RawInput>, StoreError> {
        let k = raw_key(k);
        self.engine()?
            .get(&k)?
            .map(|v| decode_at(&k, v.as_ref()))
            .transpose()
    }

    fn incidents_page(
        &self,
        filter: &IncidentFilter,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<IncidentPage, StoreError> {
        // An exact lookup finds a handful of candidates: page them in memory.
        let exact = if let Some(r) = filter.reference.as_deref() {
            Some(match filter.integration.as_deref() {
                Some(i) => vec![IncidentKey::new(i, r)],
                None => self
                    .prefixed(&key(BY_REFERENCE, &[r.as_bytes(), b""]), 1024)?
                    .iter()
                    .map(|(k, _)| {
                        let i = &k.as_ref()[2 + r.len()..];
                        Ok(IncidentKey::new(
                            std::str::from_utf8(i)
                                .map_err(|_| StoreError::Corrupt("index entry".into()))?,
                            r,
                        ))
                    })
                    .collect::<Result<_, StoreError>>()?,
            })
        } else if let Some(id) = filter.incident_id.as_deref() {
            let prefix = key(BY_INCIDENT_ID, &[id.as_bytes(), b""]);
            Some(
                self.prefixed(&prefix, 1024)?
                    .iter()
                    .map(|(k, _)| parse_key(&k.as_ref()[prefix.len()..]))
                    .collect::<Result<_, StoreError>>()?,
            )
        } else {
            None
        };
        if let Some(keys) = exact {
            let mut found = Vec::new();
            for k in keys {
                found.extend(self.incident(&k)?);
            }
            return Ok(query::page_of(found, filter, cursor, limit));
        }
        // Otherwise walk the narrowest index newest first, from the cursor (or `until`)
        // to `since`, checking each incident against the whole filter.
        let (prefix, integration_in_key): (Vec<u8>, Option<&str>) =
            match (filter.state, filter.integration.as_deref()) {
                (Some(s), _) => (vec![BY_STATE, state_byte(s), 0], None),
                (None, Some(i)) => (key(BY_INTEGRATION, &[i.as_bytes(), b""]), Some(i)),
                (None, None) => (vec![BY_TIME], None),
            };
        let position = |t: jiff::Timestamp, k: Option<&IncidentKey>| {
            let mut p = prefix.clone();
            p.extend_from_slice(&time_bytes(t));
            if let Some(k) = k {
                p.push(0);
                if integration_in_key.is_none() {
                    p.extend_from_slice(k.integration.as_bytes());
                    p.push(0);
                }
                p.extend_from_slice(k.reference.as_bytes());
                // The smallest key after this one.
                p.push(0);
            }
            p
        };
        let mut start = match filter.until {
            Some(t) => position(t, None),
            None => prefix.clone(),
        };
        if let Some(c) = cursor {
            start = start.max(position(c.created_at, Some(&c.key)));
        }
        let end = match filter.since {
            // Keys of `since` itself sort before those of one nanosecond earlier.
            Some(t) => position(t - jiff::SignedDuration::from_nanos(1), None),
            None => prefix_end(&prefix).ok_or_else(|| StoreError::Corrupt("prefix".into()))?,
        };
        let engine = self.engine()?;
        let mut page = IncidentPage::default();
        let mut scanned = 0;
        while start < end {
            let chunk = engine.range(&start, &end, (limit * 2).clamp(64, 1024))?;
            let Some((final_key, _)) = chunk.last() else {
                return Ok(page);
            };
            start = final_key.as_ref().to_vec();
            start.push(0);
            for (k, _) in &chunk {
                let rest = &k.as_ref()[prefix.len()..];
                let ik = parse_indexed(rest, integration_in_key)?;
                scanned += 1;
                // The key names the integration: skip others without reading them.
                if filter
                    .integration
                    .as_deref()
                    .is_some_and(|i| ik.integration != i)
                {
                    if scanned >= query::SCAN_BUDGET {
                        // Resume after this entry: its time is in the key.
                        let t = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
                        let nanos = ((u64::MAX - t) ^ (1 << 63)) as i64;
                        page.next = Some(Cursor {
                            created_at: jiff::Timestamp::from_nanosecond(nanos as i128)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            key: ik,
                        });
                        return Ok(page);
                    }
                    continue;
                }
                let Some(inc) = self.incident(&ik)? else {
                    continue;
                };
                let here = Cursor::of(&inc);
                if filter.matches(&inc) {
                    page.incidents.push(inc);
                    if page.incidents.len() == limit {
                        page.next = Some(here);
                        return Ok(page);
                    }
                }
                if scanned >= query::SCAN_BUDGET {
                    page.next = Some(here);
                    return Ok(page);
                }
            }
        }
        Ok(page)
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
        Some(&RAW_INPUTS) => decode::<RawInput>(v).map(drop),
        Some(&AUDIT) => decode::<AuditEntry>(v).map(drop),
        Some(
            &BY_TIME | &BY_INTEGRATION | &BY_STATE | &BY_REFERENCE | &BY_INCIDENT_ID
            | &UPDATES_BY_INCIDENT,
        ) => {
            if v.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Corrupt("index entry with a value".into()))
            }
        }
        Some(&INDEX_MARKS) => Mark::parse(v).map(drop),
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

    fn at(inc: &mut Incident, secs: i64) {
        inc.created_at = jiff::Timestamp::from_second(secs).unwrap();
    }

    fn references(page: &IncidentPage) -> Vec<String> {
        page.incidents
            .iter()
            .map(|i| format!("{}/{}", i.integration, i.reference))
            .collect()
    }

    /// Every page of `filter`, `limit` at a time, joined.
    fn all_pages(backend: &dyn Backend, filter: &IncidentFilter, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = backend
                .incidents_page(filter, cursor.as_ref(), limit)
                .unwrap();
            out.extend(references(&page));
            match page.next {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    #[test]
    fn search_answers_from_the_indexes_like_a_scan_on_both_engines() {
        /// The default (scanning) implementation over the same tables, to compare with.
        struct Scan<'a>(&'a dyn Backend);
        impl Scan<'_> {
            fn page(&self, f: &IncidentFilter) -> Vec<String> {
                let all = self.0.incidents_after(None, usize::MAX).unwrap();
                references(&query::page_of(all, f, None, usize::MAX))
            }
        }
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let (backend, tables) = open_both(kind, dir.path());
            let mut group = backend.group();
            for n in 0..60i64 {
                let integration = if n % 3 == 0 { "sn" } else { "remedy" };
                let mut d = crate::loomis::message::Dispatch::sample(&format!("INC{n:03}"));
                d.subject = "x".into();
                let mut inc = Incident::new(integration, d, jiff::Timestamp::UNIX_EPOCH);
                // Several incidents share a second, so ties are ordered by key.
                at(&mut inc, 1_700_000_000 + n / 4);
                if n % 5 == 0 {
                    inc.state = State::Closed;
                    inc.incident_id = Some(format!("L{n}").into());
                }
                group.run(&|txn| txn.put_incident(&inc)).unwrap();
            }
            // The same reference in another integration.
            let mut twin = Incident::new(
                "sn",
                crate::loomis::message::Dispatch::sample("INC001"),
                jiff::Timestamp::UNIX_EPOCH,
            );
            at(&mut twin, 1_600_000_000);
            group.run(&|txn| txn.put_incident(&twin)).unwrap();
            group.commit().unwrap();

            let t = |s: i64| Some(jiff::Timestamp::from_second(s).unwrap());
            let filters = [
                IncidentFilter::default(),
                IncidentFilter {
                    integration: Some("sn".into()),
                    ..Default::default()
                },
                IncidentFilter {
                    state: Some(State::Closed),
                    ..Default::default()
                },
                IncidentFilter {
                    state: Some(State::Queued),
                    integration: Some("remedy".into()),
                    since: t(1_700_000_003),
                    until: t(1_700_000_010),
                    ..Default::default()
                },
                IncidentFilter {
                    reference: Some("INC001".into()),
                    ..Default::default()
                },
                IncidentFilter {
                    incident_id: Some("L15".into()),
                    ..Default::default()
                },
                IncidentFilter {
                    since: t(1_700_000_014),
                    ..Default::default()
                },
            ];
            let scan = Scan(&*backend);
            for f in &filters {
                let want = scan.page(f);
                assert!(
                    !want.is_empty(),
                    "{kind:?} {f:?}: the example finds something"
                );
                for limit in [1, 7, 100] {
                    assert_eq!(
                        all_pages(&*backend, f, limit),
                        want,
                        "{kind:?} {f:?} {limit}"
                    );
                }
            }
            let newest = backend
                .incidents_page(&IncidentFilter::default(), None, 2)
                .unwrap();
            assert_eq!(
                references(&newest),
                ["remedy/INC056", "remedy/INC058"],
                "{kind:?}"
            );
            assert_eq!(scan.page(&filters[4]), ["remedy/INC001", "sn/INC001"]);

            // A state change moves the incident in the state index; removal drops it
            // from every index.
            let k = IncidentKey::new("remedy", "INC001");
            let mut inc = backend.incident(&k).unwrap().unwrap();
            inc.state = State::Closed;
            inc.incident_id = Some("L1".into());
            put(&*backend, &inc).unwrap();
            let closed = IncidentFilter {
                state: Some(State::Closed),
                ..Default::default()
            };
            assert!(all_pages(&*backend, &closed, 5).contains(&"remedy/INC001".to_string()));
            let queued = IncidentFilter {
                state: Some(State::Queued),
                ..Default::default()
            };
            assert!(!all_pages(&*backend, &queued, 5).contains(&"remedy/INC001".to_string()));
            let by_id = IncidentFilter {
                incident_id: Some("L1".into()),
                ..Default::default()
            };
            assert_eq!(all_pages(&*backend, &by_id, 5), ["remedy/INC001"]);
            let mut group = backend.group();
            group.run(&|txn| txn.remove_incident(&k)).unwrap();
            group.commit().unwrap();
            for f in [&closed, &by_id, &IncidentFilter::default()] {
                assert!(!all_pages(&*backend, f, 50).contains(&"remedy/INC001".to_string()));
            }
            // Nothing of the removed incident is left in any table.
            let mut stray = Vec::new();
            for table in [
                BY_TIME,
                BY_INTEGRATION,
                BY_STATE,
                BY_REFERENCE,
                BY_INCIDENT_ID,
                INDEX_MARKS,
            ] {
                for k in tables.keys(table) {
                    let text = String::from_utf8_lossy(&k);
                    let of_it = text.contains("remedy\0INC001")
                        || text.contains("L1\0remedy")
                        || k == key(BY_REFERENCE, &[b"INC001", b"remedy"])
                        || (table == BY_INTEGRATION
                            && text.starts_with("gremedy")
                            && text.ends_with("\0INC001"));
                    if of_it {
                        stray.push(describe_key(&k));
                    }
                }
            }
            assert!(stray.is_empty(), "{kind:?}: {stray:?}");
        }
    }

    /// Raw access to a backend's tables, for tests.
    trait Tables {
        fn keys(&self, table: u8) -> Vec<Vec<u8>>;
        fn commit_raw(&self, writes: Writes);
    }

    impl<E: Engine> Tables for KvBackend<E> {
        fn keys(&self, table: u8) -> Vec<Vec<u8>> {
            self.prefixed(&[table], usize::MAX)
                .unwrap()
                .iter()
                .map(|(k, _)| k.as_ref().to_vec())
                .collect()
        }
        fn commit_raw(&self, writes: Writes) {
            let engine = self.engine().unwrap();
            engine.commit(writes).unwrap();
            engine.sync().unwrap();
        }
    }

    type Both = (Arc<dyn Backend>, Arc<dyn Tables>);

    /// A backend of `kind` in `dir`, as the store sees it and with its tables open.
    fn open_both(kind: EngineKind, dir: &std::path::Path) -> Both {
        fn both<E: Engine>(engine: E) -> Both {
            let b = Arc::new(KvBackend::new(engine).unwrap());
            (b.clone(), b)
        }
        for _ in 0..100 {
            let opened = match kind {
                EngineKind::Fjall => engine::FjallEngine::open(dir, 1 << 20).map(both),
                EngineKind::Sled => engine::SledEngine::open(dir, 1 << 20).map(both),
                EngineKind::Postgres => unreachable!("a key-value test opens fjall or sled"),
            };
            if let Ok(b) = opened {
                return b;
            }
            // The previous handle's background threads may still hold the lock.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("cannot open the {kind:?} store")
    }

    #[test]
    fn a_store_written_before_the_indexes_gets_them_at_open() {
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            {
                let (backend, tables) = open_both(kind, dir.path());
                for n in 0..3 {
                    put(&*backend, &incident(&format!("OLD{n}"), "x")).unwrap();
                }
                // Take away what the index wrote, as in a store of an earlier release.
                let mut writes = Writes::new();
                for table in [BY_TIME, BY_INTEGRATION, BY_STATE, BY_REFERENCE, INDEX_MARKS] {
                    for k in tables.keys(table) {
                        writes.insert(k, None);
                    }
                }
                writes.insert(INDEXED.to_vec(), None);
                tables.commit_raw(writes);
                assert!(backend
                    .incidents_page(&IncidentFilter::default(), None, 10)
                    .unwrap()
                    .incidents
                    .is_empty());
            }
            let (backend, _) = open_both(kind, dir.path());
            let page = backend
                .incidents_page(&IncidentFilter::default(), None, 10)
                .unwrap();
            assert_eq!(page.incidents.len(), 3, "{kind:?}");
        }
    }

    #[test]
    fn raw_input_is_kept_beside_its_incident_and_removed_with_it() {
        for kind in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let backend = super::open(kind, dir.path(), 1 << 20).unwrap();
            let k = IncidentKey::new("servicenow", "INC1");
            let raw = RawInput::new(
                "xml",
                b"<incident><number>INC1</number><password>pw1</password></incident>",
                jiff::Timestamp::UNIX_EPOCH,
            );
            let mut group = backend.group();
            group
                .run(&|txn| {
                    txn.put_incident(&incident("INC1", "x"))?;
                    txn.put_raw_input(&k, &raw)
                })
                .unwrap();
            group.commit().unwrap();
            let back = backend.raw_input(&k).unwrap().expect("kept");
            assert_eq!(back, raw, "{kind:?}");
            assert!(
                back.body.contains("<password>***</password>"),
                "{}",
                back.body
            );
            let mut group = backend.group();
            group.run(&|txn| txn.remove_incident(&k)).unwrap();
            group.commit().unwrap();
            assert_eq!(backend.raw_input(&k).unwrap(), None, "{kind:?}");
        }
    }

    #[test]
    fn a_rare_match_past_the_scan_budget_is_reached_by_following_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, _) = open_both(EngineKind::Fjall, dir.path());
        let mut group = backend.group();
        // The one incident of "rare" is the oldest; more than a budget of newer ones
        // of "busy" share its state.
        for n in 0..query::SCAN_BUDGET + 50 {
            let integration = if n == 0 { "rare" } else { "busy" };
            let mut inc = Incident::new(
                integration,
                crate::loomis::message::Dispatch::sample(&format!("R{n:06}")),
                jiff::Timestamp::UNIX_EPOCH,
            );
            at(&mut inc, 1_700_000_000 + n as i64);
            group.run(&|txn| txn.put_incident(&inc)).unwrap();
        }
        group.commit().unwrap();
        let filter = IncidentFilter {
            state: Some(State::Queued),
            integration: Some("rare".into()),
            ..Default::default()
        };
        let first = backend.incidents_page(&filter, None, 10).unwrap();
        assert!(first.incidents.is_empty(), "the budget ends the first page");
        let next = first.next.expect("a cursor to go on from");
        let second = backend.incidents_page(&filter, Some(&next), 10).unwrap();
        assert_eq!(references(&second), ["rare/R000000"]);
        assert!(second.next.is_none());
    }
}
