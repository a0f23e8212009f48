//! `paper/THEORY.md` P1: the fixed points of the Q-GBFusion controller are exactly the
//! log-energy balance of Eq. 4; λ drifts (without moving α) when τ is not centred; the Jensen gap
//! between Eq. 4's E[log G] and the controller's log E[G] is bounded by Var/(2m²).

mod common;

use common::{balance_violation, inf_norm, Driven};
use proptest::prelude::*;
use q2::fusion::gbf::{balance_error, ema_update, feedback, softmax, GbfConfig};

fn energies(k: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(1e-8f64..10.0, k)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// (i) 1ᵀe = −1ᵀτ for every state: λ's mean drifts by η·mean(τ), α does not move with it.
    #[test]
    fn errors_sum_to_minus_the_targets(g in energies(3), tau in prop::collection::vec(-2.0f64..2.0, 3), eps in 0.0f64..1e-3) {
        let e = balance_error(&g, eps, &tau);
        let s: f64 = e.iter().sum::<f64>() + tau.iter().sum::<f64>();
        prop_assert!(s.abs() < 1e-12, "{s}");
        // a common shift of λ leaves α unchanged
        let lam = vec![0.3, -1.0, 2.0];
        let shifted: Vec<f64> = lam.iter().map(|l| l + 7.5).collect();
        let (a, b) = (softmax(&lam), softmax(&shifted));
        prop_assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-14));
    }

    /// (ii) α⁺ = α ⇔ P·log(Ḡ+ε) = P·τ: states built to satisfy the balance leave α unchanged,
    /// any other state moves it.
    #[test]
    fn alpha_is_fixed_exactly_at_the_balance(tau in prop::collection::vec(-1.0f64..1.0, 3), c in -12.0f64..2.0, eps in 0.0f64..1e-9, eta in 0.01f64..1.5, kick in 0.05f64..1.0) {
        let lam = vec![0.1, -0.4, 0.9];
        let balanced: Vec<f64> = tau.iter().map(|t| (t + c).exp() - eps).collect();
        let mut l = lam.clone();
        feedback(&mut l, &balance_error(&balanced, eps, &tau), eta);
        let (a0, a1) = (softmax(&lam), softmax(&l));
        prop_assert!(a0.iter().zip(&a1).all(|(x, y)| (x - y).abs() < 1e-9), "{a0:?} -> {a1:?}");
        let mut off = balanced.clone();
        off[1] = (tau[1] + c + kick).exp() - eps;
        let mut l = lam.clone();
        feedback(&mut l, &balance_error(&off, eps, &tau), eta);
        let a2 = softmax(&l);
        prop_assert!(a0.iter().zip(&a2).any(|(x, y)| (x - y).abs() > 1e-6));
    }

    /// (iii) τ = 0: the balance holds iff all Ḡ_i are equal, for every ε ≥ 0.
    #[test]
    fn zero_targets_balance_equal_energies(g in 1e-9f64..10.0, other in 1e-9f64..10.0, eps in 0.0f64..1e-3) {
        let e = balance_error(&[g, g, g], eps, &[]);
        prop_assert!(inf_norm(&e) < 1e-12);
        let e = balance_error(&[g, other, g], eps, &[]);
        prop_assert_eq!(inf_norm(&e) < 1e-12, (g - other).abs() < 1e-15 * g.max(other));
    }

    /// (iv) 0 ≤ J = log E[G+ε] − E[log(G+ε)] ≤ Var(G)/(2m²), for the empirical distribution of
    /// any sample (population variance, m its minimum): no sampling tolerance.
    #[test]
    fn jensen_gap_is_bounded(s in prop::collection::vec(1e-6f64..1e-3, 2..40), eps in 0.0f64..1e-6) {
        let n = s.len() as f64;
        let x: Vec<f64> = s.iter().map(|g| g + eps).collect();
        let mean = x.iter().sum::<f64>() / n;
        let j = mean.ln() - x.iter().map(|v| v.ln()).sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let m = x.iter().cloned().fold(f64::INFINITY, f64::min);
        prop_assert!(j >= -1e-12 && j <= var / (2.0 * m * m) * (1.0 + 1e-9) + 1e-15, "J {j}, bound {}", var / (2.0 * m * m));
    }
}

/// The real node (forward, gradient taps, `observe`, `control`) with fixed residual energies ends
/// where Eq. 4 holds, for centred and for non-centred τ (which acts as P·τ), and its EMA is
/// stationary there (Ḡ = G).
#[test]
fn the_real_controller_settles_on_the_log_energy_balance() {
    for tau in [vec![0.0, 0.0], vec![0.5, -0.5], vec![1.0, 0.0]] {
        let d = Driven::new(&[1e-5, 4e-5], GbfConfig { eta: 0.5, beta: 0.5, tau: tau.clone(), ..GbfConfig::default() });
        let mut g = vec![];
        for _ in 0..200 {
            g = d.step();
        }
        let mean_tau = tau.iter().sum::<f64>() / tau.len() as f64;
        let ptau: Vec<f64> = tau.iter().map(|t| t - mean_tau).collect();
        let u = balance_violation(&g, &ptau);
        // λ and Ḡ are f32 buffers: the balance holds to float32 resolution
        assert!(inf_norm(&u) < 1e-5, "τ {tau:?}: P log G − Pτ = {u:?}");
        let gbar = d.node.gbar().unwrap();
        for (a, b) in gbar.iter().zip(&g) {
            assert!((a - b).abs() <= 1e-5 * b, "Ḡ {gbar:?} vs G {g:?}");
        }
        // the fixed point: α_0/α_1 = e^{τ_0−τ_1}·R_1/R_0
        let a = d.node.alpha().unwrap();
        let want = (ptau[0] - ptau[1]).exp() * 4.0;
        assert!((a[0] / a[1] / want - 1.0).abs() < 1e-4, "τ {tau:?}: α {a:?}");
    }
}

/// EMA (Eq. 8) is a convex combination, initialised by the first measurement.
#[test]
fn ema_is_initialised_then_averaged() {
    let mut g = vec![0.0, 0.0];
    ema_update(&mut g, &[1.0, 3.0], 0.25, true);
    ema_update(&mut g, &[5.0, 3.0], 0.25, false);
    assert_eq!(g, [2.0, 3.0]);
}
