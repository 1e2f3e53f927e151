//! FHIR ⇄ JAHIS: a lab order (ServiceRequest + Patient + Specimen) to the [`LabOrder`] of an
//! OML^O33, and the results of an OUL^R22 / ORU^R01 to JP Core lab resources
//! (`JP_Observation_LabResult`, `JP_DiagnosticReport_LabResult`) with the JP-CLINS coding
//! pattern: the laboratory's local code always, plus the JLAC10 code when the lab sent one.
//!
//! Resource ids of results are derived from (endpoint, order, test code, sub-id), so a result
//! delivered twice — the same message resent, or a correction under a new control id — lands on
//! the same resources: the second delivery is a no-op or a new version, never a duplicate; and a
//! result of another order (a recycled filler number) can never overwrite it.

use crate::error::LabError;
use ehr_hl7v2::jahis::{CodedElement, LabOrder, LabTest, OrderResults, Patient, PersonName, Provider, Sex, Specimen};
use ehr_hl7v2::{Coding, Timestamp};
use ehr_terminology::{SystemId, Terminology, systems};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// JP Core profile of a lab result Observation.
pub const OBSERVATION_PROFILE: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Observation_LabResult";
/// JP Core profile of a lab DiagnosticReport.
pub const REPORT_PROFILE: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_DiagnosticReport_LabResult";
/// JP Core local patient id system prefix (`urn:oid:1.2.392.100495.20.3.51.1<institution no>`).
const LOCAL_PATIENT_ID: &str = "urn:oid:1.2.392.100495.20.3.51.";
/// The JP-CLINS "not standardised (JLAC)" marker code.
const UNCODED: &str = "99999999999999999";
/// The JP Core name representation extension (kanji `IDE`, kana `SYB`).
const NAME_REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// Whether a FHIR coding system is a JLAC10 one (the general 17-digit code system, or the
/// JP-CLINS core / infection lab code systems, whose codes are JLAC10 codes too).
fn jlac10_system(system: &str) -> bool {
    matches!(
        SystemId::from_uri(system),
        Some(SystemId::Jlac10 | SystemId::ClinsCoreJlac10 | SystemId::ClinsInfectionJlac10)
    )
}

