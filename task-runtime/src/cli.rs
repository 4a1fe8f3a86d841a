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
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;

use crate::catalog;
use crate::logging::{self, LogFormat};
use crate::registry::TaskDescriptor;
use crate::{InputError, Limits, Runtime, RuntimeBuilder};

/// Exit code: everything worked.
const SUCCESS: u8 = 0;
/// Exit code: the run failed or its input was refused.
const FAILED: u8 = 1;
/// Exit code: the command line could not be carried out as given.
const USAGE: u8 = 2;

/// Runs the CLI with [`std::env::args_os`] on a runtime with default settings and returns
/// the process exit code. See [`main_with`].
pub fn main() -> ExitCode {
    main_with(Runtime::builder())
}

/// Runs the CLI with [`std::env::args_os`] on the runtime `builder` describes (hooks,
/// limits, defaults, explicitly registered handles) and returns the process exit code.
///
/// Parses the arguments, installs logging on stderr ([`logging::init`]) in the format of
/// `--log-format`, builds its own multi-thread tokio runtime and the task [`Runtime`], then
/// runs the subcommand. See the [module docs](self) for exit codes.
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
    logging::init(cli.log_format.unwrap_or_default());
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
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return ExitCode::from(USAGE);
        }
    };
    ExitCode::from(tokio.block_on(execute(&runtime, cli, &mut out, &mut err)))
}

/// Runs the CLI with explicit `args` (the first is the binary name) against `runtime`.
///
/// The listing, schemas and envelope are written to `out`, messages (errors, help on a usage
/// error) to `err`; `--help` and `--version` go to `out`. Returns the exit code: 0 success,
/// 1 run failed or input refused, 2 usage error. Installs no logging, so `--log-format` is a
/// usage error here (it would have nothing to act on); the program decides its logging.
/// Never panics.
pub async fn run_with(
    runtime: &Runtime,
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
        Ok(cli) => execute(runtime, cli, out, err).await,
        Err(error) => report_parse_error(&error, out, err),
    }
}

/// List, inspect and run the registered tasks, tracks and orchestrators.
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
    /// Run a task and print its run envelope as JSON.
    Run {
        /// Id of the task, track or orchestrator (see `list`).
        id: String,
        /// The input: `-` for stdin, inline JSON (starting with `{` or `[`), or a file path.
        #[arg(long, short, value_name = "FILE|-|JSON")]
        input: OsString,
    },
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

/// Carries out a parsed command line.
async fn execute(runtime: &Runtime, cli: Cli, out: &mut impl Write, err: &mut impl Write) -> u8 {
    match cli.command {
        Command::List { json } => list(runtime, json, out, err),
        Command::Schema { id } => schema(runtime, &id, out, err),
        Command::Run { id, input } => run(runtime, &id, &input, out, err).await,
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

/// Where `run --input` takes its JSON from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InputSource {
    /// `-`
    Stdin,
    /// The argument itself, when its first non-whitespace character is `{` or `[`.
    Inline(Vec<u8>),
    /// Anything else.
    File(PathBuf),
}

impl InputSource {
    fn classify(arg: &OsStr) -> Self {
        let bytes = arg.as_encoded_bytes();
        if bytes == b"-" {
            return InputSource::Stdin;
        }
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => InputSource::Inline(bytes.to_vec()),
            _ => InputSource::File(PathBuf::from(arg)),
        }
    }

    /// Names the source in messages.
    fn describe(&self) -> String {
        match self {
            InputSource::Stdin => "stdin".to_owned(),
            InputSource::Inline(_) => "inline".to_owned(),
            InputSource::File(path) => format!("file '{}'", path.display()),
        }
    }
}

/// Why no JSON value came out of the input.
#[derive(Debug)]
enum InputFailure {
    /// The command line is at fault (unreadable file, malformed JSON): a message, exit 2.
    Usage(String),
    /// Well-formed but refused by the limits: reported as an envelope, exit 1.
    Refused(InputError),
}

/// Reads and parses the input, enforcing the runtime's limits; never buffers more than the
/// size limit (plus one byte).
async fn read_input(source: InputSource, limits: Limits) -> Result<Value, InputFailure> {
    let bytes = match &source {
        InputSource::Inline(bytes) => Ok(bytes.clone()),
        InputSource::Stdin => {
            blocking(move || read_capped(io::stdin().lock(), limits.max_input_bytes))
                .await
                .map_err(|e| InputFailure::Usage(format!("cannot read input from stdin: {e}")))?
        }
        InputSource::File(path) => {
            let path = path.clone();
            let shown = path.display().to_string();
            blocking(move || read_file(&path, limits.max_input_bytes))
                .await
                .map_err(|e| {
                    InputFailure::Usage(format!("cannot read input file '{shown}': {e}"))
                })?
        }
    };
    let bytes = bytes.map_err(InputFailure::Refused)?;
    limits.parse(&bytes).map_err(|error| match error {
        InputError::Malformed {
            line,
            column,
            message,
        } => InputFailure::Usage(format!(
            "input is not valid JSON ({}): line {line} column {column}: {message}",
            source.describe()
        )),
        refused => InputFailure::Refused(refused),
    })
}

