use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// How long, after photoq has stopped, image work still running on the blocking pool may
/// delay the exit (it is abandoned after that; its jobs were handed back).
const BLOCKING_DRAIN: Duration = Duration::from_secs(1);

/// One malloc heap for the whole process. glibc's malloc gives threads heaps of their own
/// (up to 8 per core), and each keeps the blocks freed in it for reuse: with image buffers
/// of several MiB allocated on the blocking pool's threads and originals and outputs on the
/// runtime's, every heap grew to its own high-water mark, and a worker's resident memory
/// with its jobs in flight. One heap reuses the same blocks for every thread (its lock is
/// taken a few hundred times per image, a few big blocks each). Measured (README
/// "Memory"): peak 76-79 MiB instead of 109-126 MiB with 4 jobs in flight, at the same
/// speed; keeping big blocks out of the heaps instead (`M_MMAP_THRESHOLD`) saved as much
/// memory but cost 12% of the throughput, every buffer faulted in afresh.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_heap() {
    // SAFETY: mallopt only sets a parameter of the allocator; it is called first thing in
    // main, before any other thread exists. It returns 0 on failure, which changes nothing.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_heap() {}

fn main() -> ExitCode {
    one_malloc_heap();
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
