//! The gateway's core API, used by every front door (XML, gRPC, the Loomis callback
//! route) and by the delivery workers. Each call is one store transaction: the state
//! change, its timeline entry, its updates (with their sequence numbers), and the jobs it
//! implies are written together and acknowledged only once flushed.

use crate::incident::machine::{self, Event, Outcome, Via};
use crate::incident::{Incident, IncidentKey, IncidentReference, Sequence, State};
use crate::loomis::message::{Dispatch, InboundMessage};
use crate::store::records::{DeadLetter, Job, JobKind, Orphan, Target};
use crate::store::{Hints, Store, StoreError, Tx};
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

/// What the core needs to know of an integration.
#[derive(Debug, Clone)]
pub struct IntegrationInfo {
    pub name: String,
    /// The CustomerNumber its incidents carry (Loomis's callbacks are found by it).
    pub customer_number: String,
    /// Updates are posted back to the tool (`[integrations.delivery]`).
    pub delivers: bool,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown integration {0:?}")]
    UnknownIntegration(String),
    #[error("incident {reference:?} exists with different content in: {}", fields.join(", "))]
    Conflict {
        reference: IncidentReference,
        fields: Vec<String>,
        existing: Box<Incident>,
    },
    #[error("reference {reference:?} of customer {customer} is already used by integration {other:?}; Loomis could not tell the two apart")]
    ReferenceTaken {
        reference: IncidentReference,
        customer: String,
        other: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a customer cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no incident {0:?}")]
    NotFound(IncidentReference),
    #[error("incident is already {0}")]
    AlreadyTerminal(State, Box<Incident>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a Loomis message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("no incident for CustomerNumber {customer:?} and IncidentReference {reference:?}; kept as orphan {orphan_id}")]
    Unknown {
        customer: String,
        reference: String,
        orphan_id: u64,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submission {
    /// False when the same reference with the same content came again.
    pub created: bool,
    pub incident: Incident,
}

/// What a delivery worker wants done with its job in the same transaction as the events.
#[derive(Debug, Clone)]
pub enum JobAction {
    /// Delivered or settled: remove it from the outbox.
    Remove(u64),
    /// Keep it, with its new attempt count and next attempt time.
    Reschedule(Job),
    /// Give up: move it to the dead letters with this reason.
    DeadLetter(Job, String),
}

/// The gateway core. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
    /// Cancelled when the gateway starts to stop: work that waits for the store gives
    /// up waiting (what it holds stays in the outbox).
    stopping: tokio_util::sync::CancellationToken,
    integrations: Arc<HashMap<String, IntegrationInfo>>,
    /// `gateway_incidents_created_total` per integration, registered once (create the
    /// gateway after the metrics recorder is installed).
    created: Arc<HashMap<String, metrics::Counter>>,
    /// The latest delivery attempts per incident, with their latency (console timeline).
    attempts: Arc<crate::attempts::AttemptLog>,
}

impl Gateway {
    pub fn new(store: Store, integrations: Vec<IntegrationInfo>) -> Self {
        let created = integrations
            .iter()
            .map(|i| {
                let counter = metrics::counter!("gateway_incidents_created_total", "integration" => i.name.clone());
                (i.name.clone(), counter)
            })
            .collect();
        let integrations = integrations
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        Gateway {
            store,
            stopping: tokio_util::sync::CancellationToken::new(),
            integrations: Arc::new(integrations),
            created: Arc::new(created),
            attempts: Arc::default(),
        }
    }

    /// The same gateway, stopping when `token` is cancelled.
    pub fn stopping_with(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.stopping = token;
        self
    }

    /// Cancelled when the gateway starts to stop.
    pub fn stopping(&self) -> &tokio_util::sync::CancellationToken {
        &self.stopping
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Accepts a mapped, validated Dispatch for `integration` (its CustomerNumber is
    /// already the integration's). Idempotent by reference.
    pub async fn submit(
        &self,
        integration: &str,
        dispatch: Dispatch,
    ) -> Result<Submission, SubmitError> {
        self.submit_mapped(integration, dispatch, "").await
    }

    /// [`Gateway::submit`], noting on the new incident's first timeline entry which
    /// mapping version (`mapping_version`, empty: none noted) produced its Dispatch.
    pub async fn submit_mapped(
        &self,
        integration: &str,
        dispatch: Dispatch,
        mapping_version: &str,
    ) -> Result<Submission, SubmitError> {
        self.submit_with_input(integration, dispatch, mapping_version, None)
            .await
    }

    /// [`Gateway::submit_mapped`], keeping `raw` (what the caller sent) beside a new
    /// incident, in the same write, for its timeline.
    pub async fn submit_with_input(
        &self,
        integration: &str,
        dispatch: Dispatch,
        mapping_version: &str,
        raw: Option<crate::store::query::RawInput>,
    ) -> Result<Submission, SubmitError> {
        let mapping_version = mapping_version.to_string();
        if !self.integrations.contains_key(integration) {
            return Err(SubmitError::UnknownIntegration(integration.to_string()));
        }
        let integration = integration.to_string();
        // The request's position in its trace, stored with a new incident: its Dispatch,
        // callbacks and posts to the tool continue that trace (None with traces off).
        let trace = crate::trace::current();
        let hints = Hints {
            incidents: vec![IncidentKey::new(&integration, &dispatch.incident_reference)],
            references: vec![(
                dispatch.customer_number.clone(),
                dispatch.incident_reference.clone(),
            )],
        };
        let result = self
            .store
            .write_hinted(hints, move |tx| {
                let now = Timestamp::now();
                let key = IncidentKey::new(&integration, &dispatch.incident_reference);
                if let Some(existing) = tx.incident(&key)? {
                    let fields = differing_fields(&existing.dispatch, &dispatch);
                    return Ok(if fields.is_empty() {
                        Ok(Submission {
                            created: false,
                            incident: existing,
                        })
                    } else {
                        Err(SubmitError::Conflict {
                            reference: key.reference.clone(),
                            fields,
                            existing: Box::new(existing),
                        })
                    });
                }
                if let Some(other) =
                    tx.by_reference(&dispatch.customer_number, &dispatch.incident_reference)?
                {
                    return Ok(Err(SubmitError::ReferenceTaken {
                        reference: key.reference.clone(),
                        customer: dispatch.customer_number.clone(),
                        other: other.integration,
                    }));
                }
                let mut incident = Incident::new(&integration, dispatch.clone(), now);
                incident.trace = trace;
                if !mapping_version.is_empty() {
                    if let Some(entry) = incident.timeline.last_mut() {
                        entry.detail = format!("{}; mapped by {mapping_version}", entry.detail);
                    }
                }
                tx.put_incident(&incident)?;
                tx.put_reference(&incident.customer_number, &incident.reference, &key)?;
                if let Some(raw) = &raw {
                    tx.put_raw_input(&key, raw)?;
                }
                enqueue(tx, Target::Loomis, JobKind::Dispatch, key, now)?;
                Ok(Ok(Submission {
                    created: true,
                    incident,
                }))
            })
            .instrument(crate::trace::span("store.write"))
            .await??;
        if result.created {
            if let Some(counter) = self.created.get(&result.incident.integration) {
                counter.increment(1);
            }
            tracing::info!(integration = %result.incident.integration, reference = %result.incident.reference, "incident queued for Loomis");
        }
        Ok(result)
    }

    /// The customer cancels. Before the ACK the Cancel waits durably for the IncidentId.
    pub async fn cancel(
        &self,
        integration: &str,
        reference: &str,
        reason: String,
    ) -> Result<Incident, CancelError> {
        // Every front door's reason is cut the same way (a mapped one already is).
        let reason = crate::mapping::truncate(reason.into(), crate::mapping::CANCEL_REASON_LIMIT)
            .into_owned();
        let key = IncidentKey::new(integration, reference);
        let delivers = self.delivers(integration);
        let hints = Hints {
            incidents: vec![key.clone()],
            ..Hints::default()
        };
        self.store
            .write_hinted(hints, move |tx| {
                let now = Timestamp::now();
                let Some(mut inc) = tx.incident(&key)? else {
                    return Ok(Err(CancelError::NotFound(key.reference.clone())));
                };
                let t = machine::apply(
                    &mut inc,
                    Event::CustomerCancel {
                        reason: reason.clone(),
                    },
                    now,
                );
                match t.outcome {
                    Outcome::AlreadyTerminal(s) => {
                        return Ok(Err(CancelError::AlreadyTerminal(s, Box::new(inc))))
                    }
                    Outcome::Duplicate => return Ok(Ok(inc)),
                    _ => {}
                }
                persist(tx, &mut inc, &t, delivers, now)?;
                Ok(Ok(inc))
            })
            .await?
    }

    /// The incident as last committed.
    pub fn get(&self, integration: &str, reference: &str) -> Result<Option<Incident>, StoreError> {
        self.store
            .incident(&IncidentKey::new(integration, reference))
    }

    /// Applies a message from Loomis (callback or response body), correlated by
    /// CustomerNumber + IncidentReference. Unknown incidents are kept as orphans.
    pub async fn loomis_message(
        &self,
        msg: InboundMessage,
        via: Via,
    ) -> Result<(Outcome, Incident), MessageError> {
        let integrations = self.integrations.clone();
        let kind = msg.kind;
        // A span of the incident's trace, which only the write finds: it is opened now
        // and given its parent there, before it is first entered below. The request it
        // came with (Loomis's own trace, if it sent one) is linked.
        let span = crate::trace::span("loomis.callback");
        crate::trace::link(&span, crate::trace::current());
        let in_write = span.clone();
        // The incident is one of the integrations with this CustomerNumber.
        let hints = Hints {
            incidents: self
                .integrations
                .values()
                .filter(|i| i.customer_number == msg.customer_number)
                .map(|i| IncidentKey::new(&i.name, &msg.incident_reference))
                .collect(),
            references: vec![(msg.customer_number.clone(), msg.incident_reference.clone())],
        };
        let res = self
            .store
            .write_hinted(hints, move |tx| {
                let now = Timestamp::now();
                let key = match tx.by_reference(&msg.customer_number, &msg.incident_reference)? {
                    Some(k) => k,
                    None => {
                        let id = tx.next_id()?;
                        tx.put_orphan(&Orphan {
                            id,
                            received_at: now,
                            reason: "no incident with this CustomerNumber and IncidentReference"
                                .into(),
                            message: serde_json::Value::Object(msg.raw.clone()),
                        })?;
                        return Ok(Err(MessageError::Unknown {
                            customer: msg.customer_number.clone(),
                            reference: msg.incident_reference.clone(),
                            orphan_id: id,
                        }));
                    }
                };
                let Some(mut inc) = tx.incident(&key)? else {
                    return Err(StoreError::Corrupt(format!(
                        "reference index points at missing incident {key}"
                    )));
                };
                crate::trace::follow(&in_write, inc.trace);
                let delivers = integrations
                    .get(&key.integration)
                    .is_some_and(|i| i.delivers);
                let t = machine::apply(
                    &mut inc,
                    Event::Loomis {
                        msg: msg.clone(),
                        via,
                    },
                    now,
                );
                persist(tx, &mut inc, &t, delivers, now)?;
                Ok(match t.outcome {
                    Outcome::Conflict(why) => Err(MessageError::Conflict(why)),
                    o => Ok((o, inc)),
                })
            })
            .await?;
        let label = match &res {
            Ok((outcome, _)) => outcome_label(outcome),
            Err(MessageError::Unknown { .. }) => "orphan",
            Err(MessageError::Conflict(_)) => "conflict",
            Err(MessageError::Store(_)) => "store_error",
        };
        count_message(kind, label, via);
        let _span = span.entered();
        let res = res?;
        let (outcome, inc) = &res;
        tracing::info!(integration = %inc.integration, reference = %inc.reference, incident_id = inc.incident_id.as_deref().unwrap_or(""),
            kind = kind.as_str(), outcome = outcome_label(outcome), state = %inc.state, "Loomis message");
        Ok(res)
    }

    /// Applies delivery `events` to the incident and settles the job, atomically.
    pub async fn settle(
        &self,
        key: IncidentKey,
        events: std::sync::Arc<[Event]>,
        job: JobAction,
    ) -> Result<Option<Incident>, StoreError> {
        let delivers = self.delivers(&key.integration);
        let hints = Hints {
            incidents: vec![key.clone()],
            ..Hints::default()
        };
        self.store
            .write_hinted(hints, move |tx| {
                let now = Timestamp::now();
                settle_job(tx, &job, now)?;
                if events.is_empty() {
                    return Ok(None);
                }
                let Some(mut inc) = tx.incident(&key)? else {
                    return Ok(None);
                };
                let mut counted = Vec::new();
                for ev in events.iter().cloned() {
                    let from_loomis = match &ev {
                        Event::Loomis { msg, via } => Some((msg.kind, *via)),
                        _ => None,
                    };
                    let t = machine::apply(&mut inc, ev, now);
                    persist(tx, &mut inc, &t, delivers, now)?;
                    if let Some((kind, via)) = from_loomis {
                        counted.push((kind, via, outcome_label(&t.outcome)));
                    }
                }
                Ok(Some((inc, counted)))
            })
            .instrument(crate::trace::span("store.write"))
            .await
            .map(|settled| {
                settled.map(|(inc, counted)| {
                    // Messages in answers' bodies count like callbacks (once durable).
                    for (kind, via, outcome) in counted {
                        count_message(kind, outcome, via);
                    }
                    inc
                })
            })
    }

    /// Moves a dead letter back into the outbox. Returns false if there is no such id.
    pub async fn replay_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.store
            .write(move |tx| {
                let Some(dl) = tx.dead_letter(id)? else {
                    return Ok(false);
                };
                tx.remove_dead_letter(id)?;
                let now = Timestamp::now();
                enqueue(
                    tx,
                    dl.job.target,
                    dl.job.kind.clone(),
                    dl.job.incident.clone(),
                    now,
                )?;
                Ok(true)
            })
            .await
    }

    /// The latest delivery attempts per incident (in memory, since start).
    pub fn attempts(&self) -> &crate::attempts::AttemptLog {
        &self.attempts
    }

    /// Whether `integration` posts its updates back to its tool.
    pub fn delivers_to_tool(&self, integration: &str) -> bool {
        self.delivers(integration)
    }

    fn delivers(&self, integration: &str) -> bool {
        self.integrations
            .get(integration)
            .is_some_and(|i| i.delivers)
    }
}

fn settle_job(tx: &Tx<'_>, job: &JobAction, now: Timestamp) -> Result<(), StoreError> {
    match job {
        JobAction::Remove(id) => tx.remove_job(*id),
        JobAction::Reschedule(j) => tx.put_job(j),
        JobAction::DeadLetter(j, reason) => {
            tx.remove_job(j.id)?;
            let id = tx.next_id()?;
            tx.put_dead_letter(&DeadLetter {
                id,
                job: j.clone(),
                failed_at: now,
                reason: reason.clone(),
            })
        }
    }
}

fn enqueue(
    tx: &Tx<'_>,
    target: Target,
    kind: JobKind,
    incident: IncidentKey,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = tx.next_id()?;
    tx.enqueue(Job {
        id,
        target,
        kind,
        incident,
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
        last_error: None,
    })
}

/// Writes what a transition implies: the incident, the updates
/// with their sequence numbers, tool deliveries, and a Cancel toward Loomis.
fn persist(
    tx: &Tx<'_>,
    inc: &mut Incident,
    t: &machine::Transition,
    delivers: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    if !t.changed {
        return Ok(());
    }
    let key = inc.key();
    for draft in &t.updates {
        let seq = tx.next_sequence(&inc.integration)?;
        let update = inc.update_from(draft, Sequence::new(seq), now);
        tx.append_update(&update)?;
        if delivers {
            enqueue(
                tx,
                Target::Tool,
                JobKind::PostUpdate { sequence: seq },
                key.clone(),
                now,
            )?;
        }
    }
    if t.send_cancel {
        enqueue(tx, Target::Loomis, JobKind::Cancel, key, now)?;
    }
    tx.put_incident(inc)
}

/// The Dispatch fields (by their Loomis names) whose values differ.
pub fn differing_fields(a: &Dispatch, b: &Dispatch) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unreadable)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Counts a Loomis message by kind, what became of it, and how it arrived.
fn count_message(kind: crate::loomis::message::InboundKind, outcome: &'static str, via: Via) {
    let via = match via {
        Via::Callback => "callback",
        Via::ResponseBody => "response_body",
    };
    metrics::counter!("gateway_loomis_messages_total", "kind" => kind.as_str(), "outcome" => outcome, "via" => via).increment(1);
}

/// A short label for metrics and logs.
pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Ignored(_) => "ignored",
        Outcome::Conflict(_) => "conflict",
        Outcome::AlreadyTerminal(_) => "already_terminal",
    }
}
