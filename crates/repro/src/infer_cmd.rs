//! `q2 detect` (detections on image files: COCO-results JSON and annotated PNGs) and `q2 val`
//! (a model scored on a dataset split with the three metric families of q2-eval, as YOLOv5
//! `val.py` runs it: rect letterboxed batches, conf 0.001, NMS IoU 0.6 (YOLOv5) / 0.7 (YOLO11),
//! max_det 300).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use q2_data::{DataConfig, Loader, LoaderConfig, OnError, ScanOptions, Split};
use q2_nn::Mode;
use q2_yolo::nms::{non_max_suppression_tensor, NmsConfig};
use q2_yolo::postprocess::{coco_results, write_coco_results, ImageId};
use q2_yolo::Family;

use crate::cli::InputError;
use crate::train::{glue, validate};

#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// yolov5n, yolov5s, yolo11n, yolo11s, ...
    #[arg(long)]
    pub model: String,
    /// Weights (safetensors, ultralytics names).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Number of classes of the weights.
    #[arg(long, default_value_t = 80)]
    pub nc: usize,
    /// Long side of the network input (the short side is padded to a multiple of 32).
    #[arg(long, default_value_t = 640)]
    pub img: usize,
    /// Confidence threshold (YOLOv5 detect.py: 0.25).
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// NMS IoU threshold (YOLOv5 detect.py: 0.45).
    #[arg(long, default_value_t = 0.45)]
    pub iou: f64,
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Output folder: `predictions.json` (COCO results; category id = class index + 1 unless
    /// --category-ids) and one annotated PNG per image.
    #[arg(long, value_name = "DIR", default_value = "runs/detect")]
    pub out: PathBuf,
    /// Comma-separated COCO category id of each class index (e.g. COCO's 1,2,3,...,90 table).
    #[arg(long)]
    pub category_ids: Option<String>,
    /// Do not write annotated PNGs.
    #[arg(long)]
    pub no_images: bool,
    /// JPEG or PNG files.
    #[arg(required = true, value_name = "IMAGES")]
    pub images: Vec<PathBuf>,
}

