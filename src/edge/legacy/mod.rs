//! The legacy front door: ITSM tools create, cancel and poll incidents in their own XML
//! (plain, SOAP 1.1 or SOAP 1.2), mapped by their integration's mapping file.
//!
//! Every answer is XML; a request in a SOAP envelope is answered in the same envelope
//! (errors as SOAP faults, with the contract's HTTP status codes). Bodies are bounded in
//! size, XML in depth and element count, DTDs refused; the whole request is bounded in
//! time by the HTTP layer.

pub mod xml_out;

use crate::auth::bearer_matches;
use crate::config::PeerIdentity;
use crate::config::ServerSection;
use crate::gateway::{CancelError, Gateway, SubmitError};
use crate::incident::Update;
use crate::intake::{self, IntegrationRuntime, LiveIntegrations};
use crate::loomis::message::FieldProblem;
use crate::mapping::xml::{Document, SoapVersion, XmlError};
use crate::mapping::{SourceKind, UpdateView};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use std::sync::Arc;
use xml_out::Envelope;

/// Limits on legacy requests.
#[derive(Debug, Clone)]
pub struct Limits {
    pub xml: crate::mapping::xml::Limits,
}

impl From<&ServerSection> for Limits {
    fn from(s: &ServerSection) -> Self {
        let xml = crate::mapping::xml::Limits {
            max_bytes: s.max_body_bytes,
            max_depth: s.max_xml_depth,
            max_elements: s.max_xml_elements,
            ..Default::default()
        };
        Limits { xml }
    }
}

/// Shared state of the legacy routes.
#[derive(Clone)]
pub struct LegacyState {
    pub gateway: Gateway,
    /// Read once per request: a request finishes on the version it started with.
    pub integrations: LiveIntegrations,
    pub limits: Limits,
}

/// The stored update as the outbound mapping sees it.
pub fn update_view(u: &Update) -> UpdateView {
    UpdateView {
        sequence: u.sequence.get(),
        integration: u.integration.clone(),
        incident_reference: u.incident_reference.to_string(),
        incident_id: u.incident_id.as_ref().map(ToString::to_string),
        customer_number: u.customer_number.clone(),
        kind: u.kind.as_str().to_string(),
        state: u.state.as_str().to_string(),
        response_code: u.response_code.clone(),
        response_text: u.response_text.clone(),
        sla_time: u.sla_time,
        event_time: u.event_time,
        received_at: u.received_at,
    }
}

/// The routes under `/v1/integrations/{name}/incidents`.
pub fn routes(state: LegacyState) -> Router {
    Router::new()
        .route("/v1/integrations/{name}/incidents", post(create))
        .route("/v1/integrations/{name}/incidents/{reference}", get(status))
        .route(
            "/v1/integrations/{name}/incidents/{reference}/cancel",
            post(cancel),
        )
        .route("/v1/integrations/{name}/wsdl", get(wsdl))
        .with_state(state)
}

/// An error of the legacy routes, answered as XML in the caller's envelope.
#[derive(Debug)]
pub struct LegacyError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<FieldProblem>,
    pub envelope: Envelope,
}

impl LegacyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        LegacyError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            envelope: Envelope::Plain,
        }
    }

    fn in_envelope(mut self, env: Envelope) -> Self {
        self.envelope = env;
        self
    }
}

impl IntoResponse for LegacyError {
    fn into_response(self) -> Response {
        let sender = self.status.is_client_error();
        let body = xml_out::error(
            self.envelope,
            sender,
            self.code,
            &self.message,
            &self.problems,
        );
        let mut resp = (
            self.status,
            [(http::header::CONTENT_TYPE, self.envelope.content_type())],
            body,
        )
            .into_response();
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
        resp.extensions_mut().insert(crate::edge::refusal::Refusal {
            code: self.code,
            message: self.message,
            fields: self.problems.into_iter().map(|p| p.field).collect(),
        });
        resp
    }
}

