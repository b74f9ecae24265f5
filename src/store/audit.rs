//! The operators' audit log: every action taken from the console (replay, retry now,
//! cancel, resolve an orphan), with who took it, when, on what, and what came of it.
//! Kept as JSON so that it reads in any dump of the store.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Store id (monotonic, so the log reads in order).
    pub id: u64,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub at: Timestamp,
    /// Who acted: the name given at sign-in and the role (`alice (admin)`).
    pub who: String,
    /// `replay`, `retry-now`, `cancel`, `resolve-orphan`.
    pub action: String,
    /// What it acted on: `dead letter 12`, `servicenow/INC1`, `orphan 7`.
    pub target: String,
    /// What came of it, in words.
    pub outcome: String,
}
