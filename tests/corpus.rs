//! The whole camera corpus in one batch: every readable JPEG completes with both variants at
//! the right size and the right way up, EXIF agrees with exiftool, and the file with corrupt
//! image data fails with a reason without disturbing the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{corpus_dir, read, TestApp};
use serde_json::Value;

/// Files whose image data is corrupt (libjpeg: "Corrupt JPEG data: premature end of data
/// segment"). The `invalid/` folder holds files with broken EXIF but readable pixels: those
/// must complete.
const BROKEN: &[&str] = &["corrupted.jpg"];

/// Values exiftool's reference takes from outside the standard EXIF directories (IFD0,
/// ExifIFD, GPS), which photoq does not read: maker notes, XMP, Canon CIFF, Olympus
/// PictureInfo, exiftool's Composite tags. Found with `exiftool -G1`; each (file, field) is
/// allowed to differ, nothing else is.
const NOT_EXIF: &[(&str, &str, &str)] = &[
    ("Canon_DIGITAL_IXUS_400.jpg", "iso", "Composite"),
    ("Canon_DIGITAL_IXUS_400.jpg", "orientation", "XMP-tiff"),
    ("Canon_PowerShot_S40.jpg", "iso", "Composite"),
    (
        "Reconyx_HC500_Hyperfire.jpg",
        "taken_at",
        "Reconyx maker notes",
    ),
    ("exif-org/canon-ixus.jpg", "iso", "Composite"),
    (
        "exif-org/kodak-dc240.jpg",
        "exposure_time",
        "Kodak maker notes (ExifIFD says 1/30)",
    ),
    (
        "exif-org/kodak-dc240.jpg",
        "f_number",
        "Kodak maker notes (ExifIFD says 4.0)",
    ),
    ("exif-org/kodak-dc240.jpg", "iso", "Kodak maker notes"),
    ("exif-org/olympus-d320l.jpg", "exposure_time", "PictureInfo"),
    ("exif-org/olympus-d320l.jpg", "f_number", "PictureInfo"),
    ("exif-org/olympus-d320l.jpg", "taken_at", "PictureInfo"),
    ("exif-org/sony-powershota5.jpg", "make", "CIFF"),
    ("exif-org/sony-powershota5.jpg", "model", "CIFF"),
    ("exif-org/sony-powershota5.jpg", "focal_length", "CIFF"),
    ("exif-org/sony-powershota5.jpg", "taken_at", "CIFF"),
    ("invalid/image00971.jpg", "orientation", "XMP-tiff"),
    ("invalid/image00971.jpg", "width", "XMP-exif"),
    ("invalid/image00971.jpg", "height", "XMP-exif"),
    ("invalid/image01088.jpg", "orientation", "XMP-tiff"),
    ("invalid/image01088.jpg", "width", "XMP-exif"),
    ("invalid/image01088.jpg", "height", "XMP-exif"),
    ("invalid/image01137.jpg", "orientation", "XMP-tiff"),
    ("invalid/image01137.jpg", "width", "XMP-exif"),
    ("invalid/image01137.jpg", "height", "XMP-exif"),
    ("invalid/image01713.jpg", "orientation", "XMP-tiff"),
    ("invalid/image01713.jpg", "width", "XMP-exif"),
    ("invalid/image01713.jpg", "height", "XMP-exif"),
    ("tests/11-tests.jpg", "iso", "Composite"),
    ("tests/22-canon_tags.jpg", "iso", "Composite"),
    ("tests/28-hex_value.jpg", "iso", "Composite"),
    // The EXIF pointer has the wrong type; exiftool gives up on it and reads XMP ("…Z"),
    // photoq follows it and reads the EXIF value ("2013:07:05 03:18:27").
    ("tests/30-type_error.jpg", "taken_at", "XMP-exif"),
    ("tests/35-empty.jpg", "iso", "Casio maker notes"),
    ("tests/36-memory_error.jpg", "iso", "Casio maker notes"),
    ("tests/42_IndexError.jpg", "lens", "Olympus maker notes"),
];

/// Relative tolerance for EXIF rationals (exiftool prints 10 significant digits).
const REL_TOLERANCE: f64 = 1e-6;
/// Absolute tolerance for GPS degrees (about 0.1 m) and altitude metres.
const GPS_TOLERANCE: f64 = 1e-6;
const ALTITUDE_TOLERANCE: f64 = 1e-3;

fn corpus_files() -> Vec<(String, PathBuf)> {
    let root = corpus_dir().join("jpg");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("corpus dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("jpg" | "jpeg")
            ) {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, path));
            }
        }
    }
    out.sort();
    out
}

