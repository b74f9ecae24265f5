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
//!
//! Files: this one holds the limits, positions and errors; `document` the read-only
//! tree and its accessors; `reader` the streaming builder over quick-xml (limits,
//! namespaces, entities, SOAP detection); `encoding` the decoding of UTF-16 and of
//! declared ASCII-compatible encodings.

use std::fmt;

mod document;
mod encoding;
mod reader;
#[cfg(test)]
mod tests;

pub use document::{Children, Document, Element};

/// Namespace URI of SOAP 1.1 envelopes.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Namespace URI of SOAP 1.2 envelopes.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// Namespace URI bound to the reserved `xml` prefix.
pub(super) const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace URI bound to the reserved `xmlns` prefix.
pub(super) const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// One element of the flat tree.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Index into [`Document::namespaces`]; [`NO_NS`] for no namespace.
    pub(crate) ns: u32,
    /// Local name, a range of [`Document::names`].
    pub(crate) name: std::ops::Range<u32>,
    /// Index of the first element after this one's subtree.
    pub(crate) end: u32,
    /// Attributes, a range of [`Document::attrs`].
    pub(crate) attrs: std::ops::Range<u32>,
    /// Text of the element and its descendants, a range of [`Document::text`].
    pub(crate) text: std::ops::Range<u32>,
}

/// One attribute (namespace declarations are not kept as attributes).
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub(crate) ns: u32,
    pub(crate) name: std::ops::Range<u32>,
    /// Normalized value, a range of [`Document::attr_values`] (kept apart from element
    /// text so that an element's text stays one contiguous range).
    pub(crate) value: std::ops::Range<u32>,
}

/// Marker for "no namespace" in [`Node::ns`].
pub(super) const NO_NS: u32 = 0;

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
