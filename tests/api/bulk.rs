//! FHIR Bulk Data `$export` (docs/bulk-data.md): kick-off, status, manifest, files, the
//! parameters, the three levels, the layouts beyond NDJSON, cancellation, retention, tenancy and
//! scopes — and a job killed midway that resumes after a restart without losing or repeating a
//! resource.

use crate::{id_of, observation};
use ehr_testkit::{ALL_SCOPES, TestApp, json, outcome, patient};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a Bulk Data client of the whole tenant holds.
const READ: &str = "system/*.read";

/// Percent-encodes a query-parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A kick-off request as the IG has it (`Accept`, `Prefer: respond-async`).
fn kick(app: &TestApp, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.fhir(path))
        .bearer_auth(token)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
}

/// Kicks off an export and returns its status URL.
async fn start(app: &TestApp, path: &str, token: &str) -> String {
    accepted(kick(app, Method::GET, path, token).send().await.unwrap(), path).await
}

async fn accepted(resp: reqwest::Response, what: &str) -> String {
    let status = resp.status().as_u16();
    let location = resp.headers().get("content-location").map(|v| v.to_str().unwrap().to_owned());
    let body = resp.text().await.unwrap();
    assert_eq!(status, 202, "{what}: {body}");
    location.expect("Content-Location")
}

/// Polls the status URL until the manifest is there.
async fn finish(app: &TestApp, status_url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let resp = app.client.get(status_url).bearer_auth(token).send().await.unwrap();
        match resp.status().as_u16() {
            202 => {
                assert!(resp.headers().contains_key("x-progress"), "{:?}", resp.headers());
                assert!(resp.headers().contains_key("retry-after"), "{:?}", resp.headers());
            }
            200 => {
                assert_eq!(resp.headers()["content-type"], "application/json");
                return resp.json().await.unwrap();
            }
            s => panic!("status {s}: {}", resp.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn export(app: &TestApp, path: &str, token: &str) -> Value {
    let url = start(app, path, token).await;
    finish(app, &url, token).await
}

/// Downloads a file: content type and bytes.
async fn download(app: &TestApp, url: &str, token: &str) -> (String, Vec<u8>) {
    let resp = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.bytes().await.unwrap().to_vec())
}

/// Every resource of an NDJSON manifest by type; checks media type, line count against `count`
/// and that each line is a resource of the file's type.
async fn ndjson(app: &TestApp, manifest: &Value, token: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in manifest["output"].as_array().unwrap() {
        let ty = o["type"].as_str().unwrap();
        let (ct, body) = download(app, o["url"].as_str().unwrap(), token).await;
        assert_eq!(ct, "application/fhir+ndjson");
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap(), "{o}");
        assert!(lines.iter().all(|r| r["resourceType"] == ty), "{o}");
        out.entry(ty.to_owned()).or_default().extend(lines);
    }
    out
}

fn ids(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(id_of).collect()
}

fn ids_of(files: &BTreeMap<String, Vec<Value>>, ty: &str) -> BTreeSet<String> {
    files.get(ty).map(|r| ids(r)).unwrap_or_default()
}

/// `count` patients with `per` observations each: (patient ids, observation ids by patient).
async fn dataset(app: &TestApp, count: usize, per: usize) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let mut patients = BTreeSet::new();
    let mut observations = BTreeMap::new();
    for i in 0..count {
        let p = id_of(&app.create(&patient("輸出", &format!("花子{i}"), "1980-04-01", &format!("BULK-{i}"))).await);
        let mut mine = BTreeSet::new();
        for j in 0..per {
            let o = app.create(&observation(&p, "3B035000002327201", j as f64, "2024-05-01")).await;
            mine.insert(id_of(&o));
        }
        observations.insert(p.clone(), mine);
        patients.insert(p);
    }
    (patients, observations)
}

fn all(observations: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    observations.values().flatten().cloned().collect()
}

