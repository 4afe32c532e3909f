//! `ampkit train` as a user runs it, on the CPU and the bundled data: resuming extends a run
//! (step limit, cosine horizon) and refuses contradicting flags, a dead run exits non-zero with
//! the reason, output paths and oversized models fail before the first step, and bad flag values
//! are named.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `ampkit` binary, found from this test executable's own location at run time (as in
/// tests/bench_cli.rs): `target/<profile>/deps/<test>` → `target/<profile>/ampkit`, or, for
/// executables staged for another machine, `<stage>/tests/<test>` → `<stage>/bin/ampkit`.
fn ampkit_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("a directory");
    let up = dir.parent().expect("a parent directory");
    let candidates = [up.join("ampkit"), up.join("bin").join("ampkit")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("no ampkit binary at {candidates:?}; build it with cargo build --release")
        })
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        self
    }

    /// A clean failure: exit status 1, one error line, no panic, no Rust debug dump, no epoch.
    fn failed(&self) -> &str {
        assert_eq!(self.code, Some(1), "{}\n{}", self.stdout, self.stderr);
        assert!(self.stderr.contains("ampkit: error: "), "{}", self.stderr);
        for dump in ["panicked", "Os {", "kind:", "Some(", "{ "] {
            assert!(!self.stderr.contains(dump), "{dump} in {}", self.stderr);
        }
        &self.stderr
    }
}

/// `ampkit <args>` on the CPU (train only), without a progress bar.
fn ampkit(args: &[&str]) -> Run {
    let mut cmd = Command::new(ampkit_bin());
    cmd.args(args);
    if args.first() == Some(&"train") {
        cmd.arg("--no-progress");
        if !args.contains(&"--device") {
            cmd.args(["--device", "cpu"]);
        }
    }
    let out = cmd.output().expect("ampkit runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// The metrics file's records as (step, lr).
fn metrics(path: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["lr"].as_f64().unwrap())
        })
        .collect()
}

/// The bundled split: 8,000 training samples, 125 steps of 64 per epoch.
const PER_EPOCH: u64 = 125;

#[test]
fn resuming_after_a_step_limit_trains_to_the_new_end() {
    let t = tempfile::tempdir().unwrap();
    let (ckpt, m) = (t.path().join("ckpt"), t.path().join("m.jsonl"));
    let first = ampkit(&["train", "--max-steps", "30", "--save", s(&ckpt)]);
    assert!(
        first
            .ok()
            .stdout
            .contains("global step 30, step 30 of epoch 1"),
        "{}",
        first.stdout
    );
    // The saved step limit is not carried over; repeating saved values is fine.
    let run = ampkit(&[
        "train",
        "--resume",
        s(&ckpt),
        "--epochs",
        "1",
        "--batch",
        "64",
        "--seed",
        "0",
        "--metrics",
        s(&m),
        "--save",
        s(&ckpt),
    ]);
    let out = &run.ok().stdout;
    assert!(out.contains("this run ends at step 125"), "{out}");
    assert!(out.contains("done: 95 steps"), "{out}");
    assert!(out.contains("global step 125, the end of epoch 1"), "{out}");
    let steps: Vec<u64> = metrics(&m).iter().map(|r| r.0).collect();
    assert_eq!(steps, (30..PER_EPOCH).collect::<Vec<_>>());

    // A step limit on resume is absolute: 140 is 15 steps into epoch 2.
    let run = ampkit(&[
        "train",
        "--resume",
        s(&ckpt),
        "--epochs",
        "5",
        "--max-steps",
        "140",
        "--save",
        s(&ckpt),
    ]);
    assert!(run.ok().stdout.contains("done: 15 steps"), "{}", run.stdout);
    // Nothing left to train is an error, not "done: 0 steps".
    let run = ampkit(&["train", "--resume", s(&ckpt), "--max-steps", "100"]);
    let err = run.failed();
    assert!(err.contains("nothing left to train"), "{err}");
    assert!(err.contains("at step 140"), "{err}");
}

