//! What quantization-aware training adds to the training loop (`q2 qat`): the fusion factory
//! (Q-GBFusion, or gradient taps on the plain Concats for measurement), loading an FP checkpoint
//! into the quantized model, the calibration pass (Q-GBFusion's calibrated insertion node by node,
//! then the quantizers' data-driven initialisation), the frozen FP teacher with the Q-ADA term,
//! and the per-step telemetry of the fusion nodes.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use q2_data::{Dataset, Loader, LoaderConfig};
use q2_distill::{AdaConfig, DistillLoss, StudentFeature};
use q2_fusion::{FusionFactory, GbfConfig, GbfFactory, GbfNode, NodeRecord};
use q2_nn::Mode;
use q2_yolo::Detector;

use super::{glue, validate, TrainConfig};
use crate::cli::InputError;

/// The fusion of a run's models: Q-GBFusion when configured, tapped plain Concats when only
/// telemetry is asked for, plain Concats otherwise.
pub fn fusion_factory(cfg: &TrainConfig) -> Result<Option<Arc<GbfFactory>>> {
    let g = match (&cfg.gbf, cfg.telemetry_every) {
        (Some(g), _) => g.clone(),
        (None, 0) => return Ok(None),
        (None, _) => GbfConfig::measure_only(),
    };
    Ok(Some(Arc::new(GbfFactory::new(g).map_err(|e| InputError(e.to_string()))?)))
}

/// A model of the run (quantized as configured, with the run's fusion), parameters seeded from
/// the configuration's seed. Returns the model and the handles to its fusion nodes.
pub fn build(cfg: &TrainConfig, nc: usize, device: &Device) -> Result<(Box<dyn Detector>, Vec<Arc<GbfNode>>)> {
    let factory = fusion_factory(cfg)?;
    let plan = cfg.quant.as_ref().map(|q| q.plan());
    let fusion: &dyn FusionFactory = match &factory {
        Some(f) => f.as_ref(),
        None => &q2_fusion::PlainConcat,
    };
    let model = glue::build_model_with(&cfg.model, nc, cfg.seed, device, plan.as_ref(), fusion)?;
    Ok((model, factory.map(|f| f.nodes()).unwrap_or_default()))
}

/// Loads `path` into `model`; quantizer parameters and the entries of the fusion nodes may be
/// missing (an FP checkpoint has neither). Returns the nodes the checkpoint has no entries for:
/// the ones a calibrated insertion still has to place (a checkpoint trained with Q-GBFusion,
/// e.g. an FP model fine-tuned with the module, already has them).
pub fn load_weights(model: &dyn Detector, nodes: &[Arc<GbfNode>], path: &Path) -> Result<Vec<Arc<GbfNode>>> {
    let optional: Vec<String> = nodes.iter().map(|n| format!("model.{}.", n.node)).collect();
    let names = q2_nn::store::load_tensors(path, &Device::Cpu).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    q2_yolo::weights::load_partial(model.store(), path, &optional).map_err(|e| InputError(e.to_string()))?;
    Ok(nodes.iter().filter(|n| n.balances() && !names.contains_key(&format!("model.{}.lam", n.node))).cloned().collect())
}

/// The first `n` training images, letterboxed without augmentation, as one batch.
pub fn calibration_batch(train: &Dataset, img: usize, n: usize, workers: usize, device: &Device) -> Result<Tensor> {
    let n = n.min(train.len()).max(1);
    let mut ds = train.clone();
    ds.samples.truncate(n);
    let mut lc = LoaderConfig::val(img, n, workers);
    lc.rect = false;
    lc.progress = false;
    let loader = Loader::new(ds, lc).map_err(|e| InputError(e.to_string()))?;
    let mut it = loader.epoch(0);
    let b = it.next().ok_or_else(|| anyhow!("calibration: the training split is empty"))?.map_err(|e| InputError(e.to_string()))?;
    validate::images_tensor(&b, device)
}

/// Prepares a model that starts from trained weights: Q-GBFusion's calibrated insertion at each
/// node of `insert` in neck order (its LN statistics measured with the nodes before it already
/// inserted), then every quantizer initialised from the same batch. Returns the statistics used
/// per node.
pub fn calibrate(model: &dyn Detector, insert: &[Arc<GbfNode>], x: &Tensor) -> Result<Vec<(usize, q2_fusion::LnStats)>> {
    let mut used = vec![];
    {
        let consumers = model.fusion_consumers();
        for node in insert.iter().filter(|n| n.balances() && n.cfg.init == q2_fusion::gbf::GbfInit::Calibrated) {
            let cons = &consumers.iter().find(|(i, _)| *i == node.node).ok_or_else(|| anyhow!("{}: no consumers known for fusion node {}", model.name(), node.node))?.1;
            if !node.cfg.ln {
                // without the LN the insertion only undoes α: no statistics, no calibration pass
                q2_fusion::insert_node(node, &q2_fusion::LnStats::default(), cons)?;
                continue;
            }
            node.start_stats()?;
            model.calibrate(x).context("calibration pass")?;
            let stats = node.take_stats()?.ok_or_else(|| anyhow!("node {}: no statistics collected", node.node))?;
            q2_fusion::insert_node(node, &stats, cons)?;
            used.push((node.node, stats));
        }
    }
    model.calibrate(x).context("quantizer calibration")?;
    Ok(used)
}

/// The frozen full-precision teacher and the distillation loss against it (Q-ADA).
pub struct Teacher {
    pub model: Box<dyn Detector>,
    pub loss: Box<dyn DistillLoss>,
}

impl Teacher {
    /// An FP model of the same architecture (plain Concats) with `path`'s weights.
    pub fn load(cfg: &TrainConfig, ada: &AdaConfig, nc: usize, path: &Path, device: &Device) -> Result<Self> {
        let model = glue::build_model(&cfg.model, nc, cfg.seed, device)?;
        glue::load_weights(model.as_ref(), path).with_context(|| format!("loading the Q-ADA teacher {}", path.display()))?;
        Ok(Self { model, loss: Box::new(ada.clone()) })
    }

    /// The distillation loss (Q-ADA: Eq. 16, weighted) between the student's Detect inputs
    /// `feats` and the teacher's on the same batch `x`.
    pub fn loss(&self, student: &dyn Detector, feats: &[Tensor; 3], x: &Tensor) -> Result<Tensor> {
        let (tf, _) = self.model.forward_features(x, Mode::Eval)?;
        let tf: Vec<Tensor> = tf.iter().map(Tensor::detach).collect();
        let qs = student.feature_quantizers();
        let sf: Vec<StudentFeature> = feats.iter().zip(qs).map(|(x, q)| StudentFeature { x, quantizer: q }).collect();
        Ok(self.loss.loss(&sf, &tf)?)
    }
}

/// Telemetry of one iteration: every fusion node's record.
#[derive(serde::Serialize)]
pub struct StepRecord<'a> {
    pub ni: usize,
    pub epoch: usize,
    pub nodes: &'a [NodeRecord],
}
