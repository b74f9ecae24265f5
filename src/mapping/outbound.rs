//! Outbound documents: the XML posted back to a legacy tool for each update.
//!
//! A compiled [`OutboundPlan`] is a tree of element templates built from the mapping's
//! `[[outbound.element]]` entries (paths such as `caller/name` or `status/@code` share
//! their common ancestors, in the order first declared). Rendering evaluates every value
//! from the [`UpdateView`], omits elements that end up with no text, no attributes and
//! no children (unless `keep_empty`), and writes the result with `quick_xml::Writer`, so
//! the output is always well-formed and escaped.
//!
//! Several siblings of one name are told apart by a key written in the path
//! (`DynamicField[Name='LoomisIncidentId']/Value`): each key is its own element, and the
//! key child (or attribute) is written only when the element has other content. An
//! element can be made conditional (only for some kinds, only when an update field has a
//! value), and with a SOAP envelope the plan may carry header blocks (credentials, some
//! of them secrets resolved from the environment when the gateway loads the mapping).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

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
    /// A secret named by an environment variable (`secret_env`).
    Secret(SecretRef),
}

/// A secret an outbound document carries (a password in a SOAP header), named in the
/// mapping by its environment variable. The value is filled in once, when the gateway
/// loads the mapping, and never printed: `Debug` shows only the variable's name.
#[derive(Clone)]
pub(crate) struct SecretRef {
    /// The environment variable's name.
    pub(crate) env: String,
    /// Where `secret_env` is written in the mapping file, for load errors.
    pub(crate) line: usize,
    pub(crate) column: usize,
    /// The value, once resolved.
    pub(crate) value: Option<Arc<str>>,
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretRef({}, {})",
            self.env,
            if self.value.is_some() {
                "***"
            } else {
                "unresolved"
            }
        )
    }
}

/// A key that tells siblings of one name apart: `[Name='X']` writes `<Name>X</Name>`
/// (or `[@type='X']` the attribute) in the element, first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutKey {
    pub(crate) attr: bool,
    /// Qualified name as written.
    pub(crate) name: String,
    pub(crate) value: String,
}

/// When an element (with everything in it) is written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Condition {
    /// Only for these kinds (all when `None`).
    pub(crate) kinds: Option<Vec<String>>,
    /// Only when each of these update fields has a non-blank value.
    pub(crate) when: Vec<UpdateField>,
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
    /// Only when each of these update fields has a non-blank value.
    pub(crate) when: Vec<UpdateField>,
    /// The declared path, for problems.
    pub(crate) path: String,
}

/// An element template.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutNode {
    /// Qualified name as written (`prefix:local` or `local`).
    pub(crate) name: String,
    /// What tells this element apart from siblings of the same name.
    pub(crate) keys: Vec<OutKey>,
    /// All must hold for the element to be written.
    pub(crate) conditions: Vec<Condition>,
    pub(crate) values: Vec<OutValue>,
    pub(crate) attrs: Vec<(String, Vec<OutValue>)>,
    pub(crate) children: Vec<OutNode>,
}

impl OutNode {
    /// The child named `name` with `keys`, created at the end when absent.
    pub(crate) fn child(&mut self, name: &str, keys: &[OutKey]) -> &mut OutNode {
        let i = match self
            .children
            .iter()
            .position(|c| c.name == name && c.keys == keys)
        {
            Some(i) => i,
            None => {
                self.children.push(OutNode {
                    name: name.to_string(),
                    keys: keys.to_vec(),
                    ..OutNode::default()
                });
                self.children.len() - 1
            }
        };
        &mut self.children[i]
    }

