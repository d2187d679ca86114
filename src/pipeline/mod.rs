//! The image work, pure: bytes in, variants and EXIF out. No I/O, no async; the worker runs
//! it on the blocking pool.
//!
//! Steps: sniff → check dimensions → decode once, JPEGs shrunk on load as far as the
//! largest variant allows → for each variant, largest first: resize from the smallest
//! adequate image so far (the decoded one or a larger whole-frame variant), in the file's
//! own orientation → to sRGB from the source's profile → grayscale / sharpen → apply the
//! EXIF orientation (on the small image) → encode without metadata (or with the profile,
//! when colours are kept).

pub mod adjust;
pub mod colour;
pub mod decode;
pub mod encode;
pub mod exif;
pub mod focus;
pub mod frame;
pub mod heif;
pub mod metadata;
pub mod orient;
pub mod placeholder;
pub mod planar;
pub mod privacy;
pub mod resize;
pub mod sniff;
pub mod variant;
pub mod watermark;

use image::metadata::Orientation;

pub use crate::config::Colour;
pub use decode::JpegOutput;
pub use exif::Exif;
use frame::Frame;
pub use sniff::{sniff, SourceFormat};
pub use variant::VariantSpec;
use variant::{Geometry, OutputFormat, Rect};

/// Errors of the image work. All are the input's fault, so retrying cannot help, except
/// `Internal`, which is a bug.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("unsupported image format (JPEG, PNG, WebP, HEIC and AVIF are supported)")]
    Unsupported,
    #[error(
        "image is {width}x{height}; the limit is {max_pixels} pixels and {max_dimension} px a side"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
        max_dimension: u32,
    },
    #[error("image cannot be decoded: {0}")]
    Decode(String),
    #[error("internal image error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Unsupported => "unsupported_format",
            PipelineError::TooLarge { .. } => "image_too_large",
            PipelineError::Decode(_) => "undecodable_image",
            PipelineError::Internal(_) => "internal",
        }
    }

    fn from_image(e: image::ImageError) -> Self {
        match e {
            image::ImageError::Limits(l) => PipelineError::Decode(format!("limit exceeded: {l}")),
            image::ImageError::Unsupported(u) => PipelineError::Decode(u.to_string()),
            other => PipelineError::Decode(other.to_string()),
        }
    }
}

/// Bounds on what a worker decodes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_dimension: u32,
}

