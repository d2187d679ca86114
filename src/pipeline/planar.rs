//! JPEG's own colour planes, carried from the decoder to the encoder: luma (Y) at full size
//! and the two chroma planes (Cb, Cr) subsampled, as the file stores them.
//!
//! A JPEG photo becoming JPEG variants is never turned into RGB: libjpeg-turbo decodes to
//! the planes (no chroma upsampling, no colour conversion), each plane is resized on its
//! own (1.5 samples a pixel at 4:2:0 instead of 3), and the encoder takes the planes as they
//! are (no conversion, no downsampling). Variants are written 4:2:0, as from RGB. A variant
//! in another format gets its chroma resized to its full size and is converted to RGB at
//! that (small) size.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, GrayImage};
use turbojpeg::{Subsamp, YuvImage, YuvPlanesImage};

use super::resize::{Layout, Pixels};
use super::variant::Rect;
use super::PipelineError;

/// One plane of 8-bit samples: `height` rows `stride` bytes apart, the first `width` of
/// each row being the image (the rest is padding the codec asked for).
#[derive(Debug, Clone)]
pub struct Plane {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub data: Vec<u8>,
}

/// A YCbCr image (JFIF: full range, BT.601 matrix) in planes.
#[derive(Debug, Clone)]
pub struct Planar {
    pub width: u32,
    pub height: u32,
    /// How many luma samples one chroma sample spans, across and down (2, 2 at 4:2:0).
    pub subsampling: (u32, u32),
    pub y: Plane,
    pub cb: Plane,
    pub cr: Plane,
}

/// The chroma subsamplings decoded to planes; the rare ones (4:1:1, 4:4:1) go through RGB.
pub fn supported(subsamp: Subsamp) -> bool {
    matches!(
        subsamp,
        Subsamp::None | Subsamp::Sub2x1 | Subsamp::Sub2x2 | Subsamp::Sub1x2
    )
}

impl Planar {
    /// Takes libjpeg-turbo's one-buffer layout (Y, then Cb, then Cr; rows aligned to 1).
    pub fn from_turbojpeg(image: YuvImage<Vec<u8>>) -> Result<Self, PipelineError> {
        if image.align != 1 {
            return Err(PipelineError::Internal("YUV rows must be packed".into()));
        }
        let (yw, yh) = image.y_size();
        let (cw, ch) = image.uv_size();
        let (sx, sy) = image.subsamp.size();
        let (width, height) = (image.width, image.height);
        let mut data = image.pixels;
        if data.len() < yw * yh + 2 * cw * ch {
            return Err(PipelineError::Internal("YUV buffer too small".into()));
        }
        let cr = data.split_off(yw * yh + cw * ch);
        let cb = data.split_off(yw * yh);
        let plane = |width: usize, height: usize, stride: usize, data: Vec<u8>| {
            Ok::<_, PipelineError>(Plane {
                width: to_u32(width)?,
                height: to_u32(height)?,
                stride: to_u32(stride)?,
                data,
            })
        };
        Ok(Planar {
            width: to_u32(width)?,
            height: to_u32(height)?,
            subsampling: (to_u32(sx)?, to_u32(sy)?),
            y: plane(width, height, yw, data)?,
            cb: plane(cw, ch, cw, cb)?,
            cr: plane(cw, ch, cw, cr)?,
        })
    }

    /// Bytes of sample data.
    pub fn bytes(&self) -> usize {
        self.y.data.len() + self.cb.data.len() + self.cr.data.len()
    }

    /// Resamples the `crop` region (in luma pixels) to `width` × `height`, its chroma
    /// subsampled by `subsampling` ((2, 2) for a JPEG variant; (1, 1) for one that will be
    /// converted to RGB, so that its chroma is resized once, down, and never brought back up).
    pub fn resize(
        &self,
        crop: Rect,
        width: u32,
        height: u32,
        subsampling: (u32, u32),
    ) -> Result<Planar, PipelineError> {
        let whole = Rect::whole(self.width, self.height);
        if (width, height) == (self.width, self.height)
            && crop == whole
            && subsampling == self.subsampling
        {
            return Ok(self.clone());
        }
        let mut resizer = Resizer::new();
        let y = resize_plane(&mut resizer, &self.y, crop, width, height)?;
        // Each output chroma sample spans sx × sy output pixels (the last may hang over an
        // odd edge): its source is the same span of the crop, in this image's chroma units.
        let (ox, oy) = subsampling;
        let (cw, ch) = (width.div_ceil(ox), height.div_ceil(oy));
        let (sx, sy) = (f64::from(self.subsampling.0), f64::from(self.subsampling.1));
        let chroma_crop = Rect {
            x: crop.x / sx,
            y: crop.y / sy,
            width: crop.width * f64::from(cw * ox) / f64::from(width) / sx,
            height: crop.height * f64::from(ch * oy) / f64::from(height) / sy,
        };
        let cb = resize_plane(&mut resizer, &self.cb, chroma_crop, cw, ch)?;
        let cr = resize_plane(&mut resizer, &self.cr, chroma_crop, cw, ch)?;
        Ok(Planar {
            width,
            height,
            subsampling,
            y,
            cb,
            cr,
        })
    }

