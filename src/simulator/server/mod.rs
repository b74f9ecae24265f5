//! The simulator's HTTP face. Its own accept loop (hyper, HTTP/1.1) gives every
//! connection a kill switch, so that the "timeout" and "down" faults can really drop a
//! connection without answering, as a dead or wedged Loomis would. Every path that is
//! not the `/_sim/` control API ([`control`]) is the incident path: one Dispatch or
//! Cancel per POST.

mod control;

use super::callback::deliver;
use super::config::{matches_any, DownMode};
use super::incident;
use super::state::{FaultDecision, Incident, IncidentKey, IncidentState, ReceivedKind, Shared};
use crate::loomis::message::{CustomerCancel, Dispatch, FieldProblem, ValidationErrors};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Put into each request's extensions: cancelling it drops the connection unanswered.
#[derive(Clone)]
struct ConnKill(CancellationToken);

/// Accepts connections until shutdown, serving each on its own tracked task.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let router = router(shared.clone());
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let kill = shared.shutdown.child_token();
        let conn_kill = ConnKill(kill.clone());
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(conn_kill.clone());
                router.clone().oneshot(req.map(Body::new))
            });
        shared.tasks.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "simulator connection ended with an error");
                    }
                }
                _ = kill.cancelled() => tracing::debug!("simulator connection dropped"),
            }
        });
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/state", get(control::state))
        .route("/_sim/faults", post(control::faults))
        .route("/_sim/received", get(control::received))
        .fallback(incident_path)
        .with_state(shared)
}

/// An answer on the incident path, with what it means for the record.
struct Answer {
    status: StatusCode,
    body: Value,
    headers: Vec<(header::HeaderName, String)>,
    outcome: String,
}

