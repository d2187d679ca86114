//! EXIF extraction with rexif: a few normalised fields every client wants, plus the raw tag
//! list. Numbers are plain JSON numbers: exposure in seconds, GPS in signed decimal degrees,
//! altitude in metres (negative below sea level).

use paperclip::actix::Apiv2Schema;
use rexif::{ExifEntry, ExifTag, IfdKind, TagValue};
use serde::{Deserialize, Serialize};

/// EXIF tags rexif does not name; read by number.
const TAG_PIXEL_X_DIMENSION: u16 = 0xa002;
const TAG_PIXEL_Y_DIMENSION: u16 = 0xa003;
const TAG_OFFSET_TIME_ORIGINAL: u16 = 0x9011;
/// Raw values longer than this are cut (maker notes and other blobs are left out entirely).
const RAW_VALUE_MAX_CHARS: usize = 256;
/// At most this many raw tags are kept.
const RAW_TAGS_MAX: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Exif {
    pub make: Option<String>,
    pub model: Option<String>,
    pub lens: Option<String>,
    /// `DateTimeOriginal` as ISO 8601 (`2008-05-30T15:56:01`), with the offset when the
    /// camera recorded one (`OffsetTimeOriginal`).
    pub taken_at: Option<String>,
    /// Seconds.
    pub exposure_time: Option<f64>,
    pub f_number: Option<f64>,
    pub iso: Option<u32>,
    /// Millimetres.
    pub focal_length: Option<f64>,
    pub gps: Option<Gps>,
    /// EXIF orientation, 1–8.
    pub orientation: Option<u16>,
    /// `PixelXDimension` as recorded by the camera.
    pub width: Option<u32>,
    /// `PixelYDimension` as recorded by the camera.
    pub height: Option<u32>,
    /// Every readable tag of the main, EXIF, GPS and interoperability directories.
    pub tags: Vec<RawTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Gps {
    /// Signed decimal degrees, north positive.
    pub latitude: Option<f64>,
    /// Signed decimal degrees, east positive.
    pub longitude: Option<f64>,
    /// Metres, negative below sea level.
    pub altitude: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct RawTag {
    /// `ifd0`, `exif`, `gps` or `interop`.
    pub ifd: String,
    /// The tag number, e.g. `0x829a`.
    pub tag: String,
    pub name: String,
    pub value: String,
}

/// Reads EXIF from a whole JPEG file or from a bare TIFF/EXIF block. Never fails: data that
/// cannot be read yields an empty `Exif`.
pub fn extract(data: &[u8]) -> Exif {
    // rexif looks at a JPEG's first APP1 only; files often carry XMP there and EXIF after.
    let data = jpeg_exif_block(data).unwrap_or(data);
    let (result, _warnings) = rexif::parse_buffer_quiet(data);
    match result {
        Ok(parsed) => from_entries(&parsed.entries),
        Err(_) => Exif::default(),
    }
}

/// The TIFF block of the first `Exif\0\0` APP1 segment of a JPEG, if any.
fn jpeg_exif_block(data: &[u8]) -> Option<&[u8]> {
    const SOI: [u8; 2] = [0xFF, 0xD8];
    const APP1: u8 = 0xE1;
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    const EXIF_HEADER: &[u8] = b"Exif\0\0";
    if !data.starts_with(&SOI) {
        return None;
    }
    let mut pos = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if data.get(pos) != Some(&0xFF) {
            return None;
        }
        let marker = *data.get(pos + 1)?;
        if marker == SOS || marker == EOI {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([
            *data.get(pos + 2)?,
            *data.get(pos + 3)?,
        ]));
        if len < 2 {
            return None;
        }
        let segment = data.get(pos + 4..pos + 2 + len)?;
        if marker == APP1 && segment.starts_with(EXIF_HEADER) {
            return Some(&segment[EXIF_HEADER.len()..]);
        }
        pos += 2 + len;
    }
}

fn from_entries(entries: &[ExifEntry]) -> Exif {
    let main = |tag: ExifTag| {
        entries
            .iter()
            .find(|e| e.tag == tag && matches!(e.kind, IfdKind::Ifd0 | IfdKind::Exif))
    };
    let by_number = |n: u16| {
        entries
            .iter()
            .find(|e| e.ifd.tag == n && matches!(e.kind, IfdKind::Ifd0 | IfdKind::Exif))
    };
    let gps = |tag: ExifTag| {
        entries
            .iter()
            .find(|e| e.tag == tag && matches!(e.kind, IfdKind::Gps))
    };

    let taken_at = main(ExifTag::DateTimeOriginal)
        .and_then(|e| text(&e.value))
        .and_then(|dt| exif_datetime_to_iso(&dt))
        .map(|dt| {
            let offset = by_number(TAG_OFFSET_TIME_ORIGINAL)
                .and_then(|e| text(&e.value))
                .filter(|o| is_utc_offset(o));
            match offset {
                Some(o) => format!("{dt}{o}"),
                None => dt,
            }
        });

    let latitude = gps(ExifTag::GPSLatitude)
        .and_then(|e| degrees(&e.value))
        .map(|v| signed(v, gps(ExifTag::GPSLatitudeRef), 'S'));
    let longitude = gps(ExifTag::GPSLongitude)
        .and_then(|e| degrees(&e.value))
        .map(|v| signed(v, gps(ExifTag::GPSLongitudeRef), 'W'));
    let altitude = gps(ExifTag::GPSAltitude)
        .and_then(|e| number(&e.value))
        .map(|v| {
            let below = gps(ExifTag::GPSAltitudeRef)
                .and_then(|e| integer(&e.value))
                .is_some_and(|r| r == 1);
            if below {
                -v
            } else {
                v
            }
        });
    let gps = (latitude.is_some() || longitude.is_some() || altitude.is_some()).then_some(Gps {
        latitude,
        longitude,
        altitude,
    });

    Exif {
        make: main(ExifTag::Make).and_then(|e| text(&e.value)),
        model: main(ExifTag::Model).and_then(|e| text(&e.value)),
        lens: main(ExifTag::LensModel).and_then(|e| text(&e.value)),
        taken_at,
        exposure_time: main(ExifTag::ExposureTime).and_then(|e| number(&e.value)),
        f_number: main(ExifTag::FNumber).and_then(|e| number(&e.value)),
        iso: main(ExifTag::ISOSpeedRatings)
            .and_then(|e| integer(&e.value))
            .and_then(|v| u32::try_from(v).ok()),
        focal_length: main(ExifTag::FocalLength).and_then(|e| number(&e.value)),
        gps,
        orientation: main(ExifTag::Orientation)
            .and_then(|e| integer(&e.value))
            .and_then(|v| u16::try_from(v).ok())
            .filter(|o| (1..=8).contains(o)),
        width: by_number(TAG_PIXEL_X_DIMENSION)
            .and_then(|e| integer(&e.value))
            .and_then(|v| u32::try_from(v).ok()),
        height: by_number(TAG_PIXEL_Y_DIMENSION)
            .and_then(|e| integer(&e.value))
            .and_then(|v| u32::try_from(v).ok()),
        tags: raw_tags(entries),
    }
}

fn raw_tags(entries: &[ExifEntry]) -> Vec<RawTag> {
    entries
        .iter()
        .filter_map(|e| {
            let ifd = match e.kind {
                IfdKind::Ifd0 => "ifd0",
                IfdKind::Exif => "exif",
                IfdKind::Gps => "gps",
                IfdKind::Interoperability => "interop",
                IfdKind::Ifd1 | IfdKind::Makernote => return None,
            };
            if e.tag == ExifTag::MakerNote {
                return None;
            }
            let value = match &e.value {
                TagValue::Undefined(b, _) | TagValue::Unknown(b, _) | TagValue::U8(b)
                    if b.len() > RAW_VALUE_MAX_CHARS / 2 =>
                {
                    return None
                }
                TagValue::Invalid(..) => return None,
                // rexif describes tags it does not know as "[tag=…] …"; give the bare values.
                v if e.tag == ExifTag::UnknownToMe => plain(v)?,
                _ => clean(&e.value_more_readable),
            };
            let name = if e.tag == ExifTag::UnknownToMe {
                format!("0x{:04x}", e.ifd.tag)
            } else {
                e.tag.to_string()
            };
            Some(RawTag {
                ifd: ifd.to_owned(),
                tag: format!("0x{:04x}", e.ifd.tag),
                name,
                value,
            })
        })
        .take(RAW_TAGS_MAX)
        .collect()
}

/// Text safe to store: no NUL or other control characters (PostgreSQL's JSONB refuses
/// `\u0000`), trimmed, and bounded in length.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(RAW_VALUE_MAX_CHARS)
        .collect();
    s.trim().to_owned()
}

