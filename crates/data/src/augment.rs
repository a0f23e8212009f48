//! The ultralytics/yolov5 training augmentations (`utils/augmentations.py`,
//! `utils/dataloaders.py`) on RGB u8 images and pixel `xyxy` labels:
//!
//! | q2 | ultralytics |
//! |---|---|
//! | [`resize_long_side`] | `LoadImagesAndLabels.load_image` (long side → `img_size`, `ceil`, linear or area) |
//! | [`letterbox`] | `letterbox(auto=False, scaleFill=False, color=114)` |
//! | [`mosaic`] | the tiling part of `load_mosaic` (2s × 2s canvas of 114, four tiles around `(xc, yc)`) |
//! | [`random_perspective`] | `random_perspective` (M = T·S·R·P·C, border 114, label warp, clip, `box_candidates`) |
//! | [`augment_hsv`] | `augment_hsv` (gains `1 + U(−1,1)·g`, LUTs in OpenCV's 8-bit HSV, H in [0, 180)) |
//! | [`fliplr`], [`flipud`] | `np.fliplr`, `np.flipud` |
//! | [`mixup`] | `mixup` (ratio ~ Beta(32, 32), truncation to u8) |
//!
//! Random draws happen in ultralytics' order, from the sample's own RNG. The warp is bilinear
//! with 1/32-pixel source positions like OpenCV's `warpAffine`, but not bit-identical to it; the
//! geometry (matrix, pixel-coordinate convention, border value, label transform and filtering) is
//! the same.

use std::sync::OnceLock;

use rand::Rng;

use crate::image::{resize_area, resize_linear, RgbImage};

/// ultralytics' padding colour.
pub const FILL: u8 = 114;

/// One object during augmentation: class index and pixel box `[x1, y1, x2, y2]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub class: usize,
    pub bbox: [f32; 4],
}

/// Python's `random.uniform(a, b)`.
#[inline]
pub fn uniform<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// `load_image`'s resize: the long side becomes `img_size` (`ceil` of the scaled sides), with
/// linear interpolation when augmenting or enlarging, area averaging otherwise. Returns the image
/// and the (x, y) scale factors actually applied.
pub fn resize_long_side(img: RgbImage, img_size: usize, augment: bool) -> (RgbImage, (f64, f64)) {
    let (w0, h0) = (img.width, img.height);
    let r = img_size as f64 / w0.max(h0) as f64;
    if r == 1.0 {
        return (img, (1.0, 1.0));
    }
    let (w, h) = resized_dims(w0, h0, img_size);
    let out = if augment || r > 1.0 { resize_linear(&img, w, h) } else { resize_area(&img, w, h) };
    (out, (w as f64 / w0 as f64, h as f64 / h0 as f64))
}

/// Where a letterboxed image sits in its canvas: the scale applied and the padding (left/top,
/// fractional as ultralytics returns it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LetterboxInfo {
    /// (width, height) ratio.
    pub ratio: (f64, f64),
    /// (dw, dh): half the total padding on each axis.
    pub pad: (f64, f64),
}

/// `letterbox(im, new_shape=(h, w), auto=False, scaleup=scaleup)`: scale to fit (never up unless
/// `scaleup`), centre, pad with 114. `round` is Python's (half to even).
pub fn letterbox(img: &RgbImage, new_shape: (usize, usize), scaleup: bool) -> (RgbImage, LetterboxInfo) {
    let (nh, nw) = new_shape;
    let (h, w) = (img.height as f64, img.width as f64);
    let mut r = (nh as f64 / h).min(nw as f64 / w);
    if !scaleup {
        r = r.min(1.0);
    }
    let (uw, uh) = ((w * r).round_ties_even() as usize, (h * r).round_ties_even() as usize);
    let (dw, dh) = ((nw as f64 - uw as f64) / 2.0, (nh as f64 - uh as f64) / 2.0);
    let resized;
    let src = if (uw, uh) != (img.width, img.height) {
        resized = resize_linear(img, uw.max(1), uh.max(1));
        &resized
    } else {
        img
    };
    let top = (dh - 0.1).round_ties_even().max(0.0) as usize;
    let bottom = (dh + 0.1).round_ties_even().max(0.0) as usize;
    let left = (dw - 0.1).round_ties_even().max(0.0) as usize;
    let right = (dw + 0.1).round_ties_even().max(0.0) as usize;
    let (ow, oh) = (src.width + left + right, src.height + top + bottom);
    let mut out = RgbImage::filled(ow, oh, [FILL; 3]);
    for y in 0..src.height {
        let o = ((y + top) * ow + left) * 3;
        out.data[o..o + src.width * 3].copy_from_slice(src.row(y));
    }
    (out, LetterboxInfo { ratio: (r, r), pad: (dw, dh) })
}

/// The size `load_image` resizes a `w0 × h0` image to: long side `img_size`, `ceil` of the
/// scaled sides (unchanged when the long side already is `img_size`).
pub fn resized_dims(w0: usize, h0: usize, img_size: usize) -> (usize, usize) {
    let r = img_size as f64 / w0.max(h0) as f64;
    if r == 1.0 {
        (w0, h0)
    } else {
        (((w0 as f64 * r).ceil() as usize).max(1), ((h0 as f64 * r).ceil() as usize).max(1))
    }
}

/// Where one mosaic tile goes: the canvas rectangle `[x1a, x2a) × [y1a, y2a)` receives the tile's
/// pixels starting at `(x1b, y1b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePlace {
    pub x1a: usize,
    pub y1a: usize,
    pub x2a: usize,
    pub y2a: usize,
    pub x1b: usize,
    pub y1b: usize,
}

impl TilePlace {
    /// Label offset (`padw`, `padh` in ultralytics).
    pub fn offset(&self) -> (f32, f32) {
        (self.x1a as f32 - self.x1b as f32, self.y1a as f32 - self.y1b as f32)
    }
}

/// `load_mosaic`'s placement of four tiles of sizes `(w, h)` on the `2s × 2s` canvas around the
/// centre `(xc, yc)`: top-left, top-right, bottom-left, bottom-right.
pub fn mosaic_places(sizes: [(usize, usize); 4], s: usize, xc: usize, yc: usize) -> [TilePlace; 4] {
    let s2 = 2 * s as isize;
    let (xc, yc) = (xc as isize, yc as isize);
    let mut out = [TilePlace { x1a: 0, y1a: 0, x2a: 0, y2a: 0, x1b: 0, y1b: 0 }; 4];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let (w, h) = (w as isize, h as isize);
        let (x1a, y1a, x2a, y2a, x1b, y1b) = match i {
            0 => {
                let (x1a, y1a, x2a, y2a) = ((xc - w).max(0), (yc - h).max(0), xc, yc);
                (x1a, y1a, x2a, y2a, w - (x2a - x1a), h - (y2a - y1a))
            }
            1 => {
                let (x1a, y1a, x2a, y2a) = (xc, (yc - h).max(0), (xc + w).min(s2), yc);
                (x1a, y1a, x2a, y2a, 0, h - (y2a - y1a))
            }
            2 => {
                let (x1a, y1a, x2a, y2a) = ((xc - w).max(0), yc, xc, s2.min(yc + h));
                (x1a, y1a, x2a, y2a, w - (x2a - x1a), 0)
            }
            _ => {
                let (x1a, y1a, x2a, y2a) = (xc, yc, (xc + w).min(s2), s2.min(yc + h));
                (x1a, y1a, x2a, y2a, 0, 0)
            }
        };
        let c = |v: isize| v.clamp(0, s2) as usize;
        out[i] = TilePlace { x1a: c(x1a), y1a: c(y1a), x2a: c(x2a.max(x1a)), y2a: c(y2a.max(y1a)), x1b: x1b.max(0) as usize, y1b: y1b.max(0) as usize };
    }
    out
}

