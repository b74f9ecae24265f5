//! Tests of the public mapping interface: shipped mappings and their fixtures, load
//! errors, apply problems, outbound rendering and property tests.
//!
//! Longer than 700 lines on purpose: these are the engine's end-to-end tests through its
//! public interface, read top to bottom as a tour of it; the tests of each part's
//! internals live beside that part (`path`, `compile/*`, `xml/tests.rs`, `wsdl/tests.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::check::{check_paths, test_dispatch, test_update};
use super::xml::{Document, Limits};
use super::*;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn servicenow() -> MappingPlan {
    MappingPlan::load(&repo("mappings/servicenow.toml")).expect("servicenow mapping compiles")
}

const SERVICENOW_SAMPLE: &str = "<incident><number>INC0010001</number><cmdb_ci><serial_number>ug1234</serial_number></cmdb_ci><caller_id><name>John Smith</name><phone>123-123-1234</phone><email>john.smith@example.com</email></caller_id><short_description>Safe Door Issue</short_description><description>Cannot open the door</description><u_fault_code>AC12</u_fault_code><opened_at>2021-01-16 09:17:48</opened_at></incident>";

fn parse(xml: &str) -> Document {
    Document::parse(xml.as_bytes(), &Limits::default()).expect("well-formed")
}

#[test]
fn shipped_mappings_and_fixtures_pass() {
    let report = check_paths(&[repo("mappings")]);
    assert!(report.ok(), "{report}");
    assert_eq!(report.mappings_checked, 5, "{report}");
    assert!(report.fixtures_run >= 25, "{report}");
}

#[test]
fn servicenow_sample_maps_to_the_exact_dispatch() {
    let plan = servicenow();
    assert_eq!(plan.source_kind(), SourceKind::Xml);
    let fields = plan.map_document(&parse(SERVICENOW_SAMPLE)).unwrap();
    let want: serde_json::Value = serde_json::from_str(r#"{"MessageType":"Dispatch","CustomerNumber":"A123456","IncidentReference":"INC0010001","DeviceId":"UG1234","ContactName":"John Smith","ContactNumber":"123-123-1234","ContactEmail":"john.smith@example.com","Subject":"Safe Door Issue","Description":"Cannot open the door","FaultCode":"AC12","FaultDateTime":"2021-01-16T15:17:48Z"}"#).unwrap();
    assert_eq!(fields.to_loomis_json("A123456"), want);
}

#[test]
fn plan_is_send_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MappingPlan>();
    assert_send_sync::<Document>();
    let plan = std::sync::Arc::new(servicenow());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let plan = plan.clone();
            std::thread::spawn(move || {
                plan.map_document(&parse(SERVICENOW_SAMPLE))
                    .unwrap()
                    .device_id
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "UG1234");
    }
}

