//! Build script: compiles every `kernels/*.cu` to PTX, assembles the PTX to SASS (a compressed,
//! SASS-only fatbin per module), and generates the kernel module table.
//!
//! Per module the table embeds the PTX (the driver JIT-compiles it for GPUs without matching SASS)
//! and a fatbin made by `ptxas` (one cubin per target in [`PORTABLE_SASS`], or `sm_90a` for
//! [`HOPPER_ONLY`] modules) and `fatbinary --compress-all --compress-mode=size`. Both tools are
//! taken from beside nvcc. The ptxas jobs run in parallel (`$NUM_JOBS` workers); fatbins built
//! here are cached in `OUT_DIR/sass/`, keyed by the PTX, targets, flags and ptxas version.
//!
//! Where the PTX and SASS come from, decided by `AMPKIT_PTX_SNAPSHOT`:
//! - unset / `auto`: PTX from nvcc if one is found (see [`find_nvcc`]). SASS from the committed
//!   snapshot's fatbin when the snapshot is fresh and its PTX equals the fresh PTX (so ordinary
//!   builds do not run ptxas), else built with ptxas + fatbinary, else none (a `cargo:warning`;
//!   the driver then JIT-compiles the PTX). Without nvcc, both from the committed snapshot in
//!   `kernels/ptx/` when its manifest matches the current sources, otherwise a build error that
//!   names `scripts/install-nvcc`.
//! - `use`: PTX and SASS from the committed snapshot even when nvcc exists (e.g. a newer local
//!   nvcc writes PTX that an older driver rejects). Fails if the snapshot is stale.
//! - `check`: compile with nvcc, assemble with ptxas, and fail unless the committed snapshot's PTX
//!   and fatbins equal the fresh ones (CI).
//! - `write`: compile and assemble with the 13.0 toolchain and rewrite the snapshot
//!   (`scripts/update-ptx`).
//!
//! Target architectures are fixed here, per module: portable kernels compile to `compute_80` PTX
//! (runs on Ampere and, JIT-compiled by the driver, on Hopper) plus SASS for [`PORTABLE_SASS`];
//! kernels listed in [`HOPPER_ONLY`] compile to `compute_90a` PTX plus `sm_90a` SASS.
//! `AMPKIT_PTX_ARCH` overrides the portable PTX target (e.g. `compute_90`); the snapshot is only
//! valid for the default, so with an override the SASS is built with ptxas or left out (see
//! [`sass_targets`]).
//!
//! The snapshot (`kernels/ptx/`): `<module>.ptx`, `<module>.fatbin`, and `MANIFEST` with the
//! toolchain versions, a hash of everything that determines the output ([`hash_sources`]: the
//! sources, each module's PTX and SASS targets, all flags) and a sha256 per PTX and per fatbin.
//! ptxas and fatbinary 13.0 are byte-deterministic (no paths or dates in the output); they run in
//! a fixed directory on relative file names anyway.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// PTX target for kernels that run on any GPU ampkit supports (sm_80 and newer).
const PORTABLE_ARCH: &str = "compute_80";
/// SASS targets for portable modules, assembled from their PTX. A cubin runs on its own major
/// compute capability with an equal or higher minor (sm_86 SASS on 8.6, 8.7, 8.9), so these cover
/// A100, A10/RTX 30, L4/L40/RTX 40 and H100/H200 without JIT. sm_100 and sm_120 (Blackwell) would
/// add 56% to the fatbins (0.98 MB compressed) and ptxas time for GPUs ampkit is not tested on;
/// they JIT-compile the PTX instead.
const PORTABLE_SASS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];
/// Modules (file stems) that use Hopper-only instructions (wgmma, setmaxnreg, thread-block
/// clusters, griddepcontrol): built for sm_90a. The `_pdl` modules are the training step's
/// portable modules again, with programmatic dependent launch (`kernels/pdl.cuh`).
const HOPPER_ONLY: &[&str] = &[
    "gemm_sm90",
    "gemm_sm90_bf16",
    "gemm_fp8",
    "softmax_sm90",
    "layernorm_sm90",
    "augment_pdl",
    "head_pdl",
    "unscale_pdl",
    "optim_pdl",
    "fp8_train_pdl",
];
const HOPPER_ARCH: &str = "compute_90a";
/// Flags shared by every module. No `-lineinfo`: it embeds absolute source paths in the PTX,
/// which would make the committed snapshot depend on where the repository was cloned.
const NVCC_FLAGS: &[&str] = &["-ptx", "-O3", "-std=c++17"];
/// ptxas flags for every cubin (besides `-arch=sm_XX`).
const PTXAS_FLAGS: &[&str] = &["-O3"];
/// fatbinary flags: zstd-compress the SASS images (`size` is about 25% smaller than the default
/// mode for these modules).
const FATBINARY_FLAGS: &[&str] = &["--64", "--compress-all", "--compress-mode=size"];
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
    /// Real architectures to assemble the PTX for, e.g. `sm_80`.
    sass: Vec<String>,
}

