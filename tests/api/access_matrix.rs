//! The access matrix (docs/security/access-matrix.md), tested cell by cell: for every role, a
//! real login (password + TOTP) gives a token whose every resource type × interaction is allowed
//! exactly when the matrix says so — through the FHIR API and the admin API.

use ehr_auth::AccessMatrix;
use ehr_testkit::{TestApp, patient};
use reqwest::Method;
use serde_json::{Value, json};

/// A valid resource of each FHIR type of the matrix, for create and update.
fn resource(ty: &str, patient_id: &str) -> Value {
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    match ty {
        "Patient" => patient("山田", "太郎", "1970-01-01", "M-1"),
        "Practitioner" => json!({"resourceType": "Practitioner", "name": [{"family": "医師", "given": ["一郎"]}]}),
        "PractitionerRole" => json!({"resourceType": "PractitionerRole", "active": true}),
        "Organization" => json!({"resourceType": "Organization", "name": "内科"}),
        "Encounter" => json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject}),
        "Condition" => json!({"resourceType": "Condition", "code": {"text": "高血圧症"}, "subject": subject}),
        "AllergyIntolerance" => {
            json!({"resourceType": "AllergyIntolerance", "code": {"text": "卵"}, "patient": subject})
        }
        "Observation" => crate::observation(patient_id, "3A015000002327101", 4.1, "2026-11-01"),
        "DiagnosticReport" => {
            json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "生化学"}, "subject": subject})
        }
        "Procedure" => {
            json!({"resourceType": "Procedure", "status": "completed", "code": {"text": "採血"}, "subject": subject})
        }
        "Immunization" => {
            json!({"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "インフルエンザ"},
            "patient": subject, "occurrenceDateTime": "2026-10-01"})
        }
        "DocumentReference" => json!({"resourceType": "DocumentReference", "status": "current", "subject": subject,
            "content": [{"attachment": {"contentType": "text/plain", "data": "5pys5paH"}}]}),
        "Composition" => json!({"resourceType": "Composition", "status": "final", "type": {"text": "退院時サマリー"},
            "date": "2026-11-01", "author": [{"display": "医師 一郎"}], "title": "退院時サマリー", "subject": subject}),
        "Coverage" => json!({"resourceType": "Coverage", "status": "active", "beneficiary": subject,
            "payor": [{"display": "全国健康保険協会"}]}),
        // Orders: none of these is a lab order (no laboratory category) or holds a slot, so
        // the cells emit no events and book nothing.
        "ServiceRequest" => json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "code": {"text": "血液検査"}, "subject": subject}),
        "MedicationRequest" => json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "アムロジピン錠5mg"}, "subject": subject}),
        "Specimen" => json!({"resourceType": "Specimen", "status": "available", "subject": subject}),
        "MedicationDispense" => json!({"resourceType": "MedicationDispense", "status": "completed",
            "medicationCodeableConcept": {"text": "アムロジピン錠5mg"}, "subject": subject}),
        "Task" => json!({"resourceType": "Task", "status": "requested", "intent": "order", "for": subject}),
        "Schedule" => json!({"resourceType": "Schedule", "active": true, "actor": [subject]}),
        "Slot" => json!({"resourceType": "Slot", "schedule": {"reference": "Schedule/s1"}, "status": "free",
            "start": "2026-12-01T09:00:00+09:00", "end": "2026-12-01T09:15:00+09:00"}),
        "Appointment" => json!({"resourceType": "Appointment", "status": "proposed",
            "participant": [{"actor": subject, "status": "needs-action"}]}),
        "Group" => json!({"resourceType": "Group", "type": "person", "actual": true, "name": "3病棟入院患者",
            "member": [{"entity": subject}]}),
        "AuditEvent" => {
            json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-11-01T00:00:00Z",
            "agent": [{"requestor": true}], "source": {"observer": {"display": "forged"}}})
        }
        other => panic!("no sample resource for {other}"),
    }
}

const LETTERS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

