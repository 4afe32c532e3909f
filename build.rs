//! Build script: compiles every `kernels/*.cu` to PTX and generates the kernel module table.
//!
//! Where the PTX comes from, decided by `AMPKIT_PTX_SNAPSHOT`:
//! - unset / `auto`: nvcc if one is found (see [`find_nvcc`]), otherwise the committed snapshot in
//!   `kernels/ptx/` when its manifest matches the current sources, otherwise a build error that
//!   names `scripts/install-nvcc`.
//! - `use`: the committed snapshot even when nvcc exists (e.g. a newer local nvcc writes PTX that
//!   an older driver rejects). Fails if the snapshot is stale.
//! - `check`: compile with nvcc and fail unless the committed snapshot equals the fresh PTX (CI).
//! - `write`: compile with nvcc and rewrite the snapshot (`scripts/update-ptx`).
//!
//! Target architectures are fixed here, per module: portable kernels compile to `compute_80` PTX
//! (runs on Ampere and, JIT-compiled by the driver, on Hopper); kernels listed in [`HOPPER_ONLY`]
//! compile to `compute_90a`. `AMPKIT_PTX_ARCH` overrides the portable target (e.g. `compute_90`);
//! the snapshot is only valid for the default.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PTX target for kernels that run on any GPU ampkit supports (sm_80 and newer).
const PORTABLE_ARCH: &str = "compute_80";
/// Modules (file stems) that use Hopper-only instructions (wgmma, setmaxnreg, thread-block
/// clusters): built for sm_90a.
const HOPPER_ONLY: &[&str] = &["gemm_sm90", "softmax_sm90", "layernorm_sm90"];
const HOPPER_ARCH: &str = "compute_90a";
/// Flags shared by every module. No `-lineinfo`: it embeds absolute source paths in the PTX,
/// which would make the committed snapshot depend on where the repository was cloned.
const NVCC_FLAGS: &[&str] = &["-ptx", "-O3", "-std=c++17"];
/// The nvcc release the snapshot must come from (see scripts/install-nvcc for why).
const PINNED_NVCC_RELEASE: &str = "release 13.0";

const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "PATH",
    "AMPKIT_PTX_ARCH",
    "AMPKIT_PTX_SNAPSHOT",
];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Auto,
    Use,
    Check,
    Write,
}

struct Kernel {
    stem: String,
    source: PathBuf,
    arch: String,
}

fn main() {
    if let Err(msg) = run() {
        // A build script reports failure by exiting non-zero; cargo shows stderr.
        eprintln!("\nampkit build error: {msg}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    // Watching a missing path would rerun this script on every build, so only once it exists.
    if root.join(".toolchain").is_dir() {
        println!("cargo:rerun-if-changed=.toolchain");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let kernels_dir = root.join("kernels");
    let snapshot_dir = kernels_dir.join("ptx");

    let mode = match env::var("AMPKIT_PTX_SNAPSHOT").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Mode::Auto,
        Ok("use") => Mode::Use,
        Ok("check") => Mode::Check,
        Ok("write") => Mode::Write,
        Ok(other) => {
            return Err(format!(
                "AMPKIT_PTX_SNAPSHOT={other:?} is not one of auto, use, check, write"
            ))
        }
    };
    let portable_arch = env::var("AMPKIT_PTX_ARCH")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| PORTABLE_ARCH.to_string());
    let kernels = list_kernels(&kernels_dir, &portable_arch)?;
    let sources_hash = hash_sources(&kernels_dir, &kernels)?;

    let nvcc = if mode == Mode::Use {
        None
    } else {
        find_nvcc(&root)
    };
    let origin;
    let ptx: BTreeMap<String, String> = match (mode, nvcc) {
        (Mode::Auto | Mode::Check | Mode::Write, Some(nvcc)) if mode != Mode::Use => {
            let version = nvcc_version(&nvcc)?;
            let built = compile_all(&nvcc, &kernels_dir, &kernels, &out_dir)?;
            match mode {
                Mode::Write => {
                    if !version.contains(PINNED_NVCC_RELEASE) {
                        return Err(format!(
                            "refusing to write the PTX snapshot with {} ({version}); it must come \
                             from nvcc 13.0: run scripts/update-ptx, which installs and uses it",
                            nvcc.display()
                        ));
                    }
                    write_snapshot(&snapshot_dir, &built, &sources_hash, &version)?;
                }
                Mode::Check => check_snapshot(&snapshot_dir, &built, &sources_hash)?,
                _ if env::var_os("AMPKIT_PTX_ARCH").is_some() => {}
                _ => {
                    if let Err(stale) = check_snapshot(&snapshot_dir, &built, &sources_hash) {
                        println!("cargo:warning=ampkit: {}", first_line(&stale));
                    }
                }
            }
            origin = format!("nvcc ({})", version);
            built
        }
        (Mode::Check | Mode::Write, None) => {
            return Err(
                "AMPKIT_PTX_SNAPSHOT=check/write needs nvcc 13.0: run scripts/install-nvcc \
                 (or scripts/update-ptx to rewrite the snapshot)"
                    .into(),
            )
        }
        _ => {
            let ptx = read_snapshot(&snapshot_dir, &kernels, &sources_hash).map_err(|why| {
                format!(
                    "no nvcc found and the committed PTX snapshot cannot be used: {why}\n\
                     Install the pinned CUDA compiler with `scripts/install-nvcc` (nvcc 13.0 from \
                     PyPI, no CUDA toolkit needed), or point $NVCC / $CUDA_HOME at one.\n\
                     If you edited kernels/, also run `scripts/update-ptx` and commit kernels/ptx/."
                )
            })?;
            origin = "committed snapshot kernels/ptx".to_string();
            ptx
        }
    };

    for (stem, text) in &ptx {
        fs::write(out_dir.join(format!("{stem}.ptx")), text).map_err(|e| e.to_string())?;
    }
    write_module_table(&out_dir, &kernels, &origin)
}

/// nvcc lookup: `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `/usr/local/cuda/bin`, `PATH`, then the
/// project-local toolchain installed by `scripts/install-nvcc`. Never runs nvidia-smi.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env::var_os(var).filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p).join("bin").join(exe));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin").join(exe));
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join(exe)));
    }
    candidates.push(root.join(".toolchain/cuda-13.0/nvidia/cu13/bin").join(exe));
    candidates.into_iter().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("release"))
        .map(|l| {
            l.trim()
                .trim_start_matches("Cuda compilation tools, ")
                .to_string()
        })
        .ok_or_else(|| format!("{} --version printed no release line", nvcc.display()))
}

