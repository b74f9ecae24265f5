//! The legacy XML front door, black-box over real HTTP: create, re-submit, conflict,
//! cancel and poll in plain XML, SOAP 1.1 (the shipped `remedy` mapping) and SOAP 1.2,
//! and every error status with its XML body (or SOAP fault). Answers are parsed by the
//! test's own quick-xml reader, not by the gateway's parser.

mod common;

use common::*;
use safepoint_gateway::incident::{Incident, State};
use safepoint_gateway::loomis::message::format_utc;
use serde_json::Value;

const SN_INCIDENTS: &str = "/v1/integrations/servicenow/incidents";
const REMEDY_INCIDENTS: &str = "/v1/integrations/remedy/incidents";
const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";

/// The built-in simulator ACKs in the body and Accepts, then stops: incidents rest in
/// `Accepted` (with IncidentId and SLA time) until the test moves them on.
fn resting() -> Options {
    Options {
        simulator:
            "ack = \"body\"\naccept_after_ms = 10\nclose_after_ms = 10\noutcome = \"none\"\n".into(),
        ..Options::default()
    }
}

/// Waits until `reference` of `integration` is in `state` and the update that brought
/// it there is durable (the incident is readable as committed a moment before its
/// updates are readable as flushed).
async fn settled(h: &Harness, integration: &str, reference: &str, state: State) -> Incident {
    let inc = h
        .wait_for_in(integration, reference, state.as_str(), |i| i.state == state)
        .await;
    eventually("the update to be durable", || async {
        h.updates(integration)
            .iter()
            .any(|u| u.incident_reference == reference && u.state == state)
            .then_some(())
    })
    .await;
    inc
}

/// The Dispatch messages the simulator received for `reference`.
fn dispatches_of(h: &Harness, reference: &str) -> Vec<Value> {
    h.sim()
        .received()
        .into_iter()
        .filter_map(|m| m.message)
        .filter(|v| v["MessageType"] == "Dispatch" && v["IncidentReference"] == reference)
        .collect()
}

fn status_path(integration: &str, reference: &str) -> String {
    format!("/v1/integrations/{integration}/incidents/{reference}")
}

fn cancel_path(integration: &str, reference: &str) -> String {
    format!("/v1/integrations/{integration}/incidents/{reference}/cancel")
}

/// Checks a plain receipt and returns it.
fn plain_receipt(r: &Reply, integration: &str, reference: &str) -> XmlNode {
    assert!(
        r.content_type.starts_with("application/xml"),
        "{}",
        r.content_type
    );
    let doc = r.xml();
    assert_eq!(doc.name, "Receipt", "{}", r.body);
    assert_eq!(doc.text_of("Integration"), integration);
    assert_eq!(doc.text_of("IncidentReference"), reference);
    doc
}

/// Checks a plain `<Error>` answer of `status` with `code`, and returns it.
fn plain_error(r: &Reply, status: u16, code: &str) -> XmlNode {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/xml"),
        "{}: {}",
        r.content_type,
        r.body
    );
    let doc = r.xml();
    assert_eq!(doc.name, "Error", "{}", r.body);
    let err = legacy_error(&doc);
    assert_eq!(err.text_of("Code"), code, "{}", r.body);
    err
}

