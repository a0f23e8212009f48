//! The few places where training meets the model crates: building a detector by name, its loss
//! from the run's hyperparameters (the family decides which), NMS with the family's validation
//! settings, and mapping detections back to the original image.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use q2_data::loader::ShapeInfo;
use q2_data::Hyp;
use q2_fusion::FusionFactory;
use q2_nn::ParamStore;
use q2_quant::QuantPlan;
use q2_yolo::loss::v5::{V5Hyp, V5Loss, V5LossConfig};
use q2_yolo::loss::v8::{V8Loss, V8LossConfig};
use q2_yolo::nms::{non_max_suppression_tensor, Detection, NmsConfig};
use q2_yolo::postprocess::{scale_detections, RatioPad, ScaleRule};
use q2_yolo::{Detector, Family, HeadOut, Targets};

use super::TrainConfig;
use crate::cli::InputError;

/// A full-precision detector with plain Concat fusion, parameters initialised from `seed`.
pub fn build_model(name: &str, nc: usize, seed: u64, device: &Device) -> Result<Box<dyn Detector>> {
    build_model_with(name, nc, seed, device, None, &q2_fusion::PlainConcat)
}

/// As [`build_model`], optionally quantized by `plan`, with `fusion` at the neck Concats.
pub fn build_model_with(name: &str, nc: usize, seed: u64, device: &Device, plan: Option<&QuantPlan>, fusion: &dyn FusionFactory) -> Result<Box<dyn Detector>> {
    q2_yolo::build::family_of(name).map_err(|e| InputError(e.to_string()))?;
    let store = ParamStore::new(device.clone(), seed);
    Ok(q2_yolo::build::build(name, nc, plan, fusion, store)?)
}

/// Loads ultralytics-named weights (a mismatch names the file and the keys).
pub fn load_weights(model: &dyn Detector, path: &Path) -> Result<()> {
    q2_yolo::weights::load(model.store(), path).map_err(|e| InputError(e.to_string()).into())
}

/// The model family's loss, configured from the run.
pub enum Loss {
    V5(V5Loss),
    V8(V8Loss),
}

impl Loss {
    /// YOLOv5: `ComputeLoss` with `hyp`'s gains rescaled as train.py does; YOLO11:
    /// `v8DetectionLoss` with the configuration's `v11_*` gains (ultralytics `default.yaml`).
    pub fn new(model: &dyn Detector, hyp: &Hyp, cfg: &TrainConfig) -> Result<Self> {
        Ok(match model.family() {
            Family::V5 => {
                let h = V5Hyp {
                    box_gain: hyp.box_ as f32,
                    obj_gain: hyp.obj as f32,
                    cls_gain: hyp.cls as f32,
                    cls_pw: hyp.cls_pw as f32,
                    obj_pw: hyp.obj_pw as f32,
                    anchor_t: hyp.anchor_t as f32,
                    fl_gamma: hyp.fl_gamma as f32,
                    label_smoothing: 0.0,
                };
                Loss::V5(V5Loss::new(V5LossConfig::from_hyp(&h, model.nc(), cfg.img, &model.anchors(), model.strides())?))
            }
            Family::V11 => {
                let mut c = V8LossConfig::new(model.nc(), model.strides());
                c.box_gain = cfg.v11_box as f32;
                c.cls_gain = cfg.v11_cls as f32;
                c.dfl_gain = cfg.v11_dfl as f32;
                Loss::V8(V8Loss::new(c)?)
            }
        })
    }

    /// The scalar to back-propagate and the three logged terms.
    pub fn compute(&self, out: &HeadOut, targets: &Targets, _batch: usize) -> Result<(Tensor, [f32; 3])> {
        let l = match self {
            Loss::V5(l) => l.forward(out, targets)?,
            Loss::V8(l) => l.forward(out, targets)?,
        };
        Ok((l.total, l.items))
    }

    pub fn item_names(&self) -> [&'static str; 3] {
        match self {
            Loss::V5(_) => ["box", "obj", "cls"],
            Loss::V8(_) => ["box", "cls", "dfl"],
        }
    }
}

/// NMS with the validation settings of the model's reference (`val.py` / `DetectionValidator`).
pub fn nms(model: &dyn Detector, decoded: &Tensor) -> Result<Vec<Vec<Detection>>> {
    Ok(non_max_suppression_tensor(decoded, model.family(), &NmsConfig::val(model.family()))?)
}

/// A detection in original image pixels.
#[derive(Clone, Debug)]
pub struct OrigDet {
    pub class: usize,
    /// `[x, y, w, h]` (top-left corner and size).
    pub xywh: [f64; 4],
    pub score: f64,
}

/// Maps detections of a letterboxed input (`input_hw`) back to the original `w0 × h0` image with
/// the reference's `scale_boxes` (YOLOv5 for YOLOv5 models, ultralytics for YOLO11).
pub fn to_original(family: Family, mut dets: Vec<Detection>, input_hw: (usize, usize), shape: Option<&ShapeInfo>, w0: u32, h0: u32) -> Vec<OrigDet> {
    let (rule, rp) = match family {
        Family::V5 => (ScaleRule::Yolov5, shape.map(|s| RatioPad { ratio: s.ratio, pad: s.pad })),
        Family::V11 => (ScaleRule::Ultralytics, shape.map(|s| RatioPad { ratio: s.ratio, pad: s.pad }.ultralytics_pad())),
    };
    scale_detections(&mut dets, input_hw, (w0, h0), rp, rule);
    dets.into_iter()
        .map(|d| {
            let [x1, y1, x2, y2] = d.xyxy.map(f64::from);
            OrigDet { class: d.class, xywh: [x1, y1, x2 - x1, y2 - y1], score: d.score as f64 }
        })
        .collect()
}
