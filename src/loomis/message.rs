//! The Loomis SafePoint messages, exactly as the vendor's REST/JSON protocol names them.
//!
//! Outbound (`Dispatch`, customer `Cancel`) are typed structs serialized with the spec's
//! field names. Inbound (`ACK`, `NAK`, `Accept`, `Close`, `Cancel`) are parsed from JSON
//! values by hand so that validation can report *every* violation at once, match
//! `MessageType` case-insensitively, accept any RFC 3339 offset, and keep unknown fields
//! for the audit timeline instead of rejecting them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// One field that failed validation, named by its JSON node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    /// The JSON node name from the spec (`IncidentId`, `SLADateTime`, ...).
    pub field: String,
    /// What is wrong with it, in words an operator can act on.
    pub message: String,
}

impl FieldProblem {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one message; never just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), join_problems(.0))]
pub struct ValidationErrors(pub Vec<FieldProblem>);

fn join_problems(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Renders a timestamp in the one form we send to Loomis: UTC, whole seconds, `Z`.
pub fn format_utc(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 date-time with any offset (inbound from Loomis).
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    // jiff's Timestamp parser accepts RFC 3339 / ISO 8601 with a mandatory offset.
    s.trim().parse::<Timestamp>().map_err(|e| {
        format!(
            "{s:?} is not an RFC 3339 date-time with an offset (e.g. 2021-01-16T15:17:48Z) \
             between -9999-01-02T01:59:59Z and 9999-12-30T22:00:00Z: {e}"
        )
    })
}

/// Checks the exact outbound form `YYYY-MM-DDTHH:MM:SSZ`.
pub fn is_exact_utc_z(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[19] == b'Z'
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.parse::<Timestamp>().is_ok()
}

/// The `Dispatch` message: a customer's request for SafePoint service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    #[serde(rename = "MessageType")]
    pub message_type: String,
    #[serde(rename = "CustomerNumber")]
    pub customer_number: String,
    #[serde(rename = "IncidentReference")]
    pub incident_reference: String,
    #[serde(rename = "DeviceId")]
    pub device_id: String,
    #[serde(rename = "ContactName")]
    pub contact_name: String,
    #[serde(rename = "ContactNumber")]
    pub contact_number: String,
    #[serde(
        rename = "ContactEmail",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub contact_email: Option<String>,
    #[serde(rename = "Subject")]
    pub subject: String,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "FaultCode", skip_serializing_if = "Option::is_none", default)]
    pub fault_code: Option<String>,
    /// Always UTC with `Z`, whole seconds (`2021-01-16T15:17:48Z`).
    #[serde(rename = "FaultDateTime")]
    pub fault_date_time: String,
}

#[cfg(test)]
impl Dispatch {
    /// The spec's example Dispatch (without the optional ContactEmail and FaultCode),
    /// for `reference`.
    pub(crate) fn sample(reference: &str) -> Dispatch {
        Dispatch {
            message_type: "Dispatch".into(),
            customer_number: "A123456".into(),
            incident_reference: reference.into(),
            device_id: "UG1234".into(),
            contact_name: "John Smith".into(),
            contact_number: "123-123-1234".into(),
            contact_email: None,
            subject: "Safe Door Issue".into(),
            description: "Cannot open the door".into(),
            fault_code: None,
            fault_date_time: "2021-01-16T15:17:48Z".into(),
        }
    }
}

