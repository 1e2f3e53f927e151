//! The audit trail: exactly the AuditEvents expected for every access (IHE BALP, one per patient),
//! security events, failed authentications, tamper detection by `ehr audit verify`, and who may
//! read the trail.

use crate::identity::{admin, claims};
use ehr_testkit::{TestApp, json, outcome, patient};
use reqwest::Method;
use serde_json::{Value, json};

fn subtype(e: &Value) -> String {
    e["subtype"][0]["code"].as_str().unwrap_or_default().to_owned()
}

fn patients_of(e: &Value) -> Vec<String> {
    e["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["role"]["code"] == "1")
        .filter_map(|x| x["what"]["reference"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_access_to_patient_data_produces_exactly_the_expected_audit_events() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let practitioner =
        crate::id_of(&app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "鈴木"}]})).await);
    let tenant = ehr_core::TenantId::parse(&app.tenant).unwrap();
    let user = app
        .gateway
        .create_account(
            &tenant,
            ehr_gateway::admin::NewAccount {
                username: "dr-suzuki".into(),
                display_name: "鈴木".into(),
                password: ehr_testkit::PASSWORD.into(),
                roles: vec!["physician".into()],
                fhir_user: Some(format!("Practitioner/{practitioner}")),
            },
            &ehr_gateway::audit::Actor::default(),
        )
        .await
        .unwrap();
    let mut account = ehr_testkit::Account {
        id: user.id.clone(),
        username: "dr-suzuki".into(),
        password: ehr_testkit::PASSWORD.into(),
        secret: None,
        recovery_codes: Vec::new(),
    };
    let token = app.login(&client, &mut account, "user/*.cruds").await.access;
    assert_eq!(claims(&token)["fhirUser"], format!("Practitioner/{practitioner}"));
    let p = crate::id_of(&app.create(&patient("高橋", "一", "1950-01-01", "A-1")).await);
    let q = crate::id_of(&app.create(&patient("田中", "二", "1951-01-01", "A-2")).await);
    app.create(&crate::observation(&q, "3D010000001926101", 99.0, "2026-11-20")).await;

    let send = |m: Method, path: String, body: Option<Value>| {
        let mut r = app.as_user(m, &path, &token).header("x-request-id", "req-audit-1");
        if let Some(b) = body {
            r = r.header("content-type", "application/fhir+json").body(b.to_string());
        }
        r.send()
    };
    assert_eq!(send(Method::GET, format!("/Patient/{p}"), None).await.unwrap().status(), 200);
    let obs = json(
        send(
            Method::POST,
            "/Observation".into(),
            Some(crate::observation(&p, "3D010000001926101", 101.0, "2026-11-21")),
        )
        .await
        .unwrap(),
        201,
    )
    .await;
    let obs_id = crate::id_of(&obs);
    assert_eq!(send(Method::GET, format!("/Observation?patient={p}"), None).await.unwrap().status(), 200);
    let mut changed = obs.clone();
    changed["valueQuantity"]["value"] = json!(102.0);
    assert_eq!(send(Method::PUT, format!("/Observation/{obs_id}"), Some(changed)).await.unwrap().status(), 200);
    // A search whose results hold two patients: one event for each (BALP).
    assert_eq!(send(Method::GET, "/Observation?code=3D010000001926101".into(), None).await.unwrap().status(), 200);
    // No patient in it: one event without a patient entity.
    assert_eq!(send(Method::GET, format!("/Practitioner/{practitioner}"), None).await.unwrap().status(), 200);
    // Refused by the matrix: audited as a failure.
    let denied = send(Method::POST, "/Patient".into(), Some(patient("x", "y", "2000-01-01", "A-3"))).await.unwrap();
    assert_eq!(denied.status(), 403);

    let mine = app.audit_events(&format!("altid={}&type=rest", user.id)).await;
    let mut got: Vec<(String, Vec<String>, String)> =
        mine.iter().map(|e| (subtype(e), patients_of(e), e["outcome"].as_str().unwrap().to_owned())).collect();
    got.sort();
    let pp = format!("Patient/{p}");
    let pq = format!("Patient/{q}");
    let mut expected = vec![
        ("read".to_owned(), vec![pp.clone()], "0".to_owned()),
        ("create".to_owned(), vec![pp.clone()], "0".to_owned()),
        ("search-type".to_owned(), vec![pp.clone()], "0".to_owned()),
        ("update".to_owned(), vec![pp.clone()], "0".to_owned()),
        ("search-type".to_owned(), vec![pp.clone()], "0".to_owned()),
        ("search-type".to_owned(), vec![pq.clone()], "0".to_owned()),
        ("read".to_owned(), vec![], "0".to_owned()),
        ("create".to_owned(), vec![], "4".to_owned()),
    ];
    expected.sort();
    assert_eq!(got, expected);

    // Who, what, when, where from.
    let read = mine.iter().find(|e| subtype(e) == "read" && !patients_of(e).is_empty()).unwrap();
    assert_eq!(read["action"], "R");
    assert_eq!(read["agent"][0]["who"]["reference"], format!("Practitioner/{practitioner}"));
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(read["agent"][1]["who"]["identifier"]["value"], client.as_str());
    assert!(read["entity"].to_string().contains(&format!("Patient/{p}")));
    assert!(read["entity"].to_string().contains("req-audit-1"), "the request id is recorded");
    let search = mine.iter().find(|e| subtype(e) == "search-type").unwrap();
    assert!(search["entity"].as_array().unwrap().iter().any(|x| x["query"].is_string()), "BALP records the query");

    // Searchable by patient, agent and date.
    let by_patient = app.audit_events(&format!("patient=Patient/{p}&agent=Practitioner/{practitioner}")).await;
    assert_eq!(by_patient.len(), 5, "read, create, 2 searches, update");
    assert!(app.audit_events("date=lt2000-01-01").await.is_empty());
    assert!(!app.audit_events(&format!("date=ge2020-01-01&altid={}", user.id)).await.is_empty());
}

