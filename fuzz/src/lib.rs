//! What every decoder target runs: the whole pipeline (sniff, header checks, decode,
//! colour, resize, orientation, encode in every format) on the input, if it is of the
//! target's format, with limits small enough that the fuzzer spends its time on parsing.

use photoq::config::{Fit, Focus, OutputFormat};
use photoq::pipeline::metadata::Keep;
use photoq::pipeline::{self, Limits, SourceFormat, Spec, VariantSpec};

fn spec() -> Spec {
    let variant = |name: &str, side: u32, format: OutputFormat, fit: Fit, focus: Focus| VariantSpec {
        name: name.into(),
        width: Some(side),
        height: Some(side),
        fit,
        format,
        quality: 50,
        grayscale: false,
        sharpen: 0.5,
        focus,
        watermark: None,
        keep: Keep::default(),
    };
    Spec {
        limits: Limits {
            max_pixels: 4_000_000,
            max_dimension: 4_000,
        },
        ..Spec::with_variants(vec![
            variant("a", 64, OutputFormat::Jpeg, Fit::Inside, Focus::Centre),
            variant("b", 32, OutputFormat::Png, Fit::Cover, Focus::Attention),
            variant("c", 24, OutputFormat::Webp, Fit::Cover, Focus::Entropy),
        ])
    }
}

/// Runs the pipeline on `data` when it sniffs as one of `formats`. Errors are expected;
/// panics, crashes and leaks are what the fuzzer looks for.
pub fn run(data: &[u8], formats: &[SourceFormat]) {
    if pipeline::sniff(data).is_some_and(|f| formats.contains(&f)) {
        let _ = pipeline::process(data, &spec());
    }
}
