//! `TestApp`: a real photoq (API + workers) on a random port, against the real PostgreSQL and
//! Redis, with its own database, Redis key prefix and storage directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod fixture;
pub mod redis_cluster;
pub mod s3;
pub mod sse;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use figment::providers::{Format, Serialized, Toml};
use photoq::app::{self, Roles, Running};
use photoq::config::Config;
use serde_json::Value;
use uuid::Uuid;

/// An HTTP client for the tests (with photoq's TLS provider installed).
pub fn http_client() -> reqwest::Client {
    photoq::fetch::install_tls_provider();
    reqwest::Client::new()
}

/// Server the tests use; override with PHOTOQ_TEST_DATABASE_URL (without a database name).
pub fn pg_server() -> String {
    std::env::var("PHOTOQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("PHOTOQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared corpus of camera JPEGs, beside the repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/exif-samples")
}

/// Three small camera JPEGs of the corpus, as (file name, bytes).
pub fn three_photos() -> Vec<(String, Vec<u8>)> {
    [
        "jpg/Canon_40D.jpg",
        "jpg/gps/DSCN0010.jpg",
        "jpg/Kodak_CX7530.jpg",
    ]
    .iter()
    .map(|p| {
        let name = p.rsplit('/').next().unwrap_or(p).to_owned();
        (name, read(corpus_dir().join(p)))
    })
    .collect()
}

/// How long a test waits for photos to reach a final state before failing.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

pub struct TestApp {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    pub config: Config,
    pub name: String,
    running: Option<Running>,
}

pub struct Builder {
    /// TOML layers over the defaults, in order.
    overrides: Vec<String>,
    workers: Option<usize>,
    /// Database, Redis prefix and storage of an earlier run, and its key.
    reuse: Option<(String, String)>,
    redis_url: Option<String>,
    /// `PHOTOQ_SIGNING_KEYS` for this app.
    signing_keys: Option<String>,
}

impl Builder {
    /// Extra TOML layered over the defaults, e.g. `"[upload]\nmax_files = 2"`.
    pub fn config(mut self, toml: &str) -> Self {
        self.overrides.push(toml.to_owned());
        self
    }

    /// Another Redis server than the shared one.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_owned());
        self
    }

    pub fn workers(mut self, n: Option<usize>) -> Self {
        self.workers = n;
        self
    }

    /// URL signing keys, as `PHOTOQ_SIGNING_KEYS` gives them.
    pub fn signing_keys(mut self, keys: &str) -> Self {
        self.signing_keys = Some(keys.to_owned());
        self
    }

    pub async fn start(self) -> TestApp {
        tracing_subscriber_init();
        let (name, key) = match self.reuse {
            Some((name, key)) => (name, Some(key)),
            None => (
                format!("pqtest_{}", &Uuid::new_v4().simple().to_string()[..12]),
                None,
            ),
        };
        let storage = std::env::temp_dir().join(&name);
        let fig = self
            .overrides
            .iter()
            .fold(Config::figment(None), |fig, layer| {
                fig.merge(Toml::string(layer))
            })
            .merge(Serialized::default(
                "database.url",
                format!("{}/{name}", pg_server()),
            ))
            .merge(Serialized::default(
                "redis.url",
                self.redis_url.clone().unwrap_or_else(redis_url),
            ))
            .merge(Serialized::default("redis.prefix", &name))
            .merge(Serialized::default(
                "storage.root",
                storage.display().to_string(),
            ))
            .merge(Serialized::default("bind", "127.0.0.1:0"));
        let mut config = Config::from_figment(fig).expect("test config");
        if let Some(keys) = &self.signing_keys {
            config.signer = photoq::signing::UrlSigner::parse(keys).expect("signing keys");
        }
        let running = app::start(
            config.clone(),
            Roles {
                api: true,
                workers: self.workers.map(|n| photoq::config::WorkerSize {
                    concurrency: n,
                    cpu_slots: n,
                }),
                no_op: false,
            },
        )
        .await
        .expect("photoq starts");
        let addr = running.addr.expect("api address");
        let key = match key {
            Some(k) => k,
            None => {
                let pool = photoq::db::pool(&config.database).expect("pool");
                photoq::auth::create_key(&pool, "test", photoq::auth::Scopes::CLIENT)
                    .await
                    .expect("key")
                    .1
            }
        };
        TestApp {
            base: format!("http://{addr}"),
            key,
            client: http_client(),
            config,
            name,
            running: Some(running),
        }
    }
}

