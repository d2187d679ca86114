//! `photoq import FILE`: submits a product import (JSON or CSV), follows it with a progress
//! bar until every product is processed or failed, and prints the failures as a table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::{Client, ClientArgs, ClientError};

/// How often the import is polled while it runs.
const POLL: Duration = Duration::from_millis(500);
/// Failures listed per page request.
const PAGE: usize = 200;
/// Longest message shown in the failure table.
const MESSAGE_CHARS: usize = 70;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The products: a `.csv` file (header `external_id,name,images`), anything else JSON
    /// (`{"products": [...]}`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Sent as `Idempotency-Key`: submitting again with the same key changes nothing.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Submit and print the import's id without following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// How an import ended, as the exit status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every product processed.
    Processed,
    /// Some products ended `process_error` (listed).
    WithErrors,
    /// Submitted, not followed (`--no-wait`).
    Submitted,
}

pub async fn run(args: &ImportArgs) -> Result<Finished, ClientError> {
    let client = Client::new(&args.client)?;
    let body = std::fs::read(&args.file).map_err(|e| ClientError::File(args.file.clone(), e))?;
    let accepted = match client
        .post(
            "/v1/imports",
            content_type(&args.file),
            body,
            args.idempotency_key.as_deref(),
        )
        .await
    {
        Err(ClientError::Api { body, .. }) if body.pointer("/error/problems").is_some() => {
            print_problems(&body);
            return Err(api_error(&body));
        }
        other => other?,
    };
    let id = accepted["import_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let products = accepted["products"].as_array().map_or(0, Vec::len);
    let images: usize = accepted["products"].as_array().map_or(0, |p| {
        p.iter()
            .map(|p| p["images"].as_array().map_or(0, Vec::len))
            .sum()
    });
    eprintln!("import {id}: {products} products, {images} images");
    if args.no_wait {
        println!("{id}");
        return Ok(Finished::Submitted);
    }
    let view = follow(&client, &id, images as u64).await?;
    let failed = failures(&client, &id).await?;
    println!(
        "import {id}: {}; {} products processed, {} with errors",
        view["state"].as_str().unwrap_or("?"),
        view["products"]["processed"],
        view["products"]["process_error"]
    );
    if failed.is_empty() {
        return Ok(Finished::Processed);
    }
    print_failures(&failed);
    Ok(Finished::WithErrors)
}

fn content_type(file: &Path) -> &'static str {
    let csv = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if csv {
        "text/csv"
    } else {
        "application/json"
    }
}

fn api_error(body: &Value) -> ClientError {
    let s = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    ClientError::Api {
        status: 422,
        code: s("/error/code"),
        message: s("/error/message"),
        body: body.clone(),
    }
}

/// Polls the import, showing images done out of all, until no product is processing.
async fn follow(client: &Client, id: &str, images: u64) -> Result<Value, ClientError> {
    let bar = ProgressBar::new(images);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} images {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let view = client.get(&format!("/v1/imports/{id}")).await?;
        let n = |k: &str| view["images"][k].as_u64().unwrap_or(0);
        bar.set_position(n("completed") + n("failed") + n("dead"));
        bar.set_message(format!(
            "({} failed, {} retrying or queued)",
            n("failed") + n("dead"),
            n("queued")
        ));
        if view["state"] != "processing" {
            bar.finish();
            return Ok(view);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One failed image: product, position, code, message, URL.
struct Failure {
    external_id: String,
    position: u64,
    code: String,
    message: String,
    url: String,
}

async fn failures(client: &Client, id: &str) -> Result<Vec<Failure>, ClientError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/products?import={id}&state=process_error&limit={PAGE}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = client.get(&path).await?;
        for p in page["products"].as_array().into_iter().flatten() {
            for e in p["errors"].as_array().into_iter().flatten() {
                let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
                out.push(Failure {
                    external_id: p["external_id"].as_str().unwrap_or("").to_owned(),
                    position: e["position"].as_u64().unwrap_or(0),
                    code: s("code"),
                    message: s("message"),
                    url: s("source_url"),
                });
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

fn print_failures(failed: &[Failure]) {
    let width = |f: fn(&Failure) -> usize, title: &str| {
        failed.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let wp = width(|f| f.external_id.chars().count(), "product");
    let wc = width(|f| f.code.len(), "code");
    println!(
        "{:wp$}  {:>5}  {:wc$}  {:MESSAGE_CHARS$}  url",
        "product", "image", "code", "message"
    );
    for f in failed {
        let message: String = f.message.chars().take(MESSAGE_CHARS).collect();
        println!(
            "{:wp$}  {:>5}  {:wc$}  {:MESSAGE_CHARS$}  {}",
            f.external_id, f.position, f.code, message, f.url
        );
    }
}

fn print_problems(body: &Value) {
    eprintln!(
        "refused: {}",
        body.pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    for p in body
        .pointer("/error/problems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        eprintln!(
            "  item {:>5}  {:12}  {}",
            p["index"],
            p["field"].as_str().unwrap_or(""),
            p["message"].as_str().unwrap_or("")
        );
    }
}
