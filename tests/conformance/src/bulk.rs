//! Export and import formats (`CONF-BULK-*`): Bulk Data `$export` kick-off → poll → manifest →
//! NDJSON, and `$import` of NDJSON (the kit's own records and the exported lines of its
//! patients, which must come back unchanged).

use crate::{Kit, Outcome, Problem, ensure, fail, run_check, skip};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const TYPES: [&str; 2] = ["Patient", "Observation"];
/// How long the kit waits for an export to complete.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Export {
    status_url: Option<String>,
    manifest: Option<Value>,
    /// Exported NDJSON lines of the kit's search patients.
    patient_lines: Vec<String>,
}

pub(crate) async fn export_and_import(kit: &mut Kit) {
    let mut export = Export::default();
    run_check!(kit, "CONF-BULK-001", kick_off_and_poll(kit, &mut export));
    run_check!(kit, "CONF-BULK-002", manifest(&export));
    run_check!(kit, "CONF-BULK-003", files(kit, &mut export));
    if let (Some(url), Some(token)) = (&export.status_url, &kit.token) {
        // Clean-up: the server may remove the files (202); the answer is not a check.
        let _ = kit.http.send(kit.http.fhir(Method::DELETE, url, Some(token))).await;
    }
    run_check!(kit, "CONF-BULK-004", import(kit, &export));
}

async fn kick_off_and_poll(kit: &mut Kit, export: &mut Export) -> Outcome {
    let token = kit.token()?;
    let since = kit
        .data
        .since
        .clone()
        .ok_or_else(|| skip("depends on CONF-FHIR-001 (the _since of the export), which did not pass"))?;
    let req = kit
        .http
        .fhir(Method::GET, "/Patient/$export", Some(&token))
        .header("prefer", "respond-async")
        .query(&[("_type", TYPES.join(",")), ("_since", since)]);
    let resp = kit.http.send(req).await?;
    ensure!(resp.status == 202, "kick-off: {}", resp.describe());
    let status_url =
        resp.header("content-location").map(str::to_owned).ok_or_else(|| fail("kick-off without Content-Location"))?;
    export.status_url = Some(status_url.clone());
    let started = std::time::Instant::now();
    loop {
        let resp = kit.http.get(&status_url, &token).await?;
        match resp.status {
            202 => {
                ensure!(
                    started.elapsed() < EXPORT_TIMEOUT,
                    "the export did not complete in {} s",
                    EXPORT_TIMEOUT.as_secs()
                );
                let wait = resp.header("retry-after").and_then(|r| r.parse::<u64>().ok()).unwrap_or(1).clamp(0, 2);
                tokio::time::sleep(Duration::from_millis(200 + wait * 100)).await;
            }
            200 => {
                export.manifest = Some(resp.json());
                return Ok(());
            }
            _ => return Err(fail(format!("status request: {}", resp.describe()))),
        }
    }
}

async fn manifest(export: &Export) -> Outcome {
    let m = export.manifest.as_ref().ok_or_else(|| skip("depends on CONF-BULK-001, which did not pass"))?;
    ensure!(m["transactionTime"].is_string(), "no transactionTime");
    ensure!(m["request"].as_str().is_some_and(|r| r.contains("$export")), "request does not name the kick-off");
    ensure!(m["requiresAccessToken"].is_boolean(), "requiresAccessToken missing");
    let outputs = m["output"].as_array().ok_or_else(|| fail("no output array"))?;
    for o in outputs {
        let ty = o["type"].as_str().unwrap_or_default();
        ensure!(TYPES.contains(&ty), "an output of type {ty:?}, which was not requested");
        ensure!(o["url"].as_str().is_some_and(|u| u.starts_with("http")), "an output without an absolute url");
    }
    for ty in TYPES {
        ensure!(outputs.iter().any(|o| o["type"] == ty), "no {ty} output, though the kit created {ty} resources");
    }
    ensure!(m["error"].is_array() || m["error"].is_null(), "error is not an array");
    Ok(())
}

