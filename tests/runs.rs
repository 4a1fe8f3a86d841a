use serde_json::json;
use task_runtime::prelude::*;
use task_tests::*;

#[tokio::test]
async fn typed_and_json_runs() {
    let rt = Runtime::new();
    let out = rt
        .run(Double, NumberInput { base: BaseInput::new("t", "p"), value: 21 })
        .await
        .unwrap();
    assert_eq!(out.results.unwrap().value, 42);
    let env = rt
        .trigger_and_wait("double", json!({"tenantId": "", "value": "x", "trampData": {"a": 1}}))
        .await;
    println!("{}", serde_json::to_string_pretty(&env).unwrap());
}