/// The job id of a status URL.
fn job_of(status_url: &str) -> &str {
    status_url.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn a_system_export_writes_the_tenants_resources_as_ndjson_and_only_to_its_requester() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 3, 2).await;
    // Another tenant's data, which must not appear.
    let other = app.token_for("other-hospital", ALL_SCOPES);
    let theirs = json(
        app.client
            .post(app.fhir("/Patient"))
            .bearer_auth(&other)
            .header("content-type", "application/fhir+json")
            .body(patient("他院", "次郎", "1970-01-01", "OTHER-1").to_string())
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;

    let token = app.token(READ);
    let url = start(&app, "/$export", &token).await;
    assert!(url.starts_with(&app.fhir("/$export-status/")), "{url}");
    let manifest = finish(&app, &url, &token).await;
    assert_eq!(manifest["request"], app.fhir("/$export"));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], json!([]));
    assert!(manifest["transactionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{manifest}");
    let files = ndjson(&app, &manifest, &token).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation", "Patient"], "types without resources have no file");
    assert_eq!(ids_of(&files, "Patient"), patients);
    assert_eq!(ids_of(&files, "Observation"), all(&observations));
    assert!(!ids_of(&files, "Patient").contains(&id_of(&theirs)));
    assert_eq!(files["Observation"].len(), 6, "each once");

    // Another tenant's token finds neither the job nor its files (404, not 403) …
    let file_url = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    for u in [&url, &file_url] {
        outcome(app.client.get(u.as_str()).bearer_auth(&other).send().await.unwrap(), 404, "not-found").await;
    }
    outcome(app.client.delete(url.as_str()).bearer_auth(&other).send().await.unwrap(), 404, "not-found").await;
    // … nor does another caller of the same tenant: the files hold what the requester's scopes allowed.
    let mut claims = app.claims(&app.tenant, READ);
    claims.sub = "another-client".into();
    let colleague = app.sign_claims(&claims);
    for u in [&url, &file_url] {
        outcome(app.client.get(u.as_str()).bearer_auth(&colleague).send().await.unwrap(), 404, "not-found").await;
    }
    // Without a token: 401.
    assert_eq!(app.client.get(file_url.as_str()).send().await.unwrap().status(), 401);
    // Only files the manifest lists are served: no other name, no path.
    let job = job_of(&url);
    for name in ["Patient-9.ndjson", "..%2F..%2Fehr.db", "%2E%2E", "Patient-1.ndjson%2F..%2F..%2Fx"] {
        let resp = app.client.get(app.fhir(&format!("/$export-file/{job}/{name}"))).bearer_auth(&token).send().await;
        assert_eq!(resp.unwrap().status(), 404, "{name}");
    }
    // The requester's repeated status read still answers the manifest.
    assert_eq!(json(app.client.get(url.as_str()).bearer_auth(&token).send().await.unwrap(), 200).await, manifest);
}

#[tokio::test]
async fn type_since_and_type_filter_select_what_is_exported() {
    let app = TestApp::spawn().await;
    let p1 = id_of(&app.create(&patient("条件", "一郎", "1960-01-01", "F1")).await);
    let a1 = id_of(&app.create(&observation(&p1, "CODE-A", 1.0, "2024-01-01")).await);
    let b1 = id_of(&app.create(&observation(&p1, "CODE-B", 2.0, "2024-01-01")).await);
    app.advance(120);
    let since = ehr_fhir::search::format_instant((app.now() - 60) * 1000);
    let p2 = id_of(&app.create(&patient("条件", "二郎", "1961-01-01", "F2")).await);
    let a2 = id_of(&app.create(&observation(&p2, "CODE-A", 3.0, "2024-02-01")).await);
    let token = app.token(READ);
    let set = |v: &[&String]| v.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>();

    let files = ndjson(&app, &export(&app, "/$export?_type=Observation", &token).await, &token).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(ids_of(&files, "Observation"), set(&[&a1, &b1, &a2]));

    let path = format!("/$export?_since={}", enc(&since));
    let files = ndjson(&app, &export(&app, &path, &token).await, &token).await;
    assert_eq!(ids_of(&files, "Patient"), set(&[&p2]));
    assert_eq!(ids_of(&files, "Observation"), set(&[&a2]));

    // A filter narrows its type; the other types are exported whole.
    let path = format!("/$export?_type=Patient,Observation&_typeFilter={}", enc("Observation?code=CODE-A"));
    let files = ndjson(&app, &export(&app, &path, &token).await, &token).await;
    assert_eq!(ids_of(&files, "Patient"), set(&[&p1, &p2]));
    assert_eq!(ids_of(&files, "Observation"), set(&[&a1, &a2]));

    // Several filters of a type are ORed — comma-separated or repeated — and what matches
    // several is written once.
    for path in [
        format!("/$export?_type=Observation&_typeFilter={}", enc("Observation?code=CODE-A,Observation?code=CODE-B")),
        format!(
            "/$export?_type=Observation&_typeFilter={}&_typeFilter={}",
            enc("Observation?code=CODE-A"),
            enc("Observation?status=final")
        ),
    ] {
        let files = ndjson(&app, &export(&app, &path, &token).await, &token).await;
        assert_eq!(ids_of(&files, "Observation"), set(&[&a1, &b1, &a2]), "{path}");
        assert_eq!(files["Observation"].len(), 3, "{path}");
    }

    // POST with a Parameters body.
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": "Observation?code=CODE-B"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
    ]});
    let url = accepted(
        kick(&app, Method::POST, "/$export", &token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
        "POST $export",
    )
    .await;
    let manifest = finish(&app, &url, &token).await;
    assert_eq!(manifest["request"], app.fhir("/$export"));
    let files = ndjson(&app, &manifest, &token).await;
    assert_eq!(ids_of(&files, "Observation"), set(&[&b1]));
}

