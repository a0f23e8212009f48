//! YOLOv5 (v6.0+/v7.0 `yolov5{n,s,m}.yaml`: Conv 6×6 s2 p2 stem, C3, SPPF, PAN neck, Detect)
//! as one concrete, compile-time-shaped struct per scale ([`Yolov5n`], [`Yolov5s`],
//! [`Yolov5m`]), expanded by one macro from the scale's five widths `w(64), w(128), w(256),
//! w(512), w(1024)` (width_multiple 0.25 / 0.50 / 0.75). Every width in the model is one of
//! these or a constant expression of them, so a wiring mistake does not compile. Depth (C3
//! repeats: `max(round(n·depth_multiple), 1)`) and nc are run time.
//!
//! Layer table (ultralytics indices, the `model.<i>` key prefixes):
//!
//! | i | from | module | i | from | module |
//! |---|---|---|---|---|---|
//! | 0 | -1 | Conv(3, a, 6, 2, 2) | 13 | -1 | C3(e, d, False) |
//! | 1 | -1 | Conv(a, b, 3, 2) | 14 | -1 | Conv(d, c, 1, 1) |
//! | 2 | -1 | C3(b, b) ×3 | 15 | -1 | Upsample |
//! | 3 | -1 | Conv(b, c, 3, 2) | 16 | [-1, 4] | **Concat** (fusion) |
//! | 4 | -1 | C3(c, c) ×6 | 17 | -1 | C3(d, c, False) → P3 |
//! | 5 | -1 | Conv(c, d, 3, 2) | 18 | -1 | Conv(c, c, 3, 2) |
//! | 6 | -1 | C3(d, d) ×9 | 19 | [-1, 14] | **Concat** (fusion) |
//! | 7 | -1 | Conv(d, e, 3, 2) | 20 | -1 | C3(d, d, False) → P4 |
//! | 8 | -1 | C3(e, e) ×3 | 21 | -1 | Conv(d, d, 3, 2) |
//! | 9 | -1 | SPPF(e, e, 5) | 22 | [-1, 10] | **Concat** (fusion) |
//! | 10 | -1 | Conv(e, d, 1, 1) | 23 | -1 | C3(e, e, False) → P5 |
//! | 11 | -1 | Upsample | 24 | [17, 20, 23] | Detect |
//! | 12 | [-1, 6] | **Concat** (fusion) | | | |

/// Repeats of a C3 with base count `n` at depth multiple `gd` (ultralytics `max(round(n·gd), 1)`,
/// Python's round half to even).
pub fn repeats(n: usize, gd: f64) -> usize {
    let x = n as f64 * gd;
    let r = x.round();
    let r = if (x - x.trunc() - 0.5).abs() < 1e-12 && (r as i64) % 2 == 1 {
        r - 1.0
    } else {
        r
    };
    (r as usize).max(1)
}

