//! CapabilityStatement, FHIR interactions, search, error shapes and JP Core profile validity
//! (`CONF-CAP-*`, `CONF-FHIR-*`, `CONF-SEARCH-*`, `CONF-ERR-*`, `CONF-PROF-001`).

use crate::http::Resp;
use crate::{Kit, Outcome, Problem, ensure, fail, run_check, skip};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The identifier system of the kit's patients (a JP Core patient-id OID of a fictitious
/// institution).
pub(crate) const ID_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.11311234567";
pub(crate) const JP_PATIENT: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient";

/// What the FHIR checks created, for the checks that build on it.
#[derive(Debug, Default)]
pub(crate) struct Data {
    /// The patient of the interaction checks (ends at version 3).
    pub patient: Option<String>,
    /// The search fixtures: three patients (birth dates 1980, 1990, 2000) and an Observation
    /// each of the first two.
    pub search_patients: Vec<String>,
    pub observations: Vec<String>,
    /// `meta.lastUpdated` of the first resource the kit created (the `_since` of its export).
    pub since: Option<String>,
}

/// A synthetic JP Core patient.
pub(crate) fn patient(family: &str, given: &str, birth_date: &str, identifier: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "meta": {"profile": [JP_PATIENT]},
        "identifier": [{"system": ID_SYSTEM, "value": identifier}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth_date
    })
}

/// A synthetic body-height Observation of a patient.
pub(crate) fn observation(patient_id: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2026-01-05T10:00:00+09:00",
        "valueQuantity": {"value": 170.2, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}
    })
}

/// The JP Core profile a returned resource is validated against when it declares none.
pub(crate) fn default_profile(resource_type: &str) -> Option<&'static str> {
    Some(match resource_type {
        "Patient" => JP_PATIENT,
        "Observation" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Observation_Common",
        "Encounter" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter",
        "Condition" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Condition",
        "AllergyIntolerance" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_AllergyIntolerance",
        "Practitioner" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Practitioner",
        "Organization" => "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Organization",
        _ => return None,
    })
}

fn version_of(r: &Value) -> &str {
    r["meta"]["versionId"].as_str().unwrap_or_default()
}

/// The ids of the `match` entries of a searchset, in order.
pub(crate) fn match_ids(bundle: &Value) -> Vec<String> {
    entries(bundle, "match").iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect()
}

/// The resources of the entries of a search mode.
pub(crate) fn entries(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"].as_str().unwrap_or("match") == mode)
        .map(|e| e["resource"].clone())
        .collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str().map(str::to_owned))
}

/// A search that must answer 200 with a searchset; its matches are kept for the profile check.
async fn search_ok(kit: &mut Kit, path: &str, token: &str) -> Result<Value, Problem> {
    let resp = kit.http.get(path, token).await?;
    ensure!(resp.status == 200, "search {}: {}", path.split('?').next().unwrap_or_default(), resp.describe());
    let bundle = resp.json();
    ensure!(
        bundle["resourceType"] == "Bundle" && bundle["type"] == "searchset",
        "the answer is not a searchset Bundle"
    );
    kit.returned.extend(entries(&bundle, "match"));
    Ok(bundle)
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

// ---------------------------------------------------------------- CapabilityStatement

pub(crate) async fn capability(kit: &mut Kit) {
    let mut statement = Value::Null;
    run_check!(kit, "CONF-CAP-001", metadata(kit, &mut statement));
    run_check!(kit, "CONF-CAP-002", declares_what_the_kit_uses(&statement));
    run_check!(kit, "CONF-CAP-003", declared_types_answer(kit, &statement));
}

async fn metadata(kit: &mut Kit, out: &mut Value) -> Outcome {
    let resp = kit.http.send(kit.http.fhir(Method::GET, "/metadata", None)).await?;
    ensure!(resp.status == 200, "GET /metadata: {}", resp.describe());
    ensure!(
        resp.header("content-type").is_some_and(|c| c.contains("json")),
        "GET /metadata with Accept: application/fhir+json answered {:?}",
        resp.header("content-type")
    );
    let cs = resp.json();
    ensure!(cs["resourceType"] == "CapabilityStatement", "not a CapabilityStatement");
    ensure!(
        cs["fhirVersion"].as_str().is_some_and(|v| v.starts_with("4.0")),
        "fhirVersion is {}, not R4 (4.0.x)",
        cs["fhirVersion"]
    );
    ensure!(
        cs["format"].as_array().is_some_and(|f| f.iter().any(|x| x.as_str().is_some_and(|s| s.contains("json")))),
        "format does not list JSON"
    );
    ensure!(
        cs["rest"].as_array().is_some_and(|r| r.iter().any(|x| x["mode"] == "server")),
        "no rest entry of mode server"
    );
    *out = cs;
    Ok(())
}

fn resource_entry<'a>(cs: &'a Value, ty: &str) -> Option<&'a Value> {
    cs["rest"]
        .as_array()?
        .iter()
        .filter(|r| r["mode"] == "server")
        .find_map(|r| r["resource"].as_array()?.iter().find(|x| x["type"] == ty))
}

