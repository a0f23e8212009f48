//! `q2 train`: full-precision training of a YOLO detector with YOLOv5 `train.py`'s recipe — SGD
//! (Nesterov) over YOLOv5's three parameter groups, warm-up then linear or one-cycle LR, weight
//! EMA, gradient accumulation to the nominal batch 64, gradient-norm clipping at 10, periodic
//! validation on the EMA weights, `best`/`last` weights and a resumable checkpoint written
//! atomically after every epoch, a progress bar, and metrics as JSONL.
//!
//! Files in `--out DIR`: `config.toml` (the resolved configuration), `metrics.jsonl` (one line per
//! epoch), `last.ckpt.safetensors` (the full training state), `last.safetensors` and
//! `best.safetensors` (EMA weights with ultralytics state_dict names).
//!
//! Determinism: the loader's draws depend only on (seed, epoch, index), parameters are initialised
//! per name from the seed, and every kernel reduces in a fixed order, so a run, and a run resumed
//! from a checkpoint, give the same numbers on the same machine and thread count.

pub mod checkpoint;
pub mod config;
pub mod glue;
pub mod qat;
pub mod validate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use q2_data::{DataConfig, Hyp, Loader, LoaderConfig, OnError, ScanOptions, Split};
use q2_nn::ema::ModelEma;
use q2_nn::optim::{yolov5_groups, GradAccumulator, Optimizer, Sgd};
use q2_nn::sched::{LrShape, Yolov5Schedule};
use q2_nn::Mode;

use crate::cli::InputError;
pub use config::TrainConfig;

/// `q2 train` arguments: a configuration file and flags overriding it.
#[derive(clap::Args, Debug, Default)]
pub struct TrainArgs {
    /// TOML file with any of the keys below (flags win).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Output folder of the run.
    #[arg(long, value_name = "DIR", default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its config.toml is used; other flags are refused).
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing run in --out.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub model: Option<String>,
    /// Dataset folder or data.yaml.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub img: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub nbs: Option<usize>,
    #[arg(long)]
    pub workers: Option<usize>,
    /// `scratch-low`, `VOC` or a YAML/TOML file.
    #[arg(long)]
    pub hyp: Option<String>,
    #[arg(long)]
    pub cos_lr: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub val_every: Option<usize>,
    /// Stop every epoch after this many batches (smoke runs).
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Validate on at most this many images.
    #[arg(long)]
    pub max_val_images: Option<usize>,
    /// Initial weights (safetensors, ultralytics names).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Cache decoded training images in RAM.
    #[arg(long)]
    pub cache: bool,
    /// Print one JSON object (the final metrics) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many epochs in this invocation; the run stays resumable (`--resume`).
    /// Not part of the configuration.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
}

impl TrainArgs {
    fn overrides_given(&self) -> bool {
        self.config.is_some()
            || self.model.is_some()
            || self.data.is_some()
            || self.img.is_some()
            || self.epochs.is_some()
            || self.batch.is_some()
            || self.nbs.is_some()
            || self.workers.is_some()
            || self.hyp.is_some()
            || self.cos_lr
            || self.seed.is_some()
            || self.val_every.is_some()
            || self.max_batches.is_some()
            || self.max_val_images.is_some()
            || self.weights.is_some()
            || self.cache
    }

    /// The configuration: file, then flags.
    pub fn resolve(&self) -> Result<TrainConfig> {
        self.resolve_over(&TrainConfig::default())
    }

    /// The configuration: `base`, then the file's keys, then flags.
    pub fn resolve_over(&self, base: &TrainConfig) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::load_over(p, base)?,
            None => base.clone(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(model, data, img, epochs, batch, nbs, workers, hyp, seed, val_every, max_batches, max_val_images);
        if let Some(w) = &self.weights {
            c.weights = Some(w.clone());
        }
        c.cos_lr |= self.cos_lr;
        c.cache |= self.cache;
        c.validate()?;
        Ok(c)
    }
}

