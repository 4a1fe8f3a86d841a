//! The durable commands: `trigger`, `worker`, `runs list|show|logs|cancel|replay`, on the
//! store `--store` names (env `TASK_STORE`, default `sqlite://.tasks/runs.db`).

use std::ffi::OsString;
use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde::Serialize;
use tracing::Instrument;

use super::input::{InputFailure, InputSource, read_input};
use super::{FAILED, SUCCESS, USAGE, finish, unknown_id, write_json};
use crate::store::{CancelOutcome, RunFilter};
use crate::{RunId, RunInfo, RunStatus, Runtime, TriggerOptions};

pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 10m or 1h 30m: {e}"))
}

fn run_id(text: &str) -> Result<RunId, String> {
    text.parse().map_err(|e: crate::InvalidRunId| e.to_string())
}

fn status(text: &str) -> Result<RunStatus, String> {
    text.parse()
}

#[derive(Debug, Args)]
pub(super) struct TriggerArgs {
    /// Id of the task, track or orchestrator (see `list`).
    id: String,
    /// The input: `-` for stdin, inline JSON (starting with `{` or `[`), or a file path.
    #[arg(long, short, value_name = "FILE|-|JSON")]
    input: OsString,
    /// Start no earlier than this much later (`10m`, `1h 30m`).
    #[arg(long, value_parser = duration)]
    delay: Option<Duration>,
    /// Expire the run if it has not started this long after the trigger.
    #[arg(long, value_parser = duration)]
    ttl: Option<Duration>,
    /// A second trigger with this key (same task and tenant) returns the first run.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// A tag for the run (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Wait for the run to finish and print its envelope (exit 1 when it failed); a track's
    /// or an orchestrator's progress is shown on stderr meanwhile.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    /// Runs executing at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long a claim holds a run without a heartbeat (after a crash, its runs are retried
    /// this much later).
    #[arg(long, value_parser = duration, default_value = "30s")]
    lease: Duration,
    /// On Ctrl-C or SIGTERM, how long running runs may take before they are handed back.
    #[arg(long, value_parser = duration, default_value = "30s")]
    grace: Duration,
}

