//! Every repository path that the README, the docs, the kernel headers, the scripts and the
//! sources' comments name (`src/…`, `tests/…`, `kernels/…`, `docs/…`, …) exists, so a moved or
//! renamed file cannot leave a stale reference behind. Patterns with placeholders
//! (`kernels/<family>.cu`, `kernels/*.cu`, `src/{a,b}`) are not paths and are skipped.

use std::path::{Path, PathBuf};

/// Directories a path must start with to be checked.
const ROOTS: [&str; 11] = [
    "src/",
    "tests/",
    "kernels/",
    "docs/",
    "benches/",
    "bench/",
    "scripts/",
    "examples/",
    "data/",
    "assets/",
    ".ci/",
];

/// Where the references are looked for: single files and directories searched recursively
/// (build outputs excluded). The changelog is left out: it names files as they were.
const FILES: [&str; 5] = [
    "README.md",
    "build.rs",
    "data/README.md",
    ".ci/run",
    "Cargo.toml",
];
const DIRS: [&str; 6] = ["docs", "kernels", "src", "tests", "examples", "scripts"];

/// A character that can be part of a path.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// The repository paths `text` names: a root directory not glued to a preceding path, word or
/// variable, followed by path characters; trailing punctuation is dropped.
fn paths_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut prev = ' ';
    for (i, c) in text.char_indices() {
        let glued = path_char(prev) || matches!(prev, '$' | '~');
        prev = c;
        if glued {
            continue;
        }
        let rest = &text[i..];
        if !ROOTS.iter().any(|r| rest.starts_with(r)) {
            continue;
        }
        let end = rest.find(|c: char| !path_char(c)).unwrap_or(rest.len());
        if rest[end..].starts_with(['<', '*', '{', '…']) {
            continue; // a pattern, not a path
        }
        let path = rest[..end].trim_end_matches(['.', ',', ':', ';', ')']);
        found.push(path.to_string());
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // Build outputs (the downstream crate's target dir) and the kernel snapshot's generated files.
            if !matches!(entry.file_name().to_str(), Some("target" | "ptx")) {
                files_under(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_repository_path_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    for dir in DIRS {
        files_under(&root.join(dir), &mut files);
    }
    let mut stale = Vec::new();
    let mut checked = 0;
    for file in &files {
        // Binary and data files are not read as text.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for path in paths_in(line) {
                checked += 1;
                if !root.join(&path).exists() {
                    let shown = file.strip_prefix(root).unwrap_or(file).display();
                    stale.push(format!("{shown}:{}: {path}", n + 1));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(
        stale.is_empty(),
        "{} stale repository paths (moved or renamed files?):\n  {}",
        stale.len(),
        stale.join("\n  ")
    );
}

#[test]
fn patterns_and_glued_words_are_not_paths() {
    let found = paths_in(
        "see src/ops/gemm/, `kernels/<family>.cu`, kernels/*.cu, src/{a,b}, \
         $OUT/docs/x, ../elsewhere/x, .gpu/tests/name, tests/cast_gpu.rs::a_test.",
    );
    assert_eq!(found, ["src/ops/gemm/", "tests/cast_gpu.rs"]);
}
