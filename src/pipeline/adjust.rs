//! Adjustments applied to a variant after its resize: grayscale, sharpening, flattening
//! onto a background. They run on the small output, so they cost little.

use super::resize::{Layout, Pixels};

/// Rec. 709 luma weights, in 1/65536ths (they sum to 65536).
const LUMA_WEIGHTS: [u32; 3] = [13933, 46871, 4732];

/// RGBA pixels blended onto `background` (alpha dropped); other layouts are left alone.
pub fn flatten(pixels: Pixels, background: [u8; 3]) -> Pixels {
    if pixels.layout != Layout::Rgba {
        return pixels;
    }
    Pixels {
        data: flatten_rgba(&pixels.data, background),
        layout: Layout::Rgb,
        ..pixels
    }
}

/// RGBA bytes blended onto `background`, as RGB bytes.
pub fn flatten_rgba(rgba: &[u8], background: [u8; 3]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = u32::from(px[3]);
        for (&c, bg) in px[..3].iter().zip(background) {
            let v = (u32::from(c) * a + u32::from(bg) * (255 - a) + 127) / 255;
            rgb.push(v as u8);
        }
    }
    rgb
}

/// Converts to grey: one channel, or grey RGB with its alpha kept.
pub fn grayscale(pixels: Pixels) -> Pixels {
    let luma = |px: &[u8]| {
        let sum: u32 = px
            .iter()
            .zip(LUMA_WEIGHTS)
            .map(|(&c, w)| u32::from(c) * w)
            .sum();
        ((sum + (1 << 15)) >> 16) as u8
    };
    match pixels.layout {
        Layout::Luma => pixels,
        Layout::Rgb => Pixels {
            data: pixels.data.chunks_exact(3).map(luma).collect(),
            layout: Layout::Luma,
            ..pixels
        },
        Layout::Rgba => Pixels {
            data: pixels
                .data
                .chunks_exact(4)
                .flat_map(|px| {
                    let y = luma(&px[..3]);
                    [y, y, y, px[3]]
                })
                .collect(),
            ..pixels
        },
    }
}

/// Unsharp mask: each colour channel moves away from its 3×3 Gaussian blur by `amount`
/// times the difference. Alpha is left alone; edges repeat their border pixels.
pub fn sharpen(pixels: Pixels, amount: f32) -> Pixels {
    if amount <= 0.0 || pixels.width < 3 || pixels.height < 3 {
        return pixels;
    }
    let (w, h) = (pixels.width as usize, pixels.height as usize);
    let ch = pixels.layout.channels();
    let colour = if pixels.layout == Layout::Rgba { 3 } else { ch };
    let src = &pixels.data;
    let mut out = src.clone();
    let at = |x: usize, y: usize, c: usize| i32::from(src[(y * w + x) * ch + c]);
    for y in 0..h {
        let (up, down) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let (left, right) = (x.saturating_sub(1), (x + 1).min(w - 1));
            for c in 0..colour {
                let blur = (at(left, up, c) + 2 * at(x, up, c) + at(right, up, c))
                    + 2 * (at(left, y, c) + 2 * at(x, y, c) + at(right, y, c))
                    + (at(left, down, c) + 2 * at(x, down, c) + at(right, down, c));
                let p = at(x, y, c) as f32;
                let v = p + amount * (p - blur as f32 / 16.0);
                out[(y * w + x) * ch + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Pixels {
        data: out,
        ..pixels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(width: u32, height: u32, data: Vec<u8>) -> Pixels {
        Pixels {
            width,
            height,
            layout: Layout::Rgb,
            data,
        }
    }

    #[test]
    fn grayscale_weights_follow_rec709() {
        let g = grayscale(rgb(3, 1, vec![255, 255, 255, 255, 0, 0, 0, 255, 0]));
        assert_eq!(g.layout, Layout::Luma);
        assert_eq!(g.data, vec![255, 54, 182]);
    }

    #[test]
    fn sharpen_leaves_flat_areas_and_steepens_edges() {
        let flat = rgb(4, 4, vec![100; 48]);
        assert_eq!(sharpen(flat.clone(), 1.0).data, flat.data);
        // A vertical edge: dark left half, light right half.
        let row: Vec<u8> = [50u8, 50, 200, 200]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let edge = rgb(4, 3, row.repeat(3));
        let out = sharpen(edge, 1.0);
        let mid = &out.data[12..24]; // second row
        assert!(mid[3] < 50, "dark side darker at the edge: {mid:?}");
        assert!(mid[6] > 200, "light side lighter at the edge: {mid:?}");
        assert_eq!(mid[0], 50, "away from the edge nothing moves");
    }
}
