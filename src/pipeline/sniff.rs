//! What an upload is, judged from its first bytes (never from its name or declared type).

/// The source formats photoq decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Jpeg,
    Png,
    Webp,
    /// HEIF with HEVC: iPhone photos (and other HEIF brands, decoded by libheif).
    Heic,
    Avif,
}

impl SourceFormat {
    pub fn mime(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "image/jpeg",
            SourceFormat::Png => "image/png",
            SourceFormat::Webp => "image/webp",
            SourceFormat::Heic => "image/heic",
            SourceFormat::Avif => "image/avif",
        }
    }
}

/// Bytes needed to recognise every supported format: a HEIF file's `ftyp` box with its
/// major brand and first four compatible brands.
pub const SNIFF_LEN: usize = 32;

/// Brands of HEIF files with HEVC images.
const HEIC_BRANDS: [&[u8; 4]; 6] = [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"];
/// Brands of AVIF files.
const AVIF_BRANDS: [&[u8; 4]; 2] = [b"avif", b"avis"];
/// Brands of HEIF files of any codec, which the compatible brands then tell apart.
const GENERIC_HEIF_BRANDS: [&[u8; 4]; 3] = [b"mif1", b"msf1", b"miaf"];

/// The format of `head` (the first bytes of a file), if photoq supports it.
pub fn sniff(head: &[u8]) -> Option<SourceFormat> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(SourceFormat::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(SourceFormat::Png)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(SourceFormat::Webp)
    } else {
        heif_brand(head)
    }
}

/// A HEIF file's kind from its `ftyp` box: the major brand, or for a generic one (`mif1`)
/// the first compatible brand in `head` that names a codec.
fn heif_brand(head: &[u8]) -> Option<SourceFormat> {
    if head.get(4..8)? != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?) as usize;
    let of = |brand: &[u8]| {
        if HEIC_BRANDS.iter().any(|b| b.as_slice() == brand) {
            Some(SourceFormat::Heic)
        } else if AVIF_BRANDS.iter().any(|b| b.as_slice() == brand) {
            Some(SourceFormat::Avif)
        } else {
            None
        }
    };
    let major = head.get(8..12)?;
    if let Some(format) = of(major) {
        return Some(format);
    }
    if !GENERIC_HEIF_BRANDS.iter().any(|b| b.as_slice() == major) {
        return None;
    }
    // Compatible brands follow the minor version, up to the end of the box.
    let end = size.min(head.len());
    head.get(16..end)?.chunks_exact(4).find_map(of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_magic_bytes() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]),
            Some(SourceFormat::Jpeg)
        );
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\x0d"),
            Some(SourceFormat::Png)
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(SourceFormat::Webp));
        assert_eq!(sniff(b"hello, this is text"), None);
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"RIFF"), None);
    }

    fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let size = 16 + 4 * compatible.len() as u32;
        let mut out = size.to_be_bytes().to_vec();
        out.extend_from_slice(b"ftyp");
        out.extend_from_slice(major);
        out.extend_from_slice(&[0, 0, 0, 0]);
        compatible.iter().for_each(|b| out.extend_from_slice(*b));
        out.extend_from_slice(b"\0\0\0\x08meta");
        out
    }

    #[test]
    fn sniffs_heif_brands() {
        assert_eq!(
            sniff(&ftyp(b"heic", &[b"mif1", b"heic"])),
            Some(SourceFormat::Heic)
        );
        assert_eq!(
            sniff(&ftyp(b"avif", &[b"avif", b"mif1"])),
            Some(SourceFormat::Avif)
        );
        // Generic major brand: the compatible brands say which codec.
        assert_eq!(
            sniff(&ftyp(b"mif1", &[b"mif1", b"avif"])),
            Some(SourceFormat::Avif)
        );
        assert_eq!(
            sniff(&ftyp(b"mif1", &[b"mif1", b"heic"])),
            Some(SourceFormat::Heic)
        );
        // A brand beyond the box is not the box's.
        let mut short = ftyp(b"mif1", &[b"mif1"]);
        short.truncate(20);
        short.extend_from_slice(b"avif");
        assert_eq!(sniff(&short), None);
        // MP4 video and QuickTime are not images.
        assert_eq!(sniff(&ftyp(b"isom", &[b"isom", b"mp41"])), None);
        assert_eq!(sniff(&ftyp(b"qt  ", &[])), None);
    }
}
