//! Encoding. Nothing but pixels is written: no EXIF, no ICC, no XMP.
//!
//! JPEG through libjpeg-turbo: SIMD forward DCT and colour conversion, 4:2:0 chroma, and
//! optimised Huffman tables (smaller files for a few percent more time, sharp's default
//! too). WebP through libwebp (lossy). PNG through the `image` crate.

use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::resize::{Layout, Pixels};
use super::variant::OutputFormat;
use super::PipelineError;

/// Alpha is flattened onto this background for formats without transparency.
const BACKGROUND: u8 = 255;
/// The largest side libwebp encodes.
const WEBP_MAX_SIDE: u32 = 16383;

pub const JPEG_TYPE: &str = "image/jpeg";
pub const JPEG_EXTENSION: &str = "jpg";

/// An encoded image and how to serve it.
pub struct Encoded {
    pub data: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
}

pub fn encode(
    pixels: &Pixels,
    format: OutputFormat,
    quality: u8,
) -> Result<Encoded, PipelineError> {
    let (data, content_type, extension) = match format {
        OutputFormat::Jpeg => (jpeg(pixels, quality)?, JPEG_TYPE, JPEG_EXTENSION),
        OutputFormat::Webp => (webp(pixels, quality)?, "image/webp", "webp"),
        OutputFormat::Png => (png(pixels)?, "image/png", "png"),
    };
    Ok(Encoded {
        data,
        content_type,
        extension,
    })
}

/// JPEG as photoq writes it: optimised Huffman tables.
pub fn jpeg(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, PipelineError> {
    jpeg_with(pixels, quality, true)
}

/// JPEG with or without optimised Huffman tables (a second pass over the data for a few
/// percent smaller files; the benches weigh the two).
pub fn jpeg_with(
    pixels: &Pixels,
    quality: u8,
    optimize_huffman: bool,
) -> Result<Vec<u8>, PipelineError> {
    let mut compressor = jpeg_compressor(quality, optimize_huffman)?;
    let flattened;
    let (data, format, subsamp) = match pixels.layout {
        Layout::Luma => (&pixels.data, PixelFormat::GRAY, Subsamp::Gray),
        Layout::Rgb => (&pixels.data, PixelFormat::RGB, Subsamp::Sub2x2),
        Layout::Rgba => {
            flattened = flatten(&pixels.data);
            (&flattened, PixelFormat::RGB, Subsamp::Sub2x2)
        }
    };
    compressor.set_subsamp(subsamp).map_err(jpeg_error)?;
    let image = turbojpeg::Image {
        pixels: data.as_slice(),
        width: pixels.width as usize,
        pitch: pixels.width as usize * format.size(),
        height: pixels.height as usize,
        format,
    };
    compressor.compress_to_vec(image).map_err(jpeg_error)
}

/// A libjpeg-turbo compressor at `quality`, with or without optimised Huffman tables.
pub fn jpeg_compressor(quality: u8, optimize_huffman: bool) -> Result<Compressor, PipelineError> {
    let mut compressor = Compressor::new().map_err(jpeg_error)?;
    compressor
        .set_quality(i32::from(quality))
        .map_err(jpeg_error)?;
    compressor
        .set_optimize(optimize_huffman)
        .map_err(jpeg_error)?;
    Ok(compressor)
}

pub fn jpeg_error(e: turbojpeg::Error) -> PipelineError {
    PipelineError::Internal(format!("jpeg encode: {e}"))
}

fn webp(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, PipelineError> {
    if pixels.width.max(pixels.height) > WEBP_MAX_SIDE {
        return Err(PipelineError::Internal(format!(
            "{}x{} is too large for WebP (at most {WEBP_MAX_SIDE} a side)",
            pixels.width, pixels.height
        )));
    }
    let expanded;
    let encoder = match pixels.layout {
        Layout::Rgb => webp::Encoder::from_rgb(&pixels.data, pixels.width, pixels.height),
        Layout::Rgba => webp::Encoder::from_rgba(&pixels.data, pixels.width, pixels.height),
        Layout::Luma => {
            expanded = pixels
                .data
                .iter()
                .flat_map(|&y| [y, y, y])
                .collect::<Vec<u8>>();
            webp::Encoder::from_rgb(&expanded, pixels.width, pixels.height)
        }
    };
    let memory = encoder
        .encode_simple(false, f32::from(quality))
        .map_err(|e| PipelineError::Internal(format!("webp encode: {e:?}")))?;
    Ok(memory.to_vec())
}

fn png(pixels: &Pixels) -> Result<Vec<u8>, PipelineError> {
    let color = match pixels.layout {
        Layout::Luma => image::ExtendedColorType::L8,
        Layout::Rgb => image::ExtendedColorType::Rgb8,
        Layout::Rgba => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &pixels.data,
        pixels.width,
        pixels.height,
        color,
    )
    .map_err(|e| PipelineError::Internal(format!("png encode: {e}")))?;
    Ok(out)
}

/// RGBA (straight alpha) over an opaque background → RGB.
fn flatten(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = u32::from(px[3]);
        for &c in &px[..3] {
            let v = (u32::from(c) * a + u32::from(BACKGROUND) * (255 - a) + 127) / 255;
            rgb.push(v as u8);
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_blends_onto_white() {
        assert_eq!(
            flatten(&[0, 0, 0, 255, 0, 0, 0, 0]),
            vec![0, 0, 0, 255, 255, 255]
        );
        assert_eq!(flatten(&[0, 0, 0, 128]), vec![127, 127, 127]);
    }

    #[test]
    fn every_format_round_trips_its_size() {
        let pixels = Pixels {
            width: 33,
            height: 17,
            layout: Layout::Rgba,
            data: (0..33 * 17 * 4).map(|i| (i % 251) as u8).collect(),
        };
        for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Png] {
            let out = encode(&pixels, format, 80).expect("encodes");
            let back = image::load_from_memory(&out.data).expect("decodes");
            assert_eq!((back.width(), back.height()), (33, 17), "{format:?}");
        }
    }
}
