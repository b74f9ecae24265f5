//! The `[outbound]` table: the update document's root, envelope, dates and
//! `[[outbound.element]]` and `[[outbound.header]]` entries (keys for siblings of one
//! name, conditions, secrets from the environment), with the load-time check that every
//! update kind renders.

use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::{get, Ctx, Env, Value};

use crate::mapping::outbound::{
    Condition, Dates, OutKey, OutNode, OutPart, OutSource, OutValue, OutboundPlan, SecretRef,
    UpdateField, KINDS,
};
use crate::mapping::path::{resolve_qname, split_step, split_steps};
use crate::mapping::transform::DateFormat;
use crate::mapping::xml::SoapVersion;

use super::inbound::{template, RawPart};
use super::transforms::{date_format, time_zone, transforms};
use super::{ELEMENT_KEYS, OUTBOUND_KEYS};

/// The namespace prefixes a part of the document uses, to declare them on its top
/// element.
#[derive(Default)]
struct Names {
    prefixes: Vec<String>,
    unprefixed: bool,
}

impl Names {
    /// Checks a qualified name written in `[outbound]` and notes its prefix.
    fn check(
        &mut self,
        cx: &mut Ctx<'_>,
        env: &Env<'_>,
        name: &str,
        span: Range<usize>,
        element: bool,
        what: &str,
    ) -> bool {
        match resolve_qname(name, &env.ns(), element) {
            Ok(_) => {
                match name.split_once(':') {
                    Some((p, _)) => {
                        if !self.prefixes.iter().any(|u| u == p) {
                            self.prefixes.push(p.to_string());
                        }
                    }
                    None => self.unprefixed |= element,
                }
                true
            }
            Err(e) => {
                cx.err(span, format!("{what}: {e}"));
                false
            }
        }
    }

    /// The declarations to write: (prefix, URI), the default namespace first.
    fn declarations(self, env: &Env<'_>) -> Vec<(String, String)> {
        let mut namespaces: Vec<(String, String)> = self
            .prefixes
            .into_iter()
            .filter_map(|p| env.prefixes.get(&p).map(|u| (p, u.clone())))
            .collect();
        if self.unprefixed && !env.default_ns.is_empty() {
            namespaces.insert(0, (String::new(), env.default_ns.to_string()));
        }
        namespaces
    }
}

pub(super) fn outbound(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
) -> Option<OutboundPlan> {
    cx.check_keys(t, OUTBOUND_KEYS, "[outbound]");
    let mut names = Names::default();
    let root_name = match get(t, "root") {
        Some(v) => {
            let s = cx.string(v, "outbound.root")?;
            names.check(cx, env, s, v.span(), true, "outbound.root");
            s.to_string()
        }
        None => {
            cx.err(span, "[outbound] needs `root`, the document element's name (e.g. root = \"u_loomis_update\")");
            return None;
        }
    };
    let mut root_by_kind = HashMap::new();
    if let Some(v) = get(t, "root_by_kind") {
        if let Some(rt) = cx.table(v, "outbound.root_by_kind") {
            for (k, n) in rt.iter() {
                let kind = k.get_ref().as_ref();
                if !KINDS.contains(&kind) {
                    cx.err(
                        k.span(),
                        format!(
                            "outbound.root_by_kind: unknown kind {kind:?}; expected one of: {}",
                            KINDS.join(", ")
                        ),
                    );
                }
                if let Some(s) = cx.string(n, "outbound.root_by_kind") {
                    names.check(cx, env, s, n.span(), true, "outbound.root_by_kind");
                    root_by_kind.insert(kind.to_string(), s.to_string());
                }
            }
        }
    }
    let envelope = match get(t, "envelope") {
        Some(v) => match cx.one_of(v, "outbound.envelope", &["none", "soap11", "soap12"]) {
            Some("soap11") => Some(SoapVersion::Soap11),
            Some("soap12") => Some(SoapVersion::Soap12),
            _ => None,
        },
        None => None,
    };
    let soap_action = get(t, "soap_action").and_then(|v| soap_action(cx, v, envelope));
    let indent = match get(t, "indent") {
        Some(v) => cx.integer(v, "outbound.indent", 0..9).unwrap_or(2),
        None => 2,
    };
    let tz = match get(t, "timezone") {
        Some(v) => time_zone(cx, v, "outbound.timezone").unwrap_or_else(|| env.tz.clone()),
        None => env.tz.clone(),
    };
    let format = match get(t, "datetime_format") {
        Some(v) => {
            date_format(cx, v, "outbound.datetime_format", &tz.0).unwrap_or(DateFormat::Rfc3339)
        }
        None => DateFormat::Rfc3339,
    };
    let mut root = OutNode {
        name: root_name,
        ..OutNode::default()
    };
    entries(cx, env, get(t, "element"), "element", &mut root, &mut names);
    let header = match get(t, "header") {
        None => None,
        Some(v) => {
            let Some(version) = envelope else {
                cx.err(
                    v.span(),
                    "[[outbound.header]]: header blocks need a SOAP envelope; set envelope = \"soap11\" or \"soap12\"",
                );
                return None;
            };
            let mut header = OutNode {
                name: match version {
                    SoapVersion::Soap11 => "soapenv:Header",
                    SoapVersion::Soap12 => "env:Header",
                }
                .to_string(),
                ..OutNode::default()
            };
            let mut header_names = Names::default();
            entries(cx, env, Some(v), "header", &mut header, &mut header_names);
            if header_names.unprefixed {
                // SOAP requires namespace-qualified header blocks, and the Header element
                // itself is in the envelope's namespace, so no default namespace can be
                // declared on it.
                cx.err(
                    v.span(),
                    "[[outbound.header]]: write header element names with a prefix from [namespaces] (SOAP header blocks must be namespace-qualified)",
                );
            }
            Some((header, header_names.declarations(env)))
        }
    };
    Some(OutboundPlan {
        root,
        root_by_kind,
        namespaces: names.declarations(env),
        envelope,
        header,
        soap_action,
        indent,
        dates: Dates { format, tz: tz.0 },
    })
}

