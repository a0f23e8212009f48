//! The synthetic detection benchmark (`q2 synth`): cluttered, textured images with up to 12
//! classes of objects that differ in shape, texture and colour, written to disk in the real VOC,
//! COCO or YOLO layout so the real readers are what training and CI exercise.
//!
//! **Classes** ([`CLASSES`]): disc, ring, triangle, tile, star, cross, hexagon, moon, heart,
//! arrow, diamond, capsule: each a shape (a signed distance function, anti-aliased), a texture
//! (solid, radial shading, stripes, checker, dots, gradient, diagonal stripes, concentric rings,
//! speckle) and a colour family. Colour families overlap (red/pink, orange/brown, teal/cyan) and
//! are jittered, and with some probability an object takes another class's colours, so shape and
//! texture must be learnt, not just colour.
//!
//! **Scenes**: a fractal value-noise background in a random 2–3 colour palette, an optional
//! periodic pattern (stripes, checks, grid), a lighting gradient, large low-contrast clutter
//! shapes; distractors (irregular polygons, bars, arcs, scribbles, L-shapes, dot clusters),
//! some drawn over the objects as occluders; objects sized log-uniformly from 8 px to 60% of the
//! short side (all three detection scales), rotated, aspect-jittered, partly truncated at image
//! borders, and occluding each other (every object keeps at least `min_visible` of its area);
//! pixel noise and occasional blur. Image aspect ratios vary (long side = `img_size`).
//!
//! **Boxes** are the tight box of each object's *visible* pixels (coverage ≥ 0.5 and not covered
//! by anything drawn later), as VOC and COCO annotate, as integer half-open pixel boxes, which all
//! three formats represent exactly (YOLO to 6 decimals).
//!
//! **Difficulty** `d` in [0, 1] (default 0.5) sets every knob of [`Knobs`] at once; the knobs
//! can also be set one by one. Each image depends only on (seed, image index, knobs): the output
//! is identical for any thread count, and image `i` is the same whatever the number of images.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{DataError, Result};
use crate::fsutil::write_atomic;
use crate::image::{encode_jpeg, encode_png, RgbImage};
use crate::sample::Format;

/// A shape (signed distance function in a [-1, 1]² frame).
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Circle,
    Ring,
    Triangle,
    Square,
    Star,
    Cross,
    Hexagon,
    Crescent,
    Heart,
    Arrow,
    Diamond,
    Capsule,
    // Distractors.
    Polygon(Vec<(f32, f32)>),
    Bar(f32),
    Arc(f32),
    Scribble(Vec<(f32, f32)>),
    LShape,
    Dots(Vec<(f32, f32)>),
}

/// A surface pattern (in the object's frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texture {
    Solid,
    Radial,
    Stripes,
    Checker,
    DotGrid,
    Gradient,
    Diagonal,
    Rings,
    Speckle,
}

const TEXTURES: [Texture; 9] =
    [Texture::Solid, Texture::Radial, Texture::Stripes, Texture::Checker, Texture::DotGrid, Texture::Gradient, Texture::Diagonal, Texture::Rings, Texture::Speckle];

/// How a class's second texture colour relates to its first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Secondary {
    Darker,
    Lighter,
}

/// One row of [`CLASSES`].
pub type ClassRow = (&'static str, Shape, Texture, (f32, f32, f32), Secondary);

/// The 12 classes in class-index order: name, shape, texture, base colour (hue°, s, v), how the
/// texture's second colour is made.
pub const CLASSES: [ClassRow; 12] = [
    ("disc", Shape::Circle, Texture::Radial, (0.0, 0.85, 0.85), Secondary::Darker),
    ("ring", Shape::Ring, Texture::Solid, (220.0, 0.80, 0.80), Secondary::Darker),
    ("triangle", Shape::Triangle, Texture::Stripes, (120.0, 0.75, 0.70), Secondary::Lighter),
    ("tile", Shape::Square, Texture::Checker, (55.0, 0.85, 0.90), Secondary::Darker),
    ("star", Shape::Star, Texture::Solid, (30.0, 0.90, 0.95), Secondary::Darker),
    ("cross", Shape::Cross, Texture::Solid, (280.0, 0.65, 0.65), Secondary::Lighter),
    ("hexagon", Shape::Hexagon, Texture::DotGrid, (175.0, 0.75, 0.65), Secondary::Lighter),
    ("moon", Shape::Crescent, Texture::Gradient, (50.0, 0.15, 0.95), Secondary::Darker),
    ("heart", Shape::Heart, Texture::Solid, (335.0, 0.60, 0.90), Secondary::Darker),
    ("arrow", Shape::Arrow, Texture::Diagonal, (25.0, 0.70, 0.50), Secondary::Lighter),
    ("diamond", Shape::Diamond, Texture::Rings, (195.0, 0.85, 0.90), Secondary::Darker),
    ("capsule", Shape::Capsule, Texture::Speckle, (80.0, 0.30, 0.60), Secondary::Darker),
];

/// The class names, in index order.
pub fn class_names(n: usize) -> Vec<String> {
    CLASSES.iter().take(n).map(|c| c.0.to_string()).collect()
}

/// Every difficulty-dependent setting of the generator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Knobs {
    /// Objects per image: uniform in 1..=max_objects (fewer when placement fails).
    pub max_objects: usize,
    /// Smallest object extent in pixels.
    pub min_object_px: f32,
    /// Largest object extent as a fraction of the image's short side.
    pub max_object_frac: f32,
    /// Size skew: log-size = lerp(log min, log max, u^gamma); 1 is log-uniform, > 1 more small objects.
    pub size_gamma: f32,
    /// Distractor shapes per image: uniform in 0..=distractors.
    pub distractors: usize,
    /// Fraction of distractors drawn over the objects (occluders).
    pub occluder_frac: f32,
    /// Probability that a distractor wears a class's colours.
    pub distractor_confusion: f32,
    /// Large low-contrast background shapes per image: uniform in 0..=clutter.
    pub clutter: usize,
    /// Every object keeps at least this fraction of its area visible.
    pub min_visible: f32,
    /// Hue jitter (± degrees) of object colours.
    pub hue_jitter: f32,
    /// Relative saturation/value jitter of object colours.
    pub sv_jitter: f32,
    /// Probability that an object takes another class's colours.
    pub colour_swap: f32,
    /// Contrast of the background texture (0 flat … 1 strong).
    pub bg_contrast: f32,
    /// Pixel noise standard deviation (in 0–255 levels).
    pub noise_sigma: f32,
    /// Probability of a 3×3 blur.
    pub blur_prob: f32,
    /// Strength of the lighting gradient.
    pub lighting: f32,
    /// Object aspect jitter: aspect = exp(U(−a, a)).
    pub aspect_jitter: f32,
    /// The short image side is U(short_side_min, 1) × the long side.
    pub short_side_min: f32,
}

