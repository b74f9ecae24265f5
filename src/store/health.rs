//! Whether the store accepts writes (and since when it has not, and why), and which
//! stored records it found damaged: what `/readyz`, `/healthz`, gRPC health and the
//! `gateway_store_*` metrics report, and how often the store's troubles are logged.
//!
//! Two kinds of trouble, told apart because the caller's remedy differs:
//! - **Refused writes** (a full disk, an I/O error): passing. Callers are answered 503 /
//!   UNAVAILABLE ("send it again"), the writer reopens the engine once the disk accepts
//!   writes, and health comes back by itself.
//! - **Damaged records** (a record that cannot be decoded, a block whose checksum fails):
//!   permanent. Sending again does not help; an operator must restore the record (see
//!   `safepoint-gateway store verify`). Readiness fails until the gateway is restarted.

use super::StoreError;
use crate::telemetry::Throttle;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a continuing write failure or damaged-record sighting is logged again.
const REPEAT_LOG: Duration = Duration::from_secs(30);

/// At most this many distinct damaged records are remembered (and counted as distinct).
const DAMAGED_KEPT: usize = 10_000;

/// The store's health; one per [`super::Store`].
pub(super) struct Health {
    writes: Mutex<Writes>,
    damaged: Mutex<HashSet<String>>,
    /// Lines about failed writes after the first, one per [`REPEAT_LOG`].
    write_lines: Throttle,
    /// Lines about damaged records seen again, one per [`REPEAT_LOG`].
    damaged_lines: Throttle,
}

#[derive(Default)]
struct Writes {
    failing_since: Option<Instant>,
    /// The error that began the outage (the cause; later ones are often its echo, e.g.
    /// fjall's "poisoned").
    first_error: Option<String>,
    last_error: Option<String>,
    /// Batches answered with an error since the outage began.
    failed_batches: u64,
    /// The last attempt to recover found the disk still without room.
    waiting_for_room: bool,
}

impl Health {
    pub(super) fn new() -> Self {
        metrics::gauge!("gateway_store_healthy").set(1.0);
        Health {
            writes: Mutex::default(),
            damaged: Mutex::default(),
            write_lines: Throttle::new(REPEAT_LOG),
            damaged_lines: Throttle::new(REPEAT_LOG),
        }
    }

