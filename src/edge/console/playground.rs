//! The mapping playground: pick an integration, paste (or load) a sample, and see the
//! Dispatch its mapping makes, through the gateway's own intake path (so it approves
//! exactly what the gateway accepts), or every problem; render the post back to the tool
//! for a chosen update kind; download the pair as golden fixture files (a tar of
//! `<case>.input.xml` or `.input.json`, `<case>.expected.json` or
//! `.expected-errors.txt`, `<case>.update.json` and `<case>.expected.xml`) to unpack into
//! `mappings/fixtures/<mapping>/`. Nothing is stored; read-only users may use it.

use super::html::{esc, page};
use super::{first, form, html_response, viewer, ConsoleState};
use crate::intake::IntegrationRuntime;
use crate::mapping::xml::{Document, Limits};
use crate::mapping::{SourceKind, UpdateView};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

/// Update kinds the outbound renderer knows, with the state each leaves.
const KINDS: [(&str, &str); 7] = [
    ("ACK", "Acknowledged"),
    ("NAK", "Rejected"),
    ("ACCEPT", "Accepted"),
    ("CLOSE", "Closed"),
    ("CANCEL", "Cancelled"),
    ("REJECTED", "Rejected"),
    ("DELIVERY_FAILED", "Failed"),
];

/// What one run of the playground produced.
struct Outcome {
    /// The Dispatch as Loomis would get it (pretty JSON), or every problem, one a line.
    dispatch: Result<String, Vec<String>>,
    /// The update given to the renderer (pretty JSON) and the XML it rendered.
    post: Option<(String, Result<String, String>)>,
}

fn run_sample(rt: &IntegrationRuntime, sample: &str, kind: &str) -> Outcome {
    let dispatch = match rt.plan.source_kind() {
        SourceKind::Xml => match Document::parse(sample.as_bytes(), &Limits::default()) {
            Err(e) => Err(vec![format!("XML: {e}")]),
            Ok(doc) => crate::intake::from_document(rt, &doc).map_err(problem_lines),
        },
        SourceKind::Fields => {
            match serde_json::from_str::<std::collections::HashMap<String, String>>(sample) {
                Err(e) => Err(vec![format!(
                    "JSON (an object of string fields) at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                )]),
                Ok(fields) => crate::intake::from_fields(rt, &fields).map_err(problem_lines),
            }
        }
    };
    let post = dispatch.as_ref().ok().map(|d| {
        let state = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("Acknowledged", |(_, s)| s);
        let now = jiff::Timestamp::now();
        let view = UpdateView {
            sequence: 1,
            integration: rt.name.clone(),
            incident_reference: d.incident_reference.clone(),
            incident_id: Some("INC000001".into()),
            customer_number: rt.customer_number.clone(),
            kind: kind.to_string(),
            state: state.to_string(),
            response_code: (kind == "NAK").then(|| "DeviceNotFound".to_string()),
            response_text: Some(format!("{kind} from the console playground")),
            sla_time: (kind == "ACCEPT").then_some(now),
            event_time: Some(now),
            received_at: now,
        };
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "sequence": view.sequence,
            "integration": view.integration,
            "incident_reference": view.incident_reference,
            "incident_id": view.incident_id,
            "customer_number": view.customer_number,
            "kind": view.kind,
            "state": view.state,
            "response_code": view.response_code,
            "response_text": view.response_text,
            "sla_time": view.sla_time.map(crate::loomis::message::format_utc),
            "event_time": view.event_time.map(crate::loomis::message::format_utc),
            "received_at": crate::loomis::message::format_utc(view.received_at),
        }))
        .unwrap_or_default();
        let rendered = if rt.plan.has_outbound() {
            rt.plan.render_update(&view)
        } else {
            crate::mapping::render_default_update(&view)
        };
        let xml = rendered
            .map_err(|e| e.to_string())
            .map(|b| hide_secrets(rt, &String::from_utf8_lossy(&b)));
        (json, xml)
    });
    Outcome {
        dispatch: dispatch.map(|d| serde_json::to_string_pretty(&d).unwrap_or_default()),
        post,
    }
}

/// The rendered post with the values of the mapping's secrets (`secret_env`) and any
/// secret-looking element replaced by `***`.
fn hide_secrets(rt: &IntegrationRuntime, xml: &str) -> String {
    let mut out = xml.to_string();
    for name in rt.plan.secret_envs() {
        if let Ok(v) = std::env::var(&name) {
            if !v.is_empty() {
                out = out.replace(&v, "***");
            }
        }
    }
    crate::store::query::redact(&out)
}

fn problem_lines(ps: Vec<crate::loomis::message::FieldProblem>) -> Vec<String> {
    ps.into_iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect()
}

fn form_html(s: &ConsoleState, integration: &str, sample: &str, kind: &str, case: &str) -> String {
    let integrations = s.integrations.get();
    let mut names: Vec<&String> = integrations.keys().collect();
    names.sort();
    let opts: String = names
        .iter()
        .map(|n| {
            let kind = match integrations[n.as_str()].plan.source_kind() {
                SourceKind::Xml => "XML",
                SourceKind::Fields => "gRPC fields, JSON",
            };
            format!(
                r#"<option value="{v}"{sel}>{v} ({kind})</option>"#,
                v = esc(n),
                sel = if n.as_str() == integration {
                    " selected"
                } else {
                    ""
                }
            )
        })
        .collect();
    let kinds: String = KINDS
        .iter()
        .map(|(k, _)| {
            format!(
                "<option{}>{k}</option>",
                if *k == kind { " selected" } else { "" }
            )
        })
        .collect();
    format!(
        r#"<form method="post" action="/console/playground" id="playground">
<label>Integration <select name="integration" id="pg-integration">{opts}</select></label>
<label>Update kind to render <select name="kind" id="pg-kind">{kinds}</select></label>
<label>Fixture case name <input name="case" id="pg-case" value="{case}" pattern="[a-z0-9-]+"></label>
<label>Sample (paste, or load a file) <input type="file" id="pg-file" accept=".xml,.json,.txt"></label>
<textarea name="sample" id="pg-sample" rows="14" spellcheck="false">{sample}</textarea>
<button id="pg-run">Map it</button>
<button formaction="/console/playground/fixture" id="pg-fixture">Download as golden fixture</button></form>"#,
        case = esc(case),
        sample = esc(sample)
    )
}

