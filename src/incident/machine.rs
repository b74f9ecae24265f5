//! The incident state machine.
//!
//! ```text
//! Queued -> Sent -> Acknowledged (ACK) | Rejected (NAK, non-retryable 4xx)
//! Acknowledged -> Accepted -> Closed | Cancelled
//! Acknowledged -> Closed (Close before Accept is legal)
//! any non-terminal -> CancelRequested (customer cancel) -> Cancelled | back where it was
//! Queued | Sent -> Failed (delivery gave up)
//! ```
//! Terminal states (Closed, Cancelled, Rejected, Failed) are never left: later messages
//! are recorded in the timeline and counted, not applied. Exact duplicates (same kind,
//! same content) change nothing and produce no update. A message whose IncidentId
//! contradicts the one on record is a conflict and changes nothing.
//!
//! [`apply`] takes the incident by `&mut` and returns what the change implies (updates to
//! emit, a Cancel to send); the caller stores all of it in one transaction.

use super::{Direction, EntryOutcome, Incident, JsonText, State, UpdateDraft, UpdateKind};
use crate::loomis::message::{InboundKind, InboundMessage};
use jiff::Timestamp;

/// How a Loomis message reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Callback,
    /// In the HTTP response body of our own POST.
    ResponseBody,
}

/// Something that happens to an incident.
#[derive(Debug, Clone)]
pub enum Event {
    /// A validated message from Loomis.
    Loomis { msg: InboundMessage, via: Via },
    /// Loomis answered 2xx to the Dispatch.
    DispatchDelivered { status: u16 },
    /// A Dispatch attempt ended without a known outcome (timeout, dropped connection).
    DispatchUncertain { detail: String },
    /// Loomis refused the Dispatch with a non-retryable answer.
    DispatchRejected { status: u16, body: String },
    /// Delivery of the Dispatch gave up after its configured age.
    DispatchExpired { detail: String },
    /// The customer asks to cancel.
    CustomerCancel { reason: String },
    /// Loomis answered 2xx to our Cancel.
    CancelDelivered { status: u16 },
    /// Loomis refused our Cancel with a non-retryable answer.
    CancelRejected { status: u16, body: String },
    /// Delivery of our Cancel gave up.
    CancelExpired { detail: String },
    /// Loomis's 2xx answer to our `message` ("Dispatch" or "Cancel") had a body that
    /// is not a Loomis message for this incident: noted, nothing changes.
    UnusableAnswer {
        message: &'static str,
        detail: String,
    },
    /// An attempt to send our `message` ("Dispatch" or "Cancel") failed and will be
    /// retried; `uncertain` if Loomis may have it. Noted once per distinct cause while the
    /// message is still to be sent; nothing changes.
    AttemptFailed {
        message: &'static str,
        detail: String,
        uncertain: bool,
    },
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The same message again: nothing changed.
    Duplicate,
    /// Recorded in the timeline but not applied (late, contradictory, after terminal).
    Ignored(String),
    /// The IncidentId contradicts the one on record.
    Conflict(String),
    /// A customer cancel for an incident already in a terminal state.
    AlreadyTerminal(State),
}

/// Everything an applied event implies, to be stored in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub outcome: Outcome,
    pub updates: Vec<UpdateDraft>,
    /// Queue the customer Cancel toward Loomis now.
    pub send_cancel: bool,
    /// The incident record changed and must be written back.
    pub changed: bool,
}

impl Transition {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            updates: Vec::new(),
            send_cancel: false,
            changed: true,
        }
    }

    fn unchanged(outcome: Outcome) -> Self {
        Self {
            changed: false,
            ..Self::new(outcome)
        }
    }
}

/// How a failed attempt's timeline note begins: certainly not delivered, or maybe.
const NOT_DELIVERED: &str = "not delivered yet (";
const OUTCOME_UNKNOWN: &str = "outcome unknown (";

/// At most this many failed-attempt notes per incident.
pub const ATTEMPT_NOTES: usize = 5;

/// The timeline notes of failed attempts (and of a recovered Dispatch) so far.
fn attempt_notes(inc: &Incident) -> usize {
    inc.timeline
        .iter()
        .filter(|e| {
            e.outcome == EntryOutcome::Note
                && (e.detail.starts_with(NOT_DELIVERED) || e.detail.starts_with(OUTCOME_UNKNOWN))
        })
        .count()
}

