//! Typed feature maps: `Feat<C>` is a (B, C, H, W) tensor whose channel count `C` is part of
//! its type; batch and spatial sizes stay dynamic.
//!
//! Channel arithmetic that stable Rust cannot express in types (`A + B == O` for a concat) is
//! checked with inline const assertions, which fail the *build* when a model wires the wrong
//! widths together:
//!
//! ```compile_fail
//! use q2_nn::{feat::concat2, Feat, Tensor, Device, DType};
//! let a = Feat::<4>::new(Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let b = Feat::<4>::new(Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let c: Feat<9> = concat2(&a, &b).unwrap(); // 4 + 4 != 9: does not compile
//! ```
//!
//! ```
//! use q2_nn::{feat::concat2, Feat, Tensor, Device, DType};
//! let a = Feat::<4>::new(Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let b = Feat::<3>::new(Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
//! let c: Feat<7> = concat2(&a, &b).unwrap();
//! assert_eq!(c.tensor().dims(), &[1, 7, 2, 2]);
//! ```

use crate::{ops, NnError, Result};
use candle_core::Tensor;

/// A (B, C, H, W) feature map with `C` channels, checked when constructed.
#[derive(Clone, Debug)]
pub struct Feat<const C: usize> {
    t: Tensor,
}

impl<const C: usize> Feat<C> {
    /// The channel count carried by the type.
    pub const CHANNELS: usize = C;

    /// Wraps a tensor, checking that it is 4-D with `C` channels.
    pub fn new(t: Tensor) -> Result<Self> {
        let dims = t.dims();
        if dims.len() != 4 || dims[1] != C {
            return Err(NnError::Channels { what: "Feat::new".into(), expected: C, got: dims.to_vec() });
        }
        Ok(Self { t })
    }

    pub fn tensor(&self) -> &Tensor {
        &self.t
    }

    pub fn into_tensor(self) -> Tensor {
        self.t
    }

    /// (batch, height, width).
    pub fn bhw(&self) -> (usize, usize, usize) {
        let d = self.t.dims();
        (d[0], d[2], d[3])
    }
}

/// Channel concat of two maps (ultralytics `Concat` with two inputs): `A + B == O` is checked at
/// compile time.
pub fn concat2<const A: usize, const B: usize, const O: usize>(a: &Feat<A>, b: &Feat<B>) -> Result<Feat<O>> {
    const { assert!(A + B == O, "concat2: output channels must equal the sum of the inputs' channels") };
    Feat::new(Tensor::cat(&[a.tensor(), b.tensor()], 1)?)
}

/// Channel concat of `N` maps of equal width (SPPF, C3k2's chunk list): `N * C == O` is checked
/// at compile time.
pub fn concat_n<const C: usize, const N: usize, const O: usize>(xs: [&Feat<C>; N]) -> Result<Feat<O>> {
    const { assert!(N * C == O, "concat_n: output channels must equal N times the inputs' channels") };
    let ts: Vec<&Tensor> = xs.iter().map(|f| f.tensor()).collect();
    Feat::new(Tensor::cat(&ts, 1)?)
}

/// Splits a map into two halves along channels (the `chunk(2, 1)` of C2f/C3k2):
/// `2 * H == C` is checked at compile time.
pub fn chunk2<const C: usize, const H: usize>(x: &Feat<C>) -> Result<(Feat<H>, Feat<H>)> {
    const { assert!(2 * H == C, "chunk2: each half must have half the channels") };
    Ok((Feat::new(x.tensor().narrow(1, 0, H)?)?, Feat::new(x.tensor().narrow(1, H, H)?)?))
}

/// Nearest-neighbour 2x upsampling (`nn.Upsample(None, 2, 'nearest')`).
pub fn upsample2x<const C: usize>(x: &Feat<C>) -> Result<Feat<C>> {
    Feat::new(ops::upsample_nearest2x(x.tensor())?)
}

/// Max pooling with kernel 5, stride 1, padding 2 (SPPF's `nn.MaxPool2d(5, 1, 2)`).
pub fn maxpool5<const C: usize>(x: &Feat<C>) -> Result<Feat<C>> {
    Feat::new(ops::max_pool_same(x.tensor(), 5)?)
}

/// Elementwise sum of two maps of the same width (residual shortcut).
pub fn add<const C: usize>(a: &Feat<C>, b: &Feat<C>) -> Result<Feat<C>> {
    Feat::new((a.tensor() + b.tensor())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn feat<const C: usize>(h: usize) -> Feat<C> {
        Feat::new(Tensor::arange(0f32, (2 * C * h * h) as f32, &Device::Cpu).unwrap().reshape((2, C, h, h)).unwrap())
            .unwrap()
    }

    #[test]
    fn new_checks_channels_and_rank() {
        let t = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(Feat::<3>::new(t.clone()).is_ok());
        let e = Feat::<4>::new(t).unwrap_err().to_string();
        assert!(e.contains("(B, 4, H, W)") && e.contains("[1, 3, 2, 2]"), "{e}");
        assert!(Feat::<3>::new(Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn concat_and_chunk_round_trip() {
        let a = feat::<2>(3);
        let b = feat::<2>(3);
        let c: Feat<4> = concat2(&a, &b).unwrap();
        let (x, y): (Feat<2>, Feat<2>) = chunk2(&c).unwrap();
        assert_eq!(x.tensor().to_vec3::<f32>().ok(), None); // 4-D, to_vec3 refuses
        let eq = |p: &Tensor, q: &Tensor| {
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap() == q.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(eq(x.tensor(), a.tensor()) && eq(y.tensor(), b.tensor()));
        let d: Feat<6> = concat_n([&a, &b, &a]).unwrap();
        assert_eq!(d.bhw(), (2, 3, 3));
    }
}