/// A window `[x0, x0 + w) × [y0, y0 + h)` of a canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

impl Window {
    pub fn intersects(&self, p: &TilePlace) -> bool {
        p.x1a < self.x0 + self.w && p.x2a > self.x0 && p.y1a < self.y0 + self.h && p.y2a > self.y0 && p.x2a > p.x1a && p.y2a > p.y1a
    }
}

/// Paints the mosaic tiles (those given) into a window of the 114-filled canvas. Tiles left out
/// (`None`) must not intersect the window.
pub fn mosaic_window(tiles: [Option<&RgbImage>; 4], places: &[TilePlace; 4], win: Window) -> RgbImage {
    let mut canvas = RgbImage::filled(win.w, win.h, [FILL; 3]);
    for (img, p) in tiles.iter().zip(places) {
        let Some(img) = img else { continue };
        let (x0, x1) = (p.x1a.max(win.x0), p.x2a.min(win.x0 + win.w));
        let (y0, y1) = (p.y1a.max(win.y0), p.y2a.min(win.y0 + win.h));
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let sx = p.x1b + (x0 - p.x1a);
        let cw = (x1 - x0).min(img.width.saturating_sub(sx));
        for y in y0..y1 {
            let sy = p.y1b + (y - p.y1a);
            if sy >= img.height {
                break;
            }
            let src = &img.row(sy)[sx * 3..(sx + cw) * 3];
            let o = ((y - win.y0) * win.w + (x0 - win.x0)) * 3;
            canvas.data[o..o + cw * 3].copy_from_slice(src);
        }
    }
    canvas
}

/// The tiles' labels shifted onto the canvas and clipped to `[0, 2s]`.
pub fn mosaic_labels(labels: [&[Label]; 4], places: &[TilePlace; 4], s: usize) -> Vec<Label> {
    let s2 = 2.0 * s as f32;
    let mut out = Vec::new();
    for (lab, p) in labels.iter().zip(places) {
        let (padw, padh) = p.offset();
        for l in lab.iter() {
            let [a, b, c, d] = l.bbox;
            let clip = |v: f32| v.clamp(0.0, s2);
            out.push(Label { class: l.class, bbox: [clip(a + padw), clip(b + padh), clip(c + padw), clip(d + padh)] });
        }
    }
    out
}

/// Places four (already resized) tiles on a `2s × 2s` canvas filled with 114 around the centre
/// `(xc, yc)`: top-left, top-right, bottom-left, bottom-right, as `load_mosaic`. Labels are
/// shifted with their tile and clipped to `[0, 2s]`.
pub fn mosaic(tiles: [(&RgbImage, &[Label]); 4], s: usize, xc: usize, yc: usize) -> (RgbImage, Vec<Label>) {
    let places = mosaic_places(tiles.map(|(t, _)| (t.width, t.height)), s, xc, yc);
    let canvas = mosaic_window(tiles.map(|(t, _)| Some(t)), &places, Window { x0: 0, y0: 0, w: 2 * s, h: 2 * s });
    (canvas, mosaic_labels(tiles.map(|(_, l)| l), &places, s))
}

/// The part of an `in_w × in_h` source that warping it by `m` to `out_w × out_h` reads (with a
/// 2-pixel margin for the bilinear neighbours), clamped to the source. A warp of that window by
/// `m · translate(x0, y0)` equals the warp of the whole source.
pub fn warp_source_window(m: &Mat3, out_w: usize, out_h: usize, in_w: usize, in_h: usize) -> Window {
    let full = Window { x0: 0, y0: 0, w: in_w, h: in_h };
    let Some(inv) = invert3(m) else { return full };
    let (mut lo_x, mut lo_y, mut hi_x, mut hi_y) = (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (x, y) in [(0.0, 0.0), (out_w as f64, 0.0), (0.0, out_h as f64), (out_w as f64, out_h as f64)] {
        let w = inv[2][0] * x + inv[2][1] * y + inv[2][2];
        if w <= 1e-12 {
            return full;
        }
        let (sx, sy) = ((inv[0][0] * x + inv[0][1] * y + inv[0][2]) / w, (inv[1][0] * x + inv[1][1] * y + inv[1][2]) / w);
        lo_x = lo_x.min(sx);
        lo_y = lo_y.min(sy);
        hi_x = hi_x.max(sx);
        hi_y = hi_y.max(sy);
    }
    if !(lo_x.is_finite() && lo_y.is_finite() && hi_x.is_finite() && hi_y.is_finite()) {
        return full;
    }
    let x0 = (lo_x.floor() - 2.0).clamp(0.0, in_w as f64) as usize;
    let y0 = (lo_y.floor() - 2.0).clamp(0.0, in_h as f64) as usize;
    let x1 = (hi_x.ceil() + 3.0).clamp(0.0, in_w as f64) as usize;
    let y1 = (hi_y.ceil() + 3.0).clamp(0.0, in_h as f64) as usize;
    if x1 <= x0 || y1 <= y0 {
        // Nothing of the source is read: any 1-pixel window gives the same all-114 output.
        return Window { x0: 0, y0: 0, w: 1, h: 1 };
    }
    Window { x0, y0, w: x1 - x0, h: y1 - y0 }
}

/// Warps `img` by `m` (affine unless `perspective`) to `out_w × out_h`, as `random_perspective`.
pub fn warp(img: &RgbImage, m: &Mat3, out_w: usize, out_h: usize, perspective: bool) -> RgbImage {
    if perspective {
        warp_perspective(img, m, out_w, out_h)
    } else {
        warp_affine(img, &[m[0], m[1]], out_w, out_h)
    }
}

/// `m · translate(dx, dy)`: the same map applied to a window whose origin is `(dx, dy)`.
pub fn shift_source(m: &Mat3, dx: f64, dy: f64) -> Mat3 {
    let mut t = EYE;
    t[0][2] = dx;
    t[1][2] = dy;
    matmul(m, &t)
}

/// The random-perspective parameters (ultralytics' hyperparameter names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perspective {
    pub degrees: f64,
    pub translate: f64,
    pub scale: f64,
    pub shear: f64,
    pub perspective: f64,
}

impl Perspective {
    pub fn from_hyp(h: &crate::Hyp) -> Self {
        Self { degrees: h.degrees, translate: h.translate, scale: h.scale, shear: h.shear, perspective: h.perspective }
    }
}

/// A 3×3 matrix (row-major), as numpy's.
pub type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