fn list_kernels(dir: &Path, portable_arch: &str) -> Result<Vec<Kernel>, String> {
    let mut kernels = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cu") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "kernel file names must be snake_case: {}",
                path.display()
            ));
        }
        let arch = if HOPPER_ONLY.contains(&stem.as_str()) {
            HOPPER_ARCH
        } else {
            portable_arch
        };
        kernels.push(Kernel {
            stem,
            source: path,
            arch: arch.to_string(),
        });
    }
    kernels.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(kernels)
}

/// One hash over everything that determines the PTX: every `.cu`/`.cuh` under kernels/ (not the
/// snapshot itself), each module's target and the shared flags.
fn hash_sources(dir: &Path, kernels: &[Kernel]) -> Result<String, String> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.file_name().unwrap().to_string_lossy().as_bytes());
        h.update([0]);
        let text = fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        // Hash with \n line ends so a CRLF checkout does not look stale.
        h.update(
            String::from_utf8_lossy(&text)
                .replace("\r\n", "\n")
                .as_bytes(),
        );
        h.update([0]);
    }
    for k in kernels {
        h.update(format!("{}={};", k.stem, k.arch).as_bytes());
    }
    h.update(NVCC_FLAGS.join(" ").as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

/// Compiles all modules in parallel, one thread per file.
fn compile_all(
    nvcc: &Path,
    kernels_dir: &Path,
    kernels: &[Kernel],
    out_dir: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let results: Vec<Result<(String, String), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|k| s.spawn(move || compile_one(nvcc, kernels_dir, k, out_dir)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.into_iter().collect()
}

fn compile_one(
    nvcc: &Path,
    kernels_dir: &Path,
    k: &Kernel,
    out_dir: &Path,
) -> Result<(String, String), String> {
    let out = out_dir.join(format!("{}.nvcc.ptx", k.stem));
    let output = Command::new(nvcc)
        .args(NVCC_FLAGS)
        .arg(format!("-arch={}", k.arch))
        .arg("-I")
        .arg(kernels_dir)
        .arg("-o")
        .arg(&out)
        .arg(&k.source)
        .output()
        .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on {} ({}):\n{}{}",
            k.source.display(),
            nvcc.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((k.stem.clone(), text))
}

const MANIFEST: &str = "MANIFEST";

fn read_manifest_hash(snapshot_dir: &Path) -> Result<String, String> {
    let path = snapshot_dir.join(MANIFEST);
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("sources-sha256 "))
        .map(|s| s.trim().to_string())
        .ok_or_else(|| format!("{} has no sources-sha256 line", path.display()))
}

/// The PTX with comment lines removed: the header comment names the exact nvcc build, which may
/// differ between two 13.0 installs that emit identical code.
fn ptx_code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_snapshot(
    snapshot_dir: &Path,
    built: &BTreeMap<String, String>,
    sources_hash: &str,
) -> Result<(), String> {
    let fix = "run scripts/update-ptx and commit kernels/ptx/";
    let recorded = read_manifest_hash(snapshot_dir)
        .map_err(|e| format!("the PTX snapshot is stale ({e}): {fix}"))?;
    if recorded != sources_hash {
        return Err(format!(
            "the PTX snapshot in kernels/ptx/ is stale: kernels/ changed since it was written \
             (manifest {}…, sources {}…): {fix}",
            &recorded[..recorded.len().min(12)],
            &sources_hash[..12]
        ));
    }
    for (stem, text) in built {
        let path = snapshot_dir.join(format!("{stem}.ptx"));
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if ptx_code(&committed) != ptx_code(text) {
            return Err(format!(
                "the PTX snapshot {} differs from what nvcc builds now: {fix} (with the pinned \
                 nvcc 13.0)",
                path.display()
            ));
        }
    }
    let extra = list_snapshot_files(snapshot_dir)?
        .into_iter()
        .filter(|stem| !built.contains_key(stem))
        .collect::<Vec<_>>();
    if !extra.is_empty() {
        return Err(format!(
            "kernels/ptx/ holds PTX for modules with no source ({}): {fix}",
            extra.join(", ")
        ));
    }
    Ok(())
}

fn list_snapshot_files(snapshot_dir: &Path) -> Result<Vec<String>, String> {
    let Ok(entries) = fs::read_dir(snapshot_dir) else {
        return Ok(Vec::new());
    };
    let mut stems = Vec::new();
    for e in entries {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("ptx") {
            stems.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    stems.sort();
    Ok(stems)
}

fn write_snapshot(
    snapshot_dir: &Path,
    built: &BTreeMap<String, String>,
    sources_hash: &str,
    version: &str,
) -> Result<(), String> {
    fs::create_dir_all(snapshot_dir).map_err(|e| e.to_string())?;
    for stem in list_snapshot_files(snapshot_dir)? {
        if !built.contains_key(&stem) {
            fs::remove_file(snapshot_dir.join(format!("{stem}.ptx"))).map_err(|e| e.to_string())?;
        }
    }
    let mut manifest = String::from(
        "# ampkit PTX snapshot: written by scripts/update-ptx, checked by build.rs. Do not edit.\n",
    );
    writeln!(manifest, "nvcc {version}").unwrap();
    writeln!(manifest, "sources-sha256 {sources_hash}").unwrap();
    for (stem, text) in built {
        fs::write(snapshot_dir.join(format!("{stem}.ptx")), text).map_err(|e| e.to_string())?;
        let digest = Sha256::digest(text.as_bytes());
        writeln!(manifest, "module {stem} {digest:x}").unwrap();
    }
    fs::write(snapshot_dir.join(MANIFEST), manifest).map_err(|e| e.to_string())
}

fn read_snapshot(
    snapshot_dir: &Path,
    kernels: &[Kernel],
    sources_hash: &str,
) -> Result<BTreeMap<String, String>, String> {
    let recorded = read_manifest_hash(snapshot_dir)?;
    if recorded != sources_hash {
        return Err(
            "kernels/ changed since kernels/ptx/ was written (or AMPKIT_PTX_ARCH differs from \
             the snapshot's target)"
                .into(),
        );
    }
    kernels
        .iter()
        .map(|k| {
            let path = snapshot_dir.join(format!("{}.ptx", k.stem));
            fs::read_to_string(&path)
                .map(|text| (k.stem.clone(), text))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

fn write_module_table(out_dir: &Path, kernels: &[Kernel], origin: &str) -> Result<(), String> {
    let mut src = String::from("// @generated by build.rs: one entry per kernels/*.cu.\n\n");
    writeln!(
        src,
        "/// Where the embedded PTX came from: the nvcc that built it, or the committed snapshot."
    )
    .unwrap();
    writeln!(src, "pub const PTX_ORIGIN: &str = {origin:?};\n").unwrap();
    for (i, k) in kernels.iter().enumerate() {
        writeln!(src, "/// PTX module compiled from `kernels/{}.cu`.", k.stem).unwrap();
        writeln!(
            src,
            "pub const {}: KernelModule = KernelModule {{ index: {i}, name: {:?}, arch: {:?}, \
             ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{}.ptx\")) }};",
            k.stem.to_uppercase(),
            k.stem,
            k.arch,
            k.stem
        )
        .unwrap();
    }
    writeln!(src, "\n/// Every kernel module, in name order.").unwrap();
    let names: Vec<String> = kernels.iter().map(|k| k.stem.to_uppercase()).collect();
    writeln!(
        src,
        "pub const ALL: [KernelModule; {}] = [{}];",
        kernels.len(),
        names.join(", ")
    )
    .unwrap();
    fs::write(out_dir.join("kernels.rs"), src).map_err(|e| e.to_string())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
