//! Decoding: dimensions are checked against the limits before any pixel is decoded, and
//! JPEGs are decoded straight at a reduced size when the variants allow it.
//!
//! JPEG goes through libjpeg-turbo (TurboJPEG API): SIMD entropy decoding and IDCT, and
//! DCT-domain scaling (1/2, 1/4, 1/8), which skips most of the work for a large photo that
//! only feeds small variants. Any libjpeg warning (corrupt or truncated data) is an error,
//! as with sharp's default, rather than a silently grey image. PNG and WebP go through the
//! `image` crate with its allocation limits, HEIC and AVIF through libheif (see `heif`). The
//! source's ICC profile is read here, and CMYK converted to sRGB (see `colour`).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader};
use turbojpeg::{Colorspace, Decompressor, PixelFormat, ScalingFactor};

use super::colour::{self, ToSrgb};
use super::exif::{self, Exif};
use super::frame::Frame;
use super::heif;
use super::metadata;
use super::planar::{self, Planar};
use super::resize::{Layout, Pixels};
use super::sniff::SourceFormat;
use super::{Limits, PipelineError};
use crate::config::Colour;

/// Bytes per pixel the `image` decoders may allocate, at most (RGBA, 16 bits a channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;

pub struct Decoded {
    /// The image as stored in the file (orientation not yet applied), possibly reduced.
    pub pixels: Frame,
    /// Converts `pixels` (and what is resized from them) to sRGB, when they are not.
    pub to_srgb: Option<ToSrgb>,
    /// The source's ICC profile, when `pixels` are still in its space (for the variants
    /// that keep it); None once converted.
    pub icc: Option<Vec<u8>>,
    /// The full stored size, before any reduction.
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    pub exif: Exif,
}

/// How a JPEG is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegOutput {
    /// Its YCbCr planes where it has them (see `planar`), else RGB or grey.
    Planes,
    /// Always RGB (or grey).
    Packed,
}

/// Decodes `data`. `allowed_reduction` is told the full stored size and orientation and
/// answers by how much the image may be shrunk while decoding (1.0: not at all). With
/// `Colour::Srgb`, the answer says how to bring the pixels to sRGB (CMYK is converted here
/// whatever `colour` says, since no variant can keep it).
pub fn decode(
    data: &[u8],
    format: SourceFormat,
    limits: &Limits,
    jpeg_output: JpegOutput,
    colour: Colour,
    allowed_reduction: impl FnOnce(u32, u32, Orientation) -> f64,
) -> Result<Decoded, PipelineError> {
    match format {
        SourceFormat::Jpeg => decode_jpeg(data, limits, jpeg_output, colour, allowed_reduction),
        SourceFormat::Png => decode_other(data, image::ImageFormat::Png, limits, colour),
        SourceFormat::Webp => decode_other(data, image::ImageFormat::WebP, limits, colour),
        SourceFormat::Heic | SourceFormat::Avif => heif::decode(data, limits, colour),
    }
}

/// The conversion to sRGB of pixels in `layout` from the profile `icc`, if `colour` asks
/// for one and the profile is not sRGB already.
pub(super) fn conversion(colour: Colour, icc: Option<&[u8]>, layout: Layout) -> Option<ToSrgb> {
    match (colour, icc) {
        (Colour::Srgb, Some(icc)) => ToSrgb::new(icc, layout),
        _ => None,
    }
}

/// The DCT scale, in eighths (8, 4, 2 or 1), that shrinks the most without going past
/// `reduction`. libjpeg-turbo's inverse DCT can output any M × M pixels of an 8 × 8 block,
/// but only these sizes have SIMD code; the others cost more to decode to RGB, and the
/// resizer is slower from them (measured: 3/8 of a 12 MP photo for a 1280 px preview).
pub fn dct_eighths(reduction: f64) -> u32 {
    if !reduction.is_finite() || reduction <= 1.0 {
        return 8;
    }
    // A hair under, so that an exact 2 gives 4 eighths, not 4.0000000001 rounded up.
    ((8.0 / reduction - 1e-9).ceil() as u32)
        .clamp(1, 8)
        .next_power_of_two()
}