#[tokio::test]
async fn a_patient_level_export_covers_the_patient_compartment() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 2, 2).await;
    let practitioner =
        app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "医師", "given": ["一"]}]})).await;
    let token = app.token(READ);

    let files = ndjson(&app, &export(&app, "/Patient/$export", &token).await, &token).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation", "Patient"], "no Practitioner");
    assert_eq!(ids_of(&files, "Patient"), patients);
    assert_eq!(ids_of(&files, "Observation"), all(&observations));
    // The system level has it.
    let files = ndjson(&app, &export(&app, "/$export?_type=Practitioner", &token).await, &token).await;
    assert_eq!(ids_of(&files, "Practitioner"), BTreeSet::from([id_of(&practitioner)]));
    outcome(
        kick(&app, Method::GET, "/Patient/$export?_type=Practitioner", &token).send().await.unwrap(),
        400,
        "invalid",
    )
    .await;

    // The `patient` parameter narrows a Patient-level export to those patients.
    let first = patients.iter().next().unwrap().clone();
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{first}")}},
    ]});
    let url = accepted(
        kick(&app, Method::POST, "/Patient/$export", &token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
        "POST Patient/$export",
    )
    .await;
    let files = ndjson(&app, &finish(&app, &url, &token).await, &token).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([first.clone()]));
    assert_eq!(ids_of(&files, "Observation"), observations[&first]);
}

#[tokio::test]
async fn a_group_level_export_covers_the_active_members() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 3, 1).await;
    let p: Vec<&String> = patients.iter().collect();
    let group = app
        .create(&json!({
            "resourceType": "Group",
            "type": "person",
            "actual": true,
            "member": [
                {"entity": {"reference": format!("Patient/{}", p[0])}},
                {"entity": {"reference": format!("Patient/{}", p[1])}, "inactive": true},
                {"entity": {"reference": format!("Patient/{}", p[2])}},
            ]
        }))
        .await;
    let gid = id_of(&group);
    let token = app.token(READ);
    let files = ndjson(&app, &export(&app, &format!("/Group/{gid}/$export"), &token).await, &token).await;
    assert_eq!(ids_of(&files, "Patient"), BTreeSet::from([p[0].clone(), p[2].clone()]));
    let expected: BTreeSet<String> = [p[0], p[2]].iter().flat_map(|id| observations[*id].iter().cloned()).collect();
    assert_eq!(ids_of(&files, "Observation"), expected);

    let path = format!("/Group/{gid}/$export?_type=Observation");
    let files = ndjson(&app, &export(&app, &path, &token).await, &token).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation"]);
    outcome(kick(&app, Method::GET, "/Group/no-such-group/$export", &token).send().await.unwrap(), 404, "not-found")
        .await;
    // Another tenant's Group does not exist for us.
    let other = app.token_for("other-hospital", READ);
    outcome(kick(&app, Method::GET, &format!("/Group/{gid}/$export"), &other).send().await.unwrap(), 404, "not-found")
        .await;
}

