//! The interface every detector implements ([`Detector`]), the raw head outputs ([`HeadOut`]) and
//! the training targets ([`Targets`]) that losses, decoding, the trainer and the CLI share.
//!
//! Layouts (the `q2 forward` contract of the model issue):
//! - YOLOv5: `raw[l]` is the Detect 1×1 conv output of level l (P3, P4, P5), shape
//!   (B, na·(5+nc), h, w), channel `a·(5+nc) + k`, before the sigmoid.
//! - YOLO11: `box_raw[l]` (B, 4·reg_max, h, w) raw DFL logits, channel `side·reg_max + bin` with
//!   sides l, t, r, b; `cls_raw[l]` (B, nc, h, w) class logits.

use candle_core::Tensor;
use q2_nn::{Mode, ParamStore};

/// Which family a model belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Anchor-based, objectness + classes (YOLOv5).
    V5,
    /// Anchor-free, DFL boxes + classes (YOLO11, ultralytics `v8DetectionLoss`).
    V11,
}

/// Raw outputs of the Detect head, per level P3, P4, P5.
#[derive(Clone, Debug)]
pub enum HeadOut {
    V5 { raw: [Tensor; 3] },
    V11 { box_raw: [Tensor; 3], cls_raw: [Tensor; 3] },
}

/// Ground-truth boxes of a batch in ultralytics' label layout: one row per box, the image's index
/// in the batch, the contiguous class index, and (cx, cy, w, h) normalised by the (letterboxed)
/// input's width and height.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    pub image: Vec<usize>,
    pub class: Vec<usize>,
    pub xywhn: Vec<[f32; 4]>,
}

impl Targets {
    pub fn len(&self) -> usize {
        self.image.len()
    }

    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }
}

/// A YOLO detector: the model issue's YOLOv5 and YOLO11 at every scale implement it.
pub trait Detector: Send + Sync {
    /// Model name as on the command line (`yolov5n`, `yolov5s`, `yolo11n`, `yolo11s`, ...).
    fn name(&self) -> &str;
    fn family(&self) -> Family;
    /// Number of classes.
    fn nc(&self) -> usize;
    /// Strides of P3, P4, P5 (8, 16, 32).
    fn strides(&self) -> [usize; 3];
    /// YOLOv5 anchors in pixels, `[level][anchor] = (w, h)`; empty for anchor-free models.
    fn anchors(&self) -> Vec<[(f32, f32); 3]>;
    /// The parameters and buffers, keyed by ultralytics `state_dict` names.
    fn store(&self) -> &ParamStore;
    /// One pass through the network under a context (BN mode, calibration, operation counting):
    /// the Detect inputs and the head outputs. The passes below are built on it.
    fn run(&self, x: &Tensor, cx: crate::blocks::Ctx<'_>) -> crate::Result<([Tensor; 3], HeadOut)>;
    /// Forward pass on a (B, 3, H, W) float32 batch in [0, 1] (H, W multiples of 32).
    fn forward(&self, x: &Tensor, mode: Mode) -> crate::Result<HeadOut> {
        Ok(self.run(x, crate::blocks::Ctx::new(mode))?.1)
    }
    /// The three Detect inputs (P3, P4, P5 neck outputs) together with the head outputs: the
    /// features Q-ADA aligns.
    fn forward_features(&self, x: &Tensor, mode: Mode) -> crate::Result<([Tensor; 3], HeadOut)> {
        self.run(x, crate::blocks::Ctx::new(mode))
    }
    /// Inference decoding of raw outputs (the `decoded` tensor of `q2 forward`): YOLOv5
    /// (B, Σ na·h·w, 5+nc) with cx, cy, w, h in pixels, objectness and class sigmoids, rows by
    /// level then (a·h + gy)·w + gx; YOLO11 (B, 4+nc, A) with cx, cy, w, h in pixels then class
    /// sigmoids, anchors by level then gy·w + gx.
    fn decode(&self, out: &HeadOut) -> crate::Result<Tensor>;
    /// Data-driven initialisation of every quantizer from one calibration batch (no-op in FP).
    fn calibrate(&self, x: &Tensor) -> crate::Result<()> {
        self.run(x, crate::blocks::Ctx { calib: true, ..crate::blocks::Ctx::new(Mode::Eval) }).map(|_| ())
    }

    /// The convs reading each neck fusion node's output, by node index (YOLOv5: C3 `cv1` and
    /// `cv2`; YOLO11: C3k2 `cv1`): what LN folding and Q-GBFusion's calibrated insertion rescale.
    fn fusion_consumers(&self) -> Vec<(usize, Vec<q2_fusion::Consumer<'_>>)> {
        Vec::new()
    }

    /// The activation quantizer that reads each Detect input (P3, P4, P5): Q-ADA's Q and its step
    /// s_c (YOLOv5: the prediction conv's; YOLO11: the box branch's first conv's). `None` in FP.
    fn feature_quantizers(&self) -> [Option<&dyn q2_quant::Quantizer>; 3] {
        [None, None, None]
    }

    /// The ultralytics-style layer table (index, from, repeats, module, arguments) for
    /// `q2 summary`; parameters are filled in by [`crate::summary::summarize`].
    fn layer_table(&self) -> Vec<crate::summary::LayerRow> {
        Vec::new()
    }

    /// Operations of one eval forward on `x` (thop's rules, multiply-accumulates), for GFLOPs.
    /// Returns (ops linear in the input area, ops quadratic in it).
    fn count_ops(&self, _x: &Tensor) -> crate::Result<(u64, u64)> {
        Err(crate::YoloError::Invalid(format!("{}: operation counting is not implemented", self.name())))
    }
}