#[tokio::test]
async fn security_events_are_audited() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut nurse = app.account("ns-1", &["nurse"]).await;
    let tokens = app.login(&client, &mut nurse, "offline_access user/*.cruds").await;
    let (_, challenge) = ehr_testkit::pkce();
    let request = app.authorize(&client, "", &challenge).await;
    for _ in 0..5 {
        app.form("/auth/login", &[("request", &request), ("username", "ns-1"), ("password", "Wrong-password-1")]).await;
    }
    let r1 = tokens.refresh.clone().unwrap();
    let rotate = |t: String| {
        let app = &app;
        async move { app.form("/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &t)]).await }
    };
    json(rotate(r1.clone()).await, 200).await;
    json(rotate(r1).await, 400).await;
    let resp = app
        .client
        .post(format!("{}/admin/users/{}/deactivate", app.address, nurse.id))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    json(resp, 200).await;

    let events = app.audit_events(&format!("altid={}", nurse.id)).await;
    let kinds: Vec<(String, String)> =
        events.iter().map(|e| (subtype(e), e["outcome"].as_str().unwrap().to_owned())).collect();
    for expected in [("Login", "0"), ("mfa-enrolled", "0"), ("token-issued", "0"), ("refresh-token-reuse", "4")] {
        let code = match expected.0 {
            "Login" => "110122",
            other => other,
        };
        assert!(kinds.contains(&(code.to_owned(), expected.1.to_owned())), "{expected:?} missing from {kinds:?}");
    }
    // Failed logins name the attempted account; the fifth one locks it.
    let failures: Vec<&Value> = events.iter().filter(|e| subtype(e) == "110122" && e["outcome"] == "4").collect();
    assert_eq!(failures.len(), 5, "{kinds:?}");
    assert!(events.iter().any(|e| subtype(e) == "lockout"));
    // Account changes are recorded against the account, with the administrator as agent.
    let all = app.audit_events("").await;
    let deactivated = all.iter().find(|e| subtype(e) == "account-deactivated").unwrap();
    assert_eq!(deactivated["entity"][0]["what"]["identifier"]["value"], nurse.id.as_str());
    assert_eq!(deactivated["agent"][0]["altId"], claims(&admin_token)["sub"]);
}

#[tokio::test]
async fn bad_tokens_and_bodies_are_refused_with_outcomes_and_audited() {
    use base64::Engine;
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 4096).await;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let mut claims = app.claims(&app.tenant, "user/*.cruds");
    let alg_none =
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&serde_json::to_value(&claims).unwrap()));
    claims.iss = "https://issuer.example".into();
    let wrong_issuer = app.sign_claims(&claims);
    let expired = app.sign(&app.tenant, "user/*.cruds", -10);
    for (token, why) in [
        ("not.a.jwt", "malformed"),
        (alg_none.as_str(), "es256"),
        (wrong_issuer.as_str(), "issuer"),
        (expired.as_str(), "expired"),
    ] {
        let resp = app.client.get(app.fhir("/Patient")).bearer_auth(token).send().await.unwrap();
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        let oo = outcome(resp, 401, "login").await;
        assert!(oo.to_string().to_lowercase().contains(why), "{why}: {oo}");
    }
    // A token of another tenant sees nothing of this one (404, never 403).
    let p = crate::id_of(&app.create(&patient("a", "b", "1990-01-01", "X-1")).await);
    let other = app.token_for("another-hospital", "user/*.cruds");
    outcome(
        app.client.get(app.fhir(&format!("/Patient/{p}"))).bearer_auth(&other).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    // Oversized body: 413, audited in the caller's tenant.
    let big = patient(&"x".repeat(5000), "y", "1990-01-01", "X-2");
    outcome(app.post("/Patient", &big).await, 413, "too-costly").await;

    // Unverifiable tokens are audited in the system chain; the rest in the tenant's.
    app.gateway.audit.flush().await;
    let sys_token = app.token_for("system", "user/AuditEvent.rs");
    let sys = json(
        app.client
            .get(app.fhir("/AuditEvent?subtype=token-rejected&_count=100"))
            .bearer_auth(&sys_token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(sys["entry"].as_array().map_or(0, Vec::len), 4, "{sys}");
    let mine = app.audit_events("").await;
    assert!(mine.iter().any(|e| e["outcomeDesc"] == "HTTP 413"));
    let elsewhere = app.token_for("another-hospital", "user/AuditEvent.rs");
    let theirs =
        json(app.client.get(app.fhir("/AuditEvent?outcome=4")).bearer_auth(&elsewhere).send().await.unwrap(), 200)
            .await;
    assert_eq!(theirs["entry"].as_array().map_or(0, Vec::len), 1, "the foreign read is in the reader's tenant");
}

#[tokio::test]
async fn the_audit_trail_is_read_only_tenant_scoped_and_for_administrators() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let admin_token = admin(&app, &client).await;
    let mut doctor = app.account("dr-2", &["physician"]).await;
    let doctor_token = app.login(&client, &mut doctor, "user/*.cruds").await.access;
    outcome(app.as_user(Method::GET, "/AuditEvent", &doctor_token).send().await.unwrap(), 403, "forbidden").await;
    let list = json(app.as_user(Method::GET, "/AuditEvent?_count=5", &admin_token).send().await.unwrap(), 200).await;
    let id = crate::id_of(&list["entry"][0]["resource"]);
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let path = if m == Method::POST { "/AuditEvent".to_owned() } else { format!("/AuditEvent/{id}") };
        let resp = app
            .as_user(m.clone(), &path, &admin_token)
            .header("content-type", "application/fhir+json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{m}");
    }
    assert_eq!(
        app.as_user(Method::GET, &format!("/AuditEvent/{id}"), &admin_token).send().await.unwrap().status(),
        200
    );
    // Another tenant's administrator token finds none of these events.
    let foreign = app.token_for("another-hospital", "user/AuditEvent.rs");
    outcome(
        app.client.get(app.fhir(&format!("/AuditEvent/{id}"))).bearer_auth(&foreign).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn tampering_with_one_audit_row_is_detected_by_ehr_audit_verify() {
    use sea_orm::{ConnectionTrait, Database};
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create(&patient("改ざん", "検知", "1990-01-01", &format!("T-{i}"))).await;
    }
    app.gateway.audit.flush().await;
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(["audit", "verify", "--tenant", &app.tenant])
            .env("EHR_DATABASE__URL", &app.database_url)
            .env_remove("EHR_GATEWAY__REDIS_URL")
            .output()
            .unwrap()
    };
    let ok = verify();
    let stdout = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("ok (3 events)"), "{stdout}");

    // Rewrite one recorded event, as someone with database access might.
    let db = Database::connect(app.database_url.as_str()).await.unwrap();
    let changed = db
        .execute_unprepared(&format!(
            "UPDATE resources SET content = replace(content, '\"outcome\":\"0\"', '\"outcome\":\"4\"') \
             WHERE tenant_id = '{}' AND resource_type = 'AuditEvent' AND id = \
             (SELECT resource_id FROM audit_chain WHERE tenant_id = '{}' AND seq = 2)",
            app.tenant, app.tenant
        ))
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    let bad = verify();
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert!(!bad.status.success());
    assert!(stdout.contains("HashMismatch"), "{stdout}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tampered"));

    // Remove another one altogether.
    db.execute_unprepared(&format!("DELETE FROM audit_chain WHERE tenant_id = '{}' AND seq = 3", app.tenant))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify().stdout).into_owned();
    assert!(stdout.contains("HeadMismatch") || stdout.contains("SeqGap"), "{stdout}");
}

