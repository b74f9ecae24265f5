//! Traces across the whole path (OpenTelemetry), off unless `[telemetry] otlp_endpoint`
//! is set.
//!
//! The gateway's `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`, exported as OTLP over HTTP by [`export`]. A W3C
//! `traceparent` a caller sends (HTTP header, gRPC metadata) is continued by the
//! request's server span ([`server_span`]); the incident stores the position it was
//! accepted at ([`current`] → `Incident::trace`), and every later piece of its life is
//! a span of that same trace, also after a restart: the Dispatch and Cancel to Loomis,
//! each callback, each post of an update to the tool ([`follow`]). Requests the gateway
//! sends carry `traceparent` ([`outgoing`]).
//!
//! With traces off, every function here returns at once after one atomic load:
//! no span is opened for traces, nothing is parsed, stored or sent.

mod context;
pub mod export;

pub use context::TraceParent;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once, by [`export::init`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are on in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The header name, as the W3C Trace Context names it.
pub const TRACEPARENT: &str = "traceparent";

impl TraceParent {
    /// This position as the parent of a span opened here.
    fn context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(self.span_context())
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }

    fn of(sc: &SpanContext) -> Option<TraceParent> {
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }
}

/// A span for traces only: its target keeps it out of the log lines (see
/// `telemetry::TRACE_ONLY_TARGET`). A child of the current span; disabled when traces
/// are off.
pub fn span(name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: crate::telemetry::TRACE_ONLY_TARGET, "span", otel.name = name)
}

/// The server span of one request (HTTP or gRPC), named `name` (`POST /v1/...`, or the
/// gRPC method), continuing the caller's `traceparent` when it sent a valid one.
pub fn server_span(name: &str, traceparent: Option<&http::HeaderValue>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(target: crate::telemetry::TRACE_ONLY_TARGET, "request",
        otel.name = name, otel.kind = "server");
    if let Some(parent) = traceparent
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
    {
        let _ = span.set_parent(parent.context());
    }
    span
}

/// Makes `span` (not yet entered) continue the trace at `parent`: an incident's stored
/// position, so that work done long after intake, or after a restart, joins its trace.
pub fn follow(span: &Span, parent: Option<TraceParent>) {
    if let Some(parent) = parent.filter(|_| enabled()) {
        let _ = span.set_parent(parent.context());
    }
}

/// Links `span` to another trace's position (a Loomis callback that came with its own
/// `traceparent` is linked to it, and belongs to the incident's trace).
pub fn link(span: &Span, other: Option<TraceParent>) {
    if let Some(other) = other.filter(|_| enabled()) {
        span.add_link(other.span_context());
    }
}

/// The position of the current span, to store with an incident or send on; `None`
/// when traces are off.
pub fn current() -> Option<TraceParent> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    TraceParent::of(cx.span().span_context())
}

/// The `traceparent` header for a request sent from the current span; `None` when
/// traces are off.
pub fn outgoing() -> Option<(http::HeaderName, http::HeaderValue)> {
    let tp = current()?;
    let value = http::HeaderValue::try_from(tp.to_string()).ok()?;
    Some((http::HeaderName::from_static(TRACEPARENT), value))
}
