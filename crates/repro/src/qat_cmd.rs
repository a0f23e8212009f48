//! `q2 qat`, `q2 fold` and `q2 grid`: quantization-aware training from an FP checkpoint with the
//! paper's recipe (hyp.VOC, one-cycle LR, nominal batch 64, validation-based early stopping) and
//! any of {baseline, +Q-GBFusion, +Q-ADA, +both}; LN folding of a finished Q-GBFusion run with the
//! short Adam fine-tune (Table 6); and the quantizer × bit-width × variant grid (Tables 1 and 4).
//! All three reuse `q2 train`'s loop, files, checkpoints and `--resume`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use q2_data::{DataConfig, Hyp, Loader, LoaderConfig, OnError, ScanOptions, Split};
use q2_distill::Divergence;
use q2_fusion::gbf::Energy;
use q2_nn::optim::{yolov5_groups, Adam, Optimizer};
use q2_nn::Mode;
use q2_quant::Method;
use serde::Serialize;

use crate::cli::InputError;
use crate::train::config::QuantConfig;
use crate::train::{self, glue, qat, validate, RunFiles, TrainArgs, TrainConfig, TrainSummary};

/// The comparison arms of the paper (Table 4 and Table 1's "+Ours").
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The quantizer alone.
    Baseline,
    /// + Q-GBFusion.
    Gbf,
    /// + Q-ADA (divergence from `--ada-div`).
    Ada,
    /// + Q-GBFusion + Q-ADA.
    Both,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Gbf => "gbf",
            Variant::Ada => "ada",
            Variant::Both => "both",
        }
    }

    fn gbf(self) -> bool {
        matches!(self, Variant::Gbf | Variant::Both)
    }

    fn ada(self) -> bool {
        matches!(self, Variant::Ada | Variant::Both)
    }
}

fn parse_method(s: &str) -> std::result::Result<Method, String> {
    Method::parse(s).ok_or_else(|| format!("unknown quantizer `{s}`; known: {}", Method::ALL.map(|m| m.name()).join(", ")))
}

/// The QAT options of `q2 qat` and `q2 grid` (flags override the configuration file).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct QatFlags {
    /// Bits of weights and activations (WxAx); --w-bits / --a-bits override.
    #[arg(long)]
    pub bits: Option<u32>,
    #[arg(long)]
    pub w_bits: Option<u32>,
    #[arg(long)]
    pub a_bits: Option<u32>,
    /// Bits of the first conv and of the Detect prediction convs (32: full precision; default 8).
    #[arg(long)]
    pub first_bits: Option<u32>,
    #[arg(long)]
    pub head_bits: Option<u32>,
    /// Per-output-channel weight quantizers (LSQ, LSQ+, MinMax).
    #[arg(long)]
    pub per_channel: bool,
    /// Signed activation grids (LSQ, LSQ+, MinMax): `--act-signed` or `--act-signed false`
    /// (default: signed for LSQ, unsigned otherwise).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub act_signed: Option<bool>,
    /// Images in the calibration batch.
    #[arg(long)]
    pub calib_images: Option<usize>,
    /// Q-ADA divergence: js (Eq. 16) or kl.
    #[arg(long, value_parser = ["js", "kl"])]
    pub ada_div: Option<String>,
    /// Q-ADA loss weight (paper: 0.01).
    #[arg(long)]
    pub ada_weight: Option<f64>,
    /// Q-GBFusion feedback step η (Eq. 10).
    #[arg(long)]
    pub gbf_eta: Option<f64>,
    /// Q-GBFusion EMA momentum β (Eq. 8).
    #[arg(long)]
    pub gbf_beta: Option<f64>,
    /// Balance per-element energies (unequal branch widths, YOLO11).
    #[arg(long)]
    pub gbf_per_element: bool,
    /// Teacher weights for Q-ADA (default: --weights).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Early stopping: epochs without a better validation fitness.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Telemetry every N iterations (0: off).
    #[arg(long)]
    pub telemetry_every: Option<usize>,
}

