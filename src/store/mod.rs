//! Durable state: incidents, their indexes, the outbox, the per-integration update log,
//! dead letters and orphans.
//!
//! Only this module touches the database. Every write goes through [`Store::write`]: a
//! closure that runs as one atomic operation on the single writer thread. The writer
//! drains every request waiting in its queue, runs each (atomic on its own), then writes
//! them all as one atomic batch and flushes once (group commit) and only then answers the callers and
//! publishes what the batch produced (new outbox jobs, new update sequence numbers). So
//! nothing is acknowledged, streamed or delivered before it is on disk.
//!
//! The backend is a small trait ([`Backend`], [`Txn`]); [`kv::KvBackend`] implements it
//! over an ordered key-value [`engine`] (fjall by default, or sled).

pub mod audit;
pub mod codec;
pub mod copy;
pub mod engine;
mod health;
pub mod kv;
pub mod pg;
pub mod query;
pub mod records;
pub mod verify;

use crate::incident::{Incident, IncidentKey, Update};
use health::Health;
use query::{IncidentFilter, IncidentPage, RawInput};
use records::{DeadLetter, Job, Orphan, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

/// What can go wrong in the store. The edges answer a passing failure (`Database`,
/// `Closed`) with 503 / UNAVAILABLE, "send it again", and a damaged record (`Corrupt`)
/// with 500 / INTERNAL: sending again cannot help, an operator must restore the record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation (a full disk, an I/O error); passing.
    #[error("database error: {0}")]
    Database(String),
    /// A stored record (named in the text where known) cannot be read back: permanent
    /// damage, until an operator restores it.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
}

/// What the edges put in `Retry-After` (and gRPC's RetryInfo) when the store is
/// unavailable: long enough for a database failover or reconnection, short enough that
/// callers come back soon after it.
pub const RETRY_AFTER_SECS: u64 = 5;

/// One atomic unit of work against the backend. Writes become visible and durable only
/// if the closure returns `Ok`.
pub trait Txn {
    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError>;
    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError>;
    /// The incident Loomis knows as CustomerNumber + IncidentReference.
    fn by_reference(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<IncidentKey>, StoreError>;
    fn put_reference(
        &self,
        customer: &str,
        reference: &str,
        key: &IncidentKey,
    ) -> Result<(), StoreError>;
    /// Allocates the integration's next update sequence number (gap-free).
    fn next_sequence(&self, integration: &str) -> Result<u64, StoreError>;
    fn put_update(&self, update: &Update) -> Result<(), StoreError>;
    fn update(&self, integration: &str, sequence: u64) -> Result<Option<Update>, StoreError>;
    /// A monotonic id (jobs, dead letters, orphans); gaps are possible.
    fn next_id(&self) -> Result<u64, StoreError>;
    fn job(&self, id: u64) -> Result<Option<Job>, StoreError>;
    fn put_job(&self, job: &Job) -> Result<(), StoreError>;
    fn remove_job(&self, id: u64) -> Result<(), StoreError>;
    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;
    fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError>;
    fn remove_dead_letter(&self, id: u64) -> Result<(), StoreError>;
    fn put_orphan(&self, orphan: &Orphan) -> Result<(), StoreError>;
    /// Retention: removes an incident record (not its reference index entry).
    fn remove_incident(&self, key: &IncidentKey) -> Result<(), StoreError>;
    fn remove_reference(&self, customer: &str, reference: &str) -> Result<(), StoreError>;
    fn remove_update(&self, integration: &str, sequence: u64) -> Result<(), StoreError>;
    fn remove_orphan(&self, id: u64) -> Result<(), StoreError>;
    /// Records that updates of `integration` up to `sequence` were removed by retention.
    fn set_pruned(&self, integration: &str, sequence: u64) -> Result<(), StoreError>;
    /// Keeps what the caller sent for a new incident (its timeline shows it). Written in
    /// the incident's own transaction. A backend that keeps no raw input drops it: the
    /// timeline then shows the mapped Dispatch only.
    fn put_raw_input(&self, _key: &IncidentKey, _raw: &RawInput) -> Result<(), StoreError> {
        Ok(())
    }
    /// Appends to the operators' audit log. A backend without one refuses, so that no
    /// action is taken unrecorded.
    fn put_audit(&self, _entry: &audit::AuditEntry) -> Result<(), StoreError> {
        Err(StoreError::Database(
            "this store engine keeps no audit log; console actions are off".into(),
        ))
    }
}

/// A group commit: operations run one after another, each atomic on its own (an
/// operation that fails leaves no write behind and later ones do not see it); `commit`
/// then writes all of them atomically and makes them durable.
pub trait Group {
    /// Told, before the group's operations run, what they are expected to read: a
    /// backend behind a network may fetch (and lock) all of it at once instead of one
    /// round trip per read. Only a speed-up: a hint that is wrong or missing changes no
    /// result. An error here is the operations' to meet.
    fn prefetch(&mut self, _hints: &Hints) {}
    fn run(&mut self, f: &dyn Fn(&dyn Txn) -> Result<(), StoreError>) -> Result<(), StoreError>;
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a write is expected to read ([`Store::write_hinted`], [`Group::prefetch`]).
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// Incidents it reads (and may change).
    pub incidents: Vec<IncidentKey>,
    /// References it looks up: (CustomerNumber, IncidentReference).
    pub references: Vec<(String, String)>,
}

impl Hints {
    fn extend(&mut self, other: Hints) {
        self.incidents.extend(other.incidents);
        self.references.extend(other.references);
    }

