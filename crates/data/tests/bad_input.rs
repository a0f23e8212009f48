//! Bad input: every kind of problem gives an error naming the file and the object (or line)
//! with `OnError::Fail`, and a skip-report entry with `OnError::Skip`, never a panic.

use std::path::{Path, PathBuf};

use q2_data::{DataConfig, DataError, IssueKind, ScanOptions, Split};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn fail() -> ScanOptions {
    ScanOptions::default().quiet()
}

fn skip() -> ScanOptions {
    ScanOptions::skip().quiet()
}

fn voc_names() -> Vec<String> {
    q2_data::VOC_NAMES.iter().map(|s| s.to_string()).collect()
}

fn issue(e: DataError) -> q2_data::Issue {
    e.issue().cloned().unwrap_or_else(|| panic!("not a located issue: {e}"))
}

#[test]
fn voc_fail_stops_at_the_malformed_xml_with_its_line() {
    let e = q2_data::voc::read(&fixtures().join("voc/VOCdevkit/VOC2007"), "bad", &voc_names(), &fail()).unwrap_err();
    let i = issue(e);
    assert_eq!(i.kind, IssueKind::Malformed);
    assert!(i.file.ends_with("Annotations/000003.xml"), "{i}");
    assert_eq!(i.line, Some(9), "{i}");
    assert!(i.to_string().contains("000003.xml:9"), "{i}");
}

#[test]
fn voc_skip_reports_every_problem_and_keeps_the_rest() {
    let d = q2_data::voc::read(&fixtures().join("voc/VOCdevkit/VOC2007"), "bad", &voc_names(), &skip()).unwrap();
    let ids: Vec<&str> = d.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["000001", "000004"]);
    // 000004 keeps its two good objects (dog, cat).
    let names = voc_names();
    let kept: Vec<&str> = d.samples[1].annotations.iter().map(|a| names[a.class].as_str()).collect();
    assert_eq!(kept, vec!["dog", "cat"]);
    let got: Vec<(String, IssueKind, Option<usize>)> = d
        .report
        .issues
        .iter()
        .map(|i| (i.file.file_name().unwrap().to_string_lossy().into_owned(), i.kind, i.object))
        .collect();
    assert_eq!(
        got,
        vec![
            ("000003.xml".into(), IssueKind::Malformed, None),
            ("000004.xml".into(), IssueKind::UnknownClass, Some(1)),
            ("000004.xml".into(), IssueKind::ZeroArea, Some(2)),
            ("000004.xml".into(), IssueKind::BoxOutside, Some(3)),
            ("000005.jpg".into(), IssueKind::MissingFile, None),
            ("000006.jpg".into(), IssueKind::CorruptImage, None),
            ("000007.xml".into(), IssueKind::SizeMismatch, None),
        ]
    );
    let unknown = &d.report.issues[1];
    assert!(unknown.detail.contains("unicorn") && unknown.line == Some(8), "{unknown}");
    assert_eq!((d.report.images_skipped, d.report.objects_skipped), (4, 3));
    let s = d.report.summary(3);
    assert!(s.contains("skipped 4 image(s) and 3 object(s)") && s.contains("1 × corrupt image"), "{s}");
}

#[test]
fn voc_missing_image_set_is_an_error() {
    let e = q2_data::voc::read(&fixtures().join("voc/VOCdevkit/VOC2007"), "nosuchset", &voc_names(), &skip()).unwrap_err();
    assert!(e.to_string().contains("ImageSets/Main/nosuchset.txt"), "{e}");
}

#[test]
fn coco_malformed_json_names_file_and_line() {
    let root = fixtures().join("coco");
    let e = q2_data::coco::read(&root.join("annotations/instances_bad.json"), &root.join("images/val"), &skip()).unwrap_err();
    let i = issue(e);
    assert_eq!((i.kind, i.line), (IssueKind::Malformed, Some(4)), "{i}");
    assert!(i.file.ends_with("instances_bad.json"));
}

