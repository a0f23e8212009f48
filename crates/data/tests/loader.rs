//! The loader: identical batches for any worker count, batch layout and target format, rect
//! validation batches that map back to the original boxes; and the augmentation invariants as
//! properties (letterbox and random perspective keep boxes inside the image and move them with
//! the pixels; flips are involutions; mosaic labels stay on the canvas).

use proptest::prelude::*;
use rand::SeedableRng;

use q2_data::augment::{self, Label, Perspective, FILL};
use q2_data::synth::{write_dataset, ImageType, SynthConfig};
use q2_data::{DataConfig, Dataset, Format, Hyp, Loader, LoaderConfig, RgbImage, ScanOptions, Split};

fn dataset(n: usize, size: usize) -> (tempfile::TempDir, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = SynthConfig::new(n, 9);
    c.img_size = size;
    c.val_fraction = 0.0;
    c.image_type = ImageType::Png;
    write_dataset(&c, dir.path(), Format::Yolo, false).unwrap();
    let d = DataConfig::load(&dir.path().join("data.yaml")).unwrap().read(Split::Train, &ScanOptions::default().quiet()).unwrap();
    (dir, d)
}

fn train_cfg(workers: usize) -> LoaderConfig {
    let mut h = Hyp::voc();
    h.mixup = 0.5; // exercise MixUp too
    h.degrees = 5.0;
    let mut c = LoaderConfig::train(64, 4, workers, h, 11);
    c.prefetch = 2;
    c
}

