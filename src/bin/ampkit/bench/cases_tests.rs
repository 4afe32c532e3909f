//! Tests of the case table (`cases.rs`). They live beside it rather than in it because the
//! criterion benches include `cases.rs` itself, and must not compile these.

use super::cases::{Cases, GemmCase, CASES_JSON};
use ampkit::cpu::fp8::Fp8Format;
use ampkit::shape::Layout;

#[test]
fn the_built_in_table_parses_with_the_cpu_selection_resolved() {
    let c = Cases::embedded().unwrap();
    let first = &c.gemm[0];
    assert_eq!(
        (first.name.as_str(), first.layout),
        ("8192^3", Layout::Forward)
    );
    assert_eq!(
        (first.m, first.n, first.k, first.f32_out),
        (8192, 8192, 8192, false)
    );
    let wgrad = c.gemm.iter().find(|g| g.layout == Layout::Wgrad).unwrap();
    assert!(wgrad.f32_out && wgrad.row_name().ends_with(" (f32 out)"));
    assert_eq!(c.cpu.layernorm[0], c.layernorm[0]);
    assert_eq!(c.cpu.xent.len(), 2);
    assert!(c.cpu.train.iter().all(|t| c.train.contains(t)));
    assert!(c.cpu.adam.iter().all(|a| c.adam.contains(a)));
    // The MLP's parameters, 784·512 + 512 + 512·10 + 10.
    let mlp: usize = c.cpu.adam[0].tensors.iter().sum();
    assert_eq!(mlp, 407_050);
}

#[test]
fn gemm_cases_know_their_operands() {
    let case = |layout, f32_out| GemmCase {
        name: "x".into(),
        layout,
        m: 2,
        n: 3,
        k: 5,
        f32_out,
        bf16: false,
        fp8: None,
    };
    assert_eq!(case(Layout::Forward, false).operand_lens(), (10, 15));
    assert_eq!(case(Layout::Wgrad, false).operand_lens(), (10, 15));
    assert_eq!(
        case(Layout::Forward, false).bytes(),
        (2 * 25 + 2 * 6) as f64
    );
    assert_eq!(case(Layout::Dgrad, true).bytes(), (2 * 25 + 4 * 6) as f64);
    assert_eq!(case(Layout::Dgrad, true).shape().layout, Layout::Dgrad);
    let fp8 = GemmCase {
        fp8: Some("e5m2xe4m3".into()),
        ..case(Layout::Forward, false)
    };
    assert_eq!(fp8.bytes(), (25 + 2 * 6) as f64);
    assert_eq!(
        fp8.fp8_formats().unwrap(),
        Some((Fp8Format::E5M2, Fp8Format::E4M3))
    );
}

#[test]
fn the_fp8_cases_are_tn_problems_with_formats() {
    let c = Cases::embedded().unwrap();
    let fp8: Vec<&GemmCase> = c.gemm.iter().filter(|g| g.fp8.is_some()).collect();
    assert!(fp8.iter().any(|g| (g.m, g.n, g.k) == (8192, 8192, 8192)));
    for g in fp8 {
        assert!(g.fp8_formats().unwrap().is_some() && g.layout == Layout::Forward);
    }
}

#[test]
fn a_malformed_table_is_an_error_naming_the_fault() {
    let table: serde_json::Value = serde_json::from_str(CASES_JSON).unwrap();
    let fails = |edit: &dyn Fn(&mut serde_json::Value), needle: &str| {
        let mut t = table.clone();
        edit(&mut t);
        let e = Cases::parse(&t.to_string()).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e}");
    };
    fails(
        &|t| t["gemm"][1]["name"] = "8192^3".into(),
        "\"8192^3\" appears twice",
    );
    fails(
        &|t| t["layernorm"][0]["cols"] = 0.into(),
        "must be positive",
    );
    fails(
        &|t| t["adam"][0]["tensors"] = serde_json::json!([]),
        "must be positive",
    );
    fails(
        &|t| t["cpu"]["xent"][0] = "nope".into(),
        "cpu.softmax names \"nope\"",
    );
    fails(&|t| t["gemm"][0]["layout"] = "sideways".into(), "sideways");
    fails(&|t| t["gemm"][0]["fp8"] = "e3m4".into(), "\"e3m4\" is not");
    fails(
        &|t| {
            t["gemm"][2]["fp8"] = "e4m3".into();
            t["gemm"][2]["layout"] = "dgrad".into();
        },
        "needs the fwd (TN) layout",
    );
    fails(
        &|t| t["relu"][0]["count"] = 1.into(),
        "unknown field `count`",
    );
    fails(
        &|t| t["train"][0]["layers"] = serde_json::json!([784]),
        "at least two widths",
    );
    fails(
        &|t| t.as_object_mut().unwrap().remove("cast").map(drop).unwrap(),
        "cast",
    );
    assert!(Cases::parse(&table.to_string()).is_ok());
}