#[test]
fn fixture_check_detects_a_wrong_expectation() {
    // A fixture that disagrees with the mapping must fail the check, with the file,
    // line and the field named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("mappings/servicenow.toml"), dir.path().join("sn.toml")).unwrap();
    let fx = dir.path().join("fixtures/sn");
    std::fs::create_dir_all(&fx).unwrap();
    std::fs::write(fx.join("a.input.xml"), SERVICENOW_SAMPLE).unwrap();
    std::fs::write(
        fx.join("a.expected.json"),
        "{\n\"MessageType\":\"Dispatch\",\"CustomerNumber\":\"A1\",\"IncidentReference\":\"INC0010001\",\n\"DeviceId\":\"ug1234\",\"ContactName\":\"John Smith\",\"ContactNumber\":\"123-123-1234\",\"ContactEmail\":\"john.smith@example.com\",\"Subject\":\"Safe Door Issue\",\"Description\":\"Cannot open the door\",\"FaultCode\":\"AC12\",\"FaultDateTime\":\"2021-01-16T15:17:48Z\"}",
    )
    .unwrap();
    std::fs::write(fx.join("b.input.xml"), "<incident/>").unwrap();
    std::fs::write(fx.join("b.expected-errors.txt"), "DeviceId: wrong\n").unwrap();
    std::fs::write(fx.join("c.bogus"), "").unwrap();
    let report = check_paths(&[dir.path().to_path_buf()]);
    assert!(!report.ok());
    let text = report.to_string();
    assert!(
        text.contains("a.expected.json:3:1: DeviceId: expected \"ug1234\", got \"UG1234\""),
        "{text}"
    );
    assert!(
        text.contains("b.expected-errors.txt:1:1: fixture b: problems differ"),
        "{text}"
    );
    assert!(text.contains("unknown fixture role \"bogus\""), "{text}");
    // Below the minimum set: b has one problem only, and there are no update fixtures.
    assert!(
        text.contains("lack an input with several problems (<case>.expected-errors.txt with two or more lines), update fixtures of two kinds (<case>.update.json and <case>.expected.xml; found: none)"),
        "{text}"
    );
    assert!(!text.contains("lack a happy path"), "{text}");
    assert_eq!(report.errors.len(), 4, "{report:#?}");

    // A mapping whose fixtures folder is missing (or misspelled) fails the check.
    std::fs::copy(
        repo("mappings/servicenow.toml"),
        dir.path().join("other.toml"),
    )
    .unwrap();
    let report = check_paths(&[dir.path().join("other.toml")]);
    assert_eq!(report.errors.len(), 1, "{report:#?}");
    assert!(
        report.errors[0].contains("no golden fixtures in"),
        "{report}"
    );
}

#[test]
fn fixture_check_requires_the_minimum_set() {
    // The shipped ServiceNow fixtures minus every update kind but ACK: the check names
    // the one kind it found; with a second kind back it passes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("mappings/servicenow.toml"), dir.path().join("sn.toml")).unwrap();
    let fx = dir.path().join("fixtures/sn");
    std::fs::create_dir_all(&fx).unwrap();
    for f in [
        "happy.input.xml",
        "happy.expected.json",
        "errors.input.xml",
        "errors.expected-errors.txt",
        "ack.update.json",
        "ack.expected.xml",
    ] {
        std::fs::copy(
            repo(&format!("mappings/fixtures/servicenow/{f}")),
            fx.join(f),
        )
        .unwrap();
    }
    let report = check_paths(&[dir.path().join("sn.toml")]);
    assert_eq!(report.errors.len(), 1, "{report:#?}");
    assert!(
        report.errors[0].contains("lack update fixtures of two kinds (<case>.update.json and <case>.expected.xml; found: ACK)"),
        "{report}"
    );
    for f in ["close.update.json", "close.expected.xml"] {
        std::fs::copy(
            repo(&format!("mappings/fixtures/servicenow/{f}")),
            fx.join(f),
        )
        .unwrap();
    }
    let report = check_paths(&[dir.path().join("sn.toml")]);
    assert!(report.ok(), "{report}");
}

#[test]
fn test_dispatch_and_test_update_commands() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.xml");
    std::fs::write(&input, SERVICENOW_SAMPLE).unwrap();
    let json = test_dispatch(&repo("mappings/servicenow.toml"), &input, "A123456").unwrap();
    assert!(json.starts_with("{\n  \"MessageType\": \"Dispatch\",\n  \"CustomerNumber\": \"A123456\",\n  \"IncidentReference\": \"INC0010001\""), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["FaultDateTime"], "2021-01-16T15:17:48Z");

    std::fs::write(&input, "<incident><number>1</number></incident>").unwrap();
    let err = test_dispatch(&repo("mappings/servicenow.toml"), &input, "A1").unwrap_err();
    assert!(
        err.contains("DeviceId: required, missing at /incident/cmdb_ci/serial_number"),
        "{err}"
    );
    assert!(err.lines().count() >= 5, "{err}");

    let xml = test_update(
        &repo("mappings/servicenow.toml"),
        &repo("mappings/fixtures/servicenow/accept.update.json"),
    )
    .unwrap();
    assert!(
        xml.contains("<u_loomis_state>In Progress</u_loomis_state>"),
        "{xml}"
    );

    // An update with names the gateway never uses gets every problem at once.
    let upd = dir.path().join("u.json");
    std::fs::write(&upd, r#"{"sequence":1,"integration":"servicenow","incident_reference":"R","customer_number":"A1","kind":"ACKNOWLEDGE","state":"Bogus","received_at":"yesterday"}"#).unwrap();
    let err = test_update(&repo("mappings/servicenow.toml"), &upd).unwrap_err();
    assert!(
        err.contains("kind: \"ACKNOWLEDGE\" is not one of ACK, NAK"),
        "{err}"
    );
    assert!(
        err.contains("state: \"Bogus\" is not one of Queued"),
        "{err}"
    );
    assert!(
        err.contains("received_at: \"yesterday\" is not an RFC 3339 time"),
        "{err}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "source = \"xml\"\n[dispatch]\nfoo = 1\n").unwrap();
    let err = test_dispatch(&bad, &input, "A1").unwrap_err();
    assert!(
        err.contains("bad.toml:3:1: unknown Dispatch field \"foo\""),
        "{err}"
    );
}

