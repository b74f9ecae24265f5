//! Outbound documents: the XML posted back to a legacy tool for each update.
//!
//! A compiled [`OutboundPlan`] is a tree of element templates built from the mapping's
//! `[[outbound.element]]` entries (paths such as `caller/name` or `status/@code` share
//! their common ancestors, in the order first declared). Rendering evaluates every value
//! from the [`UpdateView`], omits elements that end up with no text, no attributes and
//! no children (unless `keep_empty`), and writes the result with `quick_xml::Writer`, so
//! the output is always well-formed and escaped.

use std::borrow::Cow;
use std::collections::HashMap;

use jiff::tz::TimeZone;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use super::transform::{format_in, is_blank, DateFormat, Transform};
use super::xml::SoapVersion;
use super::{Problem, RenderError, UpdateView};

/// The update kinds the gateway produces.
pub(crate) const KINDS: &[&str] = &[
    "ACK",
    "NAK",
    "ACCEPT",
    "CLOSE",
    "CANCEL",
    "REJECTED",
    "DELIVERY_FAILED",
];

/// A field of an [`UpdateView`] that outbound values can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateField {
    Sequence,
    Integration,
    IncidentReference,
    IncidentId,
    CustomerNumber,
    Kind,
    State,
    ResponseCode,
    ResponseText,
    SlaTime,
    EventTime,
    ReceivedAt,
}

impl UpdateField {
    /// Every field with its name in mapping files.
    pub(crate) const ALL: &'static [(&'static str, UpdateField)] = &[
        ("sequence", UpdateField::Sequence),
        ("integration", UpdateField::Integration),
        ("incident_reference", UpdateField::IncidentReference),
        ("incident_id", UpdateField::IncidentId),
        ("customer_number", UpdateField::CustomerNumber),
        ("kind", UpdateField::Kind),
        ("state", UpdateField::State),
        ("response_code", UpdateField::ResponseCode),
        ("response_text", UpdateField::ResponseText),
        ("sla_time", UpdateField::SlaTime),
        ("event_time", UpdateField::EventTime),
        ("received_at", UpdateField::ReceivedAt),
    ];

    pub(crate) fn parse(name: &str) -> Option<UpdateField> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    pub(crate) fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(n, _)| n)
    }

    fn value<'u>(self, u: &'u UpdateView, dates: &Dates) -> Result<Cow<'u, str>, String> {
        let time = |t: Option<jiff::Timestamp>| -> Result<Cow<'u, str>, String> {
            match t {
                Some(t) => format_in(t, &dates.format, &dates.tz).map(Cow::Owned),
                None => Ok(Cow::Borrowed("")),
            }
        };
        Ok(match self {
            UpdateField::Sequence => Cow::Owned(u.sequence.to_string()),
            UpdateField::Integration => Cow::Borrowed(&u.integration),
            UpdateField::IncidentReference => Cow::Borrowed(&u.incident_reference),
            UpdateField::IncidentId => Cow::Borrowed(u.incident_id.as_deref().unwrap_or("")),
            UpdateField::CustomerNumber => Cow::Borrowed(&u.customer_number),
            UpdateField::Kind => Cow::Borrowed(&u.kind),
            UpdateField::State => Cow::Borrowed(&u.state),
            UpdateField::ResponseCode => Cow::Borrowed(u.response_code.as_deref().unwrap_or("")),
            UpdateField::ResponseText => Cow::Borrowed(u.response_text.as_deref().unwrap_or("")),
            UpdateField::SlaTime => return time(u.sla_time),
            UpdateField::EventTime => return time(u.event_time),
            UpdateField::ReceivedAt => return time(Some(u.received_at)),
        })
    }
}

/// How date-times are written.
#[derive(Debug, Clone)]
pub(crate) struct Dates {
    pub(crate) format: DateFormat,
    pub(crate) tz: TimeZone,
}

/// A piece of an outbound template.
#[derive(Debug, Clone)]
pub(crate) enum OutPart {
    Literal(String),
    Field(UpdateField),
}

/// Where an outbound value comes from.
#[derive(Debug, Clone)]
pub(crate) enum OutSource {
    Field(UpdateField),
    Const(String),
    Template(Vec<OutPart>),
}

/// One candidate value for an element's text or an attribute.
#[derive(Debug, Clone)]
pub(crate) struct OutValue {
    pub(crate) source: OutSource,
    pub(crate) transforms: Vec<Transform>,
    /// Only for these kinds (all when `None`).
    pub(crate) kinds: Option<Vec<String>>,
    /// Write the element even when its value is empty.
    pub(crate) keep_empty: bool,
    /// The declared path, for problems.
    pub(crate) path: String,
}