    fn is_empty(&self) -> bool {
        self.incidents.is_empty() && self.references.is_empty()
    }
}

/// A database the gateway can keep its state in. Only the store's writer thread writes.
pub trait Backend: Send + Sync + 'static {
    /// Starts a group commit.
    fn group(&self) -> Box<dyn Group + '_>;
    /// Makes everything committed durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError>;
    /// Updates of `integration` with sequence in `(after, upto]`, at most `limit`.
    fn updates_between(
        &self,
        integration: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Update>, StoreError>;
    /// The highest sequence stored for each integration.
    fn last_sequences(&self) -> Result<HashMap<String, u64>, StoreError>;
    fn jobs(&self) -> Result<Vec<Job>, StoreError>;
    /// The oldest dead letters, at most `limit`.
    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
    fn orphans(&self, limit: usize) -> Result<Vec<Orphan>, StoreError>;
    /// Incidents in key order after `after` (from the first when `None`), at most `limit`.
    fn incidents_after(
        &self,
        after: Option<&IncidentKey>,
        limit: usize,
    ) -> Result<Vec<Incident>, StoreError>;
    /// For each integration, the last update sequence removed by retention.
    fn pruned_sequences(&self) -> Result<HashMap<String, u64>, StoreError>;
    /// One page of incidents matching `filter`, newest first, strictly after `cursor`
    /// (see [`query`] for the order and the contract). This default scans every
    /// incident; a backend with indexes answers from them.
    fn incidents_page(
        &self,
        filter: &IncidentFilter,
        cursor: Option<&query::Cursor>,
        limit: usize,
    ) -> Result<IncidentPage, StoreError> {
        let mut all = Vec::new();
        let mut after: Option<IncidentKey> = None;
        loop {
            let chunk = self.incidents_after(after.as_ref(), 1024)?;
            let Some(last) = chunk.last() else { break };
            after = Some(last.key());
            all.extend(chunk.into_iter().filter(|i| filter.matches(i)));
        }
        Ok(query::page_of(all, filter, cursor, limit))
    }
    /// The updates of the incident `key`, oldest first, at most `limit`. This default
    /// scans the integration's whole update log; a backend with an index answers from it.
    fn updates_of(&self, key: &IncidentKey, limit: usize) -> Result<Vec<Update>, StoreError> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let chunk = self.updates_between(&key.integration, after, u64::MAX, 4096)?;
            let Some(last) = chunk.last() else { break };
            after = last.sequence.get();
            out.extend(
                chunk
                    .into_iter()
                    .filter(|u| u.incident_reference == key.reference),
            );
        }
        out.truncate(limit);
        Ok(out)
    }
    /// The newest `limit` entries of the audit log, newest first.
    fn audit_log(&self, _limit: usize) -> Result<Vec<audit::AuditEntry>, StoreError> {
        Ok(Vec::new())
    }
    /// What the caller sent for the incident `key`, if kept ([`Txn::put_raw_input`]).
    fn raw_input(&self, _key: &IncidentKey) -> Result<Option<RawInput>, StoreError> {
        Ok(None)
    }
    /// How many dead letters are stored (the `gateway_dead_letters` gauge).
    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        Ok(self.dead_letters(usize::MAX)?.len() as u64)
    }
    /// Brings the backend back after a commit or flush failed, so that it accepts writes
    /// again without a restart. The writer calls it before the next group commit after
    /// a failure, at most once per [`RECOVERY_INTERVAL`] (at once when shutting down), and
    /// answers that group with the error while it fails.
    ///
    /// What a backend must do: return `Ok` only once (1) it accepts writes again and (2)
    /// what it shows equals what is durable. A failed commit may have left part of a
    /// batch visible, or, as fjall and sled do after a failed write or fsync, the engine
    /// refuses every later write (the kernel may have dropped the unwritten pages): an
    /// embedded engine is closed and opened again from its files, which recovers exactly
    /// what reached the disk. A backend whose failed commit leaves nothing behind (a SQL
    /// transaction rolled back) only checks that it can reach its database again. After
    /// `Ok`, the store reads the update sequences and the outbox again, since a batch
    /// answered with an error may still have become durable.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether the medium takes writes again, asked before each [`Backend::recover`]:
    /// an embedded engine writes and syncs a test file in its directory. While it
    /// answers `Err` the store is waiting for room (a full disk), which a restart would
    /// not mend, so liveness keeps passing. A backend with no such test says `Ok`.
    fn takes_writes(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether other processes write the same database (PostgreSQL): the store then
    /// follows the update sequences they commit, not only its own.
    fn shared(&self) -> bool {
        false
    }
    /// Whether this instance works `job` now. On a shared database a job is worked by
    /// the instance holding its lane, and only while the job is still in the outbox.
    fn claim_work(&self, _job: &Job) -> Work {
        Work::Mine { uncertain: false }
    }
    /// On a shared database: jobs of this instance's lanes that it has not been handed
    /// yet (committed by other instances, or of lanes it just took over).
    fn new_jobs(&self) -> Result<Vec<Job>, StoreError> {
        Ok(Vec::new())
    }
    /// Whether this instance runs the cluster's single tasks (retention).
    fn leads(&self) -> bool {
        true
    }
    /// Called once the store is closed: a shared backend gives up its claims, so that
    /// other instances take its work over at once instead of after the lease.
    fn shut_down(&self) {}
}

