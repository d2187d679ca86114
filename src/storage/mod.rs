//! Where originals and variants live. A thin interface over `object_store`, so local disk
//! (the default) and S3-compatible storage are the same to the rest of photoq.
//! Keys are deterministic (derived from the photo id and variant name): a job that runs twice
//! overwrites the same objects instead of leaving copies.

use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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

    #[tokio::test]
    async fn local_round_trip_and_not_found() {
        let root = std::env::temp_dir().join(format!("photoq-storage-{}", Uuid::new_v4()));
        let storage = Storage::from_config(&StorageConfig {
            backend: StorageBackend::Local,
            root: root.clone(),
        })
        .expect("storage");
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
}
