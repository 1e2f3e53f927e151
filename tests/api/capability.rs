//! The CapabilityStatement against the router (issue 8 item 2): every type, interaction, search
//! parameter, include, operation and profile it lists answers, and nothing it leaves out does.
//!
//! "Answers" means the request reached a handler of that interaction: anything but 405 and a 404
//! whose OperationOutcome says the route (`EHR-HTTP-006`) or the type (`EHR-REST-001`) is not
//! served. A 404 `not-found` for the probe's made-up id is an answer.

use ehr_testkit::{TestApp, json};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The resource types of FHIR R4 (4.0.1): every one is probed, so a type the router serves but
/// the statement omits fails the test.
const R4_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// The type-level and instance-level interactions of R4 (`capabilitystatement-interaction`
/// codes), each probed on every type.
const INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// An id no test creates.
const PROBE_ID: &str = "capability-probe";

/// Whether the answer came from a handler of the request (see the module docs), with the status
/// and body for the failure message.
async fn answered(resp: reqwest::Response) -> (bool, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let unrouted = status == 405 || (status == 404 && (text.contains("EHR-HTTP-006") || text.contains("EHR-REST-001")));
    (!unrouted, format!("{status} {}", text.chars().take(300).collect::<String>()))
}

/// One request of `interaction` on type `t`: bodies are deliberately invalid, so that a probe
/// never stores anything.
fn probe(app: &TestApp, t: &str, interaction: &str) -> reqwest::RequestBuilder {
    let fhir_json = "application/fhir+json";
    let invalid = json!({"resourceType": t, "id": PROBE_ID, "notAnElement": true}).to_string();
    match interaction {
        "read" => app.req(Method::GET, &format!("/{t}/{PROBE_ID}")),
        "vread" => app.req(Method::GET, &format!("/{t}/{PROBE_ID}/_history/1")),
        "update" => app.req(Method::PUT, &format!("/{t}/{PROBE_ID}")).header("content-type", fhir_json).body(invalid),
        "patch" => app
            .req(Method::PATCH, &format!("/{t}/{PROBE_ID}"))
            .header("content-type", "application/json-patch+json")
            .body("[]"),
        "delete" => app.req(Method::DELETE, &format!("/{t}/{PROBE_ID}")),
        "history-instance" => app.req(Method::GET, &format!("/{t}/{PROBE_ID}/_history")),
        "history-type" => app.req(Method::GET, &format!("/{t}/_history")),
        "create" => app.req(Method::POST, &format!("/{t}")).header("content-type", fhir_json).body(invalid),
        "search-type" => app.req(Method::GET, &format!("/{t}?_count=1")),
        other => panic!("no probe for interaction {other}"),
    }
}

/// The request that invokes operation `name` on type `t` (`None`: at system level). A listed
/// operation without a probe here fails the test: add one.
fn operation(app: &TestApp, t: Option<&str>, name: &str) -> reqwest::RequestBuilder {
    let fhir_json = "application/fhir+json";
    match (t, name) {
        (Some(t), "validate") => app
            .req(Method::POST, &format!("/{t}/$validate"))
            .header("content-type", fhir_json)
            .body(json!({"resourceType": t}).to_string()),
        (Some("Patient"), "everything") => app.req(Method::GET, &format!("/Patient/{PROBE_ID}/$everything")),
        // Without `Prefer: respond-async` the kick-off is refused (400) before a job starts.
        (Some("Patient"), "export") => app.req(Method::GET, "/Patient/$export"),
        (Some("Group"), "export") => app.req(Method::GET, &format!("/Group/{PROBE_ID}/$export")),
        (None, "export") => app.req(Method::GET, "/$export"),
        (None, "import") => app.req(Method::POST, "/$import").header("content-type", "application/fhir+ndjson"),
        (Some("CodeSystem"), "lookup") => app.req(Method::GET, "/CodeSystem/$lookup?code=1"),
        (Some("ValueSet"), "validate-code") => app.req(Method::GET, "/ValueSet/$validate-code?code=1"),
        (t, name) => panic!("no probe for operation ${name} on {t:?}"),
    }
}

fn codes<'a>(v: &'a Value, key: &str, field: &str) -> Vec<&'a str> {
    v[key].as_array().into_iter().flatten().map(|i| i[field].as_str().unwrap()).collect()
}

/// A value of a search parameter's type that the parser accepts.
fn sample_value(kind: &str) -> &'static str {
    match kind {
        "date" => "2024",
        "quantity" | "number" => "1",
        "reference" => "Patient/1",
        _ => "x",
    }
}

async fn strict_search(app: &TestApp, query: &str) -> reqwest::Response {
    app.req(Method::GET, query).header("prefer", "handling=strict").send().await.unwrap()
}

