//! The training/validation loader: ultralytics/yolov5 `LoadImagesAndLabels.__getitem__` +
//! `collate_fn`, on plain buffers.
//!
//! A batch is `images` `[B, 3, H, W]` RGB u8 (as ultralytics' `torch.stack` of CHW images, before
//! `/255`) and `targets` rows `[batch_idx, cls, x, y, w, h]` (normalized centre format), plus the
//! dataset indices, paths, and for letterboxed (non-mosaic) images where the original sits.
//!
//! Per sample, as ultralytics: with probability `hyp.mosaic` (training only) a 4-image mosaic
//! followed by `random_perspective` with border −s/2, and with probability `hyp.mixup` a second
//! mosaic mixed in; otherwise `load_image` + `letterbox(auto=False, scaleup=augment)` (to the
//! batch shape in rect mode) + `random_perspective` when training. Then labels to normalized xywh
//! (clipped, eps 1e-3), HSV, up-down and left-right flips.
//!
//! **Determinism**: every random draw of a sample comes from a ChaCha8 generator keyed by
//! (seed, epoch, dataset index); the epoch's order from one keyed by (seed, epoch). Worker threads
//! (`workers`) claim samples in order, at most `prefetch` batches ahead of the consumer, and the
//! consumer reassembles batches in order, so the output is identical for any worker count and
//! any scheduling. `workers = 0` builds samples in the calling thread.
//!
//! **Caching**: `cache_images` decodes and resizes every image once up front (ultralytics'
//! `--cache ram`), behind a progress bar; batches are identical with and without it.
//!
//! **Bad images at load time** (the scan catches missing, truncated and undecodable headers, but
//! a file can change afterwards): with [`OnError::Fail`] the batch is an error naming the file;
//! with [`OnError::Skip`] the next dataset image stands in and the issue goes to
//! [`Loader::report`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::{self, Label, LetterboxInfo, Perspective};
use crate::error::{DataError, Issue, OnError, Result, SkipReport};
use crate::hyp::Hyp;
use crate::image::RgbImage;
use crate::sample::Dataset;

/// Loader settings (ultralytics' `create_dataloader` arguments).
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Square training size (the long side of letterboxed validation images).
    pub img_size: usize,
    pub batch_size: usize,
    /// Worker threads building samples; 0 builds them in the calling thread.
    pub workers: usize,
    /// Training augmentations (mosaic, perspective, HSV, flips, MixUp) per `hyp`.
    pub augment: bool,
    pub hyp: Hyp,
    /// Rectangular batches (ultralytics' validation): images sorted by aspect ratio, each batch
    /// letterboxed to the smallest stride-multiple shape that fits. Implies no shuffle, no mosaic.
    pub rect: bool,
    /// Model stride, for rect batch shapes.
    pub stride: usize,
    /// Extra padding (in strides) of rect batch shapes: ultralytics uses 0.5 for validation.
    pub pad: f64,
    pub shuffle: bool,
    pub seed: u64,
    /// Batches built ahead of the consumer (ultralytics: 2 per worker).
    pub prefetch: usize,
    /// Drop a last partial batch.
    pub drop_last: bool,
    /// Train on VOC `difficult` objects (YOLOv5's VOC conversion drops them: default false).
    pub include_difficult: bool,
    /// Train on COCO `iscrowd` objects (ultralytics' COCO conversion drops them: default false).
    pub include_crowd: bool,
    /// What a decoding failure during loading does.
    pub on_error: OnError,
    /// Decode and resize every image once when the loader is built and keep them in memory
    /// (ultralytics' `--cache ram`; about `img_size² · 3` bytes per image).
    pub cache_images: bool,
    /// Show a progress bar while caching images (only when stderr is a terminal).
    pub progress: bool,
}

impl LoaderConfig {
    /// Training: augmentation with `hyp`, shuffled, `workers` threads.
    pub fn train(img_size: usize, batch_size: usize, workers: usize, hyp: Hyp, seed: u64) -> Self {
        Self {
            img_size,
            batch_size,
            workers,
            augment: true,
            hyp,
            rect: false,
            stride: 32,
            pad: 0.0,
            shuffle: true,
            seed,
            prefetch: 2 * workers.max(1),
            drop_last: false,
            include_difficult: false,
            include_crowd: false,
            on_error: OnError::Fail,
            cache_images: false,
            progress: true,
        }
    }

