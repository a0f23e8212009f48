//! `q2 bench`: the time of one full training step of a YOLO model (forward in train mode, the
//! model's own loss, backward, SGD Nesterov step) on a fixed seeded batch of random images with
//! 2–6 random boxes each; 2 warm-up steps, then the median of `--steps`. Stdout with `--json`:
//! `{"ms_per_step", "img_per_s", "peak_rss_mb", "fwd_ms", "bwd_ms"}` (the ARCHITECTURE.md contract).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use q2_nn::optim::{yolov5_groups, Optimizer, Sgd};
use q2_nn::{profile, Mode};
use q2_quant::{Method, QuantPlan};
use q2_yolo::Targets;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cli::InputError;
use crate::train::{glue, TrainConfig};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// yolov5n, yolov5s, yolo11n, yolo11s, ...
    #[arg(long, default_value = "yolov5n")]
    pub model: String,
    #[arg(long, default_value_t = 256)]
    pub img: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// fp, or qat (every conv's weight and input fake-quantized; first conv and Detect convs at 8 bits).
    #[arg(long, default_value = "fp")]
    pub mode: String,
    /// Quantizer in qat mode: lsq, lsq_plus, pact, n2uq, minmax.
    #[arg(long, default_value = "lsq")]
    pub quant: String,
    /// Weight and activation bits in qat mode.
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Number of classes of the model.
    #[arg(long, default_value_t = 20)]
    pub nc: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    /// Also time each CPU kernel (conv forward / input grad / weight grad, BatchNorm, fake-quant)
    /// and report per-step milliseconds under `profile_ms`.
    #[arg(long)]
    pub profile: bool,
    /// Run the standard table instead: yolov5n and yolo11n, FP and QAT (--quant, --bits), each in
    /// its own process (for its peak memory), with this --img, --batch and --steps.
    #[arg(long, conflicts_with_all = ["model", "mode", "json", "profile"])]
    pub table: bool,
}

