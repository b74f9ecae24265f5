//! The simulator's memory: incidents, references seen, faults in force, the seeded
//! RNG, the ring of received requests and the counters. All decisions that must be
//! atomic (is this a duplicate? may this Close still go? is this Cancel too late?)
//! are made here under one short lock that is never held across an `.await`.

use super::config::{check_http_url, Faults, FaultsPatch, Secret, SimulatorConfig};
use crate::loomis::message::FieldProblem;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Who an incident is, for messages and logs.
#[derive(Debug, Clone)]
pub(crate) struct IncidentKey {
    pub(crate) customer_number: String,
    pub(crate) reference: String,
    pub(crate) incident_id: String,
}

/// What a received request turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReceivedKind {
    /// `MessageType` says Dispatch (valid or not: see the status).
    Dispatch,
    /// `MessageType` says Cancel (a customer Cancel).
    Cancel,
    /// Anything else: not JSON, no or unknown `MessageType`, wrong method, too large.
    Invalid,
}

/// One request as the simulator saw it and answered it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedMessage {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// When it arrived.
    pub at: Timestamp,
    /// The request path.
    pub path: String,
    /// What it was.
    pub kind: ReceivedKind,
    /// The parsed JSON body, if it was JSON.
    pub message: Option<Value>,
    /// The status answered; `None` when the connection was dropped (timeout or down).
    pub status: Option<u16>,
    /// What the simulator did, in words: `ACK INC400300`, `NAK Duplicate`, `fault: 503`.
    pub outcome: String,
}

/// A request in the ring: its body as received, parsed when read back (most are never
/// read, and keeping a parsed copy of each cost more than the simulator's own checks).
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) seq: u64,
    at: Timestamp,
    path: String,
    kind: ReceivedKind,
    /// The body, when it was JSON.
    body: Option<bytes::Bytes>,
    status: Option<u16>,
    outcome: String,
}

impl Received {
    pub(crate) fn message(&self) -> ReceivedMessage {
        ReceivedMessage {
            seq: self.seq,
            at: self.at,
            path: self.path.clone(),
            kind: self.kind,
            message: self
                .body
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok()),
            status: self.status,
            outcome: self.outcome.clone(),
        }
    }
}

/// Counters, updated as things happen; `wait_for` watches them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimulatorStats {
    /// Requests on the incident path, faults included.
    pub requests: u64,
    /// Valid Dispatch messages processed (ACKed or NAKed).
    pub dispatches: u64,
    /// Valid customer Cancel messages processed (whatever the answer).
    pub cancels: u64,
    /// Customer Cancels accepted (`200`).
    pub cancels_accepted: u64,
    /// ACKs issued (one per incident created).
    pub acks: u64,
    /// NAKs issued, by `ResponseCode`.
    pub naks: BTreeMap<String, u64>,
    /// Requests answered `400` (invalid message) or `405`.
    pub invalid: u64,
    /// Requests answered `401`.
    pub unauthorized: u64,
    /// Requests answered `413`.
    pub too_large: u64,
    /// Cancels answered `404` (unknown `IncidentId`).
    pub unknown_incident: u64,
    /// Cancels answered `409` (already closed or cancelled, or fields contradict).
    pub conflicts: u64,
    /// Requests answered `503` by `fail_rate`.
    pub faults_failed: u64,
    /// Requests refused while down (`503` or dropped).
    pub faults_down: u64,
    /// Requests held and dropped by `timeout_rate`.
    pub faults_timed_out: u64,
    /// Callback POSTs attempted, retries and duplicate copies included.
    pub callback_attempts: u64,
    /// Callbacks answered 2xx.
    pub callbacks_sent: u64,
    /// Callbacks answered 2xx, by `MessageType`.
    pub callbacks_sent_by_kind: BTreeMap<String, u64>,
    /// Failed attempts that were retried (5xx, 408, 429, timeout, connection error).
    pub callbacks_retried: u64,
    /// Callbacks given up after the retry bounds.
    pub callbacks_failed: u64,
    /// Callbacks answered with another 4xx: logged and dropped.
    pub callbacks_rejected: u64,
    /// Callbacks dropped because no callback URL was set.
    pub callbacks_undeliverable: u64,
    /// Extra copies sent by the `duplicate_callbacks` fault.
    pub callbacks_duplicated: u64,
}

