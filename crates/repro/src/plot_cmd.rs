//! `q2 plot-imbalance`: the gradient imbalance between the two branches of each neck fusion node
//! (the paper's Fig. 1b, 3a and 3b) from the `telemetry.jsonl` of one or more training runs.
//!
//! `q2 plot-imbalance --run DIR [--run DIR ...] --out PREFIX [--smooth N] [--json]` writes
//! - `PREFIX_ratio.svg`: per fusion node, log2 of the deep/shallow gradient ratio g[0]/g[1]
//!   against the iteration, one line per run (0 = balanced);
//! - `PREFIX_energy.svg`: per node, g[0] (deep, solid) and g[1] (shallow, dashed) on a log axis;
//! - `PREFIX_magnitudes.svg`: per run, the last recorded per-channel mean |output| of node 16
//!   (or the record's second node), deep channels in full colour, shallow ones lighter;
//!
//! and prints one row per (run, node) with the mean deep/shallow ratio over the first 10% of the
//! records, the last 25% and all, and the fraction of records where the deep branch gets more
//! gradient (a Markdown table, or a JSON array with `--json`). Curves are trailing moving
//! averages over `--smooth` iterations; the statistics use the raw ratios.
//!
//! The file holds the telemetry parser ([`Telemetry`]), the run label read from `config.toml`,
//! the statistics (plain functions) and the SVG rendering (plotters' SVG backend only: no fonts
//! are needed, the viewer renders the text). Bad input exits with status 2.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cli::InputError;

/// Arguments of `q2 plot-imbalance`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// A training run folder (config.toml and telemetry.jsonl); repeat for several runs, e.g.
    /// the FP model, the QAT baseline and QAT + Q-GBFusion.
    #[arg(long = "run", value_name = "DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Output prefix: writes PREFIX_ratio.svg, PREFIX_energy.svg and PREFIX_magnitudes.svg.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Moving-average window of the curves, in iterations (1: no smoothing).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub smooth: u64,
    /// Print the statistics as one JSON array instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// One line of `telemetry.jsonl`. Gradients are `Option` because serde_json writes a NaN as null.
#[derive(Deserialize)]
struct StepLine {
    ni: u64,
    nodes: Vec<NodeLine>,
}

#[derive(Deserialize)]
struct NodeLine {
    node: u32,
    g: Vec<Option<f64>>,
    #[serde(default)]
    mag: Option<Vec<Option<f64>>>,
}

/// One fusion node's series over the recorded iterations (ascending `ni`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSeries {
    /// The node's layer index in the model (12, 16, 19, 22 for YOLOv5).
    pub node: u32,
    /// The iterations of the records.
    pub ni: Vec<u64>,
    /// g[0]: the gradient energy reaching the deep branch (NaN where the run wrote null).
    pub deep: Vec<f64>,
    /// g[1]: the gradient energy reaching the shallow branch.
    pub shallow: Vec<f64>,
    /// The last recorded channel magnitudes and their iteration (16 deep, then 16 shallow).
    pub last_mag: Option<(u64, Vec<f64>)>,
}

impl NodeSeries {
    fn new(node: u32) -> Self {
        Self { node, ni: Vec::new(), deep: Vec::new(), shallow: Vec::new(), last_mag: None }
    }

    /// `(iteration, g[0] / g[1])` for every record where both energies are finite and positive.
    pub fn ratios(&self) -> Vec<(f64, f64)> {
        self.points(|d, s| (d > 0.0 && s > 0.0 && d.is_finite() && s.is_finite()).then(|| d / s))
    }

    /// `(iteration, f(g[0], g[1]))` where `f` gives a value.
    fn points(&self, f: impl Fn(f64, f64) -> Option<f64>) -> Vec<(f64, f64)> {
        let triples = self.ni.iter().zip(&self.deep).zip(&self.shallow);
        triples.filter_map(|((&ni, &d), &s)| f(d, s).map(|v| (ni as f64, v))).collect()
    }

    /// Sorts the records by iteration (a stable sort: already sorted files stay as written).
    fn sort(&mut self) {
        let mut idx: Vec<usize> = (0..self.ni.len()).collect();
        idx.sort_by_key(|&i| self.ni[i]);
        self.ni = idx.iter().map(|&i| self.ni[i]).collect();
        self.deep = idx.iter().map(|&i| self.deep[i]).collect();
        self.shallow = idx.iter().map(|&i| self.shallow[i]).collect();
    }
}

