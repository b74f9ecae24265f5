//! Sending spans to the collector: OTLP over HTTP (protobuf) to `[telemetry]
//! otlp_endpoint`, in batches from a background thread, through the gateway's own HTTP
//! client (TLS with the system's roots, the proxy the environment names). A collector
//! that is down or slow never holds up a request: the batch queue is bounded (2,048
//! spans) and drops what does not fit, and a failed export is logged once a minute and
//! counted in `gateway_trace_export_failures_total`.
//!
//! Headers the collector needs (`authorization`, a tenant) come from the environment as
//! `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key=value`), never from the file.

use crate::config::Traces;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing_subscriber::Layer;

/// How long one export may take, connecting included; also the wait for the last
/// batch at shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a batch is sent (sooner when 512 spans are waiting).
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Spans waiting for export; more are dropped (a collector that is down costs memory
/// only up to this).
const QUEUE: usize = 2048;

/// The export pipeline of a running gateway; [`Tracing::shutdown`] sends what waits.
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot start the trace export thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot build the trace exporter: {0}")]
    Exporter(String),
}

/// The layer that turns the gateway's spans into OpenTelemetry spans; it sees the
/// gateway's own spans (at info) and warnings, whatever the log level is.
pub type TraceLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Starts the exporter for `t` and turns traces on in this process. Put the returned
/// layer in the subscriber (`telemetry::init_with`) and keep the [`Tracing`] until exit.
pub fn init(t: &Traces) -> Result<(Tracing, TraceLayer), TraceError> {
    let http = ExportClient::start()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(t.endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_scheduled_delay(BATCH_DELAY)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batches)
                .build(),
        )
        // A caller's sampling decision (its traceparent's flag) is kept; the ratio
        // decides for traces that start here.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(t.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer("safepoint-gateway");
    // Per-poll work is left out: instrumented futures enter and leave their span at
    // every poll, and busy/idle timing and OpenTelemetry context activation there cost
    // more than the spans themselves (nothing here reads the active OTel context).
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            // The gateway's own spans from info, and its warnings and errors as span
            // events (a retry's cause, a refusal); the info lines stay in the log only.
            let floor = if m.is_span() {
                tracing::Level::INFO
            } else {
                tracing::Level::WARN
            };
            m.target().starts_with("safepoint_gateway") && *m.level() <= floor
        }))
        .boxed();
    super::ENABLED.store(true, Ordering::Relaxed);
    Ok((Tracing { provider }, layer))
}

impl Tracing {
    /// Sends the spans still waiting (within the export timeout) and stops the exporter.
    /// Call it outside the async runtime, after the gateway stopped.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT * 2) {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// Repeated export failures are logged once a minute (the collector may be down for
/// long; each batch fails the same way).
static EXPORT_FAILURE_LOG: crate::telemetry::Throttle =
    crate::telemetry::Throttle::new(Duration::from_secs(60));

fn export_failed(why: &str) {
    metrics::counter!("gateway_trace_export_failures_total").increment(1);
    if let Some(held) = EXPORT_FAILURE_LOG.allow() {
        tracing::warn!(error = %why, failures_not_logged = held, "cannot export traces to the collector; these spans are dropped");
    }
}

/// The exporter's HTTP client: the gateway's [`crate::client::Client`], run on a small
/// runtime of its own (thread `trace-export`). The batch thread that calls it is no
/// runtime thread, and the export must go on at shutdown after the gateway's runtime
/// has ended.
#[derive(Clone)]
struct ExportClient {
    client: crate::client::Client,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportClient")
    }
}

impl ExportClient {
    fn start() -> Result<ExportClient, std::io::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runtime = rt.handle().clone();
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(ExportClient {
            client: crate::client::Client::new(Duration::from_secs(2), Duration::from_secs(30)),
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let headers: Vec<_> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let client = self.client.clone();
        let uri = parts.uri;
        let answer = self
            .runtime
            .spawn(async move {
                client
                    .post(&uri, &headers, body.to_vec(), EXPORT_TIMEOUT, 64 << 10)
                    .await
            })
            .await;
        match answer {
            Ok(Ok(r)) => {
                if !(200..300).contains(&r.status) {
                    export_failed(&format!("the collector answered HTTP {}", r.status));
                } else {
                    EXPORT_FAILURE_LOG.reset();
                }
                let mut resp = Response::builder()
                    .status(r.status)
                    .body(Bytes::from(r.body))?;
                *resp.headers_mut() = r.headers;
                Ok(resp)
            }
            Ok(Err(e)) => {
                export_failed(&e.to_string());
                Err(Box::new(e))
            }
            Err(e) => {
                export_failed(&e.to_string());
                Err(Box::new(e))
            }
        }
    }
}
