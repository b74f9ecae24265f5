//! The generated WSDL parses strictly and has what SoapUI needs, for the shipped
//! mappings.

use super::*;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::Path;

fn load(name: &str) -> MappingPlan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("mappings/{name}.toml"));
    MappingPlan::load_with_secrets(&path, &crate::mapping::placeholder_secret).unwrap()
}

/// Every element as `parent>name` with its attributes, after a strict parse.
fn elements(doc: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut r = Reader::from_str(doc);
    r.config_mut().check_end_names = true;
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    loop {
        let (e, empty) = match r.read_event().expect("well-formed WSDL") {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = e.name().as_ref().to_string();
        let attrs = e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    a.key.as_ref().to_string(),
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        out.push((
            format!("{}>{name}", stack.last().map_or("", String::as_str)),
            attrs,
        ));
        if !empty {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    out
}

fn has(els: &[(String, Vec<(String, String)>)], path: &str, attrs: &[(&str, &str)]) -> bool {
    els.iter().any(|(p, a)| {
        p == path
            && attrs
                .iter()
                .all(|(k, v)| a.iter().any(|(ak, av)| ak == k && av == v))
    })
}

#[test]
fn otrs_wsdl_has_what_soapui_needs() {
    let doc = wsdl(&load("otrs"), "otrs", "https://gw.example/").unwrap();
    let els = elements(&doc);
    let tic = "http://www.otrs.org/TicketConnector/";
    assert!(
        has(
            &els,
            ">wsdl:definitions",
            &[("xmlns:ns1", tic), ("name", "OtrsIncidents")]
        ),
        "{doc}"
    );
    // types/schema: the payload root in its namespace, the repeated dynamic field
    // with its key child, and the gateway's receipt in no namespace.
    assert!(
        has(
            &els,
            "wsdl:types>xsd:schema",
            &[
                ("targetNamespace", tic),
                ("elementFormDefault", "qualified")
            ]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "xsd:schema>xsd:element", &[("name", "TicketCreate")]),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "xsd:sequence>xsd:element",
            &[("name", "DynamicField"), ("maxOccurs", "unbounded")]
        ),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "xsd:sequence>xsd:element",
            &[("name", "Name"), ("type", "xsd:string")]
        ),
        "{doc}"
    );
    assert!(
        doc.contains("Name = &apos;SafeSerial&apos; selects the DeviceId entry")
            || doc.contains("Name = 'SafeSerial' selects the DeviceId entry"),
        "{doc}"
    );
    assert!(
        has(&els, "xsd:schema>xsd:element", &[("name", "Receipt")]),
        "{doc}"
    );
    assert!(
        has(&els, "xsd:schema>xsd:element", &[("name", "TicketCancel")]),
        "{doc}"
    );
    // message, portType, binding (soap), service/port with the address.
    assert!(
        has(
            &els,
            "wsdl:message>wsdl:part",
            &[("element", "ns1:TicketCreate")]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "wsdl:message>wsdl:part", &[("element", "Receipt")]),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "wsdl:portType>wsdl:operation",
            &[("name", "CreateIncident")]
        ),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "wsdl:binding>soap:binding",
            &[("style", "document"), ("transport", SOAP_HTTP_TRANSPORT)]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "wsdl:operation>soap:operation", &[("soapAction", "")]),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "wsdl:port>soap:address",
            &[(
                "location",
                "https://gw.example/v1/integrations/otrs/incidents"
            )]
        ),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "wsdl:port>soap:address",
            &[(
                "location",
                "https://gw.example/v1/integrations/otrs/incidents/{reference}/cancel"
            )]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "wsdl:binding>http:binding", &[("verb", "GET")]),
        "{doc}"
    );
    // Every QName the WSDL uses for an element is declared in the schemas.
    for (p, a) in &els {
        if p == "wsdl:message>wsdl:part" {
            if let Some((_, v)) = a.iter().find(|(k, _)| k == "element") {
                let local = v.rsplit(':').next().unwrap();
                assert!(
                    has(&els, "xsd:schema>xsd:element", &[("name", local)]),
                    "{v} undeclared\n{doc}"
                );
            }
        }
    }
}

#[test]
fn remedy_wsdl_describes_attributes_and_every_shipped_xml_mapping_is_well_formed() {
    let doc = wsdl(&load("remedy"), "remedy", "http://127.0.0.1:8080").unwrap();
    let els = elements(&doc);
    // rem:Incident/@id and friends: an element with attributes.
    assert!(
        has(&els, "xsd:extension>xsd:attribute", &[("name", "serial")])
            || has(&els, "xsd:complexType>xsd:attribute", &[("name", "serial")]),
        "{doc}"
    );
    assert!(
        has(&els, "xsd:complexType>xsd:attribute", &[("name", "id")]),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "xsd:sequence>xsd:element",
            &[("name", "Note"), ("maxOccurs", "unbounded")]
        ),
        "{doc}"
    );
    for name in ["servicenow", "remedy-hpd"] {
        let doc = wsdl(&load(name), name, "http://gw").unwrap();
        let els = elements(&doc);
        assert!(
            has(
                &els,
                "wsdl:port>soap:address",
                &[(
                    "location",
                    &*format!("http://gw/v1/integrations/{name}/incidents")
                )]
            ),
            "{doc}"
        );
    }
    // The plain-XML ServiceNow root is in no namespace, declared once with the
    // gateway's documents.
    let doc = wsdl(&load("servicenow"), "servicenow", "http://gw").unwrap();
    let els = elements(&doc);
    assert!(
        has(&els, "xsd:schema>xsd:element", &[("name", "incident")]),
        "{doc}"
    );
    assert!(
        has(&els, "wsdl:message>wsdl:part", &[("element", "incident")]),
        "{doc}"
    );
    // A gRPC field mapping has no XML routes.
    assert!(wsdl(&load("internal-grpc"), "internal", "http://gw").is_none());
}

#[test]
fn service_names_are_ncnames() {
    assert_eq!(service_name("remedy-hpd"), "RemedyHpd");
    assert_eq!(service_name("otrs"), "Otrs");
    assert_eq!(service_name("9to5-desk"), "Integration9to5Desk");
}

#[test]
fn a_mapping_of_relative_paths_gets_a_named_root_beside_the_status_document() {
    let mut text = String::from("source = \"xml\"\n");
    for f in crate::mapping::DispatchField::ALL
        .iter()
        .filter(|f| f.required())
    {
        text.push_str(&format!(
            "[dispatch.{}]\npath = \"a/{}\"\n",
            f.name(),
            f.name()
        ));
    }
    let plan = MappingPlan::from_str(&text, "m.toml").unwrap();
    let doc = wsdl(&plan, "rel", "http://gw").unwrap();
    let els = elements(&doc);
    assert!(
        has(
            &els,
            "xsd:schema>xsd:element",
            &[("name", "CreateIncident")]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "xsd:schema>xsd:element", &[("name", "Incident")]),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "xsd:sequence>xsd:element",
            &[("name", "DeviceId"), ("type", "xsd:string")]
        ),
        "{doc}"
    );
    assert!(
        has(
            &els,
            "wsdl:message>wsdl:part",
            &[("element", "CreateIncident")]
        ),
        "{doc}"
    );
    assert!(
        has(&els, "wsdl:message>wsdl:part", &[("element", "Incident")]),
        "{doc}"
    );
}