/// `q2 qat` arguments.
#[derive(clap::Args, Debug, Default)]
pub struct QatArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Quantizer: lsq, lsq_plus, pact, n2uq or minmax.
    #[arg(long, value_parser = parse_method)]
    pub quant: Option<Method>,
    /// baseline, gbf, ada or both.
    #[arg(long, value_enum)]
    pub variant: Option<Variant>,
    #[command(flatten)]
    pub q: QatFlags,
}

/// The QAT defaults: the paper's optimizer (hyp.VOC with the one-cycle schedule to lrf, nominal
/// batch 64), early stopping after 10 epochs without improvement, telemetry every iteration.
pub fn qat_base() -> TrainConfig {
    TrainConfig { hyp: "VOC".into(), cos_lr: true, patience: 10, telemetry_every: 1, telemetry_mag_every: 50, ..TrainConfig::default() }
}

/// Applies the QAT flags (and a method / variant) to a configuration.
pub fn apply(c: &mut TrainConfig, method: Option<Method>, variant: Option<Variant>, f: &QatFlags) -> Result<()> {
    if let Some(m) = method {
        let bits = f.bits.unwrap_or(4);
        c.quant = Some(match c.quant.take() {
            Some(q) => QuantConfig { method: m, ..q },
            None => QuantConfig::new(m, bits, bits),
        });
    }
    if let Some(q) = c.quant.as_mut() {
        if let Some(b) = f.bits {
            (q.w_bits, q.a_bits) = (b, b);
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = f.$f { q.$f = v; } )* };
        }
        set!(w_bits, a_bits, first_bits, head_bits, calib_images);
        q.per_channel_weights |= f.per_channel;
        if f.act_signed.is_some() {
            q.act_signed = f.act_signed;
        }
    } else if f.bits.is_some() || f.w_bits.is_some() || f.a_bits.is_some() {
        bail!(InputError("--bits needs a quantizer: pass --quant lsq|lsq_plus|pact|n2uq|minmax".into()));
    }
    if let Some(v) = variant {
        c.gbf = v.gbf().then(|| c.gbf.clone().unwrap_or_default());
        c.ada = v.ada().then(|| c.ada.clone().unwrap_or_default());
    }
    if let Some(a) = c.ada.as_mut() {
        if let Some(d) = &f.ada_div {
            a.divergence = if d == "kl" { Divergence::Kl } else { Divergence::Js };
        }
        if let Some(w) = f.ada_weight {
            a.weight = w;
        }
    }
    if let Some(g) = c.gbf.as_mut() {
        if let Some(v) = f.gbf_eta {
            g.eta = v;
        }
        if let Some(v) = f.gbf_beta {
            g.beta = v;
        }
        if f.gbf_per_element {
            g.energy = Energy::PerElement;
        }
    }
    if let Some(t) = &f.teacher {
        c.teacher = Some(t.clone());
    }
    if let Some(p) = f.patience {
        c.patience = p;
    }
    if let Some(t) = f.telemetry_every {
        c.telemetry_every = t;
    }
    c.validate()?;
    Ok(())
}

fn print_summary(s: &TrainSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else if let Some(m) = s.best.as_ref().or(s.last.as_ref()) {
        println!(
            "done: {} epochs{}; best val mAP50 {:.4}, mAP50-95 {:.4} (epoch {}); weights in {}",
            s.epochs_done,
            if s.stopped_early { " (early stop)" } else { "" },
            m.map50,
            m.map50_95,
            s.best_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            s.out.display()
        );
    }
    Ok(())
}

