//! YOLO11 (`yolo11.yaml`: C3k2, SPPF, C2PSA, Detect with DFL) as one concrete, compile-time
//! shaped struct per scale ([`Yolo11n`], [`Yolo11s`], [`Yolo11m`]), expanded by one macro from
//! the scale's widths `w(64), w(128), w(256), w(512), w(1024)` (scales n [0.50, 0.25, 1024],
//! s [0.50, 0.50, 1024], m [0.50, 1.00, 512]: `make_divisible(min(c, max_channels)·width, 8)`).
//! Hidden widths are constant expressions of these; depth (C3k2 / C2PSA repeats) and nc are run
//! time. As in ultralytics' `parse_model`, every C3k2 of scale m uses C3k inner blocks.
//!
//! | i | from | module | i | from | module |
//! |---|---|---|---|---|---|
//! | 0 | -1 | Conv(3, a, 3, 2) | 12 | [-1, 6] | **Concat** (fusion) |
//! | 1 | -1 | Conv(a, b, 3, 2) | 13 | -1 | C3k2(e+d, d, False) |
//! | 2 | -1 | C3k2(b, c, False, 0.25) | 14 | -1 | Upsample |
//! | 3 | -1 | Conv(c, c, 3, 2) | 15 | [-1, 4] | **Concat** (fusion) |
//! | 4 | -1 | C3k2(c, d, False, 0.25) | 16 | -1 | C3k2(2d, c, False) → P3 |
//! | 5 | -1 | Conv(d, d, 3, 2) | 17 | -1 | Conv(c, c, 3, 2) |
//! | 6 | -1 | C3k2(d, d, True) | 18 | [-1, 13] | **Concat** (fusion) |
//! | 7 | -1 | Conv(d, e, 3, 2) | 19 | -1 | C3k2(c+d, d, False) → P4 |
//! | 8 | -1 | C3k2(e, e, True) | 20 | -1 | Conv(d, d, 3, 2) |
//! | 9 | -1 | SPPF(e, e, 5) | 21 | [-1, 10] | **Concat** (fusion) |
//! | 10 | -1 | C2PSA(e, e) | 22 | -1 | C3k2(d+e, e, True) → P5 |
//! | 11 | -1 | Upsample | 23 | [16, 19, 22] | Detect |

