//! Reading a crate's sources for `module_cycles.rs`: a lexer that keeps only what path
//! collection needs (identifiers, `::`, punctuation, strings for `#[path]`), and a walk that
//! follows `mod` declarations from a crate root and records, for each module, its `use` aliases
//! and every path it names, leaving out `#[cfg(test)]` items.

use std::collections::BTreeMap;
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
pub type ModPath = Vec<String>;

/// What one module declares and names.
#[derive(Debug, Default)]
pub struct Module {
    /// The file it is in (an inline module's is its parent's).
    pub file: PathBuf,
    /// Names imported or re-exported by `use`, with the path they stand for (as written).
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Every path it names (as written, relative to it) with the line.
    pub refs: Vec<(Vec<String>, usize)>,
}

/// The modules of one crate.
#[derive(Debug, Default)]
pub struct Crate {
    /// Every module reached from the root, by path.
    pub modules: BTreeMap<ModPath, Module>,
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
pub fn load(krate: &mut Crate, fs: &dyn Fn(&Path) -> Option<String>, file: &Path, path: ModPath) {
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
