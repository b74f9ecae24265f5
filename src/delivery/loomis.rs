//! Delivery of Dispatch and customer Cancel to Loomis, one attempt at a time, with the
//! contract's retry classes. An ACK or NAK in the response body is applied as if it had
//! come by callback.

use super::scheduler::{Runner, Slot, Verdict};
use super::{after_failure, post, retry_soon, settle, AttemptError, Destination, RetryPolicy};
use crate::gateway::{Gateway, JobAction};
use crate::incident::machine::{self, Event, Via};
use crate::incident::{Incident, State};
use crate::loomis::message::{format_utc, CustomerCancel, InboundKind, InboundMessage};
use crate::store::records::{Job, JobKind};
use crate::store::Work;
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

/// Sends jobs of target Loomis.
pub struct LoomisRunner {
    pub gateway: Gateway,
    pub client: crate::client::Client,
    pub to: Destination,
    pub timeout: Duration,
    pub policy: RetryPolicy,
    pub concurrency: usize,
    /// Dispatch jobs found in the outbox at start-up: an attempt may have been in flight
    /// when the gateway stopped, so Loomis may already have them.
    pub recovered: Mutex<HashSet<u64>>,
    pub metrics: Arc<AttemptMetrics>,
}

/// The metrics of Loomis requests, registered once: a metrics macro per attempt would
/// hash its name and labels and look them up in the registry every time. Create it
/// after the recorder is installed (before, its handles record nothing).
pub struct AttemptMetrics {
    /// By kind: dispatch, cancel.
    seconds: [metrics::Histogram; 2],
    /// By kind, then result: ok, refused, retry.
    requests: [[metrics::Counter; 3]; 2],
}

impl Default for AttemptMetrics {
    fn default() -> Self {
        let kinds = ["dispatch", "cancel"];
        AttemptMetrics {
            seconds: kinds.map(|kind| metrics::histogram!("gateway_loomis_request_seconds", "kind" => kind)),
            requests: kinds.map(|kind| {
                ["ok", "refused", "retry"].map(|result| {
                    metrics::counter!("gateway_loomis_requests_total", "kind" => kind, "result" => result)
                })
            }),
        }
    }
}

/// The headers of every request to Loomis, besides its credentials.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("accept", "application/json"),
];

/// Indexes of [`AttemptMetrics::requests`]' results.
const OK: usize = 0;
const REFUSED: usize = 1;
const RETRY: usize = 2;

impl Runner for LoomisRunner {
    fn run(&self, job: Job, slot: Slot) -> BoxFuture<'static, Verdict> {
        // On a cluster: only the holder of the job's lane sends it.
        let taken_over = match self.gateway.store().claim_work(&job) {
            Work::Elsewhere => return Box::pin(async { Verdict::Done }),
            Work::Later => {
                drop(slot);
                return Box::pin(std::future::ready(super::wait_for_earlier(&job)));
            }
            Work::Mine { uncertain } => uncertain,
        };
        let this = Attempt {
            slot,
            gateway: self.gateway.clone(),
            client: self.client.clone(),
            to: self.to.clone(),
            timeout: self.timeout,
            policy: self.policy.clone(),
            recovered: self
                .recovered
                .lock()
                .expect("recovered lock")
                .remove(&job.id)
                || taken_over,
            metrics: self.metrics.clone(),
        };
        Box::pin(this.run(job))
    }

    fn group(&self, _job: &Job) -> String {
        "loomis".into()
    }

    fn limit(&self, _group: &str) -> usize {
        self.concurrency
    }
}

struct Attempt {
    /// Given back once Loomis has answered (or not), before the outcome is settled.
    slot: Slot,
    gateway: Gateway,
    client: crate::client::Client,
    to: Destination,
    timeout: Duration,
    policy: RetryPolicy,
    recovered: bool,
    metrics: Arc<AttemptMetrics>,
}

/// Whether a message in a response body is about this incident.
fn body_message(body: &[u8], inc: &Incident) -> Result<Option<InboundMessage>, String> {
    // An empty body, or an empty JSON object, carries no message.
    let mut inner = body.iter().filter(|b| !b.is_ascii_whitespace());
    if let (None, _) | (Some(b'{'), Some(b'}')) = (inner.next(), inner.next()) {
        if inner.next().is_none() {
            return Ok(None);
        }
    }
    match InboundMessage::parse(body) {
        Ok(m)
            if inc.reference == m.incident_reference
                && m.customer_number == inc.customer_number =>
        {
            Ok(Some(m))
        }
        Ok(m) => Err(format!(
            "it is a {} for incident {:?} of customer {:?}",
            m.kind.as_str(),
            m.incident_reference,
            m.customer_number
        )),
        Err(e) => Err(format!(
            "{}: {}",
            crate::delivery::snippet(&body[..body.len().min(120)]),
            e
        )),
    }
}

