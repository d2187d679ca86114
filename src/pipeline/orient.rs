//! The EXIF orientation, applied to a variant's (small) pixels after the resize.

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};

use super::resize::{Layout, Pixels};
use super::PipelineError;

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

pub fn apply(pixels: Pixels, orientation: Orientation) -> Result<Pixels, PipelineError> {
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
    Ok(Pixels::from_image(image))
}
