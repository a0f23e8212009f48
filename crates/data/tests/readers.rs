//! The VOC, COCO and YOLO readers on the hand-written fixtures in `tests/fixtures/data/`:
//! boxes, class indices, flags, image sizes and formats (greyscale JPEG, palette/RGBA PNG).

use std::path::{Path, PathBuf};

use q2_data::{Annotation, DataConfig, Format, ScanOptions, Split};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn quiet() -> ScanOptions {
    ScanOptions::default().quiet()
}

fn voc_names() -> Vec<String> {
    q2_data::VOC_NAMES.iter().map(|s| s.to_string()).collect()
}

fn class(names: &[String], n: &str) -> usize {
    names.iter().position(|x| x == n).unwrap()
}

#[test]
fn voc_trainval_boxes_difficult_and_sizes() {
    let names = voc_names();
    let d = q2_data::voc::read(&fixtures().join("voc/VOCdevkit/VOC2007"), "trainval", &names, &quiet()).unwrap();
    assert!(d.report.is_empty());
    assert_eq!(d.len(), 2);
    let s = &d.samples[0];
    assert_eq!((s.id.as_str(), s.width, s.height), ("000001", 32, 24));
    assert!(s.image.ends_with("JPEGImages/000001.jpg"));
    // 1-based inclusive [3, 4, 20, 18] → 0-based half-open [2, 3, 20, 18].
    assert_eq!(s.annotations[0], Annotation { class: class(&names, "dog"), bbox: [2.0, 3.0, 20.0, 18.0], difficult: false, iscrowd: false });
    assert_eq!(s.annotations[1].class, class(&names, "person"));
    assert!(s.annotations[1].difficult);
    assert_eq!(s.annotations[1].bbox, [9.0, 1.0, 32.0, 24.0]);
    assert_eq!(s.annotations.len(), 2, "the <part> box is not an object");
    let g = &d.samples[1];
    assert_eq!((g.width, g.height), (20, 30));
    assert_eq!(g.annotations[0].bbox, [0.0, 0.0, 20.0, 30.0]);
    // The greyscale JPEG decodes to RGB.
    let img = q2_data::image::decode_file(&g.image).unwrap();
    assert_eq!((img.width, img.height, img.data.len()), (20, 30, 20 * 30 * 3));
    assert!(img.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn voc_yolov5_protocol_reads_07_and_12() {
    let c = DataConfig::voc_yolov5(&fixtures().join("voc/VOCdevkit"));
    let train = c.read(Split::Train, &quiet()).unwrap();
    assert_eq!(train.samples.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["000001", "000002", "2012_000001"]);
    let bird = &train.samples[2];
    assert!(bird.image.ends_with("VOC2012/JPEGImages/2012_000001.png"));
    assert_eq!(bird.annotations[0].bbox, [1.0, 1.0, 12.5, 10.0]);
    assert_eq!(bird.annotations[0].class, 2);
    let val = c.read(Split::Val, &quiet()).unwrap();
    assert_eq!(val.len(), 1);
    // discover() finds the same layout from the dataset folder.
    let d = DataConfig::discover(&fixtures().join("voc"), Some(Format::Voc)).unwrap();
    assert_eq!(d.train, c.train);
}

#[test]
fn coco_categories_map_to_contiguous_indices() {
    let root = fixtures().join("coco");
    let d = q2_data::coco::read(&root.join("annotations/instances_val.json"), &root.join("images/val"), &quiet()).unwrap();
    assert!(d.report.is_empty());
    // Sorted by id: 1 person, 3 car, 18 dog.
    assert_eq!(d.names, vec!["person", "car", "dog"]);
    assert_eq!(d.category_ids, Some(vec![1, 3, 18]));
    assert_eq!(d.len(), 3);
    let a = &d.samples[0];
    assert_eq!((a.id.as_str(), a.width, a.height), ("10", 40, 30));
    assert_eq!(a.annotations[0], Annotation { class: 2, bbox: [2.0, 3.0, 12.0, 15.0], difficult: false, iscrowd: false });
    assert_eq!(a.annotations[1].class, 0);
    assert!(a.annotations[1].iscrowd);
    assert_eq!(d.samples[1].annotations[0].bbox, [5.5, 6.25, 15.5, 26.25]);
    assert_eq!(d.samples[1].annotations[0].class, 1);
    assert!(d.samples[2].annotations.is_empty(), "image without annotations is a background");
    // Palette and RGBA PNGs decode to RGB.
    for s in [&d.samples[0], &d.samples[2]] {
        let img = q2_data::image::decode_file(&s.image).unwrap();
        assert_eq!(img.data.len(), s.width as usize * s.height as usize * 3);
    }
}

#[test]
fn coco_through_data_yaml_finds_the_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let y = dir.path().join("d.yaml");
    let root = fixtures().join("coco");
    std::fs::write(&y, format!("format: coco\npath: {}\nval: annotations/instances_val.json\n", root.display())).unwrap();
    let c = DataConfig::load(&y).unwrap();
    let d = c.read(Split::Val, &quiet()).unwrap();
    assert_eq!(d.names, vec!["person", "car", "dog"]);
    assert!(d.samples[0].image.starts_with(root.join("images/val")));
    std::fs::write(&y, format!("format: coco\npath: {}\nval: annotations/instances_val.json\nnames: [a, b, c]\n", root.display())).unwrap();
    let e = DataConfig::load(&y).unwrap().read(Split::Val, &quiet()).unwrap_err().to_string();
    assert!(e.contains("d.yaml") && e.contains("disagree"), "{e}");
}

#[test]
fn yolo_boxes_polygons_and_backgrounds() {
    let c = DataConfig::load(&fixtures().join("yolo/data.yaml")).unwrap();
    assert_eq!(c.names, vec!["cat", "dog", "bird"]);
    let d = c.read(Split::Train, &quiet()).unwrap();
    assert!(d.report.is_empty());
    let ids: Vec<&str> = d.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    let a = &d.samples[0];
    assert_eq!((a.width, a.height), (50, 40));
    // 0 0.5 0.5 0.4 0.5 on 50×40 → [15, 10, 35, 30].
    let close = |x: [f32; 4], y: [f32; 4]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-4);
    assert!(close(a.annotations[0].bbox, [15.0, 10.0, 35.0, 30.0]), "{:?}", a.annotations[0].bbox);
    assert!(close(a.annotations[1].bbox, [5.0, 6.0, 15.0, 14.0]), "{:?}", a.annotations[1].bbox);
    // Polygon 0.1..0.5 × 0.1..0.6 on 40×50.
    let b = &d.samples[1];
    assert_eq!(b.annotations[0].class, 2);
    assert!(close(b.annotations[0].bbox, [4.0, 5.0, 20.0, 30.0]), "{:?}", b.annotations[0].bbox);
    assert!(d.samples[2].annotations.is_empty());
    assert!(d.samples[2].image.ends_with("images/train/sub/c.jpg"));
}
