//! Where originals and variants live. A thin interface over `object_store`, so local disk
//! (the default) and S3-compatible storage are the same to the rest of photoq.
//! Keys are deterministic (derived from the photo id and variant name): a job that runs twice
//! overwrites the same objects instead of leaving copies.

use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use uuid::Uuid;

use crate::config::{StorageBackend, StorageConfig};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("storage error: {0}")]
    Backend(String),
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            other => StorageError::Backend(other.to_string()),
        }
    }
}

/// Bytes a streamed write buffers before it sends them to the store as one part. With at
/// most one part in flight besides, a streamed write holds about twice this in memory.
const PART_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.store)
    }
}

impl Storage {
    pub fn from_config(config: &StorageConfig) -> Result<Self, StorageError> {
        match config.backend {
            StorageBackend::Local => {
                std::fs::create_dir_all(&config.root).map_err(|e| {
                    StorageError::Backend(format!("create {}: {e}", config.root.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(&config.root)?;
                Ok(Storage {
                    store: Arc::new(store),
                })
            }
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// Starts a streamed write of the object at `key`: it appears (whole) when the writer is
    /// finished, and not at all if the writer is aborted or dropped.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, StorageError> {
        let upload = self.store.put_multipart(&Path::from(key)).await?;
        Ok(ObjectWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, PART_BYTES),
        })
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.store.get(&Path::from(key)).await?.bytes().await?)
    }

    /// Removes an object; removing one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// An object being written in parts (see [`Storage::writer`]).
pub struct ObjectWriter {
    inner: WriteMultipart,
}

impl ObjectWriter {
    /// Appends bytes, waiting first while a part is still being sent (so memory stays
    /// bounded however large the object).
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        self.inner.wait_for_capacity(1).await?;
        self.inner.put(bytes);
        Ok(())
    }

    /// Sends what is left and makes the object appear.
    pub async fn finish(self) -> Result<(), StorageError> {
        self.inner.finish().await?;
        Ok(())
    }

    /// Gives the write up; nothing is left behind.
    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "aborting a streamed write failed");
        }
    }
}

/// The key of a photo's original upload.
pub fn original_key(photo_id: Uuid) -> String {
    format!("originals/{photo_id}")
}

/// The key of one variant of a photo.
pub fn variant_key(photo_id: Uuid, name: &str, extension: &str) -> String {
    format!("variants/{photo_id}/{name}.{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local storage under a fresh temporary directory (returned for removal).
    fn temp_storage() -> (std::path::PathBuf, Storage) {
        let root = std::env::temp_dir().join(format!("photoq-storage-{}", Uuid::new_v4()));
        let storage = Storage::from_config(&StorageConfig {
            backend: StorageBackend::Local,
            root: root.clone(),
        })
        .expect("storage");
        (root, storage)
    }

    #[tokio::test]
    async fn local_round_trip_and_not_found() {
        let (root, storage) = temp_storage();
        let id = Uuid::now_v7();
        storage
            .put(&original_key(id), Bytes::from_static(b"abc"))
            .await
            .expect("put");
        assert_eq!(
            storage.get(&original_key(id)).await.expect("get"),
            Bytes::from_static(b"abc")
        );
        assert!(matches!(
            storage.get(&variant_key(id, "thumbnail", "jpg")).await,
            Err(StorageError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn streamed_writes_appear_whole_or_not_at_all() {
        let (root, storage) = temp_storage();
        // Three and a half parts, in uneven pieces.
        let data: Vec<u8> = (0..PART_BYTES * 7 / 2).map(|i| (i % 251) as u8).collect();
        let (a, b) = (original_key(Uuid::now_v7()), original_key(Uuid::now_v7()));
        let mut writer = storage.writer(&a).await.expect("writer");
        for piece in data.chunks(PART_BYTES / 3 + 17) {
            writer
                .write(Bytes::copy_from_slice(piece))
                .await
                .expect("write");
        }
        writer.finish().await.expect("finish");
        assert_eq!(storage.get(&a).await.expect("get"), data);

        let mut writer = storage.writer(&b).await.expect("writer");
        writer
            .write(Bytes::copy_from_slice(&data[..PART_BYTES * 2]))
            .await
            .expect("write");
        writer.abort().await;
        assert!(matches!(
            storage.get(&b).await,
            Err(StorageError::NotFound(_))
        ));
        let left: Vec<_> = std::fs::read_dir(root.join("originals"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the finished object: {left:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}
