//! Images as plain RGB u8 buffers (HWC), decoding (JPEG with zune-jpeg, PNG with png), a cheap
//! validity probe for dataset scanning, encoding (PNG, JPEG), and the two resizes the
//! ultralytics pipeline uses: bilinear (`cv2.INTER_LINEAR`, half-pixel centres, replicated edge)
//! and area averaging (`cv2.INTER_AREA`, for shrinking).

use std::cell::RefCell;
use std::io::Cursor;
use std::path::Path;

use crate::error::{Issue, IssueKind};

/// An RGB image, rows top to bottom, 3 bytes per pixel.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}×{})", self.width, self.height)
    }
}

thread_local! {
    /// Each thread's spare pixel buffers: the loader's large per-sample images are recycled
    /// instead of being freed and page-faulted in again.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len` bytes, reusing one of this thread's recycled buffers if one is large enough.
pub fn take_buffer(len: usize) -> Vec<u8> {
    let reused = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // Best fit, so large buffers stay for large requests.
        let i = p.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity())?.0;
        Some(p.swap_remove(i))
    });
    match reused {
        Some(mut v) => {
            v.clear();
            v.resize(len, 0);
            v
        }
        None => vec![0u8; len],
    }
}

/// Hands an image's buffer back to this thread's pool (at most 12 are kept; when full, the
/// smallest one goes).
pub fn recycle(img: RgbImage) {
    if img.data.capacity() < 1 << 16 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.push(img.data);
        if p.len() > 12 {
            if let Some(i) = p.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i) {
                p.swap_remove(i);
            }
        }
    });
}

impl RgbImage {
    /// An image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        let mut data = take_buffer(width * height * 3);
        if rgb[0] == rgb[1] && rgb[1] == rgb[2] {
            data.fill(rgb[0]);
        } else {
            for px in data.chunks_exact_mut(3) {
                px.copy_from_slice(&rgb);
            }
        }
        Self { width, height, data }
    }
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.width * 3..(y + 1) * self.width * 3]
    }
    pub fn row_mut(&mut self, y: usize) -> &mut [u8] {
        let w = self.width;
        &mut self.data[y * w * 3..(y + 1) * w * 3]
    }
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
    pub fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// Image container formats q2 reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

/// Recognises the format from the first bytes (not the extension).
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else {
        None
    }
}

/// Image file extensions the YOLO reader picks up (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

fn corrupt(path: &Path, msg: impl std::fmt::Display) -> Issue {
    Issue::new(path, IssueKind::CorruptImage, msg.to_string())
}

/// Reads a file; a missing file is an [`IssueKind::MissingFile`] issue.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Issue> {
    std::fs::read(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound { IssueKind::MissingFile } else { IssueKind::CorruptImage };
        Issue::new(path, kind, format!("cannot read: {e}"))
    })
}

/// Decodes a JPEG or PNG file to RGB (the file is read into a per-thread reused buffer).
pub fn decode_file(path: &Path) -> Result<RgbImage, Issue> {
    thread_local! {
        static BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BYTES.with(|b| {
        let mut bytes = b.borrow_mut();
        bytes.clear();
        let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes));
        if let Err(e) = read {
            let kind = if e.kind() == std::io::ErrorKind::NotFound { IssueKind::MissingFile } else { IssueKind::CorruptImage };
            return Err(Issue::new(path, kind, format!("cannot read: {e}")));
        }
        let out = decode(&bytes, path);
        if bytes.capacity() > 1 << 24 {
            *bytes = Vec::new(); // do not keep a huge file's buffer around
        }
        out
    })
}

/// Decodes JPEG or PNG bytes to RGB; `path` only names the image in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage, Issue> {
    match sniff(bytes) {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, path),
        Some(ImageFormat::Png) => decode_png(bytes, path),
        None => Err(corrupt(path, "not a JPEG or PNG file")),
    }
}

fn jpeg_options() -> zune_core::options::DecoderOptions {
    zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
        .set_strict_mode(true)
}

fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<RgbImage, Issue> {
    let mut d = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), jpeg_options());
    d.decode_headers().map_err(|e| corrupt(path, format!("JPEG: {e:?}")))?;
    let (w, h) = d.dimensions().ok_or_else(|| corrupt(path, "JPEG: no frame header"))?;
    let mut data = take_buffer(w * h * 3);
    d.decode_into(&mut data).map_err(|e| corrupt(path, format!("JPEG: {e:?}")))?;
    Ok(RgbImage { width: w, height: h, data })
}

fn decode_png(bytes: &[u8], path: &Path) -> Result<RgbImage, Issue> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| corrupt(path, format!("PNG: {e}")))?;
    let size = reader.output_buffer_size().ok_or_else(|| corrupt(path, "PNG: image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| corrupt(path, format!("PNG: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    buf.truncate(info.buffer_size());
    let data = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(corrupt(path, "PNG: palette was not expanded")),
    };
    if data.len() != w * h * 3 {
        return Err(corrupt(path, format!("PNG: {} bytes for a {w}×{h} RGB image", data.len())));
    }
    Ok(RgbImage { width: w, height: h, data })
}

/// Width and height from the file's header, after checking the file is complete: a JPEG must end
/// with the EOI marker and a PNG with the IEND chunk, as ultralytics' scan checks; a file that
/// does not is decoded in full and rejected if that fails. Reading the header does not decode
/// pixels, so this is cheap enough to run over a whole dataset.
pub fn probe(bytes: &[u8], path: &Path) -> Result<(u32, u32), Issue> {
    let (w, h, complete) = match sniff(bytes) {
        Some(ImageFormat::Jpeg) => {
            let mut d = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), jpeg_options());
            d.decode_headers().map_err(|e| corrupt(path, format!("JPEG: {e:?}")))?;
            let (w, h) = d.dimensions().ok_or_else(|| corrupt(path, "JPEG: no frame header"))?;
            let end = trim_trailing_zeros(bytes);
            (w as u32, h as u32, end.ends_with(&[0xFF, 0xD9]))
        }
        Some(ImageFormat::Png) => {
            let dec = png::Decoder::new(Cursor::new(bytes));
            let reader = dec.read_info().map_err(|e| corrupt(path, format!("PNG: {e}")))?;
            let info = reader.info();
            (info.width, info.height, bytes.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]))
        }
        None => return Err(corrupt(path, "not a JPEG or PNG file")),
    };
    if w < 2 || h < 2 {
        return Err(corrupt(path, format!("image is {w}×{h} pixels")));
    }
    if !complete {
        let img = decode(bytes, path).map_err(|e| Issue { detail: format!("{} (the file is truncated)", e.detail), ..e })?;
        if (img.width as u32, img.height as u32) != (w, h) {
            return Err(corrupt(path, "header and data disagree on the size"));
        }
    }
    Ok((w, h))
}

fn trim_trailing_zeros(b: &[u8]) -> &[u8] {
    let mut n = b.len();
    while n > 0 && (b[n - 1] == 0 || b[n - 1] == b'\n' || b[n - 1] == b'\r') {
        n -= 1;
    }
    &b[..n]
}

/// Probes a file (see [`probe`]).
pub fn probe_file(path: &Path) -> Result<(u32, u32), Issue> {
    let bytes = read_file(path)?;
    probe(&bytes, path)
}

/// PNG bytes of `img` (fast deflate).
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    encode_png_with(img, png::Compression::Fast)
}

/// PNG bytes of `img`, smallest deflate (figures).
pub fn encode_png_small(img: &RgbImage) -> Vec<u8> {
    encode_png_with(img, png::Compression::High)
}

fn encode_png_with(img: &RgbImage, level: png::Compression) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.data.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(level);
        // Writing to a Vec cannot fail for a well-sized buffer.
        let mut w = enc.write_header().expect("PNG header to memory");
        w.write_image_data(&img.data).expect("PNG data to memory");
    }
    out
}

/// JPEG bytes of `img` at `quality` (1..=100), 4:2:0 chroma subsampling like libjpeg's default.
/// Images wider or taller than 65535 pixels are not representable in JPEG.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.data.len() / 8);
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.encode(&img.data, img.width as u16, img.height as u16, jpeg_encoder::ColorType::Rgb).expect("JPEG to memory");
    out
}

