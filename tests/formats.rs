//! The formats photos arrive in beyond camera JPEGs: HEIC and AVIF (images made by
//! libheif's and libavif's own encoders, in tests/images), 16-bit and palette PNGs,
//! transparency, and the EXIF orientation of PNG and WebP files; AVIF variants; and what
//! the variants may add: a smart crop, a watermark. Each goes through the pipeline and its
//! variants are checked: format, size, pixels (the watermark against Pillow's composite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use image::{DynamicImage, ImageEncoder, Rgba, RgbaImage};
use photoq::config::{Fit, Focus, OutputFormat};
use photoq::pipeline::metadata::Keep;
use photoq::pipeline::{self, Limits, SourceFormat, Spec, VariantSpec};

fn committed(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn variant(name: &str, width: u32, format: OutputFormat) -> VariantSpec {
    VariantSpec {
        name: name.into(),
        width: Some(width),
        height: None,
        fit: Fit::Inside,
        format,
        quality: 95,
        grayscale: false,
        sharpen: 0.0,
        focus: Focus::Centre,
        watermark: None,
        keep: Keep::default(),
    }
}

fn spec(variants: Vec<VariantSpec>, background: [u8; 3]) -> Spec {
    Spec {
        background,
        ..Spec::with_variants(variants)
    }
}

/// Every format the variants can be written in, at the source's own width.
fn every_format(width: u32) -> Vec<VariantSpec> {
    [
        OutputFormat::Jpeg,
        OutputFormat::Png,
        OutputFormat::Webp,
        OutputFormat::Avif,
    ]
    .into_iter()
    .map(|f| variant(&format!("{f:?}").to_lowercase(), width, f))
    .collect()
}

/// A variant decoded: by the `image` crate, or for AVIF by photoq's own decoder (libheif,
/// a different library from the encoder's libaom).
fn decode(v: &pipeline::EncodedVariant) -> RgbaImage {
    if v.content_type == "image/avif" {
        assert_eq!(&v.data[4..12], b"ftypavif");
        let back = pipeline::process(
            &v.data,
            &spec(vec![variant("png", v.width, OutputFormat::Png)], [0; 3]),
        )
        .expect("AVIF variant decodes");
        return image::load_from_memory(&back.variants[0].data)
            .unwrap()
            .to_rgba8();
    }
    image::load_from_memory(&v.data).unwrap().to_rgba8()
}

fn close(a: Rgba<u8>, b: [u8; 4], tolerance: u8) -> bool {
    a.0.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

/// alpha.png (opaque red left, half-transparent blue right) as HEIC, AVIF and the PNG
/// itself: JPEG variants are flattened onto the configured background, the others keep
/// the transparency.
#[test]
fn transparency_is_kept_or_flattened_onto_the_background() {
    let background = [0, 128, 0];
    for (name, format, tolerance) in [
        ("alpha.png", SourceFormat::Png, 2),
        ("alpha.heic", SourceFormat::Heic, 12),
        ("alpha.avif", SourceFormat::Avif, 12),
    ] {
        let processed =
            pipeline::process(&committed(name), &spec(every_format(64), background)).unwrap();
        assert_eq!(processed.format, format, "{name}");
        assert_eq!((processed.width, processed.height), (64, 48), "{name}");
        for v in &processed.variants {
            assert_eq!((v.width, v.height), (64, 48), "{name} {}", v.name);
            let image = decode(v);
            let (left, right) = (*image.get_pixel(8, 24), *image.get_pixel(56, 24));
            assert!(
                close(left, [255, 0, 0, 255], tolerance),
                "{name} {}: {left:?}",
                v.name
            );
            let expected = if v.content_type == "image/jpeg" {
                // Blue at 128/255 over the green background.
                [0, 64, 128, 255]
            } else {
                [0, 0, 255, 128]
            };
            assert!(
                close(right, expected, tolerance),
                "{name} {}: {right:?}, expected {expected:?}",
                v.name
            );
        }
    }
}

/// CMYK JPEGs without a profile, plain (Adobe's inverted storage) and YCCK, come out as
/// the sRGB green they were made from.
#[test]
fn cmyk_and_ycck_jpegs_come_out_in_their_colours() {
    for name in ["cmyk.jpg", "ycck.jpg"] {
        let processed =
            pipeline::process(&committed(name), &spec(every_format(64), [255; 3])).unwrap();
        for v in &processed.variants {
            let image = decode(v);
            let p = *image.get_pixel(32, 24);
            assert!(close(p, [0, 200, 40, 255], 6), "{name} {}: {p:?}", v.name);
        }
    }
}

/// A 16-bit PNG comes out at 8 bits with its values rounded, a palette PNG with a
/// transparent entry keeps its colours and its transparency.
#[test]
fn deep_and_palette_pngs_come_out_right() {
    let deep = committed("chart-16bit.png");
    let processed = pipeline::process(&deep, &spec(every_format(400), [255; 3])).unwrap();
    for v in &processed.variants {
        let image = decode(v);
        assert_eq!(image.dimensions(), (400, 80), "{}", v.name);
        // Patch (255, 192, 64) at column 23 (4 × 5 + 3), row 1.
        let p = *image.get_pixel(23 * 16 + 8, 16 + 8);
        assert!(close(p, [255, 192, 64, 255], 6), "{}: {p:?}", v.name);
    }

    let palette = palette_png();
    let processed = pipeline::process(&palette, &spec(every_format(32), [255; 3])).unwrap();
    for v in &processed.variants {
        let image = decode(v);
        let (opaque, clear) = (*image.get_pixel(4, 8), *image.get_pixel(28, 8));
        assert!(
            close(opaque, [20, 120, 220, 255], 6),
            "{}: {opaque:?}",
            v.name
        );
        let expected = if v.content_type == "image/jpeg" {
            [255, 255, 255, 255]
        } else {
            [0, 0, 0, 0]
        };
        // Fully transparent pixels may hold any colour.
        let clear = if expected[3] == 0 {
            Rgba([0, 0, 0, clear.0[3]])
        } else {
            clear
        };
        assert!(close(clear, expected, 6), "{}: {clear:?}", v.name);
    }
}

/// A 32 × 16 indexed PNG: entry 0 (20, 120, 220) on the left half, entry 1 transparent on
/// the right.
fn palette_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 32, 16);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![20, 120, 220, 0, 0, 0]);
        encoder.set_trns(vec![255, 0]);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..16)
            .flat_map(|_| (0..32).map(|x| u8::from(x >= 16)))
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

