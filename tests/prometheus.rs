//! photoq under a real Prometheus (Debian's package, installed by `deploy/dev.sh test`):
//! the shipped rules pass `promtool`'s checks and unit tests; a Prometheus scraping a
//! running photoq reads a batch's jobs and stage times back through PromQL, evaluates the
//! recording rules, and every query of the Grafana dashboard runs and finds its series.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{corpus_dir, read, TestApp};
use serde_json::Value;

/// Series that exist only once something went wrong (no error, no series).
const ONLY_AFTER_ERRORS: &[&str] = &["photoq_job_errors_total", "photoq_redis_errors_total"];
/// How long Prometheus may take to show what photoq already exports.
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (deploy/dev.sh test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn shipped_rules_and_config_pass_promtool() {
    let rules = deploy("prometheus/rules.yml");
    let checked = promtool(&["check", "rules", rules.to_str().expect("path")]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = deploy("prometheus/rules.test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().expect("path")]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let config = deploy("prometheus/prometheus.yml");
    promtool(&["check", "config", config.to_str().expect("path")]);
}

/// A Prometheus server of its own, on a free port, with its data in a temporary directory.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second as job `photoq`, with the shipped rules
    /// evaluated every second.
    async fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("photoq-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: photoq\n    static_configs:\n      - targets: [\"{target}\"]\n",
                deploy("prometheus/rules.yml").display()
            ),
        )
        .expect("config");
        let port = common::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (deploy/dev.sh test installs it)");
        let prometheus = Prometheus {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: common::http_client(),
        };
        let deadline = Instant::now() + SCRAPE_WAIT;
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result vector of an instant query; panics on a query Prometheus refuses.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let mut url = url::Url::parse(&format!("{}/api/v1/query", self.base)).expect("url");
        url.query_pairs_mut().append_pair("query", promql);
        let res: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("query sent")
            .json()
            .await
            .expect("json");
        assert_eq!(res["status"], "success", "{promql}: {res}");
        res["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The query's single value once `ready` accepts it, or a panic after [`SCRAPE_WAIT`].
    async fn value_when(&self, promql: &str, ready: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + SCRAPE_WAIT;
        loop {
            let last = self.query(promql).await;
            if let Some(v) = last.first().and_then(value_of) {
                if ready(v) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "{promql}: {last:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn value_of(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// The PromQL of every panel of the shipped Grafana dashboard, with Grafana's
/// `$__rate_interval` replaced as Grafana would for a 1 s scrape.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/photoq.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((
                panel["title"].as_str().expect("title").to_owned(),
                expr.replace("$__rate_interval", "1m"),
            ));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_a_batch_and_every_dashboard_query() {
    let app = TestApp::start().await;
    let target = app.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target).await;

    let jpeg = |name: &str| {
        (
            format!("{name}.jpg"),
            read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )
    };
    // Three different photos: the same bytes again would reuse the first's results and
    // not be decoded.
    let batch = app.upload_ok(common::three_photos()).await;
    let done = app
        .wait_batch(batch["batch_id"].as_str().expect("batch id"))
        .await;
    assert_eq!(done["completed"], 3, "{done}");

    // The job counter and a stage histogram, through PromQL.
    let completed = prometheus
        .value_when(
            r#"sum(photoq_jobs_total{job="photoq",outcome="completed"})"#,
            |v| v >= 3.0,
        )
        .await;
    assert_eq!(completed, 3.0);
    let decoded = prometheus
        .value_when(
            r#"sum(photoq_job_stage_duration_seconds_count{stage="decode"})"#,
            |v| v >= 3.0,
        )
        .await;
    assert_eq!(decoded, 3.0);
    let median = prometheus
        .value_when(
            r#"histogram_quantile(0.5, sum by (le) (photoq_job_stage_duration_seconds_bucket{stage="resize"}))"#,
            |v| v.is_finite(),
        )
        .await;
    assert!(median > 0.0 && median < 10.0, "median resize {median}");
    // A recording rule of the shipped rules, evaluated by this Prometheus: one more photo,
    // after Prometheus has seen the first three, makes the rate of completions positive.
    let more = app.upload_ok(vec![jpeg("d")]).await;
    app.wait_batch(more["batch_id"].as_str().expect("batch id"))
        .await;
    prometheus
        .value_when(r#"photoq:jobs:rate5m{outcome="completed"}"#, |v| v > 0.0)
        .await;

    // Every dashboard query is valid PromQL, and every series it names exists (but those
    // that only errors create).
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = Instant::now() + SCRAPE_WAIT;
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        if ONLY_AFTER_ERRORS.iter().any(|name| expr.contains(name)) {
            prometheus.query(expr).await;
            continue;
        }
        loop {
            if !prometheus.query(expr).await.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                missing.push(format!("{title}: {expr}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(missing.is_empty(), "panels without data: {missing:#?}");
    drop(prometheus);
    app.finish().await;
}
