//! The command line any binary can mount (feature `cli`, on by default).
//!
//! A binary that links its tasks only needs:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     task_runtime::cli::main()
//! }
//! ```
//!
//! Subcommands:
//!
//! - `list [--json]`: every registered task, track and orchestrator, sorted by id, as an
//!   aligned `ID  KIND  DESCRIPTION` table or (`--json`) a JSON array.
//! - `schema <id>`: the task's input and output JSON Schemas.
//! - `run <id> --input <FILE | - | JSON>`: runs the task and prints its run envelope. The input
//!   is read from stdin for `-`, taken as inline JSON when it starts with `{` or `[`, and read
//!   from a file otherwise.
//!
//! The global option `--log-format pretty|json` (default `pretty`) picks the format of the
//! logs, which go to stderr. Only the listing, the schemas and the envelope go to stdout, so
//! `run ... | jq` always sees pure JSON.
//!
//! Exit codes:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (`--help` and `--version` included) |
//! | 1 | the run failed, or its input was refused (too large, too deep); the envelope on stdout says why |
//! | 2 | usage error: bad arguments, unknown id, unreadable input file, malformed JSON |

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use serde::Serialize;

mod durable;
#[cfg(feature = "http")]
mod http;
mod input;
mod progress;
mod schedules;
mod tokens;

use input::{InputFailure, InputSource, read_input};

use crate::catalog;
use crate::logging::{self, LogFormat};
use crate::registry::TaskDescriptor;
use crate::{Runtime, RuntimeBuilder, Store};

/// Exit code: everything worked.
const SUCCESS: u8 = 0;
/// Exit code: the run failed or its input was refused.
const FAILED: u8 = 1;
/// Exit code: the command line could not be carried out as given.
const USAGE: u8 = 2;

/// The store `--store` names when neither it nor `TASK_STORE` is given.
pub const DEFAULT_STORE: &str = "sqlite://.tasks/runs.db";

/// Runs the CLI with [`std::env::args_os`] on a runtime with default settings and returns
/// the process exit code. See [`main_with`].
pub fn main() -> ExitCode {
    main_with(Runtime::builder())
}

/// Runs the CLI with [`std::env::args_os`] on the runtime `builder` describes (hooks,
/// limits, defaults, explicitly registered handles) and returns the process exit code.
///
/// Parses the arguments, installs logging on stderr ([`logging::init`]) in the format of
/// `--log-format` (and, for the commands that open the store, the store's log layer, so
/// runs' events are kept for `runs logs`), builds its own multi-thread tokio runtime and
/// the task [`Runtime`], then runs the subcommand. See the [module docs](self) for exit
/// codes.
///
/// ```no_run
/// use task_runtime::{HookEvent, Runtime};
///
/// async fn page_someone(event: &HookEvent) {
///     tracing::error!(run_id = %event.run_id, "run failed");
/// }
///
/// fn main() -> std::process::ExitCode {
///     task_runtime::cli::main_with(Runtime::builder().max_concurrency(8).on_failure(page_someone))
/// }
/// ```
pub fn main_with(builder: RuntimeBuilder) -> ExitCode {
    // Unlocked handles: log lines from worker threads write to stderr while a run is going.
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => return ExitCode::from(report_parse_error(&error, &mut out, &mut err)),
    };
    // Spans go to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set (feature `otel`).
    let telemetry = crate::telemetry::Exporter::from_env();
    let logs = logging::init_with_store(cli.log_format.unwrap_or_default(), &telemetry);
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(tokio) => tokio,
        Err(error) => {
            let _ = writeln!(err, "error: cannot start the tokio runtime: {error}");
            return ExitCode::from(USAGE);
        }
    };
    let code = tokio.block_on(execute(builder, cli, &mut out, &mut err, logs));
    // The command is over (a worker or server stopped gracefully): export the last spans.
    telemetry.shutdown();
    ExitCode::from(code)
}

/// Runs the CLI with explicit `args` (the first is the binary name) on the runtime
/// `builder` describes.
///
/// The listing, schemas, envelopes and run listings are written to `out`, messages (errors,
/// help on a usage error) to `err`; `--help` and `--version` go to `out`. Returns the exit
/// code (see the [module docs](self)). Installs no logging, so `--log-format` is a usage
/// error here (it would have nothing to act on); the program decides its logging. Never
/// panics.
pub async fn run_with(
    builder: RuntimeBuilder,
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    match Cli::try_parse_from(args) {
        Ok(cli) if cli.log_format.is_some() => {
            let _ = writeln!(
                err,
                "error: --log-format is set by the program embedding this command line \
                 (it installs no logging); use cli::main or cli::main_with to have it honoured"
            );
            USAGE
        }
        Ok(cli) => execute(builder, cli, out, err, None).await,
        Err(error) => report_parse_error(&error, out, err),
    }
}

