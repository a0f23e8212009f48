//! Reading COCO ground truth (annotation format) and detections (results format), with errors
//! that name the file and the object.
//!
//! Ground truth: `{"images": [{"id"}], "annotations": [{"id", "image_id", "category_id",
//! "bbox": [x, y, w, h], "area"?, "iscrowd"?, "difficult"?}], "categories": [{"id", "name"?}]}`;
//! other keys (segmentation, file names, ...) are skipped. Detections: `[{"image_id",
//! "category_id", "bbox", "score"}]`.
//!
//! What is checked, and how it compares with pycocotools (which checks almost nothing and
//! otherwise fails with a bare `KeyError`/`AssertionError`, or silently computes something else):
//! - malformed JSON, a missing or mistyped field: the serde message with line and column,
//!   prefixed by the object being read (`annotation 17: missing field `bbox` at line 1 column 912`);
//!   objects are numbered from 0 in file order;
//! - image ids are integers or strings, all of one kind (YOLOv5 writes file stems that are not
//!   numbers as strings); ids of images, categories and annotations must be unique (pycocotools
//!   keeps the last of a duplicate annotation id twice and drops the other);
//! - annotation id 0 is refused: pycocotools records a match by the matched annotation's id and
//!   reads id 0 as "unmatched", so such an annotation can never be detected there;
//! - an annotation or detection whose `image_id` is not among the images, or whose
//!   `category_id` is not among the categories, is an error (pycocotools asserts on unknown
//!   images in the results and silently drops unknown categories: typically a 0-based class
//!   index written where the dataset's category id belongs);
//! - box values must be finite and w, h >= 0 (as must x + w, y + h and w·h); scores finite;
//! - `area` defaults to w·h when absent (pycocotools needs the key), `iscrowd` and `difficult`
//!   to 0; they accept 0/1 or true/false. pycocotools' own `ignore` key is not read (pycocotools
//!   overwrites it with `iscrowd`).
//!
//! An empty detection list is valid (pycocotools' `loadRes` fails on it; every AP is then 0).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::Serialize;

use crate::{EvalError, Result};

/// An image id: an integer (COCO) or a string (YOLOv5 writes non-numeric file stems as strings).
/// Ids of one file are all of one kind; integers sort numerically, strings by code point (as
/// `np.unique` sorts them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum ImageId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Int(i) => write!(f, "{i}"),
            ImageId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A category of the ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Category {
    /// Its id.
    pub id: i64,
    /// Its name, when the file gives one.
    pub name: Option<String>,
}

/// One ground-truth annotation, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    /// Its id (unique, not 0).
    pub id: i64,
    /// Index of its image in [`GroundTruth::images`].
    pub image: u32,
    /// Index of its category in [`GroundTruth::categories`].
    pub category: u32,
    /// `[x, y, w, h]`, w and h >= 0.
    pub bbox: [f64; 4],
    /// The `area` field (w·h when absent): what COCO's area ranges test.
    pub area: f64,
    /// `iscrowd`: an ignore region for COCO, like `difficult` for VOC, dropped for YOLO.
    pub iscrowd: bool,
    /// `difficult` (non-standard; written by VOC→COCO converters): ignored by VOC, dropped by YOLO,
    /// not read by COCO.
    pub difficult: bool,
}

/// One detection, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Index of its image in [`GroundTruth::images`].
    pub image: u32,
    /// Index of its category in [`GroundTruth::categories`].
    pub category: u32,
    /// `[x, y, w, h]`, w and h >= 0.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// A checked ground-truth file: images, categories and annotations in file order.
#[derive(Clone, Debug)]
pub struct GroundTruth {
    /// Image ids in file order.
    pub images: Vec<ImageId>,
    /// Categories in file order.
    pub categories: Vec<Category>,
    /// Annotations in file order.
    pub annotations: Vec<Annotation>,
    image_index: HashMap<ImageId, u32>,
    category_index: HashMap<i64, u32>,
}

fn bad(file: &str, msg: impl fmt::Display) -> EvalError {
    EvalError::Input(format!("{file}: {msg}"))
}

