//! GPU LayerNorm on thread-block clusters (`kernels/layernorm_sm90.cu`, compute capability 9.0)
//! against the CPU reference run in f64, with the tolerance harness of `layernorm_gpu`: the
//! default plan for float4 rows of 8196-131 072 columns (clusters, or the portable kernels past the
//! instances), every forced cluster instance (2, 4, 8 blocks × 2, 4, 8 packs per thread) and
//! backward cluster counts of 1 to more than the rows, on 1, 3, 37 and 256 rows; special values;
//! run-to-run bit-identical results; the default plan taking the cluster path; typed errors.
//!
//! Without a GPU every test prints `skipped: no CUDA device`; on a GPU other than compute
//! capability 9.0 the cluster cases print `skipped: ...` and only check that forcing a cluster
//! path is a typed error.
//!
//! Under `AMPKIT_TEST_SANITIZE=1` (compute-sanitizer) the many-row cases shrink (256 → 24 or 20
//! rows of 65 536, 37 → 13 rows of 16 384): every instance and the row loops of the backward's
//! clusters still run.

mod common;
mod layernorm_support;

use ampkit::cuda::Gpu;
use ampkit::tuning::layernorm::{backward_forced, forward_forced, BwdForce, FwdForce};
use ampkit::Error;
use common::{gpu, rng, sized};
use layernorm_support::*;
use std::io::Write;
use std::sync::Arc;

/// The GPU if it runs the cluster kernels; otherwise prints why not and checks that a forced
/// cluster path is refused before any launch.
fn hopper() -> Option<Arc<Gpu>> {
    let gpu = gpu()?;
    let (major, minor) = gpu.info().compute_capability;
    if (major, minor) == (9, 0) {
        return Some(gpu);
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped: the cluster kernels need compute capability 9.0 (this GPU is {major}.{minor})"
    );
    let e = forced_errors(&gpu, FwdForce::Cluster { c: 2, p: 4 });
    assert!(e.to_string().contains("compute capability 9.0"), "{e}");
    None
}

/// Packs of 4 floats per thread and threads of an instance, as the host computes them; `None` if
/// the row does not fit the launch bound (forward: 1024 threads up to 4 packs, 512 at 8;
/// backward: 512 at 2 packs, 256 at 4 and 8).
fn threads(cols: usize, c: usize, p: usize, fwd: bool) -> Option<usize> {
    let t = (cols / 4)
        .div_ceil(c)
        .div_ceil(p)
        .next_multiple_of(32)
        .max(32);
    let bound = match (fwd, p) {
        (true, 8) => 512,
        (true, _) => 1024,
        (false, 2) => 512,
        (false, _) => 256,
    };
    (t <= bound).then_some(t)
}

const SIZES: [usize; 3] = [2, 4, 8];

/// The default plans (clusters where they fit, the portable kernels elsewhere) on odd row counts
/// and the column counts around the instances' limits.
#[test]
fn the_default_plan_matches_the_f64_reference() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu layernorm cluster default");
    for (rows, cols) in [
        (1, 8196),
        (3, 8196),
        (1, 65536),
        (37, 16384),
        (5, 32768),
        (3, 65540),  // forward c8 p8; backward two-pass (past the backward instances)
        (2, 131072), // forward c8 p8 at 512 threads; backward two-pass
        (2, 131076), // both portable
        sized((256, 65536), (24, 65536)),
    ] {
        let c = case(&mut rng, rows, cols);
        check_out(
            "default",
            &run_gpu(&gpu, &c, 0, Bwd::Default),
            &reference(&c),
        );
    }
    // Unaligned views take the portable scalar kernels.
    check_case(&gpu, &case(&mut rng, 3, 65536), 1, Bwd::Default);
}

