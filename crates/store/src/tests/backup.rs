//! Backup and restore at the row level: a snapshot reads every section of one tenant and
//! nothing of others; a restore into an empty database reproduces the rows, rebuilds the same
//! index rows and a chain that verifies; the chain check over dumped rows agrees with the
//! database's; an unfinished restore leaves nothing.

use super::{TestDb, at, backends, ctx};
use crate::backup::{
    AuditHeadRow, AuditLinkRow, ChainCheck, ClientRow, HistoryRow, LabEndpointRow, RecoveryCodeRow, ResourceRow,
    Snapshot, TenantRow, UserRow,
};
use crate::{AuditVerification, ClientRecord, LabEndpoint, NewUser, TenantRecord};
use ehr_core::{ResourceId, TenantId};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1970-01-01",
           "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": family}]})
}

fn observation(patient: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": "3D010000001926101"}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "effectiveDateTime": "2026-01-01T09:00:00+09:00",
           "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}})
}

fn audit_event(action: &str) -> Value {
    json!({"resourceType": "AuditEvent",
           "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
           "action": action, "recorded": "2026-01-01T00:00:00Z", "outcome": "0",
           "agent": [{"who": {"reference": "Practitioner/p1"}, "requestor": true}],
           "source": {"observer": {"display": "gateway"}}})
}

fn endpoint(tenant: &str, id: &str) -> LabEndpoint {
    LabEndpoint {
        id: id.into(),
        tenant: TenantId::parse(tenant).unwrap(),
        name: "外注検査センター".into(),
        lab_facility: format!("LAB-{id}"),
        lab_application: "LABSYS".into(),
        our_facility: "HOSP".into(),
        our_application: "HIS".into(),
        transport: "mllp".into(),
        address: "127.0.0.1:2576".into(),
        charset: "iso-ir-87".into(),
        organization: Some("Organization/lab-a".into()),
        is_default: true,
        max_attempts: 5,
        allowed_peers: vec!["127.0.0.1".into()],
        active: true,
        created_at: 100,
        updated_at: 100,
        last_outbound_at: None,
        last_inbound_at: Some(150),
        last_error: None,
    }
}