async fn files(kit: &mut Kit, export: &mut Export) -> Outcome {
    let m = export.manifest.clone().ok_or_else(|| skip("depends on CONF-BULK-001, which did not pass"))?;
    let token = kit.token()?;
    let mut ids: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for o in m["output"].as_array().into_iter().flatten() {
        let (Some(ty), Some(url)) = (o["type"].as_str(), o["url"].as_str()) else {
            return Err(fail("an output without type or url"));
        };
        let req = kit.http.fhir(Method::GET, url, Some(&token)).header("accept", "application/fhir+ndjson");
        let resp = kit.http.send(req).await?;
        ensure!(resp.status == 200, "download of a {ty} file: {}", resp.describe());
        let text = String::from_utf8(resp.body).map_err(|_| fail(format!("a {ty} file is not UTF-8")))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: Value =
                serde_json::from_str(line).map_err(|e| fail(format!("{ty} file line {}: not JSON: {e}", n + 1)))?;
            ensure!(r["resourceType"] == ty, "{ty} file line {}: a {} resource", n + 1, r["resourceType"]);
            let id = r["id"].as_str().ok_or_else(|| fail(format!("{ty} file line {}: no id", n + 1)))?.to_owned();
            if ty == "Patient" && kit.data.search_patients.contains(&id) {
                export.patient_lines.push(line.to_owned());
            }
            ids.entry(ty.to_owned()).or_default().insert(id);
        }
    }
    let has = |ty: &str, want: &[String]| ids.get(ty).is_some_and(|s| want.iter().all(|w| s.contains(w)));
    ensure!(has("Patient", &kit.data.search_patients), "the kit's patients are not all in the export");
    ensure!(has("Observation", &kit.data.observations), "the kit's Observations are not all in the export");
    Ok(())
}

async fn import(kit: &mut Kit, export: &Export) -> Outcome {
    let token = kit.token()?;
    let ids = [format!("conf-{}-imp1", kit.tag), format!("conf-{}-imp2", kit.tag)];
    let mut lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut p = crate::fhir::patient(&format!("Imp{}", kit.tag), "Shiro", "1985-05-05", id);
            p["id"] = json!(id);
            p["identifier"][0]["value"] = json!(format!("conf-{}-imp{}", kit.tag, i + 1));
            p.to_string()
        })
        .collect();
    // The exported lines of the kit's patients: importing them back changes nothing.
    lines.extend(export.patient_lines.iter().cloned());
    let body = lines.join("\n") + "\n";
    let post = |body: String| {
        kit.http
            .fhir(Method::POST, "/$import", Some(&token))
            .header("content-type", "application/fhir+ndjson")
            .query(&[("_type", "Patient")])
            .body(body)
    };
    let resp = kit.http.send(post(body.clone())).await?;
    ensure!(matches!(resp.status, 200 | 201), "import: {}", resp.describe());
    let mut versions = Vec::new();
    for id in &ids {
        let resp = kit.http.get(&format!("/Patient/{id}"), &token).await?;
        ensure!(resp.status == 200, "an imported Patient is not readable under its id: {}", resp.describe());
        let r = resp.json();
        ensure!(r["name"][0]["family"] == format!("Imp{}", kit.tag).as_str(), "an imported Patient lost its content");
        versions.push(r["meta"]["versionId"].clone());
        kit.returned.push(r);
    }
    let exported_versions = read_versions(kit, &token).await?;
    // The same body again: nothing changes.
    let resp = kit.http.send(post(body)).await?;
    ensure!(matches!(resp.status, 200 | 201), "second import: {}", resp.describe());
    for (id, before) in ids.iter().zip(&versions) {
        let r = kit.http.get(&format!("/Patient/{id}"), &token).await?.json();
        ensure!(r["meta"]["versionId"] == *before, "a second import of the same records made a new version");
    }
    ensure!(
        read_versions(kit, &token).await? == exported_versions,
        "importing exported records back made new versions"
    );
    if !export.patient_lines.is_empty() {
        ensure!(
            exported_versions.iter().all(|v| v == "1"),
            "importing the exported lines of unchanged patients made new versions: {exported_versions:?}"
        );
    }
    Ok(())
}

/// The current versions of the kit's search patients.
async fn read_versions(kit: &Kit, token: &str) -> Result<Vec<String>, Problem> {
    let mut out = Vec::new();
    for id in &kit.data.search_patients {
        let r = kit.http.get(&format!("/Patient/{id}"), token).await?.json();
        out.push(r["meta"]["versionId"].as_str().unwrap_or_default().to_owned());
    }
    Ok(out)
}
