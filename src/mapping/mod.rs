//! The mapping engine: compiles integration mapping files into plans and applies them.
//!
//! A mapping file (TOML, one per integration, documented in `mappings/README.md`) says
//! where each Loomis Dispatch field comes from in the legacy tool's XML (or in a gRPC
//! field map), how the value is cleaned up, where a cancel reason comes from, and what
//! XML to post back for each update. [`MappingPlan::load`] compiles it once, reporting
//! every problem with file, line and column; the plan is then applied to any number of
//! documents, concurrently, without I/O.
//!
//! Code map:
//! * [`xml`]: untrusted bytes to a small namespace-resolved tree, with hard limits and
//!   SOAP detection.
//! * `path`: compiled source paths; `transform`: value transforms; `datetime`:
//!   date-time parsing and writing;
//!   `plan`: applying a field; `compile`: TOML to plan; `outbound`: update documents.
//! * [`wsdl`]: the WSDL 1.1 + XSD of an XML integration, generated from its plan.
//! * [`check`]: the `mapping check` / `mapping test` commands (the only file I/O).
//!
//! Invariants: applying a plan never panics and never does I/O; every problem found
//! in a document is reported, not just the first; the only time zone data used comes
//! from the mapping file, never from the host's local zone.

use crate::loomis::message::{Dispatch, FieldProblem};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

pub mod check;
mod compile;
mod datetime;
pub use compile::CANCEL_REASON_LIMIT;
pub(crate) use transform::truncate;
mod outbound;
mod path;
mod plan;
mod transform;
pub mod wsdl;
pub mod xml;

/// How many characters of a value a problem repeats: an error body (and a gRPC status,
/// which travels in headers) must stay small however large the value was.
pub(crate) const QUOTE_LIMIT: usize = 160;

/// `value` quoted for a problem message as it was received, cut to [`QUOTE_LIMIT`]
/// characters and marked `…` when cut.
pub(crate) fn quote(value: &str) -> String {
    let kept = truncate(std::borrow::Cow::Borrowed(value), QUOTE_LIMIT);
    if kept.len() == value.len() {
        format!("{value:?}")
    } else {
        format!("{:?}… ({} characters)", &*kept, value.chars().count())
    }
}

#[cfg(test)]
mod tests;

use outbound::OutboundPlan;
use path::SourcePath;
use plan::{FieldPlan, Input, Overflow};

/// The kind of input a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// XML documents (with or without a SOAP envelope): `source = "xml"`.
    Xml,
    /// gRPC `map<string, string>` fields: `source = "fields"`.
    Fields,
}

/// A Loomis Dispatch field that a mapping fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DispatchField {
    /// `IncidentReference`: the customer's incident number.
    IncidentReference,
    /// `DeviceId`: the safe's serial number.
    DeviceId,
    /// `ContactName`: full name of the on-site contact.
    ContactName,
    /// `ContactNumber`: phone number of the on-site contact.
    ContactNumber,
    /// `ContactEmail` (optional).
    ContactEmail,
    /// `Subject`: short description.
    Subject,
    /// `Description`: description of the issue.
    Description,
    /// `FaultCode` (optional).
    FaultCode,
    /// `FaultDateTime`: when the problem started, UTC RFC 3339 with `Z`.
    FaultDateTime,
}

impl DispatchField {
    /// Every field, in Loomis document order.
    pub const ALL: &'static [DispatchField] = &[
        DispatchField::IncidentReference,
        DispatchField::DeviceId,
        DispatchField::ContactName,
        DispatchField::ContactNumber,
        DispatchField::ContactEmail,
        DispatchField::Subject,
        DispatchField::Description,
        DispatchField::FaultCode,
        DispatchField::FaultDateTime,
    ];

    /// The Loomis JSON name.
    pub fn name(self) -> &'static str {
        match self {
            DispatchField::IncidentReference => "IncidentReference",
            DispatchField::DeviceId => "DeviceId",
            DispatchField::ContactName => "ContactName",
            DispatchField::ContactNumber => "ContactNumber",
            DispatchField::ContactEmail => "ContactEmail",
            DispatchField::Subject => "Subject",
            DispatchField::Description => "Description",
            DispatchField::FaultCode => "FaultCode",
            DispatchField::FaultDateTime => "FaultDateTime",
        }
    }

    /// Whether Loomis requires the field.
    pub fn required(self) -> bool {
        !matches!(self, DispatchField::ContactEmail | DispatchField::FaultCode)
    }

    /// The length limit the gateway applies (characters) and whether longer values are
    /// truncated (free text) or refused (identifiers). Loomis publishes no limits;
    /// these are conservative and documented in `mappings/README.md`.
    pub fn max_chars(self) -> Option<(usize, bool)> {
        self.limit().map(|(n, o)| (n, o == Overflow::Truncate))
    }

    fn limit(self) -> Option<(usize, Overflow)> {
        Some(match self {
            DispatchField::IncidentReference => (64, Overflow::Reject),
            DispatchField::DeviceId => (64, Overflow::Reject),
            DispatchField::ContactName => (100, Overflow::Truncate),
            DispatchField::ContactNumber => (40, Overflow::Reject),
            DispatchField::ContactEmail => (254, Overflow::Reject),
            DispatchField::Subject => (100, Overflow::Truncate),
            DispatchField::Description => (4000, Overflow::Truncate),
            DispatchField::FaultCode => (32, Overflow::Reject),
            DispatchField::FaultDateTime => return None,
        })
    }
}

