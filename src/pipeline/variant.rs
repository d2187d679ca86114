//! What a variant is (box, fit, format, adjustments) and where its pixels come from: the
//! output size and the part of the source it shows, worked out from the source's size alone.

pub use crate::config::{Fit, OutputFormat};

#[derive(Debug, Clone, PartialEq)]
pub struct VariantSpec {
    pub name: String,
    /// The box; `None` leaves that side unbounded (only with `Fit::Inside`).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub format: OutputFormat,
    pub quality: u8,
    pub grayscale: bool,
    pub sharpen: f32,
    /// Where a `cover` crop goes (moved there once the photo is decoded).
    pub focus: crate::config::Focus,
    /// Where the watermark goes, if this variant has one.
    pub watermark: Option<crate::config::WatermarkPlacement>,
    /// Metadata of a JPEG source carried into a JPEG variant (none by default).
    pub keep: super::metadata::Keep,
}

/// A rectangle in source pixels; fractional, as the resizer takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl Rect {
    pub fn whole(width: u32, height: u32) -> Self {
        Rect {
            x: 0.0,
            y: 0.0,
            width: f64::from(width),
            height: f64::from(height),
        }
    }

    /// The same region in an image `sx` × `sy` times the size.
    pub fn scaled(self, sx: f64, sy: f64) -> Self {
        Rect {
            x: self.x * sx,
            y: self.y * sy,
            width: self.width * sx,
            height: self.height * sy,
        }
    }
}

/// How one variant is cut from a source of a given size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Output size.
    pub width: u32,
    pub height: u32,
    /// The part of the source shown, in source pixels.
    pub crop: Rect,
}

impl Geometry {
    /// How many times the cropped source is larger than the output on its least-reduced
    /// axis: a source shrunk by up to this factor still covers the output.
    pub fn reduction(&self) -> f64 {
        (self.crop.width / f64::from(self.width)).min(self.crop.height / f64::from(self.height))
    }

    /// The same geometry for the source turned a quarter (width and height swapped).
    pub fn transposed(self) -> Self {
        Geometry {
            width: self.height,
            height: self.width,
            crop: Rect {
                x: self.crop.y,
                y: self.crop.x,
                width: self.crop.height,
                height: self.crop.width,
            },
        }
    }
}

impl VariantSpec {
    /// Output size and crop for a source of `width` × `height` (as displayed).
    pub fn geometry(&self, width: u32, height: u32) -> Geometry {
        let (w, h) = (f64::from(width), f64::from(height));
        let whole = Rect::whole(width, height);
        let scale_to = |bw: Option<u32>, bh: Option<u32>| {
            (
                bw.map(|b| f64::from(b) / w).unwrap_or(f64::INFINITY),
                bh.map(|b| f64::from(b) / h).unwrap_or(f64::INFINITY),
            )
        };
        match self.fit {
            Fit::Inside => {
                let (sx, sy) = scale_to(self.width, self.height);
                let scale = sx.min(sy).min(1.0);
                Geometry {
                    width: side(w * scale, self.width),
                    height: side(h * scale, self.height),
                    crop: whole,
                }
            }
            Fit::Cover => {
                let (sx, sy) = scale_to(self.width, self.height);
                let scale = sx.max(sy).min(1.0);
                let out_w = side(w * scale, self.width);
                let out_h = side(h * scale, self.height);
                let (cw, ch) = (f64::from(out_w) / scale, f64::from(out_h) / scale);
                let (cw, ch) = (cw.min(w), ch.min(h));
                Geometry {
                    width: out_w,
                    height: out_h,
                    crop: Rect {
                        x: (w - cw) / 2.0,
                        y: (h - ch) / 2.0,
                        width: cw,
                        height: ch,
                    },
                }
            }
            Fit::Exact => Geometry {
                width: self.width.unwrap_or(width),
                height: self.height.unwrap_or(height),
                crop: whole,
            },
        }
    }

    /// True when the output shows the whole source, undistorted: a smaller variant may then
    /// be resized from it instead of from the full image.
    pub fn keeps_whole_frame(&self) -> bool {
        self.fit == Fit::Inside && !self.grayscale && self.sharpen == 0.0
    }
}

/// A side length rounded to whole pixels, at least 1 and within the box.
fn side(length: f64, bound: Option<u32>) -> u32 {
    let px = (length.round() as u32).max(1);
    bound.map_or(px, |b| px.min(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: Option<u32>, height: Option<u32>, fit: Fit) -> VariantSpec {
        VariantSpec {
            name: "v".into(),
            width,
            height,
            fit,
            format: OutputFormat::Jpeg,
            quality: 80,
            grayscale: false,
            sharpen: 0.0,
            focus: crate::config::Focus::Centre,
            watermark: None,
            keep: Default::default(),
        }
    }

    fn size(g: Geometry) -> (u32, u32) {
        (g.width, g.height)
    }

    #[test]
    fn inside_fits_the_long_edge_and_never_enlarges() {
        let square = |n| spec(Some(n), Some(n), Fit::Inside);
        assert_eq!(size(square(256).geometry(4000, 3000)), (256, 192));
        assert_eq!(size(square(1280).geometry(3000, 4000)), (960, 1280));
        assert_eq!(size(square(256).geometry(10000, 1)), (256, 1));
        assert_eq!(size(square(256).geometry(100, 75)), (100, 75));
        let wide = spec(Some(800), None, Fit::Inside);
        assert_eq!(size(wide.geometry(4000, 3000)), (800, 600));
        assert_eq!(size(wide.geometry(400, 3000)), (400, 3000));
    }

    #[test]
    fn cover_fills_the_box_with_a_centred_crop() {
        let g = spec(Some(200), Some(200), Fit::Cover).geometry(4000, 3000);
        assert_eq!(size(g), (200, 200));
        assert_eq!(g.crop.width, 3000.0);
        assert_eq!(g.crop.height, 3000.0);
        assert_eq!(g.crop.x, 500.0);
        assert_eq!(g.crop.y, 0.0);
        // A source smaller than the box is cropped to the box's shape, not enlarged.
        let small = spec(Some(200), Some(100), Fit::Cover).geometry(150, 150);
        assert_eq!(size(small), (150, 100));
        assert_eq!(small.crop.height, 100.0);
    }

    #[test]
    fn exact_stretches() {
        let g = spec(Some(300), Some(100), Fit::Exact).geometry(4000, 3000);
        assert_eq!(size(g), (300, 100));
        assert_eq!(g.crop, Rect::whole(4000, 3000));
        assert_eq!(g.reduction(), 4000.0 / 300.0);
    }

    #[test]
    fn reduction_is_the_least_reduced_axis() {
        let g = spec(Some(1280), Some(1280), Fit::Inside).geometry(4000, 3000);
        assert_eq!(g.reduction(), 3000.0 / 960.0);
        let t = g.transposed();
        assert_eq!(size(t), (960, 1280));
        assert_eq!(t.reduction(), g.reduction());
    }
}