/// Applies `event` to `inc` at time `now`.
pub fn apply(inc: &mut Incident, event: Event, now: Timestamp) -> Transition {
    let t = match event {
        Event::Loomis { msg, via } => apply_loomis(inc, msg, via, now),
        Event::DispatchDelivered { status } => {
            inc.record(
                now,
                Direction::ToLoomis,
                "Dispatch",
                EntryOutcome::Delivered,
                format!("HTTP {status}"),
                None,
            );
            mark_sent(inc);
            Transition::new(Outcome::Applied)
        }
        Event::DispatchUncertain { detail } => {
            if inc.dispatch_uncertain {
                Transition::unchanged(Outcome::Applied)
            } else {
                inc.dispatch_uncertain = true;
                inc.record(
                    now,
                    Direction::ToLoomis,
                    "Dispatch",
                    EntryOutcome::Note,
                    format!("{OUTCOME_UNKNOWN}{detail}); sent again unless Loomis answers first"),
                    None,
                );
                Transition::new(Outcome::Applied)
            }
        }
        Event::DispatchRejected { status, body } => {
            if matches!(inc.state, State::Queued | State::Sent)
                || (inc.state == State::CancelRequested && inc.incident_id.is_none())
            {
                inc.record(
                    now,
                    Direction::FromLoomis,
                    "Dispatch",
                    EntryOutcome::Applied,
                    format!("refused: HTTP {status}: {body}"),
                    None,
                );
                drop_waiting_cancel(inc, now);
                inc.state = State::Rejected;
                let code = format!("HTTP {status}");
                inc.response_code = Some(code.clone());
                inc.response_text = Some(body.clone());
                let mut t = Transition::new(Outcome::Applied);
                t.updates.push(draft(
                    UpdateKind::Rejected,
                    inc.state,
                    Some(code),
                    Some(body),
                    Some(now),
                ));
                t
            } else {
                ignore(
                    inc,
                    now,
                    Direction::FromLoomis,
                    "Dispatch",
                    format!(
                        "refusal (HTTP {status}) arrived after the incident was {}",
                        inc.state
                    ),
                )
            }
        }
        Event::DispatchExpired { detail } => {
            if matches!(inc.state, State::Queued | State::Sent)
                || (inc.state == State::CancelRequested && inc.incident_id.is_none())
            {
                inc.record(
                    now,
                    Direction::Gateway,
                    "Dispatch",
                    EntryOutcome::Applied,
                    format!("delivery gave up: {detail}"),
                    None,
                );
                drop_waiting_cancel(inc, now);
                inc.state = State::Failed;
                let mut t = Transition::new(Outcome::Applied);
                t.updates.push(draft(
                    UpdateKind::DeliveryFailed,
                    inc.state,
                    None,
                    Some(detail),
                    Some(now),
                ));
                t
            } else {
                ignore(
                    inc,
                    now,
                    Direction::Gateway,
                    "Dispatch",
                    format!("delivery expiry after the incident was {}", inc.state),
                )
            }
        }
        Event::CustomerCancel { reason } => customer_cancel(inc, reason, now),
        Event::UnusableAnswer { message, detail } => {
            inc.record(
                now,
                Direction::FromLoomis,
                message,
                EntryOutcome::Note,
                format!("the answer's body was not used ({detail}); waiting for Loomis's messages"),
                None,
            );
            Transition::new(Outcome::Applied)
        }
        Event::AttemptFailed {
            message,
            detail,
            uncertain,
        } => {
            // Only while the message is still to be sent: an answer that came meanwhile
            // (an ACK by callback, a Close) settled it.
            let pending = match message {
                "Dispatch" => dispatch_pending(inc),
                _ => inc.state == State::CancelRequested,
            };
            if !pending || attempt_notes(inc) >= ATTEMPT_NOTES {
                return Transition::unchanged(Outcome::Applied);
            }
            let note = if uncertain {
                format!("{OUTCOME_UNKNOWN}{detail}); sending again unless Loomis answers first")
            } else {
                format!("{NOT_DELIVERED}{detail}); retrying")
            };
            // The same cause again adds nothing (the note says when it began), and a few
            // causes tell the story: the timeline keeps its room for Loomis's messages.
            let repeated = inc
                .timeline
                .iter()
                .rev()
                .find(|e| e.direction == Direction::ToLoomis && e.kind == message)
                .is_some_and(|e| e.outcome == EntryOutcome::Note && e.detail == note);
            if repeated {
                Transition::unchanged(Outcome::Applied)
            } else {
                inc.record(
                    now,
                    Direction::ToLoomis,
                    message,
                    EntryOutcome::Note,
                    note,
                    None,
                );
                Transition::new(Outcome::Applied)
            }
        }
        Event::CancelDelivered { status } => {
            if inc.state == State::CancelRequested {
                inc.record(
                    now,
                    Direction::ToLoomis,
                    "Cancel",
                    EntryOutcome::Delivered,
                    format!("HTTP {status}"),
                    None,
                );
                inc.state = State::Cancelled;
                inc.resume_state = None;
                let mut t = Transition::new(Outcome::Applied);
                t.updates.push(draft(
                    UpdateKind::Cancel,
                    inc.state,
                    None,
                    inc.cancel_reason.clone(),
                    Some(now),
                ));
                t
            } else {
                ignore(
                    inc,
                    now,
                    Direction::ToLoomis,
                    "Cancel",
                    format!(
                        "delivered (HTTP {status}) after the incident was {}",
                        inc.state
                    ),
                )
            }
        }
        Event::CancelRejected { status, body } => cancel_failed(
            inc,
            now,
            UpdateKind::Rejected,
            Some(format!("HTTP {status}")),
            body,
        ),
        Event::CancelExpired { detail } => {
            cancel_failed(inc, now, UpdateKind::DeliveryFailed, None, detail)
        }
    };
    if t.changed {
        inc.updated_at = now;
    }
    t
}

