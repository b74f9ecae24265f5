//! The HTTP listener: routes, the layers every request passes, and the JSON error body
//! of the Loomis-facing and operator routes. The legacy XML routes live in
//! [`crate::edge::legacy`] and answer in XML; both are merged here.

pub mod callback;
mod prometheus;
pub mod reload;

pub use prometheus::metrics_handle;

use crate::auth::{bearer_matches, Auth, Secret};
use crate::config::CertName;
use crate::gateway::Gateway;
use crate::live::Live;
use crate::loomis::message::FieldProblem;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// An error answered as JSON: `{"error":{"code":..,"message":..,"problems":[..]}}`.
#[derive(Debug)]
pub struct JsonError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<FieldProblem>,
}

impl JsonError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        JsonError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if !self.problems.is_empty() {
            body["error"]["problems"] = json!(self.problems);
        }
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(crate::edge::refusal::Refusal {
            code: self.code,
            message: self.message,
            fields: self.problems.into_iter().map(|p| p.field).collect(),
        });
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Passing: the store (or its database) is expected back; come again then.
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(crate::store::RETRY_AFTER_SECS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Shared state of the HTTP routes.
#[derive(Clone)]
pub struct HttpState {
    pub gateway: Gateway,
    /// How Loomis proves itself on callbacks; reload replaces it.
    pub callback_auth: Live<CallbackPolicy>,
    pub admin_token: Option<Secret>,
    /// Reload and configuration status for `/v1/admin/reload` and `/v1/admin/config`.
    pub control: Option<Arc<dyn reload::ConfigControl>>,
    /// Set once mappings are loaded and the listeners are up.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// How Loomis authenticates its callbacks: the configured credentials and, when set, a
/// name its verified client certificate must carry.
#[derive(Debug, Clone)]
pub struct CallbackPolicy {
    pub auth: Auth,
    pub client_cert: Option<CertName>,
}

/// The Loomis-facing, health, metrics and operator routes.
pub fn routes(state: HttpState, max_callback_bytes: usize) -> Router {
    Router::new()
        .route(
            "/v1/loomis/messages",
            post(crate::edge::http::callback::receive)
                .layer(axum::extract::DefaultBodyLimit::max(max_callback_bytes)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/admin/dead-letters", get(list_dead_letters))
        .route(
            "/v1/admin/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .route("/v1/admin/orphans", get(list_orphans))
        .route("/v1/admin/reload", post(reload::reload))
        .route("/v1/admin/config", get(reload::status))
        .with_state(state)
}

/// Layers every HTTP request passes: a whole-request deadline (slow senders are cut off)
/// outermost, then request tracing. Unknown routes and wrong methods get an error body
/// too (XML on the legacy routes, JSON elsewhere), like every other error.
pub fn layered(router: Router, request_timeout: Duration) -> Router {
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        // Failures are logged where they happen, with their cause; not again as bare statuses.
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()))
        // Every 4xx at info, with its reason (see edge::refusal).
        .layer(axum::middleware::from_fn(crate::edge::refusal::log))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            deadline,
        ))
        // Outermost: the whole request, its refusal line included, in its server span.
        .layer(crate::edge::traced::ServerSpans)
}

/// Paths of the legacy front door, whose callers expect XML errors.
fn is_legacy(path: &str) -> bool {
    path.starts_with("/v1/integrations/")
}

/// An error for a request no handler answered, in the body its caller reads.
fn edge_error(
    path: &str,
    headers: &HeaderMap,
    status: StatusCode,
    code: &'static str,
    message: String,
) -> Response {
    if is_legacy(path) {
        crate::edge::legacy::edge_error(headers, status, code, message)
    } else {
        JsonError::new(status, code, message).into_response()
    }
}

/// Bounds the whole request, reading its body included: a sender that stalls gets `408`
/// with a body saying so, and the connection is closed.
async fn deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    // Only the headers that choose the error's envelope, and only where it is XML: this
    // runs for every request, the answer it prepares for almost none.
    let mut headers = HeaderMap::new();
    if is_legacy(&path) {
        for name in [
            http::header::CONTENT_TYPE,
            http::HeaderName::from_static("soapaction"),
        ] {
            if let Some(v) = req.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(path = %path, limit_ms = limit.as_millis() as u64, "request timed out");
            edge_error(
                &path,
                &headers,
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                format!(
                    "the request was not complete within {} ms",
                    limit.as_millis()
                ),
            )
        }
    }
}

async fn unknown_route(uri: http::Uri, headers: HeaderMap) -> Response {
    edge_error(
        uri.path(),
        &headers,
        StatusCode::NOT_FOUND,
        "UnknownRoute",
        format!("no route {}", uri.path()),
    )
}

