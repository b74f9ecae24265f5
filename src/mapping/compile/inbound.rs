//! Dispatch fields and the cancel reason: sources (paths with alternatives, constants,
//! templates), `repeated`, and the field-level checks.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::{get, Ctx, Env, Value};

use crate::mapping::path::{compile_xml_path, SourcePath};
use crate::mapping::plan::{FieldPlan, Overflow, Part, Repeated, Source, Template};
use crate::mapping::transform::{DateFormat, DateTimeSpec, DstPolicy, Transform};
#[cfg(test)]
use crate::mapping::MappingPlan;
use crate::mapping::{DispatchField, SourceKind};

use super::transforms::transforms;
use super::CANCEL_REASON_LIMIT;

/// Compiles the source part shared by dispatch fields and cancel.
pub(super) fn source(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
    place: &str,
) -> Option<Source> {
    let given: Vec<&str> = ["path", "value", "template"]
        .into_iter()
        .filter(|k| get(t, k).is_some())
        .collect();
    match given.len() {
        0 => {
            cx.err(
                span,
                format!(
                    "{place}: say where the value comes from with `path`, `value` or `template`"
                ),
            );
            return None;
        }
        1 => {}
        _ => {
            cx.err(
                span,
                format!(
                    "{place}: give only one of `path`, `value`, `template` (found {})",
                    given.join(", ")
                ),
            );
            return None;
        }
    }
    if let Some(v) = get(t, "value") {
        return cx
            .string(v, &format!("{place} value"))
            .map(|s| Source::Const(s.to_string()));
    }
    if let Some(v) = get(t, "template") {
        // One template, or alternatives: the first whose values are not all blank wins.
        let items: Vec<&Value<'_>> = match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            DeValue::Array(_) => {
                cx.err(
                    v.span(),
                    format!("{place} template: expected a string or a non-empty array of strings (alternatives)"),
                );
                return None;
            }
            _ => vec![v],
        };
        let mut alternatives = Vec::new();
        let mut ok = true;
        for item in items {
            match template_source(cx, env, item, place) {
                Some(t) => alternatives.push(t),
                None => ok = false,
            }
        }
        return ok.then_some(Source::Template(alternatives));
    }
    let v = get(t, "path")?;
    let texts: Vec<(&str, Range<usize>)> = match v.get_ref() {
        DeValue::String(s) => vec![(s.as_ref(), v.span())],
        DeValue::Array(items) if !items.is_empty() => {
            let mut out = Vec::new();
            for item in items.iter() {
                if let Some(s) = cx.string(item, &format!("{place} path")) {
                    out.push((s, item.span()));
                }
            }
            out
        }
        _ => {
            cx.err(v.span(), format!("{place} path: expected a string or a non-empty array of strings (alternatives)"));
            return None;
        }
    };
    let mut paths = Vec::new();
    for (text, span) in texts {
        match source_path(env, text) {
            Ok(p) => paths.push(p),
            Err(e) => cx.err(span, format!("{place} path: {e}")),
        }
    }
    Some(Source::Paths(paths))
}

/// One template: text with `{path}` placeholders.
fn template_source(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    v: &Value<'_>,
    place: &str,
) -> Option<Template> {
    let text = cx.string(v, &format!("{place} template"))?;
    let raw = match template(text) {
        Err(e) => {
            cx.err(v.span(), format!("{place} template: {e}"));
            return None;
        }
        Ok(raw) => raw,
    };
    let mut parts = Vec::new();
    let mut ok = true;
    for p in raw {
        match p {
            RawPart::Literal(l) => parts.push(Part::Literal(l)),
            RawPart::Value(p) => match source_path(env, &p) {
                Ok(sp) => parts.push(Part::Value(sp)),
                Err(e) => {
                    cx.err(v.span(), format!("{place} template: {e}"));
                    ok = false;
                }
            },
        }
    }
    ok.then(|| Template {
        text: text.to_string(),
        parts,
    })
}

pub(super) fn source_path(env: &Env<'_>, text: &str) -> Result<SourcePath, String> {
    match env.kind {
        SourceKind::Xml => compile_xml_path(text, &env.ns()).map(SourcePath::Xml),
        SourceKind::Fields => {
            if text.trim().is_empty() {
                Err("empty field key".into())
            } else {
                Ok(SourcePath::Key(text.into()))
            }
        }
    }
}

