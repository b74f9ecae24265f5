//! XML intake: parses untrusted bytes into a small, namespace-resolved, read-only tree.
//!
//! The parser sits on top of `quick_xml::Reader` and adds what the gateway needs from an
//! edge that faces the outside world:
//!
//! * hard limits on size, depth, element count, attributes, namespace declarations and
//!   text, checked while reading so that memory and time stay proportional to the input
//!   and never exceed the limits;
//! * refusal of any `<!DOCTYPE ...>` (and so of every DTD, entity declaration, external
//!   entity and "billion laughs" construction): nothing is ever expanded. The five
//!   predefined entities and numeric character references are resolved;
//! * namespace resolution of its own (prefixes are matched by URI, never by spelling);
//! * SOAP 1.1 and 1.2 envelope detection: the first child element of `Body` becomes the
//!   payload root, the element that mapping paths start from.
//!
//! The tree is stored flat in document (pre-)order: the descendants of element `i` are
//! exactly the elements `i + 1 .. end(i)`. All text of the document is appended, in
//! document order, to one buffer, so the text of an element including its descendants
//! (its XPath "string value") is one contiguous slice and costs nothing to read.

use std::fmt;
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Namespace URI of SOAP 1.1 envelopes.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Namespace URI of SOAP 1.2 envelopes.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// Namespace URI bound to the reserved `xml` prefix.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace URI bound to the reserved `xmlns` prefix.
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// Marker for "no namespace" in [`Node::ns`].
const NO_NS: u32 = 0;

/// Hard limits applied while parsing. Every limit is checked before the data it
/// bounds is stored, so a hostile document fails early and cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document, in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Deepest element nesting, counting the root as depth 1 (default 64).
    pub max_depth: usize,
    /// Most elements in the whole document, envelope included (default 10,000).
    pub max_elements: usize,
    /// Most attributes on one element, namespace declarations excluded (default 64).
    pub max_attributes: usize,
    /// Most namespace declarations (`xmlns`, `xmlns:p`) in the whole document (default 256).
    pub max_namespaces: usize,
    /// Most bytes of character data (text, CDATA and attribute values) in the whole
    /// document, after entity resolution (default 1 MiB).
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_elements: 10_000,
            max_attributes: 64,
            max_namespaces: 256,
            max_text_bytes: 1024 * 1024,
        }
    }
}

/// The SOAP version of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SoapVersion {
    /// SOAP 1.1, `http://schemas.xmlsoap.org/soap/envelope/`.
    Soap11,
    /// SOAP 1.2, `http://www.w3.org/2003/05/soap-envelope`.
    Soap12,
}

impl SoapVersion {
    /// The envelope namespace URI of this version.
    pub fn namespace(self) -> &'static str {
        match self {
            SoapVersion::Soap11 => SOAP11_NS,
            SoapVersion::Soap12 => SOAP12_NS,
        }
    }
}

impl fmt::Display for SoapVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SoapVersion::Soap11 => "SOAP 1.1",
            SoapVersion::Soap12 => "SOAP 1.2",
        })
    }
}

