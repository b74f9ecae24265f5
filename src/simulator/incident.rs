//! An incident's life on the Loomis side: the script of callbacks it will send (a
//! pure function of the configuration), the messages themselves in the spec's exact
//! field names, and the one task per incident that plays the script strictly in order.

use super::callback::deliver;
use super::config::{AckMode, Outcome};
use super::state::{IncidentKey, IncidentState, Shared};
use crate::loomis::message::format_utc;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One callback in an incident's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Ack,
    Accept,
    Close,
    LoomisCancel,
}

/// The callbacks an incident will send, in order. The ACK is first when it goes by
/// callback; `reorder` puts the ending before the Accept.
pub(crate) fn plan(ack: AckMode, outcome: Outcome, reorder: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    if ack.by_callback() {
        steps.push(Step::Ack);
    }
    let mut rest = match outcome {
        Outcome::Close => vec![Step::Accept, Step::Close],
        Outcome::Cancel => vec![Step::Accept, Step::LoomisCancel],
        Outcome::None => vec![Step::Accept],
        Outcome::CloseBeforeAccept => vec![Step::Close],
    };
    if reorder && rest.len() == 2 {
        rest.reverse();
    }
    steps.extend(rest);
    steps
}

/// `ACK` as in the spec (3.3).
pub(crate) fn ack_message(k: &IncidentKey) -> Value {
    json!({
        "MessageType": "ACK",
        "CustomerNumber": k.customer_number,
        "IncidentId": k.incident_id,
        "IncidentReference": k.reference,
        "Status": "Open",
        "ResponseText": "Incident created",
    })
}

/// `NAK` as in the spec (3.2), with the original `IncidentId` only when asked to.
pub(crate) fn nak_message(
    customer_number: &str,
    reference: &str,
    code: &str,
    text: &str,
    incident_id: Option<&str>,
) -> Value {
    let mut v = json!({
        "MessageType": "NAK",
        "CustomerNumber": customer_number,
        "IncidentReference": reference,
        "ResponseCode": code,
        "ResponseText": text,
    });
    if let Some(id) = incident_id {
        v["IncidentId"] = json!(id);
    }
    v
}

/// `Accept` as in the spec (3.4): `SLADateTime` is `now + sla`; `DateTime` as in its example.
pub(crate) fn accept_message(k: &IncidentKey, now: Timestamp, sla: Duration) -> Value {
    let sla_time = SignedDuration::try_from(sla)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX);
    json!({
        "MessageType": "Accept",
        "CustomerNumber": k.customer_number,
        "IncidentId": k.incident_id,
        "IncidentReference": k.reference,
        "ResponseText": "Technician assigned",
        "SLADateTime": format_utc(sla_time),
        "DateTime": format_utc(now),
    })
}

/// `Close` (3.5) or `Cancel` (3.6): same shape, different type.
pub(crate) fn ending_message(
    k: &IncidentKey,
    message_type: &str,
    text: &str,
    now: Timestamp,
) -> Value {
    json!({
        "MessageType": message_type,
        "CustomerNumber": k.customer_number,
        "IncidentId": k.incident_id,
        "IncidentReference": k.reference,
        "ResponseText": text,
        "DateTime": format_utc(now),
    })
}

