//! The job state machine of a photo: its states, how an attempt ends, and every transition,
//! as a pure function over the parts of the row that decide.
//!
//! Redis delivers jobs at least once, so a worker may hold a duplicate entry, a stale one
//! (its job was taken over), or one for a photo already final. Every transition is therefore
//! a compare-and-set on what it expects: a start on the state and the entry, an end on the
//! attempt that ran (`attempt_id`, the `photo_attempts` row, unique for ever). A delivery
//! whose expectation no longer holds changes nothing: it is acknowledged and counted as
//! stale. `db::photos` runs each transition as one guarded SQL statement that mirrors
//! [`apply`]; `tests/state_machine.rs` checks the two agree.
//!
//! ```text
//!             Start                     Finish(Completed)
//!   queued ───────────▶ processing ─────────────────────▶ completed
//!     ▲  ▲                │  │  │  Finish(Failed)
//!     │  └─ Finish(Retry) ┘  │  └──────────────────────▶ failed ──┐
//!     │     Finish(HandBack) │  Finish(Dead), or a start or        │ Redrive
//!     │     Reclaim          │  reclaim past the attempt budget    │
//!     │                      └─────────────────────────▶ dead ────┤
//!     └───────────────────────────────────────────────────────────┘
//!
//!   queued ──Cancel──▶ cancelled          any state ──Delete──▶ deleted
//! ```
//!
//! A cancel takes only photos that wait (a running attempt finishes); a delete takes a
//! photo in any state, and the attempt running then finds its finish stale.

use serde::{Deserialize, Serialize};

/// Which stream a photo's job travels on. Interactive work (uploads) is read first; bulk
/// work (imports) gets the rest and a configured share (`worker.bulk_share`), so a large
/// import never makes an upload wait behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Interactive,
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Bulk];

    /// Photos downloaded from a URL (imports) are bulk work; uploads are interactive.
    pub fn of_photo(source_url: Option<&str>) -> Self {
        match source_url {
            Some(_) => Lane::Bulk,
            None => Lane::Interactive,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        }
    }
}

/// Where a photo is in its life. Stored as text (see the `photos_state_check` constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhotoState {
    Queued,
    Processing,
    Completed,
    Failed,
    Dead,
    /// Its batch was cancelled before it started.
    Cancelled,
    /// Deleted by its owner: a tombstone, its bytes gone; reads treat it as absent.
    Deleted,
}

impl PhotoState {
    pub const ALL: [PhotoState; 7] = [
        PhotoState::Queued,
        PhotoState::Processing,
        PhotoState::Completed,
        PhotoState::Failed,
        PhotoState::Dead,
        PhotoState::Cancelled,
        PhotoState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhotoState::Queued => "queued",
            PhotoState::Processing => "processing",
            PhotoState::Completed => "completed",
            PhotoState::Failed => "failed",
            PhotoState::Dead => "dead",
            PhotoState::Cancelled => "cancelled",
            PhotoState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed, failed and dead photos are not worked on again (until redriven), nor are
    /// cancelled or deleted ones (ever).
    pub fn is_final(self) -> bool {
        !matches!(self, PhotoState::Queued | PhotoState::Processing)
    }
}

/// How an attempt ended; stored as text (see `photo_attempts_outcome_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Running,
    Completed,
    Failed,
    /// A transient error; another attempt is scheduled.
    Retry,
    /// The last attempt allowed; the photo is dead.
    Dead,
    /// The worker died or lost the job mid-way; noticed when the job was taken over or
    /// reclaimed.
    Interrupted,
    /// The worker stopped (shutdown, database outage) and handed the job back unfinished.
    HandedBack,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::HandedBack => "handed_back",
        }
    }
}

/// The columns of a photo row that transitions read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub state: PhotoState,
    /// Attempts counted against the budget (`retry.max_attempts`); 0 after a redrive.
    pub attempts: i32,
    /// The attempt running now: set exactly while `processing`.
    pub attempt_id: Option<i64>,
    /// The stream entry the job was last published as, or is running from.
    pub entry: Option<String>,
}

impl JobRow {
    /// A photo as the upload commits it.
    pub fn new() -> Self {
        JobRow {
            state: PhotoState::Queued,
            attempts: 0,
            attempt_id: None,
            entry: None,
        }
    }
}