/// A run's telemetry: the fusion nodes in the order the records list them.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub nodes: Vec<NodeSeries>,
}

impl Telemetry {
    /// Reads `path`; a missing, unreadable or empty file or a bad line is an input error.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError(format!("{}: {e} (runs write telemetry only with telemetry_every > 0, e.g. `q2 qat`)", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a `telemetry.jsonl`; `name` (the file) prefixes error messages, with
    /// the 1-based line number. Blank lines are skipped.
    pub fn parse(text: &str, name: &str) -> Result<Self> {
        let mut nodes: Vec<NodeSeries> = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |msg: String| anyhow::Error::from(InputError(format!("{name}:{}: {msg}", i + 1)));
            let step: StepLine = serde_json::from_str(line).map_err(|e| bad(format!("invalid telemetry record: {e}")))?;
            for rec in step.nodes {
                let [d, s] = rec.g[..] else {
                    return Err(bad(format!("node {}: `g` has {} entries, expected 2 (deep, shallow)", rec.node, rec.g.len())));
                };
                let series = match nodes.iter().position(|n| n.node == rec.node) {
                    Some(k) => &mut nodes[k],
                    None => {
                        nodes.push(NodeSeries::new(rec.node));
                        nodes.last_mut().expect("just pushed")
                    }
                };
                series.ni.push(step.ni);
                series.deep.push(d.unwrap_or(f64::NAN));
                series.shallow.push(s.unwrap_or(f64::NAN));
                if let Some(mag) = rec.mag.filter(|m| !m.is_empty()) {
                    if series.last_mag.as_ref().is_none_or(|(at, _)| step.ni >= *at) {
                        series.last_mag = Some((step.ni, mag.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect()));
                    }
                }
            }
        }
        if nodes.iter().all(|n| n.ni.is_empty()) {
            return Err(InputError(format!("{name}: no telemetry records (the run wrote none: telemetry_every = 0?)")).into());
        }
        nodes.iter_mut().for_each(NodeSeries::sort);
        Ok(Self { nodes })
    }

    /// The node whose channel magnitudes Fig. 3a shows: 16 if present, else the second node.
    pub fn magnitude_node(&self) -> Option<&NodeSeries> {
        self.nodes.iter().find(|n| n.node == 16).or_else(|| self.nodes.get(1)).or_else(|| self.nodes.first())
    }
}

/// A run: its folder, its label and its telemetry.
pub struct Run {
    pub dir: PathBuf,
    pub label: String,
    pub telemetry: Telemetry,
}

impl Run {
    /// Reads `dir/config.toml` (for the label) and `dir/telemetry.jsonl`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| InputError(format!("{}: {e}", cfg_path.display())))?;
        let cfg: toml::Table =
            toml::from_str(&text).map_err(|e| InputError(format!("{}: invalid TOML: {e}", cfg_path.display())))?;
        let label = run_label(&cfg).map_err(|e| InputError(format!("{}: {e}", cfg_path.display())))?;
        let telemetry = Telemetry::read(&dir.join("telemetry.jsonl"))?;
        Ok(Self { dir: dir.to_path_buf(), label, telemetry })
    }
}

/// `yolov5n FP`, `yolov5n W4A4 lsq baseline`, `yolov5n W4A4 lsq + Q-GBFusion` (`+ Q-ADA` when
/// the run has an `[ada]` table) from a run's `config.toml`.
pub fn run_label(cfg: &toml::Table) -> std::result::Result<String, String> {
    let model = cfg.get("model").and_then(toml::Value::as_str).ok_or("no `model` string")?;
    let gbf = match cfg.get("gbf") {
        Some(t) => t.get("balance").and_then(toml::Value::as_bool).unwrap_or(true),
        None => false,
    };
    let ada = cfg.get("ada").is_some();
    let mut label = match cfg.get("quant") {
        None => format!("{model} FP"),
        Some(quant) => {
            let quant = quant.as_table().ok_or("`quant` is not a table")?;
            let method = quant.get("method").and_then(toml::Value::as_str).unwrap_or("?");
            let bits = |key: &str| quant.get(key).and_then(toml::Value::as_integer).map_or("?".to_string(), |b| b.to_string());
            format!("{model} W{}A{} {method}", bits("w_bits"), bits("a_bits"))
        }
    };
    if gbf {
        label.push_str(" + Q-GBFusion");
    }
    if ada {
        label.push_str(" + Q-ADA");
    }
    if !gbf && !ada && cfg.get("quant").is_some() {
        label.push_str(" baseline");
    }
    Ok(label)
}