/// The Dispatch fields a mapping produced (the gateway adds `MessageType` and
/// `CustomerNumber`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DispatchFields {
    /// `IncidentReference`.
    pub incident_reference: String,
    /// `DeviceId`.
    pub device_id: String,
    /// `ContactName`.
    pub contact_name: String,
    /// `ContactNumber`.
    pub contact_number: String,
    /// `ContactEmail`, when the mapping found one.
    pub contact_email: Option<String>,
    /// `Subject`.
    pub subject: String,
    /// `Description`.
    pub description: String,
    /// `FaultCode`, when the mapping found one.
    pub fault_code: Option<String>,
    /// `FaultDateTime`, RFC 3339 UTC with `Z`, whole seconds.
    pub fault_date_time: String,
}

impl DispatchFields {
    /// The Dispatch these fields make for `customer_number`, as the gateway sends it: an
    /// optional field mapped to an empty value is left out. The one place that lists the
    /// Dispatch's fields for a mapping.
    pub fn into_dispatch(self, customer_number: &str) -> Dispatch {
        Dispatch {
            message_type: "Dispatch".into(),
            customer_number: customer_number.to_string(),
            incident_reference: self.incident_reference,
            device_id: self.device_id,
            contact_name: self.contact_name,
            contact_number: self.contact_number,
            contact_email: self.contact_email.filter(|e| !e.is_empty()),
            subject: self.subject,
            description: self.description,
            fault_code: self.fault_code.filter(|c| !c.is_empty()),
            fault_date_time: self.fault_date_time,
        }
    }

    /// [`DispatchFields::into_dispatch`], then the Loomis rules: exactly what the
    /// gateway's intake accepts or refuses (with 422 / INVALID_ARGUMENT), so that
    /// `mapping test` and the golden fixtures cannot approve what the gateway refuses.
    pub fn checked_dispatch(self, customer_number: &str) -> Result<Dispatch, Vec<FieldProblem>> {
        let d = self.into_dispatch(customer_number);
        d.validate().map_err(|e| e.0)?;
        Ok(d)
    }

    /// The Loomis Dispatch JSON object for these fields.
    pub fn to_loomis_json(&self, customer_number: &str) -> serde_json::Value {
        serde_json::to_value(self.clone().into_dispatch(customer_number))
            .unwrap_or(serde_json::Value::Null)
    }
}

/// One problem found while applying a mapping: which Loomis field, what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The Loomis field (`DeviceId`), `CancelReason`, an outbound element path, or
    /// `mapping` for problems with the mapping as a whole.
    pub field: String,
    /// What was wrong, e.g. `required, missing at /incident/cmdb_ci/serial_number`.
    pub message: String,
    /// The source the value was read from (paths, `constant`, or the template).
    pub source: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One error in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file (or origin given to [`MappingPlan::from_str`]).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What was wrong and what is expected.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every error found in a mapping file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors {
    /// The errors; never empty.
    pub errors: Vec<LoadError>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Why an outbound document could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Values could not be produced (e.g. a status with no lookup entry).
    #[error("{}", problems_text(.0))]
    Problems(Vec<Problem>),
    /// The XML writer failed (cannot happen when writing to memory; kept typed).
    #[error("writing XML failed: {0}")]
    Write(String),
}