/// Where in the input a problem was found: byte offset and 1-based line and column
/// (the column counts characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Byte offset from the start of the input.
    pub offset: usize,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Position {
    /// Computes line and column of `offset` in `input`. Only used on the error path.
    pub(crate) fn locate(input: &[u8], offset: usize) -> Position {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        // Count characters, not bytes: skip UTF-8 continuation bytes.
        let column = before[line_start..]
            .iter()
            .filter(|&&b| (b & 0xC0) != 0x80)
            .count()
            + 1;
        Position {
            offset,
            line,
            column,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Why a document was refused. Every variant says what was wrong and, where it makes
/// sense, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The input holds no root element (empty, whitespace, comments only).
    #[error("the document is empty: no root element")]
    Empty,
    /// The input is larger than [`Limits::max_bytes`].
    #[error("the document is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The input is not valid UTF-8.
    #[error("invalid UTF-8 at {position}")]
    InvalidUtf8 {
        /// Where the first invalid byte sits.
        position: Position,
    },
    /// The XML declaration names an encoding the gateway cannot decode for these bytes
    /// (an unknown name, one that is not ASCII-compatible, or UTF-16 on bytes that are
    /// not UTF-16).
    #[error("unsupported encoding {encoding:?} for this document: send UTF-8, UTF-16 (with its byte order mark), or an ASCII-compatible encoding such as ISO-8859-1 named in the XML declaration")]
    UnsupportedEncoding {
        /// The declared encoding.
        encoding: String,
    },
    /// The bytes are not valid in the encoding the XML declaration (or, for UTF-16, the
    /// byte order mark) names.
    #[error("the document is not valid {encoding}, the encoding it announces")]
    InvalidEncoding {
        /// The declared encoding.
        encoding: String,
    },
    /// A `<!DOCTYPE>` (and with it any DTD or entity declaration) was found. Such
    /// documents are refused, never expanded.
    #[error("DOCTYPE/DTD at {position} refused: DTDs and entity declarations are not accepted")]
    Dtd {
        /// Where the DOCTYPE starts.
        position: Position,
    },
    /// A reference to an entity other than the five predefined ones.
    #[error("undefined entity &{name}; at {position} (only &lt; &gt; &amp; &apos; &quot; and numeric references are allowed)")]
    UndefinedEntity {
        /// The entity name.
        name: String,
        /// Where the reference sits.
        position: Position,
    },
    /// Elements nest deeper than [`Limits::max_depth`].
    #[error("elements nest deeper than the limit of {limit} at {position}")]
    TooDeep {
        /// The limit in force.
        limit: usize,
        /// Where the offending element starts.
        position: Position,
    },
    /// More elements than [`Limits::max_elements`].
    #[error("more than {limit} elements at {position}")]
    TooManyElements {
        /// The limit in force.
        limit: usize,
        /// Where the offending element starts.
        position: Position,
    },
    /// An element has more attributes than [`Limits::max_attributes`].
    #[error("an element has more than {limit} attributes at {position}")]
    TooManyAttributes {
        /// The limit in force.
        limit: usize,
        /// Where the offending element starts.
        position: Position,
    },
    /// More namespace declarations than [`Limits::max_namespaces`].
    #[error("more than {limit} namespace declarations at {position}")]
    TooManyNamespaces {
        /// The limit in force.
        limit: usize,
        /// Where the offending element starts.
        position: Position,
    },
    /// More character data than [`Limits::max_text_bytes`].
    #[error("more than {limit} bytes of text at {position}")]
    TooMuchText {
        /// The limit in force.
        limit: usize,
        /// Where the offending text ends.
        position: Position,
    },
    /// A prefix is used that no `xmlns:prefix` declaration in scope binds.
    #[error("namespace prefix {prefix:?} is not declared, at {position}")]
    UnboundPrefix {
        /// The prefix.
        prefix: String,
        /// Where the element using it starts.
        position: Position,
    },
    /// A SOAP envelope without a `Body`, or with an empty one.
    #[error("{version} envelope has no payload: Body is missing or empty")]
    SoapWithoutPayload {
        /// The envelope version.
        version: SoapVersion,
    },
    /// Any other well-formedness error.
    #[error("malformed XML at {position}: {message}")]
    Malformed {
        /// Where the problem was detected.
        position: Position,
        /// What was wrong.
        message: String,
    },
}

/// One element of the flat tree.
#[derive(Debug, Clone)]
struct Node {
    /// Index into [`Document::namespaces`]; [`NO_NS`] for no namespace.
    ns: u32,
    /// Local name, a range of [`Document::names`].
    name: Range<u32>,
    /// Index of the first element after this one's subtree.
    end: u32,
    /// Attributes, a range of [`Document::attrs`].
    attrs: Range<u32>,
    /// Text of the element and its descendants, a range of [`Document::text`].
    text: Range<u32>,
}

/// One attribute (namespace declarations are not kept as attributes).
#[derive(Debug, Clone)]
struct Attr {
    ns: u32,
    name: Range<u32>,
    /// Normalized value, a range of [`Document::attr_values`] (kept apart from element
    /// text so that an element's text stays one contiguous range).
    value: Range<u32>,
}

/// A parsed, namespace-resolved XML document (read-only).
#[derive(Debug, Clone)]
pub struct Document {
    nodes: Vec<Node>,
    attrs: Vec<Attr>,
    /// Local names of elements and attributes, back to back.
    names: String,
    /// Character data: element text in document order; attribute values live in
    /// `attr_values` so that element text ranges stay contiguous.
    text: String,
    attr_values: String,
    /// Namespace URIs seen; index 0 is the empty "no namespace".
    namespaces: Vec<Box<str>>,
    /// The payload root: the document element, or the first child of a SOAP Body.
    payload: u32,
    soap: Option<SoapVersion>,
}

/// A borrowed view of one element of a [`Document`].
#[derive(Clone, Copy)]
pub struct Element<'d> {
    doc: &'d Document,
    index: u32,
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Element")
            .field("namespace", &self.namespace())
            .field("name", &self.local_name())
            .finish()
    }
}

