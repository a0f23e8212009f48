//! COCO instances JSON reader and writer.
//!
//! Categories are sorted by id and numbered 0, 1, 2, … (the contiguous index q2 trains on;
//! `Dataset::category_ids[index]` gives the COCO id back, as ultralytics' `coco80_to_coco91`).
//! Boxes `[x, y, w, h]` (pixels, 0-based) become `[x, y, x + w, y + h]`; `iscrowd` is kept.
//! Images keep the JSON's order; images without annotations are kept as backgrounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{finish, Pending, PendingObject, ScanOptions};
use crate::error::{DataError, Issue, IssueKind, Result};
use crate::sample::Dataset;

#[derive(Debug, Deserialize, Serialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CocoAnnotation {
    #[serde(default)]
    pub id: Option<u64>,
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: Vec<f64>,
    #[serde(default)]
    pub area: Option<f64>,
    #[serde(default)]
    pub iscrowd: u8,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// The parts of an instances file q2 uses (other keys are ignored).
#[derive(Debug, Deserialize, Serialize)]
pub struct CocoFile {
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

/// Parses an instances JSON; a syntax or schema error names the file, line and column.
pub fn parse(bytes: &[u8], path: &Path) -> std::result::Result<CocoFile, Issue> {
    serde_json::from_slice(bytes).map_err(|e| {
        let kind = if e.is_data() { IssueKind::MissingField } else { IssueKind::Malformed };
        Issue::new(path, kind, format!("invalid COCO JSON: {e}")).at_line(e.line())
    })
}

/// The image folder of an instances file: `<root>/images/<split>` or `<root>/<split>`, where
/// `<root>` is the folder above `annotations/` (or the JSON's folder) and `<split>` the JSON's
/// stem without `instances_`.
pub fn image_dir_for(ann: &Path) -> Result<PathBuf> {
    let stem = ann.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let split = stem.strip_prefix("instances_").unwrap_or(&stem).to_string();
    let dir = ann.parent().unwrap_or(Path::new("."));
    let root = if dir.file_name().is_some_and(|n| n == "annotations") { dir.parent().unwrap_or(Path::new(".")) } else { dir };
    let candidates = [root.join("images").join(&split), root.join(&split), dir.join("images").join(&split), dir.join(&split)];
    candidates.iter().find(|p| p.is_dir()).cloned().ok_or_else(|| {
        DataError::config(
            ann,
            format!("no image folder found for this annotation file; tried {}", candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
        )
    })
}

/// Reads an instances file whose `file_name`s are relative to `images`.
pub fn read(ann_path: &Path, images: &Path, opts: &ScanOptions) -> Result<Dataset> {
    let bytes = std::fs::read(ann_path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { IssueKind::MissingFile } else { IssueKind::Malformed };
        DataError::Invalid(Issue::new(ann_path, kind, format!("cannot read: {e}")))
    })?;
    let file = parse(&bytes, ann_path)?;
    drop(bytes);
    let mut cats: Vec<&CocoCategory> = file.categories.iter().collect();
    cats.sort_by_key(|c| c.id);
    for w in cats.windows(2) {
        if w[0].id == w[1].id {
            return Err(Issue::new(ann_path, IssueKind::Malformed, format!("category id {} is declared twice", w[0].id)).into());
        }
    }
    let names: Vec<String> = cats.iter().map(|c| c.name.clone()).collect();
    let ids: Vec<u64> = cats.iter().map(|c| c.id).collect();
    let class_of: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut slot: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
    let mut pending: Vec<std::result::Result<Pending, Issue>> = Vec::with_capacity(file.images.len());
    let mut orphans = Vec::new();
    for (k, im) in file.images.iter().enumerate() {
        if slot.insert(im.id, k).is_some() {
            return Err(Issue::new(ann_path, IssueKind::Malformed, format!("image id {} is declared twice", im.id)).into());
        }
        let size = (im.width >= 1 && im.height >= 1).then_some((im.width, im.height));
        pending.push(Ok(Pending {
            id: im.id.to_string(),
            image: images.join(&im.file_name),
            size,
            ann_file: ann_path.to_path_buf(),
            objects: vec![],
            issues: vec![],
        }));
    }
    for (i, a) in file.annotations.iter().enumerate() {
        let what = format!("annotation id {} (image {})", a.id.map(|v| v.to_string()).unwrap_or_else(|| "?".into()), a.image_id);
        let issue = |kind, detail: String| Issue::new(ann_path, kind, format!("{what}: {detail}")).object(i);
        let Some(&k) = slot.get(&a.image_id) else {
            orphans.push(issue(IssueKind::UnknownImage, "no image with this id".into()));
            continue;
        };
        let Ok(p) = pending[k].as_mut() else { continue };
        let Some(&class) = class_of.get(&a.category_id) else {
            p.issues.push(issue(IssueKind::UnknownClass, format!("category_id {} is not among the {} categories", a.category_id, ids.len())));
            continue;
        };
        if a.bbox.len() != 4 {
            p.issues.push(issue(IssueKind::Malformed, format!("bbox has {} numbers, expected 4", a.bbox.len())));
            continue;
        }
        let [x, y, w, h] = [a.bbox[0], a.bbox[1], a.bbox[2], a.bbox[3]];
        p.objects.push(PendingObject {
            class,
            coords: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
            normalized: false,
            difficult: false,
            iscrowd: a.iscrowd != 0,
            file: ann_path.to_path_buf(),
            line: None,
            index: i,
        });
    }
    let stem = ann_path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = finish(pending, names, &stem, opts)?;
    for o in orphans {
        crate::error::handle(opts.on_error, &mut out.report, o)?;
    }
    out.category_ids = Some(ids);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_names_line() {
        let text = b"{\n \"images\": [\n {\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 10 \"height\": 10}\n ]}";
        let e = parse(text, Path::new("x.json")).unwrap_err();
        assert_eq!((e.kind, e.line), (IssueKind::Malformed, Some(3)), "{e}");
        let text = b"{\"images\": [], \"annotations\": []}";
        let e = parse(text, Path::new("x.json")).unwrap_err();
        assert_eq!(e.kind, IssueKind::MissingField, "{e}");
        assert!(e.detail.contains("categories"), "{e}");
    }

    #[test]
    fn image_dir_candidates() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("annotations")).unwrap();
        std::fs::create_dir_all(d.path().join("images/val2017")).unwrap();
        let ann = d.path().join("annotations/instances_val2017.json");
        assert_eq!(image_dir_for(&ann).unwrap(), d.path().join("images/val2017"));
        let e = image_dir_for(&d.path().join("annotations/instances_train2017.json")).unwrap_err().to_string();
        assert!(e.contains("instances_train2017.json") && e.contains("train2017"), "{e}");
    }
}
