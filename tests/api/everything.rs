//! `GET /Patient/[id]/$everything` through the gateway (paging, `_type`, `_since`, referenced
//! resources, scopes, tenancy), and the `Group` resource type (CRUD, search by member, tenancy;
//! not part of a patient's record).

use crate::{id_of, observation};
use ehr_testkit::{ALL_SCOPES, TestApp, json, outcome, patient};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The patient's record and things that must stay out of it.
struct Record {
    patient: String,
    /// `Type/id` of everything `$everything` returns, by search mode.
    matches: BTreeSet<String>,
    includes: BTreeSet<String>,
    /// An Observation of the patient, for `_since`.
    observation: Value,
}

fn key(v: &Value) -> String {
    format!("{}/{}", v["resourceType"].as_str().unwrap(), v["id"].as_str().unwrap())
}

async fn record(app: &TestApp) -> Record {
    let org = app.create(&json!({"resourceType": "Organization", "name": "甲病院"})).await;
    let dr = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "主治医"}]})).await;
    // Another patient, with a record of its own and a practitioner only it references.
    let other = app.create(&patient("他", "患者", "1960-01-01", "EV-2")).await;
    let other_dr = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "他医"}]})).await;
    let mut p = patient("全", "記録", "1970-01-01", "EV-1");
    p["managingOrganization"] = json!({"reference": format!("Organization/{}", id_of(&org))});
    // A link to another patient's record must not pull it in.
    p["link"] = json!([{"other": {"reference": format!("Patient/{}", id_of(&other))}, "type": "seealso"}]);
    let p = app.create(&p).await;
    let pid = id_of(&p);
    let mut matches = BTreeSet::from([key(&p)]);
    let mut first = Value::Null;
    for i in 0..5 {
        let mut o = observation(&pid, "3B035000002327201", f64::from(i), "2026-11-01");
        o["performer"] = json!([{"reference": format!("Practitioner/{}", id_of(&dr))}]);
        let o = app.create(&o).await;
        if i == 0 {
            first = o.clone();
        }
        matches.insert(key(&o));
    }
    for text in ["高血圧症", "糖尿病"] {
        let c = json!({"resourceType": "Condition", "code": {"text": text}, "subject": {"reference": format!("Patient/{pid}")}});
        matches.insert(key(&app.create(&c).await));
    }
    let e = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")}});
    matches.insert(key(&app.create(&e).await));
    let mut theirs = observation(&id_of(&other), "3B035000002327201", 9.0, "2026-11-01");
    theirs["performer"] = json!([{"reference": format!("Practitioner/{}", id_of(&other_dr))}]);
    app.create(&theirs).await;
    // A Group listing the patient is not part of its record.
    app.create(&json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{pid}")}}, {"entity": {"reference": format!("Patient/{}", id_of(&other))}}]}))
        .await;
    Record { patient: pid, matches, includes: BTreeSet::from([key(&org), key(&dr)]), observation: first }
}

/// Follows `next` links from `path`; returns the pages.
async fn pages(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let mut url = app.fhir(path);
    let mut out = Vec::new();
    loop {
        let b = json(app.client.get(&url).bearer_auth(token).send().await.unwrap(), 200).await;
        assert_eq!((b["resourceType"].as_str(), b["type"].as_str()), (Some("Bundle"), Some("searchset")), "{b}");
        let next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        out.push(b);
        match next {
            Some(n) => url = n,
            None => break,
        }
        assert!(out.len() < 100, "paging does not end");
    }
    out
}

/// (matches, includes) over all pages; fails on an entry seen twice.
fn entries(pages: &[Value]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut m, mut i) = (BTreeSet::new(), BTreeSet::new());
    for e in pages.iter().flat_map(|p| p["entry"].as_array().cloned().unwrap_or_default()) {
        let k = key(&e["resource"]);
        assert!(e["fullUrl"].as_str().unwrap().ends_with(&format!("/fhir/{k}")), "{e}");
        let fresh = match e["search"]["mode"].as_str() {
            Some("match") => m.insert(k.clone()),
            Some("include") => i.insert(k.clone()),
            other => panic!("search mode {other:?}"),
        };
        assert!(fresh, "{k} appears twice");
    }
    (m, i)
}

