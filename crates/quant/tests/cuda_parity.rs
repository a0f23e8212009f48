//! CUDA parity: every quantizer through `q2_quant::op::fake_quant` and candle autograd on
//! `Device::new_cuda(0)` must give the CPU kernels' results: the golden cases of
//! `tests/fixtures/quant_golden.json` and large random tensors (2^20 elements, per tensor and per
//! channel with 64 channels, every method, 2/4/8 bits).
//!
//! Forward: bit-identical (±0 aside), except DoReFa (`tanhf` on the GPU may differ by an ulp):
//! within 1e-6 of max|y|, where an ulp of tanh may also move an element that lies on a rounding
//! boundary by one level (at most 1e-4 of the elements). Gradients: within 1e-5 of
//! max|expected| (for DoReFa's tied maxima, plus what the flipped elements change in the sum
//! through max|tanh w|).
//!
//! Without a CUDA device the tests print a notice and pass. Run on a GPU machine with
//! `cargo test --release --features cuda -p q2-quant --test cuda_parity`.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use q2_quant::kernel::{self, Kernel};
use q2_quant::methods::*;
use q2_quant::op::fake_quant;
use serde_json::Value;

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            // candle appends a backtrace under RUST_BACKTRACE: keep the first line.
            eprintln!("cuda_parity: no CUDA device 0 ({}); skipping", e.to_string().lines().next().unwrap_or(""));
            None
        }
    }
}

/// One evaluation: y, dL/dx, dL/dparams (groups × P) of L = Σ y·g.
struct Eval {
    y: Vec<f32>,
    gx: Vec<f32>,
    gp: Vec<f32>,
}

fn eval<K: Kernel>(k: &Arc<K>, x: &[f32], p: &[f32], g: &[f32], groups: usize, dev: &Device) -> Eval {
    let n = x.len();
    let np = k.num_params();
    let xv = Var::from_tensor(&Tensor::from_slice(x, n, dev).unwrap()).unwrap();
    let pv = (np > 0).then(|| Var::from_tensor(&Tensor::from_slice(p, (groups, np), dev).unwrap()).unwrap());
    let y = fake_quant(k.clone(), xv.as_tensor(), pv.as_ref().map(|v| v.as_tensor()), groups)
        .unwrap_or_else(|e| panic!("{} on {dev:?}: {e}", k.name()));
    let loss = (&y * Tensor::from_slice(g, n, dev).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let gx = grads.get(xv.as_tensor()).map(flat).unwrap_or_else(|| vec![0.0; n]);
    let gp = match &pv {
        Some(pv) => grads.get(pv.as_tensor()).map(flat).unwrap_or_else(|| vec![0.0; groups * np]),
        None => vec![],
    };
    Eval { y: flat(&y), gx, gp }
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, a| m.max((*a as f64).abs()))
}

/// Collects mismatches of one test.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, msg: String) {
        self.0.push(msg);
    }

    fn assert_none(&self, what: &str) {
        assert!(self.0.is_empty(), "{what}: {} mismatches:\n{}", self.0.len(), self.0.join("\n"));
    }

    /// Bit-identical values (+0 and −0 count as equal, as do two NaNs).
    fn exact(&mut self, label: &str, what: &str, got: &[f32], want: &[f32]) {
        if got.len() != want.len() {
            return self.push(format!("{label}: {what}: {} values, expected {}", got.len(), want.len()));
        }
        let bad: Vec<usize> = (0..got.len()).filter(|&i| !(got[i] == want[i] || (got[i].is_nan() && want[i].is_nan()))).collect();
        if let Some(&i) = bad.first() {
            self.push(format!("{label}: {what}: {} values differ, first [{i}] = {:e}, expected {:e}", bad.len(), got[i], want[i]));
        }
    }

    /// |got − want| ≤ rel·max|want| + extra(i), element by element.
    fn close(&mut self, label: &str, what: &str, got: &[f32], want: &[f32], rel: f64, extra: impl Fn(usize) -> f64) {
        if got.len() != want.len() {
            return self.push(format!("{label}: {what}: {} values, expected {}", got.len(), want.len()));
        }
        let tol = rel * max_abs(want);
        // NaN-safe: a NaN difference counts as off.
        let ok = |i: usize| (got[i] as f64 - want[i] as f64).abs() <= tol + extra(i);
        let bad: Vec<usize> = (0..got.len()).filter(|&i| !ok(i)).collect();
        if let Some(&i) = bad.first() {
            self.push(format!(
                "{label}: {what}: {} values off, first [{i}] = {:e}, expected {:e} (tolerance {:e})",
                bad.len(),
                got[i],
                want[i],
                tol + extra(i)
            ));
        }
    }
}

