//! q2-nn against PyTorch: Conv/BN/SiLU (train and eval), biased Conv2d, nearest upsampling,
//! max pooling, SGD (Nesterov) and Adam, YOLOv5's LR/momentum/accumulation schedule and its
//! weight EMA. Fixtures: `tools/make_fixtures.py` → `tests/fixtures/nn_*`.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use q2::nn::conv::{Act, Conv, Conv2d};
use q2::nn::ema::ModelEma;
use q2::nn::optim::{Adam, Optimizer, ParamGroup, Sgd};
use q2::nn::sched::{LrShape, Yolov5Schedule};
use q2::nn::store::{Init, ParamStore, Role};
use q2::nn::{ops, Feat, Mode};
use serde_json::Value;

fn layers() -> HashMap<String, Tensor> {
    q2::nn::store::load_tensors(&q2::fixture("nn_layers.safetensors"), &Device::Cpu).unwrap()
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(q2::fixture(name)).unwrap()).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// max |a − b| ≤ rel · max |b| + 1e-7
fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= rel * scale + 1e-7, "{what}: max abs error {err} (scale {scale})");
}

fn check_conv<const I: usize, const O: usize, const K: usize, const S: usize>(prefix: &str, groups: usize) {
    let fx = layers();
    let t = |k: &str| fx[&format!("{prefix}.{k}")].clone();
    for mode in [Mode::Train, Mode::Eval] {
        let m = if mode == Mode::Train { "train" } else { "eval" };
        let mut store = ParamStore::new(Device::Cpu, 0);
        let conv: Conv<I, O, K, S> = Conv::with(&mut store.scope(prefix), groups, Act::SiLU).unwrap();
        conv.weight.set(&t("weight")).unwrap();
        conv.bn.weight.set(&t("bn.weight")).unwrap();
        conv.bn.bias.set(&t("bn.bias")).unwrap();
        conv.bn.running_mean.set(&t("bn.running_mean")).unwrap();
        conv.bn.running_var.set(&t("bn.running_var")).unwrap();
        let x = Var::from_tensor(&t("input")).unwrap();
        let y = conv.forward(&Feat::new(x.as_tensor().clone()).unwrap(), mode).unwrap();
        let g = (y.tensor() * t("grad_out")).unwrap().sum_all().unwrap().backward().unwrap();
        let what = |k: &str| format!("{prefix}.{m}.{k}");
        assert_close(&what("y"), &vals(y.tensor()), &vals(&t(&format!("{m}.y"))), 1e-5);
        assert_close(&what("grad_input"), &vals(g.get(&x).unwrap()), &vals(&t(&format!("{m}.grad_input"))), 1e-4);
        assert_close(&what("grad_weight"), &vals(g.get(&conv.weight).unwrap()), &vals(&t(&format!("{m}.grad_weight"))), 1e-4);
        assert_close(&what("grad_bn_weight"), &vals(g.get(&conv.bn.weight).unwrap()), &vals(&t(&format!("{m}.grad_bn_weight"))), 1e-4);
        assert_close(&what("grad_bn_bias"), &vals(g.get(&conv.bn.bias).unwrap()), &vals(&t(&format!("{m}.grad_bn_bias"))), 1e-4);
        assert_close(&what("running_mean"), &vals(&conv.bn.running_mean), &vals(&t(&format!("{m}.running_mean"))), 1e-6);
        assert_close(&what("running_var"), &vals(&conv.bn.running_var), &vals(&t(&format!("{m}.running_var"))), 1e-6);
        let nbt = conv.bn.num_batches_tracked.to_scalar::<i64>().unwrap();
        assert_eq!(nbt, if mode == Mode::Train { 1 } else { 0 });
    }
}

#[test]
fn conv_bn_silu_3x3_stride2() {
    check_conv::<4, 6, 3, 2>("c3s2", 1);
}

#[test]
fn conv_bn_silu_1x1() {
    check_conv::<6, 5, 1, 1>("c1s1", 1);
}

#[test]
fn depthwise_conv_bn_silu() {
    check_conv::<6, 6, 3, 1>("dw3s1", 6);
}

#[test]
fn biased_conv2d() {
    let fx = layers();
    let mut store = ParamStore::new(Device::Cpu, 0);
    let conv: Conv2d<6, 7, 1, 1> = Conv2d::new(&mut store.scope("det")).unwrap();
    conv.weight.set(&fx["det.weight"]).unwrap();
    conv.bias.set(&fx["det.bias"]).unwrap();
    let x = Var::from_tensor(&fx["det.input"]).unwrap();
    let y = conv.forward(&Feat::new(x.as_tensor().clone()).unwrap()).unwrap();
    let g = (y.tensor() * &fx["det.grad_out"]).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("det.y", &vals(y.tensor()), &vals(&fx["det.y"]), 1e-5);
    assert_close("det.grad_input", &vals(g.get(&x).unwrap()), &vals(&fx["det.grad_input"]), 1e-5);
    assert_close("det.grad_weight", &vals(g.get(&conv.weight).unwrap()), &vals(&fx["det.grad_weight"]), 1e-5);
    assert_close("det.grad_bias", &vals(g.get(&conv.bias).unwrap()), &vals(&fx["det.grad_bias"]), 1e-5);
}

fn check_op(prefix: &str, f: impl Fn(&Tensor) -> Tensor) {
    let fx = layers();
    let x = Var::from_tensor(&fx[&format!("{prefix}.input")]).unwrap();
    let y = f(x.as_tensor());
    let g = (&y * &fx[&format!("{prefix}.grad_out")]).unwrap().sum_all().unwrap().backward().unwrap();
    // Upsampling and pooling move values without arithmetic: results must be exact.
    assert_eq!(vals(&y), vals(&fx[&format!("{prefix}.y")]), "{prefix}.y");
    assert_close(&format!("{prefix}.grad_input"), &vals(g.get(&x).unwrap()), &vals(&fx[&format!("{prefix}.grad_input")]), 1e-6);
}

