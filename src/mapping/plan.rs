//! The compiled form of a mapping's inbound part and how it is applied.
//!
//! A [`FieldPlan`] says where one value comes from (paths with alternatives, a constant
//! or a template), how repeated matches combine, which transforms run, whether the
//! value is required and which length limit applies. Applying it never panics and
//! allocates only for values that a transform changes plus the owned result.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;

use super::path::SourcePath;
use super::transform::{is_blank, quote, truncate, Transform};
use super::xml::Document;
use super::Problem;

/// What to do when a path matches more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeated {
    /// The first match in document order (the default).
    First,
    /// The last match in document order.
    Last,
    /// Every non-empty match, joined with the separator.
    Join,
    /// More than one match is a problem.
    Error,
}

impl Repeated {
    pub(crate) const NAMES: &'static [&'static str] = &["first", "last", "join", "error"];

    pub(crate) fn parse(s: &str) -> Option<Repeated> {
        Some(match s {
            "first" => Repeated::First,
            "last" => Repeated::Last,
            "join" => Repeated::Join,
            "error" => Repeated::Error,
            _ => return None,
        })
    }
}

/// One piece of a template.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Literal(String),
    Value(SourcePath),
}

/// Where a value comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// One path, or alternatives: the first one that yields a non-blank value wins.
    Paths(Vec<SourcePath>),
    /// A constant.
    Const(String),
    /// One template, or alternatives: the first one with a value wins. A template is
    /// empty when every value in it is missing or blank.
    Template(Vec<Template>),
}

impl Source {
    /// Every path this source may read, in order: its alternatives, or the values of its
    /// templates; none for a constant.
    pub(crate) fn paths(&self) -> Vec<&SourcePath> {
        match self {
            Source::Paths(ps) => ps.iter().collect(),
            Source::Template(ts) => ts
                .iter()
                .flat_map(|t| &t.parts)
                .filter_map(|p| match p {
                    Part::Value(sp) => Some(sp),
                    Part::Literal(_) => None,
                })
                .collect(),
            Source::Const(_) => Vec::new(),
        }
    }
}

/// Literal text and values, e.g. `{Contact/First} {Contact/Last}`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The template as written, for messages.
    pub(crate) text: String,
    pub(crate) parts: Vec<Part>,
}

/// What happens to a value longer than the field's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Cut to the limit (free text).
    Truncate,
    /// Report a problem (identifiers, which must not be altered).
    Reject,
}

/// A compiled field.
#[derive(Debug, Clone)]
pub(crate) struct FieldPlan {
    /// The Loomis field name, used in problems.
    pub(crate) field: &'static str,
    pub(crate) source: Source,
    pub(crate) repeated: Repeated,
    pub(crate) separator: String,
    pub(crate) transforms: Vec<Transform>,
    pub(crate) required: bool,
    pub(crate) limit: Option<(usize, Overflow)>,
}

/// The input a plan reads from.
#[derive(Clone, Copy)]
pub(crate) enum Input<'d> {
    Xml(&'d Document),
    Fields(&'d HashMap<String, String>),
    Nothing,
}

/// The raw value taken from the input, before transforms.
struct Extracted<'d> {
    value: Cow<'d, str>,
    /// Whether any path matched (an empty element counts as a match).
    found: bool,
}

impl FieldPlan {
    /// Describes the source for problem messages.
    pub(crate) fn source_text(&self) -> String {
        match &self.source {
            Source::Paths(ps) => ps
                .iter()
                .map(SourcePath::text)
                .collect::<Vec<_>>()
                .join(" | "),
            Source::Const(_) => "constant".to_string(),
            Source::Template(ts) => ts
                .iter()
                .map(|t| format!("template {:?}", t.text))
                .collect::<Vec<_>>()
                .join(" | "),
        }
    }

    /// Applies the plan; `Ok(None)` is an optional field with no value.
    pub(crate) fn apply(&self, input: Input<'_>, problems: &mut Vec<Problem>) -> Option<String> {
        let extracted = match self.extract(input) {
            Ok(e) => e,
            Err(message) => {
                problems.push(self.problem(message));
                return None;
            }
        };
        let mut value = extracted.value;
        for t in &self.transforms {
            match t.apply(value) {
                Ok(v) => value = v,
                Err(message) => {
                    problems.push(self.problem(message));
                    return None;
                }
            }
        }
        if is_blank(&value) {
            if self.required {
                let what = if extracted.found { "empty" } else { "missing" };
                let message = match &self.source {
                    Source::Const(_) => "required, the constant is empty".to_string(),
                    _ => format!("required, {what} at {}", self.source_text()),
                };
                problems.push(self.problem(message));
            }
            return None;
        }
        if let Some((limit, overflow)) = self.limit {
            // Bytes >= characters, so short values skip the character count.
            if value.len() > limit && value.chars().nth(limit).is_some() {
                match overflow {
                    Overflow::Truncate => value = truncate(value, limit),
                    Overflow::Reject => {
                        problems.push(self.problem(format!(
                            "{} is longer than {limit} characters (Loomis limit)",
                            quote(&value)
                        )));
                        return None;
                    }
                }
            }
        }
        Some(value.into_owned())
    }