/// An element template.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutNode {
    /// Qualified name as written (`prefix:local` or `local`).
    pub(crate) name: String,
    pub(crate) values: Vec<OutValue>,
    pub(crate) attrs: Vec<(String, Vec<OutValue>)>,
    pub(crate) children: Vec<OutNode>,
}

impl OutNode {
    /// The child named `name`, created at the end when absent.
    pub(crate) fn child(&mut self, name: &str) -> &mut OutNode {
        let i = match self.children.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.children.push(OutNode {
                    name: name.to_string(),
                    ..OutNode::default()
                });
                self.children.len() - 1
            }
        };
        &mut self.children[i]
    }

    /// The value list of attribute `name`, created when absent.
    pub(crate) fn attr(&mut self, name: &str) -> &mut Vec<OutValue> {
        let i = match self.attrs.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.attrs.push((name.to_string(), Vec::new()));
                self.attrs.len() - 1
            }
        };
        &mut self.attrs[i].1
    }
}

/// A compiled outbound document.
#[derive(Debug, Clone)]
pub(crate) struct OutboundPlan {
    /// The root template; its `name` is the default root name.
    pub(crate) root: OutNode,
    /// Root names per update kind.
    pub(crate) root_by_kind: HashMap<String, String>,
    /// Declarations written on the root: (prefix, URI); an empty prefix is the default
    /// namespace.
    pub(crate) namespaces: Vec<(String, String)>,
    pub(crate) envelope: Option<SoapVersion>,
    pub(crate) indent: usize,
    pub(crate) dates: Dates,
}

/// An evaluated element, ready to write.
struct Rendered<'p> {
    name: &'p str,
    attrs: Vec<(Cow<'p, str>, String)>,
    text: Option<String>,
    children: Vec<Rendered<'p>>,
}

impl OutboundPlan {
    /// The documented default document, used when a mapping has no `[outbound]`.
    pub(crate) fn default_document() -> OutboundPlan {
        let mut root = OutNode {
            name: "IncidentUpdate".into(),
            ..OutNode::default()
        };
        for (element, field) in [
            ("Sequence", UpdateField::Sequence),
            ("Integration", UpdateField::Integration),
            ("IncidentReference", UpdateField::IncidentReference),
            ("IncidentId", UpdateField::IncidentId),
            ("CustomerNumber", UpdateField::CustomerNumber),
            ("Kind", UpdateField::Kind),
            ("State", UpdateField::State),
            ("ResponseCode", UpdateField::ResponseCode),
            ("ResponseText", UpdateField::ResponseText),
            ("SlaTime", UpdateField::SlaTime),
            ("EventTime", UpdateField::EventTime),
            ("ReceivedAt", UpdateField::ReceivedAt),
        ] {
            root.child(element).values.push(OutValue {
                source: OutSource::Field(field),
                transforms: Vec::new(),
                kinds: None,
                keep_empty: false,
                path: element.to_string(),
            });
        }
        OutboundPlan {
            root,
            root_by_kind: HashMap::new(),
            namespaces: Vec::new(),
            envelope: None,
            indent: 2,
            dates: Dates {
                format: DateFormat::Rfc3339,
                tz: TimeZone::UTC,
            },
        }
    }

    /// Renders the document for `update`.
    pub(crate) fn render(&self, update: &UpdateView) -> Result<Vec<u8>, RenderError> {
        let mut problems = Vec::new();
        let mut root = self
            .eval(&self.root, update, &mut problems)
            .unwrap_or_else(|| Rendered {
                name: &self.root.name,
                attrs: Vec::new(),
                text: None,
                children: Vec::new(),
            });
        if !problems.is_empty() {
            return Err(RenderError::Problems(problems));
        }
        if let Some(name) = self.root_by_kind.get(update.kind.as_str()) {
            root.name = name;
        }
        for (prefix, uri) in self.namespaces.iter().rev() {
            let key = if prefix.is_empty() {
                "xmlns".to_string()
            } else {
                format!("xmlns:{prefix}")
            };
            root.attrs.insert(0, (Cow::Owned(key), uri.clone()));
        }
        let mut writer = if self.indent > 0 {
            Writer::new_with_indent(Vec::with_capacity(512), b' ', self.indent)
        } else {
            Writer::new(Vec::with_capacity(512))
        };
        let io = |e: std::io::Error| RenderError::Write(e.to_string());
        writer
            .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
            .map_err(io)?;
        let (env, body) = match self.envelope {
            Some(SoapVersion::Soap11) => ("soapenv:Envelope", "soapenv:Body"),
            Some(SoapVersion::Soap12) => ("env:Envelope", "env:Body"),
            None => ("", ""),
        };
        if let Some(v) = self.envelope {
            let prefix = env.split(':').next().unwrap_or("soapenv");
            let mut start = BytesStart::new(env);
            start.push_attribute((format!("xmlns:{prefix}").as_str(), v.namespace()));
            writer.write_event(Event::Start(start)).map_err(io)?;
            writer
                .write_event(Event::Start(BytesStart::new(body)))
                .map_err(io)?;
        }
        write_element(&mut writer, &root).map_err(io)?;
        if self.envelope.is_some() {
            writer
                .write_event(Event::End(BytesEnd::new(body)))
                .map_err(io)?;
            writer
                .write_event(Event::End(BytesEnd::new(env)))
                .map_err(io)?;
        }
        let mut out = writer.into_inner();
        out.push(b'\n');
        Ok(out)
    }