impl Knobs {
    /// The knobs for difficulty `d` (clamped to [0, 1]); see `docs/DATA.md` for the table.
    pub fn for_difficulty(d: f32) -> Self {
        let d = d.clamp(0.0, 1.0);
        Self {
            max_objects: 2 + (8.0 * d).round() as usize,
            min_object_px: 8.0,
            max_object_frac: 0.6,
            size_gamma: 0.5 + d,
            distractors: (2.0 + 14.0 * d).round() as usize,
            occluder_frac: 0.15 + 0.25 * d,
            distractor_confusion: 0.2 + 0.6 * d,
            clutter: (1.0 + 4.0 * d).round() as usize,
            min_visible: 0.85 - 0.5 * d,
            hue_jitter: 4.0 + 26.0 * d,
            sv_jitter: 0.05 + 0.3 * d,
            colour_swap: 0.3 * d,
            bg_contrast: 0.15 + 0.5 * d,
            noise_sigma: 1.0 + 9.0 * d,
            blur_prob: 0.4 * d,
            lighting: 0.1 + 0.4 * d,
            aspect_jitter: 0.1 + 0.3 * d,
            short_side_min: 0.6,
        }
    }
}

/// Image file type written by the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Jpeg { quality: u8 },
    Png,
}

impl ImageType {
    pub fn extension(self) -> &'static str {
        match self {
            ImageType::Jpeg { .. } => "jpg",
            ImageType::Png => "png",
        }
    }
    fn encode(self, img: &RgbImage) -> Vec<u8> {
        match self {
            ImageType::Jpeg { quality } => encode_jpeg(img, quality),
            ImageType::Png => encode_png(img),
        }
    }
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub images: usize,
    pub seed: u64,
    /// Long image side in pixels.
    pub img_size: usize,
    /// Fraction of images in the val split (the last ones).
    pub val_fraction: f64,
    pub difficulty: f32,
    /// Number of classes used (the first `classes` of [`CLASSES`]).
    pub classes: usize,
    pub image_type: ImageType,
    pub knobs: Knobs,
}

impl SynthConfig {
    /// Defaults: 256 px, difficulty 0.5, 12 classes, 20% val, JPEG quality 95.
    pub fn new(images: usize, seed: u64) -> Self {
        Self {
            images,
            seed,
            img_size: 256,
            val_fraction: 0.2,
            difficulty: 0.5,
            classes: CLASSES.len(),
            image_type: ImageType::Jpeg { quality: 95 },
            knobs: Knobs::for_difficulty(0.5),
        }
    }

    /// Sets the difficulty and every knob from it.
    pub fn with_difficulty(mut self, d: f32) -> Self {
        self.difficulty = d;
        self.knobs = Knobs::for_difficulty(d);
        self
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::config("", format!("synth: {m}")));
        if self.images == 0 {
            return bad("--images must be ≥ 1".into());
        }
        if !(32..=4096).contains(&self.img_size) {
            return bad(format!("--img-size {} must be in 32..=4096", self.img_size));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!("--val-fraction {} must be in [0, 1)", self.val_fraction));
        }
        if !(0.0..=1.0).contains(&self.difficulty) {
            return bad(format!("--difficulty {} must be in [0, 1]", self.difficulty));
        }
        if !(1..=CLASSES.len()).contains(&self.classes) {
            return bad(format!("--classes {} must be in 1..={}", self.classes, CLASSES.len()));
        }
        if let ImageType::Jpeg { quality } = self.image_type {
            if !(1..=100).contains(&quality) {
                return bad(format!("JPEG quality {quality} must be in 1..=100"));
            }
        }
        let k = &self.knobs;
        if k.max_objects == 0 || k.min_object_px.is_nan() || k.min_object_px < 2.0 || !(k.max_object_frac > 0.0 && k.max_object_frac <= 1.0) || !(0.0..=1.0).contains(&k.min_visible) {
            return bad(format!("invalid knobs {k:?}"));
        }
        Ok(())
    }

    /// Images in the train split (the first ones).
    pub fn train_count(&self) -> usize {
        let v = (self.images as f64 * self.val_fraction).round() as usize;
        self.images - v.min(self.images.saturating_sub(1))
    }
}

/// One generated object: class, visible box (integer pixels, half-open), whether the shape runs
/// past the image border.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SynthObject {
    pub class: usize,
    pub bbox: [u32; 4],
    pub truncated: bool,
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct SynthImage {
    pub image: RgbImage,
    pub objects: Vec<SynthObject>,
}

// ---------------------------------------------------------------------------------------------
// Geometry

#[inline]
fn len2(x: f32, y: f32) -> f32 {
    (x * x + y * y).sqrt()
}

#[inline]
fn sd_box(x: f32, y: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (x.abs() - bx, y.abs() - by);
    len2(dx.max(0.0), dy.max(0.0)) + dx.max(dy).min(0.0)
}

#[inline]
fn sd_segment(x: f32, y: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (px, py, bx, by) = (x - a.0, y - a.1, b.0 - a.0, b.1 - a.1);
    let h = ((px * bx + py * by) / (bx * bx + by * by).max(1e-12)).clamp(0.0, 1.0);
    len2(px - bx * h, py - by * h)
}

fn sd_polygon(x: f32, y: f32, v: &[(f32, f32)]) -> f32 {
    let n = v.len();
    let mut d = (x - v[0].0).powi(2) + (y - v[0].1).powi(2);
    let mut s = 1.0f32;
    let mut j = n - 1;
    for i in 0..n {
        let (ex, ey) = (v[j].0 - v[i].0, v[j].1 - v[i].1);
        let (wx, wy) = (x - v[i].0, y - v[i].1);
        let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey).max(1e-12)).clamp(0.0, 1.0);
        let (bx, by) = (wx - ex * t, wy - ey * t);
        d = d.min(bx * bx + by * by);
        let c1 = y >= v[i].1;
        let c2 = y < v[j].1;
        let c3 = ex * wy > ey * wx;
        if (c1 && c2 && c3) || (!c1 && !c2 && !c3) {
            s = -s;
        }
        j = i;
    }
    s * d.sqrt()
}

const ARROW: [(f32, f32); 7] = [(-1.0, -0.2), (0.15, -0.2), (0.15, -0.6), (1.0, 0.0), (0.15, 0.6), (0.15, 0.2), (-1.0, 0.2)];
const DIAMOND: [(f32, f32); 4] = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)];

