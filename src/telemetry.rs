//! Logging setup: `tracing` with key/value fields, human-readable by default, JSON with
//! `--log-format json` (or `[log] format = "json"`). `RUST_LOG` overrides the level.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber once; later calls (tests) are no-ops.
///
/// Lines are written to stdout by a background thread, so a request never waits for
/// the terminal or the log collector; a full buffer (128k lines) makes callers wait
/// rather than drop lines. Keep the returned guard until exit: dropping it writes out
/// what is buffered.
pub fn init(json: bool, level: Option<&str>) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    // Colours only for a terminal: log collectors and files get plain text.
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(writer);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    guard
}
