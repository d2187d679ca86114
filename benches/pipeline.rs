//! The whole pipeline (sniff, decode, resize to every default variant, encode, EXIF) on real
//! camera photos from the shared corpus. Run with `cargo bench --bench pipeline`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use photoq::config::Config;
use photoq::pipeline::{process, Spec};

/// Photos of a few sizes: 640x480, 3264x2448 (8 MP), 4032x3024 (12 MP).
const PHOTOS: &[&str] = &[
    "jpg/gps/DSCN0010.jpg",
    "jpg/hdr/iphone_hdr_YES.jpg",
    "jpg/tests/42_IndexError.jpg",
];

fn bench(c: &mut Criterion) {
    let config = match Config::defaults() {
        Ok(c) => c,
        Err(e) => panic!("default configuration: {e}"),
    };
    let spec = Spec::from_config(&config);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/exif-samples");
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for rel in PHOTOS {
        let Ok(data) = std::fs::read(corpus.join(rel)) else {
            eprintln!("skipping {rel}: corpus not found");
            continue;
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(*rel, |b| {
            b.iter(|| process(&data, &spec).map(|p| p.variants.len()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
