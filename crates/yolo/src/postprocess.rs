//! Post-processing of detections: boxes back to the original image (undoing the letterbox, as
//! YOLOv5 `utils/general.py::scale_boxes` or ultralytics `ops.scale_boxes`, with `clip_boxes`)
//! and COCO results rows as YOLOv5 val.py `save_one_json` (and ultralytics `pred_to_json`) write
//! them, serialised to the results JSON that `q2 map` (q2-eval) reads.
//!
//! All box arithmetic is float32, as the references do it on float32 tensors (Python scalars are
//! cast to float32 by torch); the COCO rounding is Python's `round(x, n)` on the float64 value of
//! each float32 (`tensor.tolist()`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, YoloError};

pub use crate::nms::Detection;

/// Which reference's `scale_boxes` to follow (they differ in the gain and padding they use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleRule {
    /// YOLOv5 `scale_boxes`: one gain for both axes. With a [`RatioPad`] the gain is its y
    /// ratio (YOLOv5 passes `shapes = (h0, w0), ((h / h0, w / w0), pad)` and reads
    /// `ratio_pad[0][0]`) and the pad is used as given (the fractional `(dw, dh)`); without, gain
    /// `min(h1 / h0, w1 / w0)` and pad `((w1 − w0·gain) / 2, (h1 − h0·gain) / 2)`.
    Yolov5,
    /// ultralytics `ops.scale_boxes`: separate x and y gains. With a [`RatioPad`] its ratios and
    /// pad are used as given (ultralytics passes the integer `(left, top)`: see
    /// [`RatioPad::ultralytics_pad`]); without, the letterbox is recomputed as `LetterBox` does
    /// (sides `max(round(side·gain), 1)`, pad `round((w1 − new_w) / 2 − 0.1)`).
    Ultralytics,
}

/// How an image was letterboxed, as q2-data's `ShapeInfo` carries it: the total scale from the
/// original to the letterboxed image and the image's offset in the canvas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatioPad {
    /// (x, y) scale: letterboxed size over original size.
    pub ratio: (f64, f64),
    /// (x, y) offset of the image in the letterboxed canvas: the fractional `(dw, dh)` (half the
    /// total padding) for YOLOv5, the integer `(left, top)` for ultralytics.
    pub pad: (f64, f64),
}

impl RatioPad {
    /// The ultralytics form of a YOLOv5-style pad: `(round(dw − 0.1), round(dh − 0.1))`
    /// (Python's `round`, half to even), the `(left, top)` that `LetterBox` stores.
    pub fn ultralytics_pad(self) -> RatioPad {
        let r = |d: f64| (d - 0.1).round_ties_even();
        RatioPad { ratio: self.ratio, pad: (r(self.pad.0), r(self.pad.1)) }
    }
}

/// torch `clamp_(lo, hi)` on float32 (NaN stays NaN).
#[inline]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// ultralytics `clip_boxes`: `[x1, y1, x2, y2]` clamped to `[0, w] × [0, h]` of the original image.
pub fn clip_boxes(boxes: &mut [[f32; 4]], orig_wh: (u32, u32)) {
    let (w, h) = (orig_wh.0 as f32, orig_wh.1 as f32);
    for b in boxes {
        b[0] = clamp(b[0], 0.0, w);
        b[1] = clamp(b[1], 0.0, h);
        b[2] = clamp(b[2], 0.0, w);
        b[3] = clamp(b[3], 0.0, h);
    }
}

/// The (gain_x, gain_y, pad_x, pad_y) of `rule` for a letterboxed `input_hw = (h1, w1)` and an
/// original `orig_wh = (w0, h0)`.
fn gains(input_hw: (usize, usize), orig_wh: (u32, u32), ratio_pad: Option<RatioPad>, rule: ScaleRule) -> (f64, f64, f64, f64) {
    let (h1, w1) = (input_hw.0 as f64, input_hw.1 as f64);
    let (w0, h0) = (orig_wh.0 as f64, orig_wh.1 as f64);
    match (rule, ratio_pad) {
        (ScaleRule::Yolov5, Some(rp)) => (rp.ratio.1, rp.ratio.1, rp.pad.0, rp.pad.1),
        (ScaleRule::Yolov5, None) => {
            let gain = (h1 / h0).min(w1 / w0);
            (gain, gain, (w1 - w0 * gain) / 2.0, (h1 - h0 * gain) / 2.0)
        }
        (ScaleRule::Ultralytics, Some(rp)) => (rp.ratio.0, rp.ratio.1, rp.pad.0, rp.pad.1),
        (ScaleRule::Ultralytics, None) => {
            let gain = (h1 / h0).min(w1 / w0);
            let new_h = (h0 * gain).round_ties_even().max(1.0);
            let new_w = (w0 * gain).round_ties_even().max(1.0);
            let pad_x = ((w1 - new_w) / 2.0 - 0.1).round_ties_even();
            let pad_y = ((h1 - new_h) / 2.0 - 0.1).round_ties_even();
            (new_w / w0, new_h / h0, pad_x, pad_y)
        }
    }
}

