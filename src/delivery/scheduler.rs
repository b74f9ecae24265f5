//! The lane scheduler: delivers outbox jobs in order per lane, on their persisted
//! schedule, with bounded concurrency per group.
//!
//! One task owns all scheduling state; attempts run as spawned tasks and report back
//! over a channel. A job that keeps failing only holds its own lane (and one slot of its
//! group while an attempt is in flight), so one poison incident never blocks the others.
//!
//! A group's limit bounds its requests in flight to the receiver: an attempt hands its
//! [`Slot`] back when the exchange ends, before it waits for its outcome to reach the
//! disk, so the receiver is not kept idle by our fsyncs. Attempts still settling are
//! bounded too (twice the limit), so a store that refuses writes stops the sending
//! instead of letting every queued job go out unrecorded.

use crate::store::records::{Job, JobKind, Lane};
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
    /// Drops `slot` as soon as the exchange with the receiver is over. An attempt that
    /// sends nothing (its message is no longer wanted) may keep it until it settles;
    /// it is dropped with the future at the latest.
    fn run(&self, job: Job, slot: Slot) -> BoxFuture<'static, Verdict>;
    /// The concurrency group of a job (e.g. the integration whose tool it posts to).
    fn group(&self, job: &Job) -> String;
    /// How many attempts of `group` may be in flight at once.
    fn limit(&self, group: &str) -> usize;
}

/// Feeds jobs to a [`Scheduler`].
pub type JobSender = mpsc::UnboundedSender<Job>;

/// How many attempts of a group may be launched and not yet settled, per slot.
const UNSETTLED_PER_SLOT: usize = 2;

/// What attempts report to the scheduler.
enum Report {
    /// An attempt's exchange with the receiver is over: its group has a slot again.
    Freed(String),
    /// An attempt is settled.
    Done(Lane, String, Verdict),
    /// An attempt ended without a verdict (it panicked): its job stays in the outbox and
    /// is tried again after [`LOST_RETRY`].
    Lost(Lane, String),
}

/// When a job whose attempt panicked is tried again.
const LOST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Held by an attempt's task: if the attempt panics, dropping it tells the scheduler, so
/// the job's lane, its group's counts and the shutdown wait are not left hanging.
struct Settling {
    lane: Option<Lane>,
    group: String,
    reports: mpsc::UnboundedSender<Report>,
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            let _ = self
                .reports
                .send(Report::Lost(lane, std::mem::take(&mut self.group)));
        }
    }
}

/// A group's lanes whose head is due: a customer Cancel goes before queued Dispatches,
/// so that under a backlog it still reaches Loomis before the technician does.
#[derive(Default)]
struct Ready {
    cancels: VecDeque<Lane>,
    others: VecDeque<Lane>,
}

impl Ready {
    fn push(&mut self, lane: Lane, job: &Job) {
        match job.kind {
            JobKind::Cancel => self.cancels.push_back(lane),
            _ => self.others.push_back(lane),
        }
    }

    fn pop(&mut self) -> Option<Lane> {
        self.cancels.pop_front().or_else(|| self.others.pop_front())
    }

    fn remove(&mut self, lane: &Lane) {
        self.cancels.retain(|l| l != lane);
        self.others.retain(|l| l != lane);
    }

    fn is_empty(&self) -> bool {
        self.cancels.is_empty() && self.others.is_empty()
    }
}