pub fn detect(args: DetectArgs) -> Result<()> {
    if args.img == 0 || args.img % 32 != 0 {
        return Err(InputError(format!("--img must be a positive multiple of 32, got {}", args.img)).into());
    }
    let dev = Device::Cpu;
    let model = glue::build_model(&args.model, args.nc, 0, &dev)?;
    glue::load_weights(model.as_ref(), &args.weights)?;
    let class_map: Vec<i64> = match &args.category_ids {
        None => (1..=args.nc as i64).collect(),
        Some(s) => {
            let v: Vec<i64> = s.split(',').map(|t| t.trim().parse::<i64>()).collect::<std::result::Result<_, _>>().map_err(|e| InputError(format!("--category-ids: {e}")))?;
            if v.len() != args.nc {
                return Err(InputError(format!("--category-ids lists {} ids for {} classes", v.len(), args.nc)).into());
            }
            v
        }
    };
    let mut cfg = match model.family() {
        Family::V5 => NmsConfig::yolov5_detect(),
        Family::V11 => NmsConfig::yolo11_detect(),
    };
    cfg.conf_thres = args.conf;
    cfg.iou_thres = args.iou;
    cfg.max_det = args.max_det;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut rows = Vec::new();
    for path in &args.images {
        let img = q2_data::image::decode_file(path).map_err(|e| InputError(e.to_string()))?;
        let (w0, h0) = (img.width, img.height);
        let r = args.img as f64 / w0.max(h0) as f64;
        let shape = |s: usize| ((s as f64 * r / 32.0).ceil() as usize).max(1) * 32;
        let (lb, info) = q2_data::augment::letterbox(&img, (shape(h0), shape(w0)), true);
        let chw: Vec<u8> = (0..3).flat_map(|c| lb.data.iter().skip(c).step_by(3).copied().collect::<Vec<_>>()).collect();
        let x = (Tensor::from_vec(chw, (1, 3, lb.height, lb.width), &dev)?.to_dtype(DType::F32)? / 255.0)?;
        let out = model.forward(&x, Mode::Eval)?;
        let decoded = model.decode(&out)?;
        let dets = non_max_suppression_tensor(&decoded, model.family(), &cfg)?.pop().unwrap_or_default();
        let shape_info = q2_data::loader::ShapeInfo { orig: (w0 as u32, h0 as u32), ratio: info.ratio, pad: info.pad };
        let orig = glue::to_original(model.family(), dets.clone(), (lb.height, lb.width), Some(&shape_info), w0 as u32, h0 as u32);
        let mut scaled = dets;
        for (d, o) in scaled.iter_mut().zip(&orig) {
            d.xyxy = [o.xywh[0], o.xywh[1], o.xywh[0] + o.xywh[2], o.xywh[1] + o.xywh[3]].map(|v| v as f32);
        }
        rows.extend(coco_results(&ImageId::from_path(path), &scaled, &class_map)?);
        if !args.no_images {
            let mut canvas = img;
            let boxes: Vec<(usize, [f32; 4])> = scaled.iter().map(|d| (d.class, d.xyxy)).collect();
            q2_data::synth::draw_labelled_boxes(&mut canvas, &boxes);
            let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
            let png = args.out.join(format!("{stem}.png"));
            q2_nn::fsutil::write_atomic(&png, &q2_data::image::encode_png(&canvas))?;
        }
        tracing::info!("{}: {} detections", path.display(), scaled.len());
    }
    let json = args.out.join("predictions.json");
    write_coco_results(&json, &rows)?;
    println!("{} detections on {} images: {}", rows.len(), args.images.len(), json.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ValArgs {
    /// The model (not needed with --config).
    #[arg(long, required_unless_present = "config")]
    pub model: Option<String>,
    /// The configuration of the run the weights come from (`RUN/config.toml` of q2 train / q2 qat):
    /// the model is built with its quantizers and Q-GBFusion (folded weights included).
    #[arg(long, value_name = "config.toml")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Dataset folder or data.yaml (VOC, COCO or YOLO layout).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// train, val or test.
    #[arg(long, default_value = "val")]
    pub split: String,
    #[arg(long, default_value_t = 640)]
    pub img: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Score at most this many images (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Also write the ground truth (`PREFIX.gt.json`) and predictions (`PREFIX.dt.json`) in COCO
    /// formats, for `q2 map` or pycocotools.
    #[arg(long, value_name = "PREFIX")]
    pub save_json: Option<PathBuf>,
    /// Skip unreadable images and objects (reported) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn val(args: ValArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        s => return Err(InputError(format!("--split must be train, val or test, got `{s}`")).into()),
    };
    if args.img == 0 || args.img % 32 != 0 || args.batch == 0 {
        return Err(InputError("--img must be a positive multiple of 32 and --batch ≥ 1".into()).into());
    }
    let on_error = if args.skip_bad { OnError::Skip } else { OnError::Fail };
    let dc = DataConfig::discover(&args.data, None).map_err(|e| InputError(e.to_string()))?;
    let ds = dc.read(split, &ScanOptions { on_error, progress: !args.json }).map_err(|e| InputError(e.to_string()))?;
    if !ds.report.is_empty() {
        eprintln!("{}", ds.report.summary(10));
    }
    let dev = Device::Cpu;
    let model = match &args.config {
        Some(c) => {
            let mut cfg = crate::train::TrainConfig::load(c)?;
            if let Some(m) = &args.model {
                cfg.model = m.clone();
            }
            crate::train::qat::build(&cfg, ds.names.len(), &dev)?.0
        }
        None => glue::build_model(args.model.as_deref().unwrap_or_default(), ds.names.len(), 0, &dev)?,
    };
    glue::load_weights(model.as_ref(), &args.weights)?;
    let mut vc = LoaderConfig::val(args.img, args.batch, args.workers);
    vc.on_error = on_error;
    vc.progress = false;
    let n = if args.max_images == 0 { ds.len() } else { args.max_images.min(ds.len()) };
    let loader = Loader::new(ds, vc).map_err(|e| InputError(e.to_string()))?;
    let t0 = std::time::Instant::now();
    let (gt, dets) = validate::predict(model.as_ref(), &loader, n, &dev)?;
    let mut m = validate::score(&gt, &dets);
    m.seconds = t0.elapsed().as_secs_f64();
    if let Some(prefix) = &args.save_json {
        let p = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
        q2_nn::fsutil::write_atomic(&p("gt.json"), gt.to_json().as_bytes())?;
        q2_nn::fsutil::write_atomic(&p("dt.json"), gt.detections_to_json(&dets).as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        println!("{} images, {} detections, {:.1} s", m.images, m.detections, m.seconds);
        println!("YOLOv5 val.py: mAP50 {:.4}  mAP50-95 {:.4}", m.map50, m.map50_95);
        println!("COCO: AP {:.4}  AP50 {:.4}  AP75 {:.4}  APs {:.4}  APm {:.4}  APl {:.4}", m.coco[0], m.coco[1], m.coco[2], m.coco[3], m.coco[4], m.coco[5]);
        println!("VOC07 mAP {:.4}  VOC12 mAP {:.4}", m.voc07, m.voc12);
    }
    Ok(())
}
