//! Fixture tasks, tracks and orchestrators for the workspace integration tests, and a
//! `Probe` that lets a test observe what ran, when, and how many at once.

use std::time::Duration;

use serde_json::Value;
use task_runtime::prelude::*;

/// Waits, polling every 20 ms, until `done` holds; fails the test naming `what` after
/// `limit` (a bound on a hang, not a measure of speed).
pub async fn eventually(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stores' contract for a settled envelope: kept without a second copy of its input
/// (the run's row holds it, with the `trampData` read from it) and read back whole; an
/// envelope stored whole (by an earlier binary) reads as it was. `column(id, write)` writes
/// `write` in place of the run's stored envelope text when given one, then returns that text.
pub async fn an_envelope_is_stored_once_beside_its_input(
    rt: &Runtime,
    mut column: impl AsyncFnMut(&task_runtime::RunId, Option<&str>) -> String,
) {
    let input = serde_json::json!({
        "tenantId": "acme", "projectId": "docs", "value": 21,
        "trampData": { "requestId": "req-41d8", "blob": "x".repeat(400) },
    });
    let worker = rt.worker().concurrency(2).start();
    let handle = rt.trigger("double", input.clone()).await.unwrap();
    let id = handle.run_id().clone();
    let envelope = handle.wait().await;
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    worker.shutdown(Duration::from_secs(5)).await;

    let stored = column(&id, None).await;
    assert!(
        !stored.contains("req-41d8"),
        "the input is stored once: {stored}"
    );
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["job"]["input"], Value::Null);
    assert_eq!(stored["results"], serde_json::json!({ "value": 42 }));

    // Read back whole: the input and its trampData are where the caller saw them.
    let read = rt.runs().get(&id).await.unwrap().unwrap().envelope.unwrap();
    assert_eq!(read, envelope);
    assert_eq!(read.job.input, input);
    assert_eq!(read.tramp_data(), Some(&input["trampData"]));
    assert_eq!(rt.runs().wait(&id).await.unwrap().unwrap(), envelope);

    // An envelope stored whole reads as it was.
    let whole = serde_json::to_string(&envelope).unwrap();
    column(&id, Some(&whole)).await;
    let again = rt.runs().get(&id).await.unwrap().unwrap().envelope.unwrap();
    assert_eq!(again, envelope);
}

pub mod api;
pub mod pg;
pub mod probe;
pub mod procs;
pub mod recorder;
pub mod scheduled;
pub mod waits;

use probe::Probe;

/// Input of the numeric fixtures.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NumberInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(range(min = 0, max = 1000))]
    pub value: i64,
}

/// Output of the numeric fixtures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NumberOutput {
    pub value: i64,
}

/// Doubles a number.
#[task(id = "double")]
pub async fn double(_ctx: &TaskContext, input: NumberInput) -> Result<NumberOutput, TaskError> {
    Ok(NumberOutput {
        value: input.value * 2,
    })
}

/// Lets a mapper-less step feed `double` with `double`'s output.
impl From<NumberOutput> for NumberInput {
    fn from(out: NumberOutput) -> Self {
        NumberInput {
            base: BaseInput::new("t", "p"),
            value: out.value,
        }
    }
}

/// A text to measure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TextInput {
    #[serde(flatten)]
    pub base: BaseInput,
    #[schemars(length(min = 1))]
    pub text: String,
}

/// Output of `length`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TextLength {
    pub chars: usize,
}

/// Counts characters.
#[task(id = "length")]
pub async fn length(_ctx: &TaskContext, input: TextInput) -> Result<TextLength, TaskError> {
    Ok(TextLength {
        chars: input.text.chars().count(),
    })
}

track! {
    /// Doubles twice.
    pub QuadrupleTrack("quadruple") {
        Double,
        Double,
    }
}

track! {
    /// Measures a text, doubles the length, then quadruples it with a nested track.
    pub MeasureTrack("measure") {
        Length,
        Double = |prev: TextLength, original: &TextInput| NumberInput {
            base: original.base.clone(),
            value: prev.chars as i64,
        },
        QuadrupleTrack,
    }
}

/// Input of `read_number`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub path: String,
}