/// An error answered before (or instead of) a legacy handler: an unknown route, a wrong
/// method, a request cut off by the deadline. XML in the envelope the caller announced.
pub fn edge_error(
    headers: &HeaderMap,
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Response {
    LegacyError::new(status, code, message)
        .in_envelope(announced_envelope(headers))
        .into_response()
}

fn xml_response(status: StatusCode, env: Envelope, body: Vec<u8>) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, env.content_type())],
        body,
    )
        .into_response()
}

/// The SOAP version a caller announces before its body is parsed (for errors about the
/// body itself): `application/soap+xml` is SOAP 1.2, a `SOAPAction` header SOAP 1.1.
fn announced_envelope(headers: &HeaderMap) -> Envelope {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/soap+xml") {
        Envelope::Soap(SoapVersion::Soap12)
    } else if headers.contains_key("soapaction") {
        Envelope::Soap(SoapVersion::Soap11)
    } else {
        Envelope::Plain
    }
}

/// Path parameters, refused in the caller's error format (XML, or a SOAP fault) when
/// they cannot be read (a reference that is not UTF-8 once percent-decoded).
struct LegacyPath<T>(T);

impl<S, T> axum::extract::FromRequestParts<S> for LegacyPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = LegacyError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(LegacyPath(v)),
            Err(rejection) => Err(LegacyError::new(
                StatusCode::BAD_REQUEST,
                "InvalidPath",
                rejection.body_text(),
            )
            .in_envelope(announced_envelope(&parts.headers))),
        }
    }
}

/// Finds the integration and checks the caller: a verified client certificate carrying
/// the integration's `client_cert` name, or its API key as a bearer token. A verified
/// certificate that names someone else is refused even with a valid key.
fn authenticate(
    s: &LegacyState,
    name: &str,
    parts: &http::request::Parts,
) -> Result<IntegrationRuntime, LegacyError> {
    let headers = &parts.headers;
    let env = announced_envelope(headers);
    let integrations = s.integrations.get();
    let rt = integrations.get(name).ok_or_else(|| {
        LegacyError::new(
            StatusCode::NOT_FOUND,
            "UnknownIntegration",
            format!("no integration {name:?}"),
        )
        .in_envelope(env)
    })?;
    let peer = parts.extensions.get::<Arc<PeerIdentity>>().map(|p| &**p);
    if rt.cert_admits(peer) {
        return Ok(rt.clone());
    }
    if let Some(why) = rt.cert_mismatch(peer) {
        tracing::warn!(integration = %name, reason = %why, "legacy request refused");
        return Err(
            LegacyError::new(StatusCode::FORBIDDEN, "CertificateMismatch", why).in_envelope(env),
        );
    }
    if !rt.has_key() || !bearer_matches(headers, &rt.api_key) {
        let how = if rt.client_cert.is_some() && rt.has_key() {
            "present the integration's client certificate, or send Authorization: Bearer <the integration's API key>"
        } else if rt.client_cert.is_some() {
            "present the integration's client certificate (TLS)"
        } else {
            "send Authorization: Bearer <the integration's API key>"
        };
        return Err(
            LegacyError::new(StatusCode::UNAUTHORIZED, "Unauthorized", how).in_envelope(env),
        );
    }
    Ok(rt.clone())
}

/// Checks the content type and reads the body within the size limit.
async fn read_xml_body(
    s: &LegacyState,
    headers: &HeaderMap,
    body: Body,
    required: bool,
) -> Result<Option<Document>, LegacyError> {
    Ok(read_xml(s, headers, body, required)
        .await?
        .map(|(doc, _)| doc))
}