impl Limits {
    pub fn check(&self, width: u32, height: u32) -> Result<(), PipelineError> {
        let pixels = u64::from(width) * u64::from(height);
        if width == 0 || height == 0 {
            return Err(PipelineError::Decode("image has no pixels".into()));
        }
        if pixels > self.max_pixels || width.max(height) > self.max_dimension {
            return Err(PipelineError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
                max_dimension: self.max_dimension,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub limits: Limits,
    /// Decode JPEGs at a reduced scale when every variant still gets enough pixels.
    pub shrink_on_load: bool,
    /// JPEGs kept in their YCbCr planes from decoder to encoder (always, in the service;
    /// the benches compare it with RGB).
    pub jpeg_output: JpegOutput,
    /// Variants converted to sRGB, or in the source's colours with its profile.
    pub colour: Colour,
    /// Transparency is flattened onto this in JPEG variants.
    pub background: [u8; 3],
    /// The watermark the variants may place.
    pub watermark: Option<std::sync::Arc<watermark::Watermark>>,
    /// How AVIF variants are encoded.
    pub avif: heif::AvifOptions,
    /// Names everything above that decides the variants' pixels (see [`Spec::fingerprinted`]).
    pub fingerprint: String,
    pub variants: Vec<VariantSpec>,
}

impl Spec {
    /// The spec the configuration describes; fails when its watermark cannot be read.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        let path = &config.pipeline.watermark;
        let watermark = if path.as_os_str().is_empty() {
            None
        } else {
            let mark = watermark::Watermark::load(path).map_err(|e| {
                crate::config::ConfigError::Invalid(format!("pipeline.watermark: {e}"))
            })?;
            Some(std::sync::Arc::new(mark))
        };
        let variants = config
            .variants
            .iter()
            .map(|(name, v)| VariantSpec {
                name: name.clone(),
                width: v.width,
                height: v.height,
                fit: v.fit,
                format: v.format,
                quality: v.quality,
                grayscale: v.grayscale,
                sharpen: v.sharpen,
                focus: v.focus,
                watermark: v.watermark,
                keep: metadata::Keep::default(),
            })
            .collect();
        Ok(Spec {
            limits: Limits {
                max_pixels: config.pipeline.max_pixels,
                max_dimension: config.pipeline.max_dimension,
            },
            shrink_on_load: config.pipeline.shrink_on_load,
            jpeg_output: JpegOutput::Planes,
            colour: config.pipeline.colour,
            background: config.pipeline.background.0,
            avif: heif::AvifOptions {
                speed: config.pipeline.avif_speed,
                chroma: config.pipeline.avif_chroma,
            },
            fingerprint: String::new(),
            watermark,
            variants,
        }
        .fingerprinted())
    }

    /// `variants` with everything else as the built-in configuration has it (100 MP, 30 000
    /// px a side, shrink-on-load, sRGB, white background, no watermark): for tests,
    /// benchmarks and tools, which change what they need (and call
    /// [`Spec::fingerprinted`] again if the fingerprint matters to them).
    pub fn with_variants(variants: Vec<VariantSpec>) -> Self {
        Spec {
            limits: Limits {
                max_pixels: 100_000_000,
                max_dimension: 30_000,
            },
            shrink_on_load: true,
            jpeg_output: JpegOutput::Planes,
            colour: Colour::Srgb,
            background: [255; 3],
            watermark: None,
            avif: heif::AvifOptions::default(),
            fingerprint: String::new(),
            variants,
        }
        .fingerprinted()
    }

    /// The spec with its fingerprint: a hash of what decides the variants' pixels (the
    /// variants, the limits, colour, background, the watermark's pixels) and of this
    /// version of photoq, so that results are reused only for the same configuration.
    pub fn fingerprinted(mut self) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(env!("CARGO_PKG_VERSION"));
        hash.update(format!(
            "{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}",
            self.limits,
            self.colour,
            self.shrink_on_load,
            self.background,
            self.jpeg_output,
            self.avif,
            self.variants
        ));
        if let Some(mark) = &self.watermark {
            hash.update(mark.digest());
        }
        self.fingerprint = hex::encode(&hash.finalize()[..16]);
        self
    }
}

impl Spec {
    /// The spec of imported images: the configured variants and, when enabled, the
    /// `compressed` rendition (the original size, orientation applied, no metadata).
    pub fn for_imports(config: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        let mut spec = Spec::from_config(config)?;
        let import = &config.import;
        if import.compressed {
            spec.variants.push(VariantSpec {
                name: COMPRESSED.into(),
                width: None,
                height: None,
                fit: crate::config::Fit::Inside,
                format: import.compressed_format,
                quality: import.compressed_quality,
                grayscale: false,
                sharpen: 0.0,
                focus: focus::Focus::Centre,
                watermark: None,
                keep: metadata::Keep {
                    exif: import
                        .compressed_keep
                        .contains(&crate::config::KeptMetadata::Exif),
                    icc: import
                        .compressed_keep
                        .contains(&crate::config::KeptMetadata::Icc),
                },
            });
        }
        Ok(spec.fingerprinted())
    }
}

/// Name of the full-size rendition imported images get.
pub const COMPRESSED: &str = "compressed";

#[derive(Debug, Clone)]
pub struct EncodedVariant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
    pub extension: &'static str,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Processed {
    pub format: SourceFormat,
    /// Width and height as displayed, i.e. after the EXIF orientation.
    pub width: u32,
    pub height: u32,
    pub exif: Exif,
    /// Largest first.
    pub variants: Vec<EncodedVariant>,
    /// A ThumbHash of the photo (see `placeholder`).
    pub thumbhash: Vec<u8>,
    /// Where the time went.
    pub timings: Timings,
}