/// The user's own error type, defined with thiserror.
#[derive(Debug, thiserror::Error)]
pub enum ReadNumberError {
    #[error("cannot read '{path}'")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' does not hold a number")]
    NotANumber {
        path: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Reads a number from a file.
#[task(id = "read_number")]
pub async fn read_number(
    _ctx: &TaskContext,
    input: PathInput,
) -> Result<NumberOutput, ReadNumberError> {
    let text = tokio::fs::read_to_string(&input.path)
        .await
        .map_err(|source| ReadNumberError::Read {
            path: input.path.clone(),
            source,
        })?;
    let value = text
        .trim()
        .parse()
        .map_err(|source| ReadNumberError::NotANumber {
            path: input.path.clone(),
            source,
        })?;
    Ok(NumberOutput { value })
}

/// Input of the `work` family: what to do, observed through a probe.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkInput {
    #[serde(flatten)]
    pub base: BaseInput,
    /// Name of the [`Probe`] that records what happens.
    pub probe: String,
    /// A label for the probe's events.
    #[serde(default)]
    pub label: String,
    /// How long the work takes (virtual time under a paused clock).
    #[serde(default)]
    pub millis: u64,
    /// Attempts up to this one fail.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Failures are fatal.
    #[serde(default)]
    pub fatal: bool,
    /// Attempts up to this one panic.
    #[serde(default)]
    pub panic_attempts: u32,
}

impl WorkInput {
    /// Work reported to `probe`, taking `millis`.
    pub fn new(probe: &Probe, label: &str, millis: u64) -> Self {
        WorkInput {
            base: BaseInput::new("tenant", "project"),
            probe: probe.name().to_owned(),
            label: label.to_owned(),
            millis,
            ..WorkInput::default()
        }
    }
}

/// Output of the `work` family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkOutput {
    pub label: String,
    pub attempt: u32,
    pub tenant_id: Option<String>,
    pub tramp_data: Option<Value>,
}

/// Lets mapper-less orchestrator branches take the orchestrator's `WorkInput` as is.
async fn work_body(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    let probe = Probe::get(&input.probe);
    let label = format!("{}:{}", ctx.task_id(), input.label);
    probe.record(format!("start {label} #{}", ctx.attempt()));
    let cleanup_probe = probe.clone();
    let cleanup_label = label.clone();
    ctx.defer(async move { cleanup_probe.record(format!("cleanup {cleanup_label}")) });
    let _running = probe.enter();
    if input.millis > 0 {
        tokio::time::sleep(Duration::from_millis(input.millis)).await;
    }
    if ctx.attempt() <= input.panic_attempts {
        panic!("{label} panicked on attempt {}", ctx.attempt());
    }
    if ctx.attempt() <= input.fail_attempts {
        let message = format!("{label} failed on attempt {}", ctx.attempt());
        probe.record(format!("fail {label} #{}", ctx.attempt()));
        return Err(if input.fatal {
            TaskError::fatal(message)
        } else {
            TaskError::failed(message)
        });
    }
    probe.record(format!("finish {label}"));
    Ok(WorkOutput {
        label: input.label,
        attempt: ctx.attempt(),
        tenant_id: ctx.tenant_id().map(str::to_owned),
        tramp_data: ctx.tramp_data().cloned(),
    })
}

