//! The code's imports run one way, from the top down (README, "Layout"): this test
//! reads `src/`, finds every module each file names (`use crate::...`, paths
//! `crate::a::b`, `super::...`), and fails on an import that runs upward or on
//! files that import each other in a loop, naming the files.
//!
//! The layers, lowest first. A module may import its own layer and the ones below;
//! modules of one layer must not form a loop. `lab` is a client of the product (the
//! test bed): it may import anything below `cli`, and nothing but `cli`/`main`
//! imports it. `src/bin/` (the benchmark) is a client outside the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(u8, &[&str])] = &[
    (0, &["error", "wait", "ui", "testpoint", "inventory"]),
    (1, &["ssh", "probe", "docker", "pki"]),
    (2, &["engine", "install"]),
    (3, &["ops"]),
    (4, &["commands"]),
    (5, &["lab"]),
    (6, &["cli", "main"]),
];

fn layer_of(top: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(_, mods)| mods.contains(&top))
        .map(|(l, _)| *l)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file of the library and the binary's main, by module path.
fn files() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(&src(), &mut all);
    all.into_iter()
        .filter(|p| p.file_name().unwrap() != "lib.rs")
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().with_extension("");
            let mut m: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            (m, p)
        })
        .collect()
}

/// The source without comments, strings and char literals (so paths in them do
/// not count).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'#') || b.get(i + 1) == Some(&b'"'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // a char literal ('x' or '\n'); lifetimes ('a) are kept
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths named in `use` trees (braces expanded) and inline `crate::`/`super::` paths.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // use trees
    let mut rest = code;
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let end = after.find(';').unwrap_or(after.len());
        expand(after[..end].trim(), &mut Vec::new(), &mut out);
        rest = &after[end..];
    }
    // inline paths: `crate::`, `super::`, and any `name::` (a child module's name
    // is resolved, anything else dropped by `resolve`)
    let b = code.as_bytes();
    let mut at = 0;
    while let Some(k) = code[at..].find("::") {
        let end = at + k;
        let start = code[..end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        at = end + 2;
        if start == end || (start >= 2 && &code[start - 2..start] == "::") {
            continue;
        }
        let seg_end = code[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| start + e);
        out.push(
            code[start..seg_end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(start) {
            let at = from + k;
            from = at + start.len();
            if at > 0
                && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':')
            {
                continue;
            }
            let seg_end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            let p: Vec<String> = code[at..seg_end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            out.push(p);
        }
    }
    out
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(k) = s[from..].find(w) {
        let at = from + k;
        let before = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let after = b.get(at + w.len()).is_some_and(|c| c.is_ascii_whitespace());
        if before && after {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Expand a use tree (`crate::a::{b, c::{d, e}}`) into paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        let mut depth = 0;
        let mut part = String::new();
        for c in inner.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&part, prefix, out);
                    part.clear();
                    continue;
                }
                _ => {}
            }
            part.push(c);
        }
        if !part.trim().is_empty() {
            expand(&part, prefix, out);
        }
        prefix.truncate(n);
    } else {
        let name = tree.split(" as ").next().unwrap_or("").trim();
        let mut p = prefix.clone();
        p.extend(
            name.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        out.push(p);
    }
}