// ---- load errors -------------------------------------------------------------

fn load_err(text: &str) -> String {
    MappingPlan::from_str(text, "m.toml")
        .unwrap_err()
        .to_string()
}

const MINIMAL: &str = r#"
source = "xml"
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

#[test]
fn minimal_mapping_compiles() {
    let plan = MappingPlan::from_str(MINIMAL, "m.toml").unwrap();
    assert!(!plan.has_outbound());
    let doc =
        parse("<r><n>1</n><d>d</d><c>c</c><p>p</p><s>s</s><t>2021-01-16T15:17:48+01:00</t></r>");
    let f = plan.map_document(&doc).unwrap();
    // Without a datetime transform FaultDateTime is read as RFC 3339 and normalized.
    assert_eq!(f.fault_date_time, "2021-01-16T14:17:48Z");
    assert_eq!(f.contact_email, None);
}

#[test]
fn every_load_error_is_reported_with_position() {
    let text = r#"source = "xml"
timezone = "Mars/Olympus"
colour = "red"
[namespaces]
a = "urn:a"
[dispatch.IncidentReference]
path = "/x:incident/number"
[dispatch.DeviceId]
path = "d"
value = "x"
[dispatch.ContactName]
pth = "c"
[dispatch.ContactNumber]
path = "p"
transforms = ["trim", "shout", { truncate = 0 }, { replace = { pattern = "(" } }, { lookup = "nope" }]
[dispatch.Subject]
path = "s"
required = false
[dispatch.MessageType]
value = "Dispatch"
[dispatch.FaultDateTime]
path = "t"
transforms = [{ datetime = { format = "%Y", timezone = "UTC" } }]
"#;
    let errors = MappingPlan::from_str(text, "m.toml").unwrap_err();
    let shown = errors.to_string();
    let expect = [
        "m.toml:2:12: timezone: \"Mars/Olympus\" is not a known IANA time zone",
        "m.toml:3:1: unknown key \"colour\" in the mapping file",
        "m.toml:7:8: [dispatch.IncidentReference] path: \"/x:incident/number\": namespace prefix \"x\" is not declared",
        "[dispatch.DeviceId]: give only one of `path`, `value`, `template` (found path, value)",
        "m.toml:12:1: unknown key \"pth\" in [dispatch.ContactName]",
        "[dispatch.ContactName]: say where the value comes from",
        "m.toml:15:23: [dispatch.ContactNumber] transforms: unknown transform \"shout\"",
        "transforms truncate: expected an integer from 1 to 1000000",
        "transforms replace pattern: invalid regular expression",
        "no lookup named \"nope\"",
        "m.toml:18:12: [dispatch.Subject] required = false: Loomis requires Subject",
        "m.toml:19:11: MessageType is filled by the gateway",
        "[dispatch] has no Description (Loomis requires it)",
        "does not give a full date and time",
    ];
    for e in expect {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
    assert_eq!(errors.errors.len(), expect.len(), "{shown}");
    // Sorted by position, one per line, each "file:line:col: message".
    for line in shown.lines() {
        let mut parts = line.splitn(4, ':');
        assert_eq!(parts.next(), Some("m.toml"));
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
    }
}

#[test]
fn toml_syntax_errors_have_positions() {
    let shown = load_err("source = \"xml\"\n[dispatch\nx = \n");
    assert!(shown.starts_with("m.toml:2:"), "{shown}");
    assert!(shown.contains("TOML syntax"), "{shown}");
}

#[test]
fn source_kind_is_required_and_checked() {
    assert!(load_err("[dispatch]\n").contains("missing key `source`"));
    assert!(load_err("source = \"json\"\n").contains("\"json\" is not one of: xml, fields"));
    let fields_with_ns = MINIMAL.replace(
        "source = \"xml\"",
        "source = \"fields\"\n[namespaces]\na = \"urn:a\"",
    );
    assert!(load_err(&fields_with_ns).contains("only for source = \"xml\""));
}

#[test]
fn outbound_errors() {
    let text = format!(
        "{MINIMAL}\n[outbound]\nroot = \"x:u\"\nenvelope = \"soap9\"\n[[outbound.element]]\npath = \"a/@b/c\"\nfield = \"kind\"\n[[outbound.element]]\npath = \"s\"\nfield = \"colour\"\nkinds = [\"ACK\", \"MAYBE\"]\n[[outbound.element]]\npath = \"t\"\ntemplate = \"{{kind}} {{nope}}\"\n"
    );
    let shown = load_err(&text);
    for e in [
        "outbound.root: namespace prefix \"x\" is not declared",
        "outbound.envelope: \"soap9\" is not one of: none, soap11, soap12",
        "an attribute must come last",
        "unknown update field \"colour\"",
        "\"MAYBE\" is not one of: ACK",
        "unknown update field \"nope\"",
    ] {
        assert!(shown.contains(e), "missing {e:?} in:\n{shown}");
    }
}

// ---- applying ----------------------------------------------------------------

#[test]
fn problems_name_field_and_source() {
    let plan = servicenow();
    let doc = parse("<incident><number>INC1</number><caller_id><phone>1</phone></caller_id><opened_at>16/01/2021</opened_at></incident>");
    let problems = plan.map_document(&doc).unwrap_err();
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "DeviceId: required, missing at /incident/cmdb_ci/serial_number",
            "ContactName: required, missing at /incident/caller_id/name",
            "Subject: required, missing at /incident/short_description",
            "Description: required, missing at /incident/description | /incident/short_description",
            "FaultDateTime: \"16/01/2021\" is not a date-time in format %Y-%m-%d %H:%M:%S",
        ]
    );
    assert_eq!(problems[4].source, "/incident/opened_at");
}

