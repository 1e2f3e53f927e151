//! `ehr backup` and `ehr restore` (docs/operations/backup.md), run as the built binary against
//! the test app's database: a tenant backed up, restored into an empty database and served
//! from there exports byte for byte as before, its audit chain verifies and its users log in;
//! damaged, truncated, wrongly keyed archives and occupied targets are refused with nothing
//! written.

use crate::{id_of, observation};
use ehr_testkit::{ALL_SCOPES, TestApp, json, patient};
use reqwest::Method;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs the built `ehr` on `database_url` (off the async runtime) → (success, stdout, stderr).
async fn ehr(args: Vec<String>, database_url: &str, env: Vec<(&'static str, String)>) -> (bool, String, String) {
    let database_url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ehr"));
        command
            .args(&args)
            .env("EHR_DATABASE__URL", database_url)
            .env_remove("EHR_GATEWAY__REDIS_URL")
            .env_remove("EHR_BACKUP_PASSPHRASE");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A fresh directory for archives and keys.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ehr-backup-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ehr backup keygen --out DIR/NAME`.
async fn keygen(dir: &Path, name: &str, database_url: &str) -> String {
    let path = dir.join(name).display().to_string();
    let (ok, _, stderr) = ehr(args(&["backup", "keygen", "--out", &path]), database_url, vec![]).await;
    assert!(ok, "{stderr}");
    path
}

/// The value of the `sha256: …` line.
fn sha256_of(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("sha256: ")).expect("a sha256 line").trim().to_owned()
}

/// Every row of `tenant` in the tables a restore writes, counted behind the store's back.
async fn rows_of(database_url: &str, tenant: &str) -> i64 {
    let db = Database::connect(database_url).await.unwrap();
    let mut total = 0;
    for (table, column) in [
        ("tenants", "id"),
        ("oauth_clients", "tenant_id"),
        ("lab_endpoints", "tenant_id"),
        ("users", "tenant_id"),
        ("recovery_codes", "tenant_id"),
        ("resources", "tenant_id"),
        ("resource_history", "tenant_id"),
        ("sp_token", "tenant_id"),
        ("sp_string", "tenant_id"),
        ("sp_date", "tenant_id"),
        ("sp_reference", "tenant_id"),
        ("audit_chain", "tenant_id"),
        ("audit_head", "tenant_id"),
    ] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = '{tenant}'");
        let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
        total += rows[0].try_get::<i64>("", "n").unwrap();
    }
    let _ = db.close().await;
    total
}

/// The stored AuditEvents of `tenant` whose JSON contains `needle`.
async fn audit_events_like(database_url: &str, tenant: &str, needle: &str) -> Vec<String> {
    let db = Database::connect(database_url).await.unwrap();
    let sql = format!(
        "SELECT content FROM resources WHERE tenant_id = '{tenant}' AND resource_type = 'AuditEvent' \
         AND content LIKE '%{needle}%'"
    );
    let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
    let out = rows.iter().map(|r| r.try_get::<String>("", "content").unwrap()).collect();
    let _ = db.close().await;
    out
}

/// A system-level `$export` of `tenant` as NDJSON: each type's files, concatenated as served.
async fn export(app: &TestApp, tenant: &str) -> BTreeMap<String, String> {
    let token = app.token_for(tenant, "system/*.read");
    let resp = app
        .client
        .get(app.fhir("/$export"))
        .bearer_auth(&token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let manifest: Value = loop {
        let resp = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
        match resp.status().as_u16() {
            202 => {}
            200 => break resp.json().await.unwrap(),
            s => panic!("export status {s}: {}", resp.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for o in manifest["output"].as_array().unwrap() {
        let body = app.client.get(o["url"].as_str().unwrap()).bearer_auth(&token).send().await.unwrap();
        assert_eq!(body.status(), 200);
        files.entry(o["type"].as_str().unwrap().to_owned()).or_default().push_str(&body.text().await.unwrap());
    }
    files
}

/// The entries of a Bundle without their absolute URLs (each server has its own base).
fn entries(bundle: &Value) -> Vec<Value> {
    let mut out = bundle["entry"].as_array().cloned().unwrap_or_default();
    for e in &mut out {
        e.as_object_mut().unwrap().remove("fullUrl");
    }
    out
}

/// What a client sees of `tenant` beyond the export: the whole history, and searches that go
/// through every kind of index row.
async fn views(app: &TestApp, tenant: &str, patient: &str) -> Vec<Vec<Value>> {
    let token = app.token_for(tenant, ALL_SCOPES);
    let mut out = Vec::new();
    for path in [
        "/_history?_count=1000".to_owned(),
        "/Patient?family=%E5%B1%B1%E7%94%B0&_sort=_id".to_owned(),
        "/Patient?identifier=urn:oid:1.2.392.100495.20.3.51.11311234567%7CB-1".to_owned(),
        format!("/Observation?subject=Patient/{patient}&_sort=_id"),
        "/Observation?value-quantity=gt100&_sort=_id".to_owned(),
        "/Observation?date=ge2026-01-01&_sort=-date".to_owned(),
        "/Patient?_lastUpdated=gt2000-01-01&_sort=_id&_count=100".to_owned(),
    ] {
        let resp = app.as_user(Method::GET, &path, &token).send().await.unwrap();
        let bundle = json(resp, 200).await;
        out.push(entries(&bundle));
    }
    out
}

#[tokio::test]
async fn a_tenant_restored_into_an_empty_database_exports_byte_for_byte_as_before() {
    // Source and target share gateway.secret_key, as the procedure requires for TOTP secrets.
    let secret_key = ehr_gateway::Sealer::generate_key();
    let sk = secret_key.clone();
    let a = TestApp::spawn_with(move |c| c.gateway.secret_key = Some(sk.into())).await;
    let tenant = a.tenant.clone();

    // A registered tenant with a user who enrolled TOTP (recovery codes issued) and works.
    let client = a.bootstrap().await;
    let mut doctor = a.account("backup-doctor", &["physician"]).await;
    let tokens = a.login(&client, &mut doctor, "openid fhirUser offline_access user/*.cruds").await;
    // Patients, one of them in three versions, one deleted; observations, one by the user.
    let p1 = a.create(&patient("山田", "太郎", "1970-01-01", "B-1")).await;
    let pid = id_of(&p1);
    let mut changed = p1.clone();
    changed["birthDate"] = json!("1970-01-02");
    assert_eq!(a.put(&format!("/Patient/{pid}"), &changed).await.status(), 200);
    changed["gender"] = json!("male");
    assert_eq!(a.put(&format!("/Patient/{pid}"), &changed).await.status(), 200);
    let p2 = a.create(&patient("山田", "花子", "1975-05-05", "B-2")).await;
    let gone = a.create(&patient("削除", "予定", "1980-01-01", "B-3")).await;
    assert_eq!(a.delete(&format!("/Patient/{}", id_of(&gone))).await.status(), 204);
    for (i, value) in [95.0, 120.5, 180.0].into_iter().enumerate() {
        a.create(&observation(&pid, "3D010000001926101", value, &format!("2026-0{}-01", i + 1))).await;
    }
    a.create(&observation(&id_of(&p2), "3D010000001926101", 101.0, "2026-04-01")).await;
    let by_user = a
        .as_user(Method::POST, "/Observation", &tokens.access)
        .header("content-type", "application/fhir+json")
        .body(observation(&pid, "3A015000002327101", 4.1, "2026-05-01").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(by_user.status(), 201);

    // What the tenant looks like from outside, before.
    let exported = export(&a, &tenant).await;
    assert_eq!(exported.keys().collect::<Vec<_>>(), ["Observation", "Patient"]);
    assert_eq!(exported["Patient"].lines().count(), 2, "the deleted patient is not exported");
    let seen = views(&a, &tenant, &pid).await;
    assert!(seen[0].len() >= 11, "history of every version: {}", seen[0].len());
    a.gateway.audit.flush().await;

    let dir = scratch();
    let key = keygen(&dir, "backup.key", &a.database_url).await;
    let archive = dir.join("h.ehrbak").display().to_string();
    let (ok, stdout, stderr) = ehr(
        args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &archive, "--key-file", &key]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("backup of tenant {tenant} written to")), "{stdout}");
    assert!(stdout.contains("2 users") || stdout.contains("1 users"), "{stdout}");
    let events: u64 = stdout
        .split("audit chain: ok (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(events > 10, "{stdout}");
    let checksum = sha256_of(&stdout);
    assert!(!Path::new(&format!("{archive}.partial")).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // An archive is never overwritten.
    let (ok, _, stderr) = ehr(
        args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &archive, "--key-file", &key]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(!ok && stderr.contains("never overwritten"), "{stderr}");
    // The archive verifies against its recorded checksum, with the key, as this tenant's.
    let (ok, stdout, stderr) = ehr(
        args(&["backup", "verify", &archive, "--key-file", &key, "--tenant", &tenant, "--sha256", &checksum]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("every chunk authenticated") && stdout.contains("matches the recorded SHA-256"),
        "{stdout}"
    );
    // Nothing of the content is readable in the file.
    let bytes = std::fs::read(&archive).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("B-1"));

    // The source itself holds the tenant: refused, nothing changed.
    let before = rows_of(&a.database_url, &tenant).await;
    let (ok, _, stderr) =
        ehr(args(&["restore", "--database", "all", &archive, "--key-file", &key]), &a.database_url, vec![]).await;
    assert!(!ok && stderr.contains("already has data"), "{stderr}");
    assert_eq!(rows_of(&a.database_url, &tenant).await, before);

    // An empty database with the same secret key.
    let b = TestApp::spawn_with(move |c| c.gateway.secret_key = Some(secret_key.into())).await;
    assert_eq!(rows_of(&b.database_url, &tenant).await, 0);
    let (ok, stdout, stderr) = ehr(
        args(&["restore", "--database", "all", &archive, "--tenant", &tenant, "--key-file", &key]),
        &b.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("restored tenant {tenant}")), "{stdout}");
    assert!(stdout.contains(&format!("audit chain: ok ({events} events")), "{stdout}");
    let restored_rows = rows_of(&b.database_url, &tenant).await;
    assert!(restored_rows > 50, "{restored_rows}");

    // The chain verifies where it now lives, as long as it was plus the restore's own event;
    // the source's chain holds the export's.
    let (ok, stdout, stderr) = ehr(args(&["audit", "verify", "--tenant", &tenant]), &b.database_url, vec![]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{tenant}: ok ({} events)", events + 1)), "{stdout}");
    let restore_events = audit_events_like(&b.database_url, &tenant, "backup-restore").await;
    assert_eq!(restore_events.len(), 1, "{restore_events:?}");
    let event: Value = serde_json::from_str(&restore_events[0]).unwrap();
    assert_eq!((event["action"].as_str(), event["type"]["code"].as_str()), (Some("C"), Some("110107")));
    assert_eq!(event["agent"][0]["who"]["display"], "ehr-backup");
    assert_eq!(event["entity"][0]["what"]["identifier"]["value"], checksum.as_str());
    assert!(!restore_events[0].contains("B-1") && !restore_events[0].contains("山田"), "no patient data");
    let exports = audit_events_like(&a.database_url, &tenant, "backup-create").await;
    assert_eq!(exports.len(), 1, "one export recorded (the refused second create is not)");
    assert!(exports[0].contains("\"action\":\"E\"") && exports[0].contains(&checksum), "{}", exports[0]);
    let (ok, stdout, stderr) = ehr(args(&["audit", "verify", "--tenant", &tenant]), &a.database_url, vec![]).await;
    assert!(ok && stdout.contains(&format!("{tenant}: ok ({} events)", events + 1)), "{stdout}{stderr}");

    // A second restore finds the tenant there: refused, nothing changed.
    let (ok, _, stderr) =
        ehr(args(&["restore", "--database", "all", &archive, "--key-file", &key]), &b.database_url, vec![]).await;
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("already has data") && stderr.contains("nothing was restored"), "{stderr}");
    assert_eq!(rows_of(&b.database_url, &tenant).await, restored_rows);

    // Served from the target, the tenant reads as before: export, history, searches.
    assert_eq!(export(&b, &tenant).await, exported, "the export is byte for byte the same");
    assert_eq!(views(&b, &tenant, &pid).await, seen);
    // The user logs in there (password hash, sealed TOTP secret, client, last TOTP step).
    b.advance(a.now() - b.now() + 60);
    let again = b.login(&client, &mut doctor, "openid fhirUser offline_access user/*.cruds").await;
    let read = b.as_user(Method::GET, &format!("/Patient/{pid}"), &again.access).send().await.unwrap();
    assert_eq!(json(read, 200).await["meta"]["versionId"], "3");
    // New events chain on from the restored head.
    b.gateway.audit.flush().await;
    let (ok, stdout, stderr) = ehr(args(&["audit", "verify", "--tenant", &tenant]), &b.database_url, vec![]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains(&format!("ok ({events} events)")), "the chain grew: {stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Flips one bit at `at`, keeping or recomputing the trailing checksum.
fn flipped(bytes: &[u8], at: usize, fix_checksum: bool) -> Vec<u8> {
    use sha2::Digest;
    let mut out = bytes.to_vec();
    out[at] ^= 0x10;
    if fix_checksum {
        let n = out.len();
        let sum = sha2::Sha256::digest(&out[..n - 32]);
        out[n - 32..].copy_from_slice(&sum);
    }
    out
}

/// An archive `ehr restore` and `ehr backup verify` must refuse, and the message saying why.
struct Refusal {
    what: &'static str,
    file: String,
    key_file: String,
    env: Vec<(&'static str, String)>,
    message: &'static str,
}

#[tokio::test]
async fn damaged_truncated_or_wrongly_keyed_archives_are_refused_and_nothing_is_written() {
    let a = TestApp::spawn().await;
    let tenant = a.tenant.clone();
    a.bootstrap().await;
    // Enough data for a few chunks of 64 KiB.
    for i in 0..60 {
        let mut p = patient("改ざん", &format!("検知{i}"), "1990-01-01", &format!("T-{i}"));
        p["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "記録".repeat(400))});
        a.create(&p).await;
    }
    a.gateway.audit.flush().await;
    let dir = scratch();
    let key = keygen(&dir, "right.key", &a.database_url).await;
    let wrong = keygen(&dir, "wrong.key", &a.database_url).await;
    let archive = dir.join("good.ehrbak");
    let good = archive.display().to_string();
    let (ok, stdout, stderr) = ehr(
        args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &good, "--key-file", &key]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    let bytes = std::fs::read(&archive).unwrap();
    assert!(bytes.len() > 3 * 65_536, "{} bytes", bytes.len());
    // A passphrase instead of a key file.
    let with_passphrase = dir.join("pass.ehrbak").display().to_string();
    let passphrase = vec![("EHR_BACKUP_PASSPHRASE", "a long passphrase for the night shift".to_owned())];
    let (ok, stdout, stderr) = ehr(
        args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &with_passphrase]),
        &a.database_url,
        passphrase.clone(),
    )
    .await;
    assert!(ok && stdout.contains("passphrase, argon2id"), "{stdout}{stderr}");

    let b = TestApp::spawn().await;
    let write = |name: &str, content: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let middle = bytes.len() / 2;
    let case = |what, file: String, key_file: &str, env: Vec<(&'static str, String)>, message| Refusal {
        what,
        file,
        key_file: key_file.to_owned(),
        env,
        message,
    };
    let cases = vec![
        case(
            "a flipped byte",
            write("flipped.ehrbak", &flipped(&bytes, middle, false)),
            &key,
            vec![],
            "checksum mismatch",
        ),
        case(
            "a flipped byte under a recomputed checksum",
            write("forged.ehrbak", &flipped(&bytes, middle, true)),
            &key,
            vec![],
            "does not authenticate",
        ),
        case("a truncated archive", write("truncated.ehrbak", &bytes[..middle]), &key, vec![], "truncated"),
        case("a wrong key", good.clone(), &wrong, vec![], "wrong key"),
        case(
            "a wrong passphrase",
            with_passphrase.clone(),
            "",
            vec![("EHR_BACKUP_PASSPHRASE", "not the passphrase of the night shift".to_owned())],
            "wrong key",
        ),
        case("a key file for a passphrase archive", with_passphrase.clone(), &key, vec![], "EHR_BACKUP_PASSPHRASE"),
    ];
    for Refusal { what, file, key_file, env, message } in cases {
        let mut list = vec!["restore".to_owned(), "--database".to_owned(), "all".to_owned(), file.clone()];
        if !key_file.is_empty() {
            list.extend(["--key-file".to_owned(), key_file.clone()]);
        }
        let (ok, stdout, stderr) = ehr(list, &b.database_url, env.clone()).await;
        assert!(!ok, "{what}: restored\n{stdout}");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert_eq!(rows_of(&b.database_url, &tenant).await, 0, "{what}: nothing is written");
        // `backup verify` refuses it too.
        let mut list = vec!["backup".to_owned(), "verify".to_owned(), file];
        if !key_file.is_empty() {
            list.extend(["--key-file".to_owned(), key_file]);
        }
        let (ok, _, stderr) = ehr(list, &b.database_url, env).await;
        assert!(!ok && stderr.contains(message), "{what}: {stderr}");
    }
    // Another tenant's archive, when the operator names the tenant.
    let (ok, _, stderr) = ehr(
        args(&["restore", "--database", "all", &good, "--tenant", "another", "--key-file", &key]),
        &b.database_url,
        vec![],
    )
    .await;
    assert!(!ok && stderr.contains(&format!("holds tenant `{tenant}`, not `another`")), "{stderr}");
    // No key at all.
    let (ok, _, stderr) = ehr(args(&["restore", "--database", "all", &good]), &b.database_url, vec![]).await;
    assert!(!ok && stderr.contains("--key-file"), "{stderr}");
    assert_eq!(rows_of(&b.database_url, &tenant).await, 0);

    // The intact archives do restore (the refusals were the damage's doing): the passphrase one
    // verifies, the key-file one restores.
    let (ok, stdout, stderr) = ehr(args(&["backup", "verify", &with_passphrase]), &b.database_url, passphrase).await;
    assert!(ok && stdout.contains("every chunk authenticated"), "{stdout}{stderr}");
    let (ok, stdout, stderr) =
        ehr(args(&["restore", "--database", "all", &good, "--key-file", &key]), &b.database_url, vec![]).await;
    assert!(ok, "{stdout}{stderr}");
    let token = b.token_for(&tenant, ALL_SCOPES);
    let patients = json(b.as_user(Method::GET, "/Patient?_summary=count", &token).send().await.unwrap(), 200).await;
    assert_eq!(patients["total"], 60);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the built `ehr` without a database URL (SQLite under `--data-dir`) → (success, stderr).
async fn ehr_without_database_url(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ehr"))
            .args(&args)
            .env_remove("EHR_DATABASE__URL")
            .env_remove("EHR_DATABASE__URL_FILE")
            .env_remove("EHR_GATEWAY__REDIS_URL")
            .env_remove("EHR_BACKUP_PASSPHRASE")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_restore_checks_the_recorded_checksum_and_the_database_kind_before_touching_the_target() {
    let a = TestApp::spawn().await;
    let tenant = a.tenant.clone();
    a.bootstrap().await;
    let p = a.create(&patient("照合", "太郎", "1990-01-01", "S-1")).await;
    a.create(&observation(&id_of(&p), "3D010000001926101", 99.0, "2026-01-01")).await;
    a.gateway.audit.flush().await;
    let dir = scratch();
    let key = keygen(&dir, "backup.key", &a.database_url).await;
    let archive = dir.join("all.ehrbak").display().to_string();

    // With database.url set, which database it is must be said.
    let (ok, _, stderr) = ehr(
        args(&["backup", "create", "--tenant", &tenant, "--out", &archive, "--key-file", &key]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(!ok && stderr.contains("give --database all|gateway|clinical"), "{stderr}");
    assert!(!Path::new(&archive).exists());
    let (ok, stdout, stderr) = ehr(
        args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &archive, "--key-file", &key]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("read from the all database"), "{stdout}");
    assert!(!stderr.contains("WARNING"), "a whole tenant in one database: {stderr}");
    let checksum = sha256_of(&stdout);
    // Read as the gateway's database of a microservices deployment, the same database holds
    // the clinical sections too: written, with a warning naming them.
    let gateway = dir.join("gateway.ehrbak").display().to_string();
    let (ok, stdout, stderr) = ehr(
        args(&[
            "backup",
            "create",
            "--database",
            "gateway",
            "--tenant",
            &tenant,
            "--out",
            &gateway,
            "--key-file",
            &key,
        ]),
        &a.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("read from the gateway database"), "{stdout}");
    assert!(stderr.contains("WARNING: this database holds resources, history or lab endpoints"), "{stderr}");

    // A target directory that does not exist is not created for an archive that does not
    // verify: the archive is checked before the database is opened.
    let bytes = std::fs::read(&archive).unwrap();
    let damaged = dir.join("damaged.ehrbak");
    std::fs::write(&damaged, flipped(&bytes, bytes.len() / 2, false)).unwrap();
    let data_dir = dir.join("not-yet");
    let (ok, stderr) = ehr_without_database_url(args(&[
        "restore",
        &damaged.display().to_string(),
        "--key-file",
        &key,
        "--data-dir",
        &data_dir.display().to_string(),
    ]))
    .await;
    assert!(!ok && stderr.contains("checksum mismatch"), "{stderr}");
    assert!(!data_dir.exists(), "nothing created for a damaged archive");

    let b = TestApp::spawn().await;
    // The recorded checksum is compared first: another one is refused, nothing written.
    let (ok, _, stderr) = ehr(
        args(&["restore", "--database", "all", &archive, "--key-file", &key, "--sha256", &"0".repeat(64)]),
        &b.database_url,
        vec![],
    )
    .await;
    assert!(!ok && stderr.contains("not the 0000"), "{stderr}");
    // A gateway archive is not restored as the clinical database, nor as a whole tenant.
    for target in ["clinical", "all"] {
        let (ok, _, stderr) =
            ehr(args(&["restore", "--database", target, &gateway, "--key-file", &key]), &b.database_url, vec![]).await;
        assert!(!ok && stderr.contains("restore it into the matching database"), "{target}: {stderr}");
    }
    assert_eq!(rows_of(&b.database_url, &tenant).await, 0);
    let (ok, stdout, stderr) = ehr(
        args(&["restore", "--database", "all", &archive, "--key-file", &key, "--sha256", &checksum.to_uppercase()]),
        &b.database_url,
        vec![],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("matches the recorded SHA-256") && stdout.contains("the all database's sections"),
        "{stdout}"
    );
    assert!(rows_of(&b.database_url, &tenant).await > 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_archive_replaced_between_verification_and_writing_is_refused_and_nothing_is_written() {
    let a = TestApp::spawn().await;
    let tenant = a.tenant.clone();
    a.bootstrap().await;
    a.create(&patient("差替", "一郎", "1980-01-01", "R-1")).await;
    a.gateway.audit.flush().await;
    let dir = scratch();
    let key = keygen(&dir, "backup.key", &a.database_url).await;
    // Two valid archives of the tenant under the same key.
    let mut archives = Vec::new();
    for name in ["first.ehrbak", "second.ehrbak"] {
        let path = dir.join(name).display().to_string();
        let (ok, stdout, stderr) = ehr(
            args(&["backup", "create", "--database", "all", "--tenant", &tenant, "--out", &path, "--key-file", &key]),
            &a.database_url,
            vec![],
        )
        .await;
        assert!(ok, "{stdout}{stderr}");
        archives.push(PathBuf::from(path));
        a.create(&patient("差替", "二郎", "1981-01-01", "R-2")).await;
        a.gateway.audit.flush().await;
    }
    let text = std::fs::read_to_string(&key).unwrap();
    let options = ehr_backup::RestoreOptions {
        secret: ehr_backup::Secret::Key(ehr_backup::BackupKey::from_base64(&text).unwrap()),
        expect_tenant: None,
        expect_sha256: None,
        database: ehr_backup::Database::All,
        allow_broken_audit: false,
        now: ehr_core::Clock::now(&ehr_core::SystemClock),
    };
    let b = TestApp::spawn().await;
    // Verified whole, then the file is replaced by the other archive before the write pass.
    let prepared = ehr_backup::prepare_restore(&archives[0], &options).unwrap();
    std::fs::rename(&archives[1], &archives[0]).unwrap();
    let err = ehr_backup::restore(&b.gateway.store, &prepared).await.expect_err("a replaced file");
    assert!(err.to_string().contains("the file changed while it was being read"), "{err}");
    assert_eq!(rows_of(&b.database_url, &tenant).await, 0, "nothing is written");
    // The replacing archive, verified itself, restores.
    let prepared = ehr_backup::prepare_restore(&archives[0], &options).unwrap();
    let restored = ehr_backup::restore(&b.gateway.store, &prepared).await.unwrap();
    assert!(restored.audit_after.is_ok());
    assert!(rows_of(&b.database_url, &tenant).await > 0);
    let _ = std::fs::remove_dir_all(dir);
}
