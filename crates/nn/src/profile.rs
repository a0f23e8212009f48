//! A process-wide op profiler for the CPU kernels: each kernel adds its wall time to one of the
//! [`Op`] counters while profiling is on (`q2 bench --profile`). Off by default; when off, a
//! kernel pays one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The kernels that report their time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    ConvForward,
    ConvInputGrad,
    ConvWeightGrad,
    BnStats,
    BnActForward,
    BnActBackward,
    FakeQuantForward,
    FakeQuantBackward,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::ConvForward,
        Op::ConvInputGrad,
        Op::ConvWeightGrad,
        Op::BnStats,
        Op::BnActForward,
        Op::BnActBackward,
        Op::FakeQuantForward,
        Op::FakeQuantBackward,
    ];

    /// The key used in `q2 bench --profile` output.
    pub fn key(self) -> &'static str {
        match self {
            Op::ConvForward => "conv_forward",
            Op::ConvInputGrad => "conv_input_grad",
            Op::ConvWeightGrad => "conv_weight_grad",
            Op::BnStats => "bn_stats",
            Op::BnActForward => "bn_act_forward",
            Op::BnActBackward => "bn_act_backward",
            Op::FakeQuantForward => "fake_quant_forward",
            Op::FakeQuantBackward => "fake_quant_backward",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Turns profiling on or off.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Zeroes every counter.
pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// Milliseconds accumulated per op since the last [`reset`].
pub fn snapshot() -> Vec<(Op, f64)> {
    Op::ALL.iter().map(|&op| (op, NANOS[op as usize].load(Ordering::Relaxed) as f64 / 1e6)).collect()
}

/// Runs `f`, adding its wall time to `op` when profiling is on.
pub fn timed<T>(op: Op, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    NANOS[op as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_enabled() {
        enable(false);
        reset();
        timed(Op::BnStats, || std::thread::sleep(std::time::Duration::from_millis(2)));
        assert_eq!(snapshot()[Op::BnStats as usize].1, 0.0);
        enable(true);
        timed(Op::BnStats, || std::thread::sleep(std::time::Duration::from_millis(2)));
        enable(false);
        assert!(snapshot()[Op::BnStats as usize].1 >= 2.0);
    }
}
