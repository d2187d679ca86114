//! The command line (clap). `main.rs` parses it and hands it to `app::run`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "photoq",
    version,
    about = "Distributed photo-processing service"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    #[arg(long, global = true, env = "PHOTOQ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API.
    Serve,
    /// Run queue workers.
    Work(WorkArgs),
    /// Run the HTTP API and workers in one process (one machine).
    All(WorkArgs),
    /// Create the database if needed and apply pending migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Ask a running photoq whether it is alive (GET /healthz), for container health
    /// checks: exit status 0 when it answers 200 within 3 seconds, 1 otherwise.
    Health {
        /// The URL asked (default: /healthz on the configured `bind` address, 127.0.0.1
        /// when it binds every address; for `photoq work`, use its `worker.metrics_bind`).
        #[arg(long)]
        url: Option<String>,
    },
    /// Erase everything of a key's owner (the right to erasure): every key of the owner,
    /// its photos, batches, imports, products, webhooks, events and idempotency records,
    /// its stored originals and variants, its queue entries. Prints what it removed. A
    /// purge that stops half-way finishes when run again.
    Purge {
        /// Any key of the owner (revoked ones too).
        #[arg(long)]
        key: Uuid,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an owner's quotas and what it has used of them; with options, set the owner's
    /// own quotas first (over `[quotas]`).
    Quota {
        #[arg(long)]
        owner: Uuid,
        /// Photos per UTC day: a number (0: no limit), or `default` for `quotas.photos_per_day`.
        #[arg(long, value_parser = parse_quota)]
        photos_per_day: Option<Option<i64>>,
        /// Bytes in storage: a number (0: no limit), or `default` for `quotas.bytes_stored`.
        #[arg(long, value_parser = parse_quota)]
        bytes_stored: Option<Option<i64>>,
    },
    /// Remove now what is past its lifetime (`[retention]`, as the background sweeper
    /// does) and the stored objects no photo records; prints what it removed.
    Sweep {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make completed photos' variants again with the variant configuration of now, after a
    /// change: one photo, a batch, or every owner's photos. Takes the photos whose variants
    /// were made with another configuration (all of them with --force); they go on the bulk
    /// lane and keep serving their variants until the new ones replace them. Prints the
    /// run; with --wait, its progress until it is finished. Run it with the workers'
    /// configuration.
    Reprocess(ReprocessArgs),
    /// Storage maintenance.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Inspect and redrive dead letters (photos out of attempts), across all keys.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Make the configured variants of local image files, without the service (no
    /// database, queue or storage): to try a configuration, or to benchmark the pipeline.
    Render(RenderArgs),
    /// Import products from a JSON or CSV file into a running photoq, follow the import
    /// with a progress bar and list the failures. Exit status 0 when every product is
    /// processed, 2 when some ended with errors, 1 when the import could not be made.
    Import(crate::client::import::ImportArgs),
    /// Upload image files (or directories of them) to a running photoq in batches, follow
    /// their processing live, and print a summary (or `--json`). Exit status 0 when every
    /// photo completed, 2 when some failed or could not be submitted, 1 on other errors.
    Submit(crate::client::submit::SubmitArgs),
}

/// A quota on the command line: a count, or `default` (the configured one).
fn parse_quota(s: &str) -> Result<Option<i64>, String> {
    if s == "default" {
        return Ok(None);
    }
    s.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| format!("{s:?}: give a count (0: no limit) or `default`"))
}

#[derive(Debug, Args)]
pub struct ReprocessArgs {
    #[command(flatten)]
    pub target: ReprocessTarget,
    /// Also photos whose variants match the configuration already.
    #[arg(long)]
    pub force: bool,
    /// Follow the run until no photo of it waits or runs; exit status 2 when some failed.
    #[arg(long)]
    pub wait: bool,
    /// Print the run as JSON (with --wait, once finished).
    #[arg(long)]
    pub json: bool,
}