/// Plays one incident's script. Delays count from the previous step; each callback
/// is delivered (with retries) before the next one is even scheduled, so order holds.
/// A customer Cancel (a `ResponseText` on `commands`) stops the script and, if
/// configured, is confirmed by a Loomis `Cancel` after whatever was already in flight.
pub(crate) async fn run(
    shared: Arc<Shared>,
    key: IncidentKey,
    steps: Vec<Step>,
    mut commands: mpsc::UnboundedReceiver<String>,
) {
    let span = tracing::info_span!(
        "sim_incident",
        incident_reference = %key.reference,
        incident_id = %key.incident_id
    );
    let _ = tracing::Instrument::instrument(
        async move {
            let mut cancel_text: Option<String> = None;
            for step in steps {
                if cancel_text.is_some() && step != Step::Ack {
                    break;
                }
                let delay = match step {
                    Step::Ack => Duration::ZERO,
                    Step::Accept => shared.config.accept_after,
                    Step::Close | Step::LoomisCancel => shared.config.close_after,
                };
                tokio::select! {
                    biased;
                    _ = shared.shutdown.cancelled() => return,
                    cmd = commands.recv() => {
                        let Some(text) = cmd else { return };
                        cancel_text = Some(text);
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                if cancel_text.is_some() && step != Step::Ack {
                    break;
                }
                let now = Timestamp::now();
                let message = match step {
                    Step::Ack => ack_message(&key),
                    Step::Accept => accept_message(&key, now, shared.config.sla),
                    Step::Close => ending_message(
                        &key,
                        "Close",
                        "Service completed: safe door repaired and tested",
                        now,
                    ),
                    Step::LoomisCancel => ending_message(
                        &key,
                        "Cancel",
                        "Cancelled by Loomis: no access to site",
                        now,
                    ),
                };
                if !begin_step(&shared, &key.incident_id, step) {
                    break;
                }
                deliver(&shared, &key, message).await;
            }
            if cancel_text.is_none() {
                let terminal = shared
                    .lock()
                    .incidents
                    .get(&key.incident_id)
                    .is_some_and(|i| i.state.is_terminal());
                if terminal {
                    return;
                }
                // Outcome `none` (or a cancel raced the last step): stay ready for a customer Cancel.
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    cmd = commands.recv() => match cmd {
                        Some(text) => cancel_text = Some(text),
                        None => return,
                    },
                }
            }
            if let Some(text) = cancel_text {
                if shared.config.confirm_customer_cancel {
                    let reason = if text.trim().is_empty() {
                        "Cancelled at customer request".to_string()
                    } else {
                        format!("Cancelled at customer request: {text}")
                    };
                    let message = ending_message(&key, "Cancel", &reason, Timestamp::now());
                    deliver(&shared, &key, message).await;
                }
            }
        },
        span,
    )
    .await;
}

/// Decides, under the lock, whether a step may still go, and moves the state.
/// A customer Cancel wins over any step not yet begun (except the ACK, already issued).
fn begin_step(shared: &Shared, incident_id: &str, step: Step) -> bool {
    let mut rt = shared.lock();
    let Some(incident) = rt.incidents.get_mut(incident_id) else {
        return false;
    };
    if incident.customer_cancelled && step != Step::Ack {
        return false;
    }
    match step {
        Step::Ack => {}
        // After a reordered ending the Accept still goes (that is the fault), but the
        // state stays terminal.
        Step::Accept => {
            if incident.state == IncidentState::Open {
                incident.state = IncidentState::Accepted;
            }
        }
        Step::Close => incident.state = IncidentState::Closed,
        Step::LoomisCancel => incident.state = IncidentState::Cancelled,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loomis::message::{is_exact_utc_z, InboundKind, InboundMessage};

    #[test]
    fn plans() {
        use Step::*;
        assert_eq!(
            plan(AckMode::Body, Outcome::Close, false),
            vec![Accept, Close]
        );
        assert_eq!(
            plan(AckMode::Callback, Outcome::Close, false),
            vec![Ack, Accept, Close]
        );
        assert_eq!(
            plan(AckMode::Both, Outcome::Cancel, true),
            vec![Ack, LoomisCancel, Accept]
        );
        assert_eq!(plan(AckMode::Body, Outcome::None, true), vec![Accept]);
        assert_eq!(
            plan(AckMode::Body, Outcome::CloseBeforeAccept, false),
            vec![Close]
        );
    }

    fn key() -> IncidentKey {
        IncidentKey {
            customer_number: "A123456".into(),
            reference: "100001".into(),
            incident_id: "INC400300".into(),
        }
    }

    #[test]
    fn messages_parse_as_the_spec_says() {
        let now: Timestamp = "2020-09-23T16:45:49.123Z".parse().unwrap();
        let accept = accept_message(&key(), now, Duration::from_secs(3 * 86400));
        assert_eq!(accept["SLADateTime"], "2020-09-26T16:45:49Z");
        assert_eq!(accept["DateTime"], "2020-09-23T16:45:49Z");
        for (v, kind) in [
            (ack_message(&key()), InboundKind::Ack),
            (
                nak_message("A1", "1", "Duplicate", "again", None),
                InboundKind::Nak,
            ),
            (accept, InboundKind::Accept),
            (
                ending_message(&key(), "Close", "done", now),
                InboundKind::Close,
            ),
            (
                ending_message(&key(), "Cancel", "no", now),
                InboundKind::Cancel,
            ),
        ] {
            let m = InboundMessage::from_value(v.clone()).unwrap();
            assert_eq!(m.kind, kind);
            assert_eq!(v["MessageType"], kind.as_str());
            for field in ["SLADateTime", "DateTime"] {
                if let Some(t) = v.get(field) {
                    assert!(is_exact_utc_z(t.as_str().unwrap()), "{field} {t}");
                }
            }
        }
        let nak = nak_message("A1", "1", "Duplicate", "again", None);
        assert!(nak.get("IncidentId").is_none());
        assert_eq!(
            nak_message("A1", "1", "Duplicate", "again", Some("INC1"))["IncidentId"],
            "INC1"
        );
    }
}
