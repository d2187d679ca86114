//! photoq: a distributed photo-processing service.
//!
//! Data flow, one module per step: `api` (HTTP) → `db` (PostgreSQL, the source of truth)
//! → `queue` (Redis Streams) → `worker` → `pipeline` (pure image work) → `storage`.
//! `state` is the job state machine every step obeys. `app` wires them together for the `serve`, `work` and `all` roles.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod dispatch;
pub mod erasure;
pub mod events;
pub mod fetch;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod render;
pub mod reprocess;
pub mod retention;
pub mod signing;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod webhooks;
pub mod worker;
