//! Metrics (feature `metrics`): what the runtime records, and a Prometheus scrape of it.
//!
//! | name | type | labels | what |
//! |------|------|--------|------|
//! | `task_runs_started_total` | counter | `task` | runs whose first attempt began in this process (a run resumed after a durable wait is not counted again) |
//! | `task_runs_finished_total` | counter | `task`, `status` (`completed`, `failed`, `cancelled`, `expired`) | runs that ended in this process, track steps and orchestrator items included: by their last attempt, or without one (expired or cancelled while queued or waiting, cancelled with their parent, failed when the worker of their last attempt was lost and this process reclaimed it) |
//! | `task_attempt_duration_seconds` | histogram | `task`, `outcome` (`success`, `failure`) | each attempt, from its start to its end |
//! | `task_lease_reclaims_total` | counter | | expired leases of dead workers this process reclaimed |
//! | `task_queue_depth` | gauge | | top-level runs waiting for a worker (queued, or delayed and due), read from the store at scrape time |
//! | `task_queue_oldest_age_seconds` | gauge | | how long the longest-due waiting run has been due (0 when none is) |
//! | `task_log_lines_dropped_total` | counter | | run log lines the store's bounded buffer dropped |
//!
//! Labels are bounded: task ids (the registered tasks), statuses and outcomes; never run
//! ids, tenants or error messages.
//!
//! The runtime records through the [`metrics`](::metrics) facade crate (the `log` of
//! metrics, kept by the metrics-rs project): recording goes to whatever recorder the process
//! installed, so an OTLP exporter (or statsd, or a test recorder) is a recorder away,
//! without a change here. [`Prometheus::install`] installs `metrics-exporter-prometheus`'s
//! recorder and renders its text format; the HTTP API serves it on `GET /metrics`. The
//! recorder keeps every series in atomics behind a sharded registry that recording reads
//! without an exclusive lock. (`prometheus-client` would tie the recording sites to one
//! exporter.) Without a recorder installed, recording is a no-op; with the feature off,
//! nothing here is compiled and the recording calls are empty inline functions.

#[cfg(feature = "metrics")]
pub use imp::*;

/// A run's first attempt began.
#[inline]
pub(crate) fn run_started(task: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(imp::RUNS_STARTED, "task" => task).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = task;
}

/// A run ended with `status` (`completed`, `failed`, `cancelled`).
#[inline]
pub(crate) fn run_finished(task: &'static str, status: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(imp::RUNS_FINISHED, "task" => task, "status" => status).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (task, status);
}

/// A run ended without an attempt of its own ending it: `expired` (its time to live ran
/// out while queued), `cancelled` (while queued or waiting, or with its parent), or
/// `failed` (its worker was lost on its last attempt).
#[inline]
pub(crate) fn run_ended(task: &str, status: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(imp::RUNS_FINISHED, "task" => task.to_owned(), "status" => status)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (task, status);
}

/// When an attempt began: without the feature, nothing (not even a clock read).
pub(crate) struct AttemptClock {
    #[cfg(feature = "metrics")]
    began: std::time::Instant,
}

impl AttemptClock {
    #[inline]
    pub(crate) fn start() -> Self {
        AttemptClock {
            #[cfg(feature = "metrics")]
            began: std::time::Instant::now(),
        }
    }