async fn declares_what_the_kit_uses(cs: &Value) -> Outcome {
    if cs.is_null() {
        return Err(skip("depends on CONF-CAP-001, which did not pass"));
    }
    let needs: [(&str, &[&str], &[&str]); 2] = [
        (
            "Patient",
            &["read", "vread", "update", "patch", "delete", "history-instance", "create", "search-type"],
            &["family", "identifier", "birthdate", "_id"],
        ),
        ("Observation", &["read", "create", "search-type"], &["subject"]),
    ];
    let mut missing = Vec::new();
    for (ty, interactions, params) in needs {
        let Some(entry) = resource_entry(cs, ty) else {
            missing.push(format!("{ty} is not listed"));
            continue;
        };
        for i in interactions {
            let listed = entry["interaction"].as_array().is_some_and(|a| a.iter().any(|x| x["code"] == *i));
            if !listed {
                missing.push(format!("{ty} interaction {i}"));
            }
        }
        for p in params {
            // `_id` is a common parameter: servers may state it on the type or not at all.
            let listed = entry["searchParam"].as_array().is_some_and(|a| a.iter().any(|x| x["name"] == *p));
            if !listed && *p != "_id" {
                missing.push(format!("{ty} search parameter {p}"));
            }
        }
    }
    if let Some(p) = resource_entry(cs, "Patient")
        && p["conditionalCreate"] != true
    {
        missing.push("Patient conditionalCreate".into());
    }
    if let Some(o) = resource_entry(cs, "Observation")
        && !o["searchInclude"].as_array().is_some_and(|a| a.iter().any(|x| x == "Observation:subject"))
    {
        missing.push("Observation searchInclude Observation:subject".into());
    }
    ensure!(missing.is_empty(), "not declared: {}", missing.join(", "));
    Ok(())
}

async fn declared_types_answer(kit: &mut Kit, cs: &Value) -> Outcome {
    if cs.is_null() {
        return Err(skip("depends on CONF-CAP-001, which did not pass"));
    }
    let token = kit.token()?;
    let mut types = Vec::new();
    for rest in cs["rest"].as_array().into_iter().flatten().filter(|r| r["mode"] == "server") {
        for r in rest["resource"].as_array().into_iter().flatten() {
            let searchable = r["interaction"].as_array().is_some_and(|a| a.iter().any(|x| x["code"] == "search-type"));
            if let (true, Some(ty)) = (searchable, r["type"].as_str()) {
                types.push(ty.to_owned());
            }
        }
    }
    ensure!(!types.is_empty(), "no type is declared searchable");
    let mut wrong = Vec::new();
    for ty in &types {
        let resp = kit.http.get(&format!("/{ty}?_summary=count"), &token).await?;
        if !matches!(resp.status, 200 | 401 | 403) {
            wrong.push(format!("{ty}: {}", resp.status));
        }
    }
    ensure!(wrong.is_empty(), "declared searchable but the search answered: {}", wrong.join(", "));
    Ok(())
}

// ---------------------------------------------------------------- interactions

pub(crate) async fn interactions(kit: &mut Kit) {
    run_check!(kit, "CONF-FHIR-001", create(kit));
    run_check!(kit, "CONF-FHIR-002", read(kit));
    run_check!(kit, "CONF-FHIR-003", update(kit));
    run_check!(kit, "CONF-FHIR-004", stale_update(kit));
    run_check!(kit, "CONF-FHIR-005", patch(kit));
    run_check!(kit, "CONF-FHIR-006", vread_and_history(kit));
    run_check!(kit, "CONF-FHIR-007", conditional_create(kit));
    run_check!(kit, "CONF-FHIR-008", delete(kit));
}