/// Makes equal labels unique by appending the run folder's name.
fn disambiguate(runs: &mut [Run]) {
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    for r in runs.iter_mut() {
        if labels.iter().filter(|l| **l == r.label).count() > 1 {
            let name = r.dir.file_name().map_or_else(|| r.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
            r.label = format!("{} ({name})", r.label);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Trailing moving average: at each `xs[i]` (ascending), the mean of the `ys[j]` with
/// `xs[i] - window < xs[j] <= xs[i]`. A window of 1 (or less) returns `ys` unchanged.
pub fn moving_average(xs: &[f64], ys: &[f64], window: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(ys.len());
    let (mut lo, mut sum) = (0, 0.0);
    for i in 0..ys.len() {
        sum += ys[i];
        while xs[i] - xs[lo] >= window && lo < i {
            sum -= ys[lo];
            lo += 1;
        }
        out.push(sum / (i + 1 - lo) as f64);
    }
    out
}

/// Smooths `points` (x ascending) with [`moving_average`].
fn smooth(points: &[(f64, f64)], window: f64) -> Vec<(f64, f64)> {
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
    let smoothed = moving_average(&xs, &ys, window);
    xs.into_iter().zip(smoothed).collect()
}

/// Summary of one node's deep/shallow ratios over the records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RatioStats {
    /// Records with a valid ratio.
    pub records: usize,
    /// Mean g[0]/g[1] over the first 10% of the records (at least one).
    pub first_10pct: Option<f64>,
    /// Mean over the last 25% of the records (at least one).
    pub last_25pct: Option<f64>,
    /// Mean over all records.
    pub all: Option<f64>,
    /// Fraction of the records with g[0]/g[1] > 1 (the deep branch gets more gradient).
    pub frac_deep_larger: Option<f64>,
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The statistics of a sequence of ratios in iteration order.
pub fn ratio_stats(ratios: &[f64]) -> RatioStats {
    let n = ratios.len();
    // ⌈10% of n⌉ and ⌈25% of n⌉ records (at least one), in integers: in floats ⌈30 × 0.1⌉ is 4.
    let (head, tail) = (n.div_ceil(10), n.div_ceil(4));
    RatioStats {
        records: n,
        first_10pct: mean(&ratios[..head]),
        last_25pct: mean(&ratios[n - tail..]),
        all: mean(ratios),
        frac_deep_larger: (n > 0).then(|| ratios.iter().filter(|&&r| r > 1.0).count() as f64 / n as f64),
    }
}

/// One row of the output: a (run, node) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub run: String,
    pub dir: String,
    pub node: u32,
    #[serde(flatten)]
    pub stats: RatioStats,
}

/// One row per (run, node), runs in the order given, nodes in the order of the records.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut out = Vec::new();
    for run in runs {
        for n in &run.telemetry.nodes {
            let ratios: Vec<f64> = n.ratios().into_iter().map(|p| p.1).collect();
            out.push(Row { run: run.label.clone(), dir: run.dir.display().to_string(), node: n.node, stats: ratio_stats(&ratios) });
        }
    }
    out
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| run | node | records | g_deep/g_shallow first 10% | last 25% | all | fraction deep > shallow |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let st = &r.stats;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.run,
            r.node,
            st.records,
            cell(st.first_10pct),
            cell(st.last_25pct),
            cell(st.all),
            cell(st.frac_deep_larger)
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Tableau-10: distinct, readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A curve: `(iteration, value)` points.
type Points = Vec<(f64, f64)>;

/// Most points drawn per curve (more are thinned out: an SVG path per pixel is plenty).
const MAX_POINTS: usize = 2000;
const PANEL: (u32, u32) = (640, 420);
const FONT: &str = "sans-serif";

fn colour(k: usize) -> RGBColor {
    PALETTE[k % PALETTE.len()]
}

/// `c` mixed with white (`t` = 0: `c`, 1: white).
fn lighten(c: RGBColor, t: f64) -> RGBColor {
    let m = |v: u8| (v as f64 + (255.0 - v as f64) * t).round() as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

fn draw_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("rendering the SVG: {e}")
}

/// Keeps at most about `max` points (every k-th, and the last).
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = *points.last().expect("non-empty");
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Renders an SVG of `size` into a string: `draw` gets the white root area.
pub fn render_svg(size: (u32, u32), draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(buf)
}

/// Rows × columns of a grid of `n` panels (2 × 2 for 4).
fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols).max(1), cols)
}

