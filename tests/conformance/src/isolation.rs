//! Audit on access (`CONF-AUDIT-*`) and tenant isolation (`CONF-TEN-*`).

use crate::fhir::{ID_SYSTEM, entries, match_ids};
use crate::{Kit, Outcome, Problem, ensure, fail, run_check, skip};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

pub(crate) async fn audit(kit: &mut Kit) {
    let auditor = match kit.opts.auditor.clone() {
        Some(who) => crate::auth::token_of(kit, &who).await.map_err(|p| match p {
            Problem::Fail(w) => fail(format!("the auditor could not log in: {w}")),
            p => p,
        }),
        None => Err(skip("no auditor: give --auditor or --auditor-token-env")),
    };
    run_check!(kit, "CONF-AUDIT-001", read_is_audited(kit, &auditor));
    run_check!(kit, "CONF-AUDIT-002", trail_is_read_only(kit, &auditor));
}

fn clone_result(r: &Result<String, Problem>) -> Result<String, Problem> {
    match r {
        Ok(t) => Ok(t.clone()),
        Err(Problem::Fail(w)) => Err(fail(w.clone())),
        Err(Problem::Skip(w)) => Err(skip(w.clone())),
    }
}

/// Whether an AuditEvent names `reference` (`Patient/1`) as entity or patient agent.
fn names(event: &Value, reference: &str) -> bool {
    let ends = |v: &Value| v.as_str().is_some_and(|r| r == reference || r.ends_with(&format!("/{reference}")));
    event["entity"].as_array().into_iter().flatten().any(|e| ends(&e["what"]["reference"]))
        || event["agent"].as_array().into_iter().flatten().any(|a| ends(&a["who"]["reference"]))
}

async fn read_is_audited(kit: &mut Kit, auditor: &Result<String, Problem>) -> Outcome {
    let auditor = clone_result(auditor)?;
    let token = kit.token()?;
    let id = kit.data.patient.clone().ok_or_else(|| skip("depends on CONF-FHIR-001, which did not pass"))?;
    let resp = kit.http.get(&format!("/Patient/{id}"), &token).await?;
    ensure!(resp.status == 200, "the read to audit: {}", resp.describe());
    let reference = format!("Patient/{id}");
    // The trail may be written a moment after the answer.
    for _ in 0..20 {
        let resp = kit.http.get(&format!("/AuditEvent?entity={reference}&_count=200"), &auditor).await?;
        ensure!(resp.status == 200, "the auditor's AuditEvent search: {}", resp.describe());
        let found = entries(&resp.json(), "match")
            .into_iter()
            .any(|e| e["resourceType"] == "AuditEvent" && e["action"] == "R" && names(&e, &reference));
        if found {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(fail(format!("no AuditEvent with action R naming {reference} within 10 s")))
}

async fn trail_is_read_only(kit: &mut Kit, auditor: &Result<String, Problem>) -> Outcome {
    let token = match clone_result(auditor) {
        Ok(t) => t,
        Err(_) => kit.token()?,
    };
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true, "who": {"display": "conformance kit"}}],
        "source": {"observer": {"display": "conformance kit"}}
    });
    let resp = kit.http.send_json(Method::POST, "/AuditEvent", &token, &event, &[]).await?;
    ensure!((400..500).contains(&resp.status), "POST /AuditEvent answered {}", resp.status);
    Ok(())
}

pub(crate) async fn tenants(kit: &mut Kit) {
    let other = match kit.opts.second_tenant.clone() {
        Some(who) => crate::auth::token_of(kit, &who).await.map_err(|p| match p {
            Problem::Fail(w) => fail(format!("the second tenant's user could not log in: {w}")),
            p => p,
        }),
        None => Err(skip("no second tenant: give --second-client and --second-user, or --second-token-env")),
    };
    // Without read and search rights of its own the second tenant proves nothing (a 403 is a
    // refusal by scope, not isolation): the checks are skipped then.
    let other = match other {
        Ok(token) => usable(kit, token).await,
        Err(p) => Err(p),
    };
    run_check!(kit, "CONF-TEN-001", read(kit, &other));
    run_check!(kit, "CONF-TEN-002", search(kit, &other));
    run_check!(kit, "CONF-TEN-003", history(kit, &other));
    run_check!(kit, "CONF-TEN-004", include(kit, &other));
    run_check!(kit, "CONF-TEN-005", conditional(kit, &other));
}

