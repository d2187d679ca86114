//! Decoding: dimensions are checked against the limits before any pixel is decoded.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::exif::{self, Exif};
use super::sniff::SourceFormat;
use super::{Limits, PipelineError};

/// Bytes per pixel the decoder may allocate, at most (RGBA, 16 bits a channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;

pub struct Decoded {
    /// Pixels as stored in the file (orientation not yet applied).
    pub image: DynamicImage,
    pub orientation: Orientation,
    pub exif: Exif,
}

pub fn decode(
    data: &[u8],
    format: SourceFormat,
    limits: &Limits,
) -> Result<Decoded, PipelineError> {
    if format == SourceFormat::Jpeg {
        return decode_jpeg(data, limits);
    }
    let mut reader = ImageReader::with_format(Cursor::new(data), format.image_format());
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
    let image = DynamicImage::from_decoder(decoder).map_err(PipelineError::from_image)?;
    Ok(Decoded {
        image,
        orientation: orientation_of(&exif),
        exif,
    })
}

/// JPEG through zune-jpeg in strict mode: corrupt entropy-coded data is an error, not a
/// silently grey image (as libjpeg reports "Corrupt JPEG data" and sharp refuses it).
fn decode_jpeg(data: &[u8], limits: &Limits) -> Result<Decoded, PipelineError> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(limits.max_dimension as usize)
        .set_max_height(limits.max_dimension as usize);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder.decode_headers().map_err(jpeg_error)?;
    let info = decoder
        .info()
        .ok_or_else(|| PipelineError::Decode("JPEG has no frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    limits.check(width, height)?;

    let grey = matches!(
        decoder.input_colorspace(),
        Some(ColorSpace::Luma | ColorSpace::LumaA)
    );
    let out = if grey {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    decoder.set_options(options.jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(jpeg_error)?;
    let mismatch = || PipelineError::Decode("JPEG decoded to an unexpected size".into());
    let image = if grey {
        DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels).ok_or_else(mismatch)?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).ok_or_else(mismatch)?)
    };
    // rexif finds the APP1 segment itself.
    let exif = exif::extract(data);
    Ok(Decoded {
        image,
        orientation: orientation_of(&exif),
        exif,
    })
}

fn jpeg_error(e: zune_jpeg::errors::DecodeErrors) -> PipelineError {
    PipelineError::Decode(format!("corrupt JPEG: {e}"))
}

fn orientation_of(exif: &Exif) -> Orientation {
    exif.orientation
        .and_then(|o| u8::try_from(o).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

/// True when the orientation turns the image a quarter, swapping width and height.
pub fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}
