//! The streaming builder behind [`Document::parse`]: reads quick-xml events, checks
//! every limit before storing what it bounds, resolves namespaces and entities, refuses
//! DOCTYPEs, and finds the SOAP payload.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{
    Attr, Document, Element, Limits, Node, Position, SoapVersion, XmlError, NO_NS, SOAP11_NS,
    SOAP12_NS, XMLNS_NS, XML_NS,
};

/// One open element on the parser's stack.
struct Open {
    node: u32,
    /// Length of the namespace scope stack before this element's declarations.
    scope_len: usize,
}

/// The streaming builder behind [`Document::parse`].
pub(super) struct Parser<'a> {
    /// The UTF-8 text after any BOM.
    input: &'a str,
    /// The original bytes (for positions).
    raw: &'a [u8],
    /// Length of the skipped BOM, added to reader offsets.
    bom: usize,
    limits: &'a Limits,
    doc: Document,
    /// In-scope bindings: (prefix as a range of `prefixes`, namespace index). The
    /// empty prefix is the default namespace; it is bound to [`NO_NS`] to undeclare.
    scope: Vec<(Range<u32>, u32)>,
    /// Prefixes of the bindings in `scope`, back to back.
    prefixes: String,
    open: Vec<Open>,
    namespace_decls: usize,
    text_bytes: usize,
    seen_root: bool,
    /// The input was decoded from the encoding its declaration names.
    pub(super) decoded: bool,
}

