//! `ampkit bench` on the CPU path (no GPU needed), the binary end to end: table, JSON, roofline,
//! bad flags. The rows themselves are tested inside the binary (`bench::cpu`'s unit tests).

use std::process::Command;

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
