//! Shared test support: GPU gating, seeded randomness, bit-exact comparison.
#![allow(dead_code)]

use ampkit::check::{self, ToF64, Tolerance};
use ampkit::cuda::Gpu;
use ampkit::Error;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// The GPU for a test, or `None` after printing `skipped: no CUDA device (...)`.
///
/// With `AMPKIT_REQUIRE_GPU=1` a missing GPU fails the test instead. Any error other than "no
/// device" (a broken driver, a module that will not load) always fails. Launches are synchronised
/// so a fault names its kernel.
pub fn gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    let opened = GPU.get_or_init(|| match Gpu::new(0) {
        Ok(gpu) => {
            gpu.set_sync_launches(true);
            Ok(gpu)
        }
        Err(Error::NoCudaDevice { reason }) => Err(reason),
        Err(e) => panic!("opening the GPU failed: {e}"),
    });
    match opened {
        Ok(gpu) => Some(gpu.clone()),
        Err(reason) if std::env::var("AMPKIT_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("AMPKIT_REQUIRE_GPU=1 but there is no CUDA device: {reason}")
        }
        Err(reason) => {
            // Straight to the process's stderr: the test harness captures eprintln!, and a skip
            // must be visible in a passing run.
            let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({reason})");
            None
        }
    }
}

/// [`gpu`], if it is a Hopper (compute capability 9.0, the FP8 GEMM's only target), or `None`
/// after printing why the test is skipped.
pub fn hopper() -> Option<Arc<Gpu>> {
    let gpu = gpu()?;
    if gpu.info().compute_capability == (9, 0) {
        return Some(gpu);
    }
    eprintln!("skipped: the FP8 GEMM needs compute capability 9.0");
    None
}

/// Whether the GPU tests run instrumented: `AMPKIT_TEST_SANITIZE=1`, which `scripts/gpu-sanitize`
/// sets for every compute-sanitizer job. The GPU tests then shrink their sizes and repeat counts
/// so that the instrumented run fits the sweep's budget (racecheck costs tens of milliseconds per
/// launch, growing with the shared-memory accesses executed), while still launching every kernel
/// variant, forced launch shape, tile configuration, K-split and cluster size at least once,
/// including odd (non-multiple) sizes and special values. Unset (or anything but `1`), every test
/// runs at its full size.
pub fn sanitizing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("AMPKIT_TEST_SANITIZE").is_ok_and(|v| v == "1"))
}

/// `full` normally, `small` under [`sanitizing`].
pub fn sized<T>(full: T, small: T) -> T {
    if sanitizing() {
        small
    } else {
        full
    }
}

/// A fresh random generator per test; the seed is printed so a failure can be replayed with
/// `AMPKIT_TEST_SEED=<seed>`.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("AMPKIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        });
    eprintln!("{test}: AMPKIT_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Asserts two bit patterns agree everywhere, reporting the first few differences with `input`.
pub fn assert_bits_eq<T, I>(what: &str, got: &[T], want: &[T], input: impl Fn(usize) -> I)
where
    T: PartialEq + std::fmt::LowerHex + Copy,
    I: std::fmt::Debug,
{
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if !bad.is_empty() {
        let shown: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "[{i}] input {:?}: got {:#x}, want {:#x}",
                    input(i),
                    got[i],
                    want[i]
                )
            })
            .collect();
        panic!(
            "{what}: {} of {} elements differ:\n  {}",
            bad.len(),
            got.len(),
            shown.join("\n  ")
        );
    }
}

/// Asserts `out` matches the f64 `reference` within `tol` (see [`ampkit::check::compare`]) and
/// prints the relative error either way, so passing runs show the observed accuracy.
pub fn assert_close<T: ToF64>(what: &str, out: &[T], reference: &[f64], tol: Tolerance) {
    let report = check::compare(out, reference, tol);
    eprintln!("{what}: {report}");
    assert!(report.passed(), "{what}: {report}");
}

/// Asserts no element of `out` still holds the `poison` bit pattern.
pub fn assert_all_written<T: bytemuck::Pod>(what: &str, out: &[T], poison: T) {
    let missed = check::unwritten(out, poison);
    assert!(
        missed.is_empty(),
        "{what}: {} of {} elements never written (first {:?})",
        missed.len(),
        out.len(),
        &missed[..missed.len().min(8)]
    );
}