/// `scale_boxes(img1_shape, boxes, img0_shape, ratio_pad)`: `[x1, y1, x2, y2]` boxes in the
/// letterboxed input (`input_hw = (h, w)`) back to the original image (`orig_wh = (w, h)`):
/// subtract the pad, divide by the gain (float32), clip to the image.
pub fn scale_boxes(boxes: &mut [[f32; 4]], input_hw: (usize, usize), orig_wh: (u32, u32), ratio_pad: Option<RatioPad>, rule: ScaleRule) {
    let (gx, gy, px, py) = gains(input_hw, orig_wh, ratio_pad, rule);
    let (gx, gy, px, py) = (gx as f32, gy as f32, px as f32, py as f32);
    for b in boxes.iter_mut() {
        b[0] = (b[0] - px) / gx;
        b[1] = (b[1] - py) / gy;
        b[2] = (b[2] - px) / gx;
        b[3] = (b[3] - py) / gy;
    }
    clip_boxes(boxes, orig_wh);
}

/// [`scale_boxes`] on the boxes of detections.
pub fn scale_detections(dets: &mut [Detection], input_hw: (usize, usize), orig_wh: (u32, u32), ratio_pad: Option<RatioPad>, rule: ScaleRule) {
    let mut boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.xyxy).collect();
    scale_boxes(&mut boxes, input_hw, orig_wh, ratio_pad, rule);
    for (d, b) in dets.iter_mut().zip(boxes) {
        d.xyxy = b;
    }
}

/// A COCO image id: an integer when the file stem is a number (COCO's `000000139.jpg` → 139),
/// otherwise the stem itself, as YOLOv5 val.py and ultralytics write it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageId {
    /// A numeric stem.
    Int(i64),
    /// Any other stem.
    Str(String),
}

impl ImageId {
    /// `int(stem) if stem.isnumeric() else stem`. Only ASCII digits count as numeric here
    /// (Python also accepts other scripts' digits); a number beyond i64 stays a string.
    pub fn from_stem(stem: &str) -> Self {
        if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = stem.parse::<i64>() {
                return ImageId::Int(i);
            }
        }
        ImageId::Str(stem.to_owned())
    }

    /// [`ImageId::from_stem`] of a path's file stem (`Path.stem`: the name without its last
    /// extension).
    pub fn from_path(path: &Path) -> Self {
        Self::from_stem(&path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    }
}

/// One row of a COCO results file: `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The image.
    pub image_id: ImageId,
    /// The dataset's category id of the detection's class.
    pub category_id: i64,
    /// Top-left x, y, width, height in original-image pixels, rounded to 3 decimals.
    pub bbox: [f64; 4],
    /// Confidence, rounded to 5 decimals.
    pub score: f64,
}

/// Python's `round(x, ndigits)` of a float: the float nearest to `x` correctly rounded to
/// `ndigits` decimals, ties (of the exact binary value) to even. Non-finite values are returned
/// as they are.
pub fn round_decimals(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact and rounds ties to even, as CPython's dtoa does.
    format!("{x:.ndigits$}").parse().unwrap_or(x)
}

/// COCO results rows of one image's detections (in original-image pixels, see
/// [`scale_detections`]), as val.py `save_one_json`: `xyxy2xywh` then the centre moved to the
/// top-left corner (float32: `x = (x1 + x2) / 2 − (x2 − x1) / 2`), boxes rounded to 3 decimals,
/// scores to 5, the class mapped through `class_map` (class index → category id). Errors name
/// the image and detection for a class outside `class_map` or a non-finite box or score.
pub fn coco_results(image_id: &ImageId, dets: &[Detection], class_map: &[i64]) -> Result<Vec<CocoResult>> {
    dets.iter()
        .enumerate()
        .map(|(i, d)| {
            let category_id = *class_map.get(d.class).ok_or_else(|| {
                YoloError::Invalid(format!(
                    "image {image_id:?}, detection {i}: class {} has no category id (class map of {} entries)",
                    d.class,
                    class_map.len()
                ))
            })?;
            let [x1, y1, x2, y2] = d.xyxy;
            let (w, h) = (x2 - x1, y2 - y1);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            let xywh = [cx - w / 2.0, cy - h / 2.0, w, h];
            if !xywh.iter().all(|v| v.is_finite()) || !d.score.is_finite() {
                return Err(YoloError::Invalid(format!("image {image_id:?}, detection {i}: non-finite box {:?} or score {}", d.xyxy, d.score)));
            }
            Ok(CocoResult {
                image_id: image_id.clone(),
                category_id,
                bbox: xywh.map(|v| round_decimals(v as f64, 3)),
                score: round_decimals(d.score as f64, 5),
            })
        })
        .collect()
}