fn needs_patient(kit: &Kit) -> Result<(String, String), Problem> {
    let token = kit.token()?;
    let id = kit.data.patient.clone().ok_or_else(|| skip("depends on CONF-FHIR-001, which did not pass"))?;
    Ok((token, id))
}

async fn create(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let body = patient(&format!("Conf{}", kit.tag), "Ichiro", "1970-01-01", &format!("conf-{}-1", kit.tag));
    let resp =
        kit.http.send_json(Method::POST, "/Patient", &token, &body, &[("prefer", "return=representation")]).await?;
    ensure!(resp.status == 201, "create: {}", resp.describe());
    let stored = resp.json();
    let id = stored["id"].as_str().ok_or_else(|| fail("the created resource has no id"))?.to_owned();
    let location = resp.header("location").unwrap_or_default();
    ensure!(
        location.contains(&format!("Patient/{id}/_history/1")),
        "Location {location:?} does not name Patient/{id}/_history/1"
    );
    ensure!(version_of(&stored) == "1", "meta.versionId is {:?}, not 1", stored["meta"]["versionId"]);
    ensure!(resp.header("etag").is_some_and(|e| e.contains("\"1\"")), "ETag is {:?}", resp.header("etag"));
    kit.data.since = stored["meta"]["lastUpdated"].as_str().map(str::to_owned);
    kit.data.patient = Some(id);
    kit.returned.push(stored);
    Ok(())
}

async fn read(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let resp = kit.http.get(&format!("/Patient/{id}"), &token).await?;
    ensure!(resp.status == 200, "read: {}", resp.describe());
    let body = resp.json();
    ensure!(body["id"] == id.as_str(), "read returned id {}", body["id"]);
    ensure!(
        body["name"][0]["family"] == format!("Conf{}", kit.tag).as_str() && body["birthDate"] == "1970-01-01",
        "read did not return the stored content"
    );
    ensure!(resp.header("etag").is_some_and(|e| e.contains("\"1\"")), "ETag is {:?}", resp.header("etag"));
    kit.returned.push(body);
    Ok(())
}

async fn update(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let mut body = patient(&format!("Conf{}", kit.tag), "Ichiro", "1970-01-01", &format!("conf-{}-1", kit.tag));
    body["id"] = json!(id);
    body["gender"] = json!("male");
    let resp = kit
        .http
        .send_json(
            Method::PUT,
            &format!("/Patient/{id}"),
            &token,
            &body,
            &[("if-match", "W/\"1\""), ("prefer", "return=representation")],
        )
        .await?;
    ensure!(resp.status == 200, "update: {}", resp.describe());
    let stored = resp.json();
    ensure!(version_of(&stored) == "2", "meta.versionId after the update is {:?}", stored["meta"]["versionId"]);
    ensure!(stored["gender"] == "male", "the update did not change gender");
    Ok(())
}

async fn stale_update(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let mut body = patient(&format!("Conf{}", kit.tag), "Ichiro", "1970-01-01", &format!("conf-{}-1", kit.tag));
    body["id"] = json!(id);
    body["gender"] = json!("unknown");
    let resp =
        kit.http.send_json(Method::PUT, &format!("/Patient/{id}"), &token, &body, &[("if-match", "W/\"1\"")]).await?;
    ensure!(resp.status == 412, "an update with a stale If-Match answered {}", resp.status);
    let now = kit.http.get(&format!("/Patient/{id}"), &token).await?.json();
    ensure!(now["gender"] != "unknown", "the refused update was written");
    Ok(())
}

async fn patch(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let ops = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
    let req = kit
        .http
        .fhir(Method::PATCH, &format!("/Patient/{id}"), Some(&token))
        .header("content-type", "application/json-patch+json")
        .header("prefer", "return=representation")
        .body(ops.to_string());
    let resp = kit.http.send(req).await?;
    ensure!(resp.status == 200, "patch: {}", resp.describe());
    let stored = resp.json();
    ensure!(stored["gender"] == "other", "the patch was not applied");
    ensure!(version_of(&stored) == "3", "meta.versionId after the patch is {:?}, not 3", stored["meta"]["versionId"]);
    Ok(())
}