#[tokio::test]
async fn kick_off_refusals_are_operation_outcomes() {
    let app = TestApp::spawn().await;
    let pid = id_of(&app.create(&patient("拒否", "花子", "1990-01-01", "R1")).await);
    app.create(&observation(&pid, "CODE-A", 1.0, "2024-01-01")).await;
    let token = app.token(READ);
    let get = |path: &str, token: &str| app.client.get(app.fhir(path)).bearer_auth(token.to_owned());

    // Prefer: respond-async is required; Accept must allow FHIR JSON.
    outcome(get("/$export", &token).send().await.unwrap(), 400, "invalid").await;
    outcome(
        get("/$export", &token)
            .header("prefer", "respond-async")
            .header("accept", "application/xml")
            .send()
            .await
            .unwrap(),
        400,
        "not-supported",
    )
    .await;
    for (path, code) in [
        ("/$export?_type=NoSuchType".to_owned(), "invalid"),
        ("/$export?_outputFormat=application%2Fpdf".to_owned(), "not-supported"),
        (format!("/$export?_typeFilter={}", enc("Observation?no-such-param=1")), "invalid"),
        (format!("/$export?_typeFilter={}", enc("Observation?_sort=date")), "invalid"),
        (format!("/$export?_typeFilter={}", enc("Observation")), "invalid"),
        (format!("/$export?_typeFilter={}", enc("Observation?date=yesterday")), "invalid"),
        (format!("/$export?_type=Patient&_typeFilter={}", enc("Observation?code=CODE-A")), "invalid"),
        ("/$export?_since=yesterday".to_owned(), "invalid"),
        ("/$export?_bom=true".to_owned(), "invalid"),
        ("/$export?patient=Patient/1".to_owned(), "invalid"),
    ] {
        outcome(kick(&app, Method::GET, &path, &token).send().await.unwrap(), 400, code).await;
    }
    // Unknown parameters: ignored by default, refused with handling=strict.
    start(&app, "/$export?_type=Patient&foo=bar", &token).await;
    let strict = kick(&app, Method::GET, "/$export?_type=Patient&foo=bar", &token)
        .header("prefer", "respond-async, handling=strict")
        .send()
        .await
        .unwrap();
    outcome(strict, 400, "invalid").await;
    let strict = kick(&app, Method::GET, "/$export?_type=Patient&_elements=id", &token)
        .header("prefer", "respond-async, handling=strict")
        .send()
        .await
        .unwrap();
    outcome(strict, 400, "not-supported").await;

    // Scopes: a type the token cannot read is 403; without `_type`, only readable types.
    let patients_only = app.token("system/Patient.read");
    outcome(
        kick(&app, Method::GET, "/$export?_type=Observation", &patients_only).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let chained = format!("/$export?_type=Patient&_typeFilter={}", enc("Patient?_id=x"));
    start(&app, &chained, &patients_only).await;
    let chain = format!("/$export?_type=Observation&_typeFilter={}", enc("Observation?subject:Patient.family=拒否"));
    let observations_only = app.token("system/Observation.read");
    outcome(kick(&app, Method::GET, &chain, &observations_only).send().await.unwrap(), 403, "forbidden").await;
    let files = ndjson(&app, &export(&app, "/$export", &patients_only).await, &patients_only).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Patient"]);
    outcome(kick(&app, Method::GET, "/$export", &app.token("openid")).send().await.unwrap(), 403, "forbidden").await;
    assert_eq!(
        app.client.get(app.fhir("/$export")).header("prefer", "respond-async").send().await.unwrap().status(),
        401
    );
    // Group-level needs Group read.
    outcome(kick(&app, Method::GET, "/Group/g1/$export", &patients_only).send().await.unwrap(), 403, "forbidden").await;
    // An unknown job.
    outcome(get("/$export-status/0123456789abcdef", &token).send().await.unwrap(), 404, "not-found").await;
}

/// The export root a test app writes to.
async fn spawn_with_root(configure: impl FnOnce(&mut ehr_app::Config)) -> (TestApp, PathBuf) {
    let mut root = PathBuf::new();
    let app = TestApp::spawn_with(|c| {
        configure(c);
        root = c.export.root.clone();
    })
    .await;
    (app, root)
}

fn job_dir(root: &Path, app: &TestApp, status_url: &str) -> PathBuf {
    root.join(&app.tenant).join(job_of(status_url))
}

/// The newest copy of `name` in a job's directory: every claim of the job writes in a
/// directory of its own, `a<attempt>`.
fn claim_file(job_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(job_dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let attempt = e.file_name().to_str()?.strip_prefix('a')?.parse().ok()?;
            let path = e.path().join(name);
            path.exists().then_some((attempt, path))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Polls the status until `X-Progress` says some resources were written.
async fn wait_for_progress(app: &TestApp, url: &str, token: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = app.client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 202, "still running");
        let written = resp.headers().get("x-progress").and_then(|v| written_of(v.to_str().unwrap()));
        if let Some(n) = written.filter(|n| *n >= at_least) {
            return n;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// `N` of "…; N resources written".
fn written_of(progress: &str) -> Option<u64> {
    progress.strip_suffix(" resources written")?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn delete_cancels_a_running_export_and_removes_its_files() {
    let (app, root) = spawn_with_root(|c| {
        c.export.page_size = 2;
        c.export.page_pause_ms = 300;
    })
    .await;
    dataset(&app, 8, 0).await;
    let token = app.token(READ);
    let url = start(&app, "/$export?_type=Patient", &token).await;
    wait_for_progress(&app, &url, &token, 2).await;
    let dir = job_dir(&root, &app, &url);
    assert!(claim_file(&dir, "Patient-1.ndjson").is_some());
    assert_eq!(app.client.delete(url.as_str()).bearer_auth(&token).send().await.unwrap().status(), 202);
    outcome(app.client.get(url.as_str()).bearer_auth(&token).send().await.unwrap(), 404, "not-found").await;
    outcome(app.client.delete(url.as_str()).bearer_auth(&token).send().await.unwrap(), 404, "not-found").await;
    // The worker stops at its next page and leaves nothing behind.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!dir.exists(), "{}", dir.display());

    // A completed job is deleted the same way, files and all.
    let url = start(&app, "/$export?_type=Patient&_typeFilter=Patient%3Fidentifier%3DBULK-1", &token).await;
    let manifest = finish(&app, &url, &token).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(app.client.delete(url.as_str()).bearer_auth(&token).send().await.unwrap().status(), 202);
    outcome(app.client.get(file.as_str()).bearer_auth(&token).send().await.unwrap(), 404, "not-found").await;
    assert!(!job_dir(&root, &app, &url).exists());
}

#[tokio::test]
async fn finished_exports_are_deleted_after_the_retention_period() {
    let (app, root) = spawn_with_root(|c| c.export.retention_hours = 1).await;
    dataset(&app, 1, 1).await;
    let token = app.token(READ);
    let url = start(&app, "/$export", &token).await;
    finish(&app, &url, &token).await;
    let dir = job_dir(&root, &app, &url);
    assert!(dir.exists());
    app.advance(2 * 3600);
    let token = app.token(READ); // the first one expired with the clock
    let deadline = Instant::now() + Duration::from_secs(30);
    // The sweep removes the files first, then the job.
    while dir.exists() || app.client.get(url.as_str()).bearer_auth(&token).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "not swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome(app.client.get(url.as_str()).bearer_auth(&token).send().await.unwrap(), 404, "not-found").await;
}

#[tokio::test]
async fn files_roll_over_after_max_file_resources() {
    let app = TestApp::spawn_with(|c| {
        c.export.max_file_resources = 2;
        c.export.page_size = 3;
    })
    .await;
    let (patients, _) = dataset(&app, 5, 0).await;
    let token = app.token(READ);
    let manifest = export(&app, "/$export?_type=Patient", &token).await;
    let files: Vec<(String, u64)> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned(), o["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        files,
        [("Patient-1.ndjson".to_owned(), 2), ("Patient-2.ndjson".to_owned(), 2), ("Patient-3.ndjson".to_owned(), 1)]
    );
    let all = ndjson(&app, &manifest, &token).await;
    assert_eq!(ids_of(&all, "Patient"), patients);
}

/// The Bundles of a manifest: (patient id, the ids of its other entries) per Bundle, checking
/// the Bundle shape and the manifest's counts.
fn bundle_entries(bundle: &Value, count: u64) -> (String, BTreeSet<String>) {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len() as u64, count);
    let first = &entries[0]["resource"];
    assert_eq!(first["resourceType"], "Patient", "the patient first");
    let pid = id_of(first);
    assert!(entries[0]["fullUrl"].as_str().unwrap().ends_with(&format!("/fhir/Patient/{pid}")));
    let rest: BTreeSet<String> = entries[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["resource"]["subject"]["reference"], format!("Patient/{pid}"));
            id_of(&e["resource"])
        })
        .collect();
    (pid, rest)
}

#[tokio::test]
async fn bundle_layouts_hold_one_patient_each_in_json_and_xml() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 3, 2).await;
    let practitioner = id_of(
        &app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "医師", "given": ["二"]}]})).await,
    );
    let token = app.token(READ);
    for (format, media) in
        [("application/fhir+json", "application/fhir+json"), ("application/fhir+xml", "application/fhir+xml")]
    {
        let manifest = export(&app, &format!("/$export?_outputFormat={}", enc(format)), &token).await;
        let mut found = BTreeMap::new();
        let mut others = BTreeSet::new();
        for o in manifest["output"].as_array().unwrap() {
            let (ct, body) = download(&app, o["url"].as_str().unwrap(), &token).await;
            assert!(ct.starts_with(media), "{ct}");
            let text = String::from_utf8(body).unwrap();
            let bundle = if format.ends_with("xml") {
                assert!(text.starts_with("<?xml"), "{text}");
                ehr_fhir::xml::from_xml(&text).unwrap()
            } else {
                serde_json::from_str(&text).unwrap()
            };
            let count = o["count"].as_u64().unwrap();
            match o["type"].as_str().unwrap() {
                "Bundle" => {
                    let (pid, rest) = bundle_entries(&bundle, count);
                    assert!(found.insert(pid, rest).is_none(), "one Bundle per patient");
                }
                "Practitioner" => {
                    // Types outside the Patient compartment: Bundles of their own.
                    assert_eq!(bundle["type"], "collection");
                    others.extend(bundle["entry"].as_array().unwrap().iter().map(|e| id_of(&e["resource"])));
                }
                other => panic!("unexpected output type {other}"),
            }
        }
        assert_eq!(found.keys().cloned().collect::<BTreeSet<_>>(), patients, "{format}");
        for (pid, rest) in &found {
            assert_eq!(rest, &observations[pid], "{format}");
        }
        assert_eq!(others, BTreeSet::from([practitioner.clone()]), "{format}");
    }
    // A Patient-level export in Bundles: the patients only, restricted by `_type`.
    let path = format!("/Patient/$export?_outputFormat={}&_type=Patient", enc("application/fhir+json"));
    let manifest = export(&app, &path, &token).await;
    assert_eq!(manifest["output"].as_array().unwrap().len(), 3);
    assert!(manifest["output"].as_array().unwrap().iter().all(|o| o["type"] == "Bundle" && o["count"] == 1));
}

