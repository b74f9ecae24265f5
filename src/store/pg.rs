//! The gateway's tables in PostgreSQL (`store.engine = "postgres"`), for a cluster: any
//! number of instances share one database.
//!
//! Records are the bytes of [`super::codec`], as the embedded engines keep them, so a
//! change of a record's format needs nothing here; beside each record are the columns the
//! gateway queries by (see `migrations/`). The schema is versioned with refinery,
//! embedded in the binary, applied at start and by `safepoint-gateway migrate`; an
//! instance refuses a database whose schema is newer than it knows.
//!
//! A group commit is one PostgreSQL transaction on one connection. Operations run one
//! after another against an overlay of the group's writes (an operation that fails leaves
//! no write behind); reads that a write depends on lock their rows (`FOR UPDATE`), and the
//! writes go out at commit in a few array statements, pipelined, then `COMMIT`. Nothing is
//! answered before the `COMMIT` returns, so nothing is acknowledged that is not durable.
//!
//! Locks, and why groups of different instances cannot deadlock: the first read of an
//! incident (or sequence) of an integration in a group locks that integration's counter
//! row first, then the incident's row. So the counter row orders the groups of one
//! integration across the cluster (which also keeps its update sequences gap-free), and
//! incident rows are only locked under it. Counter rows are locked in ascending name
//! order within a transaction; an operation that needs one below a row already held takes
//! it only if it is free at once (`NOWAIT`), and otherwise the group commits the
//! operations before it and runs it again in a new transaction. No wait is ever out of
//! order, so no circle of waits forms.
//!
//! The backend owns a small tokio runtime for its connections: the store's traits are
//! synchronous (the writer is a thread), and its reads are called from request handlers,
//! which may not block on a runtime of their own.

use super::audit::AuditEntry;
use super::codec::{decode, encode_binary, encode_json};
use super::query::{Cursor, IncidentFilter, IncidentPage, RawInput};
use super::records::{DeadLetter, Job, Orphan, Target};
use super::{Backend, Group, StoreError, Txn};
use crate::incident::{Incident, IncidentKey, Update};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How many delivery lanes the outbox is cut into: a job's lane is a hash of its
/// incident, and each lane is worked by one instance at a time.
pub const LANES: u32 = 64;

/// What a [`PgBackend`] needs to connect.
#[derive(Clone)]
pub struct PgSettings {
    /// The `postgres://` URL (may carry a password: never logged).
    pub url: String,
    /// Connections for reads; the writer, the lease keeper and the watcher have their own.
    pub pool_size: usize,
    /// Server-side limit per statement; also bounds waiting for a connection.
    pub statement_timeout: Duration,
    /// How long a lane lease lasts without renewal.
    pub lease: Duration,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &"***")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

/// A database error as the store reports it: passing (503 / UNAVAILABLE), with the
/// server's message where there is one.
fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("postgres: {} ({})", d.message(), d.code().code())),
        None => StoreError::Database(format!("postgres: {e}")),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        e => StoreError::Database(format!("postgres: no connection: {e}")),
    }
}

/// Decodes a record; damage names the record.
fn decode_named<T: DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, StoreError> {
    decode(v).map_err(|e| match e {
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("{what}: {why}")),
        e => e,
    })
}

/// The lane of an incident's jobs: FNV-1a of integration and reference, so every instance
/// and every release computes the same.
pub fn lane_of(key: &IncidentKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key
        .integration
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(key.reference.as_bytes())
    {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % LANES
}

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Loomis => "loomis",
        Target::Tool => "tool",
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The highest schema version this build knows.
pub fn known_schema_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

/// Which migrations [`migrate`] applied.
#[derive(Debug, Default)]
pub struct Migrated {
    /// `V{n}__{name}` of each migration applied now, in order.
    pub applied: Vec<String>,
    /// The schema version after.
    pub version: i32,
}

/// Brings the database's schema up to this build's, refusing one that is newer (written
/// by a later release: this build would misread it).
pub async fn migrate_async(client: &mut tokio_postgres::Client) -> Result<Migrated, StoreError> {
    // Instances starting together migrate one after another.
    client
        .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await
        .map_err(db)?;
    let out = migrate_locked(client).await;
    let _ = client
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    out
}

/// The advisory lock key held while migrating (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x0053_5047_5f4d_4947;

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<Migrated, StoreError> {
    let known = known_schema_version();
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if exists {
        let found: Option<i32> = client
            .query_one("SELECT max(version) FROM refinery_schema_history", &[])
            .await
            .map_err(db)?
            .get(0);
        if let Some(found) = found.filter(|f| *f > known) {
            return Err(StoreError::Database(format!(
                "the database's schema is version {found}, newer than this build knows \
                 ({known}): it was migrated by a later release of the gateway; run that \
                 release (or a later one), or restore the database from before the upgrade"
            )));
        }
    }
    let report = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(|e| StoreError::Database(format!("schema migration failed: {e}")))?;
    Ok(Migrated {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect(),
        version: known,
    })
}

/// The connection settings of `url` with the statement timeout and keep-alives set.
fn client_config(s: &PgSettings) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = s.url.parse().map_err(|e| {
        StoreError::Database(format!("the store URL is not a valid postgres:// URL: {e}"))
    })?;
    cfg.options(format!(
        "-c statement_timeout={}",
        s.statement_timeout.as_millis()
    ));
    cfg.connect_timeout(s.statement_timeout);
    cfg.keepalives(true);
    cfg.keepalives_idle(Duration::from_secs(10));
    cfg.application_name("safepoint-gateway");
    Ok(cfg)
}

/// Ids are handed out from memory in blocks of [`ID_BLOCK`] taken from the database's
/// `spg_id_blocks` sequence, so instances never hand out the same id and need no write
/// per id. Ids lost to a restart are a gap, which ids may have.
struct Ids {
    next: u64,
    end: u64,
}

const ID_BLOCK: u64 = 1024;

