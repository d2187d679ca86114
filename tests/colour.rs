//! Colour management measured against an independent reference: a chart of patches in
//! Display P3 (and one in Adobe RGB), with its profile embedded, goes through photoq's
//! pipeline and through lcms2 (Pillow's ImageCms, in the test tools' virtualenv); the
//! patches' CIEDE2000 differences must average under 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use image::{ImageEncoder, RgbImage};
use moxcms::ColorProfile;
use palette::color_difference::Ciede2000;
use palette::{IntoColor, Lab, Srgb};
use photoq::config::{Colour, Fit, Focus, OutputFormat};
use photoq::pipeline::metadata::Keep;
use photoq::pipeline::{self, Spec, VariantSpec};

/// Side of a patch, in pixels; its centre half is averaged.
const PATCH: u32 = 16;
/// Levels of each channel: the chart holds every combination (125 patches).
const LEVELS: [u8; 5] = [0, 64, 128, 192, 255];

fn chart() -> RgbImage {
    let n = LEVELS.len() as u32;
    RgbImage::from_fn(n * n * PATCH, n * PATCH, |x, y| {
        let (i, j) = (x / PATCH, y / PATCH);
        image::Rgb([
            LEVELS[(i / n) as usize],
            LEVELS[(i % n) as usize],
            LEVELS[j as usize],
        ])
    })
}

fn png_with_profile(image: &RgbImage, icc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
    encoder
        .set_icc_profile(icc.to_vec())
        .expect("png takes a profile");
    encoder
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("png");
    out
}

fn spec(width: u32, format: OutputFormat, colour: Colour) -> Spec {
    Spec {
        colour,
        ..Spec::with_variants(vec![VariantSpec {
            name: "full".into(),
            width: Some(width),
            height: None,
            fit: Fit::Inside,
            format,
            quality: 100,
            grayscale: false,
            sharpen: 0.0,
            focus: Focus::Centre,
            watermark: None,
            keep: Keep::default(),
        }])
    }
}

/// The one variant photoq makes of `data`, decoded.
fn photoq(data: &[u8], width: u32, format: OutputFormat, colour: Colour) -> (RgbImage, Vec<u8>) {
    let processed = pipeline::process(data, &spec(width, format, colour)).expect("processed");
    let bytes = processed.variants[0].data.clone();
    let image = image::load_from_memory(&bytes).expect("variant").to_rgb8();
    (image, bytes)
}

/// lcms2's conversion of `data` (an image with an embedded profile) to sRGB.
fn reference(data: &[u8]) -> RgbImage {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/icc_reference.py");
    through_python(data, &[script.as_os_str()])
}

/// The image `python ARGS IN OUT` writes to OUT from `data` in IN, with the test tools'
/// Python (Pillow), as 8-bit RGB.
fn through_python(data: &[u8], args: &[&std::ffi::OsStr]) -> RgbImage {
    let dir = std::env::temp_dir().join(format!("pqcolour_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in"), dir.join("out.png"));
    std::fs::write(&input, data).unwrap();
    let status = Command::new(format!("{}/bin/python", venv()))
        .args(args)
        .arg(&input)
        .arg(&output)
        .status()
        .expect("the test tools' Python (deploy/dev.sh test installs it; or set PHOTOQ_TEST_VENV)");
    assert!(status.success(), "python {args:?} failed");
    let image = image::open(&output).expect("its output").to_rgb8();
    std::fs::remove_dir_all(&dir).ok();
    image
}

