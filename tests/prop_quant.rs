//! Property tests of the five quantizers (`docs/QUANTIZERS.md`), through the real candle op and
//! autograd: outputs on the grid with at most 2^b levels; idempotence; monotonicity; clipping
//! range; the input gradient is exactly the (generalised) straight-through mask; parameter
//! gradients equal the closed forms and central finite differences of the straight-through
//! surrogate wherever no rounding or clipping boundary is crossed; per-channel equals per-tensor
//! channel by channel; signed/unsigned ranges; initialisation formulas.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use q2::quant::kernel::Kernel;
use q2::quant::methods::*;
use q2::quant::op::fake_quant;

/// (y, dL/dx, dL/dp) of `sum(Q(x)·g)` through candle.
fn run<K: Kernel + Clone>(k: &K, x: &[f32], p: &[f32], g: &[f32], groups: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dev = Device::Cpu;
    let xv = Var::from_tensor(&Tensor::new(x, &dev).unwrap()).unwrap();
    let np = k.num_params();
    let pv = (np > 0).then(|| Var::from_tensor(&Tensor::from_vec(p.to_vec(), (groups, np), &dev).unwrap()).unwrap());
    let y = fake_quant(Arc::new(k.clone()), xv.as_tensor(), pv.as_ref().map(|v| v.as_tensor()), groups).unwrap();
    let grads = (&y * Tensor::new(g, &dev).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let gx = v(grads.get(&xv).unwrap());
    let gp = pv.map(|p| v(grads.get(&p).unwrap())).unwrap_or_default();
    (v(&y), gx, gp)
}

fn fwd<K: Kernel>(k: &K, x: &[f32], p: &[f32]) -> Vec<f32> {
    q2::quant::kernel::forward(k, x, p, 1)
}

fn distinct(y: &[f32]) -> usize {
    let mut v: Vec<u32> = y.iter().map(|f| (f + 0.0).to_bits()).collect();
    v.sort();
    v.dedup();
    v.len()
}

fn is_int(v: f64, tol: f64) -> bool {
    (v - v.round()).abs() <= tol
}

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 96, ..ProptestConfig::default() }
}

/// Codes in units of the grid step, some exactly on grid points, ties and clip bounds.
fn codes(lo: f64, hi: f64) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            4 => lo - 3.0..hi + 3.0,
            1 => (lo as i64 - 2..=hi as i64 + 2).prop_map(|k| k as f64),
            1 => (lo as i64 - 2..=hi as i64 + 2).prop_map(|k| k as f64 + 0.5),
        ],
        1..96,
    )
}

/// Central difference of `f` at `p` with step `h`.
fn central(f: impl Fn(f64) -> f64, p: f64, h: f64) -> f64 {
    (f(p + h) - f(p - h)) / (2.0 * h)
}

fn rel_close(a: f64, b: f64, tol: f64, scale: f64) -> bool {
    (a - b).abs() <= tol * (b.abs().max(scale)) + 1e-6
}