#[test]
fn wrong_input_kind_is_a_problem_not_a_panic() {
    let plan = servicenow();
    let err = plan.map_fields(&HashMap::new()).unwrap_err();
    assert_eq!(err[0].field, "mapping");
    let grpc = MappingPlan::load(&repo("mappings/internal-grpc.toml")).unwrap();
    assert_eq!(grpc.source_kind(), SourceKind::Fields);
    assert!(grpc.map_document(&parse("<a/>")).is_err());
}

#[test]
fn identifiers_over_the_limit_are_refused_text_is_truncated() {
    let plan = MappingPlan::from_str(MINIMAL, "m.toml").unwrap();
    let long_id = "X".repeat(65);
    let long_text = "é".repeat(150);
    let xml = format!("<r><n>{long_id}</n><d>d</d><c>{long_text}</c><p>p</p><s>{long_text}</s><t>2021-01-16T15:17:48Z</t></r>");
    let problems = plan.map_document(&parse(&xml)).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "IncidentReference");
    assert!(problems[0].message.contains("longer than 64 characters"));
    let xml = format!("<r><n>1</n><d>d</d><c>{long_text}</c><p>p</p><s>{long_text}</s><t>2021-01-16T15:17:48Z</t></r>");
    let f = plan.map_document(&parse(&xml)).unwrap();
    assert_eq!(f.contact_name.chars().count(), 100);
    assert_eq!(f.subject.chars().count(), 100);
    assert_eq!(f.description.chars().count(), 150);
}

