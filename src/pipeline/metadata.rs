//! JPEG metadata: the ICC profile a source carries (read for colour conversion, and written
//! into variants that keep it), Adobe's CMYK marker, and the EXIF block carried over from
//! a JPEG source into the JPEG variants that ask for it (the imports' `compressed`
//! rendition, `import.compressed_keep`), its orientation set to 1 since the pixels are
//! turned upright. Every other variant is written with nothing but pixels.

/// What a variant keeps of its source's metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub exif: bool,
    pub icc: bool,
}

const SOI: [u8; 2] = [0xFF, 0xD8];
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const APP14: u8 = 0xEE;
const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;
const EXIF_ID: &[u8] = b"Exif\0\0";
const ICC_ID: &[u8] = b"ICC_PROFILE\0";
const ADOBE_ID: &[u8] = b"Adobe";
/// Profile bytes in one APP2 segment: 65535 less the length, the id and the chunk numbers.
const ICC_CHUNK: usize = 65535 - 2 - 12 - 2;
/// The EXIF tag of the orientation, a SHORT in IFD0.
const ORIENTATION_TAG: u16 = 0x0112;
const SHORT: u16 = 3;

/// The segments of a JPEG before its scan: (marker, whole segment with marker and length).
fn segments(jpeg: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    if !jpeg.starts_with(&SOI) {
        return out;
    }
    let mut pos = 2;
    while pos + 4 <= jpeg.len() && jpeg[pos] == 0xFF {
        let marker = jpeg[pos + 1];
        if marker == SOS || marker == EOI {
            break;
        }
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos += 2; // no length
            continue;
        }
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        let end = pos + 2 + len;
        if len < 2 || end > jpeg.len() {
            break;
        }
        out.push((marker, &jpeg[pos..end]));
        pos = end;
    }
    out
}

/// The EXIF segment of a JPEG `source` to carry into a JPEG variant, its orientation set
/// to 1 (nothing when the orientation cannot be found to reset).
pub fn carried_exif(source: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (marker, seg) in segments(source) {
        if marker == APP1 && seg[4..].starts_with(EXIF_ID) {
            let mut seg = seg.to_vec();
            if upright(&mut seg[4 + EXIF_ID.len()..]) {
                out.extend_from_slice(&seg);
            }
        }
    }
    out
}

/// The ICC profile a JPEG carries, put together from its APP2 chunks in their sequence
/// order. None without one, or when the chunks do not add up (a missing or repeated one).
pub fn jpeg_icc(jpeg: &[u8]) -> Option<Vec<u8>> {
    let mut chunks: Vec<(u8, u8, &[u8])> = segments(jpeg)
        .into_iter()
        .filter(|(marker, seg)| *marker == APP2 && seg[4..].starts_with(ICC_ID))
        .filter_map(|(_, seg)| {
            let body = &seg[4 + ICC_ID.len()..];
            Some((*body.first()?, *body.get(1)?, body.get(2..)?))
        })
        .collect();
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    let count = chunks.len();
    let whole = chunks
        .iter()
        .enumerate()
        .all(|(i, c)| usize::from(c.0) == i + 1 && usize::from(c.1) == count);
    whole.then(|| chunks.iter().flat_map(|c| c.2.iter().copied()).collect())
}

/// True when a JPEG has Adobe's APP14 segment, whose CMYK is stored inverted.
pub fn adobe_app14(jpeg: &[u8]) -> bool {
    segments(jpeg)
        .iter()
        .any(|(marker, seg)| *marker == APP14 && seg[4..].starts_with(ADOBE_ID))
}

