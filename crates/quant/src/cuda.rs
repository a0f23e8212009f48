//! The CUDA path of the fake quantizers: [`forward`] and [`backward`] run a [`Kernel`] on
//! candle CUDA storage, with the CUDA C kernels of `kernels/fake_quant.cu` (compiled to PTX by
//! `build.rs`, embedded here and loaded once per device through candle's module cache).
//!
//! The results equal the CPU drivers' ([`crate::kernel::forward`], [`crate::kernel::backward`]):
//! the forward is bit-identical wherever the arithmetic is the same (every method but DoReFa,
//! whose `tanhf` may differ from the host's by an ulp), the parameter gradients are summed in
//! f64 like the CPU's and rounded to f32 at the end.
//!
//! Work layout: `x` is split into `groups` equal contiguous groups (per tensor: one; per
//! channel: one per output channel); every kernel runs on a grid of
//! `(blocks_per_group, groups)` blocks, a block striding over its group. A backward pass is
//! - the elementwise kernel, writing dL/dx and one f64 partial sum per block and accumulator;
//! - a finishing kernel per group reducing the partials in a fixed order and writing dL/dparams
//!   (and, for DoReFa, the gradient through max|tanh w| to the tied maxima),
//!
//! all on the device, without a host round trip or atomics on floating-point values, so the
//! results are deterministic for a given tensor size. Group statistics (MinMax: min/max;
//! DoReFa: max|w|; N2UQ weights: mean|w|) are reduced the same way before the elementwise pass.
//!
//! Inputs must be contiguous f32 tensors (`fake_quant` makes them so); anything else is an error.

use std::any::Any;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use crate::kernel::Kernel;
use crate::methods::lsq::grad_scale;
use crate::methods::{DoReFa, Lsq, LsqPlus, MinMax, N2uqAct, N2uqWeight, Pact};

/// The kernels, as PTX for `compute_$CUDA_COMPUTE_CAP` (JIT-compiled by the driver at first use).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fake_quant.ptx"));
/// candle caches loaded modules by name.
const MODULE: &str = "q2_fake_quant";

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// `N2UQ_BWD_THREADS` in fake_quant.cu: the N2UQ activation backward's block size.
const N2UQ_BWD_THREADS: u32 = 128;
/// `TIE_CAP` in fake_quant.cu: tied DoReFa maxima listed per group.
const TIE_CAP: usize = 1024;
/// `N2UQ_MAXN` in fake_quant.cu: the largest n = 2^b − 1 the shared-memory tables hold.
const N2UQ_MAXN: usize = 255;
/// Elements per thread the grid is sized for (each thread strides over more when capped).
const ITEMS_PER_THREAD: usize = 8;
/// At most this many blocks per group (1024 × 256 threads fill an H100 about once).
const MAX_BLOCKS_PER_GROUP: usize = 1024;
/// gridDim.y limit.
const MAX_GROUPS: usize = 65_535;

/// Launches `$name` from the module with the arguments in order. Every argument must be a
/// reference to a value living until the launch returns; scalars must have the exact C type of
/// the kernel's parameter (u64 = unsigned long long, u32 = unsigned, i32 = int, f32, f64).
macro_rules! launch {
    ($dev:expr, $name:literal, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let func = $dev.get_or_load_custom_func($name, MODULE, PTX)?;
        let mut builder = func.builder();
        $( builder.arg($arg); )+
        // SAFETY: each call site passes exactly the parameters of the kernel's signature in
        // fake_quant.cu, in order and with matching types, and sizes every buffer for the grid
        // it launches (the kernels index x/y/g/out by group·gl + i with i < gl).
        unsafe { builder.launch($cfg) }.w()?;
    }};
}

fn grid(blocks_per_group: u32, groups: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks_per_group, groups as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Blocks per group: enough for `items` elements per thread, at least 1, at most
/// [`MAX_BLOCKS_PER_GROUP`]. Depends on the group size only, so reductions are reproducible.
fn blocks_per_group(gl: usize, threads: u32, items: usize) -> u32 {
    gl.div_ceil(threads as usize * items).clamp(1, MAX_BLOCKS_PER_GROUP) as u32
}

/// A contiguous f32 view of one input.
fn view<'a>(s: &'a CudaStorage, l: &Layout, name: &str, what: &str) -> Result<CudaView<'a, f32>> {
    let slice = match s.as_cuda_slice::<f32>() {
        Ok(slice) => slice,
        Err(_) => bail!("{name}: CUDA fake quantization needs f32 {what}, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!("{name}: CUDA fake quantization needs a contiguous {what} tensor (shape {:?}, stride {:?})", l.dims(), l.stride()),
    }
}