/// Time spent in each stage of [`process`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: std::time::Duration,
    /// Resizing, adjustments and orientation, over all variants.
    pub resize: std::time::Duration,
    /// Encoding (and metadata carried over), over all variants.
    pub encode: std::time::Duration,
}

/// A variant and its geometry in the file's stored orientation.
struct Planned<'a> {
    spec: &'a VariantSpec,
    stored: Geometry,
}

pub fn process(data: &[u8], spec: &Spec) -> Result<Processed, PipelineError> {
    let format = sniff(data).ok_or(PipelineError::Unsupported)?;
    let mut timings = Timings::default();
    let clock = std::time::Instant::now();
    let decoding = tracing::info_span!("decode", bytes = data.len()).entered();
    let decoded = decode::decode(
        data,
        format,
        &spec.limits,
        spec.jpeg_output,
        spec.colour,
        |w, h, orientation| {
            if !spec.shrink_on_load {
                return 1.0;
            }
            plan(spec, w, h, orientation)
                .iter()
                .map(|p| p.stored.reduction())
                .fold(f64::INFINITY, f64::min)
        },
    )?;
    timings.decode = clock.elapsed();
    drop(decoding);
    let orientation = decoded.orientation;
    let (full_w, full_h) = (decoded.width, decoded.height);
    let (to_srgb, icc) = (decoded.to_srgb, decoded.icc);

    // Whole-frame images the variants may be resized from, in stored orientation.
    let mut sources: Vec<Frame> = vec![decoded.pixels];
    let mut variants = Vec::with_capacity(spec.variants.len());
    // Made from the decoded image once, if a smart crop needs it.
    let mut interest: Option<focus::InterestMap> = None;
    for planned in plan(spec, full_w, full_h, orientation) {
        let mut stored = planned.stored;
        if planned.spec.focus != focus::Focus::Centre {
            let map = match interest.take() {
                Some(map) => map,
                None => focus::InterestMap::of(&sources[0])?,
            };
            stored.crop = map.place(stored.crop, full_w, full_h, planned.spec.focus);
            interest = Some(map);
        }
        let clock = std::time::Instant::now();
        let resizing = tracing::info_span!("resize", variant = %planned.spec.name).entered();
        let chroma = frame::chroma_for(planned.spec.format);
        let source = smallest_adequate(&sources, stored, chroma, full_w, full_h);
        let crop = stored.crop.scaled(
            f64::from(source.width()) / f64::from(full_w),
            f64::from(source.height()) / f64::from(full_h),
        );
        let mut frame = source.resize(crop, stored.width, stored.height, planned.spec.format)?;
        // The decoded image is in its source's colours; every variant kept as a source
        // is already in sRGB.
        if let (Some(to_srgb), true) = (&to_srgb, std::ptr::eq(source, &sources[0])) {
            frame = frame.to_srgb(to_srgb)?;
        }
        if planned.spec.keeps_whole_frame() && stored.crop == Rect::whole(full_w, full_h) {
            sources.push(frame.clone());
        }
        if planned.spec.grayscale {
            frame = frame.grayscale()?;
        }
        let mut oriented = frame.sharpen(planned.spec.sharpen).orient(orientation)?;
        if !planned.spec.format.has_alpha() {
            oriented = oriented.flatten(spec.background);
        }
        if let (Some(mark), Some(placement)) = (&spec.watermark, &planned.spec.watermark) {
            oriented = mark.apply(oriented, placement)?;
        }
        timings.resize += clock.elapsed();
        drop(resizing);
        let clock = std::time::Instant::now();
        let _encoding = tracing::info_span!("encode", variant = %planned.spec.name).entered();
        // A grey variant has no use for an RGB profile (viewers reject the mismatch).
        let keeps_icc =
            (spec.colour == Colour::Keep || planned.spec.keep.icc) && !planned.spec.grayscale;
        let mut encoded = oriented.encode(
            planned.spec.format,
            planned.spec.quality,
            icc.as_deref().filter(|_| keeps_icc),
            spec.avif,
        )?;
        if planned.spec.keep.exif
            && format == SourceFormat::Jpeg
            && planned.spec.format == OutputFormat::Jpeg
        {
            encoded.data = metadata::insert(encoded.data, &metadata::carried_exif(data));
        }
        timings.encode += clock.elapsed();
        variants.push(EncodedVariant {
            name: planned.spec.name.clone(),
            width: oriented.width(),
            height: oriented.height(),
            content_type: encoded.content_type,
            extension: encoded.extension,
            data: encoded.data,
        });
    }
    // The placeholder, from the smallest whole image at hand.
    let clock = std::time::Instant::now();
    let smallest = sources
        .iter()
        .min_by_key(|s| s.bytes())
        .unwrap_or(&sources[0]);
    // Only the decoded image is still in its source's colours when variants are converted;
    // with the profile kept (`icc`), every source is.
    let colours = match (&to_srgb, icc.as_deref()) {
        (Some(to_srgb), _) if std::ptr::eq(smallest, &sources[0]) => {
            placeholder::Colours::Convert(to_srgb)
        }
        (None, Some(icc)) => placeholder::Colours::Profile(icc),
        _ => placeholder::Colours::Srgb,
    };
    let thumbhash = placeholder::thumbhash(smallest, colours, orientation)?;
    timings.resize += clock.elapsed();
    let (width, height) = if orient::swaps_axes(orientation) {
        (full_h, full_w)
    } else {
        (full_w, full_h)
    };
    Ok(Processed {
        format,
        width,
        height,
        exif: decoded.exif,
        variants,
        thumbhash,
        timings,
    })
}