const EYE: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The matrix `random_perspective` draws, and its scale `s`: `M = T·S·R·P·C` for an input of
/// `in_w × in_h` and an output of `out_w × out_h`. Draw order as ultralytics: perspective x, y,
/// angle, scale, shear x, y, translation x, y.
pub fn perspective_matrix<R: Rng + ?Sized>(p: &Perspective, in_w: usize, in_h: usize, out_w: usize, out_h: usize, rng: &mut R) -> (Mat3, f64) {
    let mut c = EYE;
    c[0][2] = -(in_w as f64) / 2.0;
    c[1][2] = -(in_h as f64) / 2.0;
    let mut pm = EYE;
    pm[2][0] = uniform(rng, -p.perspective, p.perspective);
    pm[2][1] = uniform(rng, -p.perspective, p.perspective);
    let a = uniform(rng, -p.degrees, p.degrees);
    let s = uniform(rng, 1.0 - p.scale, 1.0 + p.scale);
    // cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    let (sin, cos) = (a.to_radians().sin() * s, a.to_radians().cos() * s);
    let r = [[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]];
    let mut sh = EYE;
    sh[0][1] = (uniform(rng, -p.shear, p.shear) * std::f64::consts::PI / 180.0).tan();
    sh[1][0] = (uniform(rng, -p.shear, p.shear) * std::f64::consts::PI / 180.0).tan();
    let mut t = EYE;
    t[0][2] = uniform(rng, 0.5 - p.translate, 0.5 + p.translate) * out_w as f64;
    t[1][2] = uniform(rng, 0.5 - p.translate, 0.5 + p.translate) * out_h as f64;
    let m = matmul(&t, &matmul(&sh, &matmul(&r, &matmul(&pm, &c))));
    (m, s)
}

/// ultralytics' `box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1)`: keep a warped
/// box wider and taller than 2 px, with aspect ratio < 100 and more than 10% of the (scaled)
/// original area.
pub fn box_candidate(before: [f32; 4], after: [f32; 4], wh_thr: f32, ar_thr: f32, area_thr: f32) -> bool {
    let eps = 1e-16f32;
    let (w1, h1) = (before[2] - before[0], before[3] - before[1]);
    let (w2, h2) = (after[2] - after[0], after[3] - after[1]);
    let ar = (w2 / (h2 + eps)).max(h2 / (w2 + eps));
    w2 > wh_thr && h2 > wh_thr && w2 * h2 / (w1 * h1 + eps) > area_thr && ar < ar_thr
}

/// Applies `m` to each label's four corners, takes their bounding box, clips it to the output and
/// keeps the [`box_candidate`]s (the original box scaled by `s` is the reference).
pub fn warp_labels(labels: &[Label], m: &Mat3, s: f64, out_w: usize, out_h: usize, perspective: bool) -> Vec<Label> {
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        let [x1, y1, x2, y2] = l.bbox.map(|v| v as f64);
        let corners = [(x1, y1), (x2, y2), (x1, y2), (x2, y1)];
        let (mut lo_x, mut lo_y, mut hi_x, mut hi_y) = (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for (x, y) in corners {
            let mut px = m[0][0] * x + m[0][1] * y + m[0][2];
            let mut py = m[1][0] * x + m[1][1] * y + m[1][2];
            if perspective {
                let w = m[2][0] * x + m[2][1] * y + m[2][2];
                px /= w;
                py /= w;
            }
            lo_x = lo_x.min(px);
            lo_y = lo_y.min(py);
            hi_x = hi_x.max(px);
            hi_y = hi_y.max(py);
        }
        let new = [lo_x.clamp(0.0, out_w as f64), lo_y.clamp(0.0, out_h as f64), hi_x.clamp(0.0, out_w as f64), hi_y.clamp(0.0, out_h as f64)].map(|v| v as f32);
        let before = l.bbox.map(|v| (v as f64 * s) as f32);
        if box_candidate(before, new, 2.0, 100.0, 0.1) {
            out.push(Label { class: l.class, bbox: new });
        }
    }
    out
}

/// `random_perspective(img, labels, degrees, translate, scale, shear, perspective, border)`:
/// output size `img + 2·border` (border = (y, x); mosaic uses −s/2), image warped with border
/// value 114 (skipped when nothing changes), labels warped, clipped and filtered.
pub fn random_perspective<R: Rng + ?Sized>(img: &RgbImage, labels: &[Label], p: &Perspective, border: (isize, isize), rng: &mut R) -> (RgbImage, Vec<Label>) {
    let out_h = (img.height as isize + 2 * border.0).max(1) as usize;
    let out_w = (img.width as isize + 2 * border.1).max(1) as usize;
    let (m, s) = perspective_matrix(p, img.width, img.height, out_w, out_h, rng);
    let changed = border != (0, 0) || m != EYE;
    let use_persp = p.perspective != 0.0;
    let out = if changed { warp(img, &m, out_w, out_h, use_persp) } else { img.clone() };
    let labels = if labels.is_empty() { vec![] } else { warp_labels(labels, &m, s, out_w, out_h, use_persp) };
    (out, labels)
}

const SUB_BITS: u32 = 5;
const SUB: i64 = 1 << SUB_BITS;

#[inline]
fn split_coord(v: f64) -> (i64, i64) {
    let q = (v * SUB as f64).round() as i64;
    (q.div_euclid(SUB), q.rem_euclid(SUB))
}

/// `cv2.warpAffine(src, m, (out_w, out_h), flags=INTER_LINEAR, borderValue=(114,114,114))`:
/// `dst(x, y) = src(m⁻¹·(x, y))`, integer pixel coordinates, bilinear with 1/32-pixel source
/// positions, out-of-image neighbours read as 114. Axis-aligned maps (no rotation or shear, the
/// case of every bundled hyperparameter set) take a separable fast path with the same result.
pub fn warp_affine(src: &RgbImage, m: &[[f64; 3]; 2], out_w: usize, out_h: usize) -> RgbImage {
    let [[a, b, c], [d, e, f]] = *m;
    let det = a * e - b * d;
    if det == 0.0 || !det.is_finite() {
        return RgbImage::filled(out_w, out_h, [FILL; 3]);
    }
    // Inverse map.
    let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
    let ic = -(ia * c + ib * f);
    let if_ = -(id * c + ie * f);
    if ib == 0.0 && id == 0.0 {
        return warp_separable(src, (ia, ic), (ie, if_), out_w, out_h);
    }
    let inv = [[ia, ib, ic], [id, ie, if_], [0.0, 0.0, 1.0]];
    warp_general(src, &inv, false, out_w, out_h)
}

/// `cv2.warpPerspective` with the same conventions as [`warp_affine`].
pub fn warp_perspective(src: &RgbImage, m: &Mat3, out_w: usize, out_h: usize) -> RgbImage {
    match invert3(m) {
        Some(inv) => warp_general(src, &inv, true, out_w, out_h),
        None => RgbImage::filled(out_w, out_h, [FILL; 3]),
    }
}

/// The inverse of `m`, if it has one.
pub fn invert3(m: &Mat3) -> Option<Mat3> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let inv = |r: usize, c: usize| -> f64 {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        (m[c1][r1] * m[c2][r2] - m[c1][r2] * m[c2][r1]) / det
    };
    Some([[inv(0, 0), inv(0, 1), inv(0, 2)], [inv(1, 0), inv(1, 1), inv(1, 2)], [inv(2, 0), inv(2, 1), inv(2, 2)]])
}

