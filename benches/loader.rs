//! The training data loader at the paper's setting (decode + mosaic + random affine + HSV + flip,
//! 640 px, batch 16, 2 workers) on a synthetic dataset written to a temporary folder as JPEGs in
//! the YOLO layout, so the measured path is the one `q2 train` uses. `q2 bench-loader` runs the
//! same loader on any dataset, and `tools/bench_ultralytics_loader.py` times YOLOv5's dataloader
//! on the same files (docs/BENCHMARKS.md, "Data loader").

/// As in the `q2` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use q2::data::synth::{write_dataset, SynthConfig};
use q2::data::{DataConfig, Format, Hyp, Loader, LoaderConfig, ScanOptions, Split};

const BATCH: usize = 16;
const BATCHES: usize = 4;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(BATCH * BATCHES + 8, 0);
    cfg.img_size = 640;
    cfg.val_fraction = 0.1;
    write_dataset(&cfg, dir.path(), Format::Yolo, false).unwrap();
    let scan = ScanOptions { progress: false, ..ScanOptions::default() };
    let dataset = DataConfig::discover(dir.path(), Some(Format::Yolo)).unwrap().read(Split::Train, &scan).unwrap();
    let mut lc = LoaderConfig::train(640, BATCH, 2, Hyp::scratch_low(), 0);
    lc.progress = false;
    let loader = Loader::new(dataset, lc).unwrap();

    let mut g = c.benchmark_group("loader_640_b16_w2");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    let mut epoch = 0u64;
    g.bench_function("train_mosaic_4_batches", |b| {
        b.iter(|| {
            epoch += 1;
            let mut it = loader.epoch(epoch);
            let mut n = 0;
            for _ in 0..BATCHES {
                let batch = it.next().unwrap().unwrap();
                n += batch.batch_size;
                it.recycle(batch);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