/// What a reprocessing run takes: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReprocessTarget {
    /// One photo.
    #[arg(long)]
    pub photo: Option<Uuid>,
    /// Every photo of a batch (or import).
    #[arg(long)]
    pub batch: Option<Uuid>,
    /// Every photo of every owner.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Directory the variants are written to, as `{stem}_{variant}.{ext}`.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Images processed at once (default: worker.cpu_slots from the configuration, "auto":
    /// the cores this process may use).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Image files (JPEG, PNG, WebP, HEIC, AVIF).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead photos, newest last: id, batch, attempts, last error.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put dead photos back in the queue with a fresh attempt budget.
    Redrive {
        /// Only this batch.
        #[arg(long)]
        batch: Option<Uuid>,
        /// Only this photo.
        #[arg(long)]
        photo: Option<Uuid>,
        /// Also retry photos that failed, not only dead ones.
        #[arg(long)]
        include_failed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy every stored object from one backend to the other, both as the `[storage]`
    /// configuration describes them, checking each copy by reading it back (size and
    /// SHA-256). Resumable: objects already copied are left as they are, so run it again
    /// after an interruption, and once more after stopping photoq, before switching
    /// `storage.backend`. Exit status 0 when every object is at the destination.
    Migrate {
        /// The backend copied from.
        #[arg(long, value_enum)]
        from: Backend,
        /// The backend copied to.
        #[arg(long, value_enum)]
        to: Backend,
        /// Objects copied at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
        jobs: u32,
    },
}

/// A storage backend, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Local,
    S3,
}

impl From<Backend> for crate::config::StorageBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Local => crate::config::StorageBackend::Local,
            Backend::S3 => crate::config::StorageBackend::S3,
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Jobs in flight at once: read ahead, downloading, storing, being recorded (default:
    /// worker.concurrency from the configuration, "auto": 2 per CPU slot).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: Option<u32>,
    /// Images decoded, resized and encoded at once (default: worker.cpu_slots from the
    /// configuration, "auto": the cores this process may use).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cpu_slots: Option<u32>,
    /// For benchmarking the queue and bookkeeping alone: skip the image work and storage.
    /// Each job is still started, completed and acknowledged, and every state change is
    /// recorded in PostgreSQL (the photo ends `completed` with no variants).
    #[arg(long)]
    pub no_op: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key is printed alone on the last line, and shown only once.
    Create {
        /// A label for the key (who or what uses it).
        #[arg(long)]
        name: String,
        /// The owner the key is for (a key rotation: it sees that owner's photos), as
        /// `photoq keys list` shows it. Default: a new owner.
        #[arg(long)]
        owner: Option<Uuid>,
        /// What the key may do: read, upload, admin, operator (repeat, or separate by
        /// commas). Default: read, upload and admin.
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<crate::auth::Scope>,
        /// Also let the key see queue-wide aggregates (workers, lag, counts, recent error
        /// codes) in `GET /v1/operator/overview` and the dashboard's operator view: the
        /// `operator` scope.
        #[arg(long)]
        operator: bool,
    },
    /// List keys (id, owner, name, visible prefix, created, revoked, scopes).
    List,
    /// Revoke a key by id; requests with it get 401 from then on. Its owner's data stays.
    Revoke {
        /// The key's id, as shown by `photoq keys list`.
        id: Uuid,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_reprocess_takes_one_target_and_its_options() {
        let cli = Cli::try_parse_from(["photoq", "reprocess", "--all", "--force", "--wait"])
            .expect("parse");
        let Command::Reprocess(args) = cli.command else {
            panic!("not reprocess");
        };
        assert!(args.target.all && args.force && args.wait && !args.json);
        let batch = Uuid::now_v7().to_string();
        for refused in [
            vec!["photoq", "reprocess", "--wait"],
            vec!["photoq", "reprocess", "--all", "--batch", &batch],
        ] {
            assert!(Cli::try_parse_from(&refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn parses_roles() {
        let cli = Cli::try_parse_from(["photoq", "work", "--concurrency", "4"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Work(WorkArgs {
                concurrency: Some(4),
                cpu_slots: None,
                no_op: false,
            })
        ));
        assert!(Cli::try_parse_from(["photoq", "work", "--concurrency", "0"]).is_err());
        let cli = Cli::try_parse_from(["photoq", "all", "--cpu-slots", "3"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::All(WorkArgs {
                concurrency: None,
                cpu_slots: Some(3),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["photoq", "all", "--cpu-slots", "0"]).is_err());
        let cli = Cli::try_parse_from(["photoq", "keys", "create", "--name", "ci"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Keys(KeysCommand::Create { .. })
        ));
        let cli = Cli::try_parse_from([
            "photoq", "storage", "migrate", "--from", "local", "--to", "s3",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Storage(StorageCommand::Migrate {
                from: Backend::Local,
                to: Backend::S3,
                jobs: 8
            })
        ));
    }
}
