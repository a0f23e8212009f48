//! `q2 qat`, `q2 fold` and `q2 grid` end to end through the binary on a tiny synthetic dataset:
//! every quantizer × {baseline, +GBF, +ADA, +both} at W4A4 and W3A3, bit-identical resume of a
//! Q-GBFusion + Q-ADA run (controller state, telemetry), early stopping, LN folding, bad input.

use std::path::{Path, PathBuf};

mod common;

use common::{ok, q2, status2};

/// A dataset and an FP checkpoint trained on it for one short epoch.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let d = dir.join("synth");
    ok(&q2(&["synth", "--out", d.to_str().unwrap(), "--format", "yolo", "--images", "20", "--seed", "5", "--img-size", "96"]));
    let fp = dir.join("fp");
    ok(&q2(&[
        "train", "--data", d.to_str().unwrap(), "--out", fp.to_str().unwrap(), "--model", "yolov5n", "--img", "64", "--batch", "4", "--epochs", "1",
        "--max-batches", "2", "--max-val-images", "4", "--workers", "1",
    ]));
    (d, fp.join("last.safetensors"))
}

fn common<'a>(data: &'a str, weights: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["--data", data, "--weights", weights, "--out", out, "--model", "yolov5n", "--img", "64", "--batch", "4", "--max-batches", "2", "--max-val-images", "4", "--workers", "1"]
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn qat_with_gbf_and_ada_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (data, w) = setup(dir.path());
    let (d, ws) = (data.to_str().unwrap(), w.to_str().unwrap());
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    // --nbs 8: two backward passes per optimizer step (the controller runs once per step)
    let args = |out| [vec!["qat"], common(d, ws, out), vec!["--quant", "lsq", "--bits", "4", "--variant", "both", "--epochs", "3", "--nbs", "8", "--patience", "0"]].concat();
    let s: serde_json::Value = serde_json::from_str(&ok(&q2(&[args(sa), vec!["--json"]].concat()))).unwrap();
    assert_eq!(s["epochs_done"], 3);
    for f in ["config.toml", "metrics.jsonl", "telemetry.jsonl", "summary.json", "last.ckpt.safetensors", "last.safetensors", "best.safetensors"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let cfg = std::fs::read_to_string(a.join("config.toml")).unwrap();
    for k in ["[quant]", "method = \"lsq\"", "[gbf]", "eta = 0.05", "[ada]", "divergence = \"js\"", "hyp = \"VOC\"", "cos_lr = true"] {
        assert!(cfg.contains(k), "config.toml lacks `{k}`:\n{cfg}");
    }
    // one telemetry line per iteration, four nodes each, λ moving
    let tel: Vec<serde_json::Value> = std::fs::read_to_string(a.join("telemetry.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(tel.len(), 6);
    assert_eq!(tel[0]["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_u64().unwrap()).collect::<Vec<_>>(), [12, 16, 19, 22]);
    assert!(tel[0]["nodes"][0]["mag"].as_array().unwrap().len() == 32);
    let lam = |i: usize| tel[i]["nodes"][1]["lam"][0].as_f64().unwrap();
    assert!(lam(0) != 0.0 && lam(5) != lam(0) && (0..6).all(|i| lam(i).is_finite()));
    let m: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(m.iter().all(|l| l["ada"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0)), "{m:?}");

    ok(&q2(&[args(sb), vec!["--stop-after", "1"]].concat()));
    ok(&q2(&["qat", "--resume", "--out", sb, "--stop-after", "1"]));
    ok(&q2(&["qat", "--resume", "--out", sb]));
    for f in ["last.safetensors", "last.ckpt.safetensors", "best.safetensors", "telemetry.jsonl"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming");
    }

    // LN folding of the finished run: Table 6's three numbers and the folded weights
    let f: serde_json::Value = serde_json::from_str(&ok(&q2(&["fold", "--run", sa, "--ft-max-batches", "1", "--calib-images", "8", "--json"]))).unwrap();
    assert_eq!(f["nodes"].as_array().unwrap().len(), 4);
    for k in ["with_ln", "folded", "folded_ft"] {
        assert!(f[k]["map50"].as_f64().is_some(), "{k}: {f}");
    }
    assert!(f["head_rel_diff"].as_f64().unwrap().is_finite());
    assert!(f["nodes"][0]["rel_residual_rms"].as_f64().unwrap() >= 0.0);
    assert!(a.join("folded.safetensors").is_file() && a.join("fold.json").is_file());
    // q2 val builds the quantized, Q-GBFusion model from the run's configuration; the folded
    // weights (no LN) score as fold.json's fine-tuned number
    let cfg = a.join("config.toml");
    let folded = a.join("folded.safetensors");
    let v: serde_json::Value = serde_json::from_str(&ok(&q2(&[
        "val", "--config", cfg.to_str().unwrap(), "--weights", folded.to_str().unwrap(), "--data", d, "--img", "64", "--batch", "4", "--max-images", "4", "--json",
    ])))
    .unwrap();
    assert_eq!(v["map50"], f["folded_ft"]["map50"], "{v}");
    assert_eq!(v["detections"], f["folded_ft"]["detections"], "{v}");
}

#[test]
fn grid_runs_every_quantizer_and_variant_at_w4a4_and_w3a3() {
    let dir = tempfile::tempdir().unwrap();
    let (data, w) = setup(dir.path());
    let out = dir.path().join("grid");
    let so = out.to_str().unwrap();
    let args = [vec!["grid"], common(data.to_str().unwrap(), w.to_str().unwrap(), so), vec!["--epochs", "1", "--nbs", "4", "--calib-images", "4"]].concat();
    let md = ok(&q2(&args));
    for m in ["lsq", "lsq_plus", "pact", "n2uq", "minmax"] {
        for bits in ["W4A4", "W3A3"] {
            assert!(md.contains(&format!("| {m} | {bits} |")), "table lacks {m} {bits}:\n{md}");
        }
    }
    let cells = read_json(&out.join("grid.json"));
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 40);
    assert!(cells.iter().all(|c| c["best_map50"].as_f64().is_some()), "{cells:?}");
    // every cell has its run files; Q-GBFusion cells record α
    let tel = std::fs::read_to_string(out.join("n2uq_w3a3_both/telemetry.jsonl")).unwrap();
    assert!(tel.lines().next().unwrap().contains("\"alpha\":[0.5,0.5]"));
    // a second invocation keeps finished cells (no retraining: same summary bytes)
    let before = std::fs::read(out.join("pact_w4a4_gbf/summary.json")).unwrap();
    ok(&q2(&args));
    assert_eq!(before, std::fs::read(out.join("pact_w4a4_gbf/summary.json")).unwrap());
}

#[test]
fn early_stopping_ends_the_run_and_resume_has_nothing_left() {
    let dir = tempfile::tempdir().unwrap();
    let (data, w) = setup(dir.path());
    let out = dir.path().join("es");
    let so = out.to_str().unwrap();
    // mAP stays 0 on this tiny run, so the fitness never improves after epoch 0
    let args = [vec!["qat"], common(data.to_str().unwrap(), w.to_str().unwrap(), so), vec!["--quant", "pact", "--bits", "3", "--epochs", "6", "--patience", "2", "--json"]].concat();
    let s: serde_json::Value = serde_json::from_str(&ok(&q2(&args))).unwrap();
    assert_eq!((s["epochs_done"].as_u64(), s["stopped_early"].as_bool()), (Some(3), Some(true)), "{s}");
    assert!(s["time_to_best_s"].as_f64().unwrap() <= s["total_s"].as_f64().unwrap());
    let again: serde_json::Value = serde_json::from_str(&ok(&q2(&["qat", "--resume", "--out", so, "--json"]))).unwrap();
    assert_eq!(again["epochs_done"], 3);
}

#[test]
fn bad_qat_input_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (data, w) = setup(dir.path());
    let (d, ws) = (data.to_str().unwrap(), w.to_str().unwrap());
    let out = dir.path().join("bad");
    let so = out.to_str().unwrap();
    status2(&q2(&["qat", "--data", d, "--out", so, "--quant", "lsq"]), "--weights");
    status2(&q2(&[vec!["qat"], common(d, ws, so), vec!["--quant", "lsq", "--bits", "9"]].concat()), "w_bits");
    status2(&q2(&[vec!["qat"], common(d, ws, so), vec!["--variant", "gbf"]].concat()), "needs a quantizer");
    let o = q2(&[vec!["qat"], common(d, ws, so), vec!["--quant", "nope"]].concat());
    assert_eq!(o.status.code(), Some(2));
    // folding a run without Q-GBFusion
    ok(&q2(&[vec!["qat"], common(d, ws, so), vec!["--quant", "lsq", "--epochs", "1"]].concat()));
    status2(&q2(&["fold", "--run", so]), "no Q-GBFusion");
    // an FP checkpoint of another model
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[gbf]\neta = -1.0\n").unwrap();
    status2(&q2(&[vec!["qat", "--config", cfg.to_str().unwrap()], common(d, ws, so), vec!["--quant", "lsq", "--force"]].concat()), "eta");
}

/// An FP model fine-tuned with Q-GBFusion (`q2 train` with a [gbf] table: Table 8's FP row) is a
/// starting point whose module is already in place: QAT from it does not insert it again, and
/// `q2 grid --gbf-weights` starts the Q-GBFusion cells from it with the plain FP teacher.
#[test]
fn a_checkpoint_trained_with_the_module_is_not_inserted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (data, w) = setup(dir.path());
    let (d, ws) = (data.to_str().unwrap(), w.to_str().unwrap());
    let cfg = dir.path().join("fp_gbf.toml");
    std::fs::write(&cfg, "hyp = \"VOC\"\ncos_lr = true\n[gbf]\n").unwrap();
    let fpg = dir.path().join("fp_gbf");
    let o = q2(&[vec!["train", "--config", cfg.to_str().unwrap()], common(d, ws, fpg.to_str().unwrap()), vec!["--epochs", "1"]].concat());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("node 16: inserted"), "{}", String::from_utf8_lossy(&o.stderr));
    let gw = fpg.join("last.safetensors");
    let q = dir.path().join("q");
    let o = q2(&[vec!["qat"], common(d, gw.to_str().unwrap(), q.to_str().unwrap()), vec!["--quant", "lsq", "--variant", "gbf", "--epochs", "1"]].concat());
    ok(&o);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("inserted"), "{}", String::from_utf8_lossy(&o.stderr));
    let g = dir.path().join("g");
    ok(&q2(&[
        vec!["grid"],
        common(d, ws, g.to_str().unwrap()),
        vec!["--epochs", "1", "--methods", "lsq", "--bit-widths", "4", "--variants", "baseline,both", "--gbf-weights", gw.to_str().unwrap()],
    ]
    .concat()));
    let both = std::fs::read_to_string(g.join("lsq_w4a4_both/config.toml")).unwrap();
    assert!(both.contains(&format!("weights = \"{}\"", gw.display())) && both.contains(&format!("teacher = \"{ws}\"")), "{both}");
    let base = std::fs::read_to_string(g.join("lsq_w4a4_baseline/config.toml")).unwrap();
    assert!(base.contains(&format!("weights = \"{ws}\"")), "{base}");
}
