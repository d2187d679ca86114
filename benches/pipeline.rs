//! The image pipeline, stage by stage, on real camera photos from the shared corpus and on
//! the 12 MP and 24 MP sets of `../shared/bench/make-big-corpus.sh` (looked for under
//! `PHOTOQ_BENCH_BIG`, default `/tmp/corpus/big`; skipped with a note when absent).
//!
//!   cargo bench --bench pipeline                 every group
//!   cargo bench --bench pipeline -- decode/      one group (criterion filter)
//!
//! Groups: `decode` (libjpeg-turbo at scale 1, 1/2, 1/4, 1/8 to RGB and to YCbCr planes,
//! and zune-jpeg at full size for comparison), `resize` (Lanczos3 to the preview from the
//! scale photoq decodes at, and to the thumbnail from the preview; RGB and planes),
//! `encode` (the 1280 px preview: libjpeg-turbo from RGB with and without Huffman
//! optimisation, from planes, and jpeg-encoder), `exif`, and `process` (everything, default
//! variants, through planes as photoq does it and through RGB).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use photoq::config::Config;
use photoq::pipeline::decode::{self, Decoded};
use photoq::pipeline::frame::Frame;
use photoq::pipeline::resize::{Layout, Pixels};
use photoq::pipeline::variant::{OutputFormat, Rect};
use photoq::pipeline::{encode, exif, process, Colour, JpegOutput, SourceFormat, Spec};

/// Corpus photos: 640x480, 3264x2448 (8 MP), 4032x3024 (12 MP).
const CORPUS: &[&str] = &[
    "jpg/gps/DSCN0010.jpg",
    "jpg/hdr/iphone_hdr_YES.jpg",
    "jpg/tests/42_IndexError.jpg",
];
/// One photo of each big set.
const BIG: &[&str] = &["12mp/01_42_IndexError_f0.jpg", "24mp/01_42_IndexError.jpg"];

fn photos() -> Vec<(String, Vec<u8>)> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/exif-samples");
    let big = std::env::var_os("PHOTOQ_BENCH_BIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corpus/big"));
    let mut out = Vec::new();
    for path in CORPUS
        .iter()
        .map(|r| corpus.join(r))
        .chain(BIG.iter().map(|r| big.join(r)))
    {
        match std::fs::read(&path) {
            Ok(data) => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                out.push((name.unwrap_or_default(), data));
            }
            Err(_) => eprintln!("skipping {}: not found", path.display()),
        }
    }
    out
}

/// Short warm-up and measurement: the whole file runs in a few minutes.
fn quick<M: criterion::measurement::Measurement>(group: &mut criterion::BenchmarkGroup<'_, M>) {
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
}

fn spec() -> Spec {
    match Config::defaults().and_then(|c| Spec::from_config(&c)) {
        Ok(spec) => spec,
        Err(e) => panic!("default configuration: {e}"),
    }
}

fn decode_at(data: &[u8], spec: &Spec, reduction: f64, output: JpegOutput) -> Decoded {
    match decode::decode(
        data,
        SourceFormat::Jpeg,
        &spec.limits,
        output,
        Colour::Srgb,
        |_, _, _| reduction,
    ) {
        Ok(d) => d,
        Err(e) => panic!("decode: {e}"),
    }
}

/// RGB pixels of `data` decoded at `reduction`.
fn rgb_at(data: &[u8], spec: &Spec, reduction: f64) -> Pixels {
    match decode_at(data, spec, reduction, JpegOutput::Packed).pixels {
        Frame::Packed(p) => p,
        Frame::Planar(_) => panic!("asked for RGB"),
    }
}

fn bench_decode(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    quick(&mut group);
    group.throughput(Throughput::Elements(1));
    for (name, data) in photos() {
        for denominator in [1u32, 2, 4, 8] {
            for (label, output) in [("rgb", JpegOutput::Packed), ("planes", JpegOutput::Planes)] {
                let id = BenchmarkId::new(&name, format!("turbo-{label}-1/{denominator}"));
                group.bench_function(id, |b| {
                    b.iter(|| decode_at(black_box(&data), &spec, f64::from(denominator), output))
                });
            }
        }
        group.bench_function(BenchmarkId::new(&name, "zune-1/1"), |b| {
            b.iter(|| {
                let mut d = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(
                    black_box(&data),
                ));
                d.decode().map(|p| p.len())
            })
        });
    }
    group.finish();
}

