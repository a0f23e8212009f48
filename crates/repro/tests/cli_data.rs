//! `q2 synth` and `q2 map` end to end through the binary: a synthetic COCO dataset scored
//! against its own ground truth gives perfect metrics in all four families, every format is
//! written, and bad input exits with status 2 naming the file.

use std::path::Path;
use std::process::{Command, Output};

fn q2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_q2")).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not one JSON object ({e}): {s}"))
}

/// Detections equal to the ground-truth boxes, score 1.
fn perfect_detections(gt: &Path, out: &Path) {
    let g = json(&std::fs::read_to_string(gt).unwrap());
    let dt: Vec<serde_json::Value> = g["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| serde_json::json!({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}))
        .collect();
    assert!(!dt.is_empty());
    std::fs::write(out, serde_json::to_string(&dt).unwrap()).unwrap();
}

#[test]
fn synth_coco_scored_against_itself_is_perfect() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    let r = root.to_str().unwrap();
    let summary = json(&ok(&q2(&["synth", "--out", r, "--format", "coco", "--images", "24", "--seed", "3", "--json"])));
    assert_eq!(summary["train_images"].as_u64().unwrap() + summary["val_images"].as_u64().unwrap(), 24);
    let gt = root.join("annotations/instances_val.json");
    let dt = dir.path().join("dt.json");
    perfect_detections(&gt, &dt);
    let (g, d) = (gt.to_str().unwrap(), dt.to_str().unwrap());

    let coco = json(&ok(&q2(&["map", "--gt", g, "--dt", d, "--metric", "coco", "--json"])));
    let stats: Vec<f64> = coco["stats"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(stats.len(), 12);
    assert!((stats[0] - 1.0).abs() < 1e-12 && (stats[1] - 1.0).abs() < 1e-12, "{stats:?}");
    for m in ["voc07", "voc12"] {
        let v = json(&ok(&q2(&["map", "--gt", g, "--dt", d, "--metric", m, "--json"])));
        assert!((v["map"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{m}: {v}");
        assert!(!v["per_category"].as_array().unwrap().is_empty());
    }
    let y = json(&ok(&q2(&["map", "--gt", g, "--dt", d, "--metric", "yolo", "--json"])));
    // ultralytics' curve ends in the sentinel (recall 1, precision 0): a perfect detector scores 0.995.
    assert!((y["map50"].as_f64().unwrap() - 0.995).abs() < 1e-9, "{y}");
    assert!((y["map50_95"].as_f64().unwrap() - 0.995).abs() < 1e-9, "{y}");

    let table = ok(&q2(&["map", "--gt", g, "--dt", d]));
    assert!(table.contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"), "{table}");
}

#[test]
fn synth_writes_every_format_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for fmt in ["voc", "yolo", "coco"] {
        let a = dir.path().join(format!("{fmt}-a"));
        let b = dir.path().join(format!("{fmt}-b"));
        for p in [&a, &b] {
            ok(&q2(&["synth", "--out", p.to_str().unwrap(), "--format", fmt, "--images", "6", "--seed", "11"]));
            assert!(p.join("data.yaml").is_file(), "{fmt}: data.yaml");
        }
        let marker = match fmt {
            "voc" => "VOCdevkit",
            "yolo" => "labels",
            _ => "annotations",
        };
        assert!(a.join(marker).is_dir(), "{fmt}: {marker}/ missing");
        assert_eq!(tree(&a), tree(&b), "{fmt}: same seed, same files");
    }
}

/// Every file under `root` with its bytes, by relative path.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "data.yaml" {
                // data.yaml holds the absolute root path, which differs between a and b.
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn expect_status_2(args: &[&str], needle: &str) {
    let o = q2(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: stderr lacks `{needle}`: {err}");
}

#[test]
fn map_and_synth_reject_bad_input_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    ok(&q2(&["synth", "--out", root.to_str().unwrap(), "--format", "coco", "--images", "5", "--seed", "1"]));
    let gt = root.join("annotations/instances_val.json");
    let g = gt.to_str().unwrap();

    let unknown = dir.path().join("unknown_image.json");
    std::fs::write(&unknown, r#"[{"image_id": 987654, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]"#).unwrap();
    expect_status_2(&["map", "--gt", g, "--dt", unknown.to_str().unwrap()], "unknown_image.json");
    expect_status_2(&["map", "--gt", g, "--dt", unknown.to_str().unwrap()], "987654");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0"#).unwrap();
    expect_status_2(&["map", "--gt", g, "--dt", broken.to_str().unwrap()], "broken.json");
    expect_status_2(&["map", "--gt", broken.to_str().unwrap(), "--dt", broken.to_str().unwrap()], "broken.json");
    let missing = dir.path().join("missing.json");
    expect_status_2(&["map", "--gt", missing.to_str().unwrap(), "--dt", g], "missing.json");

    // Writing over an existing dataset needs --force.
    expect_status_2(&["synth", "--out", root.to_str().unwrap(), "--format", "coco", "--images", "5"], "--force");
}