fn draft(
    kind: UpdateKind,
    state: State,
    code: Option<String>,
    text: Option<String>,
    event_time: Option<Timestamp>,
) -> UpdateDraft {
    UpdateDraft {
        kind,
        state,
        response_code: code,
        response_text: text,
        event_time,
    }
}

/// Loomis has the Dispatch: Queued becomes Sent, also underneath a pending cancel.
fn mark_sent(inc: &mut Incident) {
    if inc.state == State::Queued {
        inc.state = State::Sent;
    } else if inc.state == State::CancelRequested && inc.resume_state == Some(State::Queued) {
        inc.resume_state = Some(State::Sent);
    }
}

/// True while the Dispatch still has to reach Loomis.
pub fn dispatch_pending(inc: &Incident) -> bool {
    inc.state == State::Queued
        || (inc.state == State::CancelRequested && inc.resume_state == Some(State::Queued))
}

fn ignore(
    inc: &mut Incident,
    now: Timestamp,
    dir: Direction,
    kind: &str,
    why: String,
) -> Transition {
    ignore_message(inc, now, dir, kind, why, None)
}

/// Records a message that is not applied (late, contradictory, after terminal).
fn ignore_message(
    inc: &mut Incident,
    now: Timestamp,
    dir: Direction,
    kind: &str,
    why: String,
    message: Option<JsonText>,
) -> Transition {
    inc.ignored = inc.ignored.saturating_add(1);
    inc.record(now, dir, kind, EntryOutcome::Ignored, why.clone(), message);
    Transition::new(Outcome::Ignored(why))
}

/// The timeline note when Loomis closes an incident whose customer cancel was pending.
const CANCEL_OVERTAKEN: &str = "did not take effect: Loomis closed the incident first";

fn drop_waiting_cancel(inc: &mut Incident, now: Timestamp) {
    if inc.state == State::CancelRequested {
        inc.cancel_waiting_for_ack = false;
        inc.resume_state = None;
        inc.record(
            now,
            Direction::Gateway,
            "CustomerCancel",
            EntryOutcome::Note,
            "dropped: the incident will not be opened at Loomis",
            None,
        );
    }
}

fn cancel_failed(
    inc: &mut Incident,
    now: Timestamp,
    kind: UpdateKind,
    code: Option<String>,
    text: String,
) -> Transition {
    if inc.state != State::CancelRequested {
        return ignore(
            inc,
            now,
            Direction::ToLoomis,
            "Cancel",
            format!("cancel outcome after the incident was {}", inc.state),
        );
    }
    let back = inc.resume_state.take().unwrap_or(State::Acknowledged);
    inc.state = back;
    inc.cancel_waiting_for_ack = false;
    inc.record(
        now,
        Direction::ToLoomis,
        "Cancel",
        EntryOutcome::Applied,
        format!(
            "cancel failed ({}): {text}; incident back to {back}",
            kind.as_str()
        ),
        None,
    );
    let mut t = Transition::new(Outcome::Applied);
    t.updates
        .push(draft(kind, back, code, Some(text), Some(now)));
    t
}

