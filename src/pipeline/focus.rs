//! Where a `cover` variant's crop goes when the photo is wider (or taller) than its box: in
//! the centre, or where the photo holds the most, as libvips's smart crop offers:
//!
//! - `entropy`: the window whose grey levels are the most varied (Shannon entropy of its
//!   histogram), which keeps textured subjects and drops flat sky or backdrop;
//! - `attention`: the window with the most of what draws the eye: edges (the luma's
//!   Laplacian), skin tones and saturated colours.
//!
//! Both look at a small copy of the photo (at most [`MAP_SIDE`] pixels a side, made once
//! per photo and only when a variant asks), so they cost little next to the resize. The crop
//! only slides along the axis it is free on; its size never changes.

use super::frame::Frame;
use super::resize::{Layout, Pixels};
use super::variant::{OutputFormat, Rect};
use super::PipelineError;
pub use crate::config::Focus;

/// Longest side of the copy the interest is measured on.
pub const MAP_SIDE: u32 = 128;
/// Histogram bins of the entropy measure.
const BINS: usize = 32;

/// The photo at a small size, as grey levels and per-pixel attention.
pub struct InterestMap {
    width: usize,
    height: usize,
    /// Grey level of each pixel, 0 to 255.
    luma: Vec<u8>,
    /// Attention score of each pixel.
    attention: Vec<f32>,
}

impl InterestMap {
    /// The map of `frame` (in the file's stored orientation, as the crops are).
    pub fn of(frame: &Frame) -> Result<InterestMap, PipelineError> {
        let (w, h) = (frame.width(), frame.height());
        let scale = (f64::from(MAP_SIDE) / f64::from(w.max(h))).min(1.0);
        let (mw, mh) = (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        );
        let small = frame
            .resize(Rect::whole(w, h), mw, mh, OutputFormat::Png)?
            .into_packed()?;
        Ok(InterestMap::from_pixels(&small))
    }

    fn from_pixels(p: &Pixels) -> InterestMap {
        let (width, height) = (p.width as usize, p.height as usize);
        let channels = p.layout.channels();
        let rgb = |i: usize| -> [f32; 3] {
            let px = &p.data[i * channels..];
            match p.layout {
                Layout::Luma => [f32::from(px[0]); 3],
                Layout::Rgb | Layout::Rgba => {
                    [f32::from(px[0]), f32::from(px[1]), f32::from(px[2])]
                }
            }
        };
        let luma: Vec<u8> = (0..width * height)
            .map(|i| {
                let [r, g, b] = rgb(i);
                (0.2126 * r + 0.7152 * g + 0.0722 * b).round() as u8
            })
            .collect();
        let at = |x: usize, y: usize| f32::from(luma[y * width + x]);
        let attention = (0..width * height)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                // Edges: the Laplacian, edge pixels taking their inner neighbour's place.
                let (l, r) = (x.saturating_sub(1), (x + 1).min(width - 1));
                let (u, d) = (y.saturating_sub(1), (y + 1).min(height - 1));
                let edge = (4.0 * at(x, y) - at(l, y) - at(r, y) - at(x, u) - at(x, d)).abs();
                let [r, g, b] = rgb(i);
                let max = r.max(g).max(b);
                let min = r.min(g).min(b);
                let saturation = if max > 0.0 { (max - min) / max } else { 0.0 };
                edge + 64.0 * skin(r, g, b) + 32.0 * saturation * (max / 255.0)
            })
            .collect();
        InterestMap {
            width,
            height,
            luma,
            attention,
        }
    }

    /// `crop` (of an image `full_w` × `full_h`, stored orientation) moved along its free
    /// axis to the most interesting window by `focus`.
    pub fn place(&self, crop: Rect, full_w: u32, full_h: u32, focus: Focus) -> Rect {
        let (fw, fh) = (f64::from(full_w), f64::from(full_h));
        let free_x = crop.width < fw - 0.5;
        let free_y = crop.height < fh - 0.5;
        if focus == Focus::Centre || free_x == free_y {
            return crop;
        }
        // The window's length in map pixels along the free axis, and the map's length.
        let (len, extent, window) = if free_x {
            (self.width, fw, crop.width)
        } else {
            (self.height, fh, crop.height)
        };
        let span = ((window / extent * len as f64).round() as usize).clamp(1, len);
        let best = match focus {
            Focus::Entropy => self.best_by_entropy(free_x, span),
            _ => self.best_by_attention(free_x, span),
        };
        // Back to source pixels, on a whole pixel (no resampling shift at full scale), kept
        // inside the image.
        let start = (best as f64 / len as f64 * extent)
            .round()
            .clamp(0.0, extent - window);
        if free_x {
            Rect { x: start, ..crop }
        } else {
            Rect { y: start, ..crop }
        }
    }

    /// Lines across the free axis (columns when it is x), each as the indices of its pixels.
    fn line(&self, along_x: bool, k: usize) -> Box<dyn Iterator<Item = usize> + '_> {
        if along_x {
            Box::new((0..self.height).map(move |y| y * self.width + k))
        } else {
            Box::new((0..self.width).map(move |x| k * self.width + x))
        }
    }

    fn lines(&self, along_x: bool) -> usize {
        if along_x {
            self.width
        } else {
            self.height
        }
    }

    /// The start of the `span`-line window with the most attention (the first, on ties
    /// nearest the centre).
    fn best_by_attention(&self, along_x: bool, span: usize) -> usize {
        let sums: Vec<f64> = (0..self.lines(along_x))
            .map(|k| {
                self.line(along_x, k)
                    .map(|i| f64::from(self.attention[i]))
                    .sum()
            })
            .collect();
        let mut window: f64 = sums[..span].iter().sum();
        let mut scores = vec![window];
        for k in span..sums.len() {
            window += sums[k] - sums[k - span];
            scores.push(window);
        }
        best(&scores)
    }

    /// The start of the `span`-line window whose grey levels have the largest entropy.
    fn best_by_entropy(&self, along_x: bool, span: usize) -> usize {
        let histograms: Vec<[u32; BINS]> = (0..self.lines(along_x))
            .map(|k| {
                let mut h = [0u32; BINS];
                for i in self.line(along_x, k) {
                    h[usize::from(self.luma[i]) * BINS / 256] += 1;
                }
                h
            })
            .collect();
        let mut window = [0u32; BINS];
        for h in &histograms[..span] {
            window.iter_mut().zip(h).for_each(|(w, c)| *w += c);
        }
        let mut scores = vec![entropy(&window)];
        for k in span..histograms.len() {
            for b in 0..BINS {
                window[b] = window[b] + histograms[k][b] - histograms[k - span][b];
            }
            scores.push(entropy(&window));
        }
        best(&scores)
    }
}

