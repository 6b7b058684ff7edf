//! Checks on the shape of the code that the compiler does not make:
//! the top-level modules import each other without circles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::root;

/// `crate::X` references of each top-level module (tests excluded).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let module = top_module(&src, &path);
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: String = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let set = deps.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    set.insert(name);
                }
            }
        }
    }
    deps
}

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn top_level_modules_import_without_circles() {
    let deps = imports();
    assert!(deps.contains_key("engine") && deps.contains_key("workflow"));
    // Depth-first search for a back edge; report the circle.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(circle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
    // The leaves stay leaves (the one hash and JSON repair are leaves too).
    for leaf in [
        "units",
        "yaml",
        "similarity",
        "summary",
        "hash",
        "redact",
        "answer",
    ] {
        let uses: Vec<_> = deps[leaf]
            .iter()
            .filter(|d| !["budget", "backend", "hash", "modeljson"].contains(&d.as_str()))
            .collect();
        assert!(uses.is_empty(), "{leaf} imports {uses:?}");
    }
}
