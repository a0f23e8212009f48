//! `paper/THEORY.md` P2: with fixed residual energies the balance error of the Q-GBFusion
//! controller contracts geometrically — by exactly |1−η| per step without EMA (β = 1), at the
//! spectral radius of M(η, β) with it — stably iff 0 < η < 2(2−β)/β; ε slows the loop by
//! G*/(G*+ε); accumulation replaces β by 1−(1−β)^m. Checked on the real node (taps, `observe`,
//! `control`) and the real controller functions, with the documented counterexamples C1–C3.

mod common;

use common::{balance_violation, inf_norm, Driven};
use proptest::prelude::*;
use q2::fusion::gbf::{balance_error, ema_update, feedback, softmax, GbfConfig};

/// ρ(M(η, β)) for M = [[1−ηβ, −η(1−β)], [β, 1−β]] (THEORY.md P2 (b)).
fn rho(eta: f64, beta: f64) -> f64 {
    let t = 2.0 - beta - eta * beta;
    let d = t * t - 4.0 * (1.0 - beta);
    if d <= 0.0 {
        (1.0 - beta).sqrt()
    } else {
        (t.abs() + d.sqrt()) / 2.0
    }
}

/// The log-EMA model (b) per component, ē_0 = u_0 (Ḡ starts at the first measurement):
/// returns |u_t| for t = 0..n.
fn linear_model(eta: f64, beta: f64, u0: f64, n: usize) -> Vec<f64> {
    let (mut u, mut e) = (u0, u0);
    let mut out = vec![u.abs()];
    for _ in 0..n {
        u -= eta * e;
        e = (1.0 - beta) * e + beta * u;
        out.push(u.abs());
    }
    out
}

/// The asymptotic growth rate per step of the state (u, ē) of the linear model, measured with
/// renormalisation (no underflow): exp of the mean log-growth over steps n/2..n.
fn measured_rate(eta: f64, beta: f64, n: usize) -> f64 {
    let (mut u, mut e, mut log) = (1.0f64, 0.3f64, 0.0f64);
    let mut mid = 0.0;
    for t in 0..n {
        u -= eta * e;
        e = (1.0 - beta) * e + beta * u;
        let norm = (u * u + e * e).sqrt();
        log += norm.ln();
        u /= norm;
        e /= norm;
        if t + 1 == n / 2 {
            mid = log;
        }
    }
    ((log - mid) / (n - n / 2) as f64).exp()
}

