//! Weights in ultralytics `state_dict` layout (`model.0.conv.weight`, `model.0.bn.running_mean`,
//! `model.24.anchors`, `model.23.dfl.conv.weight`, ...) as safetensors files, and the
//! deterministic weight recipe the parity fixtures use.
//!
//! [`load`] reads a file written by `tools/export_ultralytics.py` (or [`save`]): the keys must be
//! exactly the model's (quantizer parameters excepted: a full-precision checkpoint loads into a
//! quantized model, its quantizers keep their values), shapes must agree, and every float value
//! must be finite; otherwise one error lists every missing, unexpected and mis-shaped key (naming
//! the file and, where its metadata records one, the model it was exported from), or names the
//! first tensor holding NaN/Inf.
//!
//! ## The recipe ([`recipe_fill`], mirrored by `tools/make_yolo_fixtures.py`)
//! Each tensor is drawn from its own splitmix64 stream seeded by the 64-bit FNV-1a hash of its
//! key; element i (row-major) is `lo + (hi − lo)·u_i` computed in f64 and rounded to f32, with
//! `u_i = (splitmix64_i >> 11)·2⁻⁵³`. Ranges by key:
//! - `*.bn.weight` U(0.5, 1.5), `*.bn.bias` U(−0.1, 0.1), `*.bn.running_mean` U(−0.2, 0.2),
//!   `*.bn.running_var` U(0.5, 2.0);
//! - 4-D conv weights U(±sqrt(3/fan_in)) (variance 1/fan_in, so activations neither vanish nor
//!   explode through the depth; fan_in = in/groups·k²);
//! - other `*.bias` (Detect's prediction convs) U(−0.5, 0.5);
//! - `input*` tensors (fixture inputs) U(0, 1);
//! - `*.anchors`, `*.dfl.conv.weight` and `num_batches_tracked` keep their built values.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use q2_nn::store::load_tensors;
use q2_nn::{NnError, ParamStore, Role};

use crate::{Result, YoloError};

