//! The lane scheduler: delivers outbox jobs in order per lane, on their persisted
//! schedule, with bounded concurrency per group.
//!
//! One task owns all scheduling state; attempts run as spawned tasks and report back
//! over a channel. A job that keeps failing only holds its own lane (and one slot of its
//! group while an attempt is in flight), so one poison incident never blocks the others.

use crate::store::records::{Job, Lane};
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What an attempt concluded. The runner has already settled the store accordingly.
#[derive(Debug)]
pub enum Verdict {
    /// The job is gone from the outbox (delivered, refused, expired or dead-lettered).
    Done,
    /// The job stays; try again at its (persisted) `next_attempt_at`.
    Retry(Job),
}

/// Makes one attempt at a job and settles the outcome in the store.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, job: Job) -> BoxFuture<'static, Verdict>;
    /// The concurrency group of a job (e.g. the integration whose tool it posts to).
    fn group(&self, job: &Job) -> String;
    /// How many attempts of `group` may be in flight at once.
    fn limit(&self, group: &str) -> usize;
}

/// Feeds jobs to a [`Scheduler`].
pub type JobSender = mpsc::UnboundedSender<Job>;

/// Runs until `shutdown`; then waits for in-flight attempts up to the caller's deadline
/// (the caller drops the returned future to abandon them: their jobs stay in the outbox).
pub struct Scheduler {
    /// `loomis` or `tools`: labels the metrics.
    name: &'static str,
    runner: Arc<dyn Runner>,
    lanes: HashMap<Lane, VecDeque<Job>>,
    known: HashSet<u64>,
    /// Lanes whose head waits for its time: (due, job id) -> lane.
    timers: BTreeSet<(Instant, u64)>,
    timer_lanes: HashMap<u64, Lane>,
    /// Lanes whose head is due, waiting for a slot of their group.
    ready: HashMap<String, VecDeque<Lane>>,
    in_flight: HashMap<String, usize>,
    running: usize,
}

fn instant_for(at: Timestamp) -> Instant {
    let now = Timestamp::now();
    let wait = at.duration_since(now);
    Instant::now() + std::time::Duration::try_from(wait).unwrap_or(std::time::Duration::ZERO)
}

impl Scheduler {
    pub fn new(name: &'static str, runner: Arc<dyn Runner>) -> Self {
        Scheduler {
            name,
            runner,
            lanes: HashMap::new(),
            known: HashSet::new(),
            timers: BTreeSet::new(),
            timer_lanes: HashMap::new(),
            ready: HashMap::new(),
            in_flight: HashMap::new(),
            running: 0,
        }
    }

    /// Jobs known, in lanes (for metrics and tests).
    pub fn pending(&self) -> usize {
        self.known.len()
    }

    fn add(&mut self, job: Job) {
        if !self.known.insert(job.id) {
            return;
        }
        let lane = job.lane();
        // Most lanes hold one job (an incident's Dispatch) at a time: room for one, not
        // the default four, keeps a large backlog (Loomis down, or slower than intake)
        // at about half the memory per queued job.
        let q = self
            .lanes
            .entry(lane.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        // Jobs of a lane run in id order; a job recovered at start-up may arrive after a
        // newer one, so insert in place.
        let pos = q.iter().position(|j| j.id > job.id).unwrap_or(q.len());
        let becomes_head = pos == 0;
        let displaced = if becomes_head {
            q.front().map(|j| j.id)
        } else {
            None
        };
        q.insert(pos, job);
        if becomes_head {
            if let Some(old) = displaced {
                // Only possible before the old head started (it is not in flight).
                self.timers.retain(|(_, id)| *id != old);
                self.timer_lanes.remove(&old);
                for r in self.ready.values_mut() {
                    r.retain(|l| *l != lane);
                }
            }
            self.arm(&lane);
        }
    }

    fn arm(&mut self, lane: &Lane) {
        if let Some(head) = self.lanes.get(lane).and_then(|q| q.front()) {
            self.timers
                .insert((instant_for(head.next_attempt_at), head.id));
            self.timer_lanes.insert(head.id, lane.clone());
        }
    }

    fn complete(&mut self, lane: Lane, group: String, verdict: Verdict) {
        self.running -= 1;
        if let Some(n) = self.in_flight.get_mut(&group) {
            *n -= 1;
        }
        match verdict {
            Verdict::Done => {
                if let Some(q) = self.lanes.get_mut(&lane) {
                    if let Some(done) = q.pop_front() {
                        self.known.remove(&done.id);
                    }
                    if q.is_empty() {
                        self.lanes.remove(&lane);
                    } else {
                        self.arm(&lane);
                    }
                }
            }
            Verdict::Retry(job) => {
                if let Some(q) = self.lanes.get_mut(&lane) {
                    if let Some(head) = q.front_mut() {
                        *head = job;
                    }
                }
                self.arm(&lane);
            }
        }
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if let Some(lane) = self.timer_lanes.remove(&id) {
                if let Some(job) = self.lanes.get(&lane).and_then(|q| q.front()) {
                    let group = self.runner.group(job);
                    self.ready.entry(group).or_default().push_back(lane);
                }
            }
        }
    }

    fn launch(&mut self, done: &mpsc::UnboundedSender<(Lane, String, Verdict)>) {
        let groups: Vec<String> = self.ready.keys().cloned().collect();
        for group in groups {
            let limit = self.runner.limit(&group).max(1);
            loop {
                let busy = self.in_flight.get(&group).copied().unwrap_or(0);
                if busy >= limit {
                    break;
                }
                let Some(lane) = self.ready.get_mut(&group).and_then(|r| r.pop_front()) else {
                    break;
                };
                let Some(job) = self.lanes.get(&lane).and_then(|q| q.front()).cloned() else {
                    continue;
                };
                *self.in_flight.entry(group.clone()).or_insert(0) += 1;
                self.running += 1;
                let fut = self.runner.run(job);
                let done = done.clone();
                let group = group.clone();
                tokio::spawn(async move {
                    let verdict = fut.await;
                    let _ = done.send((lane, group, verdict));
                });
            }
            if self.ready.get(&group).is_some_and(|r| r.is_empty()) {
                self.ready.remove(&group);
            }
        }
    }

    /// Runs the scheduler over `initial` jobs (the outbox at start-up) and those arriving
    /// on `jobs`, until `shutdown` fires and in-flight attempts have finished.
    pub async fn run(
        mut self,
        initial: Vec<Job>,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        shutdown: CancellationToken,
    ) {
        for job in initial {
            self.add(job);
        }
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        loop {
            self.promote_due();
            self.launch(&done_tx);
            metrics::gauge!("gateway_outbox_pending", "target" => self.name)
                .set(self.pending() as f64);
            let next = self.timers.first().map(|(due, _)| *due);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((lane, group, verdict)) = done_rx.recv() => self.complete(lane, group, verdict),
                Some(job) = jobs.recv() => self.add(job),
                _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
            }
        }
        // Shutdown: start nothing new; let attempts in flight settle.
        while self.running > 0 {
            match done_rx.recv().await {
                Some((lane, group, verdict)) => self.complete(lane, group, verdict),
                None => break,
            }
        }
    }
}
