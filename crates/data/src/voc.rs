//! PASCAL VOC reader and writer (VOCdevkit layout).
//!
//! `VOC<year>/ImageSets/Main/<set>.txt` lists image ids; `VOC<year>/Annotations/<id>.xml` holds
//! the objects; `VOC<year>/JPEGImages/<filename>` the image (the XML's `<filename>`, else
//! `<id>.jpg`, `.png`, `.jpeg`). VOC coordinates are 1-based inclusive pixel indices; q2 turns
//! them into 0-based half-open boxes `[xmin − 1, ymin − 1, xmax, ymax]` (YOLOv5's `VOC.yaml`
//! conversion uses `[xmin − 1, ymin − 1, xmax − 1, ymax − 1]`, one pixel narrower; see
//! paper/DEVIATIONS.md). The `difficult` flag is kept; `<part>` boxes inside an object are
//! ignored. A missing or zero `<size>` falls back to the image header.

use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use rayon::prelude::*;

use crate::config::{finish, Pending, PendingObject, ScanOptions};
use crate::error::{line_of, DataError, Issue, IssueKind, Result};
use crate::sample::Dataset;

/// Reads one image set of one VOC year folder (`dir` = `VOCdevkit/VOC2007`, `set` = `trainval`).
pub fn read(dir: &Path, set: &str, names: &[String], opts: &ScanOptions) -> Result<Dataset> {
    let list = dir.join("ImageSets").join("Main").join(format!("{set}.txt"));
    let text = std::fs::read_to_string(&list).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { IssueKind::MissingFile } else { IssueKind::Malformed };
        DataError::Invalid(Issue::new(&list, kind, format!("cannot read the image set: {e}")))
    })?;
    let ids: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    if ids.is_empty() {
        return Err(DataError::Empty(format!("{}: the image set lists no images", list.display())));
    }
    let pending: Vec<std::result::Result<Pending, Issue>> = ids.par_iter().map(|id| parse_one(dir, id, names)).collect();
    let what = format!("{}/{set}", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    finish(pending, names.to_vec(), &what, opts)
}

fn parse_one(dir: &Path, id: &str, names: &[String]) -> std::result::Result<Pending, Issue> {
    let xml_path = dir.join("Annotations").join(format!("{id}.xml"));
    let bytes = std::fs::read(&xml_path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { IssueKind::MissingFile } else { IssueKind::Malformed };
        Issue::new(&xml_path, kind, format!("cannot read: {e}"))
    })?;
    let parsed = parse_xml(&bytes, &xml_path, names)?;
    let images = dir.join("JPEGImages");
    let image = parsed
        .filename
        .as_ref()
        .map(|f| images.join(f))
        .filter(|p| p.is_file())
        .or_else(|| ["jpg", "png", "jpeg", "JPG", "PNG"].iter().map(|e| images.join(format!("{id}.{e}"))).find(|p| p.is_file()))
        .unwrap_or_else(|| images.join(format!("{id}.jpg")));
    Ok(Pending { id: id.to_string(), image, size: parsed.size, ann_file: xml_path, objects: parsed.objects, issues: parsed.issues })
}

/// What one annotation file says.
#[derive(Debug, Default)]
pub(crate) struct ParsedXml {
    pub filename: Option<String>,
    pub size: Option<(u32, u32)>,
    pub objects: Vec<PendingObject>,
    /// Object-level problems (the object is dropped).
    pub issues: Vec<Issue>,
}

#[derive(Default)]
struct ObjState {
    line: usize,
    name: Option<String>,
    difficult: bool,
    coords: [Option<f32>; 4],
    problem: Option<Issue>,
}

