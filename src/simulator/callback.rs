//! Callback delivery: POST one JSON message to the gateway with the configured bearer
//! token, retrying 5xx, 408, 429, timeouts and connection errors with jittered
//! exponential backoff (honouring `Retry-After`) within the configured bounds. Other
//! 4xx are logged and dropped. The caller awaits delivery, which is what keeps an
//! incident's callbacks in order.

use super::state::{CallbackTarget, IncidentKey, Shared};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// How one callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Sent,
    Rejected,
    GaveUp,
    NoTarget,
    Shutdown,
}

/// Delivers `message`, and a second copy when the `duplicate_callbacks` fault says so.
pub(crate) async fn deliver(shared: &Shared, key: &IncidentKey, message: Value) -> Delivery {
    let result = deliver_once(shared, key, &message).await;
    if result == Delivery::Sent {
        let p = shared.lock().faults.duplicate_callbacks;
        if shared.chance(p) {
            shared.count(|s| s.callbacks_duplicated += 1);
            tracing::info!(
                incident_reference = %key.reference,
                incident_id = %key.incident_id,
                "fault: sending a duplicate callback"
            );
            deliver_once(shared, key, &message).await;
        }
    }
    result
}

async fn deliver_once(shared: &Shared, key: &IncidentKey, message: &Value) -> Delivery {
    let kind = message["MessageType"].as_str().unwrap_or("?").to_string();
    let retry = &shared.config.callback_retry;
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        // Read the target on every attempt: the gateway may set it after start.
        let Some(target) = shared.lock().callback.clone() else {
            shared.count(|s| s.callbacks_undeliverable += 1);
            tracing::warn!(
                incident_reference = %key.reference,
                incident_id = %key.incident_id,
                message_type = %kind,
                "no callback URL set; callback dropped"
            );
            return Delivery::NoTarget;
        };
        attempt += 1;
        shared.count(|s| s.callback_attempts += 1);
        let sent = tokio::select! {
            _ = shared.shutdown.cancelled() => return Delivery::Shutdown,
            r = post(shared, &target, message) => r,
        };
        let (failure, retry_after) = match sent {
            Ok(resp) if (200..300).contains(&resp.status) => {
                shared.count(|s| {
                    s.callbacks_sent += 1;
                    *s.callbacks_sent_by_kind.entry(kind.clone()).or_default() += 1;
                });
                tracing::info!(
                    incident_reference = %key.reference,
                    incident_id = %key.incident_id,
                    message_type = %kind,
                    attempt,
                    "callback delivered"
                );
                return Delivery::Sent;
            }
            Ok(resp) if is_retryable(resp.status) => {
                let ra = retry_after(&resp);
                (format!("answered {}", resp.status), ra)
            }
            Ok(resp) => {
                let status = resp.status;
                let body = String::from_utf8_lossy(&resp.body);
                shared.count(|s| s.callbacks_rejected += 1);
                tracing::warn!(
                    incident_reference = %key.reference,
                    incident_id = %key.incident_id,
                    message_type = %kind,
                    %status,
                    body = %truncate(&body, 500),
                    "callback rejected; dropped"
                );
                return Delivery::Rejected;
            }
            Err(e) => (format!("failed: {e}"), None),
        };
        let wait = retry_after
            .unwrap_or_else(|| shared.jittered(retry.backoff(attempt)))
            .min(retry.max_backoff);
        if attempt >= retry.max_attempts || started.elapsed() + wait > retry.max_elapsed {
            shared.count(|s| s.callbacks_failed += 1);
            tracing::warn!(
                incident_reference = %key.reference,
                incident_id = %key.incident_id,
                message_type = %kind,
                attempt,
                "callback {failure}; retry budget spent, giving up"
            );
            return Delivery::GaveUp;
        }
        shared.count(|s| s.callbacks_retried += 1);
        tracing::info!(
            incident_reference = %key.reference,
            incident_id = %key.incident_id,
            message_type = %kind,
            attempt,
            wait_ms = wait.as_millis() as u64,
            "callback {failure}; will retry"
        );
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Delivery::Shutdown,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// POSTs one callback as JSON, with the bearer token when one is set.
async fn post(
    shared: &Shared,
    target: &CallbackTarget,
    message: &Value,
) -> Result<crate::client::Response, String> {
    use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
    let uri: http::Uri = target.url.parse().map_err(|e| format!("{e}"))?;
    let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if let Some(token) = &target.token {
        let mut v = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| "the callback token is not a valid header value".to_string())?;
        v.set_sensitive(true);
        headers.push((AUTHORIZATION, v));
    }
    let body = serde_json::to_vec(message).map_err(|e| e.to_string())?;
    shared
        .http
        .post(
            &uri,
            &headers,
            body,
            shared.config.callback_retry.request_timeout,
            64 << 10,
        )
        .await
        .map_err(|e| e.to_string())
}

fn is_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

fn retry_after(resp: &crate::client::Response) -> Option<Duration> {
    let v = resp.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for s in [500, 502, 503, 408, 429] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [400, 401, 404, 409] {
            assert!(!is_retryable(s), "{s}");
        }
    }

    #[test]
    fn truncate_respects_chars() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
