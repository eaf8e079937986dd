//! The server crate's top-level modules import each other without cycles, and in the
//! direction of the flow: a new import that closes a cycle (or makes the broker reach into
//! background work, or anything below delivery reach into it) fails here, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names (`crate::x`), with the files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

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

/// The code of a file without its unit tests and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tops: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_owned();
            (p.is_dir() || name != "lib").then_some(name)
        })
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
        if top == "lib" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if tops.contains(&name) && name != top {
                g.entry(top.clone()).or_default().entry(name).or_default().insert(rel.clone());
            }
        }
        g.entry(top).or_default();
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                s.low.insert(v, s.low[v].min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                s.low.insert(v, s.low[v].min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let g = graph();
    let found = cycles(&g);
    let mut explain = Vec::new();
    for comp in &found {
        for a in comp {
            for b in comp {
                if let Some(files) = g[a].get(b) {
                    explain.push(format!("{a} -> {b} ({files:?})"));
                }
            }
        }
    }
    assert!(found.is_empty(), "cycles among modules {found:?}:\n{}", explain.join("\n"));
}

#[test]
fn the_flow_points_one_way() {
    let g = graph();
    let names = |m: &str| g.get(m).map(|d| d.keys().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
    // Background work depends on the broker; the broker never on background work.
    assert!(!names("broker").contains("govern"), "broker -> govern: {:?}", g["broker"].get("govern"));
    // Nothing below delivery reaches into it, or into start-up.
    for m in ["attest", "authorize", "issue", "ledger", "keys", "verify", "broker", "govern"] {
        for upper in ["deliver", "server"] {
            assert!(!names(m).contains(upper), "{m} -> {upper}: {:?}", g[m].get(upper));
        }
    }
    // Only composition reads the whole configuration.
    for m in ["attest", "authorize", "issue", "ledger", "keys", "verify", "broker", "govern", "deliver"] {
        assert!(!names(m).contains("config"), "{m} -> config: {:?}", g[m].get("config"));
    }
}

/// The README's "What works today" table says where each capability lives: every file or
/// folder it names exists (paths are relative to this crate's `src/`, or to `crates/`).
#[test]
fn the_readme_points_at_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = readme.split("## What works today").nth(1).expect("the table").split("\n## ").next().unwrap();
    let mut missing = Vec::new();
    let mut named = 0;
    for row in table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Capability")) {
        let where_ = row.trim_end().trim_end_matches('|').rsplit('|').next().unwrap_or("");
        for path in where_.split('`').skip(1).step_by(2) {
            named += 1;
            let found =
                [root.join("crates/mayfly-server/src").join(path), root.join("crates").join(path), root.join(path)];
            if !found.iter().any(|p| p.exists()) {
                missing.push(path.to_owned());
            }
        }
    }
    assert!(named > 20, "the table names its files ({named} found)");
    assert!(missing.is_empty(), "the README names files that do not exist: {missing:?}");
}

/// The README's table of problem types is `ProblemKind`: it names every kind, and every
/// slug-like name in it (lowercase words joined by `-`) is a kind.
#[test]
fn the_readme_lists_every_problem_kind_and_no_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme.split("### Errors").nth(1).expect("the errors section").split("\n## ").next().unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Status")).collect();
    let named: BTreeSet<&str> = rows.iter().flat_map(|row| row.split('`').skip(1).step_by(2)).collect();
    let slug_like =
        |t: &&&str| t.contains('-') && t.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()));
    let unknown: Vec<_> =
        named.iter().filter(slug_like).filter(|s| mayfly_proto::ProblemKind::from_slug(s).is_none()).collect();
    assert!(unknown.is_empty(), "the README names problem types the server does not answer with: {unknown:?}");
    let missing: Vec<_> =
        mayfly_proto::ProblemKind::ALL.iter().map(|k| k.slug()).filter(|s| !named.contains(s)).collect();
    assert!(missing.is_empty(), "the README's table of problem types lacks: {missing:?}");
}