/// Every variant's geometry for a source stored as `width` × `height`, largest output first.
fn plan(spec: &Spec, width: u32, height: u32, orientation: Orientation) -> Vec<Planned<'_>> {
    let swap = orient::swaps_axes(orientation);
    let (dw, dh) = if swap {
        (height, width)
    } else {
        (width, height)
    };
    let mut planned: Vec<Planned> = spec
        .variants
        .iter()
        .map(|v| {
            let g = v.geometry(dw, dh);
            Planned {
                spec: v,
                stored: if swap { g.transposed() } else { g },
            }
        })
        .collect();
    planned
        .sort_by_key(|p| std::cmp::Reverse(u64::from(p.stored.width) * u64::from(p.stored.height)));
    planned
}

/// The smallest whole-frame source that still has at least as many pixels as the output
/// on both axes of the crop, in luma and in chroma (`chroma`: the output's subsampling);
/// the full decode always qualifies, or is the best there is.
fn smallest_adequate(
    sources: &[Frame],
    g: Geometry,
    chroma: (u32, u32),
    full_w: u32,
    full_h: u32,
) -> &Frame {
    let adequate = |s: &&Frame| {
        let sx = f64::from(s.width()) / f64::from(full_w);
        let sy = f64::from(s.height()) / f64::from(full_h);
        let (cx, cy) = s.subsampling();
        let luma =
            g.crop.width * sx >= f64::from(g.width) && g.crop.height * sy >= f64::from(g.height);
        let chroma_x =
            g.crop.width * sx / f64::from(cx) >= f64::from(g.width) / f64::from(chroma.0);
        let chroma_y =
            g.crop.height * sy / f64::from(cy) >= f64::from(g.height) / f64::from(chroma.1);
        luma && chroma_x && chroma_y
    };
    sources
        .iter()
        .filter(adequate)
        .min_by_key(|s| s.bytes())
        .unwrap_or(&sources[0])
}

#[cfg(test)]
mod tests {
    use super::resize::Pixels;
    use super::variant::Fit;
    use super::*;
    use image::{DynamicImage, RgbImage, RgbaImage};

    fn variant(name: &str, side: u32) -> VariantSpec {
        VariantSpec {
            name: name.into(),
            width: Some(side),
            height: Some(side),
            fit: Fit::Inside,
            format: OutputFormat::Jpeg,
            quality: 80,
            grayscale: false,
            sharpen: 0.0,
            focus: focus::Focus::Centre,
            watermark: None,
            keep: metadata::Keep::default(),
        }
    }

