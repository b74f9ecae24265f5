//! Mapping files: TOML text to a compiled [`MappingPlan`].
//!
//! The file is parsed into toml's spanned tree and walked by hand, so that every
//! problem (syntax, unknown key, wrong type, unknown prefix, bad regex, unknown time
//! zone, missing field, ...) is collected with its position instead of stopping at the
//! first. Nothing is built unless the whole file is clean.

//!
//! Files: this one walks the top level and holds the error collector; `inbound` compiles
//! dispatch fields and the cancel reason (sources, paths, templates); `transforms` the
//! value transforms, lookups and date-times; `outbound` the update documents.

mod inbound;
mod outbound;
#[cfg(test)]
mod outbound_tests;
mod transforms;

use inbound::{cancel_field, field};
use outbound::outbound;
use transforms::{lookup, time_zone};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use jiff::tz::TimeZone;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::mapping::outbound::OutboundPlan;
use crate::mapping::path::{is_ncname, NsContext};
use crate::mapping::transform::Lookup;
use crate::mapping::{DispatchField, LoadError, LoadErrors, MappingPlan, SourceKind};

/// Keys accepted at the top level of a mapping file.
pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "source",
    "timezone",
    "default_namespace",
    "namespaces",
    "lookups",
    "dispatch",
    "cancel",
    "outbound",
];
/// Keys of a `[dispatch.<Field>]` table.
pub(crate) const FIELD_KEYS: &[&str] = &[
    "path",
    "value",
    "template",
    "repeated",
    "separator",
    "transforms",
    "required",
];
/// Keys of the `[cancel]` table.
pub(crate) const CANCEL_KEYS: &[&str] = &[
    "path",
    "value",
    "template",
    "repeated",
    "separator",
    "transforms",
    "default_reason",
];
/// Keys of a `[lookups.<name>]` table.
pub(crate) const LOOKUP_KEYS: &[&str] = &["entries", "default", "case_insensitive"];
/// Keys of the `[outbound]` table.
pub(crate) const OUTBOUND_KEYS: &[&str] = &[
    "root",
    "root_by_kind",
    "envelope",
    "indent",
    "timezone",
    "datetime_format",
    "soap_action",
    "element",
    "header",
];
/// Keys of an `[[outbound.element]]` entry.
pub(crate) const ELEMENT_KEYS: &[&str] = &[
    "path",
    "field",
    "value",
    "template",
    "transforms",
    "secret_env",
    "kinds",
    "when",
    "keep_empty",
];
/// Keys of a `{ datetime = { ... } }` transform.
pub(crate) const DATETIME_KEYS: &[&str] = &["format", "timezone", "ambiguous", "offset"];
/// Keys of a `{ replace = { ... } }` transform.
pub(crate) const REPLACE_KEYS: &[&str] = &["pattern", "with"];
/// Keys of a `{ matches = { ... } }` transform.
pub(crate) const MATCHES_KEYS: &[&str] = &["pattern", "message"];

/// Default maximum characters of the cancel reason (Loomis `ResponseText`).
pub const CANCEL_REASON_LIMIT: usize = 1000;
/// The cancel reason used when none is configured and none is found.
pub(crate) const DEFAULT_CANCEL_REASON: &str = "Cancelled by customer";

type Value<'i> = Spanned<DeValue<'i>>;

/// Collects errors with byte spans.
struct Ctx<'t> {
    origin: &'t str,
    text: &'t str,
    errors: Vec<(usize, String)>,
}