/// Every forward instance and every backward instance with 1, a few, and more clusters than rows
/// (clusters without rows write zero partial rows).
#[test]
fn every_forced_cluster_shape_matches_the_f64_reference() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu layernorm cluster forced");
    let mut checked = 0;
    // 12288 columns: the portable forward caches exactly 48 KB of the row.
    let some = sized(37, 13);
    for (rows, cols) in [(3, 8196), (some, 16384), (2, 65540), (1, 65536), (2, 12288)] {
        let c = case(&mut rng, rows, cols);
        let want = reference(&c);
        for cs in SIZES {
            for p in SIZES {
                if threads(cols, cs, p, true).is_some() {
                    let f = FwdForce::Cluster { c: cs, p };
                    let got = run_gpu_with(&gpu, &c, 0, Some(f), Bwd::Default);
                    check_out(&format!("{f:?}"), &got, &want);
                    checked += 1;
                }
                if threads(cols, cs, p, false).is_none() {
                    continue;
                }
                for clusters in [1, 5, rows + 3] {
                    let b = Bwd::Forced(BwdForce::Cluster { c: cs, p, clusters });
                    let got = run_gpu_with(&gpu, &c, 0, Some(FwdForce::Portable), b);
                    check_out(&format!("{b:?}"), &got, &want);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} shapes ran");
    // The benchmark's shape with other cluster counts than the default 12 (sanitizing: 20 rows,
    // so 7 and 16 clusters take 1-3 rows each and 32 leave some without).
    let c = case(&mut rng, sized(256, 20), 65536);
    let want = reference(&c);
    for clusters in [7, 16, 32] {
        let b = Bwd::Forced(BwdForce::Cluster {
            c: 8,
            p: 8,
            clusters,
        });
        check_out(&format!("{b:?}"), &run_gpu(&gpu, &c, 0, b), &want);
    }
}

/// NaN, ±inf, −0.0, subnormal and overflowing rows through the cluster paths.
#[test]
fn special_values_behave_like_the_f32_reference() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu layernorm cluster specials");
    for cols in [8196, 16384, 65536] {
        check_specials(&gpu, &mut rng, cols, None, Bwd::Default);
    }
    let fwd = Some(FwdForce::Cluster { c: 8, p: 2 });
    let bwd = Bwd::Forced(BwdForce::Cluster {
        c: 4,
        p: 4,
        clusters: 3,
    });
    check_specials(&gpu, &mut rng, 12288, fwd, bwd);
}

/// Bit-identical reruns (another shape's backward reuses the scratch in between), and the default
/// plan is the cluster plan: the same bits as the forced cluster instance the host's rule picks,
/// other bits than the portable paths (different reduction trees round differently somewhere in
/// millions of outputs).
#[test]
fn results_are_reproducible_and_the_default_takes_the_cluster_path() {
    let Some(gpu) = hopper() else { return };
    let mut rng = rng("gpu layernorm cluster reproducible");
    // (rows, cols, forward instance, backward instance and clusters) of the default plan: 12
    // clusters of 8 for 256 rows (sanitizing: 24 rows, 4 per cluster, so 6 clusters).
    let (many, clusters) = sized((256, 12), (24, 6));
    for (rows, cols, fwd, bwd) in [
        (many, 65536, (8, 4), (8, 4, clusters)),
        (37, 16384, (2, 4), (2, 4, 10)),
        (3, 32768, (4, 4), (4, 4, 1)),
    ] {
        let c = case(&mut rng, rows, cols);
        let first = run_gpu(&gpu, &c, 0, Bwd::Default);
        run_gpu(&gpu, &case(&mut rng, 77, 20000), 0, Bwd::Default);
        let again = run_gpu(&gpu, &c, 0, Bwd::Default);
        assert!(first.bits() == again.bits(), "{rows}x{cols}: other bits");
        let (cf, pf) = fwd;
        let (cb, pb, clusters) = bwd;
        let forced = run_gpu_with(
            &gpu,
            &c,
            0,
            Some(FwdForce::Cluster { c: cf, p: pf }),
            Bwd::Forced(BwdForce::Cluster {
                c: cb,
                p: pb,
                clusters,
            }),
        );
        assert!(
            first.y == forced.y && first.mean == forced.mean,
            "{rows}x{cols} fwd"
        );
        assert!(
            first.dx == forced.dx && first.dgamma == forced.dgamma,
            "{rows}x{cols} bwd"
        );
        if rows == many {
            let two_pass = Bwd::Forced(BwdForce::TwoPass { min_rows: 16 });
            let portable = run_gpu_with(&gpu, &c, 0, Some(FwdForce::Portable), two_pass);
            assert!(
                first.y != portable.y,
                "the default forward ran the portable kernel"
            );
            assert!(
                first.dgamma != portable.dgamma,
                "the default backward ran two-pass"
            );
        }
    }
}

/// Runs `forward_forced` and a cluster `backward_forced` that must fail on a 2×8196 case; checks
/// that nothing was written and returns the forward's error.
fn forced_errors(gpu: &Gpu, fwd: FwdForce) -> Error {
    let (rows, cols) = (2, 8196);
    let up = |n: usize| gpu.upload(&vec![poison(); n]).unwrap();
    let (x, gamma) = (up(rows * cols), up(cols));
    let (mut y, mut mean, mut rstd) = (up(rows * cols), up(rows), up(rows));
    let e = forward_forced(
        gpu, &x, rows, cols, &gamma, &gamma, EPS, &mut y, &mut mean, &mut rstd, fwd,
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let bwd = match fwd {
        FwdForce::Cluster { c, p } => BwdForce::Cluster { c, p, clusters: 1 },
        FwdForce::Portable => unreachable!(),
    };
    let (mut dx, mut dg, mut db) = (up(rows * cols), up(cols), up(cols));
    let inputs = (&x, &x, &mean, &rstd, &gamma);
    let eb = backward_forced(gpu, inputs, rows, cols, &mut dx, &mut dg, &mut db, bwd);
    assert!(matches!(eb, Err(Error::InvalidArgument { .. })), "{eb:?}");
    assert!(untouched(gpu, &[&y, &mean, &rstd, &dx, &dg, &db]));
    e
}

/// Instances that do not exist or that the row does not fit, and unaligned views, are typed
/// errors before any launch.
#[test]
fn cluster_shapes_the_row_does_not_fit_are_typed_errors() {
    let Some(gpu) = hopper() else { return };
    for (c, p) in [(3, 4), (16, 4), (2, 1), (2, 16)] {
        forced_errors(&gpu, FwdForce::Cluster { c, p });
    }
    // 8196 columns: 2049 packs; c2 p2 needs 544 threads (backward bound 512, forward fits).
    let e = backward_forced_error(
        &gpu,
        2,
        8196,
        0,
        BwdForce::Cluster {
            c: 2,
            p: 2,
            clusters: 1,
        },
    );
    assert!(e.to_string().contains("does not fit"), "{e}");
    for clusters in [0, 513] {
        let f = BwdForce::Cluster {
            c: 8,
            p: 8,
            clusters,
        };
        backward_forced_error(&gpu, 2, 8196, 0, f);
    }
    // Unaligned (offset 1) and cols % 4 != 0.
    backward_forced_error(
        &gpu,
        2,
        8196,
        1,
        BwdForce::Cluster {
            c: 8,
            p: 8,
            clusters: 1,
        },
    );
    backward_forced_error(
        &gpu,
        2,
        8197,
        0,
        BwdForce::Cluster {
            c: 8,
            p: 8,
            clusters: 1,
        },
    );
}

fn backward_forced_error(gpu: &Gpu, rows: usize, cols: usize, o: usize, f: BwdForce) -> Error {
    let up = |n: usize| upload_at(gpu, &vec![poison(); n], o);
    let (x, gamma, stats) = (up(rows * cols), up(cols), up(rows));
    let (mut dx, mut dg, mut db) = (up(rows * cols), up(cols), up(cols));
    let (xv, gv, sv) = (x.slice(o..), gamma.slice(o..), stats.slice(o..));
    let inputs = (&xv, &xv, &sv, &sv, &gv);
    let (mut dxv, mut dgv, mut dbv) = (dx.slice_mut(o..), dg.slice_mut(o..), db.slice_mut(o..));
    let e = backward_forced(gpu, inputs, rows, cols, &mut dxv, &mut dgv, &mut dbv, f).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{f:?}: {e}");
    assert!(untouched(gpu, &[&dx, &dg, &db]), "{f:?} wrote");
    e
}