    /// Runs `f` on the luma plane (sharpening works on lightness alone).
    pub fn map_luma(self, f: impl FnOnce(Pixels) -> Pixels) -> Planar {
        let Planar {
            width,
            height,
            subsampling,
            y,
            cb,
            cr,
        } = self;
        let luma = f(Pixels {
            width,
            height,
            layout: Layout::Luma,
            data: packed(y).data,
        });
        Planar {
            width,
            height,
            subsampling,
            y: Plane {
                width: luma.width,
                height: luma.height,
                stride: luma.width,
                data: luma.data,
            },
            cb,
            cr,
        }
    }

    /// Applies the EXIF orientation to every plane.
    pub fn orient(self, orientation: Orientation) -> Result<Planar, PipelineError> {
        if orientation == Orientation::NoTransforms {
            return Ok(self);
        }
        let turn = |plane: Plane| -> Result<Plane, PipelineError> {
            let plane = packed(plane);
            let gray = GrayImage::from_raw(plane.width, plane.height, plane.data)
                .ok_or_else(|| PipelineError::Internal("plane size mismatch".into()))?;
            let mut image = DynamicImage::ImageLuma8(gray);
            image.apply_orientation(orientation);
            let (width, height) = (image.width(), image.height());
            Ok(Plane {
                width,
                height,
                stride: width,
                data: image.into_luma8().into_raw(),
            })
        };
        let swap = super::orient::swaps_axes(orientation);
        let (sx, sy) = self.subsampling;
        let (width, height) = if swap {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        };
        let subsampling = if swap { (sy, sx) } else { (sx, sy) };
        let (mut cb, mut cr) = (turn(self.cb)?, turn(self.cr)?);
        // On an odd side the last chroma sample hangs over the edge; an axis turned around
        // puts that overhang at the start, where the format does not expect it. Such planes
        // are resampled half a sample on, back into place.
        let (reversed_x, reversed_y) = reversed_axes(orientation);
        let overhang = |reversed: bool, samples: u32, sub: u32, size: u32| {
            if reversed {
                f64::from(samples * sub - size) / f64::from(sub)
            } else {
                0.0
            }
        };
        let shift_x = overhang(reversed_x, cb.width, subsampling.0, width);
        let shift_y = overhang(reversed_y, cb.height, subsampling.1, height);
        if shift_x > 0.0 || shift_y > 0.0 {
            let mut resizer = Resizer::new();
            let (w, h) = (cb.width, cb.height);
            let shifted = Rect {
                x: shift_x,
                y: shift_y,
                width: f64::from(w),
                height: f64::from(h),
            };
            cb = resize_plane(&mut resizer, &cb, shifted, w, h)?;
            cr = resize_plane(&mut resizer, &cr, shifted, w, h)?;
        }
        Ok(Planar {
            width,
            height,
            subsampling,
            y: turn(self.y)?,
            cb,
            cr,
        })
    }

    /// RGB at this size: chroma brought up to full size if it is not (Catmull-Rom), then
    /// JFIF's conversion.
    pub fn to_rgb(&self) -> Result<Pixels, PipelineError> {
        let (w, h) = (self.width, self.height);
        let (sx, sy) = (f64::from(self.subsampling.0), f64::from(self.subsampling.1));
        let mut resizer = Resizer::new();
        let span = Rect {
            x: 0.0,
            y: 0.0,
            width: f64::from(w) / sx,
            height: f64::from(h) / sy,
        };
        let full = |resizer: &mut Resizer, plane: &Plane| {
            if (plane.width, plane.height) == (w, h) {
                Ok(packed(plane.clone()))
            } else {
                resize_plane_with(resizer, plane, span, w, h, FilterType::CatmullRom)
            }
        };
        let (cb, cr) = (full(&mut resizer, &self.cb)?, full(&mut resizer, &self.cr)?);
        let y = packed(self.y.clone());
        let mut data = Vec::with_capacity(y.data.len() * 3);
        for ((&l, &b), &r) in y.data.iter().zip(&cb.data).zip(&cr.data) {
            data.extend_from_slice(&ycbcr_to_rgb(l, b, r));
        }
        Ok(Pixels {
            width: w,
            height: h,
            layout: Layout::Rgb,
            data,
        })
    }

