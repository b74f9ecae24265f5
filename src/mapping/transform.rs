//! Value transforms: the ordered steps a mapped value goes through.
//!
//! Every transform takes the current value and returns the next one or a message that
//! says why the value was refused. Transforms that only clean text allocate only when
//! they change something. Lookups and date-time parsing pass an empty value through
//! untouched, so that "missing" is reported once, by the required check, and not as a
//! lookup or date-time failure.

pub(crate) use super::quote;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

pub(crate) use super::datetime::{format_in, DateFormat, DateTimeSpec, DstPolicy};

/// A compiled lookup table.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub(crate) name: String,
    /// Keys are lowercased when `case_insensitive`.
    pub(crate) entries: HashMap<String, String>,
    pub(crate) default: Option<String>,
    pub(crate) case_insensitive: bool,
}

impl Lookup {
    pub(crate) fn get<'v>(&'v self, key: &str) -> Option<&'v str> {
        let hit = if self.case_insensitive {
            self.entries.get(&key.to_lowercase())
        } else {
            self.entries.get(key)
        };
        hit.or(self.default.as_ref()).map(String::as_str)
    }
}

/// One compiled transform.
#[derive(Debug, Clone)]
pub(crate) enum Transform {
    /// Removes leading and trailing whitespace.
    Trim,
    /// Trims and replaces every run of whitespace with one space.
    Collapse,
    /// Upper-cases (Unicode).
    Upper,
    /// Lower-cases (Unicode).
    Lower,
    /// Keeps at most this many characters.
    Truncate(usize),
    /// Regex replace of every match; `with` may use `$1`, `${name}`.
    Replace { regex: Regex, with: String },
    /// Value used when the current value is empty (or only whitespace).
    Default(String),
    /// Refuses values that do not match.
    Matches {
        regex: Regex,
        message: Option<String>,
    },
    /// Table lookup.
    Lookup(Arc<Lookup>),
    /// Date-time normalization.
    DateTime(Box<DateTimeSpec>),
}

impl Transform {
    /// The names of the transforms written as a bare string.
    pub(crate) const SIMPLE: &'static [&'static str] = &["trim", "collapse", "upper", "lower"];
    /// The names of the transforms written as a one-key table.
    pub(crate) const TABLE: &'static [&'static str] = &[
        "truncate", "replace", "default", "matches", "lookup", "datetime",
    ];

    /// Applies the transform.
    pub(crate) fn apply<'v>(&self, value: Cow<'v, str>) -> Result<Cow<'v, str>, String> {
        Ok(match self {
            Transform::Trim => trim(value),
            Transform::Collapse => collapse(value),
            Transform::Upper => {
                if value.chars().any(|c| c.is_lowercase()) {
                    Cow::Owned(value.to_uppercase())
                } else {
                    value
                }
            }
            Transform::Lower => {
                if value.chars().any(|c| c.is_uppercase()) {
                    Cow::Owned(value.to_lowercase())
                } else {
                    value
                }
            }
            Transform::Truncate(n) => truncate(value, *n),
            Transform::Replace { regex, with } => match regex.replace_all(&value, with.as_str()) {
                Cow::Borrowed(_) => value,
                Cow::Owned(s) => Cow::Owned(s),
            },
            Transform::Default(d) => {
                if is_blank(&value) {
                    Cow::Owned(d.clone())
                } else {
                    value
                }
            }
            Transform::Matches { regex, message } => {
                if value.is_empty() || regex.is_match(&value) {
                    value
                } else {
                    return Err(match message {
                        Some(m) => format!("{} {m}", quote(&value)),
                        None => format!("{} does not match {}", quote(&value), regex.as_str()),
                    });
                }
            }
            Transform::Lookup(table) => {
                if value.is_empty() {
                    return Ok(value);
                }
                match table.get(&value) {
                    Some(v) => Cow::Owned(v.to_string()),
                    None => {
                        return Err(format!(
                            "{} is not in lookup {} and the lookup has no default",
                            quote(&value),
                            table.name
                        ))
                    }
                }
            }
            Transform::DateTime(spec) => {
                if value.is_empty() {
                    return Ok(value);
                }
                Cow::Owned(spec.normalize(&value)?)
            }
        })
    }
}

/// Whether the value is empty or only whitespace.
pub(crate) fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

fn trim(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => {
            let t = s.trim();
            if t.len() == s.len() {
                Cow::Owned(s)
            } else {
                Cow::Owned(t.to_string())
            }
        }
    }
}