fn tracing_subscriber_init() {
    if std::env::var("PHOTOQ_LOG").is_ok() {
        let _ = photoq::telemetry::init(None);
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder {
            // A worker stops between reads; short reads keep the tests' shutdowns quick.
            overrides: vec!["[redis]\nblock_ms = 250".into()],
            workers: Some(2),
            reuse: None,
            redis_url: None,
            signing_keys: None,
        }
    }

    /// Stops this photoq and starts another on the same database, Redis prefix, storage
    /// and key, with `toml` layered over the defaults (the earlier overrides are not kept).
    pub async fn restart(mut self, toml: &str) -> TestApp {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let mut builder = Self::builder().config(toml);
        builder.reuse = Some((self.name.clone(), self.key.clone()));
        builder.start().await
    }

    pub fn queue(&self) -> photoq::queue::Queue {
        photoq::queue::Queue::new(&self.config.redis).expect("redis")
    }

    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn new_key(&self, name: &str) -> (Uuid, String) {
        self.new_key_as(name, photoq::auth::Scopes::CLIENT).await
    }

    pub async fn new_key_as(&self, name: &str, scopes: photoq::auth::Scopes) -> (Uuid, String) {
        let pool = photoq::db::pool(&self.config.database).expect("pool");
        let (row, key) = photoq::auth::create_key(&pool, name, scopes)
            .await
            .expect("key");
        (row.id, key)
    }

    pub async fn revoke(&self, id: Uuid) {
        let pool = photoq::db::pool(&self.config.database).expect("pool");
        let mut conn = photoq::db::conn(&pool).await.expect("conn");
        assert!(photoq::db::keys::revoke(&mut conn, id, None)
            .await
            .expect("revoke"));
    }

    /// `POST /v1/photos` with one `file` field per (name, bytes).
    pub async fn upload_with(&self, key: &str, files: Vec<(String, Vec<u8>)>) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        }
        self.client
            .post(self.url("/v1/photos"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .expect("upload request")
    }

    pub async fn upload(&self, files: Vec<(String, Vec<u8>)>) -> reqwest::Response {
        self.upload_with(&self.key, files).await
    }

    /// Uploads and returns the 202 body.
    pub async fn upload_ok(&self, files: Vec<(String, Vec<u8>)>) -> Value {
        let res = self.upload(files).await;
        let status = res.status();
        let body: Value = res.json().await.expect("json body");
        assert_eq!(status, 202, "upload answered {body}");
        body
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(&self.key, path).await
    }

    /// DELETE with the app's key.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path).await
    }

    /// POST without a body, with the app's key.
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::POST, path).await
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("request")
    }

    /// GET with another key than the app's own.
    pub async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
    }

    /// GET without a key, for the unauthenticated endpoints.
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("get")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.expect("json")
    }

    /// Polls the batch until no photo is queued or processing; returns the batch.
    pub async fn wait_batch(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let batch = self.get_json(&format!("/v1/batches/{batch_id}")).await;
            if batch["queued"] == 0 && batch["processing"] == 0 {
                return batch;
            }
            assert!(Instant::now() < deadline, "batch did not settle: {batch}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the import until no product is processing; returns the import.
    pub async fn wait_import(&self, import_id: &str) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let import = self.get_json(&format!("/v1/imports/{import_id}")).await;
            if import["state"] != "processing" {
                return import;
            }
            assert!(Instant::now() < deadline, "import did not settle: {import}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every photo of a batch, in upload order.
    pub async fn batch_photos(&self, batch_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/photos?batch={batch_id}&limit=200");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get_json(&path).await;
            out.extend(page["photos"].as_array().expect("photos").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    pub async fn bytes(&self, path: &str) -> Vec<u8> {
        let res = self.get(path).await;
        assert_eq!(res.status(), 200, "GET {path}");
        res.bytes().await.expect("bytes").to_vec()
    }

    /// Stops photoq (gracefully: workers finish what they hold), keeping its database, Redis
    /// keys and storage for a look, a `restart` or `finish`.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Stops photoq, then checks nothing is left in the stream's pending list, and removes the
    /// database, the Redis keys and the stored files.
    pub async fn finish(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let queue = self.queue();
        assert_eq!(
            queue.pending().await.expect("pending"),
            0,
            "entries left pending"
        );
        // A cluster of the test's own goes with the test.
        if !self.config.redis.cluster {
            self.remove_redis_keys().await;
        }
        drop_database(&self.name).await;
        let _ = std::fs::remove_dir_all(&self.config.storage.root);
    }

    async fn remove_redis_keys(&self) {
        let client = redis::Client::open(self.config.redis.url.as_str()).expect("redis client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis conn");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{}}}:*", self.name))
            .query_async(&mut conn)
            .await
            .expect("keys");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }
}

/// An upload that fails for good: JPEG magic followed by noise.
pub fn undecodable() -> (String, Vec<u8>) {
    let mut noise = vec![0xFF, 0xD8, 0xFF, 0xE0];
    noise.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    ("noise.jpg".into(), noise)
}

/// The photo ids of an upload's answer, in order.
pub fn photo_ids(batch: &Value) -> Vec<String> {
    batch["photos"]
        .as_array()
        .expect("photos")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Drops a test's database (its processes stopped or not).
pub async fn drop_database(name: &str) {
    let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", pg_server()))
        .await
        .expect("admin connection");
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
}

/// The error body's code, asserting the body has the documented shape.
pub async fn error_code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.expect("error body is JSON");
    assert!(body["error"]["message"].is_string(), "error body {body}");
    body["error"]["code"]
        .as_str()
        .expect("error code")
        .to_owned()
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The objects of local storage under `dir`, sorted. A write is staged in a file named
/// `{object}#{digits}` and renamed into place; a worker killed (SIGKILL) between the two
/// leaves the staging file behind. object_store does not count those as objects, and
/// neither does this.
pub fn stored_objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let staged = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('#'))
                .is_some_and(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
            if p.is_dir() {
                stack.push(p);
            } else if !staged {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A Redis server of the test's own, on a free port.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Not started yet; on a free port.
    pub fn new() -> Self {
        PrivateRedis {
            port: free_port(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, empty.
    pub async fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "private redis did not start");
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory, on a free port),
/// so it can be stopped and restarted without disturbing other tests. As root, the server
/// runs as the `postgres` user, since PostgreSQL refuses to run as root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    pub fn new() -> Self {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().expect("initdb");
        let dir = std::env::temp_dir().join(format!(
            "pqpg_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("data dir");
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        if Self::as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let data = pg.dir.join("data");
        let ok = pg
            .tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        pg
    }

    fn as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT` (no database name).
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let ok = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &options, "-w", "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(ok.success(), "pg_ctl start failed");
        self.running = true;
    }

    /// Stops the server; `immediate` is a crash-like stop, otherwise sessions are ended first.
    pub fn stop(&mut self, immediate: bool) {
        if !self.running {
            return;
        }
        let mode = if immediate { "immediate" } else { "fast" };
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Commits a batch of `n` photos for `owner` with nothing stored (for workers started with
/// `--no-op`) and publishes their jobs: the benchmarks' way to queue work without uploads.
pub async fn publish_no_op_batch(
    pool: &photoq::db::DbPool,
    queue: &photoq::queue::Queue,
    owner: Uuid,
    n: usize,
) {
    use photoq::db::models::{Batch, NewPhoto};
    let batch = Batch {
        id: Uuid::now_v7(),
        owner_id: owner,
        created_at: chrono::Utc::now(),
    };
    let photos: Vec<NewPhoto> = (0..n)
        .map(|_| {
            let id = Uuid::now_v7();
            NewPhoto {
                id,
                batch_id: batch.id,
                owner_id: owner,
                filename: None,
                content_type: Some("image/jpeg".into()),
                bytes: Some(0),
                sha256: Some(String::new()),
                original_key: format!("originals/{id}"),
                source_url: None,
                trace_parent: None,
            }
        })
        .collect();
    let ids: Vec<(Uuid, Option<String>)> = photos.iter().map(|p| (p.id, None)).collect();
    {
        let mut conn = photoq::db::conn(pool).await.expect("conn");
        photoq::db::photos::insert_batch(
            &mut conn,
            &batch,
            &photos,
            None,
            photoq::config::QuotasConfig::NONE,
        )
        .await
        .expect("insert");
    }
    queue.changes_written();
    photoq::dispatch::publish_new(pool, queue, photoq::queue::Lane::Interactive, &ids)
        .await
        .expect("publish");
}
