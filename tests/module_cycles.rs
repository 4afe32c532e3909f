//! No import cycles between the modules under `src/`, in the library or the binary: modules are
//! layered, each using only modules below it, so a layer can be read, tested and changed without
//! the ones above it.
//!
//! The check reads the sources (std only, no parser crate): it follows `mod` declarations from
//! each crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, `src/bin/*/main.rs`), collects
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One lexical token: what path collection needs, nothing more.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    PathSep,
    Punct(char),
}

/// `src` as tokens with their 1-based line numbers; comments, numbers and char literals dropped.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (s, next, lines) = string(&c, i + 1, 0);
            out.push((Tok::Str(s), line));
            line += lines;
            i = next;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a: only the quote is dropped).
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let prefix = matches!(word.as_str(), "r" | "b" | "br");
            let hashes = (i..c.len()).take_while(|&k| c[k] == '#').count();
            if prefix && at(i + hashes) == '"' && (hashes == 0 || word != "b") {
                let (s, next, lines) = string(&c, i + hashes + 1, hashes);
                out.push((Tok::Str(s), line));
                line += lines;
                i = next;
            } else if word == "b" && at(i) == '\'' {
                i += if at(i + 1) == '\\' { 4 } else { 3 };
            } else if word == "r" && hashes == 1 {
                i += 1; // r#ident: the identifier follows
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The string starting at `c[i]` (after its opening quote): its text, the index after its closing
/// quote (and `hashes` #s for a raw string), and the newlines inside it.
fn string(c: &[char], mut i: usize, hashes: usize) -> (String, usize, usize) {
    let (start, mut lines) = (i, 0);
    while i < c.len() {
        if c[i] == '\\' && hashes == 0 {
            i += 2;
            continue;
        }
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return (c[start..i].iter().collect(), i + 1 + hashes, lines);
        }
        lines += usize::from(c[i] == '\n');
        i += 1;
    }
    (c[start..].iter().collect(), c.len(), lines)
}

/// A module path inside one crate: `["bench", "gpu"]`; the crate root is `[]`.
type ModPath = Vec<String>;

/// What one module declares and names.
#[derive(Debug, Default)]
struct Module {
    /// The file it is in (an inline module's is its parent's).
    file: PathBuf,
    /// Names imported or re-exported by `use`, with the path they stand for (as written).
    aliases: BTreeMap<String, Vec<String>>,
    /// Every path it names (as written, relative to it) with the line.
    refs: Vec<(Vec<String>, usize)>,
}

/// The modules of one crate.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeMap<ModPath, Module>,
}

/// `mod-rs` files own the directory they are in; `foo.rs` owns `foo/`.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") => dir,
        Some(stem) => dir.join(stem),
        None => dir,
    }
}

/// Index after the item starting at `i`: its `;`, or the `}` closing its first brace block.
fn skip_item(t: &[(Tok, usize)], mut i: usize) -> usize {
    while i < t.len() {
        match t[i].0 {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return skip_block(t, i),
            _ => i += 1,
        }
    }
    i
}

