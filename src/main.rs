use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// How long, after photoq has stopped, image work still running on the blocking pool may
/// delay the exit (it is abandoned after that; its jobs were handed back).
const BLOCKING_DRAIN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = photoq::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(photoq::app::main(cli));
    runtime.shutdown_timeout(BLOCKING_DRAIN);
    // The spans of the last jobs, if traces are exported.
    photoq::telemetry::flush();
    code
}