impl Dispatch {
    /// Applies the Loomis rules for a Dispatch, reporting every violation.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Vec::new();
        if !self.message_type.eq_ignore_ascii_case("Dispatch") {
            p.push(FieldProblem::new("MessageType", "must be \"Dispatch\""));
        }
        for (name, value) in [
            ("CustomerNumber", &self.customer_number),
            ("IncidentReference", &self.incident_reference),
            ("DeviceId", &self.device_id),
            ("ContactName", &self.contact_name),
            ("ContactNumber", &self.contact_number),
            ("Subject", &self.subject),
            ("Description", &self.description),
            ("FaultDateTime", &self.fault_date_time),
        ] {
            if value.trim().is_empty() {
                p.push(FieldProblem::new(name, "required, empty"));
            }
        }
        if !self.fault_date_time.trim().is_empty() && !is_exact_utc_z(&self.fault_date_time) {
            p.push(FieldProblem::new(
                "FaultDateTime",
                format!(
                    "{:?} is not UTC in the form 2021-01-16T15:17:48Z",
                    self.fault_date_time
                ),
            ));
        }
        if let Some(email) = &self.contact_email {
            if !email.is_empty() && !looks_like_email(email) {
                p.push(FieldProblem::new(
                    "ContactEmail",
                    format!("{email:?} is not an email address"),
                ));
            }
        }
        if let Some(code) = &self.fault_code {
            if code.trim().is_empty() {
                p.push(FieldProblem::new(
                    "FaultCode",
                    "present but empty; omit it instead",
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(p))
        }
    }

    /// Parses and validates a Dispatch from JSON, as Loomis (or the simulator) would.
    pub fn from_json(value: &Value) -> Result<Self, ValidationErrors> {
        let obj = as_object(value)?;
        let mut r = Reader::new(obj);
        let d = Dispatch {
            message_type: r.required("MessageType"),
            customer_number: r.required("CustomerNumber"),
            incident_reference: r.required("IncidentReference"),
            device_id: r.required("DeviceId"),
            contact_name: r.required("ContactName"),
            contact_number: r.required("ContactNumber"),
            contact_email: r.optional("ContactEmail"),
            subject: r.required("Subject"),
            description: r.required("Description"),
            fault_code: r.optional("FaultCode"),
            fault_date_time: r.required("FaultDateTime"),
        };
        let mut problems = r.problems;
        if let Err(ValidationErrors(more)) = d.validate() {
            for m in more {
                if !problems.iter().any(|p| p.field == m.field) {
                    problems.push(m);
                }
            }
        }
        if problems.is_empty() {
            Ok(d)
        } else {
            Err(ValidationErrors(problems))
        }
    }
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// The customer `Cancel` message we send for an acknowledged incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCancel {
    #[serde(rename = "MessageType")]
    pub message_type: String,
    #[serde(rename = "CustomerNumber")]
    pub customer_number: String,
    #[serde(rename = "IncidentId")]
    pub incident_id: String,
    #[serde(rename = "IncidentReference")]
    pub incident_reference: String,
    #[serde(rename = "ResponseText")]
    pub response_text: String,
    #[serde(rename = "DateTime")]
    pub date_time: String,
}

impl CustomerCancel {
    /// Parses and validates a customer Cancel from JSON, as Loomis (or the simulator) would.
    pub fn from_json(value: &Value) -> Result<Self, ValidationErrors> {
        let obj = as_object(value)?;
        let mut r = Reader::new(obj);
        let c = CustomerCancel {
            message_type: r.required("MessageType"),
            customer_number: r.required("CustomerNumber"),
            incident_id: r.required("IncidentId"),
            incident_reference: r.required("IncidentReference"),
            response_text: r.required_allow_empty("ResponseText"),
            date_time: r.required("DateTime"),
        };
        if !c.date_time.is_empty() && !is_exact_utc_z(&c.date_time) {
            r.problems.push(FieldProblem::new(
                "DateTime",
                format!(
                    "{:?} is not UTC in the form 2021-01-16T15:17:48Z",
                    c.date_time
                ),
            ));
        }
        if r.problems.is_empty() {
            Ok(c)
        } else {
            Err(ValidationErrors(r.problems))
        }
    }
}

/// The kind of a message Loomis sends us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InboundKind {
    Ack,
    Nak,
    Accept,
    Close,
    Cancel,
}

impl InboundKind {
    /// Matches `MessageType` case-insensitively, as Loomis is not consistent about case.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            ("ack", Self::Ack),
            ("nak", Self::Nak),
            ("accept", Self::Accept),
            ("close", Self::Close),
            ("cancel", Self::Cancel),
        ]
        .into_iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|(_, k)| k)
    }

    /// The spec's spelling of this message type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ACK",
            Self::Nak => "NAK",
            Self::Accept => "Accept",
            Self::Close => "Close",
            Self::Cancel => "Cancel",
        }
    }
}