#[derive(Debug, Subcommand)]
pub(super) enum RunsCommand {
    /// Top-level runs, newest first.
    List {
        /// Only runs in this status (delayed, queued, executing, waiting, completed, failed,
        /// cancelled, expired).
        #[arg(long, value_parser = status)]
        status: Option<RunStatus>,
        /// Only runs of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only runs of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only runs with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only runs older than this one (the last id of the previous page).
        #[arg(long, value_parser = run_id)]
        before: Option<RunId>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print a JSON array of runs (each with its id and status).
        #[arg(long)]
        json: bool,
    },
    /// One run: its status, envelope and the tree of its child runs.
    Show {
        /// The run's id.
        #[arg(value_parser = run_id)]
        id: RunId,
        /// Print JSON: the run with its `children`, recursively.
        #[arg(long)]
        json: bool,
        /// Wait for it to finish first, showing a track's or an orchestrator's progress
        /// (items done / total, the step running) on stderr.
        #[arg(long)]
        follow: bool,
    },
    /// The log lines of a run and the runs below it.
    Logs {
        /// The run's id.
        #[arg(value_parser = run_id)]
        id: RunId,
        /// Print a JSON array of lines.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: at once if it has not started, within a heartbeat if it executes.
    Cancel {
        /// The run's id.
        #[arg(value_parser = run_id)]
        id: RunId,
    },
    /// Trigger a new run with the same task, input and tags; print its id.
    Replay {
        /// The run's id.
        #[arg(value_parser = run_id)]
        id: RunId,
    },
}

pub(super) async fn trigger(
    runtime: &Runtime,
    args: TriggerArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    if runtime.registry().get(&args.id).is_none() {
        return unknown_id(runtime, &args.id, err);
    }
    let input = match read_input(InputSource::classify(&args.input), runtime.limits()).await {
        Ok(value) => value,
        Err(InputFailure::Usage(message)) => {
            let _ = writeln!(err, "error: {message}");
            return USAGE;
        }
        Err(InputFailure::Refused(error)) => {
            let envelope = runtime.refuse(&args.id, error);
            return finish(write_json(out, &envelope), FAILED);
        }
    };
    let mut options = TriggerOptions::new().tags(args.tags);
    if let Some(delay) = args.delay {
        options = options.delay(delay);
    }
    if let Some(ttl) = args.ttl {
        options = options.ttl(ttl);
    }
    if let Some(key) = args.idempotency_key {
        options = options.idempotency_key(key);
    }
    // The run stores this span's context: the worker's spans continue its trace.
    let span = tracing::info_span!("trigger", task = %args.id);
    let triggered = runtime
        .trigger_with(&args.id, input, options)
        .instrument(span)
        .await;
    let handle = match triggered {
        Ok(handle) => handle,
        // Refused (invalid input) or not stored: the envelope says why.
        Err(refused) => return finish(write_json(out, &refused.envelope), FAILED),
    };
    if !args.wait {
        return finish(
            writeln!(out, "{}", handle.run_id()).and_then(|()| out.flush()),
            SUCCESS,
        );
    }
    if let Err(error) = super::progress::follow(runtime, handle.run_id(), err).await {
        tracing::warn!(%error, "cannot show the run's progress; waiting for it");
    }
    let envelope = handle.wait().await;
    let code = if envelope.job.success {
        SUCCESS
    } else {
        FAILED
    };
    finish(write_json(out, &envelope), code)
}

pub(super) async fn worker(runtime: &Runtime, args: WorkerArgs, err: &mut impl Write) -> u8 {
    let worker = runtime
        .worker()
        .concurrency(args.concurrency)
        .lease(args.lease)
        .start();
    tracing::info!(
        worker = worker.id(),
        "worker running; Ctrl-C or SIGTERM stops it"
    );
    stop_signal().await;
    tracing::info!(
        grace_ms = u64::try_from(args.grace.as_millis()).unwrap_or(u64::MAX),
        "stopping the worker"
    );
    let report = worker.shutdown(args.grace).await;
    let _ = writeln!(
        err,
        "worker stopped: {} executed, {} handed back, {} lost leases, {} reclaimed",
        report.executed, report.released, report.lost, report.reclaimed
    );
    SUCCESS
}

/// Ctrl-C, or SIGTERM on Unix.
pub(super) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(super) async fn runs(
    runtime: &Runtime,
    command: RunsCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let runs = runtime.runs();
    let fail = |err: &mut dyn Write, error: &dyn std::fmt::Display| {
        let _ = writeln!(err, "error: {error}");
        USAGE
    };
    match command {
        RunsCommand::List {
            status,
            task,
            tenant,
            tag,
            before,
            limit,
            json,
        } => {
            let filter = RunFilter {
                status,
                task,
                tenant,
                tag,
                before,
                limit: Some(limit),
            };
            match runs.list(filter).await {
                Ok(list) if json => finish(
                    write_json(out, &list.iter().map(Summary::of).collect::<Vec<_>>()),
                    SUCCESS,
                ),
                Ok(list) => finish(write_runs_table(out, &list), SUCCESS),
                Err(error) => fail(err, &error),
            }
        }
        RunsCommand::Show { id, json, follow } => {
            if follow && let Err(error) = super::progress::follow(runtime, &id, err).await {
                return fail(err, &error);
            }
            let run = match runs.get(&id).await {
                Ok(Some(run)) => run,
                Ok(None) => return fail(err, &format!("no run {id} in the store")),
                Err(error) => return fail(err, &error),
            };
            let tree = match tree(runtime, run).await {
                Ok(tree) => tree,
                Err(error) => return fail(err, &error),
            };
            if json {
                finish(write_json(out, &tree), SUCCESS)
            } else {
                finish(write_tree(out, &tree), SUCCESS)
            }
        }
        RunsCommand::Logs { id, json } => match runs.logs(&id).await {
            Ok(lines) if json => finish(write_json(out, &lines), SUCCESS),
            Ok(lines) => {
                let written = (|| {
                    for line in &lines {
                        let fields = match &line.fields {
                            serde_json::Value::Object(map) if !map.is_empty() => {
                                let parts: Vec<String> = map
                                    .iter()
                                    .map(|(k, v)| format!("{k}={}", plain(v)))
                                    .collect();
                                format!(" {}", parts.join(" "))
                            }
                            _ => String::new(),
                        };
                        writeln!(
                            out,
                            "{} {:>5} {} {}{}",
                            humantime::format_rfc3339_millis(line.at),
                            line.level,
                            line.run_id,
                            line.message,
                            fields
                        )?;
                    }
                    out.flush()
                })();
                finish(written, SUCCESS)
            }
            Err(error) => fail(err, &error),
        },
        RunsCommand::Cancel { id } => match runs.cancel(&id).await {
            Ok(outcome) => {
                let (text, code) = match outcome {
                    CancelOutcome::Cancelled => {
                        ("cancelled (it had not started)".to_owned(), SUCCESS)
                    }
                    CancelOutcome::Requested => (
                        "cancel requested; its worker stops it within a heartbeat".to_owned(),
                        SUCCESS,
                    ),
                    CancelOutcome::AlreadyFinished(status) => {
                        (format!("already finished: {status}"), FAILED)
                    }
                    CancelOutcome::NotFound => {
                        return fail(err, &format!("no run {id} in the store"));
                    }
                };
                finish(writeln!(out, "{id}: {text}"), code)
            }
            Err(error) => fail(err, &error),
        },
        RunsCommand::Replay { id } => match runs.replay(&id).await {
            Ok(new) => finish(writeln!(out, "{new}"), SUCCESS),
            Err(refused) => finish(write_json(out, &refused.envelope), FAILED),
        },
    }
}

/// A run in `runs list --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    id: &'a RunId,
    status: RunStatus,
    task: &'a str,
    tenant_id: Option<&'a str>,
    attempts: u32,
    tags: &'a [String],
    #[serde(with = "crate::envelope::rfc3339")]
    created_at: SystemTime,
    duration_ms: Option<u64>,
    error: Option<String>,
}

