//! Dataset descriptions (`data.yaml`, ultralytics' keys plus q2's `format`) and the shared
//! scanning step every reader ends with: each image is probed (exists, header readable, file
//! complete) in parallel behind a progress bar, its size checked against the annotation, and
//! each box checked against the image, with the skip-or-fail policy applied in dataset order.
//!
//! ```yaml
//! path: .                  # dataset root, relative to this file (default: this file's folder)
//! format: yolo             # yolo (default, as ultralytics) | voc | coco
//! train: images/train      # one entry or a list; see below
//! val: images/val
//! names: [disc, ring, …]   # or {0: disc, 1: ring, …}; COCO takes names from its JSON
//! ```
//!
//! Entries per format: **yolo** a folder of images (searched recursively) or a `.txt` list of
//! image paths, labels found by ultralytics' rule (the last `images` path component becomes
//! `labels`, extension `.txt`); **voc** `VOC<year>/<set>` under `path` (the VOCdevkit folder),
//! reading `ImageSets/Main/<set>.txt`, so the YOLOv5 protocol is `train: [VOC2007/trainval,
//! VOC2012/trainval]`, `val: VOC2007/test` ([`DataConfig::voc_yolov5`]); **coco** an instances
//! JSON, images looked up in `images/<split>` or `<split>` next to `annotations/`, where
//! `<split>` is the JSON's stem without `instances_` (`instances_val2017.json` → `val2017`).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{handle, DataError, Issue, IssueKind, OnError, Result, SkipReport};
use crate::sample::{check_box, Annotation, Dataset, Format, Sample};

/// The 20 PASCAL VOC classes in YOLOv5's `data/VOC.yaml` order.
pub const VOC_NAMES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Which split of a [`DataConfig`] to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// How to read a dataset.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub on_error: OnError,
    /// Show an indicatif progress bar on stderr while probing images (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { on_error: OnError::Fail, progress: true }
    }
}

impl ScanOptions {
    pub fn skip() -> Self {
        Self { on_error: OnError::Skip, ..Self::default() }
    }
    pub fn quiet(mut self) -> Self {
        self.progress = false;
        self
    }
}

/// A dataset description: root, format, split entries and class names.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// Dataset root; relative entries are resolved against it.
    pub root: PathBuf,
    pub format: Format,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
    /// Class names; empty for COCO means "take them from the JSON".
    pub names: Vec<String>,
    /// The file this was read from, if any (named in errors).
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    List(Vec<String>),
    Map(std::collections::BTreeMap<usize, String>),
}

#[derive(Deserialize)]
struct RawConfig {
    path: Option<PathBuf>,
    format: Option<String>,
    train: Option<OneOrMany>,
    val: Option<OneOrMany>,
    test: Option<OneOrMany>,
    names: Option<Names>,
}

fn many(v: Option<OneOrMany>) -> Vec<String> {
    match v {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    }
}

/// The file name `q2 synth` writes and [`DataConfig::discover`] looks for.
pub const DATA_YAML: &str = "data.yaml";

