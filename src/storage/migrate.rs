//! `photoq storage migrate --from local --to s3` (or back): copies every object of one
//! backend to the other under the same key, and checks each copy by reading it back.
//!
//! Resumable: an object already at the destination with the same size and SHA-256 is left
//! as it is, so a migration that was stopped is simply run again. Keys are the same on both
//! sides (PostgreSQL records keys, not locations), so once everything is copied the
//! configuration's `storage.backend` is switched and nothing else changes.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use super::{ObjectInfo, Storage, StorageError};
use crate::pipeline::sniff::sniff;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Objects copied now (and verified).
    pub copied: u64,
    pub copied_bytes: u64,
    /// Objects the destination already held, identical (an earlier run copied them).
    pub present: u64,
    /// Objects that could not be copied or did not read back identical: key and why.
    pub failed: Vec<(String, String)>,
}

impl Report {
    pub fn seen(&self) -> u64 {
        self.copied + self.present + self.failed.len() as u64
    }
}

/// How one object went.
enum Outcome {
    Copied(u64),
    Present,
}

/// Copies every object of `from` into `to`, `jobs` at a time; `progress` is called after
/// each object with the report so far. Fails only when `from` cannot be listed; objects
/// that fail are in the report.
pub async fn migrate(
    from: &Storage,
    to: &Storage,
    jobs: usize,
    mut progress: impl FnMut(&Report),
) -> Result<Report, StorageError> {
    let mut report = Report::default();
    let mut copies = from
        .list()
        .map_ok(|object| async move {
            let key = object.key.clone();
            Ok::<_, StorageError>((key, copy_one(from, to, object).await))
        })
        .try_buffer_unordered(jobs.max(1));
    while let Some((key, outcome)) = copies.try_next().await? {
        match outcome {
            Ok(Outcome::Copied(bytes)) => {
                report.copied += 1;
                report.copied_bytes += bytes;
            }
            Ok(Outcome::Present) => report.present += 1,
            Err(e) => {
                tracing::warn!(%key, error = %e, "object not migrated");
                report.failed.push((key, e.to_string()));
            }
        }
        progress(&report);
    }
    Ok(report)
}

async fn copy_one(
    from: &Storage,
    to: &Storage,
    object: ObjectInfo,
) -> Result<Outcome, StorageError> {
    let bytes = from.get(&object.key).await?;
    let digest = Sha256::digest(&bytes);
    if to.size(&object.key).await? == Some(bytes.len() as u64)
        && Sha256::digest(to.get(&object.key).await?) == digest
    {
        return Ok(Outcome::Present);
    }
    let content_type = sniff(&bytes).map_or("application/octet-stream", |f| f.mime());
    let size = bytes.len() as u64;
    to.put(&object.key, bytes, content_type).await?;
    let back = to.get(&object.key).await?;
    if back.len() as u64 != size || Sha256::digest(&back) != digest {
        return Err(StorageError::Backend(format!(
            "{} read back {} bytes that differ from the {size} copied",
            object.key,
            back.len()
        )));
    }
    Ok(Outcome::Copied(size))
}
