//! Source paths: where a value comes from in an XML document or a gRPC field map.
//!
//! XML paths are compiled once into namespace-resolved steps: a step matches an element
//! by namespace URI and local name, whatever prefix the sender used. Grammar:
//!
//! ```text
//! path      := "/" steps | steps | "."            absolute, relative, the payload root
//! steps     := step ("/" step)* ("/" "@" qname)?  | "@" qname
//! step      := qname
//! qname     := prefix ":" local | local           prefix declared in [namespaces]
//! ```
//!
//! An absolute path names the payload root first (`/incident/number`); a relative path
//! starts below it (`number`). Unprefixed element steps match the mapping's
//! `default_namespace` (no namespace unless one is set); unprefixed attributes have no
//! namespace, as in XML itself. In a `source = "fields"` mapping a path is just a key.

use std::collections::HashMap;
use std::ops::ControlFlow;

use super::xml::{Document, Element};

/// A namespace-resolved name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    /// Namespace URI, `""` for none.
    pub(crate) ns: Box<str>,
    pub(crate) local: Box<str>,
}

/// A compiled XML path.
#[derive(Debug, Clone)]
pub(crate) struct XmlPath {
    /// The path as written, for messages.
    pub(crate) text: Box<str>,
    /// Whether the first step names the payload root itself.
    pub(crate) absolute: bool,
    pub(crate) steps: Vec<Name>,
    pub(crate) attr: Option<Name>,
}

/// A compiled source path of either kind.
#[derive(Debug, Clone)]
pub(crate) enum SourcePath {
    Xml(XmlPath),
    Key(Box<str>),
}

impl SourcePath {
    /// The path as written in the mapping.
    pub(crate) fn text(&self) -> &str {
        match self {
            SourcePath::Xml(p) => &p.text,
            SourcePath::Key(k) => k,
        }
    }
}

/// Namespace context for compiling XML paths.
pub(crate) struct NsContext<'a> {
    pub(crate) prefixes: &'a HashMap<String, String>,
    pub(crate) default_ns: &'a str,
}

/// Whether `s` is an acceptable XML name part (NCName, slightly lenient: any
/// non-ASCII character is allowed, ASCII is restricted to letters, digits, `_-.`).
pub(crate) fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.') || !c.is_ascii())
}

/// Resolves a qualified name written in the mapping. `element` selects the rule for
/// unprefixed names (default namespace for elements, none for attributes).
pub(crate) fn resolve_qname(
    qname: &str,
    ctx: &NsContext<'_>,
    element: bool,
) -> Result<Name, String> {
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, qname),
    };
    if !is_ncname(local) {
        return Err(format!("{qname:?} is not a valid XML name"));
    }
    let ns = match prefix {
        None if element => ctx.default_ns.to_string(),
        None => String::new(),
        Some(p) if !is_ncname(p) => return Err(format!("{qname:?} is not a valid XML name")),
        Some(p) => match ctx.prefixes.get(p) {
            Some(uri) => uri.clone(),
            None => {
                return Err(format!(
                    "namespace prefix {p:?} is not declared; add it to [namespaces], e.g. {p} = \"urn:...\""
                ))
            }
        },
    };
    Ok(Name {
        ns: ns.into(),
        local: local.into(),
    })
}

/// Compiles an XML path.
pub(crate) fn compile_xml_path(text: &str, ctx: &NsContext<'_>) -> Result<XmlPath, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty path".into());
    }
    if t.contains("//") {
        return Err(format!(
            "{t:?}: `//` (descendant search) is not supported; spell out every step"
        ));
    }
    let (absolute, rest) = match t.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let mut steps = Vec::new();
    let mut attr = None;
    if rest != "." || absolute {
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!("{t:?}: empty step"));
            }
            if let Some(a) = part.strip_prefix('@') {
                if i + 1 != parts.len() {
                    return Err(format!("{t:?}: an attribute step (@{a}) must come last"));
                }
                attr = Some(resolve_qname(a, ctx, false).map_err(|e| format!("{t:?}: {e}"))?);
            } else {
                steps.push(resolve_qname(part, ctx, true).map_err(|e| format!("{t:?}: {e}"))?);
            }
        }
    }
    if absolute && steps.is_empty() {
        return Err(format!(
            "{t:?}: an absolute path must start with the payload root element"
        ));
    }
    if steps.len() > 32 {
        return Err(format!("{t:?}: more than 32 steps"));
    }
    Ok(XmlPath {
        text: t.into(),
        absolute,
        steps,
        attr,
    })
}

impl XmlPath {
    /// Calls `f` with the value of every match, in document order, until `f` breaks.
    pub(crate) fn for_each<'d>(
        &self,
        doc: &'d Document,
        f: &mut impl FnMut(&'d str) -> ControlFlow<()>,
    ) {
        let root = doc.payload_root();
        if self.absolute {
            let first = &self.steps[0];
            if matches(root, first) {
                let _ = self.walk(root, &self.steps[1..], f);
            }
        } else {
            let _ = self.walk(root, &self.steps, f);
        }
    }

