//! WSDL 1.1 with an embedded XML Schema for an XML integration, generated from its
//! compiled mapping, so that SOAP tools (SoapUI, Remedy, ServiceNow) can generate a
//! client for the gateway's XML routes.
//!
//! The schema describes what the mapping knows: the payload root its absolute paths
//! start at, every element and attribute its Dispatch fields read (each annotated with
//! the Loomis field it feeds), the cancel body's root and elements, and the gateway's own
//! `Receipt`, `Incident` (status) and `Error` documents. Every mapped element is
//! optional in the schema: the gateway reports what is missing field by field, and it
//! ignores elements the mapping does not read, so a tool may send more than the schema
//! lists. A step with a predicate (`DynamicField[Name='SafeSerial']`) becomes a repeated
//! element whose key child is documented with the values the mapping selects.
//!
//! Operations and where they go (one port each, because the routes differ):
//! * `CreateIncident` (SOAP 1.1, document/literal): `POST {endpoint}/v1/integrations/{name}/incidents`;
//! * `CancelIncident` (SOAP 1.1): `POST .../incidents/{reference}/cancel`, the address
//!   holds `{reference}` for the caller to fill in;
//! * `GetIncident` (HTTP GET binding): `GET .../incidents/{reference}`.
//!
//! A pure function of the plan: no I/O. Names of the mapping's namespaces are not kept
//! in the plan, so the document uses its own prefixes (`ns1`, `ns2`, ...).

//!
//! Files: this one writes the document; `shape` derives the described documents from
//! the plan.

mod shape;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::path::Name;
use super::{MappingPlan, SourceKind};
use shape::{Node, Shape};

const WSDL_NS: &str = "http://schemas.xmlsoap.org/wsdl/";
const SOAP_BINDING_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const HTTP_BINDING_NS: &str = "http://schemas.xmlsoap.org/wsdl/http/";
const MIME_NS: &str = "http://schemas.xmlsoap.org/wsdl/mime/";
const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";
const SOAP_HTTP_TRANSPORT: &str = "http://schemas.xmlsoap.org/soap/http";

/// The WSDL 1.1 document for `integration`'s XML routes on the gateway at `endpoint`
/// (its base URL, e.g. `https://gateway.example`), or `None` for a `source = "fields"`
/// (gRPC) mapping, which has no XML routes.
pub fn wsdl(plan: &MappingPlan, integration: &str, endpoint: &str) -> Option<String> {
    if plan.source_kind() != SourceKind::Xml {
        return None;
    }
    let create = Shape::from_fields(
        plan.fields.iter().map(|(f, p)| (f.name(), p)),
        Name {
            ns: "".into(),
            local: "CreateIncident".into(),
        },
    );
    let cancel = Shape::from_fields(
        plan.cancel.iter().map(|p| ("CancelReason", p)),
        Name {
            ns: "".into(),
            local: "CancelIncident".into(),
        },
    );
    let base = format!(
        "{}/v1/integrations/{integration}/incidents",
        endpoint.trim_end_matches('/')
    );
    let mut w = Wsdl::new(integration, &[&create.root, &cancel.root]);
    w.write(&create, &cancel, &base);
    Some(w.finish())
}

/// Writes the WSDL document.
struct Wsdl<'a> {
    w: Writer<Vec<u8>>,
    integration: &'a str,
    /// Namespace URI -> prefix, for every namespace the shapes use.
    prefixes: BTreeMap<String, String>,
    tns: String,
}

