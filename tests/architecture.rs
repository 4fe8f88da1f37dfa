//! The shape of `src/`, checked: no import circle between its files, the registry importing
//! nothing of the crate, and no file over 400 lines of code unless its header says why it must be
//! one piece. The module map lives in `src/lib.rs` and ARCHITECTURE.md; this keeps it honest.
//!
//! An import is any path through `crate::`, `super::` or a child module's name (`session::run`),
//! in `use` lines and in code alike; comments and each file's `#[cfg(test)]` module are not part
//! of the structure. A path is resolved to the file of the longest module prefix it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines of code (before the test module) a file may have without saying why.
const MAX_LINES: usize = 400;

/// What a file's header must say when it is longer.
const WHY_ONE_PIECE: &str = "one piece";

struct Module {
    /// `crate`, `crate::server`, `crate::server::control`, ...
    path: String,
    /// The file, relative to the repository root.
    file: PathBuf,
    /// Its lines up to its test module, comments removed.
    code: Vec<String>,
    /// Its header (`//!` lines).
    header: String,
    /// Lines of code before the test module.
    lines: usize,
}

fn modules() -> Vec<Module> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root.join("src")).unwrap();
            // The binary's entry point is not part of the library's module tree.
            if rel == Path::new("main.rs") {
                continue;
            }
            let mut segments: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if segments.last().is_some_and(|s| s == "mod" || s == "lib") {
                segments.pop();
            }
            let module_path = std::iter::once("crate".to_owned())
                .chain(segments)
                .collect::<Vec<_>>()
                .join("::");
            let text = std::fs::read_to_string(&path).unwrap();
            let mut code = Vec::new();
            let mut header = String::new();
            let raw: Vec<&str> = text.lines().collect();
            let mut lines = 0;
            for (i, line) in raw.iter().enumerate() {
                let t = line.trim_start();
                if t.starts_with("#[cfg(test)]")
                    && raw
                        .get(i + 1)
                        .is_some_and(|n| n.trim_start().starts_with("mod tests"))
                {
                    break;
                }
                lines += 1;
                if let Some(h) = t.strip_prefix("//!") {
                    header.push_str(h);
                    header.push(' ');
                }
                if t.starts_with("//") {
                    continue;
                }
                code.push(line.split("//").next().unwrap_or_default().to_owned());
            }
            out.push(Module {
                path: module_path,
                file: Path::new("src").join(rel),
                code,
                header,
                lines,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths a line names: `crate::a::b`, `super::a`, `child::x`, with `{a, b::c}` groups
/// expanded one level.
fn paths_in(line: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let first: String = chars[start..i].iter().collect();
        if first != "crate" && first != "super" && !children.contains(&first) {
            continue;
        }
        // Follow `::segment` as far as it goes.
        let mut path = vec![first];
        loop {
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
                if chars.get(i) == Some(&'{') {
                    // A group: each member extends the path so far.
                    let end = chars[i..]
                        .iter()
                        .position(|c| *c == '}')
                        .map_or(chars.len(), |p| i + p);
                    let group: String = chars[i + 1..end].iter().collect();
                    for member in group.split(',') {
                        let mut p = path.clone();
                        p.extend(
                            member
                                .trim()
                                .split("::")
                                .map(|s| s.trim().to_owned())
                                .filter(|s| !s.is_empty() && s != "self"),
                        );
                        out.push(p);
                    }
                    i = end;
                    path.clear();
                    break;
                }
                let s = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                if s == i {
                    break;
                }
                path.push(chars[s..i].iter().collect());
            } else {
                break;
            }
        }
        if path.len() > 1 {
            out.push(path);
        }
    }
    out
}

/// file -> files it imports.
fn imports(mods: &[Module]) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let by_path: BTreeMap<&str, &Module> = mods.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut graph = BTreeMap::new();
    for m in mods {
        let children: BTreeSet<String> = by_path
            .keys()
            .filter_map(|p| p.strip_prefix(&format!("{}::", m.path)))
            .filter(|rest| !rest.contains("::"))
            .map(str::to_owned)
            .collect();
        let mut to = BTreeSet::new();
        for line in &m.code {
            let t = line.trim_start();
            // A declaration is not an import.
            if t.starts_with("mod ")
                || t.starts_with("pub mod ")
                || t.starts_with("pub(crate) mod ")
            {
                continue;
            }
            for path in paths_in(line, &children) {
                let mut segments: Vec<String> = m.path.split("::").map(str::to_owned).collect();
                let mut rest = path.as_slice();
                match rest[0].as_str() {
                    "crate" => {
                        segments = vec!["crate".into()];
                        rest = &rest[1..];
                    }
                    _ => {
                        while rest.first().is_some_and(|s| s == "super") {
                            segments.pop();
                            rest = &rest[1..];
                        }
                    }
                }
                // The longest prefix that is a module.
                let mut target = None;
                let mut cur = segments.clone();
                if let Some(found) = by_path.get(cur.join("::").as_str()) {
                    target = Some(found.file.clone());
                }
                for s in rest {
                    cur.push(s.clone());
                    match by_path.get(cur.join("::").as_str()) {
                        Some(found) => target = Some(found.file.clone()),
                        None => break,
                    }
                }
                if let Some(t) = target {
                    if t != m.file {
                        to.insert(t);
                    }
                }
            }
        }
        graph.insert(m.file.clone(), to);
    }
    graph
}

/// A circle through the graph, if there is one.
fn find_circle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut circle = stack[i..].to_vec();
            circle.push(node.clone());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_circle_in_src() {
    let graph = imports(&modules());
    // The check sees the arrows that are there.
    assert!(graph[Path::new("src/server/control.rs")].contains(Path::new("src/server/services.rs")));
    assert!(graph[Path::new("src/server/mod.rs")].contains(Path::new("src/server/session.rs")));
    assert!(graph[Path::new("src/client/connect.rs")].contains(Path::new("src/client/mod.rs")));
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "import circle: {}",
            circle
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut graph = BTreeMap::new();
    let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
    graph.insert(a.clone(), BTreeSet::from([b.clone()]));
    graph.insert(b.clone(), BTreeSet::from([c.clone()]));
    graph.insert(c.clone(), BTreeSet::new());
    assert!(find_circle(&graph).is_none());
    graph.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(find_circle(&graph), Some(vec![a.clone(), b, c, a]));
}

#[test]
fn paths_are_read_from_use_lines_and_code() {
    let children = BTreeSet::from(["session".to_owned()]);
    let got = paths_in(
        "use super::{context::SessionCtx, registry}; session::run(crate::net::tune(x));",
        &children,
    );
    assert_eq!(
        got,
        vec![
            vec!["super", "context", "SessionCtx"],
            vec!["super", "registry"],
            vec!["session", "run"],
            vec!["crate", "net", "tune"],
        ]
    );
}

#[test]
fn the_registry_imports_nothing_of_the_crate() {
    let graph = imports(&modules());
    let deps = &graph[Path::new("src/server/registry.rs")];
    assert!(deps.is_empty(), "src/server/registry.rs imports {deps:?}");
}

#[test]
fn no_file_over_400_lines_unless_it_says_why() {
    let long: Vec<String> = modules()
        .iter()
        .filter(|m| {
            let header = m.header.split_whitespace().collect::<Vec<_>>().join(" ");
            m.lines > MAX_LINES && !header.contains(WHY_ONE_PIECE)
        })
        .map(|m| format!("{} ({} lines)", m.file.display(), m.lines))
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines of code without a header that says why it is {WHY_ONE_PIECE}: {long:?}"
    );
}