/// The gateway's tables in one PostgreSQL database.
pub struct PgBackend {
    /// Runs the connections; `None` only while dropping (shut down in the background,
    /// since the last handle may go in an async context).
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    ids: Mutex<Ids>,
    settings: PgSettings,
    /// The delivery lanes this instance holds, kept by [`keep_lanes`].
    lanes: std::sync::Arc<Lanes>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// This instance's claims on delivery lanes.
struct Lanes {
    /// This instance's name in `spg_leases` and `spg_instances` (host, process, random).
    me: String,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    held: std::collections::HashSet<u32>,
    /// Until when the leases are surely ours (the last renewal's start plus two thirds
    /// of the lease): past it, no job is started, since another instance may take over.
    valid_until: Option<std::time::Instant>,
    /// Lanes claimed since the last job poll: their jobs may have been in flight at
    /// their previous holder.
    claimed: std::collections::HashSet<u32>,
    /// Jobs found in lanes when they were claimed: a Dispatch among them may already
    /// have reached Loomis.
    uncertain: std::collections::HashSet<u64>,
    /// Jobs of held lanes already handed to the schedulers.
    handed: std::collections::HashSet<u64>,
    /// When the outbox of the held lanes was last read: with a large backlog (Loomis
    /// down for hours) reading every id each 100 ms would cost the database more than
    /// the backlog is worth, so the poll slows down with it (see `poll_interval`).
    last_poll: Option<std::time::Instant>,
}

/// How often the outbox of an instance's lanes is read when it holds `backlog` jobs:
/// 100 ms up to 5,000, then 100 ms more per 5,000 (a backlog that size is waiting for
/// its receiver anyway).
fn poll_interval(backlog: usize) -> Duration {
    Duration::from_millis(100 * (1 + backlog as u64 / 5_000))
}

impl LaneState {
    fn holds(&self, lane: u32) -> bool {
        self.held.contains(&lane)
            && self
                .valid_until
                .is_some_and(|t| std::time::Instant::now() < t)
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.lock().expect("keeper lock").take() {
            k.abort();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgBackend {
    /// Connects, applies the embedded migrations, and returns the backend.
    pub fn open(settings: PgSettings) -> Result<PgBackend, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the store runtime: {e}")))?;
        let handle = rt.handle().clone();
        let cfg = client_config(&settings)?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(settings.pool_size + 1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.statement_timeout))
            .create_timeout(Some(settings.statement_timeout))
            .build()
            .map_err(|e| StoreError::Database(format!("postgres pool: {e}")))?;
        let backend = PgBackend {
            rt: Some(rt),
            handle,
            pool,
            ids: Mutex::new(Ids { next: 0, end: 0 }),
            lanes: std::sync::Arc::new(Lanes {
                me: instance_name(),
                state: Mutex::new(LaneState::default()),
            }),
            keeper: Mutex::new(None),
            settings,
        };
        backend.block(async {
            let mut c = backend.pool.get().await.map_err(pool_err)?;
            let migrated = migrate_async(&mut c).await?;
            for m in &migrated.applied {
                tracing::info!(migration = %m, "store schema migrated");
            }
            Ok::<_, StoreError>(())
        })?;
        let keeper = backend.handle.spawn(keep_lanes(
            backend.pool.clone(),
            backend.lanes.clone(),
            backend.settings.lease,
        ));
        *backend.keeper.lock().expect("keeper lock") = Some(keeper);
        Ok(backend)
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// Runs `f` to completion on the calling thread, with the backend's runtime as the
    /// context (its connections and timers live there).
    ///
    /// Called on a worker of a multi-threaded runtime (a request handler reading), it
    /// tells that runtime first (`block_in_place`), so the worker's other tasks move on
    /// to another thread while this one waits for the database.
    fn block<F: Future>(&self, f: F) -> F::Output {
        let run = || {
            let _ctx = self.handle.enter();
            futures::executor::block_on(f)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }

    /// [`PgBackend::block`] with a limit: a database that stopped answering (a network
    /// partition leaves no error to see) fails the call after the statement timeout and
    /// a second, instead of holding the writer for ever.
    fn timed<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let limit = self.settings.statement_timeout + Duration::from_secs(1);
        self.block(async {
            match tokio::time::timeout(limit, f).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Database(format!(
                    "postgres: no answer within {} ms",
                    limit.as_millis()
                ))),
            }
        })
    }

