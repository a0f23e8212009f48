//! YOLOv5 hyperparameters under ultralytics' own key names, loadable from YAML (ultralytics'
//! format) or TOML, with the two files the paper's protocol needs bundled:
//! `configs/hyp/hyp.scratch-low.yaml` ([`Hyp::scratch_low`]) and `configs/hyp/hyp.VOC.yaml`
//! ([`Hyp::voc`]), verbatim from ultralytics/yolov5 `data/hyps/`.
//!
//! q2-data uses the augmentation keys (`hsv_*`, `degrees`, `translate`, `scale`, `shear`,
//! `perspective`, `flipud`, `fliplr`, `mosaic`, `mixup`, `copy_paste`); the optimiser and loss
//! keys are carried for the trainer. Unknown keys are rejected (a typo must not silently fall
//! back to a default).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// YOLOv5 hyperparameters (`data/hyps/*.yaml`), field names as in ultralytics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyp {
    /// Initial learning rate.
    pub lr0: f64,
    /// Final learning rate as a fraction of `lr0`.
    pub lrf: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub warmup_momentum: f64,
    pub warmup_bias_lr: f64,
    /// Box loss gain (`box` in ultralytics).
    #[serde(rename = "box")]
    pub box_: f64,
    pub cls: f64,
    pub cls_pw: f64,
    pub obj: f64,
    pub obj_pw: f64,
    pub iou_t: f64,
    pub anchor_t: f64,
    /// Anchors per output layer (hyp.VOC sets 3.412; scratch-low leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<f64>,
    pub fl_gamma: f64,
    /// HSV gains: each channel is scaled by `1 + U(−1, 1)·gain`.
    pub hsv_h: f64,
    pub hsv_s: f64,
    pub hsv_v: f64,
    /// Rotation range ± degrees.
    pub degrees: f64,
    /// Translation range ± fraction of the output size.
    pub translate: f64,
    /// Scale gain range `U(1 − scale, 1 + scale)`.
    pub scale: f64,
    /// Shear range ± degrees.
    pub shear: f64,
    /// Perspective range ± (0 to 0.001).
    pub perspective: f64,
    /// Probability of a vertical flip.
    pub flipud: f64,
    /// Probability of a horizontal flip.
    pub fliplr: f64,
    /// Probability of a 4-image mosaic.
    pub mosaic: f64,
    /// Probability of mixing a second mosaic in (MixUp).
    pub mixup: f64,
    /// Segment copy-paste probability. It needs segment labels; with boxes only it has no
    /// effect, in ultralytics as in q2.
    pub copy_paste: f64,
}

const SCRATCH_LOW: &str = include_str!("../../../configs/hyp/hyp.scratch-low.yaml");
const VOC: &str = include_str!("../../../configs/hyp/hyp.VOC.yaml");

impl Hyp {
    /// `hyp.scratch-low.yaml` (COCO from scratch, low augmentation).
    pub fn scratch_low() -> Self {
        Self::from_yaml_str(SCRATCH_LOW, Path::new("configs/hyp/hyp.scratch-low.yaml")).expect("bundled hyp.scratch-low.yaml is valid")
    }

    /// `hyp.VOC.yaml` (evolved for VOC; the paper's optimiser values are this file's).
    pub fn voc() -> Self {
        Self::from_yaml_str(VOC, Path::new("configs/hyp/hyp.VOC.yaml")).expect("bundled hyp.VOC.yaml is valid")
    }

    /// A bundled set by name (`scratch-low`, `voc`, also with the `hyp.` prefix and the
    /// `.yaml` suffix, case-insensitive), or `None`.
    pub fn bundled(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        let n = n.trim_start_matches("hyp.").trim_end_matches(".yaml");
        match n {
            "scratch-low" | "scratch_low" => Some(Self::scratch_low()),
            "voc" => Some(Self::voc()),
            _ => None,
        }
    }

