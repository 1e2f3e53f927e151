//! Master code systems through the gateway: `CodeSystem/$lookup`, `ValueSet/$validate-code`.

use crate::orders::{AST, JLAC10};
use ehr_testkit::{TestApp, json, outcome};
use serde_json::{Value, json};

fn part<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    params["parameter"].as_array()?.iter().find(|p| p["name"] == name)
}

#[tokio::test]
async fn lookup_and_validate_code_answer_from_the_masters() {
    let app = TestApp::spawn().await;
    let found = json(app.get(&format!("/CodeSystem/$lookup?system={JLAC10}&code={AST}")).await, 200).await;
    assert_eq!(found["resourceType"], "Parameters");
    let display = part(&found, "display").and_then(|p| p["valueString"].as_str()).unwrap_or_default();
    assert!(display.contains("AST"), "{found}");

    outcome(app.get(&format!("/CodeSystem/$lookup?system={JLAC10}&code=9Z999999999999999")).await, 404, "not-found")
        .await;
    outcome(app.get("/CodeSystem/$lookup?code=x").await, 400, "required").await;

    let ok = json(app.get(&format!("/ValueSet/$validate-code?url={JLAC10}?vs&code={AST}")).await, 200).await;
    assert_eq!(part(&ok, "result").and_then(|p| p["valueBoolean"].as_bool()), Some(true), "{ok}");
    let bad = json(app.get(&format!("/ValueSet/$validate-code?system={JLAC10}&code=123")).await, 200).await;
    assert_eq!(part(&bad, "result").and_then(|p| p["valueBoolean"].as_bool()), Some(false), "{bad}");

    // POST with a Parameters body.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": JLAC10, "code": AST}}]});
    let posted = json(app.post("/ValueSet/$validate-code", &body).await, 200).await;
    assert_eq!(part(&posted, "result").and_then(|p| p["valueBoolean"].as_bool()), Some(true), "{posted}");

    // A token is required (the masters are not patient data, but the API is not anonymous).
    let resp =
        app.client.get(app.fhir(&format!("/CodeSystem/$lookup?system={JLAC10}&code={AST}"))).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
