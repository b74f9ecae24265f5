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
    let d = Dispatch {
        message_type: "Dispatch".into(),
        customer_number: rt.customer_number.clone(),
        incident_reference: f.incident_reference,
        device_id: f.device_id,
        contact_name: f.contact_name,
        contact_number: f.contact_number,
        contact_email: f.contact_email.filter(|e| !e.is_empty()),
        subject: f.subject,
        description: f.description,
        fault_code: f.fault_code.filter(|c| !c.is_empty()),
        fault_date_time: f.fault_date_time,
    };
    d.validate().map_err(|e| e.0)?;
    Ok(d)
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