pub(super) fn repeated(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    place: &str,
) -> (Repeated, String) {
    let mut mode = Repeated::First;
    if let Some(v) = get(t, "repeated") {
        if env.kind == SourceKind::Fields {
            cx.err(
                v.span(),
                format!("{place} repeated: a field map has one value per key; remove `repeated`"),
            );
        } else if let Some(s) = cx.one_of(v, &format!("{place} repeated"), Repeated::NAMES) {
            mode = Repeated::parse(s).unwrap_or(Repeated::First);
        }
    }
    let mut separator = ", ".to_string();
    if let Some(v) = get(t, "separator") {
        if mode != Repeated::Join {
            cx.err(
                v.span(),
                format!("{place} separator: only used with repeated = \"join\""),
            );
        }
        if let Some(s) = cx.string(v, &format!("{place} separator")) {
            separator = s.to_string();
        }
    }
    (mode, separator)
}

pub(super) fn field(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
    f: DispatchField,
    place: &str,
) -> Option<FieldPlan> {
    let src = source(cx, env, t, span, place);
    let (mode, separator) = repeated(cx, env, t, place);
    let mut transforms = transforms(cx, env, t, place);
    let mut required = f.required();
    if let Some(v) = get(t, "required") {
        if let Some(b) = cx.boolean(v, &format!("{place} required")) {
            if f.required() && !b {
                cx.err(
                    v.span(),
                    format!("{place} required = false: Loomis requires {}; use a {{ default = \"...\" }} transform instead", f.name()),
                );
            }
            required = b;
        }
    }
    if f == DispatchField::FaultDateTime
        && !transforms
            .iter()
            .any(|t| matches!(t, Transform::DateTime(_)))
    {
        // Whatever the source, FaultDateTime must leave as UTC RFC 3339 with Z.
        transforms.push(Transform::DateTime(Box::new(DateTimeSpec {
            format: DateFormat::Rfc3339,
            tz: env.tz.0.clone(),
            tz_name: env.tz.1.clone(),
            policy: DstPolicy::Compatible,
            offset_optional: false,
        })));
    }
    Some(FieldPlan {
        field: f.name(),
        source: src?,
        repeated: mode,
        separator,
        transforms,
        required,
        limit: f.limit(),
    })
}

pub(super) fn cancel_field(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
) -> Option<FieldPlan> {
    let place = "[cancel]";
    let src = source(cx, env, t, span, place);
    let (mode, separator) = repeated(cx, env, t, place);
    let transforms = transforms(cx, env, t, place);
    Some(FieldPlan {
        field: "CancelReason",
        source: src?,
        repeated: mode,
        separator,
        transforms,
        required: false,
        limit: Some((CANCEL_REASON_LIMIT, Overflow::Truncate)),
    })
}

/// A template piece before its paths are compiled.
#[derive(Debug)]
pub(super) enum RawPart {
    Literal(String),
    Value(String),
}

