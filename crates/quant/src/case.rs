//! `q2 quant`: evaluates one quantizer on numbers given in JSON, with the same kernels training
//! uses, so other frameworks can be cross-checked against q2.
//!
//! Input: `{method, bits, signed, x: [..], params: {..}, grad_out: [..], groups?}` (other keys are
//! ignored). Parameter names per method: `lsq` {s}; `lsq_plus` {s, beta}; `pact` {alpha}
//! (signed: DoReFa weights, {}); `minmax` {}; `n2uq` unsigned {start, a: [2^b−1], scale1,
//! scale2}, signed (weights, one channel per group) {}. With `groups: G`, x is split into G
//! equal contiguous groups (per-channel) and a scalar parameter may be a list of G values.
//! Output: `{y, grad_x, grad_params}`, gradients of `sum(y · grad_out)`, as float64.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use serde_json::{json, Map, Value};

use crate::kernel::Kernel;
use crate::methods::*;
use crate::op::fake_quant;
use crate::quantizer::Method;
use crate::{QuantError, Result};

fn bad(msg: impl Into<String>) -> QuantError {
    QuantError::BadCase(msg.into())
}

fn numbers(v: &Value, what: &str) -> Result<Vec<f32>> {
    let arr = v.as_array().ok_or_else(|| bad(format!("`{what}` must be an array of numbers")))?;
    arr.iter()
        .enumerate()
        .map(|(i, e)| e.as_f64().map(|f| f as f32).ok_or_else(|| bad(format!("`{what}[{i}]` is not a number: {e}"))))
        .collect()
}

/// Evaluates one case on the CPU (see the module docs).
pub fn evaluate(case: &Value) -> Result<Value> {
    evaluate_on(case, &Device::Cpu)
}

