//! Errors of q2-data and the skip-and-report record.
//!
//! Every problem with the input is an [`Issue`]: the file, where in it (line and/or object
//! index), what kind of problem, and the details. A reader either stops at the first issue
//! ([`OnError::Fail`], the issue becomes [`DataError::Invalid`]) or drops the offending object or
//! image and records the issue in a [`SkipReport`] ([`OnError::Skip`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What a reader does when it meets bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop and return the first issue as an error.
    #[default]
    Fail,
    /// Drop the offending object (bad box, unknown class) or image (missing or corrupt file,
    /// malformed annotation file), record why, and go on.
    Skip,
}

/// The kind of an input problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IssueKind {
    /// The annotation file is not well-formed (XML/JSON/YAML syntax, a label line that does not parse).
    Malformed,
    /// A required field is missing or has the wrong type.
    MissingField,
    /// An image or annotation file named by the dataset does not exist or cannot be read.
    MissingFile,
    /// The image cannot be decoded (bad header, truncated data, unsupported format).
    CorruptImage,
    /// The annotation's image size disagrees with the image file.
    SizeMismatch,
    /// A box lies (partly) outside the image.
    BoxOutside,
    /// A box has zero (or negative) width or height.
    ZeroArea,
    /// A class name or id that the dataset does not declare.
    UnknownClass,
    /// An annotation refers to an image id the file does not declare (COCO).
    UnknownImage,
    /// The same label appears twice (YOLO txt; the copy is dropped, as ultralytics does).
    Duplicate,
}

impl IssueKind {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed annotation",
            Self::MissingField => "missing field",
            Self::MissingFile => "missing file",
            Self::CorruptImage => "corrupt image",
            Self::SizeMismatch => "image size mismatch",
            Self::BoxOutside => "box outside the image",
            Self::ZeroArea => "zero-area box",
            Self::UnknownClass => "unknown class",
            Self::UnknownImage => "unknown image id",
            Self::Duplicate => "duplicate label",
        }
    }
}

/// One problem with the input, located as precisely as the format allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// The file the problem is in (annotation file, or the image file).
    pub file: PathBuf,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// 0-based index of the object (VOC `<object>`, COCO annotation, YOLO label line) in `file`.
    pub object: Option<usize>,
    pub kind: IssueKind,
    /// What exactly is wrong (values, names).
    pub detail: String,
}

impl Issue {
    pub fn new(file: impl Into<PathBuf>, kind: IssueKind, detail: impl Into<String>) -> Self {
        Self { file: file.into(), line: None, object: None, kind, detail: detail.into() }
    }
    pub fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }
    pub fn object(mut self, index: usize) -> Self {
        self.object = Some(index);
        self
    }
    /// Whether the issue costs the whole image (it is not about one object) or only the object.
    pub fn drops_image(&self) -> bool {
        self.object.is_none()
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(o) = self.object {
            write!(f, ": object {o}")?;
        }
        write!(f, ": {}: {}", self.kind.name(), self.detail)
    }
}

/// What a reader or the loader skipped, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipReport {
    pub issues: Vec<Issue>,
    /// Images dropped entirely.
    pub images_skipped: usize,
    /// Objects dropped from images that were kept.
    pub objects_skipped: usize,
}

impl SkipReport {
    pub fn is_empty(&self) -> bool {
        self.issues.is_empty()
    }

    pub fn push(&mut self, issue: Issue) {
        if issue.drops_image() {
            self.images_skipped += 1;
        } else {
            self.objects_skipped += 1;
        }
        self.issues.push(issue);
    }

    pub fn extend(&mut self, other: SkipReport) {
        self.images_skipped += other.images_skipped;
        self.objects_skipped += other.objects_skipped;
        self.issues.extend(other.issues);
    }

    /// Number of issues per kind.
    pub fn counts(&self) -> BTreeMap<IssueKind, usize> {
        let mut m = BTreeMap::new();
        for i in &self.issues {
            *m.entry(i.kind).or_insert(0) += 1;
        }
        m
    }

    /// A few lines: totals, counts per kind, and the first `examples` issues.
    pub fn summary(&self, examples: usize) -> String {
        if self.issues.is_empty() {
            return "nothing skipped".into();
        }
        let mut s = format!("skipped {} image(s) and {} object(s):", self.images_skipped, self.objects_skipped);
        for (k, n) in self.counts() {
            s += &format!("\n  {n} × {}", k.name());
        }
        for i in self.issues.iter().take(examples) {
            s += &format!("\n  {i}");
        }
        if self.issues.len() > examples {
            s += &format!("\n  … and {} more", self.issues.len() - examples);
        }
        s
    }
}

/// Errors raised by q2-data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Bad input, located (file, line, object).
    #[error("{0}")]
    Invalid(Issue),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A configuration (hyperparameters, data description, generator or loader settings) that
    /// cannot be used. `path` is empty when it did not come from a file.
    #[error("{}{msg}", if .path.as_os_str().is_empty() { String::new() } else { format!("{}: ", .path.display()) })]
    Config { path: PathBuf, msg: String },

    /// A dataset with nothing left to load.
    #[error("{0}")]
    Empty(String),
}

impl DataError {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io { path: path.to_path_buf(), source }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Config { path: path.into(), msg: msg.into() }
    }
    /// The located issue, if this error is one.
    pub fn issue(&self) -> Option<&Issue> {
        match self {
            DataError::Invalid(i) => Some(i),
            _ => None,
        }
    }
    /// Whether the error is caused by the user's input (files, values) rather than the system.
    pub fn is_input(&self) -> bool {
        !matches!(self, DataError::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound)
    }
}

impl From<Issue> for DataError {
    fn from(i: Issue) -> Self {
        DataError::Invalid(i)
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Applies the policy to one issue: `Fail` returns it as an error, `Skip` records it.
pub(crate) fn handle(policy: OnError, report: &mut SkipReport, issue: Issue) -> Result<()> {
    match policy {
        OnError::Fail => Err(DataError::Invalid(issue)),
        OnError::Skip => {
            report.push(issue);
            Ok(())
        }
    }
}

/// 1-based line of byte offset `pos` in `text`.
pub(crate) fn line_of(text: &[u8], pos: usize) -> usize {
    1 + text[..pos.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_object() {
        let i = Issue::new("a/b.xml", IssueKind::BoxOutside, "xmax 520 > width 500").at_line(14).object(1);
        assert_eq!(i.to_string(), "a/b.xml:14: object 1: box outside the image: xmax 520 > width 500");
    }

    #[test]
    fn report_counts_images_and_objects() {
        let mut r = SkipReport::default();
        r.push(Issue::new("x.jpg", IssueKind::CorruptImage, "truncated"));
        r.push(Issue::new("y.xml", IssueKind::ZeroArea, "w 0").object(2));
        r.push(Issue::new("y.xml", IssueKind::ZeroArea, "h 0").object(3));
        assert_eq!((r.images_skipped, r.objects_skipped), (1, 2));
        assert_eq!(r.counts()[&IssueKind::ZeroArea], 2);
        let s = r.summary(1);
        assert!(s.contains("2 × zero-area box") && s.contains("… and 2 more"), "{s}");
    }

    #[test]
    fn line_numbers_are_one_based() {
        let t = b"a\nb\nc";
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 2), 2);
        assert_eq!(line_of(t, 4), 3);
    }
}