/// Where an incident stands, from the simulator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncidentState {
    Open,
    Accepted,
    Closed,
    Cancelled,
}

impl IncidentState {
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Closed | Self::Cancelled)
    }
}

/// One incident the simulator created.
pub(crate) struct Incident {
    pub(crate) customer_number: String,
    pub(crate) reference: String,
    pub(crate) state: IncidentState,
    /// Set when a customer Cancel was accepted: the incident's task stops its script.
    pub(crate) customer_cancelled: bool,
    /// Tells the incident's task about a customer Cancel (its `ResponseText`).
    pub(crate) commands: mpsc::UnboundedSender<String>,
}

/// The callback destination, changeable at run time.
#[derive(Debug, Clone)]
pub(crate) struct CallbackTarget {
    pub(crate) url: String,
    pub(crate) token: Option<Secret>,
}

/// What the fault dice decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultDecision {
    None,
    /// Down: answer per `down_mode`; `retry_after` is the time left, rounded up.
    Down {
        retry_after_secs: u64,
    },
    /// `503`, with `Retry-After` if `Some`.
    Fail {
        retry_after_secs: Option<u64>,
    },
    /// Hold, then drop the connection.
    Hang,
}

/// The mutable part, behind one lock.
pub(crate) struct Runtime {
    pub(crate) callback: Option<CallbackTarget>,
    pub(crate) faults: Faults,
    pub(crate) down_until: Option<Instant>,
    pub(crate) rng: StdRng,
    pub(crate) incidents: HashMap<String, Incident>,
    /// `(CustomerNumber, IncidentReference)` -> (`IncidentId`, when ACKed), for `Duplicate`.
    pub(crate) references: HashMap<(String, String), (String, Instant)>,
    pub(crate) next_number: u64,
    pub(crate) received: VecDeque<Received>,
    pub(crate) received_total: u64,
}

/// Everything the server, the incident tasks and the handle share.
pub(crate) struct Shared {
    pub(crate) config: SimulatorConfig,
    /// The seed actually used, so that a run can be replayed.
    pub(crate) seed: u64,
    pub(crate) runtime: Mutex<Runtime>,
    pub(crate) stats: watch::Sender<SimulatorStats>,
    pub(crate) http: crate::client::Client,
    /// Fires on shutdown; every task listens.
    pub(crate) shutdown: CancellationToken,
    /// Every task the simulator spawned, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl Shared {
    pub(crate) fn new(config: SimulatorConfig) -> std::io::Result<Self> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("simulator configuration: {}", problems.join("; ")),
            ));
        }
        let seed = config.seed.unwrap_or_else(|| rand::rng().random());
        let http = crate::client::Client::new(
            config.callback_retry.request_timeout,
            std::time::Duration::from_secs(30),
        );
        let callback = config.callback_url.clone().map(|url| CallbackTarget {
            url,
            token: config.callback_token.clone(),
        });
        let down_until = down_until(&config.faults);
        let runtime = Runtime {
            callback,
            faults: config.faults.clone(),
            down_until,
            rng: StdRng::seed_from_u64(seed),
            incidents: HashMap::new(),
            references: HashMap::new(),
            next_number: config.first_incident_number,
            received: VecDeque::new(),
            received_total: 0,
        };
        Ok(Self {
            config,
            seed,
            runtime: Mutex::new(runtime),
            stats: watch::Sender::new(SimulatorStats::default()),
            http,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// The lock; a panic elsewhere must not take the simulator down with it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut SimulatorStats)) {
        self.stats.send_modify(f);
    }

    pub(crate) fn set_callback(&self, url: String, token: Option<Secret>) -> Result<(), String> {
        check_http_url(&url)?;
        self.lock().callback = Some(CallbackTarget { url, token });
        Ok(())
    }

    pub(crate) fn set_faults(&self, faults: Faults) -> Result<(), String> {
        let problems = faults.problems();
        if !problems.is_empty() {
            return Err(problems
                .into_iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect::<Vec<_>>()
                .join("; "));
        }
        let mut rt = self.lock();
        rt.down_until = down_until(&faults);
        rt.faults = faults;
        Ok(())
    }

    /// Applies a run-time change; the down window restarts only if the patch names it.
    pub(crate) fn patch_faults(&self, patch: &FaultsPatch) -> Result<Faults, Vec<FieldProblem>> {
        let mut rt = self.lock();
        let faults = patch.apply(&rt.faults);
        let problems = faults.problems();
        if !problems.is_empty() {
            return Err(problems
                .into_iter()
                .map(|(k, m)| FieldProblem::new(k, m))
                .collect());
        }
        if patch.down_for_ms.is_some() {
            rt.down_until = down_until(&faults);
        }
        rt.faults = faults.clone();
        Ok(faults)
    }

    /// Rolls the dice for one incident-path request.
    pub(crate) fn decide_fault(&self) -> FaultDecision {
        let mut rt = self.lock();
        let now = Instant::now();
        if let Some(until) = rt.down_until {
            if until > now {
                let left = until - now;
                return FaultDecision::Down {
                    retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                };
            }
            rt.down_until = None;
        }
        let f = rt.faults.clone();
        if roll(&mut rt.rng, f.fail_rate) {
            let with = roll(&mut rt.rng, f.retry_after_rate);
            return FaultDecision::Fail {
                retry_after_secs: with.then_some(f.retry_after_secs),
            };
        }
        if roll(&mut rt.rng, f.timeout_rate) {
            return FaultDecision::Hang;
        }
        FaultDecision::None
    }

    /// Records one request in the bounded ring.
    pub(crate) fn record(
        &self,
        path: &str,
        kind: ReceivedKind,
        body: Option<bytes::Bytes>,
        status: Option<u16>,
        outcome: String,
    ) {
        let mut rt = self.lock();
        rt.received_total += 1;
        let seq = rt.received_total;
        while rt.received.len() >= self.config.max_records {
            rt.received.pop_front();
        }
        rt.received.push_back(Received {
            seq,
            at: Timestamp::now(),
            path: path.to_string(),
            kind,
            body,
            status,
            outcome,
        });
    }

    /// The jittered wait before the next attempt (±20 %).
    pub(crate) fn jittered(&self, base: Duration) -> Duration {
        let factor: f64 = self.lock().rng.random_range(0.8..=1.2);
        base.mul_f64(factor)
    }

    /// Whether a random draw falls under `p`.
    pub(crate) fn chance(&self, p: f64) -> bool {
        roll(&mut self.lock().rng, p)
    }
}