impl Default for JobRow {
    fn default() -> Self {
        Self::new()
    }
}

/// How a worker ends the attempt it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Completed,
    /// The input is at fault.
    Failed,
    /// A transient error; the attempt counts and another is scheduled.
    Retry,
    /// A transient error on the last attempt allowed.
    Dead,
    /// Given back unfinished (shutdown, database outage), published again as `entry`; the
    /// attempt does not count.
    HandBack {
        entry: Option<String>,
    },
}

/// Something that happens to a photo's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The job was put on the stream as `entry` (by the uploader, the reconciler or a
    /// redrive). Recorded only while the photo waits in `queued`.
    Published { entry: String },
    /// A worker got `entry`, which Redis has delivered `deliveries` times, and would run
    /// it as attempt `attempt_id`. Taken from `queued`, or from `processing` when the
    /// attempt running there runs from this very entry (the entry was taken over from a
    /// worker that stopped renewing its claim).
    Start {
        entry: String,
        deliveries: u32,
        attempt_id: i64,
    },
    /// Attempt `attempt_id` ended.
    Finish { attempt_id: i64, end: End },
    /// The reconciler found attempt `attempt_id` with no sign of life (its entry is no
    /// longer pending in Redis).
    Reclaim { attempt_id: i64 },
    /// An explicit retry or redrive of a `dead` (and, if asked, `failed`) photo.
    Redrive { include_failed: bool },
    /// Its batch is cancelled: taken only while the photo waits.
    Cancel,
    /// Its owner deletes it, in whatever state (but deleted).
    Delete,
}

/// What a transition did, when it did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    Published,
    Started,
    /// A start found the budget spent (by attempts recorded, or by deliveries Redis
    /// counted that never got as far as recording a start): the photo is dead.
    StartedDead,
    Completed,
    Failed,
    Retrying,
    Dead,
    HandedBack,
    /// The reconciler put a lifeless attempt's photo back in the queue.
    Requeued,
    /// The reconciler found a lifeless attempt that was the last allowed.
    ReclaimedDead,
    Redriven,
    Cancelled,
    Deleted,
}