async fn wrong_method(method: http::Method, uri: http::Uri, headers: HeaderMap) -> Response {
    edge_error(
        uri.path(),
        &headers,
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// How long the store may refuse writes before liveness fails too. The store reopens its
/// engine by itself once the disk takes writes again (see `Backend::recover`); an outage
/// this long is past what that is for, and a restart (which recovers everything
/// acknowledged from the journal) is the fallback. A shorter outage only makes the
/// gateway unready.
pub const STORE_FAILURE_LIVENESS: Duration = Duration::from_secs(60);

async fn healthz(State(s): State<HttpState>) -> Response {
    match s.gateway.store().failing_for() {
        // Waiting for room on a full disk: a restart would not hasten it (and might not
        // start), the store reopens by itself once space is freed.
        Some(d) if d >= STORE_FAILURE_LIVENESS && !s.gateway.store().is_waiting_for_room() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store refusing writes for {}s ({}); it reopens by itself once the disk \
                 takes writes, a restart recovers too (everything acknowledged is on disk)\n",
                d.as_secs(),
                s.gateway.store().failure().unwrap_or_default()
            ),
        )
            .into_response(),
        _ => "ok\n".into_response(),
    }
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let started = s.ready.load(std::sync::atomic::Ordering::Relaxed);
    let st = s.gateway.store();
    let damaged = st.damaged_records();
    // A damaged record fails the requests that need it until an operator restores it:
    // not ready, and unlike a full disk it does not pass by itself.
    let (store, reason) = match (st.failure(), damaged) {
        (_, n) if n > 0 => (
            "damaged",
            Some(format!(
                "{n} damaged record(s) met; stop the gateway and run `safepoint-gateway store verify`"
            )),
        ),
        (Some(why), _) => ("failing", Some(why)),
        (None, _) => ("ok", None),
    };
    let ready = started && store == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"ready": ready, "started": started, "store": store});
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<HttpState>) -> Response {
    // Counted when scraped, so the gauge is never stale (dead letters are few).
    if let Ok(n) = s.gateway.store().dead_letter_count() {
        metrics::gauge!("gateway_dead_letters").set(n as f64);
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

pub(crate) fn admin(s: &HttpState, headers: &HeaderMap) -> Result<(), JsonError> {
    match &s.admin_token {
        None => Err(JsonError::new(
            StatusCode::NOT_FOUND,
            "AdminDisabled",
            "admin routes are off: set [admin] token_env",
        )),
        Some(t) if bearer_matches(headers, t) => Ok(()),
        Some(_) => Err(JsonError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "admin bearer token missing or wrong",
        )),
    }
}

fn unavailable(e: crate::store::StoreError) -> JsonError {
    store_error(e)
}

/// A store failure as JSON: 503 "send again" while it passes, 500 for a damaged record.
pub(crate) fn store_error(e: crate::store::StoreError) -> JsonError {
    e.log_at_edge("http");
    if e.is_passing() {
        JsonError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "StoreUnavailable",
            "the store is unavailable; send again",
        )
    } else {
        JsonError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreDamaged",
            "a stored record this request needs is damaged; sending it again will not help: \
             the gateway's operator restores it (see `safepoint-gateway store verify`)",
        )
    }
}

async fn list_dead_letters(
    State(s): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, JsonError> {
    admin(&s, &headers)?;
    let list = s
        .gateway
        .store()
        .dead_letters(usize::MAX)
        .map_err(unavailable)?;
    Ok(Json(json!({"dead_letters": list})).into_response())
}

async fn replay_dead_letter(
    State(s): State<HttpState>,
    headers: HeaderMap,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, JsonError> {
    admin(&s, &headers)?;
    let Path(id) = id.map_err(|r| {
        JsonError::new(
            StatusCode::BAD_REQUEST,
            "InvalidPath",
            format!("{}: the dead letter id is a number", r.body_text()),
        )
    })?;
    if s.gateway
        .replay_dead_letter(id)
        .await
        .map_err(unavailable)?
    {
        Ok(Json(json!({"replayed": id})).into_response())
    } else {
        Err(JsonError::new(
            StatusCode::NOT_FOUND,
            "UnknownDeadLetter",
            format!("no dead letter {id}"),
        ))
    }
}

async fn list_orphans(
    State(s): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, JsonError> {
    admin(&s, &headers)?;
    let list = s.gateway.store().orphans(1000).map_err(unavailable)?;
    Ok(Json(json!({"orphans": list})).into_response())
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
///
/// Served through hyper-util rather than `axum::serve` so that reading request headers is
/// bounded in time (a client that trickles or stalls its headers is cut off), on top of
/// the whole-request deadline of [`layered`]. With `tls`, each connection first
/// completes the TLS handshake (within the header timeout; a refusal is logged with its
/// reason and the connection dropped), and a verified client certificate's names reach
/// the handlers as an `Arc<PeerIdentity>` request extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
    header_timeout: Duration,
    tls: Option<Arc<crate::tls::TlsServer>>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 << 10);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        if let Some(tls) = &tls {
            tokio::spawn(serve_tls(
                tls.clone(),
                stream,
                remote,
                router.clone(),
                builder,
                watcher,
                header_timeout,
            ));
            continue;
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            // hyper's header timeout starts once the protocol is known; choosing it
            // (HTTP/1.1 or h2c) waits for the first bytes with no limit of its own, so a
            // client that connects and sends nothing (or one byte) would hold the
            // connection forever. Bound that wait by the header timeout too.
            if tokio::time::timeout(header_timeout, protocol_known(&stream))
                .await
                .is_err()
            {
                tracing::debug!("connection sent no request within the header timeout; closed");
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One TLS connection: the handshake, then HTTP/2 or HTTP/1.1 as ALPN chose (so the
/// header timeout applies from the first byte, with no protocol sniffing).
async fn serve_tls(
    tls: Arc<crate::tls::TlsServer>,
    stream: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    router: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    header_timeout: Duration,
) {
    use tower::ServiceExt;
    let (stream, peer) = match tls.accept(stream, header_timeout).await {
        Ok(accepted) => accepted,
        Err(e) => return tls.log_refusal(Some(remote), &e),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let router = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        req
    });
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn =
        builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
    let _ = watcher.watch(conn.into_owned()).await;
}

/// Returns once the connection's first bytes tell HTTP/1.1 from h2c (the h2c preface is
/// 24 bytes; any byte that departs from it means HTTP/1.1), or the peer closed.
async fn protocol_known(stream: &tokio::net::TcpStream) {
    const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= 24 || buf[..n] != H2_PREFACE[..n] => return,
            // Part of the preface so far: wait for more (peek sees the same bytes again
            // until more arrive, so give the socket a moment).
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