    /// The child named `name` with `keys`, if declared.
    pub(crate) fn find(&self, name: &str, keys: &[OutKey]) -> Option<&OutNode> {
        self.children
            .iter()
            .find(|c| c.name == name && c.keys == keys)
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
    /// The SOAP `Header` and its blocks (`[[outbound.header]]`), with the declarations
    /// written on it; only with an envelope.
    pub(crate) header: Option<(OutNode, Vec<(String, String)>)>,
    /// `SOAPAction` (SOAP 1.1) or the `action` parameter of the content type (SOAP 1.2).
    pub(crate) soap_action: Option<String>,
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
            root.child(element, &[]).values.push(OutValue {
                source: OutSource::Field(field),
                transforms: Vec::new(),
                kinds: None,
                keep_empty: false,
                when: Vec::new(),
                path: element.to_string(),
            });
        }
        OutboundPlan {
            root,
            root_by_kind: HashMap::new(),
            namespaces: Vec::new(),
            envelope: None,
            header: None,
            soap_action: None,
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
        let header = self.header.as_ref().and_then(|(node, decls)| {
            let mut h = self.eval(node, update, &mut problems)?;
            for (prefix, uri) in decls.iter().rev() {
                h.attrs
                    .insert(0, (Cow::Owned(format!("xmlns:{prefix}")), uri.clone()));
            }
            Some(h)
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
            if let Some(h) = &header {
                write_element(&mut writer, h).map_err(io)?;
            }
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
        if !node.conditions.iter().all(|c| self.holds(c, u)) {
            return None;
        }
        let text = self.pick(&node.values, u, problems);
        let mut attrs = Vec::new();
        for (name, values) in &node.attrs {
            if let Some(v) = self.pick(values, u, problems) {
                attrs.push((Cow::Borrowed(name.as_str()), v));
            }
        }
        let mut children: Vec<Rendered<'p>> = node
            .children
            .iter()
            .filter_map(|c| self.eval(c, u, problems))
            .collect();
        if text.is_none() && attrs.is_empty() && children.is_empty() {
            return None;
        }
        // The keys go first: `<DynamicField><Name>X</Name><Value>..`.
        let mut key_children = Vec::new();
        for (i, k) in node.keys.iter().enumerate() {
            if k.attr {
                attrs.insert(i, (Cow::Borrowed(k.name.as_str()), k.value.clone()));
            } else {
                key_children.push(Rendered {
                    name: &k.name,
                    attrs: Vec::new(),
                    text: Some(k.value.clone()),
                    children: Vec::new(),
                });
            }
        }
        if !key_children.is_empty() {
            key_children.append(&mut children);
            children = key_children;
        }
        Some(Rendered {
            name: &node.name,
            attrs,
            text,
            children,
        })
    }

    /// Whether `c` holds for this update.
    fn holds(&self, c: &Condition, u: &UpdateView) -> bool {
        applies(c.kinds.as_deref(), &u.kind) && self.present(&c.when, u)
    }

    /// Whether each of `fields` has a non-blank value in this update.
    fn present(&self, fields: &[UpdateField], u: &UpdateView) -> bool {
        fields
            .iter()
            .all(|f| f.value(u, &self.dates).is_ok_and(|v| !is_blank(&v)))
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
            if !applies(v.kinds.as_deref(), &u.kind) || !self.present(&v.when, u) {
                continue;
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
                        OutSource::Secret(s) => format!("secret_env {}", s.env),
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
            OutSource::Secret(s) => match &s.value {
                Some(v) => Cow::Borrowed(&**v),
                None => {
                    return Err(format!(
                        "the secret in environment variable {} was not loaded",
                        s.env
                    ))
                }
            },
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

/// Whether an entry limited to `kinds` applies to an update of `kind`.
pub(crate) fn applies(kinds: Option<&[String]>, kind: &str) -> bool {
    kinds.is_none_or(|ks| ks.iter().any(|k| k.eq_ignore_ascii_case(kind)))
}

impl OutboundPlan {
    /// Every secret reference in the plan (header blocks and elements), to resolve.
    pub(crate) fn secrets_mut(&mut self) -> Vec<&mut SecretRef> {
        fn walk<'a>(node: &'a mut OutNode, out: &mut Vec<&'a mut SecretRef>) {
            let attrs = node.attrs.iter_mut().flat_map(|(_, vs)| vs.iter_mut());
            for v in node.values.iter_mut().chain(attrs) {
                if let OutSource::Secret(s) = &mut v.source {
                    out.push(s);
                }
            }
            for c in &mut node.children {
                walk(c, out);
            }
        }
        let mut out = Vec::new();
        walk(&mut self.root, &mut out);
        if let Some((h, _)) = &mut self.header {
            walk(h, &mut out);
        }
        out
    }

    /// The headers of an update post: the content type of the document and, for SOAP
    /// 1.1, the `SOAPAction` (`""` unless the mapping sets `soap_action`).
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        let quoted = |a: &Option<String>| format!("\"{}\"", a.as_deref().unwrap_or(""));
        match self.envelope {
            Some(SoapVersion::Soap11) => vec![
                ("content-type", "text/xml; charset=utf-8".to_string()),
                ("soapaction", quoted(&self.soap_action)),
            ],
            Some(SoapVersion::Soap12) => vec![(
                "content-type",
                match &self.soap_action {
                    Some(_) => format!(
                        "application/soap+xml; charset=utf-8; action={}",
                        quoted(&self.soap_action)
                    ),
                    None => "application/soap+xml; charset=utf-8".to_string(),
                },
            )],
            None => vec![("content-type", "application/xml; charset=utf-8".to_string())],
        }
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
