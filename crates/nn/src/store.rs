//! The parameter store: every trainable tensor and buffer of a model, keyed by its ultralytics
//! `state_dict` name (`model.0.conv.weight`, `model.0.bn.running_mean`, ...), so that weights
//! convert one to one. Each entry carries a [`Role`] that decides its optimizer group.
//!
//! Initial values are drawn from a per-entry RNG seeded by (store seed, entry name), so a model's
//! initialisation does not depend on the order in which its layers are built.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::{fsutil, NnError, Result};

/// What a stored tensor is, which decides how it is optimised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Convolution / linear weights: trained with weight decay.
    Weight,
    /// Normalisation-layer scales (BatchNorm γ): trained without decay.
    NormWeight,
    /// Biases (conv biases, BatchNorm β): trained without decay, warm-up bias LR.
    Bias,
    /// Quantizer parameters (steps, offsets, clip values, thresholds): trained without decay.
    Quant,
    /// Saved with the model but not trained (running statistics, anchors, counters).
    Buffer,
}

impl Role {
    pub fn trainable(self) -> bool {
        self != Role::Buffer
    }
}

/// How a new entry is initialised.
#[derive(Clone, Debug)]
pub enum Init {
    Const(f64),
    Uniform { lo: f64, hi: f64 },
    Normal { mean: f64, std: f64 },
    /// PyTorch's default for conv weights: U(−1/sqrt(fan_in), 1/sqrt(fan_in)).
    KaimingUniform { fan_in: usize },
    Values(Vec<f32>),
}

/// One stored tensor.
#[derive(Clone, Debug)]
pub struct Entry {
    pub var: Var,
    pub role: Role,
    /// Multiplier of the group learning rate (N2UQ thresholds train at 0.1×).
    pub lr_scale: f64,
}

/// Named tensors of one model.
#[derive(Debug)]
pub struct ParamStore {
    entries: BTreeMap<String, Entry>,
    device: Device,
    seed: u64,
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl ParamStore {
    pub fn new(device: Device, seed: u64) -> Self {
        Self { entries: BTreeMap::new(), device, seed }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A scope that prefixes every name with `prefix.` (no prefix when empty).
    pub fn scope(&mut self, prefix: &str) -> Scope<'_> {
        Scope { store: self, prefix: prefix.to_string() }
    }

    /// Creates a float32 entry.
    pub fn add(&mut self, name: &str, shape: impl Into<Shape>, role: Role, init: Init) -> Result<Var> {
        let t = seeded(shape, &init, self.seed ^ fnv1a(name), &self.device).map_err(|e| match e {
            NnError::Invalid(m) => NnError::Invalid(format!("{name}: {m}")),
            other => other,
        })?;
        self.insert(name, Var::from_tensor(&t)?, role)
    }

    /// Creates an int64 buffer (e.g. BatchNorm's `num_batches_tracked`, a scalar).
    pub fn add_i64(&mut self, name: &str, shape: impl Into<Shape>) -> Result<Var> {
        let v = Var::zeros(shape, DType::I64, &self.device)?;
        self.insert(name, v, Role::Buffer)
    }

    fn insert(&mut self, name: &str, var: Var, role: Role) -> Result<Var> {
        if self.entries.contains_key(name) {
            return Err(NnError::DuplicateParam(name.to_string()));
        }
        self.entries.insert(name.to_string(), Entry { var: var.clone(), role, lr_scale: 1.0 });
        Ok(var)
    }

    /// Sets the learning-rate multiplier of an entry.
    pub fn set_lr_scale(&mut self, name: &str, scale: f64) -> Result<()> {
        let e = self.entries.get_mut(name).ok_or_else(|| NnError::Invalid(format!("no parameter `{name}`")))?;
        e.lr_scale = scale;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Trainable entries in name order.
    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.iter().filter(|(_, e)| e.role.trainable())
    }

    /// Number of trainable scalars (what ultralytics reports as "parameters").
    pub fn num_trainable(&self) -> usize {
        self.trainable().map(|(_, e)| e.var.elem_count()).sum()
    }

    /// A detached copy of every entry's current value.
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.entries.iter().map(|(k, e)| Ok((k.clone(), e.var.as_tensor().copy()?.detach()))).collect()
    }

