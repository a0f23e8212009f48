//! Detection losses (YOLOv5 `ComputeLoss`, YOLO11 `v8DetectionLoss`).
//!
//! - [`v5`]: YOLOv5 `utils/loss.py::ComputeLoss` (anchor matching with neighbouring cells, CIoU,
//!   IoU-valued objectness, level balance) and train.py's gain rescaling ([`V5LossConfig::from_hyp`]);
//! - [`v8`]: ultralytics `utils/loss.py::v8DetectionLoss` as YOLO11 trains with it (CIoU + DFL box
//!   loss, BCE on the assigner's soft targets);
//! - [`tal`]: ultralytics `TaskAlignedAssigner` (topk 10, α 0.5, β 6) on plain slices;
//! - [`topk`]: PyTorch's CPU `topk` tie-breaking, which the assigner's choices depend on;
//! - [`iou`]: CIoU as ultralytics `bbox_iou(CIoU=True)`, differentiable and scalar;
//! - [`ops`]: fused BCE-with-logits, `atan`, stable softmax, finiteness checks.
//!
//! Both losses build their targets on plain Rust slices from detached values (no gradient is
//! needed there), gather only the predictions that receive a box or class loss with index ops,
//! and compute the loss terms with candle ops, so that `total.backward()` yields the gradient
//! with respect to the raw head outputs ([`crate::HeadOut`]). docs/LOSSES.md states the semantics
//! and the measured agreement with the Python references.

pub mod iou;
pub mod ops;
pub mod tal;
pub mod topk;
pub mod v5;
pub mod v8;

pub use v5::{V5Hyp, V5Loss, V5LossConfig};
pub use v8::{V8Loss, V8LossConfig};

use candle_core::Tensor;

use crate::{Result, Targets, YoloError};

/// What a loss returns.
#[derive(Clone, Debug)]
pub struct LossOut {
    /// The scalar (0-dim, f32) the trainer back-propagates: the sum of the three gain-scaled
    /// terms times the batch size, as both reference trainers back-propagate.
    pub total: Tensor,
    /// The three detached, gain-scaled terms (not multiplied by the batch size), in the
    /// reference's order: YOLOv5 `[box, obj, cls]`, YOLO11 `[box, cls, dfl]`.
    pub items: [f32; 3],
    /// Names of `items` as the references log them.
    pub names: [&'static str; 3],
}

/// Checks a batch's targets against the batch size and class count: equal lengths, image index
/// `< batch`, class `< nc`, finite coordinates and non-negative sizes.
pub fn validate_targets(t: &Targets, batch: usize, nc: usize) -> Result<()> {
    if t.class.len() != t.image.len() || t.xywhn.len() != t.image.len() {
        return Err(YoloError::Invalid(format!(
            "loss: targets have {} image indices, {} classes and {} boxes; the three must be equal",
            t.image.len(),
            t.class.len(),
            t.xywhn.len()
        )));
    }
    for i in 0..t.len() {
        if t.image[i] >= batch {
            return Err(YoloError::Invalid(format!(
                "loss: target {i} refers to image {} but the batch holds {batch} images",
                t.image[i]
            )));
        }
        if t.class[i] >= nc {
            return Err(YoloError::Invalid(format!(
                "loss: target {i} (image {}) has class {} but the model has nc = {nc} classes",
                t.image[i], t.class[i]
            )));
        }
        let b = t.xywhn[i];
        if b.iter().any(|v| !v.is_finite()) || b[2] < 0.0 || b[3] < 0.0 {
            return Err(YoloError::Invalid(format!(
                "loss: target {i} (image {}) has an invalid box {b:?} (need finite cx, cy, w, h with w, h >= 0)",
                t.image[i]
            )));
        }
    }
    Ok(())
}

/// The dims of a rank-4 head tensor, with an error naming it otherwise.
pub(crate) fn dims4(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4()
        .map_err(|_| YoloError::Invalid(format!("loss: head output {what} must be (B, C, h, w), got {:?}", x.dims())))
}