/// `GET /console/playground`.
pub async fn show(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let body = form_html(&s, "", "", "ACK", "sample");
    html_response(
        StatusCode::OK,
        page("Mapping playground", Some(&session), &body),
    )
}

/// The runtime of the form's integration, or the page saying it is unknown.
fn runtime(s: &ConsoleState, name: &str) -> Option<IntegrationRuntime> {
    s.integrations.get().get(name).cloned()
}

/// `POST /console/playground`: the form again, with the Dispatch or the problems, and
/// the rendered post.
pub async fn run(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let f = form(&body);
    let (name, sample, kind) = (
        first(&f, "integration"),
        first(&f, "sample"),
        first(&f, "kind"),
    );
    let mut out = form_html(&s, name, sample, kind, first(&f, "case"));
    let Some(rt) = runtime(&s, name) else {
        out.push_str(r#"<p class="error">Pick an integration.</p>"#);
        return html_response(
            StatusCode::BAD_REQUEST,
            page("Mapping playground", Some(&session), &out),
        );
    };
    let result = run_sample(&rt, sample, kind);
    let _ = write!(
        out,
        r#"<p class="hint">Mapping {} (version {})</p>"#,
        esc(rt.plan.origin()),
        esc(&rt.mapping_version)
    );
    match &result.dispatch {
        Ok(json) => {
            let _ = write!(
                out,
                r#"<h2>Dispatch</h2><pre class="msg" id="pg-dispatch">{}</pre>"#,
                esc(json)
            );
        }
        Err(problems) => {
            let _ = write!(
                out,
                r#"<h2>{} problem{}</h2><ul class="error" id="pg-errors">{}</ul>"#,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems
                    .iter()
                    .map(|p| format!("<li>{}</li>", esc(p)))
                    .collect::<String>()
            );
        }
    }
    if let Some((update, xml)) = &result.post {
        let _ = write!(out, r#"<h2>Post to the tool for {}</h2>"#, esc(kind));
        match xml {
            Ok(x) => {
                let _ = write!(
                    out,
                    r#"<pre class="msg" id="pg-post">{}</pre>"#,
                    esc(&super::html::pretty_xml(x))
                );
            }
            Err(e) => {
                let _ = write!(out, r#"<p class="error" id="pg-post-error">{}</p>"#, esc(e));
            }
        }
        let _ = write!(
            out,
            r#"<details><summary>update given to the renderer</summary><pre class="msg">{}</pre></details>"#,
            esc(update)
        );
    }
    html_response(
        StatusCode::OK,
        page("Mapping playground", Some(&session), &out),
    )
}

/// `POST /console/playground/fixture`: the sample and what it gave, as fixture files in a
/// tar archive.
pub async fn fixture(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = viewer(&s, &headers) {
        return *r;
    }
    let f = form(&body);
    let Some(rt) = runtime(&s, first(&f, "integration")) else {
        return (StatusCode::BAD_REQUEST, "pick an integration").into_response();
    };
    let case: String = first(&f, "case")
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    let case = if case.is_empty() {
        "sample".to_string()
    } else {
        case
    };
    let (sample, kind) = (first(&f, "sample"), first(&f, "kind"));
    let result = run_sample(&rt, sample, kind);
    let input_ext = match rt.plan.source_kind() {
        SourceKind::Xml => "xml",
        SourceKind::Fields => "json",
    };
    let mut files: Vec<(String, String)> =
        vec![(format!("{case}.input.{input_ext}"), sample.to_string())];
    match result.dispatch {
        Ok(json) => files.push((format!("{case}.expected.json"), json + "\n")),
        Err(problems) => files.push((
            format!("{case}.expected-errors.txt"),
            problems.join("\n") + "\n",
        )),
    }
    if let Some((update, Ok(xml))) = result.post {
        let k = kind.to_ascii_lowercase().replace('_', "-");
        files.push((format!("{case}-{k}.update.json"), update + "\n"));
        files.push((format!("{case}-{k}.expected.xml"), xml));
    }
    let tar = tar_of(&files);
    (
        [
            (http::header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{case}.fixture.tar\""),
            ),
        ],
        tar,
    )
        .into_response()
}

/// A ustar archive of small text files (what `tar -xf` unpacks).
pub fn tar_of(files: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, text) in files {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(&mut h, 0, &name.as_bytes()[..name.len().min(99)]);
        put(&mut h, 100, b"0000644\0");
        put(&mut h, 108, b"0000000\0");
        put(&mut h, 116, b"0000000\0");
        put(&mut h, 124, format!("{:011o}\0", text.len()).as_bytes());
        put(
            &mut h,
            136,
            format!("{:011o}\0", jiff::Timestamp::now().as_second().max(0)).as_bytes(),
        );
        put(&mut h, 148, b"        ");
        h[156] = b'0';
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(text.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