/// `soap_action`: a header value (visible ASCII, no quotes), only with an envelope.
fn soap_action(cx: &mut Ctx<'_>, v: &Value<'_>, envelope: Option<SoapVersion>) -> Option<String> {
    let s = cx.string(v, "outbound.soap_action")?;
    if envelope.is_none() {
        cx.err(
            v.span(),
            "outbound.soap_action: only with envelope = \"soap11\" (SOAPAction header) or \"soap12\" (action parameter)",
        );
        return None;
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        cx.err(
            v.span(),
            format!("outbound.soap_action: {s:?} must be a non-empty URI of visible ASCII characters without quotes or backslashes (e.g. \"urn:HPD_IncidentInterface_WS/HelpDesk_Modify_Service\")"),
        );
        return None;
    }
    Some(s.to_string())
}

/// Compiles the `[[outbound.element]]` (or `[[outbound.header]]`) entries into `root`.
fn entries(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    v: Option<&Value<'_>>,
    key: &str,
    root: &mut OutNode,
    names: &mut Names,
) {
    let place = format!("[[outbound.{key}]]");
    let items = match v {
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items.iter().collect::<Vec<_>>(),
            _ => {
                cx.err(
                    v.span(),
                    format!("outbound.{key}: expected [[outbound.{key}]] entries"),
                );
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let mut checks = Vec::new();
    for item in items {
        let Some(et) = cx.table(item, &place) else {
            continue;
        };
        cx.check_keys(et, ELEMENT_KEYS, &place);
        let Some(pv) = get(et, "path") else {
            cx.err(
                item.span(),
                format!("{place}: missing `path` (e.g. path = \"state\" or path = \"@code\")"),
            );
            continue;
        };
        let Some(path) = cx.string(pv, &format!("outbound.{key} path")) else {
            continue;
        };
        let path = path.trim();
        let Some((steps, attr)) = out_path(cx, env, path, pv.span(), &place, names) else {
            // Still check the rest of the entry.
            let _ = out_value(cx, env, et, item.span(), path, &place);
            continue;
        };
        let Some(entry) = out_value(cx, env, et, item.span(), path, &place) else {
            continue;
        };
        let mut node = &mut *root;
        for (name, keys) in &steps {
            node = node.child(name, keys);
        }
        let value = match entry {
            Entry::Condition(c) => {
                if attr.is_some() {
                    cx.err(
                        item.span(),
                        format!("{place} path {path:?}: `kinds` / `when` alone make an element conditional; an attribute needs `field`, `value`, `template` or `secret_env`"),
                    );
                } else if steps.is_empty() {
                    cx.err(
                        item.span(),
                        format!("{place} path {path:?}: the root is always written; put the condition on an element below it"),
                    );
                } else {
                    node.conditions.push(c);
                }
                continue;
            }
            Entry::Value(v) => v,
        };
        let candidates = match attr {
            Some(a) => node.attr(a),
            None => &mut node.values,
        };
        candidates.push(value);
        // Checked once every entry is in: a condition declared later on an enclosing
        // element still limits the kinds this value is rendered for.
        checks.push(KindCheck {
            span: item.span(),
            path: path.to_string(),
            steps: steps
                .iter()
                .map(|(n, k)| (n.to_string(), k.clone()))
                .collect(),
            attr: attr.map(str::to_string),
            index: candidates.len() - 1,
        });
    }
    for c in checks {
        let mut node = &*root;
        let mut kinds: Vec<&str> = KINDS.to_vec();
        let mut found = true;
        for (name, keys) in &c.steps {
            match node.find(name, keys) {
                Some(n) => node = n,
                None => {
                    found = false;
                    break;
                }
            }
            for cond in &node.conditions {
                if let Some(ks) = &cond.kinds {
                    kinds.retain(|k| ks.iter().any(|x| x.eq_ignore_ascii_case(k)));
                }
            }
        }
        let candidates = match &c.attr {
            Some(a) => node.attrs.iter().find(|(n, _)| n == a).map(|(_, v)| &v[..]),
            None => Some(&node.values[..]),
        };
        let Some(candidates) = candidates.filter(|_| found) else {
            continue;
        };
        if let Some((missing, why)) =
            kinds_that_fail(&candidates[..c.index], &candidates[c.index], &kinds)
        {
            let many = missing.len() > 1;
            cx.err(
                c.span,
                format!(
                    "{place} path {:?}: the update kind{} {} would not render ({why}), so \
                     {} would go to the dead letters: change the transforms (a lookup needs \
                     an entry or a `default`), or limit this element with `kinds`",
                    c.path,
                    if many { "s" } else { "" },
                    missing.join(", "),
                    if many { "those updates" } else { "that update" },
                ),
            );
        }
    }
}

/// A value whose every update kind must render, checked after all entries are read.
struct KindCheck {
    span: Range<usize>,
    path: String,
    steps: Vec<(String, Vec<OutKey>)>,
    attr: Option<String>,
    /// Its place among the candidates of its element or attribute.
    index: usize,
}

/// An outbound path's element steps (name and keys) and its final attribute.
type OutPath<'p> = (Vec<(&'p str, Vec<OutKey>)>, Option<&'p str>);

/// Parses an outbound path: `a/b`, `a/@c`, `DynamicField[Name='X']/Value`.
fn out_path<'p>(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    path: &'p str,
    span: Range<usize>,
    place: &str,
    names: &mut Names,
) -> Option<OutPath<'p>> {
    if path.is_empty() || path.starts_with('/') {
        cx.err(span, format!("{place} path {path:?}: write a path relative to the root, e.g. \"caller/name\" or \"@id\""));
        return None;
    }
    let parts = match split_steps(path) {
        Ok(p) => p,
        Err(e) => {
            cx.err(span, format!("{place} path: {e}"));
            return None;
        }
    };
    let what = format!("{place} path");
    let mut steps = Vec::new();
    let mut attr = None;
    let mut ok = true;
    for (i, part) in parts.iter().enumerate() {
        if let Some(a) = part.strip_prefix('@') {
            if i + 1 != parts.len() || a.contains('[') {
                cx.err(
                    span.clone(),
                    format!("{place} path {path:?}: an attribute must come last, without a key"),
                );
                return None;
            }
            ok &= names.check(cx, env, a, span.clone(), false, &what);
            attr = Some(a);
            continue;
        }
        let (name, raw) = match split_step(part) {
            Ok(x) => x,
            Err(e) => {
                cx.err(span.clone(), format!("{place} path {path:?}: {e}"));
                return None;
            }
        };
        ok &= names.check(cx, env, name, span.clone(), true, &what);
        let mut keys = Vec::new();
        for k in raw {
            ok &= names.check(cx, env, k.name, span.clone(), !k.attr, &what);
            keys.push(OutKey {
                attr: k.attr,
                name: k.name.to_string(),
                value: k.value.to_string(),
            });
        }
        steps.push((name, keys));
    }
    ok.then_some((steps, attr))
}

