//! Property tests of the Q-ADA building blocks: divergence bounds and symmetry, the shape of the
//! attention distributions, and the affine invariance of the z term.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use q2_distill::{attention_distribution, js_divergence, kl_divergence, saliency};

const LN2: f64 = std::f64::consts::LN_2;

/// (B, C, N) rows of positive weights normalised to sum 1, in f64.
fn dist(b: usize, c: usize, w: &[f64]) -> Tensor {
    let n = w.len() / (b * c);
    let t = Tensor::from_vec(w[..b * c * n].to_vec(), (b, c, n), &Device::Cpu).unwrap();
    t.broadcast_div(&t.sum_keepdim(2).unwrap()).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Two sets of positive weights for a (B, C, N) pair.
fn pair() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<f64>)> {
    (1usize..3, 1usize..4, 1usize..10).prop_flat_map(|(b, c, n)| {
        let w = prop::collection::vec(1e-3f64..10.0, b * c * n);
        (Just(b), Just(c), w.clone(), w)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn js_is_symmetric_bounded_and_zero_on_itself((b, c, wp, wr) in pair()) {
        let (p, r) = (dist(b, c, &wp), dist(b, c, &wr));
        let pr = vals(&js_divergence(&p, &r).unwrap());
        let rp = vals(&js_divergence(&r, &p).unwrap());
        prop_assert_eq!(pr.len(), b * c);
        for (x, y) in pr.iter().zip(&rp) {
            prop_assert!((x - y).abs() <= 1e-6);
            prop_assert!(*x >= 0.0 && *x <= LN2 + 1e-6, "js = {}", x);
        }
        prop_assert!(vals(&js_divergence(&p, &p).unwrap()).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn kl_is_nonnegative_and_zero_on_itself((b, c, wp, wr) in pair()) {
        let (p, r) = (dist(b, c, &wp), dist(b, c, &wr));
        prop_assert!(vals(&kl_divergence(&p, &r).unwrap()).iter().all(|v| *v >= -1e-12));
        prop_assert!(vals(&kl_divergence(&p, &p).unwrap()).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn attention_rows_are_flat_distributions(
        s in prop::collection::vec(0f32..50.0, 2 * 3 * 4 * 5),
        t in prop_oneof![Just(1.0f64), 0.01f64..10.0],
    ) {
        // S ≥ 0 keeps sigmoid(S / T) in [0.5, 1): max/min ≤ 2 for any T, not only T = 1.
        let s = Tensor::from_vec(s, (2, 3, 4, 5), &Device::Cpu).unwrap();
        let p = attention_distribution(&s, t).unwrap();
        prop_assert_eq!(p.dims(), &[2, 3, 20]);
        for row in vals(&p).chunks(20) {
            let sum: f64 = row.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5, "sum = {}", sum);
            let (lo, hi) = row.iter().fold((f64::MAX, 0f64), |(l, h), v| (l.min(*v), h.max(*v)));
            prop_assert!(lo > 0.0);
            prop_assert!(hi / lo <= 2.0 + 1e-6, "max/min = {}", hi / lo);
        }
    }

    #[test]
    fn z_term_is_affine_invariant(
        x in prop::collection::vec(-5f64..5.0, 2 * 2 * 3 * 3),
        a in 0.1f64..10.0,
        b in -10f64..10.0,
    ) {
        let x = Tensor::from_vec(x, (2, 2, 3, 3), &Device::Cpu).unwrap();
        let y = ((&x * a).unwrap() + b).unwrap();
        let sx = vals(&saliency(&x, None, None, 1.0, 1e-9).unwrap());
        let sy = vals(&saliency(&y, None, None, 1.0, 1e-9).unwrap());
        for (u, v) in sx.iter().zip(&sy) {
            prop_assert!((u - v).abs() < 1e-4, "{} vs {}", u, v);
        }
    }
}
