//! NMS and post-processing against the reference implementations, on fixtures made by
//! `tools/make_nms_fixtures.py`: YOLOv5 `non_max_suppression` (val.py settings and variants) and
//! ultralytics 8.4 `non_max_suppression` (DetectionValidator settings and variants) on random
//! decoded tensors with clustered boxes, ties and threshold-edge values; YOLOv5 and ultralytics
//! `scale_boxes`; YOLOv5 val.py `save_one_json`; Python's `round`.
//!
//! Checked: the same kept detections (row or anchor, class) in the same order, scores and
//! classes equal, boxes equal (bit for bit; the brief's tolerance is 1e-5), scaled boxes and
//! COCO rows equal.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use q2_yolo::nms::{non_max_suppression, non_max_suppression_tensor, NmsConfig};
use q2_yolo::postprocess::{coco_results, round_decimals, scale_boxes, Detection, ImageId, RatioPad, ScaleRule};
use q2_yolo::Family;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/yolo").join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn cfg_of(v: &Value) -> NmsConfig {
    NmsConfig {
        conf_thres: v["conf_thres"].as_f64().unwrap() as f32,
        iou_thres: v["iou_thres"].as_f64().unwrap(),
        multi_label: v["multi_label"].as_bool().unwrap(),
        agnostic: v["agnostic"].as_bool().unwrap(),
        max_det: v["max_det"].as_u64().unwrap() as usize,
        max_nms: v.get("max_nms").and_then(Value::as_u64).unwrap_or(30000) as usize,
        max_wh: 7680.0,
        classes: None,
    }
}

#[derive(Default, Debug)]
struct Tally {
    configs: usize,
    images: usize,
    kept: usize,
    rows_checked: usize,
    max_box_diff: f32,
}

fn check_family(family: Family, file: &str, key: &str) -> Tally {
    let cases = json("nms_cases.json");
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(fixture(file), &Device::Cpu).unwrap();
    let mut t = Tally::default();
    for case in cases[key].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = &tensors[&format!("{name}.input")];
        let dims: [usize; 3] = input.dims().try_into().unwrap();
        let data = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let nc = case["nc"].as_u64().unwrap() as usize;
        for (cname, cv) in case["configs"].as_object().unwrap() {
            let cfg = cfg_of(cv);
            let out = non_max_suppression(&data, dims, family, &cfg).unwrap();
            // the tensor entry point gives the same
            assert_eq!(out, non_max_suppression_tensor(input, family, &cfg).unwrap());
            t.configs += 1;
            assert_eq!(out.len(), dims[0]);
            for (i, dets) in out.iter().enumerate() {
                t.images += 1;
                let want: Vec<i64> = tensors[&format!("{name}.{cname}.{i}.ids")].to_vec1::<i32>().unwrap().into_iter().map(i64::from).collect();
                let got: Vec<i64> = dets.iter().map(|d| (d.index * nc + d.class) as i64).collect();
                if got != want {
                    let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
                    panic!(
                        "{key} {name} {cname} image {i}: {} kept vs {} expected, first difference at {first}: got {:?} want {:?}",
                        got.len(),
                        want.len(),
                        got.get(first),
                        want.get(first)
                    );
                }
                t.kept += dets.len();
                if let Some(rows) = tensors.get(&format!("{name}.{cname}.{i}.rows")) {
                    let rows = rows.to_vec2::<f32>().unwrap();
                    assert_eq!(rows.len(), dets.len());
                    for (k, (d, r)) in dets.iter().zip(&rows).enumerate() {
                        assert_eq!(d.score.to_bits(), r[4].to_bits(), "{key} {name} {cname} image {i} det {k}: score");
                        assert_eq!(d.class as f32, r[5], "{key} {name} {cname} image {i} det {k}: class");
                        for c in 0..4 {
                            let diff = (d.xyxy[c] - r[c]).abs();
                            t.max_box_diff = t.max_box_diff.max(diff);
                            assert!(diff <= 1e-5, "{key} {name} {cname} image {i} det {k}: box {:?} vs {:?}", d.xyxy, &r[..4]);
                        }
                        t.rows_checked += 1;
                    }
                }
            }
        }
    }
    t
}

#[test]
fn yolov5_non_max_suppression_matches_reference() {
    let t = check_family(Family::V5, "nms_v5.safetensors", "v5");
    println!("YOLOv5 NMS: {t:?}");
    assert!(t.configs >= 15 && t.kept > 3000 && t.rows_checked > 2000, "{t:?}");
    assert_eq!(t.max_box_diff, 0.0);
}

