//! A whole image on its way through the pipeline: packed pixels (PNG, WebP, and JPEGs that
//! are not YCbCr), or a JPEG's own YCbCr planes.

use image::metadata::Orientation;

use super::colour::ToSrgb;
use super::encode::{self, Encoded};
use super::heif::AvifOptions;
use super::planar::Planar;
use super::resize::{self, Pixels};
use super::variant::{OutputFormat, Rect};
use super::{adjust, orient, PipelineError};

#[derive(Debug, Clone)]
pub enum Frame {
    Packed(Pixels),
    Planar(Planar),
}

impl Frame {
    pub fn width(&self) -> u32 {
        match self {
            Frame::Packed(p) => p.width,
            Frame::Planar(p) => p.width,
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Frame::Packed(p) => p.height,
            Frame::Planar(p) => p.height,
        }
    }

    /// Bytes of pixel data.
    pub fn bytes(&self) -> usize {
        match self {
            Frame::Packed(p) => p.bytes(),
            Frame::Planar(p) => p.bytes(),
        }
    }

    /// Resamples the `crop` region to `width` × `height`, for a variant in `format`.
    pub fn resize(
        &self,
        crop: Rect,
        width: u32,
        height: u32,
        format: OutputFormat,
    ) -> Result<Frame, PipelineError> {
        Ok(match self {
            Frame::Packed(p) => Frame::Packed(resize::resize(p, crop, width, height)?),
            Frame::Planar(p) => Frame::Planar(p.resize(crop, width, height, chroma_for(format))?),
        })
    }

    /// How many pixels one chroma sample spans, across and down ((1, 1) for RGB).
    pub fn subsampling(&self) -> (u32, u32) {
        match self {
            Frame::Packed(_) => (1, 1),
            Frame::Planar(p) => p.subsampling,
        }
    }

    /// Grey by Rec. 709's weights whatever the source (JPEG's own Y has other weights).
    pub fn grayscale(self) -> Result<Frame, PipelineError> {
        Ok(Frame::Packed(adjust::grayscale(self.into_packed()?)))
    }

    /// Sharpens colour channels, or lightness alone for planes.
    pub fn sharpen(self, amount: f32) -> Frame {
        if amount <= 0.0 {
            return self;
        }
        match self {
            Frame::Packed(p) => Frame::Packed(adjust::sharpen(p, amount)),
            Frame::Planar(p) => Frame::Planar(p.map_luma(|y| adjust::sharpen(y, amount))),
        }
    }

    /// Transparency blended onto `background` (planes and opaque pixels have none).
    pub fn flatten(self, background: [u8; 3]) -> Frame {
        match self {
            Frame::Packed(p) => Frame::Packed(adjust::flatten(p, background)),
            planar => planar,
        }
    }

    pub fn orient(self, orientation: Orientation) -> Result<Frame, PipelineError> {
        Ok(match self {
            Frame::Packed(p) => Frame::Packed(orient::apply(p, orientation)?),
            Frame::Planar(p) => Frame::Planar(p.orient(orientation)?),
        })
    }

    /// Packed pixels (planes converted to RGB).
    pub fn into_packed(self) -> Result<Pixels, PipelineError> {
        match self {
            Frame::Packed(p) => Ok(p),
            Frame::Planar(p) => p.to_rgb(),
        }
    }

    /// Encoded in `format`, with the profile `icc` if given.
    pub fn encode(
        &self,
        format: OutputFormat,
        quality: u8,
        icc: Option<&[u8]>,
        avif: AvifOptions,
    ) -> Result<Encoded, PipelineError> {
        match (self, format) {
            (Frame::Planar(p), OutputFormat::Jpeg) => Ok(Encoded {
                data: encode::tag_jpeg(p.encode_jpeg(quality)?, icc),
                content_type: encode::JPEG_TYPE,
                extension: encode::JPEG_EXTENSION,
            }),
            (Frame::Packed(p), _) => encode::encode(p, format, quality, icc, avif),
            (Frame::Planar(p), _) => encode::encode(&p.to_rgb()?, format, quality, icc, avif),
        }
    }

    /// In sRGB, by `to_srgb` (planes are converted to RGB first).
    pub fn to_srgb(self, to_srgb: &ToSrgb) -> Result<Frame, PipelineError> {
        Ok(Frame::Packed(to_srgb.apply(self.into_packed()?)?))
    }
}

/// The chroma subsampling a variant in `format` is resized to from planes: JPEG variants
/// are written 4:2:0; the others become RGB and need all of it.
pub fn chroma_for(format: OutputFormat) -> (u32, u32) {
    match format {
        OutputFormat::Jpeg => (2, 2),
        _ => (1, 1),
    }
}