/// 64-bit FNV-1a of a key.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// splitmix64: the i-th output (i from 0) of the stream seeded by `seed`.
pub fn splitmix64(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values U(lo, hi) from the stream of `key`.
pub fn recipe_uniform(key: &str, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    let seed = fnv1a64(key);
    (0..n as u64)
        .map(|i| {
            let u = (splitmix64(seed, i) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

/// The recipe's range for a key of the given shape, `None` to keep the tensor as built.
pub fn recipe_range(key: &str, shape: &[usize]) -> Option<(f64, f64)> {
    if key.ends_with(".anchors")
        || key.ends_with(".dfl.conv.weight")
        || key.ends_with("num_batches_tracked")
    {
        return None;
    }
    if key.starts_with("input") {
        return Some((0.0, 1.0));
    }
    if key.ends_with(".bn.weight") {
        return Some((0.5, 1.5));
    }
    if key.ends_with(".bn.bias") {
        return Some((-0.1, 0.1));
    }
    if key.ends_with(".bn.running_mean") {
        return Some((-0.2, 0.2));
    }
    if key.ends_with(".bn.running_var") {
        return Some((0.5, 2.0));
    }
    if shape.len() == 4 {
        let fan_in = shape[1] * shape[2] * shape[3];
        let b = (3.0 / fan_in as f64).sqrt();
        return Some((-b, b));
    }
    if key.ends_with(".bias") {
        return Some((-0.5, 0.5));
    }
    None
}

/// Overwrites every float entry of `store` (quantizer parameters excepted) by the recipe.
pub fn recipe_fill(store: &ParamStore) -> Result<()> {
    for (k, e) in store.iter() {
        if e.role == Role::Quant || e.var.dtype() != DType::F32 {
            continue;
        }
        if let Some((lo, hi)) = recipe_range(k, e.var.dims()) {
            let v = recipe_uniform(k, e.var.elem_count(), lo, hi);
            e.var
                .set(&Tensor::from_vec(v, e.var.shape(), e.var.device())?)?;
        }
    }
    Ok(())
}

/// A recipe tensor of any shape (fixture inputs: `recipe_tensor("input.a", &[2, 3, 64, 96])`).
pub fn recipe_tensor(key: &str, shape: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
    let (lo, hi) = recipe_range(key, shape)
        .ok_or_else(|| YoloError::Invalid(format!("recipe: no range for `{key}`")))?;
    let n = shape.iter().product();
    Ok(Tensor::from_vec(
        recipe_uniform(key, n, lo, hi),
        shape,
        dev,
    )?)
}

/// The `__metadata__` of a safetensors file (empty when absent or unreadable).
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let read = || -> Option<HashMap<String, String>> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        if n > 100_000_000 {
            return None;
        }
        let mut buf = vec![0u8; n as usize];
        f.read_exact(&mut buf).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&buf).ok()?;
        let m = v.get("__metadata__")?.as_object()?;
        Some(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        )
    };
    read().unwrap_or_default()
}

/// Checks that every float tensor is finite; the error names the file and the tensor.
pub fn check_finite(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for k in names {
        let t = &tensors[k];
        if !t.dtype().is_float() {
            continue;
        }
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            let n = v.iter().filter(|x| !x.is_finite()).count();
            return Err(YoloError::Invalid(format!(
                "{}: tensor `{k}` holds {n} non-finite values (e.g. {bad})",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Loads ultralytics-named weights from a safetensors file into `store` (see the module doc).
pub fn load(store: &ParamStore, path: &Path) -> Result<()> {
    load_partial(store, path, &[])
}

/// As [`load`], where entries under any of `optional` (store prefixes such as `model.12.`, the
/// Q-GBFusion nodes an FP checkpoint does not have) may also be missing and keep their values.
pub fn load_partial(store: &ParamStore, path: &Path, optional: &[String]) -> Result<()> {
    let tensors = load_tensors(path, store.device())?;
    let mut missing = vec![];
    let mut mis_shaped = vec![];
    for (k, e) in store.iter() {
        match tensors.get(k) {
            None if e.role == Role::Quant || optional.iter().any(|p| k.starts_with(p.as_str())) => {}
            None => missing.push(k.to_string()),
            Some(t) if t.dims() != e.var.dims() => {
                mis_shaped.push((k.to_string(), e.var.dims().to_vec(), t.dims().to_vec()))
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<String> = tensors
        .keys()
        .filter(|k| store.get(k).is_none())
        .cloned()
        .collect();
    extra.sort();
    if !(missing.is_empty() && extra.is_empty() && mis_shaped.is_empty()) {
        let meta = read_metadata(path);
        let origin = match (meta.get("model"), meta.get("nc")) {
            (Some(m), Some(nc)) => format!(" (exported from {m}, nc={nc})"),
            (Some(m), None) => format!(" (exported from {m})"),
            _ => String::new(),
        };
        let shown = std::path::PathBuf::from(format!("{}{origin}", path.display()));
        return Err(NnError::KeyMismatch {
            path: shown,
            missing,
            extra,
            mis_shaped,
        }
        .into());
    }
    check_finite(&tensors, path)?;
    for (k, e) in store.iter() {
        if let Some(t) = tensors.get(k) {
            e.var.set(&t.to_dtype(e.var.dtype())?)?;
        }
    }
    Ok(())
}

/// Saves `store` as a safetensors file (atomically), ultralytics key names unchanged.
pub fn save(store: &ParamStore, path: &Path) -> Result<()> {
    Ok(store.save_safetensors(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_and_fnv_reference_values() {
        // Reference values of the published algorithms.
        assert_eq!(fnv1a64(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
        // splitmix64 seeded with 0: first output 0xe220a8397b1dcdaf
        assert_eq!(splitmix64(0, 0), 0xe220a8397b1dcdaf);
        assert_eq!(splitmix64(0, 1), 0x6e789e6aa1b965f4);
    }

    #[test]
    fn recipe_ranges_by_kind() {
        assert_eq!(
            recipe_range("model.0.bn.running_var", &[16]),
            Some((0.5, 2.0))
        );
        assert_eq!(recipe_range("model.24.anchors", &[3, 3, 2]), None);
        assert_eq!(recipe_range("model.24.m.0.bias", &[75]), Some((-0.5, 0.5)));
        let (lo, hi) = recipe_range("model.0.conv.weight", &[16, 3, 6, 6]).unwrap();
        assert!((hi - (3.0f64 / 108.0).sqrt()).abs() < 1e-15 && lo == -hi);
        let v = recipe_uniform("x", 1000, -1.0, 1.0);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(v.iter().sum::<f32>().abs() < 60.0);
    }
}