/// Peak resident memory of this process in MB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A seeded batch: uniform random pixels and 2–6 random boxes per image.
fn batch(b: usize, img: usize, nc: usize, seed: u64, dev: &Device) -> Result<(Tensor, Targets)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let px: Vec<f32> = (0..b * 3 * img * img).map(|_| rng.random::<f32>()).collect();
    let x = Tensor::from_vec(px, (b, 3, img, img), dev)?;
    let mut t = Targets::default();
    for i in 0..b {
        for _ in 0..rng.random_range(2..=6) {
            let (w, h) = (rng.random_range(0.03..0.6f32), rng.random_range(0.03..0.6f32));
            t.image.push(i);
            t.class.push(rng.random_range(0..nc));
            t.xywhn.push([rng.random_range(w / 2.0..1.0 - w / 2.0), rng.random_range(h / 2.0..1.0 - h / 2.0), w, h]);
        }
    }
    Ok((x, t))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.steps == 0 || args.batch == 0 || args.img == 0 || args.img % 32 != 0 {
        bail!(InputError("--steps and --batch must be ≥ 1 and --img a positive multiple of 32".into()));
    }
    if args.table {
        return table(&args);
    }
    let dev = Device::Cpu;
    let plan = match args.mode.as_str() {
        "fp" => None,
        "qat" => {
            let method: Method = serde_json::from_value(serde_json::Value::String(args.quant.clone()))
                .map_err(|_| InputError(format!("--quant must be lsq, lsq_plus, pact, n2uq or minmax, got `{}`", args.quant)))?;
            if !(2..=8).contains(&args.bits) {
                bail!(InputError(format!("--bits must be in 2..=8, got {}", args.bits)));
            }
            Some(QuantPlan::new(method, args.bits, args.bits))
        }
        m => bail!(InputError(format!("--mode must be fp or qat, got `{m}`"))),
    };
    let model = glue::build_model_with(&args.model, args.nc, args.seed, &dev, plan.as_ref(), &q2_fusion::PlainConcat)?;
    let (x, targets) = batch(args.batch, args.img, args.nc, args.seed, &dev)?;
    if plan.is_some() {
        model.calibrate(&x)?;
    }
    let hyp = q2_data::Hyp::scratch_low();
    let cfg = TrainConfig { img: args.img, batch: args.batch, ..TrainConfig::default() };
    let loss = glue::Loss::new(model.as_ref(), &hyp, &cfg)?;
    let mut opt = Sgd::new(yolov5_groups(model.store(), 0.001, 0.937, 5e-4), true);
    let (mut step_ms, mut fwd_ms, mut bwd_ms, mut loss_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.steps + 2 {
        if i == 2 && args.profile {
            profile::reset();
            profile::enable(true);
        }
        let t0 = Instant::now();
        let out = model.forward(&x, Mode::Train)?;
        let tl = Instant::now();
        let (total, _) = loss.compute(&out, &targets, args.batch)?;
        let _ = total.to_vec0::<f32>()?;
        let t1 = Instant::now();
        let grads = total.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        if i >= 2 {
            step_ms.push((t3 - t0).as_secs_f64() * 1e3);
            fwd_ms.push((t1 - t0).as_secs_f64() * 1e3);
            bwd_ms.push((t2 - t1).as_secs_f64() * 1e3);
            loss_ms.push((t1 - tl).as_secs_f64() * 1e3);
        }
        let _ = opt.groups();
    }
    profile::enable(false);
    let ms = median(step_ms);
    let mut v = serde_json::json!({
        "ms_per_step": ms,
        "img_per_s": args.batch as f64 * 1e3 / ms,
        "peak_rss_mb": peak_rss_mb(),
        "fwd_ms": median(fwd_ms),
        "bwd_ms": median(bwd_ms),
        "model": args.model, "img": args.img, "batch": args.batch, "mode": args.mode,
        "threads": rayon::current_num_threads(),
        "kernels": q2_nn::kernels::kernels().to_string(),
        "loss_ms": median(loss_ms),
    });
    if args.profile {
        let per_step: serde_json::Map<String, serde_json::Value> =
            profile::snapshot().into_iter().map(|(op, t)| (op.key().to_string(), (t / args.steps as f64).into())).collect();
        v["profile_ms"] = per_step.into();
    }
    if args.json {
        println!("{v}");
    } else {
        println!(
            "{} {} img {} batch {}: {:.1} ms/step ({:.2} img/s; forward+loss {:.1} ms, backward {:.1} ms), peak RSS {:.0} MB, {} threads",
            args.model, args.mode, args.img, args.batch, ms, v["img_per_s"].as_f64().unwrap_or(0.0), v["fwd_ms"].as_f64().unwrap_or(0.0), v["bwd_ms"].as_f64().unwrap_or(0.0), v["peak_rss_mb"].as_f64().unwrap_or(0.0), rayon::current_num_threads()
        );
        if let Some(p) = v["profile_ms"].as_object() {
            for (k, t) in p {
                println!("  {k:<20} {:>8.1} ms/step", t.as_f64().unwrap_or(0.0));
            }
        }
    }
    Ok(())
}

/// `q2 bench --table`: the standard step benchmark, one child process per row.
fn table(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for model in ["yolov5n", "yolo11n"] {
        for mode in ["fp", "qat"] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["--threads", &rayon::current_num_threads().to_string()]);
            cmd.args(["--kernels", &q2_nn::kernels::kernels().to_string()]);
            cmd.args(["bench", "--json", "--model", model, "--mode", mode]);
            cmd.args(["--img", &args.img.to_string(), "--batch", &args.batch.to_string(), "--steps", &args.steps.to_string()]);
            cmd.args(["--quant", &args.quant, "--bits", &args.bits.to_string(), "--nc", &args.nc.to_string(), "--seed", &args.seed.to_string()]);
            let out = cmd.output()?;
            if !out.status.success() {
                bail!("q2 bench --model {model} --mode {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            rows.push((model, mode, v));
        }
    }
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "q2 training step, img {} batch {}, {} threads, {} kernels, QAT = {} W{}A{} (median of {} steps)\n",
        args.img,
        args.batch,
        rayon::current_num_threads(),
        q2_nn::kernels::kernels().to_string(),
        args.quant,
        args.bits,
        args.bits,
        args.steps
    );
    println!("| model | mode | ms/step | img/s | forward+loss ms | backward ms | peak RSS MB | QAT / FP |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (i, (model, mode, v)) in rows.iter().enumerate() {
        let ratio = if *mode == "qat" { format!("{:.2}x", f(v, "ms_per_step") / f(&rows[i - 1].2, "ms_per_step")) } else { String::new() };
        println!(
            "| {model} | {mode} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {ratio} |",
            f(v, "ms_per_step"),
            f(v, "img_per_s"),
            f(v, "fwd_ms"),
            f(v, "bwd_ms"),
            f(v, "peak_rss_mb")
        );
    }
    Ok(())
}