/// Bilinear resize with OpenCV `INTER_LINEAR` semantics: source coordinate
/// `(x + 0.5)·(sw/dw) − 0.5`, clamped to the image (edge pixels replicated), 11-bit weights.
pub fn resize_linear(src: &RgbImage, dw: usize, dh: usize) -> RgbImage {
    if dw == src.width && dh == src.height {
        return src.clone();
    }
    const BITS: u32 = 11;
    const ONE: i32 = 1 << BITS;
    let coeffs = |dn: usize, sn: usize| -> Vec<(usize, i32)> {
        let scale = sn as f64 / dn as f64;
        (0..dn)
            .map(|d| {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let mut s = f.floor() as isize;
                let mut a = f - s as f64;
                if s < 0 {
                    s = 0;
                    a = 0.0;
                }
                if s as usize >= sn - 1 {
                    s = sn as isize - 1;
                    a = 0.0;
                }
                (s as usize, (a * ONE as f64).round() as i32)
            })
            .collect()
    };
    let xs = coeffs(dw, src.width);
    let ys = coeffs(dh, src.height);
    let sw = src.width;
    let hrow = |y: usize, out: &mut Vec<i32>| {
        out.clear();
        let row = src.row(y);
        for &(x0, a) in &xs {
            let x1 = (x0 + 1).min(sw - 1);
            for c in 0..3 {
                let p0 = row[x0 * 3 + c] as i32;
                let p1 = row[x1 * 3 + c] as i32;
                out.push(p0 * (ONE - a) + p1 * a);
            }
        }
    };
    let mut out = RgbImage { width: dw, height: dh, data: vec![0; dw * dh * 3] };
    let (mut r0, mut r1) = (Vec::with_capacity(dw * 3), Vec::with_capacity(dw * 3));
    let mut cached: Option<(usize, usize)> = None;
    for (dy, &(y0, b)) in ys.iter().enumerate() {
        let y1 = (y0 + 1).min(src.height - 1);
        match cached {
            Some((c0, c1)) if c0 == y0 && c1 == y1 => {}
            Some((_, c1)) if c1 == y0 => {
                std::mem::swap(&mut r0, &mut r1);
                hrow(y1, &mut r1);
            }
            _ => {
                hrow(y0, &mut r0);
                hrow(y1, &mut r1);
            }
        }
        cached = Some((y0, y1));
        let dst = out.row_mut(dy);
        let round = 1i64 << (2 * BITS - 1);
        for i in 0..dw * 3 {
            let v = (r0[i] as i64 * (ONE - b) as i64 + r1[i] as i64 * b as i64 + round) >> (2 * BITS);
            dst[i] = v.clamp(0, 255) as u8;
        }
    }
    out
}