// ---------------------------------------------------------------- LSQ and LSQ+

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn lsq_properties(bits in 2u32..=8, signed: bool, s in 0.01f32..2.0, u in codes(-130.0, 258.0), seed in 0u64..1000) {
        let k = Lsq { bits, signed };
        let (qn, qp) = k.range();
        let (qn, qp) = (qn as f64, qp as f64);
        let x: Vec<f32> = u.iter().map(|c| (c * s as f64).clamp(-(qn + 3.0) * s as f64, (qp + 3.0) * s as f64) as f32).collect();
        let g: Vec<f32> = (0..x.len()).map(|i| (((i as u64 * 7919 + seed) % 17) as f32 - 8.0) / 4.0).collect();
        let (y, gx, gp) = run(&k, &x, &[s], &g, 1);
        // grid, range, at most 2^b levels
        for &v in &y {
            let c = v as f64 / s as f64;
            prop_assert!(is_int(c, 1e-4) && c >= -qn - 1e-4 && c <= qp + 1e-4, "y {v} off the grid (s {s})");
        }
        prop_assert!(distinct(&y) <= 1 << bits);
        // idempotent
        prop_assert_eq!(fwd(&k, &y, &[s]), y.clone());
        // monotone
        let mut xs = x.clone();
        xs.sort_by(f32::total_cmp);
        let ys = fwd(&k, &xs, &[s]);
        prop_assert!(ys.windows(2).all(|w| w[0] <= w[1]));
        // input gradient = mask of the open interior; closed-form step gradient
        let mut ds = 0f64;
        for i in 0..x.len() {
            let v = x[i] / s;
            let inside = (v as f64) > -qn && (v as f64) < qp;
            prop_assert_eq!(gx[i], if inside { g[i] } else { 0.0 });
            let d = if inside { v.round_ties_even() as f64 - v as f64 } else if (v as f64) <= -qn { -qn } else { qp };
            ds += g[i] as f64 * d;
        }
        let gs = 1.0 / (x.len() as f64 * qp).sqrt();
        prop_assert!(rel_close(gp[0] as f64, ds * gs, 1e-5, 1e-3), "ds {} vs {}", gp[0], ds * gs);
        // finite difference of the STE surrogate (rounding residual frozen) where no element
        // changes code or clip state within ±h
        let h = s as f64 * 1e-4;
        let state = |sv: f64| -> Vec<i64> { x.iter().map(|&xi| { let v = xi as f64 / sv; if v <= -qn { -100_000 } else if v >= qp { 100_000 } else { v.round() as i64 } }).collect() };
        if state(s as f64 - h) == state(s as f64 + h) && state(s as f64 - h) == state(s as f64) {
            let frozen: Vec<f64> = x.iter().map(|&xi| { let v = xi as f64 / s as f64; if v > -qn && v < qp { v.round_ties_even() - v } else { 0.0 } }).collect();
            let surrogate = |sv: f64| -> f64 {
                x.iter().zip(&g).zip(&frozen).map(|((&xi, &gi), &d)| gi as f64 * ((xi as f64 / sv).clamp(-qn, qp) + d) * sv).sum()
            };
            let fd = central(surrogate, s as f64, h) * gs;
            prop_assert!(rel_close(gp[0] as f64, fd, 1e-3, 1e-3), "fd {fd} vs {}", gp[0]);
        }
    }

    #[test]
    fn lsq_plus_properties(bits in 2u32..=8, signed: bool, s in 0.01f32..2.0, beta in -1.0f32..1.0, u in codes(-130.0, 258.0)) {
        let k = LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax };
        let (n, p) = k.range();
        let (n, p) = (n as f64, p as f64);
        let x: Vec<f32> = u.iter().map(|c| (c.clamp(n - 3.0, p + 3.0) * s as f64 + beta as f64) as f32).collect();
        let g: Vec<f32> = x.iter().enumerate().map(|(i, _)| ((i % 7) as f32 - 3.0) / 2.0).collect();
        let (y, gx, gp) = run(&k, &x, &[s, beta], &g, 1);
        for &v in &y {
            let c = (v as f64 - beta as f64) / s as f64;
            prop_assert!(is_int(c, 2e-3) && c >= n - 2e-3 && c <= p + 2e-3, "y {v} off the grid");
        }
        prop_assert!(distinct(&y) <= 1 << bits);
        let mut xs = x.clone();
        xs.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &xs, &[s, beta]).windows(2).all(|w| w[0] <= w[1]));
        let (mut ds, mut db) = (0f64, 0f64);
        for i in 0..x.len() {
            let v = (x[i] - beta) / s;
            let inside = (v as f64) > n && (v as f64) < p;
            prop_assert_eq!(gx[i], if inside { g[i] } else { 0.0 });
            ds += g[i] as f64 * if inside { v.round_ties_even() as f64 - v as f64 } else if (v as f64) <= n { n } else { p };
            db += if inside { 0.0 } else { g[i] as f64 };
        }
        let gs = 1.0 / (x.len() as f64 * p).sqrt();
        prop_assert!(rel_close(gp[0] as f64, ds * gs, 1e-5, 1e-3));
        prop_assert!(rel_close(gp[1] as f64, db * gs, 1e-5, 1e-3));
        // finite differences of the surrogate in s and beta
        let frozen: Vec<f64> = x.iter().map(|&xi| { let v = (xi as f64 - beta as f64) / s as f64; if v > n && v < p { v.round_ties_even() - v } else { 0.0 } }).collect();
        let state = |sv: f64, bv: f64| -> Vec<i64> { x.iter().map(|&xi| { let v = (xi as f64 - bv) / sv; if v <= n { -100_000 } else if v >= p { 100_000 } else { v.round() as i64 } }).collect() };
        let sur = |sv: f64, bv: f64| -> f64 { x.iter().zip(&g).zip(&frozen).map(|((&xi, &gi), &d)| gi as f64 * ((((xi as f64 - bv) / sv).clamp(n, p) + d) * sv + bv)).sum() };
        let (s0, b0, h) = (s as f64, beta as f64, s as f64 * 1e-4);
        if state(s0 - h, b0) == state(s0, b0) && state(s0 + h, b0) == state(s0, b0) {
            let fd = central(|v| sur(v, b0), s0, h) * gs;
            prop_assert!(rel_close(gp[0] as f64, fd, 1e-3, 1e-3), "fd s {fd} vs {}", gp[0]);
        }
        if state(s0, b0 - h) == state(s0, b0) && state(s0, b0 + h) == state(s0, b0) {
            let fd = central(|v| sur(s0, v), b0, h) * gs;
            prop_assert!(rel_close(gp[1] as f64, fd, 1e-3, 1e-3), "fd beta {fd} vs {}", gp[1]);
        }
    }

    #[test]
    fn per_channel_equals_per_tensor_channelwise(bits in 2u32..=8, signed: bool, c in 1usize..5, len in 1usize..40, seed in 0u64..10_000) {
        let x: Vec<f32> = (0..c * len).map(|i| (((i as u64 * 2654435761 + seed) % 2001) as f32 - 1000.0) / 300.0).collect();
        let g: Vec<f32> = (0..c * len).map(|i| ((i * 31 % 11) as f32 - 5.0) / 3.0).collect();
        let steps: Vec<f32> = (0..c).map(|i| 0.05 + 0.1 * i as f32).collect();
        fn check<K: Kernel + Clone>(k: &K, x: &[f32], g: &[f32], p: &[f32], c: usize) -> Result<(), TestCaseError> {
            let (y, gx, gp) = run(k, x, p, g, c);
            let (len, np) = (x.len() / c, k.num_params());
            for ch in 0..c {
                let r = ch * len..(ch + 1) * len;
                let (y1, gx1, gp1) = run(k, &x[r.clone()], &p[ch * np..(ch + 1) * np], &g[r.clone()], 1);
                prop_assert_eq!(&y[r.clone()], &y1[..]);
                prop_assert_eq!(&gx[r.clone()], &gx1[..]);
                prop_assert_eq!(&gp[ch * np..(ch + 1) * np], &gp1[..]);
            }
            Ok(())
        }
        check(&Lsq { bits, signed }, &x, &g, &steps, c)?;
        let sb: Vec<f32> = steps.iter().flat_map(|s| [*s, -0.1]).collect();
        check(&LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax }, &x, &g, &sb, c)?;
        check(&MinMax { bits, signed }, &x, &g, &[], c)?;
        check(&N2uqWeight { bits }, &x, &g, &[], c)?;
    }
}