/// A validated message from Loomis (callback or Dispatch response body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub kind: InboundKind,
    pub customer_number: String,
    pub incident_reference: String,
    /// Present on everything but NAK.
    pub incident_id: Option<String>,
    /// ACK's `Status`.
    pub status: Option<String>,
    /// NAK's `ResponseCode`; any code is accepted, the listed ones are known.
    pub response_code: Option<String>,
    pub response_text: Option<String>,
    /// Accept's `SLADateTime`, normalized to UTC.
    pub sla_date_time: Option<Timestamp>,
    /// `DateTime` of Accept, Close and Cancel, normalized to UTC.
    pub date_time: Option<Timestamp>,
    /// The message exactly as received, unknown fields included, for the audit timeline.
    pub raw: Map<String, Value>,
}

/// NAK response codes the spec lists (others are accepted as-is).
pub const KNOWN_NAK_CODES: &[&str] = &[
    "InvalidFault",
    "DeviceNotFound",
    "Duplicate",
    "MissingAmounts",
];

impl InboundMessage {
    /// Parses raw bytes (the callback body or a Dispatch response body).
    pub fn parse(bytes: &[u8]) -> Result<Self, ValidationErrors> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ValidationErrors(vec![FieldProblem::new(
                "(body)",
                format!("not valid JSON: {e}"),
            )])
        })?;
        Self::from_value(value)
    }

    /// Validates a JSON value as one of the five inbound messages, naming every bad field.
    pub fn from_value(value: Value) -> Result<Self, ValidationErrors> {
        let Value::Object(raw) = value else {
            return Err(not_an_object());
        };
        let mut r = Reader::new(&raw);
        let mt = r.required("MessageType");
        let kind = match InboundKind::parse(&mt) {
            Some(k) => k,
            None => {
                if !mt.is_empty() {
                    r.problems.push(FieldProblem::new(
                        "MessageType",
                        format!("{mt:?} is not one of ACK, NAK, Accept, Close, Cancel"),
                    ));
                }
                return Err(ValidationErrors(r.problems));
            }
        };
        let customer_number = r.required("CustomerNumber");
        let incident_reference = r.required("IncidentReference");
        let mut msg = InboundMessage {
            kind,
            customer_number,
            incident_reference,
            incident_id: None,
            status: None,
            response_code: None,
            response_text: None,
            sla_date_time: None,
            date_time: None,
            raw: Map::new(),
        };
        match kind {
            InboundKind::Ack => {
                msg.incident_id = Some(r.required("IncidentId"));
                msg.status = Some(r.required("Status"));
                msg.response_text = r.optional("ResponseText");
            }
            InboundKind::Nak => {
                msg.incident_id = r.optional("IncidentId");
                msg.response_code = Some(r.required("ResponseCode"));
                msg.response_text = Some(r.required_allow_empty("ResponseText"));
            }
            InboundKind::Accept => {
                msg.incident_id = Some(r.required("IncidentId"));
                msg.sla_date_time = r.required_time("SLADateTime");
                msg.response_text = r.optional("ResponseText");
                msg.date_time = r.optional_time("DateTime");
            }
            InboundKind::Close | InboundKind::Cancel => {
                msg.incident_id = Some(r.required("IncidentId"));
                msg.response_text = Some(r.required_allow_empty("ResponseText"));
                msg.date_time = r.required_time("DateTime");
            }
        }
        if !r.problems.is_empty() {
            return Err(ValidationErrors(r.problems));
        }
        msg.raw = raw;
        Ok(msg)
    }

    /// A stable fingerprint of what the message *says* (not how it was spelled), used
    /// to recognise exact duplicates: the same kind with the same content.
    pub fn fingerprint(&self) -> String {
        // `kind|{...}`: the message without MessageType as compact JSON, written field by
        // field rather than by copying the map. serde_json::Map is ordered by key (no
        // preserve_order feature), so this is canonical; stored fingerprints keep this form.
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"|{");
        let mut first = true;
        for (k, v) in self.raw.iter().filter(|(k, _)| *k != "MessageType") {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, k).expect("a string serializes");
            out.push(b':');
            serde_json::to_writer(&mut out, v).expect("a JSON value serializes");
        }
        out.push(b'}');
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