/// What the API answers; `Some(true)` allowed, `Some(false)` refused, `None` no such
/// interaction for this type (the matrix must then not grant it).
async fn fhir_cell(
    app: &TestApp,
    token: &str,
    ty: &str,
    letter: char,
    existing: &str,
    patient_id: &str,
) -> Option<bool> {
    let body = |id: Option<&str>| {
        let mut r = resource(ty, patient_id);
        if let Some(id) = id {
            r["id"] = id.into();
        }
        r.to_string()
    };
    let req = match letter {
        'c' => app
            .as_user(Method::POST, &format!("/{ty}"), token)
            .header("content-type", "application/fhir+json")
            .body(body(None)),
        'r' => app.as_user(Method::GET, &format!("/{ty}/{existing}"), token),
        'u' => app
            .as_user(Method::PUT, &format!("/{ty}/{existing}"), token)
            .header("content-type", "application/fhir+json")
            .body(body(Some(existing))),
        'd' if ty == "AuditEvent" => app.as_user(Method::DELETE, &format!("/{ty}/{existing}"), token),
        // A resource of its own, so that an allowed delete takes nothing from the other cells.
        'd' => {
            let victim = app.create(&resource(ty, patient_id)).await;
            app.as_user(Method::DELETE, &format!("/{ty}/{}", crate::id_of(&victim)), token)
        }
        _ => app.as_user(Method::GET, &format!("/{ty}?_count=1"), token),
    };
    let status = req.send().await.unwrap().status().as_u16();
    match status {
        200 | 201 | 204 => Some(true),
        // The read-only AuditEvent endpoint has no write interactions at all.
        405 if ty == "AuditEvent" => None,
        403 => Some(false),
        other => panic!("{ty} {letter}: unexpected status {other}"),
    }
}

/// The admin API's pseudo resource types.
async fn admin_cell(app: &TestApp, token: &str, ty: &str, letter: char, targets: &Targets, n: usize) -> Option<bool> {
    let url = |p: &str| format!("{}{p}", app.address);
    let c = &app.client;
    let req = match (ty, letter) {
        ("Account", 'c') => c.post(url("/admin/users")).json(&json!({"username": format!("new-{n}"), "password": ehr_testkit::PASSWORD, "roles": ["clerk"]})),
        ("Account", 'r') => c.get(url(&format!("/admin/users/{}", targets.account))),
        ("Account", 'u') => c.put(url(&format!("/admin/users/{}/roles", targets.account))).json(&json!({"roles": ["clerk"]})),
        ("Account", 's') => c.get(url("/admin/users")),
        ("Client", 'c') => c.post(url("/admin/clients")).json(&json!({"name": "app", "kind": "public", "redirect_uris": ["https://app.example/cb"], "scope": "user/*.rs"})),
        ("Client", 'r') => c.get(url(&format!("/admin/clients/{}", targets.client))),
        ("Client", 'u') => c.post(url(&format!("/admin/clients/{}/deactivate", targets.client))),
        ("Client", 's') => c.get(url("/admin/clients")),
        ("Tenant", 'c') => c.post(url("/admin/tenants")).json(&json!({"id": format!("{}-new-{n}", targets.tenant), "name": "new"})),
        ("Tenant", 'r') => c.get(url(&format!("/admin/tenants/{}", targets.tenant))),
        ("Tenant", 'u') => c.post(url(&format!("/admin/tenants/{}/deactivate", targets.tenant))),
        ("Tenant", 's') => c.get(url("/admin/tenants")),
        ("SigningKey", 'c') => c.post(url("/admin/keys/rotate")).json(&json!({"publish_secs": 3600})),
        ("SigningKey", 'r') => c.get(url("/admin/keys")),
        ("Connection", 'c') => c.post(url("/lab/endpoints")).json(&lab_endpoint(&format!("LAB-C{n}"))),
        ("Connection", 'r') => c.get(url(&format!("/lab/endpoints/{}", targets.endpoint))),
        ("Connection", 'u') => c.put(url(&format!("/lab/endpoints/{}", targets.endpoint))).json(&lab_endpoint(&format!("LAB-U{n}"))),
        ("Connection", 's') => c.get(url("/lab/endpoints")),
        ("LabMessage", 'r') => c.get(url(&format!("/lab/messages/{}", targets.message))),
        ("LabMessage", 'u') => {
            // Only a dead message can be replayed: make it dead again for each role.
            let ctx = ehr_core::TenantContext::new(ehr_core::TenantId::parse(&app.tenant).unwrap(), "test");
            let tx = app.gateway.store.write(&ctx).await.unwrap();
            tx.set_hl7_status(&targets.message, "dead", None, app.now()).await.unwrap();
            tx.commit().await.unwrap();
            c.post(url(&format!("/lab/messages/{}/replay", targets.message)))
        }
        ("LabMessage", 's') => c.get(url("/lab/messages")),
        // The national-service adapters check the scope before anything else: past it, a
        // request about a submission or prescription that does not exist is 404, an incomplete
        // one 400/422 — all mean "allowed".
        ("NationalSubmission" | "EPrescription", letter) => {
            let base = if ty == "NationalSubmission" { "/clins/submissions" } else { "/eprescription/prescriptions" };
            let req = match letter {
                'c' => c.post(url(base)).json(&json!({"kind": "condition", "patient": "Patient/none"})),
                'r' => c.get(url(&format!("{base}/no-such-id"))),
                'u' => c.post(url(&format!("{base}/no-such-id/cancel"))),
                's' => c.get(url(base)),
                _ => return None,
            };
            let status = req.bearer_auth(token).send().await.unwrap().status().as_u16();
            assert!(matches!(status, 200..=299 | 400 | 403 | 404 | 409 | 422), "{ty} {letter}: unexpected status {status}");
            return Some(status != 403);
        }
        _ => return None,
    };
    let resp = req.bearer_auth(token).send().await.unwrap();
    match resp.status().as_u16() {
        200 | 201 => Some(true),
        403 => Some(false),
        other => panic!("{ty} {letter}: unexpected status {other}: {}", resp.text().await.unwrap_or_default()),
    }
}

