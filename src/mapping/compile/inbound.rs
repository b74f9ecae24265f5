//! Dispatch fields and the cancel reason: sources (paths with alternatives, constants,
//! templates), `repeated`, and the field-level checks.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::{get, Ctx, Env};

use crate::mapping::path::{compile_xml_path, SourcePath};
use crate::mapping::plan::{FieldPlan, Overflow, Part, Repeated, Source};
use crate::mapping::transform::{DateFormat, DateTimeSpec, DstPolicy, Transform};
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
        let text = cx.string(v, &format!("{place} template"))?;
        return match template(text) {
            Err(e) => {
                cx.err(v.span(), format!("{place} template: {e}"));
                None
            }
            Ok(raw) => {
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
                ok.then(|| Source::Template {
                    text: text.to_string(),
                    parts,
                })
            }
        };
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
}
