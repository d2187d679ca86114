//! Location privacy (`privacy.strip_gps`): the GPS position taken out of an original's EXIF
//! in place. The GPS directory's values are zeroed and its entries dropped; the file keeps
//! its length and every other byte, so the picture, the maker notes and every other offset
//! read as before. Variants carry no EXIF (but an import's `compressed` rendition kept with
//! `import.compressed_keep = ["exif"]`, made from the original once stripped).

/// IFD0's pointer to the GPS directory.
const GPS_IFD_TAG: u16 = 0x8825;
/// What a JPEG APP1 segment or a HEIF EXIF item puts before the TIFF block.
const EXIF_HEADER: &[u8] = b"Exif\0\0";

/// Bytes of one value of each TIFF type (1 BYTE … 12 DOUBLE); 0 for unknown types.
fn type_size(kind: u16) -> usize {
    match kind {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 => 8,
        _ => 0,
    }
}

/// A TIFF block's byte order, read from its header.
#[derive(Clone, Copy)]
struct Order {
    big: bool,
}

impl Order {
    fn of(tiff: &[u8]) -> Option<Self> {
        match tiff.get(..4)? {
            b"MM\0*" => Some(Order { big: true }),
            b"II*\0" => Some(Order { big: false }),
            _ => None,
        }
    }

