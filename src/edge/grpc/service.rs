//! The `IncidentGateway` service: unary calls and the `CreateIncidents` stream. Each call
//! authenticates, maps its fields through the integration's mapping (the same code the
//! XML routes use), calls the gateway core, and maps the outcome to a response or a
//! `Status` (in `error`).

use super::auth::Credentials;
use super::proto::incident_gateway_server::IncidentGateway;
use super::proto::{self, create_incidents_response};
use super::{convert, error, watch};
use crate::gateway::Gateway;
use crate::intake::{self, LiveIntegrations};
use crate::loomis::message::FieldProblem;
use crate::mapping::SourceKind;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Requests of one `CreateIncidents` stream in flight at once. They commit in the same
/// store flushes (group commit), which is where a stream's throughput comes from; answers
/// still leave in request order.
const CREATE_PIPELINE: usize = 64;

/// The service state: the gateway core, the integrations (keys and mappings), and the
/// shutdown signal that ends long-lived streams.
#[derive(Clone)]
pub(crate) struct GatewayService {
    gateway: Gateway,
    /// Read once per request: a call finishes on the version it started with.
    integrations: LiveIntegrations,
    shutdown: CancellationToken,
}

impl GatewayService {
    pub(crate) fn new(
        gateway: Gateway,
        integrations: LiveIntegrations,
        shutdown: CancellationToken,
    ) -> Self {
        GatewayService {
            gateway,
            integrations,
            shutdown,
        }
    }

    /// One `CreateIncident`, for the unary call and for each request of the stream.
    async fn create(
        &self,
        creds: &Credentials,
        req: proto::CreateIncidentRequest,
    ) -> Result<proto::CreateIncidentResponse, Status> {
        let integrations = self.integrations.get();
        let rt = creds.authorize(&integrations, &req.integration)?;
        if rt.plan.source_kind() != SourceKind::Fields {
            return Err(Status::failed_precondition(format!(
                "integration {:?} maps XML documents, not field maps; use its XML route",
                rt.name
            )));
        }
        let dispatch = intake::from_fields(rt, &req.fields).map_err(|problems| {
            metrics::counter!("gateway_intake_refused_total", "integration" => rt.name.clone())
                .increment(1);
            tracing::info!(integration = %rt.name, problems = problems.len(), "gRPC incident refused by the mapping");
            error::invalid("the incident was refused", &problems)
        })?;
        let fields: std::collections::BTreeMap<_, _> = req.fields.iter().collect();
        let raw = crate::store::query::RawInput::new(
            "grpc-fields",
            serde_json::to_string_pretty(&fields)
                .unwrap_or_default()
                .as_bytes(),
            jiff::Timestamp::now(),
        );
        let sub = self
            .gateway
            .submit_with_input(&rt.name, dispatch, &rt.mapping_version, Some(raw))
            .await
            .map_err(error::submit)?;
        let inc = &sub.incident;
        tracing::info!(integration = %inc.integration, reference = %inc.reference,
            incident_id = inc.incident_id.as_deref().unwrap_or(""), created = sub.created, "gRPC CreateIncident");
        Ok(convert::created(inc, sub.created))
    }
}

fn cancel_problems(problems: Vec<crate::mapping::Problem>) -> Vec<FieldProblem> {
    problems
        .into_iter()
        .map(|p| FieldProblem {
            field: p.field,
            message: p.message,
        })
        .collect()
}

