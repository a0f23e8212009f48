//! The one sample type every reader produces: an image file, its size, and its objects as
//! pixel boxes `[x1, y1, x2, y2]` (0-based, half-open: a box covering pixel columns 0..=9 is
//! `x1 = 0, x2 = 10`) with a contiguous class index and the `difficult` (VOC) and `iscrowd`
//! (COCO) flags kept.

use std::path::PathBuf;

use crate::error::{Issue, IssueKind};

/// Which on-disk format a dataset is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// PASCAL VOC: `VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}`.
    Voc,
    /// COCO instances JSON.
    Coco,
    /// YOLO txt labels (`images/…` next to `labels/…`, normalized `cls cx cy w h`).
    Yolo,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Voc => "voc",
            Format::Coco => "coco",
            Format::Yolo => "yolo",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "voc" => Some(Format::Voc),
            "coco" => Some(Format::Coco),
            "yolo" => Some(Format::Yolo),
            _ => None,
        }
    }
}

/// One object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotation {
    /// Contiguous class index into [`Dataset::names`].
    pub class: usize,
    /// Pixel box `[x1, y1, x2, y2]`, 0-based, half-open (see the module docs).
    pub bbox: [f32; 4],
    /// VOC's `difficult` flag (false in other formats).
    pub difficult: bool,
    /// COCO's `iscrowd` flag (false in other formats).
    pub iscrowd: bool,
}

impl Annotation {
    pub fn new(class: usize, bbox: [f32; 4]) -> Self {
        Self { class, bbox, difficult: false, iscrowd: false }
    }
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
}

/// One image and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// VOC image id (file stem), COCO image id (decimal), YOLO image file stem.
    pub id: String,
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    pub annotations: Vec<Annotation>,
}

/// A split of a dataset, as read from disk.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Class names; `Annotation::class` indexes this.
    pub names: Vec<String>,
    /// COCO only: `category_ids[class]` is the COCO category id of the contiguous class index.
    pub category_ids: Option<Vec<u64>>,
    pub samples: Vec<Sample>,
    /// What was skipped while reading ([`crate::OnError::Skip`]).
    pub report: crate::SkipReport,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// Total number of objects.
    pub fn num_objects(&self) -> usize {
        self.samples.iter().map(|s| s.annotations.len()).sum()
    }
}

/// Tolerance, in pixels, by which a box may extend past the image before it counts as outside
/// (annotation tools round; the excess is clipped).
pub const OUTSIDE_TOLERANCE_PX: f32 = 1.0;

/// Checks a pixel box against the image: rejects non-finite values, zero or negative extent, and
/// boxes extending more than [`OUTSIDE_TOLERANCE_PX`] past the image; clips the rest. `file`
/// and `describe` locate the issue (the caller adds line and object).
pub(crate) fn check_box(b: [f32; 4], width: u32, height: u32, file: &std::path::Path) -> Result<[f32; 4], Issue> {
    let [x1, y1, x2, y2] = b;
    if b.iter().any(|v| !v.is_finite()) {
        return Err(Issue::new(file, IssueKind::Malformed, format!("non-finite box coordinates {b:?}")));
    }
    if x2 <= x1 || y2 <= y1 {
        return Err(Issue::new(
            file,
            IssueKind::ZeroArea,
            format!("box [{x1}, {y1}, {x2}, {y2}] has width {} and height {}", x2 - x1, y2 - y1),
        ));
    }
    let (w, h) = (width as f32, height as f32);
    let t = OUTSIDE_TOLERANCE_PX;
    if x1 < -t || y1 < -t || x2 > w + t || y2 > h + t {
        return Err(Issue::new(
            file,
            IssueKind::BoxOutside,
            format!("box [{x1}, {y1}, {x2}, {y2}] extends past the {width}×{height} image"),
        ));
    }
    let c = [x1.max(0.0), y1.max(0.0), x2.min(w), y2.min(h)];
    if c[2] <= c[0] || c[3] <= c[1] {
        return Err(Issue::new(file, IssueKind::BoxOutside, format!("box [{x1}, {y1}, {x2}, {y2}] lies outside the {width}×{height} image")));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn check_box_accepts_clips_and_rejects() {
        let f = Path::new("f");
        assert_eq!(check_box([0.0, 0.0, 10.0, 10.0], 10, 10, f).unwrap(), [0.0, 0.0, 10.0, 10.0]);
        assert_eq!(check_box([-0.5, 0.0, 10.5, 10.0], 10, 10, f).unwrap(), [0.0, 0.0, 10.0, 10.0]);
        assert_eq!(check_box([0.0, 0.0, 12.0, 10.0], 10, 10, f).unwrap_err().kind, IssueKind::BoxOutside);
        assert_eq!(check_box([3.0, 0.0, 3.0, 10.0], 10, 10, f).unwrap_err().kind, IssueKind::ZeroArea);
        assert_eq!(check_box([3.0, 5.0, 4.0, 2.0], 10, 10, f).unwrap_err().kind, IssueKind::ZeroArea);
        assert_eq!(check_box([f32::NAN, 0.0, 4.0, 2.0], 10, 10, f).unwrap_err().kind, IssueKind::Malformed);
    }
}
