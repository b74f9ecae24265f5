//! The state machine's rules, example by example, and its invariants over random
//! event orders (proptest).

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