// ---------------------------------------------------------------- PACT and DoReFa

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn pact_properties(bits in 2u32..=8, alpha in 0.1f32..12.0, u in codes(0.0, 255.0)) {
        let k = Pact { bits, init: PactInit::Fixed(10.0) };
        let n = ((1u32 << bits) - 1) as f64;
        let sc = alpha / n as f32;
        let x: Vec<f32> = u.iter().map(|c| (c.clamp(-3.0, n + 3.0) * sc as f64) as f32).collect();
        let g: Vec<f32> = x.iter().enumerate().map(|(i, _)| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let (y, gx, gp) = run(&k, &x, &[alpha], &g, 1);
        for &v in &y {
            let c = v as f64 / sc as f64;
            prop_assert!(is_int(c, 1e-4) && c >= -1e-4 && c <= n + 1e-4);
            prop_assert!(v >= 0.0 && v as f64 <= alpha as f64 * (1.0 + 1e-6));
        }
        prop_assert!(distinct(&y) <= 1 << bits);
        prop_assert_eq!(fwd(&k, &y, &[alpha]), y.clone());
        let mut xs = x.clone();
        xs.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &xs, &[alpha]).windows(2).all(|w| w[0] <= w[1]));
        let mut da = 0f64;
        for i in 0..x.len() {
            let v = (x[i] / sc) as f64;
            prop_assert_eq!(gx[i], if v > 0.0 && v < n { g[i] } else { 0.0 });
            if v >= n { da += g[i] as f64 }
        }
        prop_assert!(rel_close(gp[0] as f64, da, 1e-6, 1e-3));
        // PACT's surrogate is the unquantized clip(x, 0, alpha): its alpha-derivative
        let sur = |a: f64| -> f64 { x.iter().zip(&g).map(|(&xi, &gi)| gi as f64 * (xi as f64).clamp(0.0, a)).sum() };
        let h = alpha as f64 * 1e-5;
        if x.iter().all(|&xi| ((xi as f64) - alpha as f64).abs() > 2.0 * h) {
            prop_assert!(rel_close(gp[0] as f64, central(sur, alpha as f64, h), 1e-3, 1e-3));
        }
    }

    #[test]
    fn dorefa_properties(bits in 2u32..=8, w in prop::collection::vec(-1.5f32..1.5, 2..80), seed in 0u64..100) {
        let k = DoReFa { bits };
        let n = ((1u32 << bits) - 1) as f64;
        let g: Vec<f32> = (0..w.len()).map(|i| (((i as u64 * 13 + seed) % 9) as f32 - 4.0) / 3.0).collect();
        let (y, gx, _) = run(&k, &w, &[], &g, 1);
        let m = w.iter().fold(0f32, |a, v| a.max(v.abs())).tanh() as f64;
        prop_assume!(m > 0.0);
        for &v in &y {
            let q = (v as f64 / m + 1.0) / 2.0 * n;
            prop_assert!(is_int(q, 1e-3) && q >= -1e-3 && q <= n + 1e-3, "{v} off the grid");
            prop_assert!((v as f64).abs() <= m * (1.0 + 1e-6));
        }
        prop_assert!(distinct(&y) <= 1 << bits);
        let mut xs = w.clone();
        xs.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &xs, &[]).windows(2).all(|p| p[0] <= p[1]));
        // Closed form: g·(1−t²) plus the max term on the tied maxima.
        let t: Vec<f64> = w.iter().map(|v| v.tanh() as f64).collect();
        let ties: Vec<usize> = (0..w.len()).filter(|&i| (w[i].tanh() as f64).abs() == m).collect();
        let s: f64 = (0..w.len()).map(|i| {
            let q = ((t[i] / (2.0 * m) + 0.5) * n).round_ties_even() / n;
            g[i] as f64 * ((2.0 * q - 1.0) - t[i] / m)
        }).sum();
        for i in 0..w.len() {
            let mut want = g[i] as f64;
            if ties.contains(&i) { want += t[i].signum() * s / ties.len() as f64; }
            want *= 1.0 - t[i] * t[i];
            prop_assert!(rel_close(gx[i] as f64, want, 1e-4, 1e-3), "gx[{i}] {} vs {want}", gx[i]);
        }
    }
}

