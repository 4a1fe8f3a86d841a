//! Property tests: arbitrary JSON values and arbitrary bytes, fed to `trigger_and_wait` and
//! to the CLI's input parser for every registered task (the example app's and the
//! fixtures'), never panic and always produce an envelope or a usage error.

use proptest::prelude::*;
use serde_json::{Map, Value};
use task_runtime::Runtime;
use task_runtime::cli::run_with;

use docs_pipeline as _;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Field names the tasks know, so generated inputs get past the first checks sometimes.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("tenantId".to_owned()),
        Just("projectId".to_owned()),
        Just("trampData".to_owned()),
        Just("path".to_owned()),
        Just("text".to_owned()),
        Just("documents".to_owned()),
        Just("maxSentences".to_owned()),
        Just("value".to_owned()),
        "[a-zA-Z]{1,8}",
    ]
}

/// Objects shaped like task inputs: the base fields plus arbitrary others.
fn input_like() -> impl Strategy<Value = Value> {
    (
        ".{0,8}",
        ".{0,8}",
        prop::collection::btree_map(field_name(), json_value(), 0..5),
    )
        .prop_map(|(tenant, project, rest)| {
            let mut map: Map<String, Value> = rest.into_iter().collect();
            map.insert("tenantId".into(), Value::String(tenant));
            map.insert("projectId".into(), Value::String(project));
            Value::Object(map)
        })
}

/// Every registered id: the example app's tasks, track and orchestrator.
fn ids() -> Vec<&'static str> {
    let ids: Vec<&'static str> = Runtime::new()
        .registry()
        .entries()
        .iter()
        .map(|d| d.id)
        .collect();
    for expected in [
        "extract_text",
        "count_words",
        "summarise",
        "corpus_stats",
        "text_track",
        "docs_orchestrator",
    ] {
        assert!(ids.contains(&expected), "{expected} is not linked: {ids:?}");
    }
    ids
}

/// A paused clock: fixtures that wait only advance virtual time.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_json_gets_an_envelope(value in prop_oneof![json_value(), input_like()]) {
        let rt = Runtime::new();
        paused().block_on(async {
            for id in ids() {
                let env = rt.trigger_and_wait(id, value.clone()).await;
                prop_assert_eq!(env.job.task_name.as_ref(), id);
                prop_assert!(env.job.run_id.starts_with("run_"));
                prop_assert_eq!(env.job.success, env.job.error_detail.is_none());
                prop_assert_eq!(env.job.success, !env.results.is_null());
                if !env.job.success {
                    prop_assert!(!env.job.error.as_deref().unwrap_or("").is_empty());
                }
                // The envelope always serialises.
                serde_json::to_string(&env).unwrap();
            }
            Ok(())
        })?;
    }

    #[test]
    fn any_bytes_get_an_envelope_or_a_usage_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        text in "[\\[{].{0,64}",
    ) {
        let rt = Runtime::new();
        // The parser itself never panics on arbitrary bytes.
        let _ = rt.limits().parse(&bytes);
        paused().block_on(async {
            for id in ids() {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let code = run_with(Runtime::builder(), ["docs-pipeline", "run", id, "--input", &text], &mut out, &mut err).await;
                prop_assert!(code <= 2, "exit code {}", code);
                if code < 2 {
                    let env: Value = serde_json::from_slice(&out).expect("stdout holds the envelope");
                    prop_assert_eq!(env["job"]["success"].as_bool(), Some(code == 0));
                } else {
                    prop_assert!(out.is_empty());
                    prop_assert!(!err.is_empty(), "a usage error says why");
                }
            }
            Ok(())
        })?;
    }
}
