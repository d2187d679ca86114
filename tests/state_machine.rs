//! The job state machine (`photoq::state`): a property test of the pure transition function
//! over random interleavings of deliveries, duplicates, crashes, take-overs, retries,
//! hand-backs, reconciler rounds and redrives, with the invariants the service rests on;
//! then the same scenarios replayed on real PostgreSQL through `db::jobs`, row for row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use photoq::state::{apply, Change, End, Event, JobRow, PhotoState};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// The attempt budget in the scenarios: small, so budgets run out often.
const MAX: i32 = 3;
/// Workers in a scenario.
const WORKERS: usize = 3;

/// An entry in the model's stream.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    /// The consumer it is pending with, if delivered.
    holder: Option<u32>,
    deliveries: u32,
}

/// What a worker holds.
#[derive(Debug, Clone)]
struct Holding {
    entry: String,
    attempt_id: i64,
    /// The photo's attempts when this attempt started (decides retry or dead).
    attempts: i32,
}

/// The model world: one photo's row, the stream, the workers.
#[derive(Debug)]
struct World {
    row: JobRow,
    stream: Vec<Entry>,
    workers: Vec<Option<Holding>>,
    /// Each worker's consumer name; a restarted worker has a new one.
    consumer: Vec<u32>,
    /// Consumers whose worker is alive. What a crashed one held stays pending with it.
    alive: std::collections::HashSet<u32>,
    next_consumer: u32,
    /// The attempt started last.
    last_started: i64,
    next_entry: u64,
    next_attempt: i64,
    /// Every event offered to the row, applied or not, in order.
    trace: Vec<Event>,
    /// Attempts started since the last redrive, less those handed back.
    counted_runs: i32,
    /// Completions recorded since the last redrive.
    completions: u32,
    /// Every kind of change the scenario made.
    changes: std::collections::HashSet<Change>,
}

impl World {
    fn new() -> Self {
        World {
            row: JobRow::new(),
            stream: Vec::new(),
            workers: vec![None; WORKERS],
            consumer: (0..WORKERS as u32).collect(),
            alive: (0..WORKERS as u32).collect(),
            next_consumer: WORKERS as u32,
            last_started: 0,
            next_entry: 1,
            next_attempt: 1,
            trace: Vec::new(),
            counted_runs: 0,
            completions: 0,
            changes: Default::default(),
        }
    }

    fn new_entry(&mut self) -> String {
        let id = format!("{}-0", self.next_entry);
        self.next_entry += 1;
        self.stream.push(Entry {
            id: id.clone(),
            holder: None,
            deliveries: 0,
        });
        id
    }

    fn remove_entry(&mut self, id: &str) {
        self.stream.retain(|e| e.id != id);
    }

    /// Offers an event to the row, checks the invariants of the step, and returns what
    /// changed.
    fn offer(&mut self, event: Event) -> Option<Change> {
        let before = self.row.clone();
        self.trace.push(event.clone());
        let result = apply(&self.row, &event, MAX);
        if let Some((next, change)) = &result {
            self.changes.insert(*change);
            // Final states move only by redrive, or a delete.
            if before.state.is_final() {
                assert!(
                    matches!(event, Event::Redrive { .. } | Event::Delete),
                    "{before:?} left a final state by {event:?}"
                );
            }
            match change {
                Change::Started => {
                    self.counted_runs += 1;
                    if let Event::Start { attempt_id, .. } = &event {
                        assert!(*attempt_id > self.last_started, "attempt ids only grow");
                        self.last_started = *attempt_id;
                    }
                }
                Change::HandedBack => self.counted_runs -= 1,
                Change::Completed => self.completions += 1,
                Change::Redriven => {
                    self.counted_runs = 0;
                    self.completions = 0;
                }
                _ => {}
            }
            self.row = next.clone();
        }
        let row = &self.row;
        assert_eq!(
            row.attempt_id.is_some(),
            row.state == PhotoState::Processing,
            "attempt set exactly while processing: {row:?}"
        );
        assert!((0..=MAX).contains(&row.attempts), "budget kept: {row:?}");
        assert_eq!(row.attempts, self.counted_runs, "attempts are the runs");
        assert!(self.completions <= 1, "recorded once per redrive");
        if let Some(id) = row.attempt_id {
            assert_eq!(id, self.last_started, "the newest attempt runs");
        }
        result.map(|(_, c)| c)
    }