impl Answer {
    fn json(status: StatusCode, body: Value, outcome: impl Into<String>) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
            outcome: outcome.into(),
        }
    }

    fn error(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        problems: &[FieldProblem],
    ) -> Self {
        let message = message.into();
        let outcome = format!("{code}: {message}");
        Self::json(
            status,
            json!({"error": code, "message": message, "problems": problems}),
            outcome,
        )
    }

    fn invalid(problems: Vec<FieldProblem>) -> Self {
        let e = ValidationErrors(problems);
        Self::error(
            StatusCode::BAD_REQUEST,
            "ValidationFailed",
            e.to_string(),
            &e.0,
        )
    }

    fn with_header(mut self, name: header::HeaderName, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// Holds until the connection task drops this request with its connection.
async fn drop_connection(kill: Option<ConnKill>) -> Response {
    match kill {
        Some(ConnKill(k)) => {
            k.cancel();
            std::future::pending().await
        }
        // Only reachable if the router were served by something else than our loop.
        None => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

fn classify(json: Option<&Value>) -> ReceivedKind {
    match json
        .and_then(|v| v.get("MessageType"))
        .and_then(Value::as_str)
    {
        Some(t) if t.trim().eq_ignore_ascii_case("dispatch") => ReceivedKind::Dispatch,
        Some(t) if t.trim().eq_ignore_ascii_case("cancel") => ReceivedKind::Cancel,
        _ => ReceivedKind::Invalid,
    }
}

async fn incident_path(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let kill = parts.extensions.get::<ConnKill>().cloned();
    if path.starts_with("/_sim/") {
        // A mistyped control route must not be taken for an incident.
        return Answer::error(
            StatusCode::NOT_FOUND,
            "UnknownControlRoute",
            format!("{path} is not a control route; see /_sim/state, /_sim/faults, /_sim/received"),
            &[],
        )
        .into_response();
    }
    sim.count(|s| s.requests += 1);

    if parts.method != Method::POST {
        sim.count(|s| s.invalid += 1);
        let a = Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "{} is not allowed here; POST one Dispatch or Cancel message",
                parts.method
            ),
            &[],
        )
        .with_header(header::ALLOW, "POST");
        sim.record(
            &path,
            ReceivedKind::Invalid,
            None,
            Some(a.status.as_u16()),
            a.outcome.clone(),
        );
        return a.into_response();
    }

    let bytes = match axum::body::to_bytes(body, sim.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = is_length_limit(&e);
            let a = if too_large {
                sim.count(|s| s.too_large += 1);
                Answer::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PayloadTooLarge",
                    format!(
                        "the body exceeds {} bytes; send one message per request",
                        sim.config.max_body_bytes
                    ),
                    &[],
                )
            } else {
                sim.count(|s| s.invalid += 1);
                Answer::error(
                    StatusCode::BAD_REQUEST,
                    "UnreadableBody",
                    format!("could not read the body: {e}"),
                    &[],
                )
            };
            sim.record(
                &path,
                ReceivedKind::Invalid,
                None,
                Some(a.status.as_u16()),
                a.outcome.clone(),
            );
            return a.into_response();
        }
    };
    let parsed: Result<Value, serde_json::Error> = serde_json::from_slice(&bytes);
    let kind = classify(parsed.as_ref().ok());
    // Kept as received (a reference to the same bytes) and parsed only when read back.
    let json = parsed.is_ok().then(|| bytes.clone());

    match sim.decide_fault() {
        FaultDecision::None => {}
        FaultDecision::Down { retry_after_secs } => {
            sim.count(|s| s.faults_down += 1);
            let mode = sim.lock().faults.down_mode;
            match mode {
                DownMode::Unavailable => {
                    let a = Answer::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Unavailable",
                        format!("fault: simulator is down for {retry_after_secs} more second(s)"),
                        &[],
                    )
                    .with_header(header::RETRY_AFTER, retry_after_secs);
                    sim.record(&path, kind, json, Some(503), a.outcome.clone());
                    return a.into_response();
                }
                DownMode::Drop => {
                    sim.record(
                        &path,
                        kind,
                        json,
                        None,
                        "fault: down, connection dropped".into(),
                    );
                    return drop_connection(kill).await;
                }
            }
        }
        FaultDecision::Fail { retry_after_secs } => {
            sim.count(|s| s.faults_failed += 1);
            let mut a = Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "fault: injected failure, not processed",
                &[],
            );
            if let Some(secs) = retry_after_secs {
                a = a.with_header(header::RETRY_AFTER, secs);
            }
            sim.record(&path, kind, json, Some(503), a.outcome.clone());
            return a.into_response();
        }
        FaultDecision::Hang => {
            sim.count(|s| s.faults_timed_out += 1);
            let hang = sim.config.hang;
            let outcome = if sim.config.process_before_hang {
                let a = process(&sim, &parts.headers, &parsed);
                format!(
                    "fault: processed ({}, not sent), then held {} ms and dropped",
                    a.outcome,
                    hang.as_millis()
                )
            } else {
                format!(
                    "fault: held {} ms and dropped, not processed",
                    hang.as_millis()
                )
            };
            tracing::info!(%path, "{outcome}");
            sim.record(&path, kind, json, None, outcome);
            tokio::select! {
                _ = sim.shutdown.cancelled() => {}
                _ = tokio::time::sleep(hang) => {}
            }
            return drop_connection(kill).await;
        }
    }

    let a = process(&sim, &parts.headers, &parsed);
    sim.record(
        &path,
        kind,
        json,
        Some(a.status.as_u16()),
        a.outcome.clone(),
    );
    a.into_response()
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Auth, then the message: everything a healthy Loomis does with one request.
fn process(
    sim: &Arc<Shared>,
    headers: &HeaderMap,
    parsed: &Result<Value, serde_json::Error>,
) -> Answer {
    if let Some(expected) = &sim.config.expect_token {
        if !bearer_matches(headers, expected.expose()) {
            sim.count(|s| s.unauthorized += 1);
            return Answer::error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong bearer token in Authorization",
                &[],
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"loomis-simulator\"",
            );
        }
    }
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            sim.count(|s| s.invalid += 1);
            return Answer::invalid(vec![FieldProblem {
                field: "(body)".into(),
                message: format!("not valid JSON: {e}"),
            }]);
        }
    };
    let Some(obj) = value.as_object() else {
        sim.count(|s| s.invalid += 1);
        return Answer::invalid(vec![problem(
            "(body)",
            "must be one JSON object (one message per request)",
        )]);
    };
    match classify(Some(value)) {
        ReceivedKind::Dispatch => dispatch(sim, value, obj),
        ReceivedKind::Cancel => customer_cancel(sim, value, obj),
        ReceivedKind::Invalid => {
            sim.count(|s| s.invalid += 1);
            let message = match obj.get("MessageType") {
                None | Some(Value::Null) => "required, missing".to_string(),
                Some(Value::String(t)) => format!("{t:?} is not \"Dispatch\" or \"Cancel\""),
                Some(_) => "must be the string \"Dispatch\" or \"Cancel\"".to_string(),
            };
            Answer::invalid(vec![problem("MessageType", message)])
        }
    }
}

fn problem(field: &str, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        message: message.into(),
    }
}

fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// The strict checks beyond the message's own validation: exact `MessageType`
/// spelling and, when configured, a known `CustomerNumber`.
fn extra_checks(
    sim: &Shared,
    obj: &Map<String, Value>,
    exact_type: &str,
    problems: &mut Vec<FieldProblem>,
) {
    let has = |problems: &Vec<FieldProblem>, f: &str| problems.iter().any(|p| p.field == f);
    if obj.get("MessageType").and_then(Value::as_str) != Some(exact_type)
        && !has(problems, "MessageType")
    {
        problems.push(problem(
            "MessageType",
            format!("must be exactly {exact_type:?}"),
        ));
    }
    if let Some(Value::String(c)) = obj.get("CustomerNumber") {
        let known = &sim.config.customer_numbers;
        if !c.trim().is_empty()
            && !known.is_empty()
            && !known.contains(c)
            && !has(problems, "CustomerNumber")
        {
            problems.push(problem(
                "CustomerNumber",
                format!("{c:?} is not a known customer"),
            ));
        }
    }
}

/// Parses a message and applies the strict checks, all problems together; an invalid
/// message is counted and answered `400`.
fn validated<T>(
    sim: &Shared,
    value: &Value,
    obj: &Map<String, Value>,
    exact_type: &str,
    parse: fn(&Value) -> Result<T, ValidationErrors>,
) -> Result<T, Answer> {
    let (parsed, mut problems) = match parse(value) {
        Ok(m) => (Some(m), Vec::new()),
        Err(ValidationErrors(p)) => (None, p),
    };
    extra_checks(sim, obj, exact_type, &mut problems);
    match parsed {
        Some(m) if problems.is_empty() => Ok(m),
        _ => {
            sim.count(|s| s.invalid += 1);
            tracing::info!(
                problems = problems.len(),
                kind = exact_type,
                "invalid message refused"
            );
            Err(Answer::invalid(problems))
        }
    }
}

fn dispatch(sim: &Arc<Shared>, value: &Value, obj: &Map<String, Value>) -> Answer {
    let d = match validated(sim, value, obj, "Dispatch", Dispatch::from_json) {
        Ok(d) => d,
        Err(answer) => return answer,
    };
    sim.count(|s| s.dispatches += 1);
    let config = &sim.config;
    let mut rt = sim.lock();
    let now = Instant::now();
    let ref_key = (d.customer_number.clone(), d.incident_reference.clone());
    let nak = match rt.references.get(&ref_key) {
        Some((id, at)) if now.duration_since(*at) < config.duplicate_window => Some((
            "Duplicate",
            format!(
                "IncidentReference {} was already dispatched {} s ago as {id}",
                d.incident_reference,
                now.duration_since(*at).as_secs()
            ),
            config.nak_duplicate_with_incident_id.then(|| id.clone()),
        )),
        _ if !matches_any(&config.devices, &d.device_id) => Some((
            "DeviceNotFound",
            format!(
                "DeviceId {} is not found for customer {}",
                d.device_id, d.customer_number
            ),
            None,
        )),
        _ => match &d.fault_code {
            Some(code) if !matches_any(&config.fault_codes, code) => Some((
                "InvalidFault",
                format!(
                    "FaultCode {code} is not valid for customer {}",
                    d.customer_number
                ),
                None,
            )),
            _ => None,
        },
    };
    if let Some((code, text, original)) = nak {
        drop(rt);
        sim.count(|s| *s.naks.entry(code.to_string()).or_default() += 1);
        tracing::info!(incident_reference = %d.incident_reference, code, "Dispatch NAKed");
        let msg = incident::nak_message(
            &d.customer_number,
            &d.incident_reference,
            code,
            &text,
            original.as_deref(),
        );
        if config.ack.by_callback() {
            let key = IncidentKey {
                customer_number: d.customer_number.clone(),
                reference: d.incident_reference.clone(),
                incident_id: String::new(),
            };
            let shared = sim.clone();
            let copy = msg.clone();
            sim.tasks.spawn(async move {
                deliver(&shared, &key, copy).await;
            });
        }
        let body = if config.ack.in_body() { msg } else { json!({}) };
        return Answer::json(StatusCode::OK, body, format!("NAK {code}"));
    }

    let incident_id = format!("INC{}", rt.next_number);
    rt.next_number += 1;
    if rt.references.len() >= 4096 && rt.references.len().is_power_of_two() {
        // Forget references past the window now and then, so a long demo stays small.
        let window = config.duplicate_window;
        rt.references
            .retain(|_, (_, at)| now.duration_since(*at) < window);
    }
    rt.references.insert(ref_key, (incident_id.clone(), now));
    let (tx, rx) = mpsc::unbounded_channel();
    rt.incidents.insert(
        incident_id.clone(),
        Incident {
            customer_number: d.customer_number.clone(),
            reference: d.incident_reference.clone(),
            state: IncidentState::Open,
            customer_cancelled: false,
            commands: tx,
        },
    );
    let steps = incident::plan(config.ack, config.outcome, rt.faults.reorder_callbacks);
    drop(rt);
    sim.count(|s| s.acks += 1);
    tracing::info!(incident_reference = %d.incident_reference, incident_id = %incident_id, "Dispatch ACKed");
    let key = IncidentKey {
        customer_number: d.customer_number,
        reference: d.incident_reference,
        incident_id,
    };
    let ack = incident::ack_message(&key);
    let outcome = format!("ACK {}", key.incident_id);
    sim.tasks.spawn(incident::run(sim.clone(), key, steps, rx));
    let body = if config.ack.in_body() { ack } else { json!({}) };
    Answer::json(StatusCode::OK, body, outcome)
}