/// Index after the brace block opening at `t[i]`.
fn skip_block(t: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0;
    while i < t.len() {
        match t[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn ident(t: &[(Tok, usize)], i: usize) -> Option<&str> {
    match t.get(i) {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// Parses the `use` tree starting at `t[i]` (after `use`) into (alias, path) pairs; `prefix` is
/// the path above it. Returns the index after the tree. A glob has the alias `*`.
fn use_tree(
    t: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(String, Vec<String>)>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match t.get(i).map(|x| &x.0) {
            Some(Tok::PathSep) => i += 1,
            Some(Tok::Ident(s)) if s == "as" => {
                let alias = ident(t, i + 1).unwrap_or("_").to_string();
                out.push((alias, path));
                return i + 2;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
            }
            Some(Tok::Punct('*')) => {
                out.push(("*".into(), path));
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while !matches!(t.get(i).map(|x| &x.0), Some(Tok::Punct('}')) | None) {
                    i = use_tree(t, i, &path, out);
                    if matches!(t.get(i).map(|x| &x.0), Some(Tok::Punct(','))) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            _ => {
                // `a::b::{self}` names `b`; a plain path names its last segment.
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                if let Some(last) = path.last() {
                    out.push((last.clone(), path.clone()));
                }
                return i;
            }
        }
    }
}

/// Reads `file` as module `path` of `krate`, then the files of the modules it declares.
fn load(krate: &mut Crate, fs: &dyn Fn(&Path) -> Option<String>, file: &Path, path: ModPath) {
    let Some(src) = fs(file) else { return };
    let t = lex(&src);
    // Inline modules open at a brace depth and close with it.
    let mut stack: Vec<(ModPath, usize)> = vec![(path.clone(), 0)];
    let (mut depth, mut i) = (0usize, 0usize);
    let (mut cfg_test, mut attr_path): (bool, Option<String>) = (false, None);
    krate.modules.entry(path.clone()).or_default().file = file.to_path_buf();
    while i < t.len() {
        let here = stack.last().map(|s| s.0.clone()).unwrap_or_default();
        match &t[i].0 {
            Tok::Punct('#') => {
                // An attribute: note #[cfg(test)] and #[path = "..."], skip the rest.
                let inner = matches!(t.get(i + 1), Some((Tok::Punct('!'), _)));
                let open = i + 1 + usize::from(inner);
                let mut k = open;
                let mut d = 0;
                while k < t.len() {
                    match t[k].0 {
                        Tok::Punct('[') => d += 1,
                        Tok::Punct(']') => {
                            d -= 1;
                            if d == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                let body: Vec<&Tok> = t[open..k].iter().map(|x| &x.0).collect();
                let is = |s: &str| Tok::Ident(s.into());
                if !inner && body.len() >= 5 && *body[1] == is("cfg") && *body[3] == is("test") {
                    cfg_test = true;
                }
                if let (Some(Tok::Ident(p)), Some(Tok::Str(s))) = (body.get(1), body.get(3)) {
                    if p == "path" {
                        attr_path = Some(s.clone());
                    }
                }
                i = k + 1;
                continue;
            }
            _ if cfg_test => {
                i = skip_item(&t, i);
                cfg_test = false;
                attr_path = None;
                continue;
            }
            Tok::Ident(kw) if kw == "mod" => {
                let name = ident(&t, i + 1).unwrap_or("_").to_string();
                let mut child = here.clone();
                child.push(name.clone());
                if matches!(t.get(i + 2), Some((Tok::Punct('{'), _))) {
                    krate.modules.entry(child.clone()).or_default().file = file.to_path_buf();
                    depth += 1;
                    stack.push((child, depth));
                    i += 3;
                } else {
                    let inline: Vec<String> = stack[1..]
                        .iter()
                        .map(|s| s.0.last().cloned().unwrap_or_default())
                        .collect();
                    let files = match attr_path.take() {
                        Some(p) => vec![file.parent().unwrap_or(Path::new("")).join(p)],
                        None => {
                            let dir = inline.iter().fold(child_dir(file), |d, m| d.join(m));
                            vec![
                                dir.join(format!("{name}.rs")),
                                dir.join(&name).join("mod.rs"),
                            ]
                        }
                    };
                    if let Some(f) = files.iter().find(|f| fs(f).is_some()) {
                        load(krate, fs, f, child);
                    }
                    i += 3;
                }
                continue;
            }
            Tok::Ident(kw) if kw == "use" => {
                let line = t[i].1;
                let mut uses = Vec::new();
                i = use_tree(&t, i + 1, &[], &mut uses);
                let m = krate.modules.entry(here).or_default();
                for (alias, p) in uses {
                    m.refs.push((p.clone(), line));
                    if alias != "*" {
                        m.aliases.insert(alias, p);
                    }
                }
                continue;
            }
            // The first segment of a path in code (not one inside a path already seen).
            Tok::Ident(first)
                if matches!(t.get(i + 1), Some((Tok::PathSep, _)))
                    && !matches!(t.get(i.wrapping_sub(1)), Some((Tok::PathSep, _))) =>
            {
                let mut p = vec![first.clone()];
                let mut k = i + 2;
                while let Some(s) = ident(&t, k) {
                    p.push(s.to_string());
                    if !matches!(t.get(k + 1), Some((Tok::PathSep, _))) {
                        break;
                    }
                    k += 2;
                }
                let m = krate.modules.entry(here).or_default();
                m.refs.push((p, t[i].1));
            }
            Tok::Punct('{') => {
                depth += 1;
                attr_path = None;
            }
            Tok::Punct('}') => {
                if stack.len() > 1 && stack.last().is_some_and(|s| s.1 == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                attr_path = None;
            }
            Tok::Punct(';') => attr_path = None,
            _ => {}
        }
        i += 1;
    }
}

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

/// Every crate root under `dir/src/`, relative to `dir`: the library, `src/main.rs`, and each
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