/// A tenant with something in every section: registry row, client, lab endpoint, two users
/// with recovery codes, a patient in three versions, a deleted one, observations, and three
/// audited events.
async fn populate(db: &TestDb, tenant: &str) {
    let id = TenantId::parse(tenant).unwrap();
    let sys = db.store.system_write().await.unwrap();
    sys.create_tenant(&TenantRecord { id: id.clone(), name: format!("{tenant} 病院"), active: true, created_at: 10 })
        .await
        .unwrap();
    sys.create_client(&ClientRecord {
        client_id: format!("{tenant}-cli"),
        tenant: id.clone(),
        name: "cli".into(),
        kind: "public".into(),
        redirect_uris: vec!["http://127.0.0.1:8765/callback".into()],
        jwks: None,
        scope: "openid user/*.cruds".into(),
        active: true,
        created_at: 10,
    })
    .await
    .unwrap();
    sys.create_lab_endpoint(&endpoint(tenant, &format!("{tenant}-lab"))).await.unwrap();
    sys.commit().await.unwrap();

    let tx = db.store.write(&ctx(tenant)).await.unwrap();
    for (uid, name) in [("u1", "alice"), ("u2", "bob")] {
        tx.create_user(&NewUser {
            id: uid.into(),
            username: name.into(),
            display_name: name.into(),
            password_hash: format!("$argon2id$v=19$hash-of-{name}"),
            roles: vec!["doctor".into()],
            fhir_user: Some("Practitioner/p1".into()),
            now: 20,
        })
        .await
        .unwrap();
        tx.set_mfa_secret(uid, Some("v1:sealed-secret"), 21).await.unwrap();
        tx.confirm_mfa(uid, 1000, 22).await.unwrap();
        tx.replace_recovery_codes(uid, &["h1".into(), "h2".into(), "h3".into()]).await.unwrap();
    }
    tx.consume_recovery_code("u1", "h2", 30).await.unwrap();
    let p = tx.create("Patient", None, patient("山田"), at(1_000)).await.unwrap();
    let pid = ResourceId::parse(&p.id).unwrap();
    tx.update("Patient", &pid, patient("山田太郎"), None, "PUT", at(1_001)).await.unwrap();
    tx.update("Patient", &pid, patient("山田花子"), Some(2), "PATCH", at(1_002)).await.unwrap();
    let gone = tx.create("Patient", None, patient("削除"), at(1_003)).await.unwrap();
    tx.delete("Patient", &gone.id, at(1_004)).await.unwrap();
    for i in 0..3 {
        tx.create("Observation", None, observation(&p.id, f64::from(i)), at(1_005)).await.unwrap();
    }
    tx.commit().await.unwrap();
    for action in ["C", "R", "U"] {
        let tx = db.store.write(&ctx(tenant)).await.unwrap();
        tx.append_audit(vec![audit_event(action)], at(1_010)).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Every section of a snapshot, read in pages of `page`.
#[derive(Debug, PartialEq)]
struct Dump {
    tenant: Option<TenantRow>,
    clients: Vec<ClientRow>,
    lab_endpoints: Vec<LabEndpointRow>,
    users: Vec<UserRow>,
    codes: Vec<RecoveryCodeRow>,
    resources: Vec<ResourceRow>,
    history: Vec<HistoryRow>,
    links: Vec<AuditLinkRow>,
    head: Option<AuditHeadRow>,
}

async fn dump(db: &TestDb, tenant: &str, page: u64) -> Dump {
    let snap: Snapshot = db.store.snapshot(&ctx(tenant)).await.unwrap();
    let mut d = Dump {
        tenant: snap.tenant_row().await.unwrap(),
        clients: snap.clients().await.unwrap(),
        lab_endpoints: snap.lab_endpoints().await.unwrap(),
        users: Vec::new(),
        codes: Vec::new(),
        resources: Vec::new(),
        history: Vec::new(),
        links: Vec::new(),
        head: snap.audit_head().await.unwrap(),
    };
    loop {
        let after = d.users.last().map(|u| u.id.clone()).unwrap_or_default();
        let p = snap.users(&after, page).await.unwrap();
        let done = (p.len() as u64) < page;
        d.users.extend(p);
        if done {
            break;
        }
    }
    loop {
        let after = d.codes.last().map(|c| (c.user_id.clone(), c.code_hash.clone())).unwrap_or_default();
        let p = snap.recovery_codes((&after.0, &after.1), page).await.unwrap();
        let done = (p.len() as u64) < page;
        d.codes.extend(p);
        if done {
            break;
        }
    }
    loop {
        let after = d.resources.last().map(|r| (r.resource_type.clone(), r.id.clone())).unwrap_or_default();
        let p = snap.resources((&after.0, &after.1), page).await.unwrap();
        let done = (p.len() as u64) < page;
        d.resources.extend(p);
        if done {
            break;
        }
    }
    loop {
        let after = d.history.last().map(|h| (h.resource_type.clone(), h.id.clone(), h.version)).unwrap_or_default();
        let p = snap.history((&after.0, &after.1, after.2), page).await.unwrap();
        let done = (p.len() as u64) < page;
        d.history.extend(p);
        if done {
            break;
        }
    }
    loop {
        let after = d.links.last().map_or(i64::MIN, |l| l.seq);
        let p = snap.audit_links(after, page).await.unwrap();
        let done = (p.len() as u64) < page;
        d.links.extend(p);
        if done {
            break;
        }
    }
    let counts = snap.counts().await.unwrap();
    assert_eq!(counts.tenant, u64::from(d.tenant.is_some()));
    assert_eq!(counts.clients, d.clients.len() as u64);
    assert_eq!(counts.lab_endpoints, d.lab_endpoints.len() as u64);
    assert_eq!(counts.users, d.users.len() as u64);
    assert_eq!(counts.recovery_codes, d.codes.len() as u64);
    assert_eq!(counts.resources, d.resources.len() as u64);
    assert_eq!(counts.history, d.history.len() as u64);
    assert_eq!(counts.audit_links, d.links.len() as u64);
    assert_eq!(counts.audit_events, d.links.iter().filter(|l| l.event.is_some()).count() as u64);
    assert_eq!(counts.audit_head, u64::from(d.head.is_some()));
    snap.finish().await.unwrap();
    d
}

/// Writes a dump back through a restore transaction, in the batches given.
async fn restore(db: &TestDb, tenant: &str, d: &Dump, batch: usize) {
    let tx = db.store.begin_restore(&ctx(tenant)).await.unwrap();
    let occupancy = tx.occupancy(&d.clients, &d.lab_endpoints).await.unwrap();
    assert!(occupancy.is_free(), "{occupancy:?}");
    if let Some(t) = &d.tenant {
        tx.insert_tenant(t).await.unwrap();
    }
    tx.insert_clients(&d.clients).await.unwrap();
    tx.insert_lab_endpoints(&d.lab_endpoints).await.unwrap();
    for c in d.users.chunks(batch) {
        tx.insert_users(c).await.unwrap();
    }
    for c in d.codes.chunks(batch) {
        tx.insert_recovery_codes(c).await.unwrap();
    }
    for c in d.resources.chunks(batch) {
        tx.insert_resources(c).await.unwrap();
    }
    for c in d.history.chunks(batch) {
        tx.insert_history(c).await.unwrap();
    }
    for c in d.links.chunks(batch) {
        tx.insert_audit_links(c).await.unwrap();
    }
    if let Some(h) = &d.head {
        tx.insert_audit_head(h).await.unwrap();
    }
    let report = tx.verify_audit_chain().await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    tx.commit().await.unwrap();
}

/// Every search-index row of a tenant, as text, sorted.
async fn index_rows(db: &TestDb, tenant: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (table, cols) in [
        ("sp_token", "COALESCE(system, '') || '|' || COALESCE(code, '')"),
        ("sp_string", "normalized || '|' || exact"),
        ("sp_date", "CAST(low AS TEXT) || '|' || CAST(high AS TEXT)"),
        ("sp_reference", "COALESCE(target_type, '') || '|' || COALESCE(target_id, '') || '|' || url"),
        ("sp_quantity", "CAST(value AS TEXT) || '|' || COALESCE(system, '') || '|' || COALESCE(code, '')"),
        ("sp_number", "CAST(value AS TEXT)"),
        ("sp_uri", "uri"),
    ] {
        let sql = format!(
            "SELECT resource_type || '|' || resource_id || '|' || param || '|' || {cols} AS v FROM {table} \
             WHERE tenant_id = '{tenant}'"
        );
        let rows = db.raw.query_all_raw(Statement::from_string(db.raw.get_database_backend(), sql)).await.unwrap();
        out.extend(rows.iter().map(|r| format!("{table}|{}", r.try_get::<String>("", "v").unwrap())));
    }
    out.sort();
    out
}

async fn verify(db: &TestDb, tenant: &str) -> AuditVerification {
    let tx = db.store.read(&ctx(tenant)).await.unwrap();
    let report = tx.verify_audit_chain().await.unwrap();
    tx.commit().await.unwrap();
    report
}

#[tokio::test]
async fn a_snapshot_reads_every_section_of_one_tenant_and_nothing_of_another() {
    for backend in backends().await {
        let db = backend.open().await;
        populate(&db, "a").await;
        populate(&db, "b").await;
        let d = dump(&db, "a", 2).await;
        assert_eq!(d.tenant.as_ref().map(|t| t.name.as_str()), Some("a 病院"));
        assert_eq!(d.clients.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(), ["a-cli"]);
        assert_eq!(d.clients[0].redirect_uris, "[\"http://127.0.0.1:8765/callback\"]", "JSON columns as stored");
        assert_eq!(d.lab_endpoints.len(), 1);
        assert_eq!(d.lab_endpoints[0].allowed_peers, "127.0.0.1");
        assert_eq!(d.users.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(d.users[0].mfa_secret.as_deref(), Some("v1:sealed-secret"), "sealed as stored");
        assert_eq!(d.users[0].mfa_last_step, Some(1000));
        assert_eq!(d.codes.len(), 6);
        assert_eq!(d.codes.iter().filter(|c| c.used_at.is_some()).count(), 1);
        // 2 patients and 3 observations; the chained AuditEvents travel with their links.
        assert_eq!(d.resources.len(), 5);
        assert!(d.resources.iter().all(|r| r.resource_type != "AuditEvent"));
        assert_eq!(d.resources.iter().filter(|r| r.deleted).count(), 1);
        // 3 versions + 2 versions + 3 observations; AuditEvents have no history rows.
        assert_eq!(d.history.len(), 8);
        assert_eq!(
            d.history.iter().filter(|h| h.version == 3).map(|h| h.method.as_str()).collect::<Vec<_>>(),
            ["PATCH"]
        );
        assert_eq!(d.links.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(d.links.iter().all(|l| l.event.as_ref().is_some_and(|e| e.version == 1)));
        assert_eq!(d.head.as_ref().map(|h| h.seq), Some(3));
        // Nothing of tenant b leaks into a's dump.
        let text = format!("{d:?}");
        assert!(!text.contains("b-cli") && !text.contains("b 病院") && !text.contains("b-lab"), "{text}");
        // The page size changes nothing.
        assert_eq!(dump(&db, "a", 1000).await, d);
        // A tenant without anything is empty.
        let snap = db.store.snapshot(&ctx("nobody")).await.unwrap();
        assert!(snap.counts().await.unwrap().is_empty());
        snap.finish().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn a_restore_into_an_empty_database_reproduces_rows_indexes_and_chain() {
    for backend in backends().await {
        let source = backend.open().await;
        populate(&source, "a").await;
        populate(&source, "b").await;
        let d = dump(&source, "a", 3).await;
        let target = backend.open().await;
        // Another tenant already lives in the target; it is not in the way.
        populate(&target, "b").await;
        restore(&target, "a", &d, 2).await;

        assert_eq!(dump(&target, "a", 1000).await, d, "every row as it was");
        let indexes = index_rows(&source, "a").await;
        assert!(indexes.len() > 20, "{indexes:?}");
        assert_eq!(index_rows(&target, "a").await, indexes, "the index rows a write would have made");
        let report = verify(&target, "a").await;
        assert!(report.is_ok() && report.checked == 3, "{report:?}");
        // The chain goes on from the restored head.
        let tx = target.store.write(&ctx("a")).await.unwrap();
        tx.append_audit(vec![audit_event("R")], at(2_000)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(verify(&target, "a").await.checked, 4);
        assert!(verify(&target, "a").await.is_ok());

        // Now the tenant is there: a second restore would collide, and says with what.
        let tx = target.store.begin_restore(&ctx("a")).await.unwrap();
        let occupancy = tx.occupancy(&d.clients, &d.lab_endpoints).await.unwrap();
        assert!(!occupancy.is_free());
        assert_eq!(occupancy.tenant_rows.tenant, 1);
        assert_eq!(occupancy.tenant_rows.resources, 9, "5 resources and 4 AuditEvents");
        assert_eq!(occupancy.taken_clients, ["a-cli"]);
        assert_eq!(occupancy.taken_lab_endpoints, ["a-lab"]);
        drop(tx);
        // A client id of another tenant is taken too (client ids are global).
        let tx = target.store.begin_restore(&ctx("c")).await.unwrap();
        let occupancy = tx.occupancy(&d.clients, &[]).await.unwrap();
        assert!(occupancy.tenant_rows.is_empty() && occupancy.taken_clients == ["a-cli"]);
        drop(tx);
        source.finish().await;
        target.finish().await;
    }
}

#[tokio::test]
async fn an_unfinished_restore_leaves_nothing() {
    for backend in backends().await {
        let source = backend.open().await;
        populate(&source, "a").await;
        let d = dump(&source, "a", 100).await;
        let target = backend.open().await;
        let tx = target.store.begin_restore(&ctx("a")).await.unwrap();
        tx.insert_tenant(d.tenant.as_ref().unwrap()).await.unwrap();
        tx.insert_resources(&d.resources).await.unwrap();
        tx.insert_audit_links(&d.links).await.unwrap();
        drop(tx);
        let tx = target.store.begin_restore(&ctx("a")).await.unwrap();
        let occupancy = tx.occupancy(&d.clients, &d.lab_endpoints).await.unwrap();
        assert!(occupancy.is_free(), "{occupancy:?}");
        // A tenant row naming another tenant is refused.
        let other = TenantRow { id: "z".into(), ..d.tenant.clone().unwrap() };
        assert!(tx.insert_tenant(&other).await.is_err());
        drop(tx);
        source.finish().await;
        target.finish().await;
    }
}

/// The chain check over a dump's rows, as a restore runs it.
async fn check_dump(db: &TestDb, tenant: &str) -> AuditVerification {
    let d = dump(db, tenant, 2).await;
    let mut check = ChainCheck::new();
    for r in d.resources.iter().filter(|r| r.resource_type == "AuditEvent") {
        check.unchained(&r.id);
    }
    for l in &d.links {
        check.link(l);
    }
    check.finish(d.head.as_ref())
}

#[tokio::test]
async fn the_chain_check_of_a_dump_agrees_with_the_database_verification() {
    for backend in backends().await {
        let db = backend.open().await;
        let tampering: [(&str, String); 9] = [
            ("intact", String::new()),
            (
                "edited",
                "UPDATE resources SET content = replace(content, '\"outcome\":\"0\"', '\"outcome\":\"4\"') \
                 WHERE tenant_id = 'edited' AND resource_type = 'AuditEvent' AND id = \
                 (SELECT resource_id FROM audit_chain WHERE tenant_id = 'edited' AND seq = 2)"
                    .into(),
            ),
            ("gap", "DELETE FROM audit_chain WHERE tenant_id = 'gap' AND seq = 2".into()),
            ("cut", "DELETE FROM audit_chain WHERE tenant_id = 'cut' AND seq = 3".into()),
            (
                "gone",
                "DELETE FROM resources WHERE tenant_id = 'gone' AND resource_type = 'AuditEvent' AND id = \
                 (SELECT resource_id FROM audit_chain WHERE tenant_id = 'gone' AND seq = 1)"
                    .into(),
            ),
            (
                "forged",
                "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) \
                 VALUES ('forged', 'AuditEvent', 'zz-forged', 1, 0, 0, \
                 '{\"resourceType\":\"AuditEvent\",\"id\":\"zz-forged\"}')"
                    .into(),
            ),
            (
                "modified",
                "UPDATE resources SET version_id = 2 WHERE tenant_id = 'modified' AND resource_type = 'AuditEvent' \
                 AND id = (SELECT resource_id FROM audit_chain WHERE tenant_id = 'modified' AND seq = 3)"
                    .into(),
            ),
            ("headless", "DELETE FROM audit_head WHERE tenant_id = 'headless'".into()),
            ("negative", "UPDATE audit_chain SET seq = -1 WHERE tenant_id = 'negative' AND seq = 1".into()),
        ];
        for (tenant, sql) in &tampering {
            for action in ["C", "R", "U"] {
                let tx = db.store.write(&ctx(tenant)).await.unwrap();
                tx.append_audit(vec![audit_event(action)], at(1_000)).await.unwrap();
                tx.commit().await.unwrap();
            }
            if !sql.is_empty() {
                assert_eq!(db.tamper(tenant, sql).await, 1, "{tenant}");
            }
            let expected = verify(&db, tenant).await;
            assert_eq!(expected.is_ok(), *tenant == "intact", "{tenant}: {expected:?}");
            assert_eq!(check_dump(&db, tenant).await, expected, "{tenant}");
        }
        db.finish().await;
    }
}