/// For a value read from the update's `kind`, declared after `earlier` at the same path:
/// the kinds whose render reaches it and fails there (an unmapped lookup value), and the
/// first failure. Every update kind is posted to the tool, so such a gap is a dead letter
/// waiting to happen. A kind is reached unless an earlier candidate for it is surely
/// non-blank ("first non-blank wins"); one whose value is only known at render time
/// (another field, a template) counts as covering it, so nothing that works is refused.
/// `kinds` are those that reach the element at all (its enclosing elements' conditions).
pub(super) fn kinds_that_fail<'k>(
    earlier: &[OutValue],
    value: &OutValue,
    kinds: &[&'k str],
) -> Option<(Vec<&'k str>, String)> {
    if !matches!(value.source, OutSource::Field(UpdateField::Kind)) {
        return None;
    }
    let mut missing = Vec::new();
    let mut first = None;
    for &kind in kinds.iter().filter(|k| applies_to(value, k)) {
        let covered = earlier
            .iter()
            .filter(|e| applies_to(e, kind) && e.when.is_empty())
            .any(|e| !matches!(rendered_for(e, kind), Some(Ok(false))));
        if covered {
            continue;
        }
        if let Some(Err(e)) = rendered_for(value, kind) {
            missing.push(kind);
            first.get_or_insert(e);
        }
    }
    first.map(|why| (missing, why))
}

