//! An S3 server of the test's own, on a free loopback port, with a bucket:
//!
//! - moto_server (the default; installed by `deploy/dev.sh test`, found through
//!   PHOTOQ_TEST_MOTO_SERVER, else on PATH), which keeps everything in memory;
//! - Garage, a production S3 store, when PHOTOQ_TEST_S3=garage (the binary from
//!   PHOTOQ_TEST_GARAGE, else `garage` on PATH): one node, its bucket and key made on first
//!   start (`garage server --single-node --default-bucket`).
//!
//! Either is paused (SIGSTOP) rather than stopped to make it unreachable without losing
//! what it holds. The tests reach the bucket through `object_store` with the same
//! credentials as photoq, which reads them from the environment.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::free_port;

/// The bucket every test's server holds.
pub const BUCKET: &str = "photoq-test";
/// Credentials in Garage's format (moto takes any).
const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// photoq reads its S3 credentials from the environment, as in production. The same
/// values in every test of the binary, so setting them concurrently is benign.
pub fn set_credentials() {
    photoq::fetch::install_tls_provider();
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Garage,
}

impl Kind {
    pub fn chosen() -> Kind {
        match std::env::var("PHOTOQ_TEST_S3").as_deref() {
            Ok("garage") => Kind::Garage,
            Ok("moto") | Err(_) => Kind::Moto,
            Ok(other) => panic!("PHOTOQ_TEST_S3={other}: moto or garage"),
        }
    }

    /// The region the server answers for.
    fn region(self) -> &'static str {
        match self {
            Kind::Moto => "us-east-1",
            Kind::Garage => "garage",
        }
    }
}

pub struct S3Server {
    pub kind: Kind,
    pub port: u16,
    child: Child,
    dir: Option<PathBuf>,
    store: Arc<dyn ObjectStore>,
}

impl S3Server {
    /// Starts the server chosen by PHOTOQ_TEST_S3, with [`BUCKET`].
    pub async fn start() -> S3Server {
        set_credentials();
        let kind = Kind::chosen();
        let port = free_port();
        let (child, dir) = match kind {
            Kind::Moto => (spawn_moto(port), None),
            Kind::Garage => {
                let (child, dir) = spawn_garage(port);
                (child, Some(dir))
            }
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let store: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&endpoint)
                .with_bucket_name(BUCKET)
                .with_region(kind.region())
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .build()
                .unwrap(),
        );
        let server = S3Server {
            kind,
            port,
            child,
            dir,
            store,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.ready().await {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "the S3 server ({kind:?}) did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bucket is there and answers.
    async fn ready(&self) -> bool {
        if self.kind == Kind::Moto {
            // moto needs no signature: an unsigned CreateBucket is enough.
            let created = super::http_client()
                .put(self.url(&format!("/{BUCKET}")))
                .send()
                .await;
            if !created.is_ok_and(|r| r.status().is_success()) {
                return false;
            }
        }
        self.store.list(None).try_next().await.is_ok()
    }

    pub fn region(&self) -> &'static str {
        self.kind.region()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// `[storage]` settings for this server, with `extra` lines added.
    pub fn config(&self, prefix: &str, extra: &str) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\n\
             endpoint = \"{}\"\nregion = \"{}\"\npath_style = true\nallow_http = true\n{extra}\n",
            self.endpoint(),
            self.region()
        )
    }

    /// The keys in the bucket under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = Path::from(prefix.trim_end_matches('/'));
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    /// Makes the server unreachable (connections are accepted, nothing is answered) until
    /// [`S3Server::resume`], keeping what it holds.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

fn spawn_moto(port: u16) -> Child {
    let program = std::env::var("PHOTOQ_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{program}: {e} (deploy/dev.sh test installs moto_server; \
                 set PHOTOQ_TEST_MOTO_SERVER)"
            )
        })
}

/// Garage, one node, in a directory of its own (returned for removal).
fn spawn_garage(port: u16) -> (Child, PathBuf) {
    let program = std::env::var("PHOTOQ_TEST_GARAGE").unwrap_or_else(|_| "garage".into());
    let dir = std::env::temp_dir().join(format!("pqgarage_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let rpc = free_port();
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{0}/meta\"\ndata_dir = \"{0}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{SECRET_KEY}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{port}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(&program)
        .arg("-c")
        .arg(&config)
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
        .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("log")).unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (set PHOTOQ_TEST_GARAGE)"));
    (child, dir)
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