/// `q2 qat`.
pub fn qat(args: QatArgs) -> Result<()> {
    let cfg = if args.train.resume {
        if args.quant.is_some() || args.variant.is_some() || args.q.bits.is_some() {
            bail!(InputError("--resume continues a run with its own config.toml; pass only --out".into()));
        }
        None
    } else {
        let mut c = args.train.resolve_over(&qat_base())?;
        apply(&mut c, args.quant, args.variant, &args.q)?;
        if c.quant.is_none() {
            bail!(InputError("q2 qat needs a quantizer: --quant lsq|lsq_plus|pact|n2uq|minmax (or a [quant] table in --config)".into()));
        }
        Some(c)
    };
    let summary = train::start(&args.train, cfg)?;
    print_summary(&summary, args.train.json)
}

/// `q2 fold` arguments.
#[derive(clap::Args, Debug)]
pub struct FoldArgs {
    /// A finished Q-GBFusion run (its config.toml and weights).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Weights to fold: best, last, or a file.
    #[arg(long, default_value = "best")]
    pub weights: String,
    /// Training images for the LN statistics.
    #[arg(long, default_value_t = 64)]
    pub calib_images: usize,
    /// Fine-tuning after folding (Adam, task loss only): epochs over the training split.
    #[arg(long, default_value_t = 1)]
    pub ft_epochs: usize,
    /// Stop each fine-tuning epoch after this many batches (0: all).
    #[arg(long, default_value_t = 0)]
    pub ft_max_batches: usize,
    /// Fine-tuning learning rate (paper: Adam 2e-5).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One node's fold, with the measured approximation.
#[derive(Debug, Serialize)]
pub struct NodeFold {
    #[serde(flatten)]
    pub report: q2_fusion::FoldReport,
    /// RMS over calibration locations of ‖LN(h) − Φ(h)‖/‖LN(h)‖ (THEORY.md P4 (a)).
    pub rel_residual_rms: f64,
    /// Its maximum over the locations.
    pub rel_residual_max: f64,
}

/// `fold.json`: Table 6's columns for one run.
#[derive(Debug, Serialize)]
pub struct FoldSummary {
    pub weights: PathBuf,
    pub nodes: Vec<NodeFold>,
    /// max |y_folded − y_LN| / max |y_LN| over the raw head outputs of the calibration batch.
    pub head_rel_diff: f64,
    pub with_ln: validate::ValMetrics,
    pub folded: validate::ValMetrics,
    pub folded_ft: validate::ValMetrics,
    pub ft_seconds: f64,
    pub ft_iterations: usize,
    pub out: PathBuf,
}

fn head_tensors(out: &q2_yolo::HeadOut) -> Vec<Tensor> {
    match out {
        q2_yolo::HeadOut::V5 { raw } => raw.to_vec(),
        q2_yolo::HeadOut::V11 { box_raw, cls_raw } => box_raw.iter().chain(cls_raw).cloned().collect(),
    }
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// `q2 fold`: Eq. 11–12 on a finished run, then the short Adam fine-tune (App. 7).
pub fn fold(args: FoldArgs) -> Result<()> {
    let files = RunFiles::new(&args.run);
    let cfg = TrainConfig::load(&files.config)?;
    if !cfg.gbf.as_ref().is_some_and(|g| g.balance && g.ln) {
        bail!(InputError(format!("{}: the run has no Q-GBFusion LayerNorm to fold", files.config.display())));
    }
    let weights = match args.weights.as_str() {
        "best" => files.best.clone(),
        "last" => files.last.clone(),
        p => PathBuf::from(p),
    };
    let device = Device::Cpu;
    let scan = ScanOptions { on_error: OnError::Fail, progress: false };
    let dc = DataConfig::discover(&cfg.data, None).map_err(|e| InputError(e.to_string()))?;
    let train_ds = dc.read(Split::Train, &scan).map_err(|e| InputError(e.to_string()))?;
    let val_ds = dc.read(Split::Val, &scan).map_err(|e| InputError(e.to_string()))?;
    let nc = train_ds.names.len();
    let (model, nodes) = qat::build(&cfg, nc, &device)?;
    q2_yolo::weights::load(model.store(), &weights).map_err(|e| InputError(e.to_string()))?;
    let mut vc = LoaderConfig::val(cfg.img, cfg.batch, cfg.workers);
    vc.progress = false;
    let val_images = if cfg.max_val_images == 0 { val_ds.len() } else { cfg.max_val_images.min(val_ds.len()) };
    let val_loader = Loader::new(val_ds, vc).map_err(|e| InputError(e.to_string()))?;
    let with_ln = validate::validate(model.as_ref(), &val_loader, val_images, &device)?;

    // LN statistics of every node over the calibration images (eval mode), then the residual of
    // the fixed affine map against the real LN on the same images.
    let x = qat::calibration_batch(&train_ds, cfg.img, args.calib_images, cfg.workers, &device)?;
    let batches: Vec<Tensor> = (0..x.dim(0)?).step_by(cfg.batch).map(|i| x.narrow(0, i, cfg.batch.min(x.dim(0)? - i))).collect::<candle_core::Result<_>>()?;
    let pass = |reference: bool, stats: &[q2_fusion::LnStats]| -> Result<Vec<q2_fusion::LnStats>> {
        for (i, n) in nodes.iter().enumerate() {
            match reference {
                false => n.start_stats()?,
                true => n.start_stats_against(stats[i].mu_bar(), 1.0 / stats[i].sigma_bar(n.cfg.ln_eps))?,
            }
        }
        for b in &batches {
            model.forward(b, Mode::Eval)?;
        }
        nodes.iter().map(|n| n.take_stats()?.ok_or_else(|| anyhow::anyhow!("node {}: no statistics", n.node))).collect()
    };
    let stats = pass(false, &[])?;
    let resid = pass(true, &stats)?;
    let before = head_tensors(&model.forward(&batches[0], Mode::Eval)?);
    let consumers = model.fusion_consumers();
    let mut reports = vec![];
    for ((n, st), r) in nodes.iter().zip(&stats).zip(&resid) {
        let cons = &consumers.iter().find(|(i, _)| *i == n.node).ok_or_else(|| anyhow::anyhow!("no consumers of node {}", n.node))?.1;
        let report = q2_fusion::fold_node(n, st, cons).map_err(|e| InputError(e.to_string()))?;
        let (rms, max) = r.relative_residual();
        reports.push(NodeFold { report, rel_residual_rms: rms, rel_residual_max: max });
    }
    let after = head_tensors(&model.forward(&batches[0], Mode::Eval)?);
    let mut head_rel_diff = 0f64;
    for (a, b) in before.iter().zip(&after) {
        head_rel_diff = head_rel_diff.max(max_abs(&(b - a)?)? / max_abs(a)?.max(1e-12));
    }
    let folded = validate::validate(model.as_ref(), &val_loader, val_images, &device)?;

    // Fine-tune: Adam, the task loss only, the training split with its augmentations.
    let t0 = std::time::Instant::now();
    let hyp = Hyp::resolve(&cfg.hyp).map_err(|e| InputError(e.to_string()))?;
    let loss = glue::Loss::new(model.as_ref(), &hyp, &cfg)?;
    let mut lc = LoaderConfig::train(cfg.img, cfg.batch, cfg.workers, hyp, cfg.seed);
    lc.progress = false;
    let loader = Loader::new(train_ds, lc).map_err(|e| InputError(e.to_string()))?;
    let mut opt = Adam::new(yolov5_groups(model.store(), args.lr, 0.9, 0.0), 0.999, 1e-8);
    let params: Vec<candle_core::Var> = model.store().trainable().map(|(_, e)| e.var.clone()).collect();
    let nb = if args.ft_max_batches == 0 { loader.len() } else { args.ft_max_batches.min(loader.len()) };
    let mut iterations = 0;
    for epoch in 0..args.ft_epochs {
        let mut it = loader.epoch(1000 + epoch as u64);
        for _ in 0..nb {
            let Some(b) = it.next() else { break };
            let b = b.map_err(|e| InputError(e.to_string()))?;
            let x = validate::images_tensor(&b, &device)?;
            let t = validate::targets(&b);
            let (total, _) = loss.compute(&model.forward(&x, Mode::Train)?, &t, b.batch_size)?;
            let v = total.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !v.is_finite() {
                bail!("fold fine-tune, iteration {iterations}: the loss is not finite ({v}); nothing was written");
            }
            let grads = total.backward()?;
            let mut acc = q2_nn::optim::GradAccumulator::new();
            acc.add(params.iter(), &grads)?;
            opt.step(&acc)?;
            iterations += 1;
            it.recycle(b);
        }
    }
    for n in &nodes {
        n.take_energies()?;
    }
    let ft_seconds = t0.elapsed().as_secs_f64();
    let folded_ft = validate::validate(model.as_ref(), &val_loader, val_images, &device)?;
    let out = args.run.join("folded.safetensors");
    model.store().save_safetensors(&out)?;
    let s = FoldSummary { weights, nodes: reports, head_rel_diff, with_ln, folded, folded_ft, ft_seconds, ft_iterations: iterations, out };
    q2_nn::fsutil::write_atomic(&args.run.join("fold.json"), serde_json::to_string_pretty(&s)?.as_bytes())?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "folded {} nodes (head outputs differ by {:.2e} relative): val mAP50 with LN {:.4}, folded {:.4}, folded + fine-tune {:.4} ({} iterations, {:.1} s); weights in {}",
            s.nodes.len(),
            s.head_rel_diff,
            s.with_ln.map50,
            s.folded.map50,
            s.folded_ft.map50,
            s.ft_iterations,
            s.ft_seconds,
            s.out.display()
        );
    }
    Ok(())
}

