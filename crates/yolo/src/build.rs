//! Building a detector by name: [`build`] and the list of known models [`MODELS`].

use candle_core::Tensor;
use q2_fusion::FusionFactory;
use q2_nn::{Feat, ParamStore};
use q2_quant::QuantPlan;

use crate::yolo11::{Yolo11m, Yolo11n, Yolo11s};
use crate::yolov5::{Yolov5m, Yolov5n, Yolov5s};
use crate::{Detector, Family, Result, YoloError};

/// Every model name [`build`] accepts.
pub const MODELS: [&str; 6] = [
    "yolov5n", "yolov5s", "yolov5m", "yolo11n", "yolo11s", "yolo11m",
];

/// The family of a model name, or an error listing the known names.
pub fn family_of(name: &str) -> Result<Family> {
    match name {
        "yolov5n" | "yolov5s" | "yolov5m" => Ok(Family::V5),
        "yolo11n" | "yolo11s" | "yolo11m" => Ok(Family::V11),
        other => Err(unknown(other)),
    }
}

fn unknown(name: &str) -> YoloError {
    YoloError::Invalid(format!(
        "unknown model `{name}`; known models: {}",
        MODELS.join(", ")
    ))
}

/// Builds model `name` with `nc` classes into `store` (a fresh store: its device and seed decide
/// where the model lives and how it is initialised; the detector owns it afterwards), with an
/// optional quantization plan (`None`: full precision) and the fusion `fusion` makes for each
/// neck Concat (`&q2_fusion::PlainConcat` for the ultralytics model).
pub fn build(
    name: &str,
    nc: usize,
    plan: Option<&QuantPlan>,
    fusion: &dyn FusionFactory,
    store: ParamStore,
) -> Result<Box<dyn Detector>> {
    if !store.is_empty() {
        return Err(YoloError::Invalid(format!(
            "{name}: the parameter store must be empty, it holds {} entries",
            store.len()
        )));
    }
    Ok(match name {
        "yolov5n" => Box::new(Yolov5n::new(store, nc, plan, fusion)?),
        "yolov5s" => Box::new(Yolov5s::new(store, nc, plan, fusion)?),
        "yolov5m" => Box::new(Yolov5m::new(store, nc, plan, fusion)?),
        "yolo11n" => Box::new(Yolo11n::new(store, nc, plan, fusion)?),
        "yolo11s" => Box::new(Yolo11s::new(store, nc, plan, fusion)?),
        "yolo11m" => Box::new(Yolo11m::new(store, nc, plan, fusion)?),
        other => return Err(unknown(other)),
    })
}

/// Checks a model input: (B, 3, H, W) float32 with H and W positive multiples of 32.
pub fn model_input(x: &Tensor) -> Result<Feat<3>> {
    let d = x.dims();
    if d.len() != 4
        || d[1] != 3
        || d[0] == 0
        || d[2] == 0
        || d[3] == 0
        || d[2] % 32 != 0
        || d[3] % 32 != 0
    {
        return Err(YoloError::Invalid(format!(
            "model input must be (B, 3, H, W) with H and W positive multiples of 32, got {d:?}"
        )));
    }
    if x.dtype() != candle_core::DType::F32 {
        return Err(YoloError::Invalid(format!(
            "model input must be float32, got {:?}",
            x.dtype()
        )));
    }
    Ok(Feat::new(x.clone())?)
}