    /// Encodes as JPEG straight from the planes (optimised Huffman tables, as from RGB), at
    /// their own subsampling.
    pub fn encode_jpeg(&self, quality: u8) -> Result<Vec<u8>, PipelineError> {
        let subsamp = match self.subsampling {
            (1, 1) => Subsamp::None,
            (2, 1) => Subsamp::Sub2x1,
            (2, 2) => Subsamp::Sub2x2,
            (1, 2) => Subsamp::Sub1x2,
            other => {
                return Err(PipelineError::Internal(format!(
                    "no JPEG subsampling for {other:?}"
                )))
            }
        };
        // The encoder reads luma in whole chroma blocks: odd edges repeat their last sample.
        let (sx, sy) = self.subsampling;
        let y = padded(
            &self.y,
            self.width.div_ceil(sx) * sx,
            self.height.div_ceil(sy) * sy,
        );
        let mut compressor = super::encode::jpeg_compressor(quality, true)?;
        let image = YuvPlanesImage {
            y_plane: y.data.as_slice(),
            u_plane: self.cb.data.as_slice(),
            v_plane: self.cr.data.as_slice(),
            width: self.width as usize,
            height: self.height as usize,
            y_stride: y.stride as usize,
            u_stride: self.cb.stride as usize,
            v_stride: self.cr.stride as usize,
            subsamp,
        };
        compressor
            .compress_yuv_planes_to_vec(&image)
            .map_err(super::encode::jpeg_error)
    }
}

/// Whether the image's final x and y axes run against the stored axes they come from.
fn reversed_axes(orientation: Orientation) -> (bool, bool) {
    match orientation {
        Orientation::NoTransforms | Orientation::Rotate90FlipH => (false, false),
        Orientation::FlipHorizontal | Orientation::Rotate90 => (true, false),
        Orientation::FlipVertical | Orientation::Rotate270 => (false, true),
        Orientation::Rotate180 | Orientation::Rotate270FlipH => (true, true),
    }
}

fn to_u32(n: usize) -> Result<u32, PipelineError> {
    u32::try_from(n).map_err(|_| PipelineError::Internal("plane too large".into()))
}

/// JFIF YCbCr → RGB, in 16-bit fixed point.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const ONE: i32 = 1 << 16;
    let (y, cb, cr) = (
        i32::from(y) * ONE + ONE / 2,
        i32::from(cb) - 128,
        i32::from(cr) - 128,
    );
    let clamp = |v: i32| (v >> 16).clamp(0, 255) as u8;
    [
        clamp(y + 91_881 * cr),
        clamp(y - 22_554 * cb - 46_802 * cr),
        clamp(y + 116_130 * cb),
    ]
}

/// The plane with rows exactly `width` long.
fn packed(plane: Plane) -> Plane {
    if plane.stride == plane.width {
        return plane;
    }
    let (w, s) = (plane.width as usize, plane.stride as usize);
    let data = plane
        .data
        .chunks(s)
        .take(plane.height as usize)
        .flat_map(|row| &row[..w])
        .copied()
        .collect();
    Plane {
        stride: plane.width,
        data,
        ..plane
    }
}

/// The plane at least `width` × `height`, edges repeated into the new columns and rows.
fn padded(plane: &Plane, width: u32, height: u32) -> std::borrow::Cow<'_, Plane> {
    let rows_held = plane.data.len() / plane.stride.max(1) as usize;
    if plane.stride >= width && rows_held >= height as usize {
        return std::borrow::Cow::Borrowed(plane);
    }
    let (w, s) = (plane.width as usize, plane.stride as usize);
    let mut data = Vec::with_capacity(width as usize * height as usize);
    for row in 0..height as usize {
        let src = &plane.data[row.min((plane.height as usize).saturating_sub(1)) * s..][..w];
        data.extend_from_slice(src);
        let last = src[w - 1];
        data.resize(data.len() + (width as usize - w), last);
    }
    std::borrow::Cow::Owned(Plane {
        width,
        height,
        stride: width,
        data,
    })
}

