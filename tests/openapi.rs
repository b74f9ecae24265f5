//! `docs/openapi.json` describes the HTTP routes the gateway actually serves: it parses
//! as OpenAPI 3, every `$ref` resolves, and its paths and methods are exactly the
//! routes registered in the source (found wherever they live under `src/`, so the test
//! follows the code when it moves). The built-in simulator's `/_sim/` control routes are
//! not the gateway's interface and are left out.

use std::collections::BTreeSet;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(method, path)` of every `.route("...", get(..).post(..))` in `src/`.
fn served_routes() -> BTreeSet<(String, String)> {
    let path_re = regex::Regex::new(r#"^\.route\(\s*"(/[^"]*)""#).unwrap();
    let method = regex::Regex::new(r"\b(get|post|put|delete|patch)\(").unwrap();
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let starts: Vec<usize> = text.match_indices(".route(").map(|(i, _)| i).collect();
        for (n, &start) in starts.iter().enumerate() {
            // One registration: up to the next `.route(`, `.with_state` or `;`.
            let rest = &text[start..starts.get(n + 1).copied().unwrap_or(text.len())];
            let end = [rest.find(".with_state"), rest.find(';')]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(rest.len());
            let chunk = &rest[..end];
            let Some(c) = path_re.captures(chunk) else {
                continue;
            };
            let path = c[1].to_string();
            if path.starts_with("/_sim/") {
                continue;
            }
            let methods: Vec<String> = method
                .captures_iter(chunk)
                .map(|m| m[1].to_string())
                .collect();
            assert!(!methods.is_empty(), "{}: no method for {path}", f.display());
            for m in methods {
                out.insert((m, path.clone()));
            }
        }
    }
    out
}

fn resolve<'v>(doc: &'v serde_json::Value, reference: &str) -> Option<&'v serde_json::Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn refs<'v>(v: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_matches_the_served_routes() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("docs/openapi.json parses");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served = served_routes();
    assert!(served.len() >= 10, "found too few routes: {served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "served but not in docs/openapi.json: {undocumented:?}; documented but not served: {not_served:?}"
    );

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        assert!(resolve(&doc, r).is_some(), "unresolved $ref {r}");
    }
    // Every path parameter is declared.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    declared.contains(name),
                    "{path}: parameter {name} not declared"
                );
            }
        }
    }
}