fn reference() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(corpus_dir().join("exiftool-reference.json")).unwrap();
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    list.into_iter()
        .map(|e| {
            let rel = e["SourceFile"]
                .as_str()
                .unwrap()
                .trim_start_matches("jpg/")
                .to_owned();
            (rel, e)
        })
        .collect()
}

/// The expected size of a variant: the displayed image fitted in a `long`-pixel square,
/// never enlarged.
fn fit(width: u32, height: u32, long: u32) -> (u32, u32) {
    let max = width.max(height);
    if max <= long {
        return (width, height);
    }
    let s = f64::from(long) / f64::from(max);
    (
        ((f64::from(width) * s).round() as u32).max(1),
        ((f64::from(height) * s).round() as u32).max(1),
    )
}

fn first_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        // exiftool prints multi-valued tags as "100 0".
        Value::String(s) => s.split_whitespace().next()?.parse().ok(),
        _ => None,
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// Compares our EXIF with exiftool's for every field exiftool reads from the standard EXIF
/// directories; returns the disagreements.
fn compare_exif(file: &str, ours: &Value, theirs: &Value) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    let mut text = |field: &str, tag: &str| {
        if let Some(t) = theirs[tag]
            .as_str()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if ours[field].as_str() != Some(t) {
                bad.push((
                    field.to_owned(),
                    format!(
                        "{file}: {field} = {} but exiftool {tag} = {t:?}",
                        ours[field]
                    ),
                ));
            }
        }
    };
    text("make", "Make");
    text("model", "Model");
    text("lens", "LensModel");

    let mut number = |field: &str, got: &Value, tag: &str, tol: f64, relative: bool| {
        if let Some(t) = first_number(&theirs[tag]) {
            let ok = got.as_f64().is_some_and(|g| {
                if relative {
                    close(g, t, tol)
                } else {
                    (g - t).abs() <= tol
                }
            });
            if !ok {
                bad.push((
                    field.to_owned(),
                    format!("{file}: {field} = {got} but exiftool {tag} = {t}"),
                ));
            }
        }
    };
    number(
        "exposure_time",
        &ours["exposure_time"],
        "ExposureTime",
        REL_TOLERANCE,
        true,
    );
    number(
        "f_number",
        &ours["f_number"],
        "FNumber",
        REL_TOLERANCE,
        true,
    );
    number(
        "focal_length",
        &ours["focal_length"],
        "FocalLength",
        REL_TOLERANCE,
        true,
    );
    number("iso", &ours["iso"], "ISO", 0.0, false);
    number(
        "orientation",
        &ours["orientation"],
        "Orientation",
        0.0,
        false,
    );
    number("width", &ours["width"], "ExifImageWidth", 0.0, false);
    number("height", &ours["height"], "ExifImageHeight", 0.0, false);
    let gps = &ours["gps"];
    number(
        "gps.latitude",
        &gps["latitude"],
        "GPSLatitude",
        GPS_TOLERANCE,
        false,
    );
    number(
        "gps.longitude",
        &gps["longitude"],
        "GPSLongitude",
        GPS_TOLERANCE,
        false,
    );
    number(
        "gps.altitude",
        &gps["altitude"],
        "GPSAltitude",
        ALTITUDE_TOLERANCE,
        false,
    );

    if let Some(dt) = theirs["DateTimeOriginal"].as_str() {
        let mut expected = dt.replacen(':', "-", 2).replacen(' ', "T", 1);
        if let Some(offset) = theirs["OffsetTimeOriginal"].as_str() {
            expected.push_str(offset);
        }
        if ours["taken_at"].as_str() != Some(expected.as_str()) {
            bad.push((
                "taken_at".to_owned(),
                format!(
                    "{file}: taken_at = {} but exiftool DateTimeOriginal = {dt:?}",
                    ours["taken_at"]
                ),
            ));
        }
    }
    bad
}

