//! `paper/THEORY.md` P3: under the paper's linear proxy (Eq. 1–3), quantization noise that grows
//! with depth biases the branch gradient shares toward the deep branch (orthogonal read-outs), the
//! bias grows without bound with the noise, and the balanced allocation of the real controller
//! replaces it by a noise-independent constant (zero with FP-reference targets). Without
//! orthogonality the direction can flip (the documented counterexample), and without
//! non-contracting Jacobians noise need not grow with depth (the lemma's counterexample).

mod common;

use common::Driven;
use proptest::prelude::*;
use q2::fusion::gbf::GbfConfig;
use q2::fusion::proxy::{branch_energies, centred_log, noise_growth, share_bias, Mat};
use rand::{Rng, SeedableRng};

/// A random d×d orthogonal matrix (Gram–Schmidt of a seeded Gaussian-ish matrix).
fn orthogonal(d: usize, seed: u64) -> Mat {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut q: Mat = vec![];
    while q.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| rng.random::<f64>() - 0.5).collect();
        for u in &q {
            let p: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.into_iter().map(|a| a / n).collect());
        }
    }
    q
}

/// Read-outs with disjoint row supports (W_0ᵀW_1 = 0): rows 0..m0 for branch 0, m0.. for branch 1.
fn orthogonal_readouts(m0: usize, m1: usize, n: usize, seed: u64) -> Vec<Mat> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let m = m0 + m1;
    let mut w0 = vec![vec![0.0; n]; m];
    let mut w1 = vec![vec![0.0; n]; m];
    for r in 0..m {
        for c in 0..n {
            let v = rng.random::<f64>() * 2.0 - 1.0;
            if r < m0 {
                w0[r][c] = v;
            } else {
                w1[r][c] = v;
            }
        }
    }
    vec![w0, w1]
}

/// Runs the real node's controller on fixed energies `g` (as G_i = α_i·R_i with R = g at α
/// uniform, i.e. residual energies 2·g) until it settles; returns the balanced energies.
fn balance(g: &[f64], tau: Vec<f64>) -> Vec<f64> {
    let r: Vec<f64> = g.iter().map(|v| 2.0 * v).collect();
    let d = Driven::new(&r, GbfConfig { eta: 0.5, beta: 0.5, tau, ..GbfConfig::default() });
    let mut last = vec![];
    for _ in 0..300 {
        last = d.step();
    }
    last
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Lemma: with orthogonal Jacobians E‖δ_l‖² = Σ_{k≤l} s_k² (monotone in depth).
    #[test]
    fn noise_accumulates_with_depth_through_orthogonal_jacobians(seed in 0u64..1000, s2 in prop::collection::vec(0.01f64..2.0, 1..6)) {
        let js: Vec<Mat> = (0..s2.len()).map(|l| orthogonal(4, seed * 10 + l as u64)).collect();
        let g = noise_growth(&js, &s2);
        let mut cum = 0.0;
        for (l, v) in g.iter().enumerate() {
            cum += s2[l];
            prop_assert!((v - cum).abs() < 1e-9 * cum, "depth {l}: {v} vs {cum}");
        }
    }

    /// (a) exact inflation, against a Monte Carlo estimate of E‖W_iᵀ(t̂−t)‖².
    #[test]
    fn inflation_formula_matches_monte_carlo(seed in 0u64..200) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (m, n) = (3, 2);
        let w: Vec<Mat> = (0..2).map(|_| (0..m).map(|_| (0..n).map(|_| rng.random::<f64>() - 0.5).collect()).collect()).collect();
        let r0: Vec<f64> = (0..m).map(|_| rng.random::<f64>() - 0.5).collect();
        let sigma = [0.3, 0.8];
        let want = branch_energies(&w, &r0, &sigma);
        let samples = 40_000;
        let mut acc = [0.0f64; 2];
        for _ in 0..samples {
            let mut res = r0.clone();
            for (wj, s) in w.iter().zip(sigma) {
                // zero-mean noise with covariance s²·I: uniform on [−a, a] has variance a²/3
                let d: Vec<f64> = (0..n).map(|_| (rng.random::<f64>() * 2.0 - 1.0) * s * 3f64.sqrt()).collect();
                for (r, row) in wj.iter().enumerate() {
                    res[r] += row.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
                }
            }
            for (i, wi) in w.iter().enumerate() {
                acc[i] += (0..n).map(|c| (0..m).map(|r| wi[r][c] * res[r]).sum::<f64>().powi(2)).sum::<f64>();
            }
        }
        for i in 0..2 {
            let mc = (acc[i] / samples as f64).sqrt();
            prop_assert!((mc / want[i] - 1.0).abs() < 0.03, "branch {i}: Monte Carlo {mc}, formula {}", want[i]);
        }
    }

    /// (b) orthogonal read-outs: the share moves toward the noisier branch (larger κ), and the
    /// unbalanced bias grows with the deep branch's noise; (c) the real controller's balanced
    /// energies have B = ‖P log G^FP‖_∞ for τ = 0 (noise independent) and B ≈ 0 for FP-reference
    /// targets.
    #[test]
    fn deep_noise_biases_shares_and_balancing_removes_it(seed in 0u64..500, s_shallow in 0.0f64..0.2, s_deep in 0.5f64..3.0) {
        let w = orthogonal_readouts(2, 2, 2, seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 7);
        let r0: Vec<f64> = (0..4).map(|_| rng.random::<f64>() + 0.2).collect();
        let fp = branch_energies(&w, &r0, &[0.0, 0.0]);
        let q = branch_energies(&w, &r0, &[s_shallow, s_deep]);
        let kappa: Vec<f64> = q.iter().zip(&fp).map(|(a, b)| a * a / (b * b) - 1.0).collect();
        let shift = centred_log(&q)[1] - centred_log(&fp)[1];
        prop_assert_eq!(shift > 0.0, kappa[1] > kappa[0], "κ {:?}, deep share shift {}", kappa, shift);
        let b1 = share_bias(&q, &fp);
        let q2 = branch_energies(&w, &r0, &[s_shallow, 4.0 * s_deep]);
        let b2 = share_bias(&q2, &fp);
        prop_assert!(b2 >= b1 || kappa[1] <= kappa[0], "bias {b1} → {b2} with 4× the deep noise");
        // balanced by the real controller: the noisy energies enter as the fixed residual energies
        let bal = balance(&q, vec![]);
        let fp_imbalance = share_bias(&fp, &[1.0, 1.0]);
        prop_assert!((share_bias(&bal, &fp) - fp_imbalance).abs() < 1e-4, "B_bal {} vs ‖P log G^FP‖ {fp_imbalance}", share_bias(&bal, &fp));
        let bal_ref = balance(&q, centred_log(&fp));
        prop_assert!(share_bias(&bal_ref, &fp) < 1e-4, "FP-reference targets leave B = {}", share_bias(&bal_ref, &fp));
    }
}