// ---------------------------------------------------------------- N2UQ

/// f32 bounds/levels/thresholds exactly as the spec builds them.
fn n2uq_tables(a: &[f32], start: f32, bits: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, f32) {
    let n = (1usize << bits) - 1;
    let delta = (2.0f64 / n as f64) as f32;
    let ap: Vec<f32> = a.iter().map(|&v| if v > 1e-3 { v } else { 1e-3 }).collect();
    let (mut t, mut l, mut b) = (vec![], vec![0f32], vec![start + 0.0]);
    for i in 0..n {
        t.push(if i == 0 { start + ap[0] / 2.0 } else { t[i - 1] + (ap[i - 1] / 2.0 + ap[i] / 2.0) });
        l.push(l[i] + delta);
        b.push(b[i] + ap[i]);
    }
    (ap, t, l, b, delta)
}

fn n2uq_params() -> impl Strategy<Value = (u32, Vec<f32>, f32, f32, f32)> {
    (2u32..=5).prop_flat_map(|bits| {
        let n = (1usize << bits) - 1;
        (Just(bits), prop::collection::vec(prop_oneof![9 => 0.02f32..0.8, 1 => 0.0f32..0.0015], n..=n), -0.5f32..0.5, 0.3f32..3.0, 0.3f32..3.0)
    })
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn n2uq_activation_properties((bits, a, start, s1, s2) in n2uq_params(), xs in prop::collection::vec(-1.0f32..1.0, 1..80)) {
        let k = N2uqAct { bits, init: N2uqInit::Official };
        let n = (1usize << bits) - 1;
        let (ap, t, l, b, delta) = n2uq_tables(&a, start, bits);
        // inputs spread over [start − 1, top + 1] in x' units, plus exact thresholds and bounds
        let top = b[n];
        let mut xp: Vec<f32> = xs.iter().map(|u| start - 1.0 + (u + 1.0) / 2.0 * (top - start + 2.0)).collect();
        xp.extend(t.iter().take(3).chain(b.iter().take(3)).copied());
        let x: Vec<f32> = xp.iter().map(|v| v / s1).collect();
        let mut p = vec![start];
        p.extend(&a);
        p.extend([s1, s2]);
        let g: Vec<f32> = (0..x.len()).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let (y, gx, gp) = run(&k, &x, &p, &g, 1);
        prop_assert!(distinct(&y) <= 1 << bits);
        let mut sorted = x.clone();
        sorted.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &sorted, &p).windows(2).all(|w| w[0] <= w[1]));
        // y is level k·scale2 with k = #{thresholds < x'}; the gradient is the G-STE slope
        let seg = |xq: f32| -> Option<usize> { if !(xq > b[0] && xq < b[n]) { None } else { Some(b.iter().filter(|&&bb| bb < xq).count() - 1) } };
        let mut want = vec![0f64; p.len()];
        for i in 0..x.len() {
            let xq = x[i] * s1;
            let kf = t.iter().filter(|&&th| th < xq).count();
            prop_assert_eq!(y[i], l[kf] * s2);
            want[n + 2] += (g[i] * l[kf]) as f64;
            match seg(xq) {
                None => prop_assert_eq!(gx[i], 0.0),
                Some(j) => {
                    let slope = (delta / ap[j]) as f64;
                    let w = g[i] as f64 * s2 as f64 * s1 as f64 * slope;
                    prop_assert!(rel_close(gx[i] as f64, w, 1e-5, 1e-6), "gx {} vs {w}", gx[i]);
                    want[0] -= g[i] as f64 * s2 as f64 * slope;
                    want[n + 1] += g[i] as f64 * s2 as f64 * slope * x[i] as f64;
                    for jj in 0..j { if a[jj] > 1e-3 { want[1 + jj] -= g[i] as f64 * s2 as f64 * slope; } }
                    if a[j] > 1e-3 { want[1 + j] -= g[i] as f64 * s2 as f64 * delta as f64 * (xq - b[j]) as f64 / (ap[j] as f64).powi(2); }
                }
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..p.len() {
            prop_assert!((gp[i] as f64 - want[i]).abs() <= 1e-4 * scale + 1e-5, "param {i}: {} vs {}", gp[i], want[i]);
        }
        // finite differences of the G-STE surrogate s2·(L_k + ramp(x') − ramp(x'₀)), on the
        // random inputs only (the exact thresholds and bounds above sit on segment boundaries)
        let x = &x[..xs.len()];
        let g = &g[..xs.len()];
        let (_, _, gp) = run(&k, x, &p, g, 1);
        let ramp = |xq: f64, st: f64, aa: &[f64]| -> f64 {
            let mut lo = st;
            if xq <= lo { return 0.0; }
            for (j, &aj) in aa.iter().enumerate() {
                let aj = aj.max(1e-3);
                if xq <= lo + aj || j == aa.len() - 1 && xq < lo + aj {
                    return (delta as f64 / aj) * (xq - lo) + j as f64 * delta as f64;
                }
                lo += aj;
            }
            2.0
        };
        let a64: Vec<f64> = a.iter().map(|v| *v as f64).collect();
        let loss = |st: f64, aa: &[f64], sc1: f64, sc2: f64| -> f64 {
            x.iter().zip(g).map(|(&xi, &gi)| {
                let x0 = xi as f64 * s1 as f64;
                let frozen = l[t.iter().filter(|&&th| th < xi * s1).count()] as f64 - ramp(x0, start as f64, &a64);
                gi as f64 * sc2 * (frozen + ramp(xi as f64 * sc1, st, aa))
            }).sum()
        };
        let segs = |st: f64, aa: &[f64], sc1: f64| -> Vec<i64> {
            x.iter().map(|&xi| { let xq = xi as f64 * sc1; let mut lo = st; if xq <= lo { return -1; } for (j, &aj) in aa.iter().enumerate() { lo += aj.max(1e-3); if xq < lo { return j as i64; } } 1000 }).collect()
        };
        let h = 1e-5;
        let base = segs(start as f64, &a64, s1 as f64);
        let fd_ok = |alt: &dyn Fn(f64) -> Vec<i64>| alt(h) == base && alt(-h) == base;
        if fd_ok(&|d| segs(start as f64 + d, &a64, s1 as f64)) {
            let fd = central(|v| loss(v, &a64, s1 as f64, s2 as f64), start as f64, h);
            prop_assert!((gp[0] as f64 - fd).abs() <= 1e-3 * scale + 1e-4, "start: {} vs fd {fd}", gp[0]);
        }
        for j in 0..n {
            if a[j] <= 2e-3 { continue; }
            let with = |d: f64| { let mut aa = a64.clone(); aa[j] += d; aa };
            if fd_ok(&|d| segs(start as f64, &with(d), s1 as f64)) {
                let fd = central(|v| loss(start as f64, &with(v - a64[j]), s1 as f64, s2 as f64), a64[j], h);
                prop_assert!((gp[1 + j] as f64 - fd).abs() <= 1e-3 * scale + 1e-4, "a[{j}]: {} vs fd {fd}", gp[1 + j]);
            }
        }
        if fd_ok(&|d| segs(start as f64, &a64, s1 as f64 + d)) {
            let fd = central(|v| loss(start as f64, &a64, v, s2 as f64), s1 as f64, h);
            prop_assert!((gp[n + 1] as f64 - fd).abs() <= 1e-3 * scale + 1e-4, "scale1: {} vs fd {fd}", gp[n + 1]);
        }
        let fd = central(|v| loss(start as f64, &a64, s1 as f64, v), s2 as f64, h);
        prop_assert!((gp[n + 2] as f64 - fd).abs() <= 1e-3 * scale + 1e-4, "scale2: {} vs fd {fd}", gp[n + 2]);
    }

    #[test]
    fn n2uq_weight_properties(bits in 2u32..=8, w in prop::collection::vec(-1.0f32..1.0, 1..80)) {
        let k = N2uqWeight { bits };
        let g: Vec<f32> = (0..w.len()).map(|i| ((i % 7) as f32 - 3.0) / 2.0).collect();
        let (y, gx, _) = run(&k, &w, &[], &g, 1);
        let c = k.scale(&w);
        prop_assume!(c > 0.0);
        let h = ((1u32 << bits) - 1) as f64 / 2.0;
        for &v in &y {
            let q = (v as f64 / c as f64 + 1.0) * h;
            prop_assert!(is_int(q, 1e-3) && q >= -1e-3 && q <= 2.0 * h + 1e-3);
            prop_assert!(v.abs() <= c * (1.0 + 1e-6));
        }
        prop_assert!(distinct(&y) <= 1 << bits);
        // idempotent with the channel scale held fixed (mean|Q(W)| differs from mean|W|)
        let again: Vec<f32> = y.iter().map(|&v| k.quantize_with(v, c)).collect();
        prop_assert_eq!(again, y.clone());
        let mut xs = w.clone();
        xs.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &xs, &[]).windows(2).all(|p| p[0] <= p[1]));
        // straight-through on the unclipped w/c: dL/dW = dL/dy / c for every element
        for i in 0..w.len() {
            prop_assert_eq!(gx[i], g[i] / c);
        }
    }
}

