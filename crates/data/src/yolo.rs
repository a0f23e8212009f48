//! YOLO txt labels (ultralytics' format): one `<class> <cx> <cy> <w> <h>` line per object,
//! coordinates normalized to the image size; a line with more than five numbers is a polygon
//! `<class> x1 y1 x2 y2 …` whose bounding box is used (ultralytics' `segments2boxes`). Labels
//! live where ultralytics looks: the last `images` component of the image path replaced by
//! `labels`, extension `.txt`. A missing or empty label file makes the image a background.
//! Duplicate lines are dropped and reported, as ultralytics does.

use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::config::{finish, Pending, PendingObject, ScanOptions};
use crate::error::{DataError, Issue, IssueKind, Result};
use crate::image::IMAGE_EXTENSIONS;
use crate::sample::Dataset;

/// ultralytics' `img2label_paths`: `…/images/…/x.jpg` → `…/labels/…/x.txt` (the last `images`
/// component), or `x.txt` next to the image when the path has no `images` component.
pub fn label_path(image: &Path) -> PathBuf {
    let comps: Vec<Component> = image.components().collect();
    let last_images = comps.iter().rposition(|c| c.as_os_str() == "images");
    let mut p: PathBuf = match last_images {
        Some(k) if k + 1 < comps.len() => {
            comps.iter().enumerate().map(|(i, c)| if i == k { Component::Normal("labels".as_ref()) } else { *c }).collect()
        }
        _ => image.to_path_buf(),
    };
    p.set_extension("txt");
    p
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(DataError::io(dir))? {
        let p = e.map_err(DataError::io(dir))?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The images of an entry: a folder (recursive) or a `.txt` list (paths relative to the list's
/// folder), sorted as ultralytics sorts them.
pub fn list_images(entry: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if entry.is_dir() {
        walk(entry, &mut v)?;
    } else if entry.is_file() {
        let text = std::fs::read_to_string(entry).map_err(DataError::io(entry))?;
        let base = entry.parent().unwrap_or(Path::new("."));
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let p = Path::new(l);
            let p = if p.is_absolute() { p.to_path_buf() } else { base.join(l.trim_start_matches("./")) };
            if is_image(&p) {
                v.push(p);
            }
        }
    } else {
        return Err(Issue::new(entry, IssueKind::MissingFile, "no such image folder or list file").into());
    }
    v.sort();
    if v.is_empty() {
        return Err(DataError::Empty(format!("{}: no images (jpg, jpeg, png) found", entry.display())));
    }
    Ok(v)
}

/// Parses one label file's text. File-level problems are the error; object-level ones go to
/// `issues`. Returns (objects, issues).
pub(crate) fn parse_labels(text: &str, path: &Path, nc: usize) -> (Vec<PendingObject>, Vec<Issue>) {
    let mut objects = Vec::new();
    let mut issues = Vec::new();
    let mut seen: Vec<[u32; 5]> = Vec::new();
    let mut idx = 0usize;
    for (ln, line) in text.lines().enumerate() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.is_empty() {
            continue;
        }
        let i = idx;
        idx += 1;
        let issue = |kind, d: String| Issue::new(path, kind, d).at_line(ln + 1).object(i);
        let nums: std::result::Result<Vec<f64>, _> = toks.iter().map(|t| t.parse::<f64>()).collect();
        let Ok(nums) = nums else {
            issues.push(issue(IssueKind::Malformed, format!("`{}` is not a list of numbers", line.trim())));
            continue;
        };
        if nums.iter().any(|v| !v.is_finite()) {
            issues.push(issue(IssueKind::Malformed, format!("`{}` has non-finite values", line.trim())));
            continue;
        }
        let c = nums[0];
        if c < 0.0 || c.fract() != 0.0 {
            issues.push(issue(IssueKind::Malformed, format!("class `{}` is not a non-negative integer", toks[0])));
            continue;
        }
        if c as usize >= nc {
            issues.push(issue(IssueKind::UnknownClass, format!("class {} but the dataset has {nc} names", c as usize)));
            continue;
        }
        let coords = match nums.len() {
            5 => [nums[1], nums[2], nums[3], nums[4]],
            n if n >= 7 && n % 2 == 1 => {
                let (xs, ys): (Vec<f64>, Vec<f64>) = nums[1..].chunks(2).map(|p| (p[0], p[1])).unzip();
                let (x0, x1) = (xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                let (y0, y1) = (ys.iter().cloned().fold(f64::INFINITY, f64::min), ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
            }
            n => {
                issues.push(issue(IssueKind::Malformed, format!("{n} numbers; expected `class cx cy w h` or a polygon `class x1 y1 x2 y2 x3 y3 …`")));
                continue;
            }
        };
        let key = [c as f32, coords[0] as f32, coords[1] as f32, coords[2] as f32, coords[3] as f32].map(f32::to_bits);
        if seen.contains(&key) {
            issues.push(issue(IssueKind::Duplicate, format!("`{}` repeats an earlier line", line.trim())));
            continue;
        }
        seen.push(key);
        objects.push(PendingObject {
            class: c as usize,
            coords: coords.map(|v| v as f32),
            normalized: true,
            difficult: false,
            iscrowd: false,
            file: path.to_path_buf(),
            line: Some(ln + 1),
            index: i,
        });
    }
    (objects, issues)
}

fn parse_one(image: &Path, nc: usize) -> std::result::Result<Pending, Issue> {
    let lp = label_path(image);
    let (objects, issues) = match std::fs::read(&lp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (vec![], vec![]),
        Err(e) => return Err(Issue::new(&lp, IssueKind::Malformed, format!("cannot read: {e}"))),
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                Issue::new(&lp, IssueKind::Malformed, format!("not UTF-8: {e}")).at_line(crate::error::line_of(&bytes, e.valid_up_to()))
            })?;
            parse_labels(text, &lp, nc)
        }
    };
    let id = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Pending { id, image: image.to_path_buf(), size: None, ann_file: lp, objects, issues })
}

