//! Wiring: builds the shared parts from the configuration and starts and stops the roles.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::cli::{Cli, Command, DlqCommand, KeysCommand, StorageCommand};
use crate::config::{Config, WorkerSize};
use crate::db::{self, DbPool};
use crate::dispatch;
use crate::metrics::Metrics;
use crate::queue::{Consumer, Queue};
use crate::storage::Storage;
use crate::worker::{self, WorkerContext};

/// Seconds the API gets to finish requests in flight on shutdown.
const HTTP_SHUTDOWN_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Dispatch(#[from] crate::dispatch::DispatchError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("outgoing http: {0}")]
    Fetch(String),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// A client command finished, but some of what it submitted failed (listed above).
    #[error("some of what was submitted ended with errors")]
    SomeFailed,
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("not healthy: {0}")]
    Unhealthy(String),
    #[error(transparent)]
    Purge(#[from] crate::erasure::PurgeError),
    #[error(transparent)]
    Sweep(#[from] crate::retention::SweepError),
    #[error("no key with id {0}")]
    NoSuchKey(uuid::Uuid),
    #[error(transparent)]
    Reprocess(#[from] crate::reprocess::ReprocessError),
    /// A reprocessing target that cannot be reprocessed.
    #[error("{0}")]
    Refused(String),
}

/// Which roles a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub api: bool,
    /// How much the workers run at once, if this process runs workers.
    pub workers: Option<WorkerSize>,
    /// Workers skip the image work and storage (benchmarking the queue and bookkeeping).
    pub no_op: bool,
}

/// A started photoq: its address (if it serves HTTP) and the handle to stop it.
pub struct Running {
    pub addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The event sequencer, stopped after the rest (its last pass numbers their last
    /// changes).
    sequencer: (CancellationToken, JoinHandle<()>),
}

impl Running {
    /// Waits until every role has stopped (after `shutdown` is cancelled).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let (stop, task) = self.sequencer;
        stop.cancel();
        let _ = task.await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Runs an HTTP server until `shutdown`, then lets requests in flight finish.
fn run_http(
    server: actix_web::dev::Server,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    let handle = server.handle();
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        token.cancelled().await;
        handle.stop(true).await;
    }));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    }));
}