/// Does the work described by its input, once.
#[task(id = "work")]
pub async fn work(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

/// Like `work`, with three attempts and exponential backoff 100ms, 200ms.
#[task(
    id = "flaky",
    retry(max_attempts = 3, factor = 2.0, min_delay = "100ms", max_delay = "1s")
)]
pub async fn flaky(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

/// Like `work`, with a 1 s timeout per attempt and two attempts.
#[task(
    id = "slow",
    timeout = "1s",
    retry(max_attempts = 2, min_delay = "10ms")
)]
pub async fn slow(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

/// Like `work`, but waits for its probe's gate first (`Probe::open_gate`): a run a test
/// can hold `executing` for as long as it needs.
#[task(id = "gated")]
pub async fn gated(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    Probe::get(&input.probe).gate().await;
    work_body(ctx, input).await
}

/// Like `work`, at most two at once.
#[task(id = "limited", concurrency = 2)]
pub async fn limited(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

track! {
    /// Three rounds of work, each fed the track's input.
    pub WorkTrack("work_track") {
        Work,
        Work = |_prev: WorkOutput, original: &WorkInput| WorkInput { label: format!("{}-2", original.label), ..original.clone() },
        Work = |_prev, original| WorkInput { label: format!("{}-3", original.label), ..original.clone() },
    }
}

/// Input of the batch orchestrators.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub lead: WorkInput,
    pub items: Vec<WorkInput>,
}

orchestrator! {
    /// Two copies of the same work, side by side.
    pub Pair("pair")(input: WorkInput) {
        left: Work,
        right: Work,
    }
}

orchestrator! {
    /// A lead task beside a fan-out over items, two at a time; fails fast.
    pub Batch("batch")(input: BatchInput) {
        lead: Work = |input| input.lead.clone(),
        items: each(|input| input.items.clone()) => Work, concurrency = 2,
    }
}

orchestrator! {
    /// `batch`, settling every branch instead of failing fast.
    pub BatchSettle("batch_settle", failure = settle)(input: BatchInput) {
        lead: Work = |input| input.lead.clone(),
        items: each(input.items.clone()) => Work, concurrency = 2,
    }
}

orchestrator! {
    /// Tracks fanned out under an orchestrator, for nesting under limits.
    pub TrackFan("track_fan")(input: BatchInput) {
        tracks: each(|input| input.items.clone()) => WorkTrack,
        nested: Batch = |input| input.clone(),
    }
}

/// Input of `rendezvous`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RendezvousInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub probe: String,
}

/// Output of `rendezvous`: whether the other party arrived while this one held its thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Met {
    pub met: bool,
}

/// Arrives, then holds its thread without awaiting until a second `rendezvous` arrives (or
/// 10 s pass): only true parallelism lets two of them meet.
#[task(id = "rendezvous")]
pub async fn rendezvous(_ctx: &TaskContext, input: RendezvousInput) -> Result<Met, TaskError> {
    let probe = Probe::get(&input.probe);
    let _here = probe.enter();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe.max_running() < 2 && std::time::Instant::now() < deadline {
        std::hint::spin_loop();
    }
    Ok(Met {
        met: probe.max_running() >= 2,
    })
}

orchestrator! {
    /// Two rendezvous branches: they meet only if they run on two threads at once.
    pub Meet("meet")(input: RendezvousInput) {
        a: Rendezvous,
        b: Rendezvous,
    }
}

/// Hook of `hooked`: notes the success, then fails (which must change nothing).
async fn note_success(event: &task_runtime::HookEvent) -> Result<(), String> {
    let probe = Probe::get(event.input["probe"].as_str().unwrap_or_default());
    probe.record(format!(
        "hook success {} #{}",
        event.task_name, event.attempts
    ));
    Err("this hook always fails".to_owned())
}

/// Hook of `hooked`: notes the failure.
async fn note_failure(event: &task_runtime::HookEvent) {
    let probe = Probe::get(event.input["probe"].as_str().unwrap_or_default());
    let kind = event.error.as_ref().map_or("none", |e| e.kind_name());
    probe.record(format!("hook failure {} {kind}", event.task_name));
}

/// Like `work`, with two attempts and both hooks.
#[task(
    id = "hooked",
    retry(max_attempts = 2, min_delay = "10ms"),
    on_success = note_success,
    on_failure = note_failure
)]
pub async fn hooked(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

track! {
    /// `hooked` twice, with a failure hook of its own.
    pub HookedTrack("hooked_track", on_failure = note_failure) {
        Hooked,
        Hooked = |_prev, original: &WorkInput| original.clone(),
    }
}

orchestrator! {
    /// `pair` under a 1 s timeout.
    pub TimedPair("timed_pair", timeout = "1s")(input: WorkInput) {
        left: Work,
        right: Work,
    }
}

orchestrator! {
    /// `pair` under a 1 s timeout, three attempts.
    pub RetriedPair("retried_pair", timeout = "1s", retry(max_attempts = 3, min_delay = "10ms"))(input: WorkInput) {
        left: Work,
        right: Work,
    }
}

orchestrator! {
    /// Starts a long branch, then its second branch's mapper panics when the label says so.
    pub PanickyPair("panicky_pair")(input: WorkInput) {
        left: Work,
        right: Work = |input| {
            if input.label == "panic" {
                panic!("mapper panicked");
            }
            input.clone()
        },
    }
}

track! {
    /// An orchestrator step under a 1 s track timeout.
    pub TimedTrack("timed_track", timeout = "1s") {
        Pair,
    }
}

/// Input of the fan-out leaves: work to run `children` times as child runs, all at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanInput {
    #[serde(flatten)]
    pub work: WorkInput,
    pub children: u32,
}