/// The file a path names from module `from` (the deepest module file on it).
/// Besides `crate::`, `super::` and `self::`, a path may start with a child module
/// of `from` (`use layout::X` in a `mod.rs` that declares `mod layout`).
fn resolve(
    from: &[String],
    path: &[String],
    files: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut segs = path.iter();
    let mut module: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        Some(first)
            if files.contains_key(&[from, &[first.to_string()]].concat())
                && !["std", "core", "alloc"].contains(&first) =>
        {
            from.to_vec()
        }
        Some("super") | Some("self") => {
            let mut m = from.to_vec();
            // `super` of a file module is its parent; of mod.rs too (mod.rs's
            // module path is the directory's).
            for s in path.iter() {
                match s.as_str() {
                    "super" => {
                        m.pop();
                        segs.next();
                    }
                    "self" => {
                        segs.next();
                    }
                    _ => break,
                }
            }
            m
        }
        _ => return None,
    };
    for s in segs {
        let mut next = module.clone();
        next.push(s.clone());
        if files.contains_key(&next) {
            module = next;
        } else {
            break;
        }
    }
    if module.is_empty() {
        None
    } else {
        Some(module)
    }
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = files();
    let mut g = BTreeMap::new();
    for (m, p) in &files {
        let text = std::fs::read_to_string(p).unwrap();
        // A file's own unit tests may use anything below it, as the file may.
        let code = code_only(&text);
        let mut deps = BTreeSet::new();
        for path in paths(&code) {
            if let Some(t) = resolve(m, &path, &files)
                && t != *m
                && !m.starts_with(&t)
            {
                deps.insert(t);
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

fn file_name(m: &[String]) -> String {
    let files = files();
    files[m]
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn every_module_has_a_layer() {
    let missing: Vec<String> = files()
        .keys()
        .filter(|m| layer_of(&m[0]).is_none())
        .map(|m| file_name(m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules with no layer in the table of tests/layers.rs: {missing:?}"
    );
}

#[test]
fn imports_run_downward() {
    let mut bad = Vec::new();
    for (from, deps) in graph() {
        let (Some(lf), top) = (layer_of(&from[0]), &from[0]) else {
            continue;
        };
        for to in deps {
            let Some(lt) = layer_of(&to[0]) else { continue };
            if lt > lf && to[0] != *top {
                bad.push(format!(
                    "{} (layer {lf}) imports {} (layer {lt})",
                    file_name(&from),
                    file_name(&to)
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run upward:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn no_import_loops() {
    let g = graph();
    // Tarjan's strongly connected components over files.
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        n: usize,
        sccs: Vec<Vec<Vec<String>>>,
    }
    fn visit(t: &mut T, v: &Vec<String>) {
        t.index.insert(v.clone(), t.n);
        t.low.insert(v.clone(), t.n);
        t.n += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let deps: Vec<Vec<String>> =
            t.g.get(v)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default();
        for w in deps {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(lw));
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low[v];
                t.low.insert(v.clone(), lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = w == *v;
                scc.push(w);
                if done {
                    break;
                }
            }
            if scc.len() > 1 {
                t.sccs.push(scc);
            }
        }
    }
    let mut t = T {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        n: 0,
        sccs: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    let loops: Vec<String> = t
        .sccs
        .iter()
        .map(|scc| {
            // Name the files and one import of the loop for each.
            let set: BTreeSet<&Vec<String>> = scc.iter().collect();
            let mut edges = Vec::new();
            for a in scc {
                for b in &g[a] {
                    if set.contains(b) {
                        edges.push(format!("{} -> {}", file_name(a), file_name(b)));
                    }
                }
            }
            edges.join(", ")
        })
        .collect();
    assert!(
        loops.is_empty(),
        "files that import each other in a loop:\n  {}",
        loops.join("\n  ")
    );
}

#[test]
fn the_checker_reads_use_trees_and_paths() {
    let code = code_only(
        "use crate::ops::{run::Ctx, etcd as e, lock::{self, Guard}};\n\
         // crate::commands::x in a comment\n\
         let s = \"crate::lab::y\";\n\
         fn f() { super::gap::stop(); crate::probe::sql::connect(); }",
    );
    let p = paths(&code);
    let has = |want: &[&str]| {
        p.iter()
            .any(|x| x == &want.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert!(has(&["crate", "ops", "run", "Ctx"]), "{p:?}");
    assert!(has(&["crate", "ops", "etcd"]), "{p:?}");
    assert!(has(&["crate", "ops", "lock", "Guard"]), "{p:?}");
    assert!(has(&["super", "gap", "stop"]), "{p:?}");
    assert!(has(&["crate", "probe", "sql", "connect"]), "{p:?}");
    assert!(
        !p.iter().any(|x| x.contains(&"lab".to_string())),
        "strings are not code: {p:?}"
    );
    assert!(
        !p.iter().any(|x| x.contains(&"commands".to_string())),
        "comments are not code: {p:?}"
    );
}
