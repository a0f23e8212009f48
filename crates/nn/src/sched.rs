//! YOLOv5's learning-rate schedule (`train.py`): a per-epoch factor `lf(epoch)` — linear decay
//! to `lrf`, or the cosine `one_cycle` of `--cos-lr` — and the per-iteration warm-up that ramps
//! every group's LR from 0 (the bias group from `warmup_bias_lr`) and the momentum from
//! `warmup_momentum`, while raising the gradient-accumulation count to `nbs / batch_size`.

use serde::{Deserialize, Serialize};

use crate::optim::Optimizer;

/// Shape of the per-epoch LR factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrShape {
    /// `(1 − x/epochs)·(1 − lrf) + lrf`
    Linear,
    /// `((1 − cos(πx/epochs))/2)·(lrf − 1) + 1` (YOLOv5 `one_cycle(1, lrf, epochs)`)
    OneCycle,
}

/// The per-epoch LR factor.
pub fn lr_factor(shape: LrShape, lrf: f64, epochs: usize, x: f64) -> f64 {
    let e = epochs as f64;
    match shape {
        LrShape::Linear => (1.0 - x / e) * (1.0 - lrf) + lrf,
        LrShape::OneCycle => ((1.0 - (x * std::f64::consts::PI / e).cos()) / 2.0) * (lrf - 1.0) + 1.0,
    }
}

/// `np.interp` for two points.
fn interp(x: f64, x0: f64, x1: f64, y0: f64, y1: f64) -> f64 {
    if x <= x0 {
        y0
    } else if x >= x1 {
        y1
    } else {
        y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    }
}

/// YOLOv5's optimisation schedule for one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Yolov5Schedule {
    pub lr0: f64,
    pub lrf: f64,
    pub momentum: f64,
    pub warmup_epochs: f64,
    pub warmup_momentum: f64,
    pub warmup_bias_lr: f64,
    pub epochs: usize,
    /// Batches per epoch.
    pub nb: usize,
    pub batch_size: usize,
    /// Nominal batch size (64).
    pub nbs: usize,
    pub shape: LrShape,
}

/// What the schedule prescribes at one iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Prescription {
    /// LR per optimizer group (group 0 = biases).
    pub lr: Vec<f64>,
    pub momentum: f64,
    /// Number of batches whose gradients are summed before a step.
    pub accumulate: usize,
}

impl Yolov5Schedule {
    /// Warm-up iterations: `max(round(warmup_epochs·nb), 100)` (Python's round, half to even).
    pub fn warmup_iters(&self) -> usize {
        ((self.warmup_epochs * self.nb as f64).round_ties_even() as usize).max(100)
    }

    pub fn lf(&self, epoch: usize) -> f64 {
        lr_factor(self.shape, self.lrf, self.epochs, epoch as f64)
    }

    /// LR of every group, momentum and accumulation at global iteration `ni` in `epoch`,
    /// for `groups` groups whose base LR is `lr0`.
    pub fn at(&self, ni: usize, epoch: usize, groups: usize) -> Prescription {
        let nw = self.warmup_iters();
        let target = self.lr0 * self.lf(epoch);
        let ratio = self.nbs as f64 / self.batch_size as f64;
        if ni <= nw {
            let (x, x1) = (ni as f64, nw as f64);
            Prescription {
                lr: (0..groups)
                    .map(|j| interp(x, 0.0, x1, if j == 0 { self.warmup_bias_lr } else { 0.0 }, target))
                    .collect(),
                momentum: interp(x, 0.0, x1, self.warmup_momentum, self.momentum),
                accumulate: (interp(x, 0.0, x1, 1.0, ratio).round_ties_even() as usize).max(1),
            }
        } else {
            // After warm-up the LR is what `LambdaLR` last wrote. train.py sets
            // `scheduler.last_epoch = start_epoch - 1` after constructing it, so the step at the end
            // of epoch e writes lf(e) and epoch e + 1 trains with it; the epoch in which warm-up
            // ends keeps the warm-up's final value lf(that epoch).
            let warmup_epoch = nw / self.nb.max(1);
            let lr = self.lr0 * self.lf(epoch.saturating_sub(1).max(warmup_epoch));
            Prescription { lr: vec![lr; groups], momentum: self.momentum, accumulate: (ratio.round_ties_even() as usize).max(1) }
        }
    }

    /// Writes the prescription for iteration `ni` into the optimizer's groups; returns it.
    pub fn apply(&self, ni: usize, epoch: usize, opt: &mut dyn Optimizer) -> Prescription {
        let p = self.at(ni, epoch, opt.groups().len());
        for (g, lr) in opt.groups_mut().iter_mut().zip(&p.lr) {
            g.lr = *lr;
            g.momentum = p.momentum;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_start_at_one_and_end_at_lrf() {
        for shape in [LrShape::Linear, LrShape::OneCycle] {
            assert!((lr_factor(shape, 0.15, 50, 0.0) - 1.0).abs() < 1e-12);
            assert!((lr_factor(shape, 0.15, 50, 50.0) - 0.15).abs() < 1e-12);
        }
    }

    #[test]
    fn interp_clamps() {
        assert_eq!(interp(-1.0, 0.0, 10.0, 1.0, 2.0), 1.0);
        assert_eq!(interp(11.0, 0.0, 10.0, 1.0, 2.0), 2.0);
        assert_eq!(interp(5.0, 0.0, 10.0, 1.0, 2.0), 1.5);
    }
}