    fn walk<'d>(
        &self,
        el: Element<'d>,
        steps: &[Name],
        f: &mut impl FnMut(&'d str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match steps.split_first() {
            None => match &self.attr {
                Some(a) => match el.attribute(&a.ns, &a.local) {
                    Some(v) => f(v),
                    None => ControlFlow::Continue(()),
                },
                None => f(el.text()),
            },
            Some((step, rest)) => {
                for child in el.children() {
                    if matches(child, step) {
                        self.walk(child, rest, f)?;
                    }
                }
                ControlFlow::Continue(())
            }
        }
    }
}

fn matches(el: Element<'_>, name: &Name) -> bool {
    el.local_name() == &*name.local && el.namespace() == &*name.ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::xml::Limits;

    fn ctx(prefixes: &[(&str, &str)]) -> HashMap<String, String> {
        prefixes
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn all(path: &str, prefixes: &[(&str, &str)], xml: &str) -> Vec<String> {
        let p = ctx(prefixes);
        let c = NsContext {
            prefixes: &p,
            default_ns: "",
        };
        let path = compile_xml_path(path, &c).unwrap();
        let doc = Document::parse(xml.as_bytes(), &Limits::default()).unwrap();
        let mut out = Vec::new();
        path.for_each(&doc, &mut |v| {
            out.push(v.to_string());
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn absolute_and_relative_paths() {
        let xml = "<incident><number>1</number><ci><sn>x</sn></ci></incident>";
        assert_eq!(all("/incident/number", &[], xml), ["1"]);
        assert_eq!(all("number", &[], xml), ["1"]);
        assert_eq!(all("ci/sn", &[], xml), ["x"]);
        assert_eq!(all("/other/number", &[], xml), Vec::<String>::new());
        assert_eq!(all(".", &[], xml), ["1x"]);
    }

    #[test]
    fn namespaces_match_by_uri_not_prefix() {
        let a = r#"<a:inc xmlns:a="urn:i"><a:caller id="7"/></a:inc>"#;
        let b = r#"<inc xmlns="urn:i"><caller id="7"/></inc>"#;
        let c = r#"<zz:inc xmlns:zz="urn:i"><zz:caller id="7"/></zz:inc>"#;
        let wrong = r#"<a:inc xmlns:a="urn:other"><a:caller id="7"/></a:inc>"#;
        for xml in [a, b, c] {
            assert_eq!(
                all("/i:inc/i:caller/@id", &[("i", "urn:i")], xml),
                ["7"],
                "{xml}"
            );
        }
        assert!(all("/i:inc/i:caller/@id", &[("i", "urn:i")], wrong).is_empty());
        // An unprefixed step means "no namespace" unless a default namespace is set.
        assert!(all("/inc/caller/@id", &[], b).is_empty());
    }

    #[test]
    fn default_namespace_applies_to_elements_not_attributes() {
        let p = ctx(&[]);
        let c = NsContext {
            prefixes: &p,
            default_ns: "urn:i",
        };
        let path = compile_xml_path("/inc/caller/@id", &c).unwrap();
        assert_eq!(&*path.steps[0].ns, "urn:i");
        assert_eq!(&*path.attr.unwrap().ns, "");
    }

    #[test]
    fn namespaced_attribute() {
        let xml = r#"<r xmlns:x="urn:x"><e x:k="1" k="2"/></r>"#;
        assert_eq!(all("e/@x:k", &[("x", "urn:x")], xml), ["1"]);
        assert_eq!(all("e/@k", &[("x", "urn:x")], xml), ["2"]);
    }

    #[test]
    fn repeated_elements_in_document_order() {
        let xml = "<r><n><v>1</v><v>2</v></n><n><v>3</v></n></r>";
        assert_eq!(all("n/v", &[], xml), ["1", "2", "3"]);
    }

    #[test]
    fn attribute_of_payload_root() {
        assert_eq!(all("@id", &[], r#"<r id="5"/>"#), ["5"]);
        assert_eq!(all("/r/@id", &[], r#"<r id="5"/>"#), ["5"]);
    }

    #[test]
    fn path_errors() {
        let p = ctx(&[]);
        let c = NsContext {
            prefixes: &p,
            default_ns: "",
        };
        for (bad, expect) in [
            ("", "empty path"),
            ("a//b", "not supported"),
            ("a/@b/c", "must come last"),
            ("x:a", "not declared"),
            ("a b", "not a valid XML name"),
            ("/", "empty step"),
            ("/@id", "payload root"),
            ("a/", "empty step"),
        ] {
            let err = compile_xml_path(bad, &c).unwrap_err();
            assert!(err.contains(expect), "{bad:?}: {err}");
        }
    }
}