/// Runs `k` on CPU and CUDA and compares (the CPU result is returned for further checks).
#[allow(clippy::too_many_arguments)]
fn check<K: Kernel>(k: K, x: &[f32], p: &[f32], g: &[f32], groups: usize, dev: &Device, label: &str, f: &mut Failures) -> Eval {
    let k = Arc::new(k);
    let want = eval(&k, x, p, g, groups, &Device::Cpu);
    let got = eval(&k, x, p, g, groups, dev);
    match (&*k as &dyn std::any::Any).downcast_ref::<DoReFa>() {
        None => {
            f.exact(label, "y", &got.y, &want.y);
            f.close(label, "dL/dx", &got.gx, &want.gx, 1e-5, |_| 0.0);
        }
        Some(d) => check_dorefa(label, ((1u32 << d.bits) - 1) as f64, x, g, groups, &got, &want, f),
    }
    f.close(label, "dL/dparams", &got.gp, &want.gp, 1e-5, |_| 0.0);
    want
}

/// DoReFa: y within 1e-6·max|y| except rare one-level flips (an ulp of tanh on a rounding
/// boundary); dL/dx within 1e-5·max, the tied maxima also within what the flips and the tanhf
/// ulps can change in S = Σ g·((2q − 1) − t/m), which they share.
#[allow(clippy::too_many_arguments)]
fn check_dorefa(label: &str, levels: f64, x: &[f32], g: &[f32], groups: usize, got: &Eval, want: &Eval, f: &mut Failures) {
    let n = x.len();
    let gl = n / groups;
    let scale = max_abs(&want.y);
    // m = max|tanh w| per group, as the CPU computes it.
    let ms: Vec<f32> = x.chunks(gl).map(|xg| xg.iter().fold(0f32, |m, v| m.max(v.abs())).tanh()).collect();
    let mut flips = vec![0usize; groups];
    let mut flip_mass = vec![0f64; groups];
    let mut far = vec![];
    for (i, (&gy, &wy)) in got.y.iter().zip(&want.y).enumerate() {
        let d = (gy as f64 - wy as f64).abs();
        if d <= 1e-6 * scale {
            continue;
        }
        let gi = i / gl;
        // A flip moves y by one level, 2m/n, and (2q − 1) by 2/n.
        if d <= 2.0 * ms[gi] as f64 / levels * (1.0 + 1e-5) + 1e-6 * scale {
            flips[gi] += 1;
            flip_mass[gi] += g[i].abs() as f64 * 2.0 / levels;
        } else {
            far.push(i);
        }
    }
    if let Some(&i) = far.first() {
        f.push(format!("{label}: y: {} values off by more than a level, first [{i}] = {:e}, expected {:e}", far.len(), got.y[i], want.y[i]));
    }
    let total: usize = flips.iter().sum();
    if total > (n / 10_000).max(4) {
        f.push(format!("{label}: y: {total} values moved by a level (of {n}): more than tanhf ulps explain"));
    }
    // Tied maxima per group (CPU tanh; the data keep ties well away from tanh's rounding).
    let mut extra = vec![0f64; n];
    for gi in 0..groups {
        let (xg, m) = (&x[gi * gl..(gi + 1) * gl], ms[gi]);
        let ties: Vec<usize> = (0..gl).filter(|&j| m != 0.0 && xg[j].tanh().abs() == m).collect();
        if ties.is_empty() {
            continue;
        }
        // S = Σ g·((2q − 1) − t/m), shared by the ties, moves by at most |g|·2/n per flipped
        // element, and by the tanhf ulps in t/m (t and m each within 2 ulps): |g|·|t/m|·2^-21.
        let gg = &g[gi * gl..(gi + 1) * gl];
        let drift: f64 = xg.iter().zip(gg).map(|(w, g)| (*g as f64).abs() * (w.tanh() / m).abs() as f64).sum::<f64>() / (1u64 << 21) as f64;
        let share = (flip_mass[gi] * (1.0 + 1e-3) + drift) / ties.len() as f64;
        for j in ties {
            extra[gi * gl + j] = share;
        }
    }
    f.close(label, "dL/dx", &got.gx, &want.gx, 1e-5, |i| extra[i]);
    if total > 0 {
        eprintln!("{label}: {total} DoReFa values moved by one level (tanhf ulp on a rounding boundary)");
    }
}

