//! Model structure against ultralytics: parameter counts (numbers printed by ultralytics 8.4.190 /
//! the YOLOv5 repository, `tools/make_yolo_fixtures.py` records them in
//! `tests/fixtures/yolo/reference.json`), state_dict key names and shapes, GFLOPs, the unknown-name
//! error and the fusion hook.

use std::collections::BTreeMap;
use std::path::PathBuf;

use q2_fusion::{Fusion, FusionFactory, PlainConcat};
use q2_nn::{Device, ParamStore, Role, Scope};
use q2_yolo::summary::{count_params, summarize};
use q2_yolo::{build, Detector};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/yolo")
}

fn model(name: &str, nc: usize) -> Box<dyn Detector> {
    build(
        name,
        nc,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .unwrap()
}

#[test]
fn parameter_counts_match_ultralytics() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    // The numbers, independently of the reference file.
    assert_eq!(count_params(model("yolov5s", 20).store(), ""), 7_073_569);
    assert_eq!(count_params(model("yolov5s", 80).store(), ""), 7_235_389);
    assert_eq!(count_params(model("yolo11s", 80).store(), ""), 9_458_752);
    for name in [
        "yolov5n", "yolov5s", "yolov5m", "yolo11n", "yolo11s", "yolo11m",
    ] {
        for nc in [20, 80] {
            let want = reference[format!("{name}_{nc}")]["params"]
                .as_u64()
                .unwrap() as usize;
            let m = model(name, nc);
            assert_eq!(count_params(m.store(), ""), want, "{name} nc={nc}");
            let n_keys = reference[format!("{name}_{nc}")]["n_keys"]
                .as_u64()
                .unwrap() as usize;
            assert_eq!(m.store().len(), n_keys, "{name} nc={nc}: state_dict size");
        }
    }
}

#[test]
fn keys_and_shapes_equal_the_ultralytics_state_dict() {
    for name in ["yolov5n", "yolov5s", "yolo11n", "yolo11s"] {
        let path = fixtures().join(format!("keys_{name}_nc80.json"));
        let want: BTreeMap<String, Vec<usize>> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let m = model(name, 80);
        let got: BTreeMap<String, Vec<usize>> = m
            .store()
            .iter()
            .map(|(k, e)| (k.to_string(), e.var.dims().to_vec()))
            .collect();
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        for (k, s) in &want {
            assert_eq!(&got[k], s, "{name}: shape of {k}");
        }
    }
}

#[test]
fn gflops_match_ultralytics() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    for name in ["yolov5n", "yolov5s", "yolo11n", "yolo11s"] {
        for nc in [20, 80] {
            let want = reference[format!("{name}_{nc}")]["gflops"]
                .as_f64()
                .unwrap();
            let s = summarize(&*model(name, nc)).unwrap();
            assert!(
                (s.gflops - want).abs() < 1e-9 * want.max(1.0) * 1e3,
                "{name} nc={nc}: {} vs {want}",
                s.gflops
            );
            assert_eq!(
                s.layers.iter().map(|r| r.params).sum::<usize>(),
                s.params,
                "{name}"
            );
        }
    }
}

#[test]
fn unknown_model_lists_the_known_ones() {
    let e = build(
        "yolov8s",
        80,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("yolov8s") && e.contains("yolov5s") && e.contains("yolo11n"),
        "{e}"
    );
    let e = build(
        "yolov5s",
        0,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("classes"), "{e}");
}

/// Every neck Concat goes through the factory, with the paper's widths (PAPER.md §2.3).
#[test]
fn neck_concats_go_through_the_fusion_hook() {
    use std::sync::Mutex;
    #[derive(Default)]
    struct Record(Mutex<Vec<(usize, Vec<usize>, String)>>);
    impl FusionFactory for Record {
        fn make(
            &self,
            node: usize,
            widths: &[usize],
            scope: &mut Scope,
        ) -> q2_fusion::Result<Box<dyn Fusion>> {
            self.0
                .lock()
                .unwrap()
                .push((node, widths.to_vec(), scope.prefix().to_string()));
            scope.add(
                "alpha",
                widths.len(),
                Role::Quant,
                q2_nn::store::Init::Const(0.0),
            )?;
            PlainConcat.make(node, widths, scope)
        }
    }
    let r = Record::default();
    let m = build("yolov5s", 20, None, &r, ParamStore::new(Device::Cpu, 0)).unwrap();
    assert!(m.store().get("model.12.alpha").is_some());
    let got = r.0.lock().unwrap().clone();
    assert_eq!(
        got.iter()
            .map(|(n, w, s)| (*n, w.clone(), s.as_str()))
            .collect::<Vec<_>>(),
        [
            (12, vec![256, 256], "model.12"),
            (16, vec![128, 128], "model.16"),
            (19, vec![128, 128], "model.19"),
            (22, vec![256, 256], "model.22")
        ]
    );
    let r = Record::default();
    build("yolo11s", 20, None, &r, ParamStore::new(Device::Cpu, 0)).unwrap();
    let got: Vec<_> =
        r.0.lock()
            .unwrap()
            .iter()
            .map(|(n, w, _)| (*n, w.clone()))
            .collect();
    assert_eq!(
        got,
        [
            (12, vec![512, 256]),
            (15, vec![256, 256]),
            (18, vec![128, 256]),
            (21, vec![256, 512])
        ]
    );
}
