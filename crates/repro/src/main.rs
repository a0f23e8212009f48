//! The `q2` command-line tool. Each subcommand is a thin wrapper over the library crates;
//! invalid input exits with status 2 and a message naming the file and what is wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;
mod data_cmd;
mod eval_cmd;
mod yolo_cmd;
mod bench_cmd;
mod infer_cmd;
mod qat_cmd;
mod plot_cmd;
mod train;

/// mimalloc keeps freed memory mapped for reuse. With glibc's allocator every tensor above the
/// mmap threshold (a few MB) is a fresh mmap whose pages fault in on first write, which made a
/// 4M-element fake-quant pass 8x slower (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (15 in its v3 option enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never give freed pages back to the OS (unless `MIMALLOC_PURGE_DELAY` says otherwise): a
/// training step frees and reallocates the same tensor sizes every iteration, and re-faulting
/// purged pages cost 15% of a QAT step (18% of its samples in zeroing pages, docs/BENCHMARKS.md).
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a documented integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn parse_kernels(s: &str) -> std::result::Result<q2_nn::kernels::Kernels, String> {
    s.parse()
}

#[derive(Parser, Debug)]
#[command(name = "q2", version, about = "Q²: quantization-aware gradient balancing and attention alignment (reproduction)")]
struct Cli {
    /// CPU threads for kernels and tensor ops (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// CPU kernels: fused (q2's GEMM convolution and fused BatchNorm+SiLU) or candle (candle's
    /// built-in ops, the reference path). Default: fused, or `Q2_KERNELS`.
    #[arg(long, global = true, value_parser = parse_kernels)]
    kernels: Option<q2_nn::kernels::Kernels>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Evaluate one fake quantizer on numbers from a JSON case (cross-checking other frameworks).
    Quant {
        /// Case: {method, bits, signed, x, params, grad_out[, groups]}.
        #[arg(long = "in", value_name = "CASE.json")]
        input: PathBuf,
        /// Result: {y, grad_x, grad_params} (float64 JSON).
        #[arg(long, value_name = "RESULT.json")]
        out: PathBuf,
        /// cpu or cuda (needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Score detections against ground truth (COCO, VOC07, VOC12 or ultralytics metrics).
    Map(eval_cmd::MapArgs),
    /// Time the detection metrics on a COCO-val-sized synthetic evaluation.
    BenchEval(eval_cmd::BenchEvalArgs),
    /// Write the synthetic detection benchmark in VOC, COCO or YOLO format.
    Synth(data_cmd::SynthArgs),
    /// Time the data loader (decode, letterbox, mosaic, augmentations) on a dataset.
    BenchLoader(data_cmd::BenchLoaderArgs),
    /// Per-layer parameters, total parameters and GFLOPs at 640 of a YOLO model (as ultralytics).
    Summary(yolo_cmd::SummaryArgs),
    /// One eval forward of a YOLO model: raw head outputs and decoded predictions to safetensors.
    Forward(yolo_cmd::ForwardArgs),
    /// Train a YOLO model (YOLOv5 train.py's recipe; full precision unless the config has a
    /// [quant] table); resumable.
    Train(train::TrainArgs),
    /// Quantization-aware training from an FP checkpoint: any quantizer at WxAy, with
    /// Q-GBFusion and/or Q-ADA (the paper's recipe: hyp.VOC, one-cycle, early stopping); resumable.
    Qat(qat_cmd::QatArgs),
    /// Fold the post-fusion LayerNorm of a Q-GBFusion run away (Eq. 11–12), fine-tune briefly
    /// (Adam 2e-5) and report the accuracy with LN, folded, and folded + fine-tuned.
    Fold(qat_cmd::FoldArgs),
    /// Run every quantizer × bit-width × variant as `q2 qat` cells and tabulate mAP50.
    Grid(qat_cmd::GridArgs),
    /// Detect objects in image files: COCO-results JSON and annotated PNGs.
    Detect(infer_cmd::DetectArgs),
    /// Score a model on a dataset split (YOLOv5 val.py metrics, COCO and VOC).
    Val(infer_cmd::ValArgs),
    /// Time one training step (forward, loss, backward, SGD) of a YOLO model, FP or QAT.
    Bench(bench_cmd::BenchArgs),
    /// Plot the deep/shallow gradient imbalance of the fusion nodes (Fig. 1b, 3a, 3b) from the
    /// telemetry of training runs: three SVGs and a table of the ratios.
    PlotImbalance(plot_cmd::PlotArgs),
}

/// `q2 bench | head -1` should end quietly as other Unix tools do, not panic in `println!`:
/// restore the default SIGPIPE action that the Rust runtime replaces with "ignore".
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    keep_freed_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "q2=info,warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(n) = cli.threads {
        cli::set_threads(n);
    }
    if let Some(k) = cli.kernels {
        q2_nn::kernels::set_kernels(k);
    }
    let result: Result<()> = match cli.cmd {
        Cmd::Quant { input, out, device } => cli::quant(&input, &out, &device),
        Cmd::Map(args) => eval_cmd::map(args),
        Cmd::BenchEval(args) => eval_cmd::bench_eval(args),
        Cmd::Synth(args) => data_cmd::synth(args),
        Cmd::BenchLoader(args) => data_cmd::bench_loader(args),
        Cmd::Summary(args) => yolo_cmd::summary(args),
        Cmd::Forward(args) => yolo_cmd::forward(args),
        Cmd::Train(args) => train::train_cmd(args),
        Cmd::Qat(args) => qat_cmd::qat(args),
        Cmd::Fold(args) => qat_cmd::fold(args),
        Cmd::Grid(args) => qat_cmd::grid(args),
        Cmd::Bench(args) => bench_cmd::bench(args),
        Cmd::Detect(args) => infer_cmd::detect(args),
        Cmd::Val(args) => infer_cmd::val(args),
        Cmd::PlotImbalance(args) => plot_cmd::plot(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