/// List, inspect and run the registered tasks, tracks and orchestrators; trigger durable
/// runs, execute them with a worker, and look at them afterwards.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Cli {
    /// Format of the logs written to stderr [default: pretty].
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        value_parser = PossibleValuesParser::new(["pretty", "json"])
            .try_map(|s| s.parse::<LogFormat>()),
    )]
    log_format: Option<LogFormat>,

    /// Where durable runs are kept (`trigger`, `worker`, `runs`).
    #[arg(long, global = true, value_name = "URL", env = "TASK_STORE", default_value = DEFAULT_STORE)]
    store: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every registered task, track and orchestrator, sorted by id.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the input and output JSON Schemas of a task.
    Schema {
        /// Id of the task, track or orchestrator (see `list`).
        id: String,
    },
    /// Run a task in this process and print its run envelope as JSON.
    Run {
        /// Id of the task, track or orchestrator (see `list`).
        id: String,
        /// The input: `-` for stdin, inline JSON (starting with `{` or `[`), or a file path.
        #[arg(long, short, value_name = "FILE|-|JSON")]
        input: OsString,
    },
    /// Commit a run to the store for a worker to execute; print its id (or, with `--wait`,
    /// its envelope once it finished).
    Trigger(durable::TriggerArgs),
    /// Claim and execute the store's runs until Ctrl-C or SIGTERM (then finish, or hand
    /// back, what runs).
    Worker(durable::WorkerArgs),
    /// Look at, cancel or replay the store's runs.
    #[command(subcommand)]
    Runs(durable::RunsCommand),
    /// List, create or delete the store's cron schedules.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Create, complete or show the store's wait tokens (`ctx.wait_for_token`).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Serve the HTTP API and run a worker on the store until Ctrl-C or SIGTERM.
    #[cfg(feature = "http")]
    Serve(http::ServeArgs),
    /// Create, list and revoke the HTTP API's keys.
    #[cfg(feature = "http")]
    #[command(subcommand)]
    Keys(http::KeysCommand),
}

/// Prints clap's message (help and version to `out`, errors to `err`) and returns its code.
fn report_parse_error(error: &clap::Error, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let written = if error.use_stderr() {
        write!(err, "{error}")
    } else {
        write!(out, "{error}")
    };
    match (error.exit_code(), written) {
        (0, Err(_)) => FAILED,
        (0, Ok(())) => SUCCESS,
        _ => USAGE,
    }
}

/// Builds the runtime a command needs and carries the command out.
async fn execute(
    builder: RuntimeBuilder,
    cli: Cli,
    out: &mut impl Write,
    err: &mut impl Write,
    logs: Option<logging::StoreSlot>,
) -> u8 {
    let Cli { store, command, .. } = cli;
    let needs_store = match &command {
        Command::Trigger(_)
        | Command::Worker(_)
        | Command::Runs(_)
        | Command::Schedules(_)
        | Command::Tokens(_) => true,
        #[cfg(feature = "http")]
        Command::Serve(_) | Command::Keys(_) => true,
        Command::List { .. } | Command::Schema { .. } | Command::Run { .. } => false,
    };
    let builder = if needs_store {
        match Store::connect(&store).await {
            Ok(store) => {
                if let Some(logs) = &logs {
                    logs.attach(&store);
                }
                builder.store(store)
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                return USAGE;
            }
        }
    } else {
        builder
    };
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return USAGE;
        }
    };
    match command {
        Command::List { json } => list(&runtime, json, out, err),
        Command::Schema { id } => schema(&runtime, &id, out, err),
        Command::Run { id, input } => run(&runtime, &id, &input, out, err).await,
        Command::Trigger(args) => durable::trigger(&runtime, args, out, err).await,
        Command::Worker(args) => durable::worker(&runtime, args, err).await,
        Command::Runs(command) => durable::runs(&runtime, command, out, err).await,
        Command::Schedules(command) => schedules::schedules(&runtime, command, out, err).await,
        Command::Tokens(command) => tokens::tokens(&runtime, command, out, err).await,
        #[cfg(feature = "http")]
        Command::Serve(args) => http::serve(&runtime, args, err).await,
        #[cfg(feature = "http")]
        Command::Keys(command) => http::keys(&runtime, command, out, err).await,
    }
}

fn list(runtime: &Runtime, json: bool, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let entries = runtime.registry().entries();
    if entries.is_empty() {
        let _ = writeln!(
            err,
            "note: no tasks are registered; a crate that nothing in the binary references is \
             not linked (reference it with `use my_tasks as _;`)"
        );
    }
    let written = if json {
        write_json(out, &catalog::list(&entries))
    } else {
        write_table(out, &entries)
    };
    finish(written, SUCCESS)
}

