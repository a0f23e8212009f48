//! The numpy operations the reference metrics are built from, reproduced with numpy's exact
//! order of floating-point operations, so q2's numbers agree with pycocotools / py-faster-rcnn /
//! YOLOv5 to the last bit rather than to a tolerance.
//!
//! - [`sum`] is `np.sum` of a contiguous float64 array: pairwise summation (blocks of at most
//!   128 elements summed with 8 accumulators, larger arrays split in two at a multiple of 8).
//! - [`linspace`] is `np.linspace(start, stop, num)`: `i * step + start`, the last value `stop`.
//! - [`interp`] is `np.interp(x, xp, fp)` for one x (xp non-decreasing).
//! - [`trapz`] is `np.trapz(y, x)` (`np.trapezoid` in numpy 2).

/// `np.sum(a)` for a contiguous float64 array (numpy's pairwise summation).
pub fn sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        sum(&a[..n2]) + sum(&a[n2..])
    }
}

/// `np.mean(a)`: [`sum`] divided by the length (NaN for an empty slice, as numpy).
pub fn mean(a: &[f64]) -> f64 {
    sum(a) / a.len() as f64
}

/// `np.linspace(start, stop, N)` (endpoint included).
pub fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let mut y = [0.0; N];
    if N == 0 {
        return y;
    }
    if N == 1 {
        y[0] = start;
        return y;
    }
    let step = (stop - start) / (N - 1) as f64;
    for (i, v) in y.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    y[N - 1] = stop;
    y
}

/// numpy's `binary_search_with_guess` result: -1 when `key < xp[0]`, `xp.len()` when
/// `key > xp[last]`, otherwise the last index j with `xp[j] <= key`.
fn search(key: f64, xp: &[f64]) -> isize {
    let n = xp.len();
    if key > xp[n - 1] {
        return n as isize;
    }
    if key < xp[0] {
        return -1;
    }
    xp.partition_point(|&v| v <= key) as isize - 1
}

/// `np.interp(x, xp, fp)` at one point, with numpy's defaults `left = fp[0]`, `right = fp[-1]`.
/// `xp` must be non-decreasing and as long as `fp` (not empty).
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    debug_assert_eq!(xp.len(), fp.len());
    let n = xp.len();
    if x.is_nan() {
        return x;
    }
    let j = search(x, xp);
    if j == -1 {
        return fp[0];
    }
    if j == n as isize {
        return fp[n - 1];
    }
    let j = j as usize;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut r = slope * (x - xp[j]) + fp[j];
    if r.is_nan() {
        r = slope * (x - xp[j + 1]) + fp[j + 1];
        if r.is_nan() && fp[j] == fp[j + 1] {
            r = fp[j];
        }
    }
    r
}

/// `np.trapz(y, x)`: `sum(diff(x) * (y[1:] + y[:-1]) / 2.0)` with [`sum`].
pub fn trapz(y: &[f64], x: &[f64]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    let terms: Vec<f64> = (0..x.len().saturating_sub(1)).map(|k| (x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2.0).collect();
    sum(&terms)
}

/// `np.maximum(a, b)`: NaN if either is NaN.
pub fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn linspace_matches_numpy_bits() {
        // np.linspace(.5, .95, 10) as float.hex(): 0.55 and 0.7 are not the nearest doubles.
        let hex = [0x3FE0000000000000u64, 0x3FE199999999999A, 0x3FE3333333333333, 0x3FE4CCCCCCCCCCCD, 0x3FE6666666666666, 0x3FE8000000000000, 0x3FE999999999999A, 0x3FEB333333333333, 0x3FECCCCCCCCCCCCC, 0x3FEE666666666666];
        assert_eq!(bits(&linspace::<10>(0.5, 0.95)), hex.to_vec());
        let r = linspace::<101>(0.0, 1.0);
        // np.linspace(0, 1, 101)[35] == 35 * 0.01 == 0.35000000000000003, not 0.35.
        assert_eq!(r[35].to_bits(), 0x3FD6666666666667);
        assert_ne!(r[35], 0.35);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn pairwise_sum_differs_from_naive_as_numpy_does() {
        // np.sum([1e16, 1, 1, 1, 1, 1, 1, 1, 1, -1e16]) == 8.0 (pairwise), a naive loop gives 0.
        let a = [1e16, 1., 1., 1., 1., 1., 1., 1., 1., -1e16];
        assert_eq!(sum(&a), 8.0);
        assert_eq!(a.iter().sum::<f64>(), 0.0);
        let big: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        assert!((sum(&big) - big.iter().sum::<f64>()).abs() < 1e-12);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn interp_follows_numpy_at_duplicates_and_ends() {
        let xp = [0.0, 0.5, 0.5, 1.0];
        let fp = [1.0, 0.8, 0.4, 0.0];
        assert_eq!(interp(0.5, &xp, &fp), 0.4, "the last of equal xp wins");
        assert_eq!(interp(0.25, &xp, &fp), 0.9);
        assert_eq!(interp(-1.0, &xp, &fp), 1.0);
        assert_eq!(interp(2.0, &xp, &fp), 0.0);
        assert_eq!(interp(1.0, &xp, &fp), 0.0);
        assert!((interp(0.75, &xp, &fp) - 0.2).abs() < 1e-15);
    }

    #[test]
    fn trapz_of_a_line() {
        let x = linspace::<101>(0.0, 1.0);
        let y: Vec<f64> = x.iter().map(|v| 1.0 - v).collect();
        assert!((trapz(&y, &x) - 0.5).abs() < 1e-15);
        assert!(maximum(f64::NAN, 1.0).is_nan());
        assert_eq!(maximum(0.5, 1.0), 1.0);
    }
}