// ---------------------------------------------------------------- MinMax

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn minmax_properties(bits in 2u32..=8, signed: bool, x in prop::collection::vec(-3.0f32..3.0, 2..100)) {
        let k = MinMax { bits, signed };
        let n = ((1u32 << bits) - 1) as f64;
        let g: Vec<f32> = (0..x.len()).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
        let (y, gx, _) = run(&k, &x, &[], &g, 1);
        let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        prop_assume!(hi > lo);
        prop_assert!(distinct(&y) <= 1 << bits);
        if signed {
            let m = lo.abs().max(hi.abs()) as f64;
            for &v in &y {
                let q = (v as f64 / m + 1.0) / 2.0 * n;
                prop_assert!(is_int(q, 1e-3) && (v as f64).abs() <= m * (1.0 + 1e-6));
            }
        } else {
            let sc = (hi as f64 - lo as f64) / n;
            for &v in &y {
                let q = (v as f64 - lo as f64) / sc;
                prop_assert!(is_int(q, 1e-3) && v >= lo && v as f64 <= hi as f64 * (1.0 + 1e-6f64.copysign(hi as f64)) + 1e-9, "{v}: code {q}, range [{lo}, {hi}]");
            }
        }
        // idempotent up to float rounding of the re-derived statistics
        let again = fwd(&k, &y, &[]);
        let range = (hi - lo) as f64;
        prop_assert!(again.iter().zip(&y).all(|(a, b)| ((a - b) as f64).abs() <= 1e-5 * range));
        let mut xs = x.clone();
        xs.sort_by(f32::total_cmp);
        prop_assert!(fwd(&k, &xs, &[]).windows(2).all(|p| p[0] <= p[1]));
        // statistics are constants of the backward pass: straight-through everywhere
        prop_assert_eq!(gx, g);
    }
}