/// The lemma's counterexample: J = ½I (contracting) — the noise saturates at (4/3)s² and with
/// s² = (4, 1, 1, …) it even decreases with depth.
#[test]
fn contracting_jacobians_do_not_accumulate_noise() {
    let half: Mat = vec![vec![0.5, 0.0], vec![0.0, 0.5]];
    let g = noise_growth(&vec![half.clone(); 30], &[1.0; 30]);
    assert!((g[0] - 1.0).abs() < 1e-12 && (g[1] - 1.25).abs() < 1e-12 && (g[2] - 1.3125).abs() < 1e-12);
    assert!((g[29] - 4.0 / 3.0).abs() < 1e-9);
    let mut s2 = vec![1.0; 5];
    s2[0] = 4.0;
    let g = noise_growth(&vec![half; 5], &s2);
    assert!((g[0] - 4.0).abs() < 1e-12 && (g[1] - 2.0).abs() < 1e-12 && (g[2] - 1.5).abs() < 1e-12);
}

/// (d): without orthogonality deep noise biases the shares toward the *shallow* branch, and the
/// τ = 0 balance then increases the share bias for every σ (THEORY.md P3 (d)).
#[test]
fn counterexample_non_orthogonal_readouts() {
    let w: Vec<Mat> = vec![vec![vec![1.0], vec![0.0]], vec![vec![1.0], vec![1.0]]];
    let r0 = [0.1, 1.0];
    let fp = branch_energies(&w, &r0, &[0.0, 0.0]);
    for (s, shift_want) in [(0.1, 0.3303), (0.5, 1.3279), (1.0, 1.5776), (3.0, 1.6888)] {
        let q = branch_energies(&w, &r0, &[0.0, s]);
        let shift = (q[0] / q[1]).ln() - (fp[0] / fp[1]).ln();
        assert!((shift - shift_want).abs() < 1e-4, "σ {s}: {shift}");
        let b_unbal = share_bias(&q, &fp);
        assert!(b_unbal < 0.5 * 5.5f64.ln());
        let bal = balance(&q, vec![]);
        let b_bal = share_bias(&bal, &fp);
        assert!((b_bal - 0.5 * 11f64.ln()).abs() < 1e-4 && b_bal > b_unbal, "σ {s}: B_bal {b_bal}, B_unbal {b_unbal}");
        assert!(share_bias(&balance(&q, centred_log(&fp)), &fp) < 1e-4);
    }
}
