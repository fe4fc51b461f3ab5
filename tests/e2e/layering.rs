//! The layout stays a data path: within each crate, no two top-level modules import each other,
//! directly or around a circle. Modules are the files and folders under `src/`; an import is a
//! `crate::module` path (or `super::module` from a module's top file) outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gpt2c_tests::repo_root;

/// Top-level modules of the crate at `src` and the other top-level modules each one names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main") {
            modules.insert(name);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let top = first.trim_end_matches(".rs").to_string();
        if !modules.contains(&top) {
            continue; // lib.rs, main.rs
        }
        // `super::x` names a top-level module only from the module's own top file.
        let top_file = rel.components().count() == 1
            || rel.file_name().is_some_and(|f| f == "mod.rs") && rel.components().count() == 2;
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = |name: &str| {
            if name != top && modules.contains(name) {
                edges.get_mut(&top).unwrap().insert(name.to_string());
            }
        };
        for (prefix, allowed) in [("crate::", true), ("super::", top_file)] {
            if !allowed {
                continue;
            }
            for (at, _) in text.match_indices(prefix) {
                let rest = &text[at + prefix.len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let inside = &group[..group.find('}').unwrap_or(group.len())];
                    for part in inside.split(',') {
                        named(part.trim().split("::").next().unwrap_or("").trim());
                    }
                } else {
                    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    named(&name);
                }
            }
        }
    }
    edges
}

/// A circle through the graph, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in &edges[node] {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_circle_back() {
    let mut checked = 0;
    for krate in ["proto", "rng", "compiler", "runtime", "verify", "serve", "cli"] {
        let edges = imports(&repo_root().join(krate).join("src"));
        checked += edges.len();
        assert_eq!(circle(&edges), None, "{krate}: modules import each other in a circle: {edges:?}");
    }
    assert!(checked >= 20, "only {checked} modules found");
}

#[test]
fn the_check_finds_a_circle() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into_iter()
    .collect();
    assert_eq!(circle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
