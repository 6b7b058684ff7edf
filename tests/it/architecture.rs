//! Checks on the shape of the code that the compiler does not make: no
//! import circles, between the top-level modules or between the files of
//! any module, and the leaves stay leaves.
//!
//! The unit is a module's child: a file `x.rs` or a folder `x/` (with all
//! it holds). Inside a module, its root (`mod.rs`, or `lib.rs` for the
//! crate) *is* the module: it names its children and they may use what it
//! defines, so the root is not a node; between the children there may be no
//! circle. A child uses a sibling `y` when its code (tests excluded) says
//! `crate::<module path>::y` or, with as many `super::` as it is deep,
//! `super::y` (also inside `super::{…}`), or names an item that only `y`
//! defines (reached through the root's re-exports, e.g. `super::Kind`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::root;

/// A file's code without its tests and comment lines.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names a path reaches after `prefix`: `prefix::x` gives `x`,
/// `prefix::{x, y::z}` gives `x` and `y`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        // `super::x` must not match inside `super::super::x`'s tail.
        if i > 0 && code[..i].ends_with("::") {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ if item_start && !c.is_whitespace() => {
                        out.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|n| !n.is_empty() && n != "super" && n != "self");
    out
}

/// Every `.rs` file under `path` (or `path` itself), with its depth below
/// the module whose child `path` is: `x.rs` and `x/mod.rs` are 1 deep,
/// `x/y.rs` 2.
fn files_of(path: &Path) -> Vec<(PathBuf, usize)> {
    if path.is_file() {
        return vec![(path.to_path_buf(), 1)];
    }
    let mut out = Vec::new();
    let mut stack = vec![(path.to_path_buf(), 1)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push((p, depth + 1));
            } else if p.extension().and_then(|e| e.to_str()) == Some("rs") {
                let is_root = p.file_name().unwrap() == "mod.rs";
                out.push((p, if is_root { depth } else { depth + 1 }));
            }
        }
    }
    out
}

/// The names of the items a file defines at its top level (`pub fn f`,
/// `struct S`, `pub(crate) const C`, ...), tests excluded.
fn items_of(code: &str) -> BTreeSet<String> {
    const KINDS: [&str; 9] = [
        "fn ",
        "struct ",
        "enum ",
        "const ",
        "static ",
        "type ",
        "trait ",
        "mod ",
        "macro_rules! ",
    ];
    let mut out = BTreeSet::new();
    for line in code.lines() {
        // Top level only: items in impls and functions are indented.
        let mut rest = line;
        if let Some(r) = rest.strip_prefix("pub") {
            rest = match r.strip_prefix('(') {
                Some(r) => r.split_once(") ").map_or("", |(_, r)| r),
                None => r.trim_start(),
            };
        }
        let rest = rest.strip_prefix("async ").unwrap_or(rest);
        for k in KINDS {
            if let Some(r) = rest.strip_prefix(k) {
                let name: String = r
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// The children of the module in `dir` (module path `module`, empty for
/// the crate) and which siblings each uses: by the sibling's name, or by
/// the name of an item the sibling defines and the root re-exports (a
/// `super::Kind` that is `kinds.rs`'s `Kind` is a use of `kinds`).
fn sibling_uses(dir: &Path, module: &str) -> BTreeMap<String, BTreeSet<String>> {
    // A child may be a file `x.rs`, a folder `x/`, or both.
    let mut children: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let name = if path.is_dir() {
            name
        } else if let Some(stem) = name.strip_suffix(".rs") {
            stem.to_string()
        } else {
            continue;
        };
        if ["mod", "lib", "main"].contains(&name.as_str()) {
            continue;
        }
        children.entry(name).or_default().push(path);
    }
    let absolute = if module.is_empty() {
        "crate::".to_string()
    } else {
        format!("crate::{module}::")
    };
    let codes: BTreeMap<&String, Vec<(String, usize)>> = children
        .iter()
        .map(|(name, paths)| {
            let files = paths.iter().flat_map(|p| files_of(p));
            (name, files.map(|(f, depth)| (code_of(&f), depth)).collect())
        })
        .collect();
    // Which child defines an item name, when exactly one does (its own
    // top-level file: `x.rs` or `x/mod.rs`).
    let mut definer: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (name, paths) in &children {
        for p in paths {
            let own = if p.is_dir() {
                p.join("mod.rs")
            } else {
                p.clone()
            };
            if !own.is_file() {
                continue;
            }
            for item in items_of(&code_of(&own)) {
                definer
                    .entry(item)
                    .and_modify(|d| {
                        if d.as_ref() != Some(name) {
                            *d = None
                        }
                    })
                    .or_insert_with(|| Some(name.clone()));
            }
        }
    }
    let mut deps = BTreeMap::new();
    for (name, files) in &codes {
        let mut uses = BTreeSet::new();
        for (code, depth) in files {
            let mut named = names_after(code, &absolute);
            if !module.is_empty() || *depth > 1 {
                // A top-level file's `super::` is the crate: `crate::` covers it.
                named.extend(names_after(code, &"super::".repeat(*depth)));
            }
            for n in named {
                if children.contains_key(&n) {
                    uses.insert(n);
                } else if let Some(Some(d)) = definer.get(&n) {
                    uses.insert(d.clone());
                }
            }
        }
        uses.remove(*name);
        deps.insert((*name).clone(), uses);
    }
    deps
}

/// A circle in `deps`, if there is one.
fn circle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
    deps.keys()
        .find_map(|m| visit(m, deps, &mut Vec::new(), &mut done))
}

/// Every module folder under `src` with its module path.
fn modules() -> Vec<(PathBuf, String)> {
    let src = root().join("src");
    let mut out = vec![(src.clone(), String::new())];
    let mut i = 0;
    while i < out.len() {
        let (dir, module) = out[i].clone();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                let path = if module.is_empty() {
                    name
                } else {
                    format!("{module}::{name}")
                };
                out.push((p, path));
            }
        }
        i += 1;
    }
    out
}