/// Checks `[x, y, w, h]`; `what` names the object for the message.
fn check_box(file: &str, what: &str, b: [f64; 4]) -> Result<()> {
    let names = ["x", "y", "width", "height"];
    for (v, n) in b.iter().zip(names) {
        if !v.is_finite() {
            return Err(bad(file, format!("{what}: bbox {n} is not a finite number")));
        }
    }
    if b[2] < 0.0 {
        return Err(bad(file, format!("{what}: bbox width {} is negative", b[2])));
    }
    if b[3] < 0.0 {
        return Err(bad(file, format!("{what}: bbox height {} is negative", b[3])));
    }
    if !(b[0] + b[2]).is_finite() || !(b[1] + b[3]).is_finite() || !(b[2] * b[3]).is_finite() {
        return Err(bad(file, format!("{what}: bbox {b:?} is too large (x + w, y + h or w·h overflows)")));
    }
    Ok(())
}

impl GroundTruth {
    /// Checks and indexes a ground truth given as parts (see the module docs for the rules);
    /// `file` names the source in error messages.
    pub fn new(file: &str, images: Vec<ImageId>, categories: Vec<Category>, annotations: Vec<RawAnnotation>) -> Result<Self> {
        let mut image_index = HashMap::with_capacity(images.len());
        for (i, id) in images.iter().enumerate() {
            if let (Some(first), true) = (images.first(), i > 0) {
                if std::mem::discriminant(first) != std::mem::discriminant(id) {
                    return Err(bad(file, format!("image {i}: id {id} is not of the same kind as image 0's id {first}; image ids must be all integers or all strings")));
                }
            }
            if let Some(prev) = image_index.insert(id.clone(), i as u32) {
                return Err(bad(file, format!("image {i}: duplicate image id {id} (also image {prev})")));
            }
        }
        let mut category_index = HashMap::with_capacity(categories.len());
        for (i, c) in categories.iter().enumerate() {
            if let Some(prev) = category_index.insert(c.id, i as u32) {
                return Err(bad(file, format!("category {i}: duplicate category id {} (also category {prev})", c.id)));
            }
        }
        let mut ann_ids: HashMap<i64, usize> = HashMap::with_capacity(annotations.len());
        let mut out = Vec::with_capacity(annotations.len());
        for (i, a) in annotations.into_iter().enumerate() {
            let what = format!("annotation {i}");
            if a.id == 0 {
                return Err(bad(file, format!("{what}: annotation id 0 is not allowed (pycocotools records matches by annotation id and reads 0 as unmatched, so it could never be detected); number annotations from 1")));
            }
            if let Some(prev) = ann_ids.insert(a.id, i) {
                return Err(bad(file, format!("{what}: duplicate annotation id {} (also annotation {prev})", a.id)));
            }
            let image = *image_index.get(&a.image_id).ok_or_else(|| bad(file, format!("{what} (id {}): image_id {} is not in `images`", a.id, a.image_id)))?;
            let category = *category_index.get(&a.category_id).ok_or_else(|| bad(file, format!("{what} (id {}): category_id {} is not in `categories`", a.id, a.category_id)))?;
            check_box(file, &format!("{what} (id {})", a.id), a.bbox)?;
            let area = match a.area {
                Some(v) if !v.is_finite() || v < 0.0 => return Err(bad(file, format!("{what} (id {}): area {v} must be a finite number >= 0", a.id))),
                Some(v) => v,
                None => a.bbox[2] * a.bbox[3],
            };
            out.push(Annotation { id: a.id, image, category, bbox: a.bbox, area, iscrowd: a.iscrowd, difficult: a.difficult });
        }
        Ok(GroundTruth { images, categories, annotations: out, image_index, category_index })
    }

    /// Index of an image id in [`GroundTruth::images`].
    pub fn image_index(&self, id: &ImageId) -> Option<u32> {
        self.image_index.get(id).copied()
    }

    /// Index of a category id in [`GroundTruth::categories`].
    pub fn category_index(&self, id: i64) -> Option<u32> {
        self.category_index.get(&id).copied()
    }

