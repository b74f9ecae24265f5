//! Posting updates back to legacy tools as XML, in sequence order per incident, retried
//! like Loomis deliveries and dead-lettered after the limit (an operator can list and
//! replay dead letters). A slow or failing tool holds only its own concurrency slots.

use super::scheduler::{Runner, Slot, Verdict};
use super::{post, AttemptError, RetryPolicy};
use crate::config::Delivery;
use crate::gateway::{Gateway, JobAction};
use crate::incident::Update;
use crate::store::records::{Job, JobKind};
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

/// Renders an update as the XML document the integration's tool expects.
pub type Renderer = Arc<dyn Fn(&Update) -> Result<Vec<u8>, String> + Send + Sync>;

/// One integration's delivery settings with its renderer.
#[derive(Clone)]
pub struct ToolTarget {
    pub delivery: Delivery,
    /// The delivery's URL, credentials and content type (and SOAPAction for SOAP 1.1,
    /// from the outbound mapping), prepared once.
    pub to: super::Destination,
    pub policy: RetryPolicy,
    pub render: Renderer,
}

/// Sends jobs of target Tool.
pub struct ToolRunner {
    pub gateway: Gateway,
    pub client: crate::client::Client,
    /// By integration; reload replaces them (an attempt uses the target it started with).
    pub targets: crate::live::Live<HashMap<String, ToolTarget>>,
}

impl Runner for ToolRunner {
    fn run(&self, job: Job, slot: Slot) -> BoxFuture<'static, Verdict> {
        // On a cluster: only the holder of the job's lane posts it.
        match self.gateway.store().claim_work(&job) {
            crate::store::Work::Elsewhere => return Box::pin(async { Verdict::Done }),
            crate::store::Work::Later => {
                drop(slot);
                return Box::pin(std::future::ready(super::wait_for_earlier(&job)));
            }
            crate::store::Work::Mine { .. } => {}
        }
        let gateway = self.gateway.clone();
        let client = self.client.clone();
        let target = self.targets.get().get(&job.incident.integration).cloned();
        Box::pin(attempt(gateway, client, target, job, slot))
    }

    fn group(&self, job: &Job) -> String {
        job.incident.integration.clone()
    }

    fn limit(&self, group: &str) -> usize {
        self.targets
            .get()
            .get(group)
            .map(|t| t.delivery.concurrency)
            .unwrap_or(1)
    }
}

/// The job as dead-lettered after one more attempt: the list shows every attempt made.
fn attempted(job: &Job, error: &str) -> Job {
    let mut j = job.clone();
    j.attempts += 1;
    j.last_error = Some(error.to_string());
    j
}

/// Settles a tool job (no incident events: posts change nothing but the outbox).
async fn settle(gateway: &Gateway, job: &Job, action: JobAction) -> Verdict {
    super::settle(gateway, job, vec![], action).await
}

async fn attempt(
    gateway: Gateway,
    client: crate::client::Client,
    target: Option<ToolTarget>,
    job: Job,
    slot: Slot,
) -> Verdict {
    // Attached to the future, not entered on the thread: see the Loomis runner.
    let span = tracing::info_span!("post_update", integration = %job.incident.integration, reference = %job.incident.reference, attempt = job.attempts + 1);
    if crate::trace::enabled() {
        // The post is part of the incident's trace (one more read, with traces on only).
        if let Ok(Some(inc)) = gateway.get(&job.incident.integration, &job.incident.reference) {
            crate::trace::follow(&span, inc.trace);
        }
    }
    post_update(gateway, client, target, job, slot)
        .instrument(span)
        .await
}

/// Posts the job's update to the tool and settles the outcome; `slot` is given back
/// once the tool has answered (or not).
async fn post_update(
    gateway: Gateway,
    client: crate::client::Client,
    target: Option<ToolTarget>,
    job: Job,
    slot: Slot,
) -> Verdict {
    let integration = job.incident.integration.clone();
    let JobKind::PostUpdate { sequence } = job.kind else {
        tracing::error!("Loomis job in the tool outbox; dropped");
        return settle(&gateway, &job, JobAction::Remove(job.id)).await;
    };
    let Some(target) = target else {
        let reason = format!("integration {integration:?} has no delivery configured any more");
        return settle(&gateway, &job, JobAction::DeadLetter(job.clone(), reason)).await;
    };
    let update = match gateway.store().update(&integration, sequence) {
        Ok(Some(u)) => u,
        Ok(None) => {
            let reason = format!("update {sequence} of {integration} is no longer stored");
            return settle(&gateway, &job, JobAction::DeadLetter(job.clone(), reason)).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read update");
            return super::retry_soon(&job);
        }
    };
    let body = match (target.render)(&update) {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("outbound mapping cannot render update {sequence}: {e}");
            tracing::error!(reason = %reason, "dead-lettered");
            return settle(&gateway, &job, JobAction::DeadLetter(job.clone(), reason)).await;
        }
    };
    let d = &target.delivery;
    let (sent_at, started) = (jiff::Timestamp::now(), std::time::Instant::now());
    let result = post(&client, &target.to, body, d.timeout).await;
    drop(slot);
    gateway.attempts().record(
        &job.incident.integration,
        job.incident.reference.as_str(),
        crate::attempts::Attempt {
            at: sent_at,
            target: "tool",
            what: format!("Update #{sequence}"),
            outcome: super::attempt_outcome(&result),
            latency: started.elapsed(),
        },
    );
    match result {
        Ok(answer) => {
            metrics::counter!("gateway_tool_posts_total", "integration" => integration.clone(), "result" => "ok").increment(1);
            tracing::debug!(status = answer.status, sequence, "update posted");
            settle(&gateway, &job, JobAction::Remove(job.id)).await
        }
        Err(AttemptError::Permanent { status, body }) => {
            metrics::counter!("gateway_tool_posts_total", "integration" => integration.clone(), "result" => "dead").increment(1);
            let reason = format!("tool refused update {sequence}: HTTP {status}: {body}");
            tracing::warn!(reason = %reason, "dead-lettered");
            settle(
                &gateway,
                &job,
                JobAction::DeadLetter(attempted(&job, &reason), reason),
            )
            .await
        }
        Err(AttemptError::Retryable {
            detail,
            retry_after,
            ..
        }) => {
            let now = Timestamp::now();
            let attempts = job.attempts + 1;
            if target.policy.exhausted(job.created_at, attempts, now) {
                metrics::counter!("gateway_tool_posts_total", "integration" => integration.clone(), "result" => "dead").increment(1);
                let reason = format!("gave up after {attempts} attempts: {detail}");
                tracing::warn!(reason = %reason, "dead-lettered");
                let dead = attempted(&job, &detail);
                return settle(&gateway, &job, JobAction::DeadLetter(dead, reason)).await;
            }
            metrics::counter!("gateway_tool_posts_total", "integration" => integration.clone(), "result" => "retry").increment(1);
            let (next, delay) = super::after_failure(&job, &target.policy, retry_after, &detail);
            tracing::warn!(detail = %detail, attempts, retry_in_ms = delay.as_millis() as u64, "update post failed; will retry");
            settle(&gateway, &job, JobAction::Reschedule(next)).await
        }
    }
}
