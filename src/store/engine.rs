//! The key-value engines the store can keep its one ordered keyspace in.
//!
//! [`super::kv::KvBackend`] lays the gateway's tables out as keys and needs only four
//! things of an engine: point reads, ordered range reads, an atomic batch of writes that
//! is durable when the call returns, and an explicit sync. Two engines provide them:
//! - **fjall** (default): an LSM tree. A batch is one journal append plus one `fsync`;
//!   memtables are flushed and compacted by fjall's background workers.
//! - **sled** 0.34: the first engine the gateway used, kept for stores written by it.
//!
//! Which engine a store directory holds is decided when it is created; opening it with
//! the other engine is refused with a message naming both (see [`open`]).

use super::StoreError;
use std::path::Path;

/// Writes of one atomic batch, in key order: key -> `Some(value)` or `None` (removed).
pub type Writes = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub use crate::config::EngineKind;

/// Key and value of one stored entry.
pub type Entry<B> = (B, B);

/// An ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// The bytes of a stored value, without a copy where the engine allows.
    type Bytes: AsRef<[u8]>;
    fn get(&self, key: &[u8]) -> Result<Option<Self::Bytes>, StoreError>;
    /// Applies `writes` atomically (all or none survive a crash) and returns once they
    /// are on disk.
    fn commit(&self, writes: Writes) -> Result<(), StoreError>;
    /// Makes everything committed durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Entries with `start <= key < end`, in key order, at most `limit`.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry<Self::Bytes>>, StoreError>;
}

/// Which engine's files a directory holds, if any: sled keeps `conf` and `db` at the top,
/// fjall a `keyspaces` folder beside its `*.jnl` journals.
pub fn detect(path: &Path) -> Option<EngineKind> {
    if path.join("conf").is_file() && path.join("db").is_file() {
        Some(EngineKind::Sled)
    } else if path.join("keyspaces").is_dir() {
        Some(EngineKind::Fjall)
    } else {
        None
    }
}

/// The refusal of a store directory another process holds open.
fn in_use(path: &Path) -> StoreError {
    StoreError::Database(format!(
        "the store at {} is in use by another process (one gateway per store directory)",
        path.display()
    ))
}

fn cannot_open(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("cannot open store at {}: {e}", path.display()))
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// fjall

/// A fjall database with the gateway's one keyspace.
pub struct FjallEngine {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

/// Largest memtable before fjall flushes it to a table file. fjall's default (64 MiB)
/// would be most of the gateway's memory; 8 MiB holds about 10,000 incidents.
const MEMTABLE_BYTES: u64 = 8 << 20;

impl From<fjall::Error> for StoreError {
    /// fjall's own text is its `Debug` form ("FjallError: Poisoned"); say what it means,
    /// and tell damage on disk (a block whose checksum fails) from a passing failure.
    fn from(e: fjall::Error) -> Self {
        use fjall::{Error as F, LsmError as L};
        match e {
            F::Poisoned => StoreError::Database(
                "the engine refuses writes since a write or fsync failed (it is reopened \
                 once the disk takes writes again)"
                    .into(),
            ),
            F::Io(io) | F::Storage(L::Io(io)) => StoreError::Database(format!("I/O error: {io}")),
            e @ (F::Storage(
                L::ChecksumMismatch { .. }
                | L::InvalidTrailer
                | L::InvalidHeader(_)
                | L::InvalidTag(_)
                | L::Decompress(_)
                | L::Utf8(_),
            )
            | F::InvalidTrailer
            | F::InvalidTag(_)
            | F::Decompress(_)
            | F::JournalRecovery(_)) => {
                StoreError::Corrupt(format!("the engine's files are damaged: {e:?}"))
            }
            e => StoreError::Database(format!("{e:?}")),
        }
    }
}

impl FjallEngine {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = fjall::Database::builder(path)
            .cache_size(cache_bytes)
            // The writer decides when the journal reaches the disk: once per group commit.
            .manual_journal_persist(true)
            // One background worker for memtable flushes and compactions: a second one
            // competes with request handling for the cores and adds latency spikes.
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => in_use(path),
                e => cannot_open(path, e),
            })?;
        let keyspace = db.keyspace("gateway", || {
            fjall::KeyspaceCreateOptions::default()
                .manual_journal_persist(true)
                .max_memtable_size(MEMTABLE_BYTES)
        })?;
        Ok(FjallEngine { db, keyspace })
    }
}

impl Engine for FjallEngine {
    type Bytes = fjall::Slice;

    fn get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
        Ok(self.keyspace.get(key)?)
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        if !writes.is_empty() {
            let mut batch = self.db.batch();
            for (k, v) in writes {
                match v {
                    Some(v) => batch.insert(&self.keyspace, k, v),
                    None => batch.remove(&self.keyspace, k),
                }
            }
            batch.commit()?;
        }
        self.sync()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry<fjall::Slice>>, StoreError> {
        self.keyspace
            .range(start..end)
            .take(limit)
            .map(|g| g.into_inner().map_err(StoreError::from))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// sled

/// A sled database with the gateway's one tree.
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl SledEngine {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the writer's explicit flush after every group; the
            // background flush only bounds how much un-acknowledged work a crash drops.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                // sled reports its directory lock as an I/O error of its own wording.
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    in_use(path)
                }
                e => cannot_open(path, e),
            })?;
        let tree = db.open_tree("gateway")?;
        Ok(SledEngine { db, tree })
    }
}

impl Engine for SledEngine {
    type Bytes = sled::IVec;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        if !writes.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in writes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.tree.apply_batch(batch)?;
        }
        self.sync()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry<sled::IVec>>, StoreError> {
        self.tree
            .range(start..end)
            .take(limit)
            .map(|r| r.map_err(StoreError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"o"), Some(b"p".to_vec()));
        assert_eq!(prefix_end(b"m\x00seq\x00"), Some(b"m\x00seq\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    fn exercise<E: Engine>(engine: &E) {
        let mut w = Writes::new();
        w.insert(b"a1".to_vec(), Some(b"one".to_vec()));
        w.insert(b"a2".to_vec(), Some(b"two".to_vec()));
        w.insert(b"b1".to_vec(), Some(b"three".to_vec()));
        engine.commit(w).unwrap();
        let mut w = Writes::new();
        w.insert(b"a1".to_vec(), None);
        w.insert(b"a3".to_vec(), Some(b"four".to_vec()));
        engine.commit(w).unwrap();
        assert!(engine.get(b"a1").unwrap().is_none());
        assert_eq!(engine.get(b"a2").unwrap().unwrap().as_ref(), b"two");
        let keys: Vec<Vec<u8>> = engine
            .range(b"a", &prefix_end(b"a").unwrap(), 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.as_ref().to_vec())
            .collect();
        assert_eq!(keys, vec![b"a2".to_vec(), b"a3".to_vec()]);
        assert_eq!(engine.range(b"a", b"z", 1).unwrap().len(), 1);
    }

    #[test]
    fn both_engines_read_back_what_a_batch_wrote() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&FjallEngine::open(&dir.path().join("f"), 1 << 20).unwrap());
        exercise(&SledEngine::open(&dir.path().join("s"), 1 << 20).unwrap());
    }
}
