use ehr_testkit::{TestApp, json, patient};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_updates_with_the_same_if_match_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("A", "B", "1990-01-01", "CC1")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    for round in 1..=5 {
        let current = json(app.get(&format!("/Patient/{id}")).await, 200).await;
        let etag = format!("W/\"{}\"", current["meta"]["versionId"].as_str().unwrap());
        let send = |gender: &'static str| {
            let mut body = current.clone();
            body["gender"] = json!(gender);
            app.req(reqwest::Method::PUT, &format!("/Patient/{id}"))
                .header("content-type", "application/fhir+json")
                .header("if-match", etag.clone())
                .body(body.to_string())
                .send()
        };
        let (a, b) = tokio::join!(send("male"), send("other"));
        let mut statuses = vec![a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, vec![200, 412], "round {round}");
    }
    let h = json(app.get(&format!("/Patient/{id}/_history")).await, 200).await;
    assert_eq!(h["total"], 6, "one version per round, none lost, none duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_creates_create_one_resource() {
    let app = TestApp::spawn().await;
    let body = patient("A", "B", "1990-01-01", "ONE").to_string();
    let send = || {
        app.req(reqwest::Method::POST, "/Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "identifier=ONE")
            .body(body.clone())
            .send()
    };
    let results = futures::future::join_all((0..8).map(|_| send())).await;
    let created = results.into_iter().filter(|r| r.as_ref().unwrap().status() == 201).count();
    assert_eq!(created, 1);
    assert_eq!(json(app.get("/Patient?identifier=ONE").await, 200).await["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_update_as_create_of_one_id_yields_two_versions() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let id = format!("same-{round}");
        let mut body = patient("A", "B", "1990-01-01", "UC1");
        body["id"] = json!(id);
        let send = || {
            app.req(reqwest::Method::PUT, &format!("/Patient/{id}"))
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
        };
        let (a, b) = tokio::join!(send(), send());
        let mut statuses = vec![a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, vec![200, 201], "round {round}");
        assert_eq!(json(app.get(&format!("/Patient/{id}")).await, 200).await["meta"]["versionId"], "2");
    }
}