#[tokio::test]
async fn everything_returns_the_record_and_what_it_references_in_pages() {
    let app = TestApp::spawn().await;
    let r = record(&app).await;
    let token = app.token(ALL_SCOPES);
    let path = format!("/Patient/{}/$everything", r.patient);

    // One page: everything, with its total.
    let all = pages(&app, &token, &format!("{path}?_count=1000")).await;
    assert_eq!(all.len(), 1);
    let (m, i) = entries(&all);
    assert_eq!((&m, &i), (&r.matches, &r.includes));
    assert_eq!(all[0]["total"], r.matches.len());
    assert_eq!(key(&all[0]["entry"][0]["resource"]), format!("Patient/{}", r.patient), "the Patient comes first");
    assert!(all[0]["link"][0]["url"].as_str().unwrap().starts_with("http"), "absolute links");

    // Pages of 3: the same entries, each once, the last page without `next`.
    let paged = pages(&app, &token, &format!("{path}?_count=3")).await;
    assert_eq!(paged.len(), (r.matches.len() + r.includes.len()).div_ceil(3));
    assert!(paged.iter().all(|p| p["entry"].as_array().unwrap().len() <= 3));
    assert_eq!(entries(&paged), (r.matches.clone(), r.includes.clone()));
    assert!(paged[0].get("total").is_none(), "no total without a pass over the record");

    // Default page size 50, `_count` capped at 1000.
    let b = json(app.get(&path).await, 200).await;
    assert_eq!(b["entry"].as_array().unwrap().len(), r.matches.len() + r.includes.len());
    assert!(b["link"][0]["url"].as_str().unwrap().contains("_count=50"), "{b}");
    let b = json(app.get(&format!("{path}?_count=99999")).await, 200).await;
    assert!(b["link"][0]["url"].as_str().unwrap().contains("_count=1000"), "{b}");

    // In FHIR XML on request.
    let resp = app
        .req(reqwest::Method::GET, &format!("{path}?_count=2"))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+xml"));
    let xml = resp.text().await.unwrap();
    assert!(xml.contains("<Bundle xmlns=\"http://hl7.org/fhir\">") && xml.contains("<Patient>"), "{xml}");
    let b = ehr_fhir::xml::from_xml(&xml).unwrap();
    assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    outcome(app.get(&format!("{path}?_format=text/plain")).await, 406, "not-supported").await;

    // The audit trail names the patient for each page read.
    let events = app.audit_events(&format!("patient=Patient/{}", r.patient)).await;
    assert!(events.len() >= paged.len() + 3, "{}", events.len());
}

#[tokio::test]
async fn everything_narrows_by_type_and_since() {
    let app = TestApp::spawn().await;
    let r = record(&app).await;
    let path = format!("/Patient/{}/$everything", r.patient);
    let token = app.token(ALL_SCOPES);

    let (m, i) = entries(&pages(&app, &token, &format!("{path}?_type=Observation,Practitioner&_count=2")).await);
    assert_eq!(m.len(), 5);
    assert!(m.iter().all(|k| k.starts_with("Observation/")), "{m:?}");
    assert_eq!(i, r.includes.iter().filter(|k| k.starts_with("Practitioner/")).cloned().collect());
    // A referenced type alone still finds what the record references.
    let (m, i) = entries(&pages(&app, &token, &format!("{path}?_type=Organization")).await);
    assert!(m.is_empty() && i.len() == 1 && i.iter().all(|k| k.starts_with("Organization/")), "{i:?}");

    // Ten minutes later one Observation changes: `_since` five minutes ago finds it alone.
    app.advance(600);
    let token = app.token(ALL_SCOPES);
    let mut o = r.observation.clone();
    o["valueQuantity"]["value"] = json!(99.0);
    json(app.put(&format!("/Observation/{}", id_of(&o)), &o).await, 200).await;
    let since = ehr_fhir::search::format_instant((app.now() - 300) * 1000);
    let (m, i) = entries(&pages(&app, &token, &format!("{path}?_since={}", since.replace('+', "%2B"))).await);
    assert_eq!(m, BTreeSet::from([key(&o)]));
    assert!(i.is_empty(), "{i:?}");

    // Parameters this server cannot honour or parse.
    outcome(app.get(&format!("{path}?_type=Medication")).await, 400, "invalid").await;
    outcome(app.get(&format!("{path}?_since=yesterday")).await, 400, "invalid").await;
    outcome(app.get(&format!("{path}?start=2026-01-01")).await, 400, "not-supported").await;
    outcome(app.get(&format!("{path}?_cursor=garbage")).await, 400, "invalid").await;
}

