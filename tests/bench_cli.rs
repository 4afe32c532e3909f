//! `ampkit bench` on the CPU path (no GPU needed): the library run with quick settings and a
//! narrow filter, and the binary end to end (table, JSON, roofline, bad flags).

use ampkit::bench::{self, report::COLUMNS, Kind, Options};
use ampkit::Device;
use std::process::Command;

fn quick(only: &str) -> Options {
    Options {
        quick: true,
        only: Some(only.into()),
        progress: false,
    }
}

#[test]
fn cpu_run_keeps_the_ceiling_and_the_selected_rows() {
    let report = bench::run(&Device::cpu(), &quick("softmax fwd")).unwrap();
    let kinds: Vec<Kind> = report.rows.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::Ceiling, Kind::Mem], "{:?}", report.rows);
    assert_eq!(report.rows[0].name, "copy host");
    assert_eq!(report.rows[1].name, "softmax fwd");
    assert_eq!(report.rows[1].shape, "MLP 4096x512");
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    let copy = report.ceilings.copy_gbs.expect("a host copy ceiling");
    assert!(copy > 0.0 && copy.is_finite());
    assert_eq!(report.ceilings.cublas_f16_8192_tflops, None);
    let row = &report.rows[1];
    assert_eq!(row.unit, "GB/s");
    assert!(row.median_us.unwrap() > 0.0 && row.rate.unwrap() > 0.0);
    assert!(row.pct_ceiling.is_some() && row.vs_cublas.is_none());
    // Against a host copy of the same bytes, timed like the row; the ceiling row has none.
    let pct = row
        .pct_copy_same_bytes
        .expect("% copy same bytes on a mem row");
    assert!(pct > 0.0 && pct.is_finite(), "{pct}");
    assert_eq!(report.rows[0].pct_copy_same_bytes, None);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("% copy same bytes = ")),
        "{:?}",
        report.notes
    );

    let text = report.text();
    assert!(text.starts_with("card:   CPU: "), "{text}");
    let table: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    let head: Vec<&str> = table[0]
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(head, COLUMNS);
    assert_eq!(table.len(), 2 + report.rows.len());
}

#[test]
fn cpu_gemm_and_train_rows() {
    let report = bench::run(&Device::cpu(), &quick("fwd2")).unwrap();
    let gemm = report.rows.iter().find(|r| r.kind == Kind::Gemm).unwrap();
    assert_eq!(gemm.name, "mlp fwd2 1024x10x512");
    assert_eq!(gemm.shape, "[1024x512]@[10x512]^T");
    assert_eq!(gemm.unit, "GFLOP/s");
    assert!(gemm.rate.unwrap() > 0.0 && gemm.vs_cublas.is_none());

    let report = bench::run(&Device::cpu(), &quick("train")).unwrap();
    let train = report.rows.iter().find(|r| r.kind == Kind::Train).unwrap();
    assert_eq!(train.name, "mlp 784-512-10 b256");
    assert_eq!(train.shape, "784-512-10 x256");
    assert!(train.error.is_none() && train.rate.unwrap() > 0.0);
}

/// The `ampkit` binary, found from this test executable's own location at run time:
/// `target/<profile>/deps/<test>` → `target/<profile>/ampkit`, or, for executables staged for
/// another machine, `<stage>/tests/<test>` → `<stage>/bin/ampkit`.
fn ampkit_bin() -> std::path::PathBuf {
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

#[test]
fn binary_writes_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (json, png) = (
        dir.path().join("bench.json"),
        dir.path().join("roofline.png"),
    );
    let out = Command::new(ampkit_bin())
        .args(["bench", "--device", "cpu", "--quick", "--no-progress"])
        .args(["--only", "xent fwd+bwd f16 MNIST"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&png)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["card:", "driver:", "ampkit:", "date:"] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert!(stdout.contains("| kind    | name "), "{stdout}");
    assert!(
        stdout.contains("xent fwd+bwd f16 | MNIST 4096x10"),
        "{stdout}"
    );

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    for k in ["card", "driver", "ampkit", "date", "ceilings", "rows"] {
        assert!(doc.get(k).is_some(), "{k} missing");
    }
    assert!(doc["ceilings"]["copy_gbs"].as_f64().unwrap() > 0.0);
    assert!(doc["ceilings"]["cublas_f16_8192_tflops"].is_null());
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for k in [
            "kind",
            "name",
            "shape",
            "median_us",
            "rate",
            "unit",
            "pct_ceiling",
            "vs_cublas",
            "pct_copy_same_bytes",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
    assert_eq!(rows[1]["kind"], "mem");
    assert_eq!(rows[1]["unit"], "GB/s");
    assert!(rows[1]["vs_cublas"].is_null());
    assert!(rows[1]["pct_copy_same_bytes"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["pct_copy_same_bytes"].is_null());
    assert!(stdout.contains("| % copy same bytes |"), "{stdout}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
}

#[test]
fn binary_rejects_bad_flags_without_panicking() {
    let run = |args: &[&str]| {
        Command::new(ampkit_bin())
            .args(["bench", "--quick", "--no-progress"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--device", "tpu:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use auto, cpu or cuda:N"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run(&[
        "--device",
        "cpu",
        "--only",
        "no such row",
        "--json",
        "/nonexistent-dir/x/bench.json",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
