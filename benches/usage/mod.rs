//! What a benchmark run cost on this machine, per job: CPU seconds of photoq's processes,
//! of PostgreSQL (all its processes) and of Redis, SQL statements (with pg_stat_statements
//! loaded on the server) and Redis commands. `Usage::take` before and after, then
//! `Usage::report` with the difference. Linux only (/proc).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux everywhere).
const TICKS: f64 = 100.0;

#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU seconds of each tracked process (own and reaped children).
    pub processes: Vec<f64>,
    pub postgres_cpu: f64,
    /// Statements run in the run's database (None without pg_stat_statements).
    pub statements: Option<i64>,
    pub redis_commands: u64,
    pub redis_cpu: f64,
}

/// CPU seconds of a process: user, system, and its reaped children's.
fn cpu_of(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the line (11-14 after the name).
    let ticks: f64 = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    Some(ticks / TICKS)
}

pub fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_of(&s))
        .unwrap_or(0.0)
}

/// Every `postgres` process on the machine (the server, its background processes and
/// backends; backends gone since are in the server's reaped children).
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            if let Some(cpu) = std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| cpu_of(&s))
            {
                total += cpu;
            }
        }
    }
    total
}

#[derive(diesel::QueryableByName)]
struct Calls {
    #[diesel(sql_type = BigInt)]
    calls: i64,
}

/// Statements counted by pg_stat_statements in the current database, if it is loaded.
async fn statements(conn: &mut AsyncPgConnection) -> Option<i64> {
    diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(conn)
        .await
        .ok()?;
    let c: Calls = diesel::sql_query(
        "SELECT coalesce(sum(calls), 0)::int8 AS calls FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .get_result(conn)
    .await
    .ok()?;
    Some(c.calls)
}

/// (commands, CPU seconds) of the Redis server.
async fn redis(url: &str) -> (u64, f64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = stats
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
        .sum();
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap();
    let seconds = cpu
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    (calls, seconds)
}

impl Usage {
    pub async fn take(pids: &[u32], db: &mut AsyncPgConnection, redis_url: &str) -> Usage {
        let (redis_commands, redis_cpu) = redis(redis_url).await;
        Usage {
            processes: pids.iter().map(|&p| process_cpu(p)).collect(),
            postgres_cpu: postgres_cpu(),
            statements: statements(db).await,
            redis_commands,
            redis_cpu,
        }
    }

    /// Prints what happened between `before` and `self` per job; `roles` names the
    /// tracked processes (in the order given to `take`).
    pub fn report(&self, before: &Usage, roles: &[&str], jobs: usize, stored_bytes: u64) {
        let per = |x: f64| x / jobs as f64;
        println!("  cost per job ({jobs} jobs; this machine's own clock ticks):");
        let mut by_role: Vec<(&str, f64)> = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            // A process started after `before` was taken counts from its start.
            let cpu = self.processes[i] - before.processes.get(i).copied().unwrap_or(0.0);
            match by_role.iter_mut().find(|(r, _)| r == role) {
                Some((_, total)) => *total += cpu,
                None => by_role.push((role, cpu)),
            }
        }
        for (role, cpu) in by_role {
            println!("    {role:<22} {:>8.2} ms CPU", per(cpu) * 1000.0);
        }
        println!(
            "    {:<22} {:>8.2} ms CPU",
            "postgresql",
            per(self.postgres_cpu - before.postgres_cpu) * 1000.0
        );
        match (self.statements, before.statements) {
            (Some(a), Some(b)) => {
                println!("    {:<22} {:>8.1}", "sql statements", per((a - b) as f64))
            }
            _ => println!("    sql statements         (pg_stat_statements not loaded)"),
        }
        println!(
            "    {:<22} {:>8.2} ms CPU",
            "redis",
            per(self.redis_cpu - before.redis_cpu) * 1000.0
        );
        println!(
            "    {:<22} {:>8.1}",
            "redis commands",
            per((self.redis_commands - before.redis_commands) as f64)
        );
        if stored_bytes > 0 {
            println!(
                "    {:<22} {:>8.0} KiB",
                "storage written",
                per(stored_bytes as f64) / 1024.0
            );
        }
    }
}