impl<'t> Ctx<'t> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        // One error per line: fold any multi-line message.
        let message: String = message.into();
        let message = if message.contains('\n') {
            message.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            message
        };
        self.errors.push((span.start, message));
    }

    fn finish(mut self) -> LoadErrors {
        self.errors.sort_by_key(|(o, _)| *o);
        self.errors.dedup();
        LoadErrors {
            errors: self
                .errors
                .into_iter()
                .map(|(offset, message)| {
                    let (line, column) = line_col(self.text, offset);
                    LoadError {
                        file: self.origin.to_string(),
                        line,
                        column,
                        message,
                    }
                })
                .collect(),
        }
    }

    fn check_keys(&mut self, t: &DeTable<'_>, allowed: &[&str], place: &str) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                self.err(
                    k.span(),
                    format!(
                        "unknown key {:?} in {place}; expected one of: {}",
                        k.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, what: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.err(
                    v.span(),
                    format!("{what}: expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string<'a>(&mut self, v: &'a Value<'_>, what: &str) -> Option<&'a str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                self.err(
                    v.span(),
                    format!("{what}: expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, what: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.err(
                    v.span(),
                    format!("{what}: expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, what: &str, range: Range<i64>) -> Option<usize> {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match parsed {
            Some(n) if range.contains(&n) => Some(n as usize),
            _ => {
                self.err(
                    v.span(),
                    format!(
                        "{what}: expected an integer from {} to {}",
                        range.start,
                        range.end - 1
                    ),
                );
                None
            }
        }
    }

    fn one_of<'a>(&mut self, v: &'a Value<'_>, what: &str, allowed: &[&str]) -> Option<&'a str> {
        let s = self.string(v, what)?;
        if allowed.contains(&s) {
            Some(s)
        } else {
            self.err(
                v.span(),
                format!("{what}: {s:?} is not one of: {}", allowed.join(", ")),
            );
            None
        }
    }
}

pub(super) fn get<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Value<'i>> {
    t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut line = 1;
    let mut col = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Everything a field compiler needs to know about the file.
struct Env<'a> {
    kind: SourceKind,
    prefixes: &'a HashMap<String, String>,
    default_ns: &'a str,
    lookups: &'a HashMap<String, Arc<Lookup>>,
    tz: &'a (TimeZone, String),
}

impl Env<'_> {
    fn ns(&self) -> NsContext<'_> {
        NsContext {
            prefixes: self.prefixes,
            default_ns: self.default_ns,
        }
    }
}

