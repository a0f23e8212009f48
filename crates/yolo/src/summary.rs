//! Model summaries as ultralytics prints them (`model.info()`): a per-layer table (index, from,
//! repeats, parameters, module, arguments), the total parameter count and GFLOPs at 640×640.
//!
//! Parameters are what `sum(p.numel() for p in model.parameters())` counts: every trainable
//! tensor plus YOLO11's DFL conv weight (a frozen `nn.Parameter` in ultralytics, a buffer here);
//! BatchNorm running statistics, `num_batches_tracked`, YOLOv5's `anchors` and quantizer
//! parameters are not counted.
//!
//! GFLOPs follow ultralytics' `get_flops` (thop, the ultralytics-thop 2.2 rules): 2 × the
//! multiply-accumulates of one unfused eval forward at batch 1, 640×640, where a conv costs
//! `out·cin/groups·k²` (bias free), a BatchNorm `4·numel`, a matmul `out·contracted` (C2PSA's
//! attention), the DFL 1×1 conv of YOLO11's inference included; SiLU, pooling, nearest upsampling,
//! sums, sigmoid and softmax cost nothing. The count is taken on a 64×64 input and extrapolated
//! exactly (conv/BN work grows with the area, attention products with its square).

use candle_core::{DType, Tensor};
use q2_nn::{ParamStore, Role};
use serde::Serialize;

use crate::{Detector, Result};

/// One row of the layer table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerRow {
    pub index: usize,
    pub from: String,
    pub n: usize,
    pub params: usize,
    pub module: String,
    pub arguments: String,
}

impl LayerRow {
    pub fn new(index: usize, from: &str, n: usize, module: &str, arguments: String) -> Self {
        Self {
            index,
            from: from.to_string(),
            n,
            params: 0,
            module: module.to_string(),
            arguments,
        }
    }
}

/// A model summary (`q2 summary --json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub nc: usize,
    pub params: usize,
    pub gflops: f64,
    pub imgsz: usize,
    pub layers: Vec<LayerRow>,
}

/// Whether a store entry is an ultralytics parameter (see the module doc).
pub fn is_param(name: &str, role: Role) -> bool {
    matches!(role, Role::Weight | Role::NormWeight | Role::Bias)
        || name.ends_with(".dfl.conv.weight")
}

/// Parameter count as ultralytics reports it, over entries whose name starts with `prefix`.
pub fn count_params(store: &ParamStore, prefix: &str) -> usize {
    store
        .iter()
        .filter(|(k, e)| k.starts_with(prefix) && is_param(k, e.role))
        .map(|(_, e)| e.var.elem_count())
        .sum()
}

/// GFLOPs of one forward at `h`×`w` (multiples of 32), extrapolated from a 64×64 count.
pub fn gflops(det: &dyn Detector, h: usize, w: usize) -> Result<f64> {
    let probe = 64;
    let x = Tensor::zeros((1, 3, probe, probe), DType::F32, det.store().device())?;
    let (lin, quad) = det.count_ops(&x)?;
    let k = (h * w) as f64 / (probe * probe) as f64;
    Ok(2.0 * (lin as f64 * k + quad as f64 * k * k) / 1e9)
}

/// The summary of a detector at 640×640.
pub fn summarize(det: &dyn Detector) -> Result<Summary> {
    let store = det.store();
    let mut layers = det.layer_table();
    for r in &mut layers {
        r.params = count_params(store, &format!("model.{}.", r.index));
    }
    Ok(Summary {
        model: det.name().to_string(),
        nc: det.nc(),
        params: count_params(store, ""),
        gflops: gflops(det, 640, 640)?,
        imgsz: 640,
        layers,
    })
}

/// The table as text, in ultralytics' layout.
pub fn render(s: &Summary) -> String {
    let mut out = format!(
        "{:>3}{:>20}{:>3}{:>10}  {:<24}{:<30}\n",
        "", "from", "n", "params", "module", "arguments"
    );
    for r in &s.layers {
        out += &format!(
            "{:>3}{:>20}{:>3}{:>10}  {:<24}{:<30}\n",
            r.index, r.from, r.n, r.params, r.module, r.arguments
        );
    }
    out += &format!(
        "{} summary: {} layers, {} parameters, {:.1} GFLOPs (nc={}, {}x{})\n",
        s.model,
        s.layers.len(),
        group_digits(s.params),
        s.gflops,
        s.nc,
        s.imgsz,
        s.imgsz
    );
    out
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_are_grouped() {
        assert_eq!(super::group_digits(7235389), "7,235,389");
        assert_eq!(super::group_digits(999), "999");
    }
}
