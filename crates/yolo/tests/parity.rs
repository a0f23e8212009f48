//! Forward parity with the reference PyTorch models (YOLOv5 repository, ultralytics 8.4.190) in
//! eval mode, unfused BatchNorm: `tests/fixtures/yolo/parity_<model>.safetensors` holds the
//! reference outputs for the deterministic recipe weights (`weights::recipe_fill`, mirrored by
//! `tools/yolo_ref.py`) on the recipe inputs `input.a` (batch 2, 64×96) and `input.b` (batch 1,
//! 96×64). Made by `tools/make_yolo_fixtures.py`. Tolerance: max |diff| / max |ref| ≤ 1e-4.

use std::path::PathBuf;

use candle_core::Tensor;
use q2_fusion::PlainConcat;
use q2_nn::store::load_tensors;
use q2_nn::{Device, Mode, ParamStore};
use q2_yolo::weights::{recipe_fill, recipe_tensor};
use q2_yolo::{build, HeadOut};

const NC: usize = 3;

fn rel(got: &Tensor, want: &Tensor) -> f32 {
    q2_nn::compare::max_rel_diff(got, want).unwrap() as f32
}

fn check(name: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../tests/fixtures/yolo/parity_{name}.safetensors"
    ));
    let want = load_tensors(&path, &Device::Cpu).unwrap();
    let det = build(
        name,
        NC,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .unwrap();
    recipe_fill(det.store()).unwrap();
    let mut worst = 0f32;
    let mut n = 0;
    for (case, shape) in [("a", [2usize, 3, 64, 96]), ("b", [1, 3, 96, 64])] {
        let x = recipe_tensor(&format!("input.{case}"), &shape, &Device::Cpu).unwrap();
        let out = det.forward(&x, Mode::Eval).unwrap();
        let decoded = det.decode(&out).unwrap();
        let mut got: Vec<(String, Tensor)> = vec![("decoded".into(), decoded)];
        match &out {
            HeadOut::V5 { raw } => {
                for (l, t) in raw.iter().enumerate() {
                    got.push((format!("p{}_raw", l + 3), t.clone()));
                }
            }
            HeadOut::V11 { box_raw, cls_raw } => {
                for l in 0..3 {
                    got.push((format!("p{}_box_raw", l + 3), box_raw[l].clone()));
                    got.push((format!("p{}_cls_raw", l + 3), cls_raw[l].clone()));
                }
            }
        }
        for (k, t) in got {
            let key = format!("{case}.{k}");
            let w = want
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: fixture lacks {key}"));
            let r = rel(&t, w);
            eprintln!("{name} {key} {:?}: rel {r:.2e}", t.dims());
            assert!(r <= 1e-4, "{name} {key}: relative error {r:e}");
            worst = worst.max(r);
            n += 1;
        }
    }
    assert_eq!(n, want.len(), "{name}: every fixture tensor is checked");
    eprintln!("{name}: worst relative error {worst:.2e}");
}

#[test]
fn yolov5n_matches_the_yolov5_repository() {
    check("yolov5n");
}

#[test]
fn yolo11n_matches_ultralytics() {
    check("yolo11n");
}

/// The fixture is not trivially satisfied: other weights give other outputs.
#[test]
fn the_check_can_fail() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/yolo/parity_yolov5n.safetensors");
    let want = load_tensors(&path, &Device::Cpu).unwrap();
    let det = build(
        "yolov5n",
        NC,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .unwrap();
    recipe_fill(det.store()).unwrap();
    let bn = &det.store().get("model.23.cv3.bn.running_var").unwrap().var;
    bn.set(&(bn.as_tensor() * 1.5).unwrap()).unwrap();
    let x = recipe_tensor("input.a", &[2, 3, 64, 96], &Device::Cpu).unwrap();
    let HeadOut::V5 { raw } = det.forward(&x, Mode::Eval).unwrap() else {
        panic!()
    };
    assert!(rel(&raw[2], &want["a.p5_raw"]) > 1e-3);
}
