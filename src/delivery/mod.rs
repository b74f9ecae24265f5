//! Reliable delivery: the one retry engine for every outbound message (Dispatch and
//! Cancel to Loomis, update posts to legacy tools).
//!
//! Jobs live in the store's outbox. A [`scheduler::Scheduler`] per target keeps them in
//! lanes (one lane per incident and target, delivered strictly in order, one at a time),
//! honours each job's persisted next-attempt time, bounds concurrency per group, and
//! hands due jobs to a [`scheduler::Runner`] ([`loomis::LoomisRunner`],
//! [`tool::ToolRunner`]) that makes one attempt and settles the outcome in the store.

pub mod loomis;
pub mod scheduler;
pub mod tool;

use crate::config::{Auth, RetrySpec};
use ::http::header::{HeaderName, HeaderValue};
use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use std::time::Duration;

/// How an attempt ended, as the retry rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Worth retrying (408, 429, 5xx, timeouts, connection errors). `uncertain` means
    /// the receiver may have processed the request.
    Retryable {
        detail: String,
        retry_after: Option<Duration>,
        uncertain: bool,
    },
    /// Not worth retrying (other 4xx): the receiver refused it.
    Permanent { status: u16, body: String },
}

/// The retry policy: exponential backoff with equal jitter, `Retry-After` honoured, and
/// an age (and optional attempt) limit.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_age: Duration,
    pub max_attempts: u32,
}

impl From<&RetrySpec> for RetryPolicy {
    fn from(s: &RetrySpec) -> Self {
        RetryPolicy {
            initial: Duration::from_millis(s.initial_ms),
            max: Duration::from_millis(s.max_ms),
            max_age: Duration::from_secs(s.max_age_secs),
            max_attempts: s.max_attempts,
        }
    }
}

/// The longest `Retry-After` we honour; a larger one is capped so a confused receiver
/// cannot park a job for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`, given `attempts` failures so far.
    pub fn delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        // Equal jitter: half fixed, half random, so retries spread but never collapse to 0.
        let half = capped / 2;
        let jitter = Duration::from_micros(rng.random_range(0..=half.as_micros() as u64));
        let backoff = half + jitter;
        match retry_after {
            Some(ra) => backoff.max(ra.min(MAX_RETRY_AFTER)),
            None => backoff,
        }
    }

    /// True when a job queued at `created_at` with `attempts` failures should give up.
    pub fn exhausted(&self, created_at: Timestamp, attempts: u32, now: Timestamp) -> bool {
        let age = now.duration_since(created_at);
        age >= SignedDuration::try_from(self.max_age).unwrap_or(SignedDuration::MAX)
            || (self.max_attempts > 0 && attempts >= self.max_attempts)
    }
}