/// Area-average resize for shrinking (OpenCV `INTER_AREA` when both factors are ≥ 1): each
/// destination pixel is the mean of the source area it covers, partial pixels weighted by their
/// overlap. For enlarging it falls back to [`resize_linear`].
pub fn resize_area(src: &RgbImage, dw: usize, dh: usize) -> RgbImage {
    if dw > src.width || dh > src.height {
        return resize_linear(src, dw, dh);
    }
    if dw == src.width && dh == src.height {
        return src.clone();
    }
    let taps = |dn: usize, sn: usize| -> Vec<Vec<(usize, f32)>> {
        let scale = sn as f64 / dn as f64;
        (0..dn)
            .map(|d| {
                let (a, b) = (d as f64 * scale, (d as f64 + 1.0) * scale);
                let mut v = Vec::new();
                let mut s = a.floor() as usize;
                while (s as f64) < b && s < sn {
                    let lo = a.max(s as f64);
                    let hi = b.min(s as f64 + 1.0);
                    if hi > lo {
                        v.push((s, ((hi - lo) / scale) as f32));
                    }
                    s += 1;
                }
                v
            })
            .collect()
    };
    let xt = taps(dw, src.width);
    let yt = taps(dh, src.height);
    // Horizontal pass over every source row, then vertical.
    let mut h = vec![0f32; src.height * dw * 3];
    for y in 0..src.height {
        let row = src.row(y);
        let hr = &mut h[y * dw * 3..(y + 1) * dw * 3];
        for (dx, t) in xt.iter().enumerate() {
            let mut acc = [0f32; 3];
            for &(s, w) in t {
                for c in 0..3 {
                    acc[c] += row[s * 3 + c] as f32 * w;
                }
            }
            hr[dx * 3..dx * 3 + 3].copy_from_slice(&acc);
        }
    }
    let mut out = RgbImage { width: dw, height: dh, data: vec![0; dw * dh * 3] };
    for (dy, t) in yt.iter().enumerate() {
        let dst = out.row_mut(dy);
        let mut acc = vec![0f32; dw * 3];
        for &(s, w) in t {
            for (a, v) in acc.iter_mut().zip(&h[s * dw * 3..(s + 1) * dw * 3]) {
                *a += v * w;
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::filled(w, h, [0, 0, 0]);
        for y in 0..h {
            for x in 0..w {
                img.put(x, y, [(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 77]);
            }
        }
        img
    }

    #[test]
    fn png_round_trip_is_lossless() {
        let img = gradient(37, 21);
        let bytes = encode_png(&img);
        assert_eq!(decode(&bytes, Path::new("x.png")).unwrap(), img);
        assert_eq!(probe(&bytes, Path::new("x.png")).unwrap(), (37, 21));
    }

    #[test]
    fn jpeg_round_trip_is_close() {
        let img = gradient(64, 48);
        let bytes = encode_jpeg(&img, 95);
        let back = decode(&bytes, Path::new("x.jpg")).unwrap();
        assert_eq!((back.width, back.height), (64, 48));
        let err: f64 = img.data.iter().zip(&back.data).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / img.data.len() as f64;
        assert!(err < 3.0, "mean abs error {err}");
        assert_eq!(probe(&bytes, Path::new("x.jpg")).unwrap(), (64, 48));
    }

    #[test]
    fn truncated_and_garbage_files_are_corrupt() {
        let img = gradient(64, 48);
        let p = Path::new("bad.jpg");
        let jpg = encode_jpeg(&img, 90);
        let cut = &jpg[..jpg.len() / 2];
        assert_eq!(probe(cut, p).unwrap_err().kind, IssueKind::CorruptImage);
        assert_eq!(decode(cut, p).unwrap_err().kind, IssueKind::CorruptImage);
        let png = encode_png(&img);
        let cut = &png[..png.len() / 2];
        assert_eq!(probe(cut, p).unwrap_err().kind, IssueKind::CorruptImage);
        assert_eq!(decode(b"hello world", p).unwrap_err().kind, IssueKind::CorruptImage);
        assert_eq!(read_file(Path::new("/nonexistent/q2/x.jpg")).unwrap_err().kind, IssueKind::MissingFile);
    }

    #[test]
    fn resize_linear_matches_opencv_on_simple_cases() {
        // 2× upscale of a 2-pixel row [0, 100]: OpenCV INTER_LINEAR gives [0, 25, 75, 100].
        let img = RgbImage { width: 2, height: 1, data: vec![0, 0, 0, 100, 100, 100] };
        let r = resize_linear(&img, 4, 1);
        let reds: Vec<u8> = r.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, vec![0, 25, 75, 100]);
        // A constant image stays constant.
        let c = RgbImage::filled(13, 7, [10, 200, 114]);
        assert!(resize_linear(&c, 31, 5).data.chunks(3).all(|p| p == [10, 200, 114]));
    }

    #[test]
    fn resize_area_averages_blocks() {
        let mut img = RgbImage::filled(4, 2, [0, 0, 0]);
        img.put(0, 0, [100, 0, 0]);
        img.put(1, 1, [100, 0, 0]);
        let r = resize_area(&img, 2, 1);
        assert_eq!(r.pixel(0, 0)[0], 50);
        assert_eq!(r.pixel(1, 0)[0], 0);
        let c = RgbImage::filled(10, 10, [9, 99, 199]);
        assert!(resize_area(&c, 3, 7).data.chunks(3).all(|p| p == [9, 99, 199]));
    }
}