// ------------------------------------------------------------------------------------------------
// golden cases

fn numbers(v: &Value) -> Vec<f32> {
    match v {
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        Value::Array(a) => a.iter().flat_map(numbers).collect(),
        other => panic!("not numeric: {other}"),
    }
}

/// The case's parameters as a (groups × P) row-major vector (as `q2_quant::case` reads them).
fn packed<K: Kernel>(k: &K, params: &Value, groups: usize) -> Vec<f32> {
    let np = k.num_params();
    let mut p = vec![0f32; groups * np];
    let mut off = 0;
    for (name, width) in k.param_layout() {
        let v = numbers(&params[name]);
        for gi in 0..groups {
            let row: &[f32] = match (v.len(), width) {
                (1, 1) => &v[..],
                (l, 1) if l == groups => &v[gi..gi + 1],
                (l, w) if l == w => &v[..],
                (l, w) if l == w * groups => &v[gi * w..(gi + 1) * w],
                (l, w) => panic!("{}: params.{name}: {l} values for {groups} group(s) of {w}", k.name()),
            };
            p[gi * np + off..gi * np + off + width].copy_from_slice(row);
        }
        off += width;
    }
    p
}

/// A kernel of any type (the generic code runs per arm).
enum AnyKernel {
    Lsq(Lsq),
    LsqPlus(LsqPlus),
    Pact(Pact),
    DoReFa(DoReFa),
    N2uqAct(N2uqAct),
    N2uqWeight(N2uqWeight),
    MinMax(MinMax),
}

macro_rules! with_kernel {
    ($any:expr, |$k:ident| $body:expr) => {
        match $any {
            AnyKernel::Lsq($k) => $body,
            AnyKernel::LsqPlus($k) => $body,
            AnyKernel::Pact($k) => $body,
            AnyKernel::DoReFa($k) => $body,
            AnyKernel::N2uqAct($k) => $body,
            AnyKernel::N2uqWeight($k) => $body,
            AnyKernel::MinMax($k) => $body,
        }
    };
}

/// The kernel `q2 quant` (`q2_quant::case::evaluate`) uses for (method, bits, signed).
fn case_kernel(method: &str, bits: u32, signed: bool) -> AnyKernel {
    match (method, signed) {
        ("lsq", _) => AnyKernel::Lsq(Lsq { bits, signed }),
        ("lsq_plus", _) => AnyKernel::LsqPlus(LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax }),
        ("pact", false) => AnyKernel::Pact(Pact { bits, init: PactInit::Fixed(10.0) }),
        ("pact", true) => AnyKernel::DoReFa(DoReFa { bits }),
        ("n2uq", false) => AnyKernel::N2uqAct(N2uqAct { bits, init: N2uqInit::Official }),
        ("n2uq", true) => AnyKernel::N2uqWeight(N2uqWeight { bits }),
        ("minmax", _) => AnyKernel::MinMax(MinMax { bits, signed }),
        _ => panic!("unknown method {method}"),
    }
}

#[test]
fn golden_cases_match_cpu() {
    let Some(dev) = cuda() else { return };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant_golden.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "{}: only {} cases", path.display(), cases.len());
    let mut f = Failures::default();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let input = &c["input"];
        let bits = input["bits"].as_u64().unwrap() as u32;
        let signed = input["signed"].as_bool().unwrap();
        let groups = input.get("groups").and_then(Value::as_u64).unwrap_or(1) as usize;
        let x = numbers(&input["x"]);
        let g = numbers(&input["grad_out"]);
        let reference = q2_quant::case::evaluate(input).unwrap_or_else(|e| panic!("{name}: {e}"));
        with_kernel!(case_kernel(input["method"].as_str().unwrap(), bits, signed), |k| {
            let layout = k.param_layout();
            let p = packed(&k, &input["params"], groups);
            let cpu = check(k, &x, &p, &g, groups, &dev, name, &mut f);
            // The CPU side is the one `q2 quant` computes (same packing, same kernel).
            f.exact(name, "CPU y vs case::evaluate", &cpu.y, &numbers(&reference["y"]));
            f.exact(name, "CPU dL/dx vs case::evaluate", &cpu.gx, &numbers(&reference["grad_x"]));
            let mut gp_ref = vec![0f32; cpu.gp.len()];
            let np = cpu.gp.len() / groups.max(1);
            let mut off = 0;
            for (pname, width) in layout {
                let v = numbers(&reference["grad_params"][pname]);
                for gi in 0..groups {
                    gp_ref[gi * np + off..gi * np + off + width].copy_from_slice(&v[gi * width..(gi + 1) * width]);
                }
                off += width;
            }
            f.exact(name, "CPU dL/dparams vs case::evaluate", &cpu.gp, &gp_ref);
        });
    }
    f.assert_none("golden cases, CUDA vs CPU");
}