fn down_until(faults: &Faults) -> Option<Instant> {
    (faults.down_for_ms > 0).then(|| Instant::now() + Duration::from_millis(faults.down_for_ms))
}

/// `true` with probability `p` (`0` never, `1` always), one draw from the seeded RNG.
fn roll(rng: &mut StdRng, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_dice() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64).map(|_| roll(&mut rng, 0.5)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn rates_zero_and_one_are_exact() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| roll(&mut rng, 1.0)));
        assert!((0..1000).all(|_| !roll(&mut rng, 0.0)));
    }

    #[tokio::test]
    async fn down_then_fail_then_hang() {
        let shared = Shared::new(SimulatorConfig {
            seed: Some(1),
            ..SimulatorConfig::default()
        })
        .unwrap();
        assert_eq!(shared.decide_fault(), FaultDecision::None);
        shared
            .set_faults(Faults {
                down_for_ms: 1500,
                ..Faults::default()
            })
            .unwrap();
        assert_eq!(
            shared.decide_fault(),
            FaultDecision::Down {
                retry_after_secs: 2
            }
        );
        shared
            .set_faults(Faults {
                fail_rate: 1.0,
                retry_after_rate: 1.0,
                retry_after_secs: 7,
                ..Faults::default()
            })
            .unwrap();
        assert_eq!(
            shared.decide_fault(),
            FaultDecision::Fail {
                retry_after_secs: Some(7)
            }
        );
        shared
            .set_faults(Faults {
                timeout_rate: 1.0,
                ..Faults::default()
            })
            .unwrap();
        assert_eq!(shared.decide_fault(), FaultDecision::Hang);
        assert!(shared
            .set_faults(Faults {
                fail_rate: 2.0,
                ..Faults::default()
            })
            .is_err());
    }

    #[test]
    fn record_ring_is_bounded() {
        let shared = Shared::new(SimulatorConfig {
            max_records: 3,
            ..SimulatorConfig::default()
        })
        .unwrap();
        for i in 0..5 {
            shared.record("/", ReceivedKind::Invalid, None, Some(400), i.to_string());
        }
        let rt = shared.lock();
        let seqs: Vec<u64> = rt.received.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }
}
