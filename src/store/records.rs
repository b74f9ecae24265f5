//! Records the store keeps besides incidents and updates: outbox jobs, dead letters and
//! orphans. Jobs are stored in the compact binary form; dead letters and orphans as JSON
//! so an operator can read them in any dump of the keyspace (see [`super::codec`]).

use crate::incident::IncidentKey;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Who a job delivers to. Each target has its own scheduler and concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    Loomis,
    /// The integration's legacy tool (`[integrations.delivery] url`).
    Tool,
}

/// What a job sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// The incident's Dispatch, to Loomis.
    Dispatch,
    /// The customer's Cancel, to Loomis.
    Cancel,
    /// Update `sequence` of the integration, as XML to the tool.
    PostUpdate { sequence: u64 },
}

/// One pending delivery in the outbox. Its schedule is persisted so a restart resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Monotonic across restarts; jobs of one lane run in id order.
    pub id: u64,
    pub target: Target,
    pub kind: JobKind,
    pub incident: IncidentKey,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the job was queued: the retry age limit counts from here.
    #[serde(with = "crate::incident::wire::timestamp")]
    pub created_at: Timestamp,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
}

/// Jobs of one lane are delivered strictly in order, one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    pub target: Target,
    pub incident: IncidentKey,
}

impl Job {
    /// Where the job stands in its lane, before its id: a tool post by its update
    /// sequence, and toward Loomis the Dispatch before the Cancel. Ids alone give that
    /// order on one instance; on a cluster each instance hands out ids from its own
    /// block, while the update sequence and the kinds follow the incident's commits.
    pub fn position(&self) -> u64 {
        match self.kind {
            JobKind::Dispatch => 0,
            JobKind::Cancel => 1,
            JobKind::PostUpdate { sequence } => sequence,
        }
    }

    pub fn lane(&self) -> Lane {
        Lane {
            target: self.target,
            incident: self.incident.clone(),
        }
    }
}

/// A tool delivery that gave up, kept for an operator to see and replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub job: Job,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub failed_at: Timestamp,
    pub reason: String,
}

/// A Loomis message that matched no incident, kept for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Orphan {
    pub id: u64,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub received_at: Timestamp,
    pub reason: String,
    pub message: serde_json::Value,
}