    fn problem(&self, message: String) -> Problem {
        Problem {
            field: self.field.to_string(),
            message,
            source: self.source_text(),
        }
    }

    fn extract<'d>(&'d self, input: Input<'d>) -> Result<Extracted<'d>, String> {
        match &self.source {
            Source::Const(c) => Ok(Extracted {
                value: Cow::Borrowed(c),
                found: true,
            }),
            Source::Paths(paths) => {
                let mut found = false;
                for p in paths {
                    let e = self.lookup(p, input)?;
                    found |= e.found;
                    if !is_blank(&e.value) {
                        return Ok(e);
                    }
                }
                Ok(Extracted {
                    value: Cow::Borrowed(""),
                    found,
                })
            }
            Source::Template(alternatives) => {
                let mut found = false;
                for t in alternatives {
                    let e = self.fill(t, input)?;
                    found |= e.found;
                    if !is_blank(&e.value) {
                        return Ok(e);
                    }
                }
                Ok(Extracted {
                    value: Cow::Borrowed(""),
                    found,
                })
            }
        }
    }

    /// A template's text, empty when every value in it is missing or blank.
    fn fill<'d>(&'d self, t: &'d Template, input: Input<'d>) -> Result<Extracted<'d>, String> {
        let mut out = String::new();
        let mut any = false;
        let mut found = false;
        for part in &t.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Value(p) => {
                    let e = self.lookup(p, input)?;
                    found |= e.found;
                    any |= !is_blank(&e.value);
                    out.push_str(&e.value);
                }
            }
        }
        Ok(Extracted {
            value: if any {
                Cow::Owned(out)
            } else {
                Cow::Borrowed("")
            },
            found,
        })
    }

    fn lookup<'d>(
        &'d self,
        path: &'d SourcePath,
        input: Input<'d>,
    ) -> Result<Extracted<'d>, String> {
        let none = Extracted {
            value: Cow::Borrowed(""),
            found: false,
        };
        match (path, input) {
            (SourcePath::Key(k), Input::Fields(fields)) => Ok(match fields.get(&**k) {
                Some(v) => Extracted {
                    value: Cow::Borrowed(v),
                    found: true,
                },
                None => none,
            }),
            (SourcePath::Xml(p), Input::Xml(doc)) => {
                let mut count = 0usize;
                let mut first: Option<&'d str> = None;
                let mut last: Option<&'d str> = None;
                let mut joined: Option<String> = None;
                let mode = self.repeated;
                p.for_each(doc, &mut |v| {
                    count += 1;
                    match mode {
                        Repeated::First => {
                            first = Some(v);
                            return ControlFlow::Break(());
                        }
                        Repeated::Last => last = Some(v),
                        Repeated::Error => {
                            if first.is_none() {
                                first = Some(v);
                            }
                            if count > 1 {
                                return ControlFlow::Break(());
                            }
                        }
                        Repeated::Join => {
                            let v = v.trim();
                            if !v.is_empty() {
                                match &mut joined {
                                    None => {
                                        if first.is_none() {
                                            first = Some(v);
                                        } else {
                                            let mut s = String::from(first.unwrap_or(""));
                                            s.push_str(&self.separator);
                                            s.push_str(v);
                                            joined = Some(s);
                                        }
                                    }
                                    Some(s) => {
                                        s.push_str(&self.separator);
                                        s.push_str(v);
                                    }
                                }
                            }
                        }
                    }
                    ControlFlow::Continue(())
                });
                if mode == Repeated::Error && count > 1 {
                    return Err(format!("more than one value at {}, expected one", p.text));
                }
                if count == 0 {
                    return Ok(none);
                }
                let value = match (joined, last) {
                    (Some(j), _) => Cow::Owned(j),
                    (None, Some(l)) => Cow::Borrowed(l),
                    (None, None) => Cow::Borrowed(first.unwrap_or("")),
                };
                Ok(Extracted { value, found: true })
            }
            // A plan only holds paths of its own kind; the other input kinds (or no
            // input, e.g. a cancel without a body) simply yield nothing.
            _ => Ok(none),
        }
    }
}
