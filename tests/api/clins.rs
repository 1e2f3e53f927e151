//! The EHR information-sharing service (CLINS) end to end: a realistic patient stored through the
//! FHIR API, every item and document previewed and registered through `/clins/…`, accepted by the
//! simulator; an invalid referral refused with the section named; the service down (queued,
//! retried, then accepted exactly once); cancel and change; tenant isolation; scopes.

use crate::id_of;
use ehr_clins::sim::{Down, SimHandle, SimOptions, Simulator};
use ehr_testkit::{TestApp, json};
use serde_json::{Value, json};
use std::time::Duration;

const SCOPES: &str = "user/*.cruds user/NationalSubmission.crus";
const INSTITUTION: &str = "1318814790";

async fn simulator() -> (std::net::SocketAddr, SimHandle) {
    Simulator::start(&SimOptions { listen: "127.0.0.1:0".into(), ..SimOptions::default() }).await.unwrap()
}

async fn clins_app(sim: std::net::SocketAddr) -> TestApp {
    TestApp::spawn_with(|c| {
        c.clins.transport = "web-api".into();
        c.clins.url = Some(format!("http://{sim}"));
        c.clins.connect_timeout_ms = 500;
        c.clins.timeout_ms = 3_000;
        c.clins.poll_interval_ms = 50;
        c.clins.retry_base_ms = 200;
        c.clins.retry_max_ms = 400;
        c.clins.max_attempts = 50;
    })
    .await
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    scope: &str,
) -> reqwest::Response {
    let mut req = app.client.request(method, format!("{}{path}", app.address)).bearer_auth(app.token(scope));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    req.send().await.unwrap()
}

async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    call(app, reqwest::Method::POST, path, Some(body), SCOPES).await
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    call(app, reqwest::Method::GET, path, None, SCOPES).await
}

/// The stored record: 牧野 爛漫, admitted for a duodenal ulcer, with allergies, lab results, an
/// HBs antigen result and a discharge prescription; our hospital and its doctor.
struct Patient {
    id: String,
    encounter: String,
    condition: String,
}

