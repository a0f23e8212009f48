// q2 fake quantizers on CUDA: the device side of crates/quant/src/cuda.rs.
//
// Semantics: docs/QUANTIZERS.md; every kernel mirrors the CPU kernel in crates/quant/src/methods/
// operation for operation, so the forward results are bit-identical to the CPU's wherever the
// arithmetic is the same (everything but tanhf, which may differ from the host's by an ulp).
//
// Build: crates/quant/build.rs runs `nvcc --ptx -arch=compute_XX -O3 --fmad=false`. `--fmad=false`
// matters: the CPU (Rust) never fuses a*b + c into an FMA, so neither may we. The expressions
// where a fusion could happen also use the __f*_rn intrinsics, which are never fused, so the
// results stay exact even if the flag is dropped. Division `/` is IEEE (no fast math).
//
// Layout conventions (shared with cuda.rs):
// - x, y, g: `groups` equal contiguous groups of `gl` elements; group = blockIdx.y.
// - grid (blocks_per_group, groups); each block strides over its group (grid-stride loop).
// - params p: a row of `np` floats per group, in the kernel's param_layout order.
// - out (backward): one buffer [dL/dx (groups*gl) | dL/dparams (groups*np)]; `off` = groups*gl.
// - per-block partial sums are f64, accumulator-major: part[(group*na + a)*bpg + block], so the
//   finishing kernels read each accumulator's partials contiguously (coalesced). Every reduction
//   runs in a fixed order (grid-stride loop, fixed shuffle trees, blocks in index order): the
//   results are deterministic for a given tensor size, whatever the scheduling.

typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
#define N2UQ_EPS 1e-3f
#define RNE_MAGIC 12582912.0f  // 1.5 * 2^23
#define TIE_CAP 1024           // tied DoReFa maxima recorded per group (more: rescan the group)
#define N2UQ_MAXN 255          // n = 2^b - 1 for b <= 8
#define N2UQ_BWD_THREADS 128   // q2_n2uq_act_bwd's block size (per-warp accumulators in shared)
#define N2UQ_BWD_WARPS (N2UQ_BWD_THREADS / 32)

// ------------------------------------------------------------------------------------------------
// helpers

// Round half to even exactly as the CPU's `kernel::rne` ((v + 1.5*2^23) - 1.5*2^23): identical to
// rintf for |v| < 2^22 except that it gives +0 (not -0) for small negatives, as the CPU does.
// __fadd_rn/__fsub_rn are never contracted into FMAs nor reassociated.
__device__ __forceinline__ float rne(float v) { return __fsub_rn(__fadd_rn(v, RNE_MAGIC), RNE_MAGIC); }

// NaN-propagating clamp (as the CPU's `kernel::clamp` and torch.clamp).
__device__ __forceinline__ float clampf_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

__device__ __forceinline__ bool is_nan(float v) { return v != v; }
__device__ __forceinline__ float f_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float f_nan() { return __int_as_float(0x7fffffff); }

// Index of this block's partial for accumulator `a` (of `na`) in the accumulator-major layout.
__device__ __forceinline__ u64 partial_index(unsigned na, unsigned a) {
  return ((u64)blockIdx.y * na + a) * gridDim.x + blockIdx.x;
}

// Sum over a warp; the result is valid in lane 0 (fixed shuffle tree: deterministic).
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); valid in thread 0. Every thread of
// the block must call it (it synchronises).
__device__ double block_sum(double v) {
  __shared__ double sh[32];
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = threadIdx.x < nw ? sh[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum(v);
  return v;
}

// (lo, hi) with NaN propagation as the CPU's `par_min_max`: any NaN makes both NaN.
__device__ __forceinline__ void mm_merge(float& lo, float& hi, float lo2, float hi2) {
  if (is_nan(lo) || is_nan(lo2)) {
    lo = f_nan();
    hi = f_nan();
  } else {
    lo = fminf(lo, lo2);
    hi = fmaxf(hi, hi2);
  }
}

__device__ __forceinline__ void warp_minmax(float& lo, float& hi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float lo2 = __shfl_down_sync(FULL_MASK, lo, o);
    const float hi2 = __shfl_down_sync(FULL_MASK, hi, o);
    mm_merge(lo, hi, lo2, hi2);
  }
}