/// Mean absolute difference per channel of two same-sized RGB images, 0–255.
fn mean_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_completes_with_right_sizes_orientation_and_exif() {
    let app = TestApp::builder()
        .config("[upload]\nmax_files = 200")
        .start()
        .await;
    let files = corpus_files();
    assert!(files.len() > 80, "corpus has {} files", files.len());
    let reference = reference();

    let body = app
        .upload_ok(
            files
                .iter()
                .map(|(rel, path)| (rel.clone(), read(path)))
                .collect(),
        )
        .await;
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(body["photos"].as_array().unwrap().len(), files.len());

    let batch = app.wait_batch(&batch_id).await;
    assert_eq!(batch["total"], files.len());
    assert_eq!(batch["failed"], BROKEN.len(), "batch {batch}");
    assert_eq!(batch["completed"], files.len() - BROKEN.len());
    assert_eq!(batch["state"], "completed_with_errors");

    let photos = app.batch_photos(&batch_id).await;
    assert_eq!(photos.len(), files.len());
    let (thumb_edge, preview_edge) = (
        app.config.variants["thumbnail"].width.unwrap(),
        app.config.variants["preview"].width.unwrap(),
    );

    let mut exif_mismatches = Vec::new();
    let mut exif_checked = 0;
    let mut thumbs: BTreeMap<String, image::RgbImage> = BTreeMap::new();
    for photo in &photos {
        let name = photo["filename"].as_str().unwrap().to_owned();
        if BROKEN.contains(&name.as_str()) {
            assert_eq!(photo["state"], "failed", "{name}");
            let error = photo["error"].as_str().unwrap_or_default();
            assert!(error.contains("corrupt"), "{name}: reason {error:?}");
            assert!(photo["variants"].as_array().unwrap().is_empty());
            continue;
        }
        assert_eq!(photo["state"], "completed", "{name}: {}", photo["error"]);
        assert_eq!(photo["attempts"], 1, "{name}");
        assert!(photo["completed_at"].is_string());
        let theirs = &reference[&name];

        // Displayed size: exiftool's pixel size, turned by the EXIF orientation.
        let (w, h) = (
            theirs["ImageWidth"].as_u64().unwrap() as u32,
            theirs["ImageHeight"].as_u64().unwrap() as u32,
        );
        let turned = theirs["Orientation"]
            .as_u64()
            .is_some_and(|o| (5..=8).contains(&o));
        let (dw, dh) = if turned { (h, w) } else { (w, h) };
        assert_eq!(photo["original"]["width"], dw, "{name}");
        assert_eq!(photo["original"]["height"], dh, "{name}");
        assert_eq!(photo["original"]["content_type"], "image/jpeg");

        let variants: BTreeMap<String, &Value> = photo["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
            .collect();
        for (variant, edge) in [("thumbnail", thumb_edge), ("preview", preview_edge)] {
            let v = variants
                .get(variant)
                .unwrap_or_else(|| panic!("{name}: no {variant}"));
            let (ew, eh) = fit(dw, dh, edge);
            assert_eq!(
                (
                    v["width"].as_u64().unwrap() as u32,
                    v["height"].as_u64().unwrap() as u32
                ),
                (ew, eh),
                "{name} {variant}"
            );
            let bytes = app.bytes(v["url"].as_str().unwrap()).await;
            assert_eq!(bytes.len() as u64, v["bytes"].as_u64().unwrap());
            let img = image::load_from_memory(&bytes).expect("variant is a JPEG");
            assert_eq!(
                (img.width(), img.height()),
                (ew, eh),
                "{name} {variant} pixels"
            );
            if variant == "thumbnail" && name.starts_with("orientation/") {
                thumbs.insert(name.clone(), img.to_rgb8());
            }
        }

        exif_checked += 1;
        for (field, message) in compare_exif(&name, &photo["exif"], theirs) {
            if !NOT_EXIF.iter().any(|(f, fl, _)| *f == name && *fl == field) {
                exif_mismatches.push(message);
            }
        }
    }
    assert!(exif_checked >= 80);
    assert!(
        exif_mismatches.is_empty(),
        "EXIF disagreements:\n{}",
        exif_mismatches.join("\n")
    );

    // Right way up: each orientation N of the same picture (the files differ a little in
    // framing and label) is closer to orientation 1 as it is than to orientation 1 flipped or
    // turned: a missed or wrong transform would make one of those the closest.
    use image::imageops::{flip_horizontal, flip_vertical, rotate180};
    for shape in ["landscape", "portrait"] {
        let upright = &thumbs[&format!("orientation/{shape}_1.jpg")];
        let wrong = [
            ("flipped left-right", flip_horizontal(upright)),
            ("flipped upside down", flip_vertical(upright)),
            ("turned half a turn", rotate180(upright)),
        ];
        for n in 2..=8 {
            let other = &thumbs[&format!("orientation/{shape}_{n}.jpg")];
            let right = mean_diff(upright, other);
            for (how, w) in &wrong {
                let d = mean_diff(w, other);
                assert!(
                    right * 1.5 < d,
                    "{shape}_{n}: {right:.1} from upright but {d:.1} from upright {how}"
                );
            }
        }
    }

    app.finish().await;
}
