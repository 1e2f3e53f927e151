//! The e-prescription flow end to end against the simulator of the national service: order →
//! draft (JAHIS CSV) → duplicate check finds a planted duplicate → fix → check clean → register
//! (XAdES-signed) → exchange number → a pharmacy dispenses → dispensing results become
//! MedicationDispense. And: the service slow or down (queued, retried, registered once),
//! tenant isolation and scopes.

use ehr_eprescription::chrono::{self, Duration as Days};
use ehr_eprescription::model::DrugCodeType;
use ehr_eprescription::sign::{Signer, SoftwareSigner};
use ehr_eprescription::sim::{self, History, SimHandle, SimOptions};
use ehr_testkit::{TestApp, json};
use serde_json::{Value, json};
use std::time::Duration;

/// A physician working with e-prescriptions in these tests.
const SCOPES: &str = "user/*.cruds user/EPrescription.crus";

const IDE: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const USAGE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription";
const GENERAL: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode";
const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
const MEMBER: &str = "06139999:12345:67890:01";

struct Setup {
    app: TestApp,
    sim: SimHandle,
    cert_cn: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(configure: impl FnOnce(&mut ehr_app::Config)) -> Setup {
    let signer = SoftwareSigner::generate("処方医 テスト", ehr_core::Clock::now(&ehr_core::SystemClock)).unwrap();
    let dir = std::env::temp_dir().join(format!("ehr-eps-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pem"), signer.key_pem().unwrap()).unwrap();
    // The adapter refuses a key file others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(dir.join("cert.pem"), signer.cert_pem()).unwrap();
    let sim =
        sim::start(SimOptions { trusted_certificates: vec![signer.certificate().to_vec()], ..SimOptions::default() })
            .await
            .unwrap();
    let url = sim.url();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let app = TestApp::spawn_with(move |c| {
        let e = &mut c.eprescription;
        e.url = Some(url);
        e.signer_key_file = Some(key);
        e.signer_cert_file = Some(cert);
        e.poll_interval_ms = 50;
        e.retry_base_ms = 200;
        e.retry_max_ms = 1_000;
        e.request_timeout_ms = 3_000;
        e.check_timeout_ms = 3_000;
        configure(c);
    })
    .await;
    Setup { app, sim, cert_cn: "処方医 テスト".into(), _dir: TempDir(dir) }
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn eps(app: &TestApp, method: reqwest::Method, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = app.client.request(method, format!("{}{path}", app.address)).bearer_auth(app.token(SCOPES));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    req.send().await.unwrap()
}

fn name(kind: &str, family: &str, given: &str) -> Value {
    json!({"extension": [{"url": IDE, "valueCode": kind}], "use": "official", "family": family, "given": [given]})
}

/// Organization, Practitioner, Patient and Coverage; returns their ids.
async fn people(app: &TestApp) -> (String, String, String, String) {
    let org = app
        .create(&json!({"resourceType": "Organization",
            "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": "1311234567"}],
            "name": "第一病院", "telecom": [{"system": "phone", "value": "03-1234-5678"}],
            "address": [{"text": "東京都千代田区千代田９－９－９", "postalCode": "100-0001"}]}))
        .await;
    let prac = app
        .create(&json!({"resourceType": "Practitioner",
            "name": [name("IDE", "神奈川", "花子"), name("SYL", "カナガワ", "ハナコ")]}))
        .await;
    let patient = app
        .create(&json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "00000010"}],
            "name": [name("IDE", "東京", "太郎"), name("SYL", "トウキョウ", "タロウ")],
            "gender": "male", "birthDate": "1950-02-11"}))
        .await;
    let pid = patient["id"].as_str().unwrap().to_owned();
    let coverage = app
        .create(&json!({"resourceType": "Coverage", "status": "active",
            "subscriberId": "67890", "dependent": "01",
            "type": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.61", "code": "1"}]},
            "beneficiary": {"reference": format!("Patient/{pid}")},
            "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
            "payor": [{"identifier": {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber", "value": "06139999"}}],
            "class": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]}, "value": "12345"}],
            "extension": [{"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonSymbol", "valueString": "12345"}],
            "costToBeneficiary": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-copay-type", "code": "copaypct"}]},
                "valueQuantity": {"value": 30, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}]}))
        .await;
    (
        org["id"].as_str().unwrap().to_owned(),
        prac["id"].as_str().unwrap().to_owned(),
        pid,
        coverage["id"].as_str().unwrap().to_owned(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn order(
    app: &TestApp,
    patient: &str,
    prac: &str,
    rp: u32,
    idx: u32,
    system: &str,
    code: &str,
    text: &str,
    usage: (&str, &str),
    days: u32,
) -> String {
    let mr = app
        .create(&json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "identifier": [
                {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber", "value": rp.to_string()},
                {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex", "value": idx.to_string()}],
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": text}], "text": text},
            "subject": {"reference": format!("Patient/{patient}")},
            "requester": {"reference": format!("Practitioner/{prac}")},
            "authoredOn": "2026-04-01T09:00:00+09:00",
            "dosageInstruction": [{
                "timing": {"code": {"coding": [{"system": USAGE, "code": usage.0, "display": usage.1}]}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}],
            "dispenseRequest": {"expectedSupplyDuration": {"value": days, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}}))
        .await;
    mr["id"].as_str().unwrap().to_owned()
}

const TID: (&str, &str) = ("1013044400000000", "１日３回朝昼夕食後　服用");
const HS: (&str, &str) = ("1050000000000000", "１日１回就寝前　服用");

fn today_jst() -> chrono::NaiveDate {
    (ehr_core::Clock::now(&ehr_core::SystemClock) + Days::hours(9)).date_naive()
}

fn plant_loxoprofen(sim: &SimHandle) {
    sim.plant(History {
        member_key: MEMBER.into(),
        source: "dispensing".into(),
        institution: "1319999999".into(),
        code_type: DrugCodeType::Yj,
        code: "1149019F1560".into(),
        name: "ロキソニン錠６０ｍｇ".into(),
        date: today_jst() - Days::days(3),
        days: 14,
    });
}

async fn draft(app: &TestApp, patient: &str, coverage: &str, org: &str, mrs: &[&str]) -> reqwest::Response {
    let body = json!({"patient": format!("Patient/{patient}"), "coverage": format!("Coverage/{coverage}"),
        "organization": format!("Organization/{org}"), "department": {"code": "01", "name": "内科"},
        "medicationRequests": mrs.iter().map(|m| format!("MedicationRequest/{m}")).collect::<Vec<_>>()});
    eps(app, reqwest::Method::POST, "/eprescription/prescriptions", Some(&body)).await
}

async fn wait_state(app: &TestApp, id: &str, state: &str) -> Value {
    for _ in 0..200 {
        let v =
            json(eps(app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id}"), None).await, 200).await;
        if v["state"] == state {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("prescription {id} never reached {state}");
}

#[tokio::test]
async fn order_check_fix_register_dispense() {
    let Setup { app, sim, cert_cn, _dir } = setup(|_| {}).await;
    plant_loxoprofen(&sim);
    let (org, prac, patient, coverage) = people(&app).await;
    let lox =
        order(&app, &patient, &prac, 1, 1, GENERAL, "1149019F1ZZZ", "【般】ロキソプロフェンＮａ錠６０ｍｇ", TID, 7)
            .await;
    let reb = order(&app, &patient, &prac, 1, 2, YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 7).await;
    let mag = order(&app, &patient, &prac, 2, 1, YJ, "2344009F1037", "酸化マグネシウム錠３３０ｍｇ", HS, 14).await;

    // What is missing is named.
    let no_org =
        json!({"patient": format!("Patient/{patient}"), "medicationRequests": [format!("MedicationRequest/{lox}")]});
    let oo = json(eps(&app, reqwest::Method::POST, "/eprescription/prescriptions", Some(&no_org)).await, 422).await;
    assert!(oo.to_string().contains("organization"), "{oo}");

    // Draft: the CSV, record by record.
    let d1 = json(draft(&app, &patient, &coverage, &org, &[&lox, &reb, &mag]).await, 201).await;
    assert_eq!(d1["state"], "draft");
    let id1 = d1["id"].as_str().unwrap().to_owned();
    let csv_resp = eps(&app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id1}/csv"), None).await;
    assert_eq!(csv_resp.status(), 200);
    let text = csv_resp.text().await.unwrap();
    assert!(!text.contains('\r'));
    let numbers: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(
        numbers,
        [
            "1", "2", "3", "4", "5", "11", "12", "13", "21", "22", "23", "24", "51", "101", "111", "201", "201", "101",
            "111", "201"
        ]
    );
    assert!(text.contains("\n23,12345,67890,1,01\n"), "{text}");
    assert!(text.contains("\n201,1,1,1,6,1149019F1ZZZ,【般】ロキソプロフェンＮａ錠６０ｍｇ,1,1,錠\n"), "{text}");

    // The check finds the planted duplicate; registering is refused until it is fixed.
    let checked =
        json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id1}/check"), None).await, 200)
            .await;
    let findings = checked["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{checked}");
    assert_eq!(findings[0]["kind"], "duplicate");
    assert_eq!(findings[0]["drugCode"], "1149019F1ZZZ");
    assert_eq!(findings[0]["otherInstitution"], true);
    let refused = json(
        eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id1}/register"), None).await,
        422,
    )
    .await;
    assert!(refused.to_string().contains("EHR-EPS-006"), "{refused}");

    // Fix: cancel the duplicate order and the draft, order acetaminophen instead, draft anew.
    let mut cancelled = json(app.get(&format!("/MedicationRequest/{lox}")).await, 200).await;
    cancelled["status"] = json!("cancelled");
    json(app.put(&format!("/MedicationRequest/{lox}"), &cancelled).await, 200).await;
    let stale = json(draft(&app, &patient, &coverage, &org, &[&lox, &reb, &mag]).await, 422).await;
    assert!(stale.to_string().contains(&format!("MedicationRequest/{lox}.status")), "{stale}");
    json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id1}/cancel"), None).await, 200)
        .await;
    let ace =
        order(&app, &patient, &prac, 1, 1, GENERAL, "1141007F1ZZZ", "【般】アセトアミノフェン錠２００ｍｇ", TID, 7)
            .await;
    let d2 = json(draft(&app, &patient, &coverage, &org, &[&ace, &reb, &mag]).await, 201).await;
    let id2 = d2["id"].as_str().unwrap().to_owned();
    let clean =
        json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/check"), None).await, 200)
            .await;
    assert_eq!(clean["findings"], json!([]), "{clean}");

    // Register: signed, queued, sent by the worker, exchange number back.
    let queued = json(
        eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/register"), None).await,
        202,
    )
    .await;
    assert_eq!(queued["state"], "queued");
    let registered = wait_state(&app, &id2, "registered").await;
    assert_eq!(registered["exchangeNumber"].as_str().unwrap().len(), 16);
    let prescription_id = registered["prescriptionId"].as_str().unwrap().to_owned();
    assert_eq!(sim.registrations(), 1);
    let at_service = sim.prescription(&prescription_id).unwrap();
    assert!(at_service.signer.unwrap().contains(&cert_cn), "signed by the configured signer");
    assert_eq!(at_service.prescription.rps.len(), 2);

    // The JAMI document.
    let doc =
        json(eps(&app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id2}/document"), None).await, 200)
            .await;
    assert_eq!(doc["type"], "document");
    assert_eq!(doc["entry"][0]["resource"]["type"]["coding"][0]["code"], "57833-6");

    // Filing dispensings is the pharmacist's duty (the access matrix's columns as scopes): a
    // physician's scopes (EPrescription crus, MedicationDispense rs) are refused, a pharmacist's
    // (EPrescription rs, MedicationDispense crus) pass.
    let dispensing = format!("{}/eprescription/prescriptions/{id2}/dispensing", app.address);
    let physician = app.token("user/EPrescription.crus user/MedicationDispense.rs user/MedicationRequest.crus");
    let resp = app.client.post(&dispensing).bearer_auth(physician).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let pharmacist = app.token("user/EPrescription.rs user/MedicationDispense.crus user/MedicationRequest.rus");
    let resp = app.client.post(&dispensing).bearer_auth(pharmacist).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // A pharmacy dispenses; the results become MedicationDispense, once.
    let before = json(
        eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/dispensing"), None).await,
        200,
    )
    .await;
    assert_eq!(before["created"], json!([]));
    sim.dispense(&prescription_id, today_jst()).unwrap();
    let fetched = json(
        eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/dispensing"), None).await,
        200,
    )
    .await;
    assert_eq!(fetched["state"], "dispensed");
    assert_eq!(fetched["created"].as_array().unwrap().len(), 3, "{fetched}");
    let again = json(
        eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/dispensing"), None).await,
        200,
    )
    .await;
    assert_eq!(again["created"], json!([]));
    let by_patient = json(app.get(&format!("/MedicationDispense?patient=Patient/{patient}")).await, 200).await;
    assert_eq!(by_patient["total"], 3, "{by_patient}");
    let by_order = json(app.get(&format!("/MedicationDispense?prescription=MedicationRequest/{mag}")).await, 200).await;
    assert_eq!(by_order["total"], 1);
    let md = &by_order["entry"][0]["resource"];
    assert_eq!(md["status"], "completed");
    assert_eq!(md["quantity"]["value"], 14.0);
    assert_eq!(md["daysSupply"]["value"], 14, "内服: 調剤数量 is days");
    assert_eq!(md["authorizingPrescription"][0]["reference"], format!("MedicationRequest/{mag}"));
    assert_eq!(fetched["medicationDispenses"], again["medicationDispenses"], "the same list on every fetch");
    assert_eq!(md["subject"]["reference"], format!("Patient/{patient}"));

    // A dispensed prescription cannot be cancelled at the service.
    json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id2}/cancel"), None).await, 409)
        .await;
    let list = json(
        eps(&app, reqwest::Method::GET, &format!("/eprescription/prescriptions?patient={patient}"), None).await,
        200,
    )
    .await;
    assert_eq!(list["prescriptions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_slow_or_down_service_is_retried_and_registers_once() {
    let Setup { app, sim, .. } = setup(|c| {
        c.eprescription.request_timeout_ms = 600;
        c.eprescription.max_attempts = 30;
    })
    .await;
    let (org, prac, patient, coverage) = people(&app).await;
    let reb = order(&app, &patient, &prac, 1, 1, YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 7).await;
    let d = json(draft(&app, &patient, &coverage, &org, &[&reb]).await, 201).await;
    let id = d["id"].as_str().unwrap().to_owned();

    // Down: the check answers 503 and the draft stays a draft.
    sim.set_down(true);
    let oo =
        json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id}/check"), None).await, 503)
            .await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(wait_state(&app, &id, "draft").await["check"], Value::Null);
    sim.set_down(false);
    json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id}/check"), None).await, 200).await;

    // Down: attempts pile up, the user sees the state.
    sim.set_down(true);
    json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id}/register"), None).await, 202)
        .await;
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen =
            json(eps(&app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id}"), None).await, 200).await;
        if seen["attempts"].as_i64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["state"], "queued", "{seen}");
    assert!(seen["lastError"].as_str().unwrap().contains("503"), "{seen}");
    assert!(seen["nextAttemptAt"].is_number());
    assert_eq!(sim.registrations(), 0);

    // Up but slow: an attempt times out although the service registers it; the next attempt
    // (same ArbitraryFileIdentifier) gets the first answer.
    sim.set_delay(Duration::from_millis(1_200));
    sim.set_down(false);
    for _ in 0..100 {
        if sim.registrations() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.registrations(), 1, "the slow attempt was registered at the service");
    seen = json(eps(&app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id}"), None).await, 200).await;
    assert_eq!(seen["state"], "queued", "the sender gave up waiting: {seen}");
    sim.set_delay(Duration::ZERO);
    let registered = wait_state(&app, &id, "registered").await;
    assert!(registered["exchangeNumber"].is_string());
    assert_eq!(sim.registrations(), 1, "registered exactly once");
    assert!(sim.received(ehr_eprescription::xml::REGISTER) >= 2, "retried");
}

#[tokio::test]
async fn other_tenants_and_missing_scopes_are_refused() {
    let Setup { app, .. } = setup(|_| {}).await;
    let (org, prac, patient, coverage) = people(&app).await;
    let reb = order(&app, &patient, &prac, 1, 1, YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 7).await;
    let d = json(draft(&app, &patient, &coverage, &org, &[&reb]).await, 201).await;
    let id = d["id"].as_str().unwrap();
    // Another tenant: not found, whatever its scopes.
    let other = app.token_for("t-someoneelse1", SCOPES);
    for path in [format!("/eprescription/prescriptions/{id}"), format!("/eprescription/prescriptions/{id}/csv")] {
        let r = app.client.get(format!("{}{path}", app.address)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = app
        .client
        .post(format!("{}/eprescription/prescriptions/{id}/register", app.address))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // `*` does not reach the pseudo type; read-only scopes cannot register.
    let wildcard = app.token("user/*.cruds");
    let r = app
        .client
        .get(format!("{}/eprescription/prescriptions", app.address))
        .bearer_auth(&wildcard)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let reader = app.token("user/*.rs user/EPrescription.rs");
    let r = app
        .client
        .get(format!("{}/eprescription/prescriptions/{id}", app.address))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .post(format!("{}/eprescription/prescriptions/{id}/check", app.address))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Polls until the prescription has made at least `n` attempts.
async fn wait_attempts(app: &TestApp, id: &str, n: i64) -> Value {
    for _ in 0..200 {
        let v =
            json(eps(app, reqwest::Method::GET, &format!("/eprescription/prescriptions/{id}"), None).await, 200).await;
        if v["attempts"].as_i64().unwrap_or(0) >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("prescription {id} never made {n} attempts");
}

#[tokio::test]
async fn cancel_while_queued_never_leaves_a_live_prescription_behind() {
    let Setup { app, sim, .. } = setup(|c| {
        c.eprescription.request_timeout_ms = 600;
        c.eprescription.retry_base_ms = 400;
        c.eprescription.max_attempts = 50;
    })
    .await;
    let (org, prac, patient, coverage) = people(&app).await;
    let reb = order(&app, &patient, &prac, 1, 1, YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 7).await;
    let path = |id: &str, op: &str| format!("/eprescription/prescriptions/{id}/{op}");

    // Down (503: the service took nothing): cancelling the queued registration is local and
    // final — the service never registers it.
    let a = json(draft(&app, &patient, &coverage, &org, &[&reb]).await, 201).await;
    let a = a["id"].as_str().unwrap().to_owned();
    json(eps(&app, reqwest::Method::POST, &path(&a, "check"), None).await, 200).await;
    sim.set_down(true);
    json(eps(&app, reqwest::Method::POST, &path(&a, "register"), None).await, 202).await;
    wait_attempts(&app, &a, 1).await;
    let mut cancelled = Value::Null;
    for _ in 0..100 {
        // 409 only while the sender holds it at this very moment.
        let r = eps(&app, reqwest::Method::POST, &path(&a, "cancel"), None).await;
        if r.status() == 200 {
            cancelled = r.json().await.unwrap();
            break;
        }
        assert_eq!(r.status(), 409);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    sim.set_down(false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sim.registrations(), 0, "a cancelled registration is never sent");
    assert_eq!(wait_state(&app, &a, "cancelled").await["state"], "cancelled");

    // Slow (the attempt timed out but the service registered it): no local cancel; once the
    // retry learns the outcome, the cancel goes to the service.
    let b = json(draft(&app, &patient, &coverage, &org, &[&reb]).await, 201).await;
    let b = b["id"].as_str().unwrap().to_owned();
    json(eps(&app, reqwest::Method::POST, &path(&b, "check"), None).await, 200).await;
    sim.set_delay(Duration::from_millis(1_500));
    json(eps(&app, reqwest::Method::POST, &path(&b, "register"), None).await, 202).await;
    let seen = wait_attempts(&app, &b, 1).await;
    assert!(seen["lastError"].as_str().unwrap().contains("in time"), "{seen}");
    let refused = json(eps(&app, reqwest::Method::POST, &path(&b, "cancel"), None).await, 409).await;
    assert!(refused.to_string().contains("may have reached the service"), "{refused}");
    sim.set_delay(Duration::ZERO);
    let registered = wait_state(&app, &b, "registered").await;
    assert_eq!(sim.registrations(), 1);
    let cancelled = json(eps(&app, reqwest::Method::POST, &path(&b, "cancel"), None).await, 200).await;
    assert_eq!(cancelled["state"], "cancelled");
    let at_service = sim.prescription(registered["prescriptionId"].as_str().unwrap()).unwrap();
    assert_eq!(at_service.status, "cancelled", "cancelled at the service, not only here");
}

#[tokio::test]
async fn register_twice_at_once_queues_once_and_the_body_needs_scope_and_json() {
    let Setup { app, sim, .. } = setup(|_| {}).await;
    let (org, prac, patient, coverage) = people(&app).await;
    let reb = order(&app, &patient, &prac, 1, 1, YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 7).await;
    let d = json(draft(&app, &patient, &coverage, &org, &[&reb]).await, 201).await;
    let id = d["id"].as_str().unwrap().to_owned();
    json(eps(&app, reqwest::Method::POST, &format!("/eprescription/prescriptions/{id}/check"), None).await, 200).await;
    let path = format!("/eprescription/prescriptions/{id}/register");
    let (r1, r2) =
        tokio::join!(eps(&app, reqwest::Method::POST, &path, None), eps(&app, reqwest::Method::POST, &path, None));
    let mut statuses = [r1.status().as_u16(), r2.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 409]);
    wait_state(&app, &id, "registered").await;
    assert_eq!(sim.registrations(), 1);
    // Not JSON: an OperationOutcome, not an echo of the body.
    let r = app
        .client
        .post(format!("{}/eprescription/prescriptions", app.address))
        .bearer_auth(app.token(SCOPES))
        .header("content-type", "text/plain")
        .body("山田太郎")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("OperationOutcome") && !body.contains("山田"), "{body}");
    // No create scope: refused before the body is read.
    let r = app
        .client
        .post(format!("{}/eprescription/prescriptions", app.address))
        .bearer_auth(app.token("user/*.cruds user/EPrescription.rs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