    /// Runs `f` on the backend's runtime (for tasks that outlive a call).
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c.prepare_cached(sql).await.map_err(db)?;
            c.query(&st, params).await.map_err(db)
        })
    }

    fn records<T: DeserializeOwned>(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?
            .iter()
            .map(|r| decode_named(what, r.get::<_, &[u8]>(0)))
            .collect()
    }

    fn counters(&self, column: &str) -> Result<HashMap<String, u64>, StoreError> {
        let sql = format!("SELECT integration, {column} FROM spg_counters WHERE {column} > 0");
        Ok(self
            .query(&sql, &[])?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// Jobs of the given lanes, in id order.
    pub fn jobs_in_lanes(&self, lanes: &[i32]) -> Result<Vec<Job>, StoreError> {
        self.records(
            "job",
            "SELECT record FROM spg_jobs WHERE lane = ANY($1) ORDER BY id",
            &[&lanes],
        )
    }
}

/// This instance's name among the cluster's: host, process and a random part (a
/// restarted process is a new instance).
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Keeps this instance's share of the delivery lanes: every third of the lease it renews
/// what it holds, counts the instances alive, and claims free or expired lanes up to its
/// share (`LANES` / instances, rounded up). An instance above its share (one joined)
/// stops renewing the excess, which the others claim when it runs out; an instance that
/// stops gives all up at once ([`Backend::shut_down`]); a dead one's leases run out and
/// are taken over.
async fn keep_lanes(pool: Pool, lanes: std::sync::Arc<Lanes>, lease: Duration) {
    let every = lease / 3;
    let secs = lease.as_secs_f64();
    let mut failing = false;
    loop {
        let started = std::time::Instant::now();
        let round = async {
            let c = pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO spg_instances (id, seen_at) VALUES ($1, now()) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                &[&lanes.me],
            )
            .await
            .map_err(db)?;
            let keep: Vec<i32> = {
                let st = lanes.state.lock().expect("lane lock");
                st.held.iter().map(|l| *l as i32).collect()
            };
            let mut renewed: Vec<u32> = c
                .query(
                    "UPDATE spg_leases SET expires_at = now() + make_interval(secs => $2) \
                     WHERE holder = $1 AND lane = ANY($3) RETURNING lane",
                    &[&lanes.me, &secs, &keep],
                )
                .await
                .map_err(db)?
                .iter()
                .map(|r| r.get::<_, i32>(0) as u32)
                .collect();
            let alive: i64 = c
                .query_one(
                    "SELECT count(*) FROM spg_instances \
                     WHERE seen_at > now() - make_interval(secs => $1)",
                    &[&secs],
                )
                .await
                .map_err(db)?
                .get(0);
            let share = LANES.div_ceil(alive.max(1) as u32) as usize;
            // More than a fair share (another instance joined): the excess is no longer
            // renewed, and no job of it is started from now on; its leases run out and
            // the others claim it, by which time attempts begun here have ended.
            renewed.sort_unstable();
            let let_go = renewed.split_off(renewed.len().min(share));
            if !let_go.is_empty() {
                tracing::info!(lanes = ?let_go, alive, "letting delivery lanes go to other instances");
            }
            let mut claimed = Vec::new();
            if renewed.len() < share {
                let want = (share - renewed.len()) as i64;
                claimed = c
                    .query(
                        "UPDATE spg_leases l SET holder = $1, \
                         expires_at = now() + make_interval(secs => $2) \
                         FROM (SELECT lane FROM spg_leases \
                               WHERE holder IS NULL OR expires_at < now() \
                               ORDER BY lane LIMIT $3 FOR UPDATE SKIP LOCKED) f \
                         WHERE l.lane = f.lane RETURNING l.lane",
                        &[&lanes.me, &secs, &want],
                    )
                    .await
                    .map_err(db)?
                    .iter()
                    .map(|r| r.get::<_, i32>(0) as u32)
                    .collect();
            }
            Ok::<_, StoreError>((renewed, claimed))
        };
        match round.await {
            Ok((renewed, claimed)) => {
                if failing {
                    tracing::info!("delivery lanes renewed again");
                    failing = false;
                }
                if !claimed.is_empty() {
                    tracing::info!(lanes = ?claimed, "claimed delivery lanes");
                }
                let mut st = lanes.state.lock().expect("lane lock");
                st.held = renewed.iter().chain(&claimed).copied().collect();
                st.claimed.extend(claimed);
                st.valid_until = Some(started + lease * 2 / 3);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot renew delivery lanes; no job is started once they may have run out");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// A row fetched ahead: a record, or where a reference points; `None`: no such row.
#[derive(Debug, Clone)]
enum Fetched {
    Record(Option<Vec<u8>>),
    Reference(Option<IncidentKey>),
}

/// Keys of the overlay: one per row a group writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Incident(IncidentKey),
    Reference(String, String),
    Sequence(String),
    Pruned(String),
    Update(String, u64),
    Job(u64),
    DeadLetter(u64),
    Orphan(u64),
    RawInput(IncidentKey),
    Audit(u64),
}

/// A row as written (`None` in the overlay: removed).
#[derive(Debug, Clone)]
enum Val {
    Incident {
        record: Vec<u8>,
        state: String,
        loomis_id: Option<String>,
        created_ns: i64,
    },
    Update {
        record: Vec<u8>,
        reference: String,
    },
    Reference(IncidentKey),
    Counter(u64),
    Record(Vec<u8>),
    Job {
        record: Vec<u8>,
        target: Target,
        lane: u32,
        key: IncidentKey,
        next_attempt_at: Timestamp,
        position: u64,
    },
}

type Writes = HashMap<Key, Option<Val>>;

/// A group commit in progress: one transaction on one connection, begun at the first
/// read or at commit.
struct PgGroup<'a> {
    backend: &'a PgBackend,
    conn: RefCell<Option<Object>>,
    /// The connection could not be had or a statement failed: every later operation of
    /// the group fails with this, and so does the commit.
    broken: RefCell<Option<StoreError>>,
    pending: Writes,
    /// Rows read (and locked) in this group: whether each existed. A row read as absent
    /// is inserted without `ON CONFLICT`, so that an instance inserting it meanwhile makes
    /// this group fail rather than be overwritten (idempotency across instances).
    absent: RefCell<HashMap<Key, bool>>,
    /// Counter rows locked in this group: (last sequence, pruned) as stored.
    counters: RefCell<HashMap<String, (u64, u64)>>,
    /// Rows fetched ahead by [`Group::prefetch`], as they are in this transaction
    /// (incidents locked under their counter row): reads find them here before asking
    /// the database. Cleared with the transaction.
    fetched: RefCell<HashMap<Key, Fetched>>,
    /// Whether earlier operations of this transaction hold counter locks (the operation
    /// running then takes one below them only without waiting).
    earlier_locks: std::cell::Cell<bool>,
    /// Set when an operation stopped for the lock order: the group commits and runs it
    /// again.
    must_split: std::cell::Cell<bool>,
    finished: bool,
}

impl PgGroup<'_> {
    /// The group's connection, in its transaction.
    fn with_conn<R>(
        &self,
        f: impl FnOnce(&Object) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if let Some(e) = self.broken.borrow().as_ref() {
            return Err(e.clone());
        }
        if self.conn.borrow().is_none() {
            let got = self.backend.timed(async {
                let c = self.backend.pool.get().await.map_err(pool_err)?;
                c.batch_execute("BEGIN").await.map_err(db)?;
                Ok::<_, StoreError>(c)
            });
            match got {
                Ok(c) => *self.conn.borrow_mut() = Some(c),
                Err(e) => {
                    *self.broken.borrow_mut() = Some(e.clone());
                    return Err(e);
                }
            }
        }
        let conn = self.conn.borrow();
        let c = conn.as_ref().expect("connection just set");
        f(c).inspect_err(|e| {
            *self.broken.borrow_mut() = Some(e.clone());
        })
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.with_conn(|c| {
            self.backend.timed(async {
                let st = c.prepare_cached(sql).await.map_err(db)?;
                c.query(&st, params).await.map_err(db)
            })
        })
    }

    /// Locks the counter row of `integration` (creating it) and returns what it holds.
    fn counter(&self, integration: &str) -> Result<(u64, u64), StoreError> {
        if let Some(v) = self.counters.borrow().get(integration) {
            return Ok(*v);
        }
        const LOCK: &str =
            "SELECT last_sequence, pruned FROM spg_counters WHERE integration = $1 FOR UPDATE";
        // Counter rows are locked in ascending name order, so groups of different
        // instances never wait for each other in a circle. An operation that needs a
        // row below one an earlier operation of the group locked takes it only if it is
        // free at once; otherwise the group commits what it has and runs the operation
        // again in a new transaction (see `Group::run`).
        let out_of_order = self.earlier_locks.get()
            && self
                .counters
                .borrow()
                .keys()
                .any(|held| held.as_str() > integration);
        if out_of_order {
            const TRY_LOCK: &str = "SELECT last_sequence, pruned FROM spg_counters \
                 WHERE integration = $1 FOR UPDATE NOWAIT";
            self.with_conn(|c| {
                self.backend
                    .timed(async { c.batch_execute("SAVEPOINT lock_order").await.map_err(db) })
            })?;
            let tried = self.with_conn(|c| {
                self.backend.timed(async {
                    let st = c.prepare_cached(TRY_LOCK).await.map_err(db)?;
                    match c.query(&st, &[&integration]).await {
                        Ok(rows) => {
                            c.batch_execute("RELEASE SAVEPOINT lock_order")
                                .await
                                .map_err(db)?;
                            Ok(Some(rows))
                        }
                        Err(e)
                            if e.code()
                                == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                        {
                            c.batch_execute("ROLLBACK TO SAVEPOINT lock_order")
                                .await
                                .map_err(db)?;
                            Ok(None)
                        }
                        Err(e) => Err(db(e)),
                    }
                })
            })?;
            match tried {
                Some(rows) if !rows.is_empty() => {
                    let row = &rows[0];
                    let v = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
                    self.counters
                        .borrow_mut()
                        .insert(integration.to_string(), v);
                    return Ok(v);
                }
                _ => {
                    self.must_split.set(true);
                    return Err(StoreError::Database(
                        "lock order: the group commits before this operation".into(),
                    ));
                }
            }
        }
        let mut rows = self.query(LOCK, &[&integration])?;
        if rows.is_empty() {
            self.query(
                "INSERT INTO spg_counters (integration) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&integration],
            )?;
            rows = self.query(LOCK, &[&integration])?;
        }
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Database("counter row vanished".into()))?;
        let v = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        self.counters
            .borrow_mut()
            .insert(integration.to_string(), v);
        Ok(v)
    }

    /// Rolls the transaction back and gives the connection back (or drops it, if even
    /// that fails: it is in no state to be reused).
    fn abandon(&mut self) {
        if let Some(c) = self.conn.borrow_mut().take() {
            let ok = self
                .backend
                .timed(async { c.batch_execute("ROLLBACK").await.map_err(db) })
                .is_ok();
            if !ok {
                let _ = Object::take(c);
            }
        }
    }
}

impl Drop for PgGroup<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.abandon();
        }
    }
}

/// One operation of a group: reads see its own writes, then the group's, then the
/// database (locking what a write may depend on).
struct PgTxn<'a, 'g> {
    group: &'a PgGroup<'g>,
    writes: RefCell<Writes>,
}

impl PgTxn<'_, '_> {
    /// The overlay's value for `k`: `Some(None)` removed, `None` not written here.
    fn written(&self, k: &Key) -> Option<Option<Val>> {
        if let Some(v) = self.writes.borrow().get(k) {
            return Some(v.clone());
        }
        self.group.pending.get(k).cloned()
    }

    fn set(&self, k: Key, v: Option<Val>) {
        self.writes.borrow_mut().insert(k, v);
    }

