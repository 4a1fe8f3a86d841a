//! Live progress of a durable track or orchestrator, for `trigger --wait` and
//! `runs show --follow`: items done out of the total and the step running now, read from
//! the store (the run's child runs, and the `fan-out started` log line that gives an `each`
//! branch's size) a few times a second.
//!
//! On a terminal (stdout and stderr both are one) it is an `indicatif` bar on stderr,
//! redrawn in place; otherwise one plain line on stderr each time it changes, without
//! control characters, so a pipe or a CI log reads as text. stdout keeps only the command's
//! own output (the envelope, the run).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::registry::TaskDescriptor;
use crate::task::Kind;
use crate::{RunId, RunInfo, RunStatus, Runtime, StoreError};

/// How often the store is read.
const POLL: Duration = Duration::from_millis(200);

/// The message of the event an orchestrator's `each` branch logs when it starts.
const FAN_OUT: &str = "fan-out started";

/// Where a followed run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    done: u64,
    /// Unknown until every `each` branch's size is (its log line is written in batches).
    total: Option<u64>,
    /// What runs now: `item:documents:2 text_track > step:1 count_words`.
    current: Option<String>,
    status: RunStatus,
}

impl Snapshot {
    fn fraction(&self) -> String {
        match self.total {
            Some(total) => format!("{}/{total}", self.done),
            None => format!("{}/?", self.done),
        }
    }

    fn line(&self, task: &str, id: &RunId) -> String {
        let mut line = format!("{task} {id}: {} done", self.fraction());
        if self.status.is_finished() {
            line.push_str(&format!(", {}", self.status));
        } else if let Some(current) = &self.current {
            line.push_str(&format!(", running {current}"));
        }
        line
    }
}

enum Display {
    Bar(ProgressBar),
    Lines(Option<String>),
}

impl Display {
    fn new() -> Display {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Bar(bar)
        } else {
            Display::Lines(None)
        }
    }

    fn show(&mut self, task: &str, id: &RunId, snapshot: &Snapshot, err: &mut impl Write) {
        match self {
            Display::Bar(bar) => {
                bar.set_prefix(task.to_owned());
                bar.set_length(snapshot.total.unwrap_or(0));
                bar.set_position(snapshot.done);
                let what = if snapshot.status.is_finished() {
                    snapshot.status.to_string()
                } else {
                    snapshot.current.clone().unwrap_or_default()
                };
                bar.set_message(format!("{} {what}", snapshot.fraction()));
                if snapshot.status.is_finished() {
                    bar.finish();
                }
            }
            Display::Lines(last) => {
                let line = snapshot.line(task, id);
                if last.as_deref() != Some(line.as_str()) {
                    let _ = writeln!(err, "{line}").and_then(|()| err.flush());
                    *last = Some(line);
                }
            }
        }
    }
}

/// Follows `id` until it finishes, showing its progress on `err` when it is a track or an
/// orchestrator this binary knows; returns the finished run.
pub(super) async fn follow(
    runtime: &Runtime,
    id: &RunId,
    err: &mut impl Write,
) -> Result<Option<RunInfo>, StoreError> {
    let mut display: Option<Display> = None;
    let mut sizes: HashMap<String, u64> = HashMap::new();
    loop {
        let Some(run) = runtime.runs().get(id).await? else {
            return Ok(None);
        };
        let descriptor = runtime
            .registry()
            .get(&run.task)
            .filter(|d| d.kind != Kind::Task);
        if let Some(descriptor) = descriptor {
            let snapshot = snapshot(runtime, &run, descriptor, &mut sizes).await?;
            display
                .get_or_insert_with(Display::new)
                .show(&run.task, id, &snapshot, err);
        }
        if run.status.is_finished() {
            return Ok(Some(run));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn finished(run: &RunInfo) -> bool {
    run.status.is_finished()
}

/// The unit's position and task, and the step its own child runs now.
async fn describe(runtime: &Runtime, unit: &RunInfo) -> Result<String, StoreError> {
    let mut text = format!(
        "{} {}",
        unit.position.as_deref().unwrap_or("call"),
        unit.task
    );
    let inner = runtime.runs().children(&unit.id).await?;
    if let Some(step) = inner.iter().rev().find(|c| !finished(c)) {
        text.push_str(&format!(
            " > {} {}",
            step.position.as_deref().unwrap_or("call"),
            step.task
        ));
    }
    Ok(text)
}

async fn snapshot(
    runtime: &Runtime,
    run: &RunInfo,
    descriptor: &TaskDescriptor,
    sizes: &mut HashMap<String, u64>,
) -> Result<Snapshot, StoreError> {
    let children = runtime.runs().children(&run.id).await?;
    let (prefixes, total): (&[&str], Option<u64>) = match descriptor.kind {
        Kind::Track => (&["step:"], Some(descriptor.steps.len() as u64)),
        _ => {
            let missing = descriptor
                .branches
                .iter()
                .any(|b| b.each && !sizes.contains_key(b.name));
            if missing {
                for line in runtime.runs().logs(&run.id).await? {
                    if line.run_id != run.id || line.message != FAN_OUT {
                        continue;
                    }
                    if let (Some(branch), Some(items)) = (
                        line.fields["branch"].as_str(),
                        line.fields["items"].as_u64(),
                    ) {
                        sizes.insert(branch.to_owned(), items);
                    }
                }
            }
            // Unknown while an `each` branch's size is not read yet.
            let total = descriptor
                .branches
                .iter()
                .map(|b| {
                    if b.each {
                        sizes.get(b.name).copied()
                    } else {
                        Some(1)
                    }
                })
                .sum::<Option<u64>>();
            (&["branch:", "item:"], total)
        }
    };
    let units: Vec<&RunInfo> = children
        .iter()
        .filter(|c| {
            c.position
                .as_deref()
                .is_some_and(|p| prefixes.iter().any(|prefix| p.starts_with(prefix)))
        })
        .collect();
    let mut done = units.iter().filter(|c| finished(c)).count() as u64;
    let current = match units.iter().rev().find(|c| !finished(c)) {
        Some(unit) => Some(describe(runtime, unit).await?),
        None => None,
    };
    if run.status == RunStatus::Completed
        && let Some(total) = total
    {
        // Every unit completed, replayed ones included.
        done = total;
    }
    Ok(Snapshot {
        done,
        total: total.map(|total| total.max(done)),
        current,
        status: run.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_has_no_control_characters() {
        let id: RunId = "run_01M8SQYZ0V4XPKJM12YYPWCMEE".parse().unwrap();
        let running = Snapshot {
            done: 2,
            total: Some(5),
            current: Some("item:documents:2 text_track > step:1 count_words".into()),
            status: RunStatus::Executing,
        };
        assert_eq!(
            running.line("docs_orchestrator", &id),
            "docs_orchestrator run_01M8SQYZ0V4XPKJM12YYPWCMEE: 2/5 done, running \
             item:documents:2 text_track > step:1 count_words"
        );
        let over = Snapshot {
            done: 5,
            status: RunStatus::Completed,
            ..running
        };
        assert_eq!(
            over.line("docs_orchestrator", &id),
            "docs_orchestrator run_01M8SQYZ0V4XPKJM12YYPWCMEE: 5/5 done, completed"
        );
        let unknown = Snapshot {
            done: 0,
            total: None,
            current: None,
            status: RunStatus::Queued,
        };
        assert_eq!(
            unknown.line("docs_orchestrator", &id),
            "docs_orchestrator run_01M8SQYZ0V4XPKJM12YYPWCMEE: 0/? done"
        );
    }
}
