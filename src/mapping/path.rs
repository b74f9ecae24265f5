//! Source paths: where a value comes from in an XML document or a gRPC field map.
//!
//! XML paths are compiled once into namespace-resolved steps: a step matches an element
//! by namespace URI and local name, whatever prefix the sender used. Grammar:
//!
//! ```text
//! path      := "/" steps | steps | "."            absolute, relative, the payload root
//! steps     := step ("/" step)* ("/" "@" qname)?  | "@" qname
//! step      := qname predicate*
//! predicate := "[" ("@")? qname "=" literal "]"   a child's (or attribute's) value
//! literal   := "'" text "'" | '"' text '"'
//! qname     := prefix ":" local | local           prefix declared in [namespaces]
//! ```
//!
//! A predicate keeps only the elements that have a child element (or an attribute) of
//! that name whose value, trimmed, equals the literal: `DynamicField[Name='SafeSerial']/Value`
//! reads the `Value` of the one `DynamicField` whose `Name` is `SafeSerial` (OTRS
//! GenericInterface). The literal is compared as written, case included; it may hold
//! `/`, `[` or `]` (no escapes, as in XPath 1.0).
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
    /// The predicates of each step (same length as `steps`; mostly empty).
    pub(crate) preds: Vec<Box<[Predicate]>>,
    pub(crate) attr: Option<Name>,
}

/// A condition on an element: a child element (or an attribute) with this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Predicate {
    /// The child element's name, or the attribute's when `attr`.
    pub(crate) name: Name,
    pub(crate) attr: bool,
    /// The value the child's trimmed text (or the attribute, trimmed) must equal.
    pub(crate) value: Box<str>,
}

/// A predicate as written, before its name is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawPredicate<'t> {
    pub(crate) attr: bool,
    pub(crate) name: &'t str,
    pub(crate) value: &'t str,
}

/// Splits a path (without its leading `/`) into steps at the `/` that are not inside a
/// predicate. A `//` or an unclosed `[` or quote is an error.
pub(crate) fn split_steps(path: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut depth = false;
    let mut quote: Option<char> = None;
    let mut prev_slash = false;
    for (i, c) in path.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') if depth => quote = Some(c),
            (None, '[') if !depth => depth = true,
            (None, '[') => return Err(format!("{path:?}: a predicate cannot contain `[`")),
            (None, ']') if depth => depth = false,
            (None, ']') => return Err(format!("{path:?}: `]` without `[`")),
            (None, '/') if !depth => {
                if prev_slash {
                    return Err(format!(
                        "{path:?}: `//` (descendant search) is not supported; spell out every step"
                    ));
                }
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        prev_slash = c == '/' && !depth && quote.is_none();
    }
    if quote.is_some() {
        return Err(format!(
            "{path:?}: a quoted value in a predicate is not closed"
        ));
    }
    if depth {
        return Err(format!("{path:?}: `[` is not closed with `]`"));
    }
    parts.push(&path[start..]);
    Ok(parts)
}

/// Splits one step into its name and its predicates (`DynamicField[Name='SafeSerial']`).
pub(crate) fn split_step(step: &str) -> Result<(&str, Vec<RawPredicate<'_>>), String> {
    let Some(open) = step.find('[') else {
        return Ok((step, Vec::new()));
    };
    let name = &step[..open];
    let mut preds = Vec::new();
    let mut rest = &step[open..];
    while !rest.is_empty() {
        let Some(body) = rest.strip_prefix('[') else {
            return Err(format!(
                "step {step:?}: unexpected {rest:?} after a predicate; write name[child='value']"
            ));
        };
        // split_steps has checked the brackets and quotes: find this predicate's `]`
        // outside its quotes.
        let mut quote = None;
        let mut end = None;
        for (i, c) in body.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, ']') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(format!("step {step:?}: `[` is not closed with `]`"));
        };
        preds.push(predicate(&body[..end], step)?);
        rest = &body[end + 1..];
    }
    Ok((name, preds))
}

