//! Mapping files: TOML text to a compiled [`MappingPlan`].
//!
//! The file is parsed into toml's spanned tree and walked by hand, so that every
//! problem (syntax, unknown key, wrong type, unknown prefix, bad regex, unknown time
//! zone, missing field, ...) is collected with its position instead of stopping at the
//! first. Nothing is built unless the whole file is clean.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use jiff::tz::TimeZone;
use regex::{Regex, RegexBuilder};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::outbound::{
    Dates, OutNode, OutPart, OutSource, OutValue, OutboundPlan, UpdateField, KINDS,
};
use super::path::{compile_xml_path, is_ncname, resolve_qname, NsContext, SourcePath};
use super::plan::{FieldPlan, Overflow, Part, Repeated, Source};
use super::transform::{DateFormat, DateTimeSpec, DstPolicy, Lookup, Transform};
use super::xml::SoapVersion;
use super::{DispatchField, LoadError, LoadErrors, MappingPlan, SourceKind};

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
    "element",
];
/// Keys of an `[[outbound.element]]` entry.
pub(crate) const ELEMENT_KEYS: &[&str] = &[
    "path",
    "field",
    "value",
    "template",
    "transforms",
    "kinds",
    "keep_empty",
];
/// Keys of a `{ datetime = { ... } }` transform.
pub(crate) const DATETIME_KEYS: &[&str] = &["format", "timezone", "ambiguous"];
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

fn get<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Value<'i>> {
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
        outbound: outbound.unwrap_or_else(OutboundPlan::default_document),
    })
}

fn time_zone(cx: &mut Ctx<'_>, v: &Value<'_>, what: &str) -> Option<(TimeZone, String)> {
    let name = cx.string(v, what)?;
    match TimeZone::get(name) {
        Ok(tz) => Some((tz, name.to_string())),
        Err(_) => {
            cx.err(
                v.span(),
                format!("{what}: {name:?} is not a known IANA time zone (e.g. \"America/Chicago\", \"Europe/Berlin\", \"UTC\")"),
            );
            None
        }
    }
}

