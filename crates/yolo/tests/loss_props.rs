//! Properties and bad-input behaviour of the YOLOv5 and YOLO11 losses: non-negativity, the terms
//! that vanish without targets, invariance to the order of the images in a batch, and clear
//! errors for non-finite head outputs, out-of-range classes / image indices and wrong shapes.

use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use q2_yolo::loss::v5::DEFAULT_ANCHORS;
use q2_yolo::loss::{LossOut, V5Hyp, V5Loss, V5LossConfig, V8Loss, V8LossConfig};
use q2_yolo::{HeadOut, Targets};

const STRIDES: [usize; 3] = [8, 16, 32];

/// Deterministic pseudo-random floats in [-1, 1) (SplitMix64).
fn noise(seed: u64, n: usize, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + shift
        })
        .collect()
}

fn t4(v: Vec<f32>, d: (usize, usize, usize, usize)) -> Tensor {
    Tensor::from_vec(v, d, &Device::Cpu).unwrap()
}

fn v5_out(seed: u64, bs: usize, nc: usize, h: usize, w: usize) -> [Tensor; 3] {
    std::array::from_fn(|l| {
        let (gh, gw) = (h / STRIDES[l], w / STRIDES[l]);
        let c = 3 * (5 + nc);
        t4(noise(seed + l as u64, bs * c * gh * gw, 2.0, 0.0), (bs, c, gh, gw))
    })
}

fn v11_out(seed: u64, bs: usize, nc: usize, h: usize, w: usize) -> ([Tensor; 3], [Tensor; 3]) {
    let b = std::array::from_fn(|l| {
        let (gh, gw) = (h / STRIDES[l], w / STRIDES[l]);
        t4(noise(seed + l as u64, bs * 64 * gh * gw, 3.0, 0.0), (bs, 64, gh, gw))
    });
    let c = std::array::from_fn(|l| {
        let (gh, gw) = (h / STRIDES[l], w / STRIDES[l]);
        t4(noise(seed + 10 + l as u64, bs * nc * gh * gw, 2.0, -1.0), (bs, nc, gh, gw))
    });
    (b, c)
}

fn v5_loss(nc: usize, img: usize) -> V5Loss {
    V5Loss::new(V5LossConfig::from_hyp(&V5Hyp::default(), nc, img, &DEFAULT_ANCHORS, STRIDES).unwrap())
}

fn v8_loss(nc: usize) -> V8Loss {
    V8Loss::new(V8LossConfig::new(nc, STRIDES)).unwrap()
}