/// A leaf task running `children` copies of `work` as child runs at once (`ctx.run`).
#[task(id = "fan_leaf")]
pub async fn fan_leaf(ctx: &TaskContext, input: FanInput) -> Result<Vec<WorkOutput>, TaskError> {
    let runs = (0..input.children).map(|i| {
        let mut work = input.work.clone();
        work.label = format!("{}-{i}", work.label);
        ctx.run(Work, work)
    });
    futures_join_all(runs).await.into_iter().collect()
}

/// Like `fan_leaf`, but its children are runs of `limited_one`, itself limited to one.
#[task(id = "limited_one", concurrency = 1)]
pub async fn limited_one(ctx: &TaskContext, input: FanInput) -> Result<Vec<WorkOutput>, TaskError> {
    if input.children == 0 {
        return work_body(ctx, input.work).await.map(|out| vec![out]);
    }
    let runs = (0..input.children).map(|i| {
        let mut child = input.clone();
        child.children = 0;
        child.work.label = format!("{}-{i}", child.work.label);
        ctx.run(LimitedOne, child)
    });
    let outs: Result<Vec<Vec<WorkOutput>>, TaskError> =
        futures_join_all(runs).await.into_iter().collect();
    Ok(outs?.into_iter().flatten().collect())
}

/// Runs every future at once and collects their outputs in order (a tiny `join_all`).
pub async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// A leaf task that runs `work` as one child run and waits for it.
#[task(id = "wrap")]
pub async fn wrap(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    ctx.run(Work, input).await
}

/// A leaf that cancels the token it was handed, then succeeds.
#[task(id = "cancels_its_token")]
pub async fn cancels_its_token(
    ctx: &TaskContext,
    input: WorkInput,
) -> Result<WorkOutput, TaskError> {
    ctx.cancellation_token().cancel();
    work_body(ctx, input).await
}

track! {
    /// A step that cancels its token, then more work.
    pub TokenTrack("token_track") {
        CancelsItsToken,
        Work = |_prev, original: &WorkInput| original.clone(),
    }
}

/// Input of `recurse`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DepthInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub depth: u32,
}

/// Runs itself `depth` times through `ctx.run`.
#[task(id = "recurse")]
pub async fn recurse(ctx: &TaskContext, input: DepthInput) -> Result<NumberOutput, TaskError> {
    if input.depth == 0 {
        return Ok(NumberOutput { value: 0 });
    }
    let next = DepthInput {
        depth: input.depth - 1,
        ..input
    };
    let inner = ctx.run(Recurse, next).await?;
    Ok(NumberOutput {
        value: inner.value + 1,
    })
}

/// A hook that never finishes.
async fn hang_forever(_event: &task_runtime::HookEvent) {
    std::future::pending::<()>().await
}

/// Like `work`, with an `on_success` hook that never returns.
#[task(id = "hanging_hook", on_success = hang_forever)]
pub async fn hanging_hook(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    work_body(ctx, input).await
}

/// Output with floats, for the non-finite checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Scores {
    pub mean: f64,
    pub best: Option<f64>,
}

/// Input of `scores`: what the output's floats should be.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScoresInput {
    #[serde(flatten)]
    pub base: BaseInput,
    /// `nan`, `inf` or a number.
    pub mean: String,
    pub best: Option<String>,
}

fn float_of(text: &str) -> f64 {
    match text {
        "nan" => f64::NAN,
        "inf" => f64::INFINITY,
        other => other.parse().unwrap_or(0.0),
    }
}