// ------------------------------------------------------------------------------------------------
// large random tensors

/// splitmix64: a small deterministic generator (no rand dependency in this crate).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn range(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.uniform()) as f32
    }
}

const N: usize = 1 << 20;
const CHANNELS: usize = 64;

/// x: per group a normal with its own scale and shift; g: standard normal.
fn data(rng: &mut Rng, groups: usize, mean: f64) -> (Vec<f32>, Vec<f32>) {
    let gl = N / groups;
    let mut x = Vec::with_capacity(N);
    for _ in 0..groups {
        let (sd, mu) = (0.2 + 1.5 * rng.uniform(), mean * (0.5 + rng.uniform()));
        x.extend((0..gl).map(|_| (mu + sd * rng.normal()) as f32));
    }
    let g = (0..N).map(|_| rng.normal() as f32).collect();
    (x, g)
}

/// Puts a few values exactly on the grid (clip points, rounding ties) of a step-`s` quantizer
/// with integer range [lo, hi] in every group.
fn on_grid(x: &mut [f32], groups: usize, steps: &[f32], lo: f32, hi: f32) {
    let gl = x.len() / groups;
    for gi in 0..groups {
        let s = steps[gi];
        for (j, v) in [lo, hi, lo + 0.5, hi - 0.5, 0.5, 1.5, -0.5, 2.5, hi + 3.0, lo - 3.0].iter().enumerate() {
            x[gi * gl + 17 * j + 3] = v * s;
        }
    }
}

fn large_cases(dev: &Device, bits: u32, groups: usize, f: &mut Failures) {
    let mut rng = Rng(0x5EED ^ ((bits as u64) << 8) ^ groups as u64);
    let label = |m: &str| format!("{m} b{bits} groups={groups}");
    let gl = N / groups;

    for signed in [true, false] {
        let k = Lsq { bits, signed };
        let (mut x, g) = data(&mut rng, groups, if signed { 0.0 } else { 0.8 });
        let mut p = kernel::init(&k, &x, groups);
        p.iter_mut().for_each(|s| *s *= rng.range(0.5, 1.5));
        let (qn, qp) = k.range();
        on_grid(&mut x, groups, &p, -qn, qp);
        check(k, &x, &p, &g, groups, dev, &label(if signed { "lsq signed" } else { "lsq unsigned" }), f);
    }

    for signed in [true, false] {
        let (k, mean) = if signed {
            (LsqPlus { bits, signed, offset: false, init: LsqPlusInit::Weights }, 0.0)
        } else {
            (LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax }, 0.3)
        };
        let (x, g) = data(&mut rng, groups, mean);
        let mut p = kernel::init(&k, &x, groups);
        let np = k.num_params();
        for row in p.chunks_mut(np) {
            row[0] *= rng.range(0.6, 1.4);
            if np > 1 {
                row[1] += row[0] * rng.range(-2.0, 2.0);
            }
        }
        check(k, &x, &p, &g, groups, dev, &label(if signed { "lsq_plus weights" } else { "lsq_plus offset" }), f);
    }

    {
        let k = Pact { bits, init: PactInit::Max };
        let (mut x, g) = data(&mut rng, groups, 0.8);
        let mut p = kernel::init(&k, &x, groups);
        p.iter_mut().for_each(|a| *a *= rng.range(0.4, 0.9));
        let n = ((1u32 << bits) - 1) as f32;
        let steps: Vec<f32> = p.iter().map(|a| a / n).collect();
        on_grid(&mut x, groups, &steps, 0.0, n);
        check(k, &x, &p, &g, groups, dev, &label("pact"), f);
    }

    {
        let k = DoReFa { bits };
        let (mut x, g) = data(&mut rng, groups, 0.0);
        // Weight-like magnitudes: near saturation an ulp of tanh spans a wide range of w, and
        // which elements tie with the maximum would depend on the tanhf implementation.
        x.iter_mut().for_each(|v| *v *= 0.25);
        // Tied maxima of both signs in every group.
        for gi in 0..groups {
            let xg = &mut x[gi * gl..(gi + 1) * gl];
            let m = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
            xg[5] = m;
            xg[gl - 7] = -m;
        }
        check(k, &x, &[], &g, groups, dev, &label("dorefa"), f);
    }

    {
        let k = N2uqAct { bits, init: N2uqInit::Calibrated };
        let (x, g) = data(&mut rng, groups, 0.8);
        let mut p = kernel::init(&k, &x, groups);
        let n = k.n();
        for row in p.chunks_mut(n + 3) {
            row[0] = rng.range(-0.2, 0.2);
            for a in &mut row[1..1 + n] {
                *a *= rng.range(0.3, 1.7);
            }
            row[2] = 5e-4; // clamped to eps, no gradient
            row[n + 1] *= rng.range(0.8, 1.2);
            row[n + 2] *= rng.range(0.8, 1.2);
        }
        check(k, &x, &p, &g, groups, dev, &label("n2uq activations"), f);
    }

    {
        let k = N2uqWeight { bits };
        let (mut x, g) = data(&mut rng, groups, 0.0);
        if groups > 1 {
            x[gl..2 * gl].fill(0.0); // a dead channel: c = 0
        }
        check(k, &x, &[], &g, groups, dev, &label("n2uq weights"), f);
    }

    for signed in [true, false] {
        let k = MinMax { bits, signed };
        let (mut x, g) = data(&mut rng, groups, if signed { 0.0 } else { 0.5 });
        if groups > 1 {
            x[gl..2 * gl].fill(if signed { 0.0 } else { 0.75 }); // zero / constant channel
        }
        check(k, &x, &[], &g, groups, dev, &label(if signed { "minmax signed" } else { "minmax unsigned" }), f);
    }
}