impl<'d> Element<'d> {
    fn node(&self) -> &'d Node {
        &self.doc.nodes[self.index as usize]
    }

    /// The element's local name (without prefix).
    pub fn local_name(&self) -> &'d str {
        self.doc.name(&self.node().name)
    }

    /// The element's namespace URI, `""` when it has none.
    pub fn namespace(&self) -> &'d str {
        &self.doc.namespaces[self.node().ns as usize]
    }

    /// The text of the element and all its descendants, in document order (the XPath
    /// string value), with entities resolved and CDATA included.
    pub fn text(&self) -> &'d str {
        let r = &self.node().text;
        &self.doc.text[r.start as usize..r.end as usize]
    }

    /// The value of the attribute with this namespace URI (`""` for none, the usual
    /// case for attributes) and local name.
    pub fn attribute(&self, namespace: &str, local_name: &str) -> Option<&'d str> {
        let node = self.node();
        self.doc.attrs[node.attrs.start as usize..node.attrs.end as usize]
            .iter()
            .find(|a| {
                self.doc.name(&a.name) == local_name
                    && &*self.doc.namespaces[a.ns as usize] == namespace
            })
            .map(|a| &self.doc.attr_values[a.value.start as usize..a.value.end as usize])
    }

    /// The child elements, in document order.
    pub fn children(&self) -> Children<'d> {
        let node = self.node();
        Children {
            doc: self.doc,
            next: self.index + 1,
            end: node.end,
        }
    }

    /// Whether this element's name is (`namespace`, `local_name`).
    pub fn is(&self, namespace: &str, local_name: &str) -> bool {
        self.local_name() == local_name && self.namespace() == namespace
    }
}

/// Iterator over the child elements of an [`Element`].
#[derive(Clone)]
pub struct Children<'d> {
    doc: &'d Document,
    next: u32,
    end: u32,
}

impl<'d> Iterator for Children<'d> {
    type Item = Element<'d>;

    fn next(&mut self) -> Option<Element<'d>> {
        if self.next >= self.end {
            return None;
        }
        let index = self.next;
        self.next = self.doc.nodes[index as usize].end;
        Some(Element {
            doc: self.doc,
            index,
        })
    }
}