/// The patient id a lab knows a Patient by (PID-3): the hospital's local patient id (JP Core
/// `urn:oid:1.2.392.100495.20.3.51.1<institution no>`), else the resource id.
pub fn patient_id(p: &Value) -> String {
    p["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"].as_str().is_some_and(|s| s.starts_with(LOCAL_PATIENT_ID)))
        .and_then(|i| i["value"].as_str())
        .or_else(|| p["id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The patient of an order, from its FHIR Patient.
fn patient(p: &Value) -> Patient {
    let mut out = Patient { id: patient_id(p), ..Patient::default() };
    for name in p["name"].as_array().into_iter().flatten() {
        let representation = name["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == NAME_REPRESENTATION)
            .and_then(|e| e["valueCode"].as_str());
        let family = name["family"].as_str().unwrap_or_default();
        let given = name["given"].as_array().and_then(|g| g.first()).and_then(Value::as_str).unwrap_or_default();
        let person = PersonName::new(family, given);
        match representation {
            Some("SYB") => out.kana_name = Some(person),
            Some("ABC") => out.alphabetic_name = Some(person),
            _ if out.kanji_name.is_none() => out.kanji_name = Some(person),
            _ => {}
        }
    }
    out.birth_date = p["birthDate"].as_str().and_then(|d| Timestamp::new(&d.replace('-', "")).ok());
    out.sex = match p["gender"].as_str() {
        Some("male") => Some(Sex::Male),
        Some("female") => Some(Sex::Female),
        Some("other") => Some(Sex::Other),
        Some("unknown") => Some(Sex::Unknown),
        _ => None,
    };
    out
}

/// HL7 DTM of a FHIR date or dateTime (`2026-11-25T09:30:00+09:00` → `202611250930`), in the
/// wall-clock time it was written in (JAHIS messages carry Japan local time).
pub fn hl7_time(fhir: &str) -> Option<Timestamp> {
    let digits: String = fhir.chars().take(19).filter(char::is_ascii_digit).collect();
    let cut = digits.len().min(14);
    Timestamp::new(&digits[..cut]).ok()
}

/// FHIR dateTime of an HL7 DTM (`20261125093000` → `2026-11-25T09:30:00+09:00`). Without an
/// offset, Japan Standard Time is assumed, as in every JAHIS message seen.
pub fn fhir_time(hl7: &str) -> Option<String> {
    let (digits, offset) = match hl7.find(['+', '-']) {
        Some(i) => (&hl7[..i], Some(&hl7[i..])),
        None => (hl7, None),
    };
    let digits = digits.split('.').next().unwrap_or(digits);
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (&digits[0..4], &digits[4..6], &digits[6..8]);
    if digits.len() < 12 {
        return Some(format!("{y}-{m}-{d}"));
    }
    let (hh, mm) = (&digits[8..10], &digits[10..12]);
    let ss = if digits.len() >= 14 { &digits[12..14] } else { "00" };
    let offset = match offset {
        Some(o) if o.len() == 5 => format!("{}:{}", &o[..3], &o[3..]),
        _ => "+09:00".to_owned(),
    };
    Some(format!("{y}-{m}-{d}T{hh}:{mm}:{ss}{offset}"))
}

/// The codings of a CodeableConcept.
fn codings(cc: &Value) -> impl Iterator<Item = &Value> {
    cc["coding"].as_array().into_iter().flatten()
}

/// The [`LabOrder`] of an `order.placed` payload (`serviceRequest`, `patient`, `specimens`).
pub fn lab_order(payload: &Value, ordering_facility: &str, terminology: &Terminology) -> Result<LabOrder, LabError> {
    let sr = &payload["serviceRequest"];
    let placer = sr["id"].as_str().ok_or(LabError::OrderIncomplete("ServiceRequest.id"))?;
    let mut jlac = None;
    let mut local = None;
    for c in codings(&sr["code"]) {
        let system = c["system"].as_str().unwrap_or_default();
        let code = c["code"].as_str().unwrap_or_default();
        let display = c["display"].as_str().or_else(|| sr["code"]["text"].as_str()).unwrap_or_default();
        if jlac10_system(system) {
            jlac.get_or_insert((code.to_owned(), display.to_owned()));
        } else if local.is_none() && !code.is_empty() {
            local = Some(Coding::new(code, display, "99LOCAL"));
        }
    }
    let (jlac10, name) = jlac.ok_or(LabError::OrderIncomplete("ServiceRequest.code (a JLAC10 coding)"))?;
    // The specimen: the first Specimen's type, else the material digits (10–12) of the JLAC10
    // code, which name the specimen the test is defined on (023 血清 …).
    let specimen_resource = payload["specimens"].as_array().and_then(|s| s.first());
    let kind = specimen_resource
        .and_then(|s| {
            codings(&s["type"]).find(|c| c["system"].as_str() == Some(systems::SAMPLE_MATERIAL)).map(|c| {
                Coding::new(
                    c["code"].as_str().unwrap_or_default(),
                    c["display"].as_str().unwrap_or_default(),
                    ehr_hl7v2::jahis::JLAC10,
                )
            })
        })
        .or_else(|| {
            let material = jlac10.get(9..12)?;
            // The name from the material master (JP_ObservationSampleMaterialCode_CS).
            let name = terminology.lookup(systems::SAMPLE_MATERIAL, material).map(|c| c.display).unwrap_or_default();
            Some(Coding::new(material, name, ehr_hl7v2::jahis::JLAC10))
        })
        .ok_or(LabError::OrderIncomplete("Specimen.type"))?;
    let specimen = Specimen {
        id: specimen_resource.and_then(|s| s["id"].as_str()).map(str::to_owned),
        kind,
        collected_at: specimen_resource
            .and_then(|s| s["collection"]["collectedDateTime"].as_str())
            .or_else(|| sr["occurrenceDateTime"].as_str())
            .and_then(hl7_time),
    };
    let ordering_provider = sr["requester"]["reference"].as_str().map(|r| Provider {
        id: r.rsplit('/').next().unwrap_or(r).to_owned(),
        name: PersonName::new(sr["requester"]["display"].as_str().unwrap_or_default(), ""),
    });
    let priority = match sr["priority"].as_str() {
        Some("stat" | "asap" | "urgent") => Some("S".to_owned()),
        Some("routine") => Some("R".to_owned()),
        _ => None,
    };
    let patient = patient(&payload["patient"]);
    if patient.id.is_empty() {
        return Err(LabError::OrderIncomplete("Patient.identifier"));
    }
    Ok(LabOrder {
        patient,
        patient_class: None,
        placer_order_number: placer.to_owned(),
        ordering_facility: Some(ordering_facility.to_owned()),
        department: None,
        ordering_provider,
        specimen,
        tests: vec![LabTest { jlac10, name, local }],
        priority,
    })
}

/// A stable resource id from its parts: `lab-` and 40 hex digits of their SHA-256.
pub fn derived_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("lab-{hex}")
}

/// The FHIR codings of a CE: the local code (under the lab's code system) and JLAC10.
fn result_codings(ce: &CodedElement, local_system: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for c in std::iter::once(&ce.primary).chain(ce.alternate.iter()) {
        if c.code.is_empty() {
            continue;
        }
        let mut coding = if c.is_jlac10() {
            json!({"system": systems::JLAC10, "code": c.code})
        } else {
            json!({"system": local_system, "code": c.code})
        };
        if !c.text.is_empty() {
            coding["display"] = Value::String(c.text.clone());
        }
        out.push(coding);
    }
    if !ce.primary.is_jlac10() && !ce.alternate.as_ref().is_some_and(Coding::is_jlac10) {
        // JP-CLINS: a result without a JLAC code carries the "not standardised" marker.
        out.push(json!({"system": systems::CLINS_LAB_UNCODED, "code": UNCODED,
                        "display": "未標準化コード項目(JLAC)"}));
    }
    out
}

/// FHIR Observation.status of OBX-11 (HL7 table 0085, as the v2-to-FHIR mapping has it).
fn status_of(obx_status: &str) -> &'static str {
    match obx_status {
        "F" => "final",
        "C" => "corrected",
        "P" | "R" | "S" | "I" => "preliminary",
        // Posted as wrong (W) or deleted (D): the value must leave the record.
        "W" | "D" => "entered-in-error",
        "X" => "cancelled",
        _ => "final",
    }
}

fn interpretation(flag: &str) -> Option<(&'static str, &'static str)> {
    Some(match flag {
        "H" => ("H", "High"),
        "HH" => ("HH", "Critical high"),
        "L" => ("L", "Low"),
        "LL" => ("LL", "Critical low"),
        "N" => ("N", "Normal"),
        "A" => ("A", "Abnormal"),
        _ => return None,
    })
}

/// The text of a code: its name, else the code.
fn code_text(ce: &CodedElement) -> String {
    [&ce.primary, ce.alternate.as_ref().unwrap_or(&ce.primary)]
        .iter()
        .map(|c| if c.text.is_empty() { c.code.clone() } else { c.text.clone() })
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| "lab test".to_owned())
}

