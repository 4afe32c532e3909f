//! Unit tests of the backward's launch plans (pure: no GPU needed).

use super::*;

fn check_fits(rows: usize, cols: usize, vec: usize, plan: BwdPlan) {
    let packs = cols / vec;
    assert!(plan.parts <= MAX_PARTS, "{plan:?}");
    assert!(plan.parts * plan.rows_per_block >= rows, "{plan:?}");
    let cluster = matches!(plan.shape, BwdShape::Cluster(_));
    assert!(
        rows == 0 || cluster || (plan.parts - 1) * plan.rows_per_block < rows,
        "{plan:?}"
    );
    match plan.shape {
        BwdShape::Rows {
            p,
            threads,
            group,
            prefetch,
        } => {
            assert!(packs <= p * group as usize, "{rows}x{cols}: {plan:?}");
            assert!(threads <= bwd_bound(vec, p, prefetch), "{plan:?}");
            assert!(threads % 32 == 0, "{plan:?}");
            assert!(group == 32 || group == threads, "{plan:?}");
        }
        BwdShape::TwoPass => {}
        BwdShape::Cluster(s) => {
            assert_eq!(vec, 4, "{plan:?}");
            assert!(packs.div_ceil(s.c) <= s.p * s.threads as usize, "{plan:?}");
        }
    }
}

#[test]
fn backward_plans_fit_their_kernels() {
    let shapes = [
        (4096, 512, 4),
        (1, 1, 1),
        (5000, 40, 4),
        (7, 1025, 1),
        (3, 4096, 4),
        (2, 8192, 4),
        (2, 8192, 1),
        (2, 8193, 1),
        (3, 65536, 4),
        (1 << 20, 64, 4),
        (0, 10, 1),
    ];
    for (rows, cols, vec) in shapes {
        for clusters in [false, true] {
            let plan = bwd_plan(rows, cols, vec, 8, clusters);
            check_fits(rows, cols, vec, plan);
            match plan.shape {
                BwdShape::TwoPass => assert!(cols > 8192, "{rows}x{cols}: {plan:?}"),
                BwdShape::Cluster(_) => assert!(clusters && cols > 8192, "{plan:?}"),
                BwdShape::Rows { .. } => {}
            }
        }
        for p in PACKS_PER_LANE {
            for prefetch in [false, true] {
                for min_rows in [1, 8, 32] {
                    let forced = [
                        BwdForce::Warp {
                            p,
                            prefetch,
                            min_rows,
                        },
                        BwdForce::Block {
                            p,
                            prefetch,
                            min_rows,
                        },
                        BwdForce::TwoPass { min_rows },
                        BwdForce::Cluster {
                            c: 2 * p,
                            p,
                            clusters: min_rows,
                        },
                    ];
                    for f in forced {
                        if let Some(plan) = forced_plan(rows, cols, vec, f) {
                            check_fits(rows, cols, vec, plan);
                        }
                    }
                }
            }
        }
    }
    let mlp = bwd_plan(4096, 512, 4, 8, false);
    assert_eq!((mlp.rows_per_block, mlp.parts), (8, 512));
    assert_eq!(
        mlp.shape,
        BwdShape::Rows {
            p: 1,
            threads: 128,
            group: 128,
            prefetch: true
        }
    );
    // Rows per block (measured best on the H100): 32 at 2048 and 4096 columns, but no fewer
    // than 128 blocks.
    assert_eq!(bwd_plan(4096, 4096, 4, 8, false).rows_per_block, 32);
    assert_eq!(bwd_plan(8192, 2048, 4, 8, false).rows_per_block, 32);
    assert_eq!(bwd_plan(2048, 8192, 4, 8, false).rows_per_block, 16);
    assert_eq!(bwd_plan(16384, 1024, 4, 8, false).rows_per_block, 32);
    assert_eq!(
        bwd_plan(2048, 8192, 4, 8, false).shape,
        BwdShape::Rows {
            p: 8,
            threads: 256,
            group: 256,
            prefetch: true
        }
    );
    // Scalar 8192-column rows fit 1024 threads only without prefetch.
    assert!(matches!(
        bwd_plan(3, 8192, 1, 8, false).shape,
        BwdShape::Rows {
            p: 8,
            threads: 1024,
            prefetch: false,
            ..
        }
    ));
    let warp = bwd_plan(65536, 256, 4, 8, false);
    assert!(matches!(warp.shape, BwdShape::Rows { group: 32, .. }));
    let forced = bwd_plan(4096, 256, 4, 1, false);
    assert_eq!(
        forced.shape,
        BwdShape::Rows {
            p: 1,
            threads: 64,
            group: 64,
            prefetch: true
        }
    );
    let too_long = BwdForce::Warp {
        p: 1,
        prefetch: false,
        min_rows: 16,
    };
    assert_eq!(forced_plan(4, 160, 1, too_long), None);
    // Long float4 rows: clusters where the device has them, else two-pass.
    let long = bwd_plan(256, 65536, 4, 8, true);
    let shape = ClusterShape {
        c: 8,
        p: 4,
        threads: 512,
    };
    assert_eq!((long.shape, long.parts), (BwdShape::Cluster(shape), 12));
    assert_eq!(bwd_plan(256, 65536, 4, 8, false).shape, BwdShape::TwoPass);
    assert_eq!(bwd_plan(256, 65540, 4, 8, true).shape, BwdShape::TwoPass);
    assert_eq!(bwd_plan(2, 65536, 1, 8, true).shape, BwdShape::TwoPass);
    let few = BwdForce::Cluster {
        c: 8,
        p: 2,
        clusters: 9,
    };
    let plan = forced_plan(3, 12288, 4, few).unwrap();
    assert_eq!((plan.parts, plan.rows_per_block), (9, 1));
    assert_eq!(forced_plan(0, 12288, 4, few).unwrap().parts, 0);
    assert_eq!(forced_plan(3, 12288, 1, few), None);
}