/// Whether an instance should work a job it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Work it. `uncertain`: another holder of its lane (a dead or stopped instance) may
    /// have been sending it, so a Dispatch may already be at Loomis.
    Mine { uncertain: bool },
    /// Another instance works it (or it is done): drop it.
    Elsewhere,
    /// A job of the same incident stands before it and has not arrived yet (another
    /// instance committed it): try again shortly, after it.
    Later,
}

/// How often a store on a shared database reads the update sequences other instances
/// committed (streams on this instance are woken by it).
pub const SHARED_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The shortest time between two attempts to [`Backend::recover`] while writes fail:
/// meanwhile writes are refused at once, with the reason, instead of each waiting for
/// an engine that cannot take them.
pub const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a committed batch produced, published after its flush.
#[derive(Default)]
struct Effects {
    jobs: Vec<Job>,
    watermarks: HashMap<String, u64>,
}

/// The transaction handle given to [`Store::write`] closures: the backend's [`Txn`] plus
/// bookkeeping of what must be published once the write is durable.
pub struct Tx<'a> {
    inner: &'a dyn Txn,
    effects: std::cell::RefCell<Effects>,
}

impl<'a> std::ops::Deref for Tx<'a> {
    type Target = dyn Txn + 'a;
    fn deref(&self) -> &Self::Target {
        self.inner
    }
}

impl Tx<'_> {
    /// Queues a job: stored now, handed to its scheduler once durable.
    pub fn enqueue(&self, job: Job) -> Result<(), StoreError> {
        self.inner.put_job(&job)?;
        self.effects.borrow_mut().jobs.push(job);
        Ok(())
    }

    /// Stores an update: streamed to watchers once durable.
    pub fn append_update(&self, update: &Update) -> Result<(), StoreError> {
        self.inner.put_update(update)?;
        let mut e = self.effects.borrow_mut();
        let w = e.watermarks.entry(update.integration.clone()).or_insert(0);
        *w = (*w).max(update.sequence.get());
        Ok(())
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Operation = Box<dyn FnOnce(&mut dyn Group, &mut Effects) -> Completion + Send>;

/// One write waiting for the writer: what it will read, and the operation.
struct WriteOp {
    hints: Hints,
    run: Operation,
}

/// Counters of the group commit, for the benchmark and `/metrics`.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub flushes: AtomicU64,
}

/// The per-integration high-water mark of durable update sequences.
#[derive(Default)]
pub struct Watermarks {
    map: RwLock<HashMap<String, watch::Sender<u64>>>,
}

impl Watermarks {
    fn sender(&self, integration: &str) -> watch::Sender<u64> {
        if let Some(s) = self.map.read().expect("watermark lock").get(integration) {
            return s.clone();
        }
        let mut map = self.map.write().expect("watermark lock");
        map.entry(integration.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// The last durable sequence of `integration`.
    pub fn current(&self, integration: &str) -> u64 {
        match self.map.read().expect("watermark lock").get(integration) {
            Some(s) => *s.borrow(),
            None => 0,
        }
    }

    /// The last durable sequence of every integration.
    pub fn all(&self) -> HashMap<String, u64> {
        self.map
            .read()
            .expect("watermark lock")
            .iter()
            .map(|(k, s)| (k.clone(), *s.borrow()))
            .collect()
    }

    /// Follows the last durable sequence of `integration`.
    pub fn subscribe(&self, integration: &str) -> watch::Receiver<u64> {
        self.sender(integration).subscribe()
    }

    fn advance(&self, integration: &str, seq: u64) {
        self.sender(integration).send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }
}

/// The gateway's handle to durable state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    writer: mpsc::UnboundedSender<WriteOp>,
    watermarks: Arc<Watermarks>,
    job_sinks: Arc<Mutex<HashMap<Target, mpsc::UnboundedSender<Job>>>>,
    stats: Arc<CommitStats>,
    health: Arc<Health>,
    writer_done: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    closing: Arc<AtomicBool>,
    /// Per integration, the last update sequence retention may have removed.
    pruned: Arc<RwLock<HashMap<String, u64>>>,
}

/// The most write requests one group commit takes; more wait for the next flush.
const MAX_BATCH: usize = 4096;

impl Store {
    /// Opens (or creates) the embedded store at `path` with the engine `kind`.
    pub fn open(
        kind: engine::EngineKind,
        path: &std::path::Path,
        cache_bytes: u64,
    ) -> Result<Store, StoreError> {
        Ok(Store::new(kv::open(kind, path, cache_bytes)?))
    }

