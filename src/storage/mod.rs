//! Where originals and variants live. A thin interface over `object_store`, so local disk
//! (the default) and S3-compatible storage are the same to the rest of photoq.
//! Keys are deterministic (derived from the photo id and variant name): a job that runs twice
//! overwrites the same objects instead of leaving copies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use object_store::{
    Attribute, Attributes, ClientConfigKey, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig,
};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::config::{ServeMode, StorageBackend, StorageConfig};

pub mod migrate;

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

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Backend(e.to_string())
    }
}

/// Bytes a streamed write to local disk buffers before it writes them as one part.
const LOCAL_PART_BYTES: usize = 1024 * 1024;
/// The same for S3, whose parts (all but the last) must be at least 5 MiB. An object
/// smaller than one part is sent with a single PUT, a larger one as a multipart upload.
const S3_PART_BYTES: usize = 5 * 1024 * 1024;
/// Requests to S3 are retried this often within photoq's own attempt (which has its own
/// retries with backoff), and only within `storage.timeout_secs` of the first, so a
/// storage outage fails the attempt in seconds rather than holding it for minutes.
const S3_RETRIES: usize = 2;
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects (or photos' objects) removed at once by the bulk removals.
const REMOVALS_AT_ONCE: usize = 16;

/// The backend's handle for presigned URLs, and where its keys start.
struct Presigner {
    s3: AmazonS3,
    prefix: String,
    ttl: Duration,
}

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    backend: StorageBackend,
    part_bytes: usize,
    /// Set when variants and originals are served by redirects.
    presigner: Option<Arc<Presigner>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.store)
    }
}

/// One stored object, as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When it was last written.
    pub modified: chrono::DateTime<chrono::Utc>,
}

impl Storage {
    /// The backend the configuration names.
    pub fn from_config(config: &StorageConfig) -> Result<Self, StorageError> {
        Self::with_backend(config, config.backend)
    }

    /// The given backend, with the rest of the configuration's settings (`photoq storage
    /// migrate` opens both sides this way).
    pub fn with_backend(
        config: &StorageConfig,
        backend: StorageBackend,
    ) -> Result<Self, StorageError> {
        match backend {
            StorageBackend::Local => {
                std::fs::create_dir_all(&config.root).map_err(|e| {
                    StorageError::Backend(format!("create {}: {e}", config.root.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(&config.root)?;
                Ok(Storage {
                    store: Arc::new(store),
                    backend,
                    part_bytes: LOCAL_PART_BYTES,
                    presigner: None,
                })
            }
            StorageBackend::S3 => {
                let s3 = s3_client(config)?;
                let prefix = config.prefix.trim_matches('/').to_owned();
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3.clone())
                } else {
                    Arc::new(PrefixStore::new(s3.clone(), prefix.as_str()))
                };
                let presigner = (config.serve == ServeMode::Redirect).then(|| {
                    Arc::new(Presigner {
                        s3,
                        prefix,
                        ttl: Duration::from_secs(config.redirect_ttl_secs),
                    })
                });
                Ok(Storage {
                    store,
                    backend,
                    part_bytes: S3_PART_BYTES,
                    presigner,
                })
            }
        }
    }

    /// Writes a whole object, tagged with its content type where the backend keeps one.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let options = PutOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        self.store
            .put_opts(&Path::from(key), PutPayload::from_bytes(bytes), options)
            .await?;
        Ok(())
    }

    /// Starts a streamed write of the object at `key`: it appears (whole) when the writer is
    /// finished, and not at all if the writer is aborted or dropped. Memory stays bounded
    /// (about two parts) however large the object.
    pub async fn writer(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<ObjectWriter, StorageError> {
        let inner = BufWriter::with_capacity(self.store.clone(), Path::from(key), self.part_bytes)
            .with_max_concurrency(1)
            .with_attributes(self.attributes(content_type));
        Ok(ObjectWriter { inner })
    }

    /// Copies the object at `from` to `to` (on S3 inside the bucket, metadata included).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.store.copy(&Path::from(from), &Path::from(to)).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.store.get(&Path::from(key)).await?.bytes().await?)
    }

    /// The object's size, or None when there is no such object.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// When the object was last written, or None when there is no such object.
    pub async fn modified(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StorageError> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.last_modified)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object, in no particular order, page by page.
    pub fn list(&self) -> impl futures_util::Stream<Item = Result<ObjectInfo, StorageError>> + '_ {
        self.store.list(None).map(|meta| {
            let meta = meta?;
            Ok(ObjectInfo {
                key: meta.location.to_string(),
                size: meta.size,
                modified: meta.last_modified,
            })
        })
    }