impl Document {
    /// Parses `bytes` under `limits`. Never panics; time and memory are linear in the
    /// input and bounded by the limits.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Document, XmlError> {
        // The tree stores offsets as u32; everything stored is at most as long as the
        // input (entity references never grow), so capping the input caps them all.
        let max_bytes = limits.max_bytes.min(u32::MAX as usize);
        if bytes.len() > max_bytes {
            return Err(XmlError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        // UTF-16, which every XML processor must read (XML 1.0, 4.3.3), recognised by its
        // byte order mark or by `<` as its first character, and a document declaring
        // another ASCII-compatible encoding (ISO-8859-1, windows-1252, Shift_JIS, ...)
        // are decoded to UTF-8 first (UTF-16 grows at most 1.5 times, so the limits
        // still hold); positions then count in the decoded text (lines are the same).
        let decode = utf16(bytes).or_else(|| declared_encoding(bytes).map(|e| (e, 0)));
        if let Some((encoding, bom)) = decode {
            let Some(text) =
                encoding.decode_without_bom_handling_and_without_replacement(&bytes[bom..])
            else {
                return Err(XmlError::InvalidEncoding {
                    encoding: encoding.name().to_string(),
                });
            };
            let mut parser = Parser::new(&text, text.as_bytes(), 0, limits);
            parser.decoded = true;
            return parser.run();
        }
        // A UTF-8 byte order mark is allowed and skipped.
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let bom = bytes.len() - body.len();
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(e) => {
                return Err(XmlError::InvalidUtf8 {
                    position: Position::locate(bytes, bom + e.valid_up_to()),
                })
            }
        };
        Parser::new(text, bytes, bom, limits).run()
    }

    /// The SOAP version when the document is a SOAP envelope.
    pub fn soap_version(&self) -> Option<SoapVersion> {
        self.soap
    }

    /// The payload root: the document element, or for a SOAP envelope the first child
    /// element of its `Body`. Mapping paths start here.
    pub fn payload_root(&self) -> Element<'_> {
        Element {
            doc: self,
            index: self.payload,
        }
    }

    /// The document element (the SOAP `Envelope` for SOAP documents).
    pub fn document_root(&self) -> Element<'_> {
        Element {
            doc: self,
            index: 0,
        }
    }

    /// Number of elements in the document, envelope included.
    pub fn element_count(&self) -> usize {
        self.nodes.len()
    }

    fn name(&self, r: &Range<u32>) -> &str {
        &self.names[r.start as usize..r.end as usize]
    }
}

/// One open element on the parser's stack.
struct Open {
    node: u32,
    /// Length of the namespace scope stack before this element's declarations.
    scope_len: usize,
}

/// The streaming builder behind [`Document::parse`].
struct Parser<'a> {
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
    decoded: bool,
}

/// UTF-16 (little or big endian) and the length of its byte order mark, when the bytes
/// start with one, or with `<` in UTF-16 (a document without a mark).
fn utf16(bytes: &[u8]) -> Option<(&'static encoding_rs::Encoding, usize)> {
    match bytes {
        [0xFF, 0xFE, ..] => Some((encoding_rs::UTF_16LE, 2)),
        [0xFE, 0xFF, ..] => Some((encoding_rs::UTF_16BE, 2)),
        [b'<', 0, ..] => Some((encoding_rs::UTF_16LE, 0)),
        [0, b'<', ..] => Some((encoding_rs::UTF_16BE, 0)),
        _ => None,
    }
}

/// The encoding an XML declaration names, when it is an ASCII-compatible one other than
/// UTF-8 that needs decoding. Reads only the declaration (at most 256 bytes).
fn declared_encoding(bytes: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let head = &bytes[..bytes.len().min(256)];
    let decl = head.strip_prefix(b"<?xml")?;
    let decl = &decl[..decl.windows(2).position(|w| w == b"?>")?];
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = decl[at + 8..]
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii_start();
    let quote = *rest.first().filter(|q| **q == b'"' || **q == b'\'')?;
    let value = &rest[1..];
    let label = &value[..value.iter().position(|b| *b == quote)?];
    let encoding = encoding_rs::Encoding::for_label(label)?;
    (encoding != encoding_rs::UTF_8 && encoding.is_ascii_compatible()).then_some(encoding)
}