/// The row after `event`, or `None` when the event is stale or a duplicate and must change
/// nothing. `max_attempts` is the attempt budget.
pub fn apply(row: &JobRow, event: &Event, max_attempts: i32) -> Option<(JobRow, Change)> {
    use PhotoState::*;
    let mut next = row.clone();
    let change = match event {
        Event::Published { entry } => {
            if row.state != Queued {
                return None;
            }
            next.entry = Some(entry.clone());
            Change::Published
        }
        Event::Start {
            entry,
            deliveries,
            attempt_id,
        } => {
            let takes = match row.state {
                Queued => true,
                Processing => row.entry.as_deref() == Some(entry.as_str()),
                _ => false,
            };
            if !takes {
                return None;
            }
            next.entry = Some(entry.clone());
            let spent = i64::from(*deliveries) > i64::from(max_attempts);
            if row.attempts >= max_attempts || spent {
                next.state = Dead;
                next.attempt_id = None;
                Change::StartedDead
            } else {
                next.state = Processing;
                next.attempts += 1;
                next.attempt_id = Some(*attempt_id);
                Change::Started
            }
        }
        Event::Finish { attempt_id, end } => {
            if row.state != Processing || row.attempt_id != Some(*attempt_id) {
                return None;
            }
            next.attempt_id = None;
            match end {
                End::Completed => {
                    next.state = Completed;
                    Change::Completed
                }
                End::Failed => {
                    next.state = Failed;
                    Change::Failed
                }
                End::Retry => {
                    next.state = Queued;
                    Change::Retrying
                }
                End::Dead => {
                    next.state = Dead;
                    Change::Dead
                }
                End::HandBack { entry } => {
                    next.state = Queued;
                    next.attempts -= 1;
                    if entry.is_some() {
                        next.entry = entry.clone();
                    }
                    Change::HandedBack
                }
            }
        }
        Event::Reclaim { attempt_id } => {
            if row.state != Processing || row.attempt_id != Some(*attempt_id) {
                return None;
            }
            next.attempt_id = None;
            if row.attempts >= max_attempts {
                next.state = Dead;
                Change::ReclaimedDead
            } else {
                next.state = Queued;
                Change::Requeued
            }
        }
        Event::Redrive { include_failed } => {
            let takes = row.state == Dead || (*include_failed && row.state == Failed);
            if !takes {
                return None;
            }
            next = JobRow::new();
            Change::Redriven
        }
        Event::Cancel => {
            if row.state != Queued {
                return None;
            }
            next.state = Cancelled;
            Change::Cancelled
        }
        Event::Delete => {
            if row.state == Deleted {
                return None;
            }
            next.state = Deleted;
            next.attempt_id = None;
            Change::Deleted
        }
    };
    Some((next, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(entry: &str, attempt_id: i64) -> Event {
        Event::Start {
            entry: entry.into(),
            deliveries: 1,
            attempt_id,
        }
    }

    #[test]
    fn a_duplicate_start_changes_nothing() {
        let (row, _) = apply(&JobRow::new(), &start("1-0", 10), 5).expect("starts");
        assert_eq!(row.state, PhotoState::Processing);
        assert_eq!(row.attempts, 1);
        assert!(apply(&row, &start("2-0", 11), 5).is_none());
    }

    #[test]
    fn a_taken_over_entry_restarts_and_the_old_attempt_is_stale() {
        let (row, _) = apply(&JobRow::new(), &start("1-0", 10), 5).expect("starts");
        let taken = Event::Start {
            entry: "1-0".into(),
            deliveries: 2,
            attempt_id: 11,
        };
        let (row, change) = apply(&row, &taken, 5).expect("takes over");
        assert_eq!(
            (change, row.attempts, row.attempt_id),
            (Change::Started, 2, Some(11))
        );
        let late = Event::Finish {
            attempt_id: 10,
            end: End::Completed,
        };
        assert!(apply(&row, &late, 5).is_none());
    }

    #[test]
    fn deliveries_past_the_budget_end_dead_without_a_run() {
        let poison = Event::Start {
            entry: "1-0".into(),
            deliveries: 6,
            attempt_id: 1,
        };
        let (row, change) = apply(&JobRow::new(), &poison, 5).expect("applies");
        assert_eq!(
            (row.state, row.attempts, change),
            (PhotoState::Dead, 0, Change::StartedDead)
        );
    }

    #[test]
    fn final_states_move_only_by_redrive() {
        for state in [PhotoState::Completed, PhotoState::Failed, PhotoState::Dead] {
            let row = JobRow {
                state,
                attempts: 2,
                attempt_id: None,
                entry: Some("1-0".into()),
            };
            assert!(apply(&row, &start("1-0", 3), 5).is_none());
            assert!(apply(&row, &Event::Reclaim { attempt_id: 3 }, 5).is_none());
            let redriven = apply(
                &row,
                &Event::Redrive {
                    include_failed: true,
                },
                5,
            );
            assert_eq!(redriven.is_some(), state != PhotoState::Completed);
        }
    }

    #[test]
    fn a_cancel_takes_waiting_photos_and_a_delete_ends_a_running_attempt() {
        let (running, _) = apply(&JobRow::new(), &start("1-0", 10), 5).expect("starts");
        assert!(apply(&running, &Event::Cancel, 5).is_none());
        let (cancelled, change) = apply(&JobRow::new(), &Event::Cancel, 5).expect("cancels");
        assert_eq!(
            (cancelled.state, change),
            (PhotoState::Cancelled, Change::Cancelled)
        );
        assert!(apply(&cancelled, &start("1-0", 11), 5).is_none());

        let (deleted, change) = apply(&running, &Event::Delete, 5).expect("deletes");
        assert_eq!(
            (deleted.state, deleted.attempt_id, change),
            (PhotoState::Deleted, None, Change::Deleted)
        );
        // The attempt that was running finds its finish stale, and nothing revives it.
        let finish = Event::Finish {
            attempt_id: 10,
            end: End::Completed,
        };
        for event in [
            finish,
            Event::Delete,
            Event::Reclaim { attempt_id: 10 },
            Event::Redrive {
                include_failed: true,
            },
        ] {
            assert!(apply(&deleted, &event, 5).is_none(), "{event:?}");
        }
    }
}