/// ptxas and fatbinary from one toolchain.
struct SassTools {
    ptxas: PathBuf,
    fatbinary: PathBuf,
    /// ptxas's release line, e.g. `release 13.0, V13.0.88`.
    version: String,
}

/// A module's SASS-only fatbin and where it came from (a [`Sass::origin`] string).
struct Sass {
    fatbin: Vec<u8>,
    origin: String,
}

/// Module (file stem) → PTX text.
type PtxByModule = BTreeMap<String, String>;
/// Module (file stem) → its SASS.
type SassByModule = BTreeMap<String, Sass>;

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
    let arch_override = env::var("AMPKIT_PTX_ARCH").ok().filter(|s| !s.is_empty());
    let portable_arch = arch_override
        .clone()
        .unwrap_or_else(|| PORTABLE_ARCH.to_string());
    let kernels = list_kernels(&kernels_dir, &portable_arch)?;
    let sources_hash = hash_sources(&kernels_dir, &kernels)?;

    let nvcc = if mode == Mode::Use {
        None
    } else {
        find_nvcc(&root)
    };
    let origin;
    let ptx: PtxByModule;
    let sass: SassByModule;
    match (mode, nvcc) {
        (Mode::Auto | Mode::Check | Mode::Write, Some(nvcc)) => {
            let version = tool_version(&nvcc)?;
            ptx = compile_all(&nvcc, &kernels_dir, &kernels, &out_dir)?;
            let tools = find_sass_tools(&nvcc)?;
            match mode {
                Mode::Write | Mode::Check => {
                    let tools = tools.ok_or_else(|| {
                        format!(
                            "AMPKIT_PTX_SNAPSHOT=check/write needs ptxas and fatbinary beside {}: \
                             run scripts/install-nvcc (or scripts/update-ptx)",
                            nvcc.display()
                        )
                    })?;
                    if mode == Mode::Write {
                        if let Some(arch) = &arch_override {
                            return Err(format!(
                                "refusing to write the snapshot with AMPKIT_PTX_ARCH={arch}: it \
                                 must hold the default targets"
                            ));
                        }
                        for (tool, v) in [(&nvcc, &version), (&tools.ptxas, &tools.version)] {
                            if !v.contains(PINNED_NVCC_RELEASE) {
                                return Err(format!(
                                    "refusing to write the snapshot with {} ({v}); it must come \
                                     from CUDA 13.0: run scripts/update-ptx, which installs and \
                                     uses it",
                                    tool.display()
                                ));
                            }
                        }
                    }
                    let all: Vec<&Kernel> = kernels.iter().collect();
                    sass = build_fatbins(&tools, &all, &ptx, &out_dir, false)?;
                    if mode == Mode::Write {
                        let snap = Snapshot {
                            kernels: &kernels,
                            ptx: &ptx,
                            sass: &sass,
                            sources_hash: &sources_hash,
                            nvcc_version: &version,
                            ptxas_version: &tools.version,
                        };
                        write_snapshot(&snapshot_dir, &snap)?;
                    } else {
                        check_snapshot(&snapshot_dir, &ptx, &sass, &sources_hash)?;
                    }
                }
                _ => {
                    let mut reused = BTreeMap::new();
                    if arch_override.is_none() {
                        match check_snapshot_ptx(&snapshot_dir, &ptx, &sources_hash) {
                            Err(stale) => println!("cargo:warning=ampkit: {}", first_line(&stale)),
                            Ok(()) => reused = snapshot_fatbins(&snapshot_dir, &kernels, &ptx),
                        }
                    }
                    let missing: Vec<&Kernel> = kernels
                        .iter()
                        .filter(|k| !reused.contains_key(&k.stem))
                        .collect();
                    let built = match (&tools, missing.is_empty()) {
                        (_, true) => BTreeMap::new(),
                        (Some(tools), false) => {
                            build_fatbins(tools, &missing, &ptx, &out_dir, true)?
                        }
                        (None, false) => {
                            println!(
                                "cargo:warning=ampkit: no ptxas/fatbinary beside {}: embedding \
                                 no SASS for {} module(s); the driver JIT-compiles their PTX on \
                                 first load (slow). Run scripts/install-nvcc for the full toolchain.",
                                nvcc.display(),
                                missing.len()
                            );
                            missing
                                .iter()
                                .map(|k| (k.stem.clone(), no_sass()))
                                .collect()
                        }
                    };
                    sass = reused.into_iter().chain(built).collect();
                }
            }
            origin = format!("nvcc ({})", version);
        }
        (Mode::Check | Mode::Write, None) => {
            return Err(
                "AMPKIT_PTX_SNAPSHOT=check/write needs nvcc 13.0: run scripts/install-nvcc \
                 (or scripts/update-ptx to rewrite the snapshot)"
                    .into(),
            )
        }
        _ => {
            (ptx, sass) = read_snapshot(&snapshot_dir, &kernels, &sources_hash).map_err(|why| {
                let lead = if mode == Mode::Use {
                    "AMPKIT_PTX_SNAPSHOT=use, but"
                } else {
                    "no nvcc found and"
                };
                format!(
                    "{lead} the committed PTX snapshot cannot be used: {why}\n\
                     Install the pinned CUDA compiler with `scripts/install-nvcc` (nvcc 13.0 from \
                     PyPI, no CUDA toolkit needed), or point $NVCC / $CUDA_HOME at one.\n\
                     If you edited kernels/, also run `scripts/update-ptx` and commit kernels/ptx/."
                )
            })?;
            origin = "committed snapshot kernels/ptx".to_string();
        }
    }

    for (stem, text) in &ptx {
        fs::write(out_dir.join(format!("{stem}.ptx")), text).map_err(|e| e.to_string())?;
    }
    for (stem, s) in &sass {
        let path = out_dir.join(format!("{stem}.fatbin"));
        if s.fatbin.is_empty() {
            // Not embedded; remove a stale copy so nothing can pick it up by mistake.
            let _ = fs::remove_file(&path);
        } else {
            fs::write(&path, &s.fatbin).map_err(|e| e.to_string())?;
        }
    }
    write_module_table(&out_dir, &kernels, &origin, &sass)
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