#[tokio::test]
async fn a_latin1_document_is_decoded() {
    let h = Harness::start(resting()).await;
    let xml = sn_xml("INCL1", "UG1234", "AC12").replace("John Smith", "J\u{fc}rgen M\u{fc}ller");
    let xml = xml.replace(
        "<incident>",
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><incident>",
    );
    // Encode to ISO-8859-1: every character here is below U+0100.
    let latin1: Vec<u8> = xml
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect();
    let r = h
        .client
        .post(format!("{}{SN_INCIDENTS}", h.base()))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .body(latin1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let inc = h.incident("INCL1").unwrap();
    assert_eq!(inc.dispatch.contact_name, "J\u{fc}rgen M\u{fc}ller");
    h.stop().await;
}

#[tokio::test]
async fn a_utf16_document_is_decoded() {
    // .NET and Java tools often write UTF-16 (with a byte order mark); every XML
    // processor must read it.
    let h = Harness::start(resting()).await;
    let xml = sn_xml("INCU16", "UG1234", "AC12").replace("John Smith", "J\u{fc}rgen \u{674e}");
    let xml = format!("<?xml version=\"1.0\" encoding=\"utf-16\"?>{xml}");
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(xml.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let r = h
        .client
        .post(format!("{}{SN_INCIDENTS}", h.base()))
        .bearer_auth(SN_KEY)
        .header("content-type", "text/xml; charset=utf-16")
        .body(utf16)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let inc = h.incident("INCU16").unwrap();
    assert_eq!(inc.dispatch.contact_name, "J\u{fc}rgen \u{674e}");
    h.stop().await;
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_an_xml_error() {
    let h = Harness::start(resting()).await;
    let r = h.get(&format!("{SN_INCIDENTS}/%FF"), Some(SN_KEY)).await;
    plain_error(&r, 400, "InvalidPath");
    let r = h
        .post(
            &format!("{SN_INCIDENTS}/%FF/cancel"),
            Some(SN_KEY),
            None,
            "",
        )
        .await;
    plain_error(&r, 400, "InvalidPath");
    h.stop().await;
}

#[tokio::test]
async fn create_answers_a_receipt_and_resubmit_is_idempotent() {
    let h = Harness::start(resting()).await;
    let happy = fixture("servicenow/happy.input.xml");
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("application/xml"),
            happy.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let receipt = plain_receipt(&r, "servicenow", "INC0010001");
    assert_eq!(receipt.text_of("State"), "Queued");
    assert_eq!(
        receipt.child_names(),
        ["Integration", "IncidentReference", "State"],
        "no IncidentId before the ACK"
    );
    // Stored before the 202: readable at once.
    assert!(h.incident("INC0010001").is_some());

    let inc = settled(&h, "servicenow", "INC0010001", State::Accepted).await;
    let expected: Value = serde_json::from_str(&fixture("servicenow/happy.expected.json")).unwrap();
    assert_eq!(dispatches_of(&h, "INC0010001"), [expected]);

    // The same content again, pretty-printed this time: 200 and the same receipt, now
    // showing where the incident has got to.
    let pretty = happy.replace("><", ">\n  <");
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("text/xml; charset=utf-8"),
            pretty,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let receipt = plain_receipt(&r, "servicenow", "INC0010001");
    assert_eq!(receipt.text_of("State"), "Accepted");
    assert_eq!(
        Some(receipt.text_of("IncidentId")),
        inc.incident_id.as_deref()
    );
    // Nothing new toward Loomis: no job queued (the 200 comes after the commit that
    // would have queued one) and still a single Dispatch received.
    assert!(h.running().gateway.store().jobs().unwrap().is_empty());
    assert_eq!(dispatches_of(&h, "INC0010001").len(), 1);
    assert_eq!(h.incident("INC0010001").unwrap(), inc, "nothing changed");
    h.stop().await;
}

#[tokio::test]
async fn conflicting_resubmit_names_every_differing_field_and_changes_nothing() {
    let h = Harness::start(resting()).await;
    let (s, b) = h.create(&sn_xml("INC0020001", "UG1234", "AC12")).await;
    assert_eq!(s, 202, "{b}");
    let before = settled(&h, "servicenow", "INC0020001", State::Accepted).await;
    let updates = h.updates_of("INC0020001");

    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("application/xml"),
            sn_xml("INC0020001", "UG1235", "AC13"),
        )
        .await;
    let err = plain_error(&r, 409, "ReferenceConflict");
    assert_eq!(problem_fields(&err), ["DeviceId", "FaultCode"]);
    assert!(err.text_of("Message").contains("INC0020001"), "{err:#?}");

    assert_eq!(h.incident("INC0020001").unwrap(), before);
    assert_eq!(h.updates_of("INC0020001"), updates);
    assert_eq!(dispatches_of(&h, "INC0020001").len(), 1);
    assert!(h.running().gateway.store().jobs().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn poll_shows_state_incident_id_sla_and_timeline() {
    let h = Harness::start(resting()).await;
    h.create(&sn_xml("INC0030001", "UG1234", "AC12")).await;
    let inc = settled(&h, "servicenow", "INC0030001", State::Accepted).await;

    let r = h
        .get(&status_path("servicenow", "INC0030001"), Some(SN_KEY))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("application/xml"));
    let doc = r.xml();
    assert_eq!(doc.name, "Incident");
    assert_eq!(doc.text_of("Integration"), "servicenow");
    assert_eq!(doc.text_of("IncidentReference"), "INC0030001");
    assert_eq!(doc.text_of("CustomerNumber"), "A123456");
    assert_eq!(doc.text_of("State"), "Accepted");
    let id = doc.text_of("IncidentId");
    assert!(id.starts_with("INC4"), "{id}");
    assert_eq!(Some(id), inc.incident_id.as_deref());
    let sla = doc.text_of("SlaTime");
    assert!(sla.ends_with('Z'), "UTC with Z: {sla}");
    let sla: jiff::Timestamp = sla.parse().unwrap();
    assert_eq!(Some(sla), inc.sla_time);
    for t in ["CreatedAt", "UpdatedAt"] {
        doc.text_of(t).parse::<jiff::Timestamp>().unwrap();
    }
    // The timeline as stored, every entry with its attributes.
    let entries: Vec<&XmlNode> = doc.one("Timeline").all("Entry").collect();
    assert_eq!(entries.len(), inc.timeline.len(), "{}", r.body);
    assert!(entries.len() >= 3, "Dispatch, ACK, Accept: {}", r.body);
    for (e, stored) in entries.iter().zip(&inc.timeline) {
        assert_eq!(e.attr("kind"), Some(stored.kind.as_str()));
        assert_eq!(e.attr("at"), Some(format_utc(stored.at).as_str()));
        assert!(e.attr("direction").is_some() && e.attr("outcome").is_some());
    }

    // Unknown reference, and the key of another integration.
    let r = h
        .get(&status_path("servicenow", "NOPE"), Some(SN_KEY))
        .await;
    plain_error(&r, 404, "UnknownIncident");
    let r = h
        .get(&status_path("servicenow", "INC0030001"), Some(INTERNAL_KEY))
        .await;
    plain_error(&r, 401, "Unauthorized");
    let r = h
        .get(&status_path("nowhere", "INC0030001"), Some(SN_KEY))
        .await;
    plain_error(&r, 404, "UnknownIntegration");
    h.stop().await;
}

#[tokio::test]
async fn cancel_then_terminal_cancel_is_409_and_unknown_is_404() {
    let h = Harness::start(resting()).await;
    h.create(&sn_xml("INC0040001", "UG1234", "AC12")).await;
    let accepted = settled(&h, "servicenow", "INC0040001", State::Accepted).await;

    // A broken cancel body is refused and changes nothing.
    let r = h
        .post(
            &cancel_path("servicenow", "INC0040001"),
            Some(SN_KEY),
            Some("application/xml"),
            "<cancel><reason>oops</cancel>",
        )
        .await;
    plain_error(&r, 400, "MalformedXml");
    assert_eq!(h.incident("INC0040001").unwrap(), accepted);

    let r = h
        .post(
            &cancel_path("servicenow", "INC0040001"),
            Some(SN_KEY),
            Some("application/xml"),
            fixture("servicenow/cancel.cancel.xml"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let receipt = plain_receipt(&r, "servicenow", "INC0040001");
    assert_eq!(receipt.text_of("State"), "CancelRequested");
    let inc = settled(&h, "servicenow", "INC0040001", State::Cancelled).await;
    let reason = fixture("servicenow/cancel.expected-reason.txt");
    assert_eq!(inc.cancel_reason.as_deref(), Some(reason.trim()));
    let poll = h
        .get(&status_path("servicenow", "INC0040001"), Some(SN_KEY))
        .await
        .xml();
    assert_eq!(poll.text_of("State"), "Cancelled");
    assert_eq!(poll.text_of("CancelReason"), reason.trim());

    // Terminal now.
    let r = h
        .post(
            &cancel_path("servicenow", "INC0040001"),
            Some(SN_KEY),
            None,
            "",
        )
        .await;
    let err = plain_error(&r, 409, "AlreadyTerminal");
    assert!(err.text_of("Message").contains("Cancelled"), "{err:#?}");
    let r = h
        .post(
            &cancel_path("servicenow", "INC0049999"),
            Some(SN_KEY),
            None,
            "",
        )
        .await;
    plain_error(&r, 404, "UnknownIncident");
    let r = h
        .post(
            &cancel_path("servicenow", "INC0040001"),
            Some("wrong"),
            None,
            "",
        )
        .await;
    plain_error(&r, 401, "Unauthorized");
    h.stop().await;
}

#[tokio::test]
async fn soap11_round_trip_with_the_remedy_mapping() {
    let h = Harness::start(Options {
        remedy: true,
        ..resting()
    })
    .await;
    let soap = |key: &str, body: String| {
        h.client
            .post(format!("{}{REMEDY_INCIDENTS}", h.base()))
            .bearer_auth(key)
            .header("content-type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:bmc:remedy:incident/CreateIncident\"")
            .body(body)
    };

    let r = h
        .send(soap(REMEDY_KEY, fixture("remedy/happy.input.xml")))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.content_type.starts_with("text/xml"), "{}", r.content_type);
    let env = r.xml();
    assert_eq!((env.local(), env.ns.as_str()), ("Envelope", SOAP11));
    let body = env.one("Body");
    assert_eq!(body.ns, SOAP11);
    let receipt = body.one("Receipt");
    assert_eq!(receipt.text_of("Integration"), "remedy");
    assert_eq!(receipt.text_of("IncidentReference"), "INC000000012345");
    assert_eq!(receipt.text_of("State"), "Queued");

    settled(&h, "remedy", "INC000000012345", State::Accepted).await;
    let mut expected: Value = serde_json::from_str(&fixture("remedy/happy.expected.json")).unwrap();
    expected["CustomerNumber"] = REMEDY_CUSTOMER.into();
    assert_eq!(dispatches_of(&h, "INC000000012345"), [expected]);

    // Every problem of an invalid request, as a SOAP 1.1 fault.
    let r = h
        .send(soap(REMEDY_KEY, fixture("remedy/errors.input.xml")))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.content_type.starts_with("text/xml"), "{}", r.content_type);
    let env = r.xml();
    assert_eq!(env.ns, SOAP11);
    let fault = env.one("Body").one("Fault");
    assert_eq!(fault.ns, SOAP11);
    assert!(
        fault.text_of("faultcode").ends_with(":Client"),
        "{fault:#?}"
    );
    assert!(!fault.text_of("faultstring").is_empty());
    let err = legacy_error(&env);
    assert_eq!(err.text_of("Code"), "ValidationFailed");
    assert_eq!(
        problem_fields(&err),
        [
            "DeviceId",
            "ContactNumber",
            "ContactEmail",
            "FaultCode",
            "FaultDateTime"
        ]
    );
    assert_eq!(
        h.get(&status_path("remedy", "INC000000012347"), Some(REMEDY_KEY))
            .await
            .status,
        404,
        "a refused request stores nothing"
    );

    // Errors about the body itself come in the envelope the caller announced.
    for (what, body, code) in [
        (
            "truncated envelope",
            format!("<soapenv:Envelope xmlns:soapenv=\"{SOAP11}\"><soapenv:Body>"),
            "MalformedXml",
        ),
        (
            "empty Body",
            format!(
                "<soapenv:Envelope xmlns:soapenv=\"{SOAP11}\"><soapenv:Body/></soapenv:Envelope>"
            ),
            "MalformedXml",
        ),
        (
            "DTD",
            format!(
                "<!DOCTYPE x [<!ENTITY a \"b\">]><soapenv:Envelope xmlns:soapenv=\"{SOAP11}\"/>"
            ),
            "DtdRefused",
        ),
    ] {
        let r = h.send(soap(REMEDY_KEY, body)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(r.content_type.starts_with("text/xml"), "{what}");
        let env = r.xml();
        assert_eq!(env.ns, SOAP11, "{what}");
        assert!(env
            .one("Body")
            .one("Fault")
            .text_of("faultcode")
            .ends_with(":Client"));
        assert_eq!(legacy_error(&env).text_of("Code"), code, "{what}");
    }
    // Another integration's key: 401, as a fault, with the challenge.
    let r = h
        .send(soap(SN_KEY, fixture("remedy/happy.input.xml")))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(legacy_error(&r.xml()).text_of("Code"), "Unauthorized");

    // Cancel in a SOAP 1.1 envelope: answered in one, reason mapped.
    let cancel = format!(
        "<soapenv:Envelope xmlns:soapenv=\"{SOAP11}\"><soapenv:Body>{}</soapenv:Body></soapenv:Envelope>",
        fixture("remedy/cancel.cancel.xml").trim()
    );
    let r = h
        .send(
            h.client
                .post(format!(
                    "{}{}",
                    h.base(),
                    cancel_path("remedy", "INC000000012345")
                ))
                .bearer_auth(REMEDY_KEY)
                .header("content-type", "text/xml")
                .header("SOAPAction", "\"urn:bmc:remedy:incident/CancelIncident\"")
                .body(cancel),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.content_type.starts_with("text/xml"));
    let env = r.xml();
    assert_eq!(env.ns, SOAP11);
    assert_eq!(
        env.one("Body").one("Receipt").text_of("State"),
        "CancelRequested"
    );
    let inc = settled(&h, "remedy", "INC000000012345", State::Cancelled).await;
    assert_eq!(
        inc.cancel_reason.as_deref(),
        Some(fixture("remedy/cancel.expected-reason.txt").trim())
    );
    h.stop().await;
}

#[tokio::test]
async fn soap12_round_trip() {
    let h = Harness::start(resting()).await;
    let ct = "application/soap+xml; charset=utf-8";
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some(ct),
            fixture("servicenow/soap12.input.xml"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/soap+xml"),
        "{}",
        r.content_type
    );
    let env = r.xml();
    assert_eq!((env.local(), env.ns.as_str()), ("Envelope", SOAP12));
    let receipt = env.one("Body").one("Receipt");
    assert_eq!(receipt.text_of("IncidentReference"), "INC0010005");
    assert_eq!(receipt.text_of("State"), "Queued");
    settled(&h, "servicenow", "INC0010005", State::Accepted).await;
    let expected: Value =
        serde_json::from_str(&fixture("servicenow/soap12.expected.json")).unwrap();
    assert_eq!(dispatches_of(&h, "INC0010005"), [expected]);

    // Validation problems as a SOAP 1.2 fault (Sender), every one listed.
    let errors = fixture("servicenow/errors.input.xml");
    let wrapped =
        format!("<e:Envelope xmlns:e=\"{SOAP12}\"><e:Body>{errors}</e:Body></e:Envelope>");
    let r = h.post(SN_INCIDENTS, Some(SN_KEY), Some(ct), wrapped).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.content_type.starts_with("application/soap+xml"));
    let env = r.xml();
    assert_eq!(env.ns, SOAP12);
    let fault = env.one("Body").one("Fault");
    assert!(fault.one("Code").text_of("Value").ends_with(":Sender"));
    let text = fault.one("Reason").one("Text");
    assert_eq!(text.attr("xml:lang"), Some("en"));
    assert!(!text.text.is_empty());
    let err = legacy_error(&env);
    assert_eq!(
        problem_fields(&err),
        [
            "IncidentReference",
            "DeviceId",
            "ContactName",
            "FaultDateTime"
        ]
    );

    // Malformed, announced as SOAP 1.2 by its content type.
    let r = h
        .post(SN_INCIDENTS, Some(SN_KEY), Some(ct), "<e:Envelope")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let env = r.xml();
    assert_eq!(env.ns, SOAP12);
    assert_eq!(legacy_error(&env).text_of("Code"), "MalformedXml");
    h.stop().await;
}

#[tokio::test]
async fn every_error_status_has_an_xml_error_body() {
    let h = Harness::start(resting()).await;
    let happy = fixture("servicenow/happy.input.xml");
    let xml = Some("application/xml");

    // 400: not well-formed, and a DTD (refused, never expanded).
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            xml,
            "<incident><number>INC0050001</incident>",
        )
        .await;
    plain_error(&r, 400, "MalformedXml");
    let dtd = format!(
        "<!DOCTYPE incident [<!ENTITY n \"INC0050002\">]>{}",
        happy.replace("INC0010001", "&n;")
    );
    let r = h.post(SN_INCIDENTS, Some(SN_KEY), xml, dtd).await;
    let err = plain_error(&r, 400, "DtdRefused");
    assert!(!r.body.contains("INC0050002"), "never expanded: {err:#?}");

    // 422: every problem at once.
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            xml,
            fixture("servicenow/errors.input.xml"),
        )
        .await;
    let err = plain_error(&r, 422, "ValidationFailed");
    let expected: Vec<String> = fixture("servicenow/errors.expected-errors.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(problem_fields(&err), expected);
    assert_eq!(
        err.text_of("Message"),
        format!("{} problems", expected.len())
    );
    // Missing device AND a bad date, together, each with a readable message.
    let both = sn_xml("INC0050003", "UG1234", "AC12")
        .replace("<serial_number>UG1234</serial_number>", "")
        .replace("2021-01-16 09:17:48", "16/01/2021");
    let r = h.post(SN_INCIDENTS, Some(SN_KEY), xml, both).await;
    let err = plain_error(&r, 422, "ValidationFailed");
    assert_eq!(problem_fields(&err), ["DeviceId", "FaultDateTime"]);
    let msgs: Vec<&str> = err.all("Problem").map(|p| p.text.as_str()).collect();
    assert!(
        msgs[0].contains("/incident/cmdb_ci/serial_number"),
        "{msgs:?}"
    );
    assert!(msgs[1].contains("16/01/2021"), "{msgs:?}");

    // 401: no key, a wrong key, another integration's key; each with the challenge.
    for key in [None, Some("wrong"), Some(INTERNAL_KEY)] {
        let r = h.post(SN_INCIDENTS, key, xml, happy.clone()).await;
        plain_error(&r, 401, "Unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{key:?}");
    }

    // 404: an integration that does not exist.
    let r = h
        .post(
            "/v1/integrations/nowhere/incidents",
            Some(SN_KEY),
            xml,
            happy.clone(),
        )
        .await;
    plain_error(&r, 404, "UnknownIntegration");

    // 413: a body over the limit (1 MiB by default).
    let big = sn_xml("INC0050004", "UG1234", "AC12")
        .replace("Cannot open the door", &"x".repeat(1_200_000));
    let r = h.post(SN_INCIDENTS, Some(SN_KEY), xml, big).await;
    plain_error(&r, 413, "PayloadTooLarge");

    // 415: JSON is not XML; and an integration that maps gRPC field maps gets no XML.
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("application/json"),
            r#"{"number":"INC0050005"}"#,
        )
        .await;
    let err = plain_error(&r, 415, "UnsupportedMediaType");
    assert!(err.text_of("Message").contains("application/json"));
    let r = h
        .post(
            "/v1/integrations/internal/incidents",
            Some(INTERNAL_KEY),
            xml,
            happy.clone(),
        )
        .await;
    plain_error(&r, 415, "WrongFrontDoor");
    assert!(h.incident_in("internal", "INC0010001").is_none());

    // 404 and 405 from the router itself still answer with an XML error.
    let r = h.get(SN_INCIDENTS, Some(SN_KEY)).await;
    plain_error(&r, 405, "MethodNotAllowed");
    let r = h
        .post(
            &format!("{SN_INCIDENTS}/INC0010001/reopen"),
            Some(SN_KEY),
            xml,
            "",
        )
        .await;
    plain_error(&r, 404, "UnknownRoute");

    // None of the refused requests stored anything.
    for reference in [
        "INC0050001",
        "INC0050002",
        "INC0010003",
        "INC0050003",
        "INC0050004",
        "INC0010001",
    ] {
        let r = h
            .get(&status_path("servicenow", reference), Some(SN_KEY))
            .await;
        plain_error(&r, 404, "UnknownIncident");
    }
    assert!(h.sim().received().is_empty(), "nothing reached Loomis");
    assert!(h.running().gateway.store().jobs().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn refused_requests_leave_an_accepted_incident_untouched() {
    let h = Harness::start(resting()).await;
    let good = sn_xml("INC0060001", "UG1234", "AC12");
    h.create(&good).await;
    let before = settled(&h, "servicenow", "INC0060001", State::Accepted).await;
    let updates = h.updates("servicenow");
    let xml = Some("application/xml");

    let bad_date = good.replace("2021-01-16 09:17:48", "yesterday");
    let refused = [
        h.post(SN_INCIDENTS, Some(SN_KEY), xml, bad_date)
            .await
            .status,
        h.post(
            SN_INCIDENTS,
            Some(SN_KEY),
            xml,
            good.replace("</incident>", ""),
        )
        .await
        .status,
        h.post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("application/json"),
            good.clone(),
        )
        .await
        .status,
        h.post(
            SN_INCIDENTS,
            Some("wrong"),
            xml,
            good.replace("UG1234", "UG1235"),
        )
        .await
        .status,
        h.post(
            SN_INCIDENTS,
            Some(SN_KEY),
            xml,
            good.replace("UG1234", "UG1235"),
        )
        .await
        .status,
        h.post(
            &cancel_path("servicenow", "INC0060001"),
            Some(SN_KEY),
            Some("application/json"),
            "{}",
        )
        .await
        .status,
        h.post(
            &cancel_path("servicenow", "INC0060001"),
            Some("wrong"),
            None,
            "",
        )
        .await
        .status,
    ];
    assert_eq!(refused, [422, 400, 415, 401, 409, 415, 401]);
    assert_eq!(h.incident("INC0060001").unwrap(), before);
    assert_eq!(h.updates("servicenow"), updates);
    assert_eq!(dispatches_of(&h, "INC0060001").len(), 1);
    assert!(h.running().gateway.store().jobs().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn each_xml_integration_serves_its_wsdl_to_its_own_callers() {
    let h = Harness::start(resting()).await;
    let r = h
        .get("/v1/integrations/servicenow/wsdl", Some(SN_KEY))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("text/xml"), "{}", r.content_type);
    let doc = r.xml();
    assert_eq!(doc.local(), "definitions");
    // The service's addresses are this gateway as the caller reached it.
    let base = h.base();
    let addresses: Vec<&str> = doc
        .one("service")
        .all("port")
        .flat_map(|p| p.all("address"))
        .filter_map(|a| a.attr("location"))
        .collect();
    assert!(!addresses.is_empty(), "{}", r.body);
    assert!(
        addresses
            .iter()
            .all(|a| a.starts_with(&format!("{base}/v1/integrations/servicenow/"))),
        "{addresses:?}"
    );
    // Another integration's key, no key, and a gRPC-only integration are refused.
    assert_eq!(
        h.get("/v1/integrations/servicenow/wsdl", Some(REMEDY_KEY))
            .await
            .status,
        401
    );
    assert_eq!(
        h.get("/v1/integrations/servicenow/wsdl", None).await.status,
        401
    );
    let r = h
        .get("/v1/integrations/internal/wsdl", Some(INTERNAL_KEY))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("NoXmlRoutes"), "{}", r.body);
    h.stop().await;
}
