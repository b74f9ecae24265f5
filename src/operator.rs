//! What an operator can do to mend a stuck incident, for the web console: replay dead
//! letters, retry a waiting delivery now, cancel an incident (a real Cancel to Loomis,
//! through [`Gateway::cancel`]), resolve an orphan. Each action is recorded in the audit
//! log with who took it and, where it concerns an incident, as a note on the incident's
//! timeline, in the same store write as the action itself (cancel: right after it, since
//! the cancel is the gateway's own write).

use crate::gateway::{CancelError, Gateway};
use crate::incident::{Direction, EntryOutcome, IncidentKey};
use crate::store::audit::AuditEntry;
use crate::store::records::Job;
use crate::store::{StoreError, Tx};
use jiff::Timestamp;

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no {0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Notes `detail` on the timeline of `key` (when it still exists) and appends the audit
/// entry, inside the caller's write.
fn record(
    tx: &Tx<'_>,
    key: Option<&IncidentKey>,
    who: &str,
    action: &str,
    target: &str,
    outcome: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    if let Some(key) = key {
        if let Some(mut inc) = tx.incident(key)? {
            inc.record(
                now,
                Direction::Gateway,
                "Operator",
                EntryOutcome::Note,
                format!("{action} by {who}: {outcome}"),
                None,
            );
            tx.put_incident(&inc)?;
        }
    }
    let id = tx.next_id()?;
    tx.put_audit(&AuditEntry {
        id,
        at: now,
        who: who.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: outcome.to_string(),
    })
}

/// Moves dead letter `id` back into the outbox (at the back of its lane, with a new job
/// id), noted and audited.
pub async fn replay(gw: &Gateway, id: u64, who: &str) -> Result<IncidentKey, ActionError> {
    let who = who.to_string();
    let out = gw
        .store()
        .write(move |tx| {
            let Some(dl) = tx.dead_letter(id)? else {
                return Ok(None);
            };
            tx.remove_dead_letter(id)?;
            let now = Timestamp::now();
            let job_id = tx.next_id()?;
            tx.enqueue(Job {
                id: job_id,
                attempts: 0,
                created_at: now,
                next_attempt_at: now,
                last_error: None,
                ..dl.job.clone()
            })?;
            record(
                tx,
                Some(&dl.job.incident),
                &who,
                "replay",
                &format!("dead letter {id}"),
                &format!(
                    "queued again as job {job_id} (it had failed: {})",
                    dl.reason
                ),
                now,
            )?;
            Ok(Some(dl.job.incident))
        })
        .await?;
    out.ok_or_else(|| ActionError::NotFound(format!("dead letter {id}")))
}

/// Makes the waiting job `id` due now: its stored attempt time is set to now, and its
/// scheduler, which holds it already, moves its timer (a job being attempted keeps its
/// course).
pub async fn retry_now(gw: &Gateway, id: u64, who: &str) -> Result<IncidentKey, ActionError> {
    let who = who.to_string();
    let out = gw
        .store()
        .write(move |tx| {
            let Some(mut job) = tx.job(id)? else {
                return Ok(None);
            };
            let now = Timestamp::now();
            job.next_attempt_at = now;
            tx.enqueue(job.clone())?;
            record(
                tx,
                Some(&job.incident),
                &who,
                "retry-now",
                &format!("job {id}"),
                &format!(
                    "{:?} to {:?} made due now (after {} attempt(s))",
                    job.kind, job.target, job.attempts
                ),
                now,
            )?;
            Ok(Some(job.incident))
        })
        .await?;
    out.ok_or_else(|| ActionError::NotFound(format!("job {id} in the outbox")))
}

/// Cancels the incident as its customer would: Loomis gets a real Cancel (once the
/// IncidentId is known). The note and audit entry follow the cancel's own write.
pub async fn cancel(
    gw: &Gateway,
    key: &IncidentKey,
    reason: &str,
    who: &str,
) -> Result<(), ActionError> {
    let reason = if reason.trim().is_empty() {
        format!("cancelled by {who} from the gateway console")
    } else {
        reason.trim().to_string()
    };
    let outcome = match gw.cancel(&key.integration, &key.reference, reason).await {
        Ok(inc) => format!("cancel asked; the incident is {}", inc.state),
        Err(CancelError::NotFound(r)) => {
            return Err(ActionError::NotFound(format!("incident {r}")))
        }
        Err(CancelError::AlreadyTerminal(s, _)) => {
            return Err(ActionError::Refused(format!("the incident is already {s}")))
        }
        Err(CancelError::Store(e)) => return Err(e.into()),
    };
    let (who, k) = (who.to_string(), key.clone());
    gw.store()
        .write(move |tx| {
            record(
                tx,
                Some(&k),
                &who,
                "cancel",
                &k.to_string(),
                &outcome,
                Timestamp::now(),
            )
        })
        .await?;
    Ok(())
}

/// Removes orphan `id` from the list, with the operator's note on what was done about it.
pub async fn resolve_orphan(
    gw: &Gateway,
    id: u64,
    note: &str,
    who: &str,
) -> Result<(), ActionError> {
    // Orphans are few and only read here; removing one is idempotent.
    if !gw.store().orphans(usize::MAX)?.iter().any(|o| o.id == id) {
        return Err(ActionError::NotFound(format!("orphan {id}")));
    }
    let (who, note) = (who.to_string(), note.trim().to_string());
    gw.store()
        .write(move |tx| {
            tx.remove_orphan(id)?;
            let outcome = if note.is_empty() {
                "resolved".to_string()
            } else {
                format!("resolved: {note}")
            };
            record(
                tx,
                None,
                &who,
                "resolve-orphan",
                &format!("orphan {id}"),
                &outcome,
                Timestamp::now(),
            )
        })
        .await?;
    Ok(())
}