/// `q2 grid` arguments.
#[derive(clap::Args, Debug)]
pub struct GridArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Quantizers (comma separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_method, default_value = "lsq,lsq_plus,pact,n2uq,minmax")]
    pub methods: Vec<Method>,
    /// Bit-widths WxAx (comma separated).
    #[arg(long = "bit-widths", value_delimiter = ',', default_value = "4,3")]
    pub bit_widths: Vec<u32>,
    /// Variants (comma separated).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "baseline,gbf,ada,both")]
    pub variants: Vec<Variant>,
    /// Also fold the LN of every Q-GBFusion cell (q2 fold, 1 fine-tune epoch).
    #[arg(long)]
    pub fold: bool,
    /// Start the Q-GBFusion cells (gbf, both) from this checkpoint instead of --weights: an FP
    /// model fine-tuned with the module (`q2 train --config` with a [gbf] table). Q-ADA's teacher
    /// stays --weights (or --teacher).
    #[arg(long, value_name = "FILE")]
    pub gbf_weights: Option<PathBuf>,
    #[command(flatten)]
    pub q: QatFlags,
}

/// One finished cell of the grid.
#[derive(Debug, Serialize)]
pub struct Cell {
    pub method: String,
    pub bits: String,
    pub variant: Variant,
    pub dir: PathBuf,
    pub best_map50: Option<f64>,
    pub best_map50_95: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_done: usize,
    pub time_to_best_s: Option<f64>,
    pub total_s: f64,
    /// mAP50 after LN folding and the fine-tune (with `--fold`).
    pub folded_map50: Option<f64>,
}