    /// The uploader, the reconciler or a redrive publishes the job.
    fn publish(&mut self) {
        let entry = self.new_entry();
        self.offer(Event::Published { entry });
    }

    /// Worker `w`, idle and alive, gets the oldest waiting entry (or a pending one of a
    /// crashed worker, taken over).
    fn deliver(&mut self, w: usize, take_over: bool) {
        let me = self.consumer[w];
        if self.workers[w].is_some() || !self.alive.contains(&me) {
            return;
        }
        let alive = &self.alive;
        let pos = self.stream.iter().position(|e| match e.holder {
            None => !take_over,
            Some(h) => take_over && !alive.contains(&h),
        });
        let Some(pos) = pos else { return };
        let entry = {
            let e = &mut self.stream[pos];
            e.holder = Some(me);
            e.deliveries += 1;
            e.clone()
        };
        let attempt_id = self.next_attempt;
        self.next_attempt += 1;
        let change = self.offer(Event::Start {
            entry: entry.id.clone(),
            deliveries: entry.deliveries,
            attempt_id,
        });
        match change {
            Some(Change::Started) => {
                self.workers[w] = Some(Holding {
                    entry: entry.id,
                    attempt_id,
                    attempts: self.row.attempts,
                });
            }
            // Dead-lettered, or stale: the entry is acknowledged.
            _ => self.remove_entry(&entry.id),
        }
    }

    /// Worker `w` ends its attempt; `kind` picks how.
    fn finish(&mut self, w: usize, kind: u8) {
        let Some(h) = self.workers[w].take() else {
            return;
        };
        let end = match kind % 4 {
            0 | 1 => End::Completed,
            2 => End::Failed,
            _ if h.attempts >= MAX => End::Dead,
            _ => End::Retry,
        };
        let end = if kind % 7 == 6 {
            End::HandBack { entry: None }
        } else {
            end
        };
        let me = self.consumer[w];
        let holds = self
            .stream
            .iter()
            .any(|e| e.id == h.entry && e.holder == Some(me));
        let end = match end {
            // The hand-back script publishes the job again and deletes the old entry,
            // whoever holds it, before the row is told.
            End::HandBack { .. } => {
                let id = self.new_entry();
                self.remove_entry(&h.entry);
                End::HandBack { entry: Some(id) }
            }
            other => other,
        };
        let change = self.offer(Event::Finish {
            attempt_id: h.attempt_id,
            end,
        });
        match change {
            Some(Change::Retrying) => {
                // The promoter publishes the retry when it is due.
                self.remove_entry(&h.entry);
                self.new_entry();
            }
            Some(_) => self.remove_entry(&h.entry),
            // Stale: released only if this worker still holds it.
            None if holds => self.remove_entry(&h.entry),
            None => {}
        }
    }

    fn crash(&mut self, w: usize) {
        self.workers[w] = None;
        self.alive.remove(&self.consumer[w]);
    }

    /// A crashed worker comes back under a new consumer name.
    fn restart(&mut self, w: usize) {
        if !self.alive.contains(&self.consumer[w]) {
            self.consumer[w] = self.next_consumer;
            self.alive.insert(self.next_consumer);
            self.next_consumer += 1;
        }
    }

