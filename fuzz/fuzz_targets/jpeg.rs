#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    photoq_fuzz::run(data, &[photoq::pipeline::SourceFormat::Jpeg]);
});