#[tokio::test]
async fn a_system_bundle_export_keeps_the_resources_that_name_no_patient() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 2, 1).await;
    // An Observation about a Group of patients: in no patient's compartment.
    let group = id_of(&app.create(&json!({"resourceType": "Group", "type": "person", "actual": false})).await);
    let mut about_group = observation(patients.iter().next().unwrap(), "3B035000002327201", 9.0, "2024-05-02");
    about_group["subject"] = json!({"reference": format!("Group/{group}")});
    let about_group = id_of(&app.create(&about_group).await);
    let token = app.token(READ);
    let path = format!("/$export?_type=Patient,Observation&_outputFormat={}", enc("application/fhir+json"));
    let manifest = export(&app, &path, &token).await;
    let mut in_bundles = BTreeSet::new();
    let mut on_their_own = BTreeSet::new();
    for o in manifest["output"].as_array().unwrap() {
        let (_, body) = download(&app, o["url"].as_str().unwrap(), &token).await;
        let bundle: Value = serde_json::from_slice(&body).unwrap();
        let ids = bundle["entry"].as_array().unwrap().iter().map(|e| id_of(&e["resource"]));
        match o["type"].as_str().unwrap() {
            "Bundle" => in_bundles.extend(ids),
            "Observation" => on_their_own.extend(ids),
            other => panic!("unexpected output type {other}"),
        }
    }
    assert_eq!(on_their_own, BTreeSet::from([about_group.clone()]), "in a Bundle of its type");
    let expected: BTreeSet<String> = patients.iter().cloned().chain(all(&observations)).collect();
    assert_eq!(in_bundles, expected, "the patients' Bundles hold the rest, once");
    // A Patient-level export covers the compartment only: not that Observation.
    let path = format!("/Patient/$export?_type=Patient,Observation&_outputFormat={}", enc("application/fhir+json"));
    let manifest = export(&app, &path, &token).await;
    assert!(manifest["output"].as_array().unwrap().iter().all(|o| o["type"] == "Bundle"), "{manifest}");
}

