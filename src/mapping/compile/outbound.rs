//! The `[outbound]` table: the update document's root, envelope, dates and
//! `[[outbound.element]]` entries, with the load-time check that every update kind
//! renders.

use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::{get, Ctx, Env, Value};

use crate::mapping::outbound::{
    Dates, OutNode, OutPart, OutSource, OutValue, OutboundPlan, UpdateField, KINDS,
};
use crate::mapping::path::resolve_qname;
use crate::mapping::transform::DateFormat;
use crate::mapping::xml::SoapVersion;

use super::inbound::{template, RawPart};
use super::transforms::{date_format, time_zone, transforms};
use super::{ELEMENT_KEYS, OUTBOUND_KEYS};

pub(super) fn outbound(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
) -> Option<OutboundPlan> {
    cx.check_keys(t, OUTBOUND_KEYS, "[outbound]");
    let mut used_prefixes: Vec<String> = Vec::new();
    let mut unprefixed = false;
    let mut check_name =
        |cx: &mut Ctx<'_>, name: &str, span: Range<usize>, element: bool, what: &str| -> bool {
            match resolve_qname(name, &env.ns(), element) {
                Ok(_) => {
                    match name.split_once(':') {
                        Some((p, _)) => {
                            if !used_prefixes.iter().any(|u| u == p) {
                                used_prefixes.push(p.to_string());
                            }
                        }
                        None => unprefixed |= element,
                    }
                    true
                }
                Err(e) => {
                    cx.err(span, format!("{what}: {e}"));
                    false
                }
            }
        };
    let root_name = match get(t, "root") {
        Some(v) => {
            let s = cx.string(v, "outbound.root")?;
            check_name(cx, s, v.span(), true, "outbound.root");
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
                    check_name(cx, s, n.span(), true, "outbound.root_by_kind");
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
    let elements = match get(t, "element") {
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items.iter().collect::<Vec<_>>(),
            _ => {
                cx.err(
                    v.span(),
                    "outbound.element: expected [[outbound.element]] entries",
                );
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    for item in elements {
        let Some(et) = cx.table(item, "[[outbound.element]]") else {
            continue;
        };
        let place = "[[outbound.element]]";
        cx.check_keys(et, ELEMENT_KEYS, place);
        let Some(pv) = get(et, "path") else {
            cx.err(
                item.span(),
                format!("{place}: missing `path` (e.g. path = \"state\" or path = \"@code\")"),
            );
            continue;
        };
        let Some(path) = cx.string(pv, "outbound.element path") else {
            continue;
        };
        let path = path.trim();
        // Split into element steps and an optional final attribute.
        let mut steps: Vec<&str> = Vec::new();
        let mut attr: Option<&str> = None;
        let mut ok = !path.is_empty() && !path.starts_with('/');
        if !ok {
            cx.err(pv.span(), format!("{place} path {path:?}: write a path relative to the root, e.g. \"caller/name\" or \"@id\""));
        }
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if !ok {
                break;
            }
            if let Some(a) = part.strip_prefix('@') {
                if i + 1 != parts.len() {
                    cx.err(
                        pv.span(),
                        format!("{place} path {path:?}: an attribute must come last"),
                    );
                    ok = false;
                } else {
                    ok &= check_name(cx, a, pv.span(), false, &format!("{place} path"));
                    attr = Some(a);
                }
            } else {
                ok &= check_name(cx, part, pv.span(), true, &format!("{place} path"));
                steps.push(part);
            }
        }
        let value = out_value(cx, env, et, item.span(), path);
        let (true, Some(value)) = (ok, value) else {
            continue;
        };
        let mut node = &mut root;
        for s in steps {
            node = node.child(s);
        }
        let candidates = match attr {
            Some(a) => node.attr(a),
            None => &mut node.values,
        };
        if let Some((missing, why)) = kinds_that_fail(candidates, &value) {
            let many = missing.len() > 1;
            cx.err(
                item.span(),
                format!(
                    "{place} path {path:?}: the update kind{} {} would not render ({why}), so \
                     {} would go to the dead letters: change the transforms (a lookup needs \
                     an entry or a `default`), or limit this element with `kinds`",
                    if many { "s" } else { "" },
                    missing.join(", "),
                    if many { "those updates" } else { "that update" },
                ),
            );
        }
        candidates.push(value);
    }
    let mut namespaces: Vec<(String, String)> = used_prefixes
        .into_iter()
        .filter_map(|p| env.prefixes.get(&p).map(|u| (p, u.clone())))
        .collect();
    if unprefixed && !env.default_ns.is_empty() {
        namespaces.insert(0, (String::new(), env.default_ns.to_string()));
    }
    Some(OutboundPlan {
        root,
        root_by_kind,
        namespaces,
        envelope,
        indent,
        dates: Dates { format, tz: tz.0 },
    })
}

/// For a value read from the update's `kind`, declared after `earlier` at the same path:
/// the kinds whose render reaches it and fails there (an unmapped lookup value), and the
/// first failure. Every update kind is posted to the tool, so such a gap is a dead letter
/// waiting to happen. A kind is reached unless an earlier candidate for it is surely
/// non-blank ("first non-blank wins"); one whose value is only known at render time
/// (another field, a template) counts as covering it, so nothing that works is refused.
pub(super) fn kinds_that_fail(
    earlier: &[OutValue],
    value: &OutValue,
) -> Option<(Vec<&'static str>, String)> {
    if !matches!(value.source, OutSource::Field(UpdateField::Kind)) {
        return None;
    }
    let mut missing = Vec::new();
    let mut first = None;
    for &kind in KINDS.iter().filter(|k| applies_to(value, k)) {
        let covered = earlier
            .iter()
            .filter(|e| applies_to(e, kind))
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

pub(super) fn out_value(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    span: Range<usize>,
    path: &str,
) -> Option<OutValue> {
    let place = format!("[[outbound.element]] {path:?}");
    let given: Vec<&str> = ["field", "value", "template"]
        .into_iter()
        .filter(|k| get(t, k).is_some())
        .collect();
    if given.len() != 1 {
        cx.err(
            span,
            format!("{place}: give exactly one of `field`, `value`, `template`"),
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
    } else {
        get(t, "template").and_then(|v| out_template(cx, v, &place))
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
    let keep_empty = get(t, "keep_empty")
        .and_then(|v| cx.boolean(v, &format!("{place} keep_empty")))
        .unwrap_or(false);
    let transforms = transforms(cx, env, t, &place);
    Some(OutValue {
        source: source?,
        transforms,
        kinds,
        keep_empty,
        path: path.to_string(),
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