fn problems_text(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the outbound renderer knows about one update (a view of the stored update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateView {
    /// Per-integration sequence number.
    pub sequence: u64,
    /// Integration name.
    pub integration: String,
    /// The customer's incident reference.
    pub incident_reference: String,
    /// Loomis `IncidentId`, once known.
    pub incident_id: Option<String>,
    /// Loomis customer number.
    pub customer_number: String,
    /// `ACK`, `NAK`, `ACCEPT`, `CLOSE`, `CANCEL`, `REJECTED` or `DELIVERY_FAILED`.
    pub kind: String,
    /// `Queued`, `Sent`, `Acknowledged`, `Accepted`, `CancelRequested`, `Closed`,
    /// `Cancelled`, `Rejected` or `Failed`.
    pub state: String,
    /// Loomis `ResponseCode` (NAK) or the gateway's code.
    pub response_code: Option<String>,
    /// Loomis `ResponseText` or the gateway's explanation.
    pub response_text: Option<String>,
    /// Loomis `SLADateTime` (Accept).
    pub sla_time: Option<jiff::Timestamp>,
    /// Loomis `DateTime` of the event.
    pub event_time: Option<jiff::Timestamp>,
    /// When the gateway received the event.
    pub received_at: jiff::Timestamp,
}

/// A compiled mapping file. Immutable, `Send + Sync`, cheap to share in an `Arc`.
#[derive(Debug, Clone)]
pub struct MappingPlan {
    origin: String,
    name: Option<String>,
    source: SourceKind,
    /// Compiled fields in Loomis order; optional fields the file omits are absent.
    fields: Vec<(DispatchField, FieldPlan)>,
    cancel: Option<FieldPlan>,
    default_cancel_reason: String,
    outbound: OutboundPlan,
    has_outbound: bool,
    /// The headers of an update post (content type, SOAPAction), prepared once.
    update_headers: Vec<(&'static str, String)>,
}

impl MappingPlan {
    /// Reads and compiles a mapping file, and reads the secrets it names (`secret_env`)
    /// from the environment: an unset or empty variable is a load error at the line of
    /// its `secret_env`.
    pub fn load(path: &Path) -> Result<MappingPlan, LoadErrors> {
        Self::load_with_secrets(path, &env_secret)
    }

    /// [`MappingPlan::load`] with the secrets taken from `secrets` (variable name to
    /// value) instead of the environment; `mapping check` and `mapping test` pass
    /// [`placeholder_secret`], so that fixtures never hold a secret.
    pub fn load_with_secrets(
        path: &Path,
        secrets: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MappingPlan, LoadErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_str_with_secrets(&text, &origin, secrets),
            Err(e) => Err(LoadErrors {
                errors: vec![LoadError {
                    file: origin,
                    line: 1,
                    column: 1,
                    message: match std::env::current_dir() {
                        // A relative path is read from the working directory, not from
                        // the config file's: say which directory that was.
                        Ok(cwd) if path.is_relative() => format!(
                            "cannot read the mapping file {}: {e}",
                            cwd.join(path).display()
                        ),
                        _ => format!("cannot read the mapping file: {e}"),
                    },
                }],
            }),
        }
    }

    /// Compiles mapping text; `origin` names it in errors (usually the file path).
    /// Secrets come from the environment, as in [`MappingPlan::load`].
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, origin: &str) -> Result<MappingPlan, LoadErrors> {
        Self::from_str_with_secrets(text, origin, &env_secret)
    }

    /// [`MappingPlan::from_str`] with the secrets taken from `secrets`.
    pub fn from_str_with_secrets(
        text: &str,
        origin: &str,
        secrets: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MappingPlan, LoadErrors> {
        let mut plan = compile::compile(text, origin)?;
        let mut errors = Vec::new();
        for s in plan.outbound.secrets_mut() {
            match secrets(&s.env).filter(|v| !v.is_empty()) {
                Some(v) => s.value = Some(v.into()),
                None => errors.push(LoadError {
                    file: origin.to_string(),
                    line: s.line,
                    column: s.column,
                    message: format!(
                        "secret_env: the environment variable {} is not set (or empty); set it before starting the gateway",
                        s.env
                    ),
                }),
            }
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(LoadErrors { errors })
        }
    }

    /// The environment variables the mapping reads secrets from (`secret_env`).
    pub fn secret_envs(&self) -> Vec<String> {
        let mut copy = self.outbound.clone();
        let mut names: Vec<String> = copy.secrets_mut().iter().map(|s| s.env.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Where the plan came from (as given to `load`/`from_str`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The mapping's `name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Which input the mapping reads.
    pub fn source_kind(&self) -> SourceKind {
        self.source
    }

    /// Whether the file has an `[outbound]` part (otherwise the default document is used).
    pub fn has_outbound(&self) -> bool {
        self.has_outbound
    }

    /// Maps an XML document to Dispatch fields, or returns every problem found.
    pub fn map_document(&self, doc: &xml::Document) -> Result<DispatchFields, Vec<Problem>> {
        if self.source != SourceKind::Xml {
            return Err(vec![kind_problem("XML documents", "fields")]);
        }
        self.map(Input::Xml(doc)).map_err(|mut problems| {
            problems.extend(self.root_mismatch(doc));
            problems
        })
    }

    /// When the document's payload root is not the element the mapping's absolute paths
    /// start at, says so: otherwise every field just reads "missing", and the likeliest
    /// cause (another namespace, or none) stays hidden.
    fn root_mismatch(&self, doc: &xml::Document) -> Option<Problem> {
        let mut expected: Vec<&path::Name> = Vec::new();
        for (_, f) in &self.fields {
            let paths = f.source.paths();
            for p in paths {
                if let SourcePath::Xml(x) = p {
                    if let (true, Some(first)) = (x.absolute, x.steps.first()) {
                        if !expected.contains(&first) {
                            expected.push(first);
                        }
                    }
                }
            }
        }
        let root = doc.payload_root();
        let (ns, local) = (root.namespace(), root.local_name());
        if expected.is_empty() || expected.iter().any(|n| *n.ns == *ns && *n.local == *local) {
            return None;
        }
        let describe = |ns: &str| {
            if ns.is_empty() {
                "in no namespace".to_string()
            } else {
                format!("in namespace {ns:?}")
            }
        };
        let want: Vec<String> = expected
            .iter()
            .map(|n| format!("<{}> {}", n.local, describe(&n.ns)))
            .collect();
        Some(Problem {
            field: "document".into(),
            message: format!(
                "the payload root is <{local}> {}, but the mapping's paths start at {}: \
                 check the root element, default_namespace and [namespaces]",
                describe(ns),
                want.join(" or ")
            ),
            source: "/".into(),
        })
    }

    /// Maps gRPC fields to Dispatch fields, or returns every problem found.
    pub fn map_fields(
        &self,
        fields: &HashMap<String, String>,
    ) -> Result<DispatchFields, Vec<Problem>> {
        if self.source != SourceKind::Fields {
            return Err(vec![kind_problem("gRPC fields", "xml")]);
        }
        self.map(Input::Fields(fields))
    }

    fn map(&self, input: Input<'_>) -> Result<DispatchFields, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut out = DispatchFields::default();
        for (field, plan) in &self.fields {
            let value = plan.apply(input, &mut problems);
            let slot = match field {
                DispatchField::IncidentReference => &mut out.incident_reference,
                DispatchField::DeviceId => &mut out.device_id,
                DispatchField::ContactName => &mut out.contact_name,
                DispatchField::ContactNumber => &mut out.contact_number,
                DispatchField::Subject => &mut out.subject,
                DispatchField::Description => &mut out.description,
                DispatchField::FaultDateTime => &mut out.fault_date_time,
                DispatchField::ContactEmail => {
                    out.contact_email = value;
                    continue;
                }
                DispatchField::FaultCode => {
                    out.fault_code = value;
                    continue;
                }
            };
            if let Some(v) = value {
                *slot = v;
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The cancel reason for a customer cancel with an optional XML body: the mapped
    /// `[cancel]` value, else `default_reason`, else "Cancelled by customer".
    pub fn cancel_reason(&self, doc: Option<&xml::Document>) -> Result<String, Vec<Problem>> {
        self.reason(doc.map_or(Input::Nothing, Input::Xml))
    }

    /// The cancel reason for a cancel that came with gRPC fields.
    pub fn cancel_reason_fields(
        &self,
        fields: &HashMap<String, String>,
    ) -> Result<String, Vec<Problem>> {
        self.reason(Input::Fields(fields))
    }

    fn reason(&self, input: Input<'_>) -> Result<String, Vec<Problem>> {
        let Some(plan) = &self.cancel else {
            return Ok(self.default_cancel_reason.clone());
        };
        let mut problems = Vec::new();
        let value = plan.apply(input, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(value.unwrap_or_else(|| self.default_cancel_reason.clone()))
    }

    /// The headers an update post carries: the content type of the outbound document
    /// (`text/xml` plus the `SOAPAction` for SOAP 1.1, `application/soap+xml` with an
    /// `action` parameter when one is set for SOAP 1.2, `application/xml` otherwise).
    /// The SOAPAction is `""` unless the mapping sets `[outbound] soap_action`.
    pub fn update_headers(&self) -> Vec<(&'static str, &str)> {
        self.update_headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect()
    }

    /// Renders the outbound XML document for an update (the mapping's `[outbound]`, or
    /// the default `<IncidentUpdate>` document).
    pub fn render_update(&self, update: &UpdateView) -> Result<Vec<u8>, RenderError> {
        self.outbound.render(update)
    }
}

/// Renders the default outbound document (the one used by mappings without
/// `[outbound]`), e.g. for integrations that have no mapping-specific needs.
pub fn render_default_update(update: &UpdateView) -> Result<Vec<u8>, RenderError> {
    OutboundPlan::default_document().render(update)
}

/// A secret from the process environment.
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The stand-in `mapping check` and `mapping test` use for a secret: the variable's
/// name between asterisks (`***REMEDY_PASSWORD***`), so that rendered fixtures show
/// where a secret goes without holding one.
pub fn placeholder_secret(name: &str) -> Option<String> {
    Some(format!("***{name}***"))
}

fn kind_problem(got: &str, declared: &str) -> Problem {
    Problem {
        field: "mapping".to_string(),
        message: format!("this mapping has source = \"{declared}\" and cannot map {got}"),
        source: String::new(),
    }
}
