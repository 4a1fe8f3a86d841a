//! Tasks that record every execution in a shared file (`FIXTURE_LOG`), for process-level
//! tests: a test that kills workers with `kill -9` counts what ran, where and how often.
//! Each execution appends one line `<run_id> <task> <label> <pid> <attempt>` with one
//! `write` (`O_APPEND`), so lines from several processes never interleave. The run id is the
//! track's for a track step.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use task_runtime::prelude::*;

/// What to record and how long to take.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub label: String,
    #[serde(default)]
    pub millis: u64,
}

/// What `record` saw.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Recorded {
    pub label: String,
    pub pid: u32,
    pub attempt: u32,
    /// The trampData the execution saw (its own, or its parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tramp: Option<Value>,
    /// The cleanup options the execution saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Value>,
}

fn log_execution(ctx: &TaskContext, label: &str) -> Result<(), TaskError> {
    let path =
        std::env::var("FIXTURE_LOG").map_err(|_| TaskError::fatal("FIXTURE_LOG is not set"))?;
    let line = format!(
        "{} {} {} {} {}\n",
        ctx.parent_run_id().unwrap_or(ctx.run_id()),
        ctx.task_id(),
        label,
        std::process::id(),
        ctx.attempt()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .or_failed()?;
    file.write_all(line.as_bytes()).or_failed()
}

/// Records its execution, then takes `millis`.
#[task(id = "record", retry(max_attempts = 5, min_delay = "10ms"))]
pub async fn record(ctx: &TaskContext, input: RecordInput) -> Result<Recorded, TaskError> {
    record_body(ctx, input).await
}

/// Like `record`, at most two at once across every worker of a store (a queue limit).
#[task(
    id = "record_limited",
    concurrency = 2,
    retry(max_attempts = 5, min_delay = "10ms")
)]
pub async fn record_limited(ctx: &TaskContext, input: RecordInput) -> Result<Recorded, TaskError> {
    record_body(ctx, input).await
}

async fn record_body(ctx: &TaskContext, input: RecordInput) -> Result<Recorded, TaskError> {
    log_execution(ctx, &input.label)?;
    tokio::time::sleep(Duration::from_millis(input.millis)).await;
    Ok(Recorded {
        label: input.label,
        pid: std::process::id(),
        attempt: ctx.attempt(),
        tramp: ctx.tramp_data().cloned(),
        cleanup: ctx.cleanup_options().cloned(),
    })
}

track! {
    /// Three recorded steps.
    pub RecordTrack("record_track", retry(max_attempts = 5, min_delay = "10ms"))(input: RecordInput) {
        Record = |input| RecordInput { label: format!("{}/1", input.label), ..input.clone() },
        Record = |_prev, original| RecordInput { label: format!("{}/2", original.label), ..original.clone() },
        Record = |_prev, original| RecordInput { label: format!("{}/3", original.label), ..original.clone() },
    }
}

/// Input of `record_fan`: a lead and `items` recorded tracks, each step taking `millis`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordFanInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub label: String,
    pub items: u32,
    #[serde(default)]
    pub millis: u64,
}

orchestrator! {
    /// A recorded lead beside `items` recorded tracks, two at a time (the CLI's progress).
    pub RecordFan("record_fan")(input: RecordFanInput) {
        lead: Record = |input| RecordInput {
            base: input.base.clone(),
            label: format!("{}/lead", input.label),
            millis: input.millis,
        },
        items: each(|input| (0..input.items).map(|i| RecordInput {
            base: input.base.clone(),
            label: format!("{}/{i}", input.label),
            millis: input.millis,
        }).collect::<Vec<_>>()) => RecordTrack, concurrency = 2,
    }
}

/// What `three_steps` does: each of its `ctx.step`s records its execution; the second
/// takes `hold_millis` on the first attempt (a window to kill the worker in) and fails on
/// `fail_second_on`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepsInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub label: String,
    #[serde(default)]
    pub hold_millis: u64,
    #[serde(default)]
    pub fail_second_on: Option<u32>,
}

/// Each step's output: the attempt it executed in.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepsOutput {
    pub first: String,
    pub second: String,
    pub third: String,
}

fn log_step(ctx: &TaskContext, step: &str, label: &str) -> Result<(), TaskError> {
    let path =
        std::env::var("FIXTURE_LOG").map_err(|_| TaskError::fatal("FIXTURE_LOG is not set"))?;
    let line = format!(
        "{} step:{step} {label} {} {}\n",
        ctx.run_id(),
        std::process::id(),
        ctx.attempt()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .or_failed()?;
    file.write_all(line.as_bytes()).or_failed()
}

/// Three durable steps (`ctx.step`), each recording its execution.
#[task(id = "three_steps", retry(max_attempts = 5, min_delay = "10ms"))]
pub async fn three_steps(ctx: &TaskContext, input: StepsInput) -> Result<StepsOutput, TaskError> {
    let label = input.label.as_str();
    let first = ctx
        .step("first", async {
            log_step(ctx, "first", label)?;
            Ok::<_, TaskError>(format!("first@{}", ctx.attempt()))
        })
        .await?;
    let second = ctx
        .step("second", async {
            log_step(ctx, "second", label)?;
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_millis(input.hold_millis)).await;
            }
            if input.fail_second_on == Some(ctx.attempt()) {
                return Err(TaskError::failed("the second step failed on purpose"));
            }
            Ok(format!("second@{}", ctx.attempt()))
        })
        .await?;
    let third = ctx
        .step("third", async {
            log_step(ctx, "third", label)?;
            Ok::<_, TaskError>(format!("third@{}", ctx.attempt()))
        })
        .await?;
    Ok(StepsOutput {
        first,
        second,
        third,
    })
}