/// The node ids over all runs, in the order they first appear.
fn node_ids(runs: &[Run]) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for n in runs.iter().flat_map(|r| &r.telemetry.nodes) {
        if !ids.contains(&n.node) {
            ids.push(n.node);
        }
    }
    ids
}

/// Lays out one panel per node and calls `panel(area, node)` on each.
fn node_panels(
    runs: &[Run],
    mut panel: impl FnMut(&DrawingArea<SVGBackend, Shift>, u32, usize) -> Result<()>,
) -> Result<String> {
    let ids = node_ids(runs);
    let (rows, cols) = grid(ids.len());
    render_svg((PANEL.0 * cols as u32, PANEL.1 * rows as u32), |root| {
        let areas = root.split_evenly((rows, cols));
        for (k, (&id, area)) in ids.iter().zip(&areas).enumerate() {
            panel(area, id, k)?;
        }
        Ok(())
    })
}

/// `[lo, hi]` of `vals` (finite ones), or None.
fn extent(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    vals.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Tick marks of a log axis over `[lo, hi]`: bold at 1, 2, 5 × 10^k (only decades when the
/// range spans more than 4 decades, also 3 and 7 under 1.5), light at every integer × 10^k.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let bold_mantissas: &[f64] = if decades > 4.0 {
        &[1.0]
    } else if decades > 1.5 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]
    };
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for e in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        let p = 10f64.powi(e);
        bold.extend(bold_mantissas.iter().map(|m| m * p).filter(|v| (lo..=hi).contains(v)));
        light.extend((1..10).map(|m| f64::from(m) * p).filter(|v| (lo..=hi).contains(v)));
    }
    (bold, light)
}

/// `2e-5`, `1.5e-4`: a log-axis label.
fn sci_label(v: &f64) -> String {
    let e = (v.log10() + 1e-9).floor();
    let m = v / 10f64.powf(e);
    if (m - m.round()).abs() < 1e-6 {
        format!("{}e{e}", m.round())
    } else {
        format!("{m:.1}e{e}")
    }
}

/// A linear-axis label without trailing zeros (and without `-0`).
fn plain_label(v: &f64) -> String {
    let s = format!("{:.2}", v + 0.0);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".into() } else { s.into() }
}

/// The corner for the legend that hides the fewest curve points: of the four regions of 45% of
/// the width × 25% of the height in the corners of `[x0, x1] × [y0, y1]` (y already in the
/// axis' linear space), the emptiest, upper right on ties.
fn legend_corner<'a>(curves: impl Iterator<Item = &'a [(f64, f64)]>, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let (w, h) = (x.1 - x.0, y.1 - y.0);
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    for &(px, py) in curves.flatten() {
        let (right, left) = (px > x.1 - 0.45 * w, px < x.0 + 0.45 * w);
        let (upper, lower) = (py > y.1 - 0.25 * h, py < y.0 + 0.25 * h);
        for (k, inside) in [right && upper, left && upper, right && lower, left && lower].into_iter().enumerate() {
            counts[k] += usize::from(inside);
        }
    }
    let best = (0..4).min_by_key(|&k| counts[k]).expect("four corners");
    [SeriesLabelPosition::UpperRight, SeriesLabelPosition::UpperLeft, SeriesLabelPosition::LowerRight, SeriesLabelPosition::LowerLeft]
        .into_iter()
        .nth(best)
        .expect("four corners")
}

/// The x range (iterations) of all runs.
fn x_range(runs: &[Run]) -> std::ops::Range<f64> {
    let max = runs.iter().flat_map(|r| &r.telemetry.nodes).filter_map(|n| n.ni.last()).max().copied().unwrap_or(0);
    0.0..(max as f64).max(1.0)
}