/// Evaluates one case on `device` (the CUDA kernels when it is a GPU).
pub fn evaluate_on(case: &Value, device: &Device) -> Result<Value> {
    let obj = case.as_object().ok_or_else(|| bad("the case must be a JSON object"))?;
    let field = |k: &str| obj.get(k).ok_or_else(|| bad(format!("missing key `{k}`")));
    let method_name = field("method")?.as_str().ok_or_else(|| bad("`method` must be a string"))?;
    let method = Method::parse(method_name).ok_or_else(|| {
        bad(format!(
            "unknown method `{method_name}`; expected one of {}",
            Method::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let bits = field("bits")?.as_i64().ok_or_else(|| bad("`bits` must be an integer"))?;
    if !(2..=8).contains(&bits) {
        return Err(bad(format!("`bits` must be in 2..=8, got {bits}")));
    }
    let bits = bits as u32;
    let signed = field("signed")?.as_bool().ok_or_else(|| bad("`signed` must be true or false"))?;
    let x = numbers(field("x")?, "x")?;
    let g = numbers(field("grad_out")?, "grad_out")?;
    if x.is_empty() {
        return Err(bad("`x` is empty"));
    }
    if g.len() != x.len() {
        return Err(bad(format!("length mismatch: `x` has {} values, `grad_out` has {}", x.len(), g.len())));
    }
    let groups = match obj.get("groups") {
        None | Some(Value::Null) => 1,
        Some(v) => v.as_u64().filter(|g| *g > 0).ok_or_else(|| bad("`groups` must be a positive integer"))? as usize,
    };
    if x.len() % groups != 0 {
        return Err(bad(format!("`x` has {} values, which cannot be split into {groups} equal groups", x.len())));
    }
    let empty = Map::new();
    let params = match obj.get("params") {
        None | Some(Value::Null) => &empty,
        Some(v) => v.as_object().ok_or_else(|| bad("`params` must be an object"))?,
    };
    let run = Run { x, g, params, groups, device };
    match (method, signed) {
        (Method::Lsq, _) => run.go(Lsq { bits, signed }),
        (Method::LsqPlus, _) => run.go(LsqPlus { bits, signed, offset: true, init: LsqPlusInit::MinMax }),
        (Method::Pact, false) => run.go(Pact { bits, init: PactInit::Fixed(10.0) }),
        (Method::Pact, true) => run.go(DoReFa { bits }),
        (Method::N2uq, false) => run.go(N2uqAct { bits, init: N2uqInit::Official }),
        (Method::N2uq, true) => run.go(N2uqWeight { bits }),
        (Method::Minmax, _) => run.go(MinMax { bits, signed }),
    }
}

struct Run<'a> {
    x: Vec<f32>,
    g: Vec<f32>,
    params: &'a Map<String, Value>,
    groups: usize,
    device: &'a Device,
}

impl Run<'_> {
    /// Reads the kernel's parameters as a (groups × P) row-major vector.
    fn packed<K: Kernel>(&self, k: &K) -> Result<Vec<f32>> {
        let layout = k.param_layout();
        let np = k.num_params();
        let mut p = vec![0f32; self.groups * np];
        let mut off = 0;
        for (name, width) in layout {
            let v = self.params.get(name).ok_or_else(|| bad(format!("{}: missing parameter `params.{name}`", k.name())))?;
            let rows: Vec<Vec<f32>> = match (v, width) {
                (Value::Number(n), 1) => vec![vec![n.as_f64().unwrap_or(f64::NAN) as f32]; self.groups],
                (Value::Array(a), 1) if a.len() == self.groups => numbers(v, name)?.into_iter().map(|f| vec![f]).collect(),
                (Value::Array(a), w) if w > 1 && self.groups == 1 && a.len() == w => vec![numbers(v, name)?],
                (Value::Array(a), w) if w > 1 && a.len() == self.groups && a.iter().all(|r| r.is_array()) => {
                    a.iter().map(|r| numbers(r, name)).collect::<Result<_>>()?
                }
                _ => {
                    let want = if width == 1 {
                        format!("a number or a list of {} numbers", self.groups)
                    } else {
                        format!("a list of {width} numbers per group ({} group(s))", self.groups)
                    };
                    return Err(bad(format!("{}: `params.{name}` must be {want}, got {v}", k.name())));
                }
            };
            for (gi, row) in rows.iter().enumerate() {
                if row.len() != width {
                    return Err(bad(format!("{}: `params.{name}` group {gi} has {} values, expected {width}", k.name(), row.len())));
                }
                p[gi * np + off..gi * np + off + width].copy_from_slice(row);
            }
            off += width;
        }
        for gi in 0..self.groups {
            k.validate(&p[gi * np..(gi + 1) * np]).map_err(|e| bad(format!("{}: {e}", k.name())))?;
        }
        Ok(p)
    }

    fn go<K: Kernel>(self, k: K) -> Result<Value> {
        let p = self.packed(&k)?;
        let np = k.num_params();
        let dev = self.device.clone();
        let n = self.x.len();
        let x = Var::from_tensor(&Tensor::from_vec(self.x.clone(), n, &dev)?)?;
        let pv = if np > 0 { Some(Var::from_tensor(&Tensor::from_vec(p, (self.groups, np), &dev)?)?) } else { None };
        let layout = k.param_layout();
        let y = fake_quant(Arc::new(k), x.as_tensor(), pv.as_ref().map(|v| v.as_tensor()), self.groups)?;
        let loss = (&y * Tensor::from_vec(self.g.clone(), n, &dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        let to64 = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect()) };
        let gx = grads.get(x.as_tensor()).map(to64).transpose()?.unwrap_or_else(|| vec![0.0; n]);
        let mut out = Map::new();
        if let Some(pv) = &pv {
            let gp = grads.get(pv.as_tensor()).map(to64).transpose()?.unwrap_or_else(|| vec![0.0; self.groups * np]);
            let mut off = 0;
            for (pname, width) in layout {
                let rows: Vec<Vec<f64>> = (0..self.groups).map(|gi| gp[gi * np + off..gi * np + off + width].to_vec()).collect();
                let v = match (self.groups, width) {
                    (1, 1) => json!(rows[0][0]),
                    (_, 1) => json!(rows.iter().map(|r| r[0]).collect::<Vec<_>>()),
                    (1, _) => json!(rows[0]),
                    _ => json!(rows),
                };
                out.insert(pname.to_string(), v);
                off += width;
            }
        }
        Ok(json!({ "y": to64(&y)?, "grad_x": gx, "grad_params": out }))
    }
}
