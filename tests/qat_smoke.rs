//! End to end through the substrate: a two-layer W4A4 QConv network (every quantizer method)
//! trained with YOLOv5's SGD groups and gradient accumulation learns a fixed target, and two runs
//! with the same seed give bit-identical numbers on the CPU.

use candle_core::Device;
use q2::nn::optim::{yolov5_groups, GradAccumulator, Optimizer, Sgd};
use q2::nn::store::{seeded, Init, ParamStore};
use q2::nn::{Feat, Mode};
use q2::quant::{LayerKind, Method, QConv, QuantPlan};

fn train(method: Method, seed: u64) -> Vec<f32> {
    let dev = Device::Cpu;
    let mut store = ParamStore::new(dev.clone(), seed);
    let plan = QuantPlan::new(method, 4, 4);
    let l0: QConv<3, 8, 3, 1> = QConv::new(&mut store.scope("model.0"), &plan.layer(LayerKind::First)).unwrap();
    let l1: QConv<8, 4, 1, 1> = QConv::new(&mut store.scope("model.1"), &plan.layer(LayerKind::Body)).unwrap();
    let x = Feat::<3>::new(seeded((4, 3, 8, 8), &Init::Normal { mean: 0.0, std: 1.0 }, seed + 1, &dev).unwrap()).unwrap();
    let target = seeded((4, 4, 8, 8), &Init::Uniform { lo: 0.0, hi: 1.5 }, seed + 2, &dev).unwrap();
    let h = l0.forward(&x, Mode::Train).unwrap();
    l0.calibrate(&x).unwrap();
    l1.calibrate(&h).unwrap();
    let mut opt = Sgd::new(yolov5_groups(&store, 0.02, 0.9, 5e-4), true);
    let params: Vec<_> = store.trainable().map(|(_, e)| e.var.clone()).collect();
    let mut acc = GradAccumulator::new();
    let mut losses = vec![];
    for step in 0..24 {
        let y = l1.forward(&l0.forward(&x, Mode::Train).unwrap(), Mode::Train).unwrap();
        let loss = (y.tensor() - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        acc.add(&params, &loss.backward().unwrap()).unwrap();
        if step % 2 == 1 {
            acc.clip_grad_norm(10.0).unwrap();
            opt.step(&acc).unwrap();
            acc.clear();
        }
    }
    losses
}

#[test]
fn w4a4_qconv_network_learns_with_every_method() {
    for method in Method::ALL {
        let l = train(method, 7);
        let (first, last) = (l[0], *l.last().unwrap());
        assert!(l.iter().all(|v| v.is_finite()), "{method}: {l:?}");
        assert!(last < 0.8 * first, "{method}: loss {first} -> {last}");
    }
}

#[test]
fn training_is_deterministic_on_cpu() {
    let a = train(Method::N2uq, 11);
    let b = train(Method::N2uq, 11);
    assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let c = train(Method::N2uq, 12);
    assert_ne!(a, c);
}
