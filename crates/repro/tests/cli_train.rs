//! `q2 train`, `q2 val`, `q2 detect` and `q2 bench` end to end through the binary on a tiny
//! synthetic dataset: the run's files, bit-identical resume after an interruption, both model
//! families, and bad input (exit status 2 naming the file; a diverged run stops with a message
//! naming its last good state).

use std::path::{Path, PathBuf};

mod common;

use common::{ok, q2, status2};

fn dataset(dir: &Path) -> PathBuf {
    let d = dir.join("synth");
    ok(&q2(&["synth", "--out", d.to_str().unwrap(), "--format", "yolo", "--images", "20", "--seed", "5", "--img-size", "96"]));
    d
}

fn train_args<'a>(data: &'a str, out: &'a str, model: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--data", data, "--out", out, "--model", model, "--img", "64", "--batch", "4", "--nbs", "8", "--epochs", epochs,
        "--max-batches", "2", "--max-val-images", "4", "--workers", "1",
    ]
}

#[test]
fn train_writes_its_files_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let d = data.to_str().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    // Validation every second epoch: the checkpoint after epoch 0 has no best fitness yet.
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&q2(&[train_args(d, sa, "yolov5n", "3"), vec!["--val-every", "2", "--json"]].concat()))).unwrap();
    assert_eq!(summary["epochs_done"], 3);
    for f in ["config.toml", "metrics.jsonl", "last.ckpt.safetensors", "last.safetensors", "best.safetensors"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].get("val").is_none() && lines[1].get("val").is_some());
    for k in ["epoch", "box", "obj", "cls", "lr", "img_per_s", "val"] {
        assert!(lines[2].get(k).is_some(), "metrics line lacks `{k}`: {}", lines[2]);
    }
    assert!(lines.iter().all(|l| l["box"].as_f64().unwrap().is_finite()));

    // Interrupted after each epoch, resumed twice: the same bytes as the uninterrupted run.
    ok(&q2(&[train_args(d, sb, "yolov5n", "3"), vec!["--val-every", "2", "--stop-after", "1"]].concat()));
    ok(&q2(&["train", "--resume", "--out", sb, "--stop-after", "1"]));
    ok(&q2(&["train", "--resume", "--out", sb]));
    for f in ["last.safetensors", "last.ckpt.safetensors", "best.safetensors"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming");
    }
    let strip = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for k in ["train_s", "img_per_s"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                if let Some(val) = v.get_mut("val").and_then(|x| x.as_object_mut()) {
                    val.remove("seconds");
                }
                v.to_string()
            })
            .collect()
    };
    assert_eq!(strip(&a.join("metrics.jsonl")), strip(&b.join("metrics.jsonl")));

    // The trained weights through val (three metric families) and detect.
    let w = a.join("last.safetensors");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&q2(&["val", "--model", "yolov5n", "--weights", w.to_str().unwrap(), "--data", d, "--img", "64", "--json"]))).unwrap();
    for k in ["map50", "map50_95", "voc07", "voc12"] {
        assert!(v[k].as_f64().unwrap() >= 0.0, "{v}");
    }
    assert_eq!(v["coco"].as_array().unwrap().len(), 12);
    let img = std::fs::read_dir(data.join("images/val")).unwrap().next().unwrap().unwrap().path();
    let det = dir.path().join("det");
    ok(&q2(&["detect", "--model", "yolov5n", "--nc", "12", "--weights", w.to_str().unwrap(), "--img", "64", "--conf", "0.0001", "--out", det.to_str().unwrap(), img.to_str().unwrap()]));
    let preds: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(det.join("predictions.json")).unwrap()).unwrap();
    assert!(preds.is_array());
    assert!(det.join(format!("{}.png", img.file_stem().unwrap().to_string_lossy())).is_file());

    // Bad input.
    status2(&q2(&train_args(d, sa, "yolov5n", "3")), "--force");
    status2(&q2(&["train", "--resume", "--out", dir.path().join("none").to_str().unwrap()]), "no checkpoint");
    status2(&q2(&["train", "--resume", "--out", sa, "--epochs", "9"]), "--resume");
    let missing = dir.path().join("missing");
    status2(&q2(&train_args(missing.to_str().unwrap(), dir.path().join("c").to_str().unwrap(), "yolov5n", "3")), "missing");
    status2(&q2(&train_args(d, dir.path().join("c").to_str().unwrap(), "yolov9", "3")), "unknown model");
    let bad_img = dir.path().join("broken.jpg");
    std::fs::write(&bad_img, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    status2(&q2(&["detect", "--model", "yolov5n", "--nc", "12", "--weights", w.to_str().unwrap(), "--img", "64", "--out", det.to_str().unwrap(), bad_img.to_str().unwrap()]), "broken.jpg");
    status2(&q2(&["val", "--model", "yolo11n", "--weights", w.to_str().unwrap(), "--data", d, "--img", "64"]), "last.safetensors");
}

#[test]
fn a_diverging_run_stops_and_names_its_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let d = data.to_str().unwrap();
    let a = dir.path().join("a");
    ok(&q2(&train_args(d, a.to_str().unwrap(), "yolov5n", "1")));
    // Weights whose first conv kernel is all 1e38: its outputs overflow to inf, then NaN.
    let w = a.join("last.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let k = "model.0.conv.weight";
    let huge = (t[k].ones_like().unwrap() * 1e38).unwrap();
    t.insert(k.to_string(), huge);
    let bad = dir.path().join("diverging.safetensors");
    candle_core::safetensors::save(&t, &bad).unwrap();
    let out = dir.path().join("b");
    let o = q2(&[train_args(d, out.to_str().unwrap(), "yolov5n", "3"), vec!["--weights", bad.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("iteration 0") && err.contains("no checkpoint yet"), "{err}");
    assert!(!out.join("last.ckpt.safetensors").exists());
}

#[test]
fn yolo11_trains_and_bench_reports_the_contract_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("v11");
    let s: serde_json::Value = serde_json::from_str(&ok(&q2(&[
        train_args(data.to_str().unwrap(), out.to_str().unwrap(), "yolo11n", "1"),
        vec!["--json"],
    ]
    .concat())))
    .unwrap();
    assert_eq!(s["epochs_done"], 1);
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(line.contains("\"dfl\""), "{line}");
    for mode in [&["--mode", "fp"][..], &["--mode", "qat", "--quant", "lsq", "--bits", "4"][..]] {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&q2(&[&["bench", "--model", "yolov5n", "--img", "64", "--batch", "2", "--steps", "1", "--json"][..], mode].concat()))).unwrap();
        for k in ["ms_per_step", "img_per_s", "peak_rss_mb", "fwd_ms", "bwd_ms"] {
            assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
        }
    }
    // The profile reports every kernel; the QAT step runs fake-quant and the fused kernels.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&q2(&["bench", "--model", "yolov5n", "--img", "64", "--batch", "2", "--steps", "1", "--mode", "qat", "--profile", "--json"]))).unwrap();
    for k in ["conv_forward", "conv_input_grad", "conv_weight_grad", "bn_act_forward", "bn_act_backward", "fake_quant_forward"] {
        assert!(v["profile_ms"][k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // The standard table: four rows, each from its own process.
    let table = ok(&q2(&["bench", "--table", "--img", "32", "--batch", "2", "--steps", "1"]));
    assert_eq!(table.lines().filter(|l| l.starts_with("| yolo")).count(), 4, "{table}");
}