    /// Validation as ultralytics' `val.py`: rect batches with pad 0.5, no augmentation, no shuffle.
    pub fn val(img_size: usize, batch_size: usize, workers: usize) -> Self {
        Self { augment: false, rect: true, pad: 0.5, shuffle: false, ..Self::train(img_size, batch_size, workers, Hyp::scratch_low(), 0) }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::config("", format!("loader: {m}")));
        if self.batch_size == 0 {
            return bad("batch size must be ≥ 1".into());
        }
        if self.stride == 0 || self.img_size < self.stride || self.img_size % self.stride != 0 {
            return bad(format!("image size {} must be a positive multiple of the stride {}", self.img_size, self.stride));
        }
        if !(0.0..=16.0).contains(&self.pad) {
            return bad(format!("pad {} must be in [0, 16]", self.pad));
        }
        self.hyp.validate(std::path::Path::new("hyp"))
    }
}

/// Where a letterboxed image's original sits: `original = (letterboxed − pad) / ratio`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeInfo {
    /// Original (width, height).
    pub orig: (u32, u32),
    /// Total (x, y) scale from the original to the letterboxed image.
    pub ratio: (f64, f64),
    /// (dw, dh) offset of the image in the letterboxed canvas.
    pub pad: (f64, f64),
}

/// One collated batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, H, W]` RGB u8.
    pub images: Vec<u8>,
    pub batch_size: usize,
    pub height: usize,
    pub width: usize,
    /// `[batch_idx, cls, x, y, w, h]`, coordinates normalized to the image size.
    pub targets: Vec<[f32; 6]>,
    /// Dataset index of each image.
    pub indices: Vec<usize>,
    pub paths: Vec<PathBuf>,
    /// `None` for mosaic images.
    pub shapes: Vec<Option<ShapeInfo>>,
}

/// One built sample.
#[derive(Debug, Clone)]
pub struct Item {
    pub index: usize,
    /// CHW RGB u8.
    pub chw: Vec<u8>,
    pub height: usize,
    pub width: usize,
    /// `[cls, x, y, w, h]` normalized.
    pub labels: Vec<[f32; 5]>,
    pub shape: Option<ShapeInfo>,
}

/// A decoded, resized image: the dataset index actually used (skip mode may substitute), the
/// original (width, height) and the (x, y) resize factors.
struct Loaded {
    index: usize,
    img: Arc<RgbImage>,
    orig: (u32, u32),
    factors: (f64, f64),
}

struct Core {
    dataset: Dataset,
    labels: Vec<Vec<Label>>,
    cfg: LoaderConfig,
    /// Rect mode: the fixed order and each batch's (h, w).
    rect_order: Option<Vec<usize>>,
    batch_shapes: Option<Vec<(usize, usize)>>,
    report: Mutex<SkipReport>,
    /// `cache_images`: every image decoded and resized once (None: it failed, skip mode).
    cache: Vec<Option<Cached>>,
    /// CHW buffers of collated items, handed back to the workers (saves page-faulting fresh
    /// memory for every sample).
    spare_chw: Mutex<Vec<Vec<u8>>>,
}

/// A decoded image resized for the loader, its original (width, height), the resize factors.
type Resized = (RgbImage, (u32, u32), (f64, f64));

/// A cached image: the resized pixels, the original size, the resize factors.
type Cached = (Arc<RgbImage>, (u32, u32), (f64, f64));

/// The loader (cheap to clone: the dataset is shared).
#[derive(Clone)]
pub struct Loader {
    core: Arc<Core>,
}

fn key(seed: u64, a: u64, b: u64, tag: u64) -> ChaCha8Rng {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    k[8..16].copy_from_slice(&a.to_le_bytes());
    k[16..24].copy_from_slice(&b.to_le_bytes());
    k[24..].copy_from_slice(&tag.to_le_bytes());
    ChaCha8Rng::from_seed(k)
}

const TAG_SAMPLE: u64 = 0x7132_6461_7461_0001;
const TAG_ORDER: u64 = 0x7132_6461_7461_0002;

/// The generator of one sample's draws: (seed, epoch, dataset index).
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    key(seed, epoch, index as u64, TAG_SAMPLE)
}