/// `PREFIX_ratio.svg`: log2(g[0]/g[1]) per node, one line per run, a line at 0.
pub fn render_ratio(runs: &[Run], window: f64) -> Result<String> {
    let xr = x_range(runs);
    node_panels(runs, |area, id, _| {
        let curves: Vec<(usize, Points)> = runs
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.telemetry.nodes.iter().find(|n| n.node == id).map(|n| (k, n)))
            .map(|(k, n)| {
                let log: Vec<(f64, f64)> = n.ratios().into_iter().map(|(x, r)| (x, r.log2())).collect();
                (k, thin(smooth(&log, window), MAX_POINTS))
            })
            .collect();
        let (lo, hi) = extent(curves.iter().flat_map(|c| c.1.iter().map(|p| p.1))).unwrap_or((0.0, 0.0));
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let pad = ((hi - lo) * 0.1).max(0.05);
        let corner = legend_corner(curves.iter().map(|c| c.1.as_slice()), (xr.start, xr.end), (lo - pad, hi + pad));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("node {id}"), (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xr.clone(), (lo - pad)..(hi + pad))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("log2(g_deep / g_shallow)")
            .x_label_formatter(&plain_label)
            .y_label_formatter(&plain_label)
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(draw_err)?;
        chart.draw_series(LineSeries::new(vec![(xr.start, 0.0), (xr.end, 0.0)], BLACK.mix(0.6).stroke_width(1))).map_err(draw_err)?;
        for (k, pts) in curves {
            let style = colour(k).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(draw_err)?
                .label(runs[k].label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(corner)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 13))
            .draw()
            .map_err(draw_err)
    })
}

/// `PREFIX_energy.svg`: g[0] (solid) and g[1] (dashed) per node on a log axis, per run.
pub fn render_energy(runs: &[Run], window: f64) -> Result<String> {
    let xr = x_range(runs);
    node_panels(runs, |area, id, panel| {
        // (run, deep?, points)
        let mut curves: Vec<(usize, bool, Points)> = Vec::new();
        for (k, r) in runs.iter().enumerate() {
            let Some(n) = r.telemetry.nodes.iter().find(|n| n.node == id) else { continue };
            let valid = |v: f64| (v > 0.0 && v.is_finite()).then_some(v);
            curves.push((k, true, thin(smooth(&n.points(|d, _| valid(d)), window), MAX_POINTS)));
            curves.push((k, false, thin(smooth(&n.points(|_, s| valid(s)), window), MAX_POINTS)));
        }
        let (lo, hi) = extent(curves.iter().flat_map(|c| c.2.iter().map(|p| p.1))).unwrap_or((1e-3, 1.0));
        let (lo, hi) = (lo / 1.5, hi * 1.5);
        let (bold, light) = log_ticks(lo, hi);
        let log: Vec<Points> = curves.iter().map(|c| c.2.iter().map(|&(x, y)| (x, y.log10())).collect()).collect();
        let corner = legend_corner(log.iter().map(Vec::as_slice), (xr.start, xr.end), (lo.log10(), hi.log10()));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("node {id}"), (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xr.clone(), (lo..hi).log_scale().with_key_points(bold).with_light_points(light))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("‖∂L/∂F‖₂ (deep solid, shallow dashed)")
            .x_label_formatter(&plain_label)
            .y_label_formatter(&sci_label)
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(draw_err)?;
        for (k, deep, pts) in curves {
            let style = colour(k).stroke_width(2);
            let name = format!("{}: {}", runs[k].label, if deep { "deep" } else { "shallow" });
            let anno = if deep {
                chart.draw_series(LineSeries::new(pts, style)).map_err(draw_err)?
            } else {
                chart.draw_series(DashedLineSeries::new(pts, 7, 4, style)).map_err(draw_err)?
            };
            // The legend goes on the first panel only: six entries on every panel hide the curves.
            if panel == 0 {
                let anno = anno.label(name);
                if deep {
                    anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                } else {
                    anno.legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 22, y)], 7, 4, style));
                }
            }
        }
        if panel == 0 {
            chart
                .configure_series_labels()
                .position(corner)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font((FONT, 12))
                .draw()
                .map_err(draw_err)?;
        }
        Ok(())
    })
}

/// `PREFIX_magnitudes.svg`: per run, the last channel magnitudes of [`Telemetry::magnitude_node`]
/// as bars, the deep half (channels 0–15) in the run's colour, the shallow half lighter.
pub fn render_magnitudes(runs: &[Run]) -> Result<String> {
    let height = 300 * runs.len().max(1) as u32;
    render_svg((900, height), |root| {
        let areas = root.split_evenly((runs.len().max(1), 1));
        for (k, (run, area)) in runs.iter().zip(&areas).enumerate() {
            magnitude_panel(area, run, colour(k))?;
        }
        Ok(())
    })
}