#[test]
fn large_random_tensors_match_cpu() {
    let Some(dev) = cuda() else { return };
    let mut f = Failures::default();
    for bits in [2, 4, 8] {
        for groups in [1, CHANNELS] {
            large_cases(&dev, bits, groups, &mut f);
        }
    }
    f.assert_none("large random tensors, CUDA vs CPU");
}

/// More tied maxima than the kernels list per group (1024): the finishing kernel rescans.
#[test]
fn dorefa_many_tied_maxima_match_cpu() {
    let Some(dev) = cuda() else { return };
    let mut rng = Rng(77);
    let mut f = Failures::default();
    for (groups, gl) in [(1usize, 200_000usize), (3, 40_000)] {
        let n = groups * gl;
        // tanh saturates to ±1 far beyond |x| = 9 on both sides; the rest stays below 3.
        let x: Vec<f32> =
            (0..n).map(|i| if i % 37 == 0 { if i % 2 == 0 { 12.0 } else { -15.0 } } else { rng.range(-3.0, 3.0) }).collect();
        let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        for bits in [2, 8] {
            check(DoReFa { bits }, &x, &[], &g, groups, &dev, &format!("dorefa saturated b{bits} groups={groups}"), &mut f);
        }
    }
    f.assert_none("DoReFa with many tied maxima, CUDA vs CPU");
}

/// The same call twice gives the same bits (fixed reduction order, no float atomics).
#[test]
fn cuda_results_are_deterministic() {
    let Some(dev) = cuda() else { return };
    let mut rng = Rng(99);
    let (x, g) = data(&mut rng, 1, 0.8);
    let lsq = Arc::new(Lsq { bits: 4, signed: false });
    let p = kernel::init(&*lsq, &x, 1);
    let (a, b) = (eval(&lsq, &x, &p, &g, 1, &dev), eval(&lsq, &x, &p, &g, 1, &dev));
    assert!(a.gx == b.gx && a.gp.iter().zip(&b.gp).all(|(u, v)| u.to_bits() == v.to_bits()), "lsq: runs differ");
    let n2 = Arc::new(N2uqAct { bits: 8, init: N2uqInit::Calibrated });
    let p = kernel::init(&*n2, &x, 1);
    let (a, b) = (eval(&n2, &x, &p, &g, 1, &dev), eval(&n2, &x, &p, &g, 1, &dev));
    assert!(a.gx == b.gx && a.gp.iter().zip(&b.gp).all(|(u, v)| u.to_bits() == v.to_bits()), "n2uq: runs differ");
}
