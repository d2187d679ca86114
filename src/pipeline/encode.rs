//! JPEG encoding (jpeg-encoder, SIMD). Nothing but pixels is written: no EXIF, no ICC, no XMP.

use jpeg_encoder::{ColorType, Encoder};

use super::resize::{Layout, Pixels};
use super::PipelineError;

/// Alpha is flattened onto this background, since JPEG has no transparency.
const BACKGROUND: u8 = 255;

pub fn jpeg(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, PipelineError> {
    let (w, h) = (
        u16::try_from(pixels.width).map_err(|_| too_big(pixels))?,
        u16::try_from(pixels.height).map_err(|_| too_big(pixels))?,
    );
    let mut out = Vec::new();
    let encoder = Encoder::new(&mut out, quality);
    let result = match pixels.layout {
        Layout::Luma => encoder.encode(&pixels.data, w, h, ColorType::Luma),
        Layout::Rgb => encoder.encode(&pixels.data, w, h, ColorType::Rgb),
        Layout::Rgba => {
            let rgb = flatten(&pixels.data);
            encoder.encode(&rgb, w, h, ColorType::Rgb)
        }
    };
    result.map_err(|e| PipelineError::Internal(format!("jpeg encode: {e}")))?;
    Ok(out)
}

fn too_big(p: &Pixels) -> PipelineError {
    PipelineError::Internal(format!("{}x{} is too large for JPEG", p.width, p.height))
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
}