#[inline(always)]
fn lerp2(p00: u8, p01: u8, p10: u8, p11: u8, wx: u32, wy: u32) -> u8 {
    let s = SUB as u32;
    let top = p00 as u32 * (s - wx) + p01 as u32 * wx;
    let bot = p10 as u32 * (s - wx) + p11 as u32 * wx;
    ((top * (s - wy) + bot * wy + (1 << (2 * SUB_BITS - 1))) >> (2 * SUB_BITS)) as u8
}

fn warp_separable(src: &RgbImage, (ax, bx): (f64, f64), (ay, by): (f64, f64), out_w: usize, out_h: usize) -> RgbImage {
    let (sw, sh) = (src.width as i64, src.height as i64);
    // Source rows are copied into a buffer with one 114 pixel on each side; column indices point
    // into it (0 and sw + 1 are the border pixels). Each needed source row is interpolated
    // horizontally once (values ×32 in u16), then pairs of such rows are blended vertically.
    let pad_idx = |x: i64| -> usize {
        if x < 0 || x >= sw {
            0
        } else {
            (x + 1) as usize * 3
        }
    };
    let cols: Vec<(usize, usize, u16)> = (0..out_w)
        .map(|x| {
            let (x0, wx) = split_coord(ax * x as f64 + bx);
            (pad_idx(x0), pad_idx(x0 + 1), wx as u16)
        })
        .collect();
    let plen = (src.width + 2) * 3;
    let mut padded = vec![FILL; plen];
    let n = out_w * 3;
    let border_h = vec![FILL as u16 * SUB as u16; n];
    let hrow = |yy: i64, padded: &mut Vec<u8>, out: &mut Vec<u16>| {
        if yy < 0 || yy >= sh {
            out.copy_from_slice(&border_h);
            return;
        }
        padded[3..plen - 3].copy_from_slice(src.row(yy as usize));
        for (o, &(i0, i1, wx)) in out.chunks_exact_mut(3).zip(&cols) {
            let w0 = SUB as u16 - wx;
            o[0] = padded[i0] as u16 * w0 + padded[i1] as u16 * wx;
            o[1] = padded[i0 + 1] as u16 * w0 + padded[i1 + 1] as u16 * wx;
            o[2] = padded[i0 + 2] as u16 * w0 + padded[i1 + 2] as u16 * wx;
        }
    };
    let (mut h0, mut h1) = (vec![0u16; n], vec![0u16; n]);
    let mut have: (i64, i64) = (i64::MIN, i64::MIN);
    let mut out = RgbImage { width: out_w, height: out_h, data: crate::image::take_buffer(out_w * out_h * 3) };
    for y in 0..out_h {
        let (y0, wy) = split_coord(ay * y as f64 + by);
        let dst = out.row_mut(y);
        if y0 < -1 || y0 >= sh {
            dst.fill(FILL);
            continue;
        }
        if have.0 != y0 {
            if have.1 == y0 {
                std::mem::swap(&mut h0, &mut h1);
            } else {
                hrow(y0, &mut padded, &mut h0);
            }
            hrow(y0 + 1, &mut padded, &mut h1);
            have = (y0, y0 + 1);
        }
        let (wy, wy0) = (wy as u32, (SUB - wy) as u32);
        let round = 1u32 << (2 * SUB_BITS - 1);
        for ((d, &a), &b) in dst.iter_mut().zip(&h0).zip(&h1) {
            *d = ((a as u32 * wy0 + b as u32 * wy + round) >> (2 * SUB_BITS)) as u8;
        }
    }
    out
}

fn warp_general(src: &RgbImage, inv: &Mat3, perspective: bool, out_w: usize, out_h: usize) -> RgbImage {
    let (sw, sh) = (src.width as i64, src.height as i64);
    let mut out = RgbImage { width: out_w, height: out_h, data: crate::image::take_buffer(out_w * out_h * 3) };
    let get = |x: i64, y: i64, ch: usize| -> u8 {
        if x < 0 || y < 0 || x >= sw || y >= sh {
            FILL
        } else {
            src.data[((y * sw + x) * 3) as usize + ch]
        }
    };
    for y in 0..out_h {
        let dst = out.row_mut(y);
        for x in 0..out_w {
            let (xf, yf) = (x as f64, y as f64);
            let mut sx = inv[0][0] * xf + inv[0][1] * yf + inv[0][2];
            let mut sy = inv[1][0] * xf + inv[1][1] * yf + inv[1][2];
            if perspective {
                let w = inv[2][0] * xf + inv[2][1] * yf + inv[2][2];
                if w == 0.0 {
                    dst[x * 3..x * 3 + 3].fill(FILL);
                    continue;
                }
                sx /= w;
                sy /= w;
            }
            if !(sx.is_finite() && sy.is_finite()) || sx.abs() > 1e9 || sy.abs() > 1e9 {
                dst[x * 3..x * 3 + 3].fill(FILL);
                continue;
            }
            let (x0, wx) = split_coord(sx);
            let (y0, wy) = split_coord(sy);
            for ch in 0..3 {
                dst[x * 3 + ch] = lerp2(get(x0, y0, ch), get(x0 + 1, y0, ch), get(x0, y0 + 1, ch), get(x0 + 1, y0 + 1, ch), wx as u32, wy as u32);
            }
        }
    }
    out
}

struct HsvTables {
    sdiv: [i32; 256],
    hdiv: [i32; 256],
    /// `coef` again for 32-bit gathers, index `h·256 + s`: `r | g << 16`, and `b`.
    coef_rg: Vec<u32>,
    coef_b: Vec<u32>,
    /// For H in 0..180 and S in 0..256: the RGB multipliers of V, 15-bit fixed point.
    coef: Box<[[[u16; 3]; 256]; 180]>,
}

fn hsv_tables() -> &'static HsvTables {
    static T: OnceLock<HsvTables> = OnceLock::new();
    T.get_or_init(|| {
        const SHIFT: u32 = 12;
        let mut sdiv = [0i32; 256];
        let mut hdiv = [0i32; 256];
        for i in 1..256 {
            sdiv[i] = ((255i64 << SHIFT) as f64 / i as f64).round_ties_even() as i32;
            hdiv[i] = ((180i64 << SHIFT) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        // OpenCV HSV2RGB: h·(6/180) → sector and fraction; tab = [v, v(1−s), v(1−s·f), v(1−s(1−f))];
        // (b, g, r) = tab[sector_data[sector]].
        const SECTOR: [[usize; 3]; 6] = [[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]];
        let mut coef: Box<[[[u16; 3]; 256]; 180]> = vec![[[0u16; 3]; 256]; 180].into_boxed_slice().try_into().expect("180 rows");
        for h in 0..180 {
            for s in 0..256 {
                let hh = h as f32 * (6.0 / 180.0);
                let sector = (hh.floor() as usize).min(5);
                let f = hh - sector as f32;
                let sf = s as f32 / 255.0;
                let tab = [1.0, 1.0 - sf, 1.0 - sf * f, 1.0 - sf * (1.0 - f)];
                let [bi, gi, ri] = SECTOR[sector];
                let q = |v: f32| (v * 32768.0).round() as u16;
                coef[h][s] = [q(tab[ri]), q(tab[gi]), q(tab[bi])];
            }
        }
        let coef_rg = coef.iter().flatten().map(|c| c[0] as u32 | (c[1] as u32) << 16).collect();
        let coef_b = coef.iter().flatten().map(|c| c[2] as u32).collect();
        HsvTables { sdiv, hdiv, coef, coef_rg, coef_b }
    })
}

/// OpenCV's 8-bit RGB → HSV (H in [0, 180), S and V in [0, 255]), integer arithmetic with its
/// division tables.
#[inline]
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let t = hsv_tables();
    rgb_to_hsv_t(t, r, g, b)
}

