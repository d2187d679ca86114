//! HEIF containers through libheif (built into photoq from its sources): HEIC photos (HEVC,
//! by libde265) and AVIF (AV1, by dav1d) are decoded, AVIF variants encoded (by libaom).
//!
//! The size is checked before any pixel is decoded, and libheif's own security limits are
//! set to the same bounds. libheif applies the file's rotation, mirror and crop boxes while
//! decoding, so the pixels come out as displayed: the EXIF orientation of a HEIF file is
//! informative only (as the format says) and is not applied again.

use image::metadata::Orientation;
use libheif_rs::{
    color_profile_types, Channel, ColorPrimaries, ColorProfile as _, ColorProfileRaw, ColorSpace,
    CompressionFormat, EncoderParameterValue, EncoderQuality, HeifContext, HeifError,
    HeifErrorSubCode, Image, ImageHandle, LibHeif, RgbChroma, TransferCharacteristics,
};
use moxcms::{CicpColorPrimaries, CicpProfile, ColorProfile, MatrixCoefficients};

use super::colour;
use super::decode::{conversion, Decoded};
use super::exif::{self, Exif};
use super::frame::Frame;
use super::resize::{Layout, Pixels};
use super::{Limits, PipelineError};
use crate::config::Colour;

/// How AVIF variants are encoded (`pipeline.avif_speed`, `pipeline.avif_chroma`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvifOptions {
    /// libaom's speed, 0 (slowest, smallest) to 9 (fastest). Encoding dominates an AVIF
    /// job: see README "Performance".
    pub speed: u8,
    pub chroma: AvifChroma,
}

impl Default for AvifOptions {
    fn default() -> Self {
        AvifOptions {
            speed: 5,
            chroma: AvifChroma::Yuv444,
        }
    }
}

/// The chroma resolution of AVIF variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum AvifChroma {
    /// Half the resolution both ways: the smallest files, as JPEG variants are written.
    #[serde(rename = "4:2:0")]
    Yuv420,
    /// Full resolution: sharper colour edges for more bytes (sharp's default).
    #[serde(rename = "4:4:4")]
    Yuv444,
}

/// Decodes the primary image of a HEIC or AVIF file.
pub fn decode(data: &[u8], limits: &Limits, colour: Colour) -> Result<Decoded, PipelineError> {
    let lib = LibHeif::new();
    let mut context = HeifContext::new().map_err(corrupt)?;
    let mut security = context.security_limits();
    security.set_max_image_size_pixels(limits.max_pixels);
    context.set_security_limits(&security).map_err(corrupt)?;
    context.read_bytes(data).map_err(corrupt)?;
    let handle = context.primary_image_handle().map_err(corrupt)?;
    let (width, height) = (handle.width(), handle.height());
    limits.check(width, height)?;
    let ispe = (
        u32::try_from(handle.ispe_width()).unwrap_or(0),
        u32::try_from(handle.ispe_height()).unwrap_or(0),
    );
    limits.check(ispe.0.max(1), ispe.1.max(1))?;

    let exif = exif_of(&handle);
    let icc = profile_of(&handle);
    let alpha = handle.has_alpha_channel();
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    let image = lib
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(corrupt)?;
    let layout = if alpha { Layout::Rgba } else { Layout::Rgb };
    let pixels = packed(&image, layout)?;
    let to_srgb = conversion(colour, icc.as_deref(), pixels.layout);
    Ok(Decoded {
        width: pixels.width,
        height: pixels.height,
        pixels: Frame::Packed(pixels),
        icc: if to_srgb.is_some() { None } else { icc },
        to_srgb,
        orientation: Orientation::NoTransforms,
        exif,
    })
}

/// The interleaved plane of `image` as packed rows.
fn packed(image: &Image, layout: Layout) -> Result<Pixels, PipelineError> {
    let planes = image.planes();
    let plane = planes
        .interleaved
        .ok_or_else(|| PipelineError::Internal("libheif gave no interleaved plane".into()))?;
    let row = plane.width as usize * layout.channels();
    let mut data = Vec::with_capacity(row * plane.height as usize);
    for y in 0..plane.height as usize {
        let start = y * plane.stride;
        let line = plane
            .data
            .get(start..start + row)
            .ok_or_else(|| PipelineError::Internal("libheif plane shorter than its size".into()))?;
        data.extend_from_slice(line);
    }
    Ok(Pixels {
        width: plane.width,
        height: plane.height,
        layout,
        data,
    })
}

