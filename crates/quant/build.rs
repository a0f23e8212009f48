//! With the `cuda` feature, compiles `kernels/fake_quant.cu` to PTX (`$OUT_DIR/fake_quant.ptx`,
//! embedded by `src/cuda.rs`) with nvcc:
//!
//! ```text
//! nvcc --ptx -arch=compute_${CUDA_COMPUTE_CAP:-90} -O3 --fmad=false
//! ```
//!
//! `--fmad=false` keeps a·b + c as two roundings, as on the CPU, so the GPU's forward results are
//! bit-identical to the CPU kernels'. nvcc is `$CUDA_ROOT/bin/nvcc` (or `$CUDA_PATH/bin/nvcc`)
//! when that exists, else `nvcc` from PATH; `scripts/cuda-toolkit.sh` provides one.
//! Without the feature this does nothing (CI has no nvcc).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &str = "kernels/fake_quant.cu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={KERNELS}");
    for var in ["CUDA_COMPUTE_CAP", "CUDA_ROOT", "CUDA_PATH", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let cap = compute_cap();
    let nvcc = nvcc();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("fake_quant.ptx");
    let mut cmd = Command::new(&nvcc);
    cmd.args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", "--fmad=false", "-o"]).arg(&out).arg(KERNELS);
    if let Some(ccbin) = env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "q2-quant: cannot run `{}` to compile {KERNELS} for the `cuda` feature: {e}.\n\
             Put nvcc on PATH or set CUDA_ROOT; `scripts/cuda-toolkit.sh` assembles a CUDA 13.0 toolkit \
             (then `source .cuda-toolkit/env.sh`).",
            nvcc.display()
        )
    });
    if !output.status.success() {
        panic!(
            "q2-quant: `{cmd:?}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // nvcc warnings (not errors) are worth seeing.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=nvcc: {line}");
    }
}

/// `CUDA_COMPUTE_CAP` as nvcc wants it ("90", also accepting "9.0" or "sm_90"); 90 by default.
fn compute_cap() -> String {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    let raw = raw.trim().trim_start_matches("sm_").trim_start_matches("compute_").replace('.', "");
    if raw.is_empty() {
        return "90".into();
    }
    let digits: String = raw.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.len() < 2 || !raw[digits.len()..].chars().all(|c| c.is_ascii_lowercase()) {
        panic!("q2-quant: CUDA_COMPUTE_CAP={raw:?} is not a compute capability such as 90");
    }
    raw
}

fn nvcc() -> PathBuf {
    for var in ["CUDA_ROOT", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}
