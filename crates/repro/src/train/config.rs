//! The configuration of a training run (`q2 train`): a TOML file whose keys equal the command-line
//! flags, flags overriding the file. The resolved configuration is written next to the run
//! (`config.toml`) and is what `--resume` reads back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::InputError;

/// Everything that decides a training run's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `yolov5n`, `yolov5s`, `yolo11n`, `yolo11s`, ...
    pub model: String,
    /// A dataset folder (with a `data.yaml` or a standard VOC/COCO/YOLO layout) or a `data.yaml`.
    pub data: PathBuf,
    /// Square training size in pixels (a multiple of 32).
    pub img: usize,
    pub epochs: usize,
    /// Images per forward/backward pass.
    pub batch: usize,
    /// Nominal batch size: gradients are accumulated over `round(nbs / batch)` batches (YOLOv5's 64).
    pub nbs: usize,
    /// Loader worker threads.
    pub workers: usize,
    /// Hyperparameters: a bundled name (`scratch-low`, `VOC`) or a YAML/TOML file.
    pub hyp: String,
    /// YOLOv5's `--cos-lr`: one-cycle cosine LR instead of linear.
    pub cos_lr: bool,
    pub seed: u64,
    /// Validate every this many epochs (and always after the last).
    pub val_every: usize,
    /// Stop an epoch after this many batches (0: all); for smoke runs.
    pub max_batches: usize,
    /// Validate on at most this many images (0: all).
    pub max_val_images: usize,
    /// Initial weights (ultralytics state_dict names, safetensors); absent: from scratch.
    pub weights: Option<PathBuf>,
    /// YOLO11 loss gains (ultralytics `default.yaml`); YOLOv5 takes `box`, `obj`, `cls` from `hyp`.
    pub v11_box: f64,
    pub v11_cls: f64,
    pub v11_dfl: f64,
    /// Gradient-norm clip (YOLOv5 train.py: 10).
    pub clip_grad: f64,
    /// Cache decoded training images in RAM.
    pub cache: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: "yolov5n".into(),
            data: PathBuf::new(),
            img: 640,
            epochs: 100,
            batch: 16,
            nbs: 64,
            workers: 2,
            hyp: "scratch-low".into(),
            cos_lr: false,
            seed: 0,
            val_every: 1,
            max_batches: 0,
            max_val_images: 0,
            weights: None,
            v11_box: 7.5,
            v11_cls: 0.5,
            v11_dfl: 1.5,
            clip_grad: 10.0,
            cache: false,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML configuration file, rejecting unknown keys.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| InputError(format!("{}: invalid training configuration: {e}", path.display())).into())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Checks values that would otherwise fail deep inside the run.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |m: String| -> anyhow::Result<()> { Err(InputError(m).into()) };
        if self.data.as_os_str().is_empty() {
            return bad("no dataset: pass --data DIR (e.g. a folder written by `q2 synth`)".into());
        }
        if self.img == 0 || self.img % 32 != 0 {
            return bad(format!("--img must be a positive multiple of 32, got {}", self.img));
        }
        if self.epochs == 0 || self.batch == 0 || self.nbs == 0 || self.val_every == 0 {
            return bad("--epochs, --batch, --nbs and --val-every must be ≥ 1".into());
        }
        if self.clip_grad.is_nan() || self.clip_grad <= 0.0 {
            return bad(format!("clip_grad must be positive, got {}", self.clip_grad));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_and_rejects_unknown_keys() {
        let c = TrainConfig { data: "d".into(), weights: Some("w.safetensors".into()), ..Default::default() };
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<TrainConfig>("epoch = 3").is_err());
        let partial: TrainConfig = toml::from_str("epochs = 3\nmodel = \"yolo11n\"").unwrap();
        assert_eq!((partial.epochs, partial.model.as_str(), partial.batch), (3, "yolo11n", 16));
    }

    #[test]
    fn validation_names_the_flag() {
        let c = TrainConfig { data: "d".into(), img: 100, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--img"));
    }
}