/// The events for a 2xx answer's body: the Loomis message it carries (only ACK and NAK
/// for a Dispatch), or a note on why it was not used.
fn answer_events(body: &[u8], inc: &Incident, is_dispatch: bool) -> Vec<Event> {
    let message = if is_dispatch { "Dispatch" } else { "Cancel" };
    let unusable = |detail: String| {
        tracing::warn!(detail = %detail, "the body of Loomis's answer was not used");
        vec![Event::UnusableAnswer { message, detail }]
    };
    match body_message(body, inc) {
        Ok(None) => vec![],
        Ok(Some(m)) if is_dispatch && !matches!(m.kind, InboundKind::Ack | InboundKind::Nak) => {
            unusable(format!(
                "a {} answering a Dispatch; only ACK and NAK are applied from it",
                m.kind.as_str()
            ))
        }
        Ok(Some(msg)) => vec![Event::Loomis {
            msg,
            via: Via::ResponseBody,
        }],
        Err(detail) => unusable(detail),
    }
}

impl Attempt {
    async fn run(self, job: Job) -> Verdict {
        let inc = match self
            .gateway
            .get(&job.incident.integration, &job.incident.reference)
        {
            Ok(Some(i)) => i,
            Ok(None) => {
                return settle(&self.gateway, &job, vec![], JobAction::Remove(job.id)).await
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read incident for delivery");
                return retry_soon(&job);
            }
        };
        // The span is attached to the future (not entered on the thread), so it stays
        // with this attempt across awaits and never leaks into other tasks' lines.
        let span = tracing::info_span!("deliver", integration = %inc.integration, reference = %inc.reference,
            incident_id = inc.incident_id.as_deref().unwrap_or(""), kind = ?job.kind, attempt = job.attempts + 1);
        // Part of the incident's trace, whenever (and in whichever process) it runs.
        crate::trace::follow(&span, inc.trace);
        self.send(job, inc).instrument(span).await
    }

