use crate::{id_of, observation};
use ehr_testkit::{TestApp, json, outcome, patient};
use serde_json::{Value, json};

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let b = json(app.get(query).await, 200).await;
    let mut ids: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct World {
    yamada: String,
    suzuki: String,
    tanaka: String,
    obs: Vec<String>,
}

async fn world(app: &TestApp) -> World {
    let mut y = patient("山田", "太郎", "1970-01-01", "001");
    y["name"].as_array_mut().unwrap().push(json!({"family": "ヤマダ", "given": ["タロウ"]}));
    y["gender"] = json!("male");
    y["address"] = json!([{"text": "東京都新宿区", "postalCode": "1600023"}]);
    let yamada = id_of(&app.create(&y).await);
    let suzuki = id_of(&app.create(&patient("Suzuki", "Hanako", "1985-06-15", "002")).await);
    let mut t = patient("Tanaka", "Jiro", "2001-12-31", "003");
    t["identifier"] = json!([{"system": "urn:other", "value": "003"}]);
    let tanaka = id_of(&app.create(&t).await);
    let obs = vec![
        id_of(&app.create(&observation(&yamada, "3B035000002327201", 30.0, "2024-01-10T09:00:00+09:00")).await),
        id_of(&app.create(&observation(&yamada, "3B035000002327201", 55.5, "2024-03-10T09:00:00+09:00")).await),
        id_of(&app.create(&observation(&suzuki, "3A015000002327101", 4.2, "2024-02-01")).await),
    ];
    World { yamada, suzuki, tanaka, obs }
}

#[tokio::test]
async fn string_parameters_default_exact_and_contains() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(ids(&app, "/Patient?family=山田").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?family=ヤマ").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?family=suz").await, vec![w.suzuki.clone()], "case-insensitive prefix");
    assert_eq!(ids(&app, "/Patient?family=ＳＵＺ").await, vec![w.suzuki.clone()], "full-width folds");
    assert_eq!(ids(&app, "/Patient?name=hanako").await, vec![w.suzuki.clone()]);
    assert_eq!(ids(&app, "/Patient?family:exact=suzuki").await, Vec::<String>::new());
    assert_eq!(ids(&app, "/Patient?family:exact=Suzuki").await, vec![w.suzuki.clone()]);
    assert_eq!(ids(&app, "/Patient?family:contains=anak").await, vec![w.tanaka.clone()]);
    assert_eq!(ids(&app, "/Patient?address=東京").await, vec![w.yamada.clone()]);
    // Comma is OR; repeating the parameter is AND.
    assert_eq!(ids(&app, "/Patient?family=Suzuki,Tanaka").await, sorted(vec![w.suzuki.clone(), w.tanaka.clone()]));
    assert_eq!(ids(&app, "/Patient?given=Hanako&family=Tanaka").await, Vec::<String>::new());
}