/// The real controller functions on K = 2 with fixed residual energies R (f64 throughout):
/// returns max_i |u_i| per step.
fn controller(r: [f64; 2], lam0: [f64; 2], eta: f64, beta: f64, steps: usize) -> Vec<f64> {
    let mut lam = lam0.to_vec();
    let mut gbar = vec![0.0; 2];
    let mut out = vec![];
    for t in 0..steps {
        let a = softmax(&lam);
        let g: Vec<f64> = a.iter().zip(&r).map(|(a, r)| a * r).collect();
        out.push(inf_norm(&balance_violation(&g, &[])));
        ema_update(&mut gbar, &g, beta, t == 0);
        feedback(&mut lam, &balance_error(&gbar, 1e-12, &[]), eta);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// (a) β = 1: u_{t+1} = (1−η)·u_t exactly, on the real node (float32 λ: 1e-4 relative).
    #[test]
    fn without_ema_the_error_shrinks_by_one_minus_eta(eta in 0.05f64..1.9, r1 in 0.1f64..10.0) {
        let d = Driven::new(&[1e-5, r1 * 1e-5], GbfConfig { eta, beta: 1.0, ..GbfConfig::default() });
        let mut u = vec![];
        for _ in 0..6 {
            u.push(balance_violation(&d.step(), &[])[0]);
        }
        for w in u.windows(2) {
            if w[0].abs() > 1e-3 {
                prop_assert!((w[1] - (1.0 - eta) * w[0]).abs() < 1e-4 * w[0].abs() + 1e-6, "u {u:?}");
            }
        }
    }

    /// (b)/(c): inside the stable range the real node converges to the balance (from a start near
    /// the fixed point, THEORY.md C2's advice), at least as fast as ρ(M) asymptotically allows.
    #[test]
    fn with_ema_the_real_loop_converges_inside_the_range(beta in 0.05f64..1.0, frac in 0.02f64..0.5, r1 in 1.5f64..4.0) {
        let eta = frac * 2.0 * (2.0 - beta) / beta;
        let eta = eta.min(2.0);
        let d = Driven::new(&[1e-5, r1 * 1e-5], GbfConfig { eta, beta, ..GbfConfig::default() });
        let steps = (30.0 / (1.0 - rho(eta, beta)).max(1e-3)).min(3000.0) as usize;
        let mut u0 = None;
        let mut last = 0.0;
        for _ in 0..steps {
            let u = inf_norm(&balance_violation(&d.step(), &[]));
            u0.get_or_insert(u);
            last = u;
        }
        let u0 = u0.unwrap();
        prop_assert!(last < 1e-3 * u0 + 2e-5, "η {eta}, β {beta}: |u| {u0} → {last} after {steps} steps");
    }
}

/// (b): the spectral radius is the contraction rate of the linear model; beyond 2(2−β)/β it grows.
#[test]
fn the_linear_model_contracts_at_rho_and_diverges_beyond_the_bound() {
    for (eta, beta) in [(0.05, 0.1), (0.01, 0.1), (1.0, 0.5), (2.5, 0.5), (5.0, 0.3), (0.5, 1.0), (1.5, 1.0)] {
        assert!(eta < 2.0 * (2.0 - beta) / beta);
        let r = measured_rate(eta, beta, 20_000);
        assert!((r - rho(eta, beta)).abs() < 2e-3, "η {eta}, β {beta}: measured {r}, ρ {}", rho(eta, beta));
    }
    for beta in [0.1, 0.5, 1.0] {
        let bound = 2.0 * (2.0 - beta) / beta;
        let u = linear_model(bound * 1.01, beta, 1e-3, 3000);
        assert!(u[3000] > 1.0, "β {beta}: η just past {bound} must diverge, |u| = {}", u[3000]);
        assert!(rho(bound * 1.01, beta) > 1.0 && rho(bound * 0.99, beta) < 1.0);
        assert!(measured_rate(bound * 1.01, beta, 20_000) > 1.0);
    }
}

/// C1: the EMA widens the stable range: β = 0.5, η = 2.5 converges, while without EMA the same η
/// grows the error by 1.5 per step.
#[test]
fn counterexample_c1_ema_widens_the_range() {
    let with = linear_model(2.5, 0.5, 1.0, 200);
    assert!(with[200] < 1e-20);
    let without = linear_model(2.5, 1.0, 1.0, 20);
    assert!((without[20] - 1.5f64.powi(20)).abs() < 1e-6 * 1.5f64.powi(20));
    // and the real controller at β = 0.5, η = 2.5 converges from near the fixed point
    let c = controller([1.0, 3.0], [3f64.ln() + 0.05, 0.0], 2.5, 0.5, 300);
    assert!(c[299] < 1e-9, "{}", c[299]);
}

/// C2: inside the local range (η = 5.4 < 6 at β = 0.5) the code's EMA on G (not on log G) has a
/// period-3 cycle from λ_0 = (log 3 + 0.3, 0), and converges from log 3 + 0.2: local ≠ global.
#[test]
fn counterexample_c2_limit_cycle_inside_the_local_range() {
    let far = controller([1.0, 3.0], [3f64.ln() + 0.3, 0.0], 5.4, 0.5, 3000);
    let tail = &far[2900..];
    let max = tail.iter().cloned().fold(0.0, f64::max);
    assert!(max > 0.8, "expected a cycle, tail max {max}");
    // period 3: the same values every third step
    for i in 0..50 {
        assert!((tail[i] - tail[i + 3]).abs() < 1e-6, "not period 3 at {i}: {:?}", &tail[i..i + 6]);
    }
    let near = controller([1.0, 3.0], [3f64.ln() + 0.2, 0.0], 5.4, 0.5, 3000);
    assert!(near[2999] < 1e-9, "{}", near[2999]);
    // the log-EMA model converges from both starts
    assert!(linear_model(5.4, 0.5, 0.3, 3000)[3000] < 1e-12);
}

/// C3: just beyond the bound (η = 6.06 > 6) the code's loop stays in a small bounded oscillation
/// while the linear model diverges.
#[test]
fn counterexample_c3_beyond_the_bound_the_code_stays_bounded() {
    let c = controller([1.0, 3.0], [3f64.ln() + 0.3, 0.0], 6.06, 0.5, 4000);
    let max = c[3000..].iter().cloned().fold(0.0, f64::max);
    assert!(max > 0.05 && max < 0.5, "{max}");
    assert!(linear_model(6.06, 0.5, 0.3, 4000)[4000] > 1e3);
}

/// (d): ε slows the β = 1 loop by exactly G*/(G*+ε): with G ≈ 2e-5 and ε = 1e-4 the per-step
/// factor is 1 − η·μ with μ ≈ 0.167.
#[test]
fn epsilon_scales_the_gain() {
    let r = [2e-5 * 2.0, 2e-5 * 2.0 * 1.2];
    for (eps, mu_min, mu_max) in [(1e-12, 0.999, 1.0), (1e-4, 0.14, 0.20)] {
        let mut lam = vec![0.0, 0.0];
        let mut us = vec![];
        for _ in 0..4 {
            let a = softmax(&lam);
            let g: Vec<f64> = a.iter().zip(&r).map(|(a, r)| a * r).collect();
            us.push(balance_violation(&g, &[])[0]);
            let mut gbar = g.clone();
            ema_update(&mut gbar, &g, 1.0, true);
            feedback(&mut lam, &balance_error(&gbar, eps, &[]), 0.5);
        }
        let f = us[3] / us[2];
        let mu = (1.0 - f) / 0.5;
        assert!(mu > mu_min && mu < mu_max, "ε {eps}: μ {mu}");
    }
}

/// (e): m EMA updates per controller step with fixed energies compose to β_m = 1−(1−β)^m.
#[test]
fn accumulation_composes_the_ema() {
    let (beta, m) = (0.1, 4);
    let mut a = vec![2.0];
    for _ in 0..m {
        ema_update(&mut a, &[5.0], beta, false);
    }
    let bm = 1.0 - (1.0f64 - beta).powi(m);
    let mut b = vec![2.0];
    ema_update(&mut b, &[5.0], bm, false);
    assert!((a[0] - b[0]).abs() < 1e-12);
}
