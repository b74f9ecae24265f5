//! `POST /v1/admin/reload` and `GET /v1/admin/config` (admin token): re-read the
//! configuration, mappings and secrets now, and show which version is in force. The
//! work is the composition root's (`app::reload`), reached through [`ConfigControl`];
//! this edge only authenticates and chooses the answer.

use super::{admin, HttpState, JsonError};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::BoxFuture;
use serde_json::json;

/// Why a reload changed nothing.
#[derive(Debug, Clone)]
pub struct ReloadRefusal {
    /// A setting that only a restart can change was changed.
    pub restart_needed: bool,
    pub problems: Vec<String>,
}

/// Reloading, as the HTTP edge sees it.
pub trait ConfigControl: Send + Sync {
    /// Validates everything and swaps it in, or changes nothing. The report is JSON.
    fn reload(&self) -> BoxFuture<'static, Result<serde_json::Value, ReloadRefusal>>;
    /// The version in force: generation, mapping digest, per-integration versions.
    fn status(&self) -> serde_json::Value;
}

fn control(s: &HttpState) -> Result<&dyn ConfigControl, JsonError> {
    s.control.as_deref().ok_or_else(|| {
        JsonError::new(
            StatusCode::NOT_FOUND,
            "ReloadUnavailable",
            "this gateway was started without reload support",
        )
    })
}

pub(crate) async fn reload(
    State(s): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, JsonError> {
    admin(&s, &headers)?;
    match control(&s)?.reload().await {
        Ok(report) => Ok(Json(json!({ "reloaded": report })).into_response()),
        Err(r) => {
            let (status, code, message) = if r.restart_needed {
                (
                    StatusCode::CONFLICT,
                    "RestartNeeded",
                    "nothing was changed: these settings need a restart",
                )
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "ReloadInvalid",
                    "nothing was changed: the new configuration is invalid; the running one keeps serving",
                )
            };
            Ok((
                status,
                Json(json!({"error": {"code": code, "message": message, "problems": r.problems}})),
            )
                .into_response())
        }
    }
}

pub(crate) async fn status(
    State(s): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, JsonError> {
    admin(&s, &headers)?;
    Ok(Json(control(&s)?.status()).into_response())
}