/// Runs blocking I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

fn read_file(path: &std::path::Path, limit: usize) -> io::Result<Result<Vec<u8>, InputError>> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a directory",
        ));
    }
    let size = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
    if metadata.is_file() && size > limit {
        return Ok(Err(InputError::TooLarge { size, limit }));
    }
    read_capped(file, limit)
}

/// Reads at most `limit + 1` bytes; past the limit, counts the rest without keeping it.
fn read_capped(mut reader: impl Read, limit: usize) -> io::Result<Result<Vec<u8>, InputError>> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut reader).take(cap).read_to_end(&mut bytes)?;
    if bytes.len() <= limit {
        return Ok(Ok(bytes));
    }
    let rest = io::copy(&mut reader, &mut io::sink())?;
    let size = bytes
        .len()
        .saturating_add(usize::try_from(rest).unwrap_or(usize::MAX));
    Ok(Err(InputError::TooLarge { size, limit }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(arg: &str) -> InputSource {
        InputSource::classify(OsStr::new(arg))
    }

    #[test]
    fn input_sources_are_classified() {
        assert_eq!(source("-"), InputSource::Stdin);
        assert_eq!(
            source(r#"{"a": 1}"#),
            InputSource::Inline(br#"{"a": 1}"#.to_vec())
        );
        assert_eq!(
            source("  \n[1, 2]"),
            InputSource::Inline(b"  \n[1, 2]".to_vec())
        );
        assert_eq!(
            source("input.json"),
            InputSource::File(PathBuf::from("input.json"))
        );
        assert_eq!(source("-x"), InputSource::File(PathBuf::from("-x")));
        assert_eq!(source(""), InputSource::File(PathBuf::new()));
    }

    #[tokio::test]
    async fn malformed_json_names_source_line_and_column() {
        let failure = read_input(source("{\n  \"a\": ,\n}"), Limits::default())
            .await
            .unwrap_err();
        match failure {
            InputFailure::Usage(message) => {
                assert!(message.contains("(inline)"), "{message}");
                assert!(message.contains("line 2 column 8"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn limits_refuse_instead_of_usage_error() {
        let limits = Limits {
            max_input_bytes: 4,
            ..Limits::default()
        };
        let failure = read_input(source("[1, 2, 3]"), limits).await.unwrap_err();
        assert!(matches!(
            failure,
            InputFailure::Refused(InputError::TooLarge { size: 9, limit: 4 })
        ));
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        let failure = read_input(source(&deep), Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(
            failure,
            InputFailure::Refused(InputError::TooDeepAt { .. })
        ));
    }

    #[tokio::test]
    async fn missing_file_is_a_usage_error() {
        let failure = read_input(source("/definitely/not/here.json"), Limits::default())
            .await
            .unwrap_err();
        match failure {
            InputFailure::Usage(message) => assert!(
                message.starts_with("cannot read input file '/definitely/not/here.json': "),
                "{message}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn capped_read_counts_oversized_input() {
        let data = vec![b' '; 100];
        assert_eq!(
            read_capped(&data[..], 10).unwrap(),
            Err(InputError::TooLarge {
                size: 100,
                limit: 10
            })
        );
        assert_eq!(read_capped(&data[..], 100).unwrap(), Ok(data.clone()));
    }

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
        let runtime = Runtime::builder().build().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());

        let code = run_with(&runtime, ["bin", "--help"], &mut out, &mut err).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).contains("Usage"));

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&runtime, ["bin", "frobnicate"], &mut out, &mut err).await;
        assert_eq!(code, 2);
        assert!(out.is_empty());
        assert!(!err.is_empty());

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "schema", "no_such_task_anywhere"];
        let code = run_with(&runtime, args, &mut out, &mut err).await;
        assert_eq!(code, 2);
        let message = String::from_utf8_lossy(&err);
        assert!(
            message.contains("error: no task with id 'no_such_task_anywhere'"),
            "{message}"
        );
        assert!(message.contains("list"), "{message}");

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "run", "no_such_task_anywhere", "--input", "{}"];
        assert_eq!(run_with(&runtime, args, &mut out, &mut err).await, 2);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn log_format_is_never_silently_ignored() {
        let runtime = Runtime::builder().build().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = ["bin", "--log-format", "json", "list"];
        assert_eq!(run_with(&runtime, args, &mut out, &mut err).await, USAGE);
        assert!(out.is_empty());
        assert!(String::from_utf8_lossy(&err).contains("--log-format is set by the program"));
    }

    #[tokio::test]
    async fn list_json_is_an_array() {
        let runtime = Runtime::builder().build().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&runtime, ["bin", "list", "--json"], &mut out, &mut err).await;
        assert_eq!(code, 0);
        let listing: Value = serde_json::from_slice(&out).unwrap();
        assert!(listing.is_array());

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&runtime, ["bin", "list"], &mut out, &mut err).await;
        assert_eq!(code, 0);
        assert!(String::from_utf8_lossy(&out).starts_with("ID  "));
    }
}
