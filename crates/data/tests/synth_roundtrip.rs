//! `q2 synth` → each reader: VOC, COCO and YOLO give back the generator's boxes and images, and
//! the files written do not depend on the number of threads.

use std::collections::BTreeMap;
use std::path::Path;

use q2_data::synth::{generate, write_dataset, ImageType, SynthConfig};
use q2_data::{DataConfig, Dataset, Format, ScanOptions, Split};

fn cfg() -> SynthConfig {
    let mut c = SynthConfig::new(10, 42).with_difficulty(0.8);
    c.img_size = 96;
    c.val_fraction = 0.3;
    c.image_type = ImageType::Png;
    c
}

fn read(dir: &Path, split: Split) -> Dataset {
    DataConfig::load(&dir.join("data.yaml")).unwrap().read(split, &ScanOptions::default().quiet()).unwrap()
}

/// (class, box) of each object of an image.
type Boxes = Vec<(usize, [f32; 4])>;

/// Image file name → boxes, per split.
fn by_file(d: &Dataset) -> BTreeMap<String, Boxes> {
    d.samples
        .iter()
        .map(|s| (s.image.file_name().unwrap().to_string_lossy().into_owned(), s.annotations.iter().map(|a| (a.class, a.bbox)).collect()))
        .collect()
}

#[test]
fn every_reader_gives_the_generated_boxes() {
    let c = cfg();
    let dirs: Vec<(Format, tempfile::TempDir)> = [Format::Voc, Format::Coco, Format::Yolo].into_iter().map(|f| (f, tempfile::tempdir().unwrap())).collect();
    for (f, d) in &dirs {
        let s = write_dataset(&c, d.path(), *f, false).unwrap();
        assert_eq!((s.train_images, s.val_images), (7, 3));
    }
    let want: Vec<(String, Boxes)> = (0..c.images)
        .map(|i| {
            let g = generate(&c, i);
            (format!("synth_{i:06}.png"), g.objects.iter().map(|o| (o.class, o.bbox.map(|v| v as f32))).collect())
        })
        .collect();
    assert!(want.iter().map(|w| w.1.len()).sum::<usize>() > 10, "the fixture has objects");
    for (f, d) in &dirs {
        let mut got = by_file(&read(d.path(), Split::Train));
        let val = read(d.path(), Split::Val);
        assert_eq!(val.len(), 3, "{f:?}");
        assert_eq!(val.names, q2_data::synth::class_names(12));
        got.extend(by_file(&val));
        assert_eq!(got.len(), c.images, "{f:?}");
        for (name, boxes) in &want {
            let g = &got[name];
            assert_eq!(g.len(), boxes.len(), "{f:?} {name}");
            for ((gc, gb), (wc, wb)) in g.iter().zip(boxes) {
                assert_eq!(gc, wc, "{f:?} {name}");
                let tol = if *f == Format::Yolo { 1e-3 } else { 0.0 };
                assert!(gb.iter().zip(wb).all(|(a, b)| (a - b).abs() <= tol), "{f:?} {name}: {gb:?} vs {wb:?}");
            }
        }
    }
    // The pixels are the generator's (PNG is lossless), in every layout.
    let g = generate(&c, 8);
    let (_, yolo) = &dirs[2];
    let img = q2_data::image::decode_file(&yolo.path().join("images/val/synth_000008.png")).unwrap();
    assert_eq!(img, g.image);
    let (_, voc) = &dirs[0];
    let img = q2_data::image::decode_file(&voc.path().join("VOCdevkit/VOCsynth/JPEGImages/synth_000008.png")).unwrap();
    assert_eq!(img, g.image);
    // COCO ids and categories.
    let (_, coco) = &dirs[1];
    let d = read(coco.path(), Split::Train);
    assert_eq!(d.category_ids, Some((1..=12).collect()));
    assert_eq!(d.samples[0].id, "1");
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let mut c = cfg();
    c.image_type = ImageType::Jpeg { quality: 90 };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| write_dataset(&c, a.path(), Format::Coco, false).unwrap());
    rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| write_dataset(&c, b.path(), Format::Coco, false).unwrap());
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    assert!(fa == fb, "same bytes in every file");
    // Image i does not depend on how many images are generated.
    let mut more = c.clone();
    more.images = 50;
    assert_eq!(generate(&more, 3).image, generate(&c, 3).image);
}

#[test]
fn refuses_a_non_empty_folder_without_force() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
    let e = q2_data::synth::prepare_out_dir(d.path(), false).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    let c = SynthConfig { images: 3, img_size: 64, ..cfg() };
    q2_data::synth::prepare_out_dir(d.path(), true).unwrap();
    write_dataset(&c, d.path(), Format::Yolo, false).unwrap();
    // --force removes only what synth writes.
    q2_data::synth::prepare_out_dir(d.path(), true).unwrap();
    let left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["notes.txt"]);
}