/// What the lab interface resolved about the order a result answers.
pub struct ResultContext<'a> {
    pub endpoint_id: &'a str,
    /// The code system URI of the laboratory's local codes.
    pub local_system: &'a str,
    /// `Patient/<id>` the order was placed for.
    pub patient: &'a str,
    /// `ServiceRequest/<id>`.
    pub service_request: &'a str,
    /// The lab's Organization, as performer.
    pub performer: Option<&'a str>,
    /// The order's Specimen (`Specimen/<id>`), when it names one.
    pub specimen: Option<&'a str>,
    /// FHIR instant of receipt (DiagnosticReport.issued when the message has none).
    pub received_at: &'a str,
}

/// The DiagnosticReport and Observations of one order's results.
pub fn report(order: &OrderResults, cx: &ResultContext<'_>) -> (Value, Vec<Value>) {
    let filler = if order.filler_order_number.is_empty() {
        order.placer_order_number.as_str()
    } else {
        order.filler_order_number.as_str()
    };
    let effective = order
        .specimen
        .as_ref()
        .and_then(|s| s.collected_at.as_ref())
        .or_else(|| order.observations.iter().find_map(|o| o.observed_at.as_ref()))
        .and_then(|t| fhir_time(t.as_str()));
    let identifier_system = format!("urn:ehr:lab:{}:result", cx.endpoint_id);
    let mut observations = Vec::new();
    for obx in &order.observations {
        let code = obx.code.primary.code.as_str();
        // The result's identity: this lab, this order, this test (and sub-id). Not the filler
        // number (labs recycle accession numbers) nor the OBX position (a corrected message
        // may add results): a resend or correction lands on the same Observation, a result
        // of another order never does.
        let id = derived_id(&[cx.endpoint_id, cx.service_request, code, &obx.sub_id]);
        let mut o = json!({
            "resourceType": "Observation",
            "id": id,
            "meta": {"profile": [OBSERVATION_PROFILE]},
            "identifier": [{"system": identifier_system, "value": format!("{filler}-{}", obx.set_id)}],
            "basedOn": [{"reference": cx.service_request}],
            "status": status_of(&obx.status),
            // JP Core: a `laboratory` slice from JP_SimpleObservationCategory_CS (one coding),
            // beside the FHIR category.
            "category": [
                {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS",
                             "code": "laboratory"}]},
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                             "code": "laboratory"}]}
            ],
            "code": {"coding": result_codings(&obx.code, cx.local_system), "text": code_text(&obx.code)},
            "subject": {"reference": cx.patient},
        });
        // JP Core requires the specimen: the order's Specimen, else the SPM of the message as a
        // contained Specimen.
        match (cx.specimen, &order.specimen) {
            (Some(reference), _) => o["specimen"] = json!({"reference": reference}),
            (None, spm) => {
                let mut specimen = json!({"resourceType": "Specimen", "id": "specimen",
                                          "subject": {"reference": cx.patient}});
                if let Some(spm) = spm {
                    if !spm.kind.code.is_empty() {
                        let mut coding = json!({"system": systems::SAMPLE_MATERIAL, "code": spm.kind.code});
                        if !spm.kind.text.is_empty() {
                            coding["display"] = Value::String(spm.kind.text.clone());
                        }
                        specimen["type"] = json!({"coding": [coding]});
                    }
                    if let Some(t) = spm.collected_at.as_ref().and_then(|t| fhir_time(t.as_str())) {
                        specimen["collection"] = json!({"collectedDateTime": t});
                    }
                }
                o["contained"] = json!([specimen]);
                o["specimen"] = json!({"reference": "#specimen"});
            }
        }
        if let Some(t) = obx.observed_at.as_ref().and_then(|t| fhir_time(t.as_str())).or_else(|| effective.clone()) {
            o["effectiveDateTime"] = Value::String(t);
        }
        let value = obx.values.first().map(String::as_str).unwrap_or_default();
        match (obx.value_type.as_str(), value.parse::<f64>()) {
            ("NM", Ok(n)) => {
                let mut q = json!({"value": n});
                if let Some(u) = &obx.units
                    && !u.code.is_empty()
                {
                    q["unit"] = Value::String(if u.text.is_empty() { u.code.clone() } else { u.text.clone() });
                    q["code"] = Value::String(u.code.clone());
                    q["system"] = Value::String("http://unitsofmeasure.org".into());
                }
                o["valueQuantity"] = q;
            }
            _ if !value.is_empty() => o["valueString"] = Value::String(value.to_owned()),
            _ => {}
        }
        if let Some(range) = &obx.reference_range {
            o["referenceRange"] = reference_range(range);
        }
        let flags: Vec<Value> = obx
            .abnormal_flags
            .iter()
            .filter_map(|f| interpretation(f))
            .map(|(code, display)| {
                json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                   "code": code, "display": display}]})
            })
            .collect();
        if !flags.is_empty() {
            o["interpretation"] = Value::Array(flags);
        }
        if let Some(p) = cx.performer {
            o["performer"] = json!([{"reference": p}]);
        }
        // The lab's comments (NTE): 溶血あり and the like change how a value is read.
        if !obx.notes.is_empty() {
            o["note"] = Value::Array(obx.notes.iter().map(|n| json!({"text": n})).collect());
        }
        observations.push(o);
    }
    let all_final =
        !order.observations.is_empty() && order.observations.iter().all(|o| matches!(o.status.as_str(), "F" | "C"));
    let corrected = order.observations.iter().any(|o| o.status == "C");
    let mut dr = json!({
        "resourceType": "DiagnosticReport",
        "id": derived_id(&[cx.endpoint_id, cx.service_request, "report"]),
        "meta": {"profile": [REPORT_PROFILE]},
        "identifier": [{"system": identifier_system, "value": filler}],
        "basedOn": [{"reference": cx.service_request}],
        "status": if corrected { "corrected" } else if all_final { "final" } else { "partial" },
        // JP Core: the `laboratory` slice is LOINC LP29693-6 (Laboratory); HL7 v2-0074 LAB beside it.
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "LP29693-6", "display": "Laboratory"}]},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB",
                         "display": "Laboratory"}]}
        ],
        "code": {"coding": result_codings(&order.service, cx.local_system), "text": code_text(&order.service)},
        "subject": {"reference": cx.patient},
        "issued": cx.received_at,
        "result": observations.iter().map(|o| json!({"reference": format!("Observation/{}", o["id"].as_str().unwrap_or_default())})).collect::<Vec<_>>(),
    });
    if let Some(t) = effective {
        dr["effectiveDateTime"] = Value::String(t);
    }
    if !order.notes.is_empty() {
        dr["conclusion"] = Value::String(order.notes.join("\n"));
    }
    if let Some(p) = cx.performer {
        dr["performer"] = json!([{"reference": p}]);
    }
    (dr, observations)
}

