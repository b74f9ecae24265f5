//! Logging setup: `tracing` with key/value fields, human-readable by default, JSON with
//! `--log-format json` (or `[log] format = "json"`). `RUST_LOG` overrides the level.

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// Installs the global subscriber once; later calls (tests) are no-ops.
///
/// Lines are written to stdout by a background thread, so a request never waits for
/// the terminal or the log collector; a full buffer (128k lines) makes callers wait
/// rather than drop lines. Keep the returned guard until exit: dropping it writes out
/// what is buffered.
pub fn init(json: bool, level: Option<&str>) -> tracing_appender::non_blocking::WorkerGuard {
    init_with(json, level, None)
}

/// Target of the spans opened for traces only (`trace::span`, the server spans): log
/// lines leave them out, so turning traces on does not change what the log says.
pub const TRACE_ONLY_TARGET: &str = "safepoint_gateway::trace";

/// [`init`], with the layer that records spans for traces (`trace::export::init`)
/// beside the log lines. The level filters the log lines only; the trace layer has its
/// own filter.
pub fn init_with(
    json: bool,
    level: Option<&str>,
    traces: Option<Box<dyn Layer<Registry> + Send + Sync>>,
) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    // Colours only for a terminal: log collectors and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let Some(traces) = traces else {
        let builder = fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(writer);
        let _ = if json {
            builder.json().flatten_event(true).try_init()
        } else {
            builder.try_init()
        };
        return guard;
    };
    let lines = filter.and(filter_fn(|m| m.target() != TRACE_ONLY_TARGET));
    let layer = fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let layer = if json {
        layer.json().flatten_event(true).with_filter(lines).boxed()
    } else {
        layer.with_filter(lines).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(layer)
        .try_init();
    guard
}

/// Lets a repeated log line through once per period and counts the ones it held back,
/// so that an error every request hits (a full disk answers each write with an error)
/// writes a line at its first occurrence and then a summary per period, not one line per
/// request: 117,000 lines in 40 s buried the cause and filled the log volume.
pub struct Throttle {
    period: std::time::Duration,
    /// When a line was last let through, and how many were held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new(period: std::time::Duration) -> Self {
        Throttle {
            period,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line should be written now, `None`
    /// when this occurrence is only counted.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held)
            }
        }
    }

    /// Starts over: the next occurrence is written at once (after the condition ended).
    pub fn reset(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (None, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[test]
    fn a_throttle_writes_the_first_line_then_one_per_period_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        for s in 1..30 {
            assert_eq!(t.allow_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_secs(30)), Some(29));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(31)), None);
        t.reset();
        assert_eq!(t.allow_at(t0 + Duration::from_secs(32)), Some(0));
    }
}
