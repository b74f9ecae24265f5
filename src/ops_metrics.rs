//! Series that the deploy kit's alert rules and dashboard read (deploy/prometheus,
//! deploy/grafana) and that no component registered by itself: their HELP text, and the
//! ones registered at zero at start, so an alert sees the series before the first event
//! (an absent series makes `increase()` and `rate()` say nothing rather than 0).
//!
//! `tests/deploy_kit.rs` checks that every metric the rules and the dashboard name is in
//! `/metrics`; a new alert on a new series starts here.

use jiff::Timestamp;

/// Failed configuration reloads (SIGHUP or the admin call). The live-reload feature
/// counts its failures here; until it exists the series stays 0.
pub const RELOAD_FAILURES: &str = "gateway_config_reload_failures_total";
/// How old an update is when a WatchUpdates stream hands it to its client.
pub const STREAM_LAG: &str = "gateway_grpc_stream_lag_seconds";

/// Describes the series and registers the counters at 0. Call it once the recorder is
/// installed ([`crate::edge::http::metrics_handle`]).
pub fn register() {
    metrics::describe_counter!(
        RELOAD_FAILURES,
        "Configuration reloads refused because the new configuration or a mapping was invalid; the previous one keeps serving."
    );
    metrics::counter!(RELOAD_FAILURES).absolute(0);
    metrics::describe_histogram!(
        STREAM_LAG,
        metrics::Unit::Seconds,
        "Age of an update (since the gateway stored it) when a WatchUpdates stream sends it: how far behind the stream's consumer is."
    );
    metrics::describe_histogram!(
        "gateway_store_flush_seconds",
        metrics::Unit::Seconds,
        "Time of one group commit of the store (write and fsync): the latency every acknowledgement waits for."
    );
}

/// Records the lag of one update sent on a WatchUpdates stream of `integration`.
pub fn stream_lag(integration: &str, received_at: Timestamp) {
    let lag = Timestamp::now().duration_since(received_at).as_secs_f64();
    metrics::histogram!(STREAM_LAG, "integration" => integration.to_string()).record(lag.max(0.0));
}
