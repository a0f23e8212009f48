//! `q2 summary` and `q2 forward` through the binary: the JSON contract, parity of `q2 forward`
//! with the committed PyTorch fixture, and bad input exiting with status 2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use q2_fusion::PlainConcat;
use q2_nn::store::{load_tensors, save_tensors};
use q2_nn::ParamStore;
use q2_yolo::weights::{recipe_fill, recipe_tensor, save};

fn q2(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_q2"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/yolo")
        .join(name)
}

#[test]
fn summary_json_reports_params_gflops_and_layers() {
    let out = q2(&["summary", "--model", "yolov5s", "--nc", "80", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"], 7_235_389);
    assert!(
        (v["gflops"].as_f64().unwrap() - 16.6227968).abs() < 1e-6,
        "{}",
        v["gflops"]
    );
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 25);
    assert_eq!(layers[24]["module"], "Detect");
    assert_eq!(layers[12]["from"], "[-1, 6]");
    let out = q2(&["summary", "--model", "yolo11s", "--nc", "80"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("9,458,752 parameters") && text.contains("C2PSA"),
        "{text}"
    );
}

#[test]
fn unknown_model_exits_2() {
    let out = q2(&["summary", "--model", "yolov9", "--nc", "80"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("yolov9") && err.contains("yolo11s"), "{err}");
}

fn write_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let det = q2_yolo::build(
        "yolov5n",
        3,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .unwrap();
    recipe_fill(det.store()).unwrap();
    let w = dir.join("w.safetensors");
    save(det.store(), &w).unwrap();
    let x = dir.join("x.safetensors");
    let input = recipe_tensor("input.a", &[2, 3, 64, 96], &Device::Cpu).unwrap();
    save_tensors(&HashMap::from([("input".to_string(), input)]), &x).unwrap();
    (w, x)
}

#[test]
fn forward_matches_the_pytorch_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let (w, x) = write_inputs(dir.path());
    let y = dir.path().join("y.safetensors");
    let out = q2(&[
        "forward",
        "--model",
        "yolov5n",
        "--nc",
        "3",
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--out",
        y.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = load_tensors(&y, &Device::Cpu).unwrap();
    let want = load_tensors(&fixture("parity_yolov5n.safetensors"), &Device::Cpu).unwrap();
    let mut keys: Vec<_> = got.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["decoded", "p3_raw", "p4_raw", "p5_raw"]);
    for k in keys {
        let w: &Tensor = &want[&format!("a.{k}")];
        let r = q2_nn::compare::max_rel_diff(&got[&k], w).unwrap();
        assert!(r <= 1e-4, "{k}: {r}");
    }
}

#[test]
fn forward_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (w, x) = write_inputs(dir.path());
    let y = dir.path().join("y.safetensors");
    let run = |model: &str, nc: &str, w: &Path, x: &Path| {
        q2(&[
            "forward",
            "--model",
            model,
            "--nc",
            nc,
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--out",
            y.to_str().unwrap(),
        ])
    };
    // weights of another model
    let out = run("yolo11n", "3", &w, &x);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("w.safetensors"));
    // another nc
    let out = run("yolov5n", "4", &w, &x);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shape of model.24.m.0.weight"));
    // no tensor `input`; a size that is not a multiple of 32
    let bad = dir.path().join("bad.safetensors");
    let t = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    save_tensors(&HashMap::from([("image".to_string(), t)]), &bad).unwrap();
    let out = run("yolov5n", "3", &w, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tensor `input`"));
    let t = Tensor::zeros((1, 3, 60, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    save_tensors(&HashMap::from([("input".to_string(), t)]), &bad).unwrap();
    let out = run("yolov5n", "3", &w, &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiples of 32"));
    assert!(!y.exists());
}
