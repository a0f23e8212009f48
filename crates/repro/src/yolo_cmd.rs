//! `q2 summary` (per-layer parameters, total parameters and GFLOPs at 640, as ultralytics prints
//! them) and `q2 forward` (one eval forward of a YOLO model on a safetensors input, writing the raw
//! head outputs and the decoded predictions, for parity checks against PyTorch). Bad input (an
//! unknown model, a weight file that does not fit, a malformed input tensor) exits with status 2.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use q2_fusion::PlainConcat;
use q2_nn::{Mode, ParamStore};
use q2_yolo::{Detector, HeadOut};

use crate::cli::InputError;

/// Arguments of `q2 summary`.
#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    /// Model: yolov5n, yolov5s, yolov5m, yolo11n, yolo11s, yolo11m.
    #[arg(long)]
    pub model: String,
    /// Number of classes.
    #[arg(long, default_value_t = 80)]
    pub nc: usize,
    /// Print one JSON object {model, nc, params, gflops, imgsz, layers} instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `q2 forward`.
#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Model: yolov5n, yolov5s, yolov5m, yolo11n, yolo11s, yolo11m.
    #[arg(long)]
    pub model: String,
    /// Number of classes.
    #[arg(long)]
    pub nc: usize,
    /// Weights in ultralytics state_dict layout (tools/export_ultralytics.py).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Input: tensor `input`, (B, 3, H, W) float32, H and W multiples of 32.
    #[arg(long, value_name = "X.safetensors")]
    pub input: PathBuf,
    /// Output: YOLOv5 `p3_raw`, `p4_raw`, `p5_raw`, `decoded`; YOLO11 `p{3,4,5}_box_raw`,
    /// `p{3,4,5}_cls_raw`, `decoded` (float32).
    #[arg(long, value_name = "Y.safetensors")]
    pub out: PathBuf,
}

fn model(name: &str, nc: usize) -> Result<Box<dyn Detector>> {
    q2_yolo::build(
        name,
        nc,
        None,
        &PlainConcat,
        ParamStore::new(Device::Cpu, 0),
    )
    .map_err(|e| InputError(e.to_string()).into())
}

/// `q2 summary --model M --nc N [--json]`
pub fn summary(args: SummaryArgs) -> Result<()> {
    let det = model(&args.model, args.nc)?;
    let s = q2_yolo::summary::summarize(&*det)?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{}", q2_yolo::summary::render(&s));
    }
    Ok(())
}

/// `q2 forward --model M --nc N --weights W --input X --out Y`
pub fn forward(args: ForwardArgs) -> Result<()> {
    let det = model(&args.model, args.nc)?;
    q2_yolo::weights::load(det.store(), &args.weights).map_err(|e| InputError(e.to_string()))?;
    let tensors = q2_nn::store::load_tensors(&args.input, &Device::Cpu)
        .map_err(|e| InputError(e.to_string()))?;
    let x = tensors.get("input").ok_or_else(|| {
        InputError(format!(
            "{}: no tensor `input` (found: {:?})",
            args.input.display(),
            tensors.keys().collect::<Vec<_>>()
        ))
    })?;
    if x.dtype() != DType::F32 {
        return Err(InputError(format!(
            "{}: tensor `input` must be float32, got {:?}",
            args.input.display(),
            x.dtype()
        ))
        .into());
    }
    let out = det
        .forward(x, Mode::Eval)
        .map_err(|e| InputError(format!("{}: {e}", args.input.display())))?;
    let decoded = det.decode(&out)?;
    let mut save: HashMap<String, Tensor> = HashMap::new();
    save.insert("decoded".into(), decoded.contiguous()?);
    match &out {
        HeadOut::V5 { raw } => {
            for (l, t) in raw.iter().enumerate() {
                save.insert(format!("p{}_raw", l + 3), t.contiguous()?);
            }
        }
        HeadOut::V11 { box_raw, cls_raw } => {
            for l in 0..3 {
                save.insert(format!("p{}_box_raw", l + 3), box_raw[l].contiguous()?);
                save.insert(format!("p{}_cls_raw", l + 3), cls_raw[l].contiguous()?);
            }
        }
    }
    q2_nn::store::save_tensors(&save, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!("wrote {}", args.out.display());
    Ok(())
}
