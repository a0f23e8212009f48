//! Validation of a detector during training and in `q2 val`: the val split through the
//! letterboxing rect loader (as YOLOv5 `val.py`), the model in eval mode, decoding, NMS, boxes
//! mapped back to the original images, and the three metric families of q2-eval against the
//! split's ground truth in original coordinates.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use q2_data::{Batch, Dataset};
use q2_eval::io::{Category, GroundTruth, ImageId, RawAnnotation, RawDetection};
use q2_nn::Mode;
use q2_yolo::Detector;

use super::glue;

/// The metrics of one validation pass.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ValMetrics {
    pub map50: f64,
    pub map50_95: f64,
    /// pycocotools' 12 stats.
    pub coco: Vec<f64>,
    pub voc07: f64,
    pub voc12: f64,
    pub images: usize,
    pub detections: usize,
    pub seconds: f64,
}

impl ValMetrics {
    /// YOLOv5's `fitness`: 0.1·mAP50 + 0.9·mAP50-95.
    pub fn fitness(&self) -> f64 {
        0.1 * self.map50 + 0.9 * self.map50_95
    }
}

/// The ground truth of a split in COCO form: image id = dataset index + 1, category id = class
/// index + 1, boxes in original pixels; VOC `difficult` kept as the flag the VOC metrics ignore.
pub fn ground_truth(ds: &Dataset, images: usize) -> Result<GroundTruth> {
    let ids: Vec<ImageId> = (0..images).map(|i| ImageId::Int(i as i64 + 1)).collect();
    let cats = ds.names.iter().enumerate().map(|(i, n)| Category { id: i as i64 + 1, name: Some(n.clone()) }).collect();
    let mut anns = Vec::new();
    for (i, s) in ds.samples.iter().take(images).enumerate() {
        for a in &s.annotations {
            let [x1, y1, x2, y2] = a.bbox.map(f64::from);
            anns.push(RawAnnotation {
                id: anns.len() as i64 + 1,
                image_id: ImageId::Int(i as i64 + 1),
                category_id: a.class as i64 + 1,
                bbox: [x1, y1, x2 - x1, y2 - y1],
                area: None,
                iscrowd: a.iscrowd,
                difficult: a.difficult,
            });
        }
    }
    Ok(GroundTruth::new("<val split>", ids, cats, anns)?)
}

/// A batch's boxes as the losses' training targets.
pub fn targets(b: &Batch) -> q2_yolo::Targets {
    q2_yolo::Targets {
        image: b.targets.iter().map(|t| t[0] as usize).collect(),
        class: b.targets.iter().map(|t| t[1] as usize).collect(),
        xywhn: b.targets.iter().map(|t| [t[2], t[3], t[4], t[5]]).collect(),
    }
}

/// (B, 3, H, W) float32 in [0, 1] from a collated u8 batch.
pub fn images_tensor(b: &Batch, device: &Device) -> Result<Tensor> {
    let t = Tensor::from_slice(&b.images, (b.batch_size, 3, b.height, b.width), device)?;
    Ok((t.to_dtype(DType::F32)? / 255.0)?)
}

/// Runs `model` over the first `images` images of a rect val loader and scores it.
pub fn validate(model: &dyn Detector, loader: &q2_data::Loader, images: usize, device: &Device) -> Result<ValMetrics> {
    let t0 = std::time::Instant::now();
    let (gt, dets) = predict(model, loader, images, device)?;
    let mut m = score(&gt, &dets);
    m.images = images.min(loader.dataset().len());
    m.seconds = t0.elapsed().as_secs_f64();
    Ok(m)
}

/// The three metric families of q2-eval on one set of predictions.
pub fn score(gt: &GroundTruth, dets: &[q2_eval::io::Detection]) -> ValMetrics {
    let y = q2_eval::yolo::evaluate(gt, dets);
    let c = q2_eval::coco::evaluate(gt, dets);
    let v07 = q2_eval::voc::evaluate(gt, dets, q2_eval::voc::VocMetric::Voc07, false);
    let v12 = q2_eval::voc::evaluate(gt, dets, q2_eval::voc::VocMetric::Voc12, false);
    ValMetrics {
        map50: y.map50,
        map50_95: y.map50_95,
        coco: c.stats.to_vec(),
        voc07: v07.map,
        voc12: v12.map,
        images: gt.images.len(),
        detections: dets.len(),
        seconds: 0.0,
    }
}

/// The ground truth of the first `images` images of the loader's split and the model's
/// detections on them, in original image pixels.
pub fn predict(model: &dyn Detector, loader: &q2_data::Loader, images: usize, device: &Device) -> Result<(GroundTruth, Vec<q2_eval::io::Detection>)> {
    let images = images.min(loader.dataset().len());
    let gt = ground_truth(loader.dataset(), images)?;
    let mut raw = Vec::new();
    let mut seen = 0usize;
    let mut it = loader.epoch(0);
    while let Some(b) = it.next() {
        let b = b?;
        if seen >= images {
            break;
        }
        let x = images_tensor(&b, device)?;
        let out = model.forward(&x, Mode::Eval)?;
        let decoded = model.decode(&out)?;
        let per_image = glue::nms(model, &decoded)?;
        for (j, dets) in per_image.into_iter().enumerate() {
            let index = b.indices[j];
            if index >= images {
                continue;
            }
            let shape = b.shapes[j].as_ref();
            for d in glue::to_original(model.family(), dets, (b.height, b.width), shape, loader.dataset().samples[index].width, loader.dataset().samples[index].height) {
                raw.push(RawDetection { image_id: ImageId::Int(index as i64 + 1), category_id: d.class as i64 + 1, bbox: d.xywh, score: d.score });
            }
        }
        seen += b.batch_size;
        it.recycle(b);
    }
    let dets = gt.detections("<predictions>", raw)?;
    Ok((gt, dets))
}