fn decode_jpeg(
    data: &[u8],
    limits: &Limits,
    jpeg_output: JpegOutput,
    colour: Colour,
    allowed_reduction: impl FnOnce(u32, u32, Orientation) -> f64,
) -> Result<Decoded, PipelineError> {
    let mut decompressor = Decompressor::new().map_err(internal)?;
    let header = decompressor.read_header(data).map_err(corrupt)?;
    let (width, height) = (
        u32::try_from(header.width).map_err(|_| corrupt("width"))?,
        u32::try_from(header.height).map_err(|_| corrupt("height"))?,
    );
    limits.check(width, height)?;
    // rexif finds the APP1 segment itself.
    let exif = exif::extract(data);
    let orientation = orientation_of(&exif);

    let icc = metadata::jpeg_icc(data);
    let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
    let layout = match header.colorspace {
        Colorspace::Gray => Layout::Luma,
        _ => Layout::Rgb,
    };
    let to_srgb = if cmyk {
        None
    } else {
        conversion(colour, icc.as_deref(), layout)
    };
    // Planes only for pixels that need no colour conversion (it works on RGB).
    let planes = jpeg_output == JpegOutput::Planes
        && to_srgb.is_none()
        && header.colorspace == Colorspace::YCbCr
        && planar::supported(header.subsamp);
    let eighths = if header.is_lossless {
        8
    } else {
        dct_eighths(allowed_reduction(width, height, orientation))
    };
    let scale = ScalingFactor::new(eighths as usize, 8);
    decompressor.set_scaling_factor(scale).map_err(internal)?;
    let scaled = header.scaled(scale);

    if planes {
        let mut image = turbojpeg::YuvImage {
            pixels: Vec::new(),
            width: scaled.width,
            align: 1,
            height: scaled.height,
            subsamp: header.subsamp,
        };
        let len = turbojpeg::yuv_pixels_len(image.width, 1, image.height, image.subsamp)
            .map_err(internal)?;
        image.pixels = vec![0u8; len];
        decompressor
            .decompress_to_yuv(data, image.as_deref_mut())
            .map_err(corrupt)?;
        return Ok(Decoded {
            pixels: Frame::Planar(Planar::from_turbojpeg(image)?),
            to_srgb: None,
            icc,
            width,
            height,
            orientation,
            exif,
        });
    }

    let format = match (layout, cmyk) {
        (Layout::Luma, _) => PixelFormat::GRAY,
        (_, true) => PixelFormat::CMYK,
        _ => PixelFormat::RGB,
    };
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; scaled.width * scaled.height * format.size()],
        width: scaled.width,
        pitch: scaled.width * format.size(),
        height: scaled.height,
        format,
    };
    decompressor
        .decompress(data, image.as_deref_mut())
        .map_err(corrupt)?;
    let (data, icc) = if cmyk {
        // The profile is a CMYK one: the RGB variants cannot keep it.
        let rgb = colour::cmyk_to_srgb(&image.pixels, metadata::adobe_app14(data), icc.as_deref());
        (rgb, None)
    } else if to_srgb.is_some() {
        (image.pixels, None)
    } else {
        (image.pixels, icc)
    };
    Ok(Decoded {
        pixels: Frame::Packed(Pixels {
            width: scaled.width as u32,
            height: scaled.height as u32,
            layout,
            data,
        }),
        to_srgb,
        icc,
        width,
        height,
        orientation,
        exif,
    })
}

fn decode_other(
    data: &[u8],
    format: image::ImageFormat,
    limits: &Limits,
    colour: Colour,
) -> Result<Decoded, PipelineError> {
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_dimension);
    image_limits.max_image_height = Some(limits.max_dimension);
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(image_limits);

    let mut decoder = reader.into_decoder().map_err(PipelineError::from_image)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;

    let exif = decoder
        .exif_metadata()
        .ok()
        .flatten()
        .map(|block| exif::extract(&block))
        .unwrap_or_default();
    let icc = decoder.icc_profile().ok().flatten();
    let image = DynamicImage::from_decoder(decoder).map_err(PipelineError::from_image)?;
    let pixels = Pixels::from_image(image);
    let to_srgb = conversion(colour, icc.as_deref(), pixels.layout);
    Ok(Decoded {
        pixels: Frame::Packed(pixels),
        icc: if to_srgb.is_some() { None } else { icc },
        to_srgb,
        width,
        height,
        orientation: orientation_of(&exif),
        exif,
    })
}

fn corrupt(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Decode(format!("corrupt JPEG: {e}"))
}

fn internal(e: turbojpeg::Error) -> PipelineError {
    PipelineError::Internal(format!("libjpeg-turbo: {e}"))
}

fn orientation_of(exif: &Exif) -> Orientation {
    exif.orientation
        .and_then(|o| u8::try_from(o).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_scale_never_undershoots() {
        assert_eq!(dct_eighths(1.0), 8);
        assert_eq!(dct_eighths(1.99), 8);
        assert_eq!(dct_eighths(2.0), 4);
        assert_eq!(dct_eighths(3.125), 4);
        assert_eq!(dct_eighths(4.0), 2);
        assert_eq!(dct_eighths(4.6), 2);
        assert_eq!(dct_eighths(8.0), 1);
        assert_eq!(dct_eighths(15.6), 1);
        assert_eq!(dct_eighths(f64::INFINITY), 8);
    }
}
