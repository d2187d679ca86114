//! Colour: variants come out in sRGB, which is what browsers assume of an image without a
//! profile. A source's embedded ICC profile (Display P3 from phones, Adobe RGB or ProPhoto
//! from cameras and editors, a press profile in a CMYK JPEG) is converted to sRGB with
//! moxcms; a source without one is taken as sRGB already. With `pipeline.colour = "keep"`
//! the pixels are left in the source's space and the profile goes into every variant.
//!
//! RGB sources are converted after the resize, on the variant's few pixels rather than the
//! photo's many (as libvips's thumbnail does); CMYK is converted when decoded, since
//! nothing else can work on it.

use std::sync::Arc;

use moxcms::{ColorProfile, DataColorSpace, Transform8BitExecutor, TransformOptions};

use super::resize::{Layout, Pixels};
use super::PipelineError;

/// The D50 illuminant of an ICC header (bytes 68 to 79), as the ICC specification writes
/// it in s15Fixed16.
const ICC_D50: [u8; 12] = [0, 0, 0xf6, 0xd6, 0, 1, 0, 0, 0, 0, 0xd3, 0x2d];

/// `profile` as ICC bytes that strict readers (libpng) accept: moxcms writes the D50
/// illuminant rounded otherwise and leaves the size unpadded, which libpng refuses.
pub fn icc_bytes(profile: &ColorProfile) -> Option<Vec<u8>> {
    let mut icc = profile.encode().ok()?;
    icc.resize(icc.len().next_multiple_of(4), 0);
    let size = u32::try_from(icc.len()).ok()?.to_be_bytes();
    icc.get_mut(0..4)?.copy_from_slice(&size);
    icc.get_mut(68..80)?.copy_from_slice(&ICC_D50);
    Some(icc)
}

/// A conversion of 8-bit RGB or RGBA pixels from a source's profile to sRGB.
#[derive(Clone)]
pub struct ToSrgb {
    transform: Arc<Transform8BitExecutor>,
    layout: Layout,
}

impl std::fmt::Debug for ToSrgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToSrgb")
            .field("layout", &self.layout)
            .finish()
    }
}

/// Colours a profile must map onto themselves (±1) to count as sRGB: its corners, a grey
/// and a few mid-tones.
const PROBES: [[u8; 3]; 10] = [
    [0, 0, 0],
    [255, 255, 255],
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [128, 128, 128],
    [200, 100, 50],
    [30, 160, 220],
    [60, 200, 90],
    [240, 220, 20],
];

impl ToSrgb {
    /// The conversion from the RGB profile `icc` for pixels laid out as `layout`. None when
    /// there is nothing to do: the profile is sRGB (it maps every probe colour onto itself),
    /// is not an RGB profile, cannot be read, or the pixels are grey. A profile that cannot
    /// be read is logged and ignored, as browsers do, rather than failing the photo.
    pub fn new(icc: &[u8], layout: Layout) -> Option<ToSrgb> {
        let channels = match layout {
            Layout::Rgb => moxcms::Layout::Rgb,
            Layout::Rgba => moxcms::Layout::Rgba,
            Layout::Luma => return None,
        };
        let profile = readable(icc)?;
        if profile.color_space != DataColorSpace::Rgb {
            return None;
        }
        let srgb = ColorProfile::new_srgb();
        let transform = match profile.create_transform_8bit(
            channels,
            &srgb,
            channels,
            TransformOptions::default(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = ?e, "colour profile cannot be applied; taken as sRGB");
                return None;
            }
        };
        let conversion = ToSrgb { transform, layout };
        (!conversion.is_identity()).then_some(conversion)
    }

    fn is_identity(&self) -> bool {
        let width = self.layout.channels();
        let src: Vec<u8> = PROBES
            .iter()
            .flat_map(|p| p.iter().copied().chain(std::iter::repeat_n(255, width - 3)))
            .collect();
        let mut dst = vec![0u8; src.len()];
        if self.transform.transform(&src, &mut dst).is_err() {
            return false;
        }
        src.iter().zip(&dst).all(|(a, b)| a.abs_diff(*b) <= 1)
    }

    /// `pixels` in sRGB. Pixels of another layout than the conversion's are an internal
    /// error.
    pub fn apply(&self, pixels: Pixels) -> Result<Pixels, PipelineError> {
        if pixels.layout != self.layout {
            return Err(PipelineError::Internal(format!(
                "colour conversion for {:?} given {:?} pixels",
                self.layout, pixels.layout
            )));
        }
        let mut out = vec![0u8; pixels.data.len()];
        self.transform
            .transform(&pixels.data, &mut out)
            .map_err(|e| PipelineError::Internal(format!("colour conversion: {e:?}")))?;
        Ok(Pixels {
            data: out,
            ..pixels
        })
    }
}