#[test]
fn coco_skip_and_fail() {
    let root = fixtures().join("coco");
    let ann = root.join("annotations/instances_skip.json");
    let d = q2_data::coco::read(&ann, &root.join("images/val"), &skip()).unwrap();
    let got: Vec<(IssueKind, Option<usize>)> = d.report.issues.iter().map(|i| (i.kind, i.object)).collect();
    assert_eq!(
        got,
        vec![
            (IssueKind::UnknownClass, Some(0)),
            (IssueKind::ZeroArea, Some(1)),
            (IssueKind::BoxOutside, Some(2)),
            (IssueKind::Malformed, Some(4)),
            (IssueKind::MissingFile, None),
            (IssueKind::UnknownImage, Some(3)),
        ]
    );
    assert!(d.report.issues[0].detail.contains("annotation id 1") && d.report.issues[0].detail.contains("99"));
    assert_eq!(d.len(), 2);
    assert_eq!(d.samples[1].annotations.len(), 1);
    let e = q2_data::coco::read(&ann, &root.join("images/val"), &fail()).unwrap_err();
    let i = issue(e);
    assert_eq!((i.kind, i.object), (IssueKind::UnknownClass, Some(0)));
    assert!(i.to_string().contains("instances_skip.json: object 0: unknown class"), "{i}");
}

#[test]
fn yolo_skip_and_fail() {
    let c = DataConfig::load(&fixtures().join("yolo/data.yaml")).unwrap();
    let d = c.read(Split::Val, &skip()).unwrap();
    let got: Vec<(IssueKind, Option<usize>, Option<usize>)> = d.report.issues.iter().map(|i| (i.kind, i.line, i.object)).collect();
    assert_eq!(
        got,
        vec![
            (IssueKind::UnknownClass, Some(2), Some(1)),
            (IssueKind::ZeroArea, Some(3), Some(2)),
            (IssueKind::BoxOutside, Some(4), Some(3)),
            (IssueKind::Duplicate, Some(5), Some(4)),
            (IssueKind::Malformed, Some(6), Some(5)),
            (IssueKind::MissingFile, None, None),
        ]
    );
    assert_eq!(d.len(), 2, "d.png (one good label) and e.png (no labels)");
    assert_eq!(d.samples[0].annotations.len(), 1);
    let e = c.read(Split::Val, &fail()).unwrap_err();
    let i = issue(e);
    assert!(i.file.ends_with("labels/bad/d.txt"));
    assert_eq!((i.kind, i.line), (IssueKind::UnknownClass, Some(2)));
    assert!(i.to_string().contains("d.txt:2: object 1: unknown class"), "{i}");
}

#[test]
fn loader_skips_an_image_that_breaks_after_the_scan() {
    // The scan sees a good image; the file is truncated afterwards. Fail → an error naming it;
    // Skip → the next image stands in and the report says why.
    let dir = tempfile::tempdir().unwrap();
    let cfg = q2_data::synth::SynthConfig { images: 4, img_size: 64, val_fraction: 0.0, ..q2_data::synth::SynthConfig::new(4, 1) };
    q2_data::synth::write_dataset(&cfg, dir.path(), q2_data::Format::Yolo, false).unwrap();
    let dc = DataConfig::load(&dir.path().join("data.yaml")).unwrap();
    let ds = dc.read(Split::Train, &fail()).unwrap();
    let victim = ds.samples[1].image.clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let mut lc = q2_data::LoaderConfig::val(64, 4, 0);
    let err = q2_data::Loader::new(ds.clone(), lc.clone()).unwrap().epoch(0).next().unwrap().unwrap_err();
    assert!(err.to_string().contains(&*victim.file_name().unwrap().to_string_lossy()), "{err}");
    lc.on_error = q2_data::OnError::Skip;
    let loader = q2_data::Loader::new(ds, lc).unwrap();
    let b = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.batch_size, 4);
    let r = loader.report();
    assert_eq!(r.issues.len(), 1);
    assert_eq!(r.issues[0].kind, IssueKind::CorruptImage);
    assert_eq!(r.issues[0].file, victim);
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let ds = q2_data::Dataset::default();
    assert!(matches!(q2_data::Loader::new(ds, q2_data::LoaderConfig::val(640, 16, 0)), Err(DataError::Empty(_))));
    let mut one = q2_data::Dataset::default();
    one.samples.push(q2_data::Sample { id: "x".into(), image: "x.jpg".into(), width: 10, height: 10, annotations: vec![] });
    let mut c = q2_data::LoaderConfig::val(100, 16, 0);
    assert!(q2_data::Loader::new(one.clone(), c.clone()).is_err(), "100 is not a multiple of 32");
    c.img_size = 64;
    c.batch_size = 0;
    assert!(q2_data::Loader::new(one, c).is_err());
    let e = DataConfig::discover(Path::new("/nonexistent/q2/data"), None).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/q2/data"), "{e}");
    let e = q2_data::Hyp::resolve("no-such-hyp").unwrap_err();
    assert!(e.to_string().contains("no-such-hyp"), "{e}");
}