    fn record_of(v: Option<Val>) -> Option<Vec<u8>> {
        match v {
            Some(Val::Incident { record, .. })
            | Some(Val::Record(record))
            | Some(Val::Update { record, .. })
            | Some(Val::Job { record, .. }) => Some(record),
            _ => None,
        }
    }

    /// A record by `sql` (one parameter row), through the overlay; `lock` notes whether
    /// the row existed.
    fn read<T: DeserializeOwned>(
        &self,
        k: Key,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<T>, StoreError> {
        if let Some(v) = self.written(&k) {
            return Self::record_of(v)
                .map(|r| decode_named(what, &r))
                .transpose();
        }
        if let Some(Fetched::Record(found)) = self.group.fetched.borrow().get(&k) {
            return found.as_ref().map(|r| decode_named(what, r)).transpose();
        }
        let rows = self.group.query(sql, params)?;
        let found = rows.first().map(|r| r.get::<_, Vec<u8>>(0));
        self.group
            .absent
            .borrow_mut()
            .entry(k)
            .or_insert(found.is_none());
        found.map(|r| decode_named(what, &r)).transpose()
    }

    fn counter_value(&self, k: Key, integration: &str, pruned: bool) -> Result<u64, StoreError> {
        if let Some(Some(Val::Counter(v))) = self.written(&k) {
            return Ok(v);
        }
        let (last, p) = self.group.counter(integration)?;
        Ok(if pruned { p } else { last })
    }
}

impl Txn for PgTxn<'_, '_> {
    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        let k = Key::Incident(key.clone());
        if self.written(&k).is_none() {
            // Lock order: the integration's counter, then the incident.
            self.group.counter(&key.integration)?;
        }
        self.read(
            k,
            "incident",
            "SELECT record FROM spg_incidents WHERE integration = $1 AND reference = $2 FOR UPDATE",
            &[&key.integration, &key.reference.as_str()],
        )
    }

    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        let record = encode_binary(incident)?;
        self.set(
            Key::Incident(incident.key()),
            Some(Val::Incident {
                record,
                state: format!("{:?}", incident.state),
                loomis_id: incident.incident_id.as_ref().map(|i| i.to_string()),
                created_ns: created_ns(incident.created_at),
            }),
        );
        Ok(())
    }

    fn by_reference(
        &self,
        customer: &str,
        reference: &str,
    ) -> Result<Option<IncidentKey>, StoreError> {
        let k = Key::Reference(customer.to_string(), reference.to_string());
        if let Some(v) = self.written(&k) {
            return Ok(match v {
                Some(Val::Reference(key)) => Some(key),
                _ => None,
            });
        }
        if let Some(Fetched::Reference(found)) = self.group.fetched.borrow().get(&k) {
            return Ok(found.clone());
        }
        let rows = self.group.query(
            "SELECT integration, incident FROM spg_references WHERE customer = $1 AND reference = $2",
            &[&customer, &reference],
        )?;
        let found = rows
            .first()
            .map(|r| IncidentKey::new(r.get::<_, String>(0), r.get::<_, String>(1)));
        self.group
            .absent
            .borrow_mut()
            .entry(k)
            .or_insert(found.is_none());
        Ok(found)
    }

    fn put_reference(
        &self,
        customer: &str,
        reference: &str,
        key: &IncidentKey,
    ) -> Result<(), StoreError> {
        self.set(
            Key::Reference(customer.to_string(), reference.to_string()),
            Some(Val::Reference(key.clone())),
        );
        Ok(())
    }

    fn next_sequence(&self, integration: &str) -> Result<u64, StoreError> {
        let k = Key::Sequence(integration.to_string());
        let next = self.counter_value(k.clone(), integration, false)? + 1;
        self.set(k, Some(Val::Counter(next)));
        Ok(next)
    }

    fn put_update(&self, update: &Update) -> Result<(), StoreError> {
        self.set(
            Key::Update(update.integration.clone(), update.sequence.get()),
            Some(Val::Update {
                record: encode_binary(update)?,
                reference: update.incident_reference.as_str().to_string(),
            }),
        );
        Ok(())
    }

    fn update(&self, integration: &str, sequence: u64) -> Result<Option<Update>, StoreError> {
        self.read(
            Key::Update(integration.to_string(), sequence),
            "update",
            "SELECT record FROM spg_updates WHERE integration = $1 AND sequence = $2",
            &[&integration, &(sequence as i64)],
        )
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let mut ids = self.group.backend.ids.lock().expect("id lock");
        if ids.next >= ids.end {
            let rows = self.group.query("SELECT nextval('spg_id_blocks')", &[])?;
            let block = rows
                .first()
                .map(|r| r.get::<_, i64>(0) as u64)
                .ok_or_else(|| StoreError::Database("no id block".into()))?;
            ids.next = block * ID_BLOCK;
            ids.end = (block + 1) * ID_BLOCK;
        }
        ids.next += 1;
        Ok(ids.next)
    }

    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.read(
            Key::Job(id),
            "job",
            "SELECT record FROM spg_jobs WHERE id = $1",
            &[&(id as i64)],
        )
    }

    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        self.set(
            Key::Job(job.id),
            Some(Val::Job {
                record: encode_binary(job)?,
                target: job.target,
                lane: lane_of(&job.incident),
                key: job.incident.clone(),
                next_attempt_at: job.next_attempt_at,
                position: job.position(),
            }),
        );
        Ok(())
    }

    fn remove_job(&self, id: u64) -> Result<(), StoreError> {
        self.set(Key::Job(id), None);
        Ok(())
    }

    fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.read(
            Key::DeadLetter(id),
            "dead letter",
            "SELECT record FROM spg_dead_letters WHERE id = $1",
            &[&(id as i64)],
        )
    }

    fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.set(Key::DeadLetter(dl.id), Some(Val::Record(encode_json(dl)?)));
        Ok(())
    }

    fn remove_dead_letter(&self, id: u64) -> Result<(), StoreError> {
        self.set(Key::DeadLetter(id), None);
        Ok(())
    }

    fn put_orphan(&self, orphan: &Orphan) -> Result<(), StoreError> {
        self.set(
            Key::Orphan(orphan.id),
            Some(Val::Record(encode_json(orphan)?)),
        );
        Ok(())
    }

    fn remove_incident(&self, key: &IncidentKey) -> Result<(), StoreError> {
        self.set(Key::Incident(key.clone()), None);
        self.set(Key::RawInput(key.clone()), None);
        Ok(())
    }

    fn put_raw_input(&self, key: &IncidentKey, raw: &RawInput) -> Result<(), StoreError> {
        self.set(
            Key::RawInput(key.clone()),
            Some(Val::Record(encode_json(raw)?)),
        );
        Ok(())
    }

    fn put_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.set(Key::Audit(entry.id), Some(Val::Record(encode_json(entry)?)));
        Ok(())
    }

    fn remove_reference(&self, customer: &str, reference: &str) -> Result<(), StoreError> {
        self.set(
            Key::Reference(customer.to_string(), reference.to_string()),
            None,
        );
        Ok(())
    }

    fn remove_update(&self, integration: &str, sequence: u64) -> Result<(), StoreError> {
        self.set(Key::Update(integration.to_string(), sequence), None);
        Ok(())
    }

    fn remove_orphan(&self, id: u64) -> Result<(), StoreError> {
        self.set(Key::Orphan(id), None);
        Ok(())
    }

    fn set_pruned(&self, integration: &str, sequence: u64) -> Result<(), StoreError> {
        // Lock the row now, so the commit can update it.
        self.group.counter(integration)?;
        self.set(
            Key::Pruned(integration.to_string()),
            Some(Val::Counter(sequence)),
        );
        Ok(())
    }
}

