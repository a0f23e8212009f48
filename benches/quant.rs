//! Fake-quantization throughput: every method's fused forward + backward on a 4M-element f32
//! tensor, beside a plain copy of the same tensor (the memory-bound reference).
//!
//! Two levels are measured: the kernels on raw slices (`kernel/…`) and the candle custom ops
//! (`op/…`: forward op + the fused backward op, as autograd runs them). Criterion reports bytes/s
//! for the bytes each pass must move: forward reads x and writes y (8 B/elem), backward reads x
//! and dL/dy and writes dL/dx (12 B/elem).

use std::sync::Arc;

use candle_core::{CustomOp2, Device, Tensor};
/// As in the `q2` binary: glibc's per-allocation mmap of large tensors would dominate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use q2::quant::kernel::{self, Kernel};
use q2::quant::methods::*;
use q2::quant::op::FqOp;
use rayon::prelude::*;

const N: usize = 1 << 22;

fn data() -> (Vec<f32>, Vec<f32>) {
    // Deterministic pseudo-random activations in about [-1, 6] and gradients in [-1, 1].
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let x = (0..N).map(|_| next() * 7.0 - 1.0).collect();
    let g = (0..N).map(|_| next() * 2.0 - 1.0).collect();
    (x, g)
}

fn bench_kernel<K: Kernel + Clone>(c: &mut Criterion, name: &str, k: K, p: Vec<f32>, groups: usize, x: &[f32], g: &[f32]) {
    let mut grp = c.benchmark_group("fake_quant_4M");
    grp.throughput(Throughput::Bytes((20 * N) as u64));
    grp.sample_size(20);
    grp.bench_function(BenchmarkId::new("kernel", name), |b| {
        b.iter(|| {
            let y = kernel::forward(&k, x, &p, groups);
            let (gx, gp) = kernel::backward(&k, x, &p, g, groups);
            std::hint::black_box((y, gx, gp));
        })
    });
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(x, N, &dev).unwrap();
    let gt = Tensor::from_slice(g, N, &dev).unwrap();
    let np = k.num_params().max(1);
    let pt = if k.num_params() > 0 { Tensor::from_vec(p.clone(), (groups, np), &dev).unwrap() } else { Tensor::zeros(1, candle_core::DType::F32, &dev).unwrap() };
    let op = FqOp { k: Arc::new(k), groups };
    grp.bench_function(BenchmarkId::new("op", name), |b| {
        b.iter(|| {
            let y = xt.apply_op2_no_bwd(&pt, &op).unwrap();
            let grads = op.bwd(&xt, &pt, &y, &gt).unwrap();
            std::hint::black_box((y, grads));
        })
    });
    grp.finish();
}

fn benches(c: &mut Criterion) {
    let (x, g) = data();
    {
        let mut grp = c.benchmark_group("fake_quant_4M");
        grp.sample_size(20);
        // A copy moves 8 B/elem; the throughput unit is the same bytes/s as the kernels'.
        grp.throughput(Throughput::Bytes((8 * N) as u64));
        let mut dst = vec![0f32; N];
        grp.bench_function("copy/memcpy", |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&x))));
        grp.bench_function("copy/parallel", |b| {
            b.iter(|| dst.par_chunks_mut(kernel::CHUNK).zip(x.par_chunks(kernel::CHUNK)).for_each(|(d, s)| d.copy_from_slice(s)))
        });
        let xt = Tensor::from_slice(&x, N, &Device::Cpu).unwrap();
        grp.bench_function("copy/candle", |b| b.iter(|| std::hint::black_box(xt.copy().unwrap())));
        grp.finish();
    }
    bench_kernel(c, "lsq_w4", Lsq { bits: 4, signed: true }, vec![0.3], 1, &x, &g);
    bench_kernel(c, "lsq_a4", Lsq { bits: 4, signed: false }, vec![0.4], 1, &x, &g);
    bench_kernel(c, "lsq_plus_a4", LsqPlus { bits: 4, signed: false, offset: true, init: LsqPlusInit::MinMax }, vec![0.4, -0.3], 1, &x, &g);
    bench_kernel(c, "pact_a4", Pact { bits: 4, init: PactInit::Fixed(6.0) }, vec![5.0], 1, &x, &g);
    bench_kernel(c, "dorefa_w4", DoReFa { bits: 4 }, vec![], 1, &x, &g);
    let n2 = N2uqAct { bits: 4, init: N2uqInit::Calibrated };
    let p = n2.init(&x);
    bench_kernel(c, "n2uq_a4", n2, p, 1, &x, &g);
    bench_kernel(c, "n2uq_w4_64ch", N2uqWeight { bits: 4 }, vec![], 64, &x, &g);
    bench_kernel(c, "minmax_a4", MinMax { bits: 4, signed: false }, vec![], 1, &x, &g);
    bench_kernel(c, "lsq_w4_64ch", Lsq { bits: 4, signed: true }, vec![0.3; 64], 64, &x, &g);
}

criterion_group!(quant, benches);
criterion_main!(quant);
