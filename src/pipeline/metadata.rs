//! Metadata carried over from a JPEG source into a JPEG variant, for the variants that ask
//! for it (the imports' `compressed` rendition, `import.compressed_keep`): the EXIF block,
//! with its orientation set to 1 since the pixels are turned upright, and the ICC profile.
//! Every other variant is written with nothing but pixels.

/// What a variant keeps of its source's metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub exif: bool,
    pub icc: bool,
}

impl Keep {
    pub fn any(self) -> bool {
        self.exif || self.icc
    }
}

const SOI: [u8; 2] = [0xFF, 0xD8];
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const APP2: u8 = 0xE2;
const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;
const EXIF_ID: &[u8] = b"Exif\0\0";
const ICC_ID: &[u8] = b"ICC_PROFILE\0";
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

/// The segments of `source` to carry into a variant: its EXIF (orientation set to 1; left
/// out if the orientation cannot be found to reset) and its ICC profile, as asked.
pub fn carried(source: &[u8], keep: Keep) -> Vec<u8> {
    let mut out = Vec::new();
    if !keep.any() {
        return out;
    }
    for (marker, seg) in segments(source) {
        let body = &seg[4..];
        if marker == APP1 && keep.exif && body.starts_with(EXIF_ID) {
            let mut seg = seg.to_vec();
            if upright(&mut seg[4 + EXIF_ID.len()..]) {
                out.extend_from_slice(&seg);
            }
        } else if marker == APP2 && keep.icc && body.starts_with(ICC_ID) {
            out.extend_from_slice(seg);
        }
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
    fn exif_is_carried_upright_and_icc_as_it_is() {
        let mut jpeg = SOI.to_vec();
        jpeg.extend(exif_segment(6));
        jpeg.extend(icc_segment());
        jpeg.extend([0xFF, SOS, 0, 2, 0xFF, EOI]);
        let kept = carried(
            &jpeg,
            Keep {
                exif: true,
                icc: true,
            },
        );
        assert_eq!(kept.len(), exif_segment(1).len() + icc_segment().len());
        assert_eq!(&kept[..exif_segment(1).len()], exif_segment(1).as_slice());
        assert!(kept.ends_with(&icc_segment()));
        assert_eq!(
            carried(
                &jpeg,
                Keep {
                    exif: false,
                    icc: true
                }
            ),
            icc_segment()
        );
        assert!(carried(&jpeg, Keep::default()).is_empty());
        // A block that cannot be read is left out rather than carried with a wrong
        // orientation.
        let mut broken = SOI.to_vec();
        let mut seg = exif_segment(6);
        seg[4 + EXIF_ID.len()] = b'Z';
        broken.extend(seg);
        assert!(carried(
            &broken,
            Keep {
                exif: true,
                icc: false
            }
        )
        .is_empty());
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
