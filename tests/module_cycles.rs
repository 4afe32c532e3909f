//! No import cycles between the modules under `src/`, in the library or the binary: modules are
//! layered, each using only modules below it, so a layer can be read, tested and changed without
//! the ones above it.
//!
//! The check reads the sources (std only, no parser crate): it follows `mod` declarations from
//! each crate root (`src/lib.rs`, a `main.rs` beside it, `src/bin/*.rs`, `src/bin/*/main.rs`), collects
//! every path a module names (`use` trees, and paths in code that start with `crate::`,
//! `super::`, `self::` or a child module's name), resolves each to the module that defines the
//! item, following `use` re-exports, and fails on every strongly connected component of more than
//! one module, listing the edges that close it with their file and line.
//!
//! An edge is "module A names an item defined in module B", where neither is the other's
//! ancestor: a parent's `mod.rs` declaring, re-exporting and calling its children while they use
//! the parent's shared items is how a Rust module owns its parts, not a layering loop. Every
//! other pair counts, at any depth (`a::x` using `b::y::z` is an edge between those two).
//! Code under `#[cfg(test)]` is left out (a test module may use anything), and so are comments,
//! strings and character literals, so a path in a doc comment is not a use.

mod module_cycles_support;

use module_cycles_support::{load, Crate, ModPath};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module that defines what `segs`, written in module `from`, names; `None` for paths
/// outside the crate (std, dependencies, the library seen from the binary) and locals.
fn resolve(k: &Crate, from: &[String], segs: &[String], hops: usize) -> Option<ModPath> {
    if hops > 16 || segs.is_empty() {
        return None;
    }
    let is_mod = |p: &[String]| k.modules.contains_key(p);
    let (mut cur, mut i): (ModPath, usize) = match segs[0].as_str() {
        "crate" => (vec![], 1),
        "self" => (from.to_vec(), 1),
        "super" => {
            let mut cur = from.to_vec();
            let mut i = 0;
            while segs.get(i).is_some_and(|s| s == "super") {
                cur.pop();
                i += 1;
            }
            (cur, i)
        }
        first => {
            let child: ModPath = from.iter().cloned().chain([first.to_string()]).collect();
            if is_mod(&child) {
                (from.to_vec(), 0)
            } else {
                let alias = k.modules.get(from)?.aliases.get(first)?;
                if alias.len() == 1 && alias[0] == first {
                    return None; // `use std;`-like: an external name
                }
                let p: Vec<String> = alias.iter().chain(&segs[1..]).cloned().collect();
                return resolve(k, from, &p, hops + 1);
            }
        }
    };
    while let Some(s) = segs.get(i) {
        let mut next = cur.clone();
        next.push(s.clone());
        if s == "self" {
        } else if is_mod(&next) {
            cur = next;
        } else if let Some(alias) = k.modules.get(&cur).and_then(|m| m.aliases.get(s)) {
            let p: Vec<String> = alias.iter().chain(&segs[i + 1..]).cloned().collect();
            // An import of something outside the crate names that, not this module.
            return resolve(k, &cur, &p, hops + 1);
        } else {
            break;
        }
        i += 1;
    }
    Some(cur)
}

/// Module → module → the first (file, line) where the first names the second.
type Graph = BTreeMap<ModPath, BTreeMap<ModPath, (PathBuf, usize)>>;

