//! `paper/THEORY.md` P4: LN removal (Eq. 11–12, App. Eq. 17–22). The per-location error of the
//! fixed affine map Φ(h) = c(h − μ̄) is exactly √(C·v(1/σ − c)² + C·c²(μ − μ̄)²); through the
//! consumer conv it is at most ‖W‖₂ times that (plus s√C with a quantizer in between); and the fold
//! itself (`fold_node`: quantizer absorbs c, BatchNorm absorbs the gain, node subtracts μ̄) is exact:
//! the folded model equals the model with LN replaced by Φ, for every quantizer.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use q2::fusion::fold::{fold_node, fold_residual_norm, Consumer};
use q2::fusion::gbf::{layer_norm_channels, GbfConfig, GbfNode};
use q2::fusion::Fusion;
use q2::nn::store::{seeded, Init};
use q2::nn::{Feat, Mode, ParamStore};
use q2::quant::{build, LayerKind, Method, QConv, QuantPlan, QuantSpec};

fn t(v: &[f64], c: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, c, 1, 1), &Device::Cpu).unwrap()
}

fn vecf(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn matvec(w: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    w.iter().map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// (a) the exact identity against the real LN (`layer_norm_channels`, f64), (b) the consumer
    /// bound (‖W‖_F ≥ ‖W‖₂) and its tightness for W = I, (c) the bound with q2's LSQ quantizer.
    #[test]
    fn residual_identity_and_consumer_bounds(h in prop::collection::vec(-3.0f64..3.0, 6), mu_bar in -1.0f64..1.0, c in 0.2f64..3.0, eps in 1e-6f64..1e-2, seed in 0u64..1000) {
        let cch = h.len();
        let ln = vecf(&layer_norm_channels(&t(&h, cch), eps).unwrap());
        let phi: Vec<f64> = h.iter().map(|x| c * (x - mu_bar)).collect();
        let diff: Vec<f64> = ln.iter().zip(&phi).map(|(a, b)| a - b).collect();
        let res = fold_residual_norm(&h, mu_bar, c, eps);
        prop_assert!((norm(&diff) - res).abs() < 1e-9 * (1.0 + res), "{} vs {res}", norm(&diff));
        // (b) through a random consumer, and with W = I (tight)
        let w = seeded((5, cch), &Init::Normal { mean: 0.0, std: 1.0 }, seed, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let wf = w.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        prop_assert!(norm(&matvec(&w, &diff)) <= wf * res * (1.0 + 1e-12) + 1e-12);
        // (c) an LSQ activation quantizer between LN and the conv
        let mut store = ParamStore::new(Device::Cpu, 0);
        let q = build(&QuantSpec::new(Method::Lsq, 4, true), 1, &mut store.scope("aq")).unwrap();
        q.init_from(&t(&ln, cch).to_dtype(DType::F32).unwrap()).unwrap();
        let s = q.step().unwrap().unwrap()[0] as f64;
        let qa = vecf(&q.forward(&t(&ln, cch).to_dtype(DType::F32).unwrap()).unwrap());
        let qb = vecf(&q.forward(&t(&phi, cch).to_dtype(DType::F32).unwrap()).unwrap());
        let dq: Vec<f64> = qa.iter().zip(&qb).map(|(a, b)| a - b).collect();
        prop_assert!(norm(&matvec(&w, &dq)) <= wf * (res + s * (cch as f64).sqrt()) * (1.0 + 1e-5) + 1e-5);
    }
}

/// (b) tightness: with W = I the consumer error equals the identity's value.
#[test]
fn bound_is_tight_for_the_identity_consumer() {
    let h = [0.5, 2.0, -1.0, 0.0];
    let ln = vecf(&layer_norm_channels(&t(&h, 4), 1e-5).unwrap());
    let phi: Vec<f64> = h.iter().map(|x| 0.7 * (x - 0.3)).collect();
    let d: Vec<f64> = ln.iter().zip(&phi).map(|(a, b)| a - b).collect();
    assert!((norm(&d) - fold_residual_norm(&h, 0.3, 0.7, 1e-5)).abs() < 1e-12);
}

/// A Q-GBFusion node (widths 3 + 2) and its 1×1 consumer conv (5 → 4) quantized with `method`, built
/// from a fixed seed so that two builds are identical; BatchNorm running statistics made non-trivial.
fn setup(method: Method) -> (ParamStore, GbfNode, QConv<5, 4, 1, 1>) {
    let mut store = ParamStore::new(Device::Cpu, 11);
    let node = GbfNode::new(12, &[3, 2], &GbfConfig::default(), &mut store.scope("model.12")).unwrap();
    node.set_lambda(&[0.4, -0.2]).unwrap();
    let plan = QuantPlan::new(method, 4, 4);
    let conv: QConv<5, 4, 1, 1> = QConv::new(&mut store.scope("model.13.cv1"), &plan.layer(LayerKind::Body)).unwrap();
    let bn = &conv.conv.bn.0;
    bn.running_mean.set(&Tensor::new(&[0.3f32, -0.2, 0.1, 0.5], &Device::Cpu).unwrap()).unwrap();
    bn.running_var.set(&Tensor::new(&[0.5f32, 2.0, 1.3, 0.8], &Device::Cpu).unwrap()).unwrap();
    (store, node, conv)
}

fn branches() -> (Tensor, Tensor) {
    let a = seeded((2, 3, 5, 5), &Init::Normal { mean: 0.4, std: 1.0 }, 3, &Device::Cpu).unwrap();
    let b = seeded((2, 2, 5, 5), &Init::Normal { mean: -0.1, std: 0.6 }, 4, &Device::Cpu).unwrap();
    (a, b)
}

/// (d): for every quantizer, the folded node + consumer equals the unfolded consumer applied to
/// Φ(h) = c·(h_α − μ̄) — up to float32 rounding of values on a rounding boundary (one step).
#[test]
fn folding_is_exact_for_every_quantizer() {
    let (a, b) = branches();
    for method in Method::ALL {
        let (_sa, node_a, conv_a) = setup(method);
        let (_sb, node_b, conv_b) = setup(method);
        let mut stats = vec![];
        for (node, conv) in [(&node_a, &conv_a), (&node_b, &conv_b)] {
            node.start_stats().unwrap();
            let y = node.fuse(&[&a, &b], Mode::Eval).unwrap();
            conv.calibrate(&Feat::new(y).unwrap()).unwrap();
            stats.push(node.take_stats().unwrap().unwrap());
        }
        assert_eq!(stats[0], stats[1]);
        let (mu, c) = (stats[0].mu_bar(), 1.0 / stats[0].sigma_bar(1e-5));
        // reference: Φ(h_α) through the unfolded consumer
        let alpha = node_a.alpha().unwrap();
        let h = Tensor::cat(&[a.affine(alpha[0], 0.0).unwrap(), b.affine(alpha[1], 0.0).unwrap()], 1).unwrap();
        let phi = h.affine(c, -c * mu).unwrap();
        let want = vecf(conv_a.forward(&Feat::new(phi).unwrap(), Mode::Eval).unwrap().tensor());
        // the folded pair
        let cons = Consumer {
            name: "model.13.cv1".into(),
            weight: &conv_b.conv.weight,
            act_quant: conv_b.aq.as_deref(),
            weight_quantized: conv_b.wq.is_some(),
            bn: Some((&conv_b.conv.bn.0.running_mean, &conv_b.conv.bn.0.running_var, conv_b.conv.bn.0.eps)),
        };
        let rep = fold_node(&node_b, &stats[1], &[cons]).unwrap();
        assert!(node_b.fold_state().unwrap().0);
        let y = node_b.fuse(&[&a, &b], Mode::Eval).unwrap();
        let got = vecf(conv_b.forward(&Feat::new(y).unwrap(), Mode::Eval).unwrap().tensor());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let differ = want.iter().zip(&got).filter(|(x, y)| (*x - *y).abs() > 1e-4 * scale).count();
        assert!(differ <= want.len() / 100, "{method}: {differ} of {} outputs differ (gain {:?})", want.len(), rep.gains);
        assert!(node_b.fold_state().unwrap().0 && fold_node(&node_b, &stats[1], &[]).is_err(), "folding twice is refused");
    }
}

/// (e): an affine LN cannot be folded into a quantized consumer; the error says why.
#[test]
fn affine_ln_with_a_quantized_consumer_is_refused() {
    let mut store = ParamStore::new(Device::Cpu, 1);
    let node = GbfNode::new(12, &[3, 2], &GbfConfig { ln_affine: true, ..GbfConfig::default() }, &mut store.scope("model.12")).unwrap();
    let conv: QConv<5, 4, 1, 1> = QConv::new(&mut store.scope("c"), &QuantPlan::new(Method::Lsq, 4, 4).layer(LayerKind::Body)).unwrap();
    let (a, b) = branches();
    node.start_stats().unwrap();
    node.fuse(&[&a, &b], Mode::Eval).unwrap();
    let st = node.take_stats().unwrap().unwrap();
    let cons = Consumer { name: "c".into(), weight: &conv.conv.weight, act_quant: conv.aq.as_deref(), weight_quantized: true, bn: Some((&conv.conv.bn.0.running_mean, &conv.conv.bn.0.running_var, 1e-3)) };
    let e = fold_node(&node, &st, &[cons]).unwrap_err().to_string();
    assert!(e.contains("affine") && e.contains("ln_affine = false"), "{e}");
}

/// (e): with an FP consumer an affine LN folds per channel (App. Eq. 18–22) exactly.
#[test]
fn affine_ln_folds_per_channel_into_an_fp_consumer() {
    let mk = || {
        let mut store = ParamStore::new(Device::Cpu, 5);
        let node = GbfNode::new(12, &[3, 2], &GbfConfig { ln_affine: true, ..GbfConfig::default() }, &mut store.scope("model.12")).unwrap();
        let (w, bb) = node.ln_affine().unwrap();
        w.set(&Tensor::new(&[1.5f32, 0.5, 2.0, 0.8, 1.1], &Device::Cpu).unwrap()).unwrap();
        bb.set(&Tensor::new(&[0.1f32, -0.3, 0.2, 0.0, 0.4], &Device::Cpu).unwrap()).unwrap();
        let conv: QConv<5, 4, 1, 1> = QConv::new(&mut store.scope("c"), &Default::default()).unwrap();
        (store, node, conv)
    };
    let (a, b) = branches();
    let (_s1, n1, c1) = mk();
    let (_s2, n2, c2) = mk();
    n1.start_stats().unwrap();
    n1.fuse(&[&a, &b], Mode::Eval).unwrap();
    let st = n1.take_stats().unwrap().unwrap();
    let (mu, c) = (st.mu_bar(), 1.0 / st.sigma_bar(1e-5));
    let alpha = n1.alpha().unwrap();
    let h = Tensor::cat(&[a.affine(alpha[0], 0.0).unwrap(), b.affine(alpha[1], 0.0).unwrap()], 1).unwrap();
    let (g, be) = n1.ln_affine().unwrap();
    let phi = h.affine(c, -c * mu).unwrap().broadcast_mul(&g.as_tensor().reshape((1, 5, 1, 1)).unwrap()).unwrap().broadcast_add(&be.as_tensor().reshape((1, 5, 1, 1)).unwrap()).unwrap();
    let want = vecf(c1.forward(&Feat::new(phi).unwrap(), Mode::Eval).unwrap().tensor());
    let cons = Consumer { name: "c".into(), weight: &c2.conv.weight, act_quant: None, weight_quantized: false, bn: Some((&c2.conv.bn.0.running_mean, &c2.conv.bn.0.running_var, 1e-3)) };
    fold_node(&n2, &st, &[cons]).unwrap();
    let got = vecf(c2.forward(&Feat::new(n2.fuse(&[&a, &b], Mode::Eval).unwrap()).unwrap(), Mode::Eval).unwrap().tensor());
    let d = want.iter().zip(&got).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(d < 1e-4, "{d}");
}
