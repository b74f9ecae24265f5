//! Logging setup: `tracing` with key/value fields, human-readable by default, JSON with
//! `--log-format json` (or `[log] format = "json"`). `RUST_LOG` overrides the level.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(json: bool, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
