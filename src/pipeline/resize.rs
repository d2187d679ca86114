//! Pixels and resizing with fast_image_resize (SIMD convolution, Lanczos3; alpha is
//! premultiplied for the convolution and divided back after it).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use super::variant::Rect;
use super::PipelineError;

/// 8-bit pixels, rows packed, in one of three layouts.
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
    pub fn channels(self) -> usize {
        match self {
            Layout::Luma => 1,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }

    fn pixel_type(self) -> PixelType {
        match self {
            Layout::Luma => PixelType::U8,
            Layout::Rgb => PixelType::U8x3,
            Layout::Rgba => PixelType::U8x4,
        }
    }
}

impl Pixels {
    /// The smallest layout that keeps the image: grey stays grey, alpha is kept.
    pub fn from_image(image: DynamicImage) -> Self {
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

    /// Bytes of pixel data.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Resamples the `crop` region of `src` to `width` × `height`.
pub fn resize(src: &Pixels, crop: Rect, width: u32, height: u32) -> Result<Pixels, PipelineError> {
    if (width, height) == (src.width, src.height) && crop == Rect::whole(src.width, src.height) {
        return Ok(src.clone());
    }
    let pixel_type = src.layout.pixel_type();
    let src_view = ImageRef::new(src.width, src.height, &src.data, pixel_type)
        .map_err(|e| PipelineError::Internal(format!("resize source: {e}")))?;
    // Scaling the crop to a reduced source can overshoot its edge by a rounding error.
    let (sw, sh) = (f64::from(src.width), f64::from(src.height));
    let crop = Rect {
        width: crop.width.min(sw - crop.x),
        height: crop.height.min(sh - crop.y),
        ..crop
    };
    let mut dst = Image::new(width, height, pixel_type);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(crop.x, crop.y, crop.width, crop.height);
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