    /// The attempt ended, successfully or not.
    #[inline]
    pub(crate) fn ended(self, task: &'static str, success: bool) {
        #[cfg(feature = "metrics")]
        attempt_took(task, success, self.began.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = (task, success);
    }
}

#[cfg(feature = "metrics")]
fn attempt_took(task: &'static str, success: bool, took: std::time::Duration) {
    ::metrics::histogram!(
        imp::ATTEMPT_DURATION,
        "task" => task,
        "outcome" => if success { "success" } else { "failure" }
    )
    .record(took.as_secs_f64());
}

/// `n` expired leases were reclaimed.
#[inline]
pub(crate) fn leases_reclaimed(n: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(imp::LEASE_RECLAIMS).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    use crate::store::{Store, StoreError};

    pub(super) const RUNS_STARTED: &str = "task_runs_started_total";
    pub(super) const RUNS_FINISHED: &str = "task_runs_finished_total";
    pub(super) const ATTEMPT_DURATION: &str = "task_attempt_duration_seconds";
    pub(super) const LEASE_RECLAIMS: &str = "task_lease_reclaims_total";
    const QUEUE_DEPTH: &str = "task_queue_depth";
    const QUEUE_OLDEST_AGE: &str = "task_queue_oldest_age_seconds";
    const LOG_LINES_DROPPED: &str = "task_log_lines_dropped_total";

    /// Attempt durations' histogram buckets, in seconds: from a millisecond to ten minutes.
    const BUCKETS: &[f64] = &[
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ];

    /// The metrics could not be set up.
    #[derive(Debug, Clone, thiserror::Error)]
    #[non_exhaustive]
    pub enum MetricsError {
        /// Another recorder is the process's already (the `metrics` facade has one), or the
        /// exporter refused its configuration.
        #[error("cannot install the Prometheus metrics recorder: {0}")]
        Install(String),
    }

    /// The Prometheus recorder of this process: what `GET /metrics` renders.
    #[derive(Clone)]
    pub struct Prometheus {
        handle: PrometheusHandle,
    }

    impl std::fmt::Debug for Prometheus {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Prometheus").finish_non_exhaustive()
        }
    }

    static INSTALLED: OnceLock<Result<Prometheus, MetricsError>> = OnceLock::new();

    impl Prometheus {
        /// Installs the Prometheus recorder as the process's `metrics` recorder, once;
        /// later calls return the same one. Fails when another recorder was installed first
        /// (then the runtime's metrics go to that one).
        pub fn install() -> Result<Prometheus, MetricsError> {
            INSTALLED
                .get_or_init(|| {
                    let handle = PrometheusBuilder::new()
                        .set_buckets_for_metric(Matcher::Full(ATTEMPT_DURATION.into()), BUCKETS)
                        .and_then(PrometheusBuilder::install_recorder)
                        .map_err(|e| MetricsError::Install(e.to_string()))?;
                    describe();
                    tracing::debug!("Prometheus metrics recorder installed");
                    Ok(Prometheus { handle })
                })
                .clone()
        }

        /// The text format, with the store's queue and dropped log lines read now.
        pub async fn render(&self, store: Option<&Store>) -> Result<String, StoreError> {
            if let Some(store) = store {
                let stats = store.inner.queue_stats(SystemTime::now()).await?;
                ::metrics::gauge!(QUEUE_DEPTH).set(stats.depth as f64);
                ::metrics::gauge!(QUEUE_OLDEST_AGE)
                    .set(stats.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
                ::metrics::counter!(LOG_LINES_DROPPED).absolute(store.dropped_log_lines());
            }
            self.handle.run_upkeep();
            Ok(self.handle.render())
        }
    }

    fn describe() {
        use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(RUNS_STARTED, "Runs whose first attempt began");
        describe_counter!(RUNS_FINISHED, "Runs that ended, by task and status");
        describe_histogram!(
            ATTEMPT_DURATION,
            Unit::Seconds,
            "Duration of each attempt, by task and outcome"
        );
        describe_counter!(LEASE_RECLAIMS, "Expired leases reclaimed from lost workers");
        describe_gauge!(QUEUE_DEPTH, "Top-level runs waiting for a worker");
        describe_gauge!(
            QUEUE_OLDEST_AGE,
            Unit::Seconds,
            "How long the longest-due waiting run has been due"
        );
        describe_counter!(
            LOG_LINES_DROPPED,
            "Run log lines dropped by the store's bounded buffer"
        );
    }

    /// The runs waiting for a worker, as the store counts them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct QueueStats {
        /// Top-level runs queued, or delayed and due.
        pub depth: u64,
        /// How long the longest-due one has been due, when one is.
        pub oldest_age: Option<Duration>,
    }

    impl QueueStats {
        // Used by the store backends; a build with none has no store to read.
        #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
        pub(crate) fn new(depth: i64, oldest_due: Option<SystemTime>, now: SystemTime) -> Self {
            QueueStats {
                depth: u64::try_from(depth).unwrap_or(0),
                oldest_age: oldest_due.map(|due| now.duration_since(due).unwrap_or_default()),
            }
        }
    }
}
