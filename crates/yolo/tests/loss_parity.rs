//! Parity of the YOLOv5 and YOLO11 losses with the Python references on committed fixtures
//! (`tests/fixtures/yolo/loss_v5.safetensors`, `loss_v11.safetensors`, made by
//! `tools/make_loss_fixtures.py` from YOLOv5's `ComputeLoss` and ultralytics 8.4.190's
//! `v8DetectionLoss`): the back-propagated total and the three items within 1e-4 relative, and
//! the gradient of the total with respect to every raw head tensor within 1e-4 relative (max
//! abs difference over max abs value).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use q2_yolo::loss::{V5Hyp, V5Loss, V5LossConfig, V8Loss, V8LossConfig};
use q2_yolo::{HeadOut, Targets};

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/yolo").join(name);
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn cases(f: &HashMap<String, Tensor>) -> Vec<String> {
    let mut c: Vec<String> = f.keys().filter_map(|k| k.strip_suffix(".meta").map(str::to_string)).collect();
    c.sort();
    assert!(!c.is_empty(), "no cases in fixture");
    c
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn targets(t: &Tensor) -> Targets {
    let v = f64s(t);
    let mut out = Targets::default();
    for r in v.chunks(6) {
        out.image.push(r[0] as usize);
        out.class.push(r[1] as usize);
        out.xywhn.push([r[2] as f32, r[3] as f32, r[4] as f32, r[5] as f32]);
    }
    out
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(1e-12)
    }
}

/// max |a − b| / max |b|
fn grad_rel(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (f64s(got), f64s(want));
    assert_eq!(g.len(), w.len());
    let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = w.iter().map(|b| b.abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Checks total, items and gradients of one case; returns (worst loss rel, worst grad rel).
fn check(
    case: &str,
    f: &HashMap<String, Tensor>,
    vars: &[(String, Var)],
    total: &Tensor,
    items: [f32; 3],
) -> (f64, f64) {
    let want_total = f64s(&f[&format!("{case}.total")])[0];
    let want_items = f64s(&f[&format!("{case}.items")]);
    let got_total = total.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let mut worst = rel(got_total, want_total);
    assert!(worst <= TOL, "{case}: total {got_total} vs {want_total} (rel {worst:e})");
    for k in 0..3 {
        let r = if want_items[k] == 0.0 { (items[k] as f64).abs() } else { rel(items[k] as f64, want_items[k]) };
        assert!(r <= TOL, "{case}: item {k} {} vs {} (rel {r:e})", items[k], want_items[k]);
        worst = worst.max(r);
    }
    let grads = total.backward().unwrap();
    let mut gworst = 0.0f64;
    for (name, v) in vars {
        let want = &f[&format!("{case}.grad_{name}")];
        let got = match grads.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => Tensor::zeros(v.shape(), DType::F32, &Device::Cpu).unwrap(),
        };
        let r = grad_rel(&got, want);
        assert!(r <= TOL, "{case}: gradient of {name} differs (max abs diff / max abs = {r:e})");
        gworst = gworst.max(r);
    }
    println!("{case}: total {got_total:.6} (ref {want_total:.6}), worst loss rel {worst:.2e}, worst grad rel {gworst:.2e}");
    (worst, gworst)
}

#[test]
fn v5_compute_loss_matches_yolov5() {
    let f = fixture("loss_v5.safetensors");
    for case in cases(&f) {
        let m = f64s(&f[&format!("{case}.meta")]);
        // meta: nc, img_h, img_w, imgsz, box, obj, cls, cls_pw, obj_pw, anchor_t, fl_gamma, label_smoothing
        let hyp = V5Hyp {
            box_gain: m[4] as f32,
            obj_gain: m[5] as f32,
            cls_gain: m[6] as f32,
            cls_pw: m[7] as f32,
            obj_pw: m[8] as f32,
            anchor_t: m[9] as f32,
            fl_gamma: m[10] as f32,
            label_smoothing: m[11] as f32,
        };
        let (nc, imgsz) = (m[0] as usize, m[3] as usize);
        let a = f64s(&f[&format!("{case}.anchors")]);
        let anchors: Vec<[(f32, f32); 3]> =
            (0..3).map(|l| std::array::from_fn(|k| (a[l * 6 + 2 * k] as f32, a[l * 6 + 2 * k + 1] as f32))).collect();
        let s = f64s(&f[&format!("{case}.strides")]);
        let strides = [s[0] as usize, s[1] as usize, s[2] as usize];
        let cfg = V5LossConfig::from_hyp(&hyp, nc, imgsz, &anchors, strides).unwrap();
        let loss = V5Loss::new(cfg);
        let vars: Vec<(String, Var)> = ["p3_raw", "p4_raw", "p5_raw"]
            .iter()
            .map(|n| (n.to_string(), Var::from_tensor(&f[&format!("{case}.{n}")]).unwrap()))
            .collect();
        let out = HeadOut::V5 { raw: std::array::from_fn(|l| vars[l].1.as_tensor().clone()) };
        let t = targets(&f[&format!("{case}.targets")]);
        let r = loss.forward(&out, &t).unwrap();
        check(&case, &f, &vars, &r.total, r.items);
    }
}

#[test]
fn v11_detection_loss_matches_ultralytics() {
    let f = fixture("loss_v11.safetensors");
    for case in cases(&f) {
        let m = f64s(&f[&format!("{case}.meta")]);
        // meta: nc, img_h, img_w, reg_max, box, cls, dfl
        let mut cfg = V8LossConfig::new(m[0] as usize, [8, 16, 32]);
        cfg.reg_max = m[3] as usize;
        cfg.box_gain = m[4] as f32;
        cfg.cls_gain = m[5] as f32;
        cfg.dfl_gain = m[6] as f32;
        let loss = V8Loss::new(cfg).unwrap();
        let mut vars: Vec<(String, Var)> = Vec::new();
        for kind in ["box", "cls"] {
            for l in 3..=5 {
                let n = format!("p{l}_{kind}_raw");
                let v = Var::from_tensor(&f[&format!("{case}.{n}")]).unwrap();
                vars.push((n, v));
            }
        }
        let out = HeadOut::V11 {
            box_raw: std::array::from_fn(|l| vars[l].1.as_tensor().clone()),
            cls_raw: std::array::from_fn(|l| vars[3 + l].1.as_tensor().clone()),
        };
        let t = targets(&f[&format!("{case}.targets")]);
        let r = loss.forward(&out, &t).unwrap();
        check(&case, &f, &vars, &r.total, r.items);
    }
}

/// PyTorch's CPU `topk` tie-breaking, which the assigner depends on, on heavily tied vectors.
#[test]
fn topk_tie_breaking_matches_pytorch() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/yolo/loss_topk.json");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let cases = j["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let n = c["n"].as_u64().unwrap() as usize;
        let k = c["k"].as_u64().unwrap() as usize;
        let mut v = vec![0f32; n];
        for e in c["nonzero"].as_array().unwrap() {
            v[e[0].as_u64().unwrap() as usize] = e[1].as_f64().unwrap() as f32;
        }
        let mut want: Vec<usize> = c["indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        want.sort_unstable();
        assert_eq!(q2_yolo::loss::topk::torch_topk_indices(&v, k), want, "n = {n}, k = {k}");
    }
}
