//! `q2 map` and `q2 bench-eval`: detection metrics from the command line (q2-eval).
//!
//! `q2 map --gt GT.json --dt DT.json --metric coco|voc07|voc12|yolo [--pixel-plus1] [--json]`
//! scores COCO-format detections; with `--json` stdout is one JSON object: coco →
//! `{"stats": [12], "per_category": [{"category_id", "ap"}]}`; voc07/voc12 → `{"map",
//! "per_category": [{"category_id", "ap"}]}`; yolo → `{"map50", "map50_95", "per_category":
//! [{"category_id", "ap50", "ap50_95"}]}`. Without it, a table (pycocotools' summary lines for
//! coco). Invalid input exits with status 2 and a message naming the file and the object.
//!
//! `q2 bench-eval` times the metrics on a seeded COCO-val-sized problem (q2_eval::synth), parsed
//! from the JSON text it writes, so the timing covers exactly what `q2 map` would do; `--out DIR`
//! keeps `gt.json`, `dt.json` and `q2.json` (timings and results) for
//! `tools/bench_pycocotools.py`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use q2_eval::{coco, io, voc, yolo, GroundTruth};
use serde_json::json;

use crate::cli::InputError;

/// Which metric `q2 map` computes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// pycocotools COCOeval (bbox): the 12 summary numbers.
    Coco,
    /// PASCAL VOC2007 11-point AP at IoU > 0.5.
    Voc07,
    /// PASCAL VOC2010+ all-point AP at IoU > 0.5.
    Voc12,
    /// YOLOv5 val.py mAP50 and mAP50-95.
    Yolo,
}