#[tokio::test]
async fn everything_leaves_out_what_the_token_cannot_read() {
    let app = TestApp::spawn().await;
    let r = record(&app).await;
    let path = format!("/Patient/{}/$everything", r.patient);
    let token = app.token("user/Patient.rs user/Condition.rs");
    let (m, i) = entries(&pages(&app, &token, &path).await);
    assert!(m.iter().all(|k| k.starts_with("Patient/") || k.starts_with("Condition/")), "{m:?}");
    assert_eq!(m.len(), 3);
    assert!(i.is_empty(), "{i:?}");
    // Naming an unreadable type is refused; without Patient read there is nothing at all.
    let resp = app.client.get(app.fhir(&format!("{path}?_type=Observation"))).bearer_auth(&token).send().await.unwrap();
    outcome(resp, 403, "forbidden").await;
    let resp = app.client.get(app.fhir(&path)).bearer_auth(app.token("user/Observation.rs")).send().await.unwrap();
    outcome(resp, 403, "forbidden").await;
}

#[tokio::test]
async fn everything_of_an_unknown_or_another_tenants_patient_is_not_found() {
    let app = TestApp::spawn().await;
    let r = record(&app).await;
    outcome(app.get("/Patient/no-such-patient/$everything").await, 404, "not-found").await;
    let other = app.token_for("other-hospital", ALL_SCOPES);
    let resp = app
        .client
        .get(app.fhir(&format!("/Patient/{}/$everything", r.patient)))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    outcome(resp, 404, "not-found").await;
    outcome(app.get(&format!("/Observation/{}/$everything", id_of(&r.observation))).await, 404, "not-found").await;
}