impl DataConfig {
    /// Reads a `data.yaml` (see the module docs).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        let raw: RawConfig = serde_yaml_ng::from_str(&text).map_err(|e| DataError::config(path, format!("invalid data description: {e}")))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let root = match raw.path {
            Some(p) if p.is_absolute() => p,
            Some(p) => base.join(p),
            None => base,
        };
        let format = match raw.format.as_deref() {
            None => Format::Yolo,
            Some(f) => Format::parse(f).ok_or_else(|| DataError::config(path, format!("`format: {f}`: expected yolo, voc or coco")))?,
        };
        let names = match raw.names {
            None => vec![],
            Some(Names::List(v)) => v,
            Some(Names::Map(m)) => {
                for (i, k) in m.keys().enumerate() {
                    if *k != i {
                        return Err(DataError::config(path, format!("`names` keys must be 0, 1, 2, … without gaps; key {k} found where {i} was expected")));
                    }
                }
                m.into_values().collect()
            }
        };
        if names.is_empty() && format != Format::Coco {
            return Err(DataError::config(path, "`names` is missing (required for yolo and voc datasets)"));
        }
        Ok(Self { root, format, train: many(raw.train), val: many(raw.val), test: many(raw.test), names, source: Some(path.to_path_buf()) })
    }

    /// The YOLOv5 VOC protocol (`data/VOC.yaml`): train on VOC2007 trainval + VOC2012 trainval,
    /// validate on VOC2007 test; `devkit` is the `VOCdevkit` folder.
    pub fn voc_yolov5(devkit: &Path) -> Self {
        Self {
            root: devkit.to_path_buf(),
            format: Format::Voc,
            train: vec!["VOC2007/trainval".into(), "VOC2012/trainval".into()],
            val: vec!["VOC2007/test".into()],
            test: vec!["VOC2007/test".into()],
            names: VOC_NAMES.iter().map(|s| s.to_string()).collect(),
            source: None,
        }
    }

    /// `path` if it is a file, else `path/data.yaml` if that exists, else a default layout for
    /// `format`: VOC → [`DataConfig::voc_yolov5`] (with `path` the VOCdevkit folder or its
    /// parent); COCO → `annotations/instances_{train,val}2017.json`; YOLO → `images/{train,val}`
    /// with classes named by their index (for timing only). A `format` that disagrees with the
    /// file's is an error.
    pub fn discover(path: &Path, format: Option<Format>) -> Result<Self> {
        let file = if path.is_file() { Some(path.to_path_buf()) } else { Some(path.join(DATA_YAML)).filter(|p| p.is_file()) };
        if let Some(f) = file {
            let c = Self::load(&f)?;
            if let Some(want) = format {
                if want != c.format {
                    return Err(DataError::config(&f, format!("describes a {} dataset, but {} was asked for", c.format.name(), want.name())));
                }
            }
            return Ok(c);
        }
        if !path.is_dir() {
            return Err(DataError::config(path, "no such dataset folder or file"));
        }
        let format = format.ok_or_else(|| DataError::config(path, format!("no {DATA_YAML} here; say which format the dataset is in")))?;
        Ok(match format {
            Format::Voc => {
                let devkit = if path.join("VOCdevkit").is_dir() { path.join("VOCdevkit") } else { path.to_path_buf() };
                Self::voc_yolov5(&devkit)
            }
            Format::Coco => Self {
                root: path.to_path_buf(),
                format,
                train: vec!["annotations/instances_train2017.json".into()],
                val: vec!["annotations/instances_val2017.json".into()],
                test: vec![],
                names: vec![],
                source: None,
            },
            Format::Yolo => Self {
                root: path.to_path_buf(),
                format,
                train: vec!["images/train".into()],
                val: vec!["images/val".into()],
                test: vec![],
                names: (0..1000).map(|i| i.to_string()).collect(),
                source: None,
            },
        })
    }

    fn describe(&self) -> PathBuf {
        self.source.clone().unwrap_or_else(|| self.root.clone())
    }

    /// The entries of one split.
    pub fn entries(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Reads one split (all of its entries, concatenated in order).
    pub fn read(&self, split: Split, opts: &ScanOptions) -> Result<Dataset> {
        let entries = self.entries(split);
        if entries.is_empty() {
            return Err(DataError::config(self.describe(), format!("no `{}` entry", split.name())));
        }
        let mut out = Dataset { names: self.names.clone(), ..Dataset::default() };
        for (k, e) in entries.iter().enumerate() {
            let d = match self.format {
                Format::Voc => {
                    let (dir, set) = e.rsplit_once('/').ok_or_else(|| {
                        DataError::config(self.describe(), format!("VOC entry `{e}` must be `VOC<year>/<set>` (e.g. VOC2007/trainval)"))
                    })?;
                    crate::voc::read(&self.root.join(dir), set, &self.names, opts)?
                }
                Format::Coco => {
                    let ann = self.root.join(e);
                    let images = crate::coco::image_dir_for(&ann)?;
                    crate::coco::read(&ann, &images, opts)?
                }
                Format::Yolo => crate::yolo::read(&self.root.join(e), &self.names, opts)?,
            };
            if self.format == Format::Coco {
                if k == 0 {
                    if !self.names.is_empty() && self.names != d.names {
                        return Err(DataError::config(self.describe(), format!("`names` disagree with the categories of {e}: {:?} vs {:?}", self.names, d.names)));
                    }
                    out.names = d.names.clone();
                    out.category_ids = d.category_ids.clone();
                } else if out.category_ids != d.category_ids {
                    return Err(DataError::config(self.describe(), format!("{e} has other categories than {}", entries[0])));
                }
            }
            out.samples.extend(d.samples);
            out.report.extend(d.report);
        }
        Ok(out)
    }
}

/// One object as a reader parsed it, before its image's size is known or checked.
#[derive(Debug, Clone)]
pub(crate) struct PendingObject {
    pub class: usize,
    /// Pixel `[x1, y1, x2, y2]`, or normalized `[cx, cy, w, h]` when `normalized`.
    pub coords: [f32; 4],
    pub normalized: bool,
    pub difficult: bool,
    pub iscrowd: bool,
    /// Where the object is: its annotation file, line, index.
    pub file: PathBuf,
    pub line: Option<usize>,
    pub index: usize,
}

/// One image as a reader parsed it.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub id: String,
    pub image: PathBuf,
    /// Size stated by the annotation (VOC, COCO), checked against the image header.
    pub size: Option<(u32, u32)>,
    /// The annotation file, for image-level issues about the annotation.
    pub ann_file: PathBuf,
    pub objects: Vec<PendingObject>,
    /// Object-level issues found while parsing (unknown class, malformed line, duplicate).
    pub issues: Vec<Issue>,
}

fn progress_bar(n: usize, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(Some(n as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} [{elapsed}<{eta}]") {
        pb.set_style(style);
    }
    pb.set_prefix(format!("Scanning {what}"));
    pb
}