/// The EXIF of a HEIF file: its `Exif` item, whose first four bytes give the offset of the
/// TIFF header in what follows.
fn exif_of(handle: &ImageHandle) -> Exif {
    let mut ids = [0; 4];
    let n = handle.metadata_block_ids(&mut ids, b"Exif");
    ids[..n]
        .iter()
        .filter_map(|&id| handle.metadata(id).ok())
        .find_map(|block| {
            let offset = u32::from_be_bytes(block.get(..4)?.try_into().ok()?) as usize;
            block.get(4 + offset..).map(exif::extract)
        })
        .unwrap_or_default()
}

/// The image's ICC profile: its own, or one made from its colour code points (nclx) when
/// these name another space than sRGB.
fn profile_of(handle: &ImageHandle) -> Option<Vec<u8>> {
    if let Some(raw) = handle.color_profile_raw() {
        let kind = raw.profile_type();
        if kind == color_profile_types::PROF || kind == color_profile_types::R_ICC {
            return Some(raw.data);
        }
    }
    let nclx = handle.color_profile_nclx()?;
    let (primaries, transfer) = (nclx.color_primaries(), nclx.transfer_characteristics());
    let srgb_primaries = matches!(
        primaries,
        ColorPrimaries::ITU_R_BT_709_5 | ColorPrimaries::Unspecified
    );
    let srgb_transfer = matches!(
        transfer,
        TransferCharacteristics::IEC_61966_2_1
            | TransferCharacteristics::Unspecified
            | TransferCharacteristics::ITU_R_BT_709_5
    );
    if srgb_primaries && srgb_transfer {
        return None;
    }
    let cicp = CicpProfile {
        color_primaries: CicpColorPrimaries::try_from(primaries as u8).ok()?,
        transfer_characteristics: moxcms::TransferCharacteristics::try_from(transfer as u8).ok()?,
        matrix_coefficients: MatrixCoefficients::Identity,
        full_range: true,
    };
    colour::icc_bytes(&ColorProfile::new_from_cicp(cicp))
}

/// `pixels` as an AVIF file at `quality`, with the ICC profile `icc` if given.
pub fn encode_avif(
    pixels: &Pixels,
    quality: u8,
    icc: Option<&[u8]>,
    options: AvifOptions,
) -> Result<Vec<u8>, PipelineError> {
    let lib = LibHeif::new();
    let mut context = HeifContext::new().map_err(internal)?;
    let (colour_space, channel) = match pixels.layout {
        Layout::Luma => (ColorSpace::Monochrome, Channel::Y),
        Layout::Rgb => (ColorSpace::Rgb(RgbChroma::Rgb), Channel::Interleaved),
        Layout::Rgba => (ColorSpace::Rgb(RgbChroma::Rgba), Channel::Interleaved),
    };
    let mut image = Image::new(pixels.width, pixels.height, colour_space).map_err(internal)?;
    image
        .create_plane(channel, pixels.width, pixels.height, 8)
        .map_err(internal)?;
    {
        let mut planes = image.planes_mut();
        let plane = match channel {
            Channel::Y => planes.y.as_mut(),
            _ => planes.interleaved.as_mut(),
        }
        .ok_or_else(|| PipelineError::Internal("libheif made no plane".into()))?;
        let row = pixels.width as usize * pixels.layout.channels();
        for (y, line) in pixels.data.chunks_exact(row).enumerate() {
            let start = y * plane.stride;
            plane
                .data
                .get_mut(start..start + row)
                .ok_or_else(|| PipelineError::Internal("libheif plane too small".into()))?
                .copy_from_slice(line);
        }
    }
    if let Some(icc) = icc {
        image
            .set_color_profile_raw(&ColorProfileRaw::new(
                color_profile_types::PROF,
                icc.to_vec(),
            ))
            .map_err(internal)?;
    }
    let mut encoder = lib
        .encoder_for_format(CompressionFormat::Av1)
        .map_err(internal)?;
    encoder
        .set_quality(EncoderQuality::Lossy(quality))
        .map_err(internal)?;
    encoder
        .set_parameter_value("speed", EncoderParameterValue::Int(options.speed.into()))
        .map_err(internal)?;
    let chroma = match options.chroma {
        AvifChroma::Yuv420 => "420",
        AvifChroma::Yuv444 => "444",
    };
    encoder
        .set_parameter_value("chroma", EncoderParameterValue::String(chroma.into()))
        .map_err(internal)?;
    context
        .encode_image(&image, &mut encoder, None)
        .map_err(internal)?;
    context.write_to_bytes().map_err(internal)
}

fn corrupt(e: HeifError) -> PipelineError {
    if matches!(e.sub_code, HeifErrorSubCode::SecurityLimitExceeded) {
        PipelineError::Decode(format!("HEIF past the size limits: {}", e.message))
    } else {
        PipelineError::Decode(format!("corrupt HEIF: {}", e.message))
    }
}

fn internal(e: HeifError) -> PipelineError {
    PipelineError::Internal(format!("libheif: {}", e.message))
}