/// Arguments of `q2 map`.
#[derive(clap::Args, Debug)]
pub struct MapArgs {
    /// Ground truth, COCO annotation format (`difficult: 1` on an annotation is honoured by voc07/voc12/yolo).
    #[arg(long, value_name = "GT.json")]
    pub gt: PathBuf,
    /// Detections, COCO results format: [{image_id, category_id, bbox: [x, y, w, h], score}].
    #[arg(long, value_name = "DT.json")]
    pub dt: PathBuf,
    /// Metric.
    #[arg(long, value_enum, default_value = "coco")]
    pub metric: Metric,
    /// voc07/voc12 only: py-faster-rcnn's box geometry (x2 = x + w, +1 on widths, heights and areas).
    #[arg(long)]
    pub pixel_plus1: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn input(e: q2_eval::EvalError) -> anyhow::Error {
    InputError(e.to_string()).into()
}

fn category_name(gt: &GroundTruth, id: i64) -> &str {
    gt.category_index(id).and_then(|i| gt.categories[i as usize].name.as_deref()).unwrap_or("")
}

/// What `q2 map` prints.
fn render(args: &MapArgs) -> Result<String> {
    if args.pixel_plus1 && !matches!(args.metric, Metric::Voc07 | Metric::Voc12) {
        return Err(InputError("--pixel-plus1 applies to --metric voc07 and voc12 only".into()).into());
    }
    let gt = io::read_ground_truth(&args.gt).map_err(input)?;
    let dt = io::read_detections(&args.dt, &gt).map_err(input)?;
    let mut s = String::new();
    match args.metric {
        Metric::Coco => {
            let e = coco::evaluate(&gt, &dt);
            let per = e.per_category();
            if args.json {
                s = json!({"stats": e.stats, "per_category": per}).to_string();
            } else {
                for l in e.summary_lines() {
                    writeln!(s, "{l}")?;
                }
                writeln!(s, "\nPer category (AP @[ IoU=0.50:0.95 | area=all | maxDets=100 ]):")?;
                writeln!(s, "{:>12}  {:>7}  name", "category_id", "AP")?;
                for c in &per {
                    writeln!(s, "{:>12}  {:>7.4}  {}", c.category_id, c.ap, category_name(&gt, c.category_id))?;
                }
            }
        }
        Metric::Voc07 | Metric::Voc12 => {
            let m = if args.metric == Metric::Voc07 { voc::VocMetric::Voc07 } else { voc::VocMetric::Voc12 };
            let r = voc::evaluate(&gt, &dt, m, args.pixel_plus1);
            if args.json {
                s = json!({"map": r.map, "per_category": r.per_category}).to_string();
            } else {
                let what = if m == voc::VocMetric::Voc07 { "VOC07 11-point" } else { "VOC2010+ all-point" };
                let geom = if args.pixel_plus1 { "py-faster-rcnn +1 box geometry" } else { "COCO box geometry" };
                writeln!(s, "{what} AP at IoU > 0.5 ({geom}), {} categories with ground truth", r.per_category.len())?;
                writeln!(s, "{:>12}  {:>7}  name", "category_id", "AP")?;
                for c in &r.per_category {
                    writeln!(s, "{:>12}  {:>7.4}  {}", c.category_id, c.ap, category_name(&gt, c.category_id))?;
                }
                writeln!(s, "{:>12}  {:>7.4}", "mAP", r.map)?;
            }
        }
        Metric::Yolo => {
            let r = yolo::evaluate(&gt, &dt);
            if args.json {
                s = json!({"map50": r.map50, "map50_95": r.map50_95, "per_category": r.per_category}).to_string();
            } else {
                writeln!(s, "YOLOv5 val.py metrics, {} categories with labels", r.per_category.len())?;
                writeln!(s, "{:>12}  {:>7}  {:>9}  name", "category_id", "mAP50", "mAP50-95")?;
                for c in &r.per_category {
                    writeln!(s, "{:>12}  {:>7.4}  {:>9.4}  {}", c.category_id, c.ap50, c.ap50_95, category_name(&gt, c.category_id))?;
                }
                writeln!(s, "{:>12}  {:>7.4}  {:>9.4}", "all", r.map50, r.map50_95)?;
            }
        }
    }
    Ok(s)
}

/// `q2 map`
pub fn map(args: MapArgs) -> Result<()> {
    let out = render(&args)?;
    if args.json {
        println!("{out}");
    } else {
        print!("{out}");
    }
    Ok(())
}

/// Arguments of `q2 bench-eval`.
#[derive(clap::Args, Debug)]
pub struct BenchEvalArgs {
    /// Images (COCO val2017 has 5,000).
    #[arg(long, default_value_t = 5000)]
    pub images: usize,
    /// Detections per image.
    #[arg(long, default_value_t = 100)]
    pub dets: usize,
    /// Seed of the synthetic ground truth and detections.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timed runs of each metric; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Write gt.json, dt.json and q2.json (timings, results) into this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Median wall time in ms of `n` runs of `f`, and its last result.
fn time_median<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n.max(1) {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], last.expect("at least one run"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    q2_nn::fsutil::write_atomic(&p, bytes).with_context(|| format!("writing {}", p.display()))
}

/// `q2 bench-eval`
pub fn bench_eval(args: BenchEvalArgs) -> Result<()> {
    if args.images == 0 || args.dets == 0 || args.repeat == 0 {
        return Err(InputError("--images, --dets and --repeat must be positive".into()).into());
    }
    let cfg = q2_eval::synth::SynthConfig { images: args.images, dets_per_image: args.dets, seed: args.seed };
    let (gt0, dt0) = q2_eval::synth::coco_val_like(cfg);
    let gt_text = gt0.to_json();
    let dt_text = gt0.detections_to_json(&dt0);
    drop((gt0, dt0));
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write(dir, "gt.json", gt_text.as_bytes())?;
        write(dir, "dt.json", dt_text.as_bytes())?;
    }
    let (parse_ms, (gt, dt)) = time_median(args.repeat, || {
        let gt = io::parse_ground_truth(gt_text.as_bytes(), "gt.json").expect("generated ground truth parses");
        let dt = io::parse_detections(dt_text.as_bytes(), "dt.json", &gt).expect("generated detections parse");
        (gt, dt)
    });
    let (coco_ms, e) = time_median(args.repeat, || coco::evaluate(&gt, &dt));
    let (voc07_ms, v07) = time_median(args.repeat, || voc::evaluate(&gt, &dt, voc::VocMetric::Voc07, false));
    let (voc12_ms, v12) = time_median(args.repeat, || voc::evaluate(&gt, &dt, voc::VocMetric::Voc12, false));
    let (yolo_ms, y) = time_median(args.repeat, || yolo::evaluate(&gt, &dt));
    let threads = rayon::current_num_threads();
    let report = json!({
        "images": gt.images.len(),
        "annotations": gt.annotations.len(),
        "detections": dt.len(),
        "categories": gt.categories.len(),
        "seed": args.seed,
        "threads": threads,
        "repeat": args.repeat,
        "parse_ms": parse_ms,
        "coco_ms": coco_ms,
        "voc07_ms": voc07_ms,
        "voc12_ms": voc12_ms,
        "yolo_ms": yolo_ms,
        "coco_stats": e.stats,
        "voc07_map": v07.map,
        "voc12_map": v12.map,
        "yolo_map50": y.map50,
        "yolo_map50_95": y.map50_95,
    });
    if let Some(dir) = &args.out {
        write(dir, "q2.json", report.to_string().as_bytes())?;
        tracing::info!("wrote gt.json, dt.json and q2.json to {}", dir.display());
    }
    if args.json {
        println!("{report}");
    } else {
        println!(
            "q2 bench-eval: {} images, {} ground-truth boxes, {} detections, {} categories; {threads} threads, median of {}",
            gt.images.len(),
            gt.annotations.len(),
            dt.len(),
            gt.categories.len(),
            args.repeat
        );
        println!("{:<34} {:>10}", "step", "ms");
        println!("{:<34} {:>10.1}", "parse gt.json + dt.json", parse_ms);
        println!("{:<34} {:>10.1}", "coco (evaluate+accumulate+summarize)", coco_ms);
        println!("{:<34} {:>10.1}", "voc07", voc07_ms);
        println!("{:<34} {:>10.1}", "voc12", voc12_ms);
        println!("{:<34} {:>10.1}", "yolo", yolo_ms);
        println!("COCO AP {:.4}  AP50 {:.4}  AP75 {:.4}; VOC07 {:.4}; VOC12 {:.4}; YOLO mAP50 {:.4} mAP50-95 {:.4}", e.stats[0], e.stats[1], e.stats[2], v07.map, v12.map, y.map50, y.map50_95);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: &str = r#"{"images": [{"id": 1}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 10], "area": 200, "difficult": 1},
                        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [100, 100, 40, 40], "area": 1600}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]}"#;
    const DT: &str = r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9},
                        {"image_id": 2, "category_id": 2, "bbox": [100, 100, 40, 40], "score": 0.8},
                        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 10], "score": 0.95}]"#;

    fn args(dir: &Path, metric: Metric, json: bool) -> MapArgs {
        MapArgs { gt: dir.join("gt.json"), dt: dir.join("dt.json"), metric, pixel_plus1: false, json }
    }

    fn setup(dt: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gt.json"), GT).unwrap();
        std::fs::write(dir.path().join("dt.json"), dt).unwrap();
        dir
    }

    #[test]
    fn json_output_per_metric() {
        let dir = setup(DT);
        let coco: serde_json::Value = serde_json::from_str(&render(&args(dir.path(), Metric::Coco, true)).unwrap()).unwrap();
        assert_eq!(coco["stats"].as_array().unwrap().len(), 12);
        // COCO ignores `difficult`: the 0.95 detection is a true positive on annotation 2.
        assert!(coco["stats"][1].as_f64().unwrap() > 0.99);
        assert_eq!(coco["per_category"][1]["category_id"], 2);
        let voc: serde_json::Value = serde_json::from_str(&render(&args(dir.path(), Metric::Voc07, true)).unwrap()).unwrap();
        assert!((voc["map"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{voc}");
        assert_eq!(voc["per_category"].as_array().unwrap().len(), 2);
        let y: serde_json::Value = serde_json::from_str(&render(&args(dir.path(), Metric::Yolo, true)).unwrap()).unwrap();
        // A perfect detector scores 0.995 in ultralytics' 101-point trapezoid integral; YOLOv5
        // drops the difficult box, so in category 2 a false positive ranks first: 0.4975.
        assert!((y["per_category"][0]["ap50"].as_f64().unwrap() - 0.995).abs() < 1e-12, "{y}");
        assert!((y["per_category"][1]["ap50"].as_f64().unwrap() - 0.4975).abs() < 1e-12, "{y}");
        assert!((y["map50"].as_f64().unwrap() - 0.74625).abs() < 1e-12, "{y}");
    }

    #[test]
    fn tables_name_categories() {
        let dir = setup(DT);
        let t = render(&args(dir.path(), Metric::Coco, false)).unwrap();
        assert!(t.starts_with(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = "), "{t}");
        assert!(t.contains("person"));
        let t = render(&MapArgs { pixel_plus1: true, ..args(dir.path(), Metric::Voc12, false) }).unwrap();
        assert!(t.contains("py-faster-rcnn +1 box geometry") && t.contains("mAP"), "{t}");
        let t = render(&args(dir.path(), Metric::Yolo, false)).unwrap();
        assert!(t.contains("mAP50-95") && t.contains("car"), "{t}");
    }

    #[test]
    fn bad_input_is_exit_status_2_and_names_the_file() {
        let dir = setup(r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}, {"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#);
        let e = render(&args(dir.path(), Metric::Coco, true)).unwrap_err();
        assert_eq!(crate::cli::exit_code(&e), 2);
        let msg = format!("{e:#}");
        assert!(msg.contains("dt.json: detection 1: image_id 99 is not in the ground truth's images"), "{msg}");
        let e = render(&MapArgs { pixel_plus1: true, ..args(dir.path(), Metric::Coco, true) }).unwrap_err();
        assert_eq!(crate::cli::exit_code(&e), 2);
        let e = render(&MapArgs { gt: dir.path().join("missing.json"), ..args(dir.path(), Metric::Coco, true) }).unwrap_err();
        assert_eq!(crate::cli::exit_code(&e), 2);
        assert!(format!("{e:#}").contains("missing.json"));
        std::fs::write(dir.path().join("dt.json"), "[{\"image_id\": 1,").unwrap();
        let e = render(&args(dir.path(), Metric::Yolo, true)).unwrap_err();
        assert!(format!("{e:#}").contains("dt.json: detection 0: EOF while parsing"), "{e:#}");
    }

    #[test]
    fn bench_eval_writes_files_that_q2_map_reads() {
        let dir = tempfile::tempdir().unwrap();
        bench_eval(BenchEvalArgs { images: 20, dets: 10, seed: 3, repeat: 1, out: Some(dir.path().to_path_buf()), json: true }).unwrap();
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("q2.json")).unwrap()).unwrap();
        assert_eq!(report["detections"], 200);
        let coco: serde_json::Value = serde_json::from_str(&render(&args(dir.path(), Metric::Coco, true)).unwrap()).unwrap();
        assert_eq!(coco["stats"], report["coco_stats"]);
    }
}