#[tokio::test]
async fn the_audit_trail_reads_as_xml_and_every_event_is_valid_r4() {
    let app = TestApp::spawn().await;
    // Reads, a search with a query (entity.query), a refused token (security event).
    let patient = app.create(&patient("山田", "花子", "1980-02-03", "A-1")).await;
    app.get(&format!("/Patient/{}", patient["id"].as_str().unwrap())).await;
    app.get("/Patient?family=山田").await;
    app.client.get(app.fhir("/Patient")).bearer_auth("not-a-token").send().await.unwrap();
    let events = app.audit_events("").await;
    assert!(events.len() >= 3, "{events:?}");
    let validator = ehr_fhir::validate::Validator::new();
    for e in &events {
        let errors: Vec<_> =
            validator.validate(e).into_iter().filter(|i| matches!(i.severity, ehr_core::Severity::Error)).collect();
        assert!(errors.is_empty(), "an AuditEvent the gateway wrote is not valid R4: {errors:?}\n{e}");
    }
    let token = app.token("user/AuditEvent.rs");
    let resp =
        app.client.get(app.fhir("/AuditEvent?_count=1000&_format=xml")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bundle = ehr_fhir::xml::from_xml(&resp.text().await.unwrap()).unwrap();
    let from_xml: Vec<Value> = bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    for e in &events {
        let same = from_xml.iter().find(|x| x["id"] == e["id"]).expect("the event is in the XML search");
        assert_eq!(same, e, "the XML reads back as the JSON");
    }
}