    /// Removes an object; removing one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything stored for a photo: its original and whatever lies under its
    /// variants' prefix (whichever configuration made them). Nothing there is not an error.
    pub async fn remove_photo(&self, photo_id: Uuid) -> Result<(), StorageError> {
        let mut keys = vec![Path::from(original_key(photo_id))];
        let prefix = Path::from(format!("variants/{photo_id}"));
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location);
        }
        drop(listing);
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes the objects at `keys`, [`REMOVALS_AT_ONCE`] at a time.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for chunk in keys.chunks(REMOVALS_AT_ONCE) {
            futures_util::future::try_join_all(chunk.iter().map(|k| self.delete(k))).await?;
        }
        Ok(())
    }

    /// Removes everything stored for the photos `ids` ([`Storage::remove_photo`]),
    /// [`REMOVALS_AT_ONCE`] photos at a time.
    pub async fn remove_photos(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        for chunk in ids.chunks(REMOVALS_AT_ONCE) {
            futures_util::future::try_join_all(chunk.iter().map(|id| self.remove_photo(*id)))
                .await?;
        }
        Ok(())
    }

    /// Whether variants and originals are served by redirects to presigned URLs.
    pub fn redirects(&self) -> bool {
        self.presigner.is_some()
    }

    /// A presigned GET of the object at `key` (answered with `content_type` whatever the
    /// object carries), with how long it stays valid; None unless serving by redirects.
    pub async fn presigned_get(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<Option<(url::Url, Duration)>, StorageError> {
        let Some(p) = &self.presigner else {
            return Ok(None);
        };
        let path = if p.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", p.prefix))
        };
        let options = SignedUrlOptions::new().with_query([("response-content-type", content_type)]);
        let url =
            p.s3.signed_url_opts(Method::GET, &path, p.ttl, &options)
                .await?;
        Ok(Some((url, p.ttl)))
    }

    /// The content type as an object attribute, on backends that keep attributes (local
    /// files do not).
    fn attributes(&self, content_type: &str) -> Attributes {
        let mut attributes = Attributes::new();
        if self.backend == StorageBackend::S3 {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }
        attributes
    }
}

/// The S3 client: settings from the configuration over the standard `AWS_*` environment
/// variables (credentials only from there, or from a web identity or instance role).
fn s3_client(config: &StorageConfig) -> Result<AmazonS3, StorageError> {
    crate::fetch::install_tls_provider();
    let timeout = Duration::from_secs(config.timeout_secs);
    // Client settings one by one (a whole ClientOptions would replace those the
    // environment gives, a proxy say, and the allow_http just set).
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_allow_http(config.allow_http)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", timeout.as_secs()),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}s", S3_CONNECT_TIMEOUT.min(timeout).as_secs()),
        )
        .with_retry(RetryConfig {
            max_retries: S3_RETRIES,
            retry_timeout: timeout,
            ..Default::default()
        });
    // Unset, the region comes from AWS_REGION (else us-east-1).
    if !config.region.is_empty() {
        builder = builder.with_region(&config.region);
    }
    if !config.endpoint.is_empty() {
        builder = builder.with_endpoint(&config.endpoint);
    }
    Ok(builder.build()?)
}

/// An object being written in parts (see [`Storage::writer`]).
pub struct ObjectWriter {
    inner: BufWriter,
}

impl ObjectWriter {
    /// Appends bytes, waiting first while a part is still being sent (so memory stays
    /// bounded however large the object).
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        self.inner.put(bytes).await?;
        Ok(())
    }

    /// Sends what is left and makes the object appear.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// Gives the write up; nothing is left behind.
    pub async fn abort(mut self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "aborting a streamed write failed");
        }
    }
}

/// The key of a photo's original upload.
pub fn original_key(photo_id: Uuid) -> String {
    format!("originals/{photo_id}")
}

/// The photo an object belongs to, and whether it is its original, from the object's key
/// (None for a key photoq does not write).
pub fn photo_of_key(key: &str) -> Option<(Uuid, bool)> {
    if let Some(id) = key.strip_prefix("originals/") {
        return Uuid::parse_str(id).ok().map(|id| (id, true));
    }
    let (id, _) = key.strip_prefix("variants/")?.split_once('/')?;
    Uuid::parse_str(id).ok().map(|id| (id, false))
}

/// The key of one variant of a photo.
pub fn variant_key(photo_id: Uuid, name: &str, extension: &str) -> String {
    format!("variants/{photo_id}/{name}.{extension}")
}

/// The key of one variant of a photo as a reprocessing attempt makes it again: a key of
/// its own (`version` names the attempt), so the variant in use is never overwritten and
/// an attempt that records nothing removes only what it stored.
pub fn remade_variant_key(photo_id: Uuid, name: &str, version: &str, extension: &str) -> String {
    format!("variants/{photo_id}/{name}.{version}.{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local storage under a fresh temporary directory (returned for removal).
    fn temp_storage() -> (std::path::PathBuf, Storage) {
        let root = std::env::temp_dir().join(format!("photoq-storage-{}", Uuid::new_v4()));
        let config = StorageConfig {
            backend: StorageBackend::Local,
            root: root.clone(),
            ..crate::config::Config::defaults().expect("defaults").storage
        };
        let storage = Storage::from_config(&config).expect("storage");
        (root, storage)
    }

    #[tokio::test]
    async fn local_round_trip_and_not_found() {
        let (root, storage) = temp_storage();
        let id = Uuid::now_v7();
        storage
            .put(&original_key(id), Bytes::from_static(b"abc"), "image/jpeg")
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
        let data: Vec<u8> = (0..LOCAL_PART_BYTES * 7 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let (a, b) = (original_key(Uuid::now_v7()), original_key(Uuid::now_v7()));
        let mut writer = storage.writer(&a, "image/jpeg").await.expect("writer");
        for piece in data.chunks(LOCAL_PART_BYTES / 3 + 17) {
            writer
                .write(Bytes::copy_from_slice(piece))
                .await
                .expect("write");
        }
        writer.finish().await.expect("finish");
        assert_eq!(storage.get(&a).await.expect("get"), data);

        let mut writer = storage.writer(&b, "image/jpeg").await.expect("writer");
        writer
            .write(Bytes::copy_from_slice(&data[..LOCAL_PART_BYTES * 2]))
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