/// Probes every image (in parallel, with a progress bar), then, in dataset order, applies the
/// policy to parse-time issues, image issues and box checks, and builds the samples.
/// `file_issues` are image-level issues found while parsing (in dataset order, by position).
pub(crate) fn finish(
    pending: Vec<std::result::Result<Pending, Issue>>,
    names: Vec<String>,
    what: &str,
    opts: &ScanOptions,
) -> Result<Dataset> {
    let pb = progress_bar(pending.len(), opts.progress, what);
    let probed: Vec<Option<std::result::Result<(u32, u32), Issue>>> = pending
        .par_iter()
        .map(|p| {
            let r = p.as_ref().ok().map(|p| crate::image::probe_file(&p.image));
            pb.inc(1);
            r
        })
        .collect();
    pb.finish_and_clear();
    let mut report = SkipReport::default();
    let mut samples = Vec::with_capacity(pending.len());
    for (p, size) in pending.into_iter().zip(probed) {
        let p = match p {
            Ok(p) => p,
            Err(issue) => {
                handle(opts.on_error, &mut report, issue)?;
                continue;
            }
        };
        let (w, h) = match size.expect("probed every parsed image") {
            Ok(s) => s,
            Err(issue) => {
                handle(opts.on_error, &mut report, issue)?;
                continue;
            }
        };
        if let Some((aw, ah)) = p.size {
            if (aw, ah) != (w, h) {
                let issue = Issue::new(&p.ann_file, IssueKind::SizeMismatch, format!("annotation says {aw}×{ah}, {} is {w}×{h}", p.image.display()));
                handle(opts.on_error, &mut report, issue)?;
                continue;
            }
        }
        // Parse-time object issues and box checks, in object order.
        let mut issues = p.issues;
        let mut annotations = Vec::with_capacity(p.objects.len());
        for o in &p.objects {
            let b = if o.normalized {
                let [cx, cy, bw, bh] = o.coords;
                let (fw, fh) = (w as f32, h as f32);
                [(cx - bw / 2.0) * fw, (cy - bh / 2.0) * fh, (cx + bw / 2.0) * fw, (cy + bh / 2.0) * fh]
            } else {
                o.coords
            };
            match check_box(b, w, h, &o.file) {
                Ok(bbox) => annotations.push((o.index, Annotation { class: o.class, bbox, difficult: o.difficult, iscrowd: o.iscrowd })),
                Err(mut issue) => {
                    issue.line = o.line;
                    issue.object = Some(o.index);
                    if o.normalized {
                        let [cx, cy, bw, bh] = o.coords;
                        issue.detail = format!("normalized box (cx {cx}, cy {cy}, w {bw}, h {bh}) → pixel {}", issue.detail);
                    }
                    issues.push(issue);
                }
            }
        }
        issues.sort_by_key(|i| i.object);
        for issue in issues {
            handle(opts.on_error, &mut report, issue)?;
        }
        annotations.sort_by_key(|(i, _)| *i);
        samples.push(Sample { id: p.id, image: p.image, width: w, height: h, annotations: annotations.into_iter().map(|(_, a)| a).collect() });
    }
    Ok(Dataset { names, category_ids: None, samples, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_yaml_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.yaml");
        std::fs::write(&p, "path: sub\ntrain: images/train\nval: [a, b]\nnames: {0: x, 1: y}\n").unwrap();
        let c = DataConfig::load(&p).unwrap();
        assert_eq!(c.root, dir.path().join("sub"));
        assert_eq!(c.format, Format::Yolo);
        assert_eq!(c.train, vec!["images/train"]);
        assert_eq!(c.val, vec!["a", "b"]);
        assert_eq!(c.names, vec!["x", "y"]);
        std::fs::write(&p, "format: voc\ntrain: VOC2007/trainval\nnames: [a]\n").unwrap();
        let c = DataConfig::load(&p).unwrap();
        assert_eq!((c.format, c.root.as_path()), (Format::Voc, dir.path()));
        std::fs::write(&p, "format: pascal\nnames: [a]\n").unwrap();
        let e = DataConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("d.yaml") && e.contains("pascal"), "{e}");
        std::fs::write(&p, "names: {0: a, 2: b}\n").unwrap();
        assert!(DataConfig::load(&p).unwrap_err().to_string().contains("without gaps"));
        std::fs::write(&p, "train: [unclosed\n").unwrap();
        assert!(DataConfig::load(&p).unwrap_err().to_string().contains("d.yaml"));
    }

    #[test]
    fn voc_protocol_is_yolov5s() {
        let c = DataConfig::voc_yolov5(Path::new("/data/VOCdevkit"));
        assert_eq!(c.train, vec!["VOC2007/trainval", "VOC2012/trainval"]);
        assert_eq!(c.val, vec!["VOC2007/test"]);
        assert_eq!(c.names.len(), 20);
        assert_eq!(c.names[14], "person");
    }
}
