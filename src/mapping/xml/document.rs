//! The parsed document: a flat, read-only tree of namespace-resolved elements.
//!
//! Elements are stored in document (pre-)order, so the descendants of element `i` are
//! `i + 1 .. end(i)` and an element's text including its descendants is one slice.

use std::fmt;
use std::ops::Range;

use super::encoding::{declared_encoding, utf16};
use super::reader::Parser;
use super::{Attr, Limits, Node, Position, SoapVersion, XmlError};

/// A parsed, namespace-resolved XML document (read-only).
#[derive(Debug, Clone)]
pub struct Document {
    pub(super) nodes: Vec<Node>,
    pub(super) attrs: Vec<Attr>,
    /// Local names of elements and attributes, back to back.
    pub(super) names: String,
    /// Character data: element text in document order; attribute values live in
    /// `attr_values` so that element text ranges stay contiguous.
    pub(super) text: String,
    pub(super) attr_values: String,
    /// Namespace URIs seen; index 0 is the empty "no namespace".
    pub(super) namespaces: Vec<Box<str>>,
    /// The payload root: the document element, or the first child of a SOAP Body.
    pub(super) payload: u32,
    pub(super) soap: Option<SoapVersion>,
}

/// A borrowed view of one element of a [`Document`].
#[derive(Clone, Copy)]
pub struct Element<'d> {
    pub(super) doc: &'d Document,
    pub(super) index: u32,
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
    pub(super) doc: &'d Document,
    next: u32,
    pub(super) end: u32,
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

    pub(super) fn name(&self, r: &Range<u32>) -> &str {
        &self.names[r.start as usize..r.end as usize]
    }
}
