//! The `q2` binary's contracts: `q2 quant` on the bundled example and on invalid input
//! (clear message, exit status 2, no output file).

use std::process::Command;

fn q2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_q2"))
}

fn repo(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

#[test]
fn quant_example_writes_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let st = q2().args(["quant", "--in"]).arg(repo("examples/quant/lsq_w4.json")).arg("--out").arg(&out).status().unwrap();
    assert!(st.success());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let y: Vec<f64> = r["y"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // s = 0.125, signed 4-bit: grid [-8, 7]·s; -1.3 clips to -1.0, 0.61 rounds to 0.625, 1.2 clips to 0.875.
    assert_eq!(y[0], -1.0);
    assert_eq!(y[9], 0.625);
    assert_eq!(y[11], 0.875);
    let gx: Vec<f64> = r["grad_x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(gx[0], 0.0);
    assert_eq!(gx[1], -0.5);
    assert_eq!(gx[10], 0.0, "0.875 = Qp·s lies on the clip boundary: no gradient");
    assert!(r["grad_params"]["s"].is_number());
}

fn expect_input_error(case: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("case.json");
    std::fs::write(&inp, case).unwrap();
    let out = dir.path().join("r.json");
    let o = q2().args(["quant", "--in"]).arg(&inp).arg("--out").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{case}: {err}");
    assert!(err.contains(needle), "{case}: stderr lacks `{needle}`: {err}");
    assert!(err.contains("case.json"), "the message names the file: {err}");
    assert!(!out.exists());
}

#[test]
fn quant_rejects_bad_input_with_status_2() {
    let ok_tail = r#""x": [0.1, 0.2], "grad_out": [1, 1]"#;
    expect_input_error(&format!(r#"{{"method": "lsqq", "bits": 4, "signed": true, "params": {{"s": 0.1}}, {ok_tail}}}"#), "unknown method `lsqq`");
    expect_input_error(&format!(r#"{{"method": "lsq", "bits": 9, "signed": true, "params": {{"s": 0.1}}, {ok_tail}}}"#), "bits` must be in 2..=8");
    expect_input_error(&format!(r#"{{"method": "lsq", "bits": 1, "signed": true, "params": {{"s": 0.1}}, {ok_tail}}}"#), "bits` must be in 2..=8");
    expect_input_error(&format!(r#"{{"method": "lsq", "bits": 4, "signed": true, "params": {{"s": 0}}, {ok_tail}}}"#), "step s must be positive");
    expect_input_error(&format!(r#"{{"method": "lsq_plus", "bits": 4, "signed": false, "params": {{"s": -0.5, "beta": 0}}, {ok_tail}}}"#), "step s must be positive");
    expect_input_error(&format!(r#"{{"method": "pact", "bits": 4, "signed": false, "params": {{"alpha": -1}}, {ok_tail}}}"#), "alpha must be positive");
    expect_input_error(r#"{"method": "lsq", "bits": 4, "signed": true, "params": {"s": 0.1}, "x": [0.1, 0.2], "grad_out": [1]}"#, "length mismatch");
    expect_input_error(&format!(r#"{{"method": "lsq", "bits": 4, "signed": true, "params": {{}}, {ok_tail}}}"#), "missing parameter `params.s`");
    expect_input_error(&format!(r#"{{"method": "n2uq", "bits": 2, "signed": false, "params": {{"start": 0, "a": [1, 1], "scale1": 1, "scale2": 1}}, {ok_tail}}}"#), "`params.a` must be a list of 3 numbers");
    expect_input_error(r#"{"method": "lsq", "bits": 4"#, "invalid JSON");
}

#[test]
fn quant_ignores_extra_keys_and_accepts_per_channel_steps() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("case.json");
    std::fs::write(&inp, r#"{"comment": "two channels", "method": "lsq", "bits": 3, "signed": true, "groups": 2,
        "x": [0.1, 0.5, -0.2, 0.4], "params": {"s": [0.1, 0.2]}, "grad_out": [1, 1, 1, 1]}"#).unwrap();
    let out = dir.path().join("r.json");
    assert!(q2().args(["quant", "--in"]).arg(&inp).arg("--out").arg(&out).status().unwrap().success());
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["grad_params"]["s"].as_array().unwrap().len(), 2);
}