async fn vread_and_history(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let resp = kit.http.get(&format!("/Patient/{id}/_history/1"), &token).await?;
    ensure!(resp.status == 200, "vread of version 1: {}", resp.describe());
    let v1 = resp.json();
    ensure!(v1["gender"] == "female" && version_of(&v1) == "1", "vread of version 1 is not the first version");
    kit.returned.push(v1);
    let resp = kit.http.get(&format!("/Patient/{id}/_history"), &token).await?;
    ensure!(resp.status == 200, "history: {}", resp.describe());
    let bundle = resp.json();
    ensure!(bundle["type"] == "history", "history Bundle type is {}", bundle["type"]);
    let versions: BTreeSet<&str> =
        bundle["entry"].as_array().into_iter().flatten().map(|e| version_of(&e["resource"])).collect();
    ensure!(
        ["1", "2", "3"].iter().all(|v| versions.contains(v)),
        "history lists versions {versions:?}, not 1, 2 and 3"
    );
    Ok(())
}

async fn conditional_create(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let existing = format!("identifier={ID_SYSTEM}|conf-{}-1", kit.tag);
    let body = patient(&format!("Conf{}", kit.tag), "Jiro", "1971-02-02", &format!("conf-{}-1", kit.tag));
    let resp = kit.http.send_json(Method::POST, "/Patient", &token, &body, &[("if-none-exist", &existing)]).await?;
    ensure!(resp.status == 200, "a conditional create matching one resource answered {}", resp.status);
    let named = resp.json()["id"].as_str().map(str::to_owned).or_else(|| {
        resp.header("location")
            .and_then(|l| l.split("/Patient/").nth(1))
            .map(|r| r.split('/').next().unwrap_or_default().to_owned())
    });
    ensure!(named.as_deref() == Some(id.as_str()), "the conditional create did not answer the existing Patient/{id}");
    let fresh = format!("identifier={ID_SYSTEM}|conf-{}-2", kit.tag);
    let body = patient(&format!("Conf{}", kit.tag), "Jiro", "1971-02-02", &format!("conf-{}-2", kit.tag));
    let resp = kit.http.send_json(Method::POST, "/Patient", &token, &body, &[("if-none-exist", &fresh)]).await?;
    ensure!(resp.status == 201, "a conditional create matching nothing answered {}", resp.status);
    let new_id = resp.json()["id"].as_str().map(str::to_owned);
    ensure!(new_id.as_deref().is_some_and(|n| n != id), "the conditional create did not create a new resource");
    Ok(())
}

async fn delete(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let body = patient(&format!("Conf{}", kit.tag), "Saburo", "1972-03-03", &format!("conf-{}-del", kit.tag));
    let resp = kit.http.send_json(Method::POST, "/Patient", &token, &body, &[]).await?;
    ensure!(resp.status == 201, "creating the patient to delete: {}", resp.describe());
    let id = resp.json()["id"].as_str().map(str::to_owned).ok_or_else(|| fail("created without an id"))?;
    let resp = kit.http.send(kit.http.fhir(Method::DELETE, &format!("/Patient/{id}"), Some(&token))).await?;
    if resp.status == 403 {
        return Err(skip(
            "the token may not delete (no job type of the access matrix may): give --token-env with a delete scope",
        ));
    }
    ensure!(matches!(resp.status, 200 | 202 | 204), "delete: {}", resp.describe());
    let resp = kit.http.get(&format!("/Patient/{id}"), &token).await?;
    ensure!(matches!(resp.status, 404 | 410), "read after delete answered {}", resp.status);
    let resp = kit.http.get(&format!("/Patient/{id}/_history"), &token).await?;
    ensure!(resp.status == 200, "history after delete: {}", resp.describe());
    let n = resp.json()["entry"].as_array().map_or(0, Vec::len);
    ensure!(n >= 2, "history after delete has {n} entries, not the version and the deletion");
    Ok(())
}

// ---------------------------------------------------------------- search

const SEARCH_IDS: [&str; 8] = [
    "CONF-SEARCH-001",
    "CONF-SEARCH-002",
    "CONF-SEARCH-003",
    "CONF-SEARCH-004",
    "CONF-SEARCH-005",
    "CONF-SEARCH-006",
    "CONF-SEARCH-007",
    "CONF-SEARCH-008",
];