/// Settles `job` in the store with `events`, and tells the scheduler what follows: done,
/// or (for a reschedule) the job's next attempt.
///
/// If the store itself fails, the same settlement is written again (after 1 s, doubling
/// up to 30 s) until the store takes it: the message was sent and its answer is known,
/// so sending it again would only make a duplicate. Until then the job stays in flight
/// (its lane waits; its slot was given back when the exchange ended, and at most twice
/// a group's limit may be settling). If the gateway stops first, it stops waiting; the job is still in the
/// outbox and is treated as possibly delivered at the next start (see `recovered`).
pub async fn settle(
    gateway: &crate::gateway::Gateway,
    job: &crate::store::records::Job,
    events: Vec<crate::incident::machine::Event>,
    action: crate::gateway::JobAction,
) -> scheduler::Verdict {
    let next = match &action {
        crate::gateway::JobAction::Reschedule(j) => Some(j.clone()),
        _ => None,
    };
    // Shared, not copied, by each write of the outcome (most outcomes are written once).
    let events: std::sync::Arc<[crate::incident::machine::Event]> = events.into();
    let mut wait = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        match gateway
            .settle(job.incident.clone(), events.clone(), action.clone())
            .await
        {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(
                        job = job.id,
                        failures,
                        "delivery settled after the store recovered"
                    );
                }
                return match next {
                    Some(j) => scheduler::Verdict::Retry(j),
                    None => scheduler::Verdict::Done,
                };
            }
            Err(crate::store::StoreError::Closed) => {
                // Shutting down: the job stays in the outbox for the next start.
                return retry_soon(job);
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("gateway_settle_retries_total").increment(1);
                // One line at the first failure and then about every five minutes.
                if failures == 1 || failures % 10 == 0 {
                    tracing::error!(error = %e, job = job.id, failures,
                        "cannot record a delivery outcome; writing it again, not resending");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Stopping: the job stays in the outbox and is treated as possibly
                    // delivered at the next start.
                    _ = gateway.stopping().cancelled() => return retry_soon(job),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The job again shortly, after a job of its incident that stands before it (committed
/// by another instance of a cluster) has arrived and gone first. Not persisted: nothing
/// was attempted.
pub fn wait_for_earlier(job: &crate::store::records::Job) -> scheduler::Verdict {
    let mut j = job.clone();
    j.next_attempt_at = Timestamp::now() + Duration::from_millis(100);
    scheduler::Verdict::Retry(j)
}

/// The job again in a second (after a store read or write failed).
pub fn retry_soon(job: &crate::store::records::Job) -> scheduler::Verdict {
    let mut j = job.clone();
    j.next_attempt_at = Timestamp::now() + Duration::from_secs(1);
    scheduler::Verdict::Retry(j)
}

/// The job after one more failed attempt: attempts counted, next attempt scheduled by
/// `policy` (honouring `retry_after`), the error kept. Returns the delay too, for logs.
pub fn after_failure(
    job: &crate::store::records::Job,
    policy: &RetryPolicy,
    retry_after: Option<Duration>,
    detail: &str,
) -> (crate::store::records::Job, Duration) {
    let attempts = job.attempts + 1;
    let delay = policy.delay(attempts, retry_after, &mut rand::rng());
    let mut next = job.clone();
    next.attempts = attempts;
    next.next_attempt_at = Timestamp::now() + delay;
    next.last_error = Some(detail.to_string());
    (next, delay)
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = when.duration_since(now);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// The most of a response body we read (Loomis answers are small JSON).
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// A completed HTTP exchange.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
}

/// Where a delivery goes, prepared once: the URI, and the headers of every post (the
/// credentials and the content type).
#[derive(Clone)]
pub struct Destination {
    pub uri: ::http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Destination {
    /// Fails for credentials no header can carry (configuration validation refuses them
    /// first), for a URL hyper cannot take, and for a `header` auth whose name is one
    /// of `headers` (the mapping's content type or SOAPAction), which would silently
    /// replace it. `headers` are lowercase names.
    pub fn new(
        url: &url::Url,
        auth: &Auth,
        headers: &[(&'static str, &str)],
    ) -> Result<Destination, String> {
        let credentials = auth.header()?;
        if let Some((name, _)) = &credentials {
            if headers.iter().any(|(n, _)| name == n) {
                return Err(format!(
                    "{url}: the auth header {name:?} would replace a header the gateway sets \
                     on every post here (the content type, or the outbound mapping's \
                     SOAPAction): carry the credentials in another header, and set the \
                     action with soap_action in the mapping's [outbound]"
                ));
            }
        }
        let mut fixed = Vec::with_capacity(headers.len() + 1);
        fixed.extend(credentials);
        for (n, v) in headers {
            let value = HeaderValue::try_from(*v)
                .map_err(|_| format!("{url}: {v:?} is not a valid value for header {n}"))?;
            fixed.push((HeaderName::from_static(n), value));
        }
        Ok(Destination {
            uri: url.as_str().parse().map_err(|e| format!("{url}: {e}"))?,
            headers: fixed,
        })
    }
}

/// POSTs `body` and classifies the result by the retry rules of the contract.
/// What an attempt's result says, for the attempt log: `HTTP 200`, or why it failed.
pub fn attempt_outcome(result: &Result<Answer, AttemptError>) -> String {
    match result {
        Ok(a) => format!("HTTP {}", a.status),
        Err(AttemptError::Retryable { detail, .. }) => format!("to retry: {detail}"),
        Err(AttemptError::Permanent { status, .. }) => format!("refused: HTTP {status}"),
    }
}

pub async fn post(
    client: &crate::client::Client,
    to: &Destination,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, AttemptError> {
    // With traces on, the request carries the current span's traceparent; the fixed
    // headers are copied only then.
    let traced;
    let headers = match crate::trace::outgoing() {
        Some(h) => {
            traced = [&to.headers[..], &[h]].concat();
            &traced[..]
        }
        None => &to.headers[..],
    };
    let resp = match client
        .post(&to.uri, headers, body, timeout, MAX_RESPONSE_BYTES)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            // A connect failure means the request never left; anything later may have
            // been processed.
            return Err(AttemptError::Retryable {
                uncertain: !e.is_connect(),
                detail: e.to_string(),
                retry_after: None,
            });
        }
    };
    let status = resp.status;
    // Only a redirect's answer needs where it points.
    let location = (300..400)
        .contains(&status)
        .then(|| resp.headers.get(::http::header::LOCATION))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = resp
        .headers
        .get(::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Timestamp::now()));
    if let Some(why) = resp.cut_short {
        if (200..300).contains(&status) {
            // The receiver answered 2xx: it has the message even if the body broke.
            tracing::warn!(error = %why, "response body cut short after 2xx");
        } else {
            return Err(AttemptError::Retryable {
                detail: why,
                retry_after,
                uncertain: true,
            });
        }
    }
    let answer = Answer {
        status,
        body: resp.body,
        retry_after,
    };
    match status {
        200..=299 => Ok(answer),
        // A redirect means the configured URL is wrong (http -> https, a moved path):
        // not followed (a 301/302 would turn the POST into a GET) and not the receiver's
        // refusal of the message, so retried until the operator fixes the URL or the age
        // limit is reached.
        300..=399 => Err(AttemptError::Retryable {
            detail: match location.as_deref() {
                Some(to) => format!(
                    "HTTP {status} redirect to {to:?} not followed: check the configured URL"
                ),
                None => format!(
                    "HTTP {status} (a redirect status, without Location) not followed: check the configured URL"
                ),
            },
            retry_after,
            uncertain: false,
        }),
        408 | 429 | 500..=599 => Err(AttemptError::Retryable {
            detail: format!("HTTP {status}: {}", snippet(&answer.body)),
            retry_after,
            // 429 and 503 say "not now"; other 5xx may have half-processed the request.
            uncertain: !matches!(status, 429 | 503),
        }),
        _ => Err(AttemptError::Permanent {
            status,
            body: snippet(&answer.body),
        }),
    }
}

/// The first 512 characters of a body, for timelines and logs.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let mut out: String = s.chars().take(512).collect();
    if s.chars().count() > 512 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_header_auth_that_the_mapping_also_sets_is_refused_not_replaced() {
        let url: reqwest::Url = "http://tool.example/updates".parse().unwrap();
        let soap = [
            ("content-type", "text/xml; charset=utf-8"),
            ("soapaction", "\"urn:x/Update\""),
        ];
        let auth = |name: &'static str| Auth::Header {
            name: HeaderName::from_static(name),
            value: crate::config::Secret::new("k"),
        };
        let err = Destination::new(&url, &auth("soapaction"), &soap)
            .err()
            .unwrap();
        assert!(
            err.contains("the auth header \"soapaction\" would replace a header the gateway sets"),
            "{err}"
        );
        let d = Destination::new(&url, &auth("x-api-key"), &soap).unwrap();
        let names: Vec<&str> = d.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-api-key", "content-type", "soapaction"]);
        assert_eq!(d.headers[2].1, "\"urn:x/Update\"");
    }

    struct Refused {
        _dir: tempfile::TempDir,
        store: crate::store::Store,
        gw: crate::gateway::Gateway,
        job: crate::store::records::Job,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    /// A gateway whose one Dispatch job is ready to settle, on a store that can be made
    /// to refuse writes.
    async fn refused_setup() -> Refused {
        use crate::gateway::{Gateway, IntegrationInfo};
        use crate::store::records::Target;
        use crate::store::testing::Flaky;

        let dir = tempfile::tempdir().unwrap();
        let (backend, fail) = Flaky::open(dir.path());
        let store = crate::store::Store::new(backend);
        let (jobs_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel();
        store.attach_jobs(Target::Loomis, jobs_tx);
        let gw = Gateway::new(
            store.clone(),
            vec![IntegrationInfo {
                name: "servicenow".into(),
                customer_number: "A123456".into(),
                delivers: false,
            }],
        )
        .stopping_with(tokio_util::sync::CancellationToken::new());
        let dispatch = crate::loomis::message::Dispatch::sample("INC1");
        gw.submit("servicenow", dispatch).await.unwrap();
        let job = jobs.recv().await.expect("the Dispatch job");
        Refused {
            _dir: dir,
            store,
            gw,
            job,
            fail,
        }
    }

    /// Starts settling "Loomis answered 200" with the store refusing writes, and waits
    /// until the store has refused the first attempt.
    async fn settle_refused(r: &Refused) -> tokio::task::JoinHandle<scheduler::Verdict> {
        use crate::gateway::JobAction;
        use crate::incident::machine::Event;
        r.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let settling = {
            let (gw, job) = (r.gw.clone(), r.job.clone());
            tokio::spawn(async move {
                settle(
                    &gw,
                    &job,
                    vec![Event::DispatchDelivered { status: 200 }],
                    JobAction::Remove(job.id),
                )
                .await
            })
        };
        for _ in 0..200 {
            if !r.store.is_healthy() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!r.store.is_healthy(), "the refused write was seen");
        settling
    }

    /// A Dispatch that Loomis accepted while the store could not record it: the outcome
    /// is written again until the store takes it, and the Dispatch is not sent again.
    #[tokio::test]
    async fn a_settlement_the_store_refuses_is_written_again_not_resent() {
        let r = refused_setup().await;
        let settling = settle_refused(&r).await;
        // Settle must neither give up nor hand the job back for another attempt (which
        // would send the Dispatch again).
        assert!(
            !settling.is_finished(),
            "settle waits for the store, it does not return the job"
        );
        r.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        let verdict = settling.await.unwrap();
        assert!(matches!(verdict, scheduler::Verdict::Done), "{verdict:?}");
        let inc = r.gw.get("servicenow", "INC1").unwrap().unwrap();
        assert_eq!(inc.state, crate::incident::State::Sent);
        assert!(
            r.store.jobs().unwrap().is_empty(),
            "the job left the outbox"
        );
        r.store.close().await.unwrap();
    }

    /// Stopping does not wait for a store that keeps refusing: settle lets go and the
    /// job stays in the outbox for the next start.
    #[tokio::test]
    async fn stopping_ends_the_wait_for_a_refusing_store() {
        let r = refused_setup().await;
        let settling = settle_refused(&r).await;
        r.gw.stopping().cancel();
        let verdict = settling.await.unwrap();
        assert!(
            matches!(verdict, scheduler::Verdict::Retry(_)),
            "{verdict:?}"
        );
        assert_eq!(
            r.store.jobs().unwrap().len(),
            1,
            "the job is still in the outbox"
        );
        r.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        r.store.close().await.unwrap();
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(300),
            max_age: Duration::from_secs(86400),
            max_attempts: 0,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempts in 1..30u32 {
            let base = Duration::from_millis(500)
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(p.max);
            for _ in 0..50 {
                let d = p.delay(attempts, None, &mut rng);
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempts}: {d:?} vs {base:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!(p.delay(1, Some(Duration::from_secs(30)), &mut rng) >= Duration::from_secs(30));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86400)), &mut rng),
            MAX_RETRY_AFTER
        );
        let now: Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn exhausted_by_age_or_attempts() {
        let mut p = policy();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(!p.exhausted(t0, 100, t0 + SignedDuration::from_hours(23)));
        assert!(p.exhausted(t0, 1, t0 + SignedDuration::from_hours(24)));
        p.max_attempts = 3;
        assert!(p.exhausted(t0, 3, t0));
    }
}