/// Begins its steps in another order on its second attempt (a deploy that reordered them
/// while a run was being retried).
#[task(id = "reordered_steps", retry(max_attempts = 3, min_delay = "10ms"))]
pub async fn reordered_steps(ctx: &TaskContext, input: RecordInput) -> Result<Recorded, TaskError> {
    let names = if ctx.attempt() == 1 {
        ["charge", "email"]
    } else {
        ["email", "charge"]
    };
    for name in names {
        ctx.step(name, async { Ok::<_, TaskError>(name.to_owned()) })
            .await?;
    }
    if ctx.attempt() == 1 {
        return Err(TaskError::failed("first attempt fails after its steps"));
    }
    Ok(Recorded {
        label: input.label,
        pid: std::process::id(),
        attempt: ctx.attempt(),
        tramp: ctx.tramp_data().cloned(),
        cleanup: ctx.cleanup_options().cloned(),
    })
}

/// One item of a fan-out: records its execution, takes `millis`, fails (not retried) when
/// `fail`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanItemInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub label: String,
    #[serde(default)]
    pub millis: u64,
    #[serde(default)]
    pub fail: bool,
}

/// Records its execution (see [`FanItemInput`]).
#[task(id = "fan_item", retry(max_attempts = 3, min_delay = "10ms"))]
pub async fn fan_item(ctx: &TaskContext, input: FanItemInput) -> Result<Recorded, TaskError> {
    log_execution(ctx, &input.label)?;
    tokio::time::sleep(Duration::from_millis(input.millis)).await;
    if input.fail {
        return Err(TaskError::fatal(format!(
            "item {} fails on purpose",
            input.label
        )));
    }
    Ok(Recorded {
        label: input.label,
        pid: std::process::id(),
        attempt: ctx.attempt(),
        tramp: ctx.tramp_data().cloned(),
        cleanup: ctx.cleanup_options().cloned(),
    })
}

/// Input of the fan-outs: `count` items labelled `i0`, `i1`, ..., those at `fail` failing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub count: usize,
    #[serde(default)]
    pub millis: u64,
    #[serde(default)]
    pub fail: Vec<usize>,
}

impl FanInput {
    fn items(&self) -> Vec<FanItemInput> {
        (0..self.count)
            .map(|i| FanItemInput {
                base: self.base.clone(),
                label: format!("i{i}"),
                millis: self.millis,
                fail: self.fail.contains(&i),
            })
            .collect()
    }
}

orchestrator! {
    /// `count` recorded items, at most 100 unfinished at once, beside one lead item; fails
    /// fast.
    pub Fan("fan")(input: FanInput) {
        lead: FanItem = |input| FanItemInput { base: input.base.clone(), label: "lead".into(), millis: 0, fail: false },
        items: each(|input| input.items()) => FanItem, concurrency = 100,
    }
}

orchestrator! {
    /// `fan`, retried when an attempt of its own is lost (a worker killed while it held the
    /// parent: resumed, it reads its children from its journal again).
    pub FanDurable("fan_durable", retry(max_attempts = 3, min_delay = "10ms"))(input: FanInput) {
        lead: FanItem = |input| FanItemInput { base: input.base.clone(), label: "lead".into(), millis: 0, fail: false },
        items: each(|input| input.items()) => FanItem, concurrency = 100,
    }
}

orchestrator! {
    /// `fan`, settling: every item runs, each with its outcome.
    pub FanSettle("fan_settle", failure = settle)(input: FanInput) {
        lead: FanItem = |input| FanItemInput { base: input.base.clone(), label: "lead".into(), millis: 0, fail: false },
        items: each(|input| input.items()) => FanItem, concurrency = 100,
    }
}

/// Like `fan_item`, but with `fail` it fails (retryably, and with no retries of its own) on
/// its first execution only, noted in a file beside `FIXTURE_LOG`.
#[task(id = "flaky_item")]
pub async fn flaky_item(ctx: &TaskContext, input: FanItemInput) -> Result<Recorded, TaskError> {
    log_execution(ctx, &input.label)?;
    if input.fail {
        let log =
            std::env::var("FIXTURE_LOG").map_err(|_| TaskError::fatal("FIXTURE_LOG is not set"))?;
        let marker = format!("{log}.failed-{}", input.label);
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            return Err(TaskError::failed(format!(
                "item {} fails once",
                input.label
            )));
        }
    }
    Ok(Recorded {
        label: input.label,
        pid: std::process::id(),
        attempt: ctx.attempt(),
        tramp: ctx.tramp_data().cloned(),
        cleanup: ctx.cleanup_options().cloned(),
    })
}

orchestrator! {
    /// Flaky items under a parent that is retried once.
    pub FanRetried("fan_retried", retry(max_attempts = 2, min_delay = "10ms"))(input: FanInput) {
        items: each(|input| input.items()) => FlakyItem, concurrency = 100,
    }
}

/// The execution lines the fixture tasks append to `FIXTURE_LOG` (`log`), in the order
/// written: (run id, task, label, pid, attempt). A missing log is no executions. A last line
/// without its newline is being appended as the file is read (a reader can see part of a
/// write that crosses a page) and is left for the next read.
pub fn executions(log: &std::path::Path) -> Vec<(String, String, String, u32, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0].to_owned(),
                parts[1].to_owned(),
                parts[2].to_owned(),
                parts[3].parse().unwrap(),
                parts[4].parse().unwrap(),
            )
        })
        .collect()
}
