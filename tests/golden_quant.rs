//! Golden vectors: every quantizer against the independent PyTorch reference
//! (`tools/make_fixtures.py` → `tests/fixtures/quant_golden.json`, `quant_init.json`).

use q2::quant::case::evaluate;
use serde_json::Value;

fn load(name: &str) -> Value {
    let p = q2::fixture(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        other => panic!("not numeric: {other}"),
    }
}

/// |got − want| ≤ rel · max|want| + abs, element by element.
fn close(case: &str, what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{case}: {what}: {} values, expected {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if (g - w).abs() > rel * scale + abs {
            return Err(format!("{case}: {what}[{i}] = {g}, expected {w} (scale {scale})"));
        }
    }
    Ok(())
}

#[test]
fn quantizers_match_pytorch_reference() {
    let fx = load("quant_golden.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 60);
    let mut failures = vec![];
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let got = evaluate(&c["input"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &c["expected"];
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                failures.push(e)
            }
        };
        // Forward values are bit-exact up to float32 rounding of the last operation.
        check(close(name, "y", &flat(&got["y"]), &flat(&want["y"]), 1e-6, 1e-7));
        check(close(name, "grad_x", &flat(&got["grad_x"]), &flat(&want["grad_x"]), 1e-5, 1e-7));
        let (gp, wp) = (got["grad_params"].as_object().unwrap(), want["grad_params"].as_object().unwrap());
        assert_eq!(gp.keys().collect::<Vec<_>>(), wp.keys().collect::<Vec<_>>(), "{name}: parameter names");
        for (k, w) in wp {
            check(close(name, &format!("grad_params.{k}"), &flat(&gp[k]), &flat(w), 1e-5, 1e-7));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn data_driven_initialisation_matches_reference() {
    use candle_core::{Device, Tensor};
    use q2::nn::ParamStore;
    use q2::quant::{build, InitMode, Method, QuantSpec};

    let fx = load("quant_init.json");
    for c in fx["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let method = Method::parse(c["method"].as_str().unwrap()).unwrap();
        let signed = c["signed"].as_bool().unwrap();
        let groups = c["groups"].as_u64().unwrap() as usize;
        let init = match (method, signed) {
            (Method::N2uq, false) => InitMode::Calibrated,
            _ => InitMode::Default,
        };
        let spec = QuantSpec { method, bits: c["bits"].as_u64().unwrap() as u32, signed, per_channel: groups > 1, init };
        let x: Vec<f32> = flat(&c["x"]).into_iter().map(|v| v as f32).collect();
        let n = x.len();
        let t = Tensor::from_vec(x, (groups, n / groups), &Device::Cpu).unwrap();
        let mut store = ParamStore::new(Device::Cpu, 0);
        let q = build(&spec, groups, &mut store.scope("q")).unwrap();
        q.init_from(&t).unwrap();
        for (full, var) in q.params() {
            let leaf = full.rsplit('.').next().unwrap();
            let got: Vec<f64> = var.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect();
            let want = flat(&c["expected"][leaf]);
            close(name, leaf, &got, &want, 1e-6, 1e-9).unwrap();
        }
    }
}