/// Numbers separated by spaces, or the text, of a tag rexif does not know.
fn plain(v: &TagValue) -> Option<String> {
    fn join<T: ToString>(xs: &[T]) -> String {
        xs.iter()
            .take(RAW_VALUE_MAX_CHARS / 4)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
    let s = match v {
        TagValue::Ascii(s) => clean(s),
        TagValue::U16(x) => join(x),
        TagValue::U32(x) => join(x),
        TagValue::I16(x) => join(x),
        TagValue::I32(x) => join(x),
        TagValue::URational(x) => join(&x.iter().map(|r| r.value()).collect::<Vec<_>>()),
        TagValue::IRational(x) => join(&x.iter().map(|r| r.value()).collect::<Vec<_>>()),
        _ => return None,
    };
    Some(s)
}

fn text(v: &TagValue) -> Option<String> {
    match v {
        // A NUL ends an EXIF string; what follows it is padding or garbage.
        TagValue::Ascii(s) => {
            Some(clean(s.split('\0').next().unwrap_or_default())).filter(|s| !s.is_empty())
        }
        _ => None,
    }
}

/// The first value of a numeric tag, as f64.
fn number(v: &TagValue) -> Option<f64> {
    let x = match v {
        TagValue::URational(r) => {
            let r = r.first()?;
            if r.denominator == 0 {
                return None;
            }
            r.value()
        }
        TagValue::IRational(r) => {
            let r = r.first()?;
            if r.denominator == 0 {
                return None;
            }
            r.value()
        }
        TagValue::F32(x) => f64::from(*x.first()?),
        TagValue::F64(x) => *x.first()?,
        other => integer(other)? as f64,
    };
    x.is_finite().then_some(x)
}

/// The first value of an integer tag.
fn integer(v: &TagValue) -> Option<i64> {
    match v {
        TagValue::U8(x) => x.first().map(|&n| i64::from(n)),
        TagValue::U16(x) => x.first().map(|&n| i64::from(n)),
        TagValue::U32(x) => x.first().map(|&n| i64::from(n)),
        TagValue::I8(x) => x.first().map(|&n| i64::from(n)),
        TagValue::I16(x) => x.first().map(|&n| i64::from(n)),
        TagValue::I32(x) => x.first().map(|&n| i64::from(n)),
        _ => None,
    }
}

/// Degrees, minutes, seconds → decimal degrees.
/// Degrees, minutes, seconds → decimal degrees. Some phones write signed rationals.
fn degrees(v: &TagValue) -> Option<f64> {
    let parts: Vec<(f64, f64)> = match v {
        TagValue::URational(p) => p
            .iter()
            .map(|r| (f64::from(r.numerator), f64::from(r.denominator)))
            .collect(),
        TagValue::IRational(p) => p
            .iter()
            .map(|r| (f64::from(r.numerator), f64::from(r.denominator)))
            .collect(),
        _ => return None,
    };
    if parts.len() != 3 || parts.iter().any(|&(_, d)| d == 0.0) {
        return None;
    }
    let total: f64 = parts
        .iter()
        .zip([1.0, 60.0, 3600.0])
        .map(|(&(n, d), scale)| n / d / scale)
        .sum();
    total.is_finite().then_some(total.abs())
}

fn signed(value: f64, reference: Option<&ExifEntry>, negative: char) -> f64 {
    let neg = reference
        .and_then(|e| text(&e.value))
        .is_some_and(|r| r.starts_with(negative));
    if neg {
        -value
    } else {
        value
    }
}

/// `2008:05:30 15:56:01` → `2008-05-30T15:56:01`; a trailing `Z` is kept. Blank or zero
/// dates are no dates.
fn exif_datetime_to_iso(s: &str) -> Option<String> {
    let s = s.trim();
    let (date, rest) = s.split_once(' ')?;
    let mut d = date.split(':');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    let time = rest.trim_end_matches('Z');
    let digits = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_digit());
    let mut t = time.split(':');
    let (hh, mm, ss) = (t.next()?, t.next()?, t.next()?);
    let well_formed = digits(y, 4)
        && digits(m, 2)
        && digits(day, 2)
        && digits(hh, 2)
        && digits(mm, 2)
        && ss.get(..2).is_some_and(|x| digits(x, 2));
    if !well_formed || y == "0000" || m == "00" || day == "00" {
        return None;
    }
    let zulu = if rest.ends_with('Z') { "Z" } else { "" };
    Some(format!("{y}-{m}-{day}T{hh}:{mm}:{}{zulu}", &ss[..2]))
}