macro_rules! yolo11_scale {
    ($(#[$doc:meta])* $name:ident, $id:literal, $gd:literal, $all:literal, $a:literal, $b:literal, $c:literal, $d:literal, $e:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            store: q2_nn::ParamStore,
            nc: usize,
            n: usize,
            fusions: [Box<dyn q2_fusion::Fusion>; 4],
            l0: $crate::blocks::Conv<3, $a, 3, 2>,
            l1: $crate::blocks::Conv<$a, $b, 3, 2>,
            l2: $crate::blocks::C3k2<$b, $c, { $c / 2 }, { $c / 4 }, { $c / 8 }>,
            l3: $crate::blocks::Conv<$c, $c, 3, 2>,
            l4: $crate::blocks::C3k2<$c, $d, { $d / 2 }, { $d / 4 }, { $d / 8 }>,
            l5: $crate::blocks::Conv<$d, $d, 3, 2>,
            l6: $crate::blocks::C3k2<$d, $d, $d, { $d / 2 }, { $d / 4 }>,
            l7: $crate::blocks::Conv<$d, $e, 3, 2>,
            l8: $crate::blocks::C3k2<$e, $e, $e, { $e / 2 }, { $e / 4 }>,
            l9: $crate::blocks::SPPF<$e, $e, { $e / 2 }, { 2 * $e }>,
            l10: $crate::blocks::C2PSA<$e, { $e / 2 }>,
            l13: $crate::blocks::C3k2<{ $e + $d }, $d, $d, { $d / 2 }, { $d / 4 }>,
            l16: $crate::blocks::C3k2<{ 2 * $d }, $c, $c, { $c / 2 }, { $c / 4 }>,
            l17: $crate::blocks::Conv<$c, $c, 3, 2>,
            l19: $crate::blocks::C3k2<{ $c + $d }, $d, $d, { $d / 2 }, { $d / 4 }>,
            l20: $crate::blocks::Conv<$d, $d, 3, 2>,
            l22: $crate::blocks::C3k2<{ $d + $e }, $e, $e, { $e / 2 }, { $e / 4 }>,
            det: $crate::detect::DetectV11<$c, $d, $e>,
        }

        impl $name {
            /// Model name on the command line.
            pub const NAME: &'static str = $id;
            /// depth_multiple of the scale.
            pub const DEPTH: f64 = $gd;
            /// The scale's widths `w(64), w(128), w(256), w(512), w(1024)`.
            pub const WIDTHS: [usize; 5] = [$a, $b, $c, $d, $e];

            /// Builds the model into `store` (which it then owns).
            pub fn new(
                mut store: q2_nn::ParamStore,
                nc: usize,
                plan: Option<&q2_quant::QuantPlan>,
                fusion: &dyn q2_fusion::FusionFactory,
            ) -> $crate::Result<Self> {
                use q2_quant::LayerKind;
                use $crate::blocks::{conv, C2PSA, C3k2, SPPF};
                let lq = |k: LayerKind| plan.map(|p| p.layer(k)).unwrap_or_default();
                let (first, q, head) = (lq(LayerKind::First), lq(LayerKind::Body), lq(LayerKind::Head));
                let n = $crate::yolov5::repeats(2, $gd);
                let all: bool = $all;
                let mut m = store.scope("model");
                let l0 = conv(&mut m.sub(0), &first)?;
                let l1 = conv(&mut m.sub(1), &q)?;
                let l2 = C3k2::new(&mut m.sub(2), n, all, true, &q)?;
                let l3 = conv(&mut m.sub(3), &q)?;
                let l4 = C3k2::new(&mut m.sub(4), n, all, true, &q)?;
                let l5 = conv(&mut m.sub(5), &q)?;
                let l6 = C3k2::new(&mut m.sub(6), n, true, true, &q)?;
                let l7 = conv(&mut m.sub(7), &q)?;
                let l8 = C3k2::new(&mut m.sub(8), n, true, true, &q)?;
                let l9 = SPPF::new(&mut m.sub(9), &q)?;
                let l10 = C2PSA::new(&mut m.sub(10), n, &q)?;
                let f12 = fusion.make(12, &[$e, $d], &mut m.sub(12))?;
                let l13 = C3k2::new(&mut m.sub(13), n, all, true, &q)?;
                let f15 = fusion.make(15, &[$d, $d], &mut m.sub(15))?;
                let l16 = C3k2::new(&mut m.sub(16), n, all, true, &q)?;
                let l17 = conv(&mut m.sub(17), &q)?;
                let f18 = fusion.make(18, &[$c, $d], &mut m.sub(18))?;
                let l19 = C3k2::new(&mut m.sub(19), n, all, true, &q)?;
                let l20 = conv(&mut m.sub(20), &q)?;
                let f21 = fusion.make(21, &[$d, $e], &mut m.sub(21))?;
                let l22 = C3k2::new(&mut m.sub(22), n, true, true, &q)?;
                let det = $crate::detect::DetectV11::new(&mut m.sub(23), nc, &q, &head)?;
                Ok(Self {
                    store,
                    nc,
                    n,
                    fusions: [f12, f15, f18, f21],
                    l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l13, l16, l17, l19, l20, l22, det,
                })
            }

            fn run(&self, x: &candle_core::Tensor, cx: $crate::blocks::Ctx) -> $crate::Result<([candle_core::Tensor; 3], $crate::HeadOut)> {
                use q2_fusion::fuse2;
                use q2_nn::feat::upsample2x;
                use $crate::blocks::Run;
                let x = $crate::build::model_input(x)?;
                let mode = cx.mode;
                let x0 = self.l0.run(&x, cx)?;
                let x1 = self.l1.run(&x0, cx)?;
                let x2 = self.l2.forward(&x1, cx)?;
                let x3 = self.l3.run(&x2, cx)?;
                let x4 = self.l4.forward(&x3, cx)?;
                let x5 = self.l5.run(&x4, cx)?;
                let x6 = self.l6.forward(&x5, cx)?;
                let x7 = self.l7.run(&x6, cx)?;
                let x8 = self.l8.forward(&x7, cx)?;
                let x9 = self.l9.forward(&x8, cx)?;
                let x10 = self.l10.forward(&x9, cx)?;
                let x11 = upsample2x(&x10)?;
                let x12 = fuse2::<$e, $d, { $e + $d }>(&*self.fusions[0], &x11, &x6, mode)?;
                let x13 = self.l13.forward(&x12, cx)?;
                let x14 = upsample2x(&x13)?;
                let x15 = fuse2::<$d, $d, { 2 * $d }>(&*self.fusions[1], &x14, &x4, mode)?;
                let x16 = self.l16.forward(&x15, cx)?;
                let x17 = self.l17.run(&x16, cx)?;
                let x18 = fuse2::<$c, $d, { $c + $d }>(&*self.fusions[2], &x17, &x13, mode)?;
                let x19 = self.l19.forward(&x18, cx)?;
                let x20 = self.l20.run(&x19, cx)?;
                let x21 = fuse2::<$d, $e, { $d + $e }>(&*self.fusions[3], &x20, &x10, mode)?;
                let x22 = self.l22.forward(&x21, cx)?;
                let (box_raw, cls_raw) = self.det.forward(&x16, &x19, &x22, cx)?;
                let feats = [x16.into_tensor(), x19.into_tensor(), x22.into_tensor()];
                Ok((feats, $crate::HeadOut::V11 { box_raw, cls_raw }))
            }

            /// The ultralytics-style layer table.
            pub fn layer_table(&self) -> Vec<$crate::summary::LayerRow> {
                use $crate::summary::LayerRow as R;
                let (a, b, c, d, e, n) = ($a, $b, $c, $d, $e, self.n);
                let all = if $all { "True" } else { "False" };
                vec![
                    R::new(0, "-1", 1, "Conv", format!("[3, {a}, 3, 2]")),
                    R::new(1, "-1", 1, "Conv", format!("[{a}, {b}, 3, 2]")),
                    R::new(2, "-1", n, "C3k2", format!("[{b}, {c}, {n}, {all}, 0.25]")),
                    R::new(3, "-1", 1, "Conv", format!("[{c}, {c}, 3, 2]")),
                    R::new(4, "-1", n, "C3k2", format!("[{c}, {d}, {n}, {all}, 0.25]")),
                    R::new(5, "-1", 1, "Conv", format!("[{d}, {d}, 3, 2]")),
                    R::new(6, "-1", n, "C3k2", format!("[{d}, {d}, {n}, True]")),
                    R::new(7, "-1", 1, "Conv", format!("[{d}, {e}, 3, 2]")),
                    R::new(8, "-1", n, "C3k2", format!("[{e}, {e}, {n}, True]")),
                    R::new(9, "-1", 1, "SPPF", format!("[{e}, {e}, 5]")),
                    R::new(10, "-1", n, "C2PSA", format!("[{e}, {e}, {n}]")),
                    R::new(11, "-1", 1, "nn.Upsample", "[None, 2, 'nearest']".into()),
                    R::new(12, "[-1, 6]", 1, self.fusions[0].kind(), "[1]".into()),
                    R::new(13, "-1", n, "C3k2", format!("[{}, {d}, {n}, {all}]", e + d)),
                    R::new(14, "-1", 1, "nn.Upsample", "[None, 2, 'nearest']".into()),
                    R::new(15, "[-1, 4]", 1, self.fusions[1].kind(), "[1]".into()),
                    R::new(16, "-1", n, "C3k2", format!("[{}, {c}, {n}, {all}]", 2 * d)),
                    R::new(17, "-1", 1, "Conv", format!("[{c}, {c}, 3, 2]")),
                    R::new(18, "[-1, 13]", 1, self.fusions[2].kind(), "[1]".into()),
                    R::new(19, "-1", n, "C3k2", format!("[{}, {d}, {n}, {all}]", c + d)),
                    R::new(20, "-1", 1, "Conv", format!("[{d}, {d}, 3, 2]")),
                    R::new(21, "[-1, 10]", 1, self.fusions[3].kind(), "[1]".into()),
                    R::new(22, "-1", n, "C3k2", format!("[{}, {e}, {n}, True]", d + e)),
                    R::new(23, "[16, 19, 22]", 1, "Detect", format!("[{}, 16, [{c}, {d}, {e}]]", self.nc)),
                ]
            }
        }

        impl $crate::Detector for $name {
            fn name(&self) -> &str {
                $id
            }
            fn family(&self) -> $crate::Family {
                $crate::Family::V11
            }
            fn nc(&self) -> usize {
                self.nc
            }
            fn strides(&self) -> [usize; 3] {
                $crate::detect::STRIDES
            }
            fn anchors(&self) -> Vec<[(f32, f32); 3]> {
                Vec::new()
            }
            fn store(&self) -> &q2_nn::ParamStore {
                &self.store
            }
            fn run(&self, x: &candle_core::Tensor, cx: $crate::blocks::Ctx<'_>) -> $crate::Result<([candle_core::Tensor; 3], $crate::HeadOut)> {
                $name::run(self, x, cx)
            }
            fn fusion_consumers(&self) -> Vec<(usize, Vec<q2_fusion::Consumer<'_>>)> {
                use $crate::blocks::consumer;
                vec![
                    (12, vec![consumer("model.13.cv1", &self.l13.cv1)]),
                    (15, vec![consumer("model.16.cv1", &self.l16.cv1)]),
                    (18, vec![consumer("model.19.cv1", &self.l19.cv1)]),
                    (21, vec![consumer("model.22.cv1", &self.l22.cv1)]),
                ]
            }
            fn feature_quantizers(&self) -> [Option<&dyn q2_quant::Quantizer>; 3] {
                [self.det.cv2.0.c0.aq.as_deref(), self.det.cv2.1.c0.aq.as_deref(), self.det.cv2.2.c0.aq.as_deref()]
            }
            fn decode(&self, out: &$crate::HeadOut) -> $crate::Result<candle_core::Tensor> {
                match out {
                    $crate::HeadOut::V11 { box_raw, cls_raw } => $crate::detect::decode_v11(box_raw, cls_raw, &self.det.dfl),
                    _ => Err($crate::YoloError::Invalid(format!("{}: cannot decode YOLOv5 head outputs", $id))),
                }
            }
            fn layer_table(&self) -> Vec<$crate::summary::LayerRow> {
                $name::layer_table(self)
            }
            fn count_ops(&self, x: &candle_core::Tensor) -> $crate::Result<(u64, u64)> {
                let prof = $crate::blocks::Prof::default();
                let cx = $crate::blocks::Ctx { prof: Some(&prof), ..$crate::blocks::Ctx::new(q2_nn::Mode::Eval) };
                self.run(x, cx)?;
                // the DFL's 1×1 conv that Detect's inference runs: 4·A outputs × 16 bins
                let (_, _, h, w) = x.dims4()?;
                let a: usize = $crate::detect::STRIDES.iter().map(|s| (h / s) * (w / s)).sum();
                prof.add((4 * a * $crate::detect::REG_MAX) as u64);
                Ok((prof.ops.get(), prof.quad.get()))
            }
        }
    };
}

yolo11_scale!(
    /// YOLO11n (scale n: depth 0.50, width 0.25, max channels 1024).
    Yolo11n, "yolo11n", 0.5, false, 16, 32, 64, 128, 256
);
yolo11_scale!(
    /// YOLO11s (scale s: depth 0.50, width 0.50, max channels 1024).
    Yolo11s, "yolo11s", 0.5, false, 32, 64, 128, 256, 512
);
yolo11_scale!(
    /// YOLO11m (scale m: depth 0.50, width 1.00, max channels 512; C3k inner blocks everywhere).
    Yolo11m, "yolo11m", 0.5, true, 64, 128, 256, 512, 512
);