// ---------------------------------------------------------------- ranges and initialisation

#[test]
fn signed_and_unsigned_ranges_take_all_levels() {
    for bits in 2..=8u32 {
        let x: Vec<f32> = (-300..=300).map(|i| i as f32).collect();
        for (signed, lo, hi) in [(true, -(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1), (false, 0, (1i64 << bits) - 1)] {
            let y = fwd(&Lsq { bits, signed }, &x, &[1.0]);
            assert_eq!(y.iter().fold(f32::INFINITY, |a, v| a.min(*v)) as i64, lo);
            assert_eq!(y.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v)) as i64, hi);
            assert_eq!(distinct(&y), 1 << bits);
            let yp = fwd(&LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax }, &x, &[1.0, 0.0]);
            assert_eq!(yp, y);
        }
        let fine: Vec<f32> = (-3000..=3000).map(|i| i as f32 / 1000.0).collect();
        let y = fwd(&Pact { bits, init: PactInit::Fixed(1.0) }, &fine, &[1.0]);
        assert_eq!(distinct(&y), 1 << bits);
        assert_eq!(y.iter().fold(0f32, |a, v| a.max(*v)), 1.0);
        for signed in [true, false] {
            assert_eq!(distinct(&fwd(&MinMax { bits, signed }, &x, &[])), 1 << bits);
        }
        assert_eq!(distinct(&fwd(&N2uqWeight { bits }, &x.iter().map(|v| v / 300.0).collect::<Vec<_>>(), &[])), 1 << bits);
        let p = N2uqAct { bits, init: N2uqInit::Official }.default_params();
        assert_eq!(distinct(&fwd(&N2uqAct { bits, init: N2uqInit::Official }, &fine, &p)), 1 << bits);
    }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn initialisation_formulas(bits in 2u32..=8, x in prop::collection::vec(-4.0f32..6.0, 2..200)) {
        let len = x.len() as f64;
        let mean_abs = x.iter().map(|v| v.abs() as f64).sum::<f64>() / len;
        let qp = ((1u32 << bits) - 1) as f64;
        // LSQ: 2·mean|x|/sqrt(Qp), unsigned and signed
        let s = Lsq { bits, signed: false }.init(&x)[0] as f64;
        prop_assert!(rel_close(s, (2.0 * mean_abs / qp.sqrt()).max(1e-8), 1e-6, 0.0));
        let qps = ((1u32 << (bits - 1)) - 1) as f64;
        let s = Lsq { bits, signed: true }.init(&x)[0] as f64;
        prop_assert!(rel_close(s, (2.0 * mean_abs / qps.sqrt()).max(1e-8), 1e-6, 0.0));
        // LSQ+ weights: max(|μ−3σ|, |μ+3σ|)/2^(b−1)
        let mu = x.iter().map(|v| *v as f64).sum::<f64>() / len;
        let sd = (x.iter().map(|v| (*v as f64 - mu).powi(2)).sum::<f64>() / (len - 1.0)).sqrt();
        let w = LsqPlus { bits, signed: true, offset: false, init: LsqPlusInit::Weights }.init(&x);
        prop_assert_eq!(w.len(), 1);
        prop_assert!(rel_close(w[0] as f64, ((mu - 3.0 * sd).abs().max((mu + 3.0 * sd).abs()) / (1u32 << (bits - 1)) as f64).max(1e-8), 1e-5, 0.0));
        // LSQ+ activations, min–max: s = (max − min)/(p − n), β = min − n·s
        let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        let a = LsqPlus { bits, signed: false, offset: true, init: LsqPlusInit::MinMax }.init(&x);
        prop_assert!(rel_close(a[0] as f64, (((hi - lo) as f64) / qp).max(1e-8), 1e-5, 0.0));
        prop_assert_eq!(a[1], lo);
        // PACT: the paper's fixed 10, or the batch maximum
        prop_assert_eq!(Pact { bits, init: PactInit::Fixed(10.0) }.init(&x), vec![10.0]);
        prop_assert_eq!(Pact { bits, init: PactInit::Max }.init(&x), vec![hi.max(1e-8)]);
        // N2UQ: official constants, or scales from the maximum
        let n = (1usize << bits) - 1;
        let official = N2uqAct { bits, init: N2uqInit::Official }.init(&x);
        prop_assert_eq!(official.len(), n + 3);
        prop_assert!(official[1..=n].iter().all(|v| (*v as f64 - 2.0 / n as f64).abs() < 1e-7) && official[0] == 0.0);
        prop_assert_eq!(&official[n + 1..], &[1.0f32, 1.0][..]);
        let cal = N2uqAct { bits, init: N2uqInit::Calibrated }.init(&x);
        if hi > 0.0 {
            prop_assert!(rel_close(cal[n + 1] as f64, 2.0 / hi as f64, 1e-6, 0.0) && rel_close(cal[n + 2] as f64, hi as f64 / 2.0, 1e-6, 0.0));
        }
    }
}

#[test]
fn lsq_plus_mse_init_improves_on_min_max() {
    let x: Vec<f32> = (0..2000).map(|i| ((i as f32 * 0.37).sin() * 2.0).powi(3)).collect();
    let mm = LsqPlus { bits: 3, signed: false, offset: true, init: LsqPlusInit::MinMax };
    let mse = LsqPlus { init: LsqPlusInit::Mse, ..mm.clone() };
    let err = |p: &[f32]| -> f64 { fwd(&mm, &x, p).iter().zip(&x).map(|(a, b)| ((a - b) as f64).powi(2)).sum() };
    let (e0, e1) = (err(&mm.init(&x)), err(&mse.init(&x)));
    assert!(e1 < 0.8 * e0, "MSE init {e1} should beat min–max {e0}");
}
