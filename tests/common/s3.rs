//! An S3 server of the test's own: moto_server (installed by `deploy/dev.sh test`, found
//! through PHOTOQ_TEST_MOTO_SERVER, else on PATH) on a free loopback port, with a bucket.
//! It keeps everything in memory, so it is paused (SIGSTOP) rather than stopped to make it
//! unreachable without losing what it holds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The bucket every test's server holds.
pub const BUCKET: &str = "photoq-test";

/// Credentials moto accepts (it does not check them); photoq reads them from the
/// environment, as it does in production.
pub fn set_credentials() {
    photoq::fetch::install_tls_provider();
    // The same values in every test of the binary, so setting them concurrently is benign.
    std::env::set_var("AWS_ACCESS_KEY_ID", "photoq-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "photoq-test-secret");
}

pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    /// Starts moto_server and creates [`BUCKET`].
    pub async fn start() -> S3Server {
        set_credentials();
        let program =
            std::env::var("PHOTOQ_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (deploy/dev.sh test installs moto_server; set PHOTOQ_TEST_MOTO_SERVER)")
            });
        let server = S3Server { port, child };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // moto needs no signature: an unsigned CreateBucket is enough.
            if let Ok(res) = client.put(server.url(&format!("/{BUCKET}"))).send().await {
                assert!(res.status().is_success(), "create bucket: {}", res.status());
                return server;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
             endpoint = \"{}\"\npath_style = true\nallow_http = true\n{extra}\n",
            self.endpoint()
        )
    }

    /// The keys in the bucket under `prefix` (ListObjectsV2, unsigned).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("/{BUCKET}?list-type=2&prefix={prefix}");
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={t}"));
            }
            let body = reqwest::get(self.url(&url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            keys.extend(between_all(&body, "<Key>", "</Key>"));
            token = between_all(&body, "<NextContinuationToken>", "</NextContinuationToken>")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
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

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

fn between_all(text: &str, open: &str, close: &str) -> Vec<String> {
    text.split(open)
        .skip(1)
        .filter_map(|s| s.split_once(close).map(|(v, _)| v.to_owned()))
        .collect()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
