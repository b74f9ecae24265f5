//! `safepoint-gateway mapping check` and `mapping test`: validate mapping files, run
//! their golden fixtures, and try one mapping on one sample input.
//!
//! This is the only part of the mapping engine that reads files (besides
//! [`MappingPlan::load`]). Fixture layout, next to the mapping files:
//!
//! ```text
//! mappings/<name>.toml
//! mappings/fixtures/<name>/<case>.input.xml        XML input (source = "xml")
//! mappings/fixtures/<name>/<case>.input.json       field map input (source = "fields")
//! mappings/fixtures/<name>/<case>.expected.json    the whole Loomis Dispatch expected
//! mappings/fixtures/<name>/<case>.expected-errors.txt   or: every problem, one a line
//! mappings/fixtures/<name>/<case>.update.json      an update (UpdateView as JSON)
//! mappings/fixtures/<name>/<case>.expected.xml     the outbound document expected
//! mappings/fixtures/<name>/<case>.cancel.xml|json  a cancel body (empty file: no body)
//! mappings/fixtures/<name>/<case>.expected-reason.txt   the cancel reason expected
//! ```
//!
//! `CustomerNumber` in `expected.json` is echoed into the produced Dispatch (the gateway
//! fills it from `gateway.toml`, not the mapping), so the whole object can be compared.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::xml::{Document, Limits};
use super::{MappingPlan, Problem, SourceKind, UpdateView};
use crate::loomis::message::Dispatch;

/// The outcome of [`check_paths`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Mapping files compiled.
    pub mappings_checked: usize,
    /// Fixture cases run.
    pub fixtures_run: usize,
    /// Every error, each starting with `file:line:col: `.
    pub errors: Vec<String>,
}

impl CheckReport {
    /// Whether everything passed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        write!(
            f,
            "{} mapping file(s), {} fixture case(s): {}",
            self.mappings_checked,
            self.fixtures_run,
            if self.ok() {
                "ok".to_string()
            } else {
                format!("{} error(s)", self.errors.len())
            }
        )
    }
}

/// Validates mapping files (a directory means every `*.toml` in it; no paths means
/// `mappings/`) and runs each mapping's golden fixtures.
pub fn check_paths(paths: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    let default = [PathBuf::from("mappings")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        report.errors.push(format!(
                            "{}:1:1: no *.toml mapping files in this directory",
                            p.display()
                        ));
                    }
                    files.extend(found);
                }
                Err(e) => report
                    .errors
                    .push(format!("{}:1:1: cannot read directory: {e}", p.display())),
            }
        } else if p.exists() {
            files.push(p.clone());
        } else {
            report.errors.push(format!(
                "{}:1:1: no such file or directory (give mapping files or a directory of them)",
                p.display()
            ));
        }
    }
    for file in files {
        report.mappings_checked += 1;
        match MappingPlan::load(&file) {
            Err(errors) => report
                .errors
                .extend(errors.errors.iter().map(|e| e.to_string())),
            Ok(plan) => run_fixtures(&plan, &file, &mut report),
        }
    }
    report
}

/// Runs one mapping on one sample input (XML, or a JSON object of string fields for a
/// `source = "fields"` mapping). Returns the pretty Loomis Dispatch JSON, or every
/// problem (or the mapping's load errors), one a line.
pub fn test_dispatch(
    mapping: &Path,
    input: &Path,
    customer_number: &str,
) -> Result<String, String> {
    let plan = MappingPlan::load(mapping).map_err(|e| e.to_string())?;
    let bytes =
        std::fs::read(input).map_err(|e| format!("{}: cannot read: {e}", input.display()))?;
    match dispatch(&plan, &bytes, customer_number) {
        Ok(d) => Ok(serde_json::to_string_pretty(&d).unwrap_or_default()),
        Err(lines) => Err(lines.join("\n")),
    }
}

/// Renders the outbound XML for an update given as JSON (the fields of [`UpdateView`];
/// times as RFC 3339 strings).
pub fn test_update(mapping: &Path, update_json: &Path) -> Result<String, String> {
    let plan = MappingPlan::load(mapping).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(update_json)
        .map_err(|e| format!("{}: cannot read: {e}", update_json.display()))?;
    let update = parse_update(&text).map_err(|e| format!("{}: {e}", update_json.display()))?;
    let xml = plan.render_update(&update).map_err(|e| e.to_string())?;
    String::from_utf8(xml).map_err(|e| e.to_string())
}

fn problem_lines(ps: &[Problem]) -> Vec<String> {
    ps.iter().map(|p| p.to_string()).collect()
}