    /// A reconciler round: a lifeless attempt (its entry pending with nobody alive, or
    /// gone) is reclaimed; a queued job with no entry in the stream is published again.
    fn reconcile(&mut self) {
        if self.row.state == PhotoState::Processing {
            let entry = self.row.entry.clone();
            let pending = self
                .stream
                .iter()
                .any(|e| Some(&e.id) == entry.as_ref() && e.holder.is_some());
            if !pending {
                let attempt_id = self.row.attempt_id.unwrap_or(0);
                if self.offer(Event::Reclaim { attempt_id }) == Some(Change::Requeued) {
                    self.publish();
                }
            }
        } else if self.row.state == PhotoState::Queued {
            let entry = self.row.entry.clone();
            if !self.stream.iter().any(|e| Some(&e.id) == entry.as_ref()) {
                self.publish();
            }
        }
    }

    /// Redis loses an entry (flush, trim, failover).
    fn lose_entry(&mut self, pick: u8) {
        if !self.stream.is_empty() {
            let i = pick as usize % self.stream.len();
            self.stream.remove(i);
        }
    }

    fn redrive(&mut self, include_failed: bool) {
        if self.offer(Event::Redrive { include_failed }).is_some() {
            self.publish();
        }
    }

    /// One action of a scenario.
    fn step(&mut self, kind: u8, arg: u8) {
        let w = arg as usize % WORKERS;
        match kind % 10 {
            0 => self.publish(),
            1 | 2 => self.deliver(w, false),
            3 | 4 => self.finish(w, arg / 3),
            5 => self.crash(w),
            6 => {
                self.restart(w);
                self.deliver(w, true)
            }
            7 => self.reconcile(),
            8 => self.lose_entry(arg),
            // The owner cancels the batch or deletes the photo, now and then.
            _ if arg % 16 == 15 => {
                self.offer(Event::Cancel);
            }
            _ if arg % 16 == 14 => {
                self.offer(Event::Delete);
            }
            _ => self.redrive(arg.is_multiple_of(2)),
        }
    }

    /// Everything works from now on: the photo must reach a final state.
    fn drain(&mut self) {
        for w in 0..WORKERS {
            self.restart(w);
        }
        for _ in 0..200 {
            if self.row.state.is_final() {
                return;
            }
            self.reconcile();
            for w in 0..WORKERS {
                self.deliver(w, false);
                self.deliver(w, true);
                self.finish(w, 0);
            }
        }
        panic!("never settled: {:?}", self.row);
    }
}

/// Runs a scenario from the upload on; returns the world.
fn run(actions: &[(u8, u8)]) -> World {
    let mut world = World::new();
    world.publish();
    for &(kind, arg) in actions {
        world.step(kind, arg);
    }
    world.drain();
    world
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_interleavings_keep_the_invariants(
        actions in prop::collection::vec((any::<u8>(), any::<u8>()), 0..80)
    ) {
        let world = run(&actions);
        prop_assert!(world.row.state.is_final());
    }
}