/// Files of a run.
pub struct RunFiles {
    pub config: PathBuf,
    pub metrics: PathBuf,
    pub ckpt: PathBuf,
    pub last: PathBuf,
    pub best: PathBuf,
    pub telemetry: PathBuf,
    pub summary: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            config: dir.join("config.toml"),
            metrics: dir.join("metrics.jsonl"),
            ckpt: dir.join("last.ckpt.safetensors"),
            last: dir.join("last.safetensors"),
            best: dir.join("best.safetensors"),
            telemetry: dir.join("telemetry.jsonl"),
            summary: dir.join("summary.json"),
        }
    }

    /// Every file a run writes (removed when a run is replaced with `--force`).
    pub fn all(&self) -> [&PathBuf; 6] {
        [&self.ckpt, &self.metrics, &self.last, &self.best, &self.telemetry, &self.summary]
    }
}

/// The final result of a run (also written as `summary.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_fitness: Option<f64>,
    /// Validation metrics of the best epoch.
    #[serde(default)]
    pub best: Option<validate::ValMetrics>,
    pub last: Option<validate::ValMetrics>,
    /// The run ended early: no better fitness for `patience` epochs.
    #[serde(default)]
    pub stopped_early: bool,
    /// Training plus validation seconds up to the end of the best epoch (the paper's
    /// time-to-convergence under validation-based early stopping, Table 4).
    #[serde(default)]
    pub time_to_best_s: Option<f64>,
    /// Seconds of training and validation in all epochs.
    #[serde(default)]
    pub total_s: f64,
    pub out: PathBuf,
}

fn data_err(e: q2_data::DataError) -> anyhow::Error {
    InputError(e.to_string()).into()
}

/// `q2 train`.
pub fn train_cmd(args: TrainArgs) -> Result<()> {
    let cfg = if args.resume { None } else { Some(args.resolve()?) };
    let summary = start(&args, cfg)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if let Some(m) = &summary.last {
        println!(
            "done: {} epochs; last val mAP50 {:.4}, mAP50-95 {:.4}; best fitness {:.4} (epoch {}); weights in {}",
            summary.epochs_done,
            m.map50,
            m.map50_95,
            summary.best_fitness.unwrap_or(f64::NAN),
            summary.best_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            summary.out.display()
        );
    }
    Ok(())
}

/// Starts the run `cfg` in `args.out` (replacing one there only with `--force`), or resumes the
/// run there when `cfg` is `None` (`--resume`, which takes no other flags).
pub fn start(args: &TrainArgs, cfg: Option<TrainConfig>) -> Result<TrainSummary> {
    let files = RunFiles::new(&args.out);
    let resume = cfg.is_none();
    let cfg = match cfg {
        None => {
            if args.overrides_given() {
                bail!(InputError("--resume continues a run with its own config.toml; pass only --out (and --threads)".into()));
            }
            if !files.ckpt.is_file() {
                bail!(InputError(format!("--resume: {} has no checkpoint to resume from", files.ckpt.display())));
            }
            TrainConfig::load(&files.config)?
        }
        Some(cfg) => {
            if files.ckpt.exists() && !args.force {
                bail!(InputError(format!("{} already holds a run; pass --resume to continue it or --force to replace it", args.out.display())));
            }
            std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            for f in files.all() {
                let _ = std::fs::remove_file(f);
            }
            q2_nn::fsutil::write_atomic(&files.config, cfg.to_toml().as_bytes())?;
            cfg
        }
    };
    run(&cfg, &files, resume, !args.json, args.stop_after)
}