/// Parses one VOC annotation. File-level problems (not XML, not `<annotation>`) are the error;
/// object-level ones go to `issues`.
pub(crate) fn parse_xml(bytes: &[u8], path: &Path, names: &[String]) -> std::result::Result<ParsedXml, Issue> {
    let malformed = |pos: usize, msg: String| Issue::new(path, IssueKind::Malformed, msg).at_line(line_of(bytes, pos));
    let text = std::str::from_utf8(bytes).map_err(|e| malformed(e.valid_up_to(), format!("not UTF-8: {e}")))?;
    let mut r = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut out = ParsedXml::default();
    let (mut width, mut height) = (None::<u32>, None::<u32>);
    let mut obj: Option<ObjState> = None;
    let mut n_obj = 0usize;
    loop {
        let pos = r.buffer_position() as usize;
        let ev = r.read_event().map_err(|e| malformed(r.error_position() as usize, format!("malformed XML: {e}")))?;
        let (start, end) = match &ev {
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() && name != "annotation" {
                    return Err(malformed(pos, format!("root element is <{name}>, expected <annotation>")));
                }
                stack.push(name);
                buf.clear();
                (true, matches!(ev, Event::Empty(_)))
            }
            Event::End(_) => (false, true),
            Event::Text(t) => {
                buf.push_str(&t.decode().map_err(|e| malformed(pos, format!("bad text: {e}")))?);
                (false, false)
            }
            Event::CData(t) => {
                buf.push_str(&t.decode().map_err(|e| malformed(pos, format!("bad CDATA: {e}")))?);
                (false, false)
            }
            Event::GeneralRef(g) => {
                let name = g.decode().map_err(|e| malformed(pos, format!("bad entity: {e}")))?;
                if let Ok(Some(c)) = g.resolve_char_ref() {
                    buf.push(c);
                } else if let Some(s) = quick_xml::escape::resolve_xml_entity(&name) {
                    buf.push_str(s);
                } else {
                    return Err(malformed(pos, format!("unknown entity &{name};")));
                }
                (false, false)
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(malformed(bytes.len(), format!("unexpected end of file: <{open}> is not closed")));
                }
                break;
            }
            _ => (false, false),
        };
        let line = line_of(bytes, pos);
        let path_now: Vec<&str> = stack.iter().skip(1).map(|s| s.as_str()).collect();
        if start && path_now == ["object"] {
            obj = Some(ObjState { line, ..ObjState::default() });
        }
        if !end {
            continue;
        }
        let value = buf.trim().to_string();
        buf.clear();
        let idx = n_obj;
        match path_now.as_slice() {
            ["filename"] if !value.is_empty() => out.filename = Some(value.clone()),
            ["size", "width"] => width = parse_size(&value),
            ["size", "height"] => height = parse_size(&value),
            ["object", "name"] => {
                if let Some(o) = obj.as_mut() {
                    o.name = Some(value.clone());
                }
            }
            ["object", "difficult"] => {
                if let Some(o) = obj.as_mut() {
                    match value.parse::<f64>() {
                        Ok(v) => o.difficult = v != 0.0,
                        Err(_) => {
                            o.problem.get_or_insert(Issue::new(path, IssueKind::Malformed, format!("<difficult> is `{value}`, not a number")).at_line(line).object(idx));
                        }
                    }
                }
            }
            ["object", "bndbox", c @ ("xmin" | "ymin" | "xmax" | "ymax")] => {
                if let Some(o) = obj.as_mut() {
                    let k = ["xmin", "ymin", "xmax", "ymax"].iter().position(|n| n == c).unwrap_or(0);
                    match value.parse::<f32>() {
                        Ok(v) if v.is_finite() => o.coords[k] = Some(v),
                        _ => {
                            o.problem.get_or_insert(Issue::new(path, IssueKind::Malformed, format!("<{c}> is `{value}`, not a number")).at_line(line).object(idx));
                        }
                    }
                }
            }
            ["object"] => {
                if let Some(o) = obj.take() {
                    n_obj += 1;
                    finish_object(o, idx, path, names, &mut out);
                }
            }
            _ => {}
        }
        stack.pop();
    }
    if let (Some(w), Some(h)) = (width, height) {
        out.size = Some((w, h));
    }
    Ok(out)
}

fn parse_size(v: &str) -> Option<u32> {
    v.parse::<f64>().ok().filter(|x| *x >= 1.0 && x.fract() == 0.0 && *x < 1e6).map(|x| x as u32)
}

fn finish_object(o: ObjState, idx: usize, path: &Path, names: &[String], out: &mut ParsedXml) {
    let issue = |kind, detail: String| Issue::new(path, kind, detail).at_line(o.line).object(idx);
    if let Some(p) = o.problem {
        out.issues.push(p);
        return;
    }
    let Some(name) = o.name.as_deref() else {
        out.issues.push(issue(IssueKind::MissingField, "no <name>".into()));
        return;
    };
    let Some(class) = names.iter().position(|n| n == name) else {
        out.issues.push(issue(IssueKind::UnknownClass, format!("class `{name}` is not one of the dataset's {} names", names.len())));
        return;
    };
    let missing: Vec<&str> = ["xmin", "ymin", "xmax", "ymax"].iter().zip(o.coords).filter(|(_, c)| c.is_none()).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        out.issues.push(issue(IssueKind::MissingField, format!("`{name}`: <bndbox> lacks {}", missing.join(", "))));
        return;
    }
    let [x1, y1, x2, y2] = o.coords.map(|c| c.unwrap_or(0.0));
    out.objects.push(PendingObject {
        class,
        coords: [x1 - 1.0, y1 - 1.0, x2, y2],
        normalized: false,
        difficult: o.difficult,
        iscrowd: false,
        file: path.to_path_buf(),
        line: Some(o.line),
        index: idx,
    });
}

/// One object for [`annotation_xml`]: class name, 0-based half-open pixel box (integers), difficult.
pub struct XmlObject<'a> {
    pub name: &'a str,
    pub bbox: [u32; 4],
    pub difficult: bool,
    pub truncated: bool,
}

