//! The Prometheus recorder behind `GET /metrics`: every metric the gateway records is
//! described here (its `# HELP`), latencies are histograms with buckets (summaries
//! cannot be aggregated across instances or re-bucketed in queries), and
//! `gateway_build_info{version}` tells which release answers.
//!
//! A new metric gets its line in [`DESCRIPTIONS`]; `tests/metrics.rs` fails on a series
//! without HELP.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// What kind of series a metric is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::*;

/// Every metric: name, kind, HELP text (labels in brackets).
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    ("gateway_build_info", Gauge, "Always 1; the label version is the running release."),
    ("gateway_config_generation", Gauge, "The configuration generation in force: 1 at start, one more per successful reload."),
    ("gateway_config_info", Gauge, "Always 1; the label mapping_digest is the sha256 over the mapping files in force."),
    ("gateway_config_reloads_total", Counter, "Configuration reloads put in force (SIGHUP, POST /v1/admin/reload, file watch)."),
    ("gateway_tls_reload_failures_total", Counter, "Changed TLS certificate or key files that did not load, by listener; the previous pair keeps serving."),
    ("gateway_tls_handshake_failures_total", Counter, "TLS handshakes refused (no, expired or untrusted client certificate, protocol errors), by listener."),
    ("gateway_incidents_created_total", Counter, "Incidents accepted and stored (202), by integration."),
    ("gateway_intake_refused_total", Counter, "Incidents refused by the mapping or the Loomis rules (422 / INVALID_ARGUMENT), by integration."),
    ("gateway_xml_refused_total", Counter, "Legacy requests refused for their XML (malformed, DTD, too large), by code."),
    ("gateway_callbacks_refused_total", Counter, "Loomis callbacks refused, by reason (auth, invalid)."),
    ("gateway_loomis_messages_total", Counter, "Messages from Loomis by kind, outcome (applied, duplicate, ignored, conflict, orphan, store_error) and via (callback, response_body)."),
    ("gateway_loomis_requests_total", Counter, "Dispatch and Cancel requests to Loomis, by kind and result (ok, retry, refused)."),
    ("gateway_loomis_request_seconds", Histogram, "Time of one request to Loomis, by kind."),
    ("gateway_tool_posts_total", Counter, "Update posts to legacy tools, by integration and result (ok, retry, dead)."),
    ("gateway_settle_retries_total", Counter, "Delivery outcomes written again because the store refused them (non-zero: the disk is in trouble)."),
    ("gateway_outbox_pending", Gauge, "Jobs waiting in the outbox, by target scheduler (loomis, tools)."),
    ("gateway_dead_letters", Gauge, "Tool posts that gave up and wait for an operator (dead-letters list / replay)."),
    ("gateway_grpc_watch_streams", Gauge, "Open WatchUpdates streams."),
    ("gateway_grpc_updates_streamed_total", Counter, "Updates sent on WatchUpdates streams."),
    ("gateway_retention_removed_total", Counter, "Records removed by retention, by kind (incident, update, dead_letter, orphan)."),
    ("gateway_store_commits_total", Counter, "Write operations committed by the store (several per flush)."),
    ("gateway_store_flushes_total", Counter, "Group commits flushed to disk (one fsync each)."),
    ("gateway_store_flush_seconds", Histogram, "Time of one group commit: the batch write and its fsync."),
    ("gateway_store_healthy", Gauge, "1 while the store accepts writes, 0 while it refuses them (full disk, I/O errors)."),
    ("gateway_store_write_failures_total", Counter, "Group commits answered with an error (each refused every request in it)."),
    ("gateway_store_recoveries_total", Counter, "Times the store engine was reopened after failed writes."),
    ("gateway_store_corrupt_records_total", Counter, "Distinct damaged records met since start; non-zero: run `safepoint-gateway store verify` (readiness fails)."),
    ("gateway_trace_export_failures_total", Counter, "Batches of spans the OTLP collector did not take (unreachable, or an error status); those spans are dropped."),
];

/// Histogram buckets (seconds) of the store's group commit: an fsync is 0.1-10 ms on
/// local SSDs, more on network disks.
const FLUSH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Histogram buckets (seconds) for everything else, requests to Loomis among them (the
/// default timeout is 10 s).
/// How far behind a WatchUpdates consumer is: live streams show milliseconds, a resume
/// from an old sequence hours; the stream-lag alert fires above 300 s.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];

const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide Prometheus recorder (installed once, shared by every app instance).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. in tests); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(REQUEST_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("gateway_store_flush_seconds".into()),
                FLUSH_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("gateway_grpc_stream_lag_seconds".into()),
                LAG_BUCKETS,
            )
        })
        .expect("bucket lists are not empty")
}

/// Gives every metric its HELP, and sets `gateway_build_info`.
fn describe() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Counter => metrics::describe_counter!(name, help),
            Gauge => metrics::describe_gauge!(name, help),
            Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
    metrics::gauge!("gateway_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_buckets_and_every_series_has_help() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::histogram!("gateway_store_flush_seconds").record(0.003);
            metrics::histogram!("gateway_loomis_request_seconds", "kind" => "dispatch").record(0.2);
            metrics::counter!("gateway_store_write_failures_total").increment(1);
        });
        let text = handle.render();
        assert!(!text.contains("summary"), "{text}");
        assert!(
            text.contains("gateway_store_flush_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_loomis_request_seconds_bucket{kind=\"dispatch\",le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gateway_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{text}"
            );
        }
    }
}
