//! Resizing with fast_image_resize (SIMD convolution, Lanczos3).

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::PipelineError;

/// Pixels in one of the layouts the encoder takes.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Luma,
    Rgb,
    Rgba,
}

impl Layout {
    fn pixel_type(self) -> PixelType {
        match self {
            Layout::Luma => PixelType::U8,
            Layout::Rgb => PixelType::U8x3,
            Layout::Rgba => PixelType::U8x4,
        }
    }
}

/// The size of the image fitted inside a `long_edge` square, never larger than the source.
pub fn fit_long_edge(width: u32, height: u32, long_edge: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= long_edge {
        return (width, height);
    }
    let scale = f64::from(long_edge) / f64::from(long);
    let w = ((f64::from(width) * scale).round() as u32).clamp(1, long_edge);
    let h = ((f64::from(height) * scale).round() as u32).clamp(1, long_edge);
    (w, h)
}

pub fn resize(src: &Pixels, width: u32, height: u32) -> Result<Pixels, PipelineError> {
    if (width, height) == (src.width, src.height) {
        return Ok(src.clone());
    }
    let pixel_type = src.layout.pixel_type();
    let src_view =
        fast_image_resize::images::ImageRef::new(src.width, src.height, &src.data, pixel_type)
            .map_err(|e| PipelineError::Internal(format!("resize source: {e}")))?;
    let mut dst = Image::new(width, height, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| PipelineError::Internal(format!("resize: {e}")))?;
    Ok(Pixels {
        width,
        height,
        layout: src.layout,
        data: dst.into_vec(),
    })
}