macro_rules! yolov5_scale {
    ($(#[$doc:meta])* $name:ident, $id:literal, $gd:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            store: q2_nn::ParamStore,
            nc: usize,
            depth: [usize; 4],
            fusions: [Box<dyn q2_fusion::Fusion>; 4],
            l0: $crate::blocks::Conv<3, $a, 6, 2>,
            l1: $crate::blocks::Conv<$a, $b, 3, 2>,
            l2: $crate::blocks::C3<$b, $b, $a, $b, 1>,
            l3: $crate::blocks::Conv<$b, $c, 3, 2>,
            l4: $crate::blocks::C3<$c, $c, $b, $c, 1>,
            l5: $crate::blocks::Conv<$c, $d, 3, 2>,
            l6: $crate::blocks::C3<$d, $d, $c, $d, 1>,
            l7: $crate::blocks::Conv<$d, $e, 3, 2>,
            l8: $crate::blocks::C3<$e, $e, $d, $e, 1>,
            l9: $crate::blocks::SPPF<$e, $e, $d, { 2 * $e }>,
            l10: $crate::blocks::Conv<$e, $d, 1, 1>,
            l13: $crate::blocks::C3<$e, $d, $c, $d, 1>,
            l14: $crate::blocks::Conv<$d, $c, 1, 1>,
            l17: $crate::blocks::C3<$d, $c, $b, $c, 1>,
            l18: $crate::blocks::Conv<$c, $c, 3, 2>,
            l20: $crate::blocks::C3<$d, $d, $c, $d, 1>,
            l21: $crate::blocks::Conv<$d, $d, 3, 2>,
            l23: $crate::blocks::C3<$e, $e, $d, $e, 1>,
            det: $crate::detect::DetectV5<$c, $d, $e>,
        }

        impl $name {
            /// Model name on the command line.
            pub const NAME: &'static str = $id;
            /// depth_multiple of the scale.
            pub const DEPTH: f64 = $gd;
            /// The scale's widths `w(64), w(128), w(256), w(512), w(1024)`.
            pub const WIDTHS: [usize; 5] = [$a, $b, $c, $d, $e];

            /// Builds the model into `store` (which it then owns) with `nc` classes, an optional
            /// quantization plan and the neck fusion of `fusion`.
            pub fn new(
                mut store: q2_nn::ParamStore,
                nc: usize,
                plan: Option<&q2_quant::QuantPlan>,
                fusion: &dyn q2_fusion::FusionFactory,
            ) -> $crate::Result<Self> {
                use q2_quant::LayerKind;
                let lq = |k: LayerKind| plan.map(|p| p.layer(k)).unwrap_or_default();
                let (first, q, head) = (lq(LayerKind::First), lq(LayerKind::Body), lq(LayerKind::Head));
                let depth = [3, 6, 9, 3].map(|n| $crate::yolov5::repeats(n, $gd));
                let dn = $crate::yolov5::repeats(3, $gd);
                let mut m = store.scope("model");
                use $crate::blocks::{conv, C3, SPPF};
                let l0 = conv(&mut m.sub(0), &first)?;
                let l1 = conv(&mut m.sub(1), &q)?;
                let l2 = C3::new(&mut m.sub(2), depth[0], true, &q)?;
                let l3 = conv(&mut m.sub(3), &q)?;
                let l4 = C3::new(&mut m.sub(4), depth[1], true, &q)?;
                let l5 = conv(&mut m.sub(5), &q)?;
                let l6 = C3::new(&mut m.sub(6), depth[2], true, &q)?;
                let l7 = conv(&mut m.sub(7), &q)?;
                let l8 = C3::new(&mut m.sub(8), depth[3], true, &q)?;
                let l9 = SPPF::new(&mut m.sub(9), &q)?;
                let l10 = conv(&mut m.sub(10), &q)?;
                let f12 = fusion.make(12, &[$d, $d], &mut m.sub(12))?;
                let l13 = C3::new(&mut m.sub(13), dn, false, &q)?;
                let l14 = conv(&mut m.sub(14), &q)?;
                let f16 = fusion.make(16, &[$c, $c], &mut m.sub(16))?;
                let l17 = C3::new(&mut m.sub(17), dn, false, &q)?;
                let l18 = conv(&mut m.sub(18), &q)?;
                let f19 = fusion.make(19, &[$c, $c], &mut m.sub(19))?;
                let l20 = C3::new(&mut m.sub(20), dn, false, &q)?;
                let l21 = conv(&mut m.sub(21), &q)?;
                let f22 = fusion.make(22, &[$d, $d], &mut m.sub(22))?;
                let l23 = C3::new(&mut m.sub(23), dn, false, &q)?;
                let det = $crate::detect::DetectV5::new(&mut m.sub(24), nc, &head)?;
                Ok(Self {
                    store,
                    nc,
                    depth,
                    fusions: [f12, f16, f19, f22],
                    l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l13, l14, l17, l18, l20, l21, l23, det,
                })
            }

            fn run(&self, x: &candle_core::Tensor, cx: $crate::blocks::Ctx) -> $crate::Result<([candle_core::Tensor; 3], $crate::HeadOut)> {
                use q2_fusion::fuse2;
                use q2_nn::feat::upsample2x;
                use $crate::blocks::Run;
                let x = $crate::build::model_input(x)?;
                let mode = cx.mode;
                let x0 = $crate::blocks::run_padded(&self.l0, &x, 2, cx)?;
                let x1 = self.l1.run(&x0, cx)?;
                let x2 = self.l2.forward(&x1, cx)?;
                let x3 = self.l3.run(&x2, cx)?;
                let x4 = self.l4.forward(&x3, cx)?;
                let x5 = self.l5.run(&x4, cx)?;
                let x6 = self.l6.forward(&x5, cx)?;
                let x7 = self.l7.run(&x6, cx)?;
                let x8 = self.l8.forward(&x7, cx)?;
                let x9 = self.l9.forward(&x8, cx)?;
                let x10 = self.l10.run(&x9, cx)?;
                let x11 = upsample2x(&x10)?;
                let x12 = fuse2::<$d, $d, $e>(&*self.fusions[0], &x11, &x6, mode)?;
                let x13 = self.l13.forward(&x12, cx)?;
                let x14 = self.l14.run(&x13, cx)?;
                let x15 = upsample2x(&x14)?;
                let x16 = fuse2::<$c, $c, $d>(&*self.fusions[1], &x15, &x4, mode)?;
                let x17 = self.l17.forward(&x16, cx)?;
                let x18 = self.l18.run(&x17, cx)?;
                let x19 = fuse2::<$c, $c, $d>(&*self.fusions[2], &x18, &x14, mode)?;
                let x20 = self.l20.forward(&x19, cx)?;
                let x21 = self.l21.run(&x20, cx)?;
                let x22 = fuse2::<$d, $d, $e>(&*self.fusions[3], &x21, &x10, mode)?;
                let x23 = self.l23.forward(&x22, cx)?;
                let raw = self.det.forward(&x17, &x20, &x23, cx)?;
                let feats = [x17.into_tensor(), x20.into_tensor(), x23.into_tensor()];
                Ok((feats, $crate::HeadOut::V5 { raw }))
            }

            /// The ultralytics-style layer table: (from, n, module, arguments) per layer.
            pub fn layer_table(&self) -> Vec<$crate::summary::LayerRow> {
                use $crate::summary::LayerRow as R;
                let (a, b, c, d, e) = ($a, $b, $c, $d, $e);
                let dp = self.depth;
                let dn = $crate::yolov5::repeats(3, $gd);
                let anchors = "[[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]";
                vec![
                    R::new(0, "-1", 1, "Conv", format!("[3, {a}, 6, 2, 2]")),
                    R::new(1, "-1", 1, "Conv", format!("[{a}, {b}, 3, 2]")),
                    R::new(2, "-1", dp[0], "C3", format!("[{b}, {b}, {}]", dp[0])),
                    R::new(3, "-1", 1, "Conv", format!("[{b}, {c}, 3, 2]")),
                    R::new(4, "-1", dp[1], "C3", format!("[{c}, {c}, {}]", dp[1])),
                    R::new(5, "-1", 1, "Conv", format!("[{c}, {d}, 3, 2]")),
                    R::new(6, "-1", dp[2], "C3", format!("[{d}, {d}, {}]", dp[2])),
                    R::new(7, "-1", 1, "Conv", format!("[{d}, {e}, 3, 2]")),
                    R::new(8, "-1", dp[3], "C3", format!("[{e}, {e}, {}]", dp[3])),
                    R::new(9, "-1", 1, "SPPF", format!("[{e}, {e}, 5]")),
                    R::new(10, "-1", 1, "Conv", format!("[{e}, {d}, 1, 1]")),
                    R::new(11, "-1", 1, "nn.Upsample", "[None, 2, 'nearest']".into()),
                    R::new(12, "[-1, 6]", 1, self.fusions[0].kind(), "[1]".into()),
                    R::new(13, "-1", dn, "C3", format!("[{e}, {d}, {dn}, False]")),
                    R::new(14, "-1", 1, "Conv", format!("[{d}, {c}, 1, 1]")),
                    R::new(15, "-1", 1, "nn.Upsample", "[None, 2, 'nearest']".into()),
                    R::new(16, "[-1, 4]", 1, self.fusions[1].kind(), "[1]".into()),
                    R::new(17, "-1", dn, "C3", format!("[{d}, {c}, {dn}, False]")),
                    R::new(18, "-1", 1, "Conv", format!("[{c}, {c}, 3, 2]")),
                    R::new(19, "[-1, 14]", 1, self.fusions[2].kind(), "[1]".into()),
                    R::new(20, "-1", dn, "C3", format!("[{d}, {d}, {dn}, False]")),
                    R::new(21, "-1", 1, "Conv", format!("[{d}, {d}, 3, 2]")),
                    R::new(22, "[-1, 10]", 1, self.fusions[3].kind(), "[1]".into()),
                    R::new(23, "-1", dn, "C3", format!("[{e}, {e}, {dn}, False]")),
                    R::new(24, "[17, 20, 23]", 1, "Detect", format!("[{}, {anchors}, [{c}, {d}, {e}]]", self.nc)),
                ]
            }
        }

        impl $crate::Detector for $name {
            fn name(&self) -> &str {
                $id
            }
            fn family(&self) -> $crate::Family {
                $crate::Family::V5
            }
            fn nc(&self) -> usize {
                self.nc
            }
            fn strides(&self) -> [usize; 3] {
                $crate::detect::STRIDES
            }
            fn anchors(&self) -> Vec<[(f32, f32); 3]> {
                self.det.anchors_px().unwrap_or_default()
            }
            fn store(&self) -> &q2_nn::ParamStore {
                &self.store
            }
            fn run(&self, x: &candle_core::Tensor, cx: $crate::blocks::Ctx<'_>) -> $crate::Result<([candle_core::Tensor; 3], $crate::HeadOut)> {
                $name::run(self, x, cx)
            }
            fn decode(&self, out: &$crate::HeadOut) -> $crate::Result<candle_core::Tensor> {
                match out {
                    $crate::HeadOut::V5 { raw } => $crate::detect::decode_v5(raw, &self.det.anchors_px()?, self.nc),
                    _ => Err($crate::YoloError::Invalid(format!("{}: cannot decode YOLO11 head outputs", $id))),
                }
            }
            fn layer_table(&self) -> Vec<$crate::summary::LayerRow> {
                $name::layer_table(self)
            }
            fn fusion_consumers(&self) -> Vec<(usize, Vec<q2_fusion::Consumer<'_>>)> {
                use $crate::blocks::consumer;
                vec![
                    (12, vec![consumer("model.13.cv1", &self.l13.cv1), consumer("model.13.cv2", &self.l13.cv2)]),
                    (16, vec![consumer("model.17.cv1", &self.l17.cv1), consumer("model.17.cv2", &self.l17.cv2)]),
                    (19, vec![consumer("model.20.cv1", &self.l20.cv1), consumer("model.20.cv2", &self.l20.cv2)]),
                    (22, vec![consumer("model.23.cv1", &self.l23.cv1), consumer("model.23.cv2", &self.l23.cv2)]),
                ]
            }
            fn feature_quantizers(&self) -> [Option<&dyn q2_quant::Quantizer>; 3] {
                [self.det.m[0].aq.as_deref(), self.det.m[1].aq.as_deref(), self.det.m[2].aq.as_deref()]
            }
            fn count_ops(&self, x: &candle_core::Tensor) -> $crate::Result<(u64, u64)> {
                let prof = $crate::blocks::Prof::default();
                let cx = $crate::blocks::Ctx { prof: Some(&prof), ..$crate::blocks::Ctx::new(q2_nn::Mode::Eval) };
                self.run(x, cx)?;
                Ok((prof.ops.get(), prof.quad.get()))
            }
        }
    };
}

yolov5_scale!(
    /// YOLOv5n (depth 0.33, width 0.25).
    Yolov5n, "yolov5n", 0.33, 16, 32, 64, 128, 256
);
yolov5_scale!(
    /// YOLOv5s (depth 0.33, width 0.50).
    Yolov5s, "yolov5s", 0.33, 32, 64, 128, 256, 512
);
yolov5_scale!(
    /// YOLOv5m (depth 0.67, width 0.75).
    Yolov5m, "yolov5m", 0.67, 48, 96, 192, 384, 768
);

#[cfg(test)]
mod tests {
    use super::repeats;

    #[test]
    fn repeats_follow_ultralytics() {
        assert_eq!([3, 6, 9].map(|n| repeats(n, 0.33)), [1, 2, 3]);
        assert_eq!([3, 6, 9].map(|n| repeats(n, 0.67)), [2, 4, 6]);
        assert_eq!(repeats(2, 0.5), 1);
        assert_eq!(repeats(1, 0.1), 1);
    }
}
