//! Crashes during a save: a save cut off after each of its file-system steps in turn (a test
//! seam of `checkpoint::save`) leaves the last committed checkpoint loadable, never a mix of two
//! saves, and the next save removes the leftovers.

mod checkpoint_support;
mod common;

use ampkit::train::checkpoint;
use ampkit::Error;
use checkpoint_support::*;

/// A first save into an empty directory, cut off after each of its file-system steps in turn:
/// every cut leaves either "no checkpoint yet" (a typed error, from `load` and `load_model`) or,
/// once the manifest is renamed into place, the complete checkpoint. The next save removes the
/// leftovers; a load never does.
#[test]
fn a_first_save_cut_at_every_step_leaves_no_checkpoint_or_the_whole_one() {
    let mut rng = common::rng("first save cut");
    let a = Save::at_any_step(&mut rng, 1);
    let (mut cuts, mut empty) = (0, 0);
    for n in 0.. {
        let root = temp();
        let dir = root.path().join("ckpt");
        let done =
            checkpoint::save_cut_after(&dir, &a.cfg, &a.progress, &a.state, Some(&a.data), Some(n))
                .unwrap();
        let before = tree(&dir);
        match checkpoint::load(&dir) {
            Err(Error::NoCheckpoint { path, detail }) => {
                assert_eq!(path, dir.display().to_string());
                assert!(!detail.is_empty());
                assert!(
                    matches!(
                        checkpoint::load_model(&dir),
                        Err(Error::NoCheckpoint { .. })
                    ),
                    "load_model after {n} steps"
                );
                assert!(
                    empty == cuts,
                    "no checkpoint after {n} steps, following a commit"
                );
                empty += 1;
            }
            Ok(got) => {
                assert!(
                    a.is(&got),
                    "after {n} steps: a checkpoint that is not the save"
                );
                assert_eq!(checkpoint::load_model(&dir).unwrap().params, a.state.params);
            }
            Err(e) => panic!("after {n} steps: {e}"),
        }
        assert_eq!(
            tree(&dir),
            before,
            "a load changed the directory (after {n} steps)"
        );
        if done {
            assert_one_generation(&dir);
            break;
        }
        cuts += 1;
        a.save(&dir);
        assert!(a.is(&checkpoint::load(&dir).unwrap()));
        assert_one_generation(&dir);
    }
    eprintln!("{cuts} cut points, {empty} of them before the commit");
    assert!(
        cuts >= 15 && empty >= 10 && empty < cuts,
        "{cuts} cuts, {empty} empty"
    );
}

/// Run B saving over run A's checkpoint (same global step, as when two runs share a directory),
/// cut off after each step in turn: every cut loads exactly A until B's manifest is in place,
/// and exactly B from then on, never a mix; after B completes (or the next save), one generation
/// is left.
#[test]
fn run_b_cut_at_every_step_over_run_a_loads_a_or_b_never_a_mix() {
    let mut rng = common::rng("B over A");
    let progress = some_progress(&mut rng);
    let a = Save::random(&mut rng, 1, progress);
    let b = Save::random(&mut rng, 2, progress);
    let mut ids = Vec::new();
    let mut committed_after = None;
    for n in 0.. {
        let root = temp();
        let dir = root.path();
        a.save(dir);
        let done =
            checkpoint::save_cut_after(dir, &b.cfg, &b.progress, &b.state, Some(&b.data), Some(n))
                .unwrap();
        let before = tree(dir);
        let got = checkpoint::load(dir).unwrap_or_else(|e| panic!("after {n} steps: {e}"));
        assert_eq!(
            tree(dir),
            before,
            "a load changed the directory (after {n} steps)"
        );
        let model = checkpoint::load_model(dir).unwrap();
        assert_eq!((&model.params, &model.id), (&got.state.params, &got.id));
        if a.is(&got) {
            assert!(
                committed_after.is_none(),
                "A again after B was committed ({n} steps)"
            );
        } else {
            assert!(b.is(&got), "after {n} steps: neither A nor B");
            committed_after.get_or_insert(n);
        }
        if !ids.contains(&got.id) {
            ids.push(got.id.clone());
        }
        if done {
            assert_one_generation(dir);
            eprintln!("{n} steps in a save; B committed after {committed_after:?}");
            assert!(n >= 15, "{n} steps");
            break;
        }
        b.save(dir);
        assert!(b.is(&checkpoint::load(dir).unwrap()));
        assert_one_generation(dir);
    }
    assert!(committed_after.is_some());
    assert_eq!(ids.len(), 2, "A's and B's ids: {ids:?}");
    assert!(ids
        .iter()
        .all(|id| id.as_ref().is_some_and(|s| s.len() == 64)));
}