/// Maps raw input per the plan's source kind and applies the Loomis rules, through the
/// gateway's own path ([`DispatchFields::checked_dispatch`]); errors as display lines.
fn dispatch(plan: &MappingPlan, bytes: &[u8], customer: &str) -> Result<Dispatch, Vec<String>> {
    let fields = match plan.source_kind() {
        SourceKind::Xml => {
            let doc = Document::parse(bytes, &Limits::default())
                .map_err(|e| vec![format!("xml: {e}")])?;
            plan.map_document(&doc).map_err(|p| problem_lines(&p))?
        }
        SourceKind::Fields => {
            let fields = parse_fields(bytes).map_err(|e| vec![format!("json: {e}")])?;
            plan.map_fields(&fields).map_err(|p| problem_lines(&p))?
        }
    };
    fields
        .checked_dispatch(customer)
        .map_err(|ps| ps.iter().map(ToString::to_string).collect())
}

fn parse_fields(bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(m) = v else {
        return Err("expected a JSON object of string fields".into());
    };
    m.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(format!(
                "field {k:?} is {other}, expected a string (gRPC fields are strings)"
            )),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateJson {
    sequence: u64,
    integration: String,
    incident_reference: String,
    #[serde(default)]
    incident_id: Option<String>,
    customer_number: String,
    kind: String,
    state: String,
    #[serde(default)]
    response_code: Option<String>,
    #[serde(default)]
    response_text: Option<String>,
    #[serde(default)]
    sla_time: Option<String>,
    #[serde(default)]
    event_time: Option<String>,
    received_at: String,
}

fn parse_update(text: &str) -> Result<UpdateView, String> {
    let u: UpdateJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // Every problem at once: the names the gateway really uses, and the times.
    let mut problems = Vec::new();
    let kinds = super::outbound::KINDS;
    if !kinds.contains(&u.kind.as_str()) {
        problems.push(format!(
            "kind: {:?} is not one of {}",
            u.kind,
            kinds.join(", ")
        ));
    }
    let states: Vec<&str> = crate::incident::State::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    if !states.contains(&u.state.as_str()) {
        problems.push(format!(
            "state: {:?} is not one of {}",
            u.state,
            states.join(", ")
        ));
    }
    let mut time = |name: &str, s: Option<&str>| -> Option<jiff::Timestamp> {
        let s = s?;
        match s.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("{name}: {s:?} is not an RFC 3339 time: {e}"));
                None
            }
        }
    };
    let sla_time = time("sla_time", u.sla_time.as_deref());
    let event_time = time("event_time", u.event_time.as_deref());
    let received_at = time("received_at", Some(&u.received_at));
    let Some(received_at) = received_at.filter(|_| problems.is_empty()) else {
        return Err(problems.join("\n"));
    };
    Ok(UpdateView {
        sequence: u.sequence,
        integration: u.integration,
        incident_reference: u.incident_reference,
        incident_id: u.incident_id,
        customer_number: u.customer_number,
        kind: u.kind,
        state: u.state,
        response_code: u.response_code,
        response_text: u.response_text,
        sla_time,
        event_time,
        received_at,
    })
}

/// The files of one fixture case, by role.
#[derive(Default)]
struct Case {
    input: Option<PathBuf>,
    expected_json: Option<PathBuf>,
    expected_errors: Option<PathBuf>,
    update: Option<PathBuf>,
    expected_xml: Option<PathBuf>,
    cancel: Option<PathBuf>,
    expected_reason: Option<PathBuf>,
}