impl<'a> Parser<'a> {
    fn new(input: &'a str, raw: &'a [u8], bom: usize, limits: &'a Limits) -> Parser<'a> {
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

    fn run(mut self) -> Result<Document, XmlError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Document, XmlError> {
        Document::parse(s.as_bytes(), &Limits::default())
    }

    fn root_text(s: &str) -> String {
        parse(s).unwrap().payload_root().text().to_string()
    }

    #[test]
    fn simple_tree_with_attributes() {
        let doc = parse(r#"<a x="1"><b y='2'>t</b><c/></a>"#).unwrap();
        let root = doc.payload_root();
        assert_eq!(root.local_name(), "a");
        assert_eq!(root.namespace(), "");
        assert_eq!(root.attribute("", "x"), Some("1"));
        assert_eq!(root.attribute("", "nope"), None);
        let kids: Vec<_> = root.children().map(|c| c.local_name()).collect();
        assert_eq!(kids, ["b", "c"]);
        let b = root.children().next().unwrap();
        assert_eq!(b.attribute("", "y"), Some("2"));
        assert_eq!(b.text(), "t");
        assert_eq!(doc.element_count(), 3);
        assert_eq!(doc.soap_version(), None);
    }

    #[test]
    fn cdata_entities_and_char_refs() {
        assert_eq!(root_text("<a><![CDATA[<x> & y]]></a>"), "<x> & y");
        assert_eq!(root_text("<a>&lt;&gt;&amp;&apos;&quot;</a>"), "<>&'\"");
        assert_eq!(root_text("<a>&#65;&#x42;&#x1F600;</a>"), "AB😀");
        let doc = parse(r#"<a v="&lt;&#65;&amp;"/>"#).unwrap();
        assert_eq!(doc.payload_root().attribute("", "v"), Some("<A&"));
        // Attribute values are normalized: newlines and tabs become spaces.
        let doc = parse("<a v=\"x\ny\tz\"/>").unwrap();
        assert_eq!(doc.payload_root().attribute("", "v"), Some("x y z"));
    }

    #[test]
    fn mixed_content_is_the_string_value_in_order() {
        let doc = parse("<d>Line <b>bold</b> and <i>it<u>al</u></i>ic.</d>").unwrap();
        assert_eq!(doc.payload_root().text(), "Line bold and italic.");
        let b = doc.payload_root().children().next().unwrap();
        assert_eq!(b.text(), "bold");
    }

    #[test]
    fn empty_elements_and_line_endings() {
        assert_eq!(root_text("<a/>"), "");
        assert_eq!(root_text("<a></a>"), "");
        assert_eq!(root_text("<a>x\r\ny\rz</a>"), "x\ny\nz");
    }

    #[test]
    fn non_ascii_text_and_names() {
        let doc = parse("<straße ort=\"München\">日本語 – ñ</straße>").unwrap();
        let r = doc.payload_root();
        assert_eq!(r.local_name(), "straße");
        assert_eq!(r.attribute("", "ort"), Some("München"));
        assert_eq!(r.text(), "日本語 – ñ");
    }

    #[test]
    fn bom_comments_pis_and_declaration() {
        let doc = Document::parse(
            b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?><!-- c --><?pi x?><a>1<!-- c --></a><!-- after -->\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(doc.payload_root().text(), "1");
    }

    #[test]
    fn namespaces_resolve_by_uri() {
        let doc = parse(
            r#"<p:a xmlns:p="urn:x" xmlns="urn:d"><b/><p:c xmlns:p="urn:y"/><e xmlns=""/><f p:k="v"/></p:a>"#,
        )
        .unwrap();
        let r = doc.payload_root();
        assert!(r.is("urn:x", "a"));
        let kids: Vec<(&str, &str)> = r
            .children()
            .map(|c| (c.namespace(), c.local_name()))
            .collect();
        assert_eq!(
            kids,
            [("urn:d", "b"), ("urn:y", "c"), ("", "e"), ("urn:d", "f")]
        );
        let f = r.children().nth(3).unwrap();
        assert_eq!(f.attribute("urn:x", "k"), Some("v"));
        assert_eq!(f.attribute("", "k"), None);
        let doc = parse(r#"<a xml:lang="de"/>"#).unwrap();
        assert_eq!(doc.payload_root().attribute(XML_NS, "lang"), Some("de"));
    }

    #[test]
    fn soap_11_and_12_payload_root() {
        let s11 = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h/></s:Header><s:Body><p:Create xmlns:p="urn:p"><x>1</x></p:Create></s:Body></s:Envelope>"#;
        let doc = parse(s11).unwrap();
        assert_eq!(doc.soap_version(), Some(SoapVersion::Soap11));
        assert!(doc.payload_root().is("urn:p", "Create"));
        assert!(doc.document_root().is(SOAP11_NS, "Envelope"));
        let s12 = r#"<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope">
            <Body>
              <incident xmlns=""><n>2</n></incident>
            </Body></Envelope>"#;
        let doc = parse(s12).unwrap();
        assert_eq!(doc.soap_version(), Some(SoapVersion::Soap12));
        assert_eq!(doc.payload_root().local_name(), "incident");
        assert_eq!(doc.payload_root().text(), "2");
        // An Envelope in another namespace is just an element.
        let doc = parse(r#"<Envelope xmlns="urn:other"><Body><x/></Body></Envelope>"#).unwrap();
        assert_eq!(doc.soap_version(), None);
        assert_eq!(doc.payload_root().local_name(), "Envelope");
    }

    #[test]
    fn error_empty() {
        assert_eq!(parse("").unwrap_err(), XmlError::Empty);
        assert_eq!(parse("  <!-- only -->\n").unwrap_err(), XmlError::Empty);
    }

    #[test]
    fn error_too_large() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let err = Document::parse(b"<a>0123456789</a>", &limits).unwrap_err();
        assert!(matches!(
            err,
            XmlError::TooLarge {
                size: 17,
                limit: 10
            }
        ));
    }

    #[test]
    fn error_invalid_utf8_with_position() {
        let err = Document::parse(b"<a>\n ok \xC3\x28</a>", &Limits::default()).unwrap_err();
        match err {
            XmlError::InvalidUtf8 { position } => {
                assert_eq!((position.offset, position.line, position.column), (8, 2, 5));
            }
            other => panic!("{other:?}"),
        }
        // A UTF-16 byte order mark makes it UTF-16 (see the encodings test); the other
        // bytes that never start UTF-8 are refused the same way.
        let doc = Document::parse(b"\xFF\xFE<\0a\0/\0>\0", &Limits::default()).unwrap();
        assert_eq!(doc.payload_root().local_name(), "a");
        assert!(matches!(
            Document::parse(b"\xFE<a/>", &Limits::default()),
            Err(XmlError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn declared_encodings_are_decoded_or_refused() {
        let bytes = |b: &[u8]| Document::parse(b, &Limits::default());
        // ISO-8859-1 and windows-1252 bytes, as older tools send them.
        let doc = bytes(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>Caf\xE9 M\xFCller</a>")
            .unwrap();
        assert_eq!(doc.payload_root().text(), "Caf\u{e9} M\u{fc}ller");
        let doc =
            bytes(b"<?xml version='1.0' encoding = 'windows-1252' ?><a x=\"\x80\">\x93q\x94</a>")
                .unwrap();
        assert_eq!(doc.payload_root().text(), "\u{201c}q\u{201d}");
        assert_eq!(doc.payload_root().attribute("", "x"), Some("\u{20ac}"));
        // Bytes that are not valid in the declared encoding.
        let err = bytes(b"<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><a>\x81</a>").unwrap_err();
        assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
        // Encodings that are not ASCII-compatible (or unknown) stay refused for
        // non-ASCII content; pure ASCII is the same in all of them.
        for enc in ["UTF-16", "x-unknown"] {
            let err = parse(&format!(
                "<?xml version=\"1.0\" encoding=\"{enc}\"?><a>\u{e9}</a>"
            ))
            .unwrap_err();
            assert!(
                matches!(err, XmlError::UnsupportedEncoding { .. }),
                "{err:?}"
            );
            assert!(parse(&format!(
                "<?xml version=\"1.0\" encoding=\"{enc}\"?><a>e</a>"
            ))
            .is_ok());
        }
        // UTF-16, as .NET and Java tools write it: with a byte order mark in either byte
        // order, or without one (then the declaration's `<` tells the byte order).
        let text = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a b=\"\u{e9}\">Caf\u{e9} \u{4e2d}\u{1f512}</a>";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        for (what, input) in [
            ("LE with BOM", [&[0xFF, 0xFE][..], &le].concat()),
            ("BE with BOM", [&[0xFE, 0xFF][..], &be].concat()),
            ("LE without BOM", le.clone()),
            ("BE without BOM", be.clone()),
        ] {
            let doc = bytes(&input).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                doc.payload_root().text(),
                "Caf\u{e9} \u{4e2d}\u{1f512}",
                "{what}"
            );
            assert_eq!(
                doc.payload_root().attribute("", "b"),
                Some("\u{e9}"),
                "{what}"
            );
        }
        // Half a code unit, or a lone surrogate, is not UTF-16.
        let err = bytes(&[&[0xFF, 0xFE][..], &le, &[0x41]].concat()).unwrap_err();
        assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
        let err = bytes(
            &[
                &[0xFF, 0xFE][..],
                &le[..le.len() - 8],
                &[0x00, 0xD8],
                &le[le.len() - 6..],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
        // Decoding changes nothing else: a DTD is still refused, in UTF-16 too.
        let dtd: Vec<u8> = "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let err = bytes(&[&[0xFF, 0xFE][..], &dtd].concat()).unwrap_err();
        assert!(matches!(err, XmlError::Dtd { .. }), "{err:?}");
        let err = bytes(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>").unwrap_err();
        assert!(matches!(err, XmlError::Dtd { .. }), "{err:?}");
    }

    #[test]
    fn error_dtd_and_external_entities() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
        let err = parse(xxe).unwrap_err();
        match err {
            XmlError::Dtd { position } => assert_eq!(position.offset, 21),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("<!DOCTYPE a><a/>"),
            Err(XmlError::Dtd { .. })
        ));
        assert!(matches!(
            parse("<!doctype a><a/>"),
            Err(XmlError::Dtd { .. })
        ));
        // Even an unterminated DOCTYPE is reported as a DTD, not as garbage.
        assert!(matches!(
            parse("<!DOCTYPE a [ <!ENTITY x \"y\">"),
            Err(XmlError::Dtd { .. })
        ));
    }

    #[test]
    fn error_billion_laughs_is_refused_quickly() {
        let mut s =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
        for i in 1..=9 {
            let prev = if i == 1 {
                "lol".to_string()
            } else {
                format!("lol{}", i - 1)
            };
            s.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        s.push_str("]>\n<lolz>&lol9;</lolz>");
        assert!(matches!(parse(&s), Err(XmlError::Dtd { .. })));
    }

    #[test]
    fn error_undefined_entity() {
        let err = parse("<a>&nbsp;</a>").unwrap_err();
        assert!(
            matches!(err, XmlError::UndefinedEntity { ref name, .. } if name == "nbsp"),
            "{err:?}"
        );
        let err = parse("<a b=\"&foo;\"/>").unwrap_err();
        assert!(
            matches!(err, XmlError::UndefinedEntity { ref name, .. } if name == "foo"),
            "{err:?}"
        );
        assert!(matches!(
            parse("<a>&#0;</a>"),
            Err(XmlError::Malformed { .. })
        ));
    }

    #[test]
    fn error_too_deep_at_10000_levels() {
        let s = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
        match parse(&s).unwrap_err() {
            XmlError::TooDeep { limit, position } => {
                assert_eq!(limit, 64);
                assert_eq!(position.offset, 64 * 3);
            }
            other => panic!("{other:?}"),
        }
        let ok = "<a>".repeat(64) + &"</a>".repeat(64);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn error_too_many_elements() {
        let s = format!("<r>{}</r>", "<e/>".repeat(10_000));
        assert!(matches!(
            parse(&s),
            Err(XmlError::TooManyElements { limit: 10_000, .. })
        ));
        let s = format!("<r>{}</r>", "<e/>".repeat(9_999));
        assert!(parse(&s).is_ok());
    }

    #[test]
    fn error_too_many_attributes() {
        let attrs: String = (0..65).map(|i| format!(" a{i}=\"x\"")).collect();
        let err = parse(&format!("<r{attrs}/>")).unwrap_err();
        assert!(
            matches!(err, XmlError::TooManyAttributes { limit: 64, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn error_100000_namespace_declarations() {
        // All on one element ...
        let decls: String = (0..100_000)
            .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
            .collect();
        let err = Document::parse(
            format!("<r{decls}/>").as_bytes(),
            &Limits {
                max_bytes: 8 << 20,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, XmlError::TooManyNamespaces { limit: 256, .. }),
            "{err:?}"
        );
        // ... or spread over siblings: the limit is per document.
        let s = format!("<r>{}</r>", "<e xmlns:p=\"urn:p\"/>".repeat(300));
        assert!(matches!(parse(&s), Err(XmlError::TooManyNamespaces { .. })));
    }

    #[test]
    fn error_too_much_text() {
        let limits = Limits {
            max_text_bytes: 8,
            ..Limits::default()
        };
        let err = Document::parse(b"<a>0123456789</a>", &limits).unwrap_err();
        assert!(
            matches!(err, XmlError::TooMuchText { limit: 8, .. }),
            "{err:?}"
        );
        let err = Document::parse(b"<a v=\"0123456789\"/>", &limits).unwrap_err();
        assert!(matches!(err, XmlError::TooMuchText { .. }), "{err:?}");
    }

    #[test]
    fn error_unbound_prefix() {
        let err = parse("<a><x:b/></a>").unwrap_err();
        match err {
            XmlError::UnboundPrefix { prefix, position } => {
                assert_eq!(prefix, "x");
                assert_eq!(position.offset, 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("<a x:y=\"1\"/>"),
            Err(XmlError::UnboundPrefix { .. })
        ));
        // A prefix goes out of scope with its element.
        assert!(matches!(
            parse("<a><b xmlns:x=\"urn:x\"/><x:c/></a>"),
            Err(XmlError::UnboundPrefix { .. })
        ));
    }

    #[test]
    fn error_soap_without_payload() {
        let err = parse(r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#)
            .unwrap_err();
        assert_eq!(
            err,
            XmlError::SoapWithoutPayload {
                version: SoapVersion::Soap11
            }
        );
        let err = parse(r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header/></e:Envelope>"#)
            .unwrap_err();
        assert_eq!(
            err,
            XmlError::SoapWithoutPayload {
                version: SoapVersion::Soap12
            }
        );
        assert!(err.to_string().contains("SOAP 1.2"));
    }

    #[test]
    fn error_malformed_variants_with_positions() {
        for (bad, needle) in [
            ("<a><b></a>", ""),
            ("<a>", "not closed"),
            ("<a/><b/>", "more than one root"),
            ("text<a/>", "text outside"),
            ("<a/>trailing", "text outside"),
            ("<a b=\"1\" b=\"2\"/>", ""),
            ("<a b=1/>", ""),
            ("<a xmlns:p=\"\"/>", "cannot be undeclared"),
            ("<a>&amp</a>", ""),
            ("<a><![CDATA[x</a>", ""),
        ] {
            match parse(bad) {
                Err(XmlError::Malformed { position, message }) => {
                    assert!(message.contains(needle), "{bad:?}: {message}");
                    assert!(position.line >= 1 && position.column >= 1);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = parse("<a>\n  <b>\n</a>").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn position_counts_characters() {
        let p = Position::locate("ab\néé x".as_bytes(), 8);
        assert_eq!((p.line, p.column), (2, 4));
        assert_eq!(p.to_string(), "line 2, column 4 (byte 8)");
    }
}