#[test]
fn nearest_upsample_2x() {
    check_op("up", |x| ops::upsample_nearest2x(x).unwrap());
}

#[test]
fn maxpool_k5_s1_p2_with_ties() {
    check_op("pool", |x| ops::max_pool_same(x, 5).unwrap());
    check_op("pool2", |x| ops::max_pool_same(x, 5).unwrap());
}

struct Grads(HashMap<candle_core::TensorId, Tensor>);

impl q2::nn::optim::Grads for Grads {
    fn grad(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.id())
    }
}

fn run_optimizer(key: &str, make: impl Fn(Vec<ParamGroup>) -> Box<dyn Optimizer>) {
    let fx = json("nn_optim.json");
    let fx = &fx[key];
    let mut groups = vec![];
    let mut all = vec![];
    for g in fx["groups"].as_array().unwrap() {
        let params: Vec<Var> = g["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let shape: Vec<usize> = p["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                Var::from_tensor(&Tensor::from_vec(f32s(&p["init"]), shape, &Device::Cpu).unwrap()).unwrap()
            })
            .collect();
        all.extend(params.clone());
        groups.push(ParamGroup::new("g", params, 0.0, 0.0, g["weight_decay"].as_f64().unwrap()));
    }
    let mut opt = make(groups);
    for (si, step) in fx["steps"].as_array().unwrap().iter().enumerate() {
        for (j, g) in opt.groups_mut().iter_mut().enumerate() {
            g.lr = step["lr"][j].as_f64().unwrap();
            g.momentum = step["momentum"][j].as_f64().unwrap();
        }
        let grads = Grads(
            all.iter()
                .zip(step["grads"].as_array().unwrap())
                .map(|(p, g)| (p.id(), Tensor::from_vec(f32s(g), p.shape(), &Device::Cpu).unwrap()))
                .collect(),
        );
        opt.step(&grads).unwrap();
        for (pi, (p, want)) in all.iter().zip(step["expected"].as_array().unwrap()).enumerate() {
            assert_close(&format!("{key} step {si} param {pi}"), &vals(p), &f32s(want), 2e-6);
        }
    }
}

#[test]
fn sgd_nesterov_matches_torch() {
    run_optimizer("sgd", |g| Box::new(Sgd::new(g, true)));
}

#[test]
fn adam_matches_torch() {
    run_optimizer("adam", |g| Box::new(Adam::new(g, 0.999, 1e-8)));
}

#[test]
fn yolov5_warmup_and_schedules_match_train_py() {
    let fx = json("nn_sched.json");
    let h = &fx["hyp"];
    let num = |k: &str| h[k].as_f64().unwrap();
    for (key, shape) in [("linear", LrShape::Linear), ("one_cycle", LrShape::OneCycle)] {
        let s = Yolov5Schedule {
            lr0: num("lr0"),
            lrf: num("lrf"),
            momentum: num("momentum"),
            warmup_epochs: num("warmup_epochs"),
            warmup_momentum: num("warmup_momentum"),
            warmup_bias_lr: num("warmup_bias_lr"),
            epochs: num("epochs") as usize,
            nb: num("nb") as usize,
            batch_size: num("batch_size") as usize,
            nbs: num("nbs") as usize,
            shape,
        };
        assert_eq!(s.warmup_iters(), num("nw") as usize);
        let recs = fx[key].as_array().unwrap();
        assert_eq!(recs.len(), s.epochs * s.nb);
        for r in recs {
            let (ni, epoch) = (r["ni"].as_u64().unwrap() as usize, r["epoch"].as_u64().unwrap() as usize);
            let p = s.at(ni, epoch, 3);
            for j in 0..3 {
                let want = r["lr"][j].as_f64().unwrap();
                assert!((p.lr[j] - want).abs() <= 1e-12 * want.abs().max(1.0), "{key} ni {ni} group {j}: lr {} vs {want}", p.lr[j]);
                let wm = r["momentum"][j].as_f64().unwrap();
                assert!((p.momentum - wm).abs() <= 1e-12, "{key} ni {ni}: momentum {} vs {wm}", p.momentum);
            }
            assert_eq!(p.accumulate as u64, r["accumulate"].as_u64().unwrap(), "{key} ni {ni}: accumulate");
        }
    }
}

#[test]
fn model_ema_matches_yolov5() {
    let fx = json("nn_ema.json");
    for cfg in fx["configs"].as_array().unwrap() {
        let names: Vec<String> = cfg["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
        let mut store = ParamStore::new(Device::Cpu, 0);
        for n in &names {
            let shape: Vec<usize> = cfg["shapes"][n].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            store.add(n, shape, Role::Weight, Init::Values(f32s(&cfg["init_model"][n]))).unwrap();
        }
        let mut ema = ModelEma::new(&store, cfg["decay"].as_f64().unwrap(), cfg["tau"].as_f64().unwrap()).unwrap();
        for (ui, u) in cfg["updates"].as_array().unwrap().iter().enumerate() {
            for n in &names {
                let e = store.get(n).unwrap();
                e.var.set(&Tensor::from_vec(f32s(&u["model"][n]), e.var.shape(), &Device::Cpu).unwrap()).unwrap();
            }
            ema.update(&store).unwrap();
            for n in &names {
                assert_close(&format!("ema update {ui} {n}"), &vals(&ema.shadow()[n]), &f32s(&u["ema"][n]), 1e-6);
            }
        }
    }
}