#[tokio::test]
async fn groups_are_stored_searched_by_member_and_kept_per_tenant() {
    let app = TestApp::spawn().await;
    let a = id_of(&app.create(&patient("群", "一", "1970-01-01", "G-1")).await);
    let b = id_of(&app.create(&patient("群", "二", "1971-01-01", "G-2")).await);
    let ward = json!({"resourceType": "Group", "type": "person", "actual": true, "name": "3病棟",
        "code": {"coding": [{"system": "urn:example:ward", "code": "W3"}]},
        "member": [{"entity": {"reference": format!("Patient/{a}")}}, {"entity": {"reference": format!("Patient/{b}")}}]});
    let g = app.create(&ward).await;
    let gid = id_of(&g);
    assert_eq!(json(app.get(&format!("/Group/{gid}")).await, 200).await, g);

    let app = &app;
    let search = |q: String| async move { json(app.get(&q).await, 200).await };
    assert_eq!(search(format!("/Group?member=Patient/{a}")).await["total"], 1);
    assert_eq!(search("/Group?code=urn:example:ward|W3&type=person&actual=true".into()).await["total"], 1);
    assert_eq!(search("/Group?member:Patient.identifier=G-2".into()).await["total"], 1);

    // Update: b leaves the ward.
    let mut next = g.clone();
    next["member"] = json!([{"entity": {"reference": format!("Patient/{a}")}}]);
    assert_eq!(json(app.put(&format!("/Group/{gid}"), &next).await, 200).await["meta"]["versionId"], "2");
    assert_eq!(search(format!("/Group?member=Patient/{b}")).await["total"], 0);
    // A Group must say what it lists.
    outcome(app.post("/Group", &json!({"resourceType": "Group", "actual": true})).await, 400, "required").await;

    // Another tenant sees nothing of it.
    let other = app.token_for("other-hospital", ALL_SCOPES);
    let resp = app.client.get(app.fhir(&format!("/Group/{gid}"))).bearer_auth(&other).send().await.unwrap();
    outcome(resp, 404, "not-found").await;
    let resp =
        app.client.get(app.fhir(&format!("/Group?member=Patient/{a}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(json(resp, 200).await["total"], 0);

    // Listed in the CapabilityStatement with its search parameters.
    let cs = json(app.get("/metadata").await, 200).await;
    let group = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Group").cloned();
    let group = group.expect("Group in /metadata");
    assert!(group["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "member"), "{group}");
}

#[tokio::test]
async fn listing_the_compartment_needs_the_search_scope_as_a_search_would() {
    let app = TestApp::spawn().await;
    let r = record(&app).await;
    let path = format!("/Patient/{}/$everything", r.patient);
    // Observations may be read by id but not searched: `GET /Observation?patient=` is 403, and
    // `$everything` does not list them either, nor what only they reference (the performer).
    let token =
        app.token("user/Patient.rs user/Observation.r user/Condition.rs user/Practitioner.r user/Organization.r");
    let resp =
        app.client.get(app.fhir(&format!("/Observation?patient={}", r.patient))).bearer_auth(&token).send().await;
    outcome(resp.unwrap(), 403, "forbidden").await;
    let (m, i) = entries(&pages(&app, &token, &path).await);
    assert!(m.iter().all(|k| k.starts_with("Patient/") || k.starts_with("Condition/")), "{m:?}");
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(i.iter().all(|k| k.starts_with("Organization/")) && i.len() == 1, "{i:?}");
    let resp = app.client.get(app.fhir(&format!("{path}?_type=Observation"))).bearer_auth(&token).send().await;
    outcome(resp.unwrap(), 403, "forbidden").await;
    // Referenced types need read only, as `_include` targets do.
    let (_, i) = entries(&pages(&app, &token, &format!("{path}?_type=Organization")).await);
    assert_eq!(i.len(), 1, "{i:?}");
}

#[tokio::test]
async fn a_cursor_never_reaches_beyond_the_patient_and_tenant_of_the_request() {
    let app = TestApp::spawn().await;
    let a = record(&app).await;
    // Patient B: a record of its own.
    let b = id_of(&app.create(&patient("乙", "患者", "1980-01-01", "EV-B")).await);
    for i in 0..3 {
        app.create(&observation(&b, "3B035000002327201", f64::from(i), "2026-11-02")).await;
    }
    let token = app.token(ALL_SCOPES);
    let first = pages(&app, &token, &format!("/Patient/{}/$everything?_count=2", a.patient)).await;
    let next = first[0]["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let query = next.split_once('?').unwrap().1.to_owned();

    // A's cursor on B's path pages through B's record only.
    let pages_b = pages(&app, &token, &format!("/Patient/{b}/$everything?{query}")).await;
    for e in pages_b.iter().flat_map(|p| p["entry"].as_array().cloned().unwrap_or_default()) {
        let res = &e["resource"];
        let own = res["resourceType"] == "Patient" && res["id"] == b.as_str()
            || res["subject"]["reference"] == format!("Patient/{b}").as_str();
        assert!(own || e["search"]["mode"] == "include", "not B's: {e}");
        assert!(!a.matches.contains(&key(res)) || key(res) == format!("Patient/{b}"), "A's data on B's pages: {e}");
    }
    // Another tenant with A's link: A is not found there.
    let other = app.token_for("other-hospital", ALL_SCOPES);
    outcome(app.client.get(&next).bearer_auth(&other).send().await.unwrap(), 404, "not-found").await;
    // A forged cursor naming a type outside the request's plan (one not stored, one the token
    // cannot list): refused.
    use base64::Engine as _;
    for forged in ["AuditEvent/x", "Observation/zzz"] {
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        let url = app.fhir(&format!("/Patient/{}/$everything?_cursor={cursor}", a.patient));
        let token = app.token("user/Patient.rs user/Condition.rs");
        outcome(app.client.get(&url).bearer_auth(&token).send().await.unwrap(), 400, "invalid").await;
    }
}

#[tokio::test]
async fn everything_of_a_deleted_patient_is_gone() {
    let app = TestApp::spawn().await;
    let p = id_of(&app.create(&patient("削", "除", "1970-01-01", "EV-D")).await);
    assert_eq!(app.delete(&format!("/Patient/{p}")).await.status(), 204);
    outcome(app.get(&format!("/Patient/{p}/$everything")).await, 410, "deleted").await;
}