fn graph(k: &Crate) -> Graph {
    let mut g = Graph::new();
    for (from, m) in &k.modules {
        let edges = g.entry(from.clone()).or_default();
        for (p, line) in &m.refs {
            if let Some(to) = resolve(k, from, p, 0) {
                let related = to.starts_with(from) || from.starts_with(&to);
                if !related {
                    edges.entry(to).or_insert((m.file.clone(), *line));
                }
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<ModPath>> {
    struct S<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a ModPath, (usize, usize)>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        n: usize,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a ModPath) {
        s.index.insert(v, (s.n, s.n));
        s.n += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flat_map(|e| e.keys()) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.index[v].1.min(s.index[w].1);
                s.index.get_mut(v).unwrap().1 = low;
            } else if s.on.contains(w) {
                let low = s.index[v].1.min(s.index[w].0);
                s.index.get_mut(v).unwrap().1 = low;
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                scc.push(w.clone());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = S {
        g,
        index: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        n: 0,
        out: vec![],
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Every crate root under `dir/src/`, relative to `dir`: the library, a `main.rs` beside it, and each
/// `src/bin/` binary.
fn roots(dir: &Path) -> Vec<PathBuf> {
    let src = PathBuf::from("src");
    let mut r: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| dir.join(p).is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) {
        let mut bins: Vec<PathBuf> = entries.flatten().map(|e| e.file_name().into()).collect();
        bins.sort();
        for b in bins {
            let p = src.join("bin").join(&b);
            if b.extension().is_some_and(|e| e == "rs") {
                r.push(p);
            } else if dir.join(&p).join("main.rs").is_file() {
                r.push(p.join("main.rs"));
            }
        }
    }
    r
}

/// The cycles of each crate rooted at `roots`, described: the modules, then each edge inside the
/// cycle with where it is written.
fn report(roots: &[PathBuf], fs: &dyn Fn(&Path) -> Option<String>) -> Vec<String> {
    let name = |p: &ModPath| {
        if p.is_empty() {
            "crate".to_string()
        } else {
            p.join("::")
        }
    };
    let mut found = Vec::new();
    for root in roots {
        let mut k = Crate::default();
        load(&mut k, fs, root, vec![]);
        let g = graph(&k);
        for scc in cycles(&g) {
            let mut text = format!(
                "{}: {}",
                root.display(),
                scc.iter().map(name).collect::<Vec<_>>().join(", ")
            );
            for a in &scc {
                for (b, (file, line)) in &g[a] {
                    if scc.contains(b) {
                        text += &format!(
                            "\n    {} -> {} ({}:{line})",
                            name(a),
                            name(b),
                            file.display()
                        );
                    }
                }
            }
            found.push(text);
        }
    }
    found
}

#[test]
fn no_module_cycles_under_src() {
    let dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let roots = roots(&dir);
    assert!(
        roots.iter().any(|r| r.ends_with("lib.rs")),
        "no src/lib.rs under {}",
        dir.display()
    );
    assert!(
        roots.len() >= 2,
        "the library and the ampkit binary, found {roots:?}"
    );
    let cycles = report(&roots, &|p| std::fs::read_to_string(dir.join(p)).ok());
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The check on made-up crates: it must find the cycles there are, and only those.
#[test]
fn the_check_finds_cycles_through_uses_re_exports_and_nested_modules() {
    let lib = "pub mod a; mod b; pub mod p; mod q; pub use b::Thing; // crate::a::f in a comment";
    let mut files: BTreeMap<&str, &str> = BTreeMap::from([
        ("s/lib.rs", lib),
        ("s/a.rs", "use crate::Thing; pub fn f() {}"),
        (
            "s/b.rs",
            "pub struct Thing; fn g() { let _ = \"crate::a::f\"; }",
        ),
        // A parent calling its child, which uses the parent's helper: not a cycle.
        (
            "s/p/mod.rs",
            "mod kid; pub fn helper() {} pub fn run() { kid::go() }",
        ),
        (
            "s/p/kid.rs",
            "pub fn go() { super::helper() }\n#[cfg(test)]\nmod tests { use crate::q; }",
        ),
        ("s/q.rs", "pub fn h() { crate::p::kid::go() }"),
    ]);
    let check = |files: &BTreeMap<&str, &str>| {
        let fs = |p: &Path| files.get(p.to_str()?).map(|s| s.to_string());
        report(&[PathBuf::from("s/lib.rs")], &fs)
    };
    assert_eq!(check(&files), Vec::<String>::new());

    // b naming a closes a -> b (crate::Thing is b's, re-exported by the root) -> a.
    files.insert("s/b.rs", "use super::a::f; pub struct Thing;");
    // kid naming q, outside the test module, closes p::kid -> q -> p::kid.
    files.insert(
        "s/p/kid.rs",
        "pub fn go() { super::helper() }\nfn k() { crate::q::h() }",
    );
    let found = check(&files);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains(": a, b"), "{}", found[0]);
    assert!(found[0].contains("a -> b (s/a.rs:1)"), "{}", found[0]);
    assert!(found[0].contains("b -> a (s/b.rs:1)"), "{}", found[0]);
    assert!(found[1].contains(": p::kid, q"), "{}", found[1]);
    assert!(
        found[1].contains("p::kid -> q (s/p/kid.rs:2)"),
        "{}",
        found[1]
    );
}