impl<'a> Summary<'a> {
    fn of(run: &'a RunInfo) -> Self {
        Summary {
            id: &run.id,
            status: run.status,
            task: &run.task,
            tenant_id: run.tenant_id.as_deref(),
            attempts: run.attempts,
            tags: &run.tags,
            created_at: run.created_at,
            duration_ms: duration_ms(run),
            error: run
                .envelope
                .as_ref()
                .and_then(|e| e.job.error.clone())
                .or_else(|| run.error.as_ref().map(ToString::to_string)),
        }
    }
}

fn duration_ms(run: &RunInfo) -> Option<u64> {
    let (start, end) = (run.started_at?, run.finished_at?);
    end.duration_since(start)
        .ok()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn age(at: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(at)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn write_runs_table(out: &mut impl Write, runs: &[RunInfo]) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|run| {
            [
                run.id.to_string(),
                run.task.clone(),
                run.status.to_string(),
                run.tenant_id.clone().unwrap_or_default(),
                age(run.created_at),
                duration_ms(run)
                    .map(|ms| format!("{ms}ms"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["ID", "TASK", "STATUS", "TENANT", "AGE", "DURATION"].map(str::to_owned);
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .chain([&header])
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    out.flush()
}

/// A run with its children, for `runs show`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tree {
    #[serde(flatten)]
    run: RunInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<Tree>,
}

async fn tree(runtime: &Runtime, run: RunInfo) -> Result<Tree, crate::StoreError> {
    let mut root = Tree {
        run,
        children: Vec::new(),
    };
    // Breadth-first without recursion: a deep tree cannot exhaust the stack.
    let mut pending: Vec<Vec<usize>> = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        let node = path
            .iter()
            .fold(&mut root, |node, &i| &mut node.children[i]);
        let children = runtime.runs().children(&node.run.id).await?;
        node.children = children
            .into_iter()
            .map(|run| Tree {
                run,
                children: Vec::new(),
            })
            .collect();
        for i in 0..node.children.len() {
            let mut child = path.clone();
            child.push(i);
            pending.push(child);
        }
    }
    Ok(root)
}

fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_tree(out: &mut impl Write, tree: &Tree) -> std::io::Result<()> {
    let run = &tree.run;
    writeln!(out, "{}  {}  {}", run.id, run.task, run.status)?;
    let tenant = run.tenant_id.as_deref().unwrap_or("-");
    writeln!(
        out,
        "  tenant {tenant}  attempts {}  created {}",
        run.attempts,
        humantime::format_rfc3339_millis(run.created_at)
    )?;
    if let Some(ms) = duration_ms(run) {
        writeln!(out, "  duration {ms}ms")?;
    }
    for retried in &run.retried {
        writeln!(out, "  retried after: {retried}")?;
    }
    if let Some(error) = run.envelope.as_ref().and_then(|e| e.job.error.as_ref()) {
        writeln!(out, "  error: {error}")?;
    }
    let mut stack: Vec<(&Tree, usize)> = tree.children.iter().rev().map(|c| (c, 1)).collect();
    while let Some((node, depth)) = stack.pop() {
        let run = &node.run;
        let indent = "  ".repeat(depth);
        let took = duration_ms(run)
            .map(|ms| format!("  {ms}ms"))
            .unwrap_or_default();
        writeln!(
            out,
            "{indent}{}  {}  {}  {}{took}",
            run.position.as_deref().unwrap_or("call"),
            run.task,
            run.status,
            run.id
        )?;
        if let Some(error) = &run.error {
            writeln!(out, "{indent}  error: {error}")?;
        }
        stack.extend(node.children.iter().rev().map(|c| (c, depth + 1)));
    }
    if let Some(envelope) = &run.envelope {
        writeln!(out, "envelope:")?;
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(envelope).unwrap_or_default()
        )?;
    }
    out.flush()
}
