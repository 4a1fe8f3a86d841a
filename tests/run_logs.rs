//! A run's logs through a JSON subscriber: one span with the run's fields, and its start
//! and end events. A test binary of its own: with other tests running at the same time and
//! no subscriber, tracing can cache a callsite's interest as "never" before this test's
//! scoped subscriber exists, and the event is then lost (seen in CI).

use serde_json::Value;
use task_runtime::prelude::*;
use task_tests::*;

#[test]
fn each_run_logs_one_span_with_its_fields_and_start_and_end_events() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                Runtime::new()
                    .run(
                        Double,
                        NumberInput {
                            base: BaseInput::new("acme", "docs"),
                            value: 1,
                        },
                    )
                    .await
                    .unwrap();
            });
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert_eq!(messages, ["run started", "run succeeded"], "{text}");
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "run succeeded")
        .unwrap();
    assert!(done["fields"]["duration_ms"].is_u64());
    let span = &done["span"];
    assert_eq!(span["name"], "run");
    assert_eq!(span["task"], "double");
    assert_eq!(span["tenant_id"], "acme");
    assert_eq!(span["project_id"], "docs");
    assert_eq!(span["attempt"], 1);
    assert!(span["run_id"].as_str().unwrap().starts_with("run_"));
}
