//! Weight files: save/load round trip, the errors for files that do not fit (wrong model, wrong
//! nc, NaN), loading a full-precision file into a quantized model, and that a quantized model
//! calibrates and runs.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use q2_fusion::PlainConcat;
use q2_nn::store::{load_tensors, save_tensors};
use q2_nn::{Device, Mode, ParamStore};
use q2_quant::{Method, QuantPlan};
use q2_yolo::weights::{load, read_metadata, recipe_fill, recipe_tensor, save};
use q2_yolo::{build, Detector};

fn model(name: &str, nc: usize, seed: u64) -> Box<dyn Detector> {
    build(
        name,
        nc,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, seed),
    )
    .unwrap()
}

fn values(det: &dyn Detector) -> Vec<(String, Vec<f64>)> {
    det.store()
        .iter()
        .map(|(k, e)| {
            (
                k.to_string(),
                e.var
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["yolov5n", "yolo11n"] {
        let p = dir.path().join(format!("{name}.safetensors"));
        let a = model(name, 3, 0);
        recipe_fill(a.store()).unwrap();
        save(a.store(), &p).unwrap();
        let b = model(name, 3, 1);
        assert_ne!(values(&*a), values(&*b));
        load(b.store(), &p).unwrap();
        assert_eq!(values(&*a), values(&*b), "{name}");
        let x = recipe_tensor("input.a", &[1, 3, 64, 64], &Device::Cpu).unwrap();
        let ya = a.decode(&a.forward(&x, Mode::Eval).unwrap()).unwrap();
        let yb = b.decode(&b.forward(&x, Mode::Eval).unwrap()).unwrap();
        let d = q2_nn::compare::max_abs_diff(&ya, &yb).unwrap();
        assert_eq!(d, 0.0);
    }
}

#[test]
fn wrong_model_and_wrong_nc_list_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v11.safetensors");
    save(model("yolo11n", 3, 0).store(), &p).unwrap();
    let e = load(model("yolov5n", 3, 0).store(), &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("v11.safetensors")
            && e.contains("missing in file")
            && e.contains("model.24.anchors"),
        "{e}"
    );
    assert!(
        e.contains("unexpected in file") && e.contains("model.23.dfl.conv.weight"),
        "{e}"
    );

    let p = dir.path().join("nc3.safetensors");
    save(model("yolov5n", 3, 0).store(), &p).unwrap();
    let e = load(model("yolov5n", 20, 0).store(), &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shape of model.24.m.0.weight: model [75, 64, 1, 1], file [24, 64, 1, 1]"),
        "{e}"
    );
    assert!(!e.contains("missing"), "{e}");
}

#[test]
fn non_finite_weights_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.safetensors");
    let a = model("yolov5n", 3, 0);
    save(a.store(), &p).unwrap();
    let mut t: HashMap<String, Tensor> = load_tensors(&p, &Device::Cpu).unwrap();
    let key = "model.7.bn.running_var";
    let mut v = t[key].to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    let n = v.len();
    t.insert(key.into(), Tensor::from_vec(v, n, &Device::Cpu).unwrap());
    save_tensors(&t, &p).unwrap();
    let b = model("yolov5n", 3, 1);
    let e = load(b.store(), &p).unwrap_err().to_string();
    assert!(
        e.contains("nan.safetensors") && e.contains(key) && e.contains("non-finite"),
        "{e}"
    );
    // nothing was loaded
    assert_eq!(values(&*b), values(&*model("yolov5n", 3, 1)));
    // not a safetensors file at all
    std::fs::write(&p, b"garbage").unwrap();
    assert!(load(b.store(), &p)
        .unwrap_err()
        .to_string()
        .contains("nan.safetensors"));
    assert!(read_metadata(&p).is_empty());
}

#[test]
fn full_precision_weights_load_into_a_quantized_model_that_calibrates_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fp.safetensors");
    let fp = model("yolo11n", 3, 0);
    recipe_fill(fp.store()).unwrap();
    save(fp.store(), &p).unwrap();
    let plan = QuantPlan::new(Method::Lsq, 4, 4);
    let q = build(
        "yolo11n",
        3,
        Some(&plan),
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .unwrap();
    assert!(
        q.store().get("model.0.wq.s").is_some() && q.store().get("model.23.cv3.0.2.aq.s").is_some()
    );
    load(q.store(), &p).unwrap();
    let x = recipe_tensor("input.q", &[2, 3, 64, 64], &Device::Cpu).unwrap();
    q.calibrate(&x).unwrap();
    let yq = q.decode(&q.forward(&x, Mode::Eval).unwrap()).unwrap();
    let yf = fp.decode(&fp.forward(&x, Mode::Eval).unwrap()).unwrap();
    let d = q2_nn::compare::max_abs_diff(&yq, &yf).unwrap();
    assert!(
        d > 0.0
            && yq
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite())
    );
    // a training step's forward + backward reaches the quantizer parameters
    let head = q.forward(&x, Mode::Train).unwrap();
    let loss = match head {
        q2_yolo::HeadOut::V11 { box_raw, cls_raw } => {
            (box_raw[0].sqr().unwrap().mean_all().unwrap() + cls_raw[2].mean_all().unwrap())
                .unwrap()
        }
        _ => unreachable!(),
    };
    let g = loss.backward().unwrap();
    assert!(g
        .get(&q.store().get("model.2.cv1.wq.s").unwrap().var)
        .is_some());
}