fn customer_cancel(sim: &Arc<Shared>, value: &Value, obj: &Map<String, Value>) -> Answer {
    let c = match validated(sim, value, obj, "Cancel", CustomerCancel::from_json) {
        Ok(c) => c,
        Err(answer) => return answer,
    };
    sim.count(|s| s.cancels += 1);
    let mut rt = sim.lock();
    let Some(incident) = rt.incidents.get_mut(&c.incident_id) else {
        drop(rt);
        sim.count(|s| s.unknown_incident += 1);
        return Answer::error(
            StatusCode::NOT_FOUND,
            "UnknownIncident",
            format!("no incident {}", c.incident_id),
            &[problem(
                "IncidentId",
                format!("{:?} is not a known incident", c.incident_id),
            )],
        );
    };
    let mut mismatch = Vec::new();
    if incident.reference != c.incident_reference {
        mismatch.push(problem(
            "IncidentReference",
            format!(
                "{} belongs to IncidentReference {:?}",
                c.incident_id, incident.reference
            ),
        ));
    }
    if incident.customer_number != c.customer_number {
        mismatch.push(problem(
            "CustomerNumber",
            format!(
                "{} belongs to CustomerNumber {:?}",
                c.incident_id, incident.customer_number
            ),
        ));
    }
    let answer = if !mismatch.is_empty() {
        Err(Answer::error(
            StatusCode::CONFLICT,
            "IncidentMismatch",
            format!("the Cancel contradicts incident {}", c.incident_id),
            &mismatch,
        ))
    } else if incident.state.is_terminal() {
        let what = if incident.state == IncidentState::Closed {
            "closed"
        } else {
            "cancelled"
        };
        Err(Answer::error(
            StatusCode::CONFLICT,
            if what == "closed" {
                "AlreadyClosed"
            } else {
                "AlreadyCancelled"
            },
            format!("incident {} is already {what}", c.incident_id),
            &[],
        ))
    } else {
        incident.state = IncidentState::Cancelled;
        incident.customer_cancelled = true;
        // The task only ends at shutdown while the incident is not terminal.
        let _ = incident.commands.send(c.response_text.clone());
        Ok(())
    };
    drop(rt);
    match answer {
        Err(a) => {
            sim.count(|s| s.conflicts += 1);
            tracing::info!(incident_reference = %c.incident_reference, incident_id = %c.incident_id, "customer Cancel refused: {}", a.outcome);
            a
        }
        Ok(()) => {
            sim.count(|s| s.cancels_accepted += 1);
            tracing::info!(incident_reference = %c.incident_reference, incident_id = %c.incident_id, "customer Cancel accepted");
            Answer::json(
                StatusCode::OK,
                json!({}),
                format!("Cancel {} accepted", c.incident_id),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_checked_exactly() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(bearer_matches(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer t0k"),
        );
        assert!(bearer_matches(&h, "t0k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0"));
        assert!(!bearer_matches(&h, "t0k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic t0k"));
        assert!(!bearer_matches(&h, "t0k"));
    }

    #[test]
    fn classify_by_message_type() {
        assert_eq!(
            classify(Some(&json!({"MessageType":"Dispatch"}))),
            ReceivedKind::Dispatch
        );
        assert_eq!(
            classify(Some(&json!({"MessageType":"cancel"}))),
            ReceivedKind::Cancel
        );
        assert_eq!(
            classify(Some(&json!({"MessageType":"ACK"}))),
            ReceivedKind::Invalid
        );
        assert_eq!(classify(None), ReceivedKind::Invalid);
    }
}