    /// Overwrites entries from `tensors`, which must hold exactly the store's keys with the same
    /// shapes (dtype is converted). `origin` names the source in errors.
    pub fn restore(&self, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        let mut missing = vec![];
        let mut mis_shaped = vec![];
        for (k, e) in &self.entries {
            match tensors.get(k) {
                None => missing.push(k.clone()),
                Some(t) if t.dims() != e.var.dims() => mis_shaped.push((k.clone(), e.var.dims().to_vec(), t.dims().to_vec())),
                Some(_) => {}
            }
        }
        let mut extra: Vec<String> = tensors.keys().filter(|k| !self.entries.contains_key(*k)).cloned().collect();
        extra.sort();
        if !(missing.is_empty() && extra.is_empty() && mis_shaped.is_empty()) {
            return Err(NnError::KeyMismatch { path: origin.to_path_buf(), missing, extra, mis_shaped });
        }
        for (k, e) in &self.entries {
            let t = tensors[k].to_device(&self.device)?.to_dtype(e.var.dtype())?;
            e.var.set(&t)?;
        }
        Ok(())
    }

    /// Loads every entry from a safetensors file; missing, unexpected and mis-shaped keys are an
    /// error listing all of them.
    pub fn load_safetensors(&self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| NnError::Io { path: path.to_path_buf(), source })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &self.device)
            .map_err(|e| NnError::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
        self.restore(&tensors, path)
    }

    /// Saves every entry to a safetensors file, atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_tensors(&self.snapshot()?.into_iter().collect(), path)
    }
}

/// A float32 tensor drawn from `init` with a ChaCha8 RNG seeded by `seed`: the same seed gives
/// the same values on every machine (candle's own CPU RNG cannot be seeded).
pub fn seeded(shape: impl Into<Shape>, init: &Init, seed: u64, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![*c as f32; n],
        Init::Uniform { lo, hi } => (0..n).map(|_| rng.random_range(*lo..*hi) as f32).collect(),
        Init::Normal { mean, std } => {
            let d = Normal::new(*mean, *std).map_err(|e| NnError::Invalid(e.to_string()))?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::KaimingUniform { fan_in } => {
            let b = 1.0 / ((*fan_in).max(1) as f64).sqrt();
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        }
        Init::Values(v) => {
            if v.len() != n {
                return Err(NnError::Invalid(format!("{} initial values for shape {shape:?}", v.len())));
            }
            v.clone()
        }
    };
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Writes named tensors to a safetensors file atomically (temp file + fsync + rename).
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    fsutil::with_atomic(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .map_err(|e| NnError::Safetensors { path: tmp.to_path_buf(), msg: e.to_string() })?;
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| NnError::Io { path: tmp.to_path_buf(), source })
    })
}

/// Reads all tensors of a safetensors file, naming the file in errors.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| NnError::Io { path: path.to_path_buf(), source })?;
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| NnError::Safetensors { path: path.to_path_buf(), msg: e.to_string() })
}

/// A naming scope: a borrowed store plus a dotted prefix (`model.3.cv1`).
pub struct Scope<'a> {
    store: &'a mut ParamStore,
    prefix: String,
}