    /// Checks detections given as parts against this ground truth; `file` names their source.
    pub fn detections(&self, file: &str, raw: Vec<RawDetection>) -> Result<Vec<Detection>> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, d) in raw.into_iter().enumerate() {
            let image = self.image_index(&d.image_id).ok_or_else(|| bad(file, format!("detection {i}: image_id {} is not in the ground truth's images", d.image_id)))?;
            let category = self.category_index(d.category_id).ok_or_else(|| bad(file, format!("detection {i}: category_id {} is not in the ground truth's categories", d.category_id)))?;
            check_box(file, &format!("detection {i}"), d.bbox)?;
            if !d.score.is_finite() {
                return Err(bad(file, format!("detection {i}: score is not a finite number")));
            }
            // + 0.0 turns a score of -0.0 into 0.0: numpy orders them as equal.
            out.push(Detection { image, category, bbox: d.bbox, score: d.score + 0.0 });
        }
        Ok(out)
    }

    /// The ground truth as a COCO annotation file (what [`parse_ground_truth`] reads back).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Img<'a> {
            id: &'a ImageId,
        }
        #[derive(Serialize)]
        struct Cat<'a> {
            id: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: &'a Option<String>,
        }
        #[derive(Serialize)]
        struct Ann<'a> {
            id: i64,
            image_id: &'a ImageId,
            category_id: i64,
            bbox: [f64; 4],
            area: f64,
            iscrowd: u8,
            #[serde(skip_serializing_if = "is_zero")]
            difficult: u8,
        }
        fn is_zero(v: &u8) -> bool {
            *v == 0
        }
        #[derive(Serialize)]
        struct File<'a> {
            images: Vec<Img<'a>>,
            annotations: Vec<Ann<'a>>,
            categories: Vec<Cat<'a>>,
        }
        let f = File {
            images: self.images.iter().map(|id| Img { id }).collect(),
            annotations: self
                .annotations
                .iter()
                .map(|a| Ann {
                    id: a.id,
                    image_id: &self.images[a.image as usize],
                    category_id: self.categories[a.category as usize].id,
                    bbox: a.bbox,
                    area: a.area,
                    iscrowd: a.iscrowd as u8,
                    difficult: a.difficult as u8,
                })
                .collect(),
            categories: self.categories.iter().map(|c| Cat { id: c.id, name: &c.name }).collect(),
        };
        serde_json::to_string(&f).expect("plain data serializes")
    }

    /// Detections as a COCO results file (what [`parse_detections`] reads back).
    pub fn detections_to_json(&self, dets: &[Detection]) -> String {
        #[derive(Serialize)]
        struct Det<'a> {
            image_id: &'a ImageId,
            category_id: i64,
            bbox: [f64; 4],
            score: f64,
        }
        let v: Vec<Det> = dets
            .iter()
            .map(|d| Det { image_id: &self.images[d.image as usize], category_id: self.categories[d.category as usize].id, bbox: d.bbox, score: d.score })
            .collect();
        serde_json::to_string(&v).expect("plain data serializes")
    }
}

// ----- parsing -------------------------------------------------------------------------------

thread_local! {
    /// The array element being parsed (its kind and index), for error messages.
    static AT: Cell<Option<(&'static str, usize)>> = const { Cell::new(None) };
}

/// Names the elements of a tracked array in error messages.
trait Section {
    const NAME: &'static str;
}
struct Images;
impl Section for Images {
    const NAME: &'static str = "image";
}
struct Annotations;
impl Section for Annotations {
    const NAME: &'static str = "annotation";
}
struct Categories;
impl Section for Categories {
    const NAME: &'static str = "category";
}
struct Detections;
impl Section for Detections {
    const NAME: &'static str = "detection";
}

/// A JSON array whose elements are numbered in error messages.
struct Tracked<S, T>(Vec<T>, PhantomData<S>);

impl<S, T> Default for Tracked<S, T> {
    fn default() -> Self {
        Tracked(Vec::new(), PhantomData)
    }
}

impl<'de, S: Section, T: Deserialize<'de>> Deserialize<'de> for Tracked<S, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<S, T>(PhantomData<(S, T)>);
        impl<'de, S: Section, T: Deserialize<'de>> Visitor<'de> for V<S, T> {
            type Value = Tracked<S, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of {} objects", S::NAME)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                loop {
                    AT.with(|c| c.set(Some((S::NAME, v.len()))));
                    match seq.next_element()? {
                        Some(x) => v.push(x),
                        None => break,
                    }
                }
                AT.with(|c| c.set(None));
                Ok(Tracked(v, PhantomData))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// An integer id; integral floats (`3.0`) are accepted, as Python's dictionaries treat 3.0 and 3