#[test]
fn repeated_modes_constants_templates_and_defaults() {
    let text = r#"
source = "xml"
[dispatch.IncidentReference]
template = "{/r/a}-{/r/b}"
[dispatch.DeviceId]
value = "DEV1"
[dispatch.ContactName]
path = "n"
repeated = "last"
[dispatch.ContactNumber]
path = "missing"
transforms = [{ default = "unknown" }]
[dispatch.Subject]
path = "n"
repeated = "join"
separator = " / "
[dispatch.Description]
path = "n"
[dispatch.FaultCode]
template = "{x}{y}"
[dispatch.FaultDateTime]
value = "2021-01-16T15:17:48Z"
"#;
    let plan = MappingPlan::from_str(text, "m.toml").unwrap();
    let f = plan
        .map_document(&parse(
            "<r><a>A</a><b>B</b><n>one</n><n> </n><n>two</n></r>",
        ))
        .unwrap();
    assert_eq!(f.incident_reference, "A-B");
    assert_eq!(f.device_id, "DEV1");
    assert_eq!(f.contact_name, "two");
    assert_eq!(f.contact_number, "unknown");
    assert_eq!(f.subject, "one / two");
    assert_eq!(f.description, "one");
    assert_eq!(
        f.fault_code, None,
        "a template whose values are all missing is empty"
    );
    // Half a template still renders.
    let f = plan
        .map_document(&parse("<r><a>A</a><n>x</n></r>"))
        .unwrap();
    assert_eq!(f.incident_reference, "A-");
}