#[test]
fn an_extended_cosine_run_keeps_decaying() {
    let t = tempfile::tempdir().unwrap();
    let (ckpt, m) = (t.path().join("ckpt"), t.path().join("m.jsonl"));
    let lr = 1e-3;
    ampkit(&[
        "train",
        "--schedule",
        "cosine",
        "--epochs",
        "1",
        "--save",
        s(&ckpt),
    ])
    .ok();
    ampkit(&[
        "train",
        "--resume",
        s(&ckpt),
        "--epochs",
        "2",
        "--metrics",
        s(&m),
    ])
    .ok();
    let records = metrics(&m);
    assert_eq!(records.len() as u64, PER_EPOCH);
    // The horizon is now 250 steps and the position the 125 real steps taken: the rate
    // continues at the middle of the new curve and decays towards 0 at its end.
    let total = 2.0 * PER_EPOCH as f64;
    for &(step, got) in &records {
        let want = lr * (1.0 + (std::f64::consts::PI * step as f64 / total).cos()) / 2.0;
        assert!(
            (got - want).abs() < 1e-12,
            "step {step}: lr {got}, want {want}"
        );
    }
    assert!((records[0].1 - lr / 2.0).abs() < 1e-12, "{:?}", records[0]);
    assert!(records.iter().all(|r| r.1 > 0.0));
}

#[test]
fn contradicting_flags_on_resume_are_named() {
    let t = tempfile::tempdir().unwrap();
    let ckpt = t.path().join("ckpt");
    ampkit(&["train", "--max-steps", "5", "--save", s(&ckpt)]).ok();
    let run = ampkit(&[
        "train",
        "--resume",
        s(&ckpt),
        "--layers",
        "784,256,10",
        "--optimizer",
        "sgd",
        "--batch",
        "64",
        "--precision",
        "fp32",
        "--seed",
        "7",
        "--loss-scale",
        "1024",
    ]);
    let err = run.failed();
    for want in [
        "--layers 784,256,10 (the checkpoint has 784,512,10)",
        "--optimizer sgd (the checkpoint has adam)",
        "--precision fp32 (the checkpoint has mixed)",
        "--seed 7 (the checkpoint has 0)",
        "--loss-scale 1024 (the checkpoint has dynamic)",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    assert!(!err.contains("--batch"), "{err}");
    assert!(!run.stdout.contains("epoch "), "{}", run.stdout);
}

#[test]
fn a_dead_run_exits_with_the_reason_and_saves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let ckpt = t.path().join("ckpt");
    let run = ampkit(&["train", "--epochs", "3", "--lr", "1e3", "--save", s(&ckpt)]);
    let err = run.failed();
    assert!(err.contains("training diverged at step"), "{err}");
    assert!(err.contains("inf/NaN"), "{err}");
    assert!(err.contains("lower the learning rate"), "{err}");
    assert!(!ckpt.exists(), "a diverged state was saved");
    assert!(!run.stdout.contains("done:"), "{}", run.stdout);
}

#[test]
fn bad_output_paths_fail_before_the_first_step() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let png_dir = dir.join("d.png");
    std::fs::create_dir(&png_dir).unwrap();
    let sub = file.join("sub");
    let missing = dir.join("missing").join("m.jsonl");
    let cases: [(&str, &Path, &str); 6] = [
        ("--plot", dir, "must end in .png"),
        ("--plot", &png_dir, "is a directory"),
        ("--metrics", dir, "is a directory"),
        ("--metrics", &missing, "does not exist"),
        ("--save", &file, "is not a directory"),
        ("--save", &sub, "is not a directory"),
    ];
    for (flag, path, want) in cases {
        let run = ampkit(&["train", "--epochs", "1", flag, s(path)]);
        let err = run.failed();
        assert!(err.contains(want), "{flag} {}: {err}", path.display());
        assert!(err.contains(s(path)), "{err}");
        assert!(!run.stdout.contains("epoch "), "{}", run.stdout);
    }
}

#[test]
fn a_model_too_large_for_memory_is_refused() {
    // 1.6·10¹² parameters: more than any host has, so the check fails everywhere.
    let run = ampkit(&["train", "--layers", "784,2000000000,10", "--epochs", "1"]);
    let err = run.failed();
    assert!(err.contains("784→2000000000→10"), "{err}");
    assert!(err.contains("GiB but the host has"), "{err}");
    assert!(err.contains("narrower layers"), "{err}");
    // Too large to even count.
    let run = ampkit(&["train", "--layers", "784,18446744073709551615,10"]);
    assert!(run.failed().contains("overflows"), "{}", run.stderr);
}