/// Starts the requested roles on the current runtime.
pub async fn start(config: Config, roles: Roles) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let pool: DbPool = db::connect(&config.database).await?;
    // Redis may be down at start: uploads are still accepted, and the reconciler publishes
    // their jobs once it is back.
    let queue = Queue::new(&config.redis)?;
    if let Err(e) = queue.ensure_group().await {
        tracing::warn!(error = %e, "redis unreachable at start; continuing");
    }
    let storage = Storage::from_config(&config.storage)?;
    let metrics = Metrics::new()?;
    metrics.watch_pool(pool.clone())?;
    // The API checks import URLs against the same rules the workers download under.
    let fetch_rules =
        Arc::new(crate::fetch::Rules::new(&config.fetch.allow).map_err(StartError::Fetch)?);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut addr = None;

    tasks.push(tokio::spawn(dispatch::run_reconciler(
        pool.clone(),
        queue.clone(),
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));

    let sequencer_stop = CancellationToken::new();
    let sequencer = tokio::spawn(crate::events::sequencer::run(
        config.clone(),
        queue.clone(),
        sequencer_stop.clone(),
    ));

    tasks.push(tokio::spawn(crate::retention::run(
        pool.clone(),
        storage.clone(),
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));

    if let Some(size) = roles.workers {
        let consumer = Consumer::new(&config.redis, queue.clone(), consumer_name())?
            .with_bulk_share(config.worker.bulk_share);
        // Job transitions on connections of their own (planned for key lookups).
        let jobs_pool = db::jobs_pool(&config.database, size.concurrency)?;
        let mut ctx = WorkerContext::new(
            jobs_pool,
            queue.clone(),
            consumer,
            storage.clone(),
            config.clone(),
            metrics.clone(),
            size,
        )
        .map_err(StartError::Fetch)?;
        ctx.no_op = roles.no_op;
        let hooks = crate::fetch::Fetcher::new(&config.fetch, Arc::new(crate::fetch::SystemLookup))
            .map_err(StartError::Fetch)?;
        tasks.push(tokio::spawn(crate::webhooks::run(
            pool.clone(),
            hooks,
            config.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(worker::run(ctx, size, shutdown.clone())));
        // A worker-only process serves its own metrics (with the API, `/metrics` has them).
        if let (false, Some(bind)) = (roles.api, config.worker.metrics_bind) {
            let metrics = metrics.clone();
            let server =
                actix_web::HttpServer::new(move || crate::api::metrics_app(metrics.clone()))
                    .disable_signals()
                    .workers(1)
                    .shutdown_timeout(HTTP_SHUTDOWN_SECS)
                    .bind(bind)?;
            tracing::info!(%bind, "worker metrics on /metrics");
            run_http(server.run(), &shutdown, &mut tasks);
        }
    }

    if roles.api {
        let limiter =
            crate::limits::Limiter::new(queue.clone(), config.limits.clone(), metrics.clone());
        // Queue-wide gauges, sampled by one API process at a time.
        tasks.push(tokio::spawn(crate::metrics::queue::run(
            metrics.queue.clone(),
            queue.clone(),
            pool.clone(),
            shutdown.clone(),
        )));
        let hub = crate::events::Hub::start(
            pool.clone(),
            queue.clone(),
            config.events.clone(),
            shutdown.clone(),
        );
        let state = AppState {
            config: config.clone(),
            pool,
            queue,
            storage,
            metrics,
            uploads: Arc::new(tokio::sync::Semaphore::new(config.upload.max_concurrent)),
            limiter,
            fetch_rules,
            hub,
        };
        let server = actix_web::HttpServer::new(move || api::app(state.clone()))
            .disable_signals()
            .shutdown_timeout(HTTP_SHUTDOWN_SECS)
            .bind(config.bind)?;
        addr = server.addrs().first().copied();
        run_http(server.run(), &shutdown, &mut tasks);
        if let Some(a) = addr {
            tracing::info!(addr = %a, "api listening");
        }
    }

    Ok(Running {
        addr,
        shutdown,
        tasks,
        sequencer: (sequencer_stop, sequencer),
    })
}

/// A consumer name unique to this process: host, pid and a random suffix.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "photoq".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// The binary's entry point after argument parsing.
pub async fn main(cli: Cli) -> ExitCode {
    let config = Config::load(cli.config.as_deref());
    // Traces are exported by the service roles only, when configured.
    let traces = match (&config, &cli.command) {
        (Ok(c), Command::Serve | Command::Work(_) | Command::All(_)) => Some(&c.telemetry),
        _ => None,
    };
    if let Err(e) = crate::telemetry::init(traces) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::SomeFailed) => ExitCode::from(2),
        Err(e) => {
            tracing::error!(error = %e, "photoq stopped with an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cli: Cli,
    config: Result<Config, crate::config::ConfigError>,
) -> Result<(), StartError> {
    let config = config?;
    let size = |args: &crate::cli::WorkArgs| {
        let n = |n: Option<u32>| n.map(|n| n as usize);
        config.worker.size(n(args.concurrency), n(args.cpu_slots))
    };
    let roles = match cli.command {
        Command::Serve => Roles {
            api: true,
            workers: None,
            no_op: false,
        },
        Command::Work(args) => Roles {
            api: false,
            workers: Some(size(&args)),
            no_op: args.no_op,
        },
        Command::All(args) => Roles {
            api: true,
            workers: Some(size(&args)),
            no_op: args.no_op,
        },
        Command::Migrate => {
            db::create_database_if_missing(&config.database.url).await?;
            db::migrate(&config.database.url).await?;
            println!("migrations applied");
            return Ok(());
        }
        Command::Import(args) => {
            return match crate::client::import::run(&args).await? {
                crate::client::import::Finished::WithErrors => Err(StartError::SomeFailed),
                _ => Ok(()),
            }
        }
        Command::Submit(args) => {
            return match crate::client::submit::run(&args).await? {
                crate::client::submit::Finished::WithErrors => Err(StartError::SomeFailed),
                crate::client::submit::Finished::Completed => Ok(()),
            }
        }
        Command::Keys(cmd) => return keys(&config, cmd).await,
        Command::Dlq(cmd) => return dlq(&config, cmd).await,
        Command::Storage(cmd) => return storage(&config, cmd).await,
        Command::Health { url } => return health(&config, url).await,
        Command::Purge { key, json } => return purge(&config, key, json).await,
        Command::Sweep { json } => return sweep(&config, json).await,
        Command::Reprocess(args) => return reprocess(&config, args).await,
        Command::Quota {
            owner,
            photos_per_day,
            bytes_stored,
        } => return quota(&config, owner, photos_per_day, bytes_stored).await,
        Command::Render(args) => {
            let threads = match args.concurrency {
                Some(n) => n as usize,
                None => config.worker.size(None, None).cpu_slots,
            };
            let spec = crate::pipeline::Spec::from_config(&config)?;
            let summary = tokio::task::spawn_blocking(move || {
                crate::render::run(&spec, &args.files, &args.out, threads)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
            println!(
                "rendered {} files in {:.3} s: {:.2} images/s",
                summary.files,
                summary.elapsed.as_secs_f64(),
                summary.images_per_second()
            );
            return Ok(());
        }
    };
    let running = start(config, roles).await?;
    let token = running.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    running.wait().await;
    Ok(())
}

async fn keys(config: &Config, cmd: KeysCommand) -> Result<(), StartError> {
    let pool = db::connect(&config.database).await?;
    match cmd {
        KeysCommand::Create {
            name,
            owner,
            scopes,
            operator,
        } => {
            use crate::auth::{Scope, Scopes};
            let mut scopes = if scopes.is_empty() {
                Scopes::CLIENT
            } else {
                Scopes::of(scopes)
            };
            if operator {
                scopes = Scopes::of(scopes.iter().chain([Scope::Operator]));
            }
            if let Some(owner) = owner {
                let mut conn = db::conn(&pool).await?;
                if !db::keys::owner_exists(&mut conn, owner).await? {
                    return Err(StartError::Db(db::DbError::Setup(format!(
                        "no owner with id {owner} (see photoq keys list)"
                    ))));
                }
            }
            let (row, key) = crate::auth::create_key_for(&pool, owner, &name, scopes).await?;
            println!(
                "created key {} ({}) for owner {}, scopes {}",
                row.id,
                row.name,
                row.owner_id,
                row.scopes.join(",")
            );
            println!("{key}");
        }
        KeysCommand::List => {
            let mut conn = db::conn(&pool).await?;
            println!(
                "{:<36}  {:<36}  {:<11}  {:<25}  {:<25}  {:<26}  name",
                "id", "owner", "prefix", "created", "revoked", "scopes"
            );
            for k in db::keys::list(&mut conn, None).await? {
                let revoked = k
                    .revoked_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<36}  {:<36}  {:<11}  {:<25}  {:<25}  {:<26}  {}",
                    k.id,
                    k.owner_id,
                    k.key_prefix,
                    k.created_at.to_rfc3339(),
                    revoked,
                    k.scopes.join(","),
                    k.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let mut conn = db::conn(&pool).await?;
            if db::keys::revoke(&mut conn, id, None).await? {
                println!("revoked {id}");
            } else {
                return Err(StartError::Db(db::DbError::Setup(format!(
                    "no active key with id {id}"
                ))));
            }
        }
    }
    Ok(())
}

async fn purge(config: &Config, key: uuid::Uuid, json: bool) -> Result<(), StartError> {
    let pool = db::connect(&config.database).await?;
    let queue = Queue::new(&config.redis)?;
    let storage = Storage::from_config(&config.storage)?;
    let purged = crate::erasure::purge(&pool, &queue, &storage, key)
        .await?
        .ok_or(StartError::NoSuchKey(key))?;
    if json {
        println!("{}", serde_json::json!(purged));
        return Ok(());
    }
    let r = &purged.rows;
    println!(
        "purged owner {}: {} keys, {} photos, {} batches ({} imports), {} products, \
         {} webhooks ({} deliveries), {} events, {} idempotency records; {} stored objects; \
         {} queue entries",
        purged.owner,
        r.keys,
        r.photos,
        r.batches,
        r.imports,
        r.products,
        r.webhooks,
        r.webhook_deliveries,
        r.events,
        r.idempotency_records,
        purged.objects,
        purged.queue_entries
    );
    Ok(())
}

async fn reprocess(config: &Config, args: crate::cli::ReprocessArgs) -> Result<(), StartError> {
    use crate::db::reprocess::{Refusal, Target};
    let pool = db::connect(&config.database).await?;
    let queue = Queue::new(&config.redis)?;
    let target = match (args.target.photo, args.target.batch) {
        (Some(id), _) => Target::Photo(id),
        (None, Some(id)) => Target::Batch(id),
        (None, None) => Target::All,
    };
    let mut run = crate::reprocess::request(&pool, &queue, config, None, target, args.force)
        .await?
        .map_err(|refusal| match refusal {
            Refusal::NotFound => StartError::Refused(format!("no such {}", target.as_str())),
            other => StartError::Refused(other.to_string()),
        })?;
    let mut shown = None;
    loop {
        let line = format!(
            "reprocessing run {}: {} photos ({} up to date, {} in an earlier run): {} done, \
             {} failed, {} skipped, {} to go",
            run.id,
            run.total,
            run.up_to_date,
            run.busy,
            run.done,
            run.failed,
            run.skipped,
            run.queued + run.processing
        );
        if !args.json && shown.as_ref() != Some(&line) {
            println!("{line}");
            shown = Some(line);
        }
        if !args.wait || run.finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut conn = db::conn(&pool).await?;
        run = db::reprocess::progress(&mut conn, run.id, None)
            .await?
            .ok_or_else(|| StartError::Refused("the run was erased meanwhile".into()))?;
    }
    let failed = run.failed;
    if args.json {
        println!(
            "{}",
            serde_json::json!(crate::api::reprocess::ReprocessRun::from(run))
        );
    }
    if args.wait && failed > 0 {
        return Err(StartError::SomeFailed);
    }
    Ok(())
}

async fn quota(
    config: &Config,
    owner: uuid::Uuid,
    photos_per_day: Option<Option<i64>>,
    bytes_stored: Option<Option<i64>>,
) -> Result<(), StartError> {
    let pool = db::connect(&config.database).await?;
    let mut conn = db::conn(&pool).await?;
    if !db::usage::set_limits(&mut conn, owner, photos_per_day, bytes_stored).await? {
        return Err(StartError::Db(db::DbError::Setup(format!(
            "no owner with id {owner} (see photoq keys list)"
        ))));
    }
    let u = db::usage::usage(&mut conn, owner, config.quotas, chrono::Utc::now()).await?;
    let limit = |l: Option<i64>| l.map_or_else(|| "no limit".to_owned(), |n| n.to_string());
    println!(
        "owner {owner}: {} photos today (of {}; starts again at {}), {} bytes stored (of {})",
        u.photos_today,
        limit(u.limits.photos_per_day),
        u.resets_at.to_rfc3339(),
        u.bytes_stored,
        limit(u.limits.bytes_stored)
    );
    Ok(())
}

async fn sweep(config: &Config, json: bool) -> Result<(), StartError> {
    let pool = db::connect(&config.database).await?;
    let storage = Storage::from_config(&config.storage)?;
    let now = chrono::Utc::now();
    let grace = std::time::Duration::from_secs(config.retention.orphan_grace_secs);
    let mut removed = crate::retention::sweep_rows(&pool, &storage, config, now).await?;
    let orphans = crate::retention::sweep_orphans(&pool, &storage, grace, now).await?;
    removed.add(&orphans);
    if json {
        println!("{}", serde_json::json!(removed));
    } else {
        println!(
            "removed {} originals, {} photos, {} idempotency records, {} events, \
             {} webhook deliveries, {} stream tokens, {} orphaned objects ({} bytes)",
            removed.originals,
            removed.photos,
            removed.idempotency_records,
            removed.events,
            removed.webhook_deliveries,
            removed.stream_tokens,
            removed.orphans,
            removed.orphan_bytes
        );
    }
    Ok(())
}

async fn dlq(config: &Config, cmd: DlqCommand) -> Result<(), StartError> {
    let pool = db::connect(&config.database).await?;
    match cmd {
        DlqCommand::List { limit } => {
            let mut conn = db::conn(&pool).await?;
            println!("{:<36}  {:<36}  {:>8}  error", "photo", "batch", "attempts");
            for p in db::photos::list_dead(&mut conn, limit).await? {
                println!(
                    "{:<36}  {:<36}  {:>8}  {}",
                    p.id,
                    p.batch_id,
                    p.attempts,
                    p.error.unwrap_or_default()
                );
            }
        }
        DlqCommand::Redrive {
            batch,
            photo,
            include_failed,
        } => {
            let queue = Queue::new(&config.redis)?;
            let filter = db::jobs::RedriveFilter {
                owner: None,
                batch,
                photo,
                include_failed,
            };
            let ids = dispatch::redrive(&pool, &queue, &filter).await?;
            println!("redriven {}", ids.len());
        }
    }
    Ok(())
}

/// How long `photoq health` waits for an answer.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn health(config: &Config, url: Option<String>) -> Result<(), StartError> {
    let url = url.unwrap_or_else(|| {
        let mut addr = config.bind;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/healthz")
    });
    crate::fetch::install_tls_provider();
    let answer = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .build()
        .map_err(|e| StartError::Fetch(e.to_string()))?
        .get(&url)
        .send()
        .await;
    match answer {
        Ok(res) if res.status().is_success() => {
            println!("{url}: {}", res.status());
            Ok(())
        }
        Ok(res) => Err(StartError::Unhealthy(format!("{url}: {}", res.status()))),
        Err(e) => Err(StartError::Unhealthy(format!("{url}: {e}"))),
    }
}

async fn storage(config: &Config, cmd: StorageCommand) -> Result<(), StartError> {
    match cmd {
        StorageCommand::Migrate { from, to, jobs } => {
            if from == to {
                return Err(crate::storage::StorageError::Backend(
                    "--from and --to name the same backend".into(),
                )
                .into());
            }
            if config.storage.bucket.is_empty() {
                return Err(crate::config::ConfigError::Invalid(
                    "storage.bucket (PHOTOQ_STORAGE_BUCKET) names the S3 side".into(),
                )
                .into());
            }
            let source = Storage::with_backend(&config.storage, from.into())?;
            let target = Storage::with_backend(&config.storage, to.into())?;
            let started = std::time::Instant::now();
            let mut shown = std::time::Instant::now();
            let report = crate::storage::migrate::migrate(&source, &target, jobs as usize, |r| {
                if shown.elapsed() >= std::time::Duration::from_secs(2) {
                    shown = std::time::Instant::now();
                    eprintln!(
                        "{} objects: {} copied, {} already there, {} failed",
                        r.seen(),
                        r.copied,
                        r.present,
                        r.failed.len()
                    );
                }
            })
            .await?;
            for (key, why) in &report.failed {
                println!("failed {key}: {why}");
            }
            println!(
                "{} objects in {:.1} s: {} copied ({} bytes), {} already there, {} failed",
                report.seen(),
                started.elapsed().as_secs_f64(),
                report.copied,
                report.copied_bytes,
                report.present,
                report.failed.len()
            );
            if !report.failed.is_empty() {
                return Err(StartError::SomeFailed);
            }
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
