//! Value transforms, lookup tables and date-times: each checked at load with its
//! position, compiled once.

use std::collections::HashMap;

use jiff::tz::TimeZone;
use regex::{Regex, RegexBuilder};
use toml::de::{DeTable, DeValue};

use super::{get, Ctx, Env, Value};

use crate::mapping::transform::{DateFormat, DateTimeSpec, DstPolicy, Lookup, Transform};

use super::{DATETIME_KEYS, LOOKUP_KEYS, MATCHES_KEYS, REPLACE_KEYS};

pub(super) fn time_zone(cx: &mut Ctx<'_>, v: &Value<'_>, what: &str) -> Option<(TimeZone, String)> {
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

pub(super) fn lookup(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>) -> Option<Lookup> {
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

pub(super) fn transforms(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    t: &DeTable<'_>,
    place: &str,
) -> Vec<Transform> {
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

pub(super) fn regex(cx: &mut Ctx<'_>, v: &Value<'_>, what: &str) -> Option<Regex> {
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

pub(super) fn transform(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    item: &Value<'_>,
    place: &str,
) -> Option<Transform> {
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

pub(super) fn datetime(
    cx: &mut Ctx<'_>,
    env: &Env<'_>,
    v: &Value<'_>,
    what: &str,
) -> Option<DateTimeSpec> {
    let mut offset_optional = false;
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
            if let Some(o) = get(t, "offset") {
                offset_optional = cx.one_of(o, &format!("{what} offset"), &["format", "optional"])
                    == Some("optional");
            }
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
    if let (true, DateFormat::Strftime(f)) = (offset_optional, &format) {
        // With its own offset directive the format would demand what `optional` allows
        // to be absent.
        if ["%z", "%:z", "%::z", "%Q", "%:Q", "%Z"]
            .iter()
            .any(|d| f.contains(d))
        {
            cx.err(
                format_v.span(),
                format!(
                    "{what} format: {f:?} has an offset or zone directive, which offset = \
                     \"optional\" reads by itself: remove it from the format"
                ),
            );
            return None;
        }
    }
    Some(DateTimeSpec {
        format,
        tz: tz.0,
        tz_name: tz.1,
        policy,
        offset_optional,
    })
}

/// Validates a date format by writing a sample date-time with it and reading it back.
pub(super) fn date_format(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    what: &str,
    tz: &TimeZone,
) -> Option<DateFormat> {
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