#[inline(always)]
fn rgb_to_hsv_t(t: &HsvTables, r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    const SHIFT: u32 = 12;
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let v = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let diff = v - vmin;
    let vr = if v == r { -1 } else { 0 };
    let vg = if v == g { -1 } else { 0 };
    let s = (diff * t.sdiv[v as u8 as usize] + (1 << (SHIFT - 1))) >> SHIFT;
    let mut h = (vr & (g - b)) + (!vr & ((vg & (b - r + 2 * diff)) + ((!vg) & (r - g + 4 * diff))));
    h = (h * t.hdiv[diff as u8 as usize] + (1 << (SHIFT - 1))) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    (h.min(179) as u8, s as u8, v as u8)
}

/// OpenCV's 8-bit HSV → RGB (to within one level: fixed-point multipliers instead of floats).
#[inline]
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    let c = hsv_tables().coef[h.min(179) as usize][s as usize];
    let f = |k: u16| ((v as u32 * k as u32 + (1 << 14)) >> 15) as u8;
    (f(c[0]), f(c[1]), f(c[2]))
}

/// The three lookup tables of one `augment_hsv` call.
#[derive(Clone)]
pub struct HsvLuts {
    pub hue: [u8; 256],
    pub sat: [u8; 256],
    pub val: [u8; 256],
    /// The gains the LUTs were made from.
    pub gains: [f64; 3],
}

impl HsvLuts {
    /// Draws the gains `1 + U(−1, 1)·g` (all three, even when a gain is 0) and builds the LUTs as
    /// ultralytics: hue `(x·r) mod 180`, saturation and value `clip(x·r, 0, 255)`, truncated.
    /// `None` (and nothing drawn) when all gains are 0.
    pub fn draw<R: Rng + ?Sized>(hgain: f64, sgain: f64, vgain: f64, rng: &mut R) -> Option<Self> {
        if hgain == 0.0 && sgain == 0.0 && vgain == 0.0 {
            return None;
        }
        let r = [uniform(rng, -1.0, 1.0) * hgain + 1.0, uniform(rng, -1.0, 1.0) * sgain + 1.0, uniform(rng, -1.0, 1.0) * vgain + 1.0];
        let mut l = HsvLuts { hue: [0; 256], sat: [0; 256], val: [0; 256], gains: r };
        for x in 0..256 {
            let xf = x as f64;
            l.hue[x] = (xf * r[0]).rem_euclid(180.0) as u8;
            l.sat[x] = (xf * r[1]).clamp(0.0, 255.0) as u8;
            l.val[x] = (xf * r[2]).clamp(0.0, 255.0) as u8;
        }
        Some(l)
    }

    /// One pixel through RGB → HSV → LUTs → RGB.
    #[inline(always)]
    fn apply(&self, t: &HsvTables, r: u8, g: u8, b: u8) -> [u8; 3] {
        let (h, s, v) = rgb_to_hsv_t(t, r, g, b);
        let (h, s, v) = (self.hue[h as usize], self.sat[s as usize], self.val[v as usize]);
        let c = t.coef[h.min(179) as usize][s as usize];
        let vv = v as u32;
        [((vv * c[0] as u32 + (1 << 14)) >> 15) as u8, ((vv * c[1] as u32 + (1 << 14)) >> 15) as u8, ((vv * c[2] as u32 + (1 << 14)) >> 15) as u8]
    }
}

/// `augment_hsv(im, hgain, sgain, vgain)`: three gains `1 + U(−1, 1)·g` (drawn even when a gain
/// is 0), applied through LUTs in OpenCV's 8-bit HSV space. Nothing happens (and nothing is
/// drawn) when all gains are 0, as in ultralytics.
pub fn augment_hsv<R: Rng + ?Sized>(img: &mut RgbImage, hgain: f64, sgain: f64, vgain: f64, rng: &mut R) {
    if let Some(l) = HsvLuts::draw(hgain, sgain, vgain, rng) {
        let t = hsv_tables();
        for px in img.data.chunks_exact_mut(3) {
            px.copy_from_slice(&l.apply(t, px[0], px[1], px[2]));
        }
    }
}

/// The last steps of a sample in one pass: HSV LUTs (if any), up-down and left-right flips, and
/// HWC → CHW into `out` (length 3·w·h). Same result as [`augment_hsv`], [`flipud`], [`fliplr`]
/// and [`to_chw_into`] in turn.
pub fn finish_chw(img: &RgbImage, hsv: Option<&HsvLuts>, flip_ud: bool, flip_lr: bool, out: &mut [u8]) {
    let (w, h) = (img.width, img.height);
    let n = w * h;
    let (rp, rest) = out.split_at_mut(n);
    let (gp, bp) = rest.split_at_mut(n);
    let t = hsv_tables();
    #[cfg(target_arch = "x86_64")]
    let l32 = hsv.filter(|_| std::arch::is_x86_feature_detected!("avx2")).map(hsv_avx2::Luts32::new);
    for y in 0..h {
        let dy = if flip_ud { h - 1 - y } else { y };
        let row = img.row(y);
        let (ro, go, bo) = (&mut rp[dy * w..(dy + 1) * w], &mut gp[dy * w..(dy + 1) * w], &mut bp[dy * w..(dy + 1) * w]);
        match hsv {
            None => {
                for (x, px) in row.chunks_exact(3).enumerate() {
                    let dx = if flip_lr { w - 1 - x } else { x };
                    ro[dx] = px[0];
                    go[dx] = px[1];
                    bo[dx] = px[2];
                }
            }
            Some(l) => {
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if let Some(l32) = &l32 {
                    // SAFETY: `l32` exists only when the CPU has AVX2.
                    done = unsafe { hsv_avx2::row(l32, t, row, flip_lr, ro, go, bo) };
                }
                for (x, px) in row.chunks_exact(3).enumerate().skip(done) {
                    let o = l.apply(t, px[0], px[1], px[2]);
                    let dx = if flip_lr { w - 1 - x } else { x };
                    ro[dx] = o[0];
                    go[dx] = o[1];
                    bo[dx] = o[2];
                }
            }
        }
    }
}

/// The HSV pixel pipeline of [`HsvLuts::apply`], 8 pixels at a time with AVX2 (gathers for the
/// tables): the same integer arithmetic, bit-identical results (tested).
#[cfg(target_arch = "x86_64")]
mod hsv_avx2 {
    use super::{HsvLuts, HsvTables};
    use std::arch::x86_64::*;