impl<'a> Wsdl<'a> {
    fn new(integration: &'a str, roots: &[&Node]) -> Wsdl<'a> {
        let mut prefixes = BTreeMap::new();
        fn collect(n: &Node, into: &mut BTreeMap<String, String>) {
            if !n.name.ns.is_empty() && !into.contains_key(&*n.name.ns) {
                let p = format!("ns{}", into.len() + 1);
                into.insert(n.name.ns.to_string(), p);
            }
            for c in &n.children {
                collect(c, into);
            }
        }
        for r in roots {
            collect(r, &mut prefixes);
        }
        Wsdl {
            w: Writer::new_with_indent(Vec::with_capacity(8192), b' ', 2),
            integration,
            prefixes,
            tns: format!("urn:safepoint-gateway:integration:{integration}"),
        }
    }

    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut s = BytesStart::new(name);
        for a in attrs {
            s.push_attribute(*a);
        }
        // Writing to memory cannot fail.
        let _ = self.w.write_event(Event::Start(s));
    }

    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut s = BytesStart::new(name);
        for a in attrs {
            s.push_attribute(*a);
        }
        let _ = self.w.write_event(Event::Empty(s));
    }

    fn end(&mut self, name: &str) {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
    }

    fn text_element(&mut self, name: &str, text: &str) {
        self.start(name, &[]);
        let _ = self.w.write_event(Event::Text(BytesText::new(text)));
        self.end(name);
    }

    /// `prefix:local` of an element name for QName-valued attributes (`element`, `ref`).
    fn qname(&self, n: &Name) -> String {
        match self.prefixes.get(&*n.ns) {
            Some(p) => format!("{p}:{}", n.local),
            None => n.local.to_string(),
        }
    }

    fn write(&mut self, create: &Shape, cancel: &Shape, base: &str) {
        let _ = self
            .w
            .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        let name = format!("{}Incidents", service_name(self.integration));
        let tns = self.tns.clone();
        let mut attrs: Vec<(String, String)> = vec![
            ("name".into(), name.clone()),
            ("targetNamespace".into(), tns.clone()),
            ("xmlns:wsdl".into(), WSDL_NS.into()),
            ("xmlns:soap".into(), SOAP_BINDING_NS.into()),
            ("xmlns:http".into(), HTTP_BINDING_NS.into()),
            ("xmlns:mime".into(), MIME_NS.into()),
            ("xmlns:xsd".into(), XSD_NS.into()),
            ("xmlns:tns".into(), tns.clone()),
        ];
        for (uri, p) in &self.prefixes {
            attrs.push((format!("xmlns:{p}"), uri.clone()));
        }
        let borrowed: Vec<(&str, &str)> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.start("wsdl:definitions", &borrowed);
        self.text_element(
            "wsdl:documentation",
            &format!(
                "safepoint-gateway: the XML routes of integration {:?}, generated from its \
                 mapping. Callers authenticate with Authorization: Bearer <API key>. Mapped \
                 elements are optional here; the gateway answers 422 (a SOAP fault) naming \
                 every missing or invalid Loomis field, and ignores elements it does not read.",
                self.integration
            ),
        );
        self.types(create, cancel);
        self.messages(create, cancel);
        self.port_types();
        self.bindings();
        self.service(&name, base);
        self.end("wsdl:definitions");
    }

    fn types(&mut self, create: &Shape, cancel: &Shape) {
        // Global elements per namespace: the roots, and elements whose namespace differs
        // from their parent's (referenced from the parent's schema).
        let mut globals: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
        fn collect<'n>(n: &'n Node, globals: &mut BTreeMap<String, Vec<&'n Node>>) {
            for c in &n.children {
                if c.name.ns != n.name.ns && !c.name.ns.is_empty() {
                    push_global(globals, c);
                }
                collect(c, globals);
            }
        }
        for root in [&create.root, &cancel.root] {
            push_global(&mut globals, root);
            collect(root, &mut globals);
        }
        globals.entry(String::new()).or_default();
        self.start("wsdl:types", &[]);
        let namespaces: Vec<String> = globals.keys().cloned().collect();
        for (ns, nodes) in &globals {
            let mut attrs = vec![
                ("elementFormDefault", "qualified"),
                ("attributeFormDefault", "unqualified"),
            ];
            if ns.is_empty() {
                attrs[0].1 = "unqualified";
            } else {
                attrs.insert(0, ("targetNamespace", ns.as_str()));
            }
            self.start("xsd:schema", &attrs);
            for other in namespaces.iter().filter(|o| *o != ns && !o.is_empty()) {
                self.empty("xsd:import", &[("namespace", other)]);
            }
            for n in nodes {
                self.element(n, ns, true);
            }
            if ns.is_empty() {
                self.gateway_documents(create, cancel);
            }
            self.end("xsd:schema");
        }
        self.end("wsdl:types");
    }

    /// Declares `n` in the schema of `schema_ns`: by name (with its type) when it
    /// belongs there, else by reference to its own namespace's global declaration.
    fn element(&mut self, n: &Node, schema_ns: &str, global: bool) {
        let occurs = if n.many { "unbounded" } else { "1" };
        let mut attrs: Vec<(&str, String)> = Vec::new();
        if !global && *n.name.ns != *schema_ns && !n.name.ns.is_empty() {
            attrs.push(("ref", self.qname(&n.name)));
            attrs.push(("minOccurs", "0".into()));
            attrs.push(("maxOccurs", occurs.into()));
            let a: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.empty("xsd:element", &a);
            return;
        }
        attrs.push(("name", n.name.local.to_string()));
        if !global {
            attrs.push(("minOccurs", "0".into()));
            attrs.push(("maxOccurs", occurs.into()));
            if n.name.ns.is_empty() && !schema_ns.is_empty() {
                attrs.push(("form", "unqualified".into()));
            }
        }
        let simple = n.children.is_empty() && n.attrs.is_empty();
        if simple {
            attrs.push(("type", "xsd:string".into()));
        }
        let a: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if simple && n.docs.is_empty() {
            self.empty("xsd:element", &a);
            return;
        }
        self.start("xsd:element", &a);
        if !n.docs.is_empty() {
            self.documentation(&feeds(&n.docs));
        }
        if !simple {
            self.complex_type(n, schema_ns);
        }
        self.end("xsd:element");
    }

    fn complex_type(&mut self, n: &Node, schema_ns: &str) {
        if n.children.is_empty() {
            // Text with attributes.
            self.start("xsd:complexType", &[]);
            self.start("xsd:simpleContent", &[]);
            self.start("xsd:extension", &[("base", "xsd:string")]);
            self.attributes(n);
            self.end("xsd:extension");
            self.end("xsd:simpleContent");
            self.end("xsd:complexType");
            return;
        }
        if n.text {
            self.start("xsd:complexType", &[("mixed", "true")]);
        } else {
            self.start("xsd:complexType", &[]);
        }
        self.start("xsd:sequence", &[]);
        for c in &n.children {
            self.element(c, schema_ns, false);
        }
        self.end("xsd:sequence");
        self.attributes(n);
        self.end("xsd:complexType");
    }

    fn attributes(&mut self, n: &Node) {
        for (name, docs) in &n.attrs {
            self.start("xsd:attribute", &[("name", name), ("type", "xsd:string")]);
            self.documentation(&feeds(docs));
            self.end("xsd:attribute");
        }
    }

    fn documentation(&mut self, text: &str) {
        self.start("xsd:annotation", &[]);
        self.text_element("xsd:documentation", text);
        self.end("xsd:annotation");
    }

    /// The gateway's own documents, in no namespace: the receipt, the status document
    /// and the error (also the detail of a SOAP fault).
    fn gateway_documents(&mut self, create: &Shape, cancel: &Shape) {
        let leaf = |s: &mut Self, name: &str, optional: bool| {
            let mut a = vec![("name", name), ("type", "xsd:string")];
            if optional {
                a.push(("minOccurs", "0"));
            }
            s.empty("xsd:element", &a);
        };
        let taken = |local: &str| {
            [&create.root, &cancel.root]
                .iter()
                .any(|r| r.name.ns.is_empty() && &*r.name.local == local)
        };
        let state = "Queued, Sent, Acknowledged, Accepted, CancelRequested, Closed, Cancelled, Rejected or Failed";
        if !taken("Receipt") {
            self.start("xsd:element", &[("name", "Receipt")]);
            self.documentation(&format!("The answer to a create or cancel: 202 once stored, 200 for the same reference with the same content. State: {state}."));
            self.start("xsd:complexType", &[]);
            self.start("xsd:sequence", &[]);
            leaf(self, "Integration", false);
            leaf(self, "IncidentReference", false);
            leaf(self, "State", false);
            leaf(self, "IncidentId", true);
            self.end("xsd:sequence");
            self.end("xsd:complexType");
            self.end("xsd:element");
        }
        if !taken("Incident") {
            self.start("xsd:element", &[("name", "Incident")]);
            self.documentation(
                "The status document of GET .../incidents/{reference}; times UTC RFC 3339.",
            );
            self.start("xsd:complexType", &[]);
            self.start("xsd:sequence", &[]);
            for (name, optional) in [
                ("Integration", false),
                ("IncidentReference", false),
                ("CustomerNumber", false),
                ("State", false),
                ("IncidentId", true),
                ("LoomisStatus", true),
                ("SlaTime", true),
                ("ResponseCode", true),
                ("ResponseText", true),
                ("CancelReason", true),
                ("CreatedAt", false),
                ("UpdatedAt", false),
            ] {
                leaf(self, name, optional);
            }
            self.start("xsd:element", &[("name", "Timeline")]);
            self.start("xsd:complexType", &[]);
            self.start("xsd:sequence", &[]);
            self.start(
                "xsd:element",
                &[
                    ("name", "Entry"),
                    ("minOccurs", "0"),
                    ("maxOccurs", "unbounded"),
                ],
            );
            self.start("xsd:complexType", &[]);
            self.start("xsd:simpleContent", &[]);
            self.start("xsd:extension", &[("base", "xsd:string")]);
            for a in ["at", "direction", "kind", "outcome"] {
                self.empty("xsd:attribute", &[("name", a), ("type", "xsd:string")]);
            }
            for e in [
                "xsd:extension",
                "xsd:simpleContent",
                "xsd:complexType",
                "xsd:element",
            ] {
                self.end(e);
            }
            for e in ["xsd:sequence", "xsd:complexType", "xsd:element"] {
                self.end(e);
            }
            for e in ["xsd:sequence", "xsd:complexType", "xsd:element"] {
                self.end(e);
            }
        }
        if !taken("Error") {
            self.start("xsd:element", &[("name", "Error")]);
            self.documentation("An error (400, 401, 404, 409, 413, 415, 422, 503), or the detail of a SOAP fault: one Problem per wrong field.");
            self.start("xsd:complexType", &[]);
            self.start("xsd:sequence", &[]);
            leaf(self, "Code", false);
            leaf(self, "Message", false);
            self.start(
                "xsd:element",
                &[
                    ("name", "Problem"),
                    ("minOccurs", "0"),
                    ("maxOccurs", "unbounded"),
                ],
            );
            self.start("xsd:complexType", &[]);
            self.start("xsd:simpleContent", &[]);
            self.start("xsd:extension", &[("base", "xsd:string")]);
            self.empty(
                "xsd:attribute",
                &[("name", "field"), ("type", "xsd:string")],
            );
            for e in [
                "xsd:extension",
                "xsd:simpleContent",
                "xsd:complexType",
                "xsd:element",
                "xsd:sequence",
                "xsd:complexType",
                "xsd:element",
            ] {
                self.end(e);
            }
        }
    }

    fn messages(&mut self, create: &Shape, cancel: &Shape) {
        let create_root = self.qname(&create.root.name);
        let cancel_root = self.qname(&cancel.root.name);
        for (name, part, attr, value) in [
            (
                "CreateIncidentRequest",
                "body",
                "element",
                create_root.as_str(),
            ),
            (
                "CancelIncidentRequest",
                "body",
                "element",
                cancel_root.as_str(),
            ),
            ("ReceiptResponse", "body", "element", "Receipt"),
            ("ErrorFault", "fault", "element", "Error"),
            ("GetIncidentRequest", "reference", "type", "xsd:string"),
            ("GetIncidentResponse", "body", "element", "Incident"),
        ] {
            self.start("wsdl:message", &[("name", name)]);
            self.empty("wsdl:part", &[("name", part), (attr, value)]);
            self.end("wsdl:message");
        }
    }

    fn port_types(&mut self) {
        for (port_type, op, input, output, doc) in [
            (
                "CreatePortType",
                "CreateIncident",
                "tns:CreateIncidentRequest",
                "tns:ReceiptResponse",
                "Create an incident (SOAP or plain XML). Idempotent by reference.",
            ),
            (
                "CancelPortType",
                "CancelIncident",
                "tns:CancelIncidentRequest",
                "tns:ReceiptResponse",
                "The customer cancels; the body is optional and read for the reason text.",
            ),
        ] {
            self.start("wsdl:portType", &[("name", port_type)]);
            self.start("wsdl:operation", &[("name", op)]);
            self.text_element("wsdl:documentation", doc);
            self.empty("wsdl:input", &[("message", input)]);
            self.empty("wsdl:output", &[("message", output)]);
            self.empty(
                "wsdl:fault",
                &[("name", "Error"), ("message", "tns:ErrorFault")],
            );
            self.end("wsdl:operation");
            self.end("wsdl:portType");
        }
        self.start("wsdl:portType", &[("name", "StatusPortType")]);
        self.start("wsdl:operation", &[("name", "GetIncident")]);
        self.text_element(
            "wsdl:documentation",
            "State, Loomis IncidentId, SLA time and timeline of an incident (plain XML over HTTP GET).",
        );
        self.empty("wsdl:input", &[("message", "tns:GetIncidentRequest")]);
        self.empty("wsdl:output", &[("message", "tns:GetIncidentResponse")]);
        self.end("wsdl:operation");
        self.end("wsdl:portType");
    }

    fn bindings(&mut self) {
        for (binding, port_type, op) in [
            ("CreateBinding", "tns:CreatePortType", "CreateIncident"),
            ("CancelBinding", "tns:CancelPortType", "CancelIncident"),
        ] {
            self.start("wsdl:binding", &[("name", binding), ("type", port_type)]);
            self.empty(
                "soap:binding",
                &[("style", "document"), ("transport", SOAP_HTTP_TRANSPORT)],
            );
            self.start("wsdl:operation", &[("name", op)]);
            self.empty(
                "soap:operation",
                &[("soapAction", ""), ("style", "document")],
            );
            for io in ["wsdl:input", "wsdl:output"] {
                self.start(io, &[]);
                self.empty("soap:body", &[("use", "literal")]);
                self.end(io);
            }
            self.start("wsdl:fault", &[("name", "Error")]);
            self.empty("soap:fault", &[("name", "Error"), ("use", "literal")]);
            self.end("wsdl:fault");
            self.end("wsdl:operation");
            self.end("wsdl:binding");
        }
        self.start(
            "wsdl:binding",
            &[("name", "StatusBinding"), ("type", "tns:StatusPortType")],
        );
        self.empty("http:binding", &[("verb", "GET")]);
        self.start("wsdl:operation", &[("name", "GetIncident")]);
        self.empty("http:operation", &[("location", "/(reference)")]);
        self.start("wsdl:input", &[]);
        self.empty("http:urlReplacement", &[]);
        self.end("wsdl:input");
        self.start("wsdl:output", &[]);
        self.empty("mime:mimeXml", &[("part", "body")]);
        self.end("wsdl:output");
        self.end("wsdl:operation");
        self.end("wsdl:binding");
    }

    fn service(&mut self, name: &str, base: &str) {
        self.start("wsdl:service", &[("name", name)]);
        let cancel = format!("{base}/{{reference}}/cancel");
        for (port, binding, address) in [
            ("CreatePort", "tns:CreateBinding", base),
            ("CancelPort", "tns:CancelBinding", cancel.as_str()),
        ] {
            self.start("wsdl:port", &[("name", port), ("binding", binding)]);
            self.empty("soap:address", &[("location", address)]);
            self.end("wsdl:port");
        }
        self.start(
            "wsdl:port",
            &[("name", "StatusPort"), ("binding", "tns:StatusBinding")],
        );
        self.empty("http:address", &[("location", base)]);
        self.end("wsdl:port");
        self.end("wsdl:service");
    }

    fn finish(self) -> String {
        let mut out = self.w.into_inner();
        out.push(b'\n');
        // Everything written came from `&str`s.
        String::from_utf8(out).unwrap_or_default()
    }
}

fn push_global<'n>(globals: &mut BTreeMap<String, Vec<&'n Node>>, n: &'n Node) {
    let list = globals.entry(n.name.ns.to_string()).or_default();
    if !list.iter().any(|g| g.name == n.name) {
        list.push(n);
    }
}

/// `Feeds DeviceId.` / `Feeds ContactName, ContactNumber.` from the docs collected.
fn feeds(docs: &[String]) -> String {
    let mut fields: Vec<&str> = Vec::new();
    let mut notes: Vec<&str> = Vec::new();
    for d in docs {
        if d.contains(' ') {
            if !notes.contains(&d.as_str()) {
                notes.push(d);
            }
        } else if !fields.contains(&d.as_str()) {
            fields.push(d);
        }
    }
    let mut out = String::new();
    if !fields.is_empty() {
        out.push_str(&format!("Feeds Loomis {}.", fields.join(", ")));
    }
    for n in notes {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(n);
        out.push('.');
    }
    out
}

/// `otrs` -> `Otrs`, `remedy-hpd` -> `RemedyHpd`: an NCName for the service.
fn service_name(integration: &str) -> String {
    let name: String = integration
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    // An NCName cannot start with a digit.
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Integration{name}")
    } else {
        name
    }
}