/// An ICC profile as the APP2 segments that carry it in a JPEG (at most 255 of them).
pub fn icc_segments(icc: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = icc.chunks(ICC_CHUNK).collect();
    let Ok(count) = u8::try_from(chunks.len()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(icc.len() + chunks.len() * (4 + ICC_ID.len() + 2));
    for (i, chunk) in chunks.iter().enumerate() {
        let len = 2 + ICC_ID.len() + 2 + chunk.len();
        out.extend_from_slice(&[0xFF, APP2]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(ICC_ID);
        out.extend_from_slice(&[i as u8 + 1, count]);
        out.extend_from_slice(chunk);
    }
    out
}

/// Sets the orientation in a TIFF block's IFD0 to 1 (or leaves a block without one as it
/// is); false when the block cannot be read.
fn upright(tiff: &mut [u8]) -> bool {
    let big = match tiff.get(..2) {
        Some(b"MM") => true,
        Some(b"II") => false,
        _ => return false,
    };
    let u16_at = |t: &[u8], at: usize| -> Option<u16> {
        let b: [u8; 2] = t.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |t: &[u8], at: usize| -> Option<usize> {
        let b: [u8; 4] = t.get(at..at + 4)?.try_into().ok()?;
        let v = if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        usize::try_from(v).ok()
    };
    let Some(ifd) = u32_at(tiff, 4) else {
        return false;
    };
    let Some(count) = u16_at(tiff, ifd) else {
        return false;
    };
    for i in 0..usize::from(count) {
        let entry = ifd + 2 + i * 12;
        let (Some(tag), Some(kind)) = (u16_at(tiff, entry), u16_at(tiff, entry + 2)) else {
            return false;
        };
        if tag == ORIENTATION_TAG {
            if kind != SHORT {
                return false;
            }
            let one = if big {
                1u16.to_be_bytes()
            } else {
                1u16.to_le_bytes()
            };
            match tiff.get_mut(entry + 8..entry + 10) {
                Some(value) => value.copy_from_slice(&one),
                None => return false,
            }
            return true;
        }
    }
    true
}

/// `jpeg` with `carried` put in after its SOI (and its JFIF segment, if it has one).
pub fn insert(jpeg: Vec<u8>, carried: &[u8]) -> Vec<u8> {
    if carried.is_empty() || !jpeg.starts_with(&SOI) {
        return jpeg;
    }
    let at = match segments(&jpeg).first() {
        Some((APP0, seg)) => 2 + seg.len(),
        _ => 2,
    };
    let mut out = Vec::with_capacity(jpeg.len() + carried.len());
    out.extend_from_slice(&jpeg[..at]);
    out.extend_from_slice(carried);
    out.extend_from_slice(&jpeg[at..]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An APP1 Exif segment: little-endian TIFF, IFD0 with Make "X" and an orientation.
    pub(crate) fn exif_segment(orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        // Make, ASCII, 2 bytes "X\0" inline.
        tiff.extend_from_slice(&0x010Fu16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&2u32.to_le_bytes());
        tiff.extend_from_slice(b"X\0\0\0");
        tiff.extend_from_slice(&ORIENTATION_TAG.to_le_bytes());
        tiff.extend_from_slice(&SHORT.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut body = EXIF_ID.to_vec();
        body.extend_from_slice(&tiff);
        segment(APP1, &body)
    }

    pub(crate) fn icc_segment() -> Vec<u8> {
        let mut body = ICC_ID.to_vec();
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(b"not a real profile, but carried byte for byte");
        segment(APP2, &body)
    }

    fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(body);
        s
    }

    #[test]
    fn exif_is_carried_upright() {
        let mut jpeg = SOI.to_vec();
        jpeg.extend(exif_segment(6));
        jpeg.extend(icc_segment());
        jpeg.extend([0xFF, SOS, 0, 2, 0xFF, EOI]);
        assert_eq!(carried_exif(&jpeg), exif_segment(1));
        // A block that cannot be read is left out rather than carried with a wrong
        // orientation.
        let mut broken = SOI.to_vec();
        let mut seg = exif_segment(6);
        seg[4 + EXIF_ID.len()] = b'Z';
        broken.extend(seg);
        assert!(carried_exif(&broken).is_empty());
    }

    #[test]
    fn icc_profiles_round_trip_through_app2_chunks() {
        // Larger than one segment holds: two chunks, found in either order.
        let icc: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let segs = icc_segments(&icc);
        let mut jpeg = SOI.to_vec();
        jpeg.extend(&segs);
        jpeg.extend([0xFF, SOS, 0, 2]);
        assert_eq!(jpeg_icc(&jpeg).as_deref(), Some(icc.as_slice()));
        let first = 4 + ICC_ID.len() + 2 + ICC_CHUNK;
        let mut swapped = SOI.to_vec();
        swapped.extend(&segs[first..]);
        swapped.extend(&segs[..first]);
        swapped.extend([0xFF, SOS, 0, 2]);
        assert_eq!(jpeg_icc(&swapped).as_deref(), Some(icc.as_slice()));
        // A chunk missing: no profile rather than half of one.
        let mut half = SOI.to_vec();
        half.extend(&segs[..first]);
        half.extend([0xFF, SOS, 0, 2]);
        assert_eq!(jpeg_icc(&half), None);
        let mut one = SOI.to_vec();
        one.extend(icc_segment());
        assert_eq!(
            jpeg_icc(&one).as_deref(),
            Some(&b"not a real profile, but carried byte for byte"[..])
        );
    }

    #[test]
    fn adobe_marker_is_found() {
        let mut jpeg = SOI.to_vec();
        jpeg.extend(segment(APP14, b"Adobe\0\x64\0\0\0\0\x02"));
        assert!(adobe_app14(&jpeg));
        assert!(!adobe_app14(&SOI));
    }

    #[test]
    fn segments_go_after_the_jfif_header() {
        let jfif = segment(APP0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        let mut jpeg = SOI.to_vec();
        jpeg.extend(&jfif);
        jpeg.extend([0xFF, SOS, 0, 2]);
        let out = insert(jpeg, &icc_segment());
        assert_eq!(&out[2..2 + jfif.len()], jfif.as_slice());
        assert_eq!(
            &out[2 + jfif.len()..][..icc_segment().len()],
            icc_segment().as_slice()
        );
    }
}