/// [`read_xml_body`], with the bytes as received (kept for the incident's timeline).
async fn read_xml(
    s: &LegacyState,
    headers: &HeaderMap,
    body: Body,
    required: bool,
) -> Result<Option<(Document, bytes::Bytes)>, LegacyError> {
    let env = announced_envelope(headers);
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        let xml = matches!(
            mime,
            "application/xml" | "text/xml" | "application/soap+xml"
        ) || mime.ends_with("+xml");
        if !xml {
            return Err(LegacyError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("expected application/xml, text/xml or application/soap+xml, got {mime:?}"),
            )
            .in_envelope(env));
        }
    }
    let limit = s.limits.xml.max_bytes;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(LegacyError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the body is larger than {limit} bytes"),
            )
            .in_envelope(env));
        }
        Err(e) => {
            return Err(LegacyError::new(
                StatusCode::BAD_REQUEST,
                "BodyUnreadable",
                format!("cannot read the body: {e}"),
            )
            .in_envelope(env));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if required {
            return Err(LegacyError::new(
                StatusCode::BAD_REQUEST,
                "MalformedXml",
                "the body is empty; an XML document is expected",
            )
            .in_envelope(env));
        }
        return Ok(None);
    }
    match Document::parse(&bytes, &s.limits.xml) {
        Ok(doc) => Ok(Some((doc, bytes))),
        Err(e) => {
            let status = match e {
                XmlError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            let code = match e {
                XmlError::Dtd { .. } => "DtdRefused",
                XmlError::UndefinedEntity { .. } => "UndefinedEntity",
                XmlError::TooLarge { .. } => "PayloadTooLarge",
                _ => "MalformedXml",
            };
            metrics::counter!("gateway_xml_refused_total", "code" => code).increment(1);
            Err(LegacyError::new(status, code, e.to_string()).in_envelope(env))
        }
    }
}

fn envelope_of(doc: &Document) -> Envelope {
    doc.soap_version()
        .map(Envelope::Soap)
        .unwrap_or(Envelope::Plain)
}

/// A store failure: passing ones are 503 "send it again"; a damaged record is 500 and
/// says that sending again cannot help.
fn store_unavailable(env: Envelope, e: crate::store::StoreError) -> LegacyError {
    e.log_at_edge("legacy");
    if e.is_passing() {
        LegacyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "StoreUnavailable",
            "the gateway cannot store the request now; send it again",
        )
    } else {
        LegacyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "StoreDamaged",
            "a stored record this request needs is damaged; sending it again will not help: \
             tell the gateway's operator (they restore it; see `safepoint-gateway store verify`)",
        )
    }
    .in_envelope(env)
}

async fn create(
    State(s): State<LegacyState>,
    LegacyPath(name): LegacyPath<String>,
    req: Request,
) -> Result<Response, LegacyError> {
    let (parts, body) = req.into_parts();
    let rt = authenticate(&s, &name, &parts)?;
    let (doc, raw) = read_xml(&s, &parts.headers, body, true)
        .await?
        .expect("required body");
    let raw = crate::store::query::RawInput::new("xml", &raw, jiff::Timestamp::now());
    let env = envelope_of(&doc);
    if rt.plan.source_kind() != SourceKind::Xml {
        return Err(LegacyError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "WrongFrontDoor",
            format!(
                "integration {name:?} maps gRPC field maps, not XML; use the gRPC CreateIncident"
            ),
        )
        .in_envelope(env));
    }
    let dispatch = intake::from_document(&rt, &doc).map_err(|problems| {
        metrics::counter!("gateway_intake_refused_total", "integration" => name.clone())
            .increment(1);
        LegacyError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "ValidationFailed",
            message: format!(
                "{} problem{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            problems,
            envelope: env,
        }
    })?;
    match s
        .gateway
        .submit_with_input(&name, dispatch, &rt.mapping_version, Some(raw))
        .await
    {
        Ok(sub) => {
            let status = if sub.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            Ok(xml_response(
                status,
                env,
                xml_out::receipt(env, &sub.incident),
            ))
        }
        Err(SubmitError::Conflict {
            reference, fields, ..
        }) => Err(LegacyError {
            status: StatusCode::CONFLICT,
            code: "ReferenceConflict",
            message: format!("incident {reference:?} was already submitted with different content"),
            problems: fields
                .into_iter()
                .map(|f| FieldProblem {
                    field: f,
                    message: "differs from the stored incident".into(),
                })
                .collect(),
            envelope: env,
        }),
        Err(e @ SubmitError::ReferenceTaken { .. }) => {
            Err(
                LegacyError::new(StatusCode::CONFLICT, "ReferenceTaken", e.to_string())
                    .in_envelope(env),
            )
        }
        Err(SubmitError::UnknownIntegration(n)) => Err(LegacyError::new(
            StatusCode::NOT_FOUND,
            "UnknownIntegration",
            format!("no integration {n:?}"),
        )
        .in_envelope(env)),
        Err(SubmitError::Store(e)) => Err(store_unavailable(env, e)),
    }
}