/// Compiles a mapping file's text. `origin` names the file in errors.
pub(crate) fn compile(text: &str, origin: &str) -> Result<MappingPlan, LoadErrors> {
    let mut cx = Ctx {
        origin,
        text,
        errors: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let at = e.span().map_or(0..0, |s| s);
            cx.err(at, format!("TOML syntax: {}", e.message()));
        }
        return Err(cx.finish());
    }
    let root_span = root.span();
    let root = root.get_ref();
    cx.check_keys(root, TOP_KEYS, "the mapping file");

    if let Some(v) = get(root, "version") {
        cx.integer(v, "version", 1..2);
    }
    let name = get(root, "name")
        .and_then(|v| cx.string(v, "name"))
        .map(str::to_string);
    if let Some(v) = get(root, "description") {
        cx.string(v, "description");
    }
    let kind = match get(root, "source") {
        Some(v) => match cx.one_of(v, "source", &["xml", "fields"]) {
            Some("fields") => SourceKind::Fields,
            _ => SourceKind::Xml,
        },
        None => {
            cx.err(
                root_span.start..root_span.start,
                "missing key `source`: write source = \"xml\" (legacy XML/SOAP) or source = \"fields\" (gRPC field map)",
            );
            SourceKind::Xml
        }
    };
    let tz = match get(root, "timezone") {
        Some(v) => time_zone(&mut cx, v, "timezone"),
        None => None,
    }
    .unwrap_or((TimeZone::UTC, "UTC".to_string()));

    let default_ns = match get(root, "default_namespace") {
        Some(v) => {
            if kind == SourceKind::Fields {
                cx.err(
                    v.span(),
                    "default_namespace: only for source = \"xml\" mappings",
                );
            }
            cx.string(v, "default_namespace").unwrap_or("").to_string()
        }
        None => String::new(),
    };
    let mut prefixes = HashMap::new();
    if let Some(v) = get(root, "namespaces") {
        if kind == SourceKind::Fields {
            cx.err(v.span(), "[namespaces]: only for source = \"xml\" mappings");
        }
        if let Some(t) = cx.table(v, "namespaces") {
            for (k, uri) in t.iter() {
                let prefix = k.get_ref().to_string();
                if !is_ncname(&prefix) || prefix == "xml" || prefix == "xmlns" {
                    cx.err(
                        k.span(),
                        format!("namespaces: {prefix:?} is not a usable prefix"),
                    );
                }
                if let Some(u) = cx.string(uri, &format!("namespaces.{prefix}")) {
                    if u.is_empty() {
                        cx.err(
                            uri.span(),
                            format!("namespaces.{prefix}: the URI must not be empty"),
                        );
                    }
                    prefixes.insert(prefix, u.to_string());
                }
            }
        }
    }

    let mut lookups = HashMap::new();
    if let Some(v) = get(root, "lookups") {
        if let Some(t) = cx.table(v, "lookups") {
            for (k, lv) in t.iter() {
                if let Some(l) = lookup(&mut cx, k.get_ref(), lv) {
                    lookups.insert(k.get_ref().to_string(), Arc::new(l));
                }
            }
        }
    }

    let env = Env {
        kind,
        prefixes: &prefixes,
        default_ns: &default_ns,
        lookups: &lookups,
        tz: &tz,
    };

    let mut fields = Vec::new();
    let mut declared = Vec::new();
    match get(root, "dispatch") {
        None => cx.err(
            root_span.start..root_span.start,
            "missing [dispatch] table: every mapping says where the Loomis Dispatch fields come from",
        ),
        Some(v) => {
            if let Some(t) = cx.table(v, "dispatch") {
                for (k, fv) in t.iter() {
                    let key = k.get_ref().as_ref();
                    match DispatchField::ALL.iter().find(|f| f.name() == key) {
                        Some(&f) => {
                            declared.push(f);
                            let place = format!("[dispatch.{key}]");
                            if let Some(ft) = cx.table(fv, &place) {
                                cx.check_keys(ft, FIELD_KEYS, &place);
                                if let Some(plan) = field(&mut cx, &env, ft, fv.span(), f, &place) {
                                    fields.push((f, plan));
                                }
                            }
                        }
                        None if key == "MessageType" || key == "CustomerNumber" => cx.err(
                            k.span(),
                            format!("{key} is filled by the gateway (from gateway.toml), not by the mapping"),
                        ),
                        None => cx.err(
                            k.span(),
                            format!(
                                "unknown Dispatch field {key:?}; expected one of: {}",
                                DispatchField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                            ),
                        ),
                    }
                }
                for f in DispatchField::ALL {
                    if f.required() && !declared.contains(f) {
                        cx.err(
                            v.span(),
                            format!("[dispatch] has no {} (Loomis requires it); add [dispatch.{}]", f.name(), f.name()),
                        );
                    }
                }
            }
        }
    }
    fields.sort_by_key(|(f, _)| *f as usize);

    let mut cancel = None;
    let mut default_reason = DEFAULT_CANCEL_REASON.to_string();
    if let Some(v) = get(root, "cancel") {
        if let Some(t) = cx.table(v, "cancel") {
            cx.check_keys(t, CANCEL_KEYS, "[cancel]");
            if let Some(d) = get(t, "default_reason") {
                if let Some(s) = cx.string(d, "cancel.default_reason") {
                    if s.trim().is_empty() {
                        cx.err(d.span(), "cancel.default_reason must not be empty");
                    }
                    default_reason = s.to_string();
                }
            }
            let has_source = ["path", "value", "template"]
                .iter()
                .any(|k| get(t, k).is_some());
            if has_source {
                cancel = cancel_field(&mut cx, &env, t, v.span());
            }
        }
    }

    let outbound = match get(root, "outbound") {
        Some(v) => cx
            .table(v, "outbound")
            .and_then(|t| outbound(&mut cx, &env, t, v.span())),
        None => None,
    };

    if !cx.errors.is_empty() {
        return Err(cx.finish());
    }
    Ok(MappingPlan {
        origin: origin.to_string(),
        name,
        source: kind,
        fields,
        cancel,
        default_cancel_reason: default_reason,
        has_outbound: outbound.is_some(),
        update_headers: outbound.as_ref().map_or_else(
            || OutboundPlan::default_document().headers(),
            |o| o.headers(),
        ),
        outbound: outbound.unwrap_or_else(OutboundPlan::default_document),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("ab\ncdé\nx", 7), (2, 4));
    }
}