fn customer_cancel(inc: &mut Incident, reason: String, now: Timestamp) -> Transition {
    if inc.state.is_terminal() {
        return Transition::unchanged(Outcome::AlreadyTerminal(inc.state));
    }
    if inc.state == State::CancelRequested {
        return Transition::unchanged(Outcome::Duplicate);
    }
    inc.resume_state = Some(inc.state);
    inc.state = State::CancelRequested;
    inc.cancel_reason = Some(reason.clone());
    let mut t = Transition::new(Outcome::Applied);
    if inc.incident_id.is_some() {
        t.send_cancel = true;
        inc.record(
            now,
            Direction::Caller,
            "CustomerCancel",
            EntryOutcome::Applied,
            format!("queued for Loomis: {reason}"),
            None,
        );
    } else {
        inc.cancel_waiting_for_ack = true;
        inc.record(
            now,
            Direction::Caller,
            "CustomerCancel",
            EntryOutcome::Applied,
            format!("waiting for the ACK's IncidentId: {reason}"),
            None,
        );
    }
    t
}

fn apply_loomis(inc: &mut Incident, msg: InboundMessage, via: Via, now: Timestamp) -> Transition {
    let kind = msg.kind.as_str();
    let raw = Some(JsonText::of(&msg.raw));
    let via_text = match via {
        Via::Callback => "callback",
        Via::ResponseBody => "response body",
    };
    if let (Some(have), Some(got)) = (&inc.incident_id, &msg.incident_id) {
        if have != got {
            let why = format!("IncidentId {got:?} contradicts {have:?} on record");
            inc.record(
                now,
                Direction::FromLoomis,
                kind,
                EntryOutcome::Conflict,
                why.clone(),
                raw,
            );
            return Transition::new(Outcome::Conflict(why));
        }
    }
    let fp = msg.fingerprint();
    if inc.seen.contains(&fp) {
        inc.duplicates = inc.duplicates.saturating_add(1);
        return Transition::new(Outcome::Duplicate);
    }
    if inc.seen.len() < super::TIMELINE_CAP {
        inc.seen.push(fp);
    }
    if inc.state.is_terminal() {
        let why = format!("{kind} after the incident was {}", inc.state);
        return ignore_message(inc, now, Direction::FromLoomis, kind, why, raw);
    }
    let applied = |inc: &mut Incident, detail: String, raw| {
        inc.record(
            now,
            Direction::FromLoomis,
            kind,
            EntryOutcome::Applied,
            detail,
            raw,
        );
    };
    let mut t = Transition::new(Outcome::Applied);
    let learn_id = |inc: &mut Incident| {
        if inc.incident_id.is_none() {
            if let Some(id) = &msg.incident_id {
                inc.incident_id = Some(id.clone());
            }
        }
    };
    let cancel_pending = inc.state == State::CancelRequested;
    match msg.kind {
        InboundKind::Ack => {
            if inc.incident_id.is_some() {
                let why = format!("ACK after the incident was already {}", inc.state);
                return ignore_message(inc, now, Direction::FromLoomis, kind, why, raw);
            }
            learn_id(inc);
            inc.loomis_status = msg.status.clone();
            inc.response_text = msg.response_text.clone();
            if cancel_pending {
                inc.resume_state = Some(State::Acknowledged);
                inc.cancel_waiting_for_ack = false;
                t.send_cancel = true;
            } else {
                inc.state = State::Acknowledged;
            }
            applied(inc, format!("via {via_text}"), raw);
            t.updates.push(draft(
                UpdateKind::Ack,
                inc.state,
                msg.status.clone(),
                msg.response_text.clone(),
                None,
            ));
        }
        InboundKind::Nak => {
            if inc.incident_id.is_some() && cancel_pending {
                // Loomis knows the incident, so this NAK answers the customer's Cancel
                // (in the Cancel's response body or by callback): Loomis refuses it and
                // the incident goes back to where it was.
                let code = msg.response_code.clone().unwrap_or_default();
                let text = msg.response_text.clone().unwrap_or_default();
                applied(
                    inc,
                    format!("{code} via {via_text}: Loomis refuses the cancel"),
                    raw,
                );
                return cancel_failed(inc, now, UpdateKind::Nak, Some(code), text);
            }
            if inc.incident_id.is_some() {
                let why = format!("NAK after the incident was already {}", inc.state);
                return ignore_message(inc, now, Direction::FromLoomis, kind, why, raw);
            }
            let code = msg.response_code.clone().unwrap_or_default();
            if code.eq_ignore_ascii_case("Duplicate") && inc.dispatch_uncertain {
                // Our own retry after an unknown outcome: Loomis has the incident.
                // Keep waiting for the ACK of the first attempt.
                mark_sent(inc);
                inc.record(now, Direction::FromLoomis, kind, EntryOutcome::Note, format!("Duplicate answer to our own retry (via {via_text}): Loomis has the incident; waiting for its ACK"), raw);
                return t;
            }
            drop_waiting_cancel(inc, now);
            inc.state = State::Rejected;
            inc.response_code = Some(code.clone());
            inc.response_text = msg.response_text.clone();
            applied(inc, format!("{code} via {via_text}"), raw);
            t.updates.push(draft(
                UpdateKind::Nak,
                inc.state,
                Some(code),
                msg.response_text.clone(),
                None,
            ));
        }
        InboundKind::Accept => {
            learn_id(inc);
            inc.sla_time = msg.sla_date_time;
            if msg.response_text.is_some() {
                inc.response_text = msg.response_text.clone();
            }
            if cancel_pending {
                inc.resume_state = Some(State::Accepted);
                if inc.cancel_waiting_for_ack && inc.incident_id.is_some() {
                    inc.cancel_waiting_for_ack = false;
                    t.send_cancel = true;
                }
            } else {
                inc.state = State::Accepted;
            }
            applied(inc, format!("via {via_text}"), raw);
            t.updates.push(draft(
                UpdateKind::Accept,
                inc.state,
                None,
                msg.response_text.clone(),
                msg.date_time,
            ));
        }
        InboundKind::Close | InboundKind::Cancel => {
            learn_id(inc);
            if cancel_pending {
                inc.cancel_waiting_for_ack = false;
                inc.resume_state = None;
            }
            let (state, kind_u) = if msg.kind == InboundKind::Close {
                (State::Closed, UpdateKind::Close)
            } else {
                (State::Cancelled, UpdateKind::Cancel)
            };
            inc.state = state;
            inc.response_text = msg.response_text.clone();
            applied(inc, format!("via {via_text}"), raw);
            if cancel_pending && state == State::Closed {
                // A race the customer lost (Loomis had finished, or the Cancel was still
                // queued): say so, since the Close alone reads as if it was ignored.
                inc.record(
                    now,
                    Direction::Gateway,
                    "CustomerCancel",
                    EntryOutcome::Note,
                    CANCEL_OVERTAKEN,
                    None,
                );
            }
            t.updates.push(draft(
                kind_u,
                state,
                None,
                msg.response_text.clone(),
                msg.date_time,
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loomis::message::Dispatch;
    use proptest::prelude::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn incident() -> Incident {
        let d = Dispatch {
            message_type: "Dispatch".into(),
            customer_number: "A123456".into(),
            incident_reference: "R1".into(),
            device_id: "UG1234".into(),
            contact_name: "J".into(),
            contact_number: "1".into(),
            contact_email: None,
            subject: "s".into(),
            description: "d".into(),
            fault_code: None,
            fault_date_time: "2021-01-16T15:17:48Z".into(),
        };
        Incident::new("it", d, now())
    }

    fn msg(kind: &str, id: &str, extra: serde_json::Value) -> InboundMessage {
        let mut v =
            json!({"MessageType": kind, "CustomerNumber": "A123456", "IncidentReference": "R1"});
        if !id.is_empty() {
            v["IncidentId"] = json!(id);
        }
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        InboundMessage::from_value(v).unwrap()
    }

    fn ack(id: &str) -> Event {
        Event::Loomis {
            msg: msg("ACK", id, json!({"Status": "Open"})),
            via: Via::Callback,
        }
    }
    fn nak(code: &str) -> Event {
        Event::Loomis {
            msg: msg(
                "NAK",
                "",
                json!({"ResponseCode": code, "ResponseText": "x"}),
            ),
            via: Via::Callback,
        }
    }
    fn accept(id: &str, sla: &str) -> Event {
        Event::Loomis {
            msg: msg("Accept", id, json!({"SLADateTime": sla})),
            via: Via::Callback,
        }
    }
    fn close(id: &str) -> Event {
        Event::Loomis {
            msg: msg(
                "Close",
                id,
                json!({"ResponseText": "done", "DateTime": "2026-01-02T00:00:00Z"}),
            ),
            via: Via::Callback,
        }
    }
    fn loomis_cancel(id: &str) -> Event {
        Event::Loomis {
            msg: msg(
                "Cancel",
                id,
                json!({"ResponseText": "gone", "DateTime": "2026-01-02T00:00:00Z"}),
            ),
            via: Via::Callback,
        }
    }

    fn kinds(t: &Transition) -> Vec<UpdateKind> {
        t.updates.iter().map(|u| u.kind).collect()
    }

    #[test]
    fn happy_path_ack_accept_close() {
        let mut i = incident();
        assert_eq!(
            apply(&mut i, Event::DispatchDelivered { status: 200 }, now()).outcome,
            Outcome::Applied
        );
        assert_eq!(i.state, State::Sent);
        let t = apply(&mut i, ack("INC1"), now());
        assert_eq!(i.incident_id.as_deref(), Some("INC1"));
        assert_eq!(kinds(&t), vec![UpdateKind::Ack]);
        assert_eq!(i.state, State::Acknowledged);
        let t = apply(&mut i, accept("INC1", "2026-01-01T04:00:00Z"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Accept]);
        assert_eq!(i.sla_time, Some("2026-01-01T04:00:00Z".parse().unwrap()));
        let t = apply(&mut i, close("INC1"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Close]);
        assert_eq!(i.state, State::Closed);
    }

    #[test]
    fn ack_in_body_then_same_ack_by_callback_is_a_duplicate() {
        let mut i = incident();
        let body = Event::Loomis {
            msg: msg("ACK", "INC1", json!({"Status": "Open"})),
            via: Via::ResponseBody,
        };
        apply(&mut i, body, now());
        let t = apply(&mut i, ack("INC1"), now());
        assert_eq!(t.outcome, Outcome::Duplicate);
        assert!(t.updates.is_empty());
        assert_eq!(i.duplicates, 1);
    }

    #[test]
    fn close_before_accept_is_legal_and_terminal() {
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        apply(&mut i, close("INC1"), now());
        assert_eq!(i.state, State::Closed);
        let t = apply(&mut i, accept("INC1", "2026-01-01T04:00:00Z"), now());
        assert!(matches!(t.outcome, Outcome::Ignored(_)));
        assert!(t.updates.is_empty());
        assert_eq!(i.state, State::Closed);
        assert_eq!(i.ignored, 1);
    }

    #[test]
    fn contradicting_incident_id_is_a_conflict() {
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        let t = apply(&mut i, accept("INC2", "2026-01-01T04:00:00Z"), now());
        assert!(matches!(t.outcome, Outcome::Conflict(_)));
        assert_eq!(i.state, State::Acknowledged);
    }

    #[test]
    fn nak_rejects_and_duplicate_after_uncertain_retry_waits() {
        let mut i = incident();
        let t = apply(&mut i, nak("DeviceNotFound"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Nak]);
        assert_eq!(i.state, State::Rejected);

        let mut i = incident();
        apply(
            &mut i,
            Event::DispatchUncertain {
                detail: "timeout".into(),
            },
            now(),
        );
        let t = apply(&mut i, nak("Duplicate"), now());
        assert!(t.updates.is_empty());
        assert_eq!(i.state, State::Sent);
        apply(&mut i, ack("INC1"), now());
        assert_eq!(i.state, State::Acknowledged);

        // Without an uncertain attempt, Duplicate is a real rejection.
        let mut i = incident();
        apply(&mut i, nak("Duplicate"), now());
        assert_eq!(i.state, State::Rejected);
    }

    #[test]
    fn customer_cancel_before_ack_waits_then_sends() {
        let mut i = incident();
        let t = apply(
            &mut i,
            Event::CustomerCancel {
                reason: "no longer needed".into(),
            },
            now(),
        );
        assert!(!t.send_cancel);
        assert_eq!(i.state, State::CancelRequested);
        assert!(i.cancel_waiting_for_ack);
        let t = apply(&mut i, ack("INC1"), now());
        assert!(t.send_cancel);
        assert_eq!(kinds(&t), vec![UpdateKind::Ack]);
        assert_eq!(t.updates[0].state, State::CancelRequested);
        let t = apply(&mut i, Event::CancelDelivered { status: 200 }, now());
        assert_eq!(kinds(&t), vec![UpdateKind::Cancel]);
        assert_eq!(i.state, State::Cancelled);
        assert_eq!(
            apply(
                &mut i,
                Event::CustomerCancel {
                    reason: "again".into()
                },
                now()
            )
            .outcome,
            Outcome::AlreadyTerminal(State::Cancelled)
        );
    }

    #[test]
    fn a_close_that_overtakes_a_customer_cancel_says_so() {
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        apply(&mut i, Event::CustomerCancel { reason: "r".into() }, now());
        assert_eq!(i.state, State::CancelRequested);
        let t = apply(&mut i, close("INC1"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Close]);
        assert_eq!(i.state, State::Closed);
        let last = i.timeline.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.outcome),
            ("CustomerCancel", EntryOutcome::Note)
        );
        assert!(last.detail.contains("Loomis closed the incident first"));
        // A Close with no cancel pending adds no such note.
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        apply(&mut i, close("INC1"), now());
        assert!(i.timeline.iter().all(|e| e.kind != "CustomerCancel"));
    }

    #[test]
    fn customer_cancel_before_ack_is_dropped_by_nak() {
        let mut i = incident();
        apply(&mut i, Event::CustomerCancel { reason: "r".into() }, now());
        let t = apply(&mut i, nak("InvalidFault"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Nak]);
        assert_eq!(i.state, State::Rejected);
        assert!(!i.cancel_waiting_for_ack);
    }

    #[test]
    fn refused_cancel_returns_the_incident_where_it_was() {
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        apply(&mut i, accept("INC1", "2026-01-01T04:00:00Z"), now());
        let t = apply(&mut i, Event::CustomerCancel { reason: "r".into() }, now());
        assert!(t.send_cancel);
        let t = apply(
            &mut i,
            Event::CancelRejected {
                status: 409,
                body: "too late".into(),
            },
            now(),
        );
        assert_eq!(kinds(&t), vec![UpdateKind::Rejected]);
        assert_eq!(i.state, State::Accepted);
    }

    #[test]
    fn a_nak_answering_the_cancel_returns_the_incident_where_it_was() {
        // Loomis answers the Cancel with a NAK (in the response body, before the 2xx is
        // settled, or by callback): the cancel is refused, not done.
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        apply(&mut i, accept("INC1", "2026-01-01T04:00:00Z"), now());
        apply(&mut i, Event::CustomerCancel { reason: "r".into() }, now());
        let t = apply(&mut i, nak("TooLate"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Nak]);
        assert_eq!(t.updates[0].state, State::Accepted);
        assert_eq!(t.updates[0].response_code.as_deref(), Some("TooLate"));
        assert_eq!(i.state, State::Accepted);
        assert_eq!(i.resume_state, None);
        // The 2xx of the same Cancel changes nothing more; Loomis carries on.
        let t = apply(&mut i, Event::CancelDelivered { status: 200 }, now());
        assert!(t.updates.is_empty());
        assert_eq!(i.state, State::Accepted);
        let t = apply(&mut i, close("INC1"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Close]);
        assert_eq!(i.state, State::Closed);
        // Without a cancel pending, a NAK after the ACK is still ignored.
        let mut j = incident();
        apply(&mut j, ack("INC2"), now());
        let t = apply(&mut j, nak("DeviceNotFound"), now());
        assert!(t.updates.is_empty());
        assert_eq!(j.state, State::Acknowledged);
    }

    #[test]
    fn loomis_cancel_and_expiry() {
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        let t = apply(&mut i, loomis_cancel("INC1"), now());
        assert_eq!(kinds(&t), vec![UpdateKind::Cancel]);
        assert_eq!(i.state, State::Cancelled);

        let mut i = incident();
        let t = apply(
            &mut i,
            Event::DispatchExpired {
                detail: "24h".into(),
            },
            now(),
        );
        assert_eq!(kinds(&t), vec![UpdateKind::DeliveryFailed]);
        assert_eq!(i.state, State::Failed);
    }

    fn any_event() -> impl Strategy<Value = Event> {
        let ids = prop_oneof![Just("INC1"), Just("INC1"), Just("INC2")];
        prop_oneof![
            ids.clone().prop_map(ack),
            prop_oneof![
                Just("DeviceNotFound"),
                Just("Duplicate"),
                Just("InvalidFault")
            ]
            .prop_map(nak),
            (
                ids.clone(),
                prop_oneof![Just("2026-01-01T04:00:00Z"), Just("2026-01-01T05:00:00Z")]
            )
                .prop_map(|(id, s)| accept(id, s)),
            ids.clone().prop_map(close),
            ids.prop_map(loomis_cancel),
            Just(Event::DispatchDelivered { status: 200 }),
            Just(Event::DispatchUncertain {
                detail: "timeout".into()
            }),
            Just(Event::DispatchRejected {
                status: 400,
                body: "bad".into()
            }),
            Just(Event::DispatchExpired {
                detail: "24h".into()
            }),
            Just(Event::CustomerCancel { reason: "r".into() }),
            Just(Event::CancelDelivered { status: 200 }),
            Just(Event::CancelRejected {
                status: 409,
                body: "no".into()
            }),
            Just(Event::CancelExpired {
                detail: "24h".into()
            }),
            (
                prop_oneof![Just("Dispatch"), Just("Cancel")],
                prop_oneof![
                    Just("HTTP 503"),
                    Just("timed out"),
                    Just("connection failed")
                ],
                any::<bool>()
            )
                .prop_map(|(message, detail, uncertain)| Event::AttemptFailed {
                    message,
                    detail: detail.into(),
                    uncertain
                }),
        ]
    }

    #[test]
    fn failed_attempts_are_noted_once_per_cause_and_a_few_in_all() {
        let mut i = incident();
        let fail = |detail: &str| Event::AttemptFailed {
            message: "Dispatch",
            detail: detail.into(),
            uncertain: false,
        };
        let before = i.timeline.len();
        let t = apply(&mut i, fail("connection failed: refused"), now());
        assert!(t.changed && t.updates.is_empty());
        assert_eq!(i.state, State::Queued);
        let t = apply(&mut i, fail("connection failed: refused"), now());
        assert!(!t.changed, "the same cause again is not noted again");
        apply(&mut i, fail("HTTP 503: busy"), now());
        apply(&mut i, fail("connection failed: refused"), now());
        assert_eq!(i.timeline.len(), before + 3);
        assert!(i.timeline.last().unwrap().detail.contains("refused"));
        for n in 0..10 {
            apply(&mut i, fail(&format!("HTTP 50{n}")), now());
        }
        assert_eq!(i.timeline.len(), before + ATTEMPT_NOTES);
        // Loomis's answer still goes in and applies.
        apply(&mut i, ack("INC1"), now());
        assert_eq!(i.state, State::Acknowledged);

        // Once answered (an ACK came by callback while an attempt failed), a failed
        // attempt is not noted: nothing waits for it any more.
        let mut i = incident();
        apply(&mut i, ack("INC1"), now());
        let before = i.timeline.len();
        let t = apply(&mut i, fail("timed out"), now());
        assert!(!t.changed);
        assert_eq!(i.timeline.len(), before);
        // A maybe-delivered attempt says so.
        let mut i = incident();
        apply(
            &mut i,
            Event::AttemptFailed {
                message: "Dispatch",
                detail: "HTTP 502".into(),
                uncertain: true,
            },
            now(),
        );
        assert!(i
            .timeline
            .last()
            .unwrap()
            .detail
            .starts_with("outcome unknown (HTTP 502)"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Over any order of any messages: terminal states are never left, the IncidentId
        /// never changes once known, exact duplicates and non-applied events emit nothing,
        /// every update's state is the incident's state after the event, and at most one
        /// terminal update is ever emitted.
        #[test]
        fn invariants_hold_over_random_orders(events in proptest::collection::vec(any_event(), 0..24)) {
            let mut i = incident();
            let mut terminal_updates = 0;
            for ev in events {
                let before = i.clone();
                let attempt_note = matches!(ev, Event::AttemptFailed { .. });
                let t = apply(&mut i, ev, now());
                if attempt_note {
                    // A failed attempt only ever adds a note.
                    prop_assert!(t.updates.is_empty() && !t.send_cancel);
                    prop_assert_eq!(i.state, before.state);
                    prop_assert_eq!(&i.incident_id, &before.incident_id);
                    prop_assert!(i.timeline.len() <= before.timeline.len() + 1);
                    let notes = attempt_notes(&i);
                    prop_assert!(notes <= ATTEMPT_NOTES + 1, "{} notes", notes);
                }
                if before.state.is_terminal() {
                    prop_assert_eq!(i.state, before.state);
                    prop_assert!(t.updates.is_empty());
                }
                if let Some(id) = &before.incident_id {
                    prop_assert_eq!(i.incident_id.as_ref(), Some(id));
                }
                match &t.outcome {
                    Outcome::Applied => {}
                    Outcome::Duplicate | Outcome::AlreadyTerminal(_) => {
                        prop_assert!(t.updates.is_empty());
                        prop_assert_eq!(i.state, before.state);
                    }
                    Outcome::Ignored(_) | Outcome::Conflict(_) => {
                        prop_assert!(t.updates.is_empty());
                        prop_assert_eq!(i.state, before.state);
                        prop_assert_eq!(&i.incident_id, &before.incident_id);
                    }
                }
                for u in &t.updates {
                    prop_assert_eq!(u.state, i.state);
                    if u.state.is_terminal() { terminal_updates += 1; }
                }
                if t.send_cancel {
                    prop_assert!(i.incident_id.is_some());
                    prop_assert_eq!(i.state, State::CancelRequested);
                }
                prop_assert!(i.timeline.len() <= crate::incident::TIMELINE_CAP);
                // The overtaken-cancel note: only on the step that closed an incident
                // whose cancel was pending.
                let overtaken = |inc: &Incident| inc.timeline.iter().filter(|e| e.detail.contains(CANCEL_OVERTAKEN)).count();
                if overtaken(&i) > overtaken(&before) {
                    prop_assert_eq!(before.state, State::CancelRequested);
                    prop_assert_eq!(i.state, State::Closed);
                }
                prop_assert!(overtaken(&i) <= 1);
            }
            prop_assert!(terminal_updates <= 1);
        }
    }
}
