//! Convolution cost on the CPU: a 3×3 conv 64→64 on 80×80 maps, batch 8, forward + backward
//! (input and weight gradients), alone (candle's `conv2d` and q2-nn's GEMM conv) and as a full
//! ultralytics `Conv` block (conv + BatchNorm2d in train mode + SiLU), fp32 and W4A4
//! LSQ-quantized, with q2's fused kernels and with candle's (`/candle` rows).

use candle_core::{Device, Tensor, Var};
/// As in the `q2` binary: glibc's per-allocation mmap of large tensors would dominate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion};
use q2::nn::conv::Conv;
use q2::nn::kernels::{set_kernels, Kernels};
use q2::nn::store::ParamStore;
use q2::nn::{Feat, Mode};
use q2::quant::{LayerKind, Method, QConv, QuantPlan};

fn benches(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 64, 80, 80), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (64, 64, 3, 3), &dev).unwrap() * 0.05).unwrap()).unwrap();
    let mut grp = c.benchmark_group("conv3x3_64x64_80x80_b8");
    grp.sample_size(10);
    grp.bench_function("conv2d/fwd", |b| b.iter(|| std::hint::black_box(x.conv2d(&w, 1, 1, 1, 1).unwrap())));
    grp.bench_function("conv2d/fwd+bwd", |b| {
        b.iter(|| {
            let y = x.conv2d(&w, 1, 1, 1, 1).unwrap();
            std::hint::black_box(y.sum_all().unwrap().backward().unwrap());
        })
    });
    let gemm = |x: &Tensor, w: &Tensor| q2::nn::conv::conv2d(x, w, 1, 1, 1).unwrap();
    grp.bench_function("gemm_conv/fwd", |b| b.iter(|| std::hint::black_box(gemm(&x, &w))));
    grp.bench_function("gemm_conv/fwd+bwd", |b| {
        b.iter(|| std::hint::black_box(gemm(&x, &w).sum_all().unwrap().backward().unwrap()))
    });
    let mut store = ParamStore::new(dev.clone(), 0);
    let conv: Conv<64, 64, 3, 1> = Conv::new(&mut store.scope("m")).unwrap();
    let fx = Feat::<64>::new(x.as_tensor().clone()).unwrap();
    for (k, name) in [(Kernels::Fused, "Conv_block_fp32/fwd+bwd"), (Kernels::Candle, "Conv_block_fp32/candle/fwd+bwd")] {
        set_kernels(k);
        grp.bench_function(name, |b| {
            b.iter(|| {
                let y = conv.forward(&fx, Mode::Train).unwrap();
                std::hint::black_box(y.tensor().sum_all().unwrap().backward().unwrap());
            })
        });
    }
    set_kernels(Kernels::Fused);
    let plan = QuantPlan::new(Method::Lsq, 4, 4);
    let qconv: QConv<64, 64, 3, 1> = QConv::new(&mut store.scope("q"), &plan.layer(LayerKind::Body)).unwrap();
    qconv.calibrate(&fx).unwrap();
    grp.bench_function("Conv_block_w4a4_lsq/fwd+bwd", |b| {
        b.iter(|| {
            let y = qconv.forward(&fx, Mode::Train).unwrap();
            std::hint::black_box(y.tensor().sum_all().unwrap().backward().unwrap());
        })
    });
    grp.finish();
}

criterion_group!(conv, benches);
criterion_main!(conv);