fn write_table(out: &mut impl Write, entries: &[&TaskDescriptor]) -> io::Result<()> {
    let rows: Vec<[&str; 3]> = entries
        .iter()
        .map(|d| [d.id, d.kind.as_str(), first_line(d.description)])
        .collect();
    let header = ["ID", "KIND", "DESCRIPTION"];
    let width = |column: usize| {
        rows.iter()
            .map(|row| row[column].chars().count())
            .chain([header[column].len()])
            .max()
            .unwrap_or(0)
    };
    let (id_width, kind_width) = (width(0), width(1));
    for [id, kind, description] in std::iter::once(header).chain(rows) {
        let line = format!("{id:<id_width$}  {kind:<kind_width$}  {description}");
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The first non-blank line of a doc comment, trimmed.
fn first_line(description: &str) -> &str {
    description
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
}

fn schema(runtime: &Runtime, id: &str, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let Some(descriptor) = runtime.registry().get(id) else {
        return unknown_id(runtime, id, err);
    };
    finish(write_json(out, &catalog::schema(descriptor)), SUCCESS)
}

async fn run(
    runtime: &Runtime,
    id: &str,
    input: &OsStr,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    if runtime.registry().get(id).is_none() {
        return unknown_id(runtime, id, err);
    }
    let value = match read_input(InputSource::classify(input), runtime.limits()).await {
        Ok(value) => value,
        Err(InputFailure::Usage(message)) => {
            let _ = writeln!(err, "error: {message}");
            return USAGE;
        }
        Err(InputFailure::Refused(error)) => {
            let envelope = runtime.refuse(id, error);
            return finish(write_json(out, &envelope), FAILED);
        }
    };
    let envelope = runtime.trigger_and_wait(id, value).await;
    let code = if envelope.job.success {
        SUCCESS
    } else {
        FAILED
    };
    finish(write_json(out, &envelope), code)
}

/// Reports an unknown id with suggestions; returns the usage exit code.
fn unknown_id(runtime: &Runtime, id: &str, err: &mut impl Write) -> u8 {
    let mut message = format!("error: no task with id '{id}'\n");
    let suggestions = runtime.registry().suggest(id);
    if !suggestions.is_empty() {
        message.push_str(&format!("did you mean: {}?\n", suggestions.join(", ")));
    }
    message.push_str("hint: the `list` subcommand shows every registered id\n");
    let _ = err.write_all(message.as_bytes());
    USAGE
}

/// Pretty JSON and a newline.
fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    writeln!(out, "{text}")?;
    out.flush()
}

/// `code` when the output was written, [`FAILED`] when it could not be (closed pipe, full
/// disk): the caller did not get what it asked for.
fn finish(written: io::Result<()>, code: u8) -> u8 {
    match written {
        Ok(()) => code,
        Err(_) => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_is_global() {
        let cli = Cli::try_parse_from(["bin", "list", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        assert!(matches!(cli.command, Command::List { json: false }));

        let cli = Cli::try_parse_from(["bin", "--log-format", "json", "schema", "x"]).unwrap();
        assert_eq!(cli.log_format, Some(LogFormat::Json));

        let cli = Cli::try_parse_from(["bin", "run", "x", "--input", "-"]).unwrap();
        assert_eq!(cli.log_format, None);

        let error = Cli::try_parse_from(["bin", "list", "--log-format", "yaml"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn table_uses_first_doc_line() {
        assert_eq!(first_line("\n  Says hello.\n\n More."), "Says hello.");
        assert_eq!(first_line(""), "");
    }

    #[tokio::test]
    async fn usage_errors_exit_2_and_help_exits_0() {
        let runtime = Runtime::builder();
        let (mut out, mut err) = (Vec::new(), Vec::new());

        let code = run_with(runtime.clone(), ["bin", "--help"], &mut out, &mut err).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).contains("Usage"));

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(runtime.clone(), ["bin", "frobnicate"], &mut out, &mut err).await;
        assert_eq!(code, 2);
        assert!(out.is_empty());
        assert!(!err.is_empty());

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "schema", "no_such_task_anywhere"];
        let code = run_with(runtime.clone(), args, &mut out, &mut err).await;
        assert_eq!(code, 2);
        let message = String::from_utf8_lossy(&err);
        assert!(
            message.contains("error: no task with id 'no_such_task_anywhere'"),
            "{message}"
        );
        assert!(message.contains("list"), "{message}");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "run", "no_such_task_anywhere", "--input", "{}"];
        assert_eq!(run_with(runtime.clone(), args, &mut out, &mut err).await, 2);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn log_format_is_never_silently_ignored() {
        let runtime = Runtime::builder();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "--log-format", "json", "list"];
        assert_eq!(
            run_with(runtime.clone(), args, &mut out, &mut err).await,
            USAGE
        );
        assert!(out.is_empty());
        assert!(String::from_utf8_lossy(&err).contains("--log-format is set by the program"));
    }

    #[tokio::test]
    async fn list_json_is_an_array() {
        let runtime = Runtime::builder();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(
            runtime.clone(),
            ["bin", "list", "--json"],
            &mut out,
            &mut err,
        )
        .await;
        assert_eq!(code, 0);
        let listing: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(listing.is_array());

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(runtime.clone(), ["bin", "list"], &mut out, &mut err).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).starts_with("ID  "));
    }
}