/// Runs `f` on a fresh rayon pool of `threads` threads: for checking that results do not depend on
/// the thread count.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("building a rayon pool")
        .install(f)
}

/// Asserts `|got − want| ≤ limit · scale` elementwise, through [`assert_close`] on the rescaled
/// values, so the report shows the worst error in units of its scale (for outputs that cancel,
/// where an error relative to the result itself says nothing).
pub fn assert_scaled<T: ToF64>(what: &str, got: &[T], want: &[f64], scale: &[f64], limit: f64) {
    assert_eq!(got.len(), scale.len(), "{what}: scale length");
    let unit = |v: f64, s: f64| if s > 0.0 { v / s } else { v };
    let got: Vec<f64> = got
        .iter()
        .zip(scale)
        .map(|(g, &s)| unit(g.to_f64(), s))
        .collect();
    let want: Vec<f64> = want.iter().zip(scale).map(|(&w, &s)| unit(w, s)).collect();
    assert_close(
        what,
        &got,
        &want,
        Tolerance::new(limit, 0.0).with_rel_l2(f64::INFINITY),
    );
}

/// Asserts `r` is [`Error::ShapeMismatch`] naming the operand `name` ("mismatch: NAME has").
pub fn assert_shape_error(r: Result<(), Error>, name: &str) {
    let e = r.unwrap_err();
    let named = e.to_string().contains(&format!("mismatch: {name} has"));
    assert!(
        matches!(e, Error::ShapeMismatch { .. }) && named,
        "{name}: {e}"
    );
}

/// Asserts `r` is [`Error::InvalidArgument`] whose message contains `what`.
pub fn assert_invalid(r: Result<(), Error>, what: &str) {
    let e = r.unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(what),
        "{what}: {e}"
    );
}

/// The bundled MNIST split (`data/`, found from `CARGO_MANIFEST_DIR` or the current directory
/// at run time), loaded once per test executable.
pub fn bundled_mnist() -> &'static ampkit::train::data::MnistSplit {
    static SPLIT: OnceLock<ampkit::train::data::MnistSplit> = OnceLock::new();
    SPLIT.get_or_init(|| {
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::current_dir().expect("current directory"));
        ampkit::train::data::load_dir(&root.join("data")).expect("the bundled data loads")
    })
}

/// The first `n` samples of a set.
pub fn subset(d: &ampkit::train::data::Dataset, n: usize) -> ampkit::train::data::Dataset {
    let size = d.image_size();
    ampkit::train::data::Dataset::new(
        d.images()[..n * size].to_vec(),
        d.labels()[..n].to_vec(),
        d.rows(),
        d.cols(),
    )
    .unwrap()
}

/// The CPU, and the GPU when there is one ([`gpu`]'s rules).
pub fn devices() -> Vec<ampkit::Device> {
    let mut d = vec![ampkit::Device::cpu()];
    if let Some(gpu) = gpu() {
        d.push(ampkit::Device::Cuda(gpu));
    }
    d
}

/// Every bit of a training state: parameters, moments, step counter, momentum flag, loss scaler
/// and FP8 scaling state (so two runs agree bit for bit exactly when these do).
pub fn state_bits(s: &ampkit::train::BackendState) -> Vec<u32> {
    let mut v: Vec<u32> = Vec::new();
    for p in &s.params {
        v.extend(p.data.iter().map(|x| x.to_bits()));
    }
    for m in s.exp_avg.iter().chain(&s.exp_avg_sq) {
        v.extend(m.iter().map(|x| x.to_bits()));
    }
    v.extend([
        s.optimizer_step as u32,
        u32::from(s.momentum_started),
        s.scaler.scale.to_bits(),
        s.scaler.growth_tracker as u32,
    ]);
    for t in &s.fp8 {
        v.extend(t.history.iter().map(|x| x.to_bits()));
        v.push(t.scale.to_bits());
    }
    v
}

/// A fresh, empty directory `ampkit-<name>-<pid>` under the system's temp directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ampkit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
