//! The layers of `src/`, checked: a module may use only modules on a lower floor, and
//! the files of one folder may not use each other in a circle. This reads the source as
//! text (every `crate::` and `super::` path, tests included), so a forbidden import fails
//! `cargo test` with the file and line that made it. ARCHITECTURE.md draws the same map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors from the bottom. A module may use modules of strictly lower floors; modules on
/// one floor do not use each other.
const FLOORS: &[&[&str]] = &[
    // Leaves: the latest delivery attempts, credentials, the HTTP client, logging, the
    // deploy kit's metrics, the holder of what a reload replaces. No gateway imports at
    // all.
    &[
        "attempts",
        "auth",
        "client",
        "live",
        "ops_metrics",
        "telemetry",
    ],
    // gateway.toml as data; reads secrets from the environment.
    &["config"],
    // The vendor protocol: wire types and their validation; server TLS from the
    // configured files; traces (W3C trace context, the OTLP exporter).
    &["loomis", "tls", "trace"],
    // The domain, pure: state machine, updates, timeline.
    &["incident"],
    // Mapping files compiled to plans and applied; pure but for loading files.
    &["mapping"],
    // Durable state.
    &["store"],
    // Mapped input to a valid Dispatch, for every front door.
    &["intake"],
    // The core API.
    &["gateway"],
    // Workers on the core.
    &["delivery", "operator", "retention"],
    // A stand-alone Loomis, used by `app` and the CLI only.
    &["simulator"],
    // Listeners.
    &["edge"],
    // Service-manager notifications (systemd), for `app::serve`.
    &["systemd"],
    // Composition.
    &["app"],
    // The command line.
    &["cli"],
];

/// Where one reference was written.
#[derive(Debug, Clone)]
struct Site {
    file: PathBuf,
    line: usize,
}

/// A module path (`["edge", "http", "callback"]`) for each source file.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Splits `a, b::{c, d}` at its top-level commas.
fn split_group(s: &str) -> Vec<String> {
    let (mut depth, mut cur, mut out) = (0, String::new(), Vec::new());
    for ch in s.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.split_whitespace().collect::<String>())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Expands `a::{b, c::d}` into `a::b` and `a::c::d` (one level of braces is enough here;
/// deeper groups are expanded recursively).
fn expand(path: &str) -> Vec<Vec<String>> {
    if let Some(open) = path.find('{') {
        let close = path.rfind('}').unwrap_or(path.len());
        let prefix = path[..open].trim_end_matches("::");
        let mut out = Vec::new();
        for member in split_group(&path[open + 1..close]) {
            let joined = if prefix.is_empty() {
                member
            } else {
                format!("{prefix}::{member}")
            };
            out.extend(expand(&joined));
        }
        return out;
    }
    vec![path
        .split("::")
        .map(str::to_string)
        .filter(|s| !s.is_empty() && s != "*" && s != "self")
        .collect()]
}

/// Every module reference of one file as an absolute path, with its line.
fn references(src: &Path, file: &Path) -> Vec<(Vec<String>, usize)> {
    let text = std::fs::read_to_string(file).unwrap();
    let own = module_path(src, file);
    let mut refs = Vec::new();
    // Inline `mod name {` blocks (tests) shift what `super::` means: one entry per open
    // inline module, holding the brace depth at which it closes.
    let mut inline: Vec<i32> = Vec::new();
    let mut depth = 0i32;
    let mut pending_use = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap_or("");
        let trimmed = line.trim();
        if (trimmed.starts_with("mod ")
            || trimmed.starts_with("pub mod ")
            || trimmed.starts_with("pub(crate) mod "))
            && trimmed.ends_with('{')
        {
            inline.push(depth);
        }
        // Multi-line `use` groups are read as one statement.
        let stmt = if !pending_use.is_empty() {
            pending_use.push_str(line);
            if !line.contains(';') {
                depth += brace_delta(line);
                continue;
            }
            std::mem::take(&mut pending_use)
        } else if trimmed.starts_with("use ")
            || trimmed.starts_with("pub use ")
            || trimmed.starts_with("pub(crate) use ")
        {
            if !line.contains(';') {
                pending_use = line.to_string();
                depth += brace_delta(line);
                continue;
            }
            line.to_string()
        } else {
            line.to_string()
        };
        for anchor in ["crate::", "super::"] {
            let mut rest = stmt.as_str();
            while let Some(i) = rest.find(anchor) {
                let before = &rest[..i];
                let after = &rest[i + anchor.len()..];
                rest = after;
                // `$crate::` in macros and `safepoint_gateway_crate::` are not ours.
                if before.ends_with('$')
                    || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let path = take_path(after);
                let base: Vec<String> = if anchor == "crate::" {
                    Vec::new()
                } else {
                    // In `a/b.rs` (module a::b) and in `a/b/mod.rs` alike, `super` is `a`;
                    // inside an inline module of the file it is the file's own module.
                    let mut base = own.clone();
                    if inline.is_empty() {
                        base.pop();
                    }
                    base
                };
                for tail in expand(&path) {
                    let mut full = base.clone();
                    let mut tail = tail.into_iter().peekable();
                    while tail.peek().is_some_and(|s| s == "super") {
                        tail.next();
                        full.pop();
                    }
                    full.extend(tail);
                    if !full.is_empty() {
                        refs.push((full, n + 1));
                    }
                }
            }
        }
        depth += brace_delta(line);
        while inline.last().is_some_and(|d| depth <= *d) {
            inline.pop();
        }
    }
    refs
}

