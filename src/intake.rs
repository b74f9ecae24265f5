//! Intake shared by the front doors: an integration's runtime (settings + compiled
//! mapping), and turning a source document or field map into a validated Dispatch.
//! XML and gRPC callers go through exactly the same mapping and Loomis rules.

use crate::config::Secret;
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
    /// Callers present it as a bearer token.
    pub api_key: Secret,
    pub plan: Arc<MappingPlan>,
}

/// Every integration by name.
pub type Integrations = Arc<HashMap<String, IntegrationRuntime>>;

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
    let fields = rt.plan.map_document(doc).map_err(problems)?;
    dispatch(rt, fields)
}

/// Maps a gRPC field map (keys are the mapping's source paths).
pub fn from_fields(
    rt: &IntegrationRuntime,
    fields: &HashMap<String, String>,
) -> Result<Dispatch, Vec<FieldProblem>> {
    let mapped = rt.plan.map_fields(fields).map_err(problems)?;
    dispatch(rt, mapped)
}