/// Reads the images of one entry (folder or list file) and their labels.
pub fn read(entry: &Path, names: &[String], opts: &ScanOptions) -> Result<Dataset> {
    let images = list_images(entry)?;
    let pending: Vec<std::result::Result<Pending, Issue>> = images.par_iter().map(|p| parse_one(p, names.len())).collect();
    finish(pending, names.to_vec(), &entry.display().to_string(), opts)
}

/// One label line for a pixel box `[x1, y1, x2, y2]` in a `width`×`height` image (6 decimals).
pub fn label_line(class: usize, bbox: [f32; 4], width: u32, height: u32) -> String {
    let (w, h) = (width as f64, height as f64);
    let [x1, y1, x2, y2] = bbox.map(|v| v as f64);
    format!("{class} {:.6} {:.6} {:.6} {:.6}", (x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_paths_follow_ultralytics() {
        assert_eq!(label_path(Path::new("/d/images/train/a.jpg")), PathBuf::from("/d/labels/train/a.txt"));
        assert_eq!(label_path(Path::new("/images/d/images/x/a.b.png")), PathBuf::from("/images/d/labels/x/a.b.txt"));
        assert_eq!(label_path(Path::new("/d/pics/a.jpg")), PathBuf::from("/d/pics/a.txt"));
    }

    #[test]
    fn parses_boxes_polygons_and_reports_bad_lines() {
        let t = "0 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.3 0.1 0.3 0.3\n0 0.5 0.5 0.2 0.4\n7 0.5 0.5 0.1 0.1\n1 0.5 x 0.1 0.1\n1 0.5 0.5 0.1\n1.5 0.5 0.5 0.1 0.1\n";
        let (o, i) = parse_labels(t, Path::new("l.txt"), 3);
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].class, o[0].coords, o[0].line), (0, [0.5, 0.5, 0.2, 0.4], Some(1)));
        assert_eq!(o[1].class, 2);
        assert!((o[1].coords[0] - 0.2).abs() < 1e-6 && (o[1].coords[2] - 0.2).abs() < 1e-6);
        let kinds: Vec<(IssueKind, Option<usize>, Option<usize>)> = i.iter().map(|i| (i.kind, i.line, i.object)).collect();
        assert_eq!(
            kinds,
            vec![
                (IssueKind::Duplicate, Some(4), Some(2)),
                (IssueKind::UnknownClass, Some(5), Some(3)),
                (IssueKind::Malformed, Some(6), Some(4)),
                (IssueKind::Malformed, Some(7), Some(5)),
                (IssueKind::Malformed, Some(8), Some(6)),
            ]
        );
    }

    #[test]
    fn label_line_round_trips() {
        let l = label_line(3, [10.0, 20.0, 30.0, 60.0], 100, 200);
        assert_eq!(l, "3 0.200000 0.200000 0.200000 0.200000");
    }
}