/// The concrete quantizer behind a `K: Kernel`.
enum Method<'k> {
    Lsq(&'k Lsq),
    LsqPlus(&'k LsqPlus),
    Pact(&'k Pact),
    DoReFa(&'k DoReFa),
    N2uqAct(&'k N2uqAct),
    N2uqWeight(&'k N2uqWeight),
    MinMax(&'k MinMax),
}

fn method<K: Kernel>(k: &K) -> Result<Method<'_>> {
    let any = k as &dyn Any;
    let m = if let Some(k) = any.downcast_ref::<Lsq>() {
        Method::Lsq(k)
    } else if let Some(k) = any.downcast_ref::<LsqPlus>() {
        Method::LsqPlus(k)
    } else if let Some(k) = any.downcast_ref::<Pact>() {
        Method::Pact(k)
    } else if let Some(k) = any.downcast_ref::<DoReFa>() {
        Method::DoReFa(k)
    } else if let Some(k) = any.downcast_ref::<N2uqAct>() {
        if !(1..=N2UQ_MAXN).contains(&k.n()) {
            bail!("{}: the CUDA kernels support 2..=8 bits, got {}", k.name(), k.bits);
        }
        Method::N2uqAct(k)
    } else if let Some(k) = any.downcast_ref::<N2uqWeight>() {
        Method::N2uqWeight(k)
    } else if let Some(k) = any.downcast_ref::<MinMax>() {
        Method::MinMax(k)
    } else {
        bail!("{}: no CUDA implementation for this quantizer ({k:?})", k.name())
    };
    Ok(m)
}

/// Number of levels minus one, n = 2^b − 1, as f32 (as the CPU kernels compute it).
fn levels(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// One call's inputs.
struct Job<'a> {
    dev: &'a CudaDevice,
    x: CudaView<'a, f32>,
    p: CudaView<'a, f32>,
    groups: usize,
    /// Elements per group.
    gl: usize,
}

impl<'a> Job<'a> {
    fn new<K: Kernel>(k: &K, s1: &'a CudaStorage, l1: &Layout, s2: &'a CudaStorage, l2: &Layout, groups: usize) -> Result<Self> {
        let name = k.name();
        let x = view(s1, l1, name, "input")?;
        let n = x.len();
        if groups == 0 || n % groups != 0 {
            bail!("{name}: {n} elements cannot be split into {groups} groups");
        }
        if groups > MAX_GROUPS {
            bail!("{name}: the CUDA kernels support at most {MAX_GROUPS} groups, got {groups}");
        }
        // Kernels without parameters get a one-element dummy: never read.
        let p = view(s2, l2, name, "parameters")?;
        let np = k.num_params();
        if np > 0 && p.len() != groups * np {
            bail!("{name}: {} parameters given for {groups} group(s) of {np}", p.len());
        }
        Ok(Self { dev: &s1.device, x, p, groups, gl: n / groups })
    }

    fn n(&self) -> usize {
        self.gl * self.groups
    }

    fn grid(&self, threads: u32, items: usize) -> (u32, LaunchConfig) {
        let bpg = blocks_per_group(self.gl, threads, items);
        (bpg, grid(bpg, self.groups, threads))
    }

    /// Per-group (min, max), NaN-propagating: `stats[2g..2g+2]`.
    fn min_max(&self) -> Result<CudaSlice<f32>> {
        let dev = self.dev;
        let (bpg, cfg) = self.grid(THREADS, ITEMS_PER_THREAD);
        let gl = self.gl as u64;
        let mut part = dev.alloc_zeros::<f32>(self.groups * 2 * bpg as usize)?;
        let mut stats = dev.alloc_zeros::<f32>(self.groups * 2)?;
        // q2_minmax_partial(const float* x, float* part, u64 gl)
        launch!(dev, "q2_minmax_partial", cfg; &self.x, &mut part, &gl);
        // q2_minmax_reduce(const float* part, float* stats, unsigned bpg): one warp per group
        launch!(dev, "q2_minmax_reduce", grid(1, self.groups, 32); &part, &mut stats, &bpg);
        Ok(stats)
    }

    /// N2UQ weights' per-group scale c = γ·mean|w|: `stats[g]`.
    fn n2uq_weight_scale(&self, k: &N2uqWeight) -> Result<CudaSlice<f32>> {
        let dev = self.dev;
        let (bpg, cfg) = self.grid(THREADS, ITEMS_PER_THREAD);
        let gl = self.gl as u64;
        let gamma = (((1u32 << k.bits) - 1) as f64 / (1u32 << (k.bits - 1)) as f64) as f32;
        let mut part = dev.alloc_zeros::<f64>(self.groups * bpg as usize)?;
        let mut stats = dev.alloc_zeros::<f32>(self.groups)?;
        // q2_absmean_partial(const float* x, double* part, u64 gl)
        launch!(dev, "q2_absmean_partial", cfg; &self.x, &mut part, &gl);
        // q2_n2uq_weight_scale(const double* part, float* stats, unsigned bpg, u64 gl, float gamma)
        launch!(dev, "q2_n2uq_weight_scale", grid(1, self.groups, 32); &part, &mut stats, &bpg, &gl, &gamma);
        Ok(stats)
    }

    fn forward(&self, m: &Method<'_>, y: &mut CudaSlice<f32>) -> Result<()> {
        let dev = self.dev;
        let (_, cfg) = self.grid(THREADS, ITEMS_PER_THREAD);
        let gl = self.gl as u64;
        let (x, p) = (&self.x, &self.p);
        match *m {
            Method::Lsq(k) => {
                let (qn, qp) = k.range();
                // q2_lsq_fwd(x, p, y, u64 gl, float qn, float qp)
                launch!(dev, "q2_lsq_fwd", cfg; x, p, y, &gl, &qn, &qp);
            }
            Method::LsqPlus(k) => {
                let (nlo, pmax) = k.range();
                let np = k.num_params() as u32;
                // q2_lsq_plus_fwd(x, p, y, u64 gl, unsigned np, float nlo, float pmax)
                launch!(dev, "q2_lsq_plus_fwd", cfg; x, p, y, &gl, &np, &nlo, &pmax);
            }
            Method::Pact(k) => {
                let n = levels(k.bits);
                // q2_pact_fwd(x, p, y, u64 gl, float n)
                launch!(dev, "q2_pact_fwd", cfg; x, p, y, &gl, &n);
            }
            Method::DoReFa(k) => {
                let stats = self.min_max()?;
                let n = levels(k.bits);
                // q2_dorefa_fwd(x, const float* stats, y, u64 gl, float n)
                launch!(dev, "q2_dorefa_fwd", cfg; x, &stats, y, &gl, &n);
            }
            Method::N2uqAct(k) => {
                let (n, delta) = (k.n() as u32, k.delta());
                // q2_n2uq_act_fwd(x, p, y, u64 gl, unsigned n, float delta)
                launch!(dev, "q2_n2uq_act_fwd", cfg; x, p, y, &gl, &n, &delta);
            }
            Method::N2uqWeight(k) => {
                let stats = self.n2uq_weight_scale(k)?;
                let h = levels(k.bits) / 2.0;
                // q2_n2uq_weight_fwd(x, const float* stats, y, u64 gl, float h)
                launch!(dev, "q2_n2uq_weight_fwd", cfg; x, &stats, y, &gl, &h);
            }
            Method::MinMax(k) => {
                let stats = self.min_max()?;
                let (n, signed) = (levels(k.bits), k.signed as i32);
                // q2_minmax_fwd(x, const float* stats, y, u64 gl, float n, int is_signed)
                launch!(dev, "q2_minmax_fwd", cfg; x, &stats, y, &gl, &n, &signed);
            }
        }
        Ok(())
    }

    /// Writes `[dL/dx | dL/dparams]` into `out` (n + groups·np elements).
    fn backward(&self, m: &Method<'_>, g: &CudaView<'_, f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        let dev = self.dev;
        let groups = self.groups;
        let (bpg, cfg) = self.grid(THREADS, ITEMS_PER_THREAD);
        let gl = self.gl as u64;
        let off = self.n() as u64;
        let (x, p) = (&self.x, &self.p);
        // dL/dparams of LSQ, LSQ+, PACT: (float)(Σ accumulator a · scale), one warp per parameter.
        let scale_finish = |part: &CudaSlice<f64>, out: &mut CudaSlice<f32>, na: u32, np: u32, scale: f64| -> Result<()> {
            // q2_scale_finish(const double* part, float* out, u64 off, unsigned bpg, unsigned na,
            //                 unsigned np, double scale)
            launch!(dev, "q2_scale_finish", grid(1, groups, 32 * np); part, out, &off, &bpg, &na, &np, &scale);
            Ok(())
        };
        match *m {
            Method::Lsq(k) => {
                let (qn, qp) = k.range();
                let mut part = dev.alloc_zeros::<f64>(groups * bpg as usize)?;
                // q2_lsq_bwd(x, p, g, out, double* part, u64 gl, float qn, float qp)
                launch!(dev, "q2_lsq_bwd", cfg; x, p, g, &mut *out, &mut part, &gl, &qn, &qp);
                scale_finish(&part, out, 1, 1, grad_scale(self.gl, qp))?;
            }
            Method::LsqPlus(k) => {
                let (nlo, pmax) = k.range();
                let np = k.num_params() as u32;
                let mut part = dev.alloc_zeros::<f64>(groups * 2 * bpg as usize)?;
                // q2_lsq_plus_bwd(x, p, g, out, double* part, u64 gl, unsigned np, float nlo, float pmax)
                launch!(dev, "q2_lsq_plus_bwd", cfg; x, p, g, &mut *out, &mut part, &gl, &np, &nlo, &pmax);
                scale_finish(&part, out, 2, np, grad_scale(self.gl, pmax))?;
            }
            Method::Pact(k) => {
                let n = levels(k.bits);
                let mut part = dev.alloc_zeros::<f64>(groups * bpg as usize)?;
                // q2_pact_bwd(x, p, g, out, double* part, u64 gl, float n)
                launch!(dev, "q2_pact_bwd", cfg; x, p, g, &mut *out, &mut part, &gl, &n);
                scale_finish(&part, out, 1, 1, 1.0)?;
            }
            Method::DoReFa(k) => {
                let stats = self.min_max()?;
                let n = levels(k.bits);
                let mut part = dev.alloc_zeros::<f64>(groups * bpg as usize)?;
                let mut tie_count = dev.alloc_zeros::<u32>(groups)?;
                let mut ties = dev.alloc_zeros::<u64>(groups * TIE_CAP)?;
                // q2_dorefa_bwd(x, const float* stats, g, out, double* part, unsigned* tie_count,
                //               u64* ties, u64 gl, float n)
                launch!(dev, "q2_dorefa_bwd", cfg; x, &stats, g, &mut *out, &mut part, &mut tie_count, &mut ties, &gl, &n);
                // q2_dorefa_finish(x, const float* stats, const double* part, const unsigned* tie_count,
                //                  const u64* ties, float* out, u64 gl, unsigned bpg)
                launch!(dev, "q2_dorefa_finish", grid(1, groups, THREADS); x, &stats, &part, &tie_count, &ties, &mut *out, &gl, &bpg);
            }
            Method::N2uqAct(k) => {
                let (n, delta) = (k.n() as u32, k.delta());
                let na = 1 + 3 * n;
                let (bpg, cfg) = self.grid(N2UQ_BWD_THREADS, 2 * ITEMS_PER_THREAD);
                let mut part = dev.alloc_zeros::<f64>(groups * na as usize * bpg as usize)?;
                let mut red = dev.alloc_zeros::<f64>(groups * na as usize)?;
                // q2_n2uq_act_bwd(x, p, g, out, double* part, u64 gl, unsigned n, float delta);
                // exactly N2UQ_BWD_THREADS threads per block
                launch!(dev, "q2_n2uq_act_bwd", cfg; x, p, g, &mut *out, &mut part, &gl, &n, &delta);
                // q2_reduce_partials(const double* part, double* red, unsigned bpg, unsigned na):
                // one warp per accumulator, 8 per block
                let warps = THREADS / 32;
                launch!(dev, "q2_reduce_partials", grid(na.div_ceil(warps), groups, THREADS); &part, &mut red, &bpg, &na);
                // q2_n2uq_act_finish(p, const double* red, float* out, u64 off, unsigned n, float delta)
                launch!(dev, "q2_n2uq_act_finish", grid(1, groups, THREADS); p, &red, &mut *out, &off, &n, &delta);
            }
            Method::N2uqWeight(k) => {
                let stats = self.n2uq_weight_scale(k)?;
                // q2_n2uq_weight_bwd(g, const float* stats, float* out, u64 gl)
                launch!(dev, "q2_n2uq_weight_bwd", cfg; g, &stats, &mut *out, &gl);
            }
            Method::MinMax(_) => {
                // Straight through everywhere: dL/dx = g (out has exactly n elements).
                dev.memcpy_dtod(g, out)?;
            }
        }
        Ok(())
    }
}

/// y = Q(x) for `x` (s1, l1) split into `groups` groups with parameters (s2, l2); same shape as x.
pub fn forward<K: Kernel>(k: &K, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, groups: usize) -> Result<CudaStorage> {
    let m = method(k)?;
    let job = Job::new(k, s1, l1, s2, l2, groups)?;
    let mut y = job.dev.alloc_zeros::<f32>(job.n())?;
    if job.gl > 0 {
        job.forward(&m, &mut y)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, job.dev.clone()))
}

/// The fused backward: for x (s1, l1), parameters (s2, l2) and dL/dy (s3, l3), returns one f32
/// buffer `[dL/dx (numel(x)) | dL/dparams (groups × num_params)]`.
#[allow(clippy::too_many_arguments)]
pub fn backward<K: Kernel>(
    k: &K,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    groups: usize,
) -> Result<CudaStorage> {
    let m = method(k)?;
    let job = Job::new(k, s1, l1, s2, l2, groups)?;
    let g = view(s3, l3, k.name(), "output gradient")?;
    if g.len() != job.n() {
        bail!("{}: output gradient has {} elements, input {}", k.name(), g.len(), job.n());
    }
    let mut out = job.dev.alloc_zeros::<f32>(job.n() + groups * k.num_params())?;
    if job.gl > 0 {
        job.backward(&m, &g, &mut out)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, job.dev.clone()))
}