#[test]
fn ultralytics_non_max_suppression_matches_reference() {
    let t = check_family(Family::V11, "nms_v11.safetensors", "v11");
    println!("YOLO11 NMS: {t:?}");
    assert!(t.configs >= 15 && t.kept > 3000 && t.rows_checked > 2000, "{t:?}");
    assert_eq!(t.max_box_diff, 0.0);
}

fn boxes_of(v: &Value) -> Vec<[f32; 4]> {
    v.as_array().unwrap().iter().map(|b| std::array::from_fn(|k| b[k].as_f64().unwrap() as f32)).collect()
}

fn pair(v: &Value) -> (f64, f64) {
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

#[test]
fn scale_boxes_and_coco_rows_match_reference() {
    let f = json("nms_scale.json");
    let class_map: Vec<i64> = f["class_map"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut max_diff = 0.0f32;
    let mut n_boxes = 0;
    let mut n_rows = 0;
    for (ci, case) in f["cases"].as_array().unwrap().iter().enumerate() {
        let (w0, h0) = pair(&case["orig_wh"]);
        let orig = (w0 as u32, h0 as u32);
        let (h1, w1) = pair(&case["input_hw"]);
        let input = (h1 as usize, w1 as usize);
        let boxes = boxes_of(&case["boxes"]);
        let rp = RatioPad { ratio: pair(&case["ratio"]), pad: pair(&case["pad"]) };
        let ul_rp = RatioPad { ratio: rp.ratio, pad: pair(&case["ul_pad"]) };
        assert_eq!(rp.ultralytics_pad(), ul_rp, "case {ci}: ultralytics pad");
        for (key, ratio_pad, rule) in [
            ("v5_ratio_pad", Some(rp), ScaleRule::Yolov5),
            ("v5_none", None, ScaleRule::Yolov5),
            ("ul_ratio_pad", Some(ul_rp), ScaleRule::Ultralytics),
            ("ul_none", None, ScaleRule::Ultralytics),
        ] {
            let mut got = boxes.clone();
            scale_boxes(&mut got, input, orig, ratio_pad, rule);
            let want = boxes_of(&case[key]);
            for (g, w) in got.iter().zip(&want) {
                for k in 0..4 {
                    let d = (g[k] - w[k]).abs();
                    max_diff = max_diff.max(d);
                    assert!(d <= 1e-5, "case {ci} {key}: {g:?} vs {w:?}");
                }
                n_boxes += 1;
            }
        }
        // COCO rows of the YOLOv5 ratio_pad result
        let mut scaled = boxes.clone();
        scale_boxes(&mut scaled, input, orig, Some(rp), ScaleRule::Yolov5);
        let scores = case["scores"].as_array().unwrap();
        let classes = case["classes"].as_array().unwrap();
        let dets: Vec<Detection> = scaled
            .iter()
            .enumerate()
            .map(|(i, b)| Detection { xyxy: *b, score: scores[i].as_f64().unwrap() as f32, class: classes[i].as_f64().unwrap() as usize, index: i })
            .collect();
        let id = ImageId::from_stem(case["image_id"].as_str().unwrap());
        let rows = coco_results(&id, &dets, &class_map).unwrap();
        let want = case["coco"].as_array().unwrap();
        assert_eq!(rows.len(), want.len());
        for (r, w) in rows.iter().zip(want) {
            let rv: Value = serde_json::to_value(r).unwrap();
            assert_eq!(rv["image_id"], w["image_id"], "case {ci}");
            assert_eq!(rv["category_id"], w["category_id"], "case {ci}");
            for k in 0..4 {
                assert_eq!(r.bbox[k], w["bbox"][k].as_f64().unwrap(), "case {ci}: bbox {:?} vs {}", r.bbox, w["bbox"]);
            }
            assert_eq!(r.score, w["score"].as_f64().unwrap(), "case {ci}");
            n_rows += 1;
        }
    }
    println!("scale_boxes: {n_boxes} boxes, max |diff| {max_diff}; COCO rows: {n_rows} equal");
    assert!(n_boxes >= 400 && n_rows >= 100);
}

#[test]
fn round_matches_python() {
    let f = json("nms_scale.json");
    for r in f["rounding"].as_array().unwrap() {
        let x = r["x"].as_f64().unwrap();
        assert_eq!(round_decimals(x, 3), r["r3"].as_f64().unwrap(), "round({x}, 3)");
        assert_eq!(round_decimals(x, 5), r["r5"].as_f64().unwrap(), "round({x}, 5)");
    }
}
