//! The commands of feature `http`: `serve` (the API and a worker) and `keys` (API keys).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::durable::stop_signal;
use super::{FAILED, SUCCESS, USAGE, finish, write_json};
use crate::Runtime;
use crate::http::{create_key, list_keys, revoke_key};

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10m or 1h 30m: {e}"))
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:3030")]
    listen: SocketAddr,
    /// Runs the worker executes at once; 0 serves the API with no worker (runs are executed
    /// by `worker` processes).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// On Ctrl-C or SIGTERM, how long running runs may take before they are handed back.
    #[arg(long, value_parser = duration, default_value = "30s")]
    grace: Duration,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create an API key for a tenant; the key is printed this once.
    Create {
        /// The tenant whose runs the key reads and triggers.
        #[arg(long)]
        tenant: String,
    },
    /// Every key (never the key itself: its id, tenant and last four characters).
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key (by id, or by its last four characters when those name one key).
    Revoke {
        /// The key's id or last four characters.
        key: String,
    },
}

pub(super) async fn serve(runtime: &Runtime, args: ServeArgs, err: &mut impl Write) -> u8 {
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            let _ = writeln!(err, "error: cannot listen on {}: {error}", args.listen);
            return USAGE;
        }
    };
    let address = listener.local_addr().unwrap_or(args.listen);
    // Before the worker starts, so that its first runs are counted (`GET /metrics`).
    #[cfg(feature = "metrics")]
    if let Err(error) = crate::metrics::Prometheus::install() {
        tracing::warn!(%error, "no metrics on /metrics");
    }
    let worker =
        (args.concurrency > 0).then(|| runtime.worker().concurrency(args.concurrency).start());
    let _ = writeln!(
        err,
        "serving the runs page on http://{address}/ and the API under /api/v1 (Ctrl-C stops)"
    );
    tracing::info!(%address, worker = worker.as_ref().map(|w| w.id()), "serving");
    let served = crate::http::serve(listener, runtime.clone(), stop_signal()).await;
    if let Some(worker) = worker {
        let report = worker.shutdown(args.grace).await;
        let _ = writeln!(
            err,
            "stopped: {} executed, {} handed back",
            report.executed, report.released
        );
    } else {
        let _ = writeln!(err, "stopped");
    }
    match served {
        Ok(()) => SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "error: serving failed: {error}");
            FAILED
        }
    }
}

pub(super) async fn keys(
    runtime: &Runtime,
    command: KeysCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let Some(store) = runtime.store_handle() else {
        let _ = writeln!(err, "error: API keys need a store (--store)");
        return USAGE;
    };
    match command {
        KeysCommand::Create { tenant } => match create_key(store, &tenant).await {
            Ok(new) => {
                let _ = writeln!(
                    err,
                    "created key {} for tenant '{}'; it is shown this once, keep it:",
                    new.info.id, new.info.tenant_id
                );
                finish(
                    writeln!(out, "{}", new.key).and_then(|()| out.flush()),
                    SUCCESS,
                )
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                USAGE
            }
        },
        KeysCommand::List { json } => match list_keys(store).await {
            Ok(keys) if json => finish(write_json(out, &keys), SUCCESS),
            Ok(keys) => {
                let mut written = writeln!(out, "ID            TENANT  LAST4  STATUS");
                for key in keys {
                    let status = if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "live"
                    };
                    written = written.and_then(|()| {
                        writeln!(
                            out,
                            "{}  {}  {}   {status}",
                            key.id, key.tenant_id, key.last_four
                        )
                    });
                }
                finish(written.and_then(|()| out.flush()), SUCCESS)
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                FAILED
            }
        },
        KeysCommand::Revoke { key } => match revoke_key(store, &key).await {
            Ok(info) => finish(
                writeln!(out, "revoked {}", info.id).and_then(|()| out.flush()),
                SUCCESS,
            ),
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                USAGE
            }
        },
    }
}