fn is_utc_offset(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| b[i].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_become_iso() {
        assert_eq!(
            exif_datetime_to_iso("2008:05:30 15:56:01").as_deref(),
            Some("2008-05-30T15:56:01")
        );
        assert_eq!(
            exif_datetime_to_iso("2013:07:05 03:18:27Z").as_deref(),
            Some("2013-07-05T03:18:27Z")
        );
        assert_eq!(exif_datetime_to_iso("0000:00:00 00:00:00"), None);
        assert_eq!(exif_datetime_to_iso("    :  :     :  :  "), None);
        assert_eq!(exif_datetime_to_iso(""), None);
    }

    #[test]
    fn offsets_are_checked() {
        assert!(is_utc_offset("+03:00"));
        assert!(!is_utc_offset("03:00"));
        assert!(!is_utc_offset("+3:00 "));
    }

    #[test]
    fn garbage_gives_empty_exif() {
        assert_eq!(extract(b"not an image"), Exif::default());
        assert_eq!(extract(&[0xFF, 0xD8, 0xFF, 0xE1, 0, 2]), Exif::default());
    }

    #[test]
    fn exif_block_is_found_after_other_app1_segments() {
        let mut jpeg = vec![0xFF, 0xD8];
        let xmp = b"http://ns.adobe.com/xap/1.0/\0<x/>";
        jpeg.extend([0xFF, 0xE1, 0, (xmp.len() + 2) as u8]);
        jpeg.extend(xmp);
        let exif = b"Exif\0\0II*\0";
        jpeg.extend([0xFF, 0xE1, 0, (exif.len() + 2) as u8]);
        jpeg.extend(exif);
        jpeg.extend([0xFF, 0xDA]);
        assert_eq!(jpeg_exif_block(&jpeg), Some(&b"II*\0"[..]));
        // Truncated or lying lengths end the walk, they do not panic.
        assert_eq!(jpeg_exif_block(&jpeg[..jpeg.len() - 6]), None);
        assert_eq!(jpeg_exif_block(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF]), None);
        assert_eq!(jpeg_exif_block(&[0xFF, 0xD8, 0xFF, 0xE1, 0, 0]), None);
    }

    #[test]
    fn strings_end_at_nul() {
        assert_eq!(
            text(&TagValue::Ascii("ION230\0F".into())).as_deref(),
            Some("ION230")
        );
        assert_eq!(text(&TagValue::Ascii("\0\0".into())), None);
    }

    #[test]
    fn control_characters_are_removed() {
        assert_eq!(clean(" Canon\0\0 "), "Canon");
    }
}