fn resize_plane(
    resizer: &mut Resizer,
    src: &Plane,
    crop: Rect,
    width: u32,
    height: u32,
) -> Result<Plane, PipelineError> {
    resize_plane_with(resizer, src, crop, width, height, FilterType::Lanczos3)
}

fn resize_plane_with(
    resizer: &mut Resizer,
    src: &Plane,
    crop: Rect,
    width: u32,
    height: u32,
    filter: FilterType,
) -> Result<Plane, PipelineError> {
    // A chroma crop can hang over an odd edge by half an output chroma sample, which is
    // several source samples when the step is large (1280 to 256 px: 2.5): the plane is
    // extended by repeating its edge, so that every output sample keeps its place. Less
    // than a sample is a rounding error; more than the plane again is a bug.
    const ROUNDING: f64 = 1e-6;
    let need_w = ((crop.x + crop.width - ROUNDING).ceil().max(0.0) as u32).max(src.width);
    let need_h = ((crop.y + crop.height - ROUNDING).ceil().max(0.0) as u32).max(src.height);
    if need_w > src.width * 2 + 2 || need_h > src.height * 2 + 2 {
        return Err(PipelineError::Internal(format!(
            "crop {crop:?} reaches past a {}x{} plane",
            src.width, src.height
        )));
    }
    let src = if (need_w, need_h) == (src.width, src.height) {
        std::borrow::Cow::Borrowed(src)
    } else {
        padded(src, need_w, need_h)
    };
    let view = ImageRef::new(src.stride, need_h, &src.data, PixelType::U8)
        .map_err(|e| PipelineError::Internal(format!("resize source: {e}")))?;
    let (pw, ph) = (f64::from(need_w), f64::from(need_h));
    let x = crop.x.min(pw - 1.0).max(0.0);
    let y = crop.y.min(ph - 1.0).max(0.0);
    let (cw, ch) = (crop.width.min(pw - x), crop.height.min(ph - y));
    let mut dst = Image::new(width, height, PixelType::U8);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(x, y, cw, ch);
    resizer
        .resize(&view, &mut dst, &options)
        .map_err(|e| PipelineError::Internal(format!("resize: {e}")))?;
    Ok(Plane {
        width,
        height,
        stride: width,
        data: dst.into_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jfif_conversion_matches_known_colours() {
        assert_eq!(ycbcr_to_rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(ycbcr_to_rgb(255, 128, 128), [255, 255, 255]);
        // Pure red in JFIF YCbCr is (76, 85, 255).
        let [r, g, b] = ycbcr_to_rgb(76, 85, 255);
        assert!(r >= 253 && g <= 2 && b <= 2, "{r} {g} {b}");
    }

    #[test]
    fn reversed_axes_match_the_orientations() {
        // A 2x2 image of distinct samples: after the orientation, the first row's order and
        // the first column's order tell which final axis runs against its stored one.
        let source = GrayImage::from_raw(2, 2, vec![0, 1, 2, 3]).unwrap_or_default();
        for exif in 1..=8u8 {
            let Some(orientation) = Orientation::from_exif(exif) else {
                continue;
            };
            let mut image = DynamicImage::ImageLuma8(source.clone());
            image.apply_orientation(orientation);
            let g = image.into_luma8();
            let at = |x, y| i32::from(g.get_pixel(x, y).0[0]);
            // Along final x the stored index changes by +1 (x) or +2 (y) when not reversed.
            let (dx, dy) = (at(1, 0) - at(0, 0), at(0, 1) - at(0, 0));
            assert_eq!(
                reversed_axes(orientation),
                (dx < 0, dy < 0),
                "{orientation:?}"
            );
        }
    }

    #[test]
    fn padding_repeats_the_last_column_and_row() {
        let plane = Plane {
            width: 3,
            height: 1,
            stride: 4,
            data: vec![1, 2, 3, 99],
        };
        let p = padded(&plane, 4, 2);
        assert_eq!((p.width, p.height, p.stride), (4, 2, 4));
        assert_eq!(p.data, vec![1, 2, 3, 3, 1, 2, 3, 3]);
    }
}
