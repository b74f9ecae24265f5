//! Tests of the outbound compiler and renderer together: keyed siblings, conditions,
//! SOAP header blocks with secrets, SOAPAction, and the load errors of each.

use crate::mapping::{MappingPlan, UpdateView};

const INBOUND: &str = r#"source = "xml"
[namespaces]
urn = "urn:HPD_IncidentInterface_WS"
[dispatch.IncidentReference]
path = "n"
[dispatch.DeviceId]
path = "d"
[dispatch.ContactName]
path = "c"
[dispatch.ContactNumber]
path = "p"
[dispatch.Subject]
path = "s"
[dispatch.Description]
path = "s"
[dispatch.FaultDateTime]
path = "t"
"#;

fn plan(outbound: &str) -> Result<MappingPlan, String> {
    let secrets = |name: &str| (name == "TOOL_PASSWORD").then(|| "s3cr&t".to_string());
    MappingPlan::from_str_with_secrets(&format!("{INBOUND}{outbound}"), "m.toml", &secrets)
        .map_err(|e| e.to_string())
}

fn update(kind: &str, incident_id: Option<&str>, text: Option<&str>) -> UpdateView {
    UpdateView {
        sequence: 7,
        integration: "otrs".into(),
        incident_reference: "2021011610000018".into(),
        incident_id: incident_id.map(str::to_string),
        customer_number: "A123456".into(),
        kind: kind.into(),
        state: "Accepted".into(),
        response_code: None,
        response_text: text.map(str::to_string),
        sla_time: None,
        event_time: None,
        received_at: "2021-01-16T15:17:49Z".parse().unwrap(),
    }
}

fn render(p: &MappingPlan, u: &UpdateView) -> String {
    String::from_utf8(p.render_update(u).unwrap()).unwrap()
}

#[test]
fn keyed_siblings_and_conditional_elements() {
    let p = plan(
        r#"[outbound]
root = "TicketUpdate"
indent = 0
[[outbound.element]]
path = "TicketNumber"
field = "incident_reference"
[[outbound.element]]
path = "DynamicField[Name='LoomisIncidentId']/Value"
field = "incident_id"
[[outbound.element]]
path = "DynamicField[Name='LoomisStatus']/Value"
field = "kind"
[[outbound.element]]
path = "Article"
when = "response_text"
[[outbound.element]]
path = "Article/Subject"
value = "Loomis update"
[[outbound.element]]
path = "Article/Body"
field = "response_text"
[[outbound.element]]
path = "Article/@public"
value = "no"
kinds = ["NAK", "REJECTED"]
[[outbound.element]]
path = "Note[@type='sla']"
field = "incident_id"
when = ["incident_id", "response_text"]
kinds = ["ACCEPT"]
"#,
    )
    .unwrap();
    assert_eq!(
        render(&p, &update("ACCEPT", Some("INC4"), Some("On the way"))),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><TicketUpdate><TicketNumber>2021011610000018</TicketNumber>\
         <DynamicField><Name>LoomisIncidentId</Name><Value>INC4</Value></DynamicField>\
         <DynamicField><Name>LoomisStatus</Name><Value>ACCEPT</Value></DynamicField>\
         <Article><Subject>Loomis update</Subject><Body>On the way</Body></Article>\
         <Note type=\"sla\">INC4</Note></TicketUpdate>\n"
    );
    // No IncidentId: that DynamicField (key and all) is left out; no text: no
    // Article although its Subject is a constant; the Note's `when` fails too.
    assert_eq!(
        render(&p, &update("NAK", None, None)),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><TicketUpdate><TicketNumber>2021011610000018</TicketNumber>\
         <DynamicField><Name>LoomisStatus</Name><Value>NAK</Value></DynamicField></TicketUpdate>\n"
    );
    let nak = render(&p, &update("NAK", None, Some("DeviceNotFound")));
    assert!(nak.contains("<Article public=\"no\"><Subject>"), "{nak}");
}