    fn writes(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch was committed and flushed.
    pub(super) fn write_ok(&self) {
        let mut w = self.writes();
        if let Some(since) = w.failing_since.take() {
            tracing::info!(
                failing_for_s = since.elapsed().as_secs(),
                failed_batches = w.failed_batches,
                first_error = w.first_error.as_deref().unwrap_or(""),
                "store accepts writes again"
            );
            *w = Writes::default();
            self.write_lines.reset();
            metrics::gauge!("gateway_store_healthy").set(1.0);
        }
    }

    /// A batch was answered with `e`: logged at its first occurrence, then summarised
    /// every [`REPEAT_LOG`] while the failure lasts. `fresh`: the engine failed it (not
    /// refused at once while waiting to reopen), so `e` is the latest cause.
    pub(super) fn write_failed(&self, e: &StoreError, fresh: bool) {
        metrics::counter!("gateway_store_write_failures_total").increment(1);
        let mut w = self.writes();
        w.failed_batches += 1;
        if fresh {
            w.last_error = Some(e.to_string());
        }
        match w.failing_since {
            None => {
                w.failing_since = Some(Instant::now());
                w.first_error = Some(e.to_string());
                metrics::gauge!("gateway_store_healthy").set(0.0);
                let _ = self.write_lines.allow();
                tracing::error!(error = %e,
                    "store refuses writes; callers are answered 503 and nothing is acknowledged \
                     until it accepts them again (the engine is reopened once the disk has room)");
            }
            Some(since) => {
                if let Some(held) = self.write_lines.allow() {
                    tracing::error!(
                        failing_for_s = since.elapsed().as_secs(),
                        failed_batches = w.failed_batches,
                        lines_held_back = held,
                        first_error = w.first_error.as_deref().unwrap_or(""),
                        last_error = %e,
                        "store still refuses writes"
                    );
                }
            }
        }
    }

    /// Notes whether the last attempt to recover found the disk without room.
    pub(super) fn waiting_for_room(&self, waiting: bool) {
        self.writes().waiting_for_room = waiting;
    }

    /// Whether writes fail for want of room on the disk (as far as the last attempt to
    /// recover could tell).
    pub(super) fn is_waiting_for_room(&self) -> bool {
        let w = self.writes();
        w.failing_since.is_some() && w.waiting_for_room
    }

    /// How long writes have been failing (`None` while they succeed).
    pub(super) fn failing_for(&self) -> Option<Duration> {
        self.writes().failing_since.map(|t| t.elapsed())
    }

    /// Why writes are failing, for a shutdown that cannot flush and for callers refused
    /// while the engine waits to be reopened.
    pub(super) fn failure(&self) -> Option<String> {
        let w = self.writes();
        let since = w.failing_since?;
        let first = w.first_error.as_deref().unwrap_or("unknown");
        let last = w.last_error.as_deref().unwrap_or(first);
        Some(if first == last {
            format!(
                "writes refused for {} s: {first}",
                since.elapsed().as_secs()
            )
        } else {
            format!(
                "writes refused for {} s, since: {first}; last: {last}",
                since.elapsed().as_secs()
            )
        })
    }

    /// The error for a batch refused at once between two attempts to reopen: the cause.
    pub(super) fn refusal(&self) -> StoreError {
        let w = self.writes();
        StoreError::Database(format!(
            "writes are refused until the store is reopened, since {} s: {}",
            w.failing_since.map_or(0, |t| t.elapsed().as_secs()),
            w.last_error.as_deref().unwrap_or("an earlier write failed")
        ))
    }

    /// Notes a damaged record met by a read or a write: counted once per record.
    pub(super) fn saw(&self, e: &StoreError) {
        let StoreError::Corrupt(what) = e else {
            return;
        };
        let new = {
            let mut d = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            d.len() < DAMAGED_KEPT && d.insert(what.clone())
        };
        if new {
            metrics::counter!("gateway_store_corrupt_records_total").increment(1);
            tracing::error!(error = %what,
                "damaged record in the store: requests that need it are refused until an \
                 operator restores it (stop the gateway and run `safepoint-gateway store verify`)");
        } else if let Some(held) = self.damaged_lines.allow() {
            tracing::error!(error = %what, lines_held_back = held, "damaged record met again");
        }
    }

    /// How many distinct damaged records have been met since start.
    pub(super) fn damaged(&self) -> usize {
        self.damaged.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Lines about store errors answered at an edge, after the first, one per [`REPEAT_LOG`]
/// (per kind): the writer logs the cause, each request would only repeat it.
static EDGE_UNAVAILABLE: Throttle = Throttle::new(REPEAT_LOG);
static EDGE_DAMAGED: Throttle = Throttle::new(REPEAT_LOG);

impl StoreError {
    /// Whether sending the same request again may succeed (the store refused a write, or
    /// is shutting down) rather than not (a record it needs is damaged).
    pub fn is_passing(&self) -> bool {
        !matches!(self, StoreError::Corrupt(_))
    }

    /// Logs that `edge` answered a request with this error, at most once per
    /// [`REPEAT_LOG`] per kind, with the number of lines held back.
    pub fn log_at_edge(&self, edge: &'static str) {
        let throttle = match self {
            StoreError::Closed => {
                tracing::debug!(edge, "request refused: the store is shutting down");
                return;
            }
            StoreError::Database(_) => &EDGE_UNAVAILABLE,
            StoreError::Corrupt(_) => &EDGE_DAMAGED,
        };
        if let Some(held) = throttle.allow() {
            tracing::error!(error = %self, edge, lines_held_back = held, "store error answered to a caller");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_logs_its_cause_once_not_a_line_per_batch() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let health = Health::new();
        let cause = StoreError::Database("I/O error: No space left on device".into());
        tracing::subscriber::with_default(subscriber, || {
            health.write_failed(&cause, true);
            for _ in 0..1000 {
                let refusal = health.refusal();
                health.write_failed(&refusal, false);
                refusal.log_at_edge("legacy");
            }
            assert!(health.failure().unwrap().contains("No space left"));
            health.write_ok();
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let errors = text.lines().filter(|l| l.contains("ERROR")).count();
        // The cause, and the first edge line (unless another test of this process just
        // wrote one: the edges' throttle is process-wide); the rest is held back.
        assert!((1..=2).contains(&errors), "{text}");
        assert!(text.contains("store refuses writes"), "{text}");
        assert!(text.contains("No space left"), "{text}");
        assert!(text.contains("store accepts writes again"), "{text}");
        assert!(text.contains("failed_batches=1001"), "{text}");
        assert!(health.failure().is_none());
    }
}