#[tokio::test]
async fn the_csv_layout_writes_one_file_per_table_that_reads_back() {
    let app = TestApp::spawn().await;
    let (patients, observations) = dataset(&app, 2, 2).await;
    let token = app.token(READ);
    let path = format!("/$export?_type=Patient,Observation&_outputFormat={}&_bom=true", enc("text/csv"));
    let manifest = export(&app, &path, &token).await;
    let mut by_type: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for o in manifest["output"].as_array().unwrap() {
        let name = o["url"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
        let (ct, body) = download(&app, o["url"].as_str().unwrap(), &token).await;
        assert!(ct.starts_with("text/csv"), "{ct}");
        assert!(body.starts_with(ehr_fhir::csv::BOM), "{name}");
        let records = String::from_utf8_lossy(&body).matches("\r\n").count() as u64;
        assert!(records > o["count"].as_u64().unwrap(), "{name}: a header and the rows");
        by_type.entry(o["type"].as_str().unwrap().to_owned()).or_default().push((name, body));
    }
    let tables = ehr_fhir::csv::tables("Patient").unwrap();
    assert!(by_type["Patient"].iter().any(|(n, _)| *n == tables[0].file_name()), "{:?}", by_type.keys());
    for (ty, expected) in [("Patient", patients.clone()), ("Observation", all(&observations))] {
        let files: Vec<(&str, &[u8])> = by_type[ty].iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        let records = ehr_fhir::csv::unflatten(ty, &files).unwrap();
        let mut seen = BTreeSet::new();
        for r in records {
            let resource = r.result.unwrap();
            // What reads back is the stored resource, exactly.
            let stored = json(app.get(&format!("/{ty}/{}", r.id)).await, 200).await;
            assert_eq!(resource, stored);
            seen.insert(r.id);
        }
        assert_eq!(seen, expected, "{ty}");
    }
}

// ── Workers that lose their lease, limits, scopes at download ──────────────────────────────

/// Patients `<prefix>-00`… with ids of our choosing (so that their order, which pages follow,
/// is known).
async fn patients_with_ids(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i:02}");
        let mut p = patient("遅延", &format!("{i}"), "1980-01-01", &format!("{prefix}-{i}"));
        p["id"] = json!(id);
        let resp = app.put(&format!("/Patient/{id}"), &p).await;
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_never_writes_into_the_files_of_the_new_owner() {
    // Every pause between pages outlasts the lease: after each page the other worker of the
    // process takes the job over, while the first one, only slow, wakes up and writes its next
    // page before its checkpoint tells it that it lost the job.
    let app = TestApp::spawn_with(|c| {
        c.export.page_size = 2;
        c.export.page_pause_ms = 1_500;
        c.export.lease_secs = 1;
        c.export.poll_interval_ms = 50;
    })
    .await;
    let ids = patients_with_ids(&app, "st", 10).await;
    let token = app.token(READ);
    let url = start(&app, "/$export?_type=Patient", &token).await;
    // The second claim has written the second page (st-02, st-03) while the first sleeps; the
    // first will read that page again when it wakes. Make its copy differ: st-02 grows.
    wait_for_progress(&app, &url, &token, 4).await;
    let mut changed = patient("遅延", "二郎という長い名前に変わった", "1980-01-01", "st-2");
    changed["id"] = json!("st-02");
    assert_eq!(app.put("/Patient/st-02", &changed).await.status(), 200);

    let manifest = finish(&app, &url, &token).await;
    // Every line parses and every patient is there once: no file was written by two workers.
    let files = ndjson(&app, &manifest, &token).await;
    let mut got: Vec<String> = files["Patient"].iter().map(id_of).collect();
    got.sort();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn a_requester_with_too_many_jobs_in_progress_is_told_to_retry_later() {
    let app = TestApp::spawn_with(|c| {
        c.export.page_size = 1;
        c.export.page_pause_ms = 5_000;
    })
    .await;
    dataset(&app, 3, 0).await;
    let token = app.token(READ);
    let mut urls = Vec::new();
    for _ in 0..5 {
        urls.push(start(&app, "/$export?_type=Patient", &token).await);
    }
    let resp = kick(&app, Method::GET, "/$export?_type=Patient", &token).send().await.unwrap();
    assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("30"));
    outcome(resp, 429, "throttled").await;
    // Another client of the tenant is not held back by this one's jobs.
    let mut claims = app.claims(&app.tenant, READ);
    claims.sub = "another-client".into();
    let other = app.sign_claims(&claims);
    let theirs = start(&app, "/$export?_type=Patient", &other).await;
    // Once one of its jobs is cancelled, the requester may start another.
    assert_eq!(app.client.delete(urls[0].as_str()).bearer_auth(&token).send().await.unwrap().status(), 202);
    urls[0] = start(&app, "/$export?_type=Patient", &token).await;
    for u in &urls {
        assert_eq!(app.client.delete(u.as_str()).bearer_auth(&token).send().await.unwrap().status(), 202);
    }
    assert_eq!(app.client.delete(theirs.as_str()).bearer_auth(&other).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn a_file_is_served_only_while_the_token_may_read_what_it_holds() {
    let app = TestApp::spawn().await;
    dataset(&app, 2, 1).await;
    let token = app.token(READ);
    // The same requester later holds a token for Patient only (its role changed, or it asked
    // for less): the Observation file and the patient Bundles, which hold Observations, are
    // no longer its to read.
    let patients_only = app.token("system/Patient.read");
    let manifest = export(&app, "/$export?_type=Patient,Observation", &token).await;
    for o in manifest["output"].as_array().unwrap() {
        let resp = app.client.get(o["url"].as_str().unwrap()).bearer_auth(&patients_only).send().await.unwrap();
        match o["type"].as_str().unwrap() {
            "Patient" => assert_eq!(resp.status(), 200),
            _ => {
                outcome(resp, 403, "forbidden").await;
            }
        }
    }
    let path = format!("/$export?_type=Patient,Observation&_outputFormat={}", enc("application/fhir+json"));
    let manifest = export(&app, &path, &token).await;
    let bundle = manifest["output"][0]["url"].as_str().unwrap();
    outcome(app.client.get(bundle).bearer_auth(&patients_only).send().await.unwrap(), 403, "forbidden").await;
    assert_eq!(app.client.get(bundle).bearer_auth(&token).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_checkpoint_of_a_bundle_export_does_not_grow_with_the_patients() {
    let app = TestApp::spawn().await;
    let (patients, _) = dataset(&app, 12, 1).await;
    let token = app.token(READ);
    let path = format!("/$export?_type=Patient,Observation&_outputFormat={}", enc("application/fhir+json"));
    let url = start(&app, &path, &token).await;
    let manifest = finish(&app, &url, &token).await;
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs.len(), patients.len(), "one Bundle per patient");
    let names: BTreeSet<&str> =
        outputs.iter().map(|o| o["url"].as_str().unwrap().rsplit('/').next().unwrap()).collect();
    assert_eq!(names.len(), patients.len(), "each listed once");
    // The finished files are stored beside the checkpoint, not in it: a checkpoint listing
    // them would be rewritten, one patient longer, after every patient.
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(app.database_url.as_str()).await.unwrap();
    let sql =
        format!("SELECT checkpoint FROM export_jobs WHERE tenant_id = '{}' AND id = '{}'", app.tenant, job_of(&url));
    let row = db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    let checkpoint: String = row.try_get("", "checkpoint").unwrap();
    assert!(!checkpoint.contains("Bundle-"), "{checkpoint}");
    assert!(checkpoint.len() < 512, "{checkpoint}");
}

#[tokio::test]
async fn status_and_file_urls_follow_the_public_url() {
    let app = TestApp::spawn_with(|c| c.public_url = Some("https://ehr.example-hospital.jp/".into())).await;
    dataset(&app, 1, 0).await;
    let token = app.token(READ);
    let public = "https://ehr.example-hospital.jp/fhir";
    let resp = kick(&app, Method::GET, "/$export?_type=Patient", &token).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{public}/$export-status/")), "{location}");
    // The client reaches the server at its own address here; the URLs it is given are public.
    let local = location.replace(public, &app.fhir(""));
    let manifest = finish(&app, &local, &token).await;
    assert_eq!(manifest["request"], format!("{public}/$export?_type=Patient"));
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert!(file.starts_with(&format!("{public}/$export-file/{}/", job_of(&local))), "{file}");
    let (_, body) = download(&app, &file.replace(public, &app.fhir("")), &token).await;
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 1);
}

// ── A job killed midway ─────────────────────────────────────────────────────────────────────

/// A real `ehr serve` process (target all) on a database and export root that outlive it.
struct Server {
    child: std::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, database_url: &str, redis_prefix: &str, port: u16, log: &str) -> Server {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ehr"));
    if ehr_testkit::backend() == "postgres" {
        // PostgreSQL needs Redis for the event bus (the in-process bus is SQLite's).
        let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        command.env("EHR_GATEWAY__REDIS_URL", url).env("EHR_GATEWAY__REDIS_PREFIX", redis_prefix);
    } else {
        command.env_remove("EHR_GATEWAY__REDIS_URL");
    }
    let child = command
        .arg("serve")
        .env("EHR_LISTEN", format!("127.0.0.1:{port}"))
        .env("EHR_DATA_DIR", dir)
        .env("EHR_DATABASE__URL", database_url)
        .env("EHR_EXPORT__ROOT", dir.join("exports"))
        .env("EHR_EXPORT__PAGE_SIZE", "5")
        .env("EHR_EXPORT__PAGE_PAUSE_MS", "150")
        .env("EHR_EXPORT__LEASE_SECS", "2")
        .env("EHR_EXPORT__POLL_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Server { child }
}

async fn until_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{base}/fhir/metadata")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "ehr serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dev_token(tenant: &str, scope: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ehr"))
        .args(["dev-token", "--tenant", tenant, "--scope", scope])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn an_export_killed_midway_resumes_from_its_checkpoint_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("ehr-bulk-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database_url = if ehr_testkit::backend() == "postgres" {
        ehr_testkit::fresh_postgres().await
    } else {
        format!("sqlite://{}?mode=rwc", dir.join("ehr.db").display())
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let tenant = "bulk-kill";
    let writer = dev_token(tenant, "user/*.cruds");
    let token = dev_token(tenant, READ);

    let redis_prefix = format!("ehr-test-{}", uuid::Uuid::new_v4().simple());
    let first = serve(&dir, &database_url, &redis_prefix, port, "first.log");
    until_ready(&client, &base).await;
    // 60 patients and 40 observations in one transaction: 20 pages of 5.
    let mut entries = Vec::new();
    for i in 0..60 {
        let mut p = patient("再開", &format!("{i}"), "1975-07-07", &format!("K-{i}"));
        p["id"] = json!(format!("kp-{i:02}"));
        entries.push(json!({"resource": p, "request": {"method": "PUT", "url": format!("Patient/kp-{i:02}")}}));
    }
    for i in 0..40 {
        let mut o = observation(&format!("kp-{:02}", i % 60), "3B035000002327201", f64::from(i), "2024-06-01");
        o["id"] = json!(format!("ko-{i:02}"));
        entries.push(json!({"resource": o, "request": {"method": "PUT", "url": format!("Observation/ko-{i:02}")}}));
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let resp = client
        .post(format!("{base}/fhir"))
        .bearer_auth(&writer)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let resp = client
        .get(format!("{base}/fhir/$export?_type=Patient,Observation"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let url = accepted(resp, "kick-off").await;
    // Kill the process (SIGKILL: no shutdown, no lease handed back) while it is in the middle of
    // the Patient file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let resp = client.get(url.as_str()).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 202, "finished before it could be killed");
        let progress = resp.headers().get("x-progress").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if progress.starts_with("Patient ") && written_of(&progress).is_some_and(|n| (15..=45).contains(&n)) {
            break written_of(&progress).unwrap();
        }
        assert!(Instant::now() < deadline, "no progress: {progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(first);

    // What a dying writer leaves after its last checkpoint: half a line.
    let job_dir = dir.join("exports").join(tenant).join(job_of(&url));
    let open = claim_file(&job_dir, "Patient-1.ndjson").expect("the open file");
    let before = std::fs::read_to_string(&open).unwrap();
    assert!(before.lines().count() as u64 >= at_kill, "the checkpointed lines are on disk");
    std::fs::write(&open, format!("{before}{{\"resourceType\":\"Patient\",\"id\":\"half-writ")).unwrap();

    let _second = serve(&dir, &database_url, &redis_prefix, port, "second.log");
    until_ready(&client, &base).await;
    // The job continues where it stopped: progress never goes back.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = at_kill;
    let manifest: Value = loop {
        let resp = client.get(url.as_str()).bearer_auth(&token).send().await.unwrap();
        match resp.status().as_u16() {
            202 => {
                let progress = resp.headers()["x-progress"].to_str().unwrap().to_owned();
                if let Some(n) = written_of(&progress) {
                    assert!(n >= last, "progress went back from {last} to {n}: restarted instead of resumed");
                    last = n;
                }
            }
            200 => break resp.json().await.unwrap(),
            s => panic!("status {s}: {}", resp.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the job did not complete after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in manifest["output"].as_array().unwrap() {
        let resp = client.get(o["url"].as_str().unwrap()).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("every line parses")).collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap());
        seen.entry(o["type"].as_str().unwrap().to_owned()).or_default().extend(lines.iter().map(id_of));
    }
    // Every resource exactly once.
    let expected_patients: Vec<String> = (0..60).map(|i| format!("kp-{i:02}")).collect();
    let expected_observations: Vec<String> = (0..40).map(|i| format!("ko-{i:02}")).collect();
    assert_eq!(seen["Patient"], expected_patients);
    assert_eq!(seen["Observation"], expected_observations);

    // A replica that cannot see the files of the checkpoint (export.root not shared) fails the
    // job rather than write a file with a hole: 500 with an OperationOutcome.
    let resp = client
        .get(format!("{base}/fhir/$export?_type=Patient"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let url = accepted(resp, "second kick-off").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client.get(url.as_str()).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 202, "finished before it could be killed");
        let progress = resp.headers()["x-progress"].to_str().unwrap().to_owned();
        if written_of(&progress).is_some_and(|n| (10..=45).contains(&n)) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(_second);
    std::fs::remove_dir_all(dir.join("exports").join(tenant).join(job_of(&url))).unwrap();
    let _third = serve(&dir, &database_url, &redis_prefix, port, "third.log");
    until_ready(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let resp = loop {
        let resp = client.get(url.as_str()).bearer_auth(&token).send().await.unwrap();
        if resp.status() != 202 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the job neither failed nor finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let oo = outcome(resp, 500, "exception").await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("missing"), "{oo}");
    drop(_third);
    let _ = std::fs::remove_dir_all(&dir);
}
