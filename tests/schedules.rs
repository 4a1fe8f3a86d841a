//! Cron schedules on a real SQLite file (and one race on PostgreSQL): one run per slot
//! however many workers fire at once, one catch-up run after an outage, declared schedules
//! kept in step with the code, a worker firing a due schedule by itself, and clear errors.
//! Time is controlled by calling `fire_due(at)` with chosen instants; the fire-time rules
//! (timezones, daylight saving) are unit-tested next to the next-fire function.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use task_runtime::{NewSchedule, RunFilter, RunStatus, Runtime, ScheduleError, Store};
use task_tests::pg;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("schedules-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn runtime(url: &str) -> Runtime {
    let store = Store::connect(url).await.expect("store opens");
    Runtime::builder().store(store).build().unwrap()
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

const MINUTE: Duration = Duration::from_secs(60);

/// Fires `slots` consecutive minutes from both runtimes at once, then one instant after a
/// 10-minute outage; returns the stored runs of `on_schedule` by fire time.
async fn race(a: &Runtime, b: &Runtime) -> (String, BTreeMap<String, Value>) {
    let schedule = a
        .schedules()
        .create(NewSchedule::new("on_schedule", "* * * * *").tenant("acme", "docs"))
        .await
        .unwrap();
    let first = schedule.next_fire_at.expect("every minute fires");
    for k in 0..5 {
        let at = first + MINUTE * k + Duration::from_secs(1);
        let (x, y) = tokio::join!(a.schedules().fire_due(at), b.schedules().fire_due(at));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len() + y.len(), 1, "slot {k}: one run ({x:?} {y:?})");
        // Firing again at the same instant finds nothing due.
        assert!(a.schedules().fire_due(at).await.unwrap().is_empty());
    }
    // No worker for ten minutes: one run, for the latest missed slot.
    let after_outage = first + MINUTE * 15 + Duration::from_secs(20);
    let (x, y) = tokio::join!(
        a.schedules().fire_due(after_outage),
        b.schedules().fire_due(after_outage)
    );
    assert_eq!(x.unwrap().len() + y.unwrap().len(), 1, "one catch-up run");

    let runs = a
        .runs()
        .list(RunFilter::new().task("on_schedule"))
        .await
        .unwrap();
    let by_time: BTreeMap<String, Value> = runs
        .iter()
        .map(|r| {
            (
                r.input["timestamp"].as_str().unwrap().to_owned(),
                r.input.clone(),
            )
        })
        .collect();
    assert_eq!(runs.len(), 6, "five slots and one catch-up, none twice");
    assert_eq!(by_time.len(), 6, "six distinct fire times");
    let expected: Vec<String> = (0..5)
        .map(|k| rfc3339(first + MINUTE * k))
        .chain([rfc3339(first + MINUTE * 15)])
        .collect();
    assert_eq!(by_time.keys().cloned().collect::<Vec<_>>(), expected);
    let catch_up = &by_time[&rfc3339(first + MINUTE * 15)];
    assert_eq!(catch_up["lastTimestamp"], rfc3339(first + MINUTE * 4));
    assert_eq!(catch_up["scheduleId"], schedule.id.as_str());
    assert_eq!(catch_up["tenantId"], "acme");
    assert!(runs.iter().all(|r| r.tenant_id.as_deref() == Some("acme")));
    // Its next fire time is the first slot after the catch-up.
    let stored = a.schedules().list().await.unwrap();
    let stored = stored.iter().find(|s| s.id == schedule.id).unwrap();
    assert_eq!(stored.next_fire_at, Some(first + MINUTE * 16));
    assert_eq!(stored.last_fired_at, Some(first + MINUTE * 15));
    (schedule.id, by_time)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_fire_each_slot_once_and_an_outage_once() {
    let dir = scratch("race");
    let url = format!("sqlite://{}/runs.db", dir.display());
    let (a, b) = (runtime(&url).await, runtime(&url).await);
    let (schedule_id, _) = race(&a, &b).await;

    // The runs are ordinary runs: a worker executes them with the schedule's input.
    let worker = a.worker().concurrency(4).start();
    let runs = a
        .runs()
        .list(RunFilter::new().task("on_schedule"))
        .await
        .unwrap();
    for run in &runs {
        let envelope = a.runs().wait(&run.id).await.unwrap().unwrap();
        assert!(envelope.job.success, "{:?}", envelope.job.error);
        assert_eq!(envelope.results["scheduleId"], schedule_id.as_str());
        assert_eq!(envelope.results["timestamp"], run.input["timestamp"]);
    }
    worker.shutdown(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_postgres_fire_each_slot_once() {
    let url = pg::server().database("schedules");
    let (a, b) = (runtime(&url).await, runtime(&url).await);
    race(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stores_the_declared_schedules_and_fires_what_is_due() {
    let dir = scratch("worker");
    let url = format!("sqlite://{}/runs.db", dir.display());
    let rt = runtime(&url).await;
    let worker = rt.worker().concurrency(2).start();

    // `new_year` declares `0 0 1 1 *` in Europe/Paris: midnight there is 23:00 UTC on
    // December 31st (winter time).
    let declared = loop {
        let schedules = rt.schedules().list().await.unwrap();
        if let Some(s) = schedules.into_iter().find(|s| s.id == "declared:new_year") {
            break s;
        }
        tokio::task::yield_now().await;
    };
    assert!(declared.declared);
    assert_eq!(declared.task, "new_year");
    assert_eq!(declared.timezone, "Europe/Paris");
    let next = declared.next_fire_at.unwrap();
    assert!(
        rfc3339(next).ends_with("-12-31T23:00:00.000Z"),
        "{}",
        rfc3339(next)
    );
    // A declared schedule is removed from the code, not deleted at run time.
    assert!(!rt.schedules().delete("declared:new_year").await.unwrap());

    // A created schedule that is due (its next fire time moved into the past, as after a
    // long outage) is fired by the worker's own upkeep.
    let created = rt
        .schedules()
        .create(NewSchedule::new("on_schedule", "*/5 * * * *").external_id("cust-7"))
        .await
        .unwrap();
    let past = SystemTime::now() - Duration::from_secs(3600);
    let millis = past
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let pool = task_runtime::sqlx::SqlitePool::connect(&url).await.unwrap();
    task_runtime::sqlx::query("UPDATE schedules SET next_fire_at = ?1 WHERE id = ?2")
        .bind(millis)
        .bind(&created.id)
        .execute(&pool)
        .await
        .unwrap();
    let run = loop {
        let runs = rt
            .runs()
            .list(RunFilter::new().task("on_schedule"))
            .await
            .unwrap();
        if let Some(run) = runs.into_iter().next() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let envelope = rt.runs().wait(&run.id).await.unwrap().unwrap();
    assert!(envelope.job.success, "{:?}", envelope.job.error);
    assert_eq!(envelope.results["externalId"], "cust-7");
    assert_eq!(envelope.results["timezone"], "UTC");
    let fire_time =
        humantime::parse_rfc3339(envelope.results["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        fire_time <= SystemTime::now(),
        "the latest missed slot, not a future one"
    );
    let after = rt.schedules().list().await.unwrap();
    let after = after.iter().find(|s| s.id == created.id).unwrap();
    assert!(
        after.next_fire_at.unwrap() > SystemTime::now(),
        "moved past now"
    );
    assert_eq!(
        rt.runs().get(&run.id).await.unwrap().unwrap().status,
        RunStatus::Completed
    );
    // Deleting it stops it; the run it made stays.
    assert!(rt.schedules().delete(&created.id).await.unwrap());
    assert!(!rt.schedules().delete(&created.id).await.unwrap());
    worker.shutdown(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_clear_errors() {
    let dir = scratch("errors");
    let rt = runtime(&format!("sqlite://{}/runs.db", dir.display())).await;
    let error = rt
        .schedules()
        .create(NewSchedule::new("on_schedul", "0 * * * *"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("no task has the id 'on_schedul' (did you mean on_schedule"),
        "{error}"
    );
    let json = serde_json::to_value(&error).unwrap();
    assert_eq!(json["kind"], "unknownTask");
    assert_eq!(json["task"], "on_schedul");
    assert_eq!(json["suggestions"][0], "on_schedule");
    let error = rt
        .schedules()
        .create(NewSchedule::new("on_schedule", "0 25 * * *"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ScheduleError::InvalidCron { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("invalid cron pattern \"0 25 * * *\""),
        "{error}"
    );
    let error = rt
        .schedules()
        .create(NewSchedule::new("on_schedule", "0 * * * *").timezone("Europe/Pariss"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ScheduleError::UnknownTimezone { .. }),
        "{error}"
    );
    // `double` takes numbers, not what a schedule gives.
    let error = rt
        .schedules()
        .create(NewSchedule::new("double", "0 * * * *"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ScheduleError::NotSchedulable { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("task 'double' cannot be scheduled"),
        "{error}"
    );
    assert!(
        rt.schedules()
            .list()
            .await
            .unwrap()
            .iter()
            .all(|s| s.declared),
        "nothing stored"
    );

    let memory = Runtime::new();
    let error = memory
        .schedules()
        .create(NewSchedule::new("on_schedule", "0 * * * *"))
        .await
        .unwrap_err();
    assert!(matches!(error, ScheduleError::NoStore), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}