/// Replays a trace on a real photo row through `db::jobs`, comparing each step with the
/// model. Attempt ids differ (PostgreSQL takes them from a sequence): the model's are
/// mapped to the database's as starts hand them out.
async fn replay(conn: &mut AsyncPgConnection, photo_id: uuid::Uuid, trace: &[Event]) {
    use photoq::db::jobs::{self, Delivered, Ending};
    let mut model = JobRow::new();
    let mut ids: HashMap<i64, i64> = HashMap::new();
    let attempt = |id: i64| photoq::db::attempts::AttemptRef {
        id,
        started: std::time::Instant::now(),
    };
    for event in trace {
        let expected = apply(&model, event, MAX).map(|(row, _)| row);
        match event {
            Event::Published { entry } => {
                let seen = model.entry.clone();
                jobs::mark_published(conn, &[(photo_id, seen, entry.clone())])
                    .await
                    .unwrap();
            }
            Event::Start {
                entry,
                deliveries,
                attempt_id,
            } => {
                let delivered = Delivered {
                    photo_id,
                    entry: entry.clone(),
                    deliveries: *deliveries as i32,
                };
                let starts = jobs::start_many(conn, &[delivered], "replay", MAX)
                    .await
                    .unwrap();
                if let [(_, a), ..] = starts.started.as_slice() {
                    ids.insert(*attempt_id, a.id);
                }
            }
            Event::Finish { attempt_id, end } => {
                let db_id = ids.get(attempt_id).copied().unwrap_or(-1);
                match end {
                    End::Completed => {
                        let done = jobs::Completion {
                            width: 1,
                            height: 1,
                            exif: serde_json::Value::Null,
                            thumbhash: None,
                            fingerprint: None,
                            reused_from: None,
                            variants: Vec::new(),
                            original: None,
                        };
                        jobs::complete_many(conn, &[(photo_id, &done, attempt(db_id))])
                            .await
                            .unwrap();
                    }
                    other => {
                        let ending = match other {
                            End::Failed => Ending::Failed {
                                code: "bad",
                                reason: "bad",
                            },
                            End::Retry => Ending::Retry {
                                code: "flaky",
                                error: "flaky",
                                after: std::time::Duration::ZERO,
                            },
                            End::Dead => Ending::Dead {
                                code: "spent",
                                reason: "spent",
                            },
                            End::HandBack { entry } => Ending::HandBack {
                                entry: entry.as_deref(),
                            },
                            End::Completed => unreachable!(),
                        };
                        jobs::finish(conn, photo_id, attempt(db_id), ending)
                            .await
                            .unwrap();
                    }
                }
            }
            Event::Reclaim { attempt_id } => {
                let db_id = ids.get(attempt_id).copied().unwrap_or(-1);
                jobs::reclaim_many(conn, &[(photo_id, db_id)], MAX)
                    .await
                    .unwrap();
            }
            Event::Redrive { include_failed } => {
                let filter = jobs::RedriveFilter {
                    photo: Some(photo_id),
                    include_failed: *include_failed,
                    ..Default::default()
                };
                jobs::redrive(conn, &filter).await.unwrap();
            }
            Event::Cancel | Event::Delete => {
                use photoq::db::schema::photos;
                let (owner, batch): (uuid::Uuid, uuid::Uuid) = photos::table
                    .find(photo_id)
                    .select((photos::owner_id, photos::batch_id))
                    .first(conn)
                    .await
                    .unwrap();
                if matches!(event, Event::Cancel) {
                    photoq::db::lifecycle::cancel(conn, owner, batch)
                        .await
                        .unwrap();
                } else {
                    let target = photoq::db::lifecycle::Target::Photo(photo_id);
                    photoq::db::lifecycle::delete(conn, owner, target)
                        .await
                        .unwrap();
                }
            }
        }
        if let Some(row) = expected {
            model = row;
        }
        let actual = jobs::job_row(conn, photo_id).await.unwrap().unwrap();
        let mapped = model
            .attempt_id
            .map(|id| ids.get(&id).copied().unwrap_or(-1));
        assert_eq!(
            (
                actual.state,
                actual.attempts,
                &actual.entry,
                actual.attempt_id
            ),
            (model.state, model.attempts, &model.entry, mapped),
            "after {event:?}"
        );
    }
}