fn bench_resize(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("resize");
    group.sample_size(10);
    quick(&mut group);
    for (name, data) in photos() {
        // The source photoq resizes the preview from: decoded at the scale it would choose.
        let full = rgb_at(&data, &spec, 1.0);
        let reduction = f64::from(full.width.max(full.height)) / 1280.0;
        let (pw, ph) = fit(full.width, full.height, 1280);
        let (tw, th) = fit(full.width, full.height, 256);
        for (label, output) in [("rgb", JpegOutput::Packed), ("planes", JpegOutput::Planes)] {
            let source = decode_at(&data, &spec, reduction, output).pixels;
            let preview = resize_to(&source, pw, ph);
            group.bench_function(
                BenchmarkId::new(&name, format!("{label}-to-preview")),
                |b| b.iter(|| resize_to(black_box(&source), pw, ph)),
            );
            let id = BenchmarkId::new(&name, format!("{label}-preview-to-thumbnail"));
            group.bench_function(id, |b| b.iter(|| resize_to(black_box(&preview), tw, th)));
        }
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("encode");
    group.sample_size(20);
    quick(&mut group);
    let Some((name, data)) = photos().into_iter().nth(2) else {
        return;
    };
    let full = rgb_at(&data, &spec, 1.0);
    let (pw, ph) = fit(full.width, full.height, 1280);
    let preview = match resize_to(&Frame::Packed(full), pw, ph) {
        Frame::Packed(p) => p,
        Frame::Planar(_) => panic!("resized RGB is RGB"),
    };
    let planes = resize_to(
        &decode_at(&data, &spec, 1.0, JpegOutput::Planes).pixels,
        pw,
        ph,
    );
    let label = format!("{name}-preview-{pw}x{ph}");
    group.bench_function(BenchmarkId::new(&label, "turbo-planes"), |b| {
        b.iter(|| black_box(&planes).encode(OutputFormat::Jpeg, 80, None, Default::default()))
    });
    group.bench_function(BenchmarkId::new(&label, "turbo-optimised"), |b| {
        b.iter(|| encode::jpeg(black_box(&preview), 80))
    });
    group.bench_function(BenchmarkId::new(&label, "turbo-plain"), |b| {
        b.iter(|| encode::jpeg_with(black_box(&preview), 80, false))
    });
    group.bench_function(BenchmarkId::new(&label, "jpeg-encoder"), |b| {
        b.iter(|| {
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 80)
                .encode(
                    black_box(&preview.data),
                    pw as u16,
                    ph as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map(|()| out.len())
        })
    });
    group.finish();
}

fn bench_exif_and_process(c: &mut Criterion) {
    let spec = spec();
    let mut group = c.benchmark_group("exif");
    quick(&mut group);
    for (name, data) in photos() {
        group.bench_function(&name, |b| b.iter(|| exif::extract(black_box(&data))));
    }
    group.finish();

    let mut group = c.benchmark_group("process");
    group.sample_size(10);
    quick(&mut group);
    group.throughput(Throughput::Elements(1));
    let rgb = Spec {
        jpeg_output: JpegOutput::Packed,
        ..spec.clone()
    };
    for (name, data) in photos() {
        for (label, spec) in [("planes", &spec), ("rgb", &rgb)] {
            group.bench_function(BenchmarkId::new(&name, label), |b| {
                b.iter(|| process(black_box(&data), spec).map(|p| p.variants.len()))
            });
        }
    }
    group.finish();
}

fn fit(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let scale = (f64::from(edge) / f64::from(width.max(height))).min(1.0);
    (
        (f64::from(width) * scale).round() as u32,
        (f64::from(height) * scale).round() as u32,
    )
}

fn resize_to(src: &Frame, width: u32, height: u32) -> Frame {
    if let Frame::Packed(p) = src {
        assert_eq!(p.layout, Layout::Rgb);
    }
    let whole = Rect::whole(src.width(), src.height());
    match src.resize(whole, width, height, OutputFormat::Jpeg) {
        Ok(p) => p,
        Err(e) => panic!("resize: {e}"),
    }
}

criterion_group!(
    benches,
    bench_decode,
    bench_resize,
    bench_encode,
    bench_exif_and_process
);
criterion_main!(benches);