fn reference_required(reference: &str) -> Result<(), Status> {
    if reference.trim().is_empty() {
        return Err(error::invalid(
            "the request is invalid",
            &[FieldProblem {
                field: "incident_reference".into(),
                message: "required".into(),
            }],
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl IncidentGateway for GatewayService {
    async fn create_incident(
        &self,
        request: Request<proto::CreateIncidentRequest>,
    ) -> Result<Response<proto::CreateIncidentResponse>, Status> {
        let creds = Credentials::of(&request);
        self.create(&creds, request.into_inner())
            .await
            .map(Response::new)
    }

    type CreateIncidentsStream = ReceiverStream<Result<proto::CreateIncidentsResponse, Status>>;

    async fn create_incidents(
        &self,
        request: Request<Streaming<proto::CreateIncidentRequest>>,
    ) -> Result<Response<Self::CreateIncidentsStream>, Status> {
        let creds = Credentials::of(&request);
        if !creds.is_known(&self.integrations.get()) {
            return Err(creds.refusal());
        }
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(watch::CHANNEL_CAPACITY);
        let svc = self.clone();
        let pump = async move {
            let creds = &creds;
            let svc_ref = &svc;
            // No new request is read once shutdown begins; those in flight are answered.
            let answers = inbound
                .take_until(svc.shutdown.clone().cancelled_owned())
                .enumerate()
                .map(|(index, item)| async move {
                    match item {
                        Ok(req) => Ok((index, svc_ref.create(creds, req).await)),
                        Err(status) => Err(status),
                    }
                })
                .buffered(CREATE_PIPELINE);
            let mut answers = std::pin::pin!(answers);
            while let Some(answer) = answers.next().await {
                let response = match answer {
                    Ok((index, result)) => proto::CreateIncidentsResponse {
                        index: index as u64,
                        result: Some(match result {
                            Ok(created) => create_incidents_response::Result::Created(created),
                            Err(status) => create_incidents_response::Result::Error(
                                error::request_error(&status),
                            ),
                        }),
                    },
                    // The client's side of the stream broke: nothing more to answer.
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "CreateIncidents stream broken by the client");
                        return;
                    }
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            if svc.shutdown.is_cancelled() {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the gateway is shutting down; send the requests not answered again",
                    )))
                    .await;
            }
        };
        // The stream's requests belong to the call's server span (and trace).
        tokio::spawn(tracing::Instrument::instrument(
            pump,
            tracing::Span::current(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_incident(
        &self,
        request: Request<proto::CancelIncidentRequest>,
    ) -> Result<Response<proto::CancelIncidentResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let integrations = self.integrations.get();
        let rt = creds.authorize(&integrations, &req.integration)?;
        reference_required(&req.incident_reference)?;
        let reason = if req.reason.trim().is_empty() {
            rt.plan
                .cancel_reason_fields(&req.fields)
                .map_err(|p| error::invalid("the cancel was refused", &cancel_problems(p)))?
        } else {
            req.reason.trim().to_string()
        };
        let inc = self
            .gateway
            .cancel(&rt.name, &req.incident_reference, reason)
            .await
            .map_err(|e| error::cancel(&rt.name, e))?;
        tracing::info!(integration = %inc.integration, reference = %inc.reference,
            incident_id = inc.incident_id.as_deref().unwrap_or(""), state = %inc.state, "gRPC CancelIncident");
        Ok(Response::new(proto::CancelIncidentResponse {
            integration: inc.integration.clone(),
            incident_reference: inc.reference.to_string(),
            state: convert::state(inc.state).into(),
            incident_id: inc
                .incident_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: inc.cancel_reason.clone().unwrap_or_default(),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<proto::GetIncidentRequest>,
    ) -> Result<Response<proto::Incident>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let integrations = self.integrations.get();
        let rt = creds.authorize(&integrations, &req.integration)?;
        reference_required(&req.incident_reference)?;
        match self.gateway.get(&rt.name, &req.incident_reference) {
            Ok(Some(inc)) => Ok(Response::new(convert::incident(&inc))),
            Ok(None) => Err(error::no_incident(&rt.name, &req.incident_reference)),
            Err(e) => Err(error::store(e)),
        }
    }

    type WatchUpdatesStream = watch::UpdateStream;

    async fn watch_updates(
        &self,
        request: Request<proto::WatchUpdatesRequest>,
    ) -> Result<Response<Self::WatchUpdatesStream>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let integrations = self.integrations.get();
        let rt = creds.authorize(&integrations, &req.integration)?;
        tracing::info!(integration = %rt.name, after_sequence = req.after_sequence, "gRPC WatchUpdates");
        let stream = watch::start(
            self.gateway.store().clone(),
            rt.name.clone(),
            req.after_sequence,
            self.shutdown.clone(),
        )?;
        Ok(Response::new(stream))
    }
}
