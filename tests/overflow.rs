//! The overflow locator and the scaler's warnings end to end, on the CPU and the GPU: a model
//! whose layer-2 weight makes the backward pass overflow f16 in a known op. The unscale's
//! per-tensor flags must name the gradients that held inf/NaN (layer 0's, not layer 2's), the
//! replay of each skipped step must name the op (the dgrad of Linear 2, whose f16 output
//! rounds past 65504), the metrics file must say why each skipped step was skipped, and the
//! early-overflow warning must count the skips.

mod common;

use ampkit::amp::NonFinite;
use ampkit::train::locate::Pass;
use ampkit::train::overflow::ScalerWarning;
use ampkit::train::trainer::{self, Outputs};
use ampkit::train::{open_backend, Backend, Progress, TrainConfig};

/// Hidden unit whose outgoing weight to class 0 is made huge.
const UNIT: usize = 37;

/// Makes the backward pass overflow in the dgrad of the last layer and nowhere before it: the
/// hidden unit `UNIT` is always active (bias 1) and feeds class 0 with weight 3000. The forward
/// stays finite (logit 0 is a few thousand, within f16), the softmax saturates on class 0, so
/// every sample of another class has dlogit_0 ≈ scale / batch (1024 at 65536 / 64), and the
/// hidden gradient dlogit_0 · 3000 ≈ 3e6 rounds to inf in f16. Layer 2's own gradients are
/// products of the finite dlogits and activations: finite.
fn poison(backend: &mut dyn Backend) {
    let mut state = backend.export().unwrap();
    for p in &mut state.params {
        match p.name.as_str() {
            "2.weight" => p.data[UNIT] = 3000.0, // row 0 (class 0), column UNIT
            "0.bias" => p.data[UNIT] = 1.0,
            _ => {}
        }
    }
    backend.import(&state).unwrap();
}

#[test]
fn the_locator_names_the_op_and_the_gradients() {
    let split = common::bundled_mnist();
    let (train, test) = (
        common::subset(&split.train, 640),
        common::subset(&split.test, 200),
    );
    let dir = tempfile::tempdir().unwrap();
    for device in common::devices() {
        let cfg = TrainConfig {
            epochs: 1,
            batch: 64,
            ..TrainConfig::mnist_default()
        };
        let names: Vec<String> = (cfg.model.parameter_specs().into_iter())
            .map(|s| s.name)
            .collect();
        let mut backend = open_backend(&device, &cfg).unwrap();
        poison(backend.as_mut());
        let metrics = dir
            .path()
            .join(format!("m-{}.jsonl", device.gpu().is_some()));
        let out = Outputs {
            locate_overflow: true,
            metrics: Some(metrics.clone()),
            ..Outputs::default()
        };
        let s = trainer::run(
            backend.as_mut(),
            &cfg,
            &train,
            &test,
            Progress::default(),
            &out,
        )
        .unwrap();
        let on = backend.device();
        let skipped: Vec<u64> = (s.steps.iter())
            .filter(|(_, r)| r.skipped)
            .map(|(i, _)| *i)
            .collect();
        eprintln!("{on}: skipped {skipped:?}");
        // 3000 · 65536 / 64 ≈ 3e6: about six halvings until the gradient fits f16.
        assert!((4..=8).contains(&skipped.len()), "{on}: {skipped:?}");
        assert_eq!(skipped[0], 0, "{on}: the first step overflows");
        for (i, r) in &s.steps {
            if r.skipped {
                assert_eq!(r.nonfinite, NonFinite(0b11), "{on}: step {i}");
                assert_eq!(r.nonfinite.names(&names), ["0.weight", "0.bias"]);
            } else {
                assert!(r.nonfinite.is_empty(), "{on}: step {i}: {}", r.nonfinite);
            }
        }
        // One replay per skipped step, each naming the dgrad of the last layer.
        let located: Vec<u64> = s.overflow_sites.iter().map(|(i, _)| *i).collect();
        assert_eq!(located, skipped, "{on}");
        for (i, site) in &s.overflow_sites {
            let site = site
                .as_ref()
                .unwrap_or_else(|| panic!("{on}: step {i} not located"));
            assert_eq!(site.pass, Pass::Backward, "{on}: {site}");
            assert!(site.op.starts_with("dgrad of Linear 2"), "{on}: {site}");
            assert_eq!(site.dtype, "f16");
            assert!(site.max_abs.is_some_and(|m| m > 65504.0), "{on}: {site}");
        }
        let first = s.overflow_sites[0].1.as_ref().unwrap().to_string();
        assert!(
            first.starts_with("backward: dgrad of Linear 2 (its input's gradient) overflowed f16"),
            "{first}"
        );
        // The warning for a run whose first steps overflow counts them.
        let early = s.warnings.iter().find_map(|(_, w)| match w {
            ScalerWarning::EarlyOverflow { skipped, .. } => Some(*skipped),
            _ => None,
        });
        let opening = skipped
            .iter()
            .enumerate()
            .take_while(|&(i, &s)| s == i as u64);
        assert_eq!(
            early,
            Some(opening.count() as u64),
            "{on}: {:?}",
            s.warnings
        );
        // The epoch's tally and the metrics lines.
        let epoch = &s.epochs[0];
        assert_eq!(
            epoch.overflows,
            [
                ("0.weight".to_string(), skipped.len() as u64),
                ("0.bias".to_string(), skipped.len() as u64)
            ]
        );
        let text = std::fs::read_to_string(&metrics).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = &lines[0];
        assert_eq!(
            first["skip_reason"],
            "inf/NaN gradients in 0.weight, 0.bias at loss scale 65536"
        );
        assert_eq!(
            first["nonfinite"],
            serde_json::json!(["0.weight", "0.bias"])
        );
        let site = first["overflow_site"].as_str().unwrap();
        assert!(site.contains("dgrad of Linear 2"), "{site}");
        let clean = lines.iter().find(|l| l["skipped"] == false).unwrap();
        assert!(clean.get("skip_reason").is_none(), "{clean}");
    }
}
