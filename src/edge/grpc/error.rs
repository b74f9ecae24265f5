//! Domain errors to `tonic::Status`. The gRPC edge (this module with `service`, `watch`
//! and `auth`) is the only place that knows gRPC codes. Internals (store errors) are
//! logged here and answered with a generic message.

use super::proto;
use crate::gateway::{CancelError, SubmitError};
use crate::loomis::message::FieldProblem;
use crate::store::StoreError;
use std::borrow::Cow;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// gRPC carries an error's message, and its details (which repeat the message), in
/// response headers, and clients cap headers at 8–16 KiB: an error that quoted a huge
/// value whole would reach the caller as RESOURCE_EXHAUSTED instead of its real code. So
/// an error repeats at most this many characters of one value or problem...
const QUOTE_LIMIT: usize = 160;
/// ...and at most this many characters in all.
const MESSAGE_LIMIT: usize = 1200;

/// `s` cut to `max` characters, marked with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> Cow<'_, str> {
    let kept = crate::mapping::truncate(Cow::Borrowed(s), max);
    if kept.len() == s.len() {
        kept
    } else {
        Cow::Owned(format!("{kept}…"))
    }
}

/// NOT_FOUND for an incident reference unknown in `integration`.
pub(crate) fn no_incident(integration: &str, reference: &str) -> Status {
    Status::not_found(format!(
        "no incident {} in integration {integration:?}",
        quoted(reference)
    ))
}

/// A caller-supplied name or reference, quoted for an error message.
pub(crate) fn quoted(s: &str) -> String {
    format!("{:?}", clip(s, QUOTE_LIMIT))
}

/// INVALID_ARGUMENT with every problem as a `google.rpc.BadRequest` field violation and
/// all of them in the readable message too (for tools that show only the message).
pub(crate) fn invalid(what: &str, problems: &[FieldProblem]) -> Status {
    let problems: Vec<(Cow<str>, Cow<str>)> = problems
        .iter()
        .map(|p| (clip(&p.field, QUOTE_LIMIT), clip(&p.message, QUOTE_LIMIT)))
        .collect();
    let list = problems
        .iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join("; ");
    let n = problems.len();
    let message = format!(
        "{what}: {n} problem{}: {list}",
        if n == 1 { "" } else { "s" }
    );
    let message = clip(&message, MESSAGE_LIMIT).into_owned();
    let mut details = ErrorDetails::new();
    for (field, message) in problems {
        details.add_bad_request_violation(field, message);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A store failure: UNAVAILABLE (retry) while it passes; INTERNAL for a damaged record,
/// which retrying cannot mend.
pub(crate) fn store(e: StoreError) -> Status {
    e.log_at_edge("grpc");
    if e.is_passing() {
        let wait = std::time::Duration::from_secs(crate::store::RETRY_AFTER_SECS);
        let mut status = Status::with_error_details(
            Code::Unavailable,
            "the store is unavailable; retry",
            ErrorDetails::with_retry_info(Some(wait)),
        );
        status.metadata_mut().insert(
            "retry-after",
            tonic::metadata::MetadataValue::from(crate::store::RETRY_AFTER_SECS),
        );
        status
    } else {
        Status::internal(
            "a stored record this call needs is damaged; retrying will not help: tell the \
             gateway's operator (they restore it; see `safepoint-gateway store verify`)",
        )
    }
}

/// Why `CreateIncident` refused.
pub(crate) fn submit(e: SubmitError) -> Status {
    match e {
        SubmitError::UnknownIntegration(name) => {
            Status::not_found(format!("no integration {}", quoted(&name)))
        }
        SubmitError::Conflict {
            reference, fields, ..
        } => Status::already_exists(format!(
            "incident {} was already created with different content in: {}",
            quoted(&reference),
            fields.join(", ")
        )),
        e @ SubmitError::ReferenceTaken { .. } => {
            Status::already_exists(clip(&e.to_string(), MESSAGE_LIMIT))
        }
        SubmitError::Store(e) => store(e),
    }
}

/// Why `CancelIncident` refused.
pub(crate) fn cancel(integration: &str, e: CancelError) -> Status {
    match e {
        CancelError::NotFound(reference) => no_incident(integration, &reference),
        CancelError::AlreadyTerminal(state, inc) => Status::failed_precondition(format!(
            "incident {} is already {state}; it can no longer be cancelled",
            quoted(&inc.reference)
        )),
        CancelError::Store(e) => store(e),
    }
}

/// The `CreateIncidents` form of a refusal: the same code, message and violations a
/// unary `CreateIncident` would have answered.
pub(crate) fn request_error(status: &Status) -> proto::RequestError {
    let field_violations = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| proto::FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default();
    proto::RequestError {
        code: status.code() as i32,
        message: status.message().to_string(),
        field_violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_carries_every_violation() {
        let problems = vec![
            FieldProblem {
                field: "DeviceId".into(),
                message: "required".into(),
            },
            FieldProblem {
                field: "FaultDateTime".into(),
                message: "not a date-time".into(),
            },
        ];
        let s = invalid("the incident is invalid", &problems);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("2 problems"), "{}", s.message());
        assert!(
            s.message().contains("DeviceId: required"),
            "{}",
            s.message()
        );
        let bad = s.get_details_bad_request().expect("BadRequest details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["DeviceId", "FaultDateTime"]);
        let e = request_error(&s);
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.field_violations.len(), 2);
        assert_eq!(e.field_violations[1].description, "not a date-time");
    }
}