/// A new database (named after `prefix`), migrated, with its pool and one client key.
async fn database_with_key(
    prefix: &str,
) -> (String, photoq::db::DbPool, photoq::db::models::ApiKey) {
    let name = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut config = photoq::config::Config::defaults().unwrap().database;
    config.url = format!("{}/{name}", common::pg_server());
    let pool = photoq::db::connect(&config).await.unwrap();
    let (key, _) = photoq::auth::create_key(&pool, prefix, photoq::auth::Scopes::CLIENT)
        .await
        .unwrap();
    (name, pool, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_replayed_on_postgres_match_the_model() {
    let (name, pool, key) = database_with_key("pqtest_sm").await;
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut events = 0;
    let mut changes = std::collections::HashSet::new();
    // At least 40 scenarios, and on until every kind of transition has been replayed.
    for run_no in 0..400 {
        if run_no >= 40 && changes.len() == 13 {
            break;
        }
        let n = rng.random_range(5..60);
        let actions: Vec<(u8, u8)> = (0..n).map(|_| (rng.random(), rng.random())).collect();
        let world = run(&actions);
        let batch = photoq::db::models::Batch {
            id: uuid::Uuid::now_v7(),
            owner_id: key.owner_id,
            created_at: chrono::Utc::now(),
        };
        let photo = photoq::db::models::NewPhoto {
            id: uuid::Uuid::now_v7(),
            batch_id: batch.id,
            owner_id: key.owner_id,
            filename: None,
            content_type: Some("image/jpeg".into()),
            bytes: Some(1),
            sha256: Some(String::new()),
            original_key: String::new(),
            source_url: None,
            trace_parent: None,
        };
        photoq::db::photos::insert_batch(
            &mut conn,
            &batch,
            std::slice::from_ref(&photo),
            None,
            photoq::config::QuotasConfig::NONE,
        )
        .await
        .unwrap();
        replay(&mut conn, photo.id, &world.trace).await;
        events += world.trace.len();
        changes.extend(world.changes);
    }
    assert!(
        events > 500,
        "the scenarios exercised the machine: {events}"
    );
    assert_eq!(
        changes.len(),
        13,
        "every kind of transition replayed: {changes:?}"
    );
    drop(conn);
    drop(pool);
    common::drop_database(&name).await;
}

/// Starting a photo changes none of its indexed columns (the partial indexes' conditions
/// read generated columns that keep their value from `queued` to `processing`), so
/// PostgreSQL updates the row in place: no new entry in any of the photo indexes. Counted
/// by PostgreSQL itself within the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_photos_updates_their_rows_in_place() {
    use photoq::db::jobs::{self, Delivered};
    let (name, pool, key) = database_with_key("pqtest_hot").await;
    let batch = photoq::db::models::Batch {
        id: uuid::Uuid::now_v7(),
        owner_id: key.owner_id,
        created_at: chrono::Utc::now(),
    };
    let photos: Vec<_> = (0..5)
        .map(|_| photoq::db::models::NewPhoto {
            id: uuid::Uuid::now_v7(),
            batch_id: batch.id,
            owner_id: key.owner_id,
            filename: Some("IMG_0001.JPG".into()),
            content_type: Some("image/jpeg".into()),
            bytes: Some(1),
            sha256: Some("0".repeat(64)),
            original_key: "originals/x.jpg".into(),
            source_url: None,
            trace_parent: None,
        })
        .collect();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    photoq::db::photos::insert_batch(
        &mut conn,
        &batch,
        &photos,
        None,
        photoq::config::QuotasConfig::NONE,
    )
    .await
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Counted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        updated: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        in_place: i64,
    }
    let counted: Counted = conn
        .transaction::<_, photoq::db::DbError, _>(async |conn| {
            let delivered: Vec<Delivered> = photos
                .iter()
                .enumerate()
                .map(|(i, p)| Delivered {
                    photo_id: p.id,
                    entry: format!("1-{i}"),
                    deliveries: 1,
                })
                .collect();
            let starts = jobs::start_many(conn, &delivered, "hot", 3).await?;
            assert_eq!(starts.started.len(), 5, "every photo started");
            Ok(diesel::sql_query(
                "SELECT pg_stat_get_xact_tuples_updated('photos'::regclass) AS updated, \
                        pg_stat_get_xact_tuples_hot_updated('photos'::regclass) AS in_place",
            )
            .get_result(conn)
            .await?)
        })
        .await
        .unwrap();
    assert_eq!(
        (counted.updated, counted.in_place),
        (5, 5),
        "every start an in-place update"
    );
    drop(conn);
    drop(pool);
    common::drop_database(&name).await;
}
