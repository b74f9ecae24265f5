//! The incident domain: what the gateway knows about one order for SafePoint service,
//! the updates it tells callers about, and the state machine that moves it (pure: values
//! in, values out; no I/O). See [`machine`].

pub mod ids;
pub mod machine;
pub mod wire;

pub use ids::{IncidentReference, LoomisIncidentId, Sequence};

use crate::loomis::message::Dispatch;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies an incident inside the gateway: the integration it came through and the
/// tool's own reference. Loomis knows it as CustomerNumber + IncidentReference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IncidentKey {
    pub integration: String,
    pub reference: IncidentReference,
}

impl IncidentKey {
    pub fn new(integration: impl Into<String>, reference: impl Into<IncidentReference>) -> Self {
        Self {
            integration: integration.into(),
            reference: reference.into(),
        }
    }
}

impl fmt::Display for IncidentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.integration, self.reference)
    }
}

/// Where an incident stands. Closed, Cancelled, Rejected and Failed are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Durably accepted from the caller, Dispatch not yet delivered to Loomis.
    Queued,
    /// Loomis answered 2xx to the Dispatch; waiting for ACK or NAK.
    Sent,
    /// ACK received; Loomis IncidentId known.
    Acknowledged,
    /// Accept received; SLA time known.
    Accepted,
    /// The customer asked to cancel; the Cancel waits for the IncidentId or for Loomis.
    CancelRequested,
    Closed,
    Cancelled,
    /// NAK, or Loomis refused the Dispatch with a non-retryable 4xx.
    Rejected,
    /// Delivery to Loomis gave up after the configured age.
    Failed,
}

impl State {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Closed | State::Cancelled | State::Rejected | State::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "Queued",
            State::Sent => "Sent",
            State::Acknowledged => "Acknowledged",
            State::Accepted => "Accepted",
            State::CancelRequested => "CancelRequested",
            State::Closed => "Closed",
            State::Cancelled => "Cancelled",
            State::Rejected => "Rejected",
            State::Failed => "Failed",
        }
    }

    pub const ALL: [State; 9] = [
        State::Queued,
        State::Sent,
        State::Acknowledged,
        State::Accepted,
        State::CancelRequested,
        State::Closed,
        State::Cancelled,
        State::Rejected,
        State::Failed,
    ];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an update tells the caller happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateKind {
    Ack,
    Nak,
    Accept,
    Close,
    Cancel,
    /// The gateway's own: Loomis refused a message with a non-retryable HTTP answer.
    Rejected,
    /// The gateway's own: delivery to Loomis gave up after its configured age.
    DeliveryFailed,
}

impl UpdateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Ack => "ACK",
            UpdateKind::Nak => "NAK",
            UpdateKind::Accept => "ACCEPT",
            UpdateKind::Close => "CLOSE",
            UpdateKind::Cancel => "CANCEL",
            UpdateKind::Rejected => "REJECTED",
            UpdateKind::DeliveryFailed => "DELIVERY_FAILED",
        }
    }
}

impl fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One applied change, as streamed to gRPC watchers and posted to legacy tools.
/// `sequence` is strictly increasing (and gap-free) per integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub sequence: Sequence,
    pub integration: String,
    pub incident_reference: IncidentReference,
    pub incident_id: Option<LoomisIncidentId>,
    pub customer_number: String,
    pub kind: UpdateKind,
    /// The incident's state after this change.
    pub state: State,
    pub response_code: Option<String>,
    pub response_text: Option<String>,
    #[serde(default, with = "crate::incident::wire::option_timestamp")]
    pub sla_time: Option<Timestamp>,
    /// When it happened according to Loomis (`DateTime`), or the gateway for its own kinds.
    #[serde(default, with = "crate::incident::wire::option_timestamp")]
    pub event_time: Option<Timestamp>,
    /// When the gateway received or decided it.
    #[serde(with = "crate::incident::wire::timestamp")]
    pub received_at: Timestamp,
}

/// An update before the store gives it its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateDraft {
    pub kind: UpdateKind,
    pub state: State,
    pub response_code: Option<String>,
    pub response_text: Option<String>,
    pub event_time: Option<Timestamp>,
}

/// Which way a timeline entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// From the caller (legacy tool or gRPC service).
    Caller,
    /// Sent to Loomis.
    ToLoomis,
    /// Received from Loomis (callback or response body).
    FromLoomis,
    /// Decided by the gateway itself.
    Gateway,
}

/// What became of a timeline entry's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryOutcome {
    Applied,
    /// Recorded but not applied: late, contradictory or after a terminal state.
    Ignored,
    /// Refused: the IncidentId contradicts the one on record.
    Conflict,
    Delivered,
    Note,
}

/// One line of an incident's audit trail: every message in and out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(with = "crate::incident::wire::timestamp")]
    pub at: Timestamp,
    pub direction: Direction,
    /// `Dispatch`, `ACK`, `Cancel`, `CustomerCancel`, ...
    pub kind: String,
    pub outcome: EntryOutcome,
    pub detail: String,
    /// The message as sent or received, unknown fields included. None on the caller's
    /// Dispatch entry: see [`Incident::timeline_message`].
    #[serde(default, with = "crate::incident::wire::json_message")]
    pub message: Option<JsonText>,
}