#[test]
fn bad_values_are_named() {
    let cases: [(&[&str], &str); 10] = [
        (&["--lr", "-1"], "--lr -1: must be a finite number ≥ 0"),
        (&["--lr", "-1e-3", "--schedule", "cosine"], "--lr -0.001"),
        (
            &["--schedule", "cosine", "--min-lr", "0.1"],
            "min_lr 0.1 is above the learning rate 0.001",
        ),
        (
            &["--min-lr", "0.1"],
            "--min-lr applies only with --schedule cosine",
        ),
        (
            &["--momentum", "0.9"],
            "--momentum applies only with --optimizer sgd",
        ),
        (
            &["--loss-scale", "off", "--init-scale", "8"],
            "--init-scale applies only to dynamic",
        ),
        (
            &["--augment-shift", "1000000"],
            "smaller than the 28×28 input image's side",
        ),
        (&["--epochs", "0"], "epochs must be ≥ 1"),
        (&["--layers", "784,0,10"], "entry 1 (0-based) is 0"),
        (&["--loss-scale", "-1"], "must be finite and > 0, got -1"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["train"];
        argv.extend_from_slice(args);
        let run = ampkit(&argv);
        let err = run.failed();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A negative count is clap's own parse error (status 2), not "unexpected argument".
    let run = ampkit(&["train", "--epochs", "-1"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("invalid value '-1'"), "{}", run.stderr);
}

#[test]
fn every_command_takes_the_same_device_syntax() {
    for cmd in [
        &["info", "--device"][..],
        &["bench", "--quick", "--device"][..],
    ] {
        let mut argv = cmd.to_vec();
        argv.push("tpu:0");
        let err = ampkit(&argv).failed().to_string();
        assert!(err.contains("use auto, cpu or cuda:N"), "{err}");
    }
    let run = ampkit(&["info", "--device", "cpu"]);
    assert!(run.ok().stdout.contains("not loaded"), "{}", run.stdout);
    // No such GPU (there is none here, and no machine has 100): the CLI's advice is a flag.
    for argv in [
        &["info", "--device", "cuda:99"][..],
        &["train", "--device", "cuda:99", "--epochs", "1"][..],
    ] {
        let run = ampkit(argv);
        let err = run.failed();
        assert!(err.contains("no CUDA device"), "{err}");
        assert!(err.contains("--device cpu"), "{err}");
        assert!(!err.contains("Device::cpu()"), "{err}");
    }
}

#[test]
fn clipping_and_the_overflow_locator_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m.jsonl");
    let run = ampkit(&[
        "train",
        "--max-steps",
        "3",
        "--init-scale",
        "1e30",
        "--locate-overflow",
        "--clip-grad-norm",
        "0.5",
        "--metrics",
        s(&m),
    ]);
    run.ok();
    // Each of the three steps overflows at 1e30: named, located, and logged with the reason.
    for step in 0..3 {
        let line = format!("step {step} skipped: inf/NaN gradients in 0.weight, 0.bias");
        assert!(run.stderr.contains(&line), "{}", run.stderr);
    }
    assert!(
        run.stderr.contains(
            "first inf/NaN: loss: the loss gradient (dlogits × loss scale 1e30) overflowed f16"
        ),
        "{}",
        run.stderr
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["overflow_site"]
        .as_str()
        .unwrap()
        .contains("loss gradient"));
    assert!(lines[0]["skip_reason"]
        .as_str()
        .unwrap()
        .starts_with("inf/NaN gradients"));
    // The norm of a skipped step is not finite: JSON null.
    assert!(lines[0]["grad_norm"].is_null(), "{}", lines[0]);
    // A clipped run that takes real steps logs their norms.
    let run = ampkit(&[
        "train",
        "--max-steps",
        "2",
        "--clip-grad-value",
        "0.01",
        "--metrics",
        s(&m),
    ]);
    run.ok();
    let run = ampkit(&[
        "train",
        "--max-steps",
        "2",
        "--clip-grad-norm",
        "2",
        "--metrics",
        s(&m),
    ]);
    run.ok();
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&m).unwrap().lines().next().unwrap()).unwrap();
    assert!(first["grad_norm"].as_f64().unwrap() > 0.0, "{first}");
    // Bad limits and both kinds at once are refused.
    let err = ampkit(&["train", "--clip-grad-norm", "-1"])
        .failed()
        .to_string();
    assert!(err.contains("above 0"), "{err}");
    let both = ampkit(&["train", "--clip-grad-norm", "1", "--clip-grad-value", "1"]);
    assert_ne!(both.code, Some(0));
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
}