impl Loader {
    /// A loader over `dataset`. Objects flagged difficult / crowd are left out unless the config
    /// includes them.
    pub fn new(dataset: Dataset, cfg: LoaderConfig) -> Result<Self> {
        cfg.validate()?;
        if dataset.is_empty() {
            return Err(DataError::Empty("loader: the dataset has no images".into()));
        }
        let labels: Vec<Vec<Label>> = dataset
            .samples
            .iter()
            .map(|s| {
                s.annotations
                    .iter()
                    .filter(|a| (cfg.include_difficult || !a.difficult) && (cfg.include_crowd || !a.iscrowd))
                    .map(|a| Label { class: a.class, bbox: a.bbox })
                    .collect()
            })
            .collect();
        let (rect_order, batch_shapes) = if cfg.rect { rect_batches(&dataset, &cfg) } else { (None, None) };
        let cache_images = cfg.cache_images;
        let mut core = Core { dataset, labels, cfg, rect_order, batch_shapes, report: Mutex::new(SkipReport::default()), cache: vec![], spare_chw: Mutex::new(Vec::new()) };
        if cache_images {
            core.cache = core.fill_cache()?;
        }
        Ok(Self { core: Arc::new(core) })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.core.dataset
    }
    pub fn config(&self) -> &LoaderConfig {
        &self.core.cfg
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let (n, b) = (self.core.dataset.len(), self.core.cfg.batch_size);
        if self.core.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Images skipped while loading ([`OnError::Skip`]).
    pub fn report(&self) -> SkipReport {
        self.core.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The order of dataset indices in `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        self.core.order(epoch)
    }

    /// Builds the sample at `position` of `epoch`'s order (what a worker does).
    pub fn item(&self, epoch: u64, position: usize) -> Result<Item> {
        let order = self.core.order(epoch);
        self.core.item(epoch, &order, position)
    }

    /// The batches of one epoch, in order, built by `workers` threads.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        EpochIter::new(self.core.clone(), epoch)
    }
}

/// Rect mode's fixed order and each batch's (h, w).
type RectPlan = (Option<Vec<usize>>, Option<Vec<(usize, usize)>>);

fn rect_batches(d: &Dataset, cfg: &LoaderConfig) -> RectPlan {
    let ar: Vec<f64> = d.samples.iter().map(|s| s.height as f64 / s.width as f64).collect();
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&a, &b| ar[a].total_cmp(&ar[b]));
    let shapes = order
        .chunks(cfg.batch_size)
        .map(|chunk| {
            let mini = chunk.iter().map(|&i| ar[i]).fold(f64::INFINITY, f64::min);
            let maxi = chunk.iter().map(|&i| ar[i]).fold(f64::NEG_INFINITY, f64::max);
            let (sh, sw) = if maxi < 1.0 {
                (maxi, 1.0)
            } else if mini > 1.0 {
                (1.0, 1.0 / mini)
            } else {
                (1.0, 1.0)
            };
            let f = |v: f64| ((v * cfg.img_size as f64 / cfg.stride as f64 + cfg.pad).ceil() as usize) * cfg.stride;
            (f(sh), f(sw))
        })
        .collect();
    (Some(order), Some(shapes))
}

/// Pixel labels → `[cls, cx, cy, w, h]` normalized, after clipping to `[0, size − eps]`
/// (ultralytics' `xyxy2xywhn(clip=True, eps=1e-3)`).
pub fn to_xywhn(labels: &[Label], w: usize, h: usize) -> Vec<[f32; 5]> {
    let (wf, hf) = (w as f32, h as f32);
    let eps = 1e-3f32;
    labels
        .iter()
        .map(|l| {
            let [x1, y1, x2, y2] = l.bbox;
            let cx = |v: f32| v.clamp(0.0, wf - eps);
            let cy = |v: f32| v.clamp(0.0, hf - eps);
            let (x1, x2, y1, y2) = (cx(x1), cx(x2), cy(y1), cy(y2));
            [l.class as f32, (x1 + x2) / 2.0 / wf, (y1 + y2) / 2.0 / hf, (x2 - x1) / wf, (y2 - y1) / hf]
        })
        .collect()
}

impl Core {
    /// Decodes and resizes every image once, in parallel, behind a progress bar (ultralytics'
    /// `cache='ram'`).
    fn fill_cache(&self) -> Result<Vec<Option<Cached>>> {
        type Decoded = std::result::Result<Cached, Issue>;
        use rayon::prelude::*;
        let n = self.n();
        let pb = if self.cfg.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let pb = indicatif::ProgressBar::with_draw_target(Some(n as u64), indicatif::ProgressDrawTarget::stderr());
            if let Ok(st) = indicatif::ProgressStyle::with_template("Caching images {wide_bar} {pos}/{len} {msg} [{elapsed}<{eta}]") {
                pb.set_style(st);
            }
            pb
        } else {
            indicatif::ProgressBar::hidden()
        };
        let bytes = std::sync::atomic::AtomicUsize::new(0);
        let out: Vec<Decoded> = (0..n)
            .into_par_iter()
            .map(|i| {
                let r = self.decode_resized(i).map(|(img, orig, f)| {
                    let b = bytes.fetch_add(img.data.len(), std::sync::atomic::Ordering::Relaxed) + img.data.len();
                    pb.set_message(format!("{:.2} GB", b as f64 / 1e9));
                    (Arc::new(img), orig, f)
                });
                pb.inc(1);
                r
            })
            .collect();
        pb.finish_and_clear();
        let mut cache = Vec::with_capacity(n);
        for r in out {
            match r {
                Ok(c) => cache.push(Some(c)),
                Err(issue) if self.cfg.on_error == OnError::Skip => {
                    self.record(&issue);
                    cache.push(None);
                }
                Err(issue) => return Err(DataError::Invalid(issue)),
            }
        }
        Ok(cache)
    }

    fn n(&self) -> usize {
        self.dataset.len()
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        if let Some(o) = &self.rect_order {
            return o.clone();
        }
        let mut o: Vec<usize> = (0..self.n()).collect();
        if self.cfg.shuffle {
            let mut rng = key(self.cfg.seed, epoch, 0, TAG_ORDER);
            for i in (1..o.len()).rev() {
                let j = rng.random_range(0..=i);
                o.swap(i, j);
            }
        }
        o
    }

    fn positions(&self) -> usize {
        if self.cfg.drop_last {
            self.n() / self.cfg.batch_size * self.cfg.batch_size
        } else {
            self.n()
        }
    }

    /// Decodes image `index` (or, in skip mode, the next decodable one), resized as `load_image`.
    /// Returns the index actually used, the image, its original size and the resize factors.
    fn load_image(&self, index: usize) -> Result<Loaded> {
        let n = self.n();
        let mut last: Option<Issue> = None;
        for k in 0..n {
            let i = (index + k) % n;
            if let Some(c) = self.cache.get(i) {
                match c {
                    Some((img, orig, f)) => return Ok(Loaded { index: i, img: img.clone(), orig: *orig, factors: *f }),
                    None => continue, // failed while caching (skip mode), already reported
                }
            }
            match self.decode_resized(i) {
                Ok((img, orig, f)) => return Ok(Loaded { index: i, img: Arc::new(img), orig, factors: f }),
                Err(issue) => {
                    if self.cfg.on_error == OnError::Fail {
                        return Err(DataError::Invalid(issue));
                    }
                    self.record(&issue);
                    last = Some(issue);
                }
            }
        }
        Err(DataError::Empty(format!("no image of the dataset can be decoded (last: {})", last.map(|i| i.to_string()).unwrap_or_default())))
    }

    /// The resized image, its original (width, height) and the resize factors.
    fn decode_resized(&self, i: usize) -> std::result::Result<Resized, Issue> {
        let img = crate::image::decode_file(&self.dataset.samples[i].image)?;
        let orig = (img.width as u32, img.height as u32);
        let (img, f) = augment::resize_long_side(img, self.cfg.img_size, self.cfg.augment);
        Ok((img, orig, f))
    }

    fn record(&self, issue: &Issue) {
        if let Ok(mut r) = self.report.lock() {
            if !r.issues.iter().any(|x| x.file == issue.file) {
                r.push(issue.clone());
            }
        }
    }

    fn scaled_labels(&self, index: usize, f: (f64, f64), pad: (f64, f64)) -> Vec<Label> {
        self.labels[index]
            .iter()
            .map(|l| {
                let [a, b, c, d] = l.bbox.map(|v| v as f64);
                Label {
                    class: l.class,
                    bbox: [a * f.0 + pad.0, b * f.1 + pad.1, c * f.0 + pad.0, d * f.1 + pad.1].map(|v| v as f32),
                }
            })
            .collect()
    }

    /// `load_mosaic` + `random_perspective(border=−s/2)`. The warp matrix is drawn (in
    /// ultralytics' order) before any image is decoded, so only the part of the 2s × 2s canvas
    /// the warp reads is built, and tiles entirely outside it are not decoded at all; the result
    /// is the same as building the whole canvas (tested in `augment`).
    fn load_mosaic(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<(RgbImage, Vec<Label>)> {
        let s = self.cfg.img_size;
        let border = -((s as isize + 1) / 2); // Python's -s // 2
        // yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        let yc = augment::uniform(rng, -border as f64, (2 * s as isize + border) as f64) as usize;
        let xc = augment::uniform(rng, -border as f64, (2 * s as isize + border) as f64) as usize;
        let mut idx = [index, 0, 0, 0];
        for v in idx.iter_mut().skip(1) {
            *v = rng.random_range(0..self.n());
        }
        // random.shuffle
        for i in (1..4).rev() {
            let j = rng.random_range(0..=i);
            idx.swap(i, j);
        }
        let p = Perspective::from_hyp(&self.cfg.hyp);
        let (s2, out) = (2 * s, (2 * s as isize + 2 * border).max(1) as usize);
        let (m, scale) = augment::perspective_matrix(&p, s2, s2, out, out, rng);
        let persp = p.perspective != 0.0;
        let win = augment::warp_source_window(&m, out, out, s2, s2);
        'retry: loop {
            let sizes = idx.map(|i| {
                let sm = &self.dataset.samples[i];
                augment::resized_dims(sm.width as usize, sm.height as usize, s)
            });
            let places = augment::mosaic_places(sizes, s, xc, yc);
            let mut tiles: [Option<Arc<RgbImage>>; 4] = [None, None, None, None];
            for k in 0..4 {
                if !win.intersects(&places[k]) {
                    continue;
                }
                let l = self.load_image(idx[k])?;
                if l.index != idx[k] {
                    // Skip mode stood another image in: place it instead.
                    idx[k] = l.index;
                    continue 'retry;
                }
                if (l.img.width, l.img.height) != sizes[k] {
                    let issue = Issue::new(
                        &self.dataset.samples[idx[k]].image,
                        crate::IssueKind::CorruptImage,
                        format!("decodes to {}×{} after resizing, the scan promised {}×{}", l.img.width, l.img.height, sizes[k].0, sizes[k].1),
                    );
                    return Err(DataError::Invalid(issue));
                }
                tiles[k] = Some(l.img);
            }
            let canvas = augment::mosaic_window([tiles[0].as_deref(), tiles[1].as_deref(), tiles[2].as_deref(), tiles[3].as_deref()], &places, win);
            tiles.into_iter().flatten().filter_map(|t| Arc::try_unwrap(t).ok()).for_each(crate::image::recycle);
            let img = augment::warp(&canvas, &augment::shift_source(&m, win.x0 as f64, win.y0 as f64), out, out, persp);
            crate::image::recycle(canvas);
            let labels: Vec<Vec<Label>> = (0..4)
                .map(|k| {
                    let sm = &self.dataset.samples[idx[k]];
                    self.scaled_labels(idx[k], (sizes[k].0 as f64 / sm.width as f64, sizes[k].1 as f64 / sm.height as f64), (0.0, 0.0))
                })
                .collect();
            let labels = augment::mosaic_labels([&labels[0], &labels[1], &labels[2], &labels[3]], &places, s);
            let labels = if labels.is_empty() { labels } else { augment::warp_labels(&labels, &m, scale, out, out, persp) };
            return Ok((img, labels));
        }
    }

    fn item(&self, epoch: u64, order: &[usize], position: usize) -> Result<Item> {
        let index = order[position];
        let cfg = &self.cfg;
        let hyp = &cfg.hyp;
        let mut rng = sample_rng(cfg.seed, epoch, index);
        let use_mosaic = cfg.augment && !cfg.rect && rng.random::<f64>() < hyp.mosaic;
        let (img, labels, shape) = if use_mosaic {
            let (mut img, mut labels) = self.load_mosaic(index, &mut rng)?;
            if rng.random::<f64>() < hyp.mixup {
                let j = rng.random_range(0..self.n());
                let (img2, labels2) = self.load_mosaic(j, &mut rng)?;
                augment::mixup(&mut img, &mut labels, &img2, &labels2, &mut rng);
            }
            (img, labels, None)
        } else {
            let Loaded { index: used, img, orig, factors: f } = self.load_image(index)?;
            let target = match &self.batch_shapes {
                Some(bs) => bs[position / cfg.batch_size],
                None => (cfg.img_size, cfg.img_size),
            };
            let (img, LetterboxInfo { ratio, pad }) = augment::letterbox(&img, target, cfg.augment);
            let total = (f.0 * ratio.0, f.1 * ratio.1);
            let labels = self.scaled_labels(used, total, pad);
            let shape = Some(ShapeInfo { orig, ratio: total, pad });
            if cfg.augment {
                let p = Perspective::from_hyp(hyp);
                let (img, labels) = augment::random_perspective(&img, &labels, &p, (0, 0), &mut rng);
                (img, labels, shape)
            } else {
                (img, labels, shape)
            }
        };
        let mut labels = to_xywhn(&labels, img.width, img.height);
        let (mut hsv, mut ud, mut lr) = (None, false, false);
        if cfg.augment {
            hsv = augment::HsvLuts::draw(hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, &mut rng);
            ud = rng.random::<f64>() < hyp.flipud;
            if ud {
                labels.iter_mut().for_each(|l| l[2] = 1.0 - l[2]);
            }
            lr = rng.random::<f64>() < hyp.fliplr;
            if lr {
                labels.iter_mut().for_each(|l| l[1] = 1.0 - l[1]);
            }
        }
        // HSV, flips and HWC → CHW in one pass.
        let spare = self.spare_chw.lock().ok().and_then(|mut v| v.pop());
        let mut chw = spare.unwrap_or_default();
        chw.clear();
        chw.resize(img.data.len(), 0);
        augment::finish_chw(&img, hsv.as_ref(), ud, lr, &mut chw);
        let (height, width) = (img.height, img.width);
        crate::image::recycle(img);
        Ok(Item { index, chw, height, width, labels, shape })
    }

    fn collate(&self, items: Vec<Item>, spare: Option<Vec<u8>>) -> Batch {
        let (h, w) = (items[0].height, items[0].width);
        let per = 3 * h * w;
        let mut images = spare.unwrap_or_default();
        images.clear();
        images.reserve(items.len() * per);
        let mut targets = Vec::new();
        let mut indices = Vec::with_capacity(items.len());
        let mut paths = Vec::with_capacity(items.len());
        let mut shapes = Vec::with_capacity(items.len());
        let mut spare = Vec::with_capacity(items.len());
        for (b, it) in items.into_iter().enumerate() {
            debug_assert_eq!((it.height, it.width), (h, w));
            images.extend_from_slice(&it.chw);
            targets.extend(it.labels.iter().map(|l| [b as f32, l[0], l[1], l[2], l[3], l[4]]));
            paths.push(self.dataset.samples[it.index].image.clone());
            indices.push(it.index);
            shapes.push(it.shape);
            spare.push(it.chw);
        }
        if let Ok(mut pool) = self.spare_chw.lock() {
            let cap = 2 * (self.cfg.prefetch.max(1) + 1) * self.cfg.batch_size;
            let room = cap.saturating_sub(pool.len());
            pool.extend(spare.into_iter().take(room));
        }
        Batch { images, batch_size: indices.len(), height: h, width: w, targets, indices, paths, shapes }
    }
}

struct Window {
    next: usize,
    limit: usize,
    cancelled: bool,
}

struct Shared {
    window: Mutex<Window>,
    cv: Condvar,
}

/// The batches of one epoch (see the module docs). Dropping it stops and joins the workers.
pub struct EpochIter {
    core: Arc<Core>,
    epoch: u64,
    order: Arc<Vec<usize>>,
    total: usize,
    next_batch: usize,
    done: bool,
    shared: Arc<Shared>,
    rx: Option<mpsc::Receiver<(usize, Result<Item>)>>,
    ready: HashMap<usize, Result<Item>>,
    handles: Vec<JoinHandle<()>>,
    spare: Option<Vec<u8>>,
}

impl EpochIter {
    fn new(core: Arc<Core>, epoch: u64) -> Self {
        let order = Arc::new(core.order(epoch));
        let total = core.positions();
        let bs = core.cfg.batch_size;
        let prefetch = core.cfg.prefetch.max(1);
        let shared = Arc::new(Shared { window: Mutex::new(Window { next: 0, limit: (prefetch * bs).min(total), cancelled: false }), cv: Condvar::new() });
        let mut handles = Vec::new();
        let mut rx = None;
        if core.cfg.workers > 0 {
            let (tx, r) = mpsc::channel();
            rx = Some(r);
            for _ in 0..core.cfg.workers {
                let (core, order, shared, tx) = (core.clone(), order.clone(), shared.clone(), tx.clone());
                handles.push(std::thread::spawn(move || worker(core, epoch, order, shared, tx, total)));
            }
        }
        Self { core, epoch, order, total, next_batch: 0, done: false, shared, rx, ready: HashMap::new(), handles, spare: None }
    }

    /// Hands a consumed batch back so its image buffer is reused for the next one (saves
    /// allocating and page-faulting B·3·H·W bytes per batch).
    pub fn recycle(&mut self, batch: Batch) {
        self.spare = Some(batch.images);
    }

    fn batch_range(&self, b: usize) -> std::ops::Range<usize> {
        let bs = self.core.cfg.batch_size;
        b * bs..((b + 1) * bs).min(self.total)
    }
}

fn worker(core: Arc<Core>, epoch: u64, order: Arc<Vec<usize>>, shared: Arc<Shared>, tx: mpsc::Sender<(usize, Result<Item>)>, total: usize) {
    loop {
        let p = {
            let Ok(mut w) = shared.window.lock() else { return };
            loop {
                if w.cancelled || w.next >= total {
                    return;
                }
                if w.next < w.limit {
                    break;
                }
                w = match shared.cv.wait(w) {
                    Ok(w) => w,
                    Err(_) => return,
                };
            }
            w.next += 1;
            w.next - 1
        };
        let item = core.item(epoch, &order, p);
        if tx.send((p, item)).is_err() {
            return;
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        let range = self.batch_range(self.next_batch);
        if range.is_empty() {
            self.done = true;
            return None;
        }
        let mut items = Vec::with_capacity(range.len());
        for p in range.clone() {
            let item = match &self.rx {
                None => self.core.item(self.epoch, &self.order, p),
                Some(rx) => loop {
                    if let Some(it) = self.ready.remove(&p) {
                        break it;
                    }
                    match rx.recv() {
                        Ok((q, it)) => {
                            self.ready.insert(q, it);
                        }
                        Err(_) => break Err(DataError::Empty("loader: the worker threads stopped".into())),
                    }
                },
            };
            match item {
                Ok(it) => items.push(it),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.next_batch += 1;
        if let Ok(mut w) = self.shared.window.lock() {
            let bs = self.core.cfg.batch_size;
            w.limit = ((self.next_batch + self.core.cfg.prefetch.max(1)) * bs).min(self.total);
        }
        self.shared.cv.notify_all();
        Some(Ok(self.core.collate(items, self.spare.take())))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.window.lock() {
            w.cancelled = true;
        }
        self.shared.cv.notify_all();
        self.rx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xywhn_clips_with_eps() {
        let l = [Label { class: 2, bbox: [-5.0, 10.0, 120.0, 30.0] }];
        let v = to_xywhn(&l, 100, 50);
        let w = 100.0 - 1e-3;
        assert_eq!(v[0][0], 2.0);
        assert!((v[0][1] - w / 2.0 / 100.0).abs() < 1e-6);
        assert!((v[0][3] - w / 100.0).abs() < 1e-6);
        assert!((v[0][2] - 0.4).abs() < 1e-6 && (v[0][4] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn sample_rngs_differ_by_every_key_part() {
        let a: u64 = sample_rng(0, 0, 0).random();
        assert_ne!(a, sample_rng(1, 0, 0).random::<u64>());
        assert_ne!(a, sample_rng(0, 1, 0).random::<u64>());
        assert_ne!(a, sample_rng(0, 0, 1).random::<u64>());
        assert_eq!(a, sample_rng(0, 0, 0).random::<u64>());
    }
}