    /// A bundled name (see [`Hyp::bundled`]) or a path to a `.yaml`/`.yml`/`.toml` file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        let p = Path::new(name_or_path);
        if p.exists() {
            return Self::load(p);
        }
        Self::bundled(name_or_path).ok_or_else(|| {
            DataError::config(p, "no such file, and not a bundled hyperparameter set (scratch-low, voc)")
        })
    }

    /// Loads YAML (`.yaml`, `.yml`) or TOML (`.toml`) by extension, then validates.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("toml") => Self::from_toml_str(&text, path),
            Some("yaml") | Some("yml") => Self::from_yaml_str(&text, path),
            _ => Err(DataError::config(path, "hyperparameter files must end in .yaml, .yml or .toml")),
        }
    }

    /// Parses YAML; `path` names the source in errors.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Self> {
        let h: Hyp = serde_yaml_ng::from_str(text).map_err(|e| DataError::config(path, format!("invalid hyperparameters: {e}")))?;
        h.validate(path)?;
        Ok(h)
    }

    /// Parses TOML; `path` names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let h: Hyp = toml::from_str(text).map_err(|e| DataError::config(path, format!("invalid hyperparameters: {e}")))?;
        h.validate(path)?;
        Ok(h)
    }

    /// Checks the augmentation values are usable (probabilities in [0, 1], gains ≥ 0,
    /// `scale` < 1 so the scale factor stays positive, `perspective` ≤ 0.001 as ultralytics documents).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |k: &str, v: f64, want: &str| Err(DataError::config(path, format!("`{k}` = {v}: must be {want}")));
        for (k, v) in [("flipud", self.flipud), ("fliplr", self.fliplr), ("mosaic", self.mosaic), ("mixup", self.mixup), ("copy_paste", self.copy_paste)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(k, v, "a probability in [0, 1]");
            }
        }
        for (k, v) in [
            ("hsv_h", self.hsv_h),
            ("hsv_s", self.hsv_s),
            ("hsv_v", self.hsv_v),
            ("degrees", self.degrees),
            ("translate", self.translate),
            ("shear", self.shear),
            ("perspective", self.perspective),
            ("scale", self.scale),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(k, v, "finite and ≥ 0");
            }
        }
        if self.scale >= 1.0 {
            return bad("scale", self.scale, "< 1 (the scale factor is drawn from U(1 − scale, 1 + scale))");
        }
        if self.translate > 0.5 {
            return bad("translate", self.translate, "≤ 0.5");
        }
        if self.perspective > 0.001 {
            return bad("perspective", self.perspective, "in [0, 0.001]");
        }
        if self.shear >= 90.0 {
            return bad("shear", self.shear, "< 90 degrees");
        }
        Ok(())
    }

    /// The same set with every augmentation off (validation, or timing the decode path).
    pub fn without_augmentation(&self) -> Self {
        Self {
            hsv_h: 0.0,
            hsv_s: 0.0,
            hsv_v: 0.0,
            degrees: 0.0,
            translate: 0.0,
            scale: 0.0,
            shear: 0.0,
            perspective: 0.0,
            flipud: 0.0,
            fliplr: 0.0,
            mosaic: 0.0,
            mixup: 0.0,
            copy_paste: 0.0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_values_are_ultralytics() {
        let v = Hyp::voc();
        assert_eq!((v.lr0, v.lrf, v.momentum, v.weight_decay), (0.00334, 0.15135, 0.74832, 0.00025));
        assert_eq!((v.hsv_h, v.hsv_s, v.hsv_v), (0.01041, 0.54703, 0.27739));
        assert_eq!((v.translate, v.scale, v.fliplr, v.mosaic, v.mixup), (0.04591, 0.75544, 0.5, 0.85834, 0.04266));
        assert_eq!(v.anchors, Some(3.412));
        let s = Hyp::scratch_low();
        assert_eq!((s.lr0, s.hsv_h, s.hsv_s, s.hsv_v, s.translate, s.scale, s.mosaic, s.mixup), (0.01, 0.015, 0.7, 0.4, 0.1, 0.5, 1.0, 0.0));
        assert_eq!(s.anchors, None);
        assert_eq!(Hyp::bundled("hyp.VOC.yaml"), Some(v));
        assert_eq!(Hyp::bundled("scratch-low"), Some(s));
    }

    #[test]
    fn toml_round_trip() {
        let v = Hyp::voc();
        let t = toml::to_string(&v).unwrap();
        assert_eq!(Hyp::from_toml_str(&t, Path::new("h.toml")).unwrap(), v);
    }

    #[test]
    fn errors_name_file_and_key() {
        let y = SCRATCH_LOW.replace("fliplr: 0.5", "fliplr: 1.5");
        let e = Hyp::from_yaml_str(&y, Path::new("my.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("my.yaml: `fliplr` = 1.5"), "{e}");
        let y = SCRATCH_LOW.replace("mixup:", "mixupp:");
        let e = Hyp::from_yaml_str(&y, Path::new("my.yaml")).unwrap_err().to_string();
        assert!(e.contains("my.yaml") && e.contains("mixupp"), "{e}");
        let y = SCRATCH_LOW.replace("lr0: 0.01", "lr0: [1");
        let e = Hyp::from_yaml_str(&y, Path::new("my.yaml")).unwrap_err().to_string();
        assert!(e.contains("my.yaml") && e.contains("line"), "{e}");
    }
}