impl Shape {
    /// Signed distance (negative inside) in the [-1, 1]² frame.
    pub fn sdf(&self, x: f32, y: f32) -> f32 {
        match self {
            Shape::Circle => len2(x, y) - 1.0,
            Shape::Ring => (len2(x, y) - 0.74).abs() - 0.26,
            Shape::Triangle => {
                // Equilateral triangle, circumradius 1 (Inigo Quilez's sdEquilateralTriangle).
                let k = 3f32.sqrt();
                let r = 0.866;
                let (mut px, mut py) = (x.abs() - r, -y + r / k);
                if px + k * py > 0.0 {
                    (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
                }
                px -= px.clamp(-2.0 * r, 0.0);
                -len2(px, py) * py.signum()
            }
            Shape::Square => sd_box(x, y, 0.78, 0.78) - 0.1,
            Shape::Star => {
                let (k1x, k1y) = (0.809_017_f32, -0.587_785_3_f32);
                let (k2x, k2y) = (-k1x, k1y);
                let (mut px, mut py) = (x.abs(), -y);
                let d1 = 2.0 * (k1x * px + k1y * py).max(0.0);
                px -= d1 * k1x;
                py -= d1 * k1y;
                let d2 = 2.0 * (k2x * px + k2y * py).max(0.0);
                px -= d2 * k2x;
                py -= d2 * k2y;
                px = px.abs();
                py -= 1.0;
                let rf = 0.45;
                let (bax, bay) = (rf * -k1y, rf * k1x - 1.0);
                let h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0.0, 1.0);
                len2(px - bax * h, py - bay * h) * (py * bax - px * bay).signum()
            }
            Shape::Cross => sd_box(x, y, 0.95, 0.3).min(sd_box(x, y, 0.3, 0.95)),
            Shape::Hexagon => {
                let (kx, ky, kz) = (-0.866_025_4_f32, 0.5f32, 0.577_350_3_f32);
                let r = 0.86;
                let (mut px, mut py) = (x.abs(), y.abs());
                let d = 2.0 * (kx * px + ky * py).min(0.0);
                px -= d * kx;
                py -= d * ky;
                px -= px.clamp(-kz * r, kz * r);
                py -= r;
                len2(px, py) * py.signum()
            }
            Shape::Crescent => (len2(x, y) - 1.0).max(-(len2(x - 0.55, y + 0.1) - 0.8)),
            Shape::Heart => {
                // Quilez's sdHeart in a frame where the heart spans about [-0.6, 0.6] × [0, 1.1].
                let (hx, hy) = ((x * 0.6).abs(), 0.5 - y * 0.6);
                let d = if hy + hx > 1.0 {
                    len2(hx - 0.25, hy - 0.75) - std::f32::consts::SQRT_2 / 4.0
                } else {
                    let a = (hx).powi(2) + (hy - 1.0).powi(2);
                    let m = 0.5 * (hx + hy).max(0.0);
                    let b = (hx - m).powi(2) + (hy - m).powi(2);
                    a.min(b).sqrt() * (hx - hy).signum()
                };
                d / 0.6
            }
            Shape::Arrow => sd_polygon(x, y, &ARROW),
            Shape::Diamond => sd_polygon(x, y, &DIAMOND),
            Shape::Capsule => sd_segment(x, y, (-0.55, 0.0), (0.55, 0.0)) - 0.45,
            Shape::Polygon(v) => sd_polygon(x, y, v),
            Shape::Bar(t) => sd_box(x, y, 1.0, *t),
            Shape::Arc(open) => ((len2(x, y) - 0.8).abs() - 0.14).max(y - *open),
            Shape::Scribble(p) => p.windows(2).map(|w| sd_segment(x, y, w[0], w[1])).fold(f32::INFINITY, f32::min) - 0.09,
            Shape::LShape => sd_box(x + 0.5, y, 0.25, 1.0).min(sd_box(x, y - 0.75, 0.75, 0.25)),
            Shape::Dots(c) => c.iter().map(|&(cx, cy)| len2(x - cx, y - cy) - 0.16).fold(f32::INFINITY, f32::min),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Colour and noise

fn hsv_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let (s, v) = (s.clamp(0.0, 1.0), v.clamp(0.0, 1.0));
    let i = (h.floor() as usize).min(5);
    let f = h - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[inline]
fn hash(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn hash01(a: u64, b: u64, c: u64) -> f32 {
    (hash(a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ c) >> 40) as f32 / (1u64 << 24) as f32
}

#[inline]
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Fractal value noise on a w×h grid: `octaves` lattices, the first with cell size `cell`, each
/// next half the size and half the weight. Values in [0, 1].
fn value_noise(w: usize, h: usize, cell: f32, octaves: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; w * h];
    let mut amp = 1.0f32;
    let mut total = 0.0f32;
    let mut cell = cell.max(2.0);
    for o in 0..octaves {
        let (lw, lh) = ((w as f32 / cell) as usize + 2, (h as f32 / cell) as usize + 2);
        let lat: Vec<f32> = (0..lw * lh).map(|i| hash01(seed, o as u64, i as u64)).collect();
        let xs: Vec<(usize, f32)> = (0..w)
            .map(|x| {
                let f = x as f32 / cell;
                (f as usize, smooth(f.fract()))
            })
            .collect();
        for y in 0..h {
            let fy = y as f32 / cell;
            let (iy, ty) = (fy as usize, smooth(fy.fract()));
            let (r0, r1) = (&lat[iy * lw..(iy + 1) * lw], &lat[(iy + 1) * lw..(iy + 2) * lw]);
            let row = &mut out[y * w..(y + 1) * w];
            for (v, &(ix, tx)) in row.iter_mut().zip(&xs) {
                let a = r0[ix] + (r0[ix + 1] - r0[ix]) * tx;
                let b = r1[ix] + (r1[ix + 1] - r1[ix]) * tx;
                *v += amp * (a + (b - a) * ty);
            }
        }
        total += amp;
        amp *= 0.5;
        cell *= 0.5;
    }
    out.iter_mut().for_each(|v| *v /= total);
    out
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

// ---------------------------------------------------------------------------------------------
// Placed shapes

#[derive(Debug, Clone)]
struct Placed {
    shape: Shape,
    cx: f32,
    cy: f32,
    hx: f32,
    hy: f32,
    cos: f32,
    sin: f32,
    texture: Texture,
    c1: [f32; 3],
    c2: [f32; 3],
    /// Texture frequency multiplier and phase.
    freq: f32,
    phase: f32,
    light: (f32, f32),
    opacity: f32,
    seed: u64,
}

struct Raster {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    alpha: Vec<f32>,
    truncated: bool,
}

impl Placed {
    #[inline]
    fn local(&self, px: f32, py: f32) -> (f32, f32) {
        let (dx, dy) = (px - self.cx, py - self.cy);
        ((dx * self.cos + dy * self.sin) / self.hx, (-dx * self.sin + dy * self.cos) / self.hy)
    }

    fn raster(&self, w: usize, h: usize) -> Option<Raster> {
        let ex = (self.hx * self.cos).abs() + (self.hy * self.sin).abs() + 1.5;
        let ey = (self.hx * self.sin).abs() + (self.hy * self.cos).abs() + 1.5;
        let (fx0, fy0, fx1, fy1) = (self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey);
        let (x0, y0) = (fx0.max(0.0).floor() as usize, fy0.max(0.0).floor() as usize);
        let (x1, y1) = ((fx1.ceil().max(0.0) as usize).min(w), (fy1.ceil().max(0.0) as usize).min(h));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        let (rw, rh) = (x1 - x0, y1 - y0);
        let scale = self.hx.min(self.hy);
        let mut alpha = vec![0f32; rw * rh];
        let mut truncated = false;
        for yy in 0..rh {
            for xx in 0..rw {
                let (u, v) = self.local((x0 + xx) as f32 + 0.5, (y0 + yy) as f32 + 0.5);
                if u.abs() > 1.6 || v.abs() > 1.6 {
                    continue;
                }
                let d = self.shape.sdf(u, v) * scale;
                alpha[yy * rw + xx] = (0.5 - d).clamp(0.0, 1.0) * self.opacity;
            }
        }
        // Does the shape reach past the image border?
        if fx0 < 0.0 || fy0 < 0.0 || fx1 > w as f32 || fy1 > h as f32 {
            let edge = |px: f32, py: f32| {
                let (u, v) = self.local(px, py);
                self.shape.sdf(u, v) * scale < 0.0
            };
            truncated = (0..w).step_by(2).any(|x| edge(x as f32 + 0.5, 0.5) || edge(x as f32 + 0.5, h as f32 - 0.5))
                || (0..h).step_by(2).any(|y| edge(0.5, y as f32 + 0.5) || edge(w as f32 - 0.5, y as f32 + 0.5));
        }
        Some(Raster { x0, y0, w: rw, h: rh, alpha, truncated })
    }

    fn colour(&self, u: f32, v: f32) -> [f32; 3] {
        let f = self.freq;
        let t = match self.texture {
            Texture::Solid => 0.0,
            Texture::Radial => (u * u + v * v).min(1.0) * 0.8,
            Texture::Stripes => ((u * 3.2 * f + self.phase) * std::f32::consts::PI).sin().signum() * 0.5 + 0.5,
            Texture::Checker => (((u * 2.2 * f + 8.0).floor() + (v * 2.2 * f + 8.0).floor()) as i32 & 1) as f32,
            Texture::DotGrid => {
                let (gx, gy) = ((u * 2.0 * f + 8.0).fract() - 0.5, (v * 2.0 * f + 8.0).fract() - 0.5);
                if gx * gx + gy * gy < 0.09 {
                    1.0
                } else {
                    0.0
                }
            }
            Texture::Gradient => (v * 0.5 + 0.5).clamp(0.0, 1.0),
            Texture::Diagonal => (((u + v) * 2.5 * f + self.phase) * std::f32::consts::PI).sin().signum() * 0.5 + 0.5,
            Texture::Rings => ((len2(u, v) * 4.0 * f + self.phase) * std::f32::consts::PI).sin().signum() * 0.5 + 0.5,
            Texture::Speckle => {
                let (ix, iy) = ((u * 5.0 * f + 16.0) as u64, (v * 5.0 * f + 16.0) as u64);
                if hash01(self.seed, ix, iy) > 0.55 {
                    1.0
                } else {
                    0.0
                }
            }
        };
        let c = lerp3(self.c1, self.c2, t);
        let shade = 1.0 + self.light.0 * u + self.light.1 * v;
        [c[0] * shade, c[1] * shade, c[2] * shade]
    }

    fn paint(&self, r: &Raster, canvas: &mut [[f32; 3]], w: usize) {
        for yy in 0..r.h {
            for xx in 0..r.w {
                let a = r.alpha[yy * r.w + xx];
                if a <= 0.0 {
                    continue;
                }
                let (x, y) = (r.x0 + xx, r.y0 + yy);
                let (u, v) = self.local(x as f32 + 0.5, y as f32 + 0.5);
                let c = self.colour(u, v);
                let dst = &mut canvas[y * w + x];
                *dst = lerp3(*dst, c, a);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scene generation

fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    k[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    k[16..24].copy_from_slice(b"q2-synth");
    ChaCha8Rng::from_seed(k)
}

fn jitter_colour(rng: &mut ChaCha8Rng, hsv: (f32, f32, f32), k: &Knobs) -> [f32; 3] {
    let h = hsv.0 + rng.random_range(-1.0..=1.0) * k.hue_jitter;
    let s = hsv.1 * (1.0 + rng.random_range(-1.0..=1.0) * k.sv_jitter);
    let v = hsv.2 * (1.0 + rng.random_range(-1.0..=1.0) * k.sv_jitter);
    hsv_rgb(h, s, v)
}

fn secondary(c: [f32; 3], how: Secondary) -> [f32; 3] {
    match how {
        Secondary::Darker => c.map(|v| v * 0.45),
        Secondary::Lighter => c.map(|v| v * 0.35 + 0.62),
    }
}

fn random_distractor_shape(rng: &mut ChaCha8Rng) -> Shape {
    match rng.random_range(0..6) {
        0 => {
            let n = rng.random_range(5..=9);
            let mut a: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..std::f32::consts::TAU)).collect();
            a.sort_by(f32::total_cmp);
            Shape::Polygon(a.iter().map(|&t| {
                let r = rng.random_range(0.45..1.0);
                (r * t.cos(), r * t.sin())
            }).collect())
        }
        1 => Shape::Bar(rng.random_range(0.08..0.22)),
        2 => Shape::Arc(rng.random_range(-0.3..0.5)),
        3 => Shape::Scribble((0..rng.random_range(3..=5)).map(|_| (rng.random_range(-0.9..0.9), rng.random_range(-0.9..0.9))).collect()),
        4 => Shape::LShape,
        _ => Shape::Dots((0..rng.random_range(3..=7)).map(|_| (rng.random_range(-0.8..0.8), rng.random_range(-0.8..0.8))).collect()),
    }
}

struct Scene<'a> {
    w: usize,
    k: &'a Knobs,
    canvas: Vec<[f32; 3]>,
    /// Owner of each pixel: 0 none, k + 1 object k.
    owner: Vec<u16>,
    visible: Vec<usize>,
    full: Vec<usize>,
    truncated: Vec<bool>,
    classes: Vec<usize>,
}

impl Scene<'_> {
    /// Pixels of each object this raster would cover.
    fn covers(&self, r: &Raster) -> Vec<usize> {
        let mut c = vec![0usize; self.visible.len()];
        for yy in 0..r.h {
            let row = (r.y0 + yy) * self.w + r.x0;
            for xx in 0..r.w {
                if r.alpha[yy * r.w + xx] >= 0.5 {
                    let o = self.owner[row + xx];
                    if o > 0 {
                        c[o as usize - 1] += 1;
                    }
                }
            }
        }
        c
    }

    fn keeps_visibility(&self, cover: &[usize]) -> bool {
        cover.iter().enumerate().all(|(k, &c)| c == 0 || (self.visible[k] - c) as f32 >= self.k.min_visible * self.full[k] as f32)
    }

    /// Draws `p`; `owner` is what the covered pixels now belong to (0 for distractors on top).
    fn draw(&mut self, p: &Placed, r: &Raster, owner: u16) {
        p.paint(r, &mut self.canvas, self.w);
        for yy in 0..r.h {
            let row = (r.y0 + yy) * self.w + r.x0;
            for xx in 0..r.w {
                if r.alpha[yy * r.w + xx] >= 0.5 {
                    let o = &mut self.owner[row + xx];
                    if *o > 0 {
                        self.visible[*o as usize - 1] -= 1;
                    }
                    *o = owner;
                    if owner > 0 {
                        self.visible[owner as usize - 1] += 1;
                    }
                }
            }
        }
    }
}

fn log_size(rng: &mut ChaCha8Rng, lo: f32, hi: f32, gamma: f32) -> f32 {
    let u: f32 = rng.random::<f32>().powf(gamma);
    (lo.ln() + (hi.max(lo).ln() - lo.ln()) * u).exp()
}

/// Generates image `index` of a dataset with settings `cfg`.
pub fn generate(cfg: &SynthConfig, index: usize) -> SynthImage {
    let k = &cfg.knobs;
    let mut rng = image_rng(cfg.seed, index);
    let long = cfg.img_size;
    let short = ((long as f32 * rng.random_range(k.short_side_min.min(1.0)..=1.0)).round() as usize).clamp(16, long);
    let (w, h) = if rng.random::<f32>() < 0.6 { (long, short) } else { (short, long) };
    let ss = w.min(h) as f32;
    let noise_seed: u64 = rng.random();

    // Background: two value-noise fields over a 3-colour palette, a pattern, a lighting ramp.
    let base_h = rng.random_range(0.0..360.0f32);
    let c = k.bg_contrast;
    let v0 = rng.random_range(0.25..0.8f32);
    let pal = [
        hsv_rgb(base_h, rng.random_range(0.05..0.55), v0),
        hsv_rgb(base_h + rng.random_range(-70.0..70.0), rng.random_range(0.05..0.6), (v0 + c * rng.random_range(-0.8..0.8)).clamp(0.05, 0.95)),
        hsv_rgb(rng.random_range(0.0..360.0), rng.random_range(0.0..0.5), rng.random_range(0.2..0.9)),
    ];
    let n1 = value_noise(w, h, ss * rng.random_range(0.15..0.5), 4, noise_seed);
    let n2 = value_noise(w, h, ss * rng.random_range(0.05..0.2), 3, noise_seed ^ 0xABCD);
    let mix2 = rng.random_range(0.0..0.6f32) * c;
    let pattern = rng.random_range(0..5u32); // 0 none, 1 stripes, 2 checks, 3 grid, 4 none
    let (pa, period) = (rng.random_range(0.0..std::f32::consts::PI), rng.random_range(5.0..ss / 4.0));
    let pamp = c * rng.random_range(0.1..0.35);
    let (lx, ly) = (rng.random_range(-1.0..1.0) * k.lighting, rng.random_range(-1.0..1.0) * k.lighting);
    let (pc, ps) = (pa.cos(), pa.sin());
    let mut canvas = vec![[0f32; 3]; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let t = ((n1[i] - 0.5) * (0.6 + 1.6 * c) + 0.5).clamp(0.0, 1.0);
            let mut col = lerp3(pal[0], pal[1], t);
            col = lerp3(col, pal[2], (n2[i] * mix2 * 2.0).min(1.0) * (n2[i] > 0.55) as u8 as f32);
            let (xf, yf) = (x as f32, y as f32);
            let pv = match pattern {
                1 => ((xf * pc + yf * ps) / period * std::f32::consts::TAU).sin().signum(),
                2 => {
                    if (((xf * pc + yf * ps) / period).floor() as i64 + ((-xf * ps + yf * pc) / period).floor() as i64) & 1 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                3 => {
                    let (a, b) = (((xf * pc + yf * ps) / period).fract().abs(), ((-xf * ps + yf * pc) / period).fract().abs());
                    if a < 0.08 || b < 0.08 {
                        -1.0
                    } else {
                        0.0
                    }
                }
                _ => 0.0,
            };
            let shade = (1.0 + pamp * pv) * (1.0 + lx * (xf / w as f32 - 0.5) + ly * (yf / h as f32 - 0.5));
            canvas[i] = col.map(|v| v * shade);
        }
    }
    drop((n1, n2));
    let mut scene = Scene { w, k, canvas, owner: vec![0; w * h], visible: vec![], full: vec![], truncated: vec![], classes: vec![] };

    let random_placed = |rng: &mut ChaCha8Rng, shape: Shape, size: f32, colour: [f32; 3], tex: Texture, opacity: f32, margin: f32| {
        let a = (rng.random_range(-1.0..=1.0) * k.aspect_jitter).exp().sqrt();
        let (hx, hy) = (size / 2.0 * a, size / 2.0 / a);
        let th = rng.random_range(0.0..std::f32::consts::TAU);
        let m = margin * hx.max(hy);
        let cx = if (w as f32) > 2.0 * m { rng.random_range(m..w as f32 - m) } else { w as f32 / 2.0 };
        let cy = if (h as f32) > 2.0 * m { rng.random_range(m..h as f32 - m) } else { h as f32 / 2.0 };
        Placed {
            shape,
            cx,
            cy,
            hx,
            hy,
            cos: th.cos(),
            sin: th.sin(),
            texture: tex,
            c1: colour,
            c2: secondary(colour, if rng.random::<bool>() { Secondary::Darker } else { Secondary::Lighter }),
            freq: rng.random_range(0.8..1.25),
            phase: rng.random_range(0.0..2.0),
            light: (rng.random_range(-0.2..0.2), rng.random_range(-0.2..0.2)),
            opacity,
            seed: rng.random(),
        }
    };
    let distractor_colour = |rng: &mut ChaCha8Rng| {
        if rng.random::<f32>() < k.distractor_confusion {
            let c = &CLASSES[rng.random_range(0..cfg.classes)];
            jitter_colour(rng, c.3, k)
        } else {
            hsv_rgb(rng.random_range(0.0..360.0), rng.random_range(0.0..1.0), rng.random_range(0.15..1.0))
        }
    };

    // Clutter: large, low-contrast background shapes.
    for _ in 0..rng.random_range(0..=k.clutter) {
        let shape = random_distractor_shape(&mut rng);
        let size = ss * rng.random_range(0.3..0.95);
        let base = scene.canvas[(h / 2) * w + w / 2];
        let col = base.map(|v| (v + rng.random_range(-1.0..1.0) * c * 0.5).clamp(0.0, 1.0));
        let tex = TEXTURES[rng.random_range(0..TEXTURES.len())];
        let opacity = rng.random_range(0.35..0.8);
        let p = random_placed(&mut rng, shape, size, col, tex, opacity, 0.0);
        if let Some(r) = p.raster(w, h) {
            p.paint(&r, &mut scene.canvas, w);
        }
    }

    // Distractors: some under the objects now, the rest over them later.
    let n_dis = rng.random_range(0..=k.distractors);
    let n_over = (n_dis as f32 * k.occluder_frac).round() as usize;
    let dis_size = |rng: &mut ChaCha8Rng| log_size(rng, 4.0, ss * 0.35, 1.0);
    for _ in 0..n_dis - n_over {
        let shape = random_distractor_shape(&mut rng);
        let size = dis_size(&mut rng);
        let col = distractor_colour(&mut rng);
        let tex = TEXTURES[rng.random_range(0..TEXTURES.len())];
        let p = random_placed(&mut rng, shape, size, col, tex, 1.0, 0.0);
        if let Some(r) = p.raster(w, h) {
            p.paint(&r, &mut scene.canvas, w);
        }
    }

    // Objects.
    let n_obj = rng.random_range(1..=k.max_objects);
    let max_px = (ss * k.max_object_frac).max(k.min_object_px);
    for _ in 0..n_obj {
        let class = rng.random_range(0..cfg.classes);
        let def = &CLASSES[class];
        let hsv = if rng.random::<f32>() < k.colour_swap { CLASSES[rng.random_range(0..cfg.classes)].3 } else { def.3 };
        let size = log_size(&mut rng, k.min_object_px, max_px, k.size_gamma);
        for _attempt in 0..12 {
            let col = jitter_colour(&mut rng, hsv, k);
            let mut p = random_placed(&mut rng, def.1.clone(), size, col, def.2, 1.0, 0.35);
            p.c2 = secondary(col, def.4);
            let Some(r) = p.raster(w, h) else { continue };
            let area = r.alpha.iter().filter(|&&a| a >= 0.5).count();
            if area < 12 {
                continue;
            }
            let cover = scene.covers(&r);
            if !scene.keeps_visibility(&cover) {
                continue;
            }
            scene.visible.push(0);
            scene.full.push(area);
            scene.truncated.push(r.truncated);
            scene.classes.push(class);
            let id = scene.visible.len() as u16;
            scene.draw(&p, &r, id);
            break;
        }
    }

    // Occluders.
    for _ in 0..n_over {
        let shape = random_distractor_shape(&mut rng);
        let size = dis_size(&mut rng);
        let col = distractor_colour(&mut rng);
        let tex = TEXTURES[rng.random_range(0..TEXTURES.len())];
        let p = random_placed(&mut rng, shape, size, col, tex, 1.0, 0.0);
        if let Some(r) = p.raster(w, h) {
            let cover = scene.covers(&r);
            if scene.keeps_visibility(&cover) {
                scene.draw(&p, &r, 0);
            }
        }
    }

    // Visible boxes.
    let n = scene.visible.len();
    let mut bb = vec![[u32::MAX, u32::MAX, 0u32, 0u32]; n];
    for y in 0..h {
        for x in 0..w {
            let o = scene.owner[y * w + x];
            if o > 0 {
                let b = &mut bb[o as usize - 1];
                b[0] = b[0].min(x as u32);
                b[1] = b[1].min(y as u32);
                b[2] = b[2].max(x as u32 + 1);
                b[3] = b[3].max(y as u32 + 1);
            }
        }
    }
    let objects: Vec<SynthObject> = (0..n)
        .filter(|&i| scene.visible[i] >= 4 && bb[i][2] >= bb[i][0] + 2 && bb[i][3] >= bb[i][1] + 2)
        .map(|i| SynthObject { class: scene.classes[i], bbox: bb[i], truncated: scene.truncated[i] })
        .collect();

    // Blur, noise, quantisation.
    let mut canvas = scene.canvas;
    if rng.random::<f32>() < k.blur_prob {
        canvas = box_blur3(&canvas, w, h);
    }
    let sigma = k.noise_sigma / 255.0;
    let mut data = vec![0u8; w * h * 3];
    for (i, (px, out)) in canvas.iter().zip(data.chunks_exact_mut(3)).enumerate() {
        for ch in 0..3 {
            // Triangular noise with the requested standard deviation (sqrt(6)·σ half-width).
            let r = hash01(noise_seed, i as u64, ch as u64) + hash01(noise_seed ^ 0x5555, i as u64, ch as u64) - 1.0;
            let v = px[ch] + r * sigma * 2.449_49;
            out[ch] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    SynthImage { image: RgbImage { width: w, height: h, data }, objects }
}

fn box_blur3(src: &[[f32; 3]], w: usize, h: usize) -> Vec<[f32; 3]> {
    let mut tmp = src.to_vec();
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let (p, q, r) = (src[y * w + a], src[y * w + x], src[y * w + b]);
            tmp[y * w + x] = [(p[0] + q[0] + r[0]) / 3.0, (p[1] + q[1] + r[1]) / 3.0, (p[2] + q[2] + r[2]) / 3.0];
        }
    }
    let mut out = tmp.clone();
    for y in 0..h {
        let (a, b) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let (p, q, r) = (tmp[a * w + x], tmp[y * w + x], tmp[b * w + x]);
            out[y * w + x] = [(p[0] + q[0] + r[0]) / 3.0, (p[1] + q[1] + r[1]) / 3.0, (p[2] + q[2] + r[2]) / 3.0];
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Writing datasets

/// What a run wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub format: Format,
    pub out: PathBuf,
    /// The data description to pass to the loader / `q2 bench-loader`.
    pub data_yaml: PathBuf,
    pub train_images: usize,
    pub val_images: usize,
    pub objects: usize,
    pub objects_per_class: Vec<usize>,
    /// Objects whose box area is below 32², between 32² and 96², above 96² (COCO's size bins, at
    /// the written resolution).
    pub small_medium_large: [usize; 3],
    pub bytes: u64,
}

/// Paths inside `out` that `q2 synth` writes (and removes again with `force`).
pub const OWNED: [&str; 5] = ["images", "labels", "annotations", "VOCdevkit", crate::config::DATA_YAML];

/// Refuses a non-empty `out` unless `force`, in which case only the paths q2 writes there
/// ([`OWNED`]) are removed first.
pub fn prepare_out_dir(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(DataError::config(out, "exists and is not a folder"));
        }
        let non_empty = std::fs::read_dir(out).map_err(DataError::io(out))?.next().is_some();
        if non_empty && !force {
            return Err(DataError::config(out, "is not empty; pass --force to replace a dataset written there"));
        }
        for p in OWNED {
            let q = out.join(p);
            if q.is_dir() {
                std::fs::remove_dir_all(&q).map_err(DataError::io(&q))?;
            } else if q.is_file() {
                std::fs::remove_file(&q).map_err(DataError::io(&q))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(DataError::io(out))
}

struct Written {
    file_name: String,
    width: u32,
    height: u32,
    objects: Vec<SynthObject>,
    bytes: u64,
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(DataError::io(p))
}

fn yaml_names(names: &[String]) -> String {
    names.iter().enumerate().map(|(i, n)| format!("  {i}: {n}\n")).collect()
}

/// Generates the dataset and writes it to `out` (which [`prepare_out_dir`] should have made
/// ready) in `format`, in parallel on the rayon pool; `progress` shows a bar on stderr.
pub fn write_dataset(cfg: &SynthConfig, out: &Path, format: Format, progress: bool) -> Result<SynthSummary> {
    cfg.validate()?;
    let names = class_names(cfg.classes);
    let n_train = cfg.train_count();
    let split_of = |i: usize| if i < n_train { "train" } else { "val" };
    let ext = cfg.image_type.extension();
    type Dir<'a> = Box<dyn Fn(&str) -> PathBuf + Sync + 'a>;
    let (img_dir, ann_dir): (Dir, Dir) = match format {
        Format::Yolo => (Box::new(|s: &str| out.join("images").join(s)), Box::new(|s: &str| out.join("labels").join(s))),
        Format::Coco => (Box::new(|s: &str| out.join("images").join(s)), Box::new(|_: &str| out.join("annotations"))),
        Format::Voc => {
            let y = out.join("VOCdevkit").join("VOCsynth");
            let (a, b) = (y.clone(), y);
            (Box::new(move |_: &str| a.join("JPEGImages")), Box::new(move |_: &str| b.join("Annotations")))
        }
    };
    for s in ["train", "val"] {
        mkdir(&img_dir(s))?;
        mkdir(&ann_dir(s))?;
    }
    let pb = if progress {
        let pb = indicatif::ProgressBar::with_draw_target(Some(cfg.images as u64), indicatif::ProgressDrawTarget::stderr());
        if let Ok(st) = indicatif::ProgressStyle::with_template("Generating {wide_bar} {pos}/{len} [{elapsed}<{eta}]") {
            pb.set_style(st);
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let written: Vec<Result<Written>> = (0..cfg.images)
        .into_par_iter()
        .map(|i| {
            let g = generate(cfg, i);
            let split = split_of(i);
            let file_name = format!("synth_{i:06}.{ext}");
            let bytes = cfg.image_type.encode(&g.image);
            let (w, h) = (g.image.width as u32, g.image.height as u32);
            let mut total = bytes.len() as u64;
            write_atomic(&img_dir(split).join(&file_name), &bytes)?;
            match format {
                Format::Yolo => {
                    let text: String = g.objects.iter().map(|o| crate::yolo::label_line(o.class, o.bbox.map(|v| v as f32), w, h) + "\n").collect();
                    total += text.len() as u64;
                    write_atomic(&ann_dir(split).join(format!("synth_{i:06}.txt")), text.as_bytes())?;
                }
                Format::Voc => {
                    let objs: Vec<crate::voc::XmlObject> =
                        g.objects.iter().map(|o| crate::voc::XmlObject { name: &names[o.class], bbox: o.bbox, difficult: false, truncated: o.truncated }).collect();
                    let xml = crate::voc::annotation_xml("VOCsynth", &file_name, w, h, &objs);
                    total += xml.len() as u64;
                    write_atomic(&ann_dir(split).join(format!("synth_{i:06}.xml")), xml.as_bytes())?;
                }
                Format::Coco => {}
            }
            pb.inc(1);
            Ok(Written { file_name, width: w, height: h, objects: g.objects, bytes: total })
        })
        .collect();
    pb.finish_and_clear();
    let written: Vec<Written> = written.into_iter().collect::<Result<_>>()?;
    let mut bytes: u64 = written.iter().map(|w| w.bytes).sum();

    let data_yaml = out.join(crate::config::DATA_YAML);
    let header = format!(
        "# q2 synthetic detection benchmark: q2 synth --format {} --images {} --seed {} --img-size {} --difficulty {} --val-fraction {}\n",
        format.name(),
        cfg.images,
        cfg.seed,
        cfg.img_size,
        cfg.difficulty,
        cfg.val_fraction
    );
    let has_val = n_train < cfg.images;
    let yaml = match format {
        Format::Yolo => format!(
            "{header}# `path` is relative to this file for q2; ultralytics resolves relative paths against its own folder, so give it an absolute path.\npath: .\ntrain: images/train\n{}nc: {}\nnames:\n{}",
            if has_val { "val: images/val\n" } else { "" },
            names.len(),
            yaml_names(&names)
        ),
        Format::Voc => {
            let year = out.join("VOCdevkit").join("VOCsynth");
            let list = |r: std::ops::Range<usize>| -> String { r.map(|i| format!("synth_{i:06}\n")).collect() };
            let main = year.join("ImageSets").join("Main");
            mkdir(&main)?;
            write_atomic(&main.join("train.txt"), list(0..n_train).as_bytes())?;
            write_atomic(&main.join("val.txt"), list(n_train..cfg.images).as_bytes())?;
            write_atomic(&main.join("trainval.txt"), list(0..cfg.images).as_bytes())?;
            format!(
                "{header}format: voc\npath: VOCdevkit\ntrain: VOCsynth/train\n{}names:\n{}",
                if has_val { "val: VOCsynth/val\n" } else { "" },
                yaml_names(&names)
            )
        }
        Format::Coco => {
            for (split, range) in [("train", 0..n_train), ("val", n_train..cfg.images)] {
                let mut images = Vec::new();
                let mut anns = Vec::new();
                for (k, wr) in written[range.clone()].iter().enumerate() {
                    let id = (range.start + k + 1) as u64;
                    images.push(crate::coco::CocoImage { id, file_name: wr.file_name.clone(), width: wr.width, height: wr.height });
                    for o in &wr.objects {
                        let [x1, y1, x2, y2] = o.bbox.map(|v| v as f64);
                        anns.push(crate::coco::CocoAnnotation {
                            id: Some(anns.len() as u64 + 1),
                            image_id: id,
                            category_id: o.class as u64 + 1,
                            bbox: vec![x1, y1, x2 - x1, y2 - y1],
                            area: Some((x2 - x1) * (y2 - y1)),
                            iscrowd: 0,
                        });
                    }
                }
                let cats = names.iter().enumerate().map(|(i, n)| crate::coco::CocoCategory { id: i as u64 + 1, name: n.clone(), supercategory: Some("shape".into()) }).collect();
                let file = crate::coco::CocoFile { images, annotations: anns, categories: cats };
                let mut v = serde_json::to_value(&file).map_err(|e| DataError::config(out, e.to_string()))?;
                v["info"] = serde_json::json!({"description": header.trim_start_matches("# ").trim(), "version": "1"});
                let text = serde_json::to_vec(&v).map_err(|e| DataError::config(out, e.to_string()))?;
                bytes += text.len() as u64;
                write_atomic(&out.join("annotations").join(format!("instances_{split}.json")), &text)?;
            }
            format!(
                "{header}format: coco\npath: .\ntrain: annotations/instances_train.json\n{}names:\n{}",
                if has_val { "val: annotations/instances_val.json\n" } else { "" },
                yaml_names(&names)
            )
        }
    };
    write_atomic(&data_yaml, yaml.as_bytes())?;
    let mut per_class = vec![0usize; names.len()];
    let mut sml = [0usize; 3];
    for o in written.iter().flat_map(|w| &w.objects) {
        per_class[o.class] += 1;
        let a = (o.bbox[2] - o.bbox[0]) as u64 * (o.bbox[3] - o.bbox[1]) as u64;
        sml[if a < 32 * 32 { 0 } else if a < 96 * 96 { 1 } else { 2 }] += 1;
    }
    Ok(SynthSummary {
        format,
        out: out.to_path_buf(),
        data_yaml,
        train_images: n_train,
        val_images: cfg.images - n_train,
        objects: per_class.iter().sum(),
        objects_per_class: per_class,
        small_medium_large: sml,
        bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// Preview (figures/synth_example.png)

/// 3×5 bitmaps of the digits 0–9 (rows top to bottom, 3 bits each).
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// A distinct colour per class for drawing.
pub fn class_colour(class: usize) -> [u8; 3] {
    let c = hsv_rgb(class as f32 * 137.508, 0.9, 1.0);
    c.map(|v| (v * 255.0) as u8)
}

fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
    for y in y0.max(0)..y1.min(img.height as i64) {
        for x in x0.max(0)..x1.min(img.width as i64) {
            img.put(x as usize, y as usize, c);
        }
    }
}

/// Draws each object's box (class colour) and class index (2× scaled digits on a black tag).
pub fn draw_boxes(img: &mut RgbImage, objects: &[SynthObject]) {
    let boxes: Vec<(usize, [f32; 4])> = objects.iter().map(|o| (o.class, o.bbox.map(|v| v as f32))).collect();
    draw_labelled_boxes(img, &boxes);
}

/// Draws `(class, [x1, y1, x2, y2])` boxes in pixels (class colour, 1 px frame) with the class
/// index on a black tag above each box; parts outside the image are clipped.
pub fn draw_labelled_boxes(img: &mut RgbImage, boxes: &[(usize, [f32; 4])]) {
    for &(class, bbox) in boxes {
        let c = class_colour(class);
        let [x1, y1, x2, y2] = bbox.map(|v| v.round() as i64);
        fill_rect(img, x1, y1, x2, y1 + 1, c);
        fill_rect(img, x1, y2 - 1, x2, y2, c);
        fill_rect(img, x1, y1, x1 + 1, y2, c);
        fill_rect(img, x2 - 1, y1, x2, y2, c);
        let digits: Vec<usize> = class.to_string().bytes().map(|b| (b - b'0') as usize).collect();
        let (tw, th) = (digits.len() as i64 * 8 + 2, 12);
        let (tx, ty) = (x1, (y1 - th).max(0));
        fill_rect(img, tx, ty, tx + tw, ty + th, [0, 0, 0]);
        for (k, d) in digits.iter().enumerate() {
            for (r, bits) in DIGITS[*d].iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        let (px, py) = (tx + 2 + k as i64 * 8 + col * 2, ty + 1 + r as i64 * 2);
                        fill_rect(img, px, py, px + 2, py + 2, c);
                    }
                }
            }
        }
    }
}

/// A grid of the first `n` images of `cfg` with their boxes drawn (`cols` per row, 4 px white
/// gaps, cells as large as the largest image).
pub fn preview(cfg: &SynthConfig, n: usize, cols: usize) -> RgbImage {
    let imgs: Vec<SynthImage> = (0..n).into_par_iter().map(|i| generate(cfg, i)).collect();
    let cw = imgs.iter().map(|g| g.image.width).max().unwrap_or(1);
    let ch = imgs.iter().map(|g| g.image.height).max().unwrap_or(1);
    let cols = cols.max(1).min(n.max(1));
    let rows = n.div_ceil(cols);
    let gap = 4;
    let mut out = RgbImage::filled(cols * (cw + gap) + gap, rows * (ch + gap) + gap, [255, 255, 255]);
    for (k, mut g) in imgs.into_iter().enumerate() {
        draw_boxes(&mut g.image, &g.objects);
        let (ox, oy) = (gap + (k % cols) * (cw + gap), gap + (k / cols) * (ch + gap));
        for y in 0..g.image.height {
            let o = ((oy + y) * out.width + ox) * 3;
            out.data[o..o + g.image.width * 3].copy_from_slice(g.image.row(y));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_inside_at_the_centre_and_outside_at_the_corners() {
        for c in CLASSES.iter() {
            let inside = if c.1 == Shape::Ring || c.1 == Shape::Crescent { c.1.sdf(-0.75, 0.0) } else { c.1.sdf(0.0, 0.05) };
            assert!(inside < 0.0, "{}: {inside}", c.0);
            for (x, y) in [(1.3, 1.3), (-1.3, 1.3), (1.3, -1.3), (-1.3, -1.3)] {
                assert!(c.1.sdf(x, y) > 0.0, "{} at corner", c.0);
            }
        }
    }

    #[test]
    fn generation_is_deterministic_and_boxes_fit() {
        let cfg = SynthConfig::new(4, 3).with_difficulty(0.7);
        for i in 0..4 {
            let a = generate(&cfg, i);
            let b = generate(&cfg, i);
            assert_eq!(a.image, b.image);
            assert_eq!(a.objects, b.objects);
            assert_eq!(a.image.width.max(a.image.height), 256);
            for o in &a.objects {
                assert!(o.bbox[0] < o.bbox[2] && o.bbox[1] < o.bbox[3]);
                assert!(o.bbox[2] as usize <= a.image.width && o.bbox[3] as usize <= a.image.height);
                assert!(o.class < 12);
            }
        }
        let other = generate(&SynthConfig::new(4, 4), 0);
        assert_ne!(other.image, generate(&SynthConfig::new(4, 3), 0).image);
    }

    #[test]
    fn difficulty_knobs_are_monotone() {
        let (e, h) = (Knobs::for_difficulty(0.0), Knobs::for_difficulty(1.0));
        assert!(e.max_objects < h.max_objects && e.distractors < h.distractors && e.min_visible > h.min_visible);
        assert!(e.noise_sigma < h.noise_sigma && e.hue_jitter < h.hue_jitter && e.size_gamma < h.size_gamma);
    }

    #[test]
    fn train_val_counts() {
        let mut c = SynthConfig::new(10, 0);
        assert_eq!(c.train_count(), 8);
        c.val_fraction = 0.0;
        assert_eq!(c.train_count(), 10);
        c.images = 1;
        c.val_fraction = 0.9;
        assert_eq!(c.train_count(), 1);
    }
}
