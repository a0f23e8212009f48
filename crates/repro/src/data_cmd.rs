//! `q2 synth` (the synthetic detection benchmark) and `q2 bench-loader` (timing the data loader),
//! thin wrappers over q2-data. Bad input (arguments, malformed datasets) exits with status 2 and
//! a message naming the file and object.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use q2_data::synth::{ImageType, SynthConfig};
use q2_data::{DataConfig, DataError, Format, Hyp, Loader, LoaderConfig, OnError, ScanOptions, Split};

use crate::cli::InputError;

/// Dataset formats on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    Voc,
    Coco,
    Yolo,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Voc => Format::Voc,
            FormatArg::Coco => Format::Coco,
            FormatArg::Yolo => Format::Yolo,
        }
    }
}

/// Image file types `q2 synth` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageTypeArg {
    Jpg,
    Png,
}

/// Arguments of `q2 synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder (must be empty or absent unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Layout to write: VOCdevkit, COCO instances JSON, or YOLO txt labels.
    #[arg(long, value_enum, default_value = "yolo")]
    pub format: FormatArg,
    /// Number of images (train + val).
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Random seed; image i depends only on (seed, i, settings).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the images in the val split (the last ones).
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Long side of every image, in pixels.
    #[arg(long, default_value_t = 256)]
    pub img_size: usize,
    /// 0 (easy) to 1 (hard): object count, clutter, distractors, occlusion, colour ambiguity, noise.
    #[arg(long, default_value_t = 0.5)]
    pub difficulty: f32,
    /// Number of classes (the first N of disc, ring, triangle, tile, star, cross, hexagon, moon,
    /// heart, arrow, diamond, capsule).
    #[arg(long, default_value_t = 12)]
    pub classes: usize,
    /// Image file type.
    #[arg(long, value_enum, default_value = "jpg")]
    pub image_type: ImageTypeArg,
    /// JPEG quality (1–100).
    #[arg(long, default_value_t = 95)]
    pub jpeg_quality: u8,
    /// Replace a dataset already written in --out (removes only what q2 synth writes there).
    #[arg(long)]
    pub force: bool,
    /// Also write a PNG grid of the first images with their boxes drawn.
    #[arg(long, value_name = "FILE.png")]
    pub preview: Option<PathBuf>,
    /// Images in the preview grid.
    #[arg(long, default_value_t = 1)]
    pub preview_count: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn data_err(e: DataError) -> anyhow::Error {
    if e.is_input() {
        InputError(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// `q2 synth`
pub fn synth(args: SynthArgs) -> Result<()> {
    let mut cfg = SynthConfig::new(args.images, args.seed).with_difficulty(args.difficulty);
    cfg.val_fraction = args.val_fraction;
    cfg.img_size = args.img_size;
    cfg.classes = args.classes;
    cfg.image_type = match args.image_type {
        ImageTypeArg::Jpg => ImageType::Jpeg { quality: args.jpeg_quality },
        ImageTypeArg::Png => ImageType::Png,
    };
    cfg.validate().map_err(data_err)?;
    if let Some(p) = &args.preview {
        if p.extension().and_then(|e| e.to_str()) != Some("png") {
            return Err(InputError(format!("--preview {}: must be a .png file", p.display())).into());
        }
    }
    q2_data::synth::prepare_out_dir(&args.out, args.force).map_err(data_err)?;
    let t = Instant::now();
    let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = q2_data::synth::write_dataset(&cfg, &args.out, args.format.into(), progress).map_err(data_err)?;
    let secs = t.elapsed().as_secs_f64();
    if let Some(p) = &args.preview {
        let grid = q2_data::synth::preview(&cfg, args.preview_count.clamp(1, 64), 2);
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(p, q2_data::image::encode_png_small(&grid)).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["seconds"] = serde_json::json!(secs);
        v["images_per_s"] = serde_json::json!(args.images as f64 / secs);
        println!("{v}");
    } else {
        println!(
            "wrote {} ({}): {} train + {} val images, {} objects (small/medium/large {:?}), {:.1} MB in {:.2} s ({:.0} images/s)",
            summary.out.display(),
            summary.format.name(),
            summary.train_images,
            summary.val_images,
            summary.objects,
            summary.small_medium_large,
            summary.bytes as f64 / 1e6,
            secs,
            args.images as f64 / secs
        );
        println!("data description: {}", summary.data_yaml.display());
    }
    Ok(())
}

/// Arguments of `q2 bench-loader`.
#[derive(clap::Args, Debug)]
pub struct BenchLoaderArgs {
    /// Dataset: a data.yaml, a folder containing one, or a VOCdevkit / COCO / YOLO folder with --format.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Dataset format (required when the folder has no data.yaml).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Split to load.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Training image size.
    #[arg(long, default_value_t = 640)]
    pub img: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Loader worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Timed batches (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    /// Untimed batches first (worker start-up, page cache).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Hyperparameters: scratch-low, voc, or a .yaml/.toml file.
    #[arg(long, default_value = "scratch-low")]
    pub hyp: String,
    /// Validation loading instead (rect batches, no augmentation).
    #[arg(long)]
    pub val: bool,
    /// Decode every image once up front and keep it in memory (ultralytics' `--cache ram`).
    #[arg(long)]
    pub cache: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip bad images and objects (and report them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `q2 bench-loader`
pub fn bench_loader(args: BenchLoaderArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        s => return Err(InputError(format!("--split must be train, val or test, got `{s}`")).into()),
    };
    if args.batches == 0 {
        return Err(InputError("--batches must be ≥ 1".into()).into());
    }
    let hyp = Hyp::resolve(&args.hyp).map_err(data_err)?;
    let dc = DataConfig::discover(&args.data, args.format.map(Into::into)).map_err(data_err)?;
    let on_error = if args.skip_bad { OnError::Skip } else { OnError::Fail };
    let scan = ScanOptions { on_error, progress: !args.json };
    let t0 = Instant::now();
    let dataset = dc.read(split, &scan).map_err(data_err)?;
    let scan_s = t0.elapsed().as_secs_f64();
    if !dataset.report.is_empty() {
        eprintln!("{}", dataset.report.summary(10));
    }
    let n_images = dataset.len();
    let mut cfg = if args.val {
        LoaderConfig::val(args.img, args.batch, args.workers)
    } else {
        LoaderConfig::train(args.img, args.batch, args.workers, hyp, args.seed)
    };
    cfg.on_error = on_error;
    cfg.cache_images = args.cache;
    cfg.progress = !args.json;
    let t1 = Instant::now();
    let loader = Loader::new(dataset, cfg).map_err(data_err)?;
    let cache_s = t1.elapsed().as_secs_f64();
    let need = args.warmup + args.batches;
    let (mut done, mut images, mut epoch) = (0usize, 0usize, 0u64);
    // Without a warm-up the clock includes starting the workers.
    let mut start = (args.warmup == 0).then(Instant::now);
    'outer: loop {
        let mut it = loader.epoch(epoch);
        while let Some(b) = it.next() {
            let b = b.map_err(data_err)?;
            done += 1;
            if done == args.warmup {
                start = Some(Instant::now());
            } else if done > args.warmup {
                images += b.batch_size;
            }
            if done >= need {
                break 'outer;
            }
            it.recycle(b);
        }
        epoch += 1;
    }
    let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    let ips = images as f64 / secs;
    let report = loader.report();
    if !report.is_empty() {
        eprintln!("while loading: {}", report.summary(10));
    }
    let v = serde_json::json!({
        "images_per_s": ips,
        "ms_per_batch": secs * 1e3 / args.batches as f64,
        "batches": args.batches,
        "batch": args.batch,
        "img": args.img,
        "workers": args.workers,
        "hyp": args.hyp,
        "mode": if args.val { "val" } else { "train" },
        "dataset_images": n_images,
        "scan_s": scan_s,
        "cache": args.cache,
        "cache_s": cache_s,
    });
    if args.json {
        println!("{v}");
    } else {
        println!(
            "{:.1} images/s ({:.1} ms per batch of {}), img {}, {} workers, {} timed batches after {} warm-up; scanning {} images took {:.2} s",
            ips,
            secs * 1e3 / args.batches as f64,
            args.batch,
            args.img,
            args.workers,
            args.batches,
            args.warmup,
            n_images,
            scan_s
        );
    }
    Ok(())
}
