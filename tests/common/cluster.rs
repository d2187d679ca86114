//! photoq as real processes of the built binary: one database, Redis prefix and storage
//! directory shared by every process a test starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::{pg_server, redis_url, SETTLE_TIMEOUT};

pub const BIN: &str = env!("CARGO_BIN_EXE_photoq");
const POLL: Duration = Duration::from_millis(100);
/// How long a process may take to come up or go down.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub name: String,
    pub storage: PathBuf,
    pub redis_url: String,
    /// The PostgreSQL server, without a database name.
    pub pg_server: String,
    /// Extra `PHOTOQ_*` variables for every process.
    pub env: BTreeMap<String, String>,
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < PROCESS_TIMEOUT,
                "process ignored SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let storage = std::env::temp_dir().join(&name);
        Cluster {
            name,
            storage,
            redis_url: redis_url(),
            pg_server: pg_server(),
            env: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.env.insert(key.to_owned(), value.to_string());
        self
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", self.pg_server, self.name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        // Benchmarks compare another build of photoq with this one through PHOTOQ_TEST_BIN.
        let bin = std::env::var("PHOTOQ_TEST_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut c = Command::new(bin);
        c.args(args)
            .env("PHOTOQ_DATABASE_URL", self.database_url())
            .env("PHOTOQ_REDIS_URL", &self.redis_url)
            .env("PHOTOQ_REDIS_PREFIX", &self.name)
            .env("PHOTOQ_STORAGE_ROOT", &self.storage)
            .env(
                "PHOTOQ_LOG",
                std::env::var("PHOTOQ_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(&self.env)
            .stdout(Stdio::null());
        if std::env::var("PHOTOQ_LOG").is_err() {
            c.stderr(Stdio::null());
        }
        c
    }

    /// Runs a command to its end; returns its standard output.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run photoq");
        assert!(
            out.status.success(),
            "photoq {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A new API key (the database is created and migrated on the way).
    pub fn key(&self) -> String {
        let out = self.run(&["keys", "create", "--name", "test"]);
        out.lines().last().expect("key line").trim().to_owned()
    }

    pub fn spawn(&self, args: &[&str], extra: &[(&str, String)]) -> Proc {
        let mut cmd = self.cmd(args);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn photoq"),
        }
    }

    /// As [`Cluster::spawn`], with its log (`PHOTOQ_LOG=info`) written to `log`.
    pub fn spawn_logging(&self, args: &[&str], extra: &[(&str, String)], log: &Path) -> Proc {
        let mut cmd = self.cmd(args);
        cmd.envs(extra.iter().map(|(k, v)| (k, v)))
            .env("PHOTOQ_LOG", "info")
            .stderr(std::fs::File::create(log).expect("log file"));
        Proc {
            child: cmd.spawn().expect("spawn photoq"),
        }
    }

    /// `photoq serve` on a free port, once it answers; returns the process and its base URL.
    pub async fn serve(&self) -> (Proc, String) {
        let port = super::free_port();
        let proc = self.spawn(&["serve"], &[("PHOTOQ_BIND", format!("127.0.0.1:{port}"))]);
        let base = format!("http://127.0.0.1:{port}");
        wait_until_up(&base).await;
        (proc, base)
    }

    pub fn work(&self, concurrency: usize) -> Proc {
        self.spawn(&["work", "--concurrency", &concurrency.to_string()], &[])
    }

    /// Objects under `dir` of the storage root (see [`super::stored_objects`]).
    pub fn stored(&self, dir: &str) -> Vec<PathBuf> {
        super::stored_objects(&self.storage.join(dir))
    }

    /// The process id of the photoq process whose event sequencer leads now, if one does
    /// (the holder of the sequencer's advisory lock, named by its connection).
    pub async fn event_leader(&self) -> Option<u32> {
        #[derive(diesel::QueryableByName)]
        struct Leader {
            #[diesel(sql_type = diesel::sql_types::Text)]
            application_name: String,
        }
        let mut conn = AsyncPgConnection::establish(&self.database_url())
            .await
            .expect("connection");
        let key = photoq::events::sequencer::LEADER_LOCK;
        let leaders: Vec<Leader> = diesel::sql_query(format!(
            "SELECT a.application_name FROM pg_locks AS l \
             JOIN pg_stat_activity AS a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.classid::int8 << 32) | l.objid::int8) = {key}"
        ))
        .load(&mut conn)
        .await
        .expect("leader query");
        leaders.into_iter().next().and_then(|l| {
            l.application_name
                .strip_prefix("photoq event sequencer ")
                .and_then(|pid| pid.parse().ok())
        })
    }

    /// Waits until a process other than `not` leads the event sequencer; returns its pid.
    pub async fn wait_for_event_leader(&self, not: Option<u32>) -> u32 {
        let started = Instant::now();
        loop {
            if let Some(pid) = self.event_leader().await.filter(|p| Some(*p) != not) {
                return pid;
            }
            assert!(
                started.elapsed() < PROCESS_TIMEOUT,
                "no process took over the event sequencer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn cleanup(self) {
        let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", self.pg_server))
            .await
            .expect("admin connection");
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        diesel::sql_query(drop)
            .execute(&mut admin)
            .await
            .expect("drop database");
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{}}}:*", self.name))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> =
                        redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.storage);
    }
}

pub async fn wait_until_up(base: &str) {
    let client = super::http_client();
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "{base} did not come up");
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP client of a cluster's API.
pub struct Client {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, key: &str) -> Self {
        Client {
            base: base.to_owned(),
            key: key.to_owned(),
            http: super::http_client(),
        }
    }

    /// Uploads the files as one batch; returns the 202 answer.
    pub async fn upload(&self, files: &[(String, Vec<u8>)]) -> Value {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
            );
        }
        let res = self
            .http
            .post(format!("{}/v1/photos", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(res.status(), 202, "upload accepted");
        res.json().await.expect("json")
    }

    pub async fn get(&self, path: &str) -> Value {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.expect("json")
    }

    /// Polls until no photo of the batch is queued or processing.
    pub async fn wait_batch(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let batch = self.get(&format!("/v1/batches/{batch_id}")).await;
            if batch["queued"] == 0 && batch["processing"] == 0 {
                return batch;
            }
            assert!(Instant::now() < deadline, "batch did not settle: {batch}");
            tokio::time::sleep(POLL).await;
        }
    }
}