async fn fixtures(kit: &mut Kit) -> Result<(), Problem> {
    let token = kit.token()?;
    let family = format!("Srch{}", kit.tag);
    for (i, birth) in ["1980-01-01", "1990-06-15", "2000-12-31"].iter().enumerate() {
        let body = patient(&family, "Hanako", birth, &format!("conf-{}-s{}", kit.tag, i + 1));
        let resp = kit.http.send_json(Method::POST, "/Patient", &token, &body, &[]).await?;
        ensure!(resp.status == 201, "creating search patient {}: {}", i + 1, resp.describe());
        let id = resp.json()["id"].as_str().map(str::to_owned).ok_or_else(|| fail("created without an id"))?;
        kit.data.search_patients.push(id);
    }
    for i in 0..2 {
        let body = observation(&kit.data.search_patients[i]);
        let resp = kit.http.send_json(Method::POST, "/Observation", &token, &body, &[]).await?;
        ensure!(resp.status == 201, "creating an Observation: {}", resp.describe());
        let id = resp.json()["id"].as_str().map(str::to_owned).ok_or_else(|| fail("created without an id"))?;
        kit.data.observations.push(id);
    }
    Ok(())
}

pub(crate) async fn search(kit: &mut Kit) {
    let started = std::time::Instant::now();
    if let Err(problem) = fixtures(kit).await {
        let why = match problem {
            Problem::Fail(w) => format!("the search fixtures could not be created: {w}"),
            Problem::Skip(w) => w,
        };
        for id in SEARCH_IDS {
            kit.record(id, started, Err(skip(why.clone())));
        }
        return;
    }
    run_check!(kit, "CONF-SEARCH-001", string_param(kit));
    run_check!(kit, "CONF-SEARCH-002", token_param(kit));
    run_check!(kit, "CONF-SEARCH-003", date_param(kit));
    run_check!(kit, "CONF-SEARCH-004", reference_param(kit));
    run_check!(kit, "CONF-SEARCH-005", paging(kit));
    run_check!(kit, "CONF-SEARCH-006", include(kit));
    run_check!(kit, "CONF-SEARCH-007", summary_count(kit));
    run_check!(kit, "CONF-SEARCH-008", unknown_params(kit));
}

async fn string_param(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let all = set(&kit.data.search_patients);
    let found = match_ids(&search_ok(kit, &format!("/Patient?family=Srch{}&_count=50", kit.tag), &token).await?);
    ensure!(
        set(&found) == all,
        "family (exact) found {} of the 3 patients and {} in all",
        found.iter().filter(|f| all.contains(*f)).count(),
        found.len()
    );
    let prefix = format!("Srch{}", &kit.tag[..7]);
    let found = match_ids(&search_ok(kit, &format!("/Patient?family={prefix}&_count=50"), &token).await?);
    ensure!(all.is_subset(&set(&found)), "family (prefix) did not find the 3 patients");
    Ok(())
}

async fn token_param(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let want = vec![kit.data.search_patients[1].clone()];
    let found =
        match_ids(&search_ok(kit, &format!("/Patient?identifier={ID_SYSTEM}%7Cconf-{}-s2", kit.tag), &token).await?);
    ensure!(found == want, "identifier=system|value found {} resources, not the one patient", found.len());
    let found = match_ids(&search_ok(kit, &format!("/Patient?identifier=conf-{}-s2", kit.tag), &token).await?);
    ensure!(found == want, "identifier=value (any system) found {} resources, not the one patient", found.len());
    Ok(())
}

async fn date_param(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let p = kit.data.search_patients.clone();
    let base = format!("/Patient?family=Srch{}", kit.tag);
    let cases: [(&str, Vec<String>); 3] = [
        ("birthdate=ge1985-01-01", vec![p[1].clone(), p[2].clone()]),
        ("birthdate=lt1990-06-15", vec![p[0].clone()]),
        ("birthdate=1990-06", vec![p[1].clone()]),
    ];
    for (q, want) in cases {
        let found = match_ids(&search_ok(kit, &format!("{base}&{q}"), &token).await?);
        ensure!(set(&found) == set(&want), "{q} found {} patients, expected {}", found.len(), want.len());
    }
    Ok(())
}

