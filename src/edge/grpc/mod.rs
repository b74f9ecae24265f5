//! The gRPC front door (tonic, on `server.grpc_listen`): the `IncidentGateway` service of
//! `proto/safepoint/gateway/v1/gateway.proto`, gRPC health checking and server
//! reflection (v1 and v1alpha), so stock tools work without the proto.
//!
//! Code map:
//! * [`proto`]: the generated messages, client and server, and the descriptor set.
//! * `service`: the unary calls and the `CreateIncidents` stream.
//! * `watch`: `WatchUpdates`, one task per stream reading the durable update log.
//! * `auth`: the per-integration bearer key check.
//! * `convert`: domain values to proto messages; `error`: domain errors to `Status`,
//!   the only place that knows gRPC codes.
//!
//! Invariants: nothing is answered OK before the store has flushed it (the gateway core
//! guarantees it, this edge only awaits it); a watch stream never holds more than its
//! small channel plus one store batch in memory, whatever the reader does; API keys are
//! never logged.

mod auth;
mod convert;
mod error;
mod service;
mod tls;
mod watch;

use crate::gateway::Gateway;
use crate::intake::LiveIntegrations;
use crate::tls::TlsServer;
use proto::incident_gateway_server::IncidentGatewayServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// The generated code of `safepoint.gateway.v1`, and its file descriptor set.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("safepoint.gateway.v1");

    /// The encoded descriptor set of `gateway.proto` and its imports (with comments),
    /// served through reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
        env!("OUT_DIR"),
        "/safepoint_gateway_v1_descriptor.bin"
    ));
}

/// The fully qualified service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "safepoint.gateway.v1.IncidentGateway";

/// The largest request message the gateway decodes (the XML body limit's default): an
/// incident is a few KiB. Larger ones are refused by tonic with OUT_OF_RANGE ("decoded
/// message length too large").
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// HTTP/2 PING interval: finds dead peers (and keeps NAT and load balancer state alive)
/// on streams that may stay quiet for hours.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive, for peers that vanish without a FIN below HTTP/2.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Streams one connection may open at once. Idle watch streams are cheap (a few KiB),
/// so a single client may watch many integrations or run a wide `CreateIncidents` pool.
const MAX_CONCURRENT_STREAMS: u32 = 2048;
/// A bound on unary calls (streams only need their first response within it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the store's health is polled for gRPC health checking.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// Serves gRPC on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled. Health goes NOT_SERVING when the store stops flushing and as the first step of shutdown; open watch streams then
/// end with UNAVAILABLE so clients reconnect elsewhere (or later) with their last sequence.
pub fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    integrations: LiveIntegrations,
    shutdown: CancellationToken,
    tls: Option<Arc<TlsServer>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = match (
            reflection().build_v1(),
            reflection().build_v1alpha(),
        ) {
            (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "gRPC reflection cannot load the embedded descriptors; gRPC not served");
                return;
            }
        };
        let service = service::GatewayService::new(gateway.clone(), integrations, shutdown.clone());
        // Known before the first connection is accepted, so no check ever sees NOT_FOUND.
        let healthy = store_serves(&gateway);
        set_status(&reporter, serving(healthy)).await;
        let health_task = tokio::spawn(report_health(reporter.clone(), gateway, healthy));

        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE));
        // Shutdown: NOT_SERVING first, so balancers stop sending, then stop accepting.
        // The poller is stopped (and awaited) first so it cannot flip the status back.
        let stopping = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                health_task.abort();
                let _ = health_task.await;
                set_status(&reporter, ServingStatus::NotServing).await;
            }
        };
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .timeout(REQUEST_TIMEOUT)
            .layer(crate::edge::traced::ServerSpans)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                IncidentGatewayServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        let result = match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, stopping)
                    .await
            }
            Some(tls) => {
                let incoming = tls::incoming(incoming, tls, shutdown.clone());
                router
                    .serve_with_incoming_shutdown(incoming, stopping)
                    .await
            }
        };
        match result {
            Ok(()) => tracing::info!("gRPC server stopped"),
            Err(e) => tracing::error!(error = %e, "gRPC server failed"),
        }
    })
}

/// Whether the store accepts writes and no damaged record was met (as `/readyz`).
fn store_serves(gateway: &Gateway) -> bool {
    gateway.store().is_healthy() && gateway.store().damaged_records() == 0
}

/// Keeps gRPC health in step with the store (until aborted at shutdown).
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    gateway: Gateway,
    mut last: bool,
) {
    let mut tick = tokio::time::interval(HEALTH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let healthy = store_serves(&gateway);
        if last != healthy {
            if healthy {
                tracing::info!("store flushes again: gRPC health SERVING");
            } else {
                tracing::warn!(
                    "store refuses writes or holds a damaged record: gRPC health NOT_SERVING"
                );
            }
            set_status(&reporter, serving(healthy)).await;
            last = healthy;
        }
    }
}

/// Sets the status of the whole server ("") and of the gateway service.
async fn set_status(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

fn serving(healthy: bool) -> ServingStatus {
    if healthy {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
