//! `POST /v1/loomis/messages`: Loomis callbacks (ACK, NAK, Accept, Close, Cancel).
//!
//! Authenticated by the configured scheme (constant-time compare), validated with every
//! bad field named, correlated by CustomerNumber + IncidentReference, and answered 200
//! only after the change (or the fact that it is a duplicate) is durable.

use crate::edge::http::{HttpState, JsonError};
use crate::gateway::MessageError;
use crate::incident::machine::{Outcome, Via};
use crate::loomis::message::InboundMessage;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub(crate) async fn receive(
    State(s): State<HttpState>,
    peer: Option<axum::Extension<std::sync::Arc<crate::config::PeerIdentity>>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, JsonError> {
    let policy = s.callback_auth.get();
    if let Some(expected) = &policy.client_cert {
        let peer = peer.as_ref().map(|p| &*p.0);
        if !peer.is_some_and(|p| expected.matches(p)) {
            let why = match peer {
                None => format!("callbacks need a client certificate carrying {expected}"),
                Some(p) => format!("the client certificate ({p}) does not carry {expected}"),
            };
            tracing::warn!(reason = %why, "Loomis callback refused");
            metrics::counter!("gateway_callbacks_refused_total", "reason" => "certificate")
                .increment(1);
            return Err(JsonError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                why,
            ));
        }
    }
    if !policy.auth.admits(&headers) {
        metrics::counter!("gateway_callbacks_refused_total", "reason" => "auth").increment(1);
        return Err(JsonError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "callback credentials missing or wrong",
        ));
    }
    // Over the size limit, or cut off: the JSON error like every other refusal.
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "PayloadTooLarge"
        } else {
            "BodyUnreadable"
        };
        JsonError::new(status, code, r.body_text())
    })?;
    if let Some(ct) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(JsonError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("expected application/json, got {ct}"),
            ));
        }
    }
    let msg = InboundMessage::parse(&body).map_err(|e| {
        metrics::counter!("gateway_callbacks_refused_total", "reason" => "invalid").increment(1);
        JsonError {
            status: StatusCode::BAD_REQUEST,
            code: "ValidationFailed",
            message: format!("{} problem(s)", e.0.len()),
            problems: e.0,
        }
    })?;
    match s.gateway.loomis_message(msg, Via::Callback).await {
        Ok((outcome, inc)) => {
            let (result, reason) = match &outcome {
                Outcome::Applied => ("applied", None),
                Outcome::Duplicate => ("duplicate", None),
                Outcome::Ignored(why) => ("ignored", Some(why.clone())),
                Outcome::Conflict(_) | Outcome::AlreadyTerminal(_) => ("ignored", None),
            };
            let mut body = json!({"result": result, "integration": inc.integration, "incident_reference": inc.reference, "state": inc.state.as_str()});
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        Err(MessageError::Unknown {
            customer,
            reference,
            orphan_id,
        }) => {
            tracing::warn!(customer = %customer, reference = %reference, orphan_id, "callback for an unknown incident kept as orphan");
            Err(JsonError::new(
                StatusCode::NOT_FOUND,
                "UnknownIncident",
                format!("no incident for CustomerNumber {customer:?} and IncidentReference {reference:?}; kept as orphan {orphan_id}"),
            ))
        }
        Err(MessageError::Conflict(why)) => Err(JsonError::new(
            StatusCode::CONFLICT,
            "IncidentIdConflict",
            why,
        )),
        Err(MessageError::Store(e)) => Err(crate::edge::http::store_error(e)),
    }
}