async fn reference_param(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let found = match_ids(
        &search_ok(kit, &format!("/Observation?subject=Patient/{}", kit.data.search_patients[0]), &token).await?,
    );
    ensure!(
        found == vec![kit.data.observations[0].clone()],
        "subject=Patient/[id] found {} Observations, not the one",
        found.len()
    );
    let found =
        match_ids(&search_ok(kit, &format!("/Observation?subject={}", kit.data.search_patients[1]), &token).await?);
    ensure!(
        found == vec![kit.data.observations[1].clone()],
        "subject=[id] found {} Observations, not the one",
        found.len()
    );
    Ok(())
}

async fn paging(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let first = search_ok(kit, &format!("/Patient?family=Srch{}&_count=2", kit.tag), &token).await?;
    let mut seen = match_ids(&first);
    ensure!(seen.len() == 2, "_count=2 returned {} matches", seen.len());
    if let Some(total) = first["total"].as_u64() {
        ensure!(total == 3, "total is {total}, not 3");
    }
    let mut next = next_link(&first).ok_or_else(|| fail("no next link on the first page of 3 matches"))?;
    let mut pages = 1;
    loop {
        pages += 1;
        ensure!(pages <= 5, "the next links do not end");
        let page = search_ok(kit, &next, &token).await?;
        seen.extend(match_ids(&page));
        match next_link(&page) {
            Some(n) => next = n,
            None => break,
        }
    }
    ensure!(
        seen.len() == 3 && set(&seen) == set(&kit.data.search_patients),
        "the pages held {seen:?}, not each match once"
    );
    Ok(())
}

async fn include(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let patient = kit.data.search_patients[0].clone();
    let bundle =
        search_ok(kit, &format!("/Observation?subject=Patient/{patient}&_include=Observation:subject"), &token).await?;
    ensure!(match_ids(&bundle) == vec![kit.data.observations[0].clone()], "the matches are not the one Observation");
    let included = entries(&bundle, "include");
    ensure!(
        included.len() == 1 && included[0]["resourceType"] == "Patient" && included[0]["id"] == patient.as_str(),
        "the include entries are not the subject Patient ({} entries)",
        included.len()
    );
    kit.returned.extend(included);
    Ok(())
}

async fn summary_count(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let bundle = search_ok(kit, &format!("/Patient?family=Srch{}&_summary=count", kit.tag), &token).await?;
    ensure!(bundle["total"] == 3, "total is {}, not 3", bundle["total"]);
    ensure!(match_ids(&bundle).is_empty(), "_summary=count returned match entries");
    Ok(())
}

async fn unknown_params(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let path = format!("/Patient?family=Srch{}&conformance-no-such-param=1", kit.tag);
    let found = match_ids(&search_ok(kit, &path, &token).await?);
    ensure!(
        set(&found) == set(&kit.data.search_patients),
        "with an unknown parameter the search did not find the 3 patients"
    );
    let resp =
        kit.http.send(kit.http.fhir(Method::GET, &path, Some(&token)).header("prefer", "handling=strict")).await?;
    ensure!(resp.status == 400, "Prefer: handling=strict with an unknown parameter answered {}", resp.status);
    Ok(())
}

// ---------------------------------------------------------------- errors

/// The FHIR R4 issue-type codes.
const ISSUE_TYPES: &[&str] = &[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
];

/// An error answer of `status` that is an OperationOutcome with valid issues.
fn outcome_shape(resp: &Resp, status: u16) -> Outcome {
    ensure!(resp.status == status, "expected {status}, got {}", resp.describe());
    ensure!(
        resp.header("content-type").is_some_and(|c| c.contains("json")),
        "content type {:?}, not FHIR JSON",
        resp.header("content-type")
    );
    let oo = resp.json();
    ensure!(
        oo["resourceType"] == "OperationOutcome",
        "the {status} body is not an OperationOutcome: {}",
        resp.snippet()
    );
    let issues =
        oo["issue"].as_array().filter(|a| !a.is_empty()).ok_or_else(|| fail("an OperationOutcome without issues"))?;
    for issue in issues {
        ensure!(
            matches!(issue["severity"].as_str(), Some("fatal" | "error" | "warning" | "information")),
            "issue.severity {} is not a FHIR severity",
            issue["severity"]
        );
        ensure!(
            issue["code"].as_str().is_some_and(|c| ISSUE_TYPES.contains(&c)),
            "issue.code {} is not a FHIR issue type",
            issue["code"]
        );
    }
    ensure!(
        issues.iter().any(|i| matches!(i["severity"].as_str(), Some("fatal" | "error"))),
        "no issue of severity error or fatal"
    );
    Ok(())
}