/// OBX-7 (`3.5-5.0`, `<0.3`, `>=10`) as a FHIR referenceRange: low/high when numeric, else text.
fn reference_range(range: &str) -> Value {
    let r = range.trim();
    if let Some((lo, hi)) = r.split_once('-')
        && let (Ok(lo), Ok(hi)) = (lo.trim().parse::<f64>(), hi.trim().parse::<f64>())
    {
        return json!([{"low": {"value": lo}, "high": {"value": hi}, "text": r}]);
    }
    json!([{"text": r}])
}

/// Whether every order of the message has final (or corrected) results.
pub fn order_is_final(order: &OrderResults) -> bool {
    !order.observations.is_empty() && order.observations.iter().all(|o| matches!(o.status.as_str(), "F" | "C"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        assert_eq!(fhir_time("20261125093015").as_deref(), Some("2026-11-25T09:30:15+09:00"));
        assert_eq!(fhir_time("202611250930").as_deref(), Some("2026-11-25T09:30:00+09:00"));
        assert_eq!(fhir_time("20261125").as_deref(), Some("2026-11-25"));
        assert_eq!(fhir_time("202611250930+0000").as_deref(), Some("2026-11-25T09:30:00+00:00"));
        assert_eq!(fhir_time("2026"), None);
        assert_eq!(
            hl7_time("2026-11-25T09:30:15+09:00").map(|t| t.as_str().to_owned()).as_deref(),
            Some("20261125093015")
        );
        assert_eq!(hl7_time("1970-01-02").map(|t| t.as_str().to_owned()).as_deref(), Some("19700102"));
    }

    #[test]
    fn derived_ids_are_stable_and_valid() {
        let a = derived_id(&["ep", "F1", "1"]);
        assert_eq!(a, derived_id(&["ep", "F1", "1"]));
        assert_ne!(a, derived_id(&["ep", "F1", "2"]));
        assert!(ehr_core::ResourceId::parse(&a).is_ok());
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(reference_range("3.5-5.0")[0]["low"]["value"], 3.5);
        assert_eq!(reference_range("<0.3")[0]["text"], "<0.3");
    }
}

#[cfg(test)]
mod validity {
    use super::*;
    use ehr_hl7v2::jahis::Observation;

    /// What the mapping writes is valid for the server's own validator (JP Core lab profiles).
    #[test]
    fn mapped_results_validate() {
        let ce = |code: &str, text: &str, system: &str| CodedElement {
            primary: Coding::new(code, text, system),
            alternate: None,
        };
        let order = OrderResults {
            placer_order_number: "sr-1".into(),
            filler_order_number: "F-1".into(),
            service: ce("3B035000002327201", "AST", "JC10"),
            observations: vec![Observation {
                set_id: "1".into(),
                value_type: "NM".into(),
                code: CodedElement {
                    primary: Coding::new("3B035000002327201", "AST", "JC10"),
                    alternate: Some(Coding::new("L0201", "AST", "99LAB")),
                },
                values: vec!["31".into()],
                units: Some(Coding::new("U/L", "U/L", "99LAB")),
                reference_range: Some("13-30".into()),
                abnormal_flags: vec!["H".into()],
                status: "F".into(),
                observed_at: Timestamp::new("20261125110000").ok(),
                notes: vec!["溶血あり".into()],
                ..Observation::default()
            }],
            ..OrderResults::default()
        };
        let cx = ResultContext {
            endpoint_id: "ep",
            local_system: "urn:ehr:lab:ep:codes",
            patient: "Patient/p1",
            service_request: "ServiceRequest/sr-1",
            performer: Some("Organization/lab"),
            specimen: None,
            received_at: "2026-11-25T02:00:00.000Z",
        };
        let (report, observations) = report(&order, &cx);
        assert_eq!(observations[0]["note"][0]["text"], "溶血あり");
        let validator = ehr_fhir::validate::Validator::new();
        for r in observations.iter().chain(std::iter::once(&report)) {
            let errors: Vec<_> = validator
                .validate(r)
                .into_iter()
                .filter(|i| matches!(i.severity, ehr_core::Severity::Error | ehr_core::Severity::Fatal))
                .collect();
            assert!(errors.is_empty(), "{r}\n{errors:#?}");
        }
    }
}