fn magnitude_panel(area: &DrawingArea<SVGBackend, Shift>, run: &Run, c: RGBColor) -> Result<()> {
    let node = run.telemetry.magnitude_node();
    let Some((node, (ni, mag))) = node.and_then(|n| n.last_mag.as_ref().map(|m| (n.node, m))) else {
        let title = format!("{}: no channel magnitudes recorded", run.label);
        area.titled(&title, (FONT, 18)).map_err(draw_err)?;
        return Ok(());
    };
    let half = mag.len() / 2;
    // Headroom above the tallest bar for the legend.
    let top = extent(mag.iter().copied()).map_or(1.0, |e| e.1).max(1e-12) * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: node {node}, iteration {ni}", run.label), (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(mag.len() as f64 - 0.5), 0.0..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("sampled channel (0–15 deep branch, 16–31 shallow branch)")
        .y_desc("mean |output|")
        .x_label_formatter(&plain_label)
        .y_label_formatter(&plain_label)
        .disable_x_mesh()
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(draw_err)?;
    let bars = |range: std::ops::Range<usize>, fill: RGBColor| {
        let vals: Vec<(usize, f64)> = range.map(|i| (i, mag[i])).filter(|p| p.1.is_finite()).collect();
        vals.into_iter().map(move |(i, v)| Rectangle::new([(i as f64 - 0.38, 0.0), (i as f64 + 0.38, v)], fill.filled()))
    };
    let light = lighten(c, 0.55);
    for (range, fill, name) in [(0..half, c, "deep (branch 0)"), (half..mag.len(), light, "shallow (branch 1)")] {
        chart
            .draw_series(bars(range, fill))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill.filled()));
    }
    let sep = half as f64 - 0.5;
    chart.draw_series(DashedLineSeries::new(vec![(sep, 0.0), (sep, top)], 5, 4, BLACK.mix(0.5).stroke_width(1))).map_err(draw_err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 13))
        .draw()
        .map_err(draw_err)
}

// ---------------------------------------------------------------------------------------------
// The command