#[tokio::test]
async fn every_interaction_listed_answers_and_no_other_does() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let mut listed = BTreeSet::new();
    let mut failures = Vec::new();
    for t in R4_TYPES {
        let entry = resources.iter().find(|r| r["type"] == *t);
        if entry.is_some() {
            listed.insert(*t);
        }
        let claimed = entry.map(|e| codes(e, "interaction", "code")).unwrap_or_default();
        for interaction in INTERACTIONS {
            let (ok, what) = answered(probe(&app, t, interaction).send().await.unwrap()).await;
            if ok != claimed.contains(interaction) {
                let verdict = if ok { "answers but is not listed" } else { "is listed but not routed" };
                failures.push(format!("{t} {interaction} {verdict}: {what}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every type listed is a FHIR R4 type (the probe covered it), listed once.
    let all: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(all.len(), listed.len(), "a type is listed twice or is not an R4 type: {all:?}");
    // The system interactions: transaction and batch (POST [base]), history-system.
    let system = codes(&cs["rest"][0], "interaction", "code");
    assert_eq!(system, ["transaction", "batch", "history-system"]);
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": []});
    let resp = app.req(Method::POST, "").header("content-type", "application/fhir+json").body(bundle.to_string());
    assert_eq!(resp.send().await.unwrap().status(), 200);
    assert_eq!(app.get("/_history").await.status(), 200);
    // No search-system: `GET [base]` is not routed.
    assert!(!answered(app.get("").await).await.0);
}

#[tokio::test]
async fn every_search_parameter_and_include_listed_is_accepted_in_strict_mode() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    let mut failures = Vec::new();
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        let searchable = codes(r, "interaction", "code").contains(&"search-type");
        let params = r["searchParam"].as_array().cloned().unwrap_or_default();
        if !searchable {
            assert!(params.is_empty() && r.get("searchInclude").is_none(), "{t}: search details without search");
            continue;
        }
        for p in &params {
            let name = p["name"].as_str().unwrap();
            let query = format!("/{t}?{name}={}", sample_value(p["type"].as_str().unwrap()));
            let status = strict_search(&app, &query).await.status();
            if status != 200 {
                failures.push(format!("{query}: {status}"));
            }
        }
        for (key, param) in [("searchInclude", "_include"), ("searchRevInclude", "_revinclude")] {
            for include in r[key].as_array().into_iter().flatten() {
                let query = format!("/{t}?{param}={}", include.as_str().unwrap());
                let status = strict_search(&app, &query).await.status();
                if status != 200 {
                    failures.push(format!("{query}: {status}"));
                }
            }
        }
        // And a parameter nobody defines is refused, not ignored.
        let status = strict_search(&app, &format!("/{t}?made-up-parameter=x")).await.status();
        if status != 400 {
            failures.push(format!("{t}?made-up-parameter: {status}, expected 400"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn every_operation_listed_is_routed_and_every_profile_is_known() {
    let app = TestApp::spawn().await;
    let cs = json(app.client.get(app.fhir("/metadata")).send().await.unwrap(), 200).await;
    let rest = &cs["rest"][0];
    let mut failures = Vec::new();
    let mut check = async |t: Option<&str>, name: &str| {
        let (ok, what) = answered(operation(&app, t, name).send().await.unwrap()).await;
        if !ok {
            failures.push(format!("${name} on {t:?} is listed but not routed: {what}"));
        }
    };
    for name in codes(rest, "operation", "name") {
        check(None, name).await;
    }
    for r in rest["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        for name in codes(r, "operation", "name") {
            check(Some(t), name).await;
        }
    }
    // A made-up operation is not routed.
    let (ok, what) = answered(app.req(Method::POST, "/Patient/$made-up").send().await.unwrap()).await;
    assert!(!ok, "{what}");
    // Every supported profile is one the validator knows for that type: `$validate?profile=`
    // runs it instead of warning that it is unknown (EHR-VAL-016) or for another type (EHR-VAL-012).
    for r in rest["resource"].as_array().unwrap() {
        let t = r["type"].as_str().unwrap();
        for profile in r["supportedProfile"].as_array().into_iter().flatten() {
            let url = profile.as_str().unwrap();
            let resp = app
                .req(Method::POST, &format!("/{t}/$validate?profile={url}"))
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": t}).to_string())
                .send()
                .await
                .unwrap();
            let text = resp.text().await.unwrap();
            if text.contains("EHR-VAL-016") || text.contains("EHR-VAL-012") {
                failures.push(format!("{t} profile {url}: {}", text.chars().take(300).collect::<String>()));
            }
        }
    }
    let resp = app
        .req(Method::POST, "/Patient/$validate?profile=http://example.org/StructureDefinition/made-up")
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("EHR-VAL-016"), "an unknown profile is reported as unknown");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What a client relies on: JP Core Patient is enforced, and the formats and patch format.
    let patient = rest["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(codes(patient, "operation", "name").contains(&"everything"));
    let profiles: Vec<&str> =
        patient["supportedProfile"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(profiles.contains(&"http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"), "{profiles:?}");
    assert_eq!(cs["format"], json!(["application/fhir+json", "application/fhir+xml"]));
    assert_eq!(cs["patchFormat"], json!(["application/json-patch+json"]));
}