/// The test tools' virtualenv (deploy/dev.sh test makes it).
fn venv() -> String {
    std::env::var("PHOTOQ_TEST_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/photoq/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

fn lab(rgb: [f32; 3]) -> Lab {
    Srgb::new(rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
        .into_linear::<f32>()
        .into_color()
}

/// The mean of the centre half of every patch of the chart in `image`.
fn patches(image: &RgbImage) -> Vec<[f32; 3]> {
    let (cols, rows) = (image.width() / PATCH, image.height() / PATCH);
    let mut out = Vec::new();
    for j in 0..rows {
        for i in 0..cols {
            let mut sum = [0f32; 3];
            let mut n = 0.0;
            for y in j * PATCH + PATCH / 4..j * PATCH + 3 * PATCH / 4 {
                for x in i * PATCH + PATCH / 4..i * PATCH + 3 * PATCH / 4 {
                    let p = image.get_pixel(x, y);
                    for c in 0..3 {
                        sum[c] += f32::from(p[c]);
                    }
                    n += 1.0;
                }
            }
            out.push(sum.map(|s| s / n));
        }
    }
    out
}

/// (mean, max) CIEDE2000 between the patches of two charts.
fn delta_e(a: &RgbImage, b: &RgbImage) -> (f32, f32) {
    let (pa, pb) = (patches(a), patches(b));
    assert_eq!(pa.len(), pb.len());
    let d: Vec<f32> = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| lab(*x).difference(lab(*y)))
        .collect();
    (
        d.iter().sum::<f32>() / d.len() as f32,
        d.iter().copied().fold(0.0, f32::max),
    )
}

#[test]
fn display_p3_and_adobe_rgb_charts_match_lcms2() {
    let chart = chart();
    for (name, profile) in [
        ("Display P3", ColorProfile::new_display_p3()),
        ("Adobe RGB", ColorProfile::new_adobe_rgb()),
    ] {
        let icc = profile.encode().expect("profile");
        let png = png_with_profile(&chart, &icc);
        let expected = reference(&png);
        let (ours, _) = photoq(&png, chart.width(), OutputFormat::Png, Colour::Srgb);
        assert_eq!(ours.dimensions(), chart.dimensions());
        let (mean, max) = delta_e(&ours, &expected);
        eprintln!("{name}: CIEDE2000 against lcms2 over 125 patches: mean {mean:.3}, max {max:.3}");
        assert!(mean < 1.0, "{name}: mean ΔE2000 {mean}");
        assert!(max < 3.0, "{name}: max ΔE2000 {max}");
        // The chart's values read as sRGB (the profile dropped) fail the same bound: the
        // measurement can tell.
        let (ignored, ignored_max) = delta_e(&chart, &expected);
        eprintln!("{name}, profile dropped: mean {ignored:.3}, max {ignored_max:.3}");
        assert!(ignored > 1.0, "{name}: the profile matters ({ignored})");
    }
}

/// The green of the report: sRGB (0, 200, 40) as Adobe RGB values in a JPEG with its
/// profile comes out (0, 200, 40) again, not its Adobe numbers read as sRGB; with
/// `colour = "keep"` the variant keeps the Adobe numbers and the profile.
#[test]
fn an_adobe_rgb_jpeg_keeps_its_green() {
    let adobe = ColorProfile::new_adobe_rgb();
    let icc = adobe.encode().expect("profile");
    let to_adobe = ColorProfile::new_srgb()
        .create_transform_8bit(
            moxcms::Layout::Rgb,
            &adobe,
            moxcms::Layout::Rgb,
            moxcms::TransformOptions::default(),
        )
        .expect("transform");
    let mut green = [0u8; 3];
    to_adobe
        .transform(&[0, 200, 40], &mut green)
        .expect("converted");
    let (w, h) = (320u32, 240u32);
    let pixels: Vec<u8> = (0..w * h).flat_map(|_| green).collect();
    let mut compressor = turbojpeg::Compressor::new().expect("compressor");
    compressor.set_quality(95).expect("quality");
    compressor
        .set_subsamp(turbojpeg::Subsamp::None)
        .expect("subsamp");
    let jpeg = compressor
        .compress_to_vec(turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: w as usize,
            pitch: w as usize * 3,
            height: h as usize,
            format: turbojpeg::PixelFormat::RGB,
        })
        .expect("jpeg");
    let jpeg = pipeline::metadata::insert(jpeg, &pipeline::metadata::icc_segments(&icc));

    let centre = |image: &RgbImage| image.get_pixel(image.width() / 2, image.height() / 2).0;
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 3);
    for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Png] {
        let (converted, bytes) = photoq(&jpeg, 160, format, Colour::Srgb);
        assert!(
            close(centre(&converted), [0, 200, 40]),
            "{format:?}: {:?}",
            centre(&converted)
        );
        assert_eq!(
            profile_of(&bytes),
            None,
            "{format:?}: sRGB needs no profile"
        );

        let (kept, bytes) = photoq(&jpeg, 160, format, Colour::Keep);
        assert!(
            close(centre(&kept), green),
            "{format:?}: {:?} kept as {green:?}",
            centre(&kept)
        );
        assert_eq!(profile_of(&bytes), Some(icc.clone()), "{format:?}");
    }
}

fn profile_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .expect("format");
    let mut decoder = reader.into_decoder().expect("decoder");
    image::ImageDecoder::icc_profile(&mut decoder).expect("profile")
}