fn total(o: &LossOut) -> f64 {
    o.total.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Random targets: `n` boxes over `bs` images (sorted by image), classes < nc.
fn targets(seed: u64, bs: usize, nc: usize, n: usize) -> Targets {
    let r = noise(seed, 6 * n, 0.5, 0.5);
    let mut t = Targets::default();
    let mut rows: Vec<(usize, usize, [f32; 4])> = (0..n)
        .map(|i| {
            let q = &r[6 * i..6 * i + 6];
            let (w, h) = (0.02 + 0.9 * q[2], 0.02 + 0.9 * q[3]);
            let cx = w / 2.0 + (1.0 - w) * q[0];
            let cy = h / 2.0 + (1.0 - h) * q[1];
            (((q[4] * bs as f32) as usize).min(bs - 1), ((q[5] * nc as f32) as usize).min(nc - 1), [cx, cy, w, h])
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    for (b, c, x) in rows {
        t.image.push(b);
        t.class.push(c);
        t.xywhn.push(x);
    }
    t
}

/// Swaps images 0 and 1 of a batch (raw tensors and targets, keeping the targets' order within
/// each image).
fn swap01(x: &Tensor) -> Tensor {
    let bs = x.dim(0).unwrap();
    let mut idx: Vec<u32> = (0..bs as u32).collect();
    idx.swap(0, 1);
    x.index_select(&Tensor::from_vec(idx, bs, &Device::Cpu).unwrap(), 0).unwrap()
}

fn swap_targets(t: &Targets) -> Targets {
    let mut out = Targets::default();
    for want in [1usize, 0] {
        for i in 0..t.len() {
            if t.image[i] == want {
                out.image.push(1 - want);
                out.class.push(t.class[i]);
                out.xywhn.push(t.xywhn[i]);
            }
        }
    }
    for i in 0..t.len() {
        if t.image[i] >= 2 {
            out.image.push(t.image[i]);
            out.class.push(t.class[i]);
            out.xywhn.push(t.xywhn[i]);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Loss terms are non-negative and finite; the batch order does not matter.
    #[test]
    fn v5_nonnegative_and_batch_order_invariant(seed in 0u64..1000, n in 0usize..8, nc in 1usize..5) {
        let (bs, h, w) = (3, 64, 96);
        let raw = v5_out(seed, bs, nc, h, w);
        let t = targets(seed + 7, bs, nc, n);
        let loss = v5_loss(nc, 96);
        let o = loss.forward(&HeadOut::V5 { raw: raw.clone() }, &t).unwrap();
        prop_assert!(o.items.iter().all(|v| v.is_finite() && *v >= 0.0), "{:?}", o.items);
        prop_assert!(total(&o) >= 0.0);
        let s = loss.forward(&HeadOut::V5 { raw: raw.clone().map(|x| swap01(&x)) }, &swap_targets(&t)).unwrap();
        prop_assert!((total(&s) - total(&o)).abs() <= 1e-5 * total(&o).abs().max(1e-3), "{} vs {}", total(&s), total(&o));
    }

    #[test]
    fn v11_nonnegative_and_batch_order_invariant(seed in 0u64..1000, n in 0usize..8, nc in 1usize..5) {
        let (bs, h, w) = (3, 64, 32);
        let (b, c) = v11_out(seed, bs, nc, h, w);
        let t = targets(seed + 7, bs, nc, n);
        let loss = v8_loss(nc);
        let o = loss.forward(&HeadOut::V11 { box_raw: b.clone(), cls_raw: c.clone() }, &t).unwrap();
        prop_assert!(o.items.iter().all(|v| v.is_finite() && *v >= 0.0), "{:?}", o.items);
        let s = loss
            .forward(&HeadOut::V11 { box_raw: b.map(|x| swap01(&x)), cls_raw: c.map(|x| swap01(&x)) }, &swap_targets(&t))
            .unwrap();
        prop_assert!((total(&s) - total(&o)).abs() <= 1e-5 * total(&o).abs().max(1e-3), "{} vs {}", total(&s), total(&o));
    }
}

/// Without targets only the objectness (v5) / class (v11) terms remain, and every raw tensor
/// still gets a (zero where no loss reaches) gradient.
#[test]
fn no_targets_leave_only_objectness_or_class_terms() {
    let raw = v5_out(1, 2, 3, 64, 64);
    let vars: Vec<Var> = raw.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let o = v5_loss(3, 64)
        .forward(&HeadOut::V5 { raw: std::array::from_fn(|l| vars[l].as_tensor().clone()) }, &Targets::default())
        .unwrap();
    assert_eq!(o.names, ["box_loss", "obj_loss", "cls_loss"]);
    assert_eq!((o.items[0], o.items[2]), (0.0, 0.0));
    assert!(o.items[1] > 0.0);
    let g = o.total.backward().unwrap();
    for v in &vars {
        let gv = g.get(v.as_tensor()).expect("gradient present");
        // only the objectness channel (k = 4 of each anchor) has a gradient
        let flat = gv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (_, _, h, w) = v.dims4().unwrap();
        for (i, x) in flat.iter().enumerate() {
            let ch = (i / (h * w)) % 8;
            assert_eq!(*x != 0.0, ch == 4, "channel {ch}");
        }
    }

    let (b, c) = v11_out(2, 2, 3, 32, 64);
    let bv: Vec<Var> = b.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let o = v8_loss(3)
        .forward(
            &HeadOut::V11 { box_raw: std::array::from_fn(|l| bv[l].as_tensor().clone()), cls_raw: c },
            &Targets::default(),
        )
        .unwrap();
    assert_eq!(o.names, ["box_loss", "cls_loss", "dfl_loss"]);
    assert_eq!((o.items[0], o.items[2]), (0.0, 0.0));
    assert!(o.items[1] > 0.0);
    let g = o.total.backward().unwrap();
    for v in &bv {
        let gv = g.get(v.as_tensor()).expect("box_raw stays in the graph");
        assert_eq!(gv.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

/// A small step along the negative gradient lowers the v5 total (the gradient is a descent
/// direction of the value the loss reports).
#[test]
fn v5_box_term_decreases_along_negative_gradient() {
    let raw = v5_out(3, 2, 2, 64, 64);
    let t = targets(11, 2, 2, 5);
    let loss = v5_loss(2, 64);
    let vars: Vec<Var> = raw.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let out = || HeadOut::V5 { raw: std::array::from_fn(|l| vars[l].as_tensor().clone()) };
    let o = loss.forward(&out(), &t).unwrap();
    let g = o.total.backward().unwrap();
    let before = total(&o);
    for v in &vars {
        let gv = g.get(v.as_tensor()).unwrap();
        v.set(&(v.as_tensor() - (gv * 0.05).unwrap()).unwrap()).unwrap();
    }
    let after = total(&loss.forward(&out(), &t).unwrap());
    assert!(after < before, "{after} !< {before}");
}

#[test]
fn non_finite_outputs_name_the_tensor() {
    let mut raw = v5_out(4, 2, 3, 64, 64);
    let mut v = raw[1].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[17] = f32::NAN;
    raw[1] = Tensor::from_vec(v, raw[1].shape(), &Device::Cpu).unwrap();
    let e = v5_loss(3, 64).forward(&HeadOut::V5 { raw }, &Targets::default()).unwrap_err().to_string();
    assert!(e.contains("p4_raw") && e.contains("non-finite"), "{e}");

    let (b, mut c) = v11_out(5, 2, 3, 64, 64);
    let mut v = c[2].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[3] = f32::INFINITY;
    c[2] = Tensor::from_vec(v, c[2].shape(), &Device::Cpu).unwrap();
    let e = v8_loss(3).forward(&HeadOut::V11 { box_raw: b.clone(), cls_raw: c }, &Targets::default()).unwrap_err();
    assert!(e.to_string().contains("p5_cls_raw"), "{e}");

    let mut b2 = b.clone();
    let mut v = b2[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[0] = f32::NEG_INFINITY;
    b2[0] = Tensor::from_vec(v, b2[0].shape(), &Device::Cpu).unwrap();
    let (_, c) = v11_out(5, 2, 3, 64, 64);
    let e = v8_loss(3).forward(&HeadOut::V11 { box_raw: b2, cls_raw: c }, &Targets::default()).unwrap_err();
    assert!(e.to_string().contains("p3_box_raw"), "{e}");
}

#[test]
fn bad_targets_and_shapes_are_clear_errors() {
    let raw = v5_out(6, 2, 3, 64, 64);
    let (b, c) = v11_out(6, 2, 3, 64, 64);
    let v5 = HeadOut::V5 { raw: raw.clone() };
    let v11 = HeadOut::V11 { box_raw: b.clone(), cls_raw: c.clone() };
    let bad_class = Targets { image: vec![0], class: vec![3], xywhn: vec![[0.5, 0.5, 0.2, 0.2]] };
    let bad_image = Targets { image: vec![2], class: vec![0], xywhn: vec![[0.5, 0.5, 0.2, 0.2]] };
    let ragged = Targets { image: vec![0, 1], class: vec![0], xywhn: vec![[0.5, 0.5, 0.2, 0.2]] };
    let nan_box = Targets { image: vec![0], class: vec![0], xywhn: vec![[0.5, f32::NAN, 0.2, 0.2]] };
    for (o, name) in [(&v5, "v5"), (&v11, "v11")] {
        let run = |t: &Targets| match o {
            HeadOut::V5 { .. } => v5_loss(3, 64).forward(o, t),
            HeadOut::V11 { .. } => v8_loss(3).forward(o, t),
        };
        let e = run(&bad_class).unwrap_err().to_string();
        assert!(e.contains("class 3") && e.contains("nc = 3"), "{name}: {e}");
        let e = run(&bad_image).unwrap_err().to_string();
        assert!(e.contains("image 2") && e.contains("2 images"), "{name}: {e}");
        assert!(run(&ragged).is_err());
        assert!(run(&nan_box).unwrap_err().to_string().contains("invalid box"));
    }
    // wrong family, wrong channel count
    assert!(v5_loss(3, 64).forward(&v11, &Targets::default()).is_err());
    assert!(v8_loss(3).forward(&v5, &Targets::default()).is_err());
    let e = v5_loss(4, 64).forward(&v5, &Targets::default()).unwrap_err().to_string();
    assert!(e.contains("p3_raw") && e.contains("channels"), "{e}");
    let e = v8_loss(5).forward(&v11, &Targets::default()).unwrap_err().to_string();
    assert!(e.contains("p3_box_raw"), "{e}");
}

/// Time of loss forward + backward at the paper's training size (640x640, batch 16, nc 80,
/// 8 boxes per image) on this machine: `cargo test -p q2-yolo --test loss_props -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_640_batch16() {
    let (bs, nc, img) = (16, 80, 640);
    let t = targets(99, bs, nc, 8 * bs);
    let raw = v5_out(1, bs, nc, img, img);
    let vars: Vec<Var> = raw.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
    let loss = v5_loss(nc, img);
    let (b, c) = v11_out(2, bs, nc, img, img);
    let bv: Vec<Var> = b.iter().chain(c.iter()).map(|x| Var::from_tensor(x).unwrap()).collect();
    let l8 = v8_loss(nc);
    for _ in 0..2 {
        let t0 = std::time::Instant::now();
        let o = loss.forward(&HeadOut::V5 { raw: std::array::from_fn(|l| vars[l].as_tensor().clone()) }, &t).unwrap();
        let t1 = t0.elapsed();
        o.total.backward().unwrap();
        let t2 = t0.elapsed();
        let o = l8
            .forward(
                &HeadOut::V11 {
                    box_raw: std::array::from_fn(|l| bv[l].as_tensor().clone()),
                    cls_raw: std::array::from_fn(|l| bv[3 + l].as_tensor().clone()),
                },
                &t,
            )
            .unwrap();
        let t3 = t0.elapsed();
        o.total.backward().unwrap();
        let t4 = t0.elapsed();
        println!(
            "v5: forward {:.1} ms, backward {:.1} ms; v11: forward {:.1} ms, backward {:.1} ms",
            t1.as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            (t4 - t3).as_secs_f64() * 1e3
        );
    }
}
