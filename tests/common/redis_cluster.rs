//! A real Redis Cluster of the test's own: three masters and three replicas
//! (`redis-server --cluster-enabled yes` on free loopback ports, joined by
//! `redis-cli --cluster create`), with a short node timeout so a failover takes seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Milliseconds before a silent master is failed (cluster-node-timeout).
const NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("pqcluster_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // Replicas sync at once, and a replica may take over however long ago it
                // last heard from its master (the test kills masters on purpose).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push((port, Some(child)));
        }
        let cluster = RedisCluster { nodes, dir };
        for (port, _) in &cluster.nodes {
            cluster.wait_for(*port, "INFO", "server", |_| true).await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_ok().await;
        cluster
    }

    /// Seed URLs for photoq's `redis.url`, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every live node reports `cluster_state:ok` with all slots served, and every live
    /// replica is in sync with its master.
    pub async fn wait_until_ok(&self) {
        for (port, child) in &self.nodes {
            if child.is_some() {
                self.wait_for(*port, "CLUSTER", "INFO", |info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
                .await;
                self.wait_for(*port, "INFO", "replication", |info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
                .await;
            }
        }
    }

    /// The port of the master serving `key`'s slot, as a live node sees it.
    pub async fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .await
            .unwrap_or_else(|| panic!("no master serves {key}"))
    }

    /// As [`RedisCluster::master_of`], None while no healthy master serves it.
    async fn try_master_of(&self, key: &str) -> Option<u16> {
        let mut conn = connect(self.live_port()).await.expect("node");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        let addr = fields[1].split('@').next().unwrap();
                        return addr.rsplit(':').next().unwrap().parse().ok();
                    }
                }
            }
        }
        None
    }

    /// SIGKILLs the master serving `key`, then waits until its replica has taken over and
    /// the cluster serves every slot again.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key).await;
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("node");
        let mut child = node.1.take().expect("node running");
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_master_of(key).await.is_none_or(|p| p == port) {
            assert!(Instant::now() < deadline, "the cluster did not fail over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_until_ok().await;
        port
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .expect("a live node")
    }

    /// Polls the node's answer to `command arg` until `ok` accepts it.
    async fn wait_for(&self, port: u16, command: &str, arg: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut conn) = connect(port).await {
                let info: redis::RedisResult<String> =
                    redis::cmd(command).arg(arg).query_async(&mut conn).await;
                if info.is_ok_and(|i| ok(&i)) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis node {port} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn connect(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