fn collapse(value: Cow<'_, str>) -> Cow<'_, str> {
    let t = value.trim();
    // Already collapsed: no whitespace other than single spaces.
    let mut prev_space = false;
    let clean = t.chars().all(|c| {
        let ok = if c.is_whitespace() {
            c == ' ' && !prev_space
        } else {
            true
        };
        prev_space = c.is_whitespace();
        ok
    });
    if clean {
        return trim(value);
    }
    let mut out = String::with_capacity(t.len());
    for word in t.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Cow::Owned(out)
}

/// Keeps at most `n` characters, cutting on a character boundary.
pub(crate) fn truncate(value: Cow<'_, str>, n: usize) -> Cow<'_, str> {
    match value.char_indices().nth(n) {
        None => value,
        Some((cut, _)) => match value {
            Cow::Borrowed(s) => Cow::Borrowed(&s[..cut]),
            Cow::Owned(mut s) => {
                s.truncate(cut);
                Cow::Owned(s)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &Transform, v: &str) -> Result<String, String> {
        t.apply(Cow::Borrowed(v)).map(|c| c.into_owned())
    }

    #[test]
    fn problems_quote_at_most_160_characters() {
        let long = "x".repeat(1000);
        let t = Transform::Matches {
            regex: Regex::new("^y$").unwrap(),
            message: Some("is not y".into()),
        };
        let err = run(&t, &long).unwrap_err();
        assert!(
            err.starts_with(&format!("\"{}\"… (1000 characters)", "x".repeat(160))),
            "{err}"
        );
        assert!(err.len() < 200, "{err}");
        assert_eq!(quote("short"), "\"short\"");
    }

    #[test]
    fn text_transforms() {
        assert_eq!(run(&Transform::Trim, "  a b \n").unwrap(), "a b");
        assert_eq!(
            run(&Transform::Collapse, "  a \n\t b  c ").unwrap(),
            "a b c"
        );
        assert_eq!(run(&Transform::Collapse, "a b").unwrap(), "a b");
        assert_eq!(run(&Transform::Upper, "ug1234 ß").unwrap(), "UG1234 SS");
        assert_eq!(run(&Transform::Lower, "ÄBC").unwrap(), "äbc");
    }

    #[test]
    fn borrowed_when_nothing_changes() {
        for t in [
            Transform::Trim,
            Transform::Collapse,
            Transform::Upper,
            Transform::Truncate(10),
        ] {
            assert!(matches!(
                t.apply(Cow::Borrowed("ABC")).unwrap(),
                Cow::Borrowed(_)
            ));
        }
    }

    #[test]
    fn truncate_is_char_boundary_safe() {
        assert_eq!(run(&Transform::Truncate(3), "héllo").unwrap(), "hél");
        assert_eq!(run(&Transform::Truncate(2), "日本語").unwrap(), "日本");
        assert_eq!(run(&Transform::Truncate(1), "👍🏽x").unwrap(), "👍");
        assert_eq!(run(&Transform::Truncate(9), "short").unwrap(), "short");
        assert_eq!(run(&Transform::Truncate(0), "x").unwrap(), "");
    }

    #[test]
    fn replace_and_matches() {
        let t = Transform::Replace {
            regex: Regex::new(r"^INC0*").unwrap(),
            with: "".into(),
        };
        assert_eq!(run(&t, "INC0001234").unwrap(), "1234");
        let t = Transform::Replace {
            regex: Regex::new(r"(\d{3})(\d{3})(\d{4})").unwrap(),
            with: "$1-$2-$3".into(),
        };
        assert_eq!(run(&t, "1231231234").unwrap(), "123-123-1234");
        let m = Transform::Matches {
            regex: Regex::new(r"^[^@\s]+@[^@\s]+$").unwrap(),
            message: Some("is not an e-mail address".into()),
        };
        assert_eq!(run(&m, "a@b.c").unwrap(), "a@b.c");
        assert_eq!(run(&m, "").unwrap(), "");
        assert_eq!(
            run(&m, "nope").unwrap_err(),
            "\"nope\" is not an e-mail address"
        );
    }

    #[test]
    fn default_applies_to_blank_only() {
        let t = Transform::Default("n/a".into());
        assert_eq!(run(&t, "").unwrap(), "n/a");
        assert_eq!(run(&t, "  ").unwrap(), "n/a");
        assert_eq!(run(&t, "x").unwrap(), "x");
    }

    #[test]
    fn lookup_hit_miss_default_and_case() {
        let mut entries = HashMap::new();
        entries.insert("door".to_string(), "AC12".to_string());
        let strict = Transform::Lookup(Arc::new(Lookup {
            name: "faults".into(),
            entries: entries.clone(),
            default: None,
            case_insensitive: true,
        }));
        assert_eq!(run(&strict, "DOOR").unwrap(), "AC12");
        assert_eq!(run(&strict, "").unwrap(), "");
        assert_eq!(
            run(&strict, "lock").unwrap_err(),
            "\"lock\" is not in lookup faults and the lookup has no default"
        );
        let lenient = Transform::Lookup(Arc::new(Lookup {
            name: "faults".into(),
            entries,
            default: Some("ZZ99".into()),
            case_insensitive: false,
        }));
        assert_eq!(run(&lenient, "DOOR").unwrap(), "ZZ99");
        assert_eq!(run(&lenient, "door").unwrap(), "AC12");
    }
}
