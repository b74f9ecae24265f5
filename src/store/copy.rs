//! `store copy`: moves everything from one store into another (an embedded store into
//! PostgreSQL when a site grows into a cluster, or back), refusing a target that holds
//! anything, and checking the counts afterwards.
//!
//! What is kept: every incident with its timeline and its reference index entry, every
//! integration's update log at the same sequence numbers (a stream resumes on the new
//! store where it stopped on the old), the counter after the last update and retention's
//! mark, the outbox with its retry schedules, dead letters and orphans, with their ids;
//! what each caller sent (the console's raw input) and the operators' audit log; and ids
//! handed out later are above every copied one. Both gateways must be stopped.

use super::audit::AuditEntry;
use super::records::{DeadLetter, Job, Orphan};
use super::{Store, StoreError};
use crate::incident::Incident;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a copy did not happen or did not check out.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target store is not empty ({0}); copy only into an empty store")]
    TargetNotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("after the copy the target holds {target} {what}, the source {source_count}")]
    Mismatch {
        what: &'static str,
        source_count: u64,
        target: u64,
    },
}

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub incidents: u64,
    /// Updates stored, over all integrations.
    pub updates: u64,
    /// Per integration: the last update sequence (the counter), as in the source.
    pub sequences: BTreeMap<String, u64>,
    /// Per integration: the last update sequence retention removed, where any.
    pub pruned: BTreeMap<String, u64>,
    pub jobs: u64,
    pub dead_letters: u64,
    pub orphans: u64,
    /// Raw inputs kept beside incidents.
    pub raw_inputs: u64,
    pub audit_entries: u64,
}

/// Records per write: large enough to be quick, small enough for one transaction.
const CHUNK: usize = 500;

/// Copies `from` into `to` (which must be empty) and checks the counts.
pub async fn copy(from: &Store, to: &Store) -> Result<Copied, CopyError> {
    refuse_non_empty(to)?;
    let mut copied = Copied::default();

    // Incidents and their reference entries.
    let mut after: Option<crate::incident::IncidentKey> = None;
    loop {
        let page = from.incidents_after(after.as_ref(), CHUNK)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        copied.incidents += page.len() as u64;
        let mut raws = Vec::new();
        for inc in &page {
            if let Some(raw) = from.raw_input(&inc.key())? {
                raws.push((inc.key(), raw));
            }
        }
        copied.raw_inputs += raws.len() as u64;
        let page: Arc<Vec<Incident>> = Arc::new(page);
        let raws = Arc::new(raws);
        to.write(move |tx| {
            for inc in page.iter() {
                tx.put_incident(inc)?;
                tx.put_reference(&inc.customer_number, &inc.reference, &inc.key())?;
            }
            for (key, raw) in raws.iter() {
                tx.put_raw_input(key, raw)?;
            }
            Ok(())
        })
        .await?;
    }

    // Update logs at the same numbers: the target's counter is taken through every
    // number (removed ones too), so it ends where the source's does.
    let sequences = from.last_sequences();
    for (integration, last) in &sequences {
        copied.sequences.insert(integration.clone(), *last);
        let pruned = from.pruned_through(integration);
        if pruned > 0 {
            copied.pruned.insert(integration.clone(), pruned);
        }
        let mut next = 1u64;
        while next <= *last {
            let upto = (next + CHUNK as u64 - 1).min(*last);
            let updates = from.updates_after(integration, next - 1, CHUNK)?;
            let updates: Vec<_> = updates
                .into_iter()
                .filter(|u| u.sequence.get() <= upto)
                .collect();
            copied.updates += updates.len() as u64;
            let (integration, updates) = (integration.clone(), Arc::new(updates));
            let from_seq = next;
            to.write(move |tx| {
                let mut it = updates.iter().peekable();
                for seq in from_seq..=upto {
                    let n = tx.next_sequence(&integration)?;
                    if n != seq {
                        return Err(StoreError::Database(format!(
                            "the target numbered update {seq} of {integration} as {n}"
                        )));
                    }
                    if let Some(u) = it.next_if(|u| u.sequence.get() == seq) {
                        tx.append_update(u)?;
                    }
                }
                Ok(())
            })
            .await?;
            next = upto + 1;
        }
        if pruned > 0 {
            let integration = integration.clone();
            to.raise_pruned(&integration, pruned);
            to.write(move |tx| tx.set_pruned(&integration, pruned))
                .await?;
        }
    }

    // The outbox (schedules kept), dead letters and orphans, with their ids.
    let jobs = from.jobs()?;
    let dead_letters = from.dead_letters(usize::MAX)?;
    let orphans = from.orphans(usize::MAX)?;
    let audit = from.audit_log(usize::MAX)?;
    copied.audit_entries = audit.len() as u64;
    copied.jobs = jobs.len() as u64;
    copied.dead_letters = dead_letters.len() as u64;
    copied.orphans = orphans.len() as u64;
    let top_id = jobs
        .iter()
        .map(|j| j.id)
        .chain(dead_letters.iter().flat_map(|d| [d.id, d.job.id]))
        .chain(orphans.iter().map(|o| o.id))
        .chain(audit.iter().map(|a| a.id))
        .max()
        .unwrap_or(0);
    for chunk in jobs.chunks(CHUNK) {
        let chunk: Arc<Vec<Job>> = Arc::new(chunk.to_vec());
        to.write(move |tx| chunk.iter().try_for_each(|j| tx.put_job(j)))
            .await?;
    }
    for chunk in dead_letters.chunks(CHUNK) {
        let chunk: Arc<Vec<DeadLetter>> = Arc::new(chunk.to_vec());
        to.write(move |tx| chunk.iter().try_for_each(|d| tx.put_dead_letter(d)))
            .await?;
    }
    for chunk in orphans.chunks(CHUNK) {
        let chunk: Arc<Vec<Orphan>> = Arc::new(chunk.to_vec());
        to.write(move |tx| chunk.iter().try_for_each(|o| tx.put_orphan(o)))
            .await?;
    }
    for chunk in audit.chunks(CHUNK) {
        let chunk: Arc<Vec<AuditEntry>> = Arc::new(chunk.to_vec());
        to.write(move |tx| chunk.iter().try_for_each(|a| tx.put_audit(a)))
            .await?;
    }
    // Ids handed out from now on are above every copied one.
    loop {
        let reached = to
            .write(move |tx| {
                let mut id = 0;
                for _ in 0..100_000 {
                    id = tx.next_id()?;
                    if id > top_id {
                        break;
                    }
                }
                Ok(id)
            })
            .await?;
        if reached > top_id {
            break;
        }
    }

    check(to, &copied)?;
    Ok(copied)
}