/// Objects the admin cells act on, in the caller's tenant (and another tenant for `Tenant`).
struct Targets {
    account: String,
    client: String,
    tenant: String,
    /// A lab endpoint and an outbound message of the hospital tenant.
    endpoint: String,
    message: String,
}

fn lab_endpoint(facility: &str) -> Value {
    json!({"name": "lab", "labFacility": facility, "labApplication": "LIS", "ourFacility": "HOSP",
           "ourApplication": "HIS", "address": "127.0.0.1:9", "maxAttempts": 1})
}

/// A lab endpoint and a dead outbound message in `tenant`, made through the store.
async fn lab_fixtures(app: &TestApp, tenant: &str) -> (String, String) {
    let tenant = ehr_core::TenantId::parse(tenant).unwrap();
    let endpoint = ehr_store::LabEndpoint {
        id: uuid::Uuid::new_v4().to_string(),
        tenant: tenant.clone(),
        name: "lab".into(),
        lab_facility: format!("LAB-{}", uuid::Uuid::new_v4().simple()),
        lab_application: "LIS".into(),
        our_facility: "HOSP".into(),
        our_application: "HIS".into(),
        transport: "mllp".into(),
        address: "127.0.0.1:9".into(),
        charset: "utf-8".into(),
        organization: None,
        is_default: false,
        max_attempts: 1,
        allowed_peers: Vec::new(),
        // Inactive: the sender leaves its messages alone.
        active: false,
        created_at: app.now(),
        updated_at: app.now(),
        last_outbound_at: None,
        last_inbound_at: None,
        last_error: None,
    };
    let sys = app.gateway.store.system_write().await.unwrap();
    sys.create_lab_endpoint(&endpoint).await.unwrap();
    sys.commit().await.unwrap();
    let message = ehr_store::Hl7Message {
        id: uuid::Uuid::new_v4().to_string(),
        endpoint_id: endpoint.id.clone(),
        direction: "out".into(),
        message_type: "OML^O33".into(),
        control_id: uuid::Uuid::new_v4().simple().to_string()[..20].to_owned(),
        status: "dead".into(),
        attempts: 1,
        next_attempt_at: None,
        last_error: Some("connection refused".into()),
        subject: None,
        payload: "MSH|^~\\&|HIS|HOSP|LIS|LAB|20261125||OML^O33^OML_O33|X|P|2.5\r".into(),
        reply: None,
        created_at: app.now(),
        updated_at: app.now(),
        trace: None,
    };
    let ctx = ehr_core::TenantContext::new(tenant, "test");
    let tx = app.gateway.store.write(&ctx).await.unwrap();
    tx.insert_hl7_message(&message).await.unwrap();
    tx.commit().await.unwrap();
    (endpoint.id, message.id)
}

