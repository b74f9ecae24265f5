//! The `/_sim/` control API: the simulator's state and statistics, run-time fault
//! changes, and the newest messages it received, for tests and rehearsals.

use super::super::config::FaultsPatch;
use super::super::state::Shared;
use super::Answer;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::time::Instant;

pub(super) async fn state(State(sim): State<Arc<Shared>>) -> Json<Value> {
    let c = &sim.config;
    let stats = sim.stats.borrow().clone();
    let rt = sim.lock();
    let down_remaining_ms = rt
        .down_until
        .map(|u| u.saturating_duration_since(Instant::now()).as_millis() as u64)
        .unwrap_or(0);
    let open = rt
        .incidents
        .values()
        .filter(|i| !i.state.is_terminal())
        .count();
    Json(json!({
        "seed": sim.seed,
        "callback_url": rt.callback.as_ref().map(|t| t.url.clone()),
        "callback_token_set": rt.callback.as_ref().is_some_and(|t| t.token.is_some()),
        "faults": rt.faults,
        "down_remaining_ms": down_remaining_ms,
        "incidents": {"total": rt.incidents.len(), "open": open},
        "received_total": rt.received_total,
        "config": {
            "customer_numbers": c.customer_numbers,
            "devices": c.devices,
            "fault_codes": c.fault_codes,
            "expect_token_set": c.expect_token.is_some(),
            "ack": c.ack,
            "accept_after_ms": c.accept_after.as_millis() as u64,
            "close_after_ms": c.close_after.as_millis() as u64,
            "sla_ms": c.sla.as_millis() as u64,
            "outcome": c.outcome,
            "confirm_customer_cancel": c.confirm_customer_cancel,
            "duplicate_window_ms": c.duplicate_window.as_millis() as u64,
            "nak_duplicate_with_incident_id": c.nak_duplicate_with_incident_id,
            "first_incident_number": c.first_incident_number,
            "hang_ms": c.hang.as_millis() as u64,
            "process_before_hang": c.process_before_hang,
            "max_records": c.max_records,
            "max_body_bytes": c.max_body_bytes,
            "callback_retry": {
                "request_timeout_ms": c.callback_retry.request_timeout.as_millis() as u64,
                "initial_backoff_ms": c.callback_retry.initial_backoff.as_millis() as u64,
                "max_backoff_ms": c.callback_retry.max_backoff.as_millis() as u64,
                "max_attempts": c.callback_retry.max_attempts,
                "max_elapsed_ms": c.callback_retry.max_elapsed.as_millis() as u64,
            },
        },
        "stats": stats,
    }))
}

pub(super) async fn faults(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return Answer::error(StatusCode::BAD_REQUEST, "InvalidFaults", e.to_string(), &[])
                .into_response()
        }
    };
    match sim.patch_faults(&patch) {
        Ok(faults) => {
            tracing::info!(?faults, "simulator faults changed");
            Json(json!({ "faults": faults })).into_response()
        }
        Err(problems) => Answer::invalid(problems).into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct ReceivedQuery {
    /// The newest this many records (default 100).
    pub(super) limit: Option<usize>,
}

pub(super) async fn received(
    State(sim): State<Arc<Shared>>,
    Query(q): Query<ReceivedQuery>,
) -> Json<Value> {
    let rt = sim.lock();
    let limit = q.limit.unwrap_or(100);
    let skip = rt.received.len().saturating_sub(limit);
    let received: Vec<_> = rt.received.iter().skip(skip).map(|r| r.message()).collect();
    Json(json!(received))
}
