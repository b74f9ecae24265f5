//! What the mapping's paths say about the documents a route reads: a tree of the
//! elements and attributes below the payload root, with the Loomis fields they feed.

use super::super::path::{Name, SourcePath, XmlPath};
use super::super::plan::{FieldPlan, Repeated};

/// An element of the described document.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) name: Name,
    pub(super) children: Vec<Node>,
    /// Attributes in no namespace (the usual case), with what they feed.
    pub(super) attrs: Vec<(Box<str>, Vec<String>)>,
    /// Whether some field reads this element's text.
    pub(super) text: bool,
    /// Whether the element may repeat (selected by a predicate, or read with
    /// `repeated = "join"` / `"last"`).
    pub(super) many: bool,
    /// What the element feeds or selects, for the schema's documentation.
    pub(super) docs: Vec<String>,
}

impl Node {
    fn new(name: Name) -> Node {
        Node {
            name,
            children: Vec::new(),
            attrs: Vec::new(),
            text: false,
            many: false,
            docs: Vec::new(),
        }
    }

    fn child(&mut self, name: &Name) -> &mut Node {
        let i = match self.children.iter().position(|c| c.name == *name) {
            Some(i) => i,
            None => {
                self.children.push(Node::new(name.clone()));
                self.children.len() - 1
            }
        };
        &mut self.children[i]
    }
}

/// The document a route reads: its root and what the mapping reads below it.
pub(super) struct Shape {
    pub(super) root: Node,
}

impl Shape {
    /// The shape the fields' XML paths describe. The root is the first absolute path's
    /// first step; paths that start at another root (alternatives for another kind of
    /// document) are left out. Without any absolute path the root is `fallback`.
    pub(super) fn from_fields<'p>(
        fields: impl Iterator<Item = (&'static str, &'p FieldPlan)>,
        fallback: Name,
    ) -> Shape {
        let mut uses: Vec<(&'static str, &XmlPath, bool)> = Vec::new();
        for (field, plan) in fields {
            let many = matches!(plan.repeated, Repeated::Join | Repeated::Last);
            let paths = plan.source.paths();
            for p in paths {
                if let SourcePath::Xml(x) = p {
                    uses.push((field, x, many));
                }
            }
        }
        let root_name = uses
            .iter()
            .find(|(_, x, _)| x.absolute)
            .map_or(fallback, |(_, x, _)| x.steps[0].clone());
        let mut root = Node::new(root_name);
        for (field, path, many) in uses {
            let (steps, preds) = if path.absolute {
                if path.steps[0] != root.name {
                    continue;
                }
                (&path.steps[1..], &path.preds[1..])
            } else {
                (&path.steps[..], &path.preds[..])
            };
            let mut node = &mut root;
            for (step, preds) in steps.iter().zip(preds) {
                node = node.child(step);
                for p in preds.iter() {
                    node.many = true;
                    let doc = format!("{} = '{}' selects the {field} entry", p.name.local, p.value);
                    if p.attr {
                        add_attr(node, &p.name.local, doc);
                    } else {
                        let key = node.child(&p.name);
                        key.text = true;
                        key.docs.push(doc);
                    }
                }
            }
            match &path.attr {
                Some(a) => add_attr(node, &a.local, field.to_string()),
                None => {
                    node.text = true;
                    node.many |= many;
                    node.docs.push(field.to_string());
                }
            }
        }
        Shape { root }
    }
}

fn add_attr(node: &mut Node, local: &str, doc: String) {
    match node.attrs.iter_mut().find(|(n, _)| &**n == local) {
        Some((_, docs)) => docs.push(doc),
        None => node.attrs.push((local.into(), vec![doc])),
    }
}
