//! Database errors are sorted into "retry later", "rerun the transaction" and "the
//! request is at fault" by SQLSTATE, on a real PostgreSQL (see vendor/diesel-async).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use photoq::db::DbError;

async fn connect() -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{}/postgres", common::pg_server()))
        .await
        .unwrap()
}

async fn fails(conn: &mut AsyncPgConnection, sql: &str) -> DbError {
    diesel::sql_query(sql)
        .execute(conn)
        .await
        .expect_err(sql)
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified_by_sqlstate() {
    let mut a = connect().await;
    let mut b = connect().await;

    // 57014: a statement cancelled by its timeout passes.
    a.batch_execute("SET statement_timeout = 50").await.unwrap();
    let e = fails(&mut a, "SELECT pg_sleep(2)").await;
    assert!(e.is_transient() && !e.is_conflict(), "{e:?}");
    a.batch_execute("SET statement_timeout = 0").await.unwrap();

    // 40P01: a deadlock asks for the transaction to be run again. The victim keeps its
    // locks until it rolls back, so the other side's wait ends by its statement timeout.
    for conn in [&mut a, &mut b] {
        conn.batch_execute(
            "SET deadlock_timeout = '50ms'; BEGIN; SET LOCAL statement_timeout = 1000",
        )
        .await
        .unwrap();
    }
    a.batch_execute("SELECT pg_advisory_xact_lock(91)")
        .await
        .unwrap();
    b.batch_execute("SELECT pg_advisory_xact_lock(92)")
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        diesel::sql_query("SELECT pg_advisory_xact_lock(92)").execute(&mut a),
        diesel::sql_query("SELECT pg_advisory_xact_lock(91)").execute(&mut b),
    );
    let errors: Vec<DbError> = [ra, rb]
        .into_iter()
        .filter_map(|r| r.err().map(DbError::from))
        .collect();
    let victims = errors.iter().filter(|e| e.is_conflict()).count();
    assert_eq!(victims, 1, "one side is chosen as the victim: {errors:?}");
    assert!(errors.iter().all(DbError::is_transient), "{errors:?}");
    for conn in [&mut a, &mut b] {
        conn.batch_execute("ROLLBACK").await.unwrap();
    }

    // 23505 and 42601: the request is at fault; retrying cannot help.
    a.batch_execute("CREATE TEMP TABLE t (k int UNIQUE); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let e = fails(&mut a, "INSERT INTO t VALUES (1)").await;
    assert!(!e.is_transient() && !e.is_conflict(), "{e:?}");
    let e = fails(&mut a, "SELEC 1").await;
    assert!(!e.is_transient(), "{e:?}");

    // 57P01: the server ends the session (as in a shutdown); the next statement passes.
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut b)
        .await
        .unwrap();
    // With a timeout, pg_terminate_backend waits until the session has ended.
    a.batch_execute(&format!("SELECT pg_terminate_backend({}, 5000)", pid.pid))
        .await
        .unwrap();
    let e = fails(&mut b, "SELECT 1").await;
    assert!(e.is_transient(), "{e:?}");
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}