#[tokio::test]
async fn token_parameters_with_system_and_not() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let sys = "urn:oid:1.2.392.100495.20.3.51.11311234567";
    assert_eq!(ids(&app, &format!("/Patient?identifier={sys}|001")).await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?identifier=003").await, vec![w.tanaka.clone()]);
    assert_eq!(
        ids(&app, &format!("/Patient?identifier={sys}|")).await,
        sorted(vec![w.yamada.clone(), w.suzuki.clone()])
    );
    assert_eq!(ids(&app, "/Patient?identifier=|003").await, Vec::<String>::new(), "|code means no system");
    assert_eq!(ids(&app, "/Patient?gender=male").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?gender:not=male").await, sorted(vec![w.suzuki.clone(), w.tanaka.clone()]));
    assert_eq!(
        ids(&app, "/Observation?code=http://medis.or.jp/CodeSystem/master-JLAC10-17digits|3B035000002327201").await,
        sorted(vec![w.obs[0].clone(), w.obs[1].clone()])
    );
    assert_eq!(ids(&app, "/Observation?category=laboratory").await.len(), 3);
}

#[tokio::test]
async fn date_prefixes_follow_precision_ranges() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(ids(&app, "/Patient?birthdate=1970").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=1985-06").await, vec![w.suzuki.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=eq1985-06-15").await, vec![w.suzuki.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=ne1985-06-15").await, sorted(vec![w.yamada.clone(), w.tanaka.clone()]));
    assert_eq!(ids(&app, "/Patient?birthdate=gt1985-06-15").await, vec![w.tanaka.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=ge1985-06-15").await, sorted(vec![w.suzuki.clone(), w.tanaka.clone()]));
    assert_eq!(ids(&app, "/Patient?birthdate=lt1985-06-15").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=le1985-06-15").await, sorted(vec![w.yamada.clone(), w.suzuki.clone()]));
    assert_eq!(ids(&app, "/Patient?birthdate=sa2000").await, vec![w.tanaka.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=eb1971").await, vec![w.yamada.clone()]);
    assert_eq!(ids(&app, "/Patient?birthdate=ge1980&birthdate=lt2000").await, vec![w.suzuki.clone()]);
    // Time zones: 2024-01-10T09:00+09:00 is 2024-01-10T00:00Z.
    assert_eq!(ids(&app, "/Observation?date=2024-01-10").await, vec![w.obs[0].clone()]);
    assert_eq!(ids(&app, "/Observation?date=lt2024-01-10T00:00:00Z").await, Vec::<String>::new());
    assert_eq!(ids(&app, "/Observation?date=ge2024-02").await, sorted(vec![w.obs[1].clone(), w.obs[2].clone()]));
    outcome(app.get("/Patient?birthdate=yesterday").await, 400, "invalid").await;
}

#[tokio::test]
async fn quantity_prefixes_units_and_precision() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(ids(&app, "/Observation?value-quantity=gt50").await, vec![w.obs[1].clone()]);
    assert_eq!(ids(&app, "/Observation?value-quantity=le30").await, sorted(vec![w.obs[0].clone(), w.obs[2].clone()]));
    assert_eq!(ids(&app, "/Observation?value-quantity=55.5").await, vec![w.obs[1].clone()]);
    assert_eq!(ids(&app, "/Observation?value-quantity=56").await, vec![w.obs[1].clone()], "56 means [55.5, 56.5)");
    assert_eq!(ids(&app, "/Observation?value-quantity=56.0").await, Vec::<String>::new());
    assert_eq!(ids(&app, "/Observation?value-quantity=gt1|http://unitsofmeasure.org|mg/dL").await.len(), 3);
    assert_eq!(ids(&app, "/Observation?value-quantity=gt1||g/L").await.len(), 0);
    assert_eq!(ids(&app, "/Observation?value-quantity=ap4").await, vec![w.obs[2].clone()]);
}

#[tokio::test]
async fn references_chains_and_missing() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        ids(&app, &format!("/Observation?patient={}", w.yamada)).await,
        sorted(vec![w.obs[0].clone(), w.obs[1].clone()])
    );
    assert_eq!(ids(&app, &format!("/Observation?subject=Patient/{}", w.suzuki)).await, vec![w.obs[2].clone()]);
    assert_eq!(ids(&app, &format!("/Observation?subject:Patient={}", w.suzuki)).await, vec![w.obs[2].clone()]);
    let sys = "urn:oid:1.2.392.100495.20.3.51.11311234567";
    assert_eq!(
        ids(&app, &format!("/Observation?subject:Patient.identifier={sys}|001")).await,
        sorted(vec![w.obs[0].clone(), w.obs[1].clone()])
    );
    assert_eq!(ids(&app, "/Observation?patient.family=Suzuki").await, vec![w.obs[2].clone()]);
    assert_eq!(
        ids(&app, "/Observation?patient.birthdate=lt1980").await,
        sorted(vec![w.obs[0].clone(), w.obs[1].clone()])
    );
    assert_eq!(ids(&app, "/Patient?address:missing=true").await, sorted(vec![w.suzuki.clone(), w.tanaka.clone()]));
    assert_eq!(ids(&app, "/Patient?address:missing=false").await, vec![w.yamada.clone()]);
    outcome(app.get("/Observation?subject.identifier=x").await, 400, "invalid").await;
}

#[tokio::test]
async fn include_and_revinclude() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let b = json(app.get(&format!("/Observation?patient={}&_include=Observation:subject", w.yamada)).await, 200).await;
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["search"]["mode"] == "match").count(), 2);
    let included: Vec<&Value> = entries.iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1, "the patient once, though referenced twice");
    assert_eq!(included[0]["resource"]["id"], w.yamada.as_str());
    assert_eq!(b["total"], 2, "included resources do not count");

    let b = json(app.get(&format!("/Patient?_id={}&_revinclude=Observation:subject", w.yamada)).await, 200).await;
    let included: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sorted(included), sorted(vec![w.obs[0].clone(), w.obs[1].clone()]));
    outcome(app.get("/Observation?_include=Observation:code").await, 400, "invalid").await;

    // :iterate follows references of included resources: Observation → Patient → Organization.
    let org = id_of(&app.create(&json!({"resourceType": "Organization", "name": "病院"})).await);
    let mut p = json(app.get(&format!("/Patient/{}", w.suzuki)).await, 200).await;
    p["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
    json(app.put(&format!("/Patient/{}", w.suzuki), &p).await, 200).await;
    let q =
        format!("/Observation?patient={}&_include=Observation:subject&_include:iterate=Patient:organization", w.suzuki);
    let b = json(app.get(&q).await, 200).await;
    let included: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(included, vec!["Patient", "Organization"]);
}

