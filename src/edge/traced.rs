//! The server span of every request on both listeners, when traces are on: a tower
//! layer that opens it (continuing the caller's W3C `traceparent`, an HTTP header or
//! gRPC metadata, which travel the same way) and attaches it to the request's future.
//! Health checks, metrics, reflection and the console are not traced: they say nothing
//! about an incident and would bury the traces that do.
//!
//! With traces off the layer passes requests through with a disabled span.

use std::task::{Context, Poll};
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// Opens a server span per request (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSpans;

impl<S> tower::Layer<S> for ServerSpans {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced(inner)
    }
}

/// A service whose requests run in their server span.
#[derive(Clone, Debug)]
pub struct Traced<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Traces off: no name is built, the span is the disabled one.
        let span = match crate::trace::enabled().then(|| name(&req)).flatten() {
            Some(name) => {
                crate::trace::server_span(&name, req.headers().get(crate::trace::TRACEPARENT))
            }
            None => tracing::Span::none(),
        };
        let _entered = span.enter();
        self.0.call(req).instrument(span.clone())
    }
}

/// The span's name: `POST /v1/integrations/{name}/incidents` (the route, never the
/// reference a path carries), or the gRPC method (`/safepoint.gateway.v1.IncidentGateway/CreateIncident`);
/// `None` for requests that are not traced.
fn name<B>(req: &http::Request<B>) -> Option<String> {
    let path = req.uri().path();
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return path.starts_with("/safepoint.").then(|| path.to_string());
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str())?;
    if !route.starts_with("/v1/") {
        return None;
    }
    Some(format!("{} {route}", req.method()))
}

#[cfg(test)]
mod tests {
    use super::name;

    #[test]
    fn spans_are_named_by_route_or_method_and_probes_are_not_traced() {
        let grpc = http::Request::post("/safepoint.gateway.v1.IncidentGateway/CreateIncident")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert_eq!(
            name(&grpc).as_deref(),
            Some("/safepoint.gateway.v1.IncidentGateway/CreateIncident")
        );
        let health = http::Request::post("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        assert_eq!(name(&health), None);
        // Without a matched route (unknown path) nothing is named after the raw path.
        let unknown = http::Request::get("/v1/integrations/sn/incidents/INC1")
            .body(())
            .unwrap();
        assert_eq!(name(&unknown), None);
    }
}
