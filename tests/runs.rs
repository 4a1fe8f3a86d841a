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
        .trigger_and_wait("measure", json!({"tenantId": "t", "projectId": "p", "text": "hello", "trampData": {"a": 1}}))
        .await;
    println!("{}", serde_json::to_string_pretty(&env).unwrap());
    let env = rt
        .trigger_and_wait("measure", json!({"tenantId": "t", "projectId": "p", "text": "hello world this is long text with many characters more than 250 ........................................................................................................................................................................................................", "trampData": {"a": 1}}))
        .await;
    println!("{}", serde_json::to_string_pretty(&env).unwrap());
}

#[tokio::test]
async fn orch() {
    let rt = Runtime::new();
    let env = rt
        .trigger_and_wait("fan", json!({"tenantId": "t", "projectId": "p", "values": [1,2,3,2000]}))
        .await;
    println!("{}", serde_json::to_string_pretty(&env).unwrap());
}