async fn cancel(
    State(s): State<LegacyState>,
    LegacyPath((name, reference)): LegacyPath<(String, String)>,
    req: Request,
) -> Result<Response, LegacyError> {
    let (parts, body) = req.into_parts();
    let rt = authenticate(&s, &name, &parts)?;
    let doc = read_xml_body(&s, &parts.headers, body, false).await?;
    let env = doc
        .as_ref()
        .map(envelope_of)
        .unwrap_or_else(|| announced_envelope(&parts.headers));
    let reason = rt
        .plan
        .cancel_reason(doc.as_ref())
        .map_err(|problems| LegacyError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "ValidationFailed",
            message: format!("{} problem(s) in the cancel request", problems.len()),
            problems: problems
                .into_iter()
                .map(|p| FieldProblem {
                    field: p.field,
                    message: p.message,
                })
                .collect(),
            envelope: env,
        })?;
    match s.gateway.cancel(&name, &reference, reason).await {
        Ok(inc) => Ok(xml_response(
            StatusCode::ACCEPTED,
            env,
            xml_out::receipt(env, &inc),
        )),
        Err(CancelError::NotFound(r)) => Err(LegacyError::new(
            StatusCode::NOT_FOUND,
            "UnknownIncident",
            format!("no incident {r:?} in {name}"),
        )
        .in_envelope(env)),
        Err(CancelError::AlreadyTerminal(state, _)) => Err(LegacyError::new(
            StatusCode::CONFLICT,
            "AlreadyTerminal",
            format!("incident {reference:?} is already {state}"),
        )
        .in_envelope(env)),
        Err(CancelError::Store(e)) => Err(store_unavailable(env, e)),
    }
}

/// The integration's WSDL, generated from its mapping, with the service addresses of
/// this gateway as the caller reached it (`Host`, and `X-Forwarded-Proto` behind a proxy).
async fn wsdl(
    State(s): State<LegacyState>,
    LegacyPath(name): LegacyPath<String>,
    req: Request,
) -> Result<Response, LegacyError> {
    let (parts, _) = req.into_parts();
    let rt = authenticate(&s, &name, &parts)?;
    let headers = &parts.headers;
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or("localhost");
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    match crate::mapping::wsdl::wsdl(&rt.plan, &name, &format!("{scheme}://{host}")) {
        Some(doc) => Ok((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            doc,
        )
            .into_response()),
        None => Err(LegacyError::new(
            StatusCode::NOT_FOUND,
            "NoXmlRoutes",
            format!("integration {name:?} takes gRPC field maps (source = \"fields\"); it has no XML routes to describe"),
        )),
    }
}

async fn status(
    State(s): State<LegacyState>,
    LegacyPath((name, reference)): LegacyPath<(String, String)>,
    req: Request,
) -> Result<Response, LegacyError> {
    let (parts, _) = req.into_parts();
    authenticate(&s, &name, &parts)?;
    match s.gateway.get(&name, &reference) {
        Ok(Some(inc)) => Ok(xml_response(
            StatusCode::OK,
            Envelope::Plain,
            xml_out::status(&inc),
        )),
        Ok(None) => Err(LegacyError::new(
            StatusCode::NOT_FOUND,
            "UnknownIncident",
            format!("no incident {reference:?} in {name}"),
        )),
        Err(e) => Err(store_unavailable(Envelope::Plain, e)),
    }
}
