//! `photoq render`: the configured variants made from local files, without the service
//! (no database, queue or storage). For trying a configuration, and for measuring the image
//! pipeline alone against other tools on the same files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pipeline::{self, Spec};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot create {0}: {1}")]
    OutputDir(PathBuf, std::io::Error),
    #[error("{failed} of {total} files could not be rendered")]
    Failed { failed: usize, total: usize },
}

/// What a successful run did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub files: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn images_per_second(&self) -> f64 {
        self.files as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Renders every file with `threads` threads; writes `{stem}_{variant}.{ext}` into `out`.
/// A file that fails is reported on stderr and the others go on.
pub fn run(
    spec: &Spec,
    files: &[PathBuf],
    out: &Path,
    threads: usize,
) -> Result<Summary, RenderError> {
    std::fs::create_dir_all(out).map_err(|e| RenderError::OutputDir(out.to_owned(), e))?;
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = render_one(spec, file, out) {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.push(format!("{}: {e}", file.display()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    for f in &failures {
        eprintln!("{f}");
    }
    if !failures.is_empty() {
        return Err(RenderError::Failed {
            failed: failures.len(),
            total: files.len(),
        });
    }
    Ok(Summary {
        files: files.len(),
        elapsed: started.elapsed(),
    })
}

fn render_one(spec: &Spec, file: &Path, out: &Path) -> Result<(), String> {
    let data = std::fs::read(file).map_err(|e| e.to_string())?;
    let processed = pipeline::process(&data, spec).map_err(|e| e.to_string())?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    for v in processed.variants {
        let path = out.join(format!("{stem}_{}.{}", v.name, v.extension));
        std::fs::write(&path, &v.data).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
