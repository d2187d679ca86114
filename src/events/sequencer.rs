//! The event sequencer: numbers the changes that writing transactions staged and appends
//! them to the log (`db::events::sequence`), then tells the API processes (Redis pub/sub).
//!
//! Every process runs this task; one at a time leads. Leading is a session advisory lock
//! in PostgreSQL held by a connection of the leader's own: the others wait for it inside
//! PostgreSQL, so when the leader stops, or dies and its connection closes, the next one
//! takes over at once (a leader cut off by the network is noticed by the server's TCP
//! keep-alive, within about 25 s). The leader runs passes when writers say changes were
//! committed (`Queue::changes_written`), every [`SAFETY_POLL`] in any case, and every
//! `events.fallback_poll_ms` while Redis cannot say.
//!
//! A process's sequencer stops last (after its workers have drained), with a final pass,
//! so the events of its last changes are in the log before it exits.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio_util::sync::CancellationToken;

use super::notices::Notices;
use crate::config::Config;
use crate::db::{self, DbError};
use crate::queue::Queue;

/// The session advisory lock whoever sequences holds ("photoq event sequencer").
pub const LEADER_LOCK: i64 = 7_019_823_456_781_000;
/// Staged statements numbered per pass (each one's events, however many).
const PASS_ROWS: i32 = 500;
/// A leader passes this often even while Redis notices arrive (a notice can be lost
/// between a writer and Redis).
const SAFETY_POLL: Duration = Duration::from_secs(1);
/// Wait before connecting again after losing PostgreSQL.
const RETRY: Duration = Duration::from_secs(1);

/// Sequences events while this process leads, until `stop`.
pub async fn run(config: Arc<Config>, queue: Queue, stop: CancellationToken) {
    let notices = Notices::listen(
        queue.clone(),
        queue.changes_channel().to_owned(),
        stop.clone(),
    );
    loop {
        match lead(&config, &queue, &notices, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "event sequencer lost PostgreSQL; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Waits to lead, then sequences until `stop` (Ok) or until the connection fails (Err).
async fn lead(
    config: &Config,
    queue: &Queue,
    notices: &Notices,
    stop: &CancellationToken,
) -> Result<(), DbError> {
    // Named with the process id: `pg_stat_activity` and `pg_locks` tell who leads.
    let name = format!("event sequencer {}", std::process::id());
    let mut conn = db::session(&config.database, &name).await?;
    // The server notices a leader that vanished from the network (no FIN) by keep-alive.
    conn.batch_execute(
        "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
         SET tcp_keepalives_count = 3",
    )
    .await?;
    tokio::select! {
        // Dropping the connection abandons the wait.
        _ = stop.cancelled() => return Ok(()),
        locked = diesel::sql_query(format!("SELECT pg_advisory_lock({LEADER_LOCK})"))
            .execute(&mut conn) => { locked?; }
    }
    conn.batch_execute(&format!(
        "SET statement_timeout = {}",
        config.database.statement_timeout_secs * 1000
    ))
    .await?;
    tracing::info!("this process sequences events");
    let fallback = Duration::from_millis(config.events.fallback_poll_ms);
    let mut wake = notices.subscribe();
    loop {
        // Anything noticed from here on gets a pass of its own.
        wake.mark_unchanged();
        drain(&mut conn, queue).await?;
        let poll = if notices.up() { SAFETY_POLL } else { fallback };
        tokio::select! {
            _ = stop.cancelled() => {
                // The last changes of this process (its workers have stopped by now).
                drain(&mut conn, queue).await?;
                return Ok(());
            }
            _ = wake.changed() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Passes until nothing is staged; tells the API processes if events were appended.
async fn drain(conn: &mut AsyncPgConnection, queue: &Queue) -> Result<(), DbError> {
    loop {
        let taken = db::events::sequence(conn, PASS_ROWS).await?;
        if taken > 0 {
            // Followers may start reading while the next pass runs.
            queue.events_appended();
        }
        if taken < PASS_ROWS {
            return Ok(());
        }
    }
}
