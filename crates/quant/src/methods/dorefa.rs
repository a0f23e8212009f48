//! DoReFa weight quantization (Zhou et al., 2016), the weight quantizer of PACT:
//! w_q = 2·quantize_b(tanh(w)/(2·max|tanh w|) + 1/2) − 1, here multiplied by m = max|tanh w| so
//! the weights keep their full-precision scale (see `paper/DEVIATIONS.md`). Straight-through on
//! the rounding only; m is differentiated, its gradient split evenly among tied maxima.

use crate::kernel::{par_min_max, rne, Kernel};

/// tanh for f32 inputs, evaluated in f64 with branch-free arithmetic so it vectorises
/// (`f32::tanh` is a scalar libm call and made DoReFa 50x slower than a copy). The f64 result is
/// accurate to ~1e-15 relative, so after rounding it is the correctly rounded f32 tanh except in
/// rare near-halfway cases (≤ 1 ulp, like libm's and PyTorch's tanhf).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5·2^52: adding it rounds to an integer
    // Cody–Waite split of ln 2: the high part has trailing zero bits, so k·LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let a = (x as f64).abs();
    // exp(y), y = 2a clamped where tanh is 1 in f32 anyway (a > 9.01): y = k·ln2 + r, |r| ≤ ln2/2
    let y = if a > 10.0 { 20.0 } else { 2.0 * a };
    let kr = y * std::f64::consts::LOG2_E + MAGIC;
    let k = kr - MAGIC;
    let r = (y - k * LN2_HI) - k * LN2_LO;
    // exp(r) by Horner, degree 12 (truncation < 2e-16 for |r| ≤ 0.35)
    let mut p = 1.0 / 479_001_600.0;
    for c in [1.0 / 39_916_800.0, 1.0 / 3_628_800.0, 1.0 / 362_880.0, 1.0 / 40_320.0, 1.0 / 5_040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^k from the integer sitting in the low bits of kr
    let two_k = f64::from_bits((kr.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(1023)) << 52);
    let e = p * two_k;
    let big = (e - 1.0) / (e + 1.0);
    // below 1e-4, e − 1 loses digits; the series a − a³/3 is exact to f32 precision there
    let small = a - a * a * a * (1.0 / 3.0);
    let t = if a < 1e-4 { small } else { big };
    (t as f32).copysign(x)
}

#[derive(Clone, Debug)]
pub struct DoReFa {
    pub bits: u32,
}

/// (m = max|tanh w|, number of levels n).
#[derive(Debug)]
pub struct DoReFaCtx {
    m: f32,
    n: f32,
}

impl DoReFa {
    #[inline(always)]
    fn quant(t: f32, m: f32, n: f32) -> f32 {
        let r = t / (2.0 * m) + 0.5;
        rne(r * n) / n
    }
}

impl Kernel for DoReFa {
    type Ctx = DoReFaCtx;

    fn name(&self) -> &'static str {
        "dorefa"
    }

    fn param_layout(&self) -> Vec<(&'static str, usize)> {
        vec![]
    }

    /// [Σ g·((2q−1) − t/m)]
    fn num_acc(&self) -> usize {
        1
    }

    /// m = max|tanh w| = tanh(max|w|) (tanh is odd and increasing; `tanh_f32` is monotone too).
    fn prepare(&self, x: &[f32], _p: &[f32]) -> DoReFaCtx {
        let (lo, hi) = par_min_max(x);
        DoReFaCtx { m: tanh_f32(lo.abs().max(hi.abs())), n: ((1u32 << self.bits) - 1) as f32 }
    }

    #[inline(always)]
    fn forward(&self, c: &DoReFaCtx, x: &[f32], y: &mut [f32]) {
        if c.m == 0.0 {
            y.fill(0.0);
            return;
        }
        y.iter_mut().zip(x).for_each(|(y, &w)| *y = c.m * (2.0 * Self::quant(tanh_f32(w), c.m, c.n) - 1.0));
    }

    #[inline(always)]
    fn backward(&self, c: &DoReFaCtx, x: &[f32], g: &[f32], gx: &mut [f32], acc: &mut [f64]) {
        if c.m == 0.0 {
            gx.iter_mut().zip(x.iter().zip(g)).for_each(|(gx, (&w, &g))| {
                let t = tanh_f32(w);
                *gx = g * (1.0 - t * t);
            });
            return;
        }
        // Two simple loops per block (the elementwise one vectorises over f64 lanes; the sum is
        // a plain 8-lane reduction), which LLVM handles far better than one fused closure.
        let mut terms = [0f32; 256];
        let mut lanes = [0f64; 8];
        for ((xb, gb), gxb) in x.chunks(256).zip(g.chunks(256)).zip(gx.chunks_mut(256)) {
            let tb = &mut terms[..xb.len()];
            for (((&w, &g), gx), term) in xb.iter().zip(gb).zip(gxb.iter_mut()).zip(tb.iter_mut()) {
                let t = tanh_f32(w);
                let q = Self::quant(t, c.m, c.n);
                *gx = g * (1.0 - t * t);
                *term = g * ((2.0 * q - 1.0) - t / c.m);
            }
            for (j, v) in tb.iter().enumerate() {
                lanes[j % 8] += *v as f64;
            }
        }
        acc[0] += lanes.iter().sum::<f64>();
    }

    /// Adds the gradient through m to the tied maxima: the elements with |tanh w| = m, i.e.
    /// (tanh being monotone) those with |w| at or above the smallest |w| whose tanh is m.
    fn finish(&self, c: &DoReFaCtx, x: &[f32], _: &[f32], acc: &[f64], gx: &mut [f32], _: &mut [f32]) {
        if c.m == 0.0 || c.m.is_nan() {
            return;
        }
        // bisection on the bit patterns of non-negative floats (ordered like the floats)
        let (min, max) = par_min_max(x);
        let (mut lo, mut hi) = (0u32, min.abs().max(max.abs()).to_bits());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if tanh_f32(f32::from_bits(mid)) >= c.m {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let w_lo = f32::from_bits(lo);
        let ties: Vec<usize> = (0..x.len()).filter(|&i| x[i].abs() >= w_lo).collect();
        let share = acc[0] / ties.len() as f64;
        for i in ties {
            let t = tanh_f32(x[i]);
            gx[i] += (t.signum() as f64 * share * (1.0 - (t * t) as f64)) as f32;
        }
    }

    fn init(&self, _x: &[f32]) -> Vec<f32> {
        vec![]
    }

    fn default_params(&self) -> Vec<f32> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::tanh_f32;

    #[test]
    fn tanh_is_within_one_ulp_of_correctly_rounded() {
        let (mut exact, mut n) = (0usize, 0usize);
        let mut x = 1e-12f32;
        while x < 12.0 {
            for v in [x, -x, x * 1.000_123, x * 0.999_71] {
                let want = (v as f64).tanh() as f32;
                let got = tanh_f32(v);
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 1, "tanh({v}) = {got}, correctly rounded {want}");
                exact += (ulps == 0) as usize;
                n += 1;
            }
            x *= 1.0007;
        }
        assert!(exact as f64 / n as f64 > 0.999, "{exact}/{n} correctly rounded");
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(tanh_f32(30.0), 1.0);
        assert_eq!(tanh_f32(-30.0), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
    }

    #[test]
    fn tanh_is_monotone() {
        let xs: Vec<f32> = (0..200_000).map(|i| i as f32 * 5e-5 - 5.0).collect();
        assert!(xs.windows(2).all(|w| tanh_f32(w[0]) <= tanh_f32(w[1])));
    }
}