fn run_fixtures(plan: &MappingPlan, mapping: &Path, report: &mut CheckReport) {
    let Some(stem) = mapping.file_stem() else {
        return;
    };
    let dir = mapping
        .parent()
        .unwrap_or(Path::new("."))
        .join("fixtures")
        .join(stem);
    let missing = || {
        format!(
            "{}:1:1: no golden fixtures in {}/ (next to the mapping): add at least a happy \
             path, an input with several problems and two update kinds (mappings/README.md \
             section 10, \"Fixtures\")",
            mapping.display(),
            dir.display()
        )
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        report.errors.push(missing());
        return;
    };
    let mut cases: BTreeMap<String, Case> = BTreeMap::new();
    let mut names: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if path.is_dir() || file.starts_with('.') || file.eq_ignore_ascii_case("README.md") {
            continue;
        }
        let Some((case, role)) = file.split_once('.') else {
            report.errors.push(format!(
                "{}:1:1: fixture file name must be <case>.<role>",
                path.display()
            ));
            continue;
        };
        let known = [
            "input.xml",
            "input.json",
            "expected.json",
            "expected-errors.txt",
            "update.json",
            "expected.xml",
            "cancel.xml",
            "cancel.json",
            "expected-reason.txt",
        ];
        let c = if known.contains(&role) {
            cases.entry(case.to_string()).or_default()
        } else {
            &mut Case::default()
        };
        let slot = match role {
            "input.xml" | "input.json" => &mut c.input,
            "expected.json" => &mut c.expected_json,
            "expected-errors.txt" => &mut c.expected_errors,
            "update.json" => &mut c.update,
            "expected.xml" => &mut c.expected_xml,
            "cancel.xml" | "cancel.json" => &mut c.cancel,
            "expected-reason.txt" => &mut c.expected_reason,
            _ => {
                report.errors.push(format!(
                    "{}:1:1: unknown fixture role {role:?}; expected input.xml, input.json, expected.json, expected-errors.txt, update.json, expected.xml, cancel.xml, cancel.json or expected-reason.txt",
                    path.display()
                ));
                continue;
            }
        };
        *slot = Some(path);
    }
    let gaps = coverage_gaps(&cases);
    if !gaps.is_empty() {
        report.errors.push(format!(
            "{}:1:1: the fixtures in {}/ lack {}: every mapping needs at least a happy path, \
             an input with several problems and two update kinds (mappings/README.md \
             section 10, \"Fixtures\")",
            mapping.display(),
            dir.display(),
            gaps.join(", ")
        ));
    }
    for (name, case) in cases {
        report.fixtures_run += 1;
        run_case(plan, &dir, &name, &case, report);
    }
}

/// What the minimum set of fixtures lacks: a happy path, an input with several problems,
/// update fixtures of two kinds. Unreadable files count as absent here (their own
/// problem is reported when the case runs).
fn coverage_gaps(cases: &BTreeMap<String, Case>) -> Vec<String> {
    let mut gaps = Vec::new();
    if !cases
        .values()
        .any(|c| c.input.is_some() && c.expected_json.is_some())
    {
        gaps.push("a happy path (<case>.input.xml and <case>.expected.json)".to_string());
    }
    let several = |c: &Case| {
        c.input.is_some()
            && c.expected_errors
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .is_some_and(|t| expected_lines(&t).len() >= 2)
    };
    if !cases.values().any(several) {
        gaps.push(
            "an input with several problems (<case>.expected-errors.txt with two or more lines)"
                .to_string(),
        );
    }
    let kinds: std::collections::BTreeSet<String> = cases
        .values()
        .filter_map(|c| c.update.as_ref())
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter_map(|v| v.get("kind")?.as_str().map(str::to_string))
        .collect();
    if kinds.len() < 2 {
        let found = if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        };
        gaps.push(format!(
            "update fixtures of two kinds (<case>.update.json and <case>.expected.xml; found: {found})"
        ));
    }
    gaps
}

fn read(path: &Path, report: &mut CheckReport) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            report
                .errors
                .push(format!("{}:1:1: cannot read: {e}", path.display()));
            None
        }
    }
}

/// Line of the first occurrence of `needle` in `text` (1 when absent).
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(1, |i| text[..i].matches('\n').count() + 1)
}

