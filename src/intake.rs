//! Intake shared by the front doors: an integration's runtime (settings + compiled
//! mapping), and turning a source document or field map into a validated Dispatch.
//! XML and gRPC callers go through exactly the same mapping and Loomis rules.

use crate::config::{CertName, PeerIdentity, Secret};
use crate::live::Live;
use crate::loomis::message::{Dispatch, FieldProblem};
use crate::mapping::{xml::Document, DispatchFields, MappingPlan, Problem};
use std::collections::HashMap;
use std::sync::Arc;

/// One integration as the front doors see it.
#[derive(Clone)]
pub struct IntegrationRuntime {
    pub name: String,
    /// Loomis CustomerNumber sent with every Dispatch of this integration.
    pub customer_number: String,
    /// Callers present it as a bearer token. Empty: no key (certificate only).
    pub api_key: Secret,
    /// A verified client certificate carrying this name authenticates a caller.
    pub client_cert: Option<CertName>,
    pub plan: Arc<MappingPlan>,
    /// Which mapping this is (its file's digest and the configuration generation),
    /// recorded on every incident it maps.
    pub mapping_version: Arc<str>,
}

impl IntegrationRuntime {
    /// Whether the caller's verified client certificate authenticates it here.
    pub fn cert_admits(&self, peer: Option<&PeerIdentity>) -> bool {
        matches!((&self.client_cert, peer), (Some(name), Some(p)) if name.matches(p))
    }

    /// A refusal reason when the caller presented a verified certificate that is not
    /// this integration's (it may be another integration's): such a caller is refused
    /// even with a valid key, as the certificate says it is someone else.
    pub fn cert_mismatch(&self, peer: Option<&PeerIdentity>) -> Option<String> {
        match (&self.client_cert, peer) {
            (Some(name), Some(p)) if !name.matches(p) => Some(format!(
                "the client certificate ({p}) does not identify integration {:?} (it expects {name})",
                self.name
            )),
            _ => None,
        }
    }

    /// Whether the integration has a bearer key at all.
    pub fn has_key(&self) -> bool {
        !self.api_key.expose().is_empty()
    }
}

/// Every integration by name, as of one configuration generation.
pub type Integrations = Arc<HashMap<String, IntegrationRuntime>>;

/// The integrations in force: reload replaces them; each request reads one snapshot.
pub type LiveIntegrations = Live<HashMap<String, IntegrationRuntime>>;

fn problems(p: Vec<Problem>) -> Vec<FieldProblem> {
    p.into_iter()
        .map(|p| FieldProblem {
            field: p.field,
            message: p.message,
        })
        .collect()
}

/// Completes mapped fields into a Dispatch and applies the Loomis rules.
pub fn dispatch(rt: &IntegrationRuntime, f: DispatchFields) -> Result<Dispatch, Vec<FieldProblem>> {
    f.checked_dispatch(&rt.customer_number)
}

/// Maps an XML (or SOAP) document through the integration's mapping.
pub fn from_document(
    rt: &IntegrationRuntime,
    doc: &Document,
) -> Result<Dispatch, Vec<FieldProblem>> {
    let _span = crate::trace::span("mapping").entered();
    let fields = rt.plan.map_document(doc).map_err(problems)?;
    dispatch(rt, fields)
}

/// Maps a gRPC field map (keys are the mapping's source paths).
pub fn from_fields(
    rt: &IntegrationRuntime,
    fields: &HashMap<String, String>,
) -> Result<Dispatch, Vec<FieldProblem>> {
    let _span = crate::trace::span("mapping").entered();
    let mapped = rt.plan.map_fields(fields).map_err(problems)?;
    dispatch(rt, mapped)
}
