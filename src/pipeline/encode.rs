//! Encoding. Nothing but pixels is written (no EXIF, no XMP), and the colour profile only
//! when a variant keeps its source's colours (`pipeline.colour = "keep"`).
//!
//! JPEG through libjpeg-turbo: SIMD forward DCT and colour conversion, 4:2:0 chroma, and
//! optimised Huffman tables (smaller files for a few percent more time, sharp's default
//! too). WebP through libwebp (lossy). PNG through the `image` crate. AVIF through libheif
//! and libaom (see `heif`).

use turbojpeg::{Compressor, PixelFormat, Subsamp};

use super::adjust;
use super::heif;
use super::metadata;
use super::resize::{Layout, Pixels};
use super::variant::OutputFormat;
use super::PipelineError;

/// Alpha is flattened onto this background when RGBA reaches the JPEG encoder (`process`
/// flattens onto the configured background before).
const BACKGROUND: [u8; 3] = [255; 3];
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

/// `pixels` in `format`, with the ICC profile `icc` embedded if given.
pub fn encode(
    pixels: &Pixels,
    format: OutputFormat,
    quality: u8,
    icc: Option<&[u8]>,
    avif: heif::AvifOptions,
) -> Result<Encoded, PipelineError> {
    let (data, content_type, extension) = match format {
        OutputFormat::Jpeg => (
            tag_jpeg(jpeg(pixels, quality)?, icc),
            JPEG_TYPE,
            JPEG_EXTENSION,
        ),
        OutputFormat::Webp => (
            tag_webp(webp(pixels, quality)?, pixels.width, pixels.height, icc),
            "image/webp",
            "webp",
        ),
        OutputFormat::Png => (png(pixels, icc)?, "image/png", "png"),
        OutputFormat::Avif => (
            heif::encode_avif(pixels, quality, icc, avif)?,
            "image/avif",
            "avif",
        ),
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
            flattened = adjust::flatten_rgba(&pixels.data, BACKGROUND);
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

/// A JPEG with the profile `icc` in APP2 segments after its header.
pub fn tag_jpeg(jpeg: Vec<u8>, icc: Option<&[u8]>) -> Vec<u8> {
    match icc {
        Some(icc) => metadata::insert(jpeg, &metadata::icc_segments(icc)),
        None => jpeg,
    }
}

/// A `width` × `height` WebP file with the profile `icc` in an ICCP chunk: a simple file
/// (one VP8 or VP8L chunk) becomes an extended one, with a VP8X header whose ICC flag is
/// set.
fn tag_webp(webp: Vec<u8>, width: u32, height: u32, icc: Option<&[u8]>) -> Vec<u8> {
    const ICC_FLAG: u8 = 0x20;
    let Some(icc) = icc else {
        return webp;
    };
    // "RIFF", size, "WEBP", then chunks (FourCC, size, payload padded to even).
    let (Some(first), Some(size)) = (webp.get(12..16), webp.get(16..20)) else {
        return webp;
    };
    let first_len = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    let chunk = |fourcc: &[u8], payload: &[u8]| {
        let mut c = fourcc.to_vec();
        c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            c.push(0);
        }
        c
    };
    let mut body = b"WEBP".to_vec();
    if first == b"VP8X" {
        let Some(header) = webp.get(12..20 + first_len) else {
            return webp;
        };
        let mut header = header.to_vec();
        header[8] |= ICC_FLAG;
        body.extend_from_slice(&header);
        body.extend(chunk(b"ICCP", icc));
        body.extend_from_slice(&webp[20 + first_len..]);
    } else {
        let mut vp8x = vec![ICC_FLAG, 0, 0, 0];
        vp8x.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        body.extend(chunk(b"VP8X", &vp8x));
        body.extend(chunk(b"ICCP", icc));
        body.extend_from_slice(&webp[12..]);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

fn png(pixels: &Pixels, icc: Option<&[u8]>) -> Result<Vec<u8>, PipelineError> {
    let color = match pixels.layout {
        Layout::Luma => image::ExtendedColorType::L8,
        Layout::Rgb => image::ExtendedColorType::Rgb8,
        Layout::Rgba => image::ExtendedColorType::Rgba8,
    };
    let mut out = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        image::ImageEncoder::set_icc_profile(&mut encoder, icc.to_vec())
            .map_err(|e| PipelineError::Internal(format!("png profile: {e}")))?;
    }
    image::ImageEncoder::write_image(encoder, &pixels.data, pixels.width, pixels.height, color)
        .map_err(|e| PipelineError::Internal(format!("png encode: {e}")))?;
    Ok(out)
}

/// RGBA (straight alpha) over an opaque background → RGB.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_blends_onto_the_background() {
        assert_eq!(
            adjust::flatten_rgba(&[0, 0, 0, 255, 0, 0, 0, 0], BACKGROUND),
            vec![0, 0, 0, 255, 255, 255]
        );
        assert_eq!(
            adjust::flatten_rgba(&[0, 0, 0, 128], BACKGROUND),
            vec![127, 127, 127]
        );
        assert_eq!(
            adjust::flatten_rgba(&[255, 255, 255, 0, 200, 0, 0, 255], [10, 20, 30]),
            vec![10, 20, 30, 200, 0, 0]
        );
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
            let out = encode(&pixels, format, 80, None, Default::default()).expect("encodes");
            let back = image::load_from_memory(&out.data).expect("decodes");
            assert_eq!((back.width(), back.height()), (33, 17), "{format:?}");
        }
    }

    #[test]
    fn every_format_carries_a_profile_it_is_given() {
        let icc = moxcms::ColorProfile::new_display_p3()
            .encode()
            .expect("profile");
        for layout in [Layout::Rgb, Layout::Rgba] {
            let pixels = Pixels {
                width: 33,
                height: 17,
                layout,
                data: (0..33 * 17 * layout.channels())
                    .map(|i| (i % 251) as u8)
                    .collect(),
            };
            for format in [OutputFormat::Jpeg, OutputFormat::Webp, OutputFormat::Png] {
                let out =
                    encode(&pixels, format, 80, Some(&icc), Default::default()).expect("encodes");
                let reader = image::ImageReader::new(std::io::Cursor::new(&out.data))
                    .with_guessed_format()
                    .expect("format");
                let mut decoder = reader.into_decoder().expect("decoder");
                assert_eq!(
                    image::ImageDecoder::icc_profile(&mut decoder).expect("read"),
                    Some(icc.clone()),
                    "{format:?} {layout:?}"
                );
                assert_eq!(image::ImageDecoder::dimensions(&decoder), (33, 17));
                // Still decodes whole.
                assert!(image::load_from_memory(&out.data).is_ok(), "{format:?}");
            }
        }
    }
}