fn brace_delta(line: &str) -> i32 {
    line.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// The path that starts `s`: identifiers, `::`, and a brace group.
fn take_path(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in s.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            c if c.is_alphanumeric() || c == '_' || c == ':' || c == '*' => {}
            ',' | ' ' | '\n' if depth > 0 => {}
            _ => break,
        }
        out.push(ch);
        if depth == 0 && ch == '}' {
            break;
        }
    }
    out
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

#[test]
fn layers_only_look_down_and_folders_have_no_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut problems = Vec::new();
    // Sibling edges inside each folder: parent -> (from -> (to -> where)).
    let mut siblings: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, Site>>> =
        BTreeMap::new();
    for file in &files {
        let own = module_path(&src, file);
        if own.is_empty() {
            continue; // lib.rs and main.rs declare the modules
        }
        if floor_of(&own[0]).is_none() {
            problems.push(format!(
                "src/{}: module `{}` has no floor in tests/architecture.rs (add it, and to ARCHITECTURE.md)",
                file.strip_prefix(&src).unwrap().display(),
                own[0]
            ));
            continue;
        }
        for (target, line) in references(&src, file) {
            let site = Site {
                file: file.strip_prefix(&src).unwrap().to_path_buf(),
                line,
            };
            let common = own.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == 0 {
                let (from, to) = (&own[0], &target[0]);
                let Some(to_floor) = floor_of(to) else {
                    continue; // an item of lib.rs, or not a module of ours
                };
                let from_floor = floor_of(from).unwrap();
                if to_floor >= from_floor {
                    problems.push(format!(
                        "src/{}:{}: `{from}` uses `{}`, which is on {} floor",
                        site.file.display(),
                        site.line,
                        target.join("::"),
                        if to_floor == from_floor {
                            "the same"
                        } else {
                            "a higher"
                        }
                    ));
                }
                continue;
            }
            if common >= own.len() || common >= target.len() {
                continue; // a module and its own descendants or ancestors
            }
            let parent = own[..common].to_vec();
            let mut sibling = parent.clone();
            sibling.push(target[common].clone());
            if !modules.iter().any(|m| m.starts_with(&sibling)) {
                continue; // an item of the parent module (its mod.rs)
            }
            siblings
                .entry(parent)
                .or_default()
                .entry(own[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_insert(site);
        }
    }
    for (parent, edges) in &siblings {
        if let Some(cycle) = find_cycle(edges) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let site = &edges[&w[0]][&w[1]];
                    format!(
                        "{} -> {} (src/{}:{})",
                        w[0],
                        w[1],
                        site.file.display(),
                        site.line
                    )
                })
                .collect();
            let folder = if parent.is_empty() {
                "src".into()
            } else {
                format!("src/{}", parent.join("/"))
            };
            problems.push(format!("{folder}: import circle: {}", steps.join(", ")));
        }
    }
    assert!(
        problems.is_empty(),
        "the layers of src/ are broken:\n  {}",
        problems.join("\n  ")
    );
}

/// A circle in a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, Site>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, Site>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_checker_sees_a_circle_and_an_upward_import() {
    // The checker itself must be able to fail: a made-up tree with both faults.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).unwrap();
    std::fs::write(src.join("store/mod.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        src.join("store/a.rs"),
        "use super::b::B;\nuse crate::gateway::G;\n",
    )
    .unwrap();
    std::fs::write(src.join("store/b.rs"), "use crate::store::a::A;\n").unwrap();
    let refs_a = references(src, &src.join("store/a.rs"));
    assert!(refs_a.iter().any(|(p, _)| p == &["store", "b", "B"]));
    assert!(refs_a.iter().any(|(p, _)| p == &["gateway", "G"]));
    let refs_b = references(src, &src.join("store/b.rs"));
    assert!(refs_b.iter().any(|(p, _)| p == &["store", "a", "A"]));
    let mut edges: BTreeMap<String, BTreeMap<String, Site>> = BTreeMap::new();
    let site = || Site {
        file: "x".into(),
        line: 1,
    };
    edges
        .entry("a".into())
        .or_default()
        .insert("b".into(), site());
    edges
        .entry("b".into())
        .or_default()
        .insert("a".into(), site());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    assert!(floor_of("gateway") > floor_of("store"));
    // Grouped and nested imports expand to every member.
    assert_eq!(
        expand("a::{b, c::{d, e}}"),
        vec![
            vec!["a".to_string(), "b".into()],
            vec!["a".into(), "c".into(), "d".into()],
            vec!["a".into(), "c".into(), "e".into()]
        ]
    );
    // `super::` inside an inline test module is the file's own module.
    std::fs::write(
        src.join("store/b.rs"),
        "fn x() {}\n#[cfg(test)]\nmod tests {\n    use super::x;\n    use super::super::a::A;\n}\n",
    )
    .unwrap();
    let refs = references(src, &src.join("store/b.rs"));
    assert!(
        refs.iter().any(|(p, _)| p == &["store", "b", "x"]),
        "{refs:?}"
    );
    assert!(
        refs.iter().any(|(p, _)| p == &["store", "a", "A"]),
        "{refs:?}"
    );
}
