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
use q2_yolo::Targets;

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
        let mut c = match &self.config {
            Some(p) => TrainConfig::load(p)?,
            None => TrainConfig::default(),
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
}

impl RunFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            config: dir.join("config.toml"),
            metrics: dir.join("metrics.jsonl"),
            ckpt: dir.join("last.ckpt.safetensors"),
            last: dir.join("last.safetensors"),
            best: dir.join("best.safetensors"),
        }
    }
}

/// The final result of a run.
#[derive(Debug, serde::Serialize)]
pub struct TrainSummary {
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    pub best_fitness: Option<f64>,
    pub last: Option<validate::ValMetrics>,
    pub out: PathBuf,
}

fn data_err(e: q2_data::DataError) -> anyhow::Error {
    InputError(e.to_string()).into()
}

/// `q2 train`.
pub fn train_cmd(args: TrainArgs) -> Result<()> {
    let files = RunFiles::new(&args.out);
    let cfg = if args.resume {
        if args.overrides_given() {
            bail!(InputError("--resume continues a run with its own config.toml; pass only --out (and --threads)".into()));
        }
        if !files.ckpt.is_file() {
            bail!(InputError(format!("--resume: {} has no checkpoint to resume from", files.ckpt.display())));
        }
        TrainConfig::load(&files.config)?
    } else {
        let cfg = args.resolve()?;
        if files.ckpt.exists() && !args.force {
            bail!(InputError(format!("{} already holds a run; pass --resume to continue it or --force to replace it", args.out.display())));
        }
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        for f in [&files.ckpt, &files.metrics, &files.last, &files.best] {
            let _ = std::fs::remove_file(f);
        }
        q2_nn::fsutil::write_atomic(&files.config, cfg.to_toml().as_bytes())?;
        cfg
    };
    let summary = run(&cfg, &files, args.resume, !args.json, args.stop_after)?;
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

/// Runs (or resumes) the training described by `cfg` in `files`.
pub fn run(cfg: &TrainConfig, files: &RunFiles, resume: bool, progress: bool, stop_after: Option<usize>) -> Result<TrainSummary> {
    let device = Device::Cpu;
    let hyp = Hyp::resolve(&cfg.hyp).map_err(data_err)?;
    let dc = DataConfig::discover(&cfg.data, None).map_err(data_err)?;
    let scan = ScanOptions { on_error: OnError::Fail, progress };
    let train_ds = dc.read(Split::Train, &scan).map_err(data_err)?;
    let val_ds = dc.read(Split::Val, &scan).map_err(data_err)?;
    let nc = train_ds.names.len();

    let model = glue::build_model(&cfg.model, nc, cfg.seed, &device)?;
    if let Some(w) = &cfg.weights {
        glue::load_weights(model.as_ref(), w)?;
    }
    let ema_model = glue::build_model(&cfg.model, nc, cfg.seed, &device)?;
    let loss = glue::Loss::new(model.as_ref(), &hyp, cfg)?;

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
        keep_epochs_before(&files.metrics, meta.epochs_done)?;
    }

    let params: Vec<candle_core::Var> = model.store().trainable().map(|(_, e)| e.var.clone()).collect();
    let mut last_val = None;
    let end = stop_after.map_or(cfg.epochs, |n| (meta.epochs_done + n).min(cfg.epochs));
    for epoch in meta.epochs_done..end {
        let t0 = Instant::now();
        let bar = progress_bar(progress, nb as u64, epoch, cfg.epochs);
        let mut sums = [0f64; 3];
        let mut seen = 0usize;
        let mut it = loader.epoch(epoch as u64);
        for i in 0..nb {
            let Some(b) = it.next() else { break };
            let b = b.map_err(data_err)?;
            let ni = meta.ni;
            let p = sched.apply(ni, epoch, &mut opt);
            let x = validate::images_tensor(&b, &device)?;
            let targets = Targets {
                image: b.targets.iter().map(|t| t[0] as usize).collect(),
                class: b.targets.iter().map(|t| t[1] as usize).collect(),
                xywhn: b.targets.iter().map(|t| [t[2], t[3], t[4], t[5]]).collect(),
            };
            let stop = |what: &str| {
                let last_good = if files.ckpt.is_file() {
                    format!("The last good state is {} (after epoch {}); `--resume` continues from it.", files.ckpt.display(), meta.epochs_done)
                } else {
                    "No epoch had completed, so there is no checkpoint yet.".to_string()
                };
                format!("epoch {epoch}, iteration {ni}: {what}; stopped without a step. {last_good}")
            };
            let out = model.forward(&x, Mode::Train).with_context(|| stop("the forward pass failed"))?;
            let (total, items) = loss.compute(&out, &targets, b.batch_size).with_context(|| stop("the loss failed"))?;
            let total_v = total.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !total_v.is_finite() || items.iter().any(|v| !v.is_finite()) {
                bail!(stop(&format!("the loss is not finite ({total_v}; items {items:?})")));
            }
            let grads = total.backward()?;
            acc.add(params.iter(), &grads)?;
            drop(grads);
            meta.ni += 1;
            if meta.ni - meta.last_opt_step >= p.accumulate {
                acc.clip_grad_norm(cfg.clip_grad)?;
                opt.step(&acc)?;
                acc.clear();
                ema.update(model.store())?;
                meta.last_opt_step = meta.ni;
            }
            for (s, v) in sums.iter_mut().zip(items) {
                *s += v as f64;
            }
            seen += 1;
            if let Some(bar) = &bar {
                let n = seen as f64;
                bar.set_message(format!("{} {:.4} {:.4} {:.4} lr {:.5}", loss.item_names().join("/"), sums[0] / n, sums[1] / n, sums[2] / n, p.lr[1]));
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
        if let Some(v) = &val {
            line["val"] = serde_json::to_value(v)?;
            line["fitness"] = v.fitness().into();
            tracing::info!("epoch {epoch}: val mAP50 {:.4} mAP50-95 {:.4} ({} images, {:.1} s)", v.map50, v.map50_95, v.images, v.seconds);
        }
        // The metrics line before the checkpoint: a resume drops lines of epochs the checkpoint
        // does not contain, so a kill in between never duplicates or loses a line.
        append_line(&files.metrics, &line)?;
        checkpoint::save(&files.ckpt, model.store(), &ema, &opt, &acc, &meta)?;
        if val.is_some() {
            last_val = val;
        }
    }
    Ok(TrainSummary {
        epochs_done: meta.epochs_done,
        best_epoch: meta.best_epoch,
        best_fitness: meta.best_fitness,
        last: last_val,
        out: files.config.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

/// Rewrites `metrics.jsonl` keeping the lines of epochs before `n` (atomically).
fn keep_epochs_before(path: &Path, n: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["epoch"].as_u64()).is_some_and(|e| (e as usize) < n))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(q2_nn::fsutil::write_atomic(path, kept.as_bytes())?)
}

fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{v}").with_context(|| format!("writing {}", path.display()))?;
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