// Sum of run[0..len) by one whole warp: lane l adds run[l], run[l+32], ... in order, then the
// fixed shuffle tree. Valid in lane 0.
__device__ __forceinline__ double warp_sum_run(const double* run, unsigned len) {
  double s = 0.0;
  for (unsigned b = threadIdx.x & 31; b < len; b += 32) s += run[b];
  return warp_sum(s);
}

#define GROUP_LOOP(i) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < gl; i += (u64)gridDim.x * blockDim.x)

// ------------------------------------------------------------------------------------------------
// LSQ: y = rne(clamp(x/s, -Qn, Qp))*s;  dL/ds = gs * sum g*d

extern "C" __global__ void q2_lsq_fwd(const float* __restrict__ x, const float* __restrict__ p, float* __restrict__ y,
                                      u64 gl, float qn, float qp) {
  const float s = p[blockIdx.y];
  const u64 base = (u64)blockIdx.y * gl;
  GROUP_LOOP(i) { y[base + i] = __fmul_rn(rne(clampf_nan(x[base + i] / s, -qn, qp)), s); }
}

// part: na = 1 (sum g*d).
extern "C" __global__ void q2_lsq_bwd(const float* __restrict__ x, const float* __restrict__ p, const float* __restrict__ g,
                                      float* __restrict__ out, double* __restrict__ part, u64 gl, float qn, float qp) {
  const float s = p[blockIdx.y];
  const u64 base = (u64)blockIdx.y * gl;
  double acc = 0.0;
  GROUP_LOOP(i) {
    const float v = x[base + i] / s, gv = g[base + i];
    const bool inside = v > -qn && v < qp;
    const float d = inside ? rne(v) - v : (v <= -qn ? -qn : qp);
    out[base + i] = inside ? gv : 0.0f;
    acc += (double)(gv * d);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[partial_index(1, 0)] = acc;
}

// ------------------------------------------------------------------------------------------------
// LSQ+: y = rne(clamp((x-beta)/s, n, p))*s + beta; params [s] (np = 1, beta = 0) or [s, beta].

extern "C" __global__ void q2_lsq_plus_fwd(const float* __restrict__ x, const float* __restrict__ p, float* __restrict__ y,
                                           u64 gl, unsigned np, float nlo, float pmax) {
  const float s = p[(u64)blockIdx.y * np];
  const float beta = np > 1 ? p[(u64)blockIdx.y * np + 1] : 0.0f;
  const u64 base = (u64)blockIdx.y * gl;
  GROUP_LOOP(i) {
    const float q = rne(clampf_nan((x[base + i] - beta) / s, nlo, pmax));
    y[base + i] = __fadd_rn(__fmul_rn(q, s), beta);
  }
}

// part: na = 2 (sum g*d, sum g*[outside]).
extern "C" __global__ void q2_lsq_plus_bwd(const float* __restrict__ x, const float* __restrict__ p, const float* __restrict__ g,
                                           float* __restrict__ out, double* __restrict__ part, u64 gl, unsigned np, float nlo,
                                           float pmax) {
  const float s = p[(u64)blockIdx.y * np];
  const float beta = np > 1 ? p[(u64)blockIdx.y * np + 1] : 0.0f;
  const u64 base = (u64)blockIdx.y * gl;
  double acc_s = 0.0, acc_b = 0.0;
  GROUP_LOOP(i) {
    const float v = (x[base + i] - beta) / s, gv = g[base + i];
    const bool inside = v > nlo && v < pmax;
    const float d = inside ? rne(v) - v : (v <= nlo ? nlo : pmax);
    out[base + i] = inside ? gv : 0.0f;
    acc_s += (double)(gv * d);
    acc_b += (double)(inside ? 0.0f : gv);
  }
  acc_s = block_sum(acc_s);
  acc_b = block_sum(acc_b);
  if (threadIdx.x == 0) {
    part[partial_index(2, 0)] = acc_s;
    part[partial_index(2, 1)] = acc_b;
  }
}

// ------------------------------------------------------------------------------------------------
// PACT: sc = alpha/n; y = rne(clamp(x/sc, 0, n))*sc; dL/dalpha = sum g*[v >= n].

extern "C" __global__ void q2_pact_fwd(const float* __restrict__ x, const float* __restrict__ p, float* __restrict__ y,
                                       u64 gl, float n) {
  const float sc = p[blockIdx.y] / n;
  const u64 base = (u64)blockIdx.y * gl;
  GROUP_LOOP(i) { y[base + i] = __fmul_rn(rne(clampf_nan(x[base + i] / sc, 0.0f, n)), sc); }
}

// part: na = 1.
extern "C" __global__ void q2_pact_bwd(const float* __restrict__ x, const float* __restrict__ p, const float* __restrict__ g,
                                       float* __restrict__ out, double* __restrict__ part, u64 gl, float n) {
  const float sc = p[blockIdx.y] / n;
  const u64 base = (u64)blockIdx.y * gl;
  double acc = 0.0;
  GROUP_LOOP(i) {
    const float v = x[base + i] / sc, gv = g[base + i];
    out[base + i] = (v > 0.0f && v < n) ? gv : 0.0f;
    acc += (double)(v >= n ? gv : 0.0f);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[partial_index(1, 0)] = acc;
}

// LSQ, LSQ+, PACT: dL/dparams[a] = (float)(sum of accumulator a * scale) for a < np.
// Grid (1, groups), 32*np threads or more: warp a reduces accumulator a.
extern "C" __global__ void q2_scale_finish(const double* __restrict__ part, float* __restrict__ out, u64 off, unsigned bpg,
                                           unsigned na, unsigned np, double scale) {
  const unsigned a = threadIdx.x >> 5;
  if (a >= np || a >= na) return;
  const double s = warp_sum_run(part + ((u64)blockIdx.y * na + a) * bpg, bpg);
  if ((threadIdx.x & 31) == 0) out[off + (u64)blockIdx.y * np + a] = (float)(s * scale);
}

// ------------------------------------------------------------------------------------------------
// Group statistics: (min, max) for MinMax and DoReFa, mean|x| for N2UQ weights.

// part (float): na = 2 (lo, hi).
extern "C" __global__ void q2_minmax_partial(const float* __restrict__ x, float* __restrict__ part, u64 gl) {
  __shared__ float sh_lo[32], sh_hi[32];
  const u64 base = (u64)blockIdx.y * gl;
  float lo = f_inf(), hi = -f_inf();
  GROUP_LOOP(i) {
    const float v = x[base + i];
    mm_merge(lo, hi, v, v);
  }
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  warp_minmax(lo, hi);
  if (lane == 0) {
    sh_lo[warp] = lo;
    sh_hi[warp] = hi;
  }
  __syncthreads();
  if (warp == 0) {
    lo = lane < nw ? sh_lo[lane] : f_inf();
    hi = lane < nw ? sh_hi[lane] : -f_inf();
    warp_minmax(lo, hi);
    if (lane == 0) {
      part[((u64)blockIdx.y * 2 + 0) * gridDim.x + blockIdx.x] = lo;
      part[((u64)blockIdx.y * 2 + 1) * gridDim.x + blockIdx.x] = hi;
    }
  }
}

// Grid (1, groups), 32 threads: stats[2*group + {0, 1}] = (min, max) of the group.
extern "C" __global__ void q2_minmax_reduce(const float* __restrict__ part, float* __restrict__ stats, unsigned bpg) {
  const float* lo_run = part + ((u64)blockIdx.y * 2 + 0) * bpg;
  const float* hi_run = part + ((u64)blockIdx.y * 2 + 1) * bpg;
  float lo = f_inf(), hi = -f_inf();
  for (unsigned b = threadIdx.x; b < bpg; b += blockDim.x) mm_merge(lo, hi, lo_run[b], hi_run[b]);
  warp_minmax(lo, hi);
  if (threadIdx.x == 0) {
    stats[2 * (u64)blockIdx.y] = lo;
    stats[2 * (u64)blockIdx.y + 1] = hi;
  }
}

// part (double): na = 1 (sum |x|).
extern "C" __global__ void q2_absmean_partial(const float* __restrict__ x, double* __restrict__ part, u64 gl) {
  const u64 base = (u64)blockIdx.y * gl;
  double acc = 0.0;
  GROUP_LOOP(i) { acc += (double)fabsf(x[base + i]); }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[partial_index(1, 0)] = acc;
}

// Grid (1, groups), 32 threads: stats[group] = c = gamma * (float)(sum|x| / gl) (N2uqWeight::scale).
extern "C" __global__ void q2_n2uq_weight_scale(const double* __restrict__ part, float* __restrict__ stats, unsigned bpg, u64 gl,
                                                float gamma) {
  const double s = warp_sum_run(part + (u64)blockIdx.y * bpg, bpg);
  if (threadIdx.x == 0) stats[blockIdx.y] = __fmul_rn(gamma, (float)(s / (double)gl));
}

// ------------------------------------------------------------------------------------------------
// MinMax (no parameters): statistics from q2_minmax_reduce; dL/dx = g (a device copy, no kernel).

extern "C" __global__ void q2_minmax_fwd(const float* __restrict__ x, const float* __restrict__ stats, float* __restrict__ y,
                                         u64 gl, float n, int is_signed) {
  const float lo = stats[2 * (u64)blockIdx.y], hi = stats[2 * (u64)blockIdx.y + 1];
  const u64 base = (u64)blockIdx.y * gl;
  if (is_signed) {
    const float m = fmaxf(fabsf(lo), fabsf(hi));
    if (m == 0.0f) {
      GROUP_LOOP(i) { y[base + i] = 0.0f; }
    } else {
      GROUP_LOOP(i) {
        const float r = x[base + i] / (2.0f * m) + 0.5f;
        const float q = rne(__fmul_rn(r, n)) / n;
        y[base + i] = m * (__fmul_rn(2.0f, q) - 1.0f);
      }
    }
  } else {
    const float sc = (hi - lo) / n;
    if (sc == 0.0f) {
      GROUP_LOOP(i) { y[base + i] = x[base + i]; }
    } else {
      GROUP_LOOP(i) { y[base + i] = __fadd_rn(__fmul_rn(rne((x[base + i] - lo) / sc), sc), lo); }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// DoReFa weights (no parameters): m = tanh(max|w|) from q2_minmax_reduce's statistics.

__device__ __forceinline__ float dorefa_m(const float* stats) {
  return tanhf(fmaxf(fabsf(stats[2 * (u64)blockIdx.y]), fabsf(stats[2 * (u64)blockIdx.y + 1])));
}

// q = rne((t/(2m) + 0.5)*n)/n (DoReFa::quant).
__device__ __forceinline__ float dorefa_q(float t, float m, float n) {
  const float r = t / (2.0f * m) + 0.5f;
  return rne(__fmul_rn(r, n)) / n;
}

extern "C" __global__ void q2_dorefa_fwd(const float* __restrict__ x, const float* __restrict__ stats, float* __restrict__ y,
                                         u64 gl, float n) {
  const float m = dorefa_m(stats);
  const u64 base = (u64)blockIdx.y * gl;
  if (m == 0.0f) {
    GROUP_LOOP(i) { y[base + i] = 0.0f; }
  } else {
    GROUP_LOOP(i) { y[base + i] = m * (__fmul_rn(2.0f, dorefa_q(tanhf(x[base + i]), m, n)) - 1.0f); }
  }
}

// dL/dx = g(1 - t^2) everywhere; part: na = 1 (sum g*((2q - 1) - t/m)); the tied maxima
// (|t| == m) are counted in tie_count[group] and their indices listed in ties[group*TIE_CAP ..]
// (the first TIE_CAP of them, in any order: each correction only depends on its own element).
extern "C" __global__ void q2_dorefa_bwd(const float* __restrict__ x, const float* __restrict__ stats, const float* __restrict__ g,
                                         float* __restrict__ out, double* __restrict__ part, unsigned* __restrict__ tie_count,
                                         u64* __restrict__ ties, u64 gl, float n) {
  const float m = dorefa_m(stats);
  const u64 base = (u64)blockIdx.y * gl;
  double acc = 0.0;
  GROUP_LOOP(i) {
    const float t = tanhf(x[base + i]), gv = g[base + i];
    out[base + i] = gv * (1.0f - __fmul_rn(t, t));
    if (m == 0.0f) continue;
    const float q = dorefa_q(t, m, n);
    acc += (double)(gv * ((__fmul_rn(2.0f, q) - 1.0f) - t / m));
    if (fabsf(t) == m) {
      const unsigned k = atomicAdd(&tie_count[blockIdx.y], 1u);
      if (k < TIE_CAP) ties[(u64)blockIdx.y * TIE_CAP + k] = i;
    }
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[partial_index(1, 0)] = acc;
}

// Grid (1, groups), any multiple of 32 threads: the gradient through m, sign(t)*S/count*(1 - t^2),
// added to each tied maximum (DoReFa::finish), S the reduced accumulator.
extern "C" __global__ void q2_dorefa_finish(const float* __restrict__ x, const float* __restrict__ stats,
                                            const double* __restrict__ part, const unsigned* __restrict__ tie_count,
                                            const u64* __restrict__ ties, float* __restrict__ out, u64 gl, unsigned bpg) {
  __shared__ double sh_share;
  const float m = dorefa_m(stats);
  const unsigned count = tie_count[blockIdx.y];
  if (m == 0.0f || count == 0) return;  // uniform over the block
  if (threadIdx.x < 32) {
    const double s = warp_sum_run(part + (u64)blockIdx.y * bpg, bpg);
    if (threadIdx.x == 0) sh_share = s / (double)count;
  }
  __syncthreads();
  const double share = sh_share;
  const u64 base = (u64)blockIdx.y * gl;
  if (count <= TIE_CAP) {
    for (unsigned k = threadIdx.x; k < count; k += blockDim.x) {
      const u64 i = ties[(u64)blockIdx.y * TIE_CAP + k];
      const float t = tanhf(x[base + i]);
      const double sign = t > 0.0f ? 1.0 : -1.0;  // t != 0: |t| == m != 0
      out[base + i] += (float)(sign * share * (1.0 - (double)__fmul_rn(t, t)));
    }
  } else {
    // More ties than recorded: find them again (same tanhf, same m, so the same elements).
    for (u64 i = threadIdx.x; i < gl; i += blockDim.x) {
      const float t = tanhf(x[base + i]);
      if (fabsf(t) != m) continue;
      const double sign = t > 0.0f ? 1.0 : -1.0;
      out[base + i] += (float)(sign * share * (1.0 - (double)__fmul_rn(t, t)));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// N2UQ weights (no parameters): c from q2_n2uq_weight_scale.

extern "C" __global__ void q2_n2uq_weight_fwd(const float* __restrict__ x, const float* __restrict__ stats, float* __restrict__ y,
                                              u64 gl, float h) {
  const float c = stats[blockIdx.y];
  const u64 base = (u64)blockIdx.y * gl;
  if (c == 0.0f) {
    GROUP_LOOP(i) { y[base + i] = 0.0f; }
  } else {
    GROUP_LOOP(i) {
      const float wc = clampf_nan(x[base + i] / c, -1.0f, 1.0f);
      y[base + i] = c * (rne(__fmul_rn(wc + 1.0f, h)) / h - 1.0f);
    }
  }
}

extern "C" __global__ void q2_n2uq_weight_bwd(const float* __restrict__ g, const float* __restrict__ stats, float* __restrict__ out,
                                              u64 gl) {
  const float c = stats[blockIdx.y];
  const u64 base = (u64)blockIdx.y * gl;
  GROUP_LOOP(i) { out[base + i] = c == 0.0f ? 0.0f : g[base + i] / c; }
}

// ------------------------------------------------------------------------------------------------
// N2UQ activations: params [start, a_0..a_{n-1}, scale1, scale2] per group.

// Builds the clamped intervals ap, forward thresholds T (n), levels L (n+1) and backward bounds
// B (n+1) in shared memory with the CPU's sequential f32 additions (N2uqAct::prepare): three
// independent chains, one per warp (needs blockDim.x >= 65). Ends with __syncthreads.
__device__ void n2uq_tables(const float* __restrict__ prow, unsigned n, float delta, float* ap, float* T, float* L, float* B) {
  for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
    const float a = prow[1 + i];
    ap[i] = a > N2UQ_EPS ? a : N2UQ_EPS;
  }
  __syncthreads();
  const float start = prow[0];
  if (threadIdx.x == 0) {
    float t = start + ap[0] / 2.0f;
    T[0] = t;
    for (unsigned i = 1; i < n; i++) {
      t = t + (ap[i - 1] / 2.0f + ap[i] / 2.0f);
      T[i] = t;
    }
  } else if (threadIdx.x == 32) {
    float l = 0.0f;
    L[0] = l;
    for (unsigned i = 0; i < n; i++) {
      l = l + delta;
      L[i + 1] = l;
    }
  } else if (threadIdx.x == 64) {
    float b = start + 0.0f;
    B[0] = b;
    for (unsigned i = 0; i < n; i++) {
      b = b + ap[i];
      B[i + 1] = b;
    }
  }
  __syncthreads();
}

// #{i < len : v[i] < x} for sorted (non-decreasing) v; 0 for NaN x (as the CPU's Breaks).
__device__ __forceinline__ unsigned count_less(const float* v, unsigned len, float x) {
  unsigned lo = 0, hi = len;
  while (lo < hi) {
    const unsigned mid = (lo + hi) >> 1;
    if (v[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// y = L[#{i : x*scale1 > T_i}] * scale2. Needs blockDim.x >= 65.
extern "C" __global__ void q2_n2uq_act_fwd(const float* __restrict__ x, const float* __restrict__ p, float* __restrict__ y, u64 gl,
                                           unsigned n, float delta) {
  __shared__ float ap[N2UQ_MAXN + 1], T[N2UQ_MAXN + 1], L[N2UQ_MAXN + 1], B[N2UQ_MAXN + 1];
  const float* prow = p + (u64)blockIdx.y * (n + 3);
  n2uq_tables(prow, n, delta, ap, T, L, B);
  const float s1 = prow[n + 1], s2 = prow[n + 2];
  const u64 base = (u64)blockIdx.y * gl;
  GROUP_LOOP(i) { y[base + i] = L[count_less(T, n, x[base + i] * s1)] * s2; }
}

// dL/dx and per-block partials of the na = 1 + 3n accumulators
//   [sum g*L_k, then per segment i: sum g, sum g*(x' - B_i), sum g*x]   (N2uqAct::backward).
// Segment sums are deterministic without atomics: each warp owns a row of shared accumulators;
// at every step the lanes with the same segment are summed in lane order by that segment's
// lowest lane, which alone adds into the warp's row. Exactly N2UQ_BWD_THREADS threads per block.
extern "C" __global__ void __launch_bounds__(N2UQ_BWD_THREADS)
    q2_n2uq_act_bwd(const float* __restrict__ x, const float* __restrict__ p, const float* __restrict__ g, float* __restrict__ out,
                    double* __restrict__ part, u64 gl, unsigned n, float delta) {
  __shared__ float ap[N2UQ_MAXN + 1], T[N2UQ_MAXN + 1], L[N2UQ_MAXN + 1], B[N2UQ_MAXN + 1];
  __shared__ double wacc[N2UQ_BWD_WARPS][3][N2UQ_MAXN];
  if (blockDim.x != N2UQ_BWD_THREADS) __trap();
  for (unsigned k = threadIdx.x; k < N2UQ_BWD_WARPS * 3 * N2UQ_MAXN; k += blockDim.x) (&wacc[0][0][0])[k] = 0.0;
  const float* prow = p + (u64)blockIdx.y * (n + 3);
  n2uq_tables(prow, n, delta, ap, T, L, B);  // synchronises, which also covers the zeroing
  const float s1 = prow[n + 1], s2 = prow[n + 2];
  const float bottom = B[0], top = B[n];
  const u64 base = (u64)blockIdx.y * gl;
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double s_level = 0.0;
  // Warp-uniform loop: every lane takes part in the shuffles, in range or not.
  for (u64 i0 = (u64)blockIdx.x * blockDim.x + warp * 32; i0 < gl; i0 += (u64)gridDim.x * blockDim.x) {
    const u64 i = i0 + lane;
    int seg = -1;
    float cg = 0.0f, cd = 0.0f, cx = 0.0f;
    if (i < gl) {
      const float xv = x[base + i], gv = g[base + i];
      const float xs = xv * s1;
      s_level += (double)(gv * L[count_less(T, n, xs)]);
      float gx = 0.0f;
      if (xs > bottom && !(xs >= top)) {
        const unsigned k = count_less(B, n + 1, xs) - 1;  // B_k < x' <= B_{k+1}, 0 <= k < n
        const float slope = delta / ap[k];
        gx = gv * s2 * s1 * slope;
        seg = (int)k;
        cg = gv;
        cd = gv * (xs - B[k]);
        cx = gv * xv;
      }
      out[base + i] = gx;
    }
    if (__any_sync(FULL_MASK, seg >= 0)) {
      const unsigned peers = __match_any_sync(FULL_MASK, seg);
      double sg = 0.0, sd = 0.0, sx = 0.0;
      for (int j = 0; j < 32; j++) {
        const float vg = __shfl_sync(FULL_MASK, cg, j);
        const float vd = __shfl_sync(FULL_MASK, cd, j);
        const float vx = __shfl_sync(FULL_MASK, cx, j);
        if ((peers >> j) & 1u) {
          sg += (double)vg;
          sd += (double)vd;
          sx += (double)vx;
        }
      }
      if (seg >= 0 && lane == (unsigned)(__ffs(peers) - 1)) {
        wacc[warp][0][seg] += sg;
        wacc[warp][1][seg] += sd;
        wacc[warp][2][seg] += sx;
      }
    }
  }
  s_level = block_sum(s_level);  // synchronises: the warps' rows are complete after it
  const unsigned na = 1 + 3 * n;
  if (threadIdx.x == 0) part[partial_index(na, 0)] = s_level;
  for (unsigned a = threadIdx.x; a < 3 * n; a += blockDim.x) {
    const unsigned k = a / n, s = a % n;
    double v = wacc[0][k][s];
    for (unsigned w = 1; w < N2UQ_BWD_WARPS; w++) v += wacc[w][k][s];
    part[partial_index(na, 1 + a)] = v;
  }
}

// Grid (ceil(na/8), groups), 256 threads: red[group*na + a] = sum over blocks of accumulator a,
// one warp per accumulator.
extern "C" __global__ void q2_reduce_partials(const double* __restrict__ part, double* __restrict__ red, unsigned bpg, unsigned na) {
  const unsigned a = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (a >= na) return;
  const double s = warp_sum_run(part + ((u64)blockIdx.y * na + a) * bpg, bpg);
  if ((threadIdx.x & 31) == 0) red[(u64)blockIdx.y * na + a] = s;
}

// Grid (1, groups), 256 threads: N2uqAct::finish from the reduced accumulators. The per-segment
// quotients are computed in parallel, the sums sequentially in the CPU's order by thread 0.
extern "C" __global__ void q2_n2uq_act_finish(const float* __restrict__ p, const double* __restrict__ red, float* __restrict__ out,
                                              u64 off, unsigned n, float delta) {
  __shared__ double per_seg[N2UQ_MAXN], own[N2UQ_MAXN], per_x[N2UQ_MAXN];
  const unsigned na = 1 + 3 * n, np = n + 3;
  const float* prow = p + (u64)blockIdx.y * np;
  const double* acc = red + (u64)blockIdx.y * na;
  const double *s_g = acc + 1, *s_gd = acc + 1 + n, *s_gx = acc + 1 + 2 * n;
  for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
    const float a = prow[1 + i];
    const double ap = (double)(a > N2UQ_EPS ? a : N2UQ_EPS);
    per_seg[i] = s_g[i] / ap;
    own[i] = s_gd[i] / (ap * ap);
    per_x[i] = s_gx[i] / ap;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  float* gp = out + off + (u64)blockIdx.y * np;
  const double s2 = (double)prow[n + 2], d = (double)delta;
  double total = 0.0;
  for (unsigned i = 0; i < n; i++) total += per_seg[i];
  gp[0] = (float)(-s2 * d * total);
  double above = 0.0;
  for (int j = (int)n - 1; j >= 0; j--) {
    const double gj = -s2 * d * (above + own[j]);
    gp[1 + j] = prow[1 + j] > N2UQ_EPS ? (float)gj : 0.0f;
    above += per_seg[j];
  }
  double sx = 0.0;
  for (unsigned i = 0; i < n; i++) sx += per_x[i];
  gp[1 + n] = (float)(s2 * d * sx);
  gp[2 + n] = (float)acc[0];
}