#[tokio::test]
async fn every_cell_of_the_access_matrix_holds() {
    let app = TestApp::spawn().await;
    let client = app.bootstrap().await;
    let system = ehr_core::TenantId::system();
    ehr_gateway::ops::bootstrap_tenant(&app.gateway.store, &app.gateway.settings, app.now(), &system, "System", None)
        .await
        .unwrap();
    let matrix = AccessMatrix::get();
    assert_eq!(matrix.roles().len(), 7);

    // Existing data, created with a development token.
    let patient_id = crate::id_of(&app.create(&patient("既存", "患者", "1960-05-05", "E-1")).await);
    let mut existing = std::collections::HashMap::new();
    for ty in ehr_patient_record::RESOURCE_TYPES.iter().chain(ehr_orders::RESOURCE_TYPES) {
        let created = app.create(&resource(ty, &patient_id)).await;
        existing.insert(*ty, crate::id_of(&created));
    }
    let (endpoint, message) = lab_fixtures(&app, &app.tenant).await;

    let (mut checked, mut allowed_seen, mut granted_total) = (0, 0, 0);
    for (n, role) in matrix.roles().iter().enumerate() {
        // A system admin belongs to the system tenant; everyone else to the hospital.
        let (tenant, client_id) = if role == "system-admin" {
            ("system", "system-cli".to_owned())
        } else {
            (app.tenant.as_str(), client.clone())
        };
        let mut account = app.account_in(tenant, &format!("{role}-user"), &[role.as_str()]).await;
        let token = app.login(&client_id, &mut account, "user/*.cruds").await.access;
        let target_user = app.account_in(tenant, &format!("{role}-target"), &["clerk"]).await;
        let target_tenant = format!("{}-t{n}", app.tenant);
        ehr_gateway::ops::bootstrap_tenant(
            &app.gateway.store,
            &app.gateway.settings,
            app.now(),
            &ehr_core::TenantId::parse(&target_tenant).unwrap(),
            "target",
            None,
        )
        .await
        .unwrap();
        let targets = Targets {
            account: target_user.id,
            client: format!("{tenant}-cli-target-{n}"),
            tenant: target_tenant,
            endpoint: endpoint.clone(),
            message: message.clone(),
        };
        {
            // A client the `u` cell may deactivate without locking anyone out.
            let tx = app.gateway.store.system_write().await.unwrap();
            tx.create_client(&ehr_store::ClientRecord {
                client_id: targets.client.clone(),
                tenant: ehr_core::TenantId::parse(tenant).unwrap(),
                name: "target".into(),
                kind: "public".into(),
                redirect_uris: vec!["https://app.example/cb".into()],
                jwks: None,
                scope: "user/*.rs".into(),
                active: true,
                created_at: app.now(),
            })
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        for ty in matrix.resource_types() {
            let granted = matrix.letters(role, ty);
            for letter in LETTERS {
                let fhir = ehr_patient_record::RESOURCE_TYPES.contains(&ty.as_str())
                    || ehr_orders::RESOURCE_TYPES.contains(&ty.as_str())
                    || ty == "AuditEvent";
                let outcome = if fhir {
                    let id = if ty == "AuditEvent" {
                        // An event of the role's own tenant (the system tenant's for a system admin).
                        app.gateway.audit.flush().await;
                        let reader = app.token_for(tenant, "user/AuditEvent.rs");
                        let page = app.as_user(Method::GET, "/AuditEvent?_count=1", &reader).send().await.unwrap();
                        let page: Value = page.json().await.unwrap();
                        crate::id_of(&page["entry"][0]["resource"])
                    } else {
                        existing[ty.as_str()].clone()
                    };
                    fhir_cell(&app, &token, ty, letter, &id, &patient_id).await
                } else {
                    admin_cell(&app, &token, ty, letter, &targets, n).await
                };
                let expected = granted.contains(letter);
                granted_total += usize::from(expected);
                allowed_seen += usize::from(outcome == Some(true));
                match outcome {
                    Some(allowed) => {
                        assert_eq!(allowed, expected, "role {role}, {ty}, '{letter}': matrix says {expected}")
                    }
                    None => assert!(
                        !expected,
                        "role {role}, {ty}, '{letter}': granted by the matrix but the API has no such interaction"
                    ),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, matrix.roles().len() * matrix.resource_types().len() * LETTERS.len());
    // Both kinds of answer were exercised, in the proportion the matrix has.
    assert_eq!(allowed_seen, granted_total);
    assert!(granted_total > 100 && checked - granted_total > 100, "{granted_total} of {checked}");
}
