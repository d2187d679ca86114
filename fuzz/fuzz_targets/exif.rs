#![no_main]

// EXIF parsing on its own: a JPEG's APP1 segments or a bare TIFF block.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = photoq::pipeline::exif::extract(data);
});