/// Incident rows as column arrays: integration, reference, state, Loomis id, record,
/// created (ns).
type IncidentColumns = (
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<Vec<u8>>,
    Vec<i64>,
);

/// `Incident.created_at` as stored in `created_ns` (saturating: a jiff timestamp spans
/// more than an i64 of nanoseconds).
fn created_ns(t: Timestamp) -> i64 {
    t.as_nanosecond().clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Job rows as column arrays: id, target, lane, integration, reference, next attempt,
/// position, record.
type JobColumns = (
    Vec<i64>,
    Vec<String>,
    Vec<i32>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<i64>,
    Vec<Vec<u8>>,
);

/// The statements of one commit, as column arrays.
#[derive(Default)]
struct Batch {
    inc_new: IncidentColumns,
    inc_put: IncidentColumns,
    inc_del: (Vec<String>, Vec<String>),
    ref_new: (Vec<String>, Vec<String>, Vec<String>, Vec<String>),
    ref_put: (Vec<String>, Vec<String>, Vec<String>, Vec<String>),
    ref_del: (Vec<String>, Vec<String>),
    upd_new: (Vec<String>, Vec<i64>, Vec<String>, Vec<Vec<u8>>),
    raw_put: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    raw_del: (Vec<String>, Vec<String>),
    audit_put: (Vec<i64>, Vec<Vec<u8>>),
    upd_del: (Vec<String>, Vec<i64>),
    job_put: JobColumns,
    job_del: Vec<i64>,
    dl_put: (Vec<i64>, Vec<Vec<u8>>),
    dl_del: Vec<i64>,
    orphan_put: (Vec<i64>, Vec<Vec<u8>>),
    orphan_del: Vec<i64>,
    /// integration -> (last sequence, pruned)
    counters: HashMap<String, (u64, u64)>,
}

impl Batch {
    fn build(
        pending: Writes,
        absent: &HashMap<Key, bool>,
        counters: &HashMap<String, (u64, u64)>,
    ) -> Batch {
        let mut b = Batch::default();
        for (k, v) in pending {
            let is_new = absent.get(&k).copied().unwrap_or(false);
            match (k, v) {
                (
                    Key::Incident(key),
                    Some(Val::Incident {
                        record,
                        state,
                        loomis_id,
                        created_ns,
                    }),
                ) => {
                    let t = if is_new {
                        &mut b.inc_new
                    } else {
                        &mut b.inc_put
                    };
                    t.0.push(key.integration);
                    t.1.push(key.reference.into_string());
                    t.2.push(state);
                    t.3.push(loomis_id);
                    t.4.push(record);
                    t.5.push(created_ns);
                }
                (Key::Incident(key), _) => {
                    b.inc_del.0.push(key.integration);
                    b.inc_del.1.push(key.reference.into_string());
                }
                (Key::Reference(c, r), Some(Val::Reference(key))) => {
                    let t = if is_new {
                        &mut b.ref_new
                    } else {
                        &mut b.ref_put
                    };
                    t.0.push(c);
                    t.1.push(r);
                    t.2.push(key.integration);
                    t.3.push(key.reference.into_string());
                }
                (Key::Reference(c, r), _) => {
                    b.ref_del.0.push(c);
                    b.ref_del.1.push(r);
                }
                (Key::Update(i, s), Some(Val::Update { record, reference })) => {
                    b.upd_new.0.push(i);
                    b.upd_new.1.push(s as i64);
                    b.upd_new.2.push(reference);
                    b.upd_new.3.push(record);
                }
                (Key::Update(i, s), _) => {
                    b.upd_del.0.push(i);
                    b.upd_del.1.push(s as i64);
                }
                (
                    Key::Job(id),
                    Some(Val::Job {
                        record,
                        target,
                        lane,
                        key,
                        next_attempt_at,
                        position,
                    }),
                ) => {
                    let t = &mut b.job_put;
                    t.0.push(id as i64);
                    t.1.push(target_name(target).to_string());
                    t.2.push(lane as i32);
                    t.3.push(key.integration);
                    t.4.push(key.reference.into_string());
                    t.5.push(next_attempt_at.to_string());
                    t.6.push(position as i64);
                    t.7.push(record);
                }
                (Key::Job(id), _) => b.job_del.push(id as i64),
                (Key::DeadLetter(id), Some(Val::Record(r))) => {
                    b.dl_put.0.push(id as i64);
                    b.dl_put.1.push(r);
                }
                (Key::DeadLetter(id), _) => b.dl_del.push(id as i64),
                (Key::Orphan(id), Some(Val::Record(r))) => {
                    b.orphan_put.0.push(id as i64);
                    b.orphan_put.1.push(r);
                }
                (Key::Orphan(id), _) => b.orphan_del.push(id as i64),
                (Key::RawInput(key), Some(Val::Record(r))) => {
                    b.raw_put.0.push(key.integration);
                    b.raw_put.1.push(key.reference.into_string());
                    b.raw_put.2.push(r);
                }
                (Key::RawInput(key), _) => {
                    b.raw_del.0.push(key.integration);
                    b.raw_del.1.push(key.reference.into_string());
                }
                (Key::Audit(id), Some(Val::Record(r))) => {
                    b.audit_put.0.push(id as i64);
                    b.audit_put.1.push(r);
                }
                (Key::Audit(_), _) => {}
                (Key::Sequence(i), Some(Val::Counter(n))) => {
                    let base = counters.get(&i).copied().unwrap_or_default();
                    b.counters.entry(i).or_insert(base).0 = n;
                }
                (Key::Pruned(i), Some(Val::Counter(n))) => {
                    let base = counters.get(&i).copied().unwrap_or_default();
                    b.counters.entry(i).or_insert(base).1 = n;
                }
                (Key::Sequence(_) | Key::Pruned(_), _) => {}
            }
        }
        b
    }

    /// Sends every statement (pipelined on the one connection) and waits for all.
    async fn send(self, c: &Object) -> Result<(), tokio_postgres::Error> {
        use futures::future::{BoxFuture, FutureExt};
        let names: Vec<String> = self.counters.keys().cloned().collect();
        let lasts: Vec<i64> = names.iter().map(|n| self.counters[n].0 as i64).collect();
        let pruned: Vec<i64> = names.iter().map(|n| self.counters[n].1 as i64).collect();
        let mut sent: Vec<BoxFuture<'_, Result<u64, tokio_postgres::Error>>> = Vec::new();
        macro_rules! exec {
            ($sql:expr $(, $p:expr)*) => {{
                let params: Vec<&(dyn ToSql + Sync)> = vec![$($p),*];
                sent.push(async move {
                    let st = c.prepare_cached($sql).await?;
                    c.execute(&st, &params).await
                }.boxed());
            }};
        }
        if !self.inc_new.0.is_empty() {
            let t = &self.inc_new;
            exec!("INSERT INTO spg_incidents (integration, reference, state, loomis_id, record, created_ns) \
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[])",
                  &t.0, &t.1, &t.2, &t.3, &t.4, &t.5);
        }
        if !self.inc_put.0.is_empty() {
            let t = &self.inc_put;
            exec!("INSERT INTO spg_incidents (integration, reference, state, loomis_id, record, created_ns) \
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[]) \
                   ON CONFLICT (integration, reference) DO UPDATE SET state = EXCLUDED.state, \
                   loomis_id = EXCLUDED.loomis_id, record = EXCLUDED.record, updated_at = now()",
                  &t.0, &t.1, &t.2, &t.3, &t.4, &t.5);
        }
        if !self.inc_del.0.is_empty() {
            let t = &self.inc_del;
            exec!(
                "DELETE FROM spg_incidents WHERE (integration, reference) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[]))",
                &t.0,
                &t.1
            );
        }
        if !self.ref_new.0.is_empty() {
            let t = &self.ref_new;
            exec!(
                "INSERT INTO spg_references (customer, reference, integration, incident) \
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
                &t.0,
                &t.1,
                &t.2,
                &t.3
            );
        }
        if !self.ref_put.0.is_empty() {
            let t = &self.ref_put;
            exec!("INSERT INTO spg_references (customer, reference, integration, incident) \
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                   ON CONFLICT (customer, reference) DO UPDATE SET integration = EXCLUDED.integration, \
                   incident = EXCLUDED.incident",
                  &t.0, &t.1, &t.2, &t.3);
        }
        if !self.ref_del.0.is_empty() {
            let t = &self.ref_del;
            exec!(
                "DELETE FROM spg_references WHERE (customer, reference) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[]))",
                &t.0,
                &t.1
            );
        }
        if !self.upd_new.0.is_empty() {
            let t = &self.upd_new;
            exec!(
                "INSERT INTO spg_updates (integration, sequence, reference, record) \
                   SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bytea[])",
                &t.0,
                &t.1,
                &t.2,
                &t.3
            );
        }
        if !self.upd_del.0.is_empty() {
            let t = &self.upd_del;
            exec!(
                "DELETE FROM spg_updates WHERE (integration, sequence) IN \
                   (SELECT * FROM unnest($1::text[], $2::int8[]))",
                &t.0,
                &t.1
            );
        }
        if !self.job_put.0.is_empty() {
            let t = &self.job_put;
            exec!("INSERT INTO spg_jobs (id, target, lane, integration, reference, next_attempt_at, position, record) \
                   SELECT i, t, l, n, r, a::timestamptz, p, b FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[], \
                   $5::text[], $6::text[], $7::int8[], $8::bytea[]) AS u(i, t, l, n, r, a, p, b) \
                   ON CONFLICT (id) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at, \
                   record = EXCLUDED.record",
                  &t.0, &t.1, &t.2, &t.3, &t.4, &t.5, &t.6, &t.7);
        }
        if !self.job_del.is_empty() {
            exec!("DELETE FROM spg_jobs WHERE id = ANY($1)", &self.job_del);
        }
        if !self.dl_put.0.is_empty() {
            let t = &self.dl_put;
            exec!("INSERT INTO spg_dead_letters (id, record) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                   ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record", &t.0, &t.1);
        }
        if !self.dl_del.is_empty() {
            exec!(
                "DELETE FROM spg_dead_letters WHERE id = ANY($1)",
                &self.dl_del
            );
        }
        if !self.orphan_put.0.is_empty() {
            let t = &self.orphan_put;
            exec!("INSERT INTO spg_orphans (id, record) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                   ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record", &t.0, &t.1);
        }
        if !self.orphan_del.is_empty() {
            exec!(
                "DELETE FROM spg_orphans WHERE id = ANY($1)",
                &self.orphan_del
            );
        }
        if !self.raw_put.0.is_empty() {
            let t = &self.raw_put;
            exec!(
                "INSERT INTO spg_raw_inputs (integration, reference, record) \
                   SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                   ON CONFLICT (integration, reference) DO UPDATE SET record = EXCLUDED.record",
                &t.0,
                &t.1,
                &t.2
            );
        }
        if !self.raw_del.0.is_empty() {
            let t = &self.raw_del;
            exec!(
                "DELETE FROM spg_raw_inputs WHERE (integration, reference) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[]))",
                &t.0,
                &t.1
            );
        }
        if !self.audit_put.0.is_empty() {
            let t = &self.audit_put;
            exec!(
                "INSERT INTO spg_audit (id, record) SELECT * FROM unnest($1::int8[], $2::bytea[]) \
                   ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &t.0,
                &t.1
            );
        }
        if !names.is_empty() {
            exec!(
                "UPDATE spg_counters c SET last_sequence = u.l, pruned = u.p \
                   FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(i, l, p) \
                   WHERE c.integration = u.i",
                &names,
                &lasts,
                &pruned
            );
            // Wakes the streams of every instance (they read the table).
            exec!("SELECT pg_notify('spg_updates', '')");
        }
        futures::future::try_join_all(sent).await?;
        Ok(())
    }
}

impl Group for PgGroup<'_> {
    /// Fetches what the group's operations will read in one round of pipelined
    /// statements: the counter rows of the hinted incidents' integrations (locked, in
    /// name order, as a first read would), those incidents (locked under them), and the
    /// hinted references. Rows of an integration whose counter row does not exist yet
    /// are left to the operations.
    fn prefetch(&mut self, hints: &super::Hints) {
        let mut names: Vec<String> = hints
            .incidents
            .iter()
            .map(|k| k.integration.clone())
            .collect();
        names.sort();
        names.dedup();
        let mut refs: Vec<&(String, String)> = hints.references.iter().collect();
        refs.sort();
        refs.dedup();
        let ref_customers: Vec<&str> = refs.iter().map(|r| r.0.as_str()).collect();
        let ref_names: Vec<&str> = refs.iter().map(|r| r.1.as_str()).collect();
        let fetched = self.with_conn(|c| {
            self.backend.timed(async {
                let counters = async {
                    if names.is_empty() {
                        return Ok(Vec::new());
                    }
                    let st = c
                        .prepare_cached(
                            "SELECT integration, last_sequence, pruned FROM spg_counters \
                             WHERE integration = ANY($1) ORDER BY integration FOR UPDATE",
                        )
                        .await?;
                    c.query(&st, &[&names]).await
                };
                let references = async {
                    if refs.is_empty() {
                        return Ok(Vec::new());
                    }
                    let st = c
                        .prepare_cached(
                            "SELECT customer, reference, integration, incident FROM spg_references \
                             WHERE (customer, reference) IN \
                             (SELECT * FROM unnest($1::text[], $2::text[]))",
                        )
                        .await?;
                    c.query(&st, &[&ref_customers, &ref_names]).await
                };
                // Pipelined on the one connection: the counter rows are locked before the
                // statement below is run (a connection runs its statements in order).
                let (counters, references) = futures::future::try_join(counters, references)
                    .await
                    .map_err(db)?;
                let locked: Vec<String> = counters.iter().map(|r| r.get::<_, String>(0)).collect();
                let keys: Vec<&IncidentKey> = hints
                    .incidents
                    .iter()
                    .filter(|k| locked.binary_search(&k.integration).is_ok())
                    .collect();
                let incidents = if keys.is_empty() {
                    Vec::new()
                } else {
                    let integrations: Vec<&str> =
                        keys.iter().map(|k| k.integration.as_str()).collect();
                    let references: Vec<&str> = keys.iter().map(|k| k.reference.as_str()).collect();
                    let st = c
                        .prepare_cached(
                            "SELECT integration, reference, record FROM spg_incidents \
                             WHERE (integration, reference) IN \
                             (SELECT * FROM unnest($1::text[], $2::text[])) FOR UPDATE",
                        )
                        .await
                        .map_err(db)?;
                    c.query(&st, &[&integrations, &references])
                        .await
                        .map_err(db)?
                };
                Ok((
                    counters,
                    references,
                    keys.into_iter().cloned().collect::<Vec<_>>(),
                    incidents,
                ))
            })
        });
        let Ok((counters, references, keys, incidents)) = fetched else {
            // The group's connection is marked broken; its operations report it.
            return;
        };
        let mut held = self.counters.borrow_mut();
        for r in &counters {
            held.insert(
                r.get::<_, String>(0),
                (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64),
            );
        }
        let mut absent = self.absent.borrow_mut();
        let mut cache = self.fetched.borrow_mut();
        for key in keys {
            cache.insert(Key::Incident(key), Fetched::Record(None));
        }
        for r in &incidents {
            let key = IncidentKey::new(r.get::<_, String>(0), r.get::<_, String>(1));
            cache.insert(Key::Incident(key), Fetched::Record(Some(r.get(2))));
        }
        for (customer, reference) in refs {
            cache.insert(
                Key::Reference(customer.clone(), reference.clone()),
                Fetched::Reference(None),
            );
        }
        for r in &references {
            cache.insert(
                Key::Reference(r.get(0), r.get(1)),
                Fetched::Reference(Some(IncidentKey::new(
                    r.get::<_, String>(2),
                    r.get::<_, String>(3),
                ))),
            );
        }
        for (k, v) in cache.iter() {
            let missing = matches!(v, Fetched::Record(None) | Fetched::Reference(None));
            absent.entry(k.clone()).or_insert(missing);
        }
    }

    fn run(&mut self, f: &dyn Fn(&dyn Txn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        if let Some(e) = self.broken.borrow().as_ref() {
            return Err(e.clone());
        }
        for _ in 0..2 {
            self.earlier_locks.set(!self.counters.borrow().is_empty());
            self.must_split.set(false);
            let txn = PgTxn {
                group: self,
                writes: RefCell::new(Writes::new()),
            };
            match f(&txn) {
                Ok(()) => {
                    let writes = txn.writes.into_inner();
                    self.pending.extend(writes);
                    return Ok(());
                }
                Err(_) if self.must_split.replace(false) => {
                    // The operation needs a lock out of order that another instance
                    // holds: commit the operations before it (they are answered with
                    // the group), then run it first in a new transaction.
                    drop(txn);
                    self.commit_now()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Database(
            "lock order: the operation could not be run".into(),
        ))
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if self.pending.is_empty() && self.conn.borrow().is_none() {
            // An empty group (the store's probe while failing) still asks the database,
            // so that health says whether it can be reached.
            self.finished = true;
            return self.backend.query("SELECT 1", &[]).map(drop);
        }
        let out = self.commit_now();
        if out.is_err() {
            // The transaction is rolled back (or the connection is gone).
            self.abandon();
        }
        self.finished = true;
        out
    }
}

impl PgGroup<'_> {
    /// Writes the pending operations and commits them; the group goes on in a new
    /// transaction (begun at its next read).
    fn commit_now(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() && self.conn.borrow().is_none() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let batch = Batch::build(pending, &self.absent.borrow(), &self.counters.borrow());
        let sent = self.with_conn(|c| {
            self.backend.timed(async {
                batch.send(c).await.map_err(db)?;
                c.batch_execute("COMMIT").await.map_err(db)
            })
        });
        sent?;
        // Back to the pool, its transaction over; its locks are gone.
        drop(self.conn.borrow_mut().take());
        self.absent.borrow_mut().clear();
        self.counters.borrow_mut().clear();
        self.fetched.borrow_mut().clear();
        Ok(())
    }
}

impl Backend for PgBackend {
    fn group(&self) -> Box<dyn Group + '_> {
        Box::new(PgGroup {
            backend: self,
            conn: RefCell::new(None),
            broken: RefCell::new(None),
            pending: Writes::new(),
            absent: RefCell::new(HashMap::new()),
            counters: RefCell::new(HashMap::new()),
            fetched: RefCell::new(HashMap::new()),
            earlier_locks: std::cell::Cell::new(false),
            must_split: std::cell::Cell::new(false),
            finished: false,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A COMMIT that returned is durable (synchronous_commit on the server).
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim_work(&self, job: &Job) -> super::Work {
        let lane = lane_of(&job.incident);
        {
            let mut st = self.lanes.state.lock().expect("lane lock");
            if !st.holds(lane) {
                // Dropped here: if this instance holds (or regains) the lane, its next
                // poll hands the job out again (a copy the poll handed meanwhile may
                // have been dropped by the scheduler as a duplicate of this one).
                st.handed.remove(&job.id);
                return super::Work::Elsewhere;
            }
        }
        // A job handed out twice (by this instance's commit and by a poll) may be done
        // already, and a job of the same incident committed by another instance may
        // stand before it and not have arrived yet: the outbox says.
        let rows = self.query(
            "SELECT bool_or(id = $4), min(position) FROM spg_jobs \
             WHERE integration = $1 AND reference = $2 AND target = $3",
            &[
                &job.incident.integration,
                &job.incident.reference.as_str(),
                &target_name(job.target),
                &(job.id as i64),
            ],
        );
        let first = |r: &tokio_postgres::Row| {
            let exists: Option<bool> = r.get(0);
            let min: Option<i64> = r.get(1);
            (exists.unwrap_or(false), min)
        };
        match rows.as_ref().map(|r| r.first().map(first)) {
            Ok(None) | Ok(Some((false, _))) => super::Work::Elsewhere,
            Ok(Some((true, Some(min)))) if (min as u64) < job.position() => super::Work::Later,
            // Cannot tell: try it; its settlement goes through the database anyway.
            _ => super::Work::Mine {
                uncertain: self
                    .lanes
                    .state
                    .lock()
                    .expect("lane lock")
                    .uncertain
                    .remove(&job.id),
            },
        }
    }

    fn new_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let (held, claimed): (Vec<i32>, Vec<i32>) = {
            let st = self.lanes.state.lock().expect("lane lock");
            if st
                .valid_until
                .is_none_or(|t| std::time::Instant::now() >= t)
            {
                return Ok(Vec::new());
            }
            let too_soon = st.claimed.is_empty()
                && st
                    .last_poll
                    .is_some_and(|t| t.elapsed() < poll_interval(st.handed.len()));
            if too_soon {
                return Ok(Vec::new());
            }
            (
                st.held.iter().map(|l| *l as i32).collect(),
                st.claimed.iter().map(|l| *l as i32).collect(),
            )
        };
        let rows = self.query(
            "SELECT id, lane FROM spg_jobs WHERE lane = ANY($1)",
            &[&held],
        )?;
        let mut st = self.lanes.state.lock().expect("lane lock");
        st.last_poll = Some(std::time::Instant::now());
        let mut fresh = Vec::new();
        let mut all = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            let id = r.get::<_, i64>(0) as u64;
            let lane = r.get::<_, i32>(1);
            all.insert(id);
            if claimed.contains(&lane) {
                st.uncertain.insert(id);
            }
            if !st.handed.contains(&id) {
                fresh.push(id as i64);
            }
        }
        for l in &claimed {
            st.claimed.remove(&(*l as u32));
        }
        st.uncertain.retain(|id| all.contains(id));
        st.handed = all;
        drop(st);
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        self.records(
            "job",
            "SELECT record FROM spg_jobs WHERE id = ANY($1) ORDER BY id",
            &[&fresh],
        )
    }

    fn leads(&self) -> bool {
        // The holder of lane 0 runs the cluster's single tasks.
        self.lanes.state.lock().expect("lane lock").holds(0)
    }

    fn shut_down(&self) {
        if let Some(k) = self.keeper.lock().expect("keeper lock").take() {
            k.abort();
        }
        let me = self.lanes.me.clone();
        let released = self.timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "UPDATE spg_leases SET holder = NULL, expires_at = 'epoch' WHERE holder = $1",
                &[&me],
            )
            .await
            .map_err(db)?;
            c.execute("DELETE FROM spg_instances WHERE id = $1", &[&me])
                .await
                .map_err(db)
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, "cannot give the delivery lanes up; others take them over when the lease runs out");
        }
        self.lanes.state.lock().expect("lane lock").held.clear();
    }

    fn takes_writes(&self) -> Result<(), StoreError> {
        // While the database cannot be reached, the store waits for it: a restart would
        // not bring it back, so liveness keeps passing (readiness does not).
        self.query("SELECT 1", &[]).map(drop)
    }

    fn recover(&self) -> Result<(), StoreError> {
        // A failed commit was rolled back: nothing to repair, only to reach the
        // database again.
        self.query("SELECT 1", &[]).map(drop)
    }

    fn incident(&self, key: &IncidentKey) -> Result<Option<Incident>, StoreError> {
        Ok(self
            .records(
                "incident",
                "SELECT record FROM spg_incidents WHERE integration = $1 AND reference = $2",
                &[&key.integration, &key.reference.as_str()],
            )?
            .pop())
    }

    fn updates_between(
        &self,
        integration: &str,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<Update>, StoreError> {
        self.records(
            "update",
            "SELECT record FROM spg_updates WHERE integration = $1 AND sequence > $2 \
             AND sequence <= $3 ORDER BY sequence LIMIT $4",
            &[
                &integration,
                &(after.min(i64::MAX as u64) as i64),
                &(upto.min(i64::MAX as u64) as i64),
                &limit(max),
            ],
        )
    }

    fn last_sequences(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.counters("last_sequence")
    }

    fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.records("job", "SELECT record FROM spg_jobs ORDER BY id", &[])
    }

    fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.records(
            "dead letter",
            "SELECT record FROM spg_dead_letters ORDER BY id LIMIT $1",
            &[&limit(max)],
        )
    }

    fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT count(*) FROM spg_dead_letters", &[])?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0))
    }

    fn orphans(&self, max: usize) -> Result<Vec<Orphan>, StoreError> {
        self.records(
            "orphan",
            "SELECT record FROM spg_orphans ORDER BY id LIMIT $1",
            &[&limit(max)],
        )
    }

    fn incidents_after(
        &self,
        after: Option<&IncidentKey>,
        max: usize,
    ) -> Result<Vec<Incident>, StoreError> {
        match after {
            Some(k) => self.records(
                "incident",
                "SELECT record FROM spg_incidents WHERE (integration, reference) > ($1, $2) \
                 ORDER BY integration, reference LIMIT $3",
                &[&k.integration, &k.reference.as_str(), &limit(max)],
            ),
            None => self.records(
                "incident",
                "SELECT record FROM spg_incidents ORDER BY integration, reference LIMIT $1",
                &[&limit(max)],
            ),
        }
    }

    fn pruned_sequences(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.counters("pruned")
    }

    fn incidents_page(
        &self,
        filter: &IncidentFilter,
        cursor: Option<&Cursor>,
        max: usize,
    ) -> Result<IncidentPage, StoreError> {
        // Only the given conditions go into the statement, so the planner sees each one
        // (a generic `$1 IS NULL OR ...` would hide the indexes).
        let mut conds: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut arg = |conds: &mut Vec<String>, sql: &str, p: Box<dyn ToSql + Sync + Send>| {
            params.push(p);
            conds.push(sql.replace('?', &format!("${}", params.len())));
        };
        if let Some(r) = &filter.reference {
            arg(&mut conds, "reference = ?", Box::new(r.clone()));
        }
        if let Some(id) = &filter.incident_id {
            arg(&mut conds, "loomis_id = ?", Box::new(id.clone()));
        }
        if let Some(i) = &filter.integration {
            arg(&mut conds, "integration = ?", Box::new(i.clone()));
        }
        if let Some(state) = filter.state {
            arg(&mut conds, "state = ?", Box::new(format!("{state:?}")));
        }
        if let Some(t) = filter.since {
            arg(&mut conds, "created_ns >= ?", Box::new(created_ns(t)));
        }
        if let Some(t) = filter.until {
            arg(&mut conds, "created_ns <= ?", Box::new(created_ns(t)));
        }
        if let Some(c) = cursor {
            let at = created_ns(c.created_at);
            params.push(Box::new(at));
            params.push(Box::new(c.key.integration.clone()));
            params.push(Box::new(c.key.reference.as_str().to_string()));
            let n = params.len();
            conds.push(format!(
                "(created_ns < ${a} OR (created_ns = ${a} AND (integration, reference) > (${b}, ${n})))",
                a = n - 2,
                b = n - 1,
            ));
        }
        params.push(Box::new(limit(max.saturating_add(1))));
        let sql = format!(
            "SELECT record FROM spg_incidents {} ORDER BY created_ns DESC, integration, reference LIMIT ${}",
            if conds.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conds.join(" AND "))
            },
            params.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut found: Vec<Incident> = self.records("incident", &sql, &refs)?;
        // The filter again, on the decoded records: the columns are only an index.
        found.retain(|inc| filter.matches(inc));
        let more = found.len() > max;
        found.truncate(max);
        let next = if more {
            found.last().map(Cursor::of)
        } else {
            None
        };
        Ok(IncidentPage {
            incidents: found,
            next,
        })
    }

    fn updates_of(&self, key: &IncidentKey, max: usize) -> Result<Vec<Update>, StoreError> {
        self.records(
            "update",
            "SELECT record FROM spg_updates WHERE integration = $1 AND reference = $2 \
             ORDER BY sequence LIMIT $3",
            &[&key.integration, &key.reference.as_str(), &limit(max)],
        )
    }

    fn raw_input(&self, key: &IncidentKey) -> Result<Option<RawInput>, StoreError> {
        Ok(self
            .records(
                "raw input",
                "SELECT record FROM spg_raw_inputs WHERE integration = $1 AND reference = $2",
                &[&key.integration, &key.reference.as_str()],
            )?
            .pop())
    }

    fn audit_log(&self, max: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.records(
            "audit entry",
            "SELECT record FROM spg_audit ORDER BY id DESC LIMIT $1",
            &[&limit(max)],
        )
    }
}

/// Applies the embedded migrations to the database at `settings.url` (the `migrate`
/// command): returns what was applied.
pub fn migrate(settings: &PgSettings) -> Result<Migrated, StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Database(format!("cannot start a runtime: {e}")))?;
    let cfg = client_config(settings)?;
    rt.block_on(async {
        let (mut client, conn) = cfg.connect(NoTls).await.map_err(db)?;
        let driver = tokio::spawn(conn);
        let out = migrate_async(&mut client).await;
        drop(client);
        let _ = driver.await;
        out
    })
}
