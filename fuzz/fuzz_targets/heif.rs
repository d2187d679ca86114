#![no_main]

use photoq::pipeline::SourceFormat;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    photoq_fuzz::run(data, &[SourceFormat::Heic, SourceFormat::Avif]);
});