#[tokio::test]
async fn sort_count_paging_and_total() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let b = json(app.get("/Patient?_sort=birthdate").await, 200).await;
    let order: Vec<&str> =
        b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(order, vec![w.yamada.as_str(), w.suzuki.as_str(), w.tanaka.as_str()]);
    let b = json(app.get("/Patient?_sort=-birthdate").await, 200).await;
    assert_eq!(b["entry"][0]["resource"]["id"], w.tanaka.as_str());
    let b = json(app.get("/Patient?_sort=family").await, 200).await;
    assert_eq!(b["entry"][0]["resource"]["id"], w.suzuki.as_str(), "Suzuki < Tanaka < 山田");

    // Walk the pages by following `next` links: every patient exactly once.
    let mut seen = Vec::new();
    let mut url = app.fhir("/Patient?_count=2&_sort=birthdate");
    loop {
        let resp = app.client.get(&url).bearer_auth(app.token("user/*.rs")).send().await.unwrap();
        let b = json(resp, 200).await;
        assert_eq!(b["total"], 3);
        for e in b["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        match b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, vec![w.yamada.clone(), w.suzuki.clone(), w.tanaka.clone()]);

    // Past the last page: no entries, and still the total.
    let b = json(app.get("/Patient?_offset=10").await, 200).await;
    assert_eq!(b["total"], 3);
    assert!(b.get("entry").is_none());
    let b = json(app.get("/Patient?_summary=count").await, 200).await;
    assert_eq!(b["total"], 3);
    assert!(b.get("entry").is_none());
    let b = json(app.get("/Patient?_summary=count&_total=none").await, 200).await;
    assert_eq!(b["total"], 3, "the count is the answer of _summary=count");
    let b = json(app.get("/Patient?_total=none").await, 200).await;
    assert!(b.get("total").is_none());
    assert_eq!(b["entry"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn elements_and_summary_subset_the_resources() {
    let app = TestApp::spawn().await;
    world(&app).await;
    let b = json(app.get("/Patient?_elements=birthDate&family=Suzuki").await, 200).await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["birthDate"], "1985-06-15");
    assert!(r.get("name").is_none());
    assert!(r["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
}

#[tokio::test]
async fn post_search_and_strict_lenient_handling() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let resp = app
        .req(reqwest::Method::POST, "/Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=Suzuki")
        .send()
        .await
        .unwrap();
    let b = json(resp, 200).await;
    assert_eq!(b["entry"][0]["resource"]["id"], w.suzuki.as_str());

    // Lenient (default): ignored, reported in an outcome entry, absent from the self link.
    let b = json(app.get("/Patient?shoe-size=42&family=Suzuki").await, 200).await;
    assert_eq!(b["total"], 1);
    assert!(b["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "outcome"));
    let self_link = b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "self").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!self_link.contains("shoe-size"));
    // Strict: an error.
    let resp = app
        .req(reqwest::Method::GET, "/Patient?shoe-size=42")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    outcome(resp, 400, "invalid").await;
    // Unsupported modifiers are errors either way.
    outcome(app.get("/Patient?gender:contains=m").await, 400, "not-supported").await;
}

#[tokio::test]
async fn id_and_last_updated() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    assert_eq!(
        ids(&app, &format!("/Patient?_id={},{}", w.yamada, w.tanaka)).await,
        sorted(vec![w.yamada.clone(), w.tanaka.clone()])
    );
    assert_eq!(ids(&app, "/Patient?_lastUpdated=gt2000-01-01").await.len(), 3);
    assert_eq!(ids(&app, "/Patient?_lastUpdated=lt2000-01-01").await.len(), 0);
    // Empty values (and empty alternatives) are ignored, even in strict mode.
    let resp = app
        .req(reqwest::Method::GET, "/Patient?family=&_id=,")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 200).await["total"], 3);
}

#[tokio::test]
async fn summary_text_and_data() {
    let app = TestApp::spawn().await;
    let mut p = patient("Kato", "Ken", "1990-01-01", "S9");
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Kato Ken</div>"});
    app.create(&p).await;
    let text = json(app.get("/Patient?_summary=text").await, 200).await;
    let r = &text["entry"][0]["resource"];
    assert!(r.get("text").is_some() && r.get("name").is_none(), "{r}");
    let data = json(app.get("/Patient?_summary=data").await, 200).await;
    let r = &data["entry"][0]["resource"];
    assert!(r.get("text").is_none() && r.get("name").is_some(), "{r}");
}

#[tokio::test]
async fn dates_without_a_zone_are_japan_standard_time() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("A", "B", "1990-01-01", "Z1")).await);
    // 08:00 in Japan on 10 January is still 9 January in UTC.
    let early = id_of(&app.create(&observation(&pid, "x", 1.0, "2024-01-10T08:00:00+09:00")).await);
    assert_eq!(ids(&app, "/Observation?date=2024-01-10").await, vec![early.clone()]);
    assert_eq!(ids(&app, "/Observation?date=2024-01-09").await, Vec::<String>::new());
    assert_eq!(ids(&app, "/Observation?date=2024-01-10T08:00").await, vec![early.clone()]);
    assert_eq!(ids(&app, "/Observation?date=ap2024-01-10").await, vec![early]);
}

#[tokio::test]
async fn references_to_other_servers_are_not_local_resources() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("A", "B", "1990-01-01", "R1")).await);
    let mut o = observation(&pid, "x", 1.0, "2024-01-01");
    o["subject"] = json!({"reference": format!("https://other-hospital.example/fhir/Patient/{pid}")});
    let oid = id_of(&app.create(&o).await);
    assert_eq!(ids(&app, &format!("/Observation?subject=Patient/{pid}")).await, Vec::<String>::new());
    let q = format!("/Observation?subject=https://other-hospital.example/fhir/Patient/{pid}");
    assert_eq!(ids(&app, &q).await, vec![oid.clone()]);
    let b = json(app.get(&format!("/Observation?_id={oid}&_include=Observation:subject")).await, 200).await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 1, "our Patient/{pid} is not their Patient/{pid}: {b}");
}