    /// Opens the store the configuration describes: the embedded engine's directory, or
    /// the PostgreSQL database at `url` (the value of `store.url_env`).
    pub fn open_config(
        section: &crate::config::StoreSection,
        url: Option<&crate::auth::Secret>,
    ) -> Result<Store, StoreError> {
        if section.engine != engine::EngineKind::Postgres {
            return Store::open_configured(section);
        }
        let url = url.ok_or_else(|| {
            StoreError::Database("engine \"postgres\" needs store.url_env".into())
        })?;
        let backend = pg::PgBackend::open(pg::PgSettings {
            url: url.expose().to_string(),
            pool_size: section.pool_size,
            statement_timeout: std::time::Duration::from_millis(section.statement_timeout_ms),
            lease: std::time::Duration::from_secs(section.lease_secs),
        })?;
        Ok(Store::new(Arc::new(backend)))
    }

    /// Opens the store `[store]` describes, creating its directory if needed.
    pub fn open_configured(section: &crate::config::StoreSection) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&section.path).map_err(|e| {
            StoreError::Database(format!(
                "cannot create store directory {}: {e}",
                section.path.display()
            ))
        })?;
        Store::open(section.engine, &section.path, section.cache_mb << 20)
    }

    /// Starts the writer thread over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        let (tx, rx) = mpsc::unbounded_channel::<WriteOp>();
        let watermarks = Arc::new(Watermarks::default());
        if let Ok(last) = backend.last_sequences() {
            for (integration, seq) in last {
                watermarks.advance(&integration, seq);
            }
        }
        let pruned = Arc::new(RwLock::new(backend.pruned_sequences().unwrap_or_default()));
        let job_sinks: Arc<Mutex<HashMap<Target, mpsc::UnboundedSender<Job>>>> = Arc::default();
        let stats = Arc::new(CommitStats::default());
        let health = Arc::new(Health::new());
        let closing = Arc::new(AtomicBool::new(false));
        let handle = {
            let closing = closing.clone();
            let backend = backend.clone();
            let watermarks = watermarks.clone();
            let job_sinks = job_sinks.clone();
            let stats = stats.clone();
            let health = health.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || {
                    writer_loop(rx, backend, watermarks, job_sinks, stats, health, closing)
                })
                .expect("spawn store writer thread")
        };
        if backend.shared() {
            follow_shared(
                Arc::downgrade(&backend),
                Arc::downgrade(&watermarks),
                Arc::downgrade(&pruned),
                Arc::downgrade(&job_sinks),
                closing.clone(),
            );
        }
        Store {
            backend,
            writer: tx,
            watermarks,
            job_sinks,
            stats,
            health,
            writer_done: Arc::new(Mutex::new(Some(handle))),
            closing,
            pruned,
        }
    }

    /// Runs `f` as one transaction and returns its result once it is flushed to disk.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_hinted(Hints::default(), f).await
    }

    /// [`Store::write`], saying what `f` is expected to read, so that a networked
    /// backend fetches the reads of a whole group at once ([`Group::prefetch`]).
    pub async fn write_hinted<T, F>(&self, hints: Hints, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<Result<T, StoreError>>();
        let op: Operation = Box::new(move |group: &mut dyn Group, effects: &mut Effects| {
            let out = std::cell::RefCell::new(None);
            let tx_effects = std::cell::RefCell::new(Effects::default());
            let res = group.run(&|txn| {
                let tx = Tx {
                    inner: txn,
                    effects: std::cell::RefCell::new(Effects::default()),
                };
                let v = f(&tx)?;
                *out.borrow_mut() = Some(v);
                *tx_effects.borrow_mut() = tx.effects.into_inner();
                Ok(())
            });
            let result = match res {
                Ok(()) => {
                    let e = tx_effects.into_inner();
                    effects.jobs.extend(e.jobs);
                    for (k, v) in e.watermarks {
                        let w = effects.watermarks.entry(k).or_insert(0);
                        *w = (*w).max(v);
                    }
                    out.into_inner().ok_or_else(|| {
                        StoreError::Database("transaction produced no result".into())
                    })
                }
                Err(e) => Err(e),
            };
            Box::new(move |flushed: Result<(), StoreError>| {
                let _ = reply.send(flushed.and(result));
            })
        });
        self.writer
            .send(WriteOp { hints, run: op })
            .map_err(|_| StoreError::Closed)?;
        self.seen(rx.await.map_err(|_| StoreError::Closed)?)
    }

    /// Passes `r` on, noting a damaged record it met (counted, logged, readiness).
    fn seen<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.health.saw(e);
            if matches!(e, StoreError::Database(_)) && self.backend.shared() {
                // A shared database that cannot be read cannot be written either:
                // unready until a write (the probe's, at the latest) succeeds, and
                // liveness passes meanwhile, since a restart would not bring it back.
                self.health.write_failed(e, true);
                self.health.waiting_for_room(true);
            }
        }
        r
    }

    /// Reads an incident as last committed.
    pub fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        self.seen(self.backend.incident(key))
    }

    /// Durable updates of `integration` after `after`, at most `limit`.
    pub fn updates_after(
        &self,
        integration: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Update>, StoreError> {
        let upto = self.watermarks.current(integration);
        if upto <= after {
            return Ok(Vec::new());
        }
        self.seen(
            self.backend
                .updates_between(integration, after, upto, limit),
        )
    }

    /// One durable update.
    pub fn update(&self, integration: &str, sequence: u64) -> Result<Option<Update>, StoreError> {
        Ok(self
            .updates_after(integration, sequence.saturating_sub(1), 1)?
            .into_iter()
            .find(|u| u.sequence.get() == sequence))
    }

    /// The last update sequence of `integration` that retention may have removed (0: none).
    pub fn pruned_through(&self, integration: &str) -> u64 {
        self.pruned
            .read()
            .expect("pruned lock")
            .get(integration)
            .copied()
            .unwrap_or(0)
    }

    /// Announces that updates of `integration` up to `sequence` are about to be removed,
    /// before they are: a reader that then misses one knows why.
    pub fn raise_pruned(&self, integration: &str, sequence: u64) {
        let mut map = self.pruned.write().expect("pruned lock");
        let v = map.entry(integration.to_string()).or_insert(0);
        *v = (*v).max(sequence);
    }

    /// The last durable sequence of every integration that has updates.
    pub fn last_sequences(&self) -> HashMap<String, u64> {
        self.watermarks.all()
    }

    /// Incidents in key order after `after`, at most `limit` (retention's scan).
    pub fn incidents_after(
        &self,
        after: Option<&IncidentKey>,
        limit: usize,
    ) -> Result<Vec<Incident>, StoreError> {
        self.seen(self.backend.incidents_after(after, limit))
    }

    /// One page of incidents matching `filter`, newest first, after `cursor`; at most
    /// `limit` (capped at [`query::MAX_PAGE`]).
    pub fn incidents_page(
        &self,
        filter: &IncidentFilter,
        cursor: Option<&query::Cursor>,
        limit: usize,
    ) -> Result<IncidentPage, StoreError> {
        let limit = limit.clamp(1, query::MAX_PAGE);
        self.seen(self.backend.incidents_page(filter, cursor, limit))
    }

    /// The updates of the incident `key`, oldest first, at most `limit`.
    pub fn updates_of(&self, key: &IncidentKey, limit: usize) -> Result<Vec<Update>, StoreError> {
        self.seen(self.backend.updates_of(key, limit))
    }

    /// The newest `limit` operator actions, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<audit::AuditEntry>, StoreError> {
        self.seen(self.backend.audit_log(limit))
    }

    /// What the caller sent for the incident `key`, if kept.
    pub fn raw_input(&self, key: &IncidentKey) -> Result<Option<RawInput>, StoreError> {
        self.seen(self.backend.raw_input(key))
    }

    /// Follows the last durable update sequence of `integration`.
    pub fn watch_sequence(&self, integration: &str) -> watch::Receiver<u64> {
        self.watermarks.subscribe(integration)
    }

    /// Every job still in the outbox (for schedulers starting up).
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.seen(self.backend.jobs())
    }

    /// The oldest dead letters, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.seen(self.backend.dead_letters(limit))
    }

    /// How many dead letters are stored.
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        self.seen(self.backend.dead_letter_count())
    }

    pub fn orphans(&self, limit: usize) -> Result<Vec<Orphan>, StoreError> {
        self.seen(self.backend.orphans(limit))
    }

    /// Routes jobs for `target` to a scheduler once they are durable.
    pub fn attach_jobs(&self, target: Target, sink: mpsc::UnboundedSender<Job>) {
        self.job_sinks
            .lock()
            .expect("job sink lock")
            .insert(target, sink);
    }

    /// Whether this instance works `job` (see [`Backend::claim_work`]).
    pub fn claim_work(&self, job: &Job) -> Work {
        self.backend.claim_work(job)
    }

    /// Whether this instance runs the cluster's single tasks (retention): always on an
    /// embedded store, one instance at a time on a shared database.
    pub fn leads(&self) -> bool {
        self.backend.leads()
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// False once a write has failed, until one succeeds again: readiness reports it and
    /// gRPC health says NOT_SERVING.
    pub fn is_healthy(&self) -> bool {
        self.failing_for().is_none()
    }

    /// How long writes have been failing (`None` while they succeed).
    pub fn failing_for(&self) -> Option<std::time::Duration> {
        self.health.failing_for()
    }

    /// Why writes are failing, with the error that began it (`None` while they succeed).
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Whether writes fail because the disk has no room (the last attempt to recover
    /// found it still full): passing once space is freed, which a restart would not
    /// hasten, so liveness does not fail for it.
    pub fn is_waiting_for_room(&self) -> bool {
        self.health.is_waiting_for_room()
    }

    /// How many distinct damaged records reads and writes have met since start: any
    /// makes readiness fail, since requests needing them fail until an operator acts.
    pub fn damaged_records(&self) -> usize {
        self.health.damaged()
    }

    /// While writes fail, tries an empty one every `every` until `shutdown`, so that the
    /// engine is reopened and health turns back once the disk has room, without waiting
    /// for traffic.
    pub async fn probe_while_failing(
        self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.is_healthy() {
                let _ = self.write(|_tx| Ok(())).await;
            }
        }
    }

    /// Stops the writer after it has committed and flushed everything queued before,
    /// and waits for its thread to end. Writes after this fail with `Closed`. The error
    /// is the last flush's, if it failed.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.closing.store(true, Ordering::SeqCst);
        // A last (empty) write wakes the writer; it exits after that batch's flush.
        let last = self.write(|_tx| Ok(())).await;
        let handle = self.writer_done.lock().expect("writer handle lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let flushed = match last {
            Err(StoreError::Closed) | Ok(()) => self.backend.flush(),
            Err(e) => Err(e),
        };
        self.backend.shut_down();
        // Name the cause, not only the last echo of it (fjall says "poisoned").
        flushed.map_err(|e| match (self.health.failure(), e) {
            (Some(why), StoreError::Database(last)) => {
                StoreError::Database(format!("{why} (at shutdown: {last})"))
            }
            (_, e) => e,
        })
    }
}