pub(super) fn applies_to(value: &OutValue, kind: &str) -> bool {
    value
        .kinds
        .as_ref()
        .is_none_or(|ks| ks.iter().any(|k| k.eq_ignore_ascii_case(kind)))
}

/// What `value` renders for an update of `kind`, when that is known at load (a constant
/// or the kind itself): whether it is non-blank, or why it fails.
pub(super) fn rendered_for(value: &OutValue, kind: &str) -> Option<Result<bool, String>> {
    let mut v = match &value.source {
        OutSource::Field(UpdateField::Kind) => std::borrow::Cow::Borrowed(kind),
        OutSource::Const(c) => std::borrow::Cow::Borrowed(c.as_str()),
        _ => return None,
    };
    for t in &value.transforms {
        match t.apply(v) {
            Ok(next) => v = next,
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(!crate::mapping::transform::is_blank(&v)))
}

/// What an entry declares: a value for its element or attribute, or (with only `kinds`
/// and `when`) a condition on its element.
enum Entry {
    Value(OutValue),
    Condition(Condition),
}

fn out_value(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
    path: &str,
    entry_place: &str,
) -> Option<Entry> {
    let place = format!("{entry_place} {path:?}");
    let given: Vec<&str> = ["field", "value", "template", "secret_env"]
        .into_iter()
        .filter(|k| get(t, k).is_some())
        .collect();
    let conditional = get(t, "kinds").is_some() || get(t, "when").is_some();
    if given.len() > 1 || (given.is_empty() && !conditional) {
        cx.err(
            span,
            format!("{place}: give exactly one of `field`, `value`, `template`, `secret_env` (or only `kinds` / `when` to make the element conditional)"),
        );
        return None;
    }
    let field_names = || {
        UpdateField::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let source = if let Some(v) = get(t, "field") {
        cx.string(v, &format!("{place} field"))
            .and_then(|name| match UpdateField::parse(name) {
                Some(f) => Some(OutSource::Field(f)),
                None => {
                    cx.err(
                        v.span(),
                        format!(
                            "{place} field: unknown update field {name:?}; expected one of: {}",
                            field_names()
                        ),
                    );
                    None
                }
            })
    } else if let Some(v) = get(t, "value") {
        cx.string(v, &format!("{place} value"))
            .map(|s| OutSource::Const(s.to_string()))
    } else if let Some(v) = get(t, "secret_env") {
        secret(cx, v, &place).map(OutSource::Secret)
    } else if let Some(v) = get(t, "template") {
        out_template(cx, v, &place)
    } else {
        None
    };
    let kinds = match get(t, "kinds") {
        Some(v) => match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                let mut ks = Vec::new();
                for i in items.iter() {
                    if let Some(k) = cx.one_of(i, &format!("{place} kinds"), KINDS) {
                        ks.push(k.to_string());
                    }
                }
                Some(ks)
            }
            _ => {
                cx.err(
                    v.span(),
                    format!("{place} kinds: expected a non-empty array such as [\"ACK\", \"NAK\"]"),
                );
                None
            }
        },
        None => None,
    };
    let when = match get(t, "when") {
        Some(v) => {
            let items: Vec<&Value<'_>> = match v.get_ref() {
                DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
                DeValue::String(_) => vec![v],
                _ => {
                    cx.err(v.span(), format!("{place} when: expected an update field name or a non-empty array of them, e.g. when = \"incident_id\""));
                    Vec::new()
                }
            };
            let mut fields = Vec::new();
            for i in items {
                if let Some(name) = cx.string(i, &format!("{place} when")) {
                    match UpdateField::parse(name) {
                        Some(f) => fields.push(f),
                        None => cx.err(
                            i.span(),
                            format!(
                                "{place} when: unknown update field {name:?}; expected one of: {}",
                                field_names()
                            ),
                        ),
                    }
                }
            }
            fields
        }
        None => Vec::new(),
    };
    let keep_empty = get(t, "keep_empty")
        .and_then(|v| cx.boolean(v, &format!("{place} keep_empty")))
        .unwrap_or(false);
    let transforms = transforms(cx, env, t, &place);
    if given.is_empty() {
        for k in ["transforms", "keep_empty"] {
            if let Some(v) = get(t, k) {
                cx.err(
                    v.span(),
                    format!(
                        "{place} {k}: a condition entry (only `kinds` / `when`) has no value to {}",
                        if k == "keep_empty" {
                            "keep"
                        } else {
                            "transform"
                        }
                    ),
                );
            }
        }
        return Some(Entry::Condition(Condition { kinds, when }));
    }
    if let (Some(OutSource::Secret(_)), Some(tv)) = (&source, get(t, "transforms")) {
        cx.err(
            tv.span(),
            format!("{place} transforms: not with `secret_env` (a transform's problem would quote the secret)"),
        );
        return None;
    }
    Some(Entry::Value(OutValue {
        source: source?,
        transforms,
        kinds,
        keep_empty,
        when,
        path: path.to_string(),
    }))
}

