//! The paper's first-order model of quantization error at a fusion node (Sec. 3.1, Eq. 1–3),
//! as plain functions for the theory suite (`paper/THEORY.md`, P3):
//! - [`noise_growth`]: Eq. 1, δ_l = J_l·δ_{l−1} + ε_l, the mean-square error E‖δ_l‖² per depth;
//! - [`branch_energies`]: Eq. 2–3, the root-mean-square gradient energy of each branch of the
//!   linear proxy t̂ = Σ_i W_i·(F_i + δ_i) under L = ½‖t̂ − t‖²;
//! - [`share_bias`]: how far an energy vector's log-shares are from reference (FP) ones.
//!
//! Matrices are row-major `Vec<Vec<f64>>`.

/// A dense matrix, row-major: `m[row][col]`.
pub type Mat = Vec<Vec<f64>>;

fn cols(m: &Mat) -> usize {
    m.first().map_or(0, Vec::len)
}

/// Eq. 1: with independent zero-mean noises ε_l of covariance (s_l²/d)·I (E‖ε_l‖² = s_l²) and
/// δ_0 = 0, the covariance follows Σ_l = J_l Σ_{l−1} J_lᵀ + (s_l²/d)·I; returns E‖δ_l‖² = tr Σ_l
/// for l = 1..L. `jacobians[l]` is d×d.
pub fn noise_growth(jacobians: &[Mat], s2: &[f64]) -> Vec<f64> {
    let d = jacobians.first().map_or(0, Vec::len);
    let mut sigma = vec![vec![0.0; d]; d];
    let mut out = vec![];
    for (j, s) in jacobians.iter().zip(s2) {
        // J Σ Jᵀ
        let js: Mat = (0..d).map(|r| (0..d).map(|c| (0..d).map(|k| j[r][k] * sigma[k][c]).sum()).collect()).collect();
        let mut next: Mat = (0..d).map(|r| (0..d).map(|c| (0..d).map(|k| js[r][k] * j[c][k]).sum()).collect()).collect();
        for (i, row) in next.iter_mut().enumerate() {
            row[i] += s / d as f64;
        }
        sigma = next;
        out.push((0..d).map(|i| sigma[i][i]).sum());
    }
    out
}

/// Eq. 2–3: R_i = (E‖W_iᵀ(t̂ − t)‖²)^{1/2} = (‖W_iᵀ r_0‖² + Σ_j σ_j²·‖W_iᵀ W_j‖_F²)^{1/2} for
/// branch read-outs W_i (m×n_i), full-precision residual r_0 = Σ_i W_i F_i − t (length m), and
/// independent zero-mean branch noises with E δ_j δ_jᵀ = σ_j²·I.
pub fn branch_energies(w: &[Mat], r0: &[f64], sigma: &[f64]) -> Vec<f64> {
    let m = r0.len();
    w.iter()
        .map(|wi| {
            let fp: f64 = (0..cols(wi)).map(|c| (0..m).map(|r| wi[r][c] * r0[r]).sum::<f64>().powi(2)).sum();
            let noise: f64 = w
                .iter()
                .zip(sigma)
                .map(|(wj, s)| {
                    let f2: f64 = (0..cols(wi))
                        .map(|a| (0..cols(wj)).map(|b| (0..m).map(|r| wi[r][a] * wj[r][b]).sum::<f64>().powi(2)).sum::<f64>())
                        .sum();
                    s * s * f2
                })
                .sum();
            (fp + noise).sqrt()
        })
        .collect()
}

/// The centred logs P·log g (log-shares up to a common factor).
pub fn centred_log(g: &[f64]) -> Vec<f64> {
    let l: Vec<f64> = g.iter().map(|v| v.ln()).collect();
    let mean = l.iter().sum::<f64>() / l.len() as f64;
    l.into_iter().map(|v| v - mean).collect()
}

/// B(g) = ‖P·log g − P·log g_ref‖_∞: the deviation of the log-shares of `g` from those of `g_ref`
/// (THEORY.md P3), invariant to scaling either vector.
pub fn share_bias(g: &[f64], g_ref: &[f64]) -> f64 {
    centred_log(g).iter().zip(centred_log(g_ref)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_jacobians_add_the_noise_of_every_layer() {
        let id: Mat = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let rot: Mat = vec![vec![0.0, -1.0], vec![1.0, 0.0]];
        let g = noise_growth(&[id, rot.clone(), rot], &[1.0, 2.0, 0.5]);
        assert!((g[0] - 1.0).abs() < 1e-12 && (g[1] - 3.0).abs() < 1e-12 && (g[2] - 3.5).abs() < 1e-12);
    }

    #[test]
    fn energies_of_the_documented_counterexample() {
        // THEORY.md P3 (d): W0 = (1,0)ᵀ, W1 = (1,1)ᵀ, r0 = (0.1, 1), σ = (0, σ).
        let w = vec![vec![vec![1.0], vec![0.0]], vec![vec![1.0], vec![1.0]]];
        let s = 0.5;
        let r = branch_energies(&w, &[0.1, 1.0], &[0.0, s]);
        assert!((r[0] * r[0] - (0.01 + s * s)).abs() < 1e-12);
        assert!((r[1] * r[1] - (1.21 + 4.0 * s * s)).abs() < 1e-12);
        let fp = branch_energies(&w, &[0.1, 1.0], &[0.0, 0.0]);
        assert!(share_bias(&r, &fp) > 0.0);
        assert!(share_bias(&[1.0, 2.0], &[3.0, 6.0]) < 1e-15);
    }
}
