//! Domain values to proto messages. Optional strings become empty strings and optional
//! times unset fields, as the proto documents.

use super::proto;
use crate::incident::{
    Direction, EntryOutcome, Incident, State, TimelineEntry, Update, UpdateKind,
};

/// A jiff timestamp as `google.protobuf.Timestamp`.
pub(crate) fn timestamp(t: jiff::Timestamp) -> prost_types::Timestamp {
    // jiff gives negative nanoseconds before 1970; protobuf wants them in [0, 1e9).
    let (mut seconds, mut nanos) = (t.as_second(), t.subsec_nanosecond());
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    prost_types::Timestamp { seconds, nanos }
}

pub(crate) fn state(s: State) -> proto::IncidentState {
    use proto::IncidentState as P;
    match s {
        State::Queued => P::Queued,
        State::Sent => P::Sent,
        State::Acknowledged => P::Acknowledged,
        State::Accepted => P::Accepted,
        State::CancelRequested => P::CancelRequested,
        State::Closed => P::Closed,
        State::Cancelled => P::Cancelled,
        State::Rejected => P::Rejected,
        State::Failed => P::Failed,
    }
}

pub(crate) fn kind(k: UpdateKind) -> proto::UpdateKind {
    use proto::UpdateKind as P;
    match k {
        UpdateKind::Ack => P::Ack,
        UpdateKind::Nak => P::Nak,
        UpdateKind::Accept => P::Accept,
        UpdateKind::Close => P::Close,
        UpdateKind::Cancel => P::Cancel,
        UpdateKind::Rejected => P::Rejected,
        UpdateKind::DeliveryFailed => P::DeliveryFailed,
    }
}

fn direction(d: Direction) -> proto::Direction {
    match d {
        Direction::Caller => proto::Direction::Caller,
        Direction::ToLoomis => proto::Direction::ToLoomis,
        Direction::FromLoomis => proto::Direction::FromLoomis,
        Direction::Gateway => proto::Direction::Gateway,
    }
}

fn outcome(o: EntryOutcome) -> proto::EntryOutcome {
    match o {
        EntryOutcome::Applied => proto::EntryOutcome::Applied,
        EntryOutcome::Ignored => proto::EntryOutcome::Ignored,
        EntryOutcome::Conflict => proto::EntryOutcome::Conflict,
        EntryOutcome::Delivered => proto::EntryOutcome::Delivered,
        EntryOutcome::Note => proto::EntryOutcome::Note,
    }
}

/// A stored update as streamed by `WatchUpdates`.
pub(crate) fn update(u: Update) -> proto::IncidentUpdate {
    proto::IncidentUpdate {
        sequence: u.sequence.get(),
        integration: u.integration,
        incident_reference: u.incident_reference.into_string(),
        incident_id: u.incident_id.map(String::from).unwrap_or_default(),
        customer_number: u.customer_number,
        kind: kind(u.kind).into(),
        state: state(u.state).into(),
        response_code: u.response_code.unwrap_or_default(),
        response_text: u.response_text.unwrap_or_default(),
        sla_time: u.sla_time.map(timestamp),
        event_time: u.event_time.map(timestamp),
        received_at: Some(timestamp(u.received_at)),
    }
}

fn timeline_entry(i: &Incident, e: &TimelineEntry) -> proto::TimelineEntry {
    proto::TimelineEntry {
        at: Some(timestamp(e.at)),
        direction: direction(e.direction).into(),
        kind: e.kind.clone(),
        outcome: outcome(e.outcome).into(),
        detail: e.detail.clone(),
        message_json: i
            .timeline_message(e)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
    }
}

/// The whole incident, timeline included, for `GetIncident`.
pub(crate) fn incident(i: &Incident) -> proto::Incident {
    let d = &i.dispatch;
    proto::Incident {
        integration: i.integration.clone(),
        incident_reference: i.reference.to_string(),
        customer_number: i.customer_number.clone(),
        state: state(i.state).into(),
        incident_id: i
            .incident_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        sla_time: i.sla_time.map(timestamp),
        loomis_status: i.loomis_status.clone().unwrap_or_default(),
        response_code: i.response_code.clone().unwrap_or_default(),
        response_text: i.response_text.clone().unwrap_or_default(),
        cancel_reason: i.cancel_reason.clone().unwrap_or_default(),
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        dispatch: Some(proto::Dispatch {
            device_id: d.device_id.clone(),
            contact_name: d.contact_name.clone(),
            contact_number: d.contact_number.clone(),
            contact_email: d.contact_email.clone().unwrap_or_default(),
            subject: d.subject.clone(),
            description: d.description.clone(),
            fault_code: d.fault_code.clone().unwrap_or_default(),
            // Validated as RFC 3339 UTC on the way in, so this only fails on a record
            // written by some other tool; then the field is left unset.
            fault_time: d
                .fault_date_time
                .parse::<jiff::Timestamp>()
                .ok()
                .map(timestamp),
        }),
        timeline: i.timeline.iter().map(|e| timeline_entry(i, e)).collect(),
        timeline_dropped: i.timeline_dropped,
    }
}

/// The receipt of `CreateIncident`.
pub(crate) fn created(i: &Incident, created: bool) -> proto::CreateIncidentResponse {
    proto::CreateIncidentResponse {
        integration: i.integration.clone(),
        incident_reference: i.reference.to_string(),
        state: state(i.state).into(),
        created,
        created_at: Some(timestamp(i.created_at)),
        incident_id: i
            .incident_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_kind_has_a_specified_value() {
        for s in State::ALL {
            let p = state(s);
            assert_ne!(p, proto::IncidentState::Unspecified);
            assert_eq!(
                p.as_str_name(),
                format!("INCIDENT_STATE_{}", screaming(s.as_str()))
            );
        }
        for k in [
            UpdateKind::Ack,
            UpdateKind::Nak,
            UpdateKind::Accept,
            UpdateKind::Close,
            UpdateKind::Cancel,
            UpdateKind::Rejected,
            UpdateKind::DeliveryFailed,
        ] {
            assert_eq!(kind(k).as_str_name(), format!("UPDATE_KIND_{}", k.as_str()));
        }
    }

    /// `CancelRequested` -> `CANCEL_REQUESTED`.
    fn screaming(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let t: jiff::Timestamp = "2021-01-16T15:17:48.123456789Z".parse().unwrap();
        let p = timestamp(t);
        assert_eq!(p.seconds, 1_610_810_268);
        assert_eq!(p.nanos, 123_456_789);
    }
}
