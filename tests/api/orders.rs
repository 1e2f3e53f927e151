//! The orders service through the gateway: lab orders and their workflow, master-code checks,
//! reservations with atomic slot booking, tenant isolation.

use crate::id_of;
use ehr_testkit::{TestApp, json, outcome, patient};
use serde_json::{Value, json};

/// The JLAC10 code of AST (GOT), serum, JSCC-standardised UV method.
pub const AST: &str = "3B035000002327201";
pub const JLAC10: &str = "http://medis.or.jp/CodeSystem/master-JLAC10-17digits";

/// An active lab order for AST on `patient_id`.
pub fn lab_order(patient_id: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]}],
        "code": {"coding": [
            {"system": JLAC10, "code": AST, "display": "AST"},
            {"system": "urn:ehr:hospital:lab-codes", "code": "L0012", "display": "AST(GOT)"}
        ], "text": "AST"},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "authoredOn": "2026-11-25T09:00:00+09:00",
        "requester": {"reference": "Practitioner/dr-yamada", "display": "山田 一郎"}
    })
}

#[tokio::test]
async fn lab_orders_are_stored_searched_and_follow_their_workflow() {
    let app = TestApp::spawn().await;
    let p = app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await;
    let pid = id_of(&p);
    let sr = app.create(&lab_order(&pid)).await;
    let id = id_of(&sr);

    let found =
        json(app.get(&format!("/ServiceRequest?patient={pid}&code={JLAC10}|{AST}&status=active")).await, 200).await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["entry"][0]["resource"]["id"], id.as_str());

    // The subject of an order never changes: results would be filed under the wrong patient.
    let other = id_of(&app.create(&patient("佐藤", "次郎", "1980-05-06", "P-0002")).await);
    let mut moved = sr.clone();
    moved["subject"]["reference"] = json!(format!("Patient/{other}"));
    outcome(app.put(&format!("/ServiceRequest/{id}"), &moved).await, 422, "business-rule").await;

    // active → completed is allowed; completed → active is not.
    let mut done = sr.clone();
    done["status"] = json!("completed");
    json(app.put(&format!("/ServiceRequest/{id}"), &done).await, 200).await;
    let mut again = done.clone();
    again["status"] = json!("active");
    outcome(app.put(&format!("/ServiceRequest/{id}"), &again).await, 422, "business-rule").await;
    // …but a completed order may be marked entered-in-error.
    let mut error = done.clone();
    error["status"] = json!("entered-in-error");
    json(app.put(&format!("/ServiceRequest/{id}"), &error).await, 200).await;
}

#[tokio::test]
async fn order_codes_are_checked_against_the_master_code_systems() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await);
    let mut bad = lab_order(&pid);
    // 16 characters: not a JLAC10 code.
    bad["code"]["coding"][0]["code"] = json!("3B03500000232720");
    outcome(app.post("/ServiceRequest", &bad).await, 422, "value").await;
    assert_eq!(json(app.get("/ServiceRequest").await, 200).await["total"], 0, "nothing stored");
}

#[tokio::test]
async fn prescriptions_specimens_and_tasks_are_served() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await);
    let mr = app
        .create(&json!({
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code", "code": "2171014F1020", "display": "アムロジピン錠5mg"}]},
            "subject": {"reference": format!("Patient/{pid}")},
            "authoredOn": "2026-11-25"
        }))
        .await;
    let found = json(app.get(&format!("/MedicationRequest?patient={pid}&status=active")).await, 200).await;
    assert_eq!(found["total"], 1, "{found}");
    let mut stopped = mr.clone();
    stopped["status"] = json!("stopped");
    json(app.put(&format!("/MedicationRequest/{}", id_of(&mr)), &stopped).await, 200).await;

    let sp = app
        .create(&json!({
            "resourceType": "Specimen",
            "status": "available",
            "type": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationSampleMaterialCode_CS", "code": "023", "display": "血清"}]},
            "subject": {"reference": format!("Patient/{pid}")},
            "collection": {"collectedDateTime": "2026-11-25T09:10:00+09:00"}
        }))
        .await;
    assert_eq!(json(app.get(&format!("/Specimen?patient={pid}")).await, 200).await["total"], 1);

    let task = app
        .create(&json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "focus": {"reference": format!("Specimen/{}", id_of(&sp))},
            "for": {"reference": format!("Patient/{pid}")}
        }))
        .await;
    let mut done = task.clone();
    done["status"] = json!("completed");
    // requested → completed skips the work: the R4 Task state machine goes through in-progress.
    outcome(app.put(&format!("/Task/{}", id_of(&task)), &done).await, 422, "business-rule").await;
}