/// Refuses a target holding anything.
fn refuse_non_empty(to: &Store) -> Result<(), CopyError> {
    let mut found = Vec::new();
    if !to.incidents_after(None, 1)?.is_empty() {
        found.push("incidents");
    }
    if !to.last_sequences().is_empty() {
        found.push("updates");
    }
    if !to.jobs()?.is_empty() {
        found.push("outbox jobs");
    }
    if !to.dead_letters(1)?.is_empty() {
        found.push("dead letters");
    }
    if !to.orphans(1)?.is_empty() {
        found.push("orphans");
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(CopyError::TargetNotEmpty(found.join(", ")))
    }
}

/// Counts what the target holds and compares it with what was copied.
fn check(to: &Store, copied: &Copied) -> Result<(), CopyError> {
    let same = |what, source_count: u64, target: u64| {
        if source_count == target {
            Ok(())
        } else {
            Err(CopyError::Mismatch {
                what,
                source_count,
                target,
            })
        }
    };
    let mut incidents = 0u64;
    let mut raw_inputs = 0u64;
    let mut after = None;
    loop {
        let page = to.incidents_after(after.as_ref(), CHUNK)?;
        let Some(last) = page.last() else { break };
        after = Some(last.key());
        incidents += page.len() as u64;
        for inc in &page {
            raw_inputs += u64::from(to.raw_input(&inc.key())?.is_some());
        }
    }
    same("incidents", copied.incidents, incidents)?;
    same("raw inputs", copied.raw_inputs, raw_inputs)?;
    let mut updates = 0u64;
    for (integration, last) in &copied.sequences {
        let mut after = 0;
        loop {
            let page = to.updates_after(integration, after, CHUNK)?;
            let Some(u) = page.last() else { break };
            after = u.sequence.get();
            updates += page.len() as u64;
        }
        // (When retention removed every update, no stored update shows the counter.)
        let all_removed = copied.pruned.get(integration) >= Some(last);
        if !all_removed {
            let target_last = to.last_sequences().get(integration).copied().unwrap_or(0);
            same("as the last update sequence", *last, target_last)?;
        }
    }
    same("updates", copied.updates, updates)?;
    same("outbox jobs", copied.jobs, to.jobs()?.len() as u64)?;
    same(
        "dead letters",
        copied.dead_letters,
        to.dead_letters(usize::MAX)?.len() as u64,
    )?;
    same(
        "orphans",
        copied.orphans,
        to.orphans(usize::MAX)?.len() as u64,
    )?;
    same(
        "audit entries",
        copied.audit_entries,
        to.audit_log(usize::MAX)?.len() as u64,
    )?;
    Ok(())
}
