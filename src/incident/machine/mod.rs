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
                inc.incident_id = Some(id.into());
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
mod tests;