/// Returns the floats its input names.
#[task(id = "scores", handle = ScoresTask)]
pub async fn scores(_ctx: &TaskContext, input: ScoresInput) -> Result<Scores, TaskError> {
    Ok(Scores {
        mean: float_of(&input.mean),
        best: input.best.as_deref().map(float_of),
    })
}

/// Input of `spread`: `count` items of work, each carrying the input's base.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpreadInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub probe: String,
    pub count: u32,
}

/// Output of `blob_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BlobLength {
    pub bytes: usize,
}

/// The length of `trampData.blob` as this run sees it.
#[task(id = "blob_size")]
pub async fn blob_size(ctx: &TaskContext, _input: WorkInput) -> Result<BlobLength, TaskError> {
    let blob = ctx.tramp_data().and_then(|t| t["blob"].as_str());
    Ok(BlobLength {
        bytes: blob.map_or(0, str::len),
    })
}

orchestrator! {
    /// `count` runs of `blob_size`, all at once, each given a clone of the input's base.
    pub Spread("spread")(input: SpreadInput) {
        items: each(|input| (0..input.count).map(|i| WorkInput {
            base: input.base.clone(),
            probe: input.probe.clone(),
            label: format!("item-{i}"),
            ..WorkInput::default()
        }).collect::<Vec<_>>()) => BlobSize,
    }
}

/// Input of the `order_*` tracks: not the input of their first step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub lines: Vec<String>,
}

/// Lets `order_length` feed its first step without a mapper.
impl From<OrderInput> for TextInput {
    fn from(order: OrderInput) -> Self {
        TextInput {
            base: order.base,
            text: order.lines.concat(),
        }
    }
}

track! {
    /// Measures an order's lines joined by newlines, adds the line count, then doubles it.
    pub OrderTrack("order_track")(input: OrderInput) {
        Length = |input| TextInput { base: input.base.clone(), text: input.lines.join("\n") },
        Double = |prev, original| NumberInput {
            base: original.base.clone(),
            value: (prev.chars + original.lines.len()) as i64,
        },
    }
}

track! {
    /// Measures an order's lines concatenated, converted with `From`.
    pub OrderLength("order_length")(input: OrderInput) {
        Length,
    }
}

/// Like `work`, but fails the first time it runs for its label (counted by its probe), however
/// many attempts its parents make.
#[task(id = "flaky_step")]
pub async fn flaky_step(ctx: &TaskContext, input: WorkInput) -> Result<WorkOutput, TaskError> {
    let probe = Probe::get(&input.probe);
    let label = format!("{}:{}", ctx.task_id(), input.label);
    let first = probe.count(&format!("start {label} ")) == 0;
    let mut input = input;
    input.fail_attempts = if first { u32::MAX } else { 0 };
    work_body(ctx, input).await
}

track! {
    /// Three steps, the last failing the first time; two attempts.
    pub RetriedSteps("retried_steps", retry(max_attempts = 2, min_delay = "10ms"))(input: WorkInput) {
        Work = |input| WorkInput { label: format!("{}-1", input.label), ..input.clone() },
        Work = |_prev, original| WorkInput { label: format!("{}-2", original.label), ..original.clone() },
        FlakyStep = |_prev, original| WorkInput { label: format!("{}-3", original.label), ..original.clone() },
    }
}

/// The (started, finished) times of `tenant`'s runs, in start order.
pub fn intervals_of(
    runs: &[task_runtime::RunInfo],
    tenant: &str,
) -> Vec<(std::time::SystemTime, std::time::SystemTime)> {
    let mut mine: Vec<_> = runs
        .iter()
        .filter(|r| r.tenant_id.as_deref() == Some(tenant))
        .map(|r| (r.started_at.unwrap(), r.finished_at.unwrap()))
        .collect();
    mine.sort();
    mine
}

/// Asserts that `tenant`'s runs executed one at a time (a per-key limit of 1).
pub fn assert_one_at_a_time(runs: &[task_runtime::RunInfo], tenant: &str) {
    for pair in intervals_of(runs, tenant).windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "tenant {tenant} overlapped: {pair:?}"
        );
    }
}