pub(crate) async fn errors(kit: &mut Kit) {
    run_check!(kit, "CONF-ERR-001", err_not_found(kit));
    run_check!(kit, "CONF-ERR-002", err_malformed(kit));
    run_check!(kit, "CONF-ERR-003", err_no_token(kit));
    run_check!(kit, "CONF-ERR-004", err_method(kit));
    run_check!(kit, "CONF-ERR-005", err_stale(kit));
    run_check!(kit, "CONF-ERR-006", err_strict(kit));
}

async fn err_not_found(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let resp = kit.http.get(&format!("/Patient/conf-{}-missing", kit.tag), &token).await?;
    outcome_shape(&resp, 404)
}

async fn err_malformed(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let req = kit
        .http
        .fhir(Method::POST, "/Patient", Some(&token))
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\": \"Patient\", \"name\": [");
    outcome_shape(&kit.http.send(req).await?, 400)
}

async fn err_no_token(kit: &mut Kit) -> Outcome {
    let resp = kit.http.send(kit.http.fhir(Method::GET, "/Patient", None)).await?;
    outcome_shape(&resp, 401)
}

async fn err_method(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let resp = kit.http.send(kit.http.fhir(Method::DELETE, "/metadata", Some(&token))).await?;
    outcome_shape(&resp, 405)
}

async fn err_stale(kit: &mut Kit) -> Outcome {
    let (token, id) = needs_patient(kit)?;
    let mut body = patient(&format!("Conf{}", kit.tag), "Ichiro", "1970-01-01", &format!("conf-{}-1", kit.tag));
    body["id"] = json!(id);
    let resp =
        kit.http.send_json(Method::PUT, &format!("/Patient/{id}"), &token, &body, &[("if-match", "W/\"1\"")]).await?;
    outcome_shape(&resp, 412)
}

async fn err_strict(kit: &mut Kit) -> Outcome {
    let token = kit.token()?;
    let req = kit
        .http
        .fhir(Method::GET, "/Patient?conformance-no-such-param=1", Some(&token))
        .header("prefer", "handling=strict");
    outcome_shape(&kit.http.send(req).await?, 400)
}

// ---------------------------------------------------------------- profiles

pub(crate) async fn profiles(kit: &Kit, validator: &ehr_validation::FullValidator) -> Outcome {
    if kit.returned.is_empty() {
        return Err(skip("the server returned no resource to validate"));
    }
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for r in &kit.returned {
        let ty = r["resourceType"].as_str().unwrap_or_default();
        let key = format!("{ty}/{}/{}", r["id"].as_str().unwrap_or_default(), version_of(r));
        if !seen.insert(key.clone()) {
            continue;
        }
        let declared = r["meta"]["profile"].as_array().is_some_and(|p| !p.is_empty());
        let profile = if declared { None } else { default_profile(ty) };
        let issues = validator.validate(r, profile);
        for i in issues.iter().filter(|i| matches!(i.severity, ehr_core::Severity::Error | ehr_core::Severity::Fatal)) {
            problems.push(format!("{key}: {} at {}", i.diagnostics, i.expression.join(", ")));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} error(s): {}",
        problems.len(),
        problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kits_own_data_is_valid_jp_core() {
        let v = ehr_validation::FullValidator::builtin().unwrap();
        let p = patient("Conftest", "Ichiro", "1970-01-01", "conf-x-1");
        let issues = v.validate(&p, None);
        assert!(!ehr_validation::has_errors(&issues), "{issues:?}");
        // What CONF-PROF-001 must catch: a declared JP_Patient without its identifier.
        let mut broken = p.clone();
        broken.as_object_mut().unwrap().remove("identifier");
        assert!(ehr_validation::has_errors(&v.validate(&broken, None)));
        let o = observation("p1");
        let issues = v.validate(&o, default_profile("Observation"));
        assert!(!ehr_validation::has_errors(&issues), "{issues:?}");
    }
}
