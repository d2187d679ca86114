//! The image work, pure: bytes in, variants and EXIF out. No I/O, no async; the worker runs
//! it on the blocking pool.
//!
//! Steps: sniff → check dimensions → decode once → for each variant, largest first: resize
//! (in the file's own orientation, so the rotation touches only the small image) → apply the
//! EXIF orientation → encode JPEG without metadata.

pub mod decode;
pub mod encode;
pub mod exif;
pub mod resize;
pub mod sniff;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};

pub use exif::Exif;
use resize::{Layout, Pixels};
pub use sniff::{sniff, SourceFormat};

/// Errors of the image work. All are the input's fault, so retrying cannot help, except
/// `Internal`, which is a bug.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("unsupported image format (JPEG, PNG and WebP are supported)")]
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSpec {
    pub name: String,
    pub long_edge: u32,
    pub quality: u8,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub limits: Limits,
    pub variants: Vec<VariantSpec>,
}

impl Spec {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut variants: Vec<VariantSpec> = config
            .variants
            .iter()
            .map(|(name, v)| VariantSpec {
                name: name.clone(),
                long_edge: v.long_edge,
                quality: v.quality,
            })
            .collect();
        variants.sort_by_key(|v| std::cmp::Reverse(v.long_edge));
        Spec {
            limits: Limits {
                max_pixels: config.pipeline.max_pixels,
                max_dimension: config.pipeline.max_dimension,
            },
            variants,
        }
    }
}

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
    pub variants: Vec<EncodedVariant>,
}

pub fn process(data: &[u8], spec: &Spec) -> Result<Processed, PipelineError> {
    let format = sniff(data).ok_or(PipelineError::Unsupported)?;
    let decoded = decode::decode(data, format, &spec.limits)?;
    let source = to_pixels(decoded.image);
    let swap = decode::swaps_axes(decoded.orientation);
    let (width, height) = if swap {
        (source.height, source.width)
    } else {
        (source.width, source.height)
    };

    let mut variants = Vec::with_capacity(spec.variants.len());
    for v in &spec.variants {
        let (w, h) = resize::fit_long_edge(width, height, v.long_edge);
        let (rw, rh) = if swap { (h, w) } else { (w, h) };
        let resized = resize::resize(&source, rw, rh)?;
        let oriented = orient(resized, decoded.orientation)?;
        let data = encode::jpeg(&oriented, v.quality)?;
        variants.push(EncodedVariant {
            name: v.name.clone(),
            width: oriented.width,
            height: oriented.height,
            content_type: "image/jpeg",
            extension: "jpg",
            data,
        });
    }
    Ok(Processed {
        format,
        width,
        height,
        exif: decoded.exif,
        variants,
    })
}

/// Decoded pixels in the smallest layout that keeps them: grey stays grey, alpha is kept
/// for the resize (premultiplied there) and flattened when encoding.
fn to_pixels(image: DynamicImage) -> Pixels {
    let (width, height) = (image.width(), image.height());
    let (layout, data) = match image {
        DynamicImage::ImageLuma8(buf) => (Layout::Luma, buf.into_raw()),
        DynamicImage::ImageRgb8(buf) => (Layout::Rgb, buf.into_raw()),
        DynamicImage::ImageRgba8(buf) => (Layout::Rgba, buf.into_raw()),
        other if other.color().has_alpha() => (Layout::Rgba, other.into_rgba8().into_raw()),
        other if !other.color().has_color() => (Layout::Luma, other.into_luma8().into_raw()),
        other => (Layout::Rgb, other.into_rgb8().into_raw()),
    };
    Pixels {
        width,
        height,
        layout,
        data,
    }
}

fn orient(pixels: Pixels, orientation: Orientation) -> Result<Pixels, PipelineError> {
    if orientation == Orientation::NoTransforms {
        return Ok(pixels);
    }
    let Pixels {
        width,
        height,
        layout,
        data,
    } = pixels;
    let bad = || PipelineError::Internal("pixel buffer size mismatch".into());
    let mut image = match layout {
        Layout::Luma => {
            DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, data).ok_or_else(bad)?)
        }
        Layout::Rgb => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, data).ok_or_else(bad)?)
        }
        Layout::Rgba => {
            DynamicImage::ImageRgba8(RgbaImage::from_raw(width, height, data).ok_or_else(bad)?)
        }
    };
    image.apply_orientation(orientation);
    Ok(to_pixels(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            limits: Limits {
                max_pixels: 1_000_000,
                max_dimension: 4000,
            },
            variants: vec![
                VariantSpec {
                    name: "preview".into(),
                    long_edge: 64,
                    quality: 80,
                },
                VariantSpec {
                    name: "thumbnail".into(),
                    long_edge: 16,
                    quality: 80,
                },
            ],
        }
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
    fn small_images_are_not_enlarged() {
        let out = process(&png(10, 5, false), &spec()).expect("process");
        assert!(out.variants.iter().all(|v| (v.width, v.height) == (10, 5)));
    }

    #[test]
    fn bombs_are_refused_before_decoding() {
        // One pixel over the limit: refused from the header alone.
        let err = process(&png(1001, 1000, false), &spec()).expect_err("too large");
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(matches!(
            process(b"plain text", &spec()),
            Err(PipelineError::Unsupported)
        ));
        let full = png(50, 50, false);
        for cut in [8, 20, 33, full.len() / 2] {
            assert!(process(&full[..cut], &spec()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn long_edge_fit() {
        assert_eq!(resize::fit_long_edge(4000, 3000, 256), (256, 192));
        assert_eq!(resize::fit_long_edge(3000, 4000, 1280), (960, 1280));
        assert_eq!(resize::fit_long_edge(10000, 1, 256), (256, 1));
        assert_eq!(resize::fit_long_edge(100, 75, 256), (100, 75));
    }
}
