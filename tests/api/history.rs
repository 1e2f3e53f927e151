use ehr_testkit::{TestApp, json, patient};
use serde_json::json;

#[tokio::test]
async fn instance_type_and_system_history_with_since() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("A", "B", "1990-01-01", "H1")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut v = created.clone();
    v["gender"] = json!("male");
    // `_since` has millisecond resolution: keep the versions apart by more than that.
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(3));
    tick().await;
    json(app.put(&format!("/Patient/{id}"), &v).await, 200).await;
    let v2_time =
        json(app.get(&format!("/Patient/{id}")).await, 200).await["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    tick().await;
    app.create(&json!({"resourceType": "Organization", "name": "病院"})).await;

    let h = json(app.get(&format!("/Patient/{id}/_history")).await, 200).await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 2);
    // Newest first.
    assert_eq!(h["entry"][0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(h["entry"][0]["request"]["method"], "PUT");
    assert_eq!(h["entry"][1]["request"]["method"], "POST");
    assert_eq!(h["entry"][1]["response"]["etag"], "W/\"1\"");

    let t = json(app.get("/Patient/_history").await, 200).await;
    assert_eq!(t["total"], 2);
    let s = json(app.get("/_history").await, 200).await;
    assert_eq!(s["total"], 3);

    let since =
        json(app.get(&format!("/Patient/{id}/_history?_since={}", v2_time.replace('+', "%2B"))).await, 200).await;
    assert_eq!(since["total"], 1);
    assert_eq!(since["entry"][0]["resource"]["meta"]["versionId"], "2");

    let paged = json(app.get("/_history?_count=1").await, 200).await;
    assert_eq!(paged["entry"].as_array().unwrap().len(), 1);
    assert!(paged["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));

    // Paging links keep `_since`: following `next` stays within the filtered history.
    let first = json(app.get(&format!("/_history?_count=1&_since={}", v2_time.replace('+', "%2B"))).await, 200).await;
    assert_eq!(first["total"], 2);
    let next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = app.client.get(&next).bearer_auth(app.token("user/*.rs")).send().await.unwrap();
    let second = json(resp, 200).await;
    assert_eq!(second["total"], 2);
    assert!(second["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"));
}

#[tokio::test]
async fn history_pages_with_offset() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("A", "B", "1990-01-01", "H2")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    for g in ["male", "other", "unknown"] {
        let mut v = json(app.get(&format!("/Patient/{id}")).await, 200).await;
        v["gender"] = json!(g);
        json(app.put(&format!("/Patient/{id}"), &v).await, 200).await;
    }
    let mut versions = Vec::new();
    for offset in 0..4 {
        let page = json(app.get(&format!("/Patient/{id}/_history?_count=1&_offset={offset}")).await, 200).await;
        assert_eq!(page["total"], 4);
        versions.push(page["entry"][0]["resource"]["meta"]["versionId"].as_str().unwrap().to_owned());
    }
    assert_eq!(versions, vec!["4", "3", "2", "1"]);
}
