//! The latest delivery attempts of each incident, in memory, for the console's timeline:
//! when each was made, to whom, what came of it and how long it took. The durable record
//! of deliveries is the incident's timeline and the outbox; this adds each attempt's
//! latency, which they do not keep, for attempts since the gateway started.
//!
//! A leaf: imports no other module of the gateway. Bounded: at most [`PER_INCIDENT`]
//! attempts of [`INCIDENTS`] incidents (the oldest incident goes first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Attempts kept per incident (the latest).
pub const PER_INCIDENT: usize = 16;
/// Incidents kept.
pub const INCIDENTS: usize = 20_000;

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was sent.
    pub at: jiff::Timestamp,
    /// `loomis` or `tool`.
    pub target: &'static str,
    /// `Dispatch`, `Cancel`, `Update #3`.
    pub what: String,
    /// `HTTP 200`, or why it failed (retried or refused).
    pub outcome: String,
    /// From sending to the answer (or the failure).
    pub latency: Duration,
}

type Key = (String, String);

#[derive(Default)]
struct Inner {
    by: HashMap<Key, VecDeque<Attempt>>,
    order: VecDeque<Key>,
}

/// The log; cheap to share in an `Arc`.
#[derive(Default)]
pub struct AttemptLog {
    inner: Mutex<Inner>,
}

impl AttemptLog {
    /// Notes an attempt for the incident `integration` / `reference`.
    pub fn record(&self, integration: &str, reference: &str, attempt: Attempt) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (integration.to_string(), reference.to_string());
        if !inner.by.contains_key(&key) {
            if inner.order.len() >= INCIDENTS {
                if let Some(old) = inner.order.pop_front() {
                    inner.by.remove(&old);
                }
            }
            inner.order.push_back(key.clone());
        }
        let q = inner.by.entry(key).or_default();
        if q.len() >= PER_INCIDENT {
            q.pop_front();
        }
        q.push_back(attempt);
    }

    /// The attempts kept for the incident, oldest first.
    pub fn of(&self, integration: &str, reference: &str) -> Vec<Attempt> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .by
            .get(&(integration.to_string(), reference.to_string()))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u64) -> Attempt {
        Attempt {
            at: jiff::Timestamp::UNIX_EPOCH,
            target: "loomis",
            what: "Dispatch".into(),
            outcome: format!("HTTP {n}"),
            latency: Duration::from_millis(n),
        }
    }

    #[test]
    fn keeps_the_latest_attempts_of_the_latest_incidents() {
        let log = AttemptLog::default();
        for n in 0..(PER_INCIDENT as u64 + 3) {
            log.record("sn", "INC1", attempt(n));
        }
        let kept = log.of("sn", "INC1");
        assert_eq!(kept.len(), PER_INCIDENT);
        assert_eq!(kept[0].latency, Duration::from_millis(3));
        for i in 0..INCIDENTS {
            log.record("sn", &format!("X{i}"), attempt(1));
        }
        assert!(
            log.of("sn", "INC1").is_empty(),
            "the oldest incident went first"
        );
        assert_eq!(log.of("sn", "X1").len(), 1);
        assert!(log.of("other", "INC1").is_empty());
    }
}
