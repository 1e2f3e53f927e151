//! The outsourced-lab interface end to end: a lab order goes out as a JAHIS OML^O33 over MLLP to
//! the lab simulator (which checks it field by field), results come back as OUL^R22 and are
//! filed as JP Core lab Observations and a DiagnosticReport; the order completes. With the lab
//! down for a while (retries, nothing lost), a duplicated result message (stored once), and
//! malformed messages (NAK with an ERR naming the field, nothing stored).

use crate::id_of;
use crate::orders::{AST, JLAC10, lab_order};
use ehr_hl7v2::net::{MllpTimeouts, send_message};
use ehr_lab_sim::{LabSimConfig, LabSimHandle};
use ehr_testkit::{TestApp, json, patient};
use serde_json::{Value, json};
use std::time::Duration;

/// The scopes of a tenant administrator who also works with lab data in these tests.
const ADMIN: &str = "user/*.cruds user/Connection.crus user/LabMessage.crus";

async fn lab_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.lab.listen = Some("127.0.0.1:0".into());
        c.lab.retry_base_ms = 1_000;
        c.lab.connect_timeout_ms = 500;
        c.lab.reply_timeout_ms = 3_000;
    })
    .await
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = app.client.request(method, format!("{}{path}", app.address)).bearer_auth(app.token(ADMIN));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    req.send().await.unwrap()
}

async fn simulator(app: &TestApp, duplicate: bool) -> LabSimHandle {
    simulator_with(app, duplicate, Some(0)).await
}

/// A simulator; `result_delay_ms` `None`: results only when the test asks for them.
async fn simulator_with(app: &TestApp, duplicate: bool, result_delay_ms: Option<u64>) -> LabSimHandle {
    let mut config = LabSimConfig::for_tests(app.lab_mllp.map(|a| a.to_string()));
    config.result_delay_ms = result_delay_ms;
    config.duplicate_results = duplicate;
    config.sending_facility = "LABCO".into();
    config.receiving_facility = "HOSP".into();
    ehr_lab_sim::start(config).await.unwrap()
}

async fn register_lab(app: &TestApp, sim: &LabSimHandle, charset: &str) -> Value {
    let body = json!({
        "name": "検査センターA", "labFacility": "LABCO", "labApplication": "LABSYS",
        "ourFacility": "HOSP", "ourApplication": "HIS", "address": sim.local_addr().to_string(),
        "charset": charset, "isDefault": true, "maxAttempts": 8
    });
    json(admin(app, reqwest::Method::POST, "/lab/endpoints", Some(&body)).await, 201).await
}

/// The settings of an endpoint as the API shows it, as a body to `PUT` back (without the fields
/// the server manages).
fn settings_of(endpoint: &Value) -> Value {
    let mut body = endpoint.clone();
    for k in ["id", "createdAt", "updatedAt", "lastOutboundAt", "lastInboundAt", "lastError"] {
        body.as_object_mut().unwrap().remove(k);
    }
    body
}

/// A patient as JP Core writes one: local patient id, kanji and kana names.
fn jp_patient() -> Value {
    let mut p = patient("山田", "花子", "1970-01-02", "P-12345");
    p["name"] = json!([
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
         "use": "official", "family": "山田", "given": ["花子"]},
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYB"}],
         "use": "official", "family": "ヤマダ", "given": ["ハナコ"]}
    ]);
    p
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the order's message went out at least once (the event went through the bus and
/// the sender tried): only then does the lab interface take results for it.
async fn queued(app: &TestApp, sr_id: &str) -> Value {
    let subject = format!("?subject=ServiceRequest/{sr_id}");
    wait_for("the order sent at least once", || async {
        messages(app, &subject).await.into_iter().find(|m| m["attempts"].as_i64() >= Some(1))
    })
    .await
}