/// The second tenant's token, if it may read and search Patients and Observations.
async fn usable(kit: &Kit, token: String) -> Result<String, Problem> {
    for ty in ["Patient", "Observation"] {
        let resp = kit.http.get(&format!("/{ty}?_summary=count"), &token).await?;
        if resp.status == 403 {
            return Err(skip(format!(
                "the second tenant's user may not search {ty}: give one with clinical read and search rights"
            )));
        }
    }
    Ok(token)
}

/// The other tenant's token and our patient.
fn inputs(kit: &Kit, other: &Result<String, Problem>) -> Result<(String, String), Problem> {
    let token = clone_result(other)?;
    let id = kit.data.patient.clone().ok_or_else(|| skip("depends on CONF-FHIR-001, which did not pass"))?;
    Ok((token, id))
}

async fn read(kit: &mut Kit, other: &Result<String, Problem>) -> Outcome {
    let (token, id) = inputs(kit, other)?;
    for path in [format!("/Patient/{id}"), format!("/Patient/{id}/_history/1")] {
        let resp = kit.http.get(&path, &token).await?;
        ensure!(resp.status == 404, "another tenant's {} answered {}", path.replace(&id, "[id]"), resp.status);
    }
    Ok(())
}

async fn search(kit: &mut Kit, other: &Result<String, Problem>) -> Outcome {
    let (token, id) = inputs(kit, other)?;
    for q in [format!("/Patient?_id={id}"), format!("/Patient?identifier={ID_SYSTEM}%7Cconf-{}-1", kit.tag)] {
        let resp = kit.http.get(&q, &token).await?;
        ensure!(resp.status == 200, "another tenant's search: {}", resp.describe());
        let found = match_ids(&resp.json());
        ensure!(found.is_empty(), "another tenant's search found {} resource(s) of ours", found.len());
    }
    Ok(())
}

async fn history(kit: &mut Kit, other: &Result<String, Problem>) -> Outcome {
    let (token, id) = inputs(kit, other)?;
    let resp = kit.http.get(&format!("/Patient/{id}/_history"), &token).await?;
    ensure!(resp.status == 404, "another tenant's instance history answered {}", resp.status);
    let since = kit.data.since.clone().unwrap_or_default();
    let req = kit
        .http
        .fhir(Method::GET, "/Patient/_history", Some(&token))
        .query(&[("_since", since.as_str()), ("_count", "1000")]);
    let resp = kit.http.send(req).await?;
    ensure!(resp.status == 200, "another tenant's type history: {}", resp.describe());
    let leaked =
        resp.json()["entry"].as_array().into_iter().flatten().any(|e| {
            e["resource"]["id"] == id.as_str() || e["request"]["url"].as_str().is_some_and(|u| u.contains(&id))
        });
    ensure!(!leaked, "another tenant's type history lists our patient");
    Ok(())
}

async fn include(kit: &mut Kit, other: &Result<String, Problem>) -> Outcome {
    let (token, _) = inputs(kit, other)?;
    let patient = kit
        .data
        .search_patients
        .first()
        .cloned()
        .ok_or_else(|| skip("depends on the search fixtures, which were not created"))?;
    for q in [
        format!("/Observation?subject=Patient/{patient}&_include=Observation:subject"),
        format!("/Patient?_id={patient}&_revinclude=Observation:subject"),
    ] {
        let resp = kit.http.get(&q, &token).await?;
        ensure!(resp.status == 200, "another tenant's search with includes: {}", resp.describe());
        let bundle = resp.json();
        let ours: Vec<String> = ["match", "include"]
            .iter()
            .flat_map(|m| entries(&bundle, m))
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .filter(|id| kit.data.search_patients.contains(id) || kit.data.observations.contains(id))
            .collect();
        ensure!(ours.is_empty(), "another tenant's search with includes returned {} of our resources", ours.len());
    }
    Ok(())
}

async fn conditional(kit: &mut Kit, other: &Result<String, Problem>) -> Outcome {
    let (token, id) = inputs(kit, other)?;
    let condition = format!("identifier={ID_SYSTEM}|conf-{}-1", kit.tag);
    let body = crate::fhir::patient(&format!("Conf{}", kit.tag), "Goro", "1975-07-07", &format!("conf-{}-1", kit.tag));
    let resp = kit.http.send_json(Method::POST, "/Patient", &token, &body, &[("if-none-exist", &condition)]).await?;
    if resp.status == 403 {
        return Err(skip("the second tenant's token may not create Patients"));
    }
    ensure!(resp.status == 201, "another tenant's conditional create answered {}, not 201 (created anew)", resp.status);
    ensure!(resp.json()["id"] != id.as_str(), "another tenant's conditional create answered our patient");
    Ok(())
}
