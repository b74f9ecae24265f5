//! Callback delivery: POST one JSON message to the gateway with the configured bearer
//! token, retrying 5xx, 408, 429, timeouts and connection errors with jittered
//! exponential backoff (honouring `Retry-After`) within the configured bounds. Other
//! 4xx are logged and dropped. The caller awaits delivery, which is what keeps an
//! incident's callbacks in order.

use super::incident::IncidentKey;
use super::state::Shared;
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
        let mut request = shared.http.post(&target.url).json(message);
        if let Some(token) = &target.token {
            request = request.bearer_auth(token.expose());
        }
        let sent = tokio::select! {
            _ = shared.shutdown.cancelled() => return Delivery::Shutdown,
            r = request.send() => r,
        };
        let (failure, retry_after) = match sent {
            Ok(resp) if resp.status().is_success() => {
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
            Ok(resp) if is_retryable(resp.status()) => {
                let ra = retry_after(&resp);
                (format!("answered {}", resp.status()), ra)
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
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
            Err(e) => (format!("failed: {}", error_chain(&e)), None),
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

fn is_retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
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
            assert!(
                is_retryable(reqwest::StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        for s in [400, 401, 404, 409] {
            assert!(
                !is_retryable(reqwest::StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn truncate_respects_chars() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 5), "hi");
    }
}