async fn slot(app: &TestApp) -> (String, String) {
    let schedule = app
        .create(&json!({
            "resourceType": "Schedule",
            "active": true,
            "actor": [{"reference": "Practitioner/dr-yamada"}],
            "planningHorizon": {"start": "2026-12-01T09:00:00+09:00", "end": "2026-12-01T12:00:00+09:00"}
        }))
        .await;
    let slot = app
        .create(&json!({
            "resourceType": "Slot",
            "schedule": {"reference": format!("Schedule/{}", id_of(&schedule))},
            "status": "free",
            "start": "2026-12-01T09:00:00+09:00",
            "end": "2026-12-01T09:15:00+09:00"
        }))
        .await;
    (id_of(&schedule), id_of(&slot))
}

fn appointment(slot_id: &str, patient_id: &str) -> Value {
    json!({
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "start": "2026-12-01T09:00:00+09:00",
        "end": "2026-12-01T09:15:00+09:00",
        "participant": [{"actor": {"reference": format!("Patient/{patient_id}")}, "status": "accepted"}]
    })
}

/// Of many concurrent bookings of one slot exactly one wins; the others get 409 and leave no
/// Appointment behind. Runs on PostgreSQL in the PostgreSQL CI pass (row locks), on SQLite
/// otherwise (one writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bookings_of_one_slot_have_exactly_one_winner() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await);
    let (_, slot_id) = slot(&app).await;
    let attempts = 12;
    let results = futures::future::join_all((0..attempts).map(|_| {
        let body = appointment(&slot_id, &pid);
        let app = &app;
        async move { app.post("/Appointment", &body).await.status().as_u16() }
    }))
    .await;
    let won = results.iter().filter(|s| **s == 201).count();
    let lost = results.iter().filter(|s| **s == 409).count();
    assert_eq!((won, lost), (1, attempts - 1), "{results:?}");
    assert_eq!(json(app.get("/Appointment").await, 200).await["total"], 1);
    let slot = json(app.get(&format!("/Slot/{slot_id}")).await, 200).await;
    assert_eq!(slot["status"], "busy");
    // Nobody frees a held slot by hand (that would let a second booking in).
    let mut freed = slot.clone();
    freed["status"] = json!("free");
    outcome(app.put(&format!("/Slot/{slot_id}"), &freed).await, 409, "conflict").await;
    let by_slot = json(app.get(&format!("/Appointment?slot=Slot/{slot_id}")).await, 200).await;
    assert_eq!(by_slot["total"], 1);

    // Cancelling gives the slot back; it can be booked again.
    let booked = by_slot["entry"][0]["resource"].clone();
    let mut cancelled = booked.clone();
    cancelled["status"] = json!("cancelled");
    json(app.put(&format!("/Appointment/{}", id_of(&booked)), &cancelled).await, 200).await;
    assert_eq!(json(app.get(&format!("/Slot/{slot_id}")).await, 200).await["status"], "free");
    json(app.post("/Appointment", &appointment(&slot_id, &pid)).await, 201).await;
    assert_eq!(json(app.get(&format!("/Slot/{slot_id}")).await, 200).await["status"], "busy");
}

#[tokio::test]
async fn booking_a_missing_or_foreign_slot_fails() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await);
    outcome(app.post("/Appointment", &appointment("no-such-slot", &pid)).await, 422, "business-rule").await;
    // Another tenant's slot does not exist for this tenant.
    let (_, slot_id) = slot(&app).await;
    let other = app.token_for("another-tenant", ehr_testkit::ALL_SCOPES);
    let resp = app
        .client
        .post(app.fhir("/Appointment"))
        .bearer_auth(&other)
        .header("content-type", "application/fhir+json")
        .body(appointment(&slot_id, &pid).to_string())
        .send()
        .await
        .unwrap();
    outcome(resp, 422, "business-rule").await;
    assert_eq!(json(app.get(&format!("/Slot/{slot_id}")).await, 200).await["status"], "free");
}

#[tokio::test]
async fn order_resources_are_isolated_between_tenants() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("山田", "花子", "1970-01-02", "P-0001")).await);
    let (schedule_id, slot_id) = slot(&app).await;
    let sr = id_of(&app.create(&lab_order(&pid)).await);
    let ap = id_of(&app.create(&appointment(&slot_id, &pid)).await);
    let other = app.token_for("another-tenant", ehr_testkit::ALL_SCOPES);
    for path in [
        format!("/ServiceRequest/{sr}"),
        format!("/Appointment/{ap}"),
        format!("/Slot/{slot_id}"),
        format!("/Schedule/{schedule_id}"),
    ] {
        let resp = app.client.get(app.fhir(&path)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path} leaked across tenants");
    }
    for search in ["/ServiceRequest", "/Appointment", "/Slot", "/Schedule", "/MedicationRequest", "/Specimen", "/Task"]
    {
        let resp = app.client.get(app.fhir(search)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(json(resp, 200).await["total"], 0, "{search} leaked across tenants");
    }
}

#[tokio::test]
async fn the_capability_statement_lists_the_order_types() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    let types: Vec<&str> =
        cs["rest"][0]["resource"].as_array().unwrap().iter().filter_map(|r| r["type"].as_str()).collect();
    for t in ["ServiceRequest", "MedicationRequest", "Specimen", "Task", "Schedule", "Slot", "Appointment"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
}