/// A TIFF block holding one tag: orientation.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff
}

/// PNG and WebP files with an EXIF orientation of 6 (rotate 90° clockwise to display) come
/// out upright: a 40 × 20 image with a red left half displays 20 × 40, red on top.
#[test]
fn png_and_webp_exif_orientation_is_applied() {
    let image = RgbaImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 255, 255])
        }
    });
    let mut png = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
    encoder.set_exif_metadata(exif_orientation(6)).unwrap();
    encoder
        .write_image(image.as_raw(), 40, 20, image::ExtendedColorType::Rgba8)
        .unwrap();
    let mut webp = Vec::new();
    let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut webp);
    encoder.set_exif_metadata(exif_orientation(6)).unwrap();
    encoder
        .write_image(image.as_raw(), 40, 20, image::ExtendedColorType::Rgba8)
        .unwrap();
    for (name, data) in [("PNG", png), ("WebP", webp)] {
        let processed = pipeline::process(&data, &spec(every_format(20), [255; 3])).unwrap();
        assert_eq!(processed.exif.orientation, Some(6), "{name}");
        assert_eq!((processed.width, processed.height), (20, 40), "{name}");
        for v in &processed.variants {
            let out = decode(v);
            assert_eq!(out.dimensions(), (20, 40), "{name} {}", v.name);
            let (top, bottom) = (*out.get_pixel(10, 5), *out.get_pixel(10, 35));
            assert!(
                close(top, [255, 0, 0, 255], 12),
                "{name} {}: {top:?}",
                v.name
            );
            assert!(
                close(bottom, [0, 0, 255, 255], 12),
                "{name} {}: {bottom:?}",
                v.name
            );
        }
    }
}

/// A HEIC or AVIF past the pixel limit is refused from its header, before decoding.
#[test]
fn heif_limits_are_checked_before_decoding() {
    let mut small = spec(every_format(64), [255; 3]);
    small.limits = Limits {
        max_pixels: 1000,
        max_dimension: 10_000,
    };
    for name in ["chart-p3.heic", "chart-p3.avif"] {
        let err = pipeline::process(&committed(name), &small).unwrap_err();
        assert_eq!(err.code(), "image_too_large", "{name}: {err}");
    }
    // Truncated files are refused with a clear error, not a panic.
    for name in ["chart-p3.heic", "alpha.avif"] {
        let data = committed(name);
        for cut in [40, data.len() / 2, data.len() - 10] {
            let err = pipeline::process(&data[..cut], &spec(every_format(64), [255; 3]))
                .expect_err("truncated");
            assert_eq!(err.code(), "undecodable_image", "{name}[..{cut}]: {err}");
        }
    }
}

/// An upright photo without transparency keeps its layout through AVIF (grey stays grey).
#[test]
fn grey_avif_variants_decode_grey() {
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(48, 32, |x, _| {
        image::Luma([(x * 5) as u8])
    }));
    let mut png = Vec::new();
    grey.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let processed = pipeline::process(
        &png,
        &spec(vec![variant("avif", 48, OutputFormat::Avif)], [255; 3]),
    )
    .unwrap();
    let out = decode(&processed.variants[0]);
    for x in [4, 24, 44] {
        let p = out.get_pixel(x, 16).0;
        let v = (x * 5) as u8;
        assert!(
            p[..3].iter().all(|c| c.abs_diff(v) <= 4),
            "column {x}: {p:?} for {v}"
        );
    }
}