    fn spec_with(variants: Vec<VariantSpec>) -> Spec {
        Spec {
            limits: Limits {
                max_pixels: 4_000_000,
                max_dimension: 4000,
            },
            ..Spec::with_variants(variants)
        }
    }

    fn spec() -> Spec {
        spec_with(vec![variant("thumbnail", 16), variant("preview", 64)])
    }

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let image = if alpha {
            DynamicImage::ImageRgba8(RgbaImage::new(width, height))
        } else {
            DynamicImage::ImageRgb8(RgbImage::new(width, height))
        };
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode png");
        out.into_inner()
    }

    /// A smooth colour gradient with a few hard edges, as a q95 4:2:0 JPEG.
    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        jpeg_sampled(width, height, turbojpeg::Subsamp::Sub2x2, 1)
    }

    /// The same gradient at a chosen chroma subsampling, with an EXIF orientation unless 1.
    fn jpeg_sampled(
        width: u32,
        height: u32,
        subsamp: turbojpeg::Subsamp,
        orientation: u16,
    ) -> Vec<u8> {
        let data: Vec<u8> = (0..height)
            .flat_map(|y| {
                (0..width).flat_map(move |x| {
                    let edge = if (x / 100 + y / 100) % 2 == 0 { 40 } else { 0 };
                    [
                        (x * 200 / width) as u8 + edge,
                        (y * 200 / height) as u8 + edge,
                        128 + ((x / 4 + y / 6) % 64) as u8,
                    ]
                })
            })
            .collect();
        let mut compressor = turbojpeg::Compressor::new().expect("compressor");
        compressor.set_quality(95).expect("quality");
        compressor.set_subsamp(subsamp).expect("subsamp");
        let image = turbojpeg::Image {
            pixels: data.as_slice(),
            width: width as usize,
            pitch: width as usize * 3,
            height: height as usize,
            format: turbojpeg::PixelFormat::RGB,
        };
        let plain = compressor.compress_to_vec(image).expect("encode jpeg");
        if orientation == 1 {
            return plain;
        }
        let mut out = plain[..2].to_vec();
        out.extend(metadata::tests::exif_segment(orientation));
        out.extend_from_slice(&plain[2..]);
        out
    }

    /// Mean and largest per-channel difference of two same-sized images.
    fn difference(a: &[u8], b: &[u8]) -> (f64, u8) {
        let diffs = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y));
        let sum: u64 = diffs.clone().map(u64::from).sum();
        (sum as f64 / a.len() as f64, diffs.max().unwrap_or(0))
    }

    fn decode_rgb(data: &[u8]) -> image::RgbImage {
        image::load_from_memory(data).expect("decodes").into_rgb8()
    }

    #[test]
    fn png_makes_every_variant_at_its_size() {
        let out = process(&png(200, 100, true), &spec()).expect("process");
        assert_eq!((out.width, out.height), (200, 100));
        let sizes: Vec<_> = out
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.width, v.height))
            .collect();
        assert_eq!(sizes, vec![("preview", 64, 32), ("thumbnail", 16, 8)]);
        for v in &out.variants {
            let decoded = image::load_from_memory(&v.data).expect("variant decodes");
            assert_eq!((decoded.width(), decoded.height()), (v.width, v.height));
        }
    }

    #[test]
    fn awkward_sizes_cascade_without_overshooting_the_source() {
        // 1488 × 2240 → 850 × 1280, whose scale to the source is not exact in floating point.
        let spec = spec_with(vec![variant("preview", 1280), variant("thumb", 256)]);
        for (w, h) in [(1488, 2240), (1001, 999), (2000, 3)] {
            let out = process(&png(w, h, false), &spec).expect("process");
            assert_eq!(out.variants.len(), 2, "{w}x{h}");
        }
    }

    #[test]
    fn small_images_are_not_enlarged() {
        let out = process(&png(10, 5, false), &spec()).expect("process");
        assert!(out.variants.iter().all(|v| (v.width, v.height) == (10, 5)));
    }

    #[test]
    fn bombs_are_refused_before_decoding() {
        // One pixel over the limit: refused from the header alone.
        let err = process(&png(2001, 2000, false), &spec()).expect_err("too large");
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
        let err = process(&jpeg(2001, 2000), &spec()).expect_err("too large");
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(matches!(
            process(b"plain text", &spec()),
            Err(PipelineError::Unsupported)
        ));
        for full in [png(50, 50, false), jpeg(300, 200)] {
            // (A JPEG missing only its end marker still holds every pixel; that one decodes.)
            for cut in [8, 20, 33, full.len() / 2, full.len() - 100] {
                assert!(process(&full[..cut], &spec()).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn jpeg_is_shrunk_on_load_only_as_far_as_the_largest_variant_allows() {
        let data = jpeg(800, 600);
        let limits = spec().limits;
        let at = |reduction: f64| {
            let d = decode::decode(
                &data,
                SourceFormat::Jpeg,
                &limits,
                JpegOutput::Planes,
                Colour::Srgb,
                |w, h, _| {
                    assert_eq!((w, h), (800, 600));
                    reduction
                },
            )
            .expect("decodes");
            (d.pixels.width(), d.pixels.height(), d.width, d.height)
        };
        assert_eq!(at(1.0), (800, 600, 800, 600));
        assert_eq!(at(3.9), (400, 300, 800, 600));
        assert_eq!(at(4.0), (200, 150, 800, 600));
        assert_eq!(at(100.0), (100, 75, 800, 600));
    }

    #[test]
    fn shrink_on_load_output_matches_a_full_decode() {
        let data = jpeg(1600, 1200);
        let mut full = spec_with(vec![variant("small", 150), variant("mid", 400)]);
        full.shrink_on_load = false;
        let mut shrunk = full.clone();
        shrunk.shrink_on_load = true;
        let a = process(&data, &full).expect("full");
        let b = process(&data, &shrunk).expect("shrunk");
        for (va, vb) in a.variants.iter().zip(&b.variants) {
            assert_eq!((va.width, va.height), (vb.width, vb.height));
            let (ia, ib) = (decode_rgb(&va.data), decode_rgb(&vb.data));
            let diff: u64 = ia
                .as_raw()
                .iter()
                .zip(ib.as_raw())
                .map(|(&x, &y)| u64::from(x.abs_diff(y)))
                .sum();
            let mean = diff as f64 / ia.as_raw().len() as f64;
            assert!(mean < 2.0, "{}: mean difference {mean}", va.name);
        }
    }

    #[test]
    fn cover_grayscale_webp_and_png_variants() {
        let mut square = variant("square", 120);
        square.fit = Fit::Cover;
        square.format = OutputFormat::Webp;
        square.grayscale = true;
        square.sharpen = 1.0;
        let mut strip = variant("strip", 0);
        strip.width = Some(300);
        strip.height = Some(50);
        strip.fit = Fit::Exact;
        strip.format = OutputFormat::Png;
        let out = process(&jpeg(800, 600), &spec_with(vec![square, strip])).expect("process");
        let by_name = |n: &str| out.variants.iter().find(|v| v.name == n).expect(n);

        let sq = by_name("square");
        assert_eq!(
            (sq.width, sq.height, sq.content_type),
            (120, 120, "image/webp")
        );
        let pixels = decode_rgb(&sq.data);
        assert!(pixels
            .pixels()
            .all(|p| p[0].abs_diff(p[1]) <= 2 && p[1].abs_diff(p[2]) <= 2));

        let st = by_name("strip");
        assert_eq!((st.width, st.height, st.extension), (300, 50, "png"));
        assert_eq!(decode_rgb(&st.data).dimensions(), (300, 50));
    }

    #[test]
    fn smaller_variants_are_resized_from_larger_ones_without_visible_loss() {
        let data = jpeg(1600, 1200);
        let cascade = process(
            &data,
            &spec_with(vec![variant("thumb", 100), variant("preview", 500)]),
        )
        .expect("cascade");
        let direct = process(&data, &spec_with(vec![variant("thumb", 100)])).expect("direct");
        let (a, b) = (
            decode_rgb(&cascade.variants[1].data),
            decode_rgb(&direct.variants[0].data),
        );
        assert_eq!(a.dimensions(), (100, 75));
        let worst = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| x.abs_diff(y))
            .max()
            .unwrap_or(0);
        assert!(worst < 24, "largest pixel difference {worst}");
    }

    #[test]
    fn planes_and_rgb_make_the_same_variants() {
        use turbojpeg::Subsamp;
        let mut webp = variant("webp", 64);
        webp.format = OutputFormat::Webp;
        let mut grey = variant("grey", 50);
        grey.fit = Fit::Cover;
        grey.format = OutputFormat::Png;
        grey.grayscale = true;
        let mut sharp = variant("sharp", 333);
        sharp.sharpen = 0.5;
        let planes = spec_with(vec![
            variant("preview", 501),
            sharp,
            variant("thumb", 101),
            webp,
            grey,
        ]);
        let rgb = Spec {
            jpeg_output: JpegOutput::Packed,
            ..planes.clone()
        };
        for subsamp in [
            Subsamp::Sub2x2,
            Subsamp::Sub2x1,
            Subsamp::None,
            Subsamp::Sub1x2,
        ] {
            for (w, h, orientation) in [
                (1601, 1201, 1),
                (801, 601, 6),
                (1203, 905, 3),
                (37, 23, 8),
                (38, 24, 1),
            ] {
                let data = jpeg_sampled(w, h, subsamp, orientation);
                let case = format!("{subsamp:?} {w}x{h} orientation {orientation}");
                let decoded = decode::decode(
                    &data,
                    SourceFormat::Jpeg,
                    &planes.limits,
                    JpegOutput::Planes,
                    Colour::Srgb,
                    |_, _, _| 2.0,
                )
                .expect("decodes");
                assert!(matches!(decoded.pixels, Frame::Planar(_)), "{case}: planes");
                let a = process(&data, &planes).expect("planes");
                let b = process(&data, &rgb).expect("rgb");
                assert_eq!((a.width, a.height), (b.width, b.height), "{case}");
                // The reference: a full-size RGB decode, turned upright, resized in one step.
                let mut full = image::load_from_memory(&data).expect("decodes");
                full.apply_orientation(
                    image::metadata::Orientation::from_exif(orientation as u8)
                        .expect("orientation"),
                );
                let full = Pixels::from_image(full);
                for (va, vb) in a.variants.iter().zip(&b.variants) {
                    assert_eq!(
                        (&va.name, va.width, va.height, va.content_type),
                        (&vb.name, vb.width, vb.height, vb.content_type),
                        "{case}"
                    );
                    let (ia, ib) = (decode_rgb(&va.data), decode_rgb(&vb.data));
                    assert_eq!(ia.dimensions(), (va.width, va.height), "{case}");
                    let (mean, _) = difference(ia.as_raw(), ib.as_raw());
                    if va.name == "grey" || va.name == "sharp" || va.width * va.height == w * h {
                        // Cropped, sharpened (lightness alone from planes) or not resized
                        // (chroma filtered once, not up and down): alike, no more.
                        assert!(mean < 2.5, "{case} {}: mean difference {mean}", va.name);
                        continue;
                    }
                    let reference = resize::resize(
                        &full,
                        variant::Rect::whole(full.width, full.height),
                        va.width,
                        va.height,
                    )
                    .expect("reference");
                    let (ea, _) = difference(ia.as_raw(), &reference.data);
                    let (eb, _) = difference(ib.as_raw(), &reference.data);
                    assert!(
                        ea <= eb * 1.1,
                        "{case} {}: planes {ea:.2} from the reference, RGB {eb:.2}",
                        va.name
                    );
                }
            }
        }
    }

    #[test]
    fn planes_take_large_steps_to_odd_sizes() {
        // A corpus photo's size: the 1280 x 794 preview's last chroma row hangs over, and
        // the 256 x 159 thumbnail's takes 2.5 of the preview's chroma rows past its edge.
        let data = jpeg_sampled(3872, 2403, turbojpeg::Subsamp::Sub2x2, 1);
        let planes = spec_with(vec![variant("preview", 1280), variant("thumbnail", 256)]);
        let mut rgb = planes.clone();
        rgb.jpeg_output = JpegOutput::Packed;
        rgb.limits.max_pixels = 10_000_000;
        let mut planes = planes;
        planes.limits = rgb.limits.clone();
        let a = process(&data, &planes).expect("planes");
        let b = process(&data, &rgb).expect("rgb");
        for (va, vb) in a.variants.iter().zip(&b.variants) {
            assert_eq!((va.width, va.height), (vb.width, vb.height));
            let (mean, _) =
                difference(decode_rgb(&va.data).as_raw(), decode_rgb(&vb.data).as_raw());
            assert!(mean < 2.5, "{}: mean difference {mean}", va.name);
        }
        assert_eq!((a.variants[1].width, a.variants[1].height), (256, 159));
    }

    #[test]
    fn planes_keep_flat_colours() {
        // A flat colour through decode, resize, rotate and encode stays that colour.
        for colour in [[200u8, 40, 90], [20, 180, 240], [250, 250, 10]] {
            let (w, h) = (640, 481);
            let data: Vec<u8> = colour.repeat(w * h);
            let mut compressor = turbojpeg::Compressor::new().expect("compressor");
            compressor.set_quality(100).expect("quality");
            let image = turbojpeg::Image {
                pixels: data.as_slice(),
                width: w,
                pitch: w * 3,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            };
            let source = compressor.compress_to_vec(image).expect("encode");
            let mut webp = variant("webp", 50);
            webp.format = OutputFormat::Webp;
            let out =
                process(&source, &spec_with(vec![variant("small", 99), webp])).expect("process");
            for v in &out.variants {
                let pixels = decode_rgb(&v.data);
                for p in pixels.pixels() {
                    for c in 0..3 {
                        assert!(
                            p[c].abs_diff(colour[c]) <= 4,
                            "{}: {:?} for {colour:?}",
                            v.name,
                            p.0
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_variant_that_keeps_metadata_carries_exif_upright_and_icc() {
        // A 40x20 JPEG whose EXIF says "rotate 90° clockwise", with an ICC profile.
        let pixels = resize::Pixels {
            width: 40,
            height: 20,
            layout: resize::Layout::Rgb,
            data: vec![128; 40 * 20 * 3],
        };
        let plain = encode::jpeg(&pixels, 90).unwrap();
        let mut source = plain[..2].to_vec();
        source.extend(metadata::tests::exif_segment(6));
        source.extend(metadata::tests::icc_segment());
        source.extend_from_slice(&plain[2..]);
        let mut full = variant("compressed", 1000);
        full.keep = metadata::Keep {
            exif: true,
            icc: true,
        };
        let out = process(&source, &spec_with(vec![full, variant("thumbnail", 10)])).unwrap();
        let compressed = &out.variants[0];
        assert_eq!(
            (compressed.width, compressed.height),
            (20, 40),
            "turned upright"
        );
        let exif = rexif::parse_buffer(&compressed.data).unwrap();
        let orientation = exif
            .entries
            .iter()
            .find(|e| e.tag == rexif::ExifTag::Orientation)
            .unwrap();
        assert_eq!(orientation.value.to_i64(0), Some(1));
        assert!(exif.entries.iter().any(|e| e.tag == rexif::ExifTag::Make));
        let icc = metadata::tests::icc_segment();
        assert!(compressed
            .data
            .windows(icc.len())
            .any(|w| w == icc.as_slice()));
        // The thumbnail keeps nothing.
        assert!(rexif::parse_buffer(&out.variants[1].data).is_err());
        assert!(!out.variants[1]
            .data
            .windows(12)
            .any(|w| w == b"ICC_PROFILE\0"));
    }
}