fn collect(l: &Loader, epoch: u64) -> Vec<q2_data::Batch> {
    l.epoch(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn batches_are_identical_for_any_worker_count() {
    let (_d, ds) = dataset(10, 64);
    let reference = collect(&Loader::new(ds.clone(), train_cfg(0)).unwrap(), 0);
    assert_eq!(reference.len(), 3);
    assert_eq!(reference.iter().map(|b| b.batch_size).collect::<Vec<_>>(), vec![4, 4, 2]);
    for w in [1, 2, 3] {
        let got = collect(&Loader::new(ds.clone(), train_cfg(w)).unwrap(), 0);
        for (a, b) in reference.iter().zip(&got) {
            assert_eq!(a.indices, b.indices, "workers {w}");
            assert!(a.images == b.images, "workers {w}: images differ");
            assert_eq!(a.targets, b.targets, "workers {w}");
        }
    }
    // Another epoch: another order and other augmentations; the same epoch again: the same.
    let l = Loader::new(ds, train_cfg(2)).unwrap();
    let e1 = collect(&l, 1);
    assert!(e1[0].images != reference[0].images);
    assert_eq!(collect(&l, 0)[0].images, reference[0].images);
    let mut all: Vec<usize> = e1.iter().flat_map(|b| b.indices.clone()).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "an epoch visits every image once");
}

#[test]
fn cached_images_give_the_same_batches() {
    let (_d, ds) = dataset(6, 64);
    let plain = collect(&Loader::new(ds.clone(), train_cfg(2)).unwrap(), 0);
    let mut c = train_cfg(2);
    c.cache_images = true;
    let cached = collect(&Loader::new(ds, c).unwrap(), 0);
    for (a, b) in plain.iter().zip(&cached) {
        assert_eq!(a.images, b.images);
        assert_eq!(a.targets, b.targets);
    }
}

#[test]
fn batch_layout_and_targets() {
    let (_d, ds) = dataset(6, 64);
    let l = Loader::new(ds, train_cfg(1)).unwrap();
    let mut it = l.epoch(0);
    let b = it.next().unwrap().unwrap();
    assert_eq!((b.batch_size, b.height, b.width), (4, 64, 64));
    assert_eq!(b.images.len(), 4 * 3 * 64 * 64);
    assert!(!b.targets.is_empty());
    for t in &b.targets {
        assert!((0.0..4.0).contains(&t[0]) && t[0].fract() == 0.0);
        assert!((0.0..12.0).contains(&t[1]));
        assert!(t[2..].iter().all(|v| (0.0..=1.0).contains(v)), "{t:?}");
    }
    assert!(b.targets.windows(2).all(|w| w[0][0] <= w[1][0]), "rows grouped by image");
    // Recycling the buffer does not change what comes next.
    let second = collect(&l, 0).remove(1);
    it.recycle(b);
    let again = it.next().unwrap().unwrap();
    assert_eq!(again.images, second.images);
}

#[test]
fn val_rect_batches_map_back_to_the_original_boxes() {
    let (_d, ds) = dataset(7, 96);
    let l = Loader::new(ds.clone(), LoaderConfig::val(96, 3, 2)).unwrap();
    let mut seen = 0;
    for b in l.epoch(0) {
        let b = b.unwrap();
        assert_eq!(b.height % 32, 0);
        assert_eq!(b.width % 32, 0);
        assert!(b.height.max(b.width) <= 96 + 32);
        for (k, &i) in b.indices.iter().enumerate() {
            let s = &ds.samples[i];
            let sh = b.shapes[k].unwrap();
            assert_eq!(sh.orig, (s.width, s.height));
            let rows: Vec<&[f32; 6]> = b.targets.iter().filter(|t| t[0] as usize == k).collect();
            assert_eq!(rows.len(), s.annotations.len());
            for (t, a) in rows.iter().zip(&s.annotations) {
                let (w, h) = (b.width as f64, b.height as f64);
                let (cx, cy, bw, bh) = (t[2] as f64 * w, t[3] as f64 * h, t[4] as f64 * w, t[5] as f64 * h);
                let back = [(cx - bw / 2.0 - sh.pad.0) / sh.ratio.0, (cy - bh / 2.0 - sh.pad.1) / sh.ratio.1, (cx + bw / 2.0 - sh.pad.0) / sh.ratio.0, (cy + bh / 2.0 - sh.pad.1) / sh.ratio.1];
                for (x, y) in back.iter().zip(a.bbox) {
                    assert!((x - y as f64).abs() < 0.05, "{back:?} vs {:?}", a.bbox);
                }
                assert_eq!(t[1] as usize, a.class);
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 7);
}

/// An image of `w`×`h` black pixels with a white rectangle `r` (pixel box, integers).
fn with_rect(w: usize, h: usize, r: [usize; 4]) -> RgbImage {
    let mut img = RgbImage::filled(w, h, [0, 0, 0]);
    for y in r[1]..r[3] {
        for x in r[0]..r[2] {
            img.put(x, y, [255, 255, 255]);
        }
    }
    img
}

/// Bounding box of the clearly white pixels.
fn white_box(img: &RgbImage) -> Option<[f32; 4]> {
    let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    let mut any = false;
    for y in 0..img.height {
        for x in 0..img.width {
            if img.pixel(x, y)[0] > 200 {
                any = true;
                b = [b[0].min(x as f32), b[1].min(y as f32), b[2].max(x as f32 + 1.0), b[3].max(y as f32 + 1.0)];
            }
        }
    }
    any.then_some(b)
}

fn inside(l: &Label, w: usize, h: usize) -> bool {
    let [a, b, c, d] = l.bbox;
    a >= 0.0 && b >= 0.0 && c <= w as f32 && d <= h as f32 && a <= c && b <= d
}

fn rect_strategy(max: usize) -> impl Strategy<Value = (usize, usize, [usize; 4])> {
    (16..max, 16..max).prop_flat_map(|(w, h)| {
        (Just(w), Just(h), 0..w - 8, 0..h - 8).prop_flat_map(|(w, h, x0, y0)| (Just(w), Just(h), Just(x0), Just(y0), x0 + 6..=w, y0 + 6..=h))
    })
    .prop_map(|(w, h, x0, y0, x1, y1)| (w, h, [x0, y0, x1, y1]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn letterbox_moves_boxes_with_the_pixels((w, h, r) in rect_strategy(120), side in 2usize..5, scaleup in any::<bool>()) {
        let img = with_rect(w, h, r);
        let shape = (side * 32, side * 32);
        let (out, info) = augment::letterbox(&img, shape, scaleup);
        prop_assert_eq!((out.height, out.width), shape);
        let l = r.map(|v| v as f64);
        let b = [l[0] * info.ratio.0 + info.pad.0, l[1] * info.ratio.1 + info.pad.1, l[2] * info.ratio.0 + info.pad.0, l[3] * info.ratio.1 + info.pad.1];
        prop_assert!(b[0] >= -0.5 && b[1] >= -0.5 && b[2] <= shape.1 as f64 + 0.5 && b[3] <= shape.0 as f64 + 0.5, "{:?}", b);
        if let Some(p) = white_box(&out) {
            // Half a pixel of rounded padding plus one of resampling.
            for (x, y) in p.iter().zip(b) {
                prop_assert!((*x as f64 - y).abs() <= 1.0 + info.ratio.0.max(1.0), "pixels {:?} label {:?}", p, b);
            }
        }
        // The padding is grey 114.
        if info.pad.1 >= 1.0 {
            prop_assert_eq!(out.pixel(0, 0), [FILL; 3]);
        }
    }

    #[test]
    fn random_perspective_keeps_boxes_inside_and_on_the_pixels(
        (w, h, r) in rect_strategy(96), seed in any::<u64>(), degrees in prop_oneof![Just(0.0), 0.0..30.0f64],
        translate in 0.0..0.3f64, scale in 0.0..0.6f64, shear in prop_oneof![Just(0.0), 0.0..8.0f64], mosaic_border in any::<bool>()
    ) {
        let img = with_rect(w, h, r);
        let p = Perspective { degrees, translate, scale, shear, perspective: 0.0 };
        let labels = [Label { class: 3, bbox: r.map(|v| v as f32) }];
        let border = if mosaic_border { (-(h as isize) / 4, -(w as isize) / 4) } else { (0, 0) };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (out, kept) = augment::random_perspective(&img, &labels, &p, border, &mut rng);
        prop_assert_eq!(out.width as isize, w as isize + 2 * border.1);
        prop_assert_eq!(out.height as isize, h as isize + 2 * border.0);
        for l in &kept {
            prop_assert!(inside(l, out.width, out.height), "{:?} in {}×{}", l, out.width, out.height);
            prop_assert_eq!(l.class, 3);
        }
        // Where the label survives, the white pixels lie in it, and (when the whole rectangle is in
        // view) span it: the label is the box of the warped corners, as in ultralytics.
        if let (Some(l), Some(px)) = (kept.first(), white_box(&out)) {
            let s = 1.0 + scale as f32;
            let tol = 1.5 + s;
            prop_assert!(px[0] >= l.bbox[0] - tol && px[1] >= l.bbox[1] - tol && px[2] <= l.bbox[2] + tol && px[3] <= l.bbox[3] + tol, "pixels {:?} label {:?}", px, l.bbox);
            let clipped = l.bbox[0] <= 0.0 || l.bbox[1] <= 0.0 || l.bbox[2] >= out.width as f32 || l.bbox[3] >= out.height as f32;
            if !clipped && degrees == 0.0 && shear == 0.0 {
                for (x, y) in px.iter().zip(l.bbox) {
                    prop_assert!((x - y).abs() <= tol, "pixels {:?} label {:?}", px, l.bbox);
                }
            }
        }
    }

    #[test]
    fn flips_are_involutions(w in 1usize..20, h in 1usize..20, seed in any::<u64>()) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let data: Vec<u8> = (0..w * h * 3).map(|_| rand::Rng::random(&mut rng)).collect();
        let img = RgbImage { width: w, height: h, data };
        let mut a = img.clone();
        augment::fliplr(&mut a);
        augment::fliplr(&mut a);
        prop_assert_eq!(&a, &img);
        augment::flipud(&mut a);
        augment::flipud(&mut a);
        prop_assert_eq!(&a, &img);
        // Flipping pixels and normalized labels together keeps them together.
        augment::fliplr(&mut a);
        prop_assert_eq!(a.pixel(0, 0), img.pixel(w - 1, 0));
    }

    #[test]
    fn mosaic_labels_stay_on_the_canvas(s in 2usize..5, xc in 0.5f64..1.5, yc in 0.5f64..1.5, sizes in prop::array::uniform4((8usize..80, 8usize..80))) {
        let s = s * 16;
        let tiles: Vec<(RgbImage, Vec<Label>)> = sizes.iter().enumerate().map(|(i, &(w, h))| {
            (RgbImage::filled(w, h, [i as u8; 3]), vec![Label { class: i, bbox: [1.0, 1.0, w as f32 - 1.0, h as f32 - 1.0] }])
        }).collect();
        let (xc, yc) = ((xc * s as f64) as usize, (yc * s as f64) as usize);
        let (canvas, labels) = augment::mosaic([(&tiles[0].0, &tiles[0].1), (&tiles[1].0, &tiles[1].1), (&tiles[2].0, &tiles[2].1), (&tiles[3].0, &tiles[3].1)], s, xc, yc);
        prop_assert_eq!((canvas.width, canvas.height), (2 * s, 2 * s));
        prop_assert_eq!(labels.len(), 4);
        for l in &labels {
            prop_assert!(inside(l, 2 * s, 2 * s), "{:?}", l);
        }
        // Tile 0 ends at the centre; tile 3 starts there.
        if xc > 0 && yc > 0 {
            prop_assert_eq!(canvas.pixel(xc - 1, yc - 1), [0; 3]);
        }
        if xc < 2 * s && yc < 2 * s {
            prop_assert_eq!(canvas.pixel(xc, yc), [3; 3]);
        }
    }
}