    /// The hue LUT widened to i32 (gathered when the hue gain is outside [0, 2]), and the gains:
    /// the LUTs are recomputed in f64 lanes with the same operations, so the values are identical.
    pub(super) struct Luts32 {
        hue: [i32; 256],
        gains: [f64; 3],
        hue_by_arithmetic: bool,
    }

    impl Luts32 {
        pub(super) fn new(l: &HsvLuts) -> Self {
            Self { hue: l.hue.map(|v| v as i32), gains: l.gains, hue_by_arithmetic: (0.0..=2.0).contains(&l.gains[0]) }
        }
    }

    /// `(x·gain).clamp(0, 255) as u8` for 8 lanes, in f64 as the LUT was built.
    #[inline(always)]
    unsafe fn lut_clamp(x: __m256i, gain: __m256d) -> __m256i {
        let lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(x));
        let hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(x));
        let f = |v: __m256d| _mm256_cvttpd_epi32(_mm256_max_pd(_mm256_min_pd(_mm256_mul_pd(v, gain), _mm256_set1_pd(255.0)), _mm256_setzero_pd()));
        _mm256_set_m128i(f(hi), f(lo))
    }

    /// `(x·gain).rem_euclid(180) as u8` for 8 lanes and gain in [0, 2]: x·gain < 512, and for
    /// y in [180, 720) the subtractions y − 180 and y − 360 are exact (Sterbenz), as fmod is.
    #[inline(always)]
    unsafe fn lut_hue(x: __m256i, gain: __m256d) -> __m256i {
        let c180 = _mm256_set1_pd(180.0);
        let c360 = _mm256_set1_pd(360.0);
        let f = |v: __m256d| {
            let y = _mm256_mul_pd(v, gain);
            let ge360 = _mm256_cmp_pd::<_CMP_GE_OQ>(y, c360);
            let ge180 = _mm256_cmp_pd::<_CMP_GE_OQ>(y, c180);
            let sub = _mm256_blendv_pd(_mm256_and_pd(ge180, c180), c360, ge360);
            _mm256_cvttpd_epi32(_mm256_sub_pd(y, sub))
        };
        let lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(x));
        let hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(x));
        _mm256_set_m128i(f(hi), f(lo))
    }

    /// Converts the first `8·k` pixels of `row` into the planar outputs (mirrored when `flip_lr`);
    /// returns how many pixels it did.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row(l: &Luts32, t: &HsvTables, row: &[u8], flip_lr: bool, ro: &mut [u8], go: &mut [u8], bo: &mut [u8]) -> usize {
        let w = ro.len();
        let n8 = w / 8 * 8;
        // Byte shuffles that split 8 interleaved RGB pixels (24 bytes: 16 in `a`, 8 in `b`) into
        // 8 R, 8 G and 8 B bytes.
        let z = -1i8;
        let ra = _mm_setr_epi8(0, 3, 6, 9, 12, 15, z, z, z, z, z, z, z, z, z, z);
        let rb = _mm_setr_epi8(z, z, z, z, z, z, 2, 5, z, z, z, z, z, z, z, z);
        let ga = _mm_setr_epi8(1, 4, 7, 10, 13, z, z, z, z, z, z, z, z, z, z, z);
        let gb = _mm_setr_epi8(z, z, z, z, z, 0, 3, 6, z, z, z, z, z, z, z, z);
        let ba = _mm_setr_epi8(2, 5, 8, 11, 14, z, z, z, z, z, z, z, z, z, z, z);
        let bbm = _mm_setr_epi8(z, z, z, z, z, 1, 4, 7, z, z, z, z, z, z, z, z);
        let rev = _mm_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, z, z, z, z, z, z, z, z);
        let (gh, gs, gv) = (_mm256_set1_pd(l.gains[0]), _mm256_set1_pd(l.gains[1]), _mm256_set1_pd(l.gains[2]));
        let half = _mm256_set1_epi32(1 << 11);
        let c179 = _mm256_set1_epi32(179);
        let c180 = _mm256_set1_epi32(180);
        let lo16 = _mm256_set1_epi32(0xFFFF);
        let round15 = _mm256_set1_epi32(1 << 14);
        let zero = _mm256_setzero_si256();
        // 8 i32 lanes (each ≤ 255) → 8 bytes in the low half of an xmm register.
        let pack = |x: __m256i| {
            let p = _mm256_packus_epi16(_mm256_packus_epi32(x, x), zero);
            _mm_unpacklo_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p))
        };
        for x0 in (0..n8).step_by(8) {
            let px = &row[x0 * 3..x0 * 3 + 24];
            // SAFETY (whole block): `px` holds 24 bytes (16 + 8 are read); the stores write 8
            // bytes inside `ro`/`go`/`bo` (x0 + 8 ≤ w); gather indices lie within their tables:
            // v, diff, s in 0..=255, h ≤ 179 after the clamp, so h·256 + s < 180·256.
            let a = _mm_loadu_si128(px.as_ptr() as *const __m128i);
            let b8 = _mm_loadl_epi64(px[16..].as_ptr() as *const __m128i);
            let r = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(a, ra), _mm_shuffle_epi8(b8, rb)));
            let g = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(a, ga), _mm_shuffle_epi8(b8, gb)));
            let b = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(a, ba), _mm_shuffle_epi8(b8, bbm)));
            let v = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
            let vmin = _mm256_min_epi32(_mm256_min_epi32(r, g), b);
            let diff = _mm256_sub_epi32(v, vmin);
            let sd = _mm256_i32gather_epi32::<4>(t.sdiv.as_ptr(), v);
            let s = _mm256_srai_epi32::<12>(_mm256_add_epi32(_mm256_mullo_epi32(diff, sd), half));
            let vr = _mm256_cmpeq_epi32(v, r);
            let vg = _mm256_cmpeq_epi32(v, g);
            let h1 = _mm256_sub_epi32(g, b);
            let h2 = _mm256_add_epi32(_mm256_sub_epi32(b, r), _mm256_slli_epi32::<1>(diff));
            let h3 = _mm256_add_epi32(_mm256_sub_epi32(r, g), _mm256_slli_epi32::<2>(diff));
            let inner = _mm256_or_si256(_mm256_and_si256(vg, h2), _mm256_andnot_si256(vg, h3));
            let h = _mm256_or_si256(_mm256_and_si256(vr, h1), _mm256_andnot_si256(vr, inner));
            let hd = _mm256_i32gather_epi32::<4>(t.hdiv.as_ptr(), diff);
            let h = _mm256_srai_epi32::<12>(_mm256_add_epi32(_mm256_mullo_epi32(h, hd), half));
            let h = _mm256_add_epi32(h, _mm256_and_si256(_mm256_cmpgt_epi32(zero, h), c180));
            let h = _mm256_min_epi32(h, c179);
            let h2 = if l.hue_by_arithmetic { lut_hue(h, gh) } else { _mm256_i32gather_epi32::<4>(l.hue.as_ptr(), h) };
            let h2 = _mm256_min_epi32(h2, c179);
            let s2 = lut_clamp(s, gs);
            let v2 = lut_clamp(v, gv);
            let idx = _mm256_add_epi32(_mm256_slli_epi32::<8>(h2), s2);
            let krg = _mm256_i32gather_epi32::<4>(t.coef_rg.as_ptr() as *const i32, idx);
            let kb = _mm256_i32gather_epi32::<4>(t.coef_b.as_ptr() as *const i32, idx);
            let kr = _mm256_and_si256(krg, lo16);
            let kg = _mm256_srli_epi32::<16>(krg);
            let out = |k: __m256i| _mm256_srli_epi32::<15>(_mm256_add_epi32(_mm256_mullo_epi32(v2, k), round15));
            let (pr, pg, pb) = (pack(out(kr)), pack(out(kg)), pack(out(kb)));
            if flip_lr {
                let d = w - x0 - 8;
                _mm_storel_epi64(ro[d..d + 8].as_mut_ptr() as *mut __m128i, _mm_shuffle_epi8(pr, rev));
                _mm_storel_epi64(go[d..d + 8].as_mut_ptr() as *mut __m128i, _mm_shuffle_epi8(pg, rev));
                _mm_storel_epi64(bo[d..d + 8].as_mut_ptr() as *mut __m128i, _mm_shuffle_epi8(pb, rev));
            } else {
                _mm_storel_epi64(ro[x0..x0 + 8].as_mut_ptr() as *mut __m128i, pr);
                _mm_storel_epi64(go[x0..x0 + 8].as_mut_ptr() as *mut __m128i, pg);
                _mm_storel_epi64(bo[x0..x0 + 8].as_mut_ptr() as *mut __m128i, pb);
            }
        }
        n8
    }
}