impl Scope<'_> {
    /// A child scope `prefix.name`.
    pub fn sub(&mut self, name: impl std::fmt::Display) -> Scope<'_> {
        let prefix = self.name(&name.to_string());
        Scope { store: self.store, prefix }
    }

    /// The full name of a leaf in this scope.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    pub fn add(&mut self, leaf: &str, shape: impl Into<Shape>, role: Role, init: Init) -> Result<Var> {
        let name = self.name(leaf);
        self.store.add(&name, shape, role, init)
    }

    pub fn add_i64(&mut self, leaf: &str, shape: impl Into<Shape>) -> Result<Var> {
        let name = self.name(leaf);
        self.store.add_i64(&name, shape)
    }

    pub fn set_lr_scale(&mut self, leaf: &str, scale: f64) -> Result<()> {
        let name = self.name(leaf);
        self.store.set_lr_scale(&name, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(seed: u64) -> ParamStore {
        let mut s = ParamStore::new(Device::Cpu, seed);
        {
            let mut root = s.scope("model");
            let mut l0 = root.sub(0);
            l0.sub("conv").add("weight", (4, 3, 3, 3), Role::Weight, Init::KaimingUniform { fan_in: 27 }).unwrap();
            let mut bn = l0.sub("bn");
            bn.add("weight", 4, Role::NormWeight, Init::Const(1.0)).unwrap();
            bn.add("bias", 4, Role::Bias, Init::Const(0.0)).unwrap();
            bn.add("running_mean", 4, Role::Buffer, Init::Const(0.0)).unwrap();
            bn.add_i64("num_batches_tracked", ()).unwrap();
        }
        s
    }

    #[test]
    fn names_follow_ultralytics_keys() {
        let s = demo(0);
        let names: Vec<_> = s.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "model.0.bn.bias",
                "model.0.bn.num_batches_tracked",
                "model.0.bn.running_mean",
                "model.0.bn.weight",
                "model.0.conv.weight"
            ]
        );
        assert_eq!(s.num_trainable(), 4 * 27 + 8);
    }

    #[test]
    fn init_depends_on_seed_and_name_not_order() {
        let a = demo(7).get("model.0.conv.weight").unwrap().var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = demo(7).get("model.0.conv.weight").unwrap().var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = demo(8).get("model.0.conv.weight").unwrap().var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let bound = 1.0 / 27f32.sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut s = ParamStore::new(Device::Cpu, 0);
        s.add("a", 1, Role::Bias, Init::Const(0.)).unwrap();
        assert!(matches!(s.add("a", 1, Role::Bias, Init::Const(0.)), Err(NnError::DuplicateParam(_))));
    }

    #[test]
    fn safetensors_round_trip_and_mismatch_report() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let a = demo(1);
        a.save_safetensors(&p).unwrap();
        let b = demo(2);
        b.load_safetensors(&p).unwrap();
        for (k, e) in a.iter() {
            let x = e.var.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let y = b.get(k).unwrap().var.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(x, y, "{k}");
        }
        // A model with one more key, one key fewer and one shape changed.
        let mut c = ParamStore::new(Device::Cpu, 0);
        c.add("model.0.conv.weight", (4, 3, 1, 1), Role::Weight, Init::Const(0.)).unwrap();
        c.add("model.0.bn.weight", 4, Role::NormWeight, Init::Const(1.)).unwrap();
        c.add("model.1.bn.weight", 4, Role::NormWeight, Init::Const(1.)).unwrap();
        let e = c.load_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("w.safetensors"), "{e}");
        assert!(e.contains("missing in file (1): model.1.bn.weight"), "{e}");
        assert!(e.contains("unexpected in file (3): model.0.bn.bias, model.0.bn.num_batches_tracked, model.0.bn.running_mean"), "{e}");
        assert!(e.contains("shape of model.0.conv.weight: model [4, 3, 1, 1], file [4, 3, 3, 3]"), "{e}");
    }

    #[test]
    fn corrupt_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"not a safetensors file").unwrap();
        let e = demo(0).load_safetensors(&p).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors") && e.contains("cannot read safetensors"), "{e}");
        let e = demo(0).load_safetensors(&dir.path().join("none.safetensors")).unwrap_err().to_string();
        assert!(e.contains("none.safetensors"), "{e}");
    }
}