    fn u16_at(self, t: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = t.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(self, t: &[u8], at: usize) -> Option<usize> {
        let b: [u8; 4] = t.get(at..at.checked_add(4)?)?.try_into().ok()?;
        let v = if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        usize::try_from(v).ok()
    }
}

/// Removes the GPS directory's contents from a TIFF/EXIF block in place: every entry's
/// value (inline, or elsewhere in the block) zeroed, the entries zeroed and their count set
/// to 0. True when there was a position to remove; a block that cannot be read is left as
/// it is.
pub fn strip_gps_tiff(tiff: &mut [u8]) -> bool {
    let Some(order) = Order::of(tiff) else {
        return false;
    };
    let Some(gps) = gps_ifd(tiff, order) else {
        return false;
    };
    let Some(count) = order.u16_at(tiff, gps).map(usize::from) else {
        return false;
    };
    if count == 0 {
        return false;
    }
    // Every range to zero, checked before anything is changed.
    let mut ranges = Vec::with_capacity(count + 1);
    let entries = gps + 2;
    let Some(end) = count.checked_mul(12).and_then(|n| n.checked_add(entries)) else {
        return false;
    };
    if end > tiff.len() {
        return false;
    }
    for i in 0..count {
        let entry = entries + i * 12;
        let (Some(kind), Some(n)) = (order.u16_at(tiff, entry + 2), order.u32_at(tiff, entry + 4))
        else {
            return false;
        };
        let size = type_size(kind).saturating_mul(n);
        if size > 4 {
            let Some(at) = order.u32_at(tiff, entry + 8) else {
                return false;
            };
            match at.checked_add(size) {
                // A value past the block is not there to zero; the entry goes all the same.
                Some(stop) if stop <= tiff.len() => ranges.push(at..stop),
                _ => {}
            }
        }
    }
    for range in ranges {
        tiff[range].fill(0);
    }
    tiff[gps..end].fill(0);
    true
}

/// Where IFD0's GPS pointer leads, if it has one inside the block.
fn gps_ifd(tiff: &[u8], order: Order) -> Option<usize> {
    let ifd0 = order.u32_at(tiff, 4)?;
    let count = usize::from(order.u16_at(tiff, ifd0)?);
    (0..count)
        .map_while(|i| i.checked_mul(12)?.checked_add(ifd0.checked_add(2)?))
        .find(|entry| order.u16_at(tiff, *entry) == Some(GPS_IFD_TAG))
        .and_then(|entry| order.u32_at(tiff, entry + 8))
        .filter(|at| *at > 0 && *at < tiff.len())
}

/// Strips the GPS position from every EXIF block of an image file, in place (the file keeps
/// its length): a JPEG's APP1 `Exif` segments, a PNG's `eXIf` chunk (its CRC made again), a
/// WebP's `EXIF` chunk, a HEIF or AVIF file's EXIF item. True when the file changed.
pub fn strip_gps(file: &mut [u8]) -> bool {
    if file.starts_with(&[0xFF, 0xD8]) {
        return strip_jpeg(file);
    }
    if file.starts_with(b"\x89PNG\r\n\x1a\n") {
        return strip_png(file);
    }
    if file.starts_with(b"RIFF") && file.get(8..12) == Some(b"WEBP") {
        return strip_webp(file);
    }
    strip_marked(file)
}

fn strip_jpeg(file: &mut [u8]) -> bool {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    const APP1: u8 = 0xE1;
    let mut changed = false;
    let mut pos = 2;
    loop {
        while file.get(pos) == Some(&0xFF) && file.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(0xFF), Some(&marker)) = (file.get(pos), file.get(pos + 1)) else {
            return changed;
        };
        if marker == SOS || marker == EOI {
            return changed;
        }
        let (Some(&hi), Some(&lo)) = (file.get(pos + 2), file.get(pos + 3)) else {
            return changed;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(segment) = (len >= 2)
            .then(|| file.get_mut(pos + 4..pos + 2 + len))
            .flatten()
        else {
            return changed;
        };
        if marker == APP1 && segment.starts_with(EXIF_HEADER) {
            changed |= strip_gps_tiff(&mut segment[EXIF_HEADER.len()..]);
        }
        pos += 2 + len;
    }
}

fn strip_png(file: &mut [u8]) -> bool {
    let mut changed = false;
    let mut pos = 8;
    while let Some(len) = file
        .get(pos..pos + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_be_bytes(b) as usize)
    {
        let Some((data, stop)) = pos
            .checked_add(8)
            .and_then(|data| Some((data, data.checked_add(len)?)))
            .filter(|(_, stop)| stop.checked_add(4).is_some_and(|end| end <= file.len()))
        else {
            return changed;
        };
        if &file[pos + 4..pos + 8] == b"eXIf" && strip_gps_tiff(&mut file[data..stop]) {
            let crc = crc32fast::hash(&file[pos + 4..stop]);
            file[stop..stop + 4].copy_from_slice(&crc.to_be_bytes());
            changed = true;
        }
        pos = stop + 4;
    }
    changed
}

fn strip_webp(file: &mut [u8]) -> bool {
    let mut changed = false;
    let mut pos = 12;
    while let Some(len) = file
        .get(pos + 4..pos + 8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
    {
        let Some((data, stop)) = pos
            .checked_add(8)
            .and_then(|data| Some((data, data.checked_add(len)?)))
            .filter(|(_, stop)| *stop <= file.len())
        else {
            return changed;
        };
        if &file[pos..pos + 4] == b"EXIF" {
            let block = &mut file[data..stop];
            let tiff = if block.starts_with(EXIF_HEADER) {
                &mut block[EXIF_HEADER.len()..]
            } else {
                block
            };
            changed |= strip_gps_tiff(tiff);
        }
        // Chunks are padded to an even length.
        pos = stop + (len & 1);
    }
    changed
}

/// HEIF and AVIF: the EXIF item, found by its `Exif\0\0` header and TIFF signature (the
/// block is changed only if it reads as TIFF with a GPS directory).
fn strip_marked(file: &mut [u8]) -> bool {
    let mut changed = false;
    let mut from = 0;
    while let Some(found) = file.get(from..).and_then(|rest| {
        rest.windows(EXIF_HEADER.len())
            .position(|w| w == EXIF_HEADER)
    }) {
        let tiff = from + found + EXIF_HEADER.len();
        if Order::of(&file[tiff..]).is_some() {
            changed |= strip_gps_tiff(&mut file[tiff..]);
        }
        from = tiff;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian TIFF block: IFD0 with Make and the GPS pointer; a GPS directory
    /// with a latitude (three rationals, out of line) and its reference (inline).
    fn tiff_with_gps() -> Vec<u8> {
        let mut t = b"II*\0".to_vec();
        t.extend(8u32.to_le_bytes());
        // IFD0 at 8: 2 entries.
        t.extend(2u16.to_le_bytes());
        t.extend(0x010fu16.to_le_bytes()); // Make, ASCII, 4 bytes inline: "Cam\0"
        t.extend(2u16.to_le_bytes());
        t.extend(4u32.to_le_bytes());
        t.extend(b"Cam\0");
        t.extend(GPS_IFD_TAG.to_le_bytes());
        t.extend(4u16.to_le_bytes());
        t.extend(1u32.to_le_bytes());
        t.extend(38u32.to_le_bytes()); // the GPS IFD
        t.extend(0u32.to_le_bytes()); // no next IFD
        assert_eq!(t.len(), 38);
        t.extend(2u16.to_le_bytes());
        t.extend(1u16.to_le_bytes()); // GPSLatitudeRef "N"
        t.extend(2u16.to_le_bytes());
        t.extend(2u32.to_le_bytes());
        t.extend(b"N\0\0\0");
        t.extend(2u16.to_le_bytes()); // GPSLatitude, 3 RATIONAL at 68
        t.extend(5u16.to_le_bytes());
        t.extend(3u32.to_le_bytes());
        t.extend(68u32.to_le_bytes());
        t.extend(0u32.to_le_bytes());
        assert_eq!(t.len(), 68);
        for (n, d) in [(48u32, 1u32), (51, 1), (2910, 100)] {
            t.extend(n.to_le_bytes());
            t.extend(d.to_le_bytes());
        }
        t
    }

    #[test]
    fn the_position_goes_and_the_rest_stays() {
        let mut tiff = tiff_with_gps();
        let before = tiff.clone();
        assert!(rexif::parse_buffer(&tiff)
            .unwrap()
            .entries
            .iter()
            .any(|e| e.tag == rexif::ExifTag::GPSLatitude));
        assert!(strip_gps_tiff(&mut tiff));
        assert_eq!(tiff.len(), before.len());
        assert_eq!(tiff[..38], before[..38], "IFD0 untouched");
        assert!(
            tiff[38..].iter().all(|b| *b == 0),
            "nothing of the position left"
        );
        let parsed = rexif::parse_buffer(&tiff).unwrap();
        assert!(parsed.entries.iter().any(|e| e.tag == rexif::ExifTag::Make));
        assert!(!parsed
            .entries
            .iter()
            .any(|e| e.tag == rexif::ExifTag::GPSLatitude));
        assert!(!strip_gps_tiff(&mut tiff), "a second pass finds nothing");
    }

    #[test]
    fn each_container_is_stripped_in_place() {
        let tiff = tiff_with_gps();
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1];
        jpeg.extend(((EXIF_HEADER.len() + tiff.len() + 2) as u16).to_be_bytes());
        jpeg.extend(EXIF_HEADER);
        jpeg.extend(&tiff);
        jpeg.extend([0xFF, 0xDA, 0, 2, 1, 2, 3, 0xFF, 0xD9]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend((tiff.len() as u32).to_be_bytes());
        png.extend(b"eXIf");
        png.extend(&tiff);
        png.extend(crc32fast::hash(&png[12..]).to_be_bytes());
        let mut webp = b"RIFF\0\0\0\0WEBPEXIF".to_vec();
        webp.extend((tiff.len() as u32).to_le_bytes());
        webp.extend(&tiff);
        let mut heif = b"\0\0\0\x18ftypheic....mdat\0\0\0\x06".to_vec();
        heif.extend(EXIF_HEADER);
        heif.extend(&tiff);
        for (name, mut file) in [("jpeg", jpeg), ("png", png), ("webp", webp), ("heif", heif)] {
            let len = file.len();
            assert!(strip_gps(&mut file), "{name}");
            assert_eq!(file.len(), len, "{name}");
            assert!(
                !file.windows(8).any(|w| w == [0x30, 0, 0, 0, 1, 0, 0, 0]),
                "{name}: the latitude's degrees are gone"
            );
            assert!(file.windows(4).any(|w| w == b"Cam\0"), "{name}");
            assert!(!strip_gps(&mut file), "{name}: nothing left to strip");
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend((tiff.len() as u32).to_be_bytes());
        png.extend(b"eXIf");
        png.extend(&tiff);
        png.extend([0; 4]);
        strip_gps(&mut png);
        let crc = crc32fast::hash(&png[12..png.len() - 4]);
        assert_eq!(
            png[png.len() - 4..],
            crc.to_be_bytes(),
            "the CRC is made again"
        );
    }

    #[test]
    fn hostile_blocks_change_nothing_and_never_panic() {
        let good = tiff_with_gps();
        for cut in 0..good.len() {
            let mut t = good[..cut].to_vec();
            let before = t.clone();
            if !strip_gps_tiff(&mut t) {
                assert_eq!(t, before, "cut at {cut}");
            }
        }
        // A GPS directory claiming more entries than the block holds.
        let mut t = good.clone();
        t[38..40].copy_from_slice(&u16::MAX.to_le_bytes());
        let before = t.clone();
        assert!(!strip_gps_tiff(&mut t));
        assert_eq!(t, before);
        for noise in [
            &b""[..],
            b"II*\0",
            b"MM\0*\xff\xff\xff\xff",
            b"Exif\0\0II*\0\x08",
        ] {
            let mut f = noise.to_vec();
            assert!(!strip_gps(&mut f));
        }
    }
}