/// `PREFIX` + `suffix` (appended to the file name, not as a path component).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `q2 plot-imbalance`
pub fn plot(args: PlotArgs) -> Result<()> {
    if args.runs.is_empty() {
        return Err(InputError("plot-imbalance: give at least one --run DIR".into()).into());
    }
    let mut runs = args.runs.iter().map(|d| Run::load(d)).collect::<Result<Vec<_>>>()?;
    disambiguate(&mut runs);
    let window = args.smooth as f64;
    let figures = [
        ("_ratio.svg", render_ratio(&runs, window)?),
        ("_energy.svg", render_energy(&runs, window)?),
        ("_magnitudes.svg", render_magnitudes(&runs)?),
    ];
    for (suffix, svg) in figures {
        let path = with_suffix(&args.out, suffix);
        q2_nn::fsutil::write_atomic(&path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    let rows = rows(&runs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", markdown(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three iterations of two nodes: line 2 has no `mag`, line 3 no `alpha` (a run without
    /// Q-GBFusion) and a null (NaN) gradient on node 16.
    const TELEMETRY: &str = r#"{"ni": 0, "epoch": 0, "nodes": [{"node": 12, "g": [4.0, 1.0], "g_res": [8.0, 2.0], "widths": [128, 128], "alpha": [0.5, 0.5], "lam": [0.0, 0.0], "gbar": [4.0, 1.0], "e": [0.3, -0.3], "mag": [1.0, 2.0, 3.0, 4.0]}, {"node": 16, "g": [1.0, 2.0], "alpha": [0.5, 0.5], "mag": [5.0, 6.0, 7.0, 8.0]}]}
{"ni": 1, "epoch": 0, "nodes": [{"node": 12, "g": [2.0, 1.0], "alpha": [0.5, 0.5]}, {"node": 16, "g": [1.0, 1.0], "alpha": [0.5, 0.5]}]}

{"ni": 2, "epoch": 1, "nodes": [{"node": 12, "g": [1.0, 2.0], "alpha": [], "mag": [9.0, 9.0, 1.0, 1.0]}, {"node": 16, "g": [null, 1.0], "alpha": []}]}
"#;

    fn telemetry() -> Telemetry {
        Telemetry::parse(TELEMETRY, "t.jsonl").unwrap()
    }

    fn run(label: &str, dir: &str) -> Run {
        Run { dir: dir.into(), label: label.into(), telemetry: telemetry() }
    }

    #[test]
    fn plot_parses_telemetry() {
        let t = telemetry();
        assert_eq!(t.nodes.iter().map(|n| n.node).collect::<Vec<_>>(), [12, 16]);
        let n12 = &t.nodes[0];
        assert_eq!(n12.ni, [0, 1, 2]);
        assert_eq!(n12.deep, [4.0, 2.0, 1.0]);
        assert_eq!(n12.shallow, [1.0, 1.0, 2.0]);
        assert_eq!(n12.last_mag, Some((2, vec![9.0, 9.0, 1.0, 1.0])));
        let n16 = &t.nodes[1];
        assert!(n16.deep[2].is_nan());
        assert_eq!(n16.last_mag, Some((0, vec![5.0, 6.0, 7.0, 8.0])));
        // The NaN record has no ratio.
        assert_eq!(n16.ratios(), [(0.0, 0.5), (1.0, 1.0)]);
        assert_eq!(t.magnitude_node().unwrap().node, 16);
    }

    #[test]
    fn plot_corrupt_line_names_file_and_line() {
        let text = TELEMETRY.replacen(r#"{"ni": 1,"#, r#"{"ni": 1 "#, 1);
        let e = Telemetry::parse(&text, "runs/x/telemetry.jsonl").unwrap_err();
        assert!(e.to_string().starts_with("runs/x/telemetry.jsonl:2: invalid telemetry record"), "{e}");
        assert_eq!(crate::cli::exit_code(&e), 2);
        let one = r#"{"ni": 0, "nodes": [{"node": 12, "g": [1.0]}]}"#;
        let e = Telemetry::parse(one, "t").unwrap_err().to_string();
        assert!(e.contains("t:1: node 12: `g` has 1 entries"), "{e}");
    }

    #[test]
    fn plot_empty_or_missing_telemetry_is_an_input_error() {
        let e = Telemetry::parse("\n\n", "empty.jsonl").unwrap_err();
        assert!(e.to_string().contains("empty.jsonl: no telemetry records"), "{e}");
        assert_eq!(crate::cli::exit_code(&e), 2);
        let e = Telemetry::read(Path::new("/nonexistent/telemetry.jsonl")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/telemetry.jsonl"), "{e}");
        assert_eq!(crate::cli::exit_code(&e), 2);
    }

    #[test]
    fn plot_moving_average() {
        let xs = [0.0, 1.0, 2.0, 3.0, 10.0];
        let ys = [1.0, 3.0, 5.0, 7.0, 9.0];
        assert_eq!(moving_average(&xs, &ys, 1.0), ys);
        assert_eq!(moving_average(&xs, &ys, 2.0), [1.0, 2.0, 4.0, 6.0, 9.0]);
        assert_eq!(moving_average(&xs, &ys, 25.0), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(moving_average(&[], &[], 3.0).is_empty());
    }

    #[test]
    fn plot_table_numbers() {
        let st = ratio_stats(&[4.0, 2.0, 0.5]);
        assert_eq!(st.records, 3);
        assert_eq!(st.first_10pct, Some(4.0));
        assert_eq!(st.last_25pct, Some(0.5));
        assert_eq!(st.all, Some(6.5 / 3.0));
        assert_eq!(st.frac_deep_larger, Some(2.0 / 3.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let st = ratio_stats(&ten);
        assert_eq!((st.first_10pct, st.last_25pct), (Some(1.0), Some(9.0)));
        let st = ratio_stats(&[]);
        assert_eq!((st.records, st.first_10pct, st.all, st.frac_deep_larger), (0, None, None, None));

        let rows = rows(&[run("yolov5n W4A4 lsq baseline", "runs/b")]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].stats.all, Some(6.5 / 3.0));
        assert_eq!(rows[1].stats.records, 2);
        assert_eq!(rows[1].stats.all, Some(0.75));
        let md = markdown(&rows);
        assert!(md.contains("| yolov5n W4A4 lsq baseline | 12 | 3 | 4.000 | 0.500 | 2.167 | 0.667 |"), "{md}");
        let json: serde_json::Value = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[1]["node"], 16);
        assert_eq!(json[1]["first_10pct"], 0.5);
        assert_eq!(json[0]["dir"], "runs/b");
    }

    #[test]
    fn plot_run_labels() {
        let label = |s: &str| run_label(&toml::from_str(s).unwrap());
        assert_eq!(label("model = \"yolov5n\"").unwrap(), "yolov5n FP");
        assert_eq!(label("model = \"yolov5n\"\n[gbf]\n").unwrap(), "yolov5n FP + Q-GBFusion");
        let q = "model = \"yolov5n\"\n[quant]\nmethod = \"lsq\"\nw_bits = 4\na_bits = 4\n";
        assert_eq!(label(q).unwrap(), "yolov5n W4A4 lsq baseline");
        assert_eq!(label(&format!("{q}[gbf]\nln = true\n")).unwrap(), "yolov5n W4A4 lsq + Q-GBFusion");
        assert_eq!(label(&format!("{q}[gbf]\nbalance = false\n")).unwrap(), "yolov5n W4A4 lsq baseline");
        assert_eq!(label(&format!("{q}[gbf]\n[ada]\n")).unwrap(), "yolov5n W4A4 lsq + Q-GBFusion + Q-ADA");
        assert!(label("img = 3").is_err());
        let mut runs = vec![run("a", "x/r1"), run("a", "x/r2"), run("b", "x/r3")];
        disambiguate(&mut runs);
        assert_eq!(runs.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["a (r1)", "a (r2)", "b"]);
    }

    #[test]
    fn plot_renders_svg() {
        let runs = [run("fp", "a"), run("qat", "b")];
        for svg in [render_ratio(&runs, 2.0).unwrap(), render_energy(&runs, 2.0).unwrap(), render_magnitudes(&runs).unwrap()] {
            assert!(svg.contains("<svg"), "{svg}");
            assert!(svg.trim_end().ends_with("</svg>"));
        }
        assert!(render_ratio(&runs, 25.0).unwrap().contains("node 16"));
        assert!(render_magnitudes(&runs).unwrap().contains("fp: node 16, iteration 0"));
        assert_eq!(grid(4), (2, 2));
        let rising = [(0.0, 0.0), (10.0, 1.0)];
        assert!(matches!(legend_corner([&rising[..]].into_iter(), (0.0, 10.0), (0.0, 1.0)), SeriesLabelPosition::UpperLeft));
        let falling = [(0.0, 1.0), (10.0, 0.0)];
        assert!(matches!(legend_corner([&falling[..]].into_iter(), (0.0, 10.0), (0.0, 1.0)), SeriesLabelPosition::UpperRight));
        let (bold, light) = log_ticks(1.5e-5, 5.5e-4);
        assert_eq!(bold.iter().map(sci_label).collect::<Vec<_>>(), ["2e-5", "5e-5", "1e-4", "2e-4", "5e-4"]);
        assert_eq!(light.len(), 8 + 5);
        assert_eq!(log_ticks(1.5e-5, 3e-4).0.len(), 8);
        assert_eq!((sci_label(&1.5e-3), plain_label(&-0.0), plain_label(&2.5), plain_label(&500.0)), ("1.5e-3".into(), "0".into(), "2.5".into(), "500".into()));
        assert_eq!(grid(1), (1, 1));
        assert_eq!(thin((0..10).map(|i| (i as f64, 0.0)).collect(), 4).last(), Some(&(9.0, 0.0)));
    }

    #[test]
    fn plot_command_writes_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().join("run");
        std::fs::create_dir(&r).unwrap();
        std::fs::write(r.join("config.toml"), "model = \"yolov5n\"\n[quant]\nmethod = \"lsq\"\nw_bits = 2\na_bits = 2\n[gbf]\n").unwrap();
        std::fs::write(r.join("telemetry.jsonl"), TELEMETRY).unwrap();
        let out = dir.path().join("figs/imb");
        plot(PlotArgs { runs: vec![r.clone()], out: out.clone(), smooth: 25, json: true }).unwrap();
        for s in ["_ratio.svg", "_energy.svg", "_magnitudes.svg"] {
            let text = std::fs::read_to_string(with_suffix(&out, s)).unwrap();
            assert!(text.contains("<svg"));
        }
        std::fs::remove_file(r.join("telemetry.jsonl")).unwrap();
        let e = plot(PlotArgs { runs: vec![r], out, smooth: 25, json: false }).unwrap_err();
        assert_eq!(crate::cli::exit_code(&e), 2);
    }
}
