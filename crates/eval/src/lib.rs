//! q2-eval: detection metrics (COCO `COCOeval`, VOC07/VOC10+ AP, ultralytics mAP), independent
//! of any tensor crate.
//!
//! Inputs are COCO files: ground truth in the annotation format, detections in the results
//! format ([`io`]). Three metric families read them:
//! - [`coco`]: pycocotools' `COCOeval` for boxes, reproduced operation for operation (the 12
//!   summary numbers agree with pycocotools to the last bit on the committed fixtures);
//! - [`voc`]: PASCAL VOC AP at IoU 0.5 as py-faster-rcnn's `voc_eval.py` computes it, with the
//!   VOC07 11-point or the VOC2010+ all-point integral;
//! - [`yolo`]: the mAP50 / mAP50-95 that YOLOv5's `val.py` prints (`process_batch` matching,
//!   `ap_per_class`, 101-point interpolation integrated with the trapezoid rule).
//!
//! [`numeric`] holds the numpy operations whose exact rounding the metrics depend on, and
//! [`synth`] a seeded COCO-val-sized benchmark. Every choice the sources leave open is listed in
//! `docs/EVAL.md` and `paper/DEVIATIONS.md`.

pub mod coco;
pub mod io;
pub mod numeric;
pub mod synth;
pub mod voc;
pub mod yolo;

pub use io::{Annotation, Category, Detection, GroundTruth, ImageId};

/// What can go wrong reading evaluation input. Evaluation itself cannot fail: everything it
/// relies on is checked when the files are read.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The input is invalid; the message names the file and the object (`dt.json: detection 17:
    /// image_id 99 is not in the ground truth`).
    #[error("{0}")]
    Input(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

/// One category's average precision in a per-category listing.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CategoryAp {
    /// The category's id in the ground truth's `categories`.
    pub category_id: i64,
    /// Its AP.
    pub ap: f64,
}