/// A 200 × 100 photo whose right part holds a busy subject on a flat backdrop.
fn photo_with_subject_at(x0: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(200, 100, |x, y| {
        let inside = (x0..x0 + 40).contains(&x) && (30..70).contains(&y);
        match (inside, (x / 3 + y / 3) % 2 == 0) {
            (true, true) => image::Rgb([220, 60, 40]),
            (true, false) => image::Rgb([30, 40, 200]),
            _ => image::Rgb([120, 130, 125]),
        }
    });
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// A square `cover` crop of a wide photo keeps its subject with `entropy` and `attention`,
/// and cuts it off in the centre.
#[test]
fn smart_crops_keep_the_subject() {
    for subject in [10u32, 150] {
        let photo = photo_with_subject_at(subject);
        for focus in [Focus::Centre, Focus::Entropy, Focus::Attention] {
            let square = VariantSpec {
                height: Some(100),
                fit: Fit::Cover,
                focus,
                ..variant("square", 100, OutputFormat::Png)
            };
            let processed = pipeline::process(&photo, &spec(vec![square], [255; 3])).unwrap();
            let out = decode(&processed.variants[0]);
            assert_eq!(out.dimensions(), (100, 100));
            // The subject's colours (red or blue) in the crop, counted.
            let subject_pixels = out
                .pixels()
                .filter(|p| p.0[0] > 180 || p.0[2] > 160)
                .count();
            if focus == Focus::Centre {
                assert!(subject_pixels < 400, "centre kept {subject_pixels} of it");
            } else {
                assert!(
                    subject_pixels >= 40 * 40 * 9 / 10,
                    "{focus:?}, subject at {subject}: {subject_pixels} pixels of it kept"
                );
            }
        }
    }
}

/// A 50 × 20 watermark with graded transparency, composited by photoq on a PNG variant, is
/// what Pillow composites (Porter-Duff over, alpha × opacity) on the same variant without
/// it, at the place the configuration says: bottom-right, 5 % of the shorter side in.
#[test]
fn watermarks_match_a_reference_composite() {
    let mark = RgbaImage::from_fn(50, 20, |x, y| {
        Rgba([255, (x * 5) as u8, (y * 12) as u8, (x * 255 / 49) as u8])
    });
    let mut mark_png = Vec::new();
    DynamicImage::ImageRgba8(mark.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut mark_png),
            image::ImageFormat::Png,
        )
        .unwrap();
    let watermark = pipeline::watermark::Watermark::from_png(&mark_png).unwrap();
    let photo = photo_with_subject_at(60);
    let placement = photoq::config::WatermarkPlacement {
        position: photoq::config::Position::BottomRight,
        margin: 0.05,
        opacity: 0.6,
        size: 0.25,
    };
    let plain = variant("plain", 200, OutputFormat::Png);
    let marked = VariantSpec {
        watermark: Some(placement),
        ..variant("marked", 200, OutputFormat::Png)
    };
    let mut spec = spec(vec![plain, marked], [255; 3]);
    spec.watermark = Some(std::sync::Arc::new(watermark));
    let processed = pipeline::process(&photo, &spec).unwrap();
    let by_name = |n: &str| {
        let v = processed.variants.iter().find(|v| v.name == n).unwrap();
        decode(v)
    };
    let (plain, marked) = (by_name("plain"), by_name("marked"));

    // Pillow's composite of the same mark on the plain variant, at (145, 75).
    let dir = std::env::temp_dir().join(format!("pqmark_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    plain.save(dir.join("base.png")).unwrap();
    mark.save(dir.join("mark.png")).unwrap();
    let script = "import sys
from PIL import Image
base = Image.open(sys.argv[1]).convert('RGBA')
mark = Image.open(sys.argv[2]).convert('RGBA')
mark.putalpha(mark.getchannel('A').point(lambda a: round(a * 0.6)))
base.alpha_composite(mark, (145, 75))
base.save(sys.argv[3])";
    let status = std::process::Command::new(format!("{}/bin/python", venv()))
        .args(["-c", script])
        .arg(dir.join("base.png"))
        .arg(dir.join("mark.png"))
        .arg(dir.join("out.png"))
        .status()
        .expect("the test tools' Python");
    assert!(status.success());
    let reference = image::open(dir.join("out.png")).unwrap().to_rgba8();
    std::fs::remove_dir_all(&dir).ok();

    let mut differing = 0;
    for (x, y, p) in marked.enumerate_pixels() {
        let r = reference.get_pixel(x, y);
        let d =
            p.0.iter()
                .zip(r.0)
                .map(|(a, b)| a.abs_diff(b))
                .max()
                .unwrap();
        assert!(d <= 2, "({x}, {y}): {p:?}, Pillow {r:?}");
        if p != plain.get_pixel(x, y) {
            differing += 1;
            assert!(
                (145..195).contains(&x) && (75..95).contains(&y),
                "({x}, {y}) touched"
            );
        }
    }
    assert!(differing > 500, "only {differing} pixels changed");
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