async fn messages(app: &TestApp, query: &str) -> Vec<Value> {
    let body = json(admin(app, reqwest::Method::GET, &format!("/lab/messages{query}"), None).await, 200).await;
    body["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_order_round_trip_survives_an_outage_and_a_duplicate() {
    let app = lab_app().await;
    let sim = simulator(&app, true).await;
    register_lab(&app, &sim, "iso-ir-87").await;
    let pid = id_of(&app.create(&jp_patient()).await);

    // The lab is down when the order is placed.
    sim.set_down(true).await.unwrap();
    let sr = app.create(&lab_order(&pid)).await;
    let sr_id = id_of(&sr);
    let subject = format!("?subject=ServiceRequest/{sr_id}&direction=out");
    let failed = wait_for("a failed delivery attempt", || async {
        messages(&app, &subject).await.into_iter().find(|m| m["attempts"].as_i64() >= Some(1))
    })
    .await;
    assert_eq!(failed["status"], "pending", "a transport failure is retried: {failed}");
    assert!(failed["lastError"].as_str().is_some_and(|e| !e.is_empty()), "{failed}");
    assert!(sim.received().is_empty());

    // The lab comes back; once the back-off has passed, the order goes out.
    sim.set_down(false).await.unwrap();
    app.advance(5);
    let received = sim.wait_for_received(1, Duration::from_secs(10)).await;
    let order = &received[0];
    assert!(order.problems.is_empty(), "the simulator found problems: {:?}", order.problems);
    assert_eq!(order.ack_code.as_str(), "AA");
    assert_eq!(order.message_type.as_deref(), Some("OML^O33^OML_O33"));
    assert_eq!(order.placer_order_number.as_deref(), Some(sr_id.as_str()));
    assert_eq!(order.patient.id, "P-12345");
    let kanji = order.patient.kanji_name.as_ref().expect("kanji name");
    assert_eq!((kanji.family.as_str(), kanji.given.as_str()), ("山田", "花子"));
    let kana = order.patient.kana_name.as_ref().expect("kana name");
    assert_eq!((kana.family.as_str(), kana.given.as_str()), ("ヤマダ", "ハナコ"));
    assert_eq!(order.patient.birth_date.as_ref().map(|t| t.as_str()), Some("19700102"));
    assert_eq!(order.patient.sex.map(|s| s.code()), Some("F"));
    assert_eq!(order.specimen_code(), Some("023"), "serum, from the JLAC10 material digits");
    assert_eq!(order.test_codes(), vec![AST]);
    assert_eq!(order.charset, Some(ehr_hl7v2::Charset::Iso2022Jp));
    let raw = order.text.as_deref().unwrap();
    assert!(raw.contains("~ISO IR87") && raw.contains("ISO 2022-1994"), "MSH-18/20 as JAHIS has them");
    assert!(order.raw.contains(&0x1B), "ISO-2022-JP escape sequences on the wire");

    // Results come back (twice, same MSH-10) and are filed once.
    let obs = wait_for("the Observation", || async {
        let b = json(app.get(&format!("/Observation?patient={pid}&code={JLAC10}|{AST}")).await, 200).await;
        (b["total"] == 1).then_some(b)
    })
    .await;
    let o = &obs["entry"][0]["resource"];
    assert_eq!(o["basedOn"][0]["reference"], format!("ServiceRequest/{sr_id}"));
    assert_eq!(o["status"], "final");
    assert!(o["valueQuantity"]["value"].is_number(), "{o}");
    assert!(o["meta"]["profile"][0].as_str().is_some_and(|p| p.ends_with("JP_Observation_LabResult")), "{o}");
    let codings = o["code"]["coding"].as_array().unwrap();
    assert!(codings.iter().any(|c| c["system"] == JLAC10 && c["code"] == AST), "JLAC10 coding: {o}");
    assert!(codings.iter().any(|c| c["system"] != JLAC10), "the lab's local code is kept: {o}");

    let dr = wait_for("the DiagnosticReport", || async {
        let b = json(app.get(&format!("/DiagnosticReport?based-on=ServiceRequest/{sr_id}")).await, 200).await;
        (b["total"] == 1).then_some(b)
    })
    .await;
    let report = &dr["entry"][0]["resource"];
    assert_eq!(report["status"], "final");
    assert_eq!(report["result"][0]["reference"], format!("Observation/{}", o["id"].as_str().unwrap()));
    assert_eq!(report["subject"]["reference"], format!("Patient/{pid}"));

    wait_for("the order to complete", || async {
        let sr = json(app.get(&format!("/ServiceRequest/{sr_id}")).await, 200).await;
        (sr["status"] == "completed").then_some(sr)
    })
    .await;

    // Both copies of the result message were acknowledged; one is in the log.
    let sent = sim.wait_for_sent(2, Duration::from_secs(10)).await;
    assert!(sent.iter().all(|s| s.ack_code.map(|c| c.as_str()) == Some("AA")), "{sent:?}");
    assert_eq!(sent[0].control_id, sent[1].control_id);
    let inbound = messages(&app, "?direction=in").await;
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    let outbound = messages(&app, &subject).await;
    assert_eq!(outbound[0]["status"], "acked");
    // Reading a message's text (patient data) is audited under the patient.
    let path = format!("/lab/messages/{}", outbound[0]["id"].as_str().unwrap());
    let full = json(admin(&app, reqwest::Method::GET, &path, None).await, 200).await;
    assert!(full["payload"].as_str().unwrap().contains("OML^O33"));
    let events = app.audit_events(&format!("patient=Patient/{pid}")).await;
    assert!(
        events.iter().any(|e| e["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["what"]["reference"].as_str() == Some(&path[1..]))),
        "no audit event names the message read under the patient: {events:?}"
    );
    // Still exactly one of each after everything settled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(json(app.get(&format!("/Observation?patient={pid}")).await, 200).await["total"], 1);
    assert_eq!(json(app.get(&format!("/DiagnosticReport?patient={pid}")).await, 200).await["total"], 1);

    // The connection shows its activity.
    let conns = json(admin(&app, reqwest::Method::GET, "/admin/connections", None).await, 200).await;
    let list = conns["connections"].as_array().unwrap();
    assert!(list.iter().any(|c| c["direction"] == "outbound" && c["lastActivityAt"].is_number()), "{conns}");
    assert!(list.iter().any(|c| c["direction"] == "inbound" && c["lastActivityAt"].is_number()), "{conns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_lab_dead_letters_the_order_and_replay_sends_it() {
    let app = TestApp::spawn_with(|c| {
        c.lab.listen = Some("127.0.0.1:0".into());
        c.lab.retry_base_ms = 1_000;
        c.lab.connect_timeout_ms = 300;
    })
    .await;
    let sim = simulator(&app, false).await;
    // This lab exchanges UTF-8 (MSH-18 `UNICODE UTF-8`).
    sim.set_charset(ehr_lab_sim::LabCharset::Utf8);
    let endpoint = register_lab(&app, &sim, "utf-8").await;
    let mut update = settings_of(&endpoint);
    update["maxAttempts"] = json!(2);
    json(
        admin(
            &app,
            reqwest::Method::PUT,
            &format!("/lab/endpoints/{}", endpoint["id"].as_str().unwrap()),
            Some(&update),
        )
        .await,
        200,
    )
    .await;
    sim.set_down(true).await.unwrap();
    let pid = id_of(&app.create(&jp_patient()).await);
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    let subject = format!("?subject=ServiceRequest/{sr_id}");
    wait_for("the first attempt", || async {
        messages(&app, &subject).await.into_iter().find(|m| m["attempts"].as_i64() >= Some(1))
    })
    .await;
    app.advance(60);
    let dead = wait_for("the dead letter", || async {
        let b = json(admin(&app, reqwest::Method::GET, "/lab/dead-letters", None).await, 200).await;
        b["messages"].as_array().and_then(|m| m.first().cloned())
    })
    .await;
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["attempts"], 2);

    sim.set_down(false).await.unwrap();
    let path = format!("/lab/messages/{}/replay", dead["id"].as_str().unwrap());
    json(admin(&app, reqwest::Method::POST, &path, None).await, 200).await;
    let received = sim.wait_for_received(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].charset, Some(ehr_hl7v2::Charset::Utf8));
    assert!(received[0].problems.is_empty(), "{:?}", received[0].problems);
    wait_for("the replayed message to be acknowledged", || async {
        messages(&app, &subject).await.into_iter().find(|m| m["status"] == "acked")
    })
    .await;
}

fn result_message(placer: &str, pid_3: &str, obx3: &str) -> String {
    [
        "MSH|^~\\&|LABSYS|LABCO|HIS|HOSP|20261125120000||OUL^R22^OUL_R22|RES0001|P|2.5||||||~ISO IR87||ISO 2022-1994",
        &format!("PID|||{pid_3}^^^^PI||ヤマダ^ハナコ^^^^^L^P||19700102|F"),
        "SPM|1|||023^血清^JC10|||||||||||||20261125091000",
        &format!("OBR|1|{placer}|F-1|{obx3}|||20261125091000"),
        &format!("OBX|1|NM|{obx3}||31|U/L^U/L^99LAB|13-30|H|||F|||20261125110000"),
        "NTE|1||溶血あり",
    ]
    .join("\r")
        + "\r"
}

async fn send(app: &TestApp, text: &str) -> String {
    let bytes =
        ehr_hl7v2::charset::encode_declared(text).map(|b| b.into_owned()).unwrap_or_else(|_| text.as_bytes().to_vec());
    let reply = send_message(app.lab_mllp.unwrap(), &bytes, MllpTimeouts::default()).await.unwrap();
    ehr_hl7v2::charset::decode(&reply).unwrap().into_owned()
}

fn err_locations(ack: &str) -> Vec<String> {
    ack.split('\r').filter(|s| s.starts_with("ERR|")).map(|s| s.split('|').nth(2).unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_results_are_refused_with_the_field_named_and_nothing_stored() {
    let app = lab_app().await;
    let sim = simulator(&app, false).await;
    register_lab(&app, &sim, "iso-ir-87").await;
    let pid = id_of(&app.create(&jp_patient()).await);
    // A placed order whose results the lab will not send (no result delay here: the test sends).
    sim.set_down(true).await.unwrap();
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    let ast = format!("{AST}^AST^JC10");
    queued(&app, &sr_id).await;

    // Missing PID-3.
    let ack = send(&app, &result_message(&sr_id, "", &ast)).await;
    assert!(ack.contains("MSA|AE|RES0001"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("PID^1^3")), "{ack}");

    // Another patient's id.
    let ack = send(&app, &result_message(&sr_id, "P-99999", &ast)).await;
    assert!(ack.contains("MSA|AE"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("PID^1^3")), "{ack}");

    // Not a JLAC10 code under JC10.
    let ack = send(&app, &result_message(&sr_id, "P-12345", "3B035^AST^JC10")).await;
    assert!(ack.contains("MSA|AE"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("OBX^1^3")), "{ack}");

    // An order this hospital never placed.
    let ack = send(&app, &result_message("no-such-order", "P-12345", &ast)).await;
    assert!(ack.contains("MSA|AE"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("OBR^1^2")), "{ack}");

    // A lab nobody configured.
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast).replace("|LABCO|", "|ELSEWHERE|")).await;
    assert!(ack.contains("MSA|AR"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("MSH^1^4")), "{ack}");

    // Not HL7 at all.
    let ack = send(&app, "hello, lab").await;
    assert!(ack.contains("MSA|AR"), "{ack}");

    // A numeric result that is not a number.
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast).replace("||31|", "||thirty-one|")).await;
    assert!(ack.contains("MSA|AE"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("OBX^1^5")), "{ack}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(json(app.get("/Observation").await, 200).await["total"], 0);
    assert_eq!(json(app.get("/DiagnosticReport").await, 200).await["total"], 0);
    assert_eq!(json(app.get(&format!("/ServiceRequest/{sr_id}")).await, 200).await["status"], "active");
    assert!(messages(&app, "?direction=in").await.is_empty());

    // The well-formed message is accepted, the lab's comment (NTE) kept with the result.
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast)).await;
    assert!(ack.contains("MSA|AA|RES0001"), "{ack}");
    let obs = wait_for("the Observation", || async {
        let b = json(app.get(&format!("/Observation?patient={pid}")).await, 200).await;
        (b["total"] == 1).then_some(b)
    })
    .await;
    assert_eq!(obs["entry"][0]["resource"]["note"][0]["text"], "溶血あり", "{obs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_that_speaks_fhir_goes_through_the_same_path() {
    let app = lab_app().await;
    let sim = simulator(&app, false).await;
    sim.set_down(true).await.unwrap();
    let endpoint = register_lab(&app, &sim, "utf-8").await;
    let pid = id_of(&app.create(&jp_patient()).await);
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    queued(&app, &sr_id).await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "collection",
        "identifier": {"system": "urn:ehr:test", "value": "fhir-delivery-1"},
        "entry": [
            {"fullUrl": "urn:uuid:7f0c0b7e-0d0e-4a0c-9b1e-000000000001", "resource": {
                "resourceType": "DiagnosticReport", "status": "final",
                "code": {"coding": [{"system": JLAC10, "code": AST}]},
                "basedOn": [{"reference": format!("ServiceRequest/{sr_id}")}],
                "subject": {"reference": format!("Patient/{pid}")},
                "identifier": [{"system": "urn:lab", "value": "F-77"}],
                "result": [{"reference": "urn:uuid:7f0c0b7e-0d0e-4a0c-9b1e-000000000002"}]}},
            {"fullUrl": "urn:uuid:7f0c0b7e-0d0e-4a0c-9b1e-000000000002", "resource": crate::observation(&pid, AST, 25.0, "2026-11-25T09:10:00+09:00")}
        ]
    });
    let path = format!("/lab/endpoints/{}/results", endpoint["id"].as_str().unwrap());
    let resp = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(app.token(ADMIN))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 202).await["orders"], 1);
    wait_for("the order to complete", || async {
        let sr = json(app.get(&format!("/ServiceRequest/{sr_id}")).await, 200).await;
        (sr["status"] == "completed").then_some(sr)
    })
    .await;
    let dr = json(app.get(&format!("/DiagnosticReport?based-on=ServiceRequest/{sr_id}")).await, 200).await;
    assert_eq!(dr["total"], 1);
    // The same delivery again is acknowledged and not stored twice.
    let resp = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(app.token(ADMIN))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp, 202).await["duplicate"], true);
    assert_eq!(json(app.get(&format!("/Observation?patient={pid}")).await, 200).await["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_endpoints_and_messages_are_isolated_between_tenants_and_need_their_scopes() {
    let app = lab_app().await;
    let sim = simulator(&app, false).await;
    sim.set_down(true).await.unwrap();
    let endpoint = register_lab(&app, &sim, "utf-8").await;
    let id = endpoint["id"].as_str().unwrap();
    // Data to leak: an order message in the log.
    let pid = id_of(&app.create(&jp_patient()).await);
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    let message = wait_for("the order message", || async { messages(&app, "").await.into_iter().next() }).await;
    let message_id = message["id"].as_str().unwrap();

    let other = app.token_for("another-tenant", ADMIN);
    let url = |path: &str| format!("{}{path}", app.address);
    for path in ["/lab/endpoints", "/lab/messages", "/lab/dead-letters", "/admin/connections"] {
        let resp = app.client.get(url(path)).bearer_auth(&other).send().await.unwrap();
        let body = json(resp, 200).await;
        // The national services are listed for every tenant (with the tenant's own activity);
        // no lab of the first tenant may be.
        let list = body.as_object().unwrap().values().next().unwrap().as_array().unwrap();
        let labs = list.iter().filter(|c| c["kind"] != "national").count();
        assert_eq!(labs, 0, "{path} leaked across tenants: {body}");
    }
    for (method, path) in [
        (reqwest::Method::GET, format!("/lab/endpoints/{id}")),
        (reqwest::Method::GET, format!("/lab/messages/{message_id}")),
        (reqwest::Method::POST, format!("/lab/messages/{message_id}/replay")),
    ] {
        let resp = app.client.request(method, url(&path)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path} across tenants");
    }
    let mut body = settings_of(&endpoint);
    body["name"] = json!("hijacked");
    let resp =
        app.client.put(url(&format!("/lab/endpoints/{id}"))).bearer_auth(&other).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "id": "x", "entry": [{"resource": {
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
        "basedOn": [{"reference": format!("ServiceRequest/{sr_id}")}], "subject": {"reference": format!("Patient/{pid}")}}}]});
    let resp = app
        .client
        .post(url(&format!("/lab/endpoints/{id}/results")))
        .bearer_auth(&other)
        .json(&bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        json(admin(&app, reqwest::Method::GET, &format!("/lab/endpoints/{id}"), None).await, 200).await["name"],
        "検査センターA"
    );

    // A clinical wildcard does not reach the connection settings or the message log.
    let clinician = app.token("user/*.cruds");
    for path in ["/lab/endpoints", "/lab/messages", "/admin/connections"] {
        let resp = app.client.get(url(path)).bearer_auth(&clinician).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
    }
    // Bad settings are refused with the field named; file endpoints name no paths.
    for (field, value, named) in [
        ("labFacility", json!("A|B"), "labFacility"),
        ("address", json!("../../etc"), "plain name"),
        ("allowedPeers", json!(["not-an-ip"]), "allowedPeers"),
    ] {
        let mut bad = json!({"name": "x", "labFacility": "LAB-X", "labApplication": "L", "ourFacility": "H",
                             "ourApplication": "E", "address": "127.0.0.1:1"});
        bad[field] = value;
        if field == "address" {
            bad["transport"] = json!("file");
        }
        let oo = json(admin(&app, reqwest::Method::POST, "/lab/endpoints", Some(&bad)).await, 400).await;
        assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains(named), "{oo}");
    }
    // The routing pair of another endpoint is not available (and says nothing about whose).
    let clash = json!({"name": "x", "labFacility": "LABCO", "labApplication": "L", "ourFacility": "HOSP",
                       "ourApplication": "E", "address": "127.0.0.1:1"});
    let resp = app.client.post(url("/lab/endpoints")).bearer_auth(&other).json(&clash).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_is_cancelled_at_the_lab_or_never_sent() {
    let app = lab_app().await;
    let sim = simulator_with(&app, false, None).await;
    register_lab(&app, &sim, "iso-ir-87").await;
    let pid = id_of(&app.create(&jp_patient()).await);

    // Delivered, then revoked: the lab gets ORC-1 CA for the same placer number.
    let sr = app.create(&lab_order(&pid)).await;
    let sr_id = id_of(&sr);
    let subject = format!("?subject=ServiceRequest/{sr_id}");
    wait_for("the order to be acknowledged", || async {
        messages(&app, &subject).await.into_iter().find(|m| m["status"] == "acked")
    })
    .await;
    // An active order is not re-sent when it is updated, and its test cannot change.
    let mut same = sr.clone();
    same["note"] = json!([{"text": "空腹時"}]);
    json(app.put(&format!("/ServiceRequest/{sr_id}"), &same).await, 200).await;
    let mut changed = sr.clone();
    changed["code"]["coding"][0]["code"] = json!("3B045000002327201");
    ehr_testkit::outcome(app.put(&format!("/ServiceRequest/{sr_id}"), &changed).await, 422, "business-rule").await;
    let mut revoked = same.clone();
    revoked["status"] = json!("revoked");
    json(app.put(&format!("/ServiceRequest/{sr_id}"), &revoked).await, 200).await;
    let received = sim.wait_for_received(2, Duration::from_secs(10)).await;
    let cancel = &received[1];
    assert!(cancel.tests.iter().all(|t| t.order_control == "CA"), "{:?}", cancel.tests);
    assert_eq!(cancel.placer_order_number.as_deref(), Some(sr_id.as_str()));
    assert!(cancel.problems.is_empty(), "{:?}", cancel.problems);
    let log = messages(&app, &subject).await;
    assert_eq!(log.len(), 2, "one order, one cancellation: {log:?}");

    // Placed while the lab is down, revoked before delivery: never sent at all.
    sim.set_down(true).await.unwrap();
    let sr2 = app.create(&lab_order(&pid)).await;
    let sr2_id = id_of(&sr2);
    let subject2 = format!("?subject=ServiceRequest/{sr2_id}");
    wait_for("the queued order", || async { messages(&app, &subject2).await.into_iter().next() }).await;
    let mut revoked2 = sr2.clone();
    revoked2["status"] = json!("entered-in-error");
    json(app.put(&format!("/ServiceRequest/{sr2_id}"), &revoked2).await, 200).await;
    let cancelled = wait_for("the queued order to be cancelled", || async {
        messages(&app, &subject2).await.into_iter().find(|m| m["status"] == "cancelled")
    })
    .await;
    assert_eq!(cancelled["messageType"], "OML^O33");
    sim.set_down(false).await.unwrap();
    app.advance(60);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The order itself never reaches the lab. It had been tried (the lab was down), and an
    // attempt may reach a lab whose answer is lost, so the lab also hears the cancellation — of
    // an order it does not know, which it refuses (AE) and the log keeps as rejected.
    let received = sim.wait_for_received(3, Duration::from_secs(10)).await;
    let late: Vec<_> = received.iter().skip(2).collect();
    assert!(late.iter().all(|r| r.tests.iter().all(|t| t.order_control == "CA")), "{late:?}");
    assert!(
        !received.iter().any(|r| r.placer_order_number.as_deref() == Some(sr2_id.as_str())
            && r.tests.iter().any(|t| t.order_control == "NW")),
        "the cancelled order was sent"
    );
    // Its results are refused: the order was entered in error.
    let ack = send(&app, &result_message(&sr2_id, "P-12345", &format!("{AST}^AST^JC10"))).await;
    assert!(ack.contains("MSA|AE"), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_messages_and_strangers_are_refused() {
    let app = lab_app().await;
    let sim = simulator(&app, false).await;
    sim.set_down(true).await.unwrap();
    let endpoint = register_lab(&app, &sim, "iso-ir-87").await;
    let pid = id_of(&app.create(&jp_patient()).await);
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    let ast = format!("{AST}^AST^JC10");
    queued(&app, &sr_id).await;
    // MSH-11 T: a test message never reaches a patient's record.
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast).replace("|RES0001|P|", "|RES0001|T|")).await;
    assert!(ack.contains("MSA|AR"), "{ack}");
    assert!(err_locations(&ack).iter().any(|l| l.starts_with("MSH^1^11")), "{ack}");
    // Results only from the lab's own addresses, when it has any.
    let mut body = settings_of(&endpoint);
    body["allowedPeers"] = json!(["192.0.2.10"]);
    let path = format!("/lab/endpoints/{}", endpoint["id"].as_str().unwrap());
    json(admin(&app, reqwest::Method::PUT, &path, Some(&body)).await, 200).await;
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast)).await;
    assert!(ack.contains("MSA|AR"), "{ack}");
    body["allowedPeers"] = json!(["127.0.0.1"]);
    json(admin(&app, reqwest::Method::PUT, &path, Some(&body)).await, 200).await;
    let ack = send(&app, &result_message(&sr_id, "P-12345", &ast)).await;
    assert!(ack.contains("MSA|AA"), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_on_batch_files_gets_orders_and_returns_results() {
    let root = std::env::temp_dir().join(format!("ehr-lab-files-{}", uuid::Uuid::new_v4().simple()));
    let file_root = root.clone();
    let app = TestApp::spawn_with(move |c| c.lab.file_root = file_root).await;
    let body = json!({"name": "ファイル連携ラボ", "labFacility": "LABCO", "labApplication": "LABSYS",
                      "ourFacility": "HOSP", "ourApplication": "HIS", "transport": "file", "address": "lab-f",
                      "isDefault": true});
    json(admin(&app, reqwest::Method::POST, "/lab/endpoints", Some(&body)).await, 201).await;
    let pid = id_of(&app.create(&jp_patient()).await);
    let sr_id = id_of(&app.create(&lab_order(&pid)).await);
    let dir = root.join(&app.tenant).join("lab-f");

    // The order is written to out/, in ISO-2022-JP, and counts as delivered.
    let written = wait_for("the order file", || async {
        let entry = std::fs::read_dir(dir.join("out")).ok()?.flatten().next()?;
        Some(json!(entry.path().to_string_lossy()))
    })
    .await;
    let bytes = std::fs::read(written.as_str().unwrap()).unwrap();
    assert!(bytes.contains(&0x1B), "ISO-2022-JP on disk");
    let text = ehr_hl7v2::charset::decode(&bytes).unwrap().into_owned();
    assert!(text.contains("OML^O33") && text.contains(&sr_id), "{text}");
    queued(&app, &sr_id).await;

    // The lab's result file (LF line endings) is read once settled, acknowledged and moved.
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let result = result_message(&sr_id, "P-12345", &format!("{AST}^AST^JC10")).replace('\r', "\n");
    let bytes = ehr_hl7v2::charset::encode_declared(&result).unwrap().into_owned();
    std::fs::write(dir.join("in").join("r1.hl7"), bytes).unwrap();
    wait_for("the Observation", || async {
        let b = json(app.get(&format!("/Observation?patient={pid}")).await, 200).await;
        (b["total"] == 1).then_some(b)
    })
    .await;
    let ack = wait_for("the ACK file", || async {
        std::fs::read(dir.join("ack").join("r1.hl7.ack"))
            .ok()
            .map(|b| json!(ehr_hl7v2::charset::decode(&b).unwrap().into_owned()))
    })
    .await;
    assert!(ack.as_str().unwrap().contains("MSA|AA|RES0001"), "{ack}");
    wait_for("the file moved to done/", || async {
        (dir.join("done").join("r1.hl7").exists() && !dir.join("in").join("r1.hl7").exists()).then_some(json!(true))
    })
    .await;
    let _ = std::fs::remove_dir_all(&root);
}
