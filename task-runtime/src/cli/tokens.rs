//! `tokens create|complete|show`: the store's wait tokens (`ctx.wait_for_token`).

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use super::durable::duration;
use super::{FAILED, SUCCESS, USAGE, finish, write_json};
use crate::Runtime;
use crate::tokens::{NewToken, TokenCompletion};

#[derive(Debug, Subcommand)]
pub(super) enum TokensCommand {
    /// Create a wait token for a task to wait on; print its id.
    Create {
        /// It times out this long after now (`30m`, `1h`): a wait for it then ends with a
        /// `timeout` error, and completing it changes nothing.
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Complete a token with JSON: the run waiting for it resumes with the data. Exit 0 when
    /// completed; 1, saying why, when nothing changed (completed before, timed out, its run
    /// cancelled); 2 for an unknown token or malformed JSON.
    Complete {
        /// The token's id (`token_...`).
        id: String,
        /// The JSON the waiting task receives.
        #[arg(long, default_value = "null")]
        data: String,
    },
    /// A token's status, data and waiting run.
    Show {
        /// The token's id (`token_...`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn tokens(
    runtime: &Runtime,
    command: TokensCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let tokens = runtime.tokens();
    match command {
        TokensCommand::Create {
            timeout,
            tags,
            tenant,
        } => {
            let mut new = NewToken::new().tags(tags);
            if let Some(timeout) = timeout {
                new = new.timeout(timeout);
            }
            if let Some(tenant) = tenant {
                new = new.tenant(tenant);
            }
            match tokens.create(new).await {
                Ok(token) => finish(
                    writeln!(out, "{}", token.id).and_then(|()| out.flush()),
                    SUCCESS,
                ),
                Err(error) => {
                    let _ = writeln!(err, "error: {error}");
                    FAILED
                }
            }
        }
        TokensCommand::Complete { id, data } => {
            let data: Value = match serde_json::from_str(&data) {
                Ok(data) => data,
                Err(error) => {
                    let _ = writeln!(err, "error: --data is not JSON: {error}");
                    return USAGE;
                }
            };
            let outcome = match tokens.complete(&id, data).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    let _ = writeln!(err, "error: {error}");
                    return FAILED;
                }
            };
            let why = match outcome {
                TokenCompletion::Completed => {
                    return finish(
                        writeln!(out, "completed {id}").and_then(|()| out.flush()),
                        SUCCESS,
                    );
                }
                TokenCompletion::NotFound => {
                    let _ = writeln!(err, "error: no token '{id}'");
                    return USAGE;
                }
                TokenCompletion::AlreadyCompleted => "it was completed before",
                TokenCompletion::TimedOut => "its timeout passed",
                TokenCompletion::RunCancelled => "the run waiting for it was cancelled",
            };
            let _ = writeln!(
                err,
                "note: token '{id}' not completed, nothing changed: {why}"
            );
            finish(
                writeln!(out, "{} {id}", outcome.as_str()).and_then(|()| out.flush()),
                FAILED,
            )
        }
        TokensCommand::Show { id, json } => match tokens.get(&id).await {
            Ok(Some(token)) if json => finish(write_json(out, &token), SUCCESS),
            Ok(Some(token)) => {
                let time = |at: Option<std::time::SystemTime>| {
                    at.map_or("-".to_owned(), |at| {
                        humantime::format_rfc3339_millis(at).to_string()
                    })
                };
                let mut text = format!("{}  {}\n", token.id, token.status.as_str());
                text += &format!(
                    "  created {}  timeout {}  completed {}\n",
                    time(Some(token.created_at)),
                    time(token.timeout_at),
                    time(token.completed_at)
                );
                if let Some(tenant) = &token.tenant_id {
                    text += &format!("  tenant {tenant}\n");
                }
                if !token.tags.is_empty() {
                    text += &format!("  tags {}\n", token.tags.join(", "));
                }
                if let Some(run) = &token.run_id {
                    text += &format!("  run {run}\n");
                }
                if let Some(data) = &token.data {
                    text += &format!("  data {data}\n");
                }
                finish(write!(out, "{text}").and_then(|()| out.flush()), SUCCESS)
            }
            Ok(None) => {
                let _ = writeln!(err, "error: no token '{id}'");
                USAGE
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                FAILED
            }
        },
    }
}