fn expected_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn run_case(plan: &MappingPlan, dir: &Path, name: &str, case: &Case, report: &mut CheckReport) {
    let mut did_something = false;
    if let Some(input) = &case.input {
        did_something = true;
        let Ok(bytes) = std::fs::read(input) else {
            report
                .errors
                .push(format!("{}:1:1: cannot read", input.display()));
            return;
        };
        let customer = case
            .expected_json
            .as_deref()
            .and_then(|exp| std::fs::read_to_string(exp).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("CustomerNumber")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "A123456".to_string());
        let result = dispatch(plan, &bytes, &customer);
        match (&case.expected_json, &case.expected_errors, result) {
            (Some(exp), _, Ok(d)) => compare_dispatch(exp, &d, report),
            (Some(exp), _, Err(lines)) => report.errors.push(format!(
                "{}:1:1: fixture {name}: expected a Dispatch, the mapping reported:\n    {}",
                exp.display(),
                lines.join("\n    ")
            )),
            (None, Some(exp), Ok(d)) => report.errors.push(format!(
                "{}:1:1: fixture {name}: expected errors, the mapping produced:\n{}",
                exp.display(),
                serde_json::to_string_pretty(&d).unwrap_or_default()
            )),
            (None, Some(exp), Err(lines)) => {
                if let Some(text) = read(exp, report) {
                    let want = expected_lines(&text);
                    if want != lines {
                        report.errors.push(format!(
                            "{}:1:1: fixture {name}: problems differ\n  expected:\n    {}\n  got:\n    {}",
                            exp.display(),
                            want.join("\n    "),
                            lines.join("\n    ")
                        ));
                    }
                }
            }
            (None, None, _) => report.errors.push(format!(
                "{}:1:1: fixture {name}: add {name}.expected.json or {name}.expected-errors.txt",
                input.display()
            )),
        }
    }
    if let Some(update) = &case.update {
        did_something = true;
        let Some(text) = read(update, report) else {
            return;
        };
        let rendered = parse_update(&text)
            .map_err(|e| format!("{}:1:1: {e}", update.display()))
            .and_then(|u| {
                plan.render_update(&u)
                    .map_err(|e| format!("{}:1:1: fixture {name}: {e}", update.display()))
            });
        match (rendered, &case.expected_xml) {
            (Err(e), _) => report.errors.push(e),
            (Ok(_), None) => report.errors.push(format!(
                "{}:1:1: fixture {name}: add {name}.expected.xml",
                update.display()
            )),
            (Ok(xml), Some(exp)) => {
                if let Some(want) = read(exp, report) {
                    let got = String::from_utf8_lossy(&xml);
                    if want.trim_end() != got.trim_end() {
                        let line = want
                            .lines()
                            .zip(got.lines())
                            .position(|(a, b)| a != b)
                            .map_or(1, |i| i + 1);
                        report.errors.push(format!(
                            "{}:{line}:1: fixture {name}: outbound XML differs\n  expected:\n{}\n  got:\n{}",
                            exp.display(),
                            want.trim_end(),
                            got.trim_end()
                        ));
                    }
                }
            }
        }
    }
    if let Some(cancel) = &case.cancel {
        did_something = true;
        let Ok(bytes) = std::fs::read(cancel) else {
            report
                .errors
                .push(format!("{}:1:1: cannot read", cancel.display()));
            return;
        };
        let result: Result<String, Vec<String>> = if bytes.iter().all(u8::is_ascii_whitespace) {
            plan.cancel_reason(None).map_err(|p| problem_lines(&p))
        } else if cancel.extension().is_some_and(|e| e == "json") {
            parse_fields(&bytes)
                .map_err(|e| vec![format!("json: {e}")])
                .and_then(|f| plan.cancel_reason_fields(&f).map_err(|p| problem_lines(&p)))
        } else {
            Document::parse(&bytes, &Limits::default())
                .map_err(|e| vec![format!("xml: {e}")])
                .and_then(|d| plan.cancel_reason(Some(&d)).map_err(|p| problem_lines(&p)))
        };
        match (&case.expected_reason, result) {
            (None, _) => report.errors.push(format!(
                "{}:1:1: fixture {name}: add {name}.expected-reason.txt",
                cancel.display()
            )),
            (Some(exp), got) => {
                if let Some(want) = read(exp, report) {
                    let got = match got {
                        Ok(r) => r,
                        Err(lines) => lines.join("\n"),
                    };
                    if want.trim_end_matches(['\n', '\r']) != got {
                        report.errors.push(format!(
                            "{}:1:1: fixture {name}: cancel reason differs\n  expected: {:?}\n  got:      {got:?}",
                            exp.display(),
                            want.trim_end_matches(['\n', '\r'])
                        ));
                    }
                }
            }
        }
    }
    if !did_something {
        report.errors.push(format!(
            "{}:1:1: fixture {name}: no {name}.input.*, {name}.update.json or {name}.cancel.* file",
            dir.display()
        ));
    }
}

fn compare_dispatch(expected: &Path, dispatch: &Dispatch, report: &mut CheckReport) {
    let Some(text) = read(expected, report) else {
        return;
    };
    let want: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            report.errors.push(format!(
                "{}:{}:{}: invalid JSON: {e}",
                expected.display(),
                e.line(),
                e.column()
            ));
            return;
        }
    };
    let got = serde_json::to_value(dispatch).unwrap_or_default();
    if want == got {
        return;
    }
    let (Some(w), Some(g)) = (want.as_object(), got.as_object()) else {
        report.errors.push(format!(
            "{}:1:1: expected a JSON object",
            expected.display()
        ));
        return;
    };
    let mut keys: Vec<&String> = w.keys().chain(g.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (a, b) = (w.get(k), g.get(k));
        if a != b {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
            report.errors.push(format!(
                "{}:{}:1: {k}: expected {}, got {}",
                expected.display(),
                line_of(&text, &format!("\"{k}\"")),
                show(a),
                show(b)
            ));
        }
    }
}