/// Runs (or resumes) the training described by `cfg` in `files`.
pub fn run(cfg: &TrainConfig, files: &RunFiles, resume: bool, progress: bool, stop_after: Option<usize>) -> Result<TrainSummary> {
    let device = Device::Cpu;
    let hyp = Hyp::resolve(&cfg.hyp).map_err(data_err)?;
    let dc = DataConfig::discover(&cfg.data, None).map_err(data_err)?;
    let scan = ScanOptions { on_error: OnError::Fail, progress };
    let train_ds = dc.read(Split::Train, &scan).map_err(data_err)?;
    let val_ds = dc.read(Split::Val, &scan).map_err(data_err)?;
    let nc = train_ds.names.len();

    let (model, nodes) = qat::build(cfg, nc, &device)?;
    // From scratch nothing is inserted; from a checkpoint, the nodes it has no entries for.
    let to_insert = match &cfg.weights {
        Some(w) => qat::load_weights(model.as_ref(), &nodes, w)?,
        None => vec![],
    };
    let (ema_model, _) = qat::build(cfg, nc, &device)?;
    let loss = glue::Loss::new(model.as_ref(), &hyp, cfg)?;
    let teacher = match &cfg.ada {
        Some(ada) => {
            let path = cfg.teacher.as_ref().or(cfg.weights.as_ref()).ok_or_else(|| InputError("Q-ADA needs a teacher: pass --teacher or --weights".into()))?;
            Some(qat::Teacher::load(cfg, ada, nc, path, &device)?)
        }
        None => None,
    };
    if !resume && (cfg.quant.is_some() || nodes.iter().any(|n| n.balances())) {
        // From FP weights: Q-GBFusion's calibrated insertion, then the quantizers' initialisation.
        let n = cfg.quant.as_ref().map_or(32, |q| q.calib_images);
        let x = qat::calibration_batch(&train_ds, cfg.img, n, cfg.workers, &device)?;
        let used = qat::calibrate(model.as_ref(), &to_insert, &x)?;
        for (node, st) in used {
            tracing::info!("Q-GBFusion node {node}: inserted with μ̄ {:.4}, σ̄ {:.4} ({} locations)", st.mu_bar(), st.sigma_bar(0.0), st.n);
        }
    }

    let mut lc = LoaderConfig::train(cfg.img, cfg.batch, cfg.workers, hyp.clone(), cfg.seed);
    lc.cache_images = cfg.cache;
    lc.progress = progress;
    let loader = Loader::new(train_ds, lc).map_err(data_err)?;
    let mut vc = LoaderConfig::val(cfg.img, cfg.batch, cfg.workers);
    vc.progress = false;
    let val_images = if cfg.max_val_images == 0 { val_ds.len() } else { cfg.max_val_images.min(val_ds.len()) };
    let val_loader = Loader::new(val_ds, vc).map_err(data_err)?;

    let nb = if cfg.max_batches == 0 { loader.len() } else { cfg.max_batches.min(loader.len()) };
    let accumulate = ((cfg.nbs as f64 / cfg.batch as f64).round_ties_even() as usize).max(1);
    let weight_decay = hyp.weight_decay * (cfg.batch * accumulate) as f64 / cfg.nbs as f64;
    let mut opt = Sgd::new(yolov5_groups(model.store(), hyp.lr0, hyp.momentum, weight_decay), true);
    let sched = Yolov5Schedule {
        lr0: hyp.lr0,
        lrf: hyp.lrf,
        momentum: hyp.momentum,
        warmup_epochs: hyp.warmup_epochs,
        warmup_momentum: hyp.warmup_momentum,
        warmup_bias_lr: hyp.warmup_bias_lr,
        epochs: cfg.epochs,
        nb,
        batch_size: cfg.batch,
        nbs: cfg.nbs,
        shape: if cfg.cos_lr { LrShape::OneCycle } else { LrShape::Linear },
    };
    let mut ema = ModelEma::new(model.store(), ModelEma::DECAY, ModelEma::TAU)?;
    let mut acc = GradAccumulator::new();
    let mut meta = checkpoint::Meta {
        epochs_done: 0,
        ni: 0,
        last_opt_step: 0,
        best_fitness: None,
        best_epoch: None,
        ema_updates: 0,
        stopped: false,
        config: cfg.to_toml(),
    };
    if resume {
        let l = checkpoint::load(&files.ckpt, &device)?;
        if l.meta.config != cfg.to_toml() {
            bail!(InputError(format!("{}: the checkpoint was written with another configuration than {}", files.ckpt.display(), files.config.display())));
        }
        meta = l.meta.clone();
        checkpoint::restore(l, &files.ckpt, model.store(), &mut ema, &mut opt, &mut acc)?;
        tracing::info!("resuming {} after epoch {} (iteration {})", files.ckpt.display(), meta.epochs_done, meta.ni);
        keep_lines(&files.metrics, |v| v["epoch"].as_u64().is_some_and(|e| (e as usize) < meta.epochs_done))?;
        keep_lines(&files.telemetry, |v| v["ni"].as_u64().is_some_and(|i| (i as usize) < meta.ni))?;
    }

    let params: Vec<candle_core::Var> = model.store().trainable().map(|(_, e)| e.var.clone()).collect();
    let end = if meta.stopped { meta.epochs_done } else { stop_after.map_or(cfg.epochs, |n| (meta.epochs_done + n).min(cfg.epochs)) };
    for epoch in meta.epochs_done..end {
        let t0 = Instant::now();
        let bar = progress_bar(progress, nb as u64, epoch, cfg.epochs);
        let mut sums = [0f64; 4];
        let mut seen = 0usize;
        let mut telemetry = String::new();
        let mut it = loader.epoch(epoch as u64);
        for i in 0..nb {
            let Some(b) = it.next() else { break };
            let b = b.map_err(data_err)?;
            let ni = meta.ni;
            let p = sched.apply(ni, epoch, &mut opt);
            let x = validate::images_tensor(&b, &device)?;
            let targets = validate::targets(&b);
            let stop = |what: &str| {
                let last_good = if files.ckpt.is_file() {
                    format!("The last good state is {} (after epoch {}); `--resume` continues from it.", files.ckpt.display(), meta.epochs_done)
                } else {
                    "No epoch had completed, so there is no checkpoint yet.".to_string()
                };
                format!("epoch {epoch}, iteration {ni}: {what}; stopped without a step. {last_good}")
            };
            let record = cfg.telemetry_every > 0 && ni % cfg.telemetry_every == 0;
            if record && cfg.telemetry_mag_every > 0 && ni % cfg.telemetry_mag_every == 0 {
                for n in &nodes {
                    n.request_magnitudes()?;
                }
            }
            let (feats, out) = model.forward_features(&x, Mode::Train).with_context(|| stop("the forward pass failed"))?;
            let (mut total, items) = loss.compute(&out, &targets, b.batch_size).with_context(|| stop("the loss failed"))?;
            let mut ada_item = 0f32;
            if let Some(t) = &teacher {
                let l = t.loss(model.as_ref(), &feats, &x).with_context(|| stop("the Q-ADA loss failed"))?;
                // The detection loss is the batch sum (·bs) of per-image terms; Q-ADA is per image.
                ada_item = l.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
                total = (total + (l * b.batch_size as f64)?)?;
            }
            let total_v = total.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !total_v.is_finite() || items.iter().any(|v| !v.is_finite()) || !ada_item.is_finite() {
                bail!(stop(&format!("the loss is not finite ({total_v}; items {items:?}, Q-ADA {ada_item})")));
            }
            let grads = total.backward()?;
            acc.add(params.iter(), &grads)?;
            drop(grads);
            // Q-GBFusion: the branch energies of this backward pass into the EMA (Eq. 8)...
            let mut recs = Vec::with_capacity(nodes.len());
            for n in &nodes {
                if let Some(r) = n.observe()? {
                    recs.push(r);
                }
            }
            meta.ni += 1;
            if meta.ni - meta.last_opt_step >= p.accumulate {
                // ...and the feedback law (Eq. 9–10) after the backward, before the optimizer step.
                for (n, r) in nodes.iter().zip(recs.iter_mut()) {
                    r.lam = n.control()?;
                }
                acc.clip_grad_norm(cfg.clip_grad)?;
                opt.step(&acc)?;
                acc.clear();
                ema.update(model.store())?;
                meta.last_opt_step = meta.ni;
            }
            if record && !recs.is_empty() {
                telemetry.push_str(&serde_json::to_string(&qat::StepRecord { ni, epoch, nodes: &recs })?);
                telemetry.push('\n');
            }
            for (s, v) in sums.iter_mut().zip(items.iter().chain([&ada_item])) {
                *s += *v as f64;
            }
            seen += 1;
            if let Some(bar) = &bar {
                let n = seen as f64;
                let ada = if teacher.is_some() { format!(" ada {:.5}", sums[3] / n) } else { String::new() };
                bar.set_message(format!("{} {:.4} {:.4} {:.4}{ada} lr {:.5}", loss.item_names().join("/"), sums[0] / n, sums[1] / n, sums[2] / n, p.lr[1]));
                bar.set_position(i as u64 + 1);
            }
            it.recycle(b);
        }
        drop(it);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let train_s = t0.elapsed().as_secs_f64();
        meta.epochs_done = epoch + 1;
        meta.ema_updates = ema.updates;
        let last_epoch = epoch + 1 == cfg.epochs;
        let val = if (epoch + 1) % cfg.val_every == 0 || last_epoch {
            ema.copy_to(ema_model.store())?;
            Some(validate::validate(ema_model.as_ref(), &val_loader, val_images, &device)?)
        } else {
            None
        };
        // Weights first, the checkpoint last: a kill in between leaves the previous checkpoint,
        // which resumes into this same epoch.
        ema.copy_to(ema_model.store())?;
        ema_model.store().save_safetensors(&files.last)?;
        if let Some(v) = &val {
            if meta.best_fitness.is_none_or(|b| v.fitness() > b) {
                meta.best_fitness = Some(v.fitness());
                meta.best_epoch = Some(epoch);
                ema_model.store().save_safetensors(&files.best)?;
            }
            if cfg.patience > 0 && meta.best_epoch.is_some_and(|b| epoch - b >= cfg.patience) {
                meta.stopped = true;
                tracing::info!("early stopping after epoch {epoch}: no better fitness since epoch {}", meta.best_epoch.unwrap_or(0));
            }
        }
        let n = seen.max(1) as f64;
        let names = loss.item_names();
        let mut line = serde_json::json!({
            "epoch": epoch,
            "iterations": meta.ni,
            "lr": opt.groups().iter().map(|g| g.lr).collect::<Vec<_>>(),
            "train_s": train_s,
            "img_per_s": (seen * cfg.batch) as f64 / train_s,
            names[0]: sums[0] / n, names[1]: sums[1] / n, names[2]: sums[2] / n,
        });
        if teacher.is_some() {
            line["ada"] = (sums[3] / n).into();
        }
        if let Some(v) = &val {
            line["val"] = serde_json::to_value(v)?;
            line["fitness"] = v.fitness().into();
            tracing::info!("epoch {epoch}: val mAP50 {:.4} mAP50-95 {:.4} ({} images, {:.1} s)", v.map50, v.map50_95, v.images, v.seconds);
        }
        // The metrics and telemetry lines before the checkpoint: a resume drops lines the
        // checkpoint does not contain, so a kill in between never duplicates or loses a line.
        append_line(&files.metrics, &line)?;
        append_text(&files.telemetry, &telemetry)?;
        checkpoint::save(&files.ckpt, model.store(), &ema, &opt, &acc, &meta)?;
        if meta.stopped {
            break;
        }
    }
    let summary = summarize(files, &meta)?;
    q2_nn::fsutil::write_atomic(&files.summary, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// The run's summary from its metrics lines and checkpoint counters.
fn summarize(files: &RunFiles, meta: &checkpoint::Meta) -> Result<TrainSummary> {
    let text = std::fs::read_to_string(&files.metrics).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let secs = |l: &serde_json::Value| l["train_s"].as_f64().unwrap_or(0.0) + l["val"]["seconds"].as_f64().unwrap_or(0.0);
    let val_of = |l: &serde_json::Value| serde_json::from_value::<validate::ValMetrics>(l["val"].clone()).ok();
    let best_line = meta.best_epoch.and_then(|b| lines.iter().find(|l| l["epoch"].as_u64() == Some(b as u64)));
    Ok(TrainSummary {
        epochs_done: meta.epochs_done,
        best_epoch: meta.best_epoch,
        best_fitness: meta.best_fitness,
        best: best_line.and_then(val_of),
        last: lines.iter().rev().find_map(val_of),
        stopped_early: meta.stopped,
        time_to_best_s: meta.best_epoch.map(|b| lines.iter().filter(|l| l["epoch"].as_u64().is_some_and(|e| e <= b as u64)).map(secs).sum()),
        total_s: lines.iter().map(secs).sum(),
        out: files.config.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

/// Rewrites a JSONL file keeping the lines `keep` accepts (atomically).
fn keep_lines(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().is_some_and(|v| keep(&v)))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(q2_nn::fsutil::write_atomic(path, kept.as_bytes())?)
}

fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    append_text(path, &format!("{v}\n"))
}

fn append_text(path: &Path, text: &str) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_data().map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn progress_bar(show: bool, len: u64, epoch: usize, epochs: usize) -> Option<indicatif::ProgressBar> {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    Some(bar)
}