fn as_object(value: &Value) -> Result<&Map<String, Value>, ValidationErrors> {
    value.as_object().ok_or_else(not_an_object)
}

fn not_an_object() -> ValidationErrors {
    ValidationErrors(vec![FieldProblem::new("(body)", "must be a JSON object")])
}

/// Reads fields out of a JSON object while collecting every problem.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    problems: Vec<FieldProblem>,
}

impl<'a> Reader<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            problems: Vec::new(),
        }
    }

    fn string(&mut self, name: &str, required: bool, allow_empty: bool) -> Option<String> {
        match self.obj.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.problems
                        .push(FieldProblem::new(name, "required, missing"));
                }
                None
            }
            Some(Value::String(s)) => {
                if required && !allow_empty && s.trim().is_empty() {
                    self.problems
                        .push(FieldProblem::new(name, "required, empty"));
                }
                Some(s.clone())
            }
            Some(other) => {
                self.problems.push(FieldProblem::new(
                    name,
                    format!("must be a string, found {}", json_type(other)),
                ));
                None
            }
        }
    }

    fn required(&mut self, name: &str) -> String {
        self.string(name, true, false).unwrap_or_default()
    }

    fn required_allow_empty(&mut self, name: &str) -> String {
        self.string(name, true, true).unwrap_or_default()
    }

    fn optional(&mut self, name: &str) -> Option<String> {
        self.string(name, false, true)
    }

    fn time(&mut self, name: &str, required: bool) -> Option<Timestamp> {
        let s = self.string(name, required, false)?;
        if s.trim().is_empty() {
            return None;
        }
        match parse_rfc3339(&s) {
            Ok(ts) => Some(ts),
            Err(e) => {
                self.problems.push(FieldProblem::new(name, e));
                None
            }
        }
    }

    fn required_time(&mut self, name: &str) -> Option<Timestamp> {
        self.time(name, true)
    }

    fn optional_time(&mut self, name: &str) -> Option<Timestamp> {
        self.time(name, false)
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(e: &ValidationErrors) -> Vec<&str> {
        e.0.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn dispatch_serializes_with_spec_names_and_omits_absent_optionals() {
        let d = Dispatch::sample("100001");
        d.validate().unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            json!({"MessageType":"Dispatch","CustomerNumber":"A123456","IncidentReference":"100001",
                "DeviceId":"UG1234","ContactName":"John Smith","ContactNumber":"123-123-1234",
                "Subject":"Safe Door Issue","Description":"Cannot open the door",
                "FaultDateTime":"2021-01-16T15:17:48Z"})
        );
        assert_eq!(Dispatch::from_json(&v).unwrap(), d);
    }

    #[test]
    fn dispatch_validation_reports_every_problem() {
        let v = json!({"MessageType":"Dispatch","CustomerNumber":"A1","IncidentReference":"",
            "DeviceId":5,"ContactName":"x","Subject":"s","Description":"d",
            "ContactEmail":"nope","FaultDateTime":"2021-01-16T15:17:48+01:00"});
        let e = Dispatch::from_json(&v).unwrap_err();
        let f = fields(&e);
        for want in [
            "IncidentReference",
            "DeviceId",
            "ContactNumber",
            "ContactEmail",
            "FaultDateTime",
        ] {
            assert!(f.contains(&want), "{want} missing from {e}");
        }
    }

    #[test]
    fn inbound_ack_matches_type_case_insensitively_and_keeps_unknown_fields() {
        let m = InboundMessage::from_value(json!({"MessageType":"ack","CustomerNumber":"A123456",
            "IncidentId":"INC400300","IncidentReference":"100001","Status":"Open","Extra":1}))
        .unwrap();
        assert_eq!(m.kind, InboundKind::Ack);
        assert_eq!(m.incident_id.as_deref(), Some("INC400300"));
        assert_eq!(m.raw.get("Extra"), Some(&json!(1)));
    }

    #[test]
    fn inbound_requires_per_kind_fields_and_names_all() {
        let e = InboundMessage::from_value(json!({"MessageType":"Close","IncidentReference":"1"}))
            .unwrap_err();
        assert_eq!(
            fields(&e),
            vec!["CustomerNumber", "IncidentId", "ResponseText", "DateTime"]
        );
        let e = InboundMessage::from_value(json!({"MessageType":"Accept","CustomerNumber":"A",
            "IncidentReference":"1","IncidentId":"I","SLADateTime":"tomorrow"}))
        .unwrap_err();
        assert_eq!(fields(&e), vec!["SLADateTime"]);
        let e = InboundMessage::from_value(json!({"MessageType":"Hello"})).unwrap_err();
        assert_eq!(fields(&e), vec!["MessageType"]);
        let e = InboundMessage::from_value(json!([1])).unwrap_err();
        assert_eq!(fields(&e), vec!["(body)"]);
    }

    #[test]
    fn inbound_times_accept_any_offset_and_normalize() {
        let m = InboundMessage::from_value(json!({"MessageType":"Accept","CustomerNumber":"A",
            "IncidentReference":"1","IncidentId":"I","SLADateTime":"2020-09-26T18:45:49+02:00"}))
        .unwrap();
        assert_eq!(format_utc(m.sla_date_time.unwrap()), "2020-09-26T16:45:49Z");
    }

    #[test]
    fn nak_accepts_unlisted_codes() {
        let m = InboundMessage::from_value(json!({"MessageType":"NAK","CustomerNumber":"A",
            "IncidentReference":"1","ResponseCode":"SomethingNew","ResponseText":""}))
        .unwrap();
        assert_eq!(m.response_code.as_deref(), Some("SomethingNew"));
    }

    #[test]
    fn fingerprint_ignores_spelling_of_message_type_and_key_order() {
        let a = InboundMessage::from_value(json!({"MessageType":"ACK","CustomerNumber":"A",
            "IncidentId":"I","IncidentReference":"1","Status":"Open"}))
        .unwrap();
        let b = InboundMessage::from_value(json!({"Status":"Open","IncidentReference":"1",
            "IncidentId":"I","CustomerNumber":"A","MessageType":"Ack"}))
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn fingerprint_keeps_the_stored_form() {
        // Incidents store fingerprints of the messages they have seen; a new form would
        // let a duplicate from before an upgrade through.
        let m = InboundMessage::from_value(json!({"MessageType":"Close","CustomerNumber":"A",
            "IncidentId":"I","IncidentReference":"1","ResponseCode":"FIXED",
            "ResponseText":"Door \"fixed\" ✓\n","DateTime":"2021-01-16T15:17:48Z",
            "Extra":{"n":[1,2.5,null,true]}}))
        .unwrap();
        let mut canon = m.raw.clone();
        canon.remove("MessageType");
        assert_eq!(m.fingerprint(), format!("Close|{}", Value::Object(canon)));
        assert_eq!(
            m.fingerprint(),
            r#"Close|{"CustomerNumber":"A","DateTime":"2021-01-16T15:17:48Z","Extra":{"n":[1,2.5,null,true]},"IncidentId":"I","IncidentReference":"1","ResponseCode":"FIXED","ResponseText":"Door \"fixed\" ✓\n"}"#
        );
    }

    #[test]
    fn exact_utc_form() {
        assert!(is_exact_utc_z("2021-01-16T15:17:48Z"));
        assert!(!is_exact_utc_z("2021-01-16T15:17:48.5Z"));
        assert!(!is_exact_utc_z("2021-01-16T15:17:48+00:00"));
        assert!(!is_exact_utc_z("2021-13-16T15:17:48Z"));
    }
}