/// One of a group's slots for a request in flight; dropping it gives it back.
pub struct Slot {
    group: String,
    reports: mpsc::UnboundedSender<Report>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self
            .reports
            .send(Report::Freed(std::mem::take(&mut self.group)));
    }
}

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
    ready: HashMap<String, Ready>,
    /// Per group: attempts holding a slot (exchanging with the receiver).
    in_flight: HashMap<String, usize>,
    /// Per group: attempts launched and not yet settled.
    unsettled: HashMap<String, usize>,
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
            unsettled: HashMap::new(),
        }
    }

    /// Jobs known, in lanes (for metrics and tests).
    pub fn pending(&self) -> usize {
        self.known.len()
    }

    fn add(&mut self, job: Job) {
        if !self.known.insert(job.id) {
            self.sooner(job);
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
        // Jobs of a lane run in order (position, then id; see `Job::position`); a job
        // recovered at start-up, or committed by another instance, may arrive after a
        // newer one, so insert in place.
        let key = (job.position(), job.id);
        let pos = q
            .iter()
            .position(|j| (j.position(), j.id) > key)
            .unwrap_or(q.len());
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
                    r.remove(&lane);
                }
            }
            self.arm(&lane);
        }
    }

    /// A job it already holds, sent again with an earlier attempt time (an operator's
    /// "retry now"): the head of its lane, waiting for its timer, is due at the new time.
    /// A job not waiting (queued behind another, or being attempted) keeps its place:
    /// its attempt's outcome decides the next time.
    fn sooner(&mut self, job: Job) {
        let lane = job.lane();
        let Some(head) = self.lanes.get_mut(&lane).and_then(|q| q.front_mut()) else {
            return;
        };
        if head.id != job.id
            || job.next_attempt_at >= head.next_attempt_at
            || !self.timer_lanes.contains_key(&job.id)
        {
            return;
        }
        head.next_attempt_at = job.next_attempt_at;
        // The timer's instant was computed when armed; find it by id (rare: people).
        self.timers.retain(|(_, id)| *id != job.id);
        self.timers
            .insert((instant_for(job.next_attempt_at), job.id));
    }

    fn arm(&mut self, lane: &Lane) {
        if let Some(head) = self.lanes.get(lane).and_then(|q| q.front()) {
            self.timers
                .insert((instant_for(head.next_attempt_at), head.id));
            self.timer_lanes.insert(head.id, lane.clone());
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Freed(group) => decrement(&mut self.in_flight, &group),
            Report::Done(lane, group, verdict) => self.complete(lane, group, verdict),
            Report::Lost(lane, group) => {
                tracing::error!(
                    integration = %lane.incident.integration,
                    reference = %lane.incident.reference,
                    "a delivery attempt failed unexpectedly; its job stays queued and is tried again in 30 s"
                );
                let retry = self.lanes.get(&lane).and_then(|q| q.front()).map(|job| {
                    let mut job = job.clone();
                    job.next_attempt_at = Timestamp::now()
                        .checked_add(LOST_RETRY)
                        .unwrap_or(job.next_attempt_at);
                    job
                });
                // No head (cannot happen while the attempt ran): only the counts change.
                self.complete(lane, group, retry.map_or(Verdict::Done, Verdict::Retry));
            }
        }
    }

    fn complete(&mut self, lane: Lane, group: String, verdict: Verdict) {
        decrement(&mut self.unsettled, &group);
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
                    self.ready.entry(group).or_default().push(lane, job);
                }
            }
        }
    }

    fn launch(&mut self, reports: &mpsc::UnboundedSender<Report>) {
        if self.ready.is_empty() {
            return;
        }
        let groups: Vec<String> = self.ready.keys().cloned().collect();
        for group in groups {
            let limit = self.runner.limit(&group).max(1);
            loop {
                let busy = self.in_flight.get(&group).copied().unwrap_or(0);
                let unsettled = self.unsettled.get(&group).copied().unwrap_or(0);
                if busy >= limit || unsettled >= limit.saturating_mul(UNSETTLED_PER_SLOT) {
                    break;
                }
                let Some(lane) = self.ready.get_mut(&group).and_then(Ready::pop) else {
                    break;
                };
                let Some(job) = self.lanes.get(&lane).and_then(|q| q.front()).cloned() else {
                    continue;
                };
                *self.in_flight.entry(group.clone()).or_insert(0) += 1;
                *self.unsettled.entry(group.clone()).or_insert(0) += 1;
                let slot = Slot {
                    group: group.clone(),
                    reports: reports.clone(),
                };
                let fut = self.runner.run(job, slot);
                let mut settling = Settling {
                    lane: Some(lane),
                    group: group.clone(),
                    reports: reports.clone(),
                };
                tokio::spawn(async move {
                    let verdict = fut.await;
                    if let Some(lane) = settling.lane.take() {
                        let group = std::mem::take(&mut settling.group);
                        let _ = settling.reports.send(Report::Done(lane, group, verdict));
                    }
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
        let (report_tx, mut reports) = mpsc::unbounded_channel();
        // Registered once: the macro would look the series up on every turn of the loop.
        let pending = metrics::gauge!("gateway_outbox_pending", "target" => self.name);
        loop {
            self.promote_due();
            self.launch(&report_tx);
            pending.set(self.pending() as f64);
            let next = self.timers.first().map(|(due, _)| *due);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(report) = reports.recv() => self.report(report),
                Some(job) = jobs.recv() => self.add(job),
                _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
            }
        }
        // Shutdown: start nothing new; let attempts in flight settle.
        while self.unsettled.values().any(|&n| n > 0) {
            match reports.recv().await {
                Some(report) => self.report(report),
                None => break,
            }
        }
    }
}

fn decrement(counts: &mut HashMap<String, usize>, group: &str) {
    if let Some(n) = counts.get_mut(group) {
        debug_assert!(*n > 0, "group {group} counted down below zero");
        *n = n.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::IncidentKey;
    use crate::store::records::{JobKind, Target};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// What the test runner does with its slot.
    #[derive(Clone, Copy)]
    enum Hold {
        /// Keeps the slot until the job's gate opens (a request still in flight).
        UntilSettled,
        /// Gives the slot back at once and then waits for the gate (settling).
        FreeFirst,
    }

    /// Records which jobs started and lets the test decide when each one settles.
    struct Gated {
        hold: Hold,
        limit: usize,
        started: mpsc::UnboundedSender<u64>,
        gates: Mutex<HashMap<u64, oneshot::Receiver<()>>>,
    }

    impl Runner for Gated {
        fn run(&self, job: Job, slot: Slot) -> BoxFuture<'static, Verdict> {
            let _ = self.started.send(job.id);
            // A second start of a job finds no gate and panics in its own attempt, which
            // the scheduler survives: the test sees the id twice.
            let gate = self.gates.lock().unwrap().remove(&job.id);
            let hold = self.hold;
            Box::pin(async move {
                let gate = gate.expect("one start per job");
                let slot = match hold {
                    Hold::UntilSettled => Some(slot),
                    Hold::FreeFirst => {
                        drop(slot);
                        None
                    }
                };
                let _ = gate.await;
                drop(slot);
                Verdict::Done
            })
        }
        fn group(&self, _job: &Job) -> String {
            "receiver".into()
        }
        fn limit(&self, _group: &str) -> usize {
            self.limit
        }
    }

    fn job(id: u64, reference: &str) -> Job {
        let now = Timestamp::now();
        Job {
            id,
            target: Target::Loomis,
            kind: JobKind::Dispatch,
            incident: IncidentKey::new("tool", reference),
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            last_error: None,
        }
    }

    /// Starts a scheduler over `jobs` (id, reference); returns the started ids' receiver
    /// and each job's gate.
    fn start(
        hold: Hold,
        limit: usize,
        jobs: Vec<Job>,
    ) -> (
        mpsc::UnboundedReceiver<u64>,
        HashMap<u64, oneshot::Sender<()>>,
        CancellationToken,
    ) {
        let (started, started_rx) = mpsc::unbounded_channel();
        let mut gates = HashMap::new();
        let mut opens = HashMap::new();
        for j in &jobs {
            let (tx, rx) = oneshot::channel();
            gates.insert(j.id, rx);
            opens.insert(j.id, tx);
        }
        let runner = Arc::new(Gated {
            hold,
            limit,
            started,
            gates: Mutex::new(gates),
        });
        let (_feed, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        tokio::spawn(Scheduler::new("test", runner).run(jobs, rx, shutdown.clone()));
        (started_rx, opens, shutdown)
    }

    /// Panics in its first attempt at job 1; settles everything else at once.
    struct PanicsOnce {
        started: mpsc::UnboundedSender<u64>,
        panicked: std::sync::atomic::AtomicBool,
    }

    impl Runner for PanicsOnce {
        fn run(&self, job: Job, slot: Slot) -> BoxFuture<'static, Verdict> {
            let _ = self.started.send(job.id);
            let panic = job.id == 1
                && !self
                    .panicked
                    .swap(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                drop(slot);
                assert!(!panic, "an attempt that panics");
                Verdict::Done
            })
        }
        fn group(&self, _job: &Job) -> String {
            "receiver".into()
        }
        fn limit(&self, _group: &str) -> usize {
            1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_panics_is_tried_again_and_blocks_nothing() {
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let runner = Arc::new(PanicsOnce {
            started,
            panicked: false.into(),
        });
        let jobs = vec![job(1, "A"), job(2, "A"), job(3, "B"), job(4, "C")];
        let (_feed, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let scheduler =
            tokio::spawn(Scheduler::new("test", runner).run(jobs, rx, shutdown.clone()));
        // Before the retry is due the other lanes run; job 2 waits behind job 1.
        assert_eq!(started_now(&mut started_rx).await, vec![1, 3, 4]);
        // 30 s after the panic job 1 is tried again, then job 2 follows in its lane.
        tokio::time::sleep(LOST_RETRY).await;
        assert_eq!(started_now(&mut started_rx).await, vec![1, 2]);
        // Nothing is left counted as settling: the scheduler stops at once.
        shutdown.cancel();
        scheduler.await.unwrap();
    }

    /// The ids started so far once the scheduler has nothing left to do.
    async fn started_now(rx: &mut mpsc::UnboundedReceiver<u64>) -> Vec<u64> {
        // With the clock paused, this sleep ends only when every task is idle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut ids = Vec::new();
        while let Ok(id) = rx.try_recv() {
            ids.push(id);
        }
        ids.sort();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_bounds_requests_in_flight() {
        let jobs = vec![job(1, "A"), job(2, "B"), job(3, "C"), job(4, "D")];
        let (mut started, mut gates, _stop) = start(Hold::UntilSettled, 2, jobs);
        assert_eq!(started_now(&mut started).await, vec![1, 2]);
        gates.remove(&1).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_lets_the_next_request_go_while_the_first_settles() {
        let jobs = vec![job(1, "A"), job(2, "B"), job(3, "C")];
        let (mut started, mut gates, _stop) = start(Hold::FreeFirst, 1, jobs);
        // One slot, but two attempts settling at once (twice the limit), not three.
        assert_eq!(started_now(&mut started).await, vec![1, 2]);
        gates.remove(&2).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_job_sent_again_with_an_earlier_time_goes_then() {
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let mut gates = HashMap::new();
        let mut opens = Vec::new();
        for id in [1, 2] {
            let (tx, rx) = oneshot::channel();
            gates.insert(id, rx);
            opens.push(tx);
        }
        let runner = Arc::new(Gated {
            hold: Hold::UntilSettled,
            limit: 4,
            started,
            gates: Mutex::new(gates),
        });
        let later = |id, reference| {
            let mut j = job(id, reference);
            j.next_attempt_at = Timestamp::now() + jiff::SignedDuration::from_hours(1);
            j
        };
        let (feed, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        tokio::spawn(Scheduler::new("test", runner).run(
            vec![later(1, "A"), later(2, "B")],
            rx,
            shutdown.clone(),
        ));
        assert_eq!(started_now(&mut started_rx).await, Vec::<u64>::new());
        // "Retry now" for job 1: it goes; job 2 keeps waiting. A later time changes
        // nothing.
        feed.send(job(1, "A")).unwrap();
        let mut much_later = later(2, "B");
        much_later.next_attempt_at += jiff::SignedDuration::from_hours(5);
        feed.send(much_later).unwrap();
        assert_eq!(started_now(&mut started_rx).await, vec![1]);
        // Sent again while it is being attempted: not started twice.
        feed.send(job(1, "A")).unwrap();
        assert_eq!(started_now(&mut started_rx).await, Vec::<u64>::new());
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_goes_before_queued_dispatches() {
        let mut cancel = job(4, "D");
        cancel.kind = JobKind::Cancel;
        let jobs = vec![job(1, "A"), job(2, "B"), job(3, "C"), cancel];
        let (mut started, mut gates, _stop) = start(Hold::UntilSettled, 1, jobs);
        assert_eq!(started_now(&mut started).await, vec![4]);
        gates.remove(&4).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![1]);
        gates.remove(&1).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_never_overtakes_its_own_dispatch() {
        let mut cancel = job(2, "A");
        cancel.kind = JobKind::Cancel;
        let jobs = vec![job(1, "A"), cancel, job(3, "B")];
        // A free slot is not enough: the Cancel waits for its Dispatch to settle.
        let (mut started, mut gates, _stop) = start(Hold::UntilSettled, 2, jobs);
        assert_eq!(started_now(&mut started).await, vec![1, 3]);
        gates.remove(&3).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, Vec::<u64>::new());
        gates.remove(&1).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_waits_for_its_settled_outcome_not_for_the_slot() {
        // Two jobs of one incident: the second waits for the first to settle even though
        // the first gave its slot back long before.
        let jobs = vec![job(1, "A"), job(2, "A")];
        let (mut started, mut gates, _stop) = start(Hold::FreeFirst, 4, jobs);
        assert_eq!(started_now(&mut started).await, vec![1]);
        gates.remove(&1).unwrap().send(()).unwrap();
        assert_eq!(started_now(&mut started).await, vec![2]);
    }
}