/// `q2 grid`: every method × bit-width × variant from one FP checkpoint, each cell a `q2 qat`
/// run in `OUT/<method>_w<b>a<b>_<variant>` (finished cells are kept, unfinished ones resumed),
/// then `OUT/grid.json` and `OUT/grid.md`.
pub fn grid(args: GridArgs) -> Result<()> {
    if args.train.resume {
        bail!(InputError("q2 grid resumes unfinished cells by itself; run the same command again".into()));
    }
    let root = args.train.out.clone();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut cells = vec![];
    let total = args.methods.len() * args.bit_widths.len() * args.variants.len();
    for &m in &args.methods {
        for &b in &args.bit_widths {
            for &v in &args.variants {
                let mut c = args.train.resolve_over(&qat_base())?;
                let q = QatFlags { bits: Some(b), ..args.q.clone() };
                apply(&mut c, Some(m), Some(v), &q)?;
                if let (Some(gw), true) = (&args.gbf_weights, v.gbf()) {
                    if c.ada.is_some() && c.teacher.is_none() {
                        c.teacher = c.weights.clone();
                    }
                    c.weights = Some(gw.clone());
                }
                let dir = root.join(format!("{}_w{b}a{b}_{}", m.name(), v.name()));
                tracing::info!("grid cell {}/{total}: {} W{b}A{b} {}", cells.len() + 1, m.name(), v.name());
                let files = RunFiles::new(&dir);
                let done = files.summary.is_file() && TrainConfig::load(&files.config).is_ok_and(|old| old == c);
                if !done {
                    let resume = files.ckpt.is_file() && TrainConfig::load(&files.config).is_ok_and(|old| old == c);
                    let targs = TrainArgs { out: dir.clone(), resume, force: !resume, ..Default::default() };
                    train::start(&targs, if resume { None } else { Some(c.clone()) })?;
                }
                let s: TrainSummary = serde_json::from_str(&std::fs::read_to_string(&files.summary)?)?;
                let mut folded_map50 = None;
                if args.fold && v.gbf() {
                    let fj = dir.join("fold.json");
                    if !fj.is_file() {
                        fold(FoldArgs { run: dir.clone(), weights: "best".into(), calib_images: 64, ft_epochs: 1, ft_max_batches: c.max_batches, lr: 2e-5, json: false })?;
                    }
                    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fj)?)?;
                    folded_map50 = f["folded_ft"]["map50"].as_f64();
                }
                cells.push(Cell {
                    method: m.name().into(),
                    bits: format!("W{b}A{b}"),
                    variant: v,
                    dir,
                    best_map50: s.best.as_ref().map(|x| x.map50),
                    best_map50_95: s.best.as_ref().map(|x| x.map50_95),
                    best_epoch: s.best_epoch,
                    epochs_done: s.epochs_done,
                    time_to_best_s: s.time_to_best_s,
                    total_s: s.total_s,
                    folded_map50,
                });
            }
        }
    }
    q2_nn::fsutil::write_atomic(&root.join("grid.json"), serde_json::to_string_pretty(&cells)?.as_bytes())?;
    let md = grid_table(&cells, &args.variants);
    q2_nn::fsutil::write_atomic(&root.join("grid.md"), md.as_bytes())?;
    if args.train.json {
        println!("{}", serde_json::to_string(&cells)?);
    } else {
        print!("{md}");
    }
    Ok(())
}

/// The grid as a Markdown table: one row per quantizer and bit-width, best val mAP50 per variant.
pub fn grid_table(cells: &[Cell], variants: &[Variant]) -> String {
    let mut s = String::from("| quantizer | bits |");
    for v in variants {
        s.push_str(&format!(" {} mAP50 |", v.name()));
    }
    s.push('\n');
    s.push_str(&"|---".repeat(2 + variants.len()));
    s.push_str("|\n");
    let mut rows: Vec<(&str, &str)> = vec![];
    for c in cells {
        if !rows.contains(&(c.method.as_str(), c.bits.as_str())) {
            rows.push((c.method.as_str(), c.bits.as_str()));
        }
    }
    for (m, b) in rows {
        s.push_str(&format!("| {m} | {b} |"));
        for v in variants {
            let cell = cells.iter().find(|c| c.method == m && c.bits == b && c.variant == *v);
            match cell.and_then(|c| c.best_map50) {
                Some(x) => s.push_str(&format!(" {:.1} |", 100.0 * x)),
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}
