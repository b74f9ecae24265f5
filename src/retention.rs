//! Retention: the store does not grow forever. Once an hour (and a minute after start)
//! the gateway removes what is older than `store.retention_days`:
//! - incidents in a terminal state (Closed, Cancelled, Rejected, Failed) last changed
//!   before the cutoff, with their reference index entry (the reference may then be
//!   used again);
//! - the oldest updates of each integration's log received before the cutoff, as one
//!   contiguous prefix (a resume from a removed position is answered OUT_OF_RANGE, never
//!   with a silent gap);
//! - dead letters and orphans recorded before the cutoff (the oldest first, a page at
//!   a time).
//!
//! Open incidents and everything newer are never touched. Removal runs in small atomic
//! writes through the store's writer, each re-checking its records, so intake and
//! callbacks go on meanwhile.

use crate::incident::IncidentKey;
use crate::store::{Store, StoreError, Txn};
use jiff::Timestamp;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records looked at, or removed, per store read or write.
const CHUNK: usize = 512;

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub incidents: u64,
    pub updates: u64,
    pub dead_letters: u64,
    pub orphans: u64,
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.incidents + self.updates + self.dead_letters + self.orphans
    }
}

/// Removes what is older than `cutoff` (see the module doc).
pub async fn prune(store: &Store, cutoff: Timestamp) -> Result<Removed, StoreError> {
    let mut removed = Removed {
        incidents: prune_incidents(store, cutoff).await?,
        ..Removed::default()
    };
    for (integration, last) in store.last_sequences() {
        removed.updates += prune_updates(store, &integration, last, cutoff).await?;
    }
    let (dead_letters, orphans) = prune_records(store, cutoff).await?;
    removed.dead_letters = dead_letters;
    removed.orphans = orphans;
    Ok(removed)
}

async fn prune_incidents(store: &Store, cutoff: Timestamp) -> Result<u64, StoreError> {
    let mut count = 0;
    let mut after: Option<IncidentKey> = None;
    loop {
        let page = store.incidents_after(after.as_ref(), CHUNK)?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = Some(last.key());
        let old: Vec<IncidentKey> = page
            .iter()
            .filter(|i| i.state.is_terminal() && i.updated_at < cutoff)
            .map(|i| i.key())
            .collect();
        if !old.is_empty() {
            count += store
                .write(move |tx| {
                    let mut n = 0;
                    for key in &old {
                        // Re-checked: it may have changed since the scan.
                        let Some(inc) = tx.incident(key)? else {
                            continue;
                        };
                        if !(inc.state.is_terminal() && inc.updated_at < cutoff) {
                            continue;
                        }
                        tx.remove_incident(key)?;
                        if tx
                            .by_reference(&inc.customer_number, &inc.reference)?
                            .as_ref()
                            == Some(key)
                        {
                            tx.remove_reference(&inc.customer_number, &inc.reference)?;
                        }
                        n += 1;
                    }
                    Ok(n)
                })
                .await?;
        }
        if page.len() < CHUNK {
            return Ok(count);
        }
    }
}

async fn prune_updates(
    store: &Store,
    integration: &str,
    last: u64,
    cutoff: Timestamp,
) -> Result<u64, StoreError> {
    let mut count = 0;
    loop {
        let from = store.pruned_through(integration);
        // The last update always stays: it carries the sequence counter's meaning for
        // readers (a resume from it is valid) and costs nothing.
        let page = store.updates_after(integration, from, CHUNK)?;
        let seqs: Vec<u64> = page
            .iter()
            .take_while(|u| u.received_at < cutoff && u.sequence.get() < last)
            .map(|u| u.sequence.get())
            .collect();
        let Some(&through) = seqs.last() else {
            return Ok(count);
        };
        // Announced before removal, so a stream that misses one of them says why.
        store.raise_pruned(integration, through);
        let name = integration.to_string();
        let n = seqs.len() as u64;
        store
            .write(move |tx| {
                for s in &seqs {
                    tx.remove_update(&name, *s)?;
                }
                tx.set_pruned(&name, through)
            })
            .await?;
        count += n;
        if (n as usize) < CHUNK {
            return Ok(count);
        }
    }
}

async fn prune_records(store: &Store, cutoff: Timestamp) -> Result<(u64, u64), StoreError> {
    let dead_letters = prune_oldest(
        store,
        |s| s.dead_letters(CHUNK),
        |d| (d.failed_at < cutoff).then_some(d.id),
        |tx, id| tx.remove_dead_letter(id),
    )
    .await?;
    let orphans = prune_oldest(
        store,
        |s| s.orphans(CHUNK),
        |o| (o.received_at < cutoff).then_some(o.id),
        |tx, id| tx.remove_orphan(id),
    )
    .await?;
    Ok((dead_letters, orphans))
}

/// Removes a table's oldest records while they are old, a page at a time. Ids are
/// handed out in time order, so the old records are a prefix in id order and each page
/// is read from the start again after the previous one was removed.
async fn prune_oldest<T>(
    store: &Store,
    page: impl Fn(&Store) -> Result<Vec<T>, StoreError>,
    old_id: impl Fn(&T) -> Option<u64>,
    remove: fn(&dyn Txn, u64) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut count = 0;
    loop {
        let records = page(store)?;
        let ids: Vec<u64> = records.iter().map_while(&old_id).collect();
        let n = ids.len();
        if n > 0 {
            store
                .write(move |tx| ids.iter().try_for_each(|id| remove(&**tx, *id)))
                .await?;
            count += n as u64;
        }
        if n < records.len() || records.len() < CHUNK {
            return Ok(count);
        }
    }
}

/// Runs [`prune`] a minute after start and then every hour, keeping `keep`, until
/// `shutdown`.
pub async fn run(store: Store, keep: Duration, shutdown: CancellationToken) {
    let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
        next += Duration::from_secs(3600);
        if !store.leads() {
            // On a cluster one instance at a time removes (the one leading).
            continue;
        }
        let Ok(cutoff) = Timestamp::now().checked_sub(keep) else {
            continue;
        };
        match prune(&store, cutoff).await {
            Ok(r) if r.total() > 0 => {
                for (kind, n) in [
                    ("incident", r.incidents),
                    ("update", r.updates),
                    ("dead_letter", r.dead_letters),
                    ("orphan", r.orphans),
                ] {
                    metrics::counter!("gateway_retention_removed_total", "kind" => kind)
                        .increment(n);
                }
                tracing::info!(incidents = r.incidents, updates = r.updates, dead_letters = r.dead_letters,
                    orphans = r.orphans, cutoff = %cutoff, "retention removed old records");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; tried again in an hour"),
        }
    }
}