/// The `release …` line of `tool --version` (nvcc and ptxas print the same one).
fn tool_version(tool: &Path) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run {}: {e}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("release"))
        .map(|l| {
            l.trim()
                .trim_start_matches("Cuda compilation tools, ")
                .to_string()
        })
        .ok_or_else(|| format!("{} --version printed no release line", tool.display()))
}

/// ptxas and fatbinary from nvcc's own `bin/`, so the SASS comes from the same toolchain as the
/// PTX. `Ok(None)` when either is missing.
fn find_sass_tools(nvcc: &Path) -> Result<Option<SassTools>, String> {
    let dir = nvcc.parent().unwrap_or(Path::new("."));
    let exe = |name: &str| dir.join(format!("{name}{}", env::consts::EXE_SUFFIX));
    let (ptxas, fatbinary) = (exe("ptxas"), exe("fatbinary"));
    if !ptxas.is_file() || !fatbinary.is_file() {
        return Ok(None);
    }
    let version = tool_version(&ptxas)?;
    Ok(Some(SassTools {
        ptxas,
        fatbinary,
        version,
    }))
}

/// `sm_90a` → (90, "a"); `sm_100` → (100, "").
fn sm_number(target: &str) -> Option<(u32, &str)> {
    let rest = target.strip_prefix("sm_")?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    Some((rest[..digits].parse().ok()?, &rest[digits..]))
}

