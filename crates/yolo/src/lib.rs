//! q2-yolo: the paper's detectors (YOLOv5 and YOLO11) on q2-nn's typed layer, with ultralytics
//! names, weights, losses, decoding and NMS.
//!
//! - [`model`]: the [`Detector`] trait, raw head outputs and training targets shared by all parts;
//! - [`blocks`], [`dynconv`], [`detect`]: ultralytics blocks (Conv, C3, SPPF, C3k2, C2PSA, DFL, ...)
//!   and the two Detect heads, every conv quantizable through q2-quant's hook;
//! - [`yolov5`], [`yolo11`]: the models, one compile-time-shaped struct per scale;
//! - [`build`]: [`build::build`] a model by name; [`weights`]: ultralytics safetensors IO and
//!   the deterministic test-weight recipe; [`summary`]: parameters and GFLOPs per layer;
//! - [`loss`]: YOLOv5 `ComputeLoss` and YOLO11 `v8DetectionLoss`;
//! - [`nms`], [`postprocess`]: class-aware batched NMS, letterbox undoing, COCO results.

pub mod blocks;
pub mod build;
pub mod detect;
pub mod dynconv;
pub mod error;
pub mod loss;
pub mod model;
pub mod nms;
pub mod postprocess;
pub mod summary;
pub mod weights;
pub mod yolo11;
pub mod yolov5;

pub use build::{build, MODELS};
pub use error::{Result, YoloError};
pub use model::{Detector, Family, HeadOut, Targets};