/// On a shared database, reads the update sequences (and retention's marks) that any
/// instance committed, every [`SHARED_POLL`], and moves the watermarks: the table is the
/// truth, and a counter row is only raised in the commit that stores its updates, so every
/// update up to it is durable. Ends with the store.
fn follow_shared(
    backend: std::sync::Weak<dyn Backend>,
    watermarks: std::sync::Weak<Watermarks>,
    pruned: std::sync::Weak<RwLock<HashMap<String, u64>>>,
    job_sinks: std::sync::Weak<Mutex<HashMap<Target, mpsc::UnboundedSender<Job>>>>,
    closing: Arc<AtomicBool>,
) {
    let spawned = std::thread::Builder::new()
        .name("store-follow".into())
        .spawn(move || {
            let mut round = 0u32;
            while !closing.load(Ordering::SeqCst) {
                std::thread::sleep(SHARED_POLL);
                round = round.wrapping_add(1);
                if round % 5 == 0 {
                    let (Some(backend), Some(sinks)) = (backend.upgrade(), job_sinks.upgrade())
                    else {
                        return;
                    };
                    if let Ok(jobs) = backend.new_jobs() {
                        let sinks = sinks.lock().expect("job sink lock");
                        for job in jobs {
                            if let Some(sink) = sinks.get(&job.target) {
                                let _ = sink.send(job);
                            }
                        }
                    }
                }
                let (Some(backend), Some(watermarks), Some(pruned)) =
                    (backend.upgrade(), watermarks.upgrade(), pruned.upgrade())
                else {
                    return;
                };
                if let Ok(last) = backend.last_sequences() {
                    for (integration, seq) in last {
                        watermarks.advance(&integration, seq);
                    }
                }
                if let Ok(marks) = backend.pruned_sequences() {
                    let mut map = pruned.write().expect("pruned lock");
                    for (integration, seq) in marks {
                        let v = map.entry(integration).or_insert(0);
                        *v = (*v).max(seq);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the thread that follows other instances' updates");
    }
}

fn writer_loop(
    mut rx: mpsc::UnboundedReceiver<WriteOp>,
    backend: Arc<dyn Backend>,
    watermarks: Arc<Watermarks>,
    job_sinks: Arc<Mutex<HashMap<Target, mpsc::UnboundedSender<Job>>>>,
    stats: Arc<CommitStats>,
    health: Arc<Health>,
    closing: Arc<AtomicBool>,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(256);
    let mut completions: Vec<Completion> = Vec::with_capacity(256);
    // Set by a failed commit: the backend must recover before it is written to again.
    // Holds when the last attempt was, so that attempts are spaced.
    let mut must_recover: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // `Some((error, fresh))`: the batch is refused without a commit; `fresh` when the
        // error is new (a failed reopen), not the cause repeated between attempts.
        let refused = match must_recover {
            None => None,
            Some(last) => {
                if last.elapsed() >= RECOVERY_INTERVAL || closing.load(Ordering::SeqCst) {
                    let room = backend.takes_writes();
                    health.waiting_for_room(room.is_err());
                    match room.and_then(|()| recover(&*backend, &watermarks, &job_sinks)) {
                        Ok(()) => {
                            must_recover = None;
                            None
                        }
                        Err(e) => {
                            must_recover = Some(std::time::Instant::now());
                            Some((e, true))
                        }
                    }
                } else {
                    Some((health.refusal(), false))
                }
            }
        };
        let mut fresh = true;
        let mut effects = Effects::default();
        let n = batch.len() as u64;
        let mut group = backend.group();
        if refused.is_none() {
            let mut hints = Hints::default();
            for op in &mut batch {
                hints.extend(std::mem::take(&mut op.hints));
            }
            if !hints.is_empty() {
                group.prefetch(&hints);
            }
        }
        for op in batch.drain(..) {
            completions.push((op.run)(&mut *group, &mut effects));
        }
        let flushed = match refused {
            Some((e, new)) => {
                drop(group);
                fresh = new;
                Err(e)
            }
            None => {
                let started = std::time::Instant::now();
                let flushed = group.commit();
                metrics::histogram!("gateway_store_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats.commits.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("gateway_store_commits_total").increment(n);
                metrics::counter!("gateway_store_flushes_total").increment(1);
                if flushed.is_err() {
                    must_recover = Some(std::time::Instant::now());
                }
                flushed
            }
        };
        match &flushed {
            Ok(()) => {
                health.write_ok();
                // Watermarks first: a job handed out below may read its update at once.
                for (integration, seq) in effects.watermarks.drain() {
                    watermarks.advance(&integration, seq);
                }
                if !effects.jobs.is_empty() {
                    let sinks = job_sinks.lock().expect("job sink lock");
                    for job in effects.jobs.drain(..) {
                        if let Some(sink) = sinks.get(&job.target) {
                            let _ = sink.send(job);
                        }
                    }
                }
            }
            Err(e) => health.write_failed(e, fresh),
        }
        for c in completions.drain(..) {
            c(flushed.clone());
        }
        if closing.load(Ordering::SeqCst) {
            break;
        }
    }
    if must_recover.is_none() {
        let _ = backend.flush();
    }
}

/// Lets `backend` recover after a failed commit, then publishes what its files hold: a
/// batch answered with an error may have reached the disk all the same, and its update
/// sequences and jobs must not wait for a restart. Schedulers drop the jobs they already
/// hold (by id); this runs on the writer thread, so no commit moves the outbox meanwhile.
fn recover(
    backend: &dyn Backend,
    watermarks: &Watermarks,
    job_sinks: &Mutex<HashMap<Target, mpsc::UnboundedSender<Job>>>,
) -> Result<(), StoreError> {
    backend.recover()?;
    for (integration, seq) in backend.last_sequences()? {
        watermarks.advance(&integration, seq);
    }
    let jobs = backend.jobs()?;
    let sinks = job_sinks.lock().expect("job sink lock");
    for job in jobs {
        if let Some(sink) = sinks.get(&job.target) {
            let _ = sink.send(job);
        }
    }
    metrics::counter!("gateway_store_recoveries_total").increment(1);
    tracing::debug!("store reopened after failed writes");
    Ok(())
}

/// A store whose writes can be made to fail, for tests of what the gateway does while
/// the disk refuses writes.
#[cfg(test)]
pub mod testing {
    use super::engine::{Engine, Entry, FjallEngine, Writes};
    use super::*;

    /// A fjall engine whose commits and syncs fail while `fail` is set, as on a full disk
    /// (reads still work). The gateway's tables sit on it unchanged.
    pub struct Flaky {
        inner: FjallEngine,
        fail: Arc<AtomicBool>,
        /// A failing commit applies the batch first, like a sync that fails after the
        /// batch became visible.
        apply_first: bool,
    }

    impl Flaky {
        /// A store in `dir` that refuses writes while the returned flag is set.
        pub fn open(dir: &std::path::Path) -> (Arc<dyn Backend>, Arc<AtomicBool>) {
            Self::open_with(dir, false)
        }

        /// [`Flaky::open`], whose failing commits apply their batch before failing.
        pub fn open_applying(dir: &std::path::Path) -> (Arc<dyn Backend>, Arc<AtomicBool>) {
            Self::open_with(dir, true)
        }

        fn open_with(
            dir: &std::path::Path,
            apply_first: bool,
        ) -> (Arc<dyn Backend>, Arc<AtomicBool>) {
            let fail = Arc::new(AtomicBool::new(false));
            let open = {
                let (dir, fail) = (dir.to_path_buf(), fail.clone());
                move || {
                    Ok(Flaky {
                        inner: FjallEngine::open(&dir, 1 << 20)?,
                        fail: fail.clone(),
                        apply_first,
                    })
                }
            };
            let engine = open().unwrap();
            let reopen = kv::Reopen {
                dir: dir.to_path_buf(),
                open: Box::new(open),
            };
            (
                Arc::new(kv::KvBackend::reopening(engine, reopen).unwrap()),
                fail,
            )
        }

        fn refuse(&self) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Database("No space left on device".into()));
            }
            Ok(())
        }
    }

    impl Engine for Flaky {
        type Bytes = <FjallEngine as Engine>::Bytes;

        fn get(&self, key: &[u8]) -> Result<Option<Self::Bytes>, StoreError> {
            self.inner.get(key)
        }
        fn commit(&self, writes: Writes) -> Result<(), StoreError> {
            if self.apply_first {
                self.inner.commit(writes)?;
                return self.refuse();
            }
            self.refuse()?;
            self.inner.commit(writes)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.refuse()?;
            self.inner.sync()
        }
        fn range(
            &self,
            start: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Vec<Entry<Self::Bytes>>, StoreError> {
            self.inner.range(start, end, limit)
        }
    }

    /// Writes until one succeeds (the writer reopens the engine at most once per
    /// [`RECOVERY_INTERVAL`] and refuses writes in between), within 10 s.
    async fn write_until_recovered(store: &Store) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.write(|_| Ok(())).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "no recovery: {:?}",
                store.failure()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn after_recovery_what_a_failed_batch_left_on_disk_is_published() {
        use crate::incident::{State, UpdateKind};
        let dir = tempfile::tempdir().unwrap();
        // A commit that fails after its batch reached the engine (a failed fsync).
        let (backend, fail) = Flaky::open_applying(dir.path());
        let store = Store::new(backend);
        let (sink, mut jobs) = mpsc::unbounded_channel();
        store.attach_jobs(Target::Loomis, sink);
        fail.store(true, Ordering::SeqCst);
        let err = store
            .write(|tx| {
                let now = jiff::Timestamp::UNIX_EPOCH;
                let id = tx.next_id()?;
                tx.enqueue(Job {
                    id,
                    target: Target::Loomis,
                    kind: records::JobKind::Dispatch,
                    incident: IncidentKey::new("sn", "INC1"),
                    attempts: 0,
                    created_at: now,
                    next_attempt_at: now,
                    last_error: None,
                })?;
                let sequence = tx.next_sequence("sn")?;
                tx.append_update(&Update {
                    sequence: sequence.into(),
                    integration: "sn".into(),
                    incident_reference: "INC1".into(),
                    incident_id: None,
                    customer_number: "A1".into(),
                    kind: UpdateKind::Ack,
                    state: State::Acknowledged,
                    response_code: None,
                    response_text: None,
                    sla_time: None,
                    event_time: None,
                    received_at: now,
                })
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(
            jobs.try_recv().is_err(),
            "nothing published by a failed write"
        );
        assert!(store.updates_after("sn", 0, 10).unwrap().is_empty());
        // Refused at once until the next attempt, with the cause.
        let refused = store.write(|_| Ok(())).await.unwrap_err().to_string();
        assert!(refused.contains("No space left"), "{refused}");

        fail.store(false, Ordering::SeqCst);
        write_until_recovered(&store).await;
        assert!(store.is_healthy());
        // The batch answered with an error did reach the disk: its job goes to the
        // scheduler and its update to watchers, without a restart.
        let job = jobs
            .try_recv()
            .expect("the job found on disk is handed out");
        assert_eq!(job.incident.reference, "INC1");
        assert_eq!(store.updates_after("sn", 0, 10).unwrap().len(), 1);
        // And the reopened engine takes new writes, with ids past the old ones.
        let next = store.write(|tx| tx.next_id()).await.unwrap();
        assert!(next > job.id, "{next} after {}", job.id);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn health_fails_with_the_disk_and_comes_back_without_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, fail) = Flaky::open(dir.path());
        let store = Store::new(backend);
        store.write(|_| Ok(())).await.unwrap();
        assert!(store.is_healthy() && store.failing_for().is_none());
        fail.store(true, Ordering::SeqCst);
        assert!(store.write(|_| Ok(())).await.is_err());
        assert!(!store.is_healthy());
        assert!(store.failing_for().is_some());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let probe = tokio::spawn(
            store
                .clone()
                .probe_while_failing(std::time::Duration::from_millis(20), shutdown.clone()),
        );
        // Still failing: the probe's empty writes fail too.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!store.is_healthy());
        fail.store(false, Ordering::SeqCst);
        for _ in 0..500 {
            if store.is_healthy() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            store.is_healthy(),
            "the probe's write succeeded, health must say so"
        );
        assert!(store.failing_for().is_none());
        shutdown.cancel();
        probe.await.unwrap();
        store.close().await.unwrap();
    }
}