fn committed(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PNGs tests/images/make.sh encodes as HEIC and AVIF hold this file's chart.
#[test]
fn the_committed_charts_are_the_chart() {
    let chart = chart();
    let png = committed("chart-p3.png");
    assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8(), chart);
    let icc = profile_of(&png).expect("chart-p3.png has a profile");
    let profile = ColorProfile::new_from_slice(&icc).expect("readable profile");
    let p3 = ColorProfile::new_display_p3();
    for (ours, theirs) in [
        (profile.red_colorant, p3.red_colorant),
        (profile.green_colorant, p3.green_colorant),
        (profile.blue_colorant, p3.blue_colorant),
    ] {
        assert!((ours.x - theirs.x).abs() < 1e-3 && (ours.y - theirs.y).abs() < 1e-3);
    }
    let deep = image::load_from_memory(&committed("chart-16bit.png")).unwrap();
    assert_eq!(deep.color(), image::ColorType::Rgb16);
    assert_eq!(deep.to_rgb8(), chart);
}

/// HEIC and AVIF photos of the P3 chart (encoded by libheif's and libavif's own tools, lossy,
/// HEVC 4:2:0), with an ICC profile or with colour code points (nclx), come out as lcms2
/// converts the lossless PNG they were made from; a 10-bit AVIF comes back to its 8-bit
/// values. The codec's loss is part of the difference.
#[test]
fn heic_and_avif_photos_are_converted_like_their_source() {
    let chart = chart();
    let expected = reference(&committed("chart-p3.png"));
    for name in ["chart-p3.heic", "chart-p3.avif", "chart-p3-nclx.avif"] {
        let data = committed(name);
        let (ours, _) = photoq(&data, chart.width(), OutputFormat::Png, Colour::Srgb);
        assert_eq!(ours.dimensions(), chart.dimensions(), "{name}");
        let (mean, max) = delta_e(&ours, &expected);
        eprintln!("{name}: CIEDE2000 against lcms2 of the source: mean {mean:.3}, max {max:.3}");
        assert!(mean < 1.0, "{name}: mean ΔE2000 {mean}");
        assert!(max < 4.0, "{name}: max ΔE2000 {max}");
        // Kept in P3 values, the same chart is measurably off: the conversion happened.
        let (kept, _) = photoq(&data, chart.width(), OutputFormat::Png, Colour::Keep);
        let (off, _) = delta_e(&kept, &expected);
        assert!(off > 1.5, "{name}: unconverted differs by {off}");
    }
    let (deep, _) = photoq(
        &committed("chart-10bit.avif"),
        chart.width(),
        OutputFormat::Png,
        Colour::Srgb,
    );
    let (mean, max) = delta_e(&deep, &chart);
    eprintln!("chart-10bit.avif: CIEDE2000 against the chart: mean {mean:.3}, max {max:.3}");
    assert!(mean < 1.0 && max < 4.0, "10-bit AVIF: {mean} {max}");
}

/// An AVIF variant of the P3 chart, read back by an independent decoder (Pillow's libavif),
/// has lcms2's colours, and with `colour = "keep"` carries the profile.
#[test]
fn avif_variants_decode_elsewhere_with_their_colours() {
    let chart = chart();
    let png = committed("chart-p3.png");
    let expected = reference(&png);
    let processed = pipeline::process(&png, &spec(chart.width(), OutputFormat::Avif, Colour::Srgb))
        .expect("processed");
    let variant = &processed.variants[0];
    assert_eq!(variant.content_type, "image/avif");
    assert_eq!(&variant.data[4..12], b"ftypavif");
    let decoded = decoded_elsewhere(&variant.data);
    assert_eq!(decoded.dimensions(), chart.dimensions());
    let (mean, max) = delta_e(&decoded, &expected);
    eprintln!(
        "AVIF variant, read by Pillow: CIEDE2000 against lcms2: mean {mean:.3}, max {max:.3}"
    );
    assert!(mean < 1.0 && max < 4.0, "AVIF variant: {mean} {max}");
}

/// `data` decoded by Pillow (in the test tools' virtualenv) to 8-bit RGB.
fn decoded_elsewhere(data: &[u8]) -> RgbImage {
    let script = "import sys; from PIL import Image; \
                  Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2])";
    through_python(data, &["-c".as_ref(), script.as_ref()])
}