/// Splits `"{a} - {b}"` into parts; `{{` and `}}` are literal braces.
pub(super) fn template(text: &str) -> Result<Vec<RawPart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    let mut values = 0;
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(format!("unclosed {{ in {text:?}")),
                        Some(c) => inner.push(c),
                    }
                }
                if inner.trim().is_empty() {
                    return Err(format!("empty {{}} in {text:?}"));
                }
                if !lit.is_empty() {
                    parts.push(RawPart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(RawPart::Value(inner.trim().to_string()));
                values += 1;
            }
            '}' => {
                return Err(format!(
                    "unmatched }} in {text:?} (write }}}} for a literal brace)"
                ))
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(RawPart::Literal(lit));
    }
    if values == 0 {
        return Err(format!(
            "{text:?} has no {{...}} value; use `value` for a constant"
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parsing() {
        let parts = template("{a} - {{x}} {b}").unwrap();
        let shape: Vec<String> = parts
            .iter()
            .map(|p| match p {
                RawPart::Literal(l) => format!("L{l}"),
                RawPart::Value(v) => format!("V{v}"),
            })
            .collect();
        assert_eq!(shape, ["Va", "L - {x} ", "Vb"]);
        assert!(template("{a").unwrap_err().contains("unclosed"));
        assert!(template("a}").unwrap_err().contains("unmatched"));
        assert!(template("{}").unwrap_err().contains("empty"));
        assert!(template("plain").unwrap_err().contains("use `value`"));
    }

    /// A mapping whose fields are all plain paths except `field`, given as TOML lines.
    fn with_field(field: &str, body: &str) -> String {
        let mut text = String::from("source = \"xml\"\n");
        for f in DispatchField::ALL.iter().filter(|f| f.required()) {
            text.push_str(&format!("[dispatch.{}]\n", f.name()));
            if f.name() == field {
                text.push_str(body);
                text.push('\n');
            } else {
                text.push_str(&format!("path = \"{}\"\n", f.name()));
            }
        }
        text
    }

    fn doc(xml: &str) -> crate::mapping::xml::Document {
        let body = "<IncidentReference>R1</IncidentReference><DeviceId>D</DeviceId><ContactName>C</ContactName>\
            <ContactNumber>1</ContactNumber><Subject>s</Subject><Description>d</Description>\
            <FaultDateTime>2021-01-16T15:17:48Z</FaultDateTime>";
        crate::mapping::xml::Document::parse(
            format!("<T>{body}{xml}</T>").as_bytes(),
            &Default::default(),
        )
        .unwrap()
    }

    #[test]
    fn template_alternatives_fall_back_as_groups() {
        let text = with_field(
            "ContactName",
            r#"template = ["{Contact/First} {Contact/Last}", "{Requester/First} {Requester/Last}"]
transforms = ["collapse"]"#,
        );
        let plan = MappingPlan::from_str(&text, "m.toml").unwrap();
        let name = |xml: &str| plan.map_document(&doc(xml)).map(|f| f.contact_name);
        let both = "<Contact><First>Anna</First><Last>Berg</Last></Contact>\
                    <Requester><First>Rolf</First><Last>Sand</Last></Requester>";
        assert_eq!(name(both).unwrap(), "Anna Berg");
        // The direct contact's group is blank (present but empty): the requester's wins.
        let blank = "<Contact><First> </First><Last/></Contact>\
                     <Requester><First>Rolf</First><Last>Sand</Last></Requester>";
        assert_eq!(name(blank).unwrap(), "Rolf Sand");
        // Part of a group is a value: no mixing of one person's first and another's last name.
        let part = "<Contact><Last>Berg</Last></Contact><Requester><First>Rolf</First></Requester>";
        assert_eq!(name(part).unwrap(), "Berg");
        let problems = plan.map_document(&doc("")).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "ContactName: required, missing at template \"{Contact/First} {Contact/Last}\" | \
             template \"{Requester/First} {Requester/Last}\""
        );
    }

    #[test]
    fn template_and_datetime_load_errors_have_positions() {
        let text = with_field("ContactName", "template = []");
        let err = MappingPlan::from_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.toml:7:12: [dispatch.ContactName] template: expected a string or a non-empty array"),
            "{err}"
        );
        let text = with_field("ContactName", "template = [\"{a}\", \"{b[x='1'}\"]");
        let err = MappingPlan::from_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.toml:7:20: [dispatch.ContactName] template: "),
            "{err}"
        );
        assert!(err.contains("not closed"), "{err}");
        let text = with_field(
            "FaultDateTime",
            "path = \"t\"\ntransforms = [{ datetime = { format = \"%Y-%m-%d %H:%M:%S %z\", offset = \"optional\" } }]",
        );
        let err = MappingPlan::from_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.toml:16:39: "), "{err}");
        assert!(
            err.contains("offset = \"optional\" reads by itself"),
            "{err}"
        );
        let text = with_field(
            "FaultDateTime",
            "path = \"t\"\ntransforms = [{ datetime = { format = \"rfc3339\", offset = \"maybe\" } }]",
        );
        let err = MappingPlan::from_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("offset: \"maybe\" is not one of: format, optional"),
            "{err}"
        );
    }

    #[test]
    fn predicate_paths_compile_and_name_the_missing_field() {
        let text = with_field(
            "DeviceId",
            "path = \"DynamicField[Name='SafeSerial']/Value\"",
        );
        let plan = MappingPlan::from_str(&text, "m.toml").unwrap();
        let fields = "<DynamicField><Name>FaultType</Name><Value>Door</Value></DynamicField>\
                      <DynamicField><Name>SafeSerial</Name><Value>UG1</Value></DynamicField>";
        let got = plan.map_document(&doc(fields)).unwrap();
        assert_eq!(got.device_id, "UG1");
        let problems = plan
            .map_document(&doc(
                "<DynamicField><Name>Other</Name><Value>x</Value></DynamicField>",
            ))
            .unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "DeviceId: required, missing at DynamicField[Name='SafeSerial']/Value"
        );
        let text = with_field("DeviceId", "path = \"DynamicField[Name=SafeSerial]/Value\"");
        let err = MappingPlan::from_str(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m.toml:5:8: [dispatch.DeviceId] path: \"DynamicField[Name=SafeSerial]/Value\": predicate [Name=SafeSerial]"),
            "{err}"
        );
    }
}