/// The COCO results JSON of `rows` (a list of objects; numbers in shortest round-trip form).
pub fn coco_results_json(rows: &[CocoResult]) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| YoloError::Invalid(format!("COCO results: {e}")))
}

/// Writes `rows` as a COCO results file, atomically (q2-nn `fsutil::write_atomic`).
pub fn write_coco_results(path: &Path, rows: &[CocoResult]) -> Result<()> {
    let json = coco_results_json(rows)?;
    q2_nn::fsutil::write_atomic(path, json.as_bytes())?;
    Ok(())
}

/// Reads a COCO results file written by [`write_coco_results`] (or YOLOv5 / ultralytics).
pub fn read_coco_results(path: &Path) -> Result<Vec<CocoResult>> {
    let text = std::fs::read_to_string(path).map_err(|e| YoloError::Invalid(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| YoloError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round() {
        // values checked against CPython 3.11 round()
        assert_eq!(round_decimals(0.0625, 3), 0.062);
        assert_eq!(round_decimals(0.1875, 3), 0.188);
        assert_eq!(round_decimals(2.5, 0), 2.0);
        assert_eq!(round_decimals(1.0005, 3), 1.0);
        assert_eq!(round_decimals(123.4565, 3), 123.457); // binary value just above the tie
    }

    #[test]
    fn image_ids() {
        assert_eq!(ImageId::from_path(Path::new("/x/000000000139.jpg")), ImageId::Int(139));
        assert_eq!(ImageId::from_path(Path::new("a/img_7.png")), ImageId::Str("img_7".into()));
        assert_eq!(ImageId::from_stem("99999999999999999999"), ImageId::Str("99999999999999999999".into()));
        assert_eq!(serde_json::to_string(&ImageId::Int(3)).unwrap(), "3");
        assert_eq!(serde_json::to_string(&ImageId::Str("a".into())).unwrap(), "\"a\"");
    }

    #[test]
    fn coco_rows_and_errors() {
        let d = Detection { xyxy: [100.0, 50.0, 200.0, 150.0], score: 0.9, class: 0, index: 0 };
        let rows = coco_results(&ImageId::Int(42), &[d], &[18]).unwrap();
        assert_eq!(rows[0].bbox, [100.0, 50.0, 100.0, 100.0]);
        assert_eq!(rows[0].score, 0.9);
        assert_eq!(rows[0].category_id, 18);
        let json = coco_results_json(&rows).unwrap();
        assert_eq!(json, r#"[{"image_id":42,"category_id":18,"bbox":[100.0,50.0,100.0,100.0],"score":0.9}]"#);
        let bad = Detection { class: 3, ..d };
        assert!(coco_results(&ImageId::Int(42), &[bad], &[18]).unwrap_err().to_string().contains("class 3"));
        let nan = Detection { xyxy: [f32::NAN, 0.0, 1.0, 1.0], ..d };
        assert!(coco_results(&ImageId::Int(42), &[nan], &[18]).is_err());
    }

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("res.json");
        let rows = vec![CocoResult { image_id: ImageId::Str("a".into()), category_id: 1, bbox: [1.0, 2.0, 3.0, 4.0], score: 0.5 }];
        write_coco_results(&p, &rows).unwrap();
        assert_eq!(read_coco_results(&p).unwrap(), rows);
    }

    #[test]
    fn scale_and_clip() {
        // 500×375 image letterboxed into 640×640: gain 1.28, pad (0, 80)
        let rp = RatioPad { ratio: (1.28, 1.28), pad: (0.0, 80.0) };
        let mut b = [[64.0f32, 80.0, 704.0, 600.0]];
        scale_boxes(&mut b, (640, 640), (500, 375), Some(rp), ScaleRule::Yolov5);
        assert_eq!(b[0], [50.0, 0.0, 500.0, 375.0]);
        let mut c = [[64.0f32, 144.0, 128.0, 208.0]];
        scale_boxes(&mut c, (640, 640), (500, 375), None, ScaleRule::Ultralytics);
        assert_eq!(c[0], [50.0, 50.0, 100.0, 100.0]);
        assert_eq!(RatioPad { ratio: (1.0, 1.0), pad: (0.5, 12.5) }.ultralytics_pad().pad, (0.0, 12.0));
    }
}