#[test]
fn fields_mapping_uses_plain_keys() {
    let plan = MappingPlan::load(&repo("mappings/internal-grpc.toml")).unwrap();
    let mut fields: HashMap<String, String> = [
        ("reference", "R1"),
        ("device", "dev"),
        ("contact.name", "N"),
        ("contact.phone", "P"),
        ("subject", "S"),
        ("fault_time", "2021-01-16T16:17:48+01:00"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let f = plan.map_fields(&fields).unwrap();
    assert_eq!(f.device_id, "DEV");
    assert_eq!(f.fault_date_time, "2021-01-16T15:17:48Z");
    assert_eq!(
        plan.cancel_reason_fields(&fields).unwrap(),
        "Cancelled by internal service"
    );
    fields.insert("reason".into(), " gone ".into());
    assert_eq!(plan.cancel_reason_fields(&fields).unwrap(), "gone");
}

#[test]
fn cancel_reason_defaults() {
    let plan = servicenow();
    assert_eq!(plan.cancel_reason(None).unwrap(), "Cancelled in ServiceNow");
    let doc = parse("<cancel><reason>Fixed</reason></cancel>");
    assert_eq!(plan.cancel_reason(Some(&doc)).unwrap(), "Fixed");
    let minimal = MappingPlan::from_str(MINIMAL, "m.toml").unwrap();
    assert_eq!(
        minimal.cancel_reason(Some(&doc)).unwrap(),
        "Cancelled by customer"
    );
    let long = format!("<cancel><reason>{}</reason></cancel>", "a".repeat(2000));
    assert_eq!(plan.cancel_reason(Some(&parse(&long))).unwrap().len(), 1000);
}

// ---- outbound -------------------------------------------------------------------

fn update(kind: &str) -> UpdateView {
    UpdateView {
        sequence: 5,
        integration: "servicenow".into(),
        incident_reference: "INC1".into(),
        incident_id: Some("INC400300".into()),
        customer_number: "A123456".into(),
        kind: kind.into(),
        state: "Accepted".into(),
        response_code: None,
        response_text: Some("a <b> & \"c\" \u{1} d".into()),
        sla_time: Some("2021-01-16T15:17:48Z".parse().unwrap()),
        event_time: None,
        received_at: "2021-01-16T15:17:49Z".parse().unwrap(),
    }
}

#[test]
fn default_document_is_well_formed_and_omits_empty_values() {
    let plan = MappingPlan::from_str(MINIMAL, "m.toml").unwrap();
    let xml = plan.render_update(&update("ACCEPT")).unwrap();
    let text = String::from_utf8(xml.clone()).unwrap();
    assert!(
        text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<IncidentUpdate>"),
        "{text}"
    );
    assert!(!text.contains("ResponseCode"), "{text}");
    assert!(!text.contains("EventTime"), "{text}");
    assert!(
        text.contains("<SlaTime>2021-01-16T15:17:48Z</SlaTime>"),
        "{text}"
    );
    // Escaped, control characters replaced, and parseable by our own strict parser.
    let doc = Document::parse(&xml, &Limits::default()).unwrap();
    let rt = doc
        .payload_root()
        .children()
        .find(|c| c.local_name() == "ResponseText")
        .unwrap();
    assert_eq!(rt.text(), "a <b> & \"c\" \u{fffd} d");
    assert_eq!(render_default_update(&update("ACCEPT")).unwrap(), xml);
}

#[test]
fn an_unmapped_kind_is_a_load_error() {
    // Every update kind is posted to the tool, so a lookup on `kind` that misses one is
    // a dead letter waiting to happen: refused at load, naming the kinds.
    let by_kind = format!(
        "{MINIMAL}\n[lookups.st]\nentries = {{ ACK = \"New\", NAK = \"Failed\" }}\n[outbound]\nroot = \"u\"\nindent = 0\n[[outbound.element]]\npath = \"state\"\nfield = \"kind\"\ntransforms = [{{ lookup = \"st\" }}]\n"
    );
    let load_error = |text: &str| {
        MappingPlan::from_str(text, "m.toml")
            .unwrap_err()
            .to_string()
    };
    let rendered = |text: &str, kind: &str| {
        let plan = MappingPlan::from_str(text, "m.toml").unwrap();
        String::from_utf8(plan.render_update(&update(kind)).unwrap()).unwrap()
    };
    let err = load_error(&by_kind);
    assert!(err.starts_with("m.toml:23:1: "), "{err}");
    assert!(
        err.contains("the update kinds ACCEPT, CLOSE, CANCEL, REJECTED, DELIVERY_FAILED would not render (\"ACCEPT\" is not in lookup st and the lookup has no default)"),
        "{err}"
    );
    // Limited to the kinds it maps, or with a default, it loads and renders.
    let limited = format!("{by_kind}kinds = [\"ACK\", \"NAK\"]\n");
    assert_eq!(
        rendered(&limited, "ACK"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><u><state>New</state></u>\n"
    );
    // An earlier entry for the same path that always has a value for the other kinds
    // covers them: the first non-blank value wins, the lookup is never reached.
    let covered = by_kind.replace(
        "[[outbound.element]]\npath = \"state\"\nfield = \"kind\"",
        "[[outbound.element]]\npath = \"state\"\nvalue = \"Done\"\nkinds = [\"ACCEPT\", \"CLOSE\", \"CANCEL\", \"REJECTED\", \"DELIVERY_FAILED\"]\n[[outbound.element]]\npath = \"state\"\nfield = \"kind\"",
    );
    let close = rendered(&covered, "CLOSE");
    assert!(close.contains("<state>Done</state>"), "{close}");
    // One kind left out of that entry is still found.
    let uncovered = covered.replace("\"REJECTED\", ", "");
    let err = load_error(&uncovered);
    assert!(
        err.contains("the update kind REJECTED would not render"),
        "{err}"
    );
    let defaulted = by_kind.replace(
        "NAK = \"Failed\" }",
        "NAK = \"Failed\" }\ndefault = \"Other\"",
    );
    let close = rendered(&defaulted, "CLOSE");
    assert!(close.contains("<state>Other</state>"), "{close}");
}

#[test]
fn an_unmapped_value_of_another_field_is_a_render_error() {
    let text = format!(
        "{MINIMAL}\n[lookups.st]\nentries = {{ Accepted = \"Work in progress\" }}\n[outbound]\nroot = \"u\"\nindent = 0\n[[outbound.element]]\npath = \"state\"\nfield = \"state\"\ntransforms = [{{ lookup = \"st\" }}]\n"
    );
    let plan = MappingPlan::from_str(&text, "m.toml").unwrap();
    assert_eq!(
        String::from_utf8(plan.render_update(&update("ACK")).unwrap()).unwrap(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><u><state>Work in progress</state></u>\n"
    );
    let mut closed = update("CLOSE");
    closed.state = "Closed".into();
    let err = plan.render_update(&closed).unwrap_err();
    assert_eq!(
        err.to_string(),
        "state: \"Closed\" is not in lookup st and the lookup has no default"
    );
}

#[test]
fn schema_lists_every_key_the_compiler_accepts() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("mappings/mapping.schema.json")).unwrap(),
    )
    .unwrap();
    let defs = &schema["$defs"];
    let props = |v: &serde_json::Value| -> Vec<String> {
        v["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let check = |keys: &[&str], have: Vec<String>, place: &str| {
        for k in keys {
            assert!(have.iter().any(|h| h == k), "schema lacks {k:?} in {place}");
        }
        for h in &have {
            assert!(
                keys.contains(&h.as_str()),
                "schema has {h:?} in {place}, the compiler does not accept it"
            );
        }
    };
    check(compile::TOP_KEYS, props(&schema), "top level");
    check(compile::FIELD_KEYS, props(&defs["field"]), "field");
    check(compile::CANCEL_KEYS, props(&defs["cancel"]), "cancel");
    check(compile::LOOKUP_KEYS, props(&defs["lookup"]), "lookup");
    check(compile::OUTBOUND_KEYS, props(&defs["outbound"]), "outbound");
    check(compile::ELEMENT_KEYS, props(&defs["element"]), "element");
    check(compile::DATETIME_KEYS, props(&defs["datetime"]), "datetime");
    check(compile::REPLACE_KEYS, props(&defs["replace"]), "replace");
    check(compile::MATCHES_KEYS, props(&defs["matches"]), "matches");
    let dispatch: Vec<&str> = DispatchField::ALL.iter().map(|f| f.name()).collect();
    check(
        &dispatch,
        props(&schema["properties"]["dispatch"]),
        "dispatch",
    );
    let simple: Vec<String> = defs["transform"]["oneOf"][0]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    check(transform::Transform::SIMPLE, simple, "simple transforms");
    let table: Vec<String> = defs["transform"]["oneOf"][1]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| {
            v["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
        })
        .collect();
    check(transform::Transform::TABLE, table, "table transforms");
    let fields: Vec<String> = defs["element"]["properties"]["field"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let names: Vec<&str> = outbound::UpdateField::ALL.iter().map(|(n, _)| *n).collect();
    check(&names, fields, "update fields");
}

// ---- properties -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn parse_and_map_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let plan = servicenow();
        if let Ok(doc) = Document::parse(&bytes, &Limits::default()) {
            let _ = plan.map_document(&doc);
            let _ = plan.cancel_reason(Some(&doc));
        }
    }

    #[test]
    fn parse_and_map_never_panic_on_small_xml(
        parts in proptest::collection::vec(prop_oneof![
            Just("<incident>".to_string()), Just("</incident>".to_string()),
            Just("<number>".to_string()), Just("</number>".to_string()),
            Just("<cmdb_ci><serial_number>".to_string()), Just("</serial_number></cmdb_ci>".to_string()),
            Just("<opened_at>2021-03-14 02:30:00</opened_at>".to_string()),
            Just("<a:x xmlns:a=\"urn:a\">".to_string()), Just("</a:x>".to_string()),
            Just("<![CDATA[<&>]]>".to_string()), Just("&amp;&#x1F600;&#0;&bogus;".to_string()),
            Just("<e a=\"1\" b='&lt;'/>".to_string()), Just("<!DOCTYPE x>".to_string()),
            Just("<?pi x?><!-- c -->".to_string()),
            "[a-zé 日<>&;/\"'=]{0,12}",
        ], 0..24)
    ) {
        let plan = servicenow();
        let text = parts.concat();
        if let Ok(doc) = Document::parse(text.as_bytes(), &Limits::default()) {
            let _ = plan.map_document(&doc);
        }
    }

    #[test]
    fn fields_mapping_never_panics(
        map in proptest::collection::hash_map("[a-z._]{1,14}", "\\PC{0,40}", 0..12)
    ) {
        let plan = MappingPlan::load(&repo("mappings/internal-grpc.toml")).unwrap();
        let _ = plan.map_fields(&map);
        let _ = plan.cancel_reason_fields(&map);
    }

    #[test]
    fn mapping_compiler_never_panics(text in "\\PC{0,300}") {
        let _ = MappingPlan::from_str(&text, "p.toml");
    }

    #[test]
    fn valid_values_round_trip(reference in "[A-Z0-9]{1,20}", name in "[a-zA-Zé ]{1,30}") {
        let plan = servicenow();
        let xml = format!(
            "<incident><number>{reference}</number><cmdb_ci><serial_number>x</serial_number></cmdb_ci><caller_id><name>{name}</name><phone>1</phone></caller_id><short_description>s</short_description><opened_at>2021-01-16 09:17:48</opened_at></incident>"
        );
        let doc = Document::parse(xml.as_bytes(), &Limits::default()).unwrap();
        match plan.map_document(&doc) {
            Ok(f) => {
                prop_assert_eq!(f.incident_reference, reference);
                prop_assert_eq!(f.contact_name, name.split_whitespace().collect::<Vec<_>>().join(" "));
            }
            Err(p) => {
                // Only a blank name may fail.
                prop_assert!(name.trim().is_empty(), "{:?}", p);
            }
        }
    }
}

#[test]
fn a_root_in_another_namespace_is_named_not_just_every_field_missing() {
    let plan = MappingPlan::load(&repo("mappings/servicenow.toml")).unwrap();
    let limits = super::xml::Limits::default();
    let moved = SERVICENOW_SAMPLE.replacen("<incident>", "<incident xmlns=\"urn:example:v2\">", 1);
    let doc = super::xml::Document::parse(moved.as_bytes(), &limits).unwrap();
    let problems = plan.map_document(&doc).unwrap_err();
    let hint = problems
        .iter()
        .find(|p| p.field == "document")
        .expect("a document problem");
    assert!(
        hint.message
            .contains("<incident> in namespace \"urn:example:v2\"")
            && hint.message.contains("<incident> in no namespace"),
        "{}",
        hint.message
    );
    // A document the mapping reads gets no such hint, even with field problems.
    let doc =
        super::xml::Document::parse(b"<incident><number>1</number></incident>", &limits).unwrap();
    let problems = plan.map_document(&doc).unwrap_err();
    assert!(
        problems.iter().all(|p| p.field != "document"),
        "{problems:?}"
    );
}

#[test]
fn update_posts_carry_the_content_type_of_their_envelope() {
    let sn = servicenow();
    assert_eq!(
        sn.update_headers(),
        &[("content-type", "application/xml; charset=utf-8")]
    );
    let remedy = MappingPlan::load(&repo("mappings/remedy.toml")).unwrap();
    assert_eq!(
        remedy.update_headers(),
        &[
            ("content-type", "text/xml; charset=utf-8"),
            ("soapaction", "\"\"")
        ]
    );
    let soap12 = std::fs::read_to_string(repo("mappings/remedy.toml"))
        .unwrap()
        .replace("envelope = \"soap11\"", "envelope = \"soap12\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r12.toml"), soap12).unwrap();
    let r12 = MappingPlan::load(&dir.path().join("r12.toml")).unwrap();
    assert_eq!(
        r12.update_headers(),
        &[("content-type", "application/soap+xml; charset=utf-8")]
    );
}