/// Mirrors the image left-right in place.
pub fn fliplr(img: &mut RgbImage) {
    let w = img.width;
    for y in 0..img.height {
        let row = img.row_mut(y);
        for x in 0..w / 2 {
            let (a, b) = (x * 3, (w - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Mirrors the image top-bottom in place.
pub fn flipud(img: &mut RgbImage) {
    let (w, h) = (img.width * 3, img.height);
    for y in 0..h / 2 {
        let (top, bottom) = img.data.split_at_mut((h - 1 - y) * w);
        top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
    }
}

/// `mixup(im, labels, im2, labels2)`: `im·r + im2·(1 − r)` truncated to u8, r ~ Beta(32, 32);
/// the label lists are concatenated.
pub fn mixup<R: Rng + ?Sized>(img: &mut RgbImage, labels: &mut Vec<Label>, img2: &RgbImage, labels2: &[Label], rng: &mut R) {
    let beta = rand_distr::Beta::new(32.0, 32.0).expect("valid Beta parameters");
    let r: f64 = rand_distr::Distribution::sample(&beta, rng);
    let (r, q) = (r as f32, 1.0 - r as f32);
    for (a, b) in img.data.iter_mut().zip(&img2.data) {
        *a = (*a as f32 * r + *b as f32 * q) as u8;
    }
    labels.extend_from_slice(labels2);
}

/// HWC RGB → CHW RGB (planar), appended to `out`.
pub fn to_chw_into(img: &RgbImage, out: &mut [u8]) {
    let n = img.width * img.height;
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn letterbox_matches_ultralytics_padding() {
        // 500×375 into 640×640 with scaleup: r = 1.28, new_unpad = (640, 480), dh = 80.
        let img = RgbImage::filled(500, 375, [1, 2, 3]);
        let (out, info) = letterbox(&img, (640, 640), true);
        assert_eq!((out.width, out.height), (640, 640));
        assert_eq!(info.pad, (0.0, 80.0));
        assert_eq!(out.pixel(0, 79), [FILL; 3]);
        assert_eq!(out.pixel(0, 80), [1, 2, 3]);
        assert_eq!(out.pixel(639, 559), [1, 2, 3]);
        assert_eq!(out.pixel(0, 560), [FILL; 3]);
        // Odd padding: 3 rows → top round(1.4) = 1, bottom round(1.6) = 2.
        let img = RgbImage::filled(10, 7, [9, 9, 9]);
        let (out, info) = letterbox(&img, (10, 10), false);
        assert_eq!(info.pad, (0.0, 1.5));
        assert_eq!((out.pixel(0, 0), out.pixel(0, 1), out.pixel(0, 7), out.pixel(0, 8)), ([FILL; 3], [9; 3], [9; 3], [FILL; 3]));
        // No scale-up without scaleup.
        let (out, info) = letterbox(&img, (20, 20), false);
        assert_eq!((info.ratio.0, out.width, out.height), (1.0, 20, 20));
    }

    #[test]
    fn hsv_conversion_matches_opencv_values() {
        // Values from cv2.cvtColor(..., COLOR_RGB2HSV) on uint8.
        assert_eq!(rgb_to_hsv(255, 0, 0), (0, 255, 255));
        assert_eq!(rgb_to_hsv(0, 255, 0), (60, 255, 255));
        assert_eq!(rgb_to_hsv(0, 0, 255), (120, 255, 255));
        assert_eq!(rgb_to_hsv(10, 20, 30), (105, 170, 30));
        assert_eq!(rgb_to_hsv(200, 100, 50), (10, 191, 200));
        assert_eq!(rgb_to_hsv(7, 7, 7), (0, 0, 7));
        // cv2.cvtColor(..., COLOR_HSV2RGB) on uint8.
        assert_eq!(hsv_to_rgb(105, 170, 30), (10, 20, 30));
        assert_eq!(hsv_to_rgb(10, 191, 200), (200, 100, 50));
        assert_eq!(hsv_to_rgb(179, 255, 255), (255, 0, 8));
        assert_eq!(hsv_to_rgb(33, 128, 77), (73, 77, 38));
        // Round trip is within a couple of levels (8-bit HSV quantises hue to 2°).
        for (r, g, b) in [(12u8, 200u8, 90u8), (250, 250, 1), (3, 60, 61), (128, 64, 32)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            for (a, b) in [(r, r2), (g, g2), (b, b2)] {
                assert!((a as i32 - b as i32).abs() <= 4, "{r},{g},{b} -> {h},{s},{v} -> {r2},{g2},{b2}");
            }
        }
    }

    #[test]
    fn hsv_with_zero_gains_is_a_no_op_and_gray_stays_gray() {
        let mut img = RgbImage::filled(4, 4, [10, 100, 200]);
        let before = img.clone();
        augment_hsv(&mut img, 0.0, 0.0, 0.0, &mut rng());
        assert_eq!(img, before);
        let mut g = RgbImage::filled(4, 4, [90, 90, 90]);
        augment_hsv(&mut g, 0.5, 0.5, 0.0, &mut rng());
        assert!(g.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn finish_chw_equals_the_separate_steps() {
        let mut img = RgbImage::filled(7, 5, [0, 0, 0]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = if i % 5 == 0 { 114 } else { (i * 37 % 256) as u8 };
        }
        for (ud, lr) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut r1 = rng();
            let mut a = img.clone();
            augment_hsv(&mut a, 0.5, 0.7, 0.4, &mut r1);
            if ud {
                flipud(&mut a);
            }
            if lr {
                fliplr(&mut a);
            }
            let mut want = vec![0; a.data.len()];
            to_chw_into(&a, &mut want);
            let mut r2 = rng();
            let l = HsvLuts::draw(0.5, 0.7, 0.4, &mut r2);
            let mut got = vec![0; a.data.len()];
            finish_chw(&img, l.as_ref(), ud, lr, &mut got);
            assert_eq!(got, want, "ud {ud} lr {lr}");
        }
    }

    #[test]
    fn vectorised_hsv_equals_the_scalar_path() {
        let mut r = rng();
        for _ in 0..60 {
            let w = r.random_range(1..70);
            let mut img = RgbImage::filled(w, 3, [0, 0, 0]);
            for v in img.data.iter_mut() {
                *v = r.random();
            }
            // Greys, pure colours and extremes too.
            for (x, p) in [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [114, 114, 114], [255, 255, 0], [1, 0, 0]].iter().enumerate() {
                if x < w {
                    img.put(x, 1, *p);
                }
            }
            let l = HsvLuts::draw(r.random_range(0.0..1.5), r.random_range(0.0..0.99), r.random_range(0.0..0.99), &mut r).unwrap();
            let flip = r.random::<bool>();
            let mut got = vec![0; img.data.len()];
            finish_chw(&img, Some(&l), false, flip, &mut got);
            let t = hsv_tables();
            let n = w * img.height;
            for y in 0..3 {
                for x in 0..w {
                    let p = img.pixel(x, y);
                    let want = l.apply(t, p[0], p[1], p[2]);
                    let dx = if flip { w - 1 - x } else { x };
                    assert_eq!([got[y * w + dx], got[n + y * w + dx], got[2 * n + y * w + dx]], want, "pixel {p:?}");
                }
            }
        }
    }

    #[test]
    fn flips_are_involutions() {
        let mut img = RgbImage { width: 3, height: 2, data: (0..18).collect() };
        let orig = img.clone();
        fliplr(&mut img);
        assert_eq!(img.pixel(0, 0), orig.pixel(2, 0));
        fliplr(&mut img);
        assert_eq!(img, orig);
        flipud(&mut img);
        assert_eq!(img.pixel(1, 0), orig.pixel(1, 1));
        flipud(&mut img);
        assert_eq!(img, orig);
    }

    #[test]
    fn identity_warp_is_exact_and_translation_moves_pixels() {
        let mut img = RgbImage::filled(8, 6, [0, 0, 0]);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8;
        }
        let id = warp_affine(&img, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 8, 6);
        assert_eq!(id, img);
        let t = warp_affine(&img, &[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]], 8, 6);
        assert_eq!(t.pixel(2, 1), img.pixel(0, 0));
        assert_eq!(t.pixel(7, 5), img.pixel(5, 4));
        assert_eq!(t.pixel(1, 3), [FILL; 3]);
        // The general path agrees with the separable one on an axis-aligned map.
        let m = [[1.37, 0.0, -3.2], [0.0, 0.81, 2.6]];
        let fast = warp_affine(&img, &m, 11, 9);
        let inv = invert3(&[[1.37, 0.0, -3.2], [0.0, 0.81, 2.6], [0.0, 0.0, 1.0]]).unwrap();
        let slow = warp_general(&img, &inv, false, 11, 9);
        assert_eq!(fast, slow);
    }

    #[test]
    fn mosaic_places_tiles_around_the_centre() {
        let a = RgbImage::filled(4, 4, [1, 1, 1]);
        let b = RgbImage::filled(4, 4, [2, 2, 2]);
        let c = RgbImage::filled(4, 4, [3, 3, 3]);
        let d = RgbImage::filled(4, 4, [4, 4, 4]);
        let la = [Label { class: 0, bbox: [0.0, 0.0, 4.0, 4.0] }];
        let (m, l) = mosaic([(&a, &la), (&b, &[]), (&c, &[]), (&d, &la)], 4, 3, 5);
        assert_eq!((m.width, m.height), (8, 8));
        assert_eq!(m.pixel(2, 4), [1; 3]); // top-left tile ends at (xc, yc) = (3, 5)
        assert_eq!(m.pixel(3, 4), [2; 3]);
        assert_eq!(m.pixel(2, 5), [3; 3]);
        assert_eq!(m.pixel(3, 5), [4; 3]);
        assert_eq!(m.pixel(7, 0), [FILL; 3]);
        assert_eq!(l[0].bbox, [0.0, 1.0, 3.0, 5.0]); // shifted by (−1, 1), clipped at 0
        assert_eq!(l[1].bbox, [3.0, 5.0, 7.0, 8.0]); // clipped at 2s
    }

    #[test]
    fn warping_the_visible_window_equals_warping_the_canvas() {
        let mut r = rng();
        for trial in 0..40 {
            let sizes: Vec<(usize, usize)> = (0..4).map(|_| (r.random_range(8..40), r.random_range(8..40))).collect();
            let tiles: Vec<RgbImage> = sizes
                .iter()
                .enumerate()
                .map(|(k, &(w, h))| RgbImage { width: w, height: h, data: (0..w * h * 3).map(|i| ((i * 7 + k * 50) % 256) as u8).collect() })
                .collect();
            let s = 32;
            let (xc, yc) = (r.random_range(16..48), r.random_range(16..48));
            let p = Perspective { degrees: if trial % 3 == 0 { 20.0 } else { 0.0 }, translate: 0.2, scale: 0.7, shear: 0.0, perspective: if trial % 5 == 0 { 0.0008 } else { 0.0 } };
            let (m, _) = perspective_matrix(&p, 2 * s, 2 * s, s, s, &mut r);
            let nl: [&[Label]; 4] = [&[], &[], &[], &[]];
            let (canvas, _) = mosaic([(&tiles[0], nl[0]), (&tiles[1], nl[1]), (&tiles[2], nl[2]), (&tiles[3], nl[3])], s, xc, yc);
            let persp = p.perspective != 0.0;
            let want = warp(&canvas, &m, s, s, persp);
            let places = mosaic_places([sizes[0], sizes[1], sizes[2], sizes[3]], s, xc, yc);
            let win = warp_source_window(&m, s, s, 2 * s, 2 * s);
            let visible: Vec<Option<&RgbImage>> = tiles.iter().zip(&places).map(|(t, pl)| win.intersects(pl).then_some(t)).collect();
            let part = mosaic_window([visible[0], visible[1], visible[2], visible[3]], &places, win);
            let got = warp(&part, &shift_source(&m, win.x0 as f64, win.y0 as f64), s, s, persp);
            assert_eq!(got, want, "trial {trial}: window {win:?}");
        }
    }

    #[test]
    fn box_candidates_filter_like_ultralytics() {
        let b = [0.0, 0.0, 10.0, 10.0];
        assert!(box_candidate(b, b, 2.0, 100.0, 0.1));
        assert!(!box_candidate(b, [0.0, 0.0, 2.0, 10.0], 2.0, 100.0, 0.1)); // width not > 2
        assert!(!box_candidate(b, [0.0, 0.0, 3.0, 3.0], 2.0, 100.0, 0.1)); // 9% of the area
        assert!(!box_candidate([0.0, 0.0, 1000.0, 1000.0], [0.0, 0.0, 400.0, 3.0], 2.0, 100.0, 0.0001)); // aspect 133
    }
}