async fn store_patient(app: &TestApp) -> Patient {
    app.create(&json!({"resourceType": "Organization", "name": "東京第一テスト病院",
        "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": INSTITUTION}],
        "address": [{"text": "東京都文京区文京町１−２−３"}]}))
    .await;
    app.create(&json!({"resourceType": "Practitioner",
        "name": [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
                  "family": "大河内", "given": ["勘三郎"]}]}))
    .await;
    let patient = app
        .create(&json!({"resourceType": "Patient",
            "identifier": [
                {"system": "urn:oid:1.2.392.100495.20.3.51.11318814790", "value": "000999739"},
                {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "00012345:あいう:１８７:05"}],
            "name": [
                {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}], "use": "official", "family": "牧野", "given": ["爛漫"]},
                {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}], "use": "official", "family": "マキノ", "given": ["ランマン"]}],
            "gender": "female", "birthDate": "1930-06-28",
            "address": [{"text": "高知県高知市五台山4200-6", "postalCode": "781-8125"}]}))
        .await;
    let pid = id_of(&patient);
    let subject = json!({"reference": format!("Patient/{pid}")});
    let encounter = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": subject, "period": {"start": "2024-10-01", "end": "2024-10-15"}}))
        .await;
    let eid = id_of(&encounter);
    let condition = app
        .create(&json!({"resourceType": "Condition",
            "meta": {"tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "LTS"}]},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20064049", "display": "十二指腸潰瘍"}], "text": "十二指腸潰瘍"},
            "subject": subject, "encounter": {"reference": format!("Encounter/{eid}")}, "onsetDateTime": "2024-09-20"}))
        .await;
    app.create(&json!({"resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]},
        "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20058911", "display": "狭心症"}]},
        "subject": subject, "onsetDateTime": "2018"}))
    .await;
    app.create(&json!({"resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "category": ["medication"],
        "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/GCM/JP_JfagyMedicationAllergen_CS", "code": "GCM2260701F1ZZZ", "display": "ポビドンヨード含嗽用液７％"}], "text": "ヨードうがい液"},
        "patient": subject}))
    .await;
    app.create(&json!({"resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "category": ["food"],
        "code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_JfagyFoodAllergen_CS", "code": "J9FC11310000", "display": "さば"}], "text": "さば"},
        "patient": subject}))
    .await;
    for (local, jlac10, text, value, unit) in [
        ("K01", "3H015000002326101", "カリウム", 4.1, "mmol/L"),
        ("ALB1", "3A015000002327101", "アルブミン", 3.2, "g/dL"),
        ("HBS1", "5F016141002305151", "HBs抗原", 0.05, "S/CO"),
    ] {
        app.create(&json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [
                {"system": "http://hospital.example.jp/lab-codes", "code": local, "display": text},
                {"system": "http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "code": jlac10}], "text": text},
            "subject": subject, "effectiveDateTime": "2024-10-02T08:30:00+09:00",
            "valueQuantity": {"value": value, "unit": unit}}))
        .await;
    }
    app.create(&json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code", "code": "2316009F1022", "display": "ミヤＢＭ錠"}], "text": "ミヤＢＭ錠"},
        "subject": subject, "authoredOn": "2024-10-15T10:00:00+09:00",
        "dosageInstruction": [{"text": "1日3回毎食後",
            "timing": {"code": {"coding": [{"system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription", "code": "1013044400000000", "display": "１日３回朝昼夕食後"}]}},
            "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}]}))
    .await;
    Patient { id: pid, encounter: eid, condition: id_of(&condition) }
}

fn referral(p: &Patient) -> Value {
    json!({"kind": "referral", "patient": format!("Patient/{}", p.id), "referral": {
        "purpose": "十二指腸潰瘍の精査加療をお願いします。",
        "presentIllness": "９月下旬から上腹部痛が続いている。",
        "clinicalCourse": "PPI 内服で軽快傾向。",
        "destination": {"name": "港診療所", "institutionNumber": "1319876543", "departmentCode": "01", "departmentName": "内科", "practitionerName": "野口 英世"}}})
}

fn bodies(p: &Patient) -> Vec<Value> {
    let patient = format!("Patient/{}", p.id);
    let mut list: Vec<Value> = ["condition", "drug-allergy", "other-allergy", "lab-result", "infection"]
        .iter()
        .map(|k| json!({"kind": k, "patient": patient}))
        .collect();
    list.push(referral(p));
    list.push(json!({"kind": "discharge-summary", "patient": patient, "discharge": {
        "encounter": format!("Encounter/{}", p.encounter), "chiefComplaint": "上腹部痛", "admissionReason": "十二指腸潰瘍の加療",
        "presentIllness": "９月下旬から上腹部痛。", "hospitalCourse": "絶食と PPI で改善。", "dischargeInstructions": "２週間後に外来受診。"}}));
    list.push(json!({"kind": "checkup", "patient": patient, "checkup": {"date": "2024-10-02"}}));
    list
}

/// Polls a submission until `done` holds (at most ~20 s).
async fn wait_for(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let s = json(get(app, &format!("/clins/submissions/{id}")).await, 200).await;
        if done(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("submission {id} never reached the expected state");
}

async fn submit_accepted(app: &TestApp, body: &Value) -> Value {
    let s = json(post(app, "/clins/submissions", body).await, 202).await;
    assert_eq!(s["state"], "queued");
    wait_for(app, s["id"].as_str().unwrap(), |s| s["state"] != "queued").await
}

#[tokio::test]
async fn every_item_and_document_is_previewed_registered_and_accepted() {
    let (addr, sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    for body in bodies(&p) {
        let kind = body["kind"].as_str().unwrap().to_owned();
        let preview = json(post(&app, "/clins/preview", &body).await, 200).await;
        assert_eq!(preview["valid"], true, "{kind}: {:#}", preview["issues"]);
        assert_eq!(preview["bundle"]["identifier"]["system"], "http://jpfhir.jp/fhir/clins/bundle-identifier");
        let done = submit_accepted(&app, &body).await;
        assert_eq!(done["state"], "accepted", "{kind}: {done:#}");
        assert_eq!(done["resultCode"], "0000");
        let key = done["bundleIdentifier"].as_str().unwrap();
        assert!(key.starts_with("1318814790^20"), "{key}");
        assert_eq!(sim.registrations_of(key), 1, "{kind}");
    }
    // Prescriptions travel in documents only.
    let r = post(&app, "/clins/preview", &json!({"kind": "medication", "patient": format!("Patient/{}", p.id)})).await;
    assert_eq!(r.status(), 400);
    // The listing, by kind and state.
    let r = get(&app, &format!("/clins/submissions?patient=Patient/{}&state=accepted", p.id)).await;
    let list = json(r, 200).await;
    assert_eq!(list["submissions"].as_array().unwrap().len(), 8);
    let list = json(get(&app, "/clins/submissions?kind=referral").await, 200).await;
    assert_eq!(list["submissions"].as_array().unwrap().len(), 1);
    // Reading a submission (the Bundle sent) is audited under the patient.
    let id = list["submissions"][0]["id"].as_str().unwrap();
    let one = json(get(&app, &format!("/clins/submissions/{id}")).await, 200).await;
    assert_eq!(one["bundle"]["resourceType"], "Bundle");
    let events = app.audit_events(&format!("patient=Patient/{}", p.id)).await;
    assert!(
        events.iter().any(|e| e["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| { x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("clins/submissions/")) })),
        "no audit event names the submission read under the patient: {events:#?}"
    );
    // What the service holds for the patient.
    let held = json(post(&app, "/clins/retrieve", &json!({"patient": format!("Patient/{}", p.id)})).await, 200).await;
    assert_eq!(held["held"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn a_referral_without_purpose_is_refused_naming_the_section() {
    let (addr, sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let mut body = referral(&p);
    body["referral"].as_object_mut().unwrap().remove("purpose");
    let preview = json(post(&app, "/clins/preview", &body).await, 200).await;
    assert_eq!(preview["valid"], false);
    let outcome = json(post(&app, "/clins/submissions", &body).await, 422).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let text = outcome.to_string();
    // The validator's slice finding: which section, by its code, and where.
    assert!(text.contains("referralPurposeSection (1..1, code.coding.code = 950)"), "{outcome:#}");
    assert!(text.contains("EHR-VAL-013"), "{outcome:#}");
    assert!(text.contains("Bundle.entry[0].resource.section[2].section"), "{outcome:#}");
    assert!(sim.received().is_empty(), "nothing is sent");
    let list = json(get(&app, "/clins/submissions").await, 200).await;
    assert!(list["submissions"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_service_down_queues_retries_and_registers_once() {
    let (addr, sim) = simulator().await;
    sim.set_down(Down::Unavailable).await.unwrap();
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let s = json(
        post(&app, "/clins/submissions", &json!({"kind": "condition", "patient": format!("Patient/{}", p.id)})).await,
        202,
    )
    .await;
    let id = s["id"].as_str().unwrap();
    let waiting = wait_for(&app, id, |s| s["attempts"].as_i64().unwrap_or(0) >= 2).await;
    assert_eq!(waiting["state"], "queued");
    assert!(waiting["lastError"].as_str().unwrap().contains("503"), "{waiting:#}");
    assert!(waiting["nextAttemptAt"].is_i64());
    // Refused connections are retried the same way.
    sim.set_down(Down::Refuse).await.unwrap();
    let attempts = waiting["attempts"].as_i64().unwrap();
    wait_for(&app, id, |s| s["attempts"].as_i64().unwrap_or(0) > attempts).await;
    sim.set_down(Down::Up).await.unwrap();
    let done = wait_for(&app, id, |s| s["state"] != "queued").await;
    assert_eq!(done["state"], "accepted", "{done:#}");
    let key = done["bundleIdentifier"].as_str().unwrap();
    assert_eq!(sim.registrations_of(key), 1);
    // Every attempt carried the same request id.
    let request_ids: std::collections::BTreeSet<String> = sim
        .received()
        .iter()
        .filter(|r| r.bundle_identifier.as_deref() == Some(key))
        .map(|r| r.request_id.clone())
        .collect();
    assert_eq!(request_ids.len(), 1);
}

#[tokio::test]
async fn a_slow_service_times_out_and_is_retried_without_registering_twice() {
    let (addr, sim) = simulator().await;
    sim.set_delay(Duration::from_millis(3_500));
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let s = json(
        post(&app, "/clins/submissions", &json!({"kind": "other-allergy", "patient": format!("Patient/{}", p.id)}))
            .await,
        202,
    )
    .await;
    let id = s["id"].as_str().unwrap();
    let waiting = wait_for(&app, id, |s| s["attempts"].as_i64().unwrap_or(0) >= 1).await;
    assert_eq!(waiting["state"], "queued");
    sim.set_delay(Duration::ZERO);
    let done = wait_for(&app, id, |s| s["state"] != "queued").await;
    assert_eq!(done["state"], "accepted", "{done:#}");
    // The slow first attempt was processed too; the retry got its answer again.
    assert_eq!(sim.registrations_of(done["bundleIdentifier"].as_str().unwrap()), 1);
}

#[tokio::test]
async fn cancel_and_change() {
    let (addr, sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let patient = format!("Patient/{}", p.id);
    let first = submit_accepted(&app, &json!({"kind": "condition", "patient": patient})).await;
    let key = first["bundleIdentifier"].as_str().unwrap().to_owned();
    // Change: only the ulcer, now flagged as not to be shared; same bundle identifier.
    let body = json!({"kind": "condition", "patient": patient, "resources": [format!("Condition/{}", p.condition)], "flags": ["UNDELIVERED"]});
    let change =
        json(post(&app, &format!("/clins/submissions/{}/change", first["id"].as_str().unwrap()), &body).await, 202)
            .await;
    assert_eq!(change["operation"], "change");
    assert_eq!(change["bundleIdentifier"], key.as_str());
    let change = wait_for(&app, change["id"].as_str().unwrap(), |s| s["state"] != "queued").await;
    assert_eq!(change["state"], "accepted", "{change:#}");
    let original = json(get(&app, &format!("/clins/submissions/{}", first["id"].as_str().unwrap())).await, 200).await;
    assert_eq!(original["state"], "changed");
    let (held, cancelled, version) = sim.held(INSTITUTION, &key).unwrap();
    assert!(!cancelled);
    assert_eq!(version, 2);
    assert_eq!(held["entry"].as_array().unwrap().len(), 2);
    assert_eq!(held["entry"][1]["resource"]["meta"]["tag"][1]["code"], "UNDELIVERED");
    // Cancel the current registration.
    let cancel = json(
        post(&app, &format!("/clins/submissions/{}/cancel", change["id"].as_str().unwrap()), &json!({})).await,
        202,
    )
    .await;
    assert_eq!(cancel["operation"], "cancel");
    let cancel = wait_for(&app, cancel["id"].as_str().unwrap(), |s| s["state"] != "queued").await;
    assert_eq!(cancel["state"], "accepted", "{cancel:#}");
    assert!(sim.held(INSTITUTION, &key).unwrap().1, "cancelled at the service");
    let current = json(get(&app, &format!("/clins/submissions/{}", change["id"].as_str().unwrap())).await, 200).await;
    assert_eq!(current["state"], "cancelled");
    // Nothing left to cancel or change.
    let r = post(&app, &format!("/clins/submissions/{}/cancel", change["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(r.status(), 409);
    let r = post(&app, &format!("/clins/submissions/{}/change", change["id"].as_str().unwrap()), &body).await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn another_tenant_cannot_see_or_cancel_a_submission() {
    let (addr, _sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let s = submit_accepted(&app, &json!({"kind": "condition", "patient": format!("Patient/{}", p.id)})).await;
    let id = s["id"].as_str().unwrap();
    let other = app.token_for("another-hospital", SCOPES);
    let r = app.client.get(format!("{}/clins/submissions/{id}", app.address)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(format!("{}/clins/submissions/{id}/cancel", app.address))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app.client.get(format!("{}/clins/submissions", app.address)).bearer_auth(&other).send().await.unwrap();
    assert!(json(r, 200).await["submissions"].as_array().unwrap().is_empty());
    // Nor build from this tenant's patient.
    let body = json!({"kind": "condition", "patient": format!("Patient/{}", p.id)});
    let r = app
        .client
        .post(format!("{}/clins/preview", app.address))
        .bearer_auth(&other)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_national_submission_scope_is_required() {
    let (addr, _sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let body = json!({"kind": "condition", "patient": format!("Patient/{}", p.id)});
    for (method, path) in [
        (reqwest::Method::GET, "/clins/submissions"),
        (reqwest::Method::POST, "/clins/submissions"),
        (reqwest::Method::POST, "/clins/preview"),
        (reqwest::Method::POST, "/clins/retrieve"),
    ] {
        let r = call(&app, method.clone(), path, Some(&body), "user/*.cruds").await;
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    // Read-only (a nurse's `rs`) may look but not submit.
    let r =
        call(&app, reqwest::Method::POST, "/clins/submissions", Some(&body), "user/*.cruds user/NationalSubmission.rs")
            .await;
    assert_eq!(r.status(), 403);
    let r = call(&app, reqwest::Method::POST, "/clins/preview", Some(&body), "user/*.cruds user/NationalSubmission.rs")
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_connection_inventory_lists_the_national_services() {
    let (addr, _sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    // Before any exchange: configured, never used.
    let list =
        json(call(&app, reqwest::Method::GET, "/admin/connections", None, "user/Connection.rs").await, 200).await;
    let national = |list: &Value, name: &str| -> Value {
        list["connections"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| {
            panic!("{name} is not listed: {list}");
        })
    };
    let clins = national(&list, "電子カルテ情報共有サービス");
    assert_eq!((clins["kind"].as_str(), clins["active"].as_bool()), (Some("national"), Some(true)));
    assert_eq!(clins["address"], format!("http://{addr}"));
    assert!(clins["lastActivityAt"].is_null());
    // The e-prescription service is not configured in this test: listed, inactive.
    let eps = national(&list, "電子処方箋管理サービス");
    assert_eq!(eps["active"], false);

    let submitted = submit_accepted(&app, &json!({"kind": "condition", "patient": format!("Patient/{}", p.id)})).await;
    assert_eq!(submitted["state"], "accepted");
    let list =
        json(call(&app, reqwest::Method::GET, "/admin/connections", None, "user/Connection.rs").await, 200).await;
    let clins = national(&list, "電子カルテ情報共有サービス");
    assert!(clins["lastActivityAt"].as_i64().is_some(), "{clins}");
    assert!(clins["lastError"].is_null(), "{clins}");

    // The inventory is the tenant administrator's and the lab technician's (`Connection`), not a
    // clinician's wildcard.
    let resp = call(&app, reqwest::Method::GET, "/admin/connections", None, SCOPES).await;
    assert_eq!(resp.status(), 403);
}

/// Cancels, retrying while a worker holds the submission (409 "being sent right now").
async fn cancel_when_idle(app: &TestApp, id: &str) -> reqwest::Response {
    for _ in 0..100 {
        let r = post(app, &format!("/clins/submissions/{id}/cancel"), &json!({})).await;
        if r.status() != 409 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("submission {id} stayed busy");
}

#[tokio::test]
async fn a_queued_registration_that_never_left_is_withdrawn_and_never_sent() {
    let (addr, sim) = simulator().await;
    sim.set_down(Down::Unavailable).await.unwrap();
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let body = json!({"kind": "condition", "patient": format!("Patient/{}", p.id)});
    let s = json(post(&app, "/clins/submissions", &body).await, 202).await;
    let id = s["id"].as_str().unwrap();
    wait_for(&app, id, |s| s["attempts"].as_i64().unwrap_or(0) >= 1).await;
    let withdrawn = json(cancel_when_idle(&app, id).await, 200).await;
    assert_eq!(withdrawn["state"], "withdrawn");
    sim.set_down(Down::Up).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = json(get(&app, &format!("/clins/submissions/{id}")).await, 200).await;
    assert_eq!(after["state"], "withdrawn");
    assert!(sim.received().is_empty(), "nothing reached the service: {:?}", sim.received());
    // Nothing left to cancel.
    assert_eq!(post(&app, &format!("/clins/submissions/{id}/cancel"), &json!({})).await.status(), 409);
}

#[tokio::test]
async fn a_registration_that_may_have_arrived_is_cancelled_at_the_service_not_withdrawn() {
    let (addr, sim) = simulator().await;
    sim.set_delay(Duration::from_millis(3_500));
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let body = json!({"kind": "condition", "patient": format!("Patient/{}", p.id)});
    let s = json(post(&app, "/clins/submissions", &body).await, 202).await;
    let id = s["id"].as_str().unwrap();
    // The first attempt timed out: the service may hold it.
    wait_for(&app, id, |s| s["attempts"].as_i64().unwrap_or(0) >= 1).await;
    let r = post(&app, &format!("/clins/submissions/{id}/cancel"), &json!({})).await;
    assert_eq!(r.status(), 409, "a local withdrawal would leave the service holding it");
    sim.set_delay(Duration::ZERO);
    let done = wait_for(&app, id, |s| s["state"] != "queued").await;
    assert_eq!(done["state"], "accepted");
    let cancel = json(post(&app, &format!("/clins/submissions/{id}/cancel"), &json!({})).await, 202).await;
    let cancel = wait_for(&app, cancel["id"].as_str().unwrap(), |s| s["state"] != "queued").await;
    assert_eq!(cancel["state"], "accepted");
    let key = done["bundleIdentifier"].as_str().unwrap();
    assert!(sim.held(INSTITUTION, key).unwrap().1, "cancelled at the service");
    let original = json(get(&app, &format!("/clins/submissions/{id}")).await, 200).await;
    assert_eq!(original["state"], "cancelled");
}

#[tokio::test]
async fn one_operation_at_a_time_per_registration() {
    let (addr, sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let patient = format!("Patient/{}", p.id);
    let first = submit_accepted(&app, &json!({"kind": "condition", "patient": patient})).await;
    let first_id = first["id"].as_str().unwrap();
    sim.set_down(Down::Unavailable).await.unwrap();
    let body = json!({"kind": "condition", "patient": patient, "resources": [format!("Condition/{}", p.condition)]});
    let change = json(post(&app, &format!("/clins/submissions/{first_id}/change"), &body).await, 202).await;
    // A second change, or a cancel, could overtake the queued change between its retries.
    assert_eq!(post(&app, &format!("/clins/submissions/{first_id}/change"), &body).await.status(), 409);
    assert_eq!(post(&app, &format!("/clins/submissions/{first_id}/cancel"), &json!({})).await.status(), 409);
    // A queued registration cannot be changed (cancel it and register anew).
    let queued =
        json(post(&app, "/clins/submissions", &json!({"kind": "other-allergy", "patient": patient})).await, 202).await;
    assert_eq!(
        post(
            &app,
            &format!("/clins/submissions/{}/change", queued["id"].as_str().unwrap()),
            &json!({"kind": "other-allergy", "patient": patient})
        )
        .await
        .status(),
        409
    );
    // The queued change, withdrawn: the registration stays as it was, and can be cancelled.
    let withdrawn = json(cancel_when_idle(&app, change["id"].as_str().unwrap()).await, 200).await;
    assert_eq!(withdrawn["state"], "withdrawn");
    sim.set_down(Down::Up).await.unwrap();
    let (_, cancelled, version) = sim.held(INSTITUTION, first["bundleIdentifier"].as_str().unwrap()).unwrap();
    assert_eq!((cancelled, version), (false, 1));
    assert_eq!(post(&app, &format!("/clins/submissions/{first_id}/cancel"), &json!({})).await.status(), 202);
}

#[tokio::test]
async fn requests_naming_what_is_not_this_patients_are_refused() {
    let (addr, _sim) = simulator().await;
    let app = clins_app(addr).await;
    let p = store_patient(&app).await;
    let other = app.create(&json!({"resourceType": "Patient", "gender": "male", "birthDate": "1950-01-01"})).await;
    let theirs = app
        .create(&json!({"resourceType": "Condition",
            "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20064049"}]},
            "subject": {"reference": format!("Patient/{}", id_of(&other))}, "onsetDateTime": "2024-01-01"}))
        .await;
    // Another patient's Condition (same tenant): not found under this patient.
    let body = json!({"kind": "condition", "patient": format!("Patient/{}", p.id), "resources": [format!("Condition/{}", id_of(&theirs))]});
    let r = post(&app, "/clins/preview", &body).await;
    assert_eq!(r.status(), 404);
    let r = post(&app, "/clins/submissions", &body).await;
    assert_eq!(r.status(), 404);
    // UNINFORMED / UNDELIVERED are Condition flags.
    let body = json!({"kind": "drug-allergy", "patient": format!("Patient/{}", p.id), "flags": ["UNINFORMED"]});
    assert_eq!(post(&app, "/clins/preview", &body).await.status(), 400);
    // A refusal about this patient (422) is audited under the patient.
    let mut body = referral(&p);
    body["referral"].as_object_mut().unwrap().remove("purpose");
    json(post(&app, "/clins/submissions", &body).await, 422).await;
    let events = app.audit_events(&format!("patient=Patient/{}", p.id)).await;
    assert!(
        events.iter().any(|e| e["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("clins/submissions")))),
        "the refused submission is not audited under the patient: {events:#?}"
    );
}
