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
    /// Stop when the validation fitness has not improved for this many epochs (0: never).
    pub patience: usize,
    /// Write Q-GBFusion telemetry (branch gradient energies, α, λ) every this many iterations
    /// (0: off). Without `[gbf]` the neck Concats get gradient taps only (measurement).
    pub telemetry_every: usize,
    /// Sample per-channel magnitudes at the fusion nodes every this many iterations (0: never).
    pub telemetry_mag_every: usize,
    /// Teacher weights for Q-ADA (default: `weights`, the FP checkpoint QAT starts from).
    pub teacher: Option<PathBuf>,
    /// Quantization-aware training (absent: full precision).
    pub quant: Option<QuantConfig>,
    /// Q-GBFusion at the neck Concats (absent: plain Concat).
    pub gbf: Option<q2_fusion::GbfConfig>,
    /// Q-ADA distillation from the frozen FP teacher (absent: none).
    pub ada: Option<q2_distill::AdaConfig>,
}

/// Overrides `base` with `over`, merging tables key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn eight() -> u32 {
    8
}

fn calib_images() -> usize {
    32
}

/// The quantizers of a QAT run (turned into a `q2_quant::QuantPlan`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// `lsq`, `lsq_plus`, `pact`, `n2uq` or `minmax`.
    pub method: q2_quant::Method,
    pub w_bits: u32,
    pub a_bits: u32,
    /// Bits of the first conv (32: full precision).
    #[serde(default = "eight")]
    pub first_bits: u32,
    /// Bits of the Detect prediction convs (32: full precision).
    #[serde(default = "eight")]
    pub head_bits: u32,
    #[serde(default)]
    pub per_channel_weights: bool,
    /// Signed activation grids (LSQ, LSQ+, MinMax). Absent: signed for LSQ, unsigned otherwise
    /// (YOLO's SiLU activations go down to −0.278 and an unsigned LSQ grid clips them to 0; W8A8
    /// LSQ keeps 0.61 of the FP model's 0.65 mAP50 with a signed grid, 0.11 without, measured in
    /// paper/DEVIATIONS.md; LSQ+ has its offset, MinMax an asymmetric [min, max] grid, PACT and
    /// N2UQ stay as published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_signed: Option<bool>,
    #[serde(default)]
    pub act_init: q2_quant::InitMode,
    /// Images of the calibration batch that initialises the quantizers.
    #[serde(default = "calib_images")]
    pub calib_images: usize,
}

impl QuantConfig {
    pub fn new(method: q2_quant::Method, w_bits: u32, a_bits: u32) -> Self {
        Self { method, w_bits, a_bits, first_bits: 8, head_bits: 8, per_channel_weights: false, act_signed: None, act_init: q2_quant::InitMode::Default, calib_images: 32 }
    }

    pub fn plan(&self) -> q2_quant::QuantPlan {
        let bits = |b: u32| if b >= 32 { None } else { Some(b) };
        q2_quant::QuantPlan {
            first_bits: bits(self.first_bits),
            head_bits: bits(self.head_bits),
            per_channel_weights: self.per_channel_weights,
            act_signed: self.act_signed.unwrap_or(self.method == q2_quant::Method::Lsq),
            act_init: self.act_init,
            ..q2_quant::QuantPlan::new(self.method, self.w_bits, self.a_bits)
        }
    }
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
            patience: 0,
            telemetry_every: 0,
            telemetry_mag_every: 0,
            teacher: None,
            quant: None,
            gbf: None,
            ada: None,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML configuration file, rejecting unknown keys.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| InputError(format!("{}: invalid training configuration: {e}", path.display())).into())
    }

    /// Reads a TOML configuration file whose keys override `base` (tables merge key by key).
    pub fn load_over(path: &Path, base: &TrainConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| InputError(format!("{}: invalid TOML: {e}", path.display())))?;
        let mut merged: toml::Table = toml::from_str(&base.to_toml()).expect("a TrainConfig always round-trips");
        merge(&mut merged, file);
        toml::Value::Table(merged).try_into().map_err(|e| InputError(format!("{}: invalid training configuration: {e}", path.display())).into())
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
        if let Some(q) = &self.quant {
            for (what, b) in [("w_bits", q.w_bits), ("a_bits", q.a_bits)] {
                if !(2..=8).contains(&b) {
                    return bad(format!("quant.{what} must be in 2..=8, got {b}"));
                }
            }
            for (what, b) in [("first_bits", q.first_bits), ("head_bits", q.head_bits)] {
                if !(2..=8).contains(&b) && b != 32 {
                    return bad(format!("quant.{what} must be in 2..=8 or 32 (full precision), got {b}"));
                }
            }
            if q.calib_images == 0 {
                return bad("quant.calib_images must be ≥ 1".into());
            }
            if self.weights.is_none() {
                return bad("quantization-aware training starts from full-precision weights: pass --weights (e.g. runs/fp/best.safetensors)".into());
            }
        }
        if let Some(g) = &self.gbf {
            g.validate().map_err(|e| InputError(e.to_string()))?;
        }
        if let Some(a) = &self.ada {
            a.validate().map_err(|e| InputError(format!("ada: {e}")))?;
            if self.teacher.is_none() && self.weights.is_none() {
                return bad("Q-ADA needs a full-precision teacher: pass --weights or --teacher".into());
            }
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