/// `secret_env = "NAME"`: the environment variable holding a secret; resolved when the
/// gateway loads the mapping, never written in the file.
fn secret(cx: &mut Ctx<'_>, v: &Value<'_>, place: &str) -> Option<SecretRef> {
    let name = cx.string(v, &format!("{place} secret_env"))?;
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        cx.err(
            v.span(),
            format!("{place} secret_env: {name:?} is not an environment variable name (A-Z, 0-9, _; e.g. \"REMEDY_PASSWORD\"): write the variable's name here, never the secret itself"),
        );
        return None;
    }
    let (line, column) = super::line_col(cx.text, v.span().start);
    Some(SecretRef {
        env: name.to_string(),
        line,
        column,
        value: None,
    })
}

pub(super) fn out_template(cx: &mut Ctx<'_>, v: &Value<'_>, place: &str) -> Option<OutSource> {
    let text = cx.string(v, &format!("{place} template"))?;
    let raw = match template(text) {
        Ok(r) => r,
        Err(e) => {
            cx.err(v.span(), format!("{place} template: {e}"));
            return None;
        }
    };
    let mut parts = Vec::new();
    for p in raw {
        match p {
            RawPart::Literal(l) => parts.push(OutPart::Literal(l)),
            RawPart::Value(n) => match UpdateField::parse(&n) {
                Some(f) => parts.push(OutPart::Field(f)),
                None => {
                    let names = UpdateField::ALL
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ");
                    cx.err(v.span(), format!("{place} template: unknown update field {n:?}; expected one of: {names}"));
                    return None;
                }
            },
        }
    }
    Some(OutSource::Template(parts))
}
