//! Training checkpoints: everything needed to continue a run bit-identically on CPU (model
//! parameters and buffers, the EMA, SGD momentum buffers, a partially accumulated gradient, the
//! counters), in one safetensors file written atomically (temp file + rename), so a run killed at
//! any moment leaves the previous checkpoint intact.
//!
//! Layout: `model/<key>`, `ema/<key>` (ultralytics state_dict names), `opt/<group>/<index>`,
//! `acc/<key>`, and `meta` (the JSON of [`Meta`] as UTF-8 bytes).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use q2_nn::ema::ModelEma;
use q2_nn::optim::{GradAccumulator, Sgd};
use q2_nn::store::{load_tensors, save_tensors};
use q2_nn::ParamStore;
use serde::{Deserialize, Serialize};

/// The counters of a run at a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Batches seen (YOLOv5's `ni`).
    pub ni: usize,
    /// `ni` at the last optimizer step.
    pub last_opt_step: usize,
    /// Best validation fitness so far (`None` before the first validation).
    pub best_fitness: Option<f64>,
    pub best_epoch: Option<usize>,
    pub ema_updates: u64,
    /// The run stopped early (validation patience); `--resume` has nothing left to do.
    #[serde(default)]
    pub stopped: bool,
    /// The resolved configuration (TOML) the run was started with.
    pub config: String,
}

/// Writes a checkpoint atomically.
pub fn save(path: &Path, store: &ParamStore, ema: &ModelEma, opt: &Sgd, acc: &GradAccumulator, meta: &Meta) -> Result<()> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut names = HashMap::new();
    for (k, e) in store.iter() {
        t.insert(format!("model/{k}"), e.var.as_tensor().detach());
        names.insert(e.var.id(), k.to_string());
    }
    for (k, v) in ema.shadow() {
        t.insert(format!("ema/{k}"), v.clone());
    }
    for (g, bufs) in opt.buffers().iter().enumerate() {
        for (i, b) in bufs.iter().enumerate() {
            if let Some(b) = b {
                t.insert(format!("opt/{g}/{i}"), b.clone());
            }
        }
    }
    for (v, sum) in acc.sums() {
        let k = names.get(&v.id()).ok_or_else(|| anyhow!("checkpoint: an accumulated gradient belongs to no stored parameter"))?;
        t.insert(format!("acc/{k}"), sum.clone());
    }
    let json = serde_json::to_vec(meta)?;
    t.insert("meta".into(), Tensor::from_vec(json.clone(), json.len(), &Device::Cpu)?);
    save_tensors(&t, path).with_context(|| format!("writing checkpoint {}", path.display()))
}

/// A checkpoint read back.
pub struct Loaded {
    pub meta: Meta,
    pub model: HashMap<String, Tensor>,
    pub ema: BTreeMap<String, Tensor>,
    pub opt: HashMap<(usize, usize), Tensor>,
    pub acc: HashMap<String, Tensor>,
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let all = load_tensors(path, device).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let meta_t = all.get("meta").ok_or_else(|| anyhow!("{}: not a q2 training checkpoint (no `meta`)", path.display()))?;
    let bytes: Vec<u8> = meta_t.to_dtype(DType::U8)?.to_vec1()?;
    let meta: Meta = serde_json::from_slice(&bytes).with_context(|| format!("{}: unreadable `meta`", path.display()))?;
    let mut out = Loaded { meta, model: HashMap::new(), ema: BTreeMap::new(), opt: HashMap::new(), acc: HashMap::new() };
    for (k, v) in all {
        if let Some(r) = k.strip_prefix("model/") {
            out.model.insert(r.to_string(), v);
        } else if let Some(r) = k.strip_prefix("ema/") {
            out.ema.insert(r.to_string(), v);
        } else if let Some(r) = k.strip_prefix("acc/") {
            out.acc.insert(r.to_string(), v);
        } else if let Some(r) = k.strip_prefix("opt/") {
            let (g, i) = r.split_once('/').ok_or_else(|| anyhow!("{}: bad tensor name `{k}`", path.display()))?;
            out.opt.insert((g.parse()?, i.parse()?), v);
        }
    }
    Ok(out)
}

/// Puts a loaded checkpoint's state into a freshly built run.
pub fn restore(l: Loaded, path: &Path, store: &ParamStore, ema: &mut ModelEma, opt: &mut Sgd, acc: &mut GradAccumulator) -> Result<()> {
    store.restore(&l.model, path)?;
    *ema = ModelEma::from_parts(ema.decay, ema.tau, l.meta.ema_updates, l.ema);
    let mut bufs: Vec<Vec<Option<Tensor>>> = opt.buffers().iter().map(|b| vec![None; b.len()]).collect();
    for ((g, i), t) in l.opt {
        let slot = bufs.get_mut(g).and_then(|b| b.get_mut(i)).ok_or_else(|| anyhow!("{}: optimizer buffer {g}/{i} does not fit this model", path.display()))?;
        *slot = Some(t);
    }
    opt.set_buffers(bufs);
    acc.clear();
    for (k, t) in l.acc {
        let e = store.get(&k).ok_or_else(|| anyhow!("{}: accumulated gradient for unknown parameter `{k}`", path.display()))?;
        acc.set(&e.var, t);
    }
    Ok(())
}