    /// Sends the job's message for `inc` and settles the outcome.
    async fn send(self, job: Job, inc: Incident) -> Verdict {
        let body = match &job.kind {
            JobKind::Dispatch => {
                if !machine::dispatch_pending(&inc) {
                    // Loomis has it already (answered, or a Duplicate to our retry), or
                    // the incident ended: nothing left to send.
                    return settle(&self.gateway, &job, vec![], JobAction::Remove(job.id)).await;
                }
                serde_json::to_vec(&inc.dispatch)
            }
            JobKind::Cancel => {
                let Some(id) = inc
                    .incident_id
                    .clone()
                    .filter(|_| inc.state == State::CancelRequested)
                else {
                    return settle(&self.gateway, &job, vec![], JobAction::Remove(job.id)).await;
                };
                serde_json::to_vec(&CustomerCancel {
                    message_type: "Cancel".into(),
                    customer_number: inc.customer_number.clone(),
                    incident_id: id.into_string(),
                    incident_reference: inc.reference.to_string(),
                    response_text: inc.cancel_reason.clone().unwrap_or_default(),
                    date_time: format_utc(Timestamp::now()),
                })
            }
            JobKind::PostUpdate { .. } => {
                tracing::error!("tool job in the Loomis outbox; dropped");
                return settle(&self.gateway, &job, vec![], JobAction::Remove(job.id)).await;
            }
        }
        .expect("messages serialize");
        let is_dispatch = job.kind == JobKind::Dispatch;
        let mut events = Vec::new();
        if is_dispatch && self.recovered && !inc.dispatch_uncertain {
            events.push(Event::DispatchUncertain {
                detail: "the gateway stopped while this Dispatch may have been in flight".into(),
            });
        }
        let (sent_at, started) = (jiff::Timestamp::now(), std::time::Instant::now());
        let result = post(&self.client, &self.to, body, self.timeout).await;
        drop(self.slot);
        let kind = usize::from(!is_dispatch);
        let latency = started.elapsed();
        self.metrics.seconds[kind].record(latency.as_secs_f64());
        self.gateway.attempts().record(
            &job.incident.integration,
            job.incident.reference.as_str(),
            crate::attempts::Attempt {
                at: sent_at,
                target: "loomis",
                what: if is_dispatch { "Dispatch" } else { "Cancel" }.into(),
                outcome: super::attempt_outcome(&result),
                latency,
            },
        );
        match result {
            Ok(answer) => {
                self.metrics.requests[kind][OK].increment(1);
                let from_body = answer_events(&answer.body, &inc, is_dispatch);
                if is_dispatch {
                    events.push(Event::DispatchDelivered {
                        status: answer.status,
                    });
                    events.extend(from_body);
                } else {
                    // A NAK in the body refuses the cancel before its 2xx is settled.
                    events.extend(from_body);
                    events.push(Event::CancelDelivered {
                        status: answer.status,
                    });
                }
                tracing::info!(status = answer.status, "delivered to Loomis");
                settle(&self.gateway, &job, events, JobAction::Remove(job.id)).await
            }
            Err(AttemptError::Permanent { status, body }) => {
                self.metrics.requests[kind][REFUSED].increment(1);
                tracing::warn!(status, body = %body, "Loomis refused the message; not retried");
                // A NAK may come as the body of a 4xx: apply it as the NAK it is (for a
                // Cancel, a refusal of the cancel).
                if let Ok(Some(m)) = body_message(body.as_bytes(), &inc)
                    .map(|m| m.filter(|m| m.kind == InboundKind::Nak))
                {
                    events.push(Event::Loomis {
                        msg: m,
                        via: Via::ResponseBody,
                    });
                } else if is_dispatch {
                    events.push(Event::DispatchRejected { status, body });
                } else {
                    events.push(Event::CancelRejected { status, body });
                }
                settle(&self.gateway, &job, events, JobAction::Remove(job.id)).await
            }
            Err(AttemptError::Retryable {
                detail,
                retry_after,
                uncertain,
            }) => {
                self.metrics.requests[kind][RETRY].increment(1);
                let now = Timestamp::now();
                let attempts = job.attempts + 1;
                if self.policy.exhausted(job.created_at, attempts, now) {
                    tracing::error!(detail = %detail, attempts, "delivery to Loomis gave up");
                    let detail = format!("gave up after {attempts} attempts: {detail}");
                    events.push(if is_dispatch {
                        Event::DispatchExpired { detail }
                    } else {
                        Event::CancelExpired { detail }
                    });
                    return settle(&self.gateway, &job, events, JobAction::Remove(job.id)).await;
                }
                if is_dispatch && uncertain && !inc.dispatch_uncertain {
                    events.push(Event::DispatchUncertain {
                        detail: detail.clone(),
                    });
                } else {
                    // A poller sees why its incident waits (Loomis down, a wrong URL).
                    events.push(Event::AttemptFailed {
                        message: if is_dispatch { "Dispatch" } else { "Cancel" },
                        detail: detail.clone(),
                        uncertain,
                    });
                }
                let (next, delay) = after_failure(&job, &self.policy, retry_after, &detail);
                tracing::warn!(detail = %detail, attempts, retry_in_ms = delay.as_millis() as u64, "delivery to Loomis failed; will retry");
                settle(&self.gateway, &job, events, JobAction::Reschedule(next)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loomis::message::Dispatch;

    fn incident() -> Incident {
        Incident::new("servicenow", Dispatch::sample("INC1"), Timestamp::now())
    }

    #[test]
    fn an_empty_answer_carries_no_message() {
        for body in ["", "  \r\n", "{}", "{ }\n", " {\n} "] {
            assert!(
                matches!(body_message(body.as_bytes(), &incident()), Ok(None)),
                "{body:?}"
            );
        }
    }

    #[test]
    fn an_answer_with_content_is_a_message_or_a_reason() {
        let inc = incident();
        let ack = format!(
            r#"{{"MessageType":"ACK","CustomerNumber":"{}","IncidentId":"INC9","IncidentReference":"INC1","Status":"Open"}}"#,
            inc.customer_number
        );
        let m = body_message(ack.as_bytes(), &inc).unwrap().unwrap();
        assert_eq!(m.kind, InboundKind::Ack);
        for body in [r#"{"status":"queued"}"#, "{}x", "accepted"] {
            assert!(body_message(body.as_bytes(), &inc).is_err(), "{body:?}");
        }
        let other = ack.replace("\"INC1\"", "\"INC2\"");
        let err = body_message(other.as_bytes(), &inc).unwrap_err();
        assert!(err.contains("for incident \"INC2\""), "{err}");
    }
}
