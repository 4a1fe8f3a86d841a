//! `schedules list|create|delete`: the store's cron schedules.

use std::io::Write;

use clap::Subcommand;

use super::{FAILED, SUCCESS, USAGE, finish, write_json};
use crate::Runtime;
use crate::schedules::{NewSchedule, ScheduleError};

#[derive(Debug, Subcommand)]
pub(super) enum SchedulesCommand {
    /// Every schedule, declared on tasks and created, with its next fire time.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Create a schedule: a worker triggers the task at each fire time; print its id.
    Create {
        /// The task to trigger (it takes `ScheduledInput`).
        #[arg(long)]
        task: String,
        /// Five fields: minute hour day-of-month month day-of-week (`"0 */6 * * *"`).
        #[arg(long)]
        cron: String,
        /// The IANA timezone the pattern is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The tenant its runs belong to (with `--project`).
        #[arg(long, requires = "project")]
        tenant: Option<String>,
        /// The project its runs belong to (with `--tenant`).
        #[arg(long, requires = "tenant")]
        project: Option<String>,
        /// Something of yours passed to every run (`externalId`).
        #[arg(long)]
        external_id: Option<String>,
    },
    /// Delete a created schedule (declared ones go with their `schedule = ..` in the code).
    Delete {
        /// The schedule's id (`sched_...`).
        id: String,
    },
}

fn refused(err: &mut impl Write, error: &ScheduleError) -> u8 {
    let _ = writeln!(err, "error: {error}");
    match error {
        ScheduleError::Store(_) => FAILED,
        _ => USAGE,
    }
}

pub(super) async fn schedules(
    runtime: &Runtime,
    command: SchedulesCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let schedules = runtime.schedules();
    match command {
        SchedulesCommand::List { json } => match schedules.list().await {
            Ok(list) if json => finish(write_json(out, &list), SUCCESS),
            Ok(list) => {
                let time = |at: Option<std::time::SystemTime>| {
                    at.map_or("-".to_owned(), |at| {
                        humantime::format_rfc3339_seconds(at).to_string()
                    })
                };
                let rows: Vec<[String; 5]> = list
                    .iter()
                    .map(|s| {
                        [
                            s.id.clone(),
                            s.task.clone(),
                            format!("{} ({})", s.cron, s.timezone),
                            time(s.next_fire_at),
                            time(s.last_fired_at),
                        ]
                    })
                    .collect();
                let header = ["ID", "TASK", "CRON", "NEXT", "LAST"].map(str::to_owned);
                let mut widths = header.clone().map(|h| h.len());
                for row in &rows {
                    for (width, cell) in widths.iter_mut().zip(row) {
                        *width = (*width).max(cell.len());
                    }
                }
                let mut written = Ok(());
                for row in std::iter::once(&header).chain(&rows) {
                    let line: Vec<String> = row
                        .iter()
                        .zip(widths)
                        .map(|(cell, width)| format!("{cell:width$}"))
                        .collect();
                    written =
                        written.and_then(|()| writeln!(out, "{}", line.join("  ").trim_end()));
                }
                finish(written.and_then(|()| out.flush()), SUCCESS)
            }
            Err(error) => refused(err, &error),
        },
        SchedulesCommand::Create {
            task,
            cron,
            timezone,
            tenant,
            project,
            external_id,
        } => {
            let mut new = NewSchedule::new(task, cron).timezone(timezone);
            if let (Some(tenant), Some(project)) = (tenant, project) {
                new = new.tenant(tenant, project);
            }
            if let Some(external_id) = external_id {
                new = new.external_id(external_id);
            }
            match schedules.create(new).await {
                Ok(schedule) => finish(
                    writeln!(out, "{}", schedule.id).and_then(|()| out.flush()),
                    SUCCESS,
                ),
                Err(error) => refused(err, &error),
            }
        }
        SchedulesCommand::Delete { id } => match schedules.delete(&id).await {
            Ok(true) => SUCCESS,
            Ok(false) if id.starts_with("declared:") => {
                let _ = writeln!(
                    err,
                    "error: '{id}' is declared on its task (`schedule = ..`): remove it there"
                );
                USAGE
            }
            Ok(false) => {
                let _ = writeln!(err, "error: no schedule '{id}'");
                USAGE
            }
            Err(error) => refused(err, &error),
        },
    }
}
