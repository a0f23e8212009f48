//! q2-data: detection datasets (PASCAL VOC, COCO, YOLO txt), the synthetic benchmark generator,
//! ultralytics augmentations and a deterministic multi-threaded loader.
//!
//! - [`sample`]: the one sample type every reader yields (pixel `xyxy` boxes, class index,
//!   `difficult`, `iscrowd`).
//! - [`voc`], [`coco`], [`yolo`]: readers (and writers, used by [`synth`]); [`config`]: the
//!   `data.yaml` dataset description, split selection (the YOLOv5 VOC 07+12 protocol) and the
//!   parallel scanning step with its progress bar.
//! - [`image`]: JPEG (zune-jpeg) / PNG decoding to RGB u8, encoding, resizing.
//! - [`hyp`]: YOLOv5 hyperparameters (`hyp.scratch-low`, `hyp.VOC` bundled).
//! - [`augment`]: letterbox, mosaic, random perspective, HSV, flips, MixUp, as ultralytics/yolov5.
//! - [`loader`]: batches of CHW u8 images and `[batch_idx, cls, x, y, w, h]` targets, prefetched
//!   by worker threads, identical for any worker count.
//! - [`synth`]: the synthetic detection benchmark written in VOC, COCO or YOLO layout.
//!
//! Errors name the file and the object; readers and the loader either fail on the first issue
//! or skip and report ([`OnError`], [`SkipReport`]). Nothing here depends on a tensor crate.

pub mod augment;
pub mod coco;
pub mod config;
pub mod error;
pub mod hyp;
pub mod image;
pub mod loader;
pub mod sample;
pub mod synth;
pub mod voc;
pub mod yolo;

mod fsutil;

pub use config::{DataConfig, ScanOptions, Split, VOC_NAMES};
pub use error::{DataError, Issue, IssueKind, OnError, Result, SkipReport};
pub use hyp::Hyp;
pub use image::RgbImage;
pub use loader::{Batch, Loader, LoaderConfig};
pub use sample::{Annotation, Dataset, Format, Sample};