fn predicate<'t>(inner: &'t str, step: &str) -> Result<RawPredicate<'t>, String> {
    let shape = || {
        format!(
            "predicate [{inner}] in {step:?}: expected [child='value'] or [@attribute='value'], \
             e.g. DynamicField[Name='SafeSerial']"
        )
    };
    let t = inner.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "predicate [{inner}] in {step:?}: positions are not supported; select by a \
             child's value (e.g. [Name='SafeSerial']) or use repeated = \"first\" / \"last\""
        ));
    }
    let Some((lhs, rhs)) = t.split_once('=') else {
        return Err(shape());
    };
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    let (attr, name) = match lhs.strip_prefix('@') {
        Some(a) => (true, a.trim()),
        None => (false, lhs),
    };
    let quoted = |q: char| rhs.len() >= 2 && rhs.starts_with(q) && rhs.ends_with(q);
    if name.is_empty() || !(quoted('\'') || quoted('"')) {
        return Err(shape());
    }
    let value = &rhs[1..rhs.len() - 1];
    if rhs[..1].chars().any(|q| value.contains(q)) {
        return Err(shape());
    }
    Ok(RawPredicate { attr, name, value })
}

/// Resolves the names of a step's predicates.
pub(crate) fn resolve_predicates(
    raw: &[RawPredicate<'_>],
    ctx: &NsContext<'_>,
) -> Result<Box<[Predicate]>, String> {
    raw.iter()
        .map(|p| {
            Ok(Predicate {
                name: resolve_qname(p.name, ctx, !p.attr)?,
                attr: p.attr,
                value: p.value.into(),
            })
        })
        .collect()
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
    let (absolute, rest) = match t.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, t),
    };
    if rest.starts_with('/') {
        return Err(format!(
            "{t:?}: `//` (descendant search) is not supported; spell out every step"
        ));
    }
    let mut steps = Vec::new();
    let mut preds = Vec::new();
    let mut attr = None;
    if rest != "." || absolute {
        let parts = split_steps(rest)?;
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!("{t:?}: empty step"));
            }
            if let Some(a) = part.strip_prefix('@') {
                if i + 1 != parts.len() {
                    return Err(format!("{t:?}: an attribute step (@{a}) must come last"));
                }
                if a.contains('[') {
                    return Err(format!(
                        "{t:?}: an attribute step (@{a}) cannot have a predicate; put it on the element"
                    ));
                }
                attr = Some(resolve_qname(a, ctx, false).map_err(|e| format!("{t:?}: {e}"))?);
            } else {
                let (name, raw) = split_step(part).map_err(|e| format!("{t:?}: {e}"))?;
                steps.push(resolve_qname(name, ctx, true).map_err(|e| format!("{t:?}: {e}"))?);
                preds.push(resolve_predicates(&raw, ctx).map_err(|e| format!("{t:?}: {e}"))?);
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
        preds,
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
            if self.step_matches(root, 0) {
                let _ = self.walk(root, 1, f);
            }
        } else {
            let _ = self.walk(root, 0, f);
        }
    }

    fn walk<'d>(
        &self,
        el: Element<'d>,
        step: usize,
        f: &mut impl FnMut(&'d str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if step == self.steps.len() {
            return match &self.attr {
                Some(a) => match el.attribute(&a.ns, &a.local) {
                    Some(v) => f(v),
                    None => ControlFlow::Continue(()),
                },
                None => f(el.text()),
            };
        }
        for child in el.children() {
            if self.step_matches(child, step) {
                self.walk(child, step + 1, f)?;
            }
        }
        ControlFlow::Continue(())
    }

    /// Whether `el` has the name of step `i` and satisfies its predicates.
    fn step_matches(&self, el: Element<'_>, i: usize) -> bool {
        matches(el, &self.steps[i])
            && self.preds[i].iter().all(|p| {
                if p.attr {
                    el.attribute(&p.name.ns, &p.name.local)
                        .is_some_and(|v| v.trim() == &*p.value)
                } else {
                    el.children()
                        .any(|c| matches(c, &p.name) && c.text().trim() == &*p.value)
                }
            })
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
            ("a[b='1'", "not closed"),
            ("a[b='1]", "not closed"),
            ("a[b]", "expected [child='value']"),
            ("a[b=1]", "expected [child='value']"),
            ("a[1]/v", "positions are not supported"),
            ("a[x:b='1']", "not declared"),
            ("a]/v", "without `[`"),
            ("a[b='1']x/v", "unexpected"),
            ("@k[b='1']", "cannot have a predicate"),
            ("a[b='1'][c=''/v", "not closed"),
        ] {
            let err = compile_xml_path(bad, &c).unwrap_err();
            assert!(err.contains(expect), "{bad:?}: {err}");
        }
    }

    #[test]
    fn predicates_select_by_a_childs_or_attributes_value() {
        let xml = "<T><DynamicField><Name>FaultType</Name><Value>Door/Lock</Value></DynamicField>\
                   <DynamicField><Name> SafeSerial </Name><Value>UG1234</Value></DynamicField>\
                   <DynamicField><Name>SafeSerial2</Name><Value>x</Value></DynamicField>\
                   <F k='a/b'><v>1</v></F><F k='c'><v>2</v></F></T>";
        assert_eq!(
            all("DynamicField[Name='SafeSerial']/Value", &[], xml),
            ["UG1234"]
        );
        assert_eq!(
            all("/T/DynamicField[Name=\"FaultType\"]/Value", &[], xml),
            ["Door/Lock"]
        );
        assert!(all("DynamicField[Name='safeserial']/Value", &[], xml).is_empty());
        assert_eq!(all("F[@k='a/b']/v", &[], xml), ["1"]);
        assert_eq!(all("F[ @k = 'c' ]/v", &[], xml), ["2"]);
        // Several predicates must all hold; the predicate may sit on the root step.
        assert_eq!(
            all(
                "DynamicField[Name='FaultType'][Value='Door/Lock']/Value",
                &[],
                xml
            ),
            ["Door/Lock"]
        );
        assert!(all("DynamicField[Name='FaultType'][Value='x']/Value", &[], xml).is_empty());
        assert_eq!(all("/T[F='1']/F[@k='c']/@k", &[], xml), ["c"]);
        assert!(all("/T[F='9']/F/@k", &[], xml).is_empty());
        // Predicate names are namespace-resolved like steps.
        let ns = r#"<o:T xmlns:o="urn:o"><o:D><o:N>A</o:N><o:V>1</o:V></o:D><o:D><o:N>B</o:N><o:V>2</o:V></o:D></o:T>"#;
        assert_eq!(all("o:D[o:N='B']/o:V", &[("o", "urn:o")], ns), ["2"]);
        assert!(all("o:D[N='B']/o:V", &[("o", "urn:o")], ns).is_empty());
    }

    #[test]
    fn split_steps_keeps_slashes_inside_predicates() {
        assert_eq!(split_steps("a[b='x/y']/c").unwrap(), ["a[b='x/y']", "c"]);
        assert_eq!(split_steps("a[b=\"]\"]/c").unwrap(), ["a[b=\"]\"]", "c"]);
        let (name, preds) = split_step("D[N='1'][@k=\"2\"]").unwrap();
        assert_eq!(name, "D");
        assert_eq!(
            preds,
            [
                RawPredicate {
                    attr: false,
                    name: "N",
                    value: "1"
                },
                RawPredicate {
                    attr: true,
                    name: "k",
                    value: "2"
                }
            ]
        );
    }

    proptest::proptest! {
        /// `D[N='a']/V` yields, in document order, the values of exactly the blocks
        /// that have a name child equal to `a` after trimming, whatever the blocks hold.
        #[test]
        fn predicate_selects_exactly_the_matching_blocks(
            blocks in proptest::collection::vec(
                (
                    proptest::collection::vec("[ a-b]{0,3}", 0..3),
                    proptest::collection::vec("[a-c]{0,2}", 0..3),
                ),
                0..6,
            )
        ) {
            let mut xml = String::from("<T>");
            let mut want = Vec::new();
            for (names, values) in &blocks {
                xml.push_str("<D>");
                for n in names {
                    xml.push_str(&format!("<N>{n}</N>"));
                }
                for v in values {
                    xml.push_str(&format!("<V>{v}</V>"));
                }
                xml.push_str("</D>");
                if names.iter().any(|n| n.trim() == "a") {
                    want.extend(values.iter().cloned());
                }
            }
            xml.push_str("</T>");
            proptest::prop_assert_eq!(all("D[N='a']/V", &[], &xml), want);
        }
    }
}