/// The index of the highest score; among equal ones (within a hair), the one nearest the
/// middle, so that a flat photo is cropped in the centre.
fn best(scores: &[f64]) -> usize {
    let top = scores.iter().copied().fold(f64::MIN, f64::max);
    let middle = (scores.len() - 1) as f64 / 2.0;
    let tolerance = top.abs() * 1e-6 + 1e-9;
    (0..scores.len())
        .filter(|&i| scores[i] >= top - tolerance)
        .min_by(|&a, &b| {
            (a as f64 - middle)
                .abs()
                .total_cmp(&(b as f64 - middle).abs())
        })
        .unwrap_or(0)
}

fn entropy(histogram: &[u32; BINS]) -> f64 {
    let total: u32 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / f64::from(total);
            -p * p.log2()
        })
        .sum()
}

/// How much a colour looks like skin, 0 to 1: near the skin tones' hue (reddish orange),
/// moderately saturated, not too dark (a simple RGB rule, as libvips weighs skin).
fn skin(r: f32, g: f32, b: f32) -> f32 {
    let ok = r > 95.0 && g > 40.0 && b > 20.0 && r > g && r > b && (r - g) > 15.0;
    let spread = r.max(g).max(b) - r.min(g).min(b);
    if ok && spread > 15.0 && spread < 170.0 {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grey 200 × 100 image with a busy checkered square at `x`.
    fn with_subject_at(x: u32) -> Frame {
        let (w, h) = (200u32, 100u32);
        let data = (0..h)
            .flat_map(|py| {
                (0..w).flat_map(move |px| {
                    let inside = px >= x && px < x + 40 && (30..70).contains(&py);
                    let v = if inside && (px / 4 + py / 4) % 2 == 0 {
                        230
                    } else if inside {
                        30
                    } else {
                        128
                    };
                    [v, v, v]
                })
            })
            .collect();
        Frame::Packed(Pixels {
            width: w,
            height: h,
            layout: Layout::Rgb,
            data,
        })
    }

    #[test]
    fn smart_crops_follow_the_subject() {
        // A 100 × 100 window of a 200 × 100 image: the centre would be x = 50.
        let crop = Rect {
            x: 50.0,
            y: 0.0,
            width: 100.0,
            height: 100.0,
        };
        for subject in [5u32, 155] {
            let map = InterestMap::of(&with_subject_at(subject)).expect("map");
            for focus in [Focus::Entropy, Focus::Attention] {
                let placed = map.place(crop, 200, 100, focus);
                assert!(
                    placed.x <= f64::from(subject) && placed.x + 100.0 >= f64::from(subject + 40),
                    "{focus:?}: subject at {subject}, window at {}",
                    placed.x
                );
                assert_eq!((placed.width, placed.y, placed.height), (100.0, 0.0, 100.0));
            }
            assert_eq!(map.place(crop, 200, 100, Focus::Centre), crop);
        }
    }

    #[test]
    fn a_flat_image_is_cropped_in_the_centre() {
        let flat = Frame::Packed(Pixels {
            width: 60,
            height: 120,
            layout: Layout::Rgb,
            data: vec![90; 60 * 120 * 3],
        });
        let map = InterestMap::of(&flat).expect("map");
        let crop = Rect {
            x: 0.0,
            y: 30.0,
            width: 60.0,
            height: 60.0,
        };
        for focus in [Focus::Entropy, Focus::Attention] {
            let placed = map.place(crop, 60, 120, focus);
            assert!((placed.y - 30.0).abs() <= 1.0, "{focus:?}: {}", placed.y);
        }
    }
}