#[test]
fn soap_header_with_a_secret_and_a_soap_action() {
    let outbound = r#"[outbound]
envelope = "soap11"
soap_action = "urn:HPD_IncidentInterface_WS/HelpDesk_Modify_Service"
root = "urn:HelpDesk_Modify_Service"
indent = 0
[[outbound.header]]
path = "urn:AuthenticationInfo/urn:userName"
value = "loomis-gw"
[[outbound.header]]
path = "urn:AuthenticationInfo/urn:password"
secret_env = "TOOL_PASSWORD"
[[outbound.element]]
path = "urn:Incident_Number"
field = "incident_reference"
"#;
    let p = plan(outbound).unwrap();
    assert_eq!(
        render(&p, &update("ACK", None, None)),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">\
         <soapenv:Header xmlns:urn=\"urn:HPD_IncidentInterface_WS\"><urn:AuthenticationInfo><urn:userName>loomis-gw</urn:userName>\
         <urn:password>s3cr&amp;t</urn:password></urn:AuthenticationInfo></soapenv:Header>\
         <soapenv:Body><urn:HelpDesk_Modify_Service xmlns:urn=\"urn:HPD_IncidentInterface_WS\">\
         <urn:Incident_Number>2021011610000018</urn:Incident_Number></urn:HelpDesk_Modify_Service></soapenv:Body></soapenv:Envelope>\n"
    );
    assert_eq!(
        p.update_headers(),
        [
            ("content-type", "text/xml; charset=utf-8"),
            (
                "soapaction",
                "\"urn:HPD_IncidentInterface_WS/HelpDesk_Modify_Service\""
            )
        ]
    );
    assert_eq!(p.secret_envs(), ["TOOL_PASSWORD"]);
    // The secret never shows in the plan's debug output.
    assert!(!format!("{p:?}").contains("s3cr"));
    let p12 = plan(&outbound.replace("soap11", "soap12")).unwrap();
    assert_eq!(
        p12.update_headers(),
        [(
            "content-type",
            "application/soap+xml; charset=utf-8; action=\"urn:HPD_IncidentInterface_WS/HelpDesk_Modify_Service\""
        )]
    );
    // An unset variable is a load error at its secret_env.
    let err = plan(&outbound.replace("TOOL_PASSWORD", "OTHER_PASSWORD")).unwrap_err();
    assert_eq!(
        err,
        "m.toml:28:14: secret_env: the environment variable OTHER_PASSWORD is not set (or empty); set it before starting the gateway"
    );
    // mapping check and mapping test render a placeholder instead.
    let p = MappingPlan::from_str_with_secrets(
        &format!("{INBOUND}{outbound}"),
        "m.toml",
        &crate::mapping::placeholder_secret,
    )
    .unwrap();
    assert!(render(&p, &update("ACK", None, None))
        .contains("<urn:password>***TOOL_PASSWORD***</urn:password>"));
}

#[test]
fn outbound_load_errors_name_the_entry() {
    for (outbound, want) in [
        (
            "[outbound]\nroot = \"r\"\nsoap_action = \"urn:x\"\n",
            "m.toml:20:15: outbound.soap_action: only with envelope",
        ),
        (
            "[outbound]\nroot = \"r\"\nenvelope = \"soap11\"\nsoap_action = \"a \\\"b\\\"\"\n",
            "m.toml:21:15: outbound.soap_action: \"a \\\"b\\\"\" must be a non-empty URI",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.header]]\npath = \"urn:A/urn:b\"\nvalue = \"x\"\n",
            "m.toml:20:1: [[outbound.header]]: header blocks need a SOAP envelope",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"p\"\nsecret_env = \"my password\"\n",
            "m.toml:22:14: [[outbound.element]] \"p\" secret_env: \"my password\" is not an environment variable name",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"p\"\nsecret_env = \"TOOL_PASSWORD\"\ntransforms = [\"trim\"]\n",
            "m.toml:23:14: [[outbound.element]] \"p\" transforms: not with `secret_env`",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"p\"\nwhen = \"nope\"\n",
            "m.toml:22:8: [[outbound.element]] \"p\" when: unknown update field \"nope\"",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"p/@a\"\nkinds = [\"ACK\"]\n",
            "m.toml:20:1: [[outbound.element]] path \"p/@a\": `kinds` / `when` alone make an element conditional",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"D[Name=X]/V\"\nfield = \"kind\"\n",
            "m.toml:21:8: [[outbound.element]] path \"D[Name=X]/V\": predicate [Name=X]",
        ),
        (
            "[outbound]\nroot = \"r\"\nenvelope = \"soap12\"\n[[outbound.header]]\npath = \"Auth/user\"\nvalue = \"x\"\n",
            "m.toml:21:1: [[outbound.header]]: write header element names with a prefix",
        ),
        (
            "[outbound]\nroot = \"r\"\n[[outbound.element]]\npath = \"p\"\n",
            "m.toml:20:1: [[outbound.element]] \"p\": give exactly one of `field`, `value`, `template`, `secret_env`",
        ),
    ] {
        let err = plan(outbound).unwrap_err();
        assert!(err.starts_with(want), "{outbound}\n{err}");
    }
}

#[test]
fn a_condition_on_an_enclosing_element_limits_the_kinds_checked_at_load() {
    let lookup = "[lookups.nak]\nentries = { NAK = \"refused\" }\n";
    let value = "[[outbound.element]]\npath = \"Refusal/Why\"\nfield = \"kind\"\ntransforms = [{ lookup = \"nak\" }]\n";
    let condition = "[[outbound.element]]\npath = \"Refusal\"\nkinds = [\"NAK\"]\n";
    // Without the condition every other kind would fail its lookup: refused at load.
    let err = plan(&format!("{lookup}[outbound]\nroot = \"r\"\n{value}")).unwrap_err();
    assert!(err.contains("the update kinds ACK, ACCEPT, CLOSE, CANCEL, REJECTED, DELIVERY_FAILED would not render"), "{err}");
    // With it, declared after the value, only NAK reaches the lookup.
    let p = plan(&format!(
        "{lookup}[outbound]\nroot = \"r\"\nindent = 0\n{value}{condition}"
    ))
    .unwrap();
    assert!(
        render(&p, &update("NAK", None, None)).contains("<Refusal><Why>refused</Why></Refusal>")
    );
    assert!(!render(&p, &update("ACK", None, None)).contains("Refusal"));
}