/// The profile, or None (logged) when it cannot be read.
fn readable(icc: &[u8]) -> Option<ColorProfile> {
    match ColorProfile::new_from_slice(icc) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = ?e, bytes = icc.len(), "colour profile cannot be read; ignored");
            None
        }
    }
}

/// CMYK samples as a JPEG stores them to sRGB. `inverted`: Adobe's convention (APP14
/// marker present), 255 meaning no ink. With a readable CMYK profile the conversion is
/// the profile's (perceptual intent); without one, the naive complement, which is what
/// viewers without colour management show.
pub fn cmyk_to_srgb(cmyk: &[u8], inverted: bool, icc: Option<&[u8]>) -> Vec<u8> {
    let ink = |v: u8| if inverted { 255 - v } else { v };
    if let Some(transform) = icc.and_then(readable).and_then(|profile| {
        if profile.color_space != DataColorSpace::Cmyk {
            return None;
        }
        profile
            .create_transform_8bit(
                moxcms::Layout::Rgba,
                &ColorProfile::new_srgb(),
                moxcms::Layout::Rgb,
                TransformOptions::default(),
            )
            .map_err(|e| tracing::warn!(error = ?e, "CMYK profile cannot be applied; ignored"))
            .ok()
    }) {
        let inks: Vec<u8> = cmyk.iter().map(|&v| ink(v)).collect();
        let mut rgb = vec![0u8; cmyk.len() / 4 * 3];
        if transform.transform(&inks, &mut rgb).is_ok() {
            return rgb;
        }
    }
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let k = 255 - u16::from(ink(px[3]));
        for &c in &px[..3] {
            let c = 255 - u16::from(ink(c));
            rgb.push(((c * k + 127) / 255) as u8);
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(layout: Layout, data: Vec<u8>) -> Pixels {
        Pixels {
            width: (data.len() / layout.channels()) as u32,
            height: 1,
            layout,
            data,
        }
    }

    fn icc(profile: ColorProfile) -> Vec<u8> {
        profile.encode().expect("encodes")
    }

    #[test]
    fn srgb_and_unreadable_profiles_are_left_alone() {
        assert!(ToSrgb::new(&icc(ColorProfile::new_srgb()), Layout::Rgb).is_none());
        assert!(ToSrgb::new(b"not a profile", Layout::Rgb).is_none());
        assert!(ToSrgb::new(&icc(ColorProfile::new_display_p3()), Layout::Luma).is_none());
    }

    #[test]
    fn wide_gamut_primaries_become_srgb() {
        // Adobe RGB's pure green lies outside sRGB: it comes out clipped to sRGB's green
        // edge, its red and blue at 0; a P3 mid grey stays grey.
        let adobe = ToSrgb::new(&icc(ColorProfile::new_adobe_rgb()), Layout::Rgb).expect("adobe");
        let out = adobe
            .apply(pixels(Layout::Rgb, vec![0, 255, 0]))
            .expect("ok");
        assert!(
            out.data[1] >= 250 && out.data[0] <= 5 && out.data[2] <= 60,
            "{:?}",
            out.data
        );
        let p3 = ToSrgb::new(&icc(ColorProfile::new_display_p3()), Layout::Rgba).expect("p3");
        let out = p3
            .apply(pixels(Layout::Rgba, vec![128, 128, 128, 77]))
            .expect("ok");
        assert!(
            out.data[..3].iter().all(|&v| v.abs_diff(128) <= 1),
            "{:?}",
            out.data
        );
        assert_eq!(out.data[3], 77, "alpha is kept");
        assert!(p3.apply(pixels(Layout::Rgb, vec![1, 2, 3])).is_err());
    }

    #[test]
    fn cmyk_without_a_profile_is_complemented() {
        // Adobe stores 255 - ink: (255,255,255,255) is white, k = 0 is black.
        assert_eq!(
            cmyk_to_srgb(&[255, 255, 255, 255], true, None),
            vec![255, 255, 255]
        );
        assert_eq!(
            cmyk_to_srgb(&[255, 0, 255, 255], true, None),
            vec![255, 0, 255]
        );
        assert_eq!(cmyk_to_srgb(&[200, 200, 200, 0], true, None), vec![0, 0, 0]);
        // Not inverted: 0 is no ink.
        assert_eq!(
            cmyk_to_srgb(&[0, 0, 0, 0], false, None),
            vec![255, 255, 255]
        );
        assert_eq!(
            cmyk_to_srgb(&[0, 255, 0, 0], false, None),
            vec![255, 0, 255]
        );
    }
}
