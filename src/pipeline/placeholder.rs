//! Placeholders: a ThumbHash of each photo (about 25 bytes), which a client decodes into a
//! blurred image of the right colours and aspect ratio to show while the variants load.
//! It is made from the smallest whole image the pipeline already has (usually the
//! thumbnail), shrunk into 100 × 100 px, in sRGB and upright: a few hundred microseconds.

use image::metadata::Orientation;

use super::colour::ToSrgb;
use super::frame::Frame;
use super::resize::{Layout, Pixels};
use super::variant::{OutputFormat, Rect};
use super::PipelineError;

/// ThumbHash's largest input side.
const SIDE: u32 = 100;

/// The colours of the image a placeholder is made from. ThumbHash decoders read sRGB, so a
/// placeholder is in sRGB even when the variants keep their source's profile.
#[derive(Clone, Copy)]
pub enum Colours<'a> {
    /// Already sRGB (or no profile to go by).
    Srgb,
    /// To be converted with the photo's conversion (made for the decoded image's layout).
    Convert(&'a ToSrgb),
    /// In this ICC profile, which the variants keep.
    Profile(&'a [u8]),
}

/// The ThumbHash of `source`, a whole image in the stored orientation, in `colours`.
pub fn thumbhash(
    source: &Frame,
    colours: Colours<'_>,
    orientation: Orientation,
) -> Result<Vec<u8>, PipelineError> {
    let (w, h) = (source.width(), source.height());
    let scale = (f64::from(SIDE) / f64::from(w.max(h))).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).clamp(1, SIDE),
        ((f64::from(h) * scale).round() as u32).clamp(1, SIDE),
    );
    let mut small = source
        .resize(Rect::whole(w, h), tw, th, OutputFormat::Png)?
        .into_packed()?;
    let kept;
    let to_srgb = match colours {
        Colours::Srgb => None,
        Colours::Convert(to_srgb) => Some(to_srgb),
        Colours::Profile(icc) => {
            kept = ToSrgb::new(icc, small.layout);
            kept.as_ref()
        }
    };
    if let Some(to_srgb) = to_srgb {
        small = to_srgb.apply(small)?;
    }
    let upright = Frame::Packed(small).orient(orientation)?.into_packed()?;
    let rgba = rgba(&upright);
    Ok(thumbhash::rgba_to_thumb_hash(
        upright.width as usize,
        upright.height as usize,
        &rgba,
    ))
}

fn rgba(pixels: &Pixels) -> Vec<u8> {
    match pixels.layout {
        Layout::Rgba => pixels.data.clone(),
        Layout::Rgb => pixels
            .data
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        Layout::Luma => pixels.data.iter().flat_map(|&y| [y, y, y, 255]).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: u32, height: u32, layout: Layout, px: &[u8]) -> Frame {
        Frame::Packed(Pixels {
            width,
            height,
            layout,
            data: px
                .iter()
                .copied()
                .cycle()
                .take((width * height) as usize * layout.channels())
                .collect(),
        })
    }

    #[test]
    fn a_hash_keeps_colour_aspect_and_orientation() {
        let red = frame(640, 320, Layout::Rgb, &[220, 30, 30]);
        let hash = thumbhash(&red, Colours::Srgb, Orientation::NoTransforms).expect("hash");
        assert!(hash.len() < 40, "{} bytes", hash.len());
        let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).expect("ratio");
        // ThumbHash keeps the ratio coarsely (7 × 4 cells for 2:1).
        assert!((1.5..=2.0).contains(&ratio), "{ratio}");
        let (r, g, b, a) = thumbhash::thumb_hash_to_average_rgba(&hash).expect("average");
        assert!(r > 0.8 && g < 0.2 && b < 0.2 && a > 0.99, "{r} {g} {b} {a}");
        // Turned a quarter, the photo is upright: taller than wide.
        let turned = thumbhash(&red, Colours::Srgb, Orientation::Rotate90).expect("hash");
        let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&turned).expect("ratio");
        assert!((0.5..=0.67).contains(&ratio), "{ratio}");
        // Grey and transparent sources work too, and tiny ones.
        let grey = thumbhash(
            &frame(3, 2, Layout::Luma, &[128]),
            Colours::Srgb,
            Orientation::NoTransforms,
        )
        .expect("grey");
        let (r, _, _, _) = thumbhash::thumb_hash_to_average_rgba(&grey).expect("average");
        assert!((r - 0.5).abs() < 0.05, "{r}");
        let clear = thumbhash(
            &frame(50, 50, Layout::Rgba, &[0, 0, 255, 0]),
            Colours::Srgb,
            Orientation::NoTransforms,
        )
        .expect("transparent");
        let (_, _, _, a) = thumbhash::thumb_hash_to_average_rgba(&clear).expect("average");
        assert!(a < 0.1, "{a}");
    }

    #[test]
    fn a_kept_profile_is_converted_for_the_hash_only() {
        let icc = crate::pipeline::colour::icc_bytes(&moxcms::ColorProfile::new_display_p3())
            .expect("profile");
        let p3 = frame(64, 64, Layout::Rgb, &[40, 170, 90]);
        let average = |colours| {
            let hash = thumbhash(&p3, colours, Orientation::NoTransforms).expect("hash");
            thumbhash::thumb_hash_to_average_rgba(&hash).expect("average")
        };
        let to_srgb = ToSrgb::new(&icc, Layout::Rgb).expect("conversion");
        let (kept, converted, raw) = (
            average(Colours::Profile(&icc)),
            average(Colours::Convert(&to_srgb)),
            average(Colours::Srgb),
        );
        assert_eq!(kept, converted);
        // The hash's average is the pixel converted to sRGB, not its P3 values read as sRGB.
        let one = to_srgb
            .apply(Pixels {
                width: 1,
                height: 1,
                layout: Layout::Rgb,
                data: vec![40, 170, 90],
            })
            .expect("converts");
        let expected = one.data.iter().map(|&v| f32::from(v) / 255.0);
        for (got, want) in [kept.0, kept.1, kept.2].into_iter().zip(expected) {
            assert!((got - want).abs() < 0.03, "{kept:?} vs {:?}", one.data);
        }
        assert!((kept.0 - raw.0).abs() > 0.1, "{kept:?} vs {raw:?}");
    }
}