fn lookup(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>) -> Option<Lookup> {
    let place = format!("[lookups.{name}]");
    let t = cx.table(v, &place)?;
    cx.check_keys(t, LOOKUP_KEYS, &place);
    let case_insensitive = get(t, "case_insensitive")
        .and_then(|b| cx.boolean(b, &format!("{place} case_insensitive")))
        .unwrap_or(false);
    let default = get(t, "default")
        .and_then(|d| cx.string(d, &format!("{place} default")))
        .map(str::to_string);
    let mut entries = HashMap::new();
    match get(t, "entries") {
        None => cx.err(v.span(), format!("{place} has no `entries` table")),
        Some(e) => {
            if let Some(et) = cx.table(e, &format!("{place} entries")) {
                for (k, val) in et.iter() {
                    if let Some(s) = cx.string(val, &format!("{place} entry {:?}", k.get_ref())) {
                        let key = if case_insensitive {
                            k.get_ref().to_lowercase()
                        } else {
                            k.get_ref().to_string()
                        };
                        if entries.insert(key, s.to_string()).is_some() {
                            cx.err(
                                k.span(),
                                format!(
                                    "{place}: {:?} is listed twice (keys are case-insensitive)",
                                    k.get_ref()
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    Some(Lookup {
        name: name.to_string(),
        entries,
        default,
        case_insensitive,
    })
}

/// Compiles the source part shared by dispatch fields and cancel.
fn source(
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

fn source_path(env: &Env<'_>, text: &str) -> Result<SourcePath, String> {
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

fn repeated(cx: &mut Ctx<'_>, env: &Env<'_>, t: &DeTable<'_>, place: &str) -> (Repeated, String) {
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

fn field(
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

fn cancel_field(
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

fn transforms(cx: &mut Ctx<'_>, env: &Env<'_>, t: &DeTable<'_>, place: &str) -> Vec<Transform> {
    let mut out = Vec::new();
    let Some(v) = get(t, "transforms") else {
        return out;
    };
    let DeValue::Array(items) = v.get_ref() else {
        cx.err(
            v.span(),
            format!("{place} transforms: expected an array, e.g. [\"trim\", {{ truncate = 100 }}]"),
        );
        return out;
    };
    for item in items.iter() {
        if let Some(tr) = transform(cx, env, item, place) {
            out.push(tr);
        }
    }
    out
}

fn regex(cx: &mut Ctx<'_>, v: &Value<'_>, what: &str) -> Option<Regex> {
    let pattern = cx.string(v, what)?;
    match RegexBuilder::new(pattern).size_limit(1 << 20).build() {
        Ok(r) => Some(r),
        Err(e) => {
            // regex errors are multi-line with a caret; the last line says what is wrong.
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ");
            cx.err(
                v.span(),
                format!("{what}: invalid regular expression {pattern:?}: {why}"),
            );
            None
        }
    }
}

fn transform(cx: &mut Ctx<'_>, env: &Env<'_>, item: &Value<'_>, place: &str) -> Option<Transform> {
    let expected = || {
        format!(
            "expected one of {} or a one-key table such as {{ truncate = 100 }} ({})",
            Transform::SIMPLE.join(", "),
            Transform::TABLE.join(", ")
        )
    };
    match item.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "trim" => Some(Transform::Trim),
            "collapse" => Some(Transform::Collapse),
            "upper" => Some(Transform::Upper),
            "lower" => Some(Transform::Lower),
            other => {
                cx.err(
                    item.span(),
                    format!(
                        "{place} transforms: unknown transform {other:?}; {}",
                        expected()
                    ),
                );
                None
            }
        },
        DeValue::Table(t) if t.len() == 1 => {
            let (k, v) = t.iter().next()?;
            let key = k.get_ref().as_ref();
            let what = format!("{place} transforms {key}");
            match key {
                "truncate" => cx.integer(v, &what, 1..1_000_001).map(Transform::Truncate),
                "default" => cx
                    .string(v, &what)
                    .map(|s| Transform::Default(s.to_string())),
                "replace" => {
                    let t = cx.table(v, &what)?;
                    cx.check_keys(t, REPLACE_KEYS, &what);
                    let with = match get(t, "with") {
                        Some(w) => cx.string(w, &format!("{what} with"))?.to_string(),
                        None => String::new(),
                    };
                    match get(t, "pattern") {
                        Some(p) => regex(cx, p, &format!("{what} pattern"))
                            .map(|regex| Transform::Replace { regex, with }),
                        None => {
                            cx.err(v.span(), format!("{what}: missing `pattern`"));
                            None
                        }
                    }
                }
                "matches" => match v.get_ref() {
                    DeValue::String(_) => regex(cx, v, &what).map(|regex| Transform::Matches {
                        regex,
                        message: None,
                    }),
                    _ => {
                        let t = cx.table(v, &what)?;
                        cx.check_keys(t, MATCHES_KEYS, &what);
                        let message = get(t, "message")
                            .and_then(|m| cx.string(m, &format!("{what} message")))
                            .map(str::to_string);
                        match get(t, "pattern") {
                            Some(p) => regex(cx, p, &format!("{what} pattern"))
                                .map(|regex| Transform::Matches { regex, message }),
                            None => {
                                cx.err(v.span(), format!("{what}: missing `pattern`"));
                                None
                            }
                        }
                    }
                },
                "lookup" => {
                    let name = cx.string(v, &what)?;
                    match env.lookups.get(name) {
                        Some(l) => Some(Transform::Lookup(l.clone())),
                        None => {
                            let mut known: Vec<&str> =
                                env.lookups.keys().map(String::as_str).collect();
                            known.sort_unstable();
                            cx.err(
                                v.span(),
                                format!(
                                    "{what}: no lookup named {name:?}; declare [lookups.{name}] (declared: {})",
                                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                                ),
                            );
                            None
                        }
                    }
                }
                "datetime" => datetime(cx, env, v, &what).map(|d| Transform::DateTime(Box::new(d))),
                other => {
                    cx.err(
                        k.span(),
                        format!(
                            "{place} transforms: unknown transform {other:?}; {}",
                            expected()
                        ),
                    );
                    None
                }
            }
        }
        _ => {
            cx.err(item.span(), format!("{place} transforms: {}", expected()));
            None
        }
    }
}

fn datetime(cx: &mut Ctx<'_>, env: &Env<'_>, v: &Value<'_>, what: &str) -> Option<DateTimeSpec> {
    let (format_v, tz, policy) = match v.get_ref() {
        DeValue::String(_) => (v, env.tz.clone(), DstPolicy::Compatible),
        _ => {
            let t = cx.table(v, what)?;
            cx.check_keys(t, DATETIME_KEYS, what);
            let tz = match get(t, "timezone") {
                Some(z) => time_zone(cx, z, &format!("{what} timezone"))?,
                None => env.tz.clone(),
            };
            let policy = match get(t, "ambiguous") {
                Some(a) => DstPolicy::parse(cx.one_of(
                    a,
                    &format!("{what} ambiguous"),
                    DstPolicy::NAMES,
                )?)?,
                None => DstPolicy::Compatible,
            };
            match get(t, "format") {
                Some(f) => (f, tz, policy),
                None => {
                    cx.err(v.span(), format!("{what}: missing `format` (\"rfc3339\" or a strftime format such as \"%Y-%m-%d %H:%M:%S\")"));
                    return None;
                }
            }
        }
    };
    let format = date_format(cx, format_v, &format!("{what} format"), &tz.0)?;
    Some(DateTimeSpec {
        format,
        tz: tz.0,
        tz_name: tz.1,
        policy,
    })
}

/// Validates a date format by writing a sample date-time with it and reading it back.
fn date_format(cx: &mut Ctx<'_>, v: &Value<'_>, what: &str, tz: &TimeZone) -> Option<DateFormat> {
    let f = cx.string(v, what)?;
    if f == "rfc3339" {
        return Some(DateFormat::Rfc3339);
    }
    let sample = jiff::civil::date(2021, 1, 16)
        .at(9, 17, 48, 0)
        .to_zoned_datetime(tz.clone())
        .ok()?;
    let written = match jiff::fmt::strtime::format(f, &sample) {
        Ok(s) => s,
        Err(e) => {
            cx.err(
                v.span(),
                format!("{what}: {f:?} is not a valid strftime format: {e}"),
            );
            return None;
        }
    };
    let full = jiff::fmt::strtime::parse(f, &written)
        .ok()
        .and_then(|tm| tm.to_datetime().ok())
        .is_some_and(|dt| dt.date() == sample.date() && dt.hour() == 9 && dt.minute() == 17);
    if !full {
        cx.err(
            v.span(),
            format!(
                "{what}: {f:?} does not give a full date and time (use e.g. \"%Y-%m-%d %H:%M:%S\")"
            ),
        );
        return None;
    }
    Some(DateFormat::Strftime(f.to_string()))
}

/// A template piece before its paths are compiled.
#[derive(Debug)]
enum RawPart {
    Literal(String),
    Value(String),
}

/// Splits `"{a} - {b}"` into parts; `{{` and `}}` are literal braces.
fn template(text: &str) -> Result<Vec<RawPart>, String> {
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

fn outbound(
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
fn kinds_that_fail(earlier: &[OutValue], value: &OutValue) -> Option<(Vec<&'static str>, String)> {
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

fn applies_to(value: &OutValue, kind: &str) -> bool {
    value
        .kinds
        .as_ref()
        .is_none_or(|ks| ks.iter().any(|k| k.eq_ignore_ascii_case(kind)))
}

/// What `value` renders for an update of `kind`, when that is known at load (a constant
/// or the kind itself): whether it is non-blank, or why it fails.
fn rendered_for(value: &OutValue, kind: &str) -> Option<Result<bool, String>> {
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
    Some(Ok(!super::transform::is_blank(&v)))
}

fn out_value(
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

fn out_template(cx: &mut Ctx<'_>, v: &Value<'_>, place: &str) -> Option<OutSource> {
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
