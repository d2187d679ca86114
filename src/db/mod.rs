//! PostgreSQL, the source of truth: the pool, start-up (create the database, run the embedded
//! migrations) and the queries, one small module per table. No HTTP types in here.

pub mod attempts;
pub mod batches;
pub mod erasure;
pub mod events;
pub mod idempotency;
pub mod imports;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod models;
pub mod photos;
pub mod reprocess;
pub mod retention;
pub mod schema;
pub mod usage;
pub mod webhooks;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::ConnectionError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;

use crate::config::DatabaseConfig;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL could not be reached (pool timeout, refused or dropped connection).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] DieselError),
    #[error("database set-up failed: {0}")]
    Setup(String),
    /// The database answered in a way the schema rules out (a bug).
    #[error("database invariant broken: {0}")]
    Invariant(String),
    /// An admission found a quota would be passed (`usage::admit`); the transaction ends.
    #[error(transparent)]
    Quota(#[from] usage::Exceeded),
}

impl DbError {
    /// True when retrying later may succeed (the database, not the request, is at fault):
    /// PostgreSQL unreachable, the connection lost, the server shutting down or starting,
    /// a statement cancelled by its timeout, or a transaction to be rerun. Decided by
    /// SQLSTATE (see vendor/diesel-async/PATCH.md), never by message text.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Query(DieselError::DatabaseError(kind, _)) => matches!(
                kind,
                DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::SerializationFailure
                    | DatabaseErrorKind::UnableToSendCommand
            ),
            DbError::Query(DieselError::BrokenTransactionManager) => true,
            _ => false,
        }
    }

    /// True when PostgreSQL aborted the transaction to be run again: a deadlock or a
    /// serialization failure (SQLSTATE class 40).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            DbError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        )
    }

    /// True when the error is a unique violation of the named constraint.
    pub fn violates(&self, constraint: &str) -> bool {
        matches!(
            self,
            DbError::Query(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
                if info.constraint_name() == Some(constraint)
        )
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

/// Creates the database named in the URL if it does not exist, runs the pending migrations,
/// and returns a pool whose connections carry the configured statement timeout.
pub async fn connect(config: &DatabaseConfig) -> Result<DbPool, DbError> {
    create_database_if_missing(&config.url).await?;
    migrate(&config.url).await?;
    pool(config)
}

/// A pool only; no start-up work. Connections are opened lazily.
pub fn pool(config: &DatabaseConfig) -> Result<DbPool, DbError> {
    pool_with(config, config.pool_size, "")
}

/// A pool for the job transitions of `db::jobs`, whose statements touch up to a few
/// thousand photos by id: its connections' planner looks rows up by key. On a table of
/// modest size it would otherwise prefer a sequential scan or a hash of the whole table,
/// which costs more than the update itself. (The statements guarded by an attempt match it
/// by `attempt_id` alone, never also by `state = 'processing'`: the schema makes the one
/// imply the other, and the state condition would let the planner start from the
/// unfinished photos' index and compare every one of them with every job.)
/// Its size: one connection starting read batches, one recording group commits, one for
/// each job in flight that may end otherwise at the same moment, at most
/// `database.pool_size`.
pub fn jobs_pool(config: &DatabaseConfig, jobs_in_flight: usize) -> Result<DbPool, DbError> {
    pool_with(
        config,
        (2 + jobs_in_flight).min(config.pool_size),
        "; SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
    )
}

/// A pool of `size` connections that run `settings` (statements, each starting with `;`) after the
/// statement timeout. A connection is checked when taken from the pool only by whether it
/// is still open (deadpool's `Fast` recycling): a query on a connection that died since is
/// a transient error its caller handles like any other, and the broken connection is
/// dropped instead of returned. (`Verified` would add a `SELECT 1` round trip to every
/// checkout: a third of all statements in a busy worker.)
fn pool_with(
    config: &DatabaseConfig,
    size: usize,
    settings: &'static str,
) -> Result<DbPool, DbError> {
    let statement_timeout_ms = config.statement_timeout_secs * 1000;
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&format!(
                "SET statement_timeout = {statement_timeout_ms}; \
                 SET application_name = 'photoq'{settings}"
            ))
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(&config.url, manager_config);
    let timeout = Some(Duration::from_secs(config.connect_timeout_secs));
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Setup(e.to_string()))
}

/// Splits `postgres://…/name?opts` into the URL of the server's `postgres` database and `name`.
fn split_database_url(url: &str) -> Result<(String, String), DbError> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| DbError::Setup(format!("database url: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Err(DbError::Setup("database url names no database".into()));
    }
    parsed.set_path("/postgres");
    Ok((parsed.to_string(), name))
}

pub async fn create_database_if_missing(url: &str) -> Result<(), DbError> {
    // Fast path: the database is there.
    if AsyncPgConnection::establish(url).await.is_ok() {
        return Ok(());
    }
    let (admin_url, name) = split_database_url(url)?;
    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it first (42P04 duplicate_database is not mapped to a
        // kind; the database is there if we can now connect to it).
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(()),
        Err(e) if AsyncPgConnection::establish(url).await.is_ok() => {
            tracing::debug!(error = %e, "database created concurrently");
            Ok(())
        }
        Err(e) => Err(DbError::Setup(format!("create database {name}: {e}"))),
    }
}

/// Applies the embedded migrations. Safe to run from several processes at once: a
/// transaction-level advisory lock serialises them.
pub async fn migrate(url: &str) -> Result<(), DbError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
            Connection::establish(&url).map_err(|e| DbError::Unavailable(e.to_string()))?;
        Connection::transaction::<_, DbError, _>(&mut conn, |conn| {
            diesel::RunQueryDsl::execute(
                diesel::sql_query("SELECT pg_advisory_xact_lock(7283641)"),
                conn,
            )?;
            let applied = conn
                .run_pending_migrations(MIGRATIONS)
                .map_err(|e| DbError::Setup(format!("migrations: {e}")))?;
            for m in applied {
                tracing::info!(migration = %m, "applied migration");
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| DbError::Setup(format!("migration task: {e}")))?
}

/// A connection of its own, outside the pool, for a task that keeps session state (an
/// advisory lock held for as long as the connection lives). No statement timeout.
pub async fn session(config: &DatabaseConfig, name: &str) -> Result<AsyncPgConnection, DbError> {
    let mut conn = AsyncPgConnection::establish(&config.url)
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
    conn.batch_execute(&format!("SET application_name = 'photoq {name}'"))
        .await?;
    Ok(conn)
}

/// A connection from the pool.
pub async fn conn(pool: &DbPool) -> Result<DbConn, DbError> {
    Ok(pool.get().await?)
}

/// `SELECT 1`, for readiness checks.
pub async fn ping(pool: &DbPool) -> Result<(), DbError> {
    let mut conn = conn(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_is_split() {
        let (admin, name) =
            split_database_url("postgres://postgres@127.0.0.1:5432/photoq_t1?sslmode=disable")
                .expect("valid url");
        assert_eq!(name, "photoq_t1");
        assert_eq!(
            admin,
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert!(split_database_url("postgres://h/").is_err());
    }
}