/// SASS targets for PTX of virtual architecture `arch`. Architecture-specific PTX (`compute_90a`)
/// assembles only for its own `sm_90a`. Other PTX: its own `sm_XX` plus every [`PORTABLE_SASS`]
/// target above it (ptxas cannot assemble PTX for an older target than the PTX's), so the default
/// `compute_80` gets exactly [`PORTABLE_SASS`] and an `AMPKIT_PTX_ARCH=compute_90` override gets
/// `sm_90`.
fn sass_targets(arch: &str) -> Vec<String> {
    let own = format!("sm_{}", arch.strip_prefix("compute_").unwrap_or(arch));
    let Some((n, suffix)) = sm_number(&own) else {
        return Vec::new();
    };
    if !suffix.is_empty() {
        return vec![own];
    }
    let mut targets = vec![own];
    for t in PORTABLE_SASS {
        if sm_number(t).is_some_and(|(m, _)| m > n) {
            targets.push(t.to_string());
        }
    }
    targets
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
            sass: sass_targets(arch),
        });
    }
    kernels.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(kernels)
}

/// One hash over everything that determines the PTX and the SASS: every `.cu`/`.cuh` under
/// kernels/ (not the snapshot itself), each module's PTX and SASS targets, and the nvcc, ptxas and
/// fatbinary flags.
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
    h.update(b"\0sass\0");
    for k in kernels {
        h.update(format!("{}={};", k.stem, k.sass.join(",")).as_bytes());
    }
    h.update(PTXAS_FLAGS.join(" ").as_bytes());
    h.update([0]);
    h.update(FATBINARY_FLAGS.join(" ").as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

/// Compiles all modules in parallel, one thread per file.
fn compile_all(
    nvcc: &Path,
    kernels_dir: &Path,
    kernels: &[Kernel],
    out_dir: &Path,
) -> Result<PtxByModule, String> {
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

/// Runs `job` over `items` on `$NUM_JOBS` worker threads (cargo's `-j`; else the core count),
/// taking items in order, so pass the longest first. Results come back in `items` order.
fn run_pool<T: Sync, R: Send>(
    items: &[T],
    job: impl Fn(&T) -> Result<R, String> + Sync,
) -> Result<Vec<R>, String> {
    let workers = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .clamp(1, items.len().max(1));
    let next = Mutex::new(0..items.len());
    let results: Mutex<Vec<Option<Result<R, String>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(i) = next.lock().unwrap().next() else {
                    break;
                };
                let r = job(&items[i]);
                let failed = r.is_err();
                results.lock().unwrap()[i] = Some(r);
                if failed {
                    // Stop handing out work; the first error is reported.
                    let mut next = next.lock().unwrap();
                    next.start = next.end;
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for r in results.into_inner().unwrap() {
        match r {
            Some(r) => out.push(r?),
            None => return Err("a job was skipped after another failed".into()),
        }
    }
    Ok(out)
}

fn no_sass() -> Sass {
    Sass {
        fatbin: Vec::new(),
        origin: "none".into(),
    }
}

/// Assembles each module's PTX with ptxas for each of its SASS targets (all jobs in parallel,
/// biggest PTX first), then packs each module's cubins into a compressed SASS-only fatbin.
///
/// Works in `OUT_DIR/sass/` on relative file names. With `cache`, a module whose PTX, targets,
/// flags and ptxas version equal the last build's (recorded in `<module>.key`) reuses that fatbin;
/// `check` and `write` pass `false` so the snapshot always comes from a fresh run.
fn build_fatbins(
    tools: &SassTools,
    kernels: &[&Kernel],
    ptx: &PtxByModule,
    out_dir: &Path,
    cache: bool,
) -> Result<SassByModule, String> {
    let dir = out_dir.join("sass");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let origin = format!("ptxas ({})", tools.version);
    let mut done = BTreeMap::new();
    let mut todo: Vec<(&Kernel, String)> = Vec::new();
    for &k in kernels {
        let text = &ptx[&k.stem];
        let mut h = Sha256::new();
        for part in [
            text.as_str(),
            &k.sass.join(","),
            &PTXAS_FLAGS.join(" "),
            &FATBINARY_FLAGS.join(" "),
            &tools.version,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let key = format!("{:x}", h.finalize());
        let fatbin_path = dir.join(format!("{}.fatbin", k.stem));
        if cache
            && fs::read_to_string(dir.join(format!("{}.key", k.stem))).ok() == Some(key.clone())
        {
            if let Ok(fatbin) = fs::read(&fatbin_path) {
                let origin = origin.clone();
                done.insert(k.stem.clone(), Sass { fatbin, origin });
                continue;
            }
        }
        let _ = fs::remove_file(dir.join(format!("{}.key", k.stem)));
        let input = dir.join(format!("{}.ptx", k.stem));
        fs::write(&input, text).map_err(|e| format!("{}: {e}", input.display()))?;
        todo.push((k, key));
    }
    if todo.is_empty() {
        return Ok(done);
    }

    let mut jobs: Vec<(&Kernel, &str)> = todo
        .iter()
        .flat_map(|(k, _)| k.sass.iter().map(move |t| (*k, t.as_str())))
        .collect();
    // Longest first: the PTX size is a fair proxy for ptxas time.
    jobs.sort_by_key(|(k, _)| std::cmp::Reverse(ptx[&k.stem].len()));
    run_pool(&jobs, |&(k, target)| {
        let arch = format!("-arch={target}");
        let (input, output) = (
            format!("{}.ptx", k.stem),
            format!("{}.{target}.cubin", k.stem),
        );
        let args: Vec<&str> = PTXAS_FLAGS
            .iter()
            .copied()
            .chain([arch.as_str(), input.as_str(), "-o", output.as_str()])
            .collect();
        run_tool(&tools.ptxas, &dir, &args)
    })?;

    let mut modules: Vec<&(&Kernel, String)> = todo.iter().collect();
    modules.sort_by_key(|(k, _)| std::cmp::Reverse(ptx[&k.stem].len()));
    let built = run_pool(&modules, |(k, key)| {
        let output = format!("{}.fatbin", k.stem);
        let mut args: Vec<String> = FATBINARY_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--create={output}"));
        for t in &k.sass {
            let sm = t.trim_start_matches("sm_");
            args.push(format!(
                "--image3=kind=elf,sm={sm},file={}.{t}.cubin",
                k.stem
            ));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool(&tools.fatbinary, &dir, &args)?;
        let fatbin = fs::read(dir.join(&output)).map_err(|e| format!("{output}: {e}"))?;
        fs::write(dir.join(format!("{}.key", k.stem)), key).map_err(|e| e.to_string())?;
        Ok((k.stem.clone(), fatbin))
    })?;
    for (stem, fatbin) in built {
        let origin = origin.clone();
        done.insert(stem, Sass { fatbin, origin });
    }
    Ok(done)
}

/// Runs `tool args…` in `cwd`; an error carries its output.
fn run_tool(tool: &Path, cwd: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| format!("could not run {}: {e}", tool.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} {} failed (in {}):\n{}{}",
        tool.display(),
        args.join(" "),
        cwd.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

const MANIFEST: &str = "MANIFEST";

/// What `MANIFEST` records.
struct Manifest {
    sources_hash: String,
    /// ptxas's release line, if the snapshot has fatbins.
    ptxas: Option<String>,
    /// Module → sha256 of its fatbin.
    fatbins: BTreeMap<String, String>,
}

fn read_manifest(snapshot_dir: &Path) -> Result<Manifest, String> {
    let path = snapshot_dir.join(MANIFEST);
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut sources_hash = None;
    let mut ptxas = None;
    let mut fatbins = BTreeMap::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("sources-sha256 ") {
            sources_hash = Some(h.trim().to_string());
        } else if let Some(v) = line.strip_prefix("ptxas ") {
            ptxas = Some(v.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("fatbin ") {
            let mut words = rest.split_whitespace();
            if let (Some(stem), Some(sha)) = (words.next(), words.next()) {
                fatbins.insert(stem.to_string(), sha.to_string());
            }
        }
    }
    Ok(Manifest {
        sources_hash: sources_hash
            .ok_or_else(|| format!("{} has no sources-sha256 line", path.display()))?,
        ptxas,
        fatbins,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The PTX with comment lines removed: the header comment names the exact nvcc build, which may
/// differ between two 13.0 installs that emit identical code.
fn ptx_code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

const FIX: &str = "run scripts/update-ptx and commit kernels/ptx/";

/// Fails unless the snapshot's manifest matches the sources and its PTX equals `built`.
fn check_snapshot_ptx(
    snapshot_dir: &Path,
    built: &PtxByModule,
    sources_hash: &str,
) -> Result<(), String> {
    let recorded = read_manifest(snapshot_dir)
        .map_err(|e| format!("the PTX snapshot is stale ({e}): {FIX}"))?
        .sources_hash;
    if recorded != sources_hash {
        return Err(format!(
            "the PTX snapshot in kernels/ptx/ is stale: kernels/ (or the targets or flags in \
             build.rs) changed since it was written (manifest {}…, sources {}…): {FIX}",
            &recorded[..recorded.len().min(12)],
            &sources_hash[..12]
        ));
    }
    for (stem, text) in built {
        let path = snapshot_dir.join(format!("{stem}.ptx"));
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if ptx_code(&committed) != ptx_code(text) {
            return Err(format!(
                "the PTX snapshot {} differs from what nvcc builds now: {FIX} (with the pinned \
                 nvcc 13.0)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// `check`: the PTX as in [`check_snapshot_ptx`], every fatbin byte-equal to `sass` and recorded
/// in the manifest, and no snapshot files for modules that no longer exist.
fn check_snapshot(
    snapshot_dir: &Path,
    built: &PtxByModule,
    sass: &SassByModule,
    sources_hash: &str,
) -> Result<(), String> {
    check_snapshot_ptx(snapshot_dir, built, sources_hash)?;
    let manifest = read_manifest(snapshot_dir)?;
    for (stem, s) in sass {
        let path = snapshot_dir.join(format!("{stem}.fatbin"));
        let committed = fs::read(&path).unwrap_or_default();
        if committed != s.fatbin {
            return Err(format!(
                "the SASS snapshot {} differs from what ptxas + fatbinary build now from the PTX: \
                 {FIX} (with the pinned CUDA 13.0)",
                path.display()
            ));
        }
        if manifest.fatbins.get(stem) != Some(&sha256_hex(&committed)) {
            return Err(format!(
                "kernels/ptx/MANIFEST does not record the sha256 of {}: {FIX}",
                path.display()
            ));
        }
    }
    for ext in ["ptx", "fatbin"] {
        let extra = list_snapshot_files(snapshot_dir, ext)?
            .into_iter()
            .filter(|stem| !built.contains_key(stem))
            .collect::<Vec<_>>();
        if !extra.is_empty() {
            return Err(format!(
                "kernels/ptx/ holds .{ext} files for modules with no source ({}): {FIX}",
                extra.join(", ")
            ));
        }
    }
    Ok(())
}

/// `auto` with nvcc, after [`check_snapshot_ptx`] passed: the committed fatbins whose sha256
/// matches the manifest, for the modules whose committed PTX equals the fresh PTX.
fn snapshot_fatbins(snapshot_dir: &Path, kernels: &[Kernel], built: &PtxByModule) -> SassByModule {
    let Ok(manifest) = read_manifest(snapshot_dir) else {
        return BTreeMap::new();
    };
    let origin = snapshot_sass_origin(&manifest);
    let mut reused = BTreeMap::new();
    for k in kernels {
        let committed = fs::read_to_string(snapshot_dir.join(format!("{}.ptx", k.stem)));
        if committed.map(|c| ptx_code(&c)).ok() != built.get(&k.stem).map(|t| ptx_code(t)) {
            continue;
        }
        let Ok(fatbin) = fs::read(snapshot_dir.join(format!("{}.fatbin", k.stem))) else {
            continue;
        };
        if manifest.fatbins.get(&k.stem) == Some(&sha256_hex(&fatbin)) {
            let origin = origin.clone();
            reused.insert(k.stem.clone(), Sass { fatbin, origin });
        }
    }
    reused
}

fn snapshot_sass_origin(manifest: &Manifest) -> String {
    match &manifest.ptxas {
        Some(v) => format!("committed snapshot kernels/ptx (ptxas {v})"),
        None => "committed snapshot kernels/ptx".into(),
    }
}

fn list_snapshot_files(snapshot_dir: &Path, ext: &str) -> Result<Vec<String>, String> {
    let Ok(entries) = fs::read_dir(snapshot_dir) else {
        return Ok(Vec::new());
    };
    let mut stems = Vec::new();
    for e in entries {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().and_then(|e| e.to_str()) == Some(ext) {
            stems.push(p.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    stems.sort();
    Ok(stems)
}

/// The inputs of [`write_snapshot`] besides the snapshot directory.
struct Snapshot<'a> {
    kernels: &'a [Kernel],
    ptx: &'a PtxByModule,
    sass: &'a SassByModule,
    sources_hash: &'a str,
    nvcc_version: &'a str,
    ptxas_version: &'a str,
}

fn write_snapshot(snapshot_dir: &Path, snap: &Snapshot) -> Result<(), String> {
    let built = snap.ptx;
    fs::create_dir_all(snapshot_dir).map_err(|e| e.to_string())?;
    for ext in ["ptx", "fatbin"] {
        for stem in list_snapshot_files(snapshot_dir, ext)? {
            if !built.contains_key(&stem) {
                fs::remove_file(snapshot_dir.join(format!("{stem}.{ext}")))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let mut manifest = String::from(
        "# ampkit PTX + SASS snapshot: written by scripts/update-ptx, checked by build.rs. Do not \
         edit.\n",
    );
    writeln!(manifest, "nvcc {}", snap.nvcc_version).unwrap();
    writeln!(manifest, "ptxas {}", snap.ptxas_version).unwrap();
    writeln!(manifest, "sources-sha256 {}", snap.sources_hash).unwrap();
    for (stem, text) in built {
        fs::write(snapshot_dir.join(format!("{stem}.ptx")), text).map_err(|e| e.to_string())?;
        writeln!(manifest, "module {stem} {}", sha256_hex(text.as_bytes())).unwrap();
    }
    for k in snap.kernels {
        let fatbin = &snap.sass[&k.stem].fatbin;
        fs::write(snapshot_dir.join(format!("{}.fatbin", k.stem)), fatbin)
            .map_err(|e| e.to_string())?;
        let (sha, targets) = (sha256_hex(fatbin), k.sass.join(","));
        writeln!(manifest, "fatbin {} {sha} {targets}", k.stem).unwrap();
    }
    fs::write(snapshot_dir.join(MANIFEST), manifest).map_err(|e| e.to_string())
}

fn read_snapshot(
    snapshot_dir: &Path,
    kernels: &[Kernel],
    sources_hash: &str,
) -> Result<(PtxByModule, SassByModule), String> {
    let manifest = read_manifest(snapshot_dir)?;
    if manifest.sources_hash != sources_hash {
        return Err(
            "kernels/ changed since kernels/ptx/ was written (or AMPKIT_PTX_ARCH differs from \
             the snapshot's target)"
                .into(),
        );
    }
    let origin = snapshot_sass_origin(&manifest);
    let mut ptx = BTreeMap::new();
    let mut sass = BTreeMap::new();
    for k in kernels {
        let path = snapshot_dir.join(format!("{}.ptx", k.stem));
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ptx.insert(k.stem.clone(), text);
        let path = snapshot_dir.join(format!("{}.fatbin", k.stem));
        let fatbin = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if manifest.fatbins.get(&k.stem) != Some(&sha256_hex(&fatbin)) {
            return Err(format!(
                "{} does not match the sha256 in kernels/ptx/MANIFEST (a damaged checkout, or a \
                 Git LFS pointer?)",
                path.display()
            ));
        }
        let origin = origin.clone();
        sass.insert(k.stem.clone(), Sass { fatbin, origin });
    }
    Ok((ptx, sass))
}

fn write_module_table(
    out_dir: &Path,
    kernels: &[Kernel],
    origin: &str,
    sass: &SassByModule,
) -> Result<(), String> {
    let mut src = String::from("// @generated by build.rs: one entry per kernels/*.cu.\n\n");
    writeln!(
        src,
        "/// Where the embedded PTX came from: the nvcc that built it, or the committed snapshot."
    )
    .unwrap();
    writeln!(src, "pub const PTX_ORIGIN: &str = {origin:?};\n").unwrap();
    let origins: BTreeSet<&str> = kernels
        .iter()
        .map(|k| sass.get(&k.stem).map_or("none", |s| s.origin.as_str()))
        .collect();
    let sass_origin = origins.into_iter().collect::<Vec<_>>().join(" + ");
    writeln!(
        src,
        "/// Where the embedded SASS ([`KernelModule::fatbin`]) came from: `\"ptxas (<version>)\"`, \
         `\"committed snapshot kernels/ptx (ptxas <version>)\"`, or `\"none\"` (every module's \
         PTX is JIT-compiled); several joined by ` + ` when modules differ."
    )
    .unwrap();
    writeln!(src, "pub const SASS_ORIGIN: &str = {sass_origin:?};\n").unwrap();
    // The bytes live in statics that the module constants point to: a constant holding the
    // bytes themselves would be copied into every codegen unit that uses it (2-4 copies of
    // each module per executable).
    for (i, k) in kernels.iter().enumerate() {
        let upper = k.stem.to_uppercase();
        let ptx_len = fs::metadata(out_dir.join(format!("{}.ptx", k.stem)))
            .map_err(|e| e.to_string())?
            .len();
        writeln!(
            src,
            "static {upper}_PTX: [u8; {ptx_len}] = \
             *include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{}.ptx\"));",
            k.stem
        )
        .unwrap();
        let has_sass = sass.get(&k.stem).is_some_and(|s| !s.fatbin.is_empty());
        let (fatbin, targets) = if has_sass {
            let len = fs::metadata(out_dir.join(format!("{}.fatbin", k.stem)))
                .map_err(|e| e.to_string())?
                .len();
            writeln!(
                src,
                "static {upper}_FATBIN: Aligned<[u8; {len}]> = \
                 Aligned(*include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{}.fatbin\")));",
                k.stem
            )
            .unwrap();
            (format!("&{upper}_FATBIN.0"), format!("{:?}", k.sass))
        } else {
            ("&[]".to_string(), "[]".to_string())
        };
        writeln!(src, "/// PTX module compiled from `kernels/{}.cu`.", k.stem).unwrap();
        writeln!(
            src,
            "pub(crate) const {upper}: KernelModule = KernelModule {{ index: {i}, name: {:?}, arch: {:?}, \
             ptx: ptx_text(&{upper}_PTX), fatbin: {fatbin}, sass: &{targets} }};",
            k.stem, k.arch
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
