//! `paper/THEORY.md` §6: properties of the modules themselves — α stays on the simplex; the
//! post-fusion LN is invariant to a common rescaling of α (up to ε_LN/v); gradient taps and the
//! other telemetry leave the forward (and the gradients) of a frozen model unchanged; the Q-ADA
//! divergences: JS symmetric, exactly zero for identical maps, bounded by ln 2, KL ≥ 0.

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use q2::distill::{attention_distribution, js_divergence, kl_divergence, saliency};
use q2::fusion::gbf::{softmax, GbfConfig, GbfFactory, GbfNode};
use q2::fusion::{Concat, Fusion, FusionFactory};
use q2::nn::store::{seeded, Init};
use q2::nn::{Mode, ParamStore};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn alpha_stays_on_the_simplex(lam in prop::collection::vec(-700.0f64..700.0, 2..6)) {
        let a = softmax(&lam);
        prop_assert!(a.iter().all(|v| *v >= 0.0 && v.is_finite()));
        prop_assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// Scaling every α_i by k (= every branch by k) changes the LN output by at most
    /// ε·|1 − k⁻²|/(2v) per element (RMS over the channels of a location).
    #[test]
    fn ln_output_is_invariant_to_a_common_rescaling_of_alpha(k in 0.1f64..10.0, seed in 0u64..1000) {
        let mut store = ParamStore::new(Device::Cpu, 0);
        let eps = 1e-5;
        let node = GbfNode::new(12, &[4, 4], &GbfConfig { ln_eps: eps, ..GbfConfig::default() }, &mut store.scope("m")).unwrap();
        node.set_lambda(&[0.3, -0.6]).unwrap();
        let a = seeded((1, 4, 3, 3), &Init::Normal { mean: 0.5, std: 1.0 }, seed, &Device::Cpu).unwrap();
        let b = seeded((1, 4, 3, 3), &Init::Normal { mean: 0.0, std: 2.0 }, seed + 1, &Device::Cpu).unwrap();
        let y1 = node.fuse(&[&a, &b], Mode::Eval).unwrap();
        let (ak, bk) = (a.affine(k, 0.0).unwrap(), b.affine(k, 0.0).unwrap());
        let y2 = node.fuse(&[&ak, &bk], Mode::Eval).unwrap();
        // per location: v of the α-scaled concat
        let alpha = node.alpha().unwrap();
        let h = Tensor::cat(&[a.affine(alpha[0], 0.0).unwrap(), b.affine(alpha[1], 0.0).unwrap()], 1).unwrap().to_dtype(DType::F64).unwrap();
        let v = h.broadcast_sub(&h.mean_keepdim(1).unwrap()).unwrap().sqr().unwrap().mean_keepdim(1).unwrap();
        let v = v.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let d = (y1 - y2).unwrap().to_dtype(DType::F64).unwrap().sqr().unwrap().mean_keepdim(1).unwrap().sqrt().unwrap();
        for (rms, v) in d.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().zip(v) {
            let bound = eps * (1.0 - 1.0 / (k * k)).abs() / (2.0 * v);
            prop_assert!(*rms <= bound + 2e-6, "rms {rms}, bound {bound} (v {v})");
        }
    }

    #[test]
    fn js_is_symmetric_zero_on_identical_maps_and_at_most_ln2(p in prop::collection::vec(0.01f32..1.0, 6), r in prop::collection::vec(0.01f32..1.0, 6)) {
        let s = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, 1, 2, 3), &Device::Cpu).unwrap();
        let (p, r) = (attention_distribution(&s(&p), 0.05).unwrap(), attention_distribution(&s(&r), 0.05).unwrap());
        let a = js_divergence(&p, &r).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = js_divergence(&r, &p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        prop_assert!((a - b).abs() < 1e-6 && a >= -1e-7 && a <= std::f32::consts::LN_2 + 1e-6);
        prop_assert_eq!(js_divergence(&p, &p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 0.0);
        prop_assert!(kl_divergence(&p, &r).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] >= -1e-7);
    }
}

/// JS reaches close to ln 2 only for nearly disjoint distributions; the bound holds there too.
#[test]
fn js_bound_near_disjoint_maps() {
    let p = Tensor::from_vec(vec![0.999999f32, 0.000001], (1, 1, 2), &Device::Cpu).unwrap();
    let r = Tensor::from_vec(vec![0.000001f32, 0.999999], (1, 1, 2), &Device::Cpu).unwrap();
    let j = js_divergence(&p, &r).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(j > 0.69 && j <= std::f32::consts::LN_2 + 1e-6, "{j}");
}

/// Telemetry is transparent: a measurement-only node is bit-identical to `Concat` in the forward
/// and in the input gradients; a Q-GBFusion node gives the same forward in train mode (taps) and
/// eval mode, with or without magnitude sampling and statistics collection.
#[test]
fn telemetry_does_not_change_the_forward() {
    let a = Var::from_tensor(&seeded((2, 3, 4, 4), &Init::Normal { mean: 0.2, std: 1.0 }, 1, &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&seeded((2, 2, 4, 4), &Init::Normal { mean: 0.0, std: 1.0 }, 2, &Device::Cpu).unwrap()).unwrap();
    let w = seeded((2, 5, 4, 4), &Init::Normal { mean: 0.0, std: 1.0 }, 3, &Device::Cpu).unwrap();
    let run = |f: &dyn Fusion, mode: Mode| {
        let y = f.fuse(&[a.as_tensor(), b.as_tensor()], mode).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (flat(&y), flat(g.get(a.as_tensor()).unwrap()), flat(g.get(b.as_tensor()).unwrap()))
    };
    let mut store = ParamStore::new(Device::Cpu, 0);
    let tapped = GbfFactory::new(GbfConfig::measure_only()).unwrap().make(16, &[3, 2], &mut store.scope("m")).unwrap();
    assert_eq!(run(&Concat, Mode::Train), run(&*tapped, Mode::Train));
    let node = GbfNode::new(16, &[3, 2], &GbfConfig::default(), &mut store.scope("g")).unwrap();
    node.set_lambda(&[0.2, -0.1]).unwrap();
    let eval = node.fuse(&[a.as_tensor(), b.as_tensor()], Mode::Eval).unwrap();
    let plain = run(&node, Mode::Train);
    node.request_magnitudes().unwrap();
    node.start_stats().unwrap();
    let probed = run(&node, Mode::Train);
    assert_eq!(plain, probed);
    assert_eq!(flat(&eval), plain.0);
    assert!(node.take_stats().unwrap().unwrap().n > 0);
    assert!(node.observe().unwrap().unwrap().mag.is_some());
}

/// The saliency (Eq. 15) is non-negative, so sigmoid(S) ∈ [0.5, 1): Q-ADA's maps are flat
/// (max/min ≤ 2 per channel) whatever the temperature — PAPER.md §3.2 item 4, measured.
#[test]
fn attention_maps_are_flat() {
    let x = seeded((1, 4, 6, 6), &Init::Normal { mean: 0.0, std: 3.0 }, 9, &Device::Cpu).unwrap();
    let s = saliency(&x, None, None, 1.0, 1e-3).unwrap();
    for t in [1.0, 0.1] {
        let p = attention_distribution(&s, t).unwrap().to_vec3::<f32>().unwrap();
        for row in &p[0] {
            let (lo, hi) = row.iter().fold((f32::MAX, 0f32), |(l, h), v| (l.min(*v), h.max(*v)));
            assert!(hi / lo <= 2.0 + 1e-5, "T {t}: {}", hi / lo);
        }
    }
}