/// A message as compact JSON text. A timeline keeps its messages as text: the record is
/// encoded at every change of the incident, and serializing (and, when read back,
/// parsing) each message again every time was ~4 % of the CPU of a full lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// The text of a JSON value or object map. Give it one of those (keys sorted), not a
    /// struct: its text must be what a JSON round trip of the record gives back.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Self {
        JsonText(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
    }

    /// Text read back from a stored record, which wrote it with [`JsonText::of`].
    pub(crate) fn stored(text: String) -> Self {
        JsonText(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The message parsed (`None` only if the stored text is damaged).
    pub fn value(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.0).ok()
    }
}

/// The most timeline entries one incident keeps; later ones are counted in
/// `Incident::timeline_dropped` so a chatty or hostile sender cannot grow a record forever.
pub const TIMELINE_CAP: usize = 200;

/// Everything the gateway knows about one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub integration: String,
    pub reference: IncidentReference,
    pub customer_number: String,
    pub state: State,
    /// Where a customer cancel returns the incident if Loomis refuses it.
    pub resume_state: Option<State>,
    pub incident_id: Option<LoomisIncidentId>,
    /// The Dispatch exactly as sent (and as compared for idempotent re-submission).
    #[serde(with = "crate::incident::wire::dispatch")]
    pub dispatch: Dispatch,
    /// ACK's `Status`.
    pub loomis_status: Option<String>,
    #[serde(default, with = "crate::incident::wire::option_timestamp")]
    pub sla_time: Option<Timestamp>,
    pub response_code: Option<String>,
    pub response_text: Option<String>,
    /// The customer's cancel reason, once asked.
    pub cancel_reason: Option<String>,
    /// A customer cancel waits for the IncidentId that only an ACK brings.
    pub cancel_waiting_for_ack: bool,
    /// Some Dispatch attempt ended without a known outcome (timeout, dropped connection):
    /// Loomis may have it, so a `Duplicate` NAK is the answer to our own retry.
    pub dispatch_uncertain: bool,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub created_at: Timestamp,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub updated_at: Timestamp,
    pub timeline: Vec<TimelineEntry>,
    pub timeline_dropped: u32,
    /// Fingerprints of the Loomis messages seen, to recognise exact duplicates.
    pub seen: Vec<String>,
    pub duplicates: u32,
    pub ignored: u32,
    /// Where in a trace the incident was accepted (the intake request's span): its later
    /// work (the Dispatch, callbacks, posts to the tool) continues that trace, after a
    /// restart too. `None` when traces were off, and in records before format 3.
    #[serde(default, with = "crate::incident::wire::option_trace")]
    pub trace: Option<crate::trace::TraceParent>,
}

impl Incident {
    /// A freshly accepted incident, Queued.
    pub fn new(integration: &str, dispatch: Dispatch, now: Timestamp) -> Self {
        let mut inc = Incident {
            integration: integration.to_string(),
            reference: IncidentReference::new(&dispatch.incident_reference),
            customer_number: dispatch.customer_number.clone(),
            state: State::Queued,
            resume_state: None,
            incident_id: None,
            dispatch,
            loomis_status: None,
            sla_time: None,
            response_code: None,
            response_text: None,
            cancel_reason: None,
            cancel_waiting_for_ack: false,
            dispatch_uncertain: false,
            created_at: now,
            updated_at: now,
            timeline: Vec::new(),
            timeline_dropped: 0,
            seen: Vec::new(),
            duplicates: 0,
            ignored: 0,
            trace: None,
        };
        // The caller's Dispatch is `inc.dispatch` itself: the entry does not carry a
        // second copy (it would double the record that every write re-encodes);
        // `timeline_message` supplies it to readers.
        inc.record(
            now,
            Direction::Caller,
            "Dispatch",
            EntryOutcome::Applied,
            "accepted and queued for Loomis",
            None,
        );
        inc
    }

    /// The message of a timeline entry as sent or received. The caller's Dispatch entry
    /// stores none (records written before this did carry a copy) and gets
    /// `self.dispatch`, which is exactly what the caller's Dispatch became.
    pub fn timeline_message(&self, entry: &TimelineEntry) -> Option<JsonText> {
        match &entry.message {
            Some(m) => Some(m.clone()),
            None if entry.direction == Direction::Caller && entry.kind == "Dispatch" => {
                serde_json::to_value(&self.dispatch)
                    .ok()
                    .map(|v| JsonText::of(&v))
            }
            None => None,
        }
    }

    pub fn key(&self) -> IncidentKey {
        IncidentKey::new(&self.integration, self.reference.clone())
    }

    /// Appends to the timeline, within [`TIMELINE_CAP`].
    pub fn record(
        &mut self,
        at: Timestamp,
        direction: Direction,
        kind: &str,
        outcome: EntryOutcome,
        detail: impl Into<String>,
        message: Option<JsonText>,
    ) {
        if self.timeline.len() >= TIMELINE_CAP {
            self.timeline_dropped = self.timeline_dropped.saturating_add(1);
            return;
        }
        self.timeline.push(TimelineEntry {
            at,
            direction,
            kind: kind.to_string(),
            outcome,
            detail: detail.into(),
            message,
        });
    }

    /// Builds the stored update for a draft; the store fills `sequence`.
    pub fn update_from(
        &self,
        draft: &UpdateDraft,
        sequence: Sequence,
        received_at: Timestamp,
    ) -> Update {
        Update {
            sequence,
            integration: self.integration.clone(),
            incident_reference: self.reference.clone(),
            incident_id: self.incident_id.clone(),
            customer_number: self.customer_number.clone(),
            kind: draft.kind,
            state: draft.state,
            response_code: draft.response_code.clone(),
            response_text: draft.response_text.clone(),
            sla_time: self.sla_time,
            event_time: draft.event_time,
            received_at,
        }
    }
}
