#![no_main]

// EXIF on its own: parsing a JPEG's APP1 segments or a bare TIFF block, and taking the GPS
// position out of it in place (the file never changes length).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = photoq::pipeline::exif::extract(data);
    let mut file = data.to_vec();
    photoq::pipeline::privacy::strip_gps(&mut file);
    assert_eq!(file.len(), data.len());
    let mut tiff = data.to_vec();
    photoq::pipeline::privacy::strip_gps_tiff(&mut tiff);
    assert_eq!(tiff.len(), data.len());
});