impl<'a> Parser<'a> {
    pub(super) fn new(input: &'a str, raw: &'a [u8], bom: usize, limits: &'a Limits) -> Parser<'a> {
        // Pre-size for small documents (the common case) without trusting the input.
        let guess = (input.len() / 32).clamp(8, 1024);
        Parser {
            input,
            raw,
            bom,
            limits,
            doc: Document {
                nodes: Vec::with_capacity(guess),
                attrs: Vec::new(),
                names: String::with_capacity(input.len().min(4096) / 2),
                text: String::with_capacity(input.len().min(4096) / 2),
                attr_values: String::new(),
                namespaces: vec!["".into()],
                payload: 0,
                soap: None,
            },
            scope: Vec::new(),
            prefixes: String::new(),
            open: Vec::new(),
            namespace_decls: 0,
            decoded: false,
            text_bytes: 0,
            seen_root: false,
        }
    }

    fn pos(&self, offset: u64) -> Position {
        Position::locate(self.raw, self.bom + offset as usize)
    }

    fn malformed(&self, offset: u64, message: impl Into<String>) -> XmlError {
        XmlError::Malformed {
            position: self.pos(offset),
            message: message.into(),
        }
    }

    pub(super) fn run(mut self) -> Result<Document, XmlError> {
        let mut reader = Reader::from_str(self.input);
        {
            let config = reader.config_mut();
            config.check_end_names = true;
            config.expand_empty_elements = false;
            config.trim_text_start = false;
            config.trim_text_end = false;
        }
        loop {
            let start = reader.buffer_position();
            let event = match reader.read_event() {
                Ok(e) => e,
                Err(err) => return Err(self.reader_error(&reader, err)),
            };
            match event {
                Event::Start(e) => self.start(&e, start, false)?,
                Event::Empty(e) => self.start(&e, start, true)?,
                Event::End(_) => self.end(),
                Event::Text(t) => {
                    let content = t.xml10_content();
                    if self.open.is_empty() {
                        if !content.trim_matches(is_xml_space).is_empty() {
                            return Err(self.malformed(start, "text outside the root element"));
                        }
                    } else {
                        self.push_text(&content, reader.buffer_position())?;
                    }
                }
                Event::CData(c) => {
                    if self.open.is_empty() {
                        return Err(self.malformed(start, "CDATA outside the root element"));
                    }
                    let content = c.xml10_content();
                    self.push_text(&content, reader.buffer_position())?;
                }
                Event::GeneralRef(r) => {
                    if self.open.is_empty() {
                        return Err(self.malformed(start, "reference outside the root element"));
                    }
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        Ok(None) => match predefined_entity(&r) {
                            Some(c) => c,
                            None => {
                                return Err(XmlError::UndefinedEntity {
                                    name: r.to_string(),
                                    position: self.pos(start),
                                })
                            }
                        },
                        Err(e) => return Err(self.malformed(start, e.to_string())),
                    };
                    let mut buf = [0u8; 4];
                    self.push_text(resolved.encode_utf8(&mut buf), reader.buffer_position())?;
                }
                Event::DocType(_) => {
                    return Err(XmlError::Dtd {
                        position: self.pos(start),
                    })
                }
                Event::Decl(d) => {
                    if let Some(Ok(enc)) = d.encoding() {
                        let enc = enc.trim();
                        let utf8 = enc.eq_ignore_ascii_case("utf-8")
                            || enc.eq_ignore_ascii_case("utf8")
                            || enc.eq_ignore_ascii_case("us-ascii");
                        if !utf8 && !self.decoded && !self.input.is_ascii() {
                            return Err(XmlError::UnsupportedEncoding {
                                encoding: enc.to_string(),
                            });
                        }
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        if let Some(open) = self.open.last() {
            let name = self.doc.name(&self.doc.nodes[open.node as usize].name);
            let message = format!("unexpected end of input: <{name}> is not closed");
            return Err(self.malformed(self.input.len() as u64, message));
        }
        if !self.seen_root {
            return Err(XmlError::Empty);
        }
        self.find_payload()?;
        Ok(self.doc)
    }

    /// Translates a quick-xml error, recognizing the DOCTYPE refusal even when the
    /// DOCTYPE is not even closed.
    fn reader_error(&self, reader: &Reader<&[u8]>, err: quick_xml::Error) -> XmlError {
        let at = reader.error_position();
        if let quick_xml::Error::Syntax(quick_xml::errors::SyntaxError::UnclosedDoctype) = err {
            return XmlError::Dtd {
                position: self.pos(at),
            };
        }
        self.malformed(at, err.to_string())
    }

    fn push_text(&mut self, s: &str, end_offset: u64) -> Result<(), XmlError> {
        self.text_bytes += s.len();
        if self.text_bytes > self.limits.max_text_bytes {
            return Err(XmlError::TooMuchText {
                limit: self.limits.max_text_bytes,
                position: self.pos(end_offset),
            });
        }
        self.doc.text.push_str(s);
        Ok(())
    }

    fn intern_ns(&mut self, uri: &str) -> u32 {
        if uri.is_empty() {
            return NO_NS;
        }
        if let Some(i) = self.doc.namespaces.iter().position(|n| &**n == uri) {
            return i as u32;
        }
        self.doc.namespaces.push(uri.into());
        (self.doc.namespaces.len() - 1) as u32
    }

    fn resolve(&self, prefix: &str, offset: u64) -> Result<u32, XmlError> {
        if let Some((_, ns)) = self
            .scope
            .iter()
            .rev()
            .find(|(p, _)| &self.prefixes[p.start as usize..p.end as usize] == prefix)
        {
            return Ok(*ns);
        }
        match prefix {
            "" => Ok(NO_NS),
            _ => Err(XmlError::UnboundPrefix {
                prefix: prefix.to_string(),
                position: self.pos(offset),
            }),
        }
    }

    fn start(&mut self, e: &BytesStart<'a>, offset: u64, empty: bool) -> Result<(), XmlError> {
        if self.open.is_empty() && self.seen_root {
            return Err(self.malformed(offset, "more than one root element"));
        }
        self.seen_root = true;
        if self.open.len() >= self.limits.max_depth {
            return Err(XmlError::TooDeep {
                limit: self.limits.max_depth,
                position: self.pos(offset),
            });
        }
        if self.doc.nodes.len() >= self.limits.max_elements {
            return Err(XmlError::TooManyElements {
                limit: self.limits.max_elements,
                position: self.pos(offset),
            });
        }
        let scope_len = self.scope.len();
        let qname: &str = e.name().into_inner();

        // First pass: namespace declarations, so that they apply to this element's
        // own name and attributes.
        let mut attr_count = 0usize;
        let mut pending: Vec<(&str, std::borrow::Cow<'_, str>)> = Vec::new();
        for attr in e.attributes() {
            let attr = attr.map_err(|err| self.malformed(offset, err.to_string()))?;
            let key: &str = attr.key.into_inner();
            let decl_prefix = if key == "xmlns" {
                Some("")
            } else {
                key.strip_prefix("xmlns:")
            };
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| self.attr_error(offset, err))?;
            if let Some(prefix) = decl_prefix {
                self.namespace_decls += 1;
                if self.namespace_decls > self.limits.max_namespaces {
                    return Err(XmlError::TooManyNamespaces {
                        limit: self.limits.max_namespaces,
                        position: self.pos(offset),
                    });
                }
                if !prefix.is_empty() && value.is_empty() {
                    return Err(self.malformed(
                        offset,
                        format!(
                            "xmlns:{prefix}=\"\" is not allowed (a prefix cannot be undeclared)"
                        ),
                    ));
                }
                if value == XMLNS_NS || (value == XML_NS && prefix != "xml") {
                    return Err(self.malformed(
                        offset,
                        format!("reserved namespace {value} cannot be bound to {key}"),
                    ));
                }
                self.text_bytes += value.len();
                if self.text_bytes > self.limits.max_text_bytes {
                    return Err(XmlError::TooMuchText {
                        limit: self.limits.max_text_bytes,
                        position: self.pos(offset),
                    });
                }
                let ns = self.intern_ns(&value);
                let start = self.prefixes.len() as u32;
                self.prefixes.push_str(prefix);
                self.scope.push((start..self.prefixes.len() as u32, ns));
            } else {
                attr_count += 1;
                if attr_count > self.limits.max_attributes {
                    return Err(XmlError::TooManyAttributes {
                        limit: self.limits.max_attributes,
                        position: self.pos(offset),
                    });
                }
                pending.push((key, value));
            }
        }

        let (prefix, local) = split_qname(qname);
        let ns = if prefix == "xml" {
            self.intern_ns(XML_NS)
        } else {
            self.resolve(prefix, offset)?
        };
        let name = self.push_name(local);

        let attrs_start = self.doc.attrs.len() as u32;
        for (key, value) in pending {
            let (prefix, local) = split_qname(key);
            let ans = match prefix {
                "" => NO_NS,
                "xml" => self.intern_ns(XML_NS),
                p => self.resolve(p, offset)?,
            };
            self.text_bytes += value.len();
            if self.text_bytes > self.limits.max_text_bytes {
                return Err(XmlError::TooMuchText {
                    limit: self.limits.max_text_bytes,
                    position: self.pos(offset),
                });
            }
            let name = self.push_name(local);
            let vstart = self.doc.attr_values.len() as u32;
            self.doc.attr_values.push_str(&value);
            let vend = self.doc.attr_values.len() as u32;
            self.doc.attrs.push(Attr {
                ns: ans,
                name,
                value: vstart..vend,
            });
        }
        let attrs_end = self.doc.attrs.len() as u32;
        let text_start = self.doc.text.len() as u32;
        let index = self.doc.nodes.len() as u32;
        self.doc.nodes.push(Node {
            ns,
            name,
            end: index + 1,
            attrs: attrs_start..attrs_end,
            text: text_start..text_start,
        });
        self.open.push(Open {
            node: index,
            scope_len,
        });
        if empty {
            self.end();
        }
        Ok(())
    }

    fn attr_error(&self, offset: u64, err: quick_xml::Error) -> XmlError {
        if let quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
            _,
            ref name,
        )) = err
        {
            return XmlError::UndefinedEntity {
                name: name.clone(),
                position: self.pos(offset),
            };
        }
        self.malformed(offset, err.to_string())
    }

    fn push_name(&mut self, local: &str) -> Range<u32> {
        let start = self.doc.names.len() as u32;
        self.doc.names.push_str(local);
        start..self.doc.names.len() as u32
    }

    fn end(&mut self) {
        // quick-xml checks that end tags match, so the stack is never empty here.
        if let Some(open) = self.open.pop() {
            let text_end = self.doc.text.len() as u32;
            let end = self.doc.nodes.len() as u32;
            let node = &mut self.doc.nodes[open.node as usize];
            node.end = end;
            node.text.end = text_end;
            if let Some((r, _)) = self.scope.get(open.scope_len) {
                self.prefixes.truncate(r.start as usize);
            }
            self.scope.truncate(open.scope_len);
        }
    }

    fn find_payload(&mut self) -> Result<(), XmlError> {
        let root = Element {
            doc: &self.doc,
            index: 0,
        };
        let version = if root.is(SOAP11_NS, "Envelope") {
            SoapVersion::Soap11
        } else if root.is(SOAP12_NS, "Envelope") {
            SoapVersion::Soap12
        } else {
            return Ok(());
        };
        let ns = version.namespace();
        let payload = root
            .children()
            .find(|c| c.is(ns, "Body"))
            .and_then(|body| body.children().next())
            .map(|p| p.index);
        match payload {
            Some(index) => {
                self.doc.payload = index;
                self.doc.soap = Some(version);
                Ok(())
            }
            None => Err(XmlError::SoapWithoutPayload { version }),
        }
    }
}

fn split_qname(q: &str) -> (&str, &str) {
    match q.split_once(':') {
        Some((p, l)) => (p, l),
        None => ("", q),
    }
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}