    fn eval<'p>(
        &'p self,
        node: &'p OutNode,
        u: &UpdateView,
        problems: &mut Vec<Problem>,
    ) -> Option<Rendered<'p>> {
        let text = self.pick(&node.values, u, problems);
        let mut attrs = Vec::new();
        for (name, values) in &node.attrs {
            if let Some(v) = self.pick(values, u, problems) {
                attrs.push((Cow::Borrowed(name.as_str()), v));
            }
        }
        let children: Vec<Rendered<'p>> = node
            .children
            .iter()
            .filter_map(|c| self.eval(c, u, problems))
            .collect();
        if text.is_none() && attrs.is_empty() && children.is_empty() {
            return None;
        }
        Some(Rendered {
            name: &node.name,
            attrs,
            text,
            children,
        })
    }

    /// The first candidate for this kind with a non-blank value; `Some("")` when only
    /// `keep_empty` candidates apply.
    fn pick(
        &self,
        values: &[OutValue],
        u: &UpdateView,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        let mut keep_empty = false;
        for v in values {
            if let Some(kinds) = &v.kinds {
                if !kinds.iter().any(|k| k.eq_ignore_ascii_case(&u.kind)) {
                    continue;
                }
            }
            match self.value(v, u) {
                Ok(s) if !is_blank(&s) => return Some(sanitize(&s)),
                Ok(_) => keep_empty |= v.keep_empty,
                Err(message) => problems.push(Problem {
                    field: v.path.clone(),
                    message,
                    source: match &v.source {
                        OutSource::Field(f) => f.name().to_string(),
                        OutSource::Const(_) => "constant".to_string(),
                        OutSource::Template(_) => "template".to_string(),
                    },
                }),
            }
        }
        keep_empty.then(String::new)
    }

    fn value<'u>(&self, v: &'u OutValue, u: &'u UpdateView) -> Result<Cow<'u, str>, String> {
        let mut value = match &v.source {
            OutSource::Field(f) => f.value(u, &self.dates)?,
            OutSource::Const(c) => Cow::Borrowed(c.as_str()),
            OutSource::Template(parts) => {
                let mut s = String::new();
                let mut any = false;
                for p in parts {
                    match p {
                        OutPart::Literal(l) => s.push_str(l),
                        OutPart::Field(f) => {
                            let x = f.value(u, &self.dates)?;
                            any |= !x.is_empty();
                            s.push_str(&x);
                        }
                    }
                }
                if any {
                    Cow::Owned(s)
                } else {
                    Cow::Borrowed("")
                }
            }
        };
        for t in &v.transforms {
            value = t.apply(value)?;
        }
        Ok(value)
    }
}

/// Replaces characters XML 1.0 cannot carry (most C0 controls, U+FFFE, U+FFFF) with
/// U+FFFD, so that whatever Loomis sent us, the document stays well-formed.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            _ => c,
        })
        .collect()
}

fn write_element(w: &mut Writer<Vec<u8>>, el: &Rendered<'_>) -> std::io::Result<()> {
    let mut start = BytesStart::new(el.name);
    for (k, v) in &el.attrs {
        start.push_attribute((k.as_ref(), v.as_str()));
    }
    let text = el.text.as_deref().filter(|t| !t.is_empty());
    if text.is_none() && el.children.is_empty() {
        return w.write_event(Event::Empty(start));
    }
    w.write_event(Event::Start(start))?;
    if let Some(t) = text {
        w.write_event(Event::Text(BytesText::new(t)))?;
    }
    for c in &el.children {
        write_element(w, c)?;
    }
    w.write_event(Event::End(BytesEnd::new(el.name)))
}