/// as one key.
struct IntId(i64);

fn float_to_int<E: de::Error>(v: f64) -> std::result::Result<i64, E> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Ok(v as i64)
    } else {
        Err(E::invalid_value(de::Unexpected::Float(v), &"an integer"))
    }
}

impl<'de> Deserialize<'de> for IntId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<IntId, E> {
                Ok(IntId(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<IntId, E> {
                i64::try_from(v).map(IntId).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an integer below 2^63"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<IntId, E> {
                float_to_int(v).map(IntId)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ImageId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ImageId, E> {
                Ok(ImageId::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ImageId, E> {
                i64::try_from(v).map(ImageId::Int).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an integer below 2^63"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<ImageId, E> {
                float_to_int(v).map(ImageId::Int)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ImageId, E> {
                Ok(ImageId::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<ImageId, E> {
                Ok(ImageId::Str(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `iscrowd` / `difficult`: 0/1 (any integer, non-zero is true, as pycocotools' `int(...)`) or
/// true/false.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("0, 1, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Flag, E> {
                Ok(Flag(v != 0))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Flag, E> {
                Ok(Flag(v != 0))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Flag, E> {
                float_to_int(v).map(|i| Flag(i != 0))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Flag, E> {
                Ok(Flag(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(serde::Deserialize)]
struct JsonImage {
    id: ImageId,
}

#[derive(serde::Deserialize)]
struct JsonCategory {
    id: IntId,
    #[serde(default)]
    name: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(expecting = "an annotation object")]
struct JsonAnnotation {
    id: IntId,
    image_id: ImageId,
    category_id: IntId,
    bbox: [f64; 4],
    #[serde(default)]
    area: Option<f64>,
    #[serde(default)]
    iscrowd: Option<Flag>,
    #[serde(default)]
    difficult: Option<Flag>,
}

#[derive(serde::Deserialize)]
#[serde(expecting = "a COCO annotation object with images, annotations and categories")]
struct JsonGt {
    images: Tracked<Images, JsonImage>,
    #[serde(default)]
    annotations: Tracked<Annotations, JsonAnnotation>,
    categories: Tracked<Categories, JsonCategory>,
}

#[derive(serde::Deserialize)]
#[serde(expecting = "a detection object")]
struct JsonDet {
    image_id: ImageId,
    category_id: IntId,
    bbox: [f64; 4],
    score: f64,
}

/// An annotation before checking (see [`GroundTruth::new`]).
#[derive(Clone, Debug)]
pub struct RawAnnotation {
    /// Annotation id.
    pub id: i64,
    /// Image id.
    pub image_id: ImageId,
    /// Category id.
    pub category_id: i64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// `area`, if given.
    pub area: Option<f64>,
    /// `iscrowd`.
    pub iscrowd: bool,
    /// `difficult`.
    pub difficult: bool,
}

/// A detection before checking (see [`GroundTruth::detections`]).
#[derive(Clone, Debug)]
pub struct RawDetection {
    /// Image id.
    pub image_id: ImageId,
    /// Category id.
    pub category_id: i64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Confidence.
    pub score: f64,
}

/// Parses JSON, prefixing serde's message (which carries line and column) with the object that
/// was being read.
fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], file: &str) -> Result<T> {
    AT.with(|c| c.set(None));
    serde_json::from_slice(bytes).map_err(|e| {
        let at = AT.with(|c| c.take());
        match at {
            Some((what, i)) => bad(file, format!("{what} {i}: {e}")),
            None if e.is_syntax() || e.is_eof() => bad(file, format!("invalid JSON: {e}")),
            None => bad(file, e),
        }
    })
}

/// Parses a COCO ground-truth file's contents; `file` names it in error messages.
pub fn parse_ground_truth(bytes: &[u8], file: &str) -> Result<GroundTruth> {
    let raw: JsonGt = parse_json(bytes, file)?;
    let images = raw.images.0.into_iter().map(|i| i.id).collect();
    let categories = raw.categories.0.into_iter().map(|c| Category { id: c.id.0, name: c.name }).collect();
    let annotations = raw
        .annotations
        .0
        .into_iter()
        .map(|a| RawAnnotation {
            id: a.id.0,
            image_id: a.image_id,
            category_id: a.category_id.0,
            bbox: a.bbox,
            area: a.area,
            iscrowd: a.iscrowd.is_some_and(|f| f.0),
            difficult: a.difficult.is_some_and(|f| f.0),
        })
        .collect();
    GroundTruth::new(file, images, categories, annotations)
}

/// Parses a COCO results file's contents against `gt`; `file` names it in error messages.
pub fn parse_detections(bytes: &[u8], file: &str, gt: &GroundTruth) -> Result<Vec<Detection>> {
    let raw: Tracked<Detections, JsonDet> = parse_json(bytes, file)?;
    let raw = raw.0.into_iter().map(|d| RawDetection { image_id: d.image_id, category_id: d.category_id.0, bbox: d.bbox, score: d.score }).collect();
    gt.detections(file, raw)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| EvalError::Read { path: path.display().to_string(), source })
}

/// Reads a COCO ground-truth file.
pub fn read_ground_truth(path: &Path) -> Result<GroundTruth> {
    parse_ground_truth(&read(path)?, &path.display().to_string())
}

/// Reads a COCO results file against `gt`.
pub fn read_detections(path: &Path, gt: &GroundTruth) -> Result<Vec<Detection>> {
    parse_detections(&read(path)?, &path.display().to_string(), gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: &str = r#"{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 1, 1]]},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 20.5, "iscrowd": 1, "difficult": true}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7}]}"#;

    fn gt_err(text: &str) -> String {
        parse_ground_truth(text.as_bytes(), "gt.json").unwrap_err().to_string()
    }

    fn dt_err(text: &str) -> String {
        let gt = parse_ground_truth(GT.as_bytes(), "gt.json").unwrap();
        parse_detections(text.as_bytes(), "dt.json", &gt).unwrap_err().to_string()
    }

    #[test]
    fn reads_fields_and_defaults() {
        let gt = parse_ground_truth(GT.as_bytes(), "gt.json").unwrap();
        assert_eq!(gt.images, vec![ImageId::Int(1), ImageId::Int(2)]);
        assert_eq!(gt.categories[0].name.as_deref(), Some("cat"));
        let a = &gt.annotations;
        assert_eq!((a[0].area, a[0].iscrowd, a[0].difficult), (100.0, false, false));
        assert_eq!((a[1].area, a[1].iscrowd, a[1].difficult), (20.5, true, true));
        let d = parse_detections(br#"[{"image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4], "score": -0.0, "id": 5}]"#, "dt.json", &gt).unwrap();
        assert_eq!(d[0], Detection { image: 1, category: 1, bbox: [1., 2., 3., 4.], score: 0.0 });
        assert!(d[0].score.is_sign_positive());
        assert!(parse_detections(b"[]", "dt.json", &gt).unwrap().is_empty());
        // Round trip through the writers.
        let again = parse_ground_truth(gt.to_json().as_bytes(), "x").unwrap();
        assert_eq!(again.annotations, gt.annotations);
        assert_eq!(parse_detections(gt.detections_to_json(&d).as_bytes(), "x", &gt).unwrap(), d);
    }

    #[test]
    fn string_image_ids() {
        let gt = parse_ground_truth(br#"{"images": [{"id": "b"}, {"id": "a"}], "annotations": [], "categories": [{"id": 1}]}"#, "gt.json").unwrap();
        assert_eq!(gt.image_index(&ImageId::Str("a".into())), Some(1));
        let e = parse_detections(br#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]"#, "dt.json", &gt).unwrap_err().to_string();
        assert_eq!(e, "dt.json: detection 0: image_id 1 is not in the ground truth's images");
        let e = gt_err(r#"{"images": [{"id": "b"}, {"id": 2}], "annotations": [], "categories": []}"#);
        assert!(e.contains("image 1: id 2 is not of the same kind as image 0's id \"b\""), "{e}");
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = gt_err("{\"images\": [\n{\"id\": 1},\n{\"id\": 2,}\n]}");
        assert!(e.starts_with("gt.json: image 1: "), "{e}");
        assert!(e.contains("line 3 column"), "{e}");
        let e = gt_err("[1, 2]");
        assert!(e.starts_with("gt.json: invalid type: integer `1`"), "{e}");
        let e = gt_err("");
        assert!(e.starts_with("gt.json: invalid JSON: EOF while parsing"), "{e}");
        let e = dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]"#);
        assert!(e.starts_with("dt.json: detection 1: missing field `score` at line 1 column"), "{e}");
        let e = dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}]"#);
        assert!(e.contains("detection 0: invalid length 3, expected an array of length 4"), "{e}");
        let e = dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, NaN], "score": 0.5}]"#);
        assert!(e.starts_with("dt.json: detection 0: expected value at line 1 column"), "{e}");
        let e = dt_err(r#"{"image_id": 1}"#);
        assert!(e.contains("expected an array of detection objects"), "{e}");
        let e = dt_err(r#"[{"image_id": 1.5, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]"#);
        assert!(e.contains("detection 0: invalid value: floating point `1.5`, expected an integer"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_object() {
        assert_eq!(
            dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]"#),
            "dt.json: detection 1: image_id 99 is not in the ground truth's images"
        );
        assert_eq!(
            dt_err(r#"[{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}]"#),
            "dt.json: detection 0: category_id 0 is not in the ground truth's categories"
        );
        assert_eq!(dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, -1, 1], "score": 0.5}]"#), "dt.json: detection 0: bbox width -1 is negative");
        assert!(dt_err(r#"[{"image_id": 1, "category_id": 3, "bbox": [1e308, 0, 1e308, 1], "score": 0.5}]"#).contains("too large"));
        let ok_ann = r#"{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}"#;
        let gt = |anns: &str, imgs: &str, cats: &str| gt_err(&format!(r#"{{"images": [{imgs}], "annotations": [{anns}], "categories": [{cats}]}}"#));
        assert_eq!(gt(r#"{"id": 5, "image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1]}"#, r#"{"id": 1}"#, r#"{"id": 3}"#), "gt.json: annotation 0 (id 5): image_id 9 is not in `images`");
        assert_eq!(gt(r#"{"id": 5, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}"#, r#"{"id": 1}"#, r#"{"id": 3}"#), "gt.json: annotation 0 (id 5): category_id 4 is not in `categories`");
        assert!(gt(&format!("{ok_ann}, {ok_ann}"), r#"{"id": 1}"#, r#"{"id": 3}"#).contains("annotation 1: duplicate annotation id 1 (also annotation 0)"));
        assert!(gt(r#"{"id": 0, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}"#, r#"{"id": 1}"#, r#"{"id": 3}"#).contains("annotation 0: annotation id 0 is not allowed"));
        assert!(gt(ok_ann, r#"{"id": 1}, {"id": 1}"#, r#"{"id": 3}"#).contains("image 1: duplicate image id 1 (also image 0)"));
        assert!(gt(ok_ann, r#"{"id": 1}"#, r#"{"id": 3}, {"id": 3}"#).contains("category 1: duplicate category id 3"));
        assert!(gt(r#"{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "area": -2}"#, r#"{"id": 1}"#, r#"{"id": 3}"#).contains("area -2 must be a finite number >= 0"));
        assert!(gt(r#"{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, -1]}"#, r#"{"id": 1}"#, r#"{"id": 3}"#).contains("annotation 0 (id 1): bbox height -1 is negative"));
        let e = gt_err(r#"{"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": "yes"}], "categories": [{"id": 3}]}"#);
        assert!(e.starts_with("gt.json: annotation 0: invalid type: string \"yes\", expected 0, 1, true or false at line 1"), "{e}");
    }
}
