//! YOLOv5's `ModelEMA`: an exponential moving average of every floating-point entry of the model
//! (weights and BatchNorm running statistics), with the ramped decay
//! `d = decay·(1 − exp(−updates/tau))`. Integer entries (`num_batches_tracked`) are not averaged.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::store::ParamStore;
use crate::{NnError, Result};

#[derive(Debug, Clone)]
pub struct ModelEma {
    pub decay: f64,
    pub tau: f64,
    pub updates: u64,
    shadow: BTreeMap<String, Tensor>,
}

impl ModelEma {
    /// YOLOv5's defaults: decay 0.9999, tau 2000.
    pub const DECAY: f64 = 0.9999;
    pub const TAU: f64 = 2000.0;

    /// Starts the average as a copy of `store`.
    pub fn new(store: &ParamStore, decay: f64, tau: f64) -> Result<Self> {
        Ok(Self { decay, tau, updates: 0, shadow: store.snapshot()? })
    }

    /// Restores a saved average (e.g. from a checkpoint).
    pub fn from_parts(decay: f64, tau: f64, updates: u64, shadow: BTreeMap<String, Tensor>) -> Self {
        Self { decay, tau, updates, shadow }
    }

    pub fn current_decay(&self) -> f64 {
        self.decay * (1.0 - (-(self.updates as f64) / self.tau).exp())
    }

    /// One update from the model's current values.
    pub fn update(&mut self, store: &ParamStore) -> Result<()> {
        self.updates += 1;
        let d = self.current_decay();
        for (k, v) in self.shadow.iter_mut() {
            if !v.dtype().is_float() {
                continue;
            }
            let m = store.get(k).ok_or_else(|| NnError::Invalid(format!("EMA: model has no entry `{k}`")))?;
            *v = ((&*v * d)? + (m.var.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }

    pub fn shadow(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    /// Writes the averaged values into a store with the same keys (for evaluation or saving).
    pub fn copy_to(&self, store: &ParamStore) -> Result<()> {
        let map = self.shadow.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        store.restore(&map, std::path::Path::new("<ema>"))
    }
}
