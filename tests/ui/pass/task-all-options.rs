use task_runtime::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FetchInput {
    #[serde(flatten)]
    pub base: BaseInput,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FetchOutput {
    pub bytes: usize,
}

async fn log_success(event: &task_runtime::HookEvent) {
    let _ = &event.run_id;
}

async fn alert(event: &task_runtime::HookEvent) -> Result<(), std::io::Error> {
    let _ = &event.error;
    Ok(())
}

/// Fetches a page, with every option set.
#[task(
    id = "fetch_page",
    handle = Fetcher,
    retry(max_attempts = 3, factor = 2.0, min_delay = "100ms", max_delay = "10s", jitter = true),
    timeout = "30s",
    concurrency = 2,
    on_success = log_success,
    on_failure = alert
)]
pub async fn fetch(_ctx: &TaskContext, input: FetchInput) -> Result<FetchOutput, TaskError> {
    Ok(FetchOutput {
        bytes: input.url.len(),
    })
}

fn main() {
    assert_eq!(<Fetcher as Task>::ID, "fetch_page");
    let policy = <Fetcher as Task>::POLICY;
    assert_eq!(policy.concurrency, Some(2));
    assert_eq!(policy.timeout, Some(std::time::Duration::from_secs(30)));
    let retry = policy.retry.unwrap();
    assert_eq!(retry.max_attempts, 3);
    assert!(retry.jitter);
    // The fn stays callable as written.
    let _ = fetch;
}