/// A VOC annotation file for one image (the inverse of the reader's conversion: 1-based
/// inclusive `xmin = x1 + 1, xmax = x2`).
pub fn annotation_xml(folder: &str, filename: &str, width: u32, height: u32, objects: &[XmlObject<'_>]) -> String {
    use quick_xml::escape::escape;
    let mut s = format!(
        "<annotation>\n\t<folder>{}</folder>\n\t<filename>{}</filename>\n\t<source>\n\t\t<database>q2 synthetic</database>\n\t</source>\n\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n",
        escape(folder),
        escape(filename)
    );
    for o in objects {
        let [x1, y1, x2, y2] = o.bbox;
        s += &format!(
            "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{}</truncated>\n\t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{}</xmin>\n\t\t\t<ymin>{}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n",
            escape(o.name),
            o.truncated as u8,
            o.difficult as u8,
            x1 + 1,
            y1 + 1,
        );
    }
    s + "</annotation>\n"
}

/// Where a VOC year folder keeps an image set list.
pub fn image_set_path(year_dir: &Path, set: &str) -> PathBuf {
    year_dir.join("ImageSets").join("Main").join(format!("{set}.txt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        crate::config::VOC_NAMES.iter().map(|s| s.to_string()).collect()
    }

    const GOOD: &str = r#"<annotation>
  <folder>VOC2007</folder>
  <filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object>
    <name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
  </object>
  <object>
    <name>person</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox>
    <part><name>head</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></part>
  </object>
</annotation>
"#;

    #[test]
    fn parses_objects_difficult_and_ignores_parts() {
        let p = parse_xml(GOOD.as_bytes(), Path::new("a.xml"), &names()).unwrap();
        assert_eq!(p.filename.as_deref(), Some("000005.jpg"));
        assert_eq!(p.size, Some((500, 375)));
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[0].class, 8);
        assert_eq!(p.objects[0].coords, [262.0, 210.0, 324.0, 339.0]);
        assert_eq!(p.objects[0].line, Some(5));
        assert!(!p.objects[0].difficult);
        assert_eq!(p.objects[1].class, 14);
        assert!(p.objects[1].difficult);
        assert_eq!(p.objects[1].coords, [0.0, 0.0, 10.0, 20.0]);
        assert!(p.issues.is_empty());
    }

    #[test]
    fn malformed_xml_names_the_line() {
        let bad = GOOD.replace("</ymax></bndbox>\n  </object>\n  <object>", "</ymax></bndbx>\n  </object>\n  <object>");
        let e = parse_xml(bad.as_bytes(), Path::new("a.xml"), &names()).unwrap_err();
        assert_eq!(e.kind, IssueKind::Malformed);
        assert_eq!(e.line, Some(7), "{e}");
        let cut = &GOOD[..GOOD.len() - 20];
        let e = parse_xml(cut.as_bytes(), Path::new("a.xml"), &names()).unwrap_err();
        assert_eq!(e.kind, IssueKind::Malformed, "{e}");
        let e = parse_xml(b"<html></html>", Path::new("a.xml"), &names()).unwrap_err();
        assert!(e.detail.contains("expected <annotation>"), "{e}");
    }

    #[test]
    fn object_problems_are_object_level() {
        let x = GOOD.replace("<name>chair</name>", "<name>sofa-bed</name>").replace("<xmax>10</xmax>", "<xmax>ten</xmax>");
        let p = parse_xml(x.as_bytes(), Path::new("a.xml"), &names()).unwrap();
        assert!(p.objects.is_empty());
        assert_eq!(p.issues.len(), 2);
        assert_eq!((p.issues[0].kind, p.issues[0].object, p.issues[0].line), (IssueKind::UnknownClass, Some(0), Some(5)));
        assert!(p.issues[0].detail.contains("sofa-bed"));
        assert_eq!((p.issues[1].kind, p.issues[1].object), (IssueKind::Malformed, Some(1)));
        let x = GOOD.replace("<ymin>211</ymin>", "");
        let p = parse_xml(x.as_bytes(), Path::new("a.xml"), &names()).unwrap();
        assert_eq!(p.issues[0].kind, IssueKind::MissingField);
        assert!(p.issues[0].detail.contains("ymin"));
    }

    #[test]
    fn writer_round_trips() {
        let objs = [XmlObject { name: "dog", bbox: [0, 5, 17, 30], difficult: true, truncated: false }];
        let xml = annotation_xml("VOCsynth", "a&b.jpg", 64, 48, &objs);
        let p = parse_xml(xml.as_bytes(), Path::new("a.xml"), &names()).unwrap();
        assert_eq!(p.filename.as_deref(), Some("a&b.jpg"));
        assert_eq!(p.size, Some((64, 48)));
        assert_eq!(p.objects[0].coords, [0.0, 5.0, 17.0, 30.0]);
        assert!(p.objects[0].difficult);
    }
}