#[test]
fn no_module_and_no_file_of_a_module_imports_in_a_circle() {
    let modules = modules();
    assert!(modules.iter().any(|(_, m)| m == "eval::store"));
    // The reader sees a known use: the store folder uses the data module.
    let eval = sibling_uses(&root().join("src/eval"), "eval");
    assert!(eval["store"].contains("data"), "{eval:?}");
    let mut circles = Vec::new();
    for (dir, module) in &modules {
        let deps = sibling_uses(dir, module);
        if let Some(c) = circle(&deps) {
            let inside = if module.is_empty() { "crate" } else { module };
            circles.push(format!("import circle in {inside}: {}", c.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "{}", circles.join("\n"));
}

#[test]
fn the_circle_check_sees_circles() {
    // The reader of paths, on the forms the check relies on.
    let code = "use super::{a, b::{c, d}, e as f};\nuse super::super::g;\ncrate::eval::h::x";
    assert_eq!(
        names_after(code, "super::"),
        ["a", "b", "e"].map(String::from).into()
    );
    assert_eq!(
        names_after(code, "super::super::"),
        ["g"].map(String::from).into()
    );
    assert_eq!(
        names_after(code, "crate::eval::"),
        ["h"].map(String::from).into()
    );
    let deps: BTreeMap<String, BTreeSet<String>> = [
        ("store", vec!["data", "postgres"]),
        ("postgres", vec!["store"]),
        ("data", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circle(&deps).unwrap(), ["postgres", "store", "postgres"]);
    // Item names, for uses through the root's re-exports.
    let items = items_of(
        "pub struct A;\npub(crate) fn b() {}\nasync fn c() {}\nenum D {}\n    fn inner() {}\nimpl A {}",
    );
    assert_eq!(items, ["A", "b", "c", "D"].map(String::from).into());
}

#[test]
fn the_leaves_stay_leaves() {
    let deps = sibling_uses(&root().join("src"), "");
    assert!(deps.contains_key("engine") && deps.contains_key("workflow"));
    // The one hash and JSON repair are leaves too; budget and backend
    // types are shared vocabulary.
    for leaf in [
        "units",
        "yaml",
        "similarity",
        "summary",
        "hash",
        "redact",
        "answer",
        "file",
    ] {
        let uses: Vec<_> = deps[leaf]
            .iter()
            .filter(|d| !["budget", "backend", "hash", "modeljson"].contains(&d.as_str()))
            .collect();
        assert!(uses.is_empty(), "{leaf} imports {uses:?}");
    }
}

/// Files a user keeps are written whole or not at all: outside the
/// sandbox (which writes kernel control files in place), outside tests
/// and outside `file` itself (a device is written in place), no code
/// writes a file with `std::fs::write`; `file::write_atomic` does.
#[test]
fn kept_files_are_written_atomically() {
    let mut offenders = Vec::new();
    for (dir, _) in modules() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            if p.extension().is_none_or(|e| e != "rs")
                || rel.starts_with("src/sandbox")
                || rel == "src/file.rs"
                || rel.ends_with("tests.rs")
            {
                continue;
            }
            for line in code_of(&p).lines().filter(|l| l.contains("fs::write(")) {
                offenders.push(format!("{rel}: {}", line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
