//! The watermark: a PNG with transparency (`pipeline.watermark`), read once when the
//! process starts and composited on the variants that place it (position, margin, opacity
//! and size relative to each variant), after the orientation, in sRGB.

use std::path::Path;

use super::frame::Frame;
use super::resize::{self, Layout, Pixels};
use super::variant::Rect;
use super::PipelineError;
pub use crate::config::{Position, WatermarkPlacement};

/// Largest watermark side accepted, in pixels.
const MAX_SIDE: u32 = 4096;

/// The watermark's pixels, RGBA.
#[derive(Clone)]
pub struct Watermark {
    pixels: Pixels,
}

impl std::fmt::Debug for Watermark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watermark({}x{})", self.pixels.width, self.pixels.height)
    }
}

impl Watermark {
    /// Reads the PNG at `path`.
    pub fn load(path: &Path) -> Result<Watermark, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Watermark::from_png(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_png(bytes: &[u8]) -> Result<Watermark, String> {
        let mut reader =
            image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
        let image = reader
            .decode()
            .map_err(|e| format!("not a PNG photoq can read ({e}); at most {MAX_SIDE} px a side"))?
            .into_rgba8();
        Ok(Watermark {
            pixels: Pixels {
                width: image.width(),
                height: image.height(),
                layout: Layout::Rgba,
                data: image.into_raw(),
            },
        })
    }

    /// A hash of the watermark's pixels.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.pixels.width.to_le_bytes());
        hash.update(self.pixels.height.to_le_bytes());
        hash.update(&self.pixels.data);
        hash.finalize().into()
    }

    /// `frame` with the watermark composited as `placement` says.
    pub fn apply(
        &self,
        frame: Frame,
        placement: &WatermarkPlacement,
    ) -> Result<Frame, PipelineError> {
        let mut base = frame.into_packed()?;
        let (vw, vh) = (base.width, base.height);
        let (ww, wh) = self.size_on(vw, vh, placement.size);
        let mark = resize::resize(
            &self.pixels,
            Rect::whole(self.pixels.width, self.pixels.height),
            ww,
            wh,
        )?;
        let margin = (placement.margin * vw.min(vh) as f32).round() as u32;
        let (x, y) = place(placement.position, (vw, vh), (ww, wh), margin);
        composite(&mut base, &mark, x, y, placement.opacity);
        Ok(Frame::Packed(base))
    }

    /// The watermark's size on a `vw` × `vh` variant: `size` of its width, aspect kept,
    /// made smaller to fit the height.
    fn size_on(&self, vw: u32, vh: u32, size: f32) -> (u32, u32) {
        let (mw, mh) = (f64::from(self.pixels.width), f64::from(self.pixels.height));
        let width = f64::from(vw) * f64::from(size);
        let scale = (width / mw).min(f64::from(vh) / mh);
        (
            ((mw * scale).round() as u32).clamp(1, vw),
            ((mh * scale).round() as u32).clamp(1, vh),
        )
    }
}

/// The top-left corner of a `mark`-sized box at `position` in `area`, `margin` from the
/// edges it is against (clamped inside the area).
pub fn place(position: Position, area: (u32, u32), mark: (u32, u32), margin: u32) -> (u32, u32) {
    let along = |free: u32, start: bool, end: bool| {
        if start {
            margin.min(free)
        } else if end {
            free.saturating_sub(margin)
        } else {
            free / 2
        }
    };
    let (free_x, free_y) = (area.0.saturating_sub(mark.0), area.1.saturating_sub(mark.1));
    use Position::*;
    let left = matches!(position, TopLeft | Left | BottomLeft);
    let right = matches!(position, TopRight | Right | BottomRight);
    let top = matches!(position, TopLeft | Top | TopRight);
    let bottom = matches!(position, BottomLeft | Bottom | BottomRight);
    (along(free_x, left, right), along(free_y, top, bottom))
}

/// `mark` (RGBA) laid over `base` at (`x`, `y`) with its alpha times `opacity` (the
/// Porter-Duff "over" operator; a transparent base keeps its transparency elsewhere).
fn composite(base: &mut Pixels, mark: &Pixels, x: u32, y: u32, opacity: f32) {
    let channels = base.layout.channels();
    let opacity = opacity.clamp(0.0, 1.0);
    for my in 0..mark.height {
        let by = y + my;
        if by >= base.height {
            break;
        }
        for mx in 0..mark.width {
            let bx = x + mx;
            if bx >= base.width {
                break;
            }
            let m = &mark.data[((my * mark.width + mx) * 4) as usize..][..4];
            let a = f32::from(m[3]) / 255.0 * opacity;
            if a <= 0.0 {
                continue;
            }
            let at = ((by * base.width + bx) as usize) * channels;
            let px = &mut base.data[at..at + channels];
            match base.layout {
                Layout::Luma => {
                    let grey = 0.2126 * f32::from(m[0])
                        + 0.7152 * f32::from(m[1])
                        + 0.0722 * f32::from(m[2]);
                    px[0] = blend(grey, f32::from(px[0]), a);
                }
                Layout::Rgb => {
                    for c in 0..3 {
                        px[c] = blend(f32::from(m[c]), f32::from(px[c]), a);
                    }
                }
                Layout::Rgba => {
                    let ba = f32::from(px[3]) / 255.0;
                    let out_a = a + ba * (1.0 - a);
                    for c in 0..3 {
                        let v = (f32::from(m[c]) * a + f32::from(px[c]) * ba * (1.0 - a)) / out_a;
                        px[c] = v.round().clamp(0.0, 255.0) as u8;
                    }
                    px[3] = (out_a * 255.0).round() as u8;
                }
            }
        }
    }
}

fn blend(top: f32, bottom: f32, alpha: f32) -> u8 {
    (top * alpha + bottom * (1.0 - alpha))
        .round()
        .clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_keep_their_margin() {
        let area = (200, 100);
        let mark = (50, 20);
        assert_eq!(place(Position::TopLeft, area, mark, 5), (5, 5));
        assert_eq!(place(Position::BottomRight, area, mark, 5), (145, 75));
        assert_eq!(place(Position::Centre, area, mark, 5), (75, 40));
        assert_eq!(place(Position::Bottom, area, mark, 5), (75, 75));
        assert_eq!(place(Position::Left, area, mark, 5), (5, 40));
        // A margin larger than the room left: the mark stays inside.
        assert_eq!(place(Position::BottomRight, (52, 22), mark, 5), (0, 0));
    }

    #[test]
    fn opacity_scales_the_marks_alpha() {
        let mut base = Pixels {
            width: 2,
            height: 1,
            layout: Layout::Rgb,
            data: vec![0, 0, 0, 0, 0, 0],
        };
        let mark = Pixels {
            width: 2,
            height: 1,
            layout: Layout::Rgba,
            data: vec![200, 100, 50, 255, 200, 100, 50, 0],
        };
        composite(&mut base, &mark, 0, 0, 0.5);
        assert_eq!(base.data, vec![100, 50, 25, 0, 0, 0]);
    }
}
