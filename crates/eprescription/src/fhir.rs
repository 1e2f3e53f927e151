//! FHIR ⇄ prescription: JP Core / JP_MedicationRequest_eCS MedicationRequests with their
//! Patient, Coverage and prescriber → the [`Prescription`] model; and the JAMI
//! `JP_Bundle_ePrescriptionData` document (処方情報 HL7 FHIR 記述仕様, digest §C.2).

use crate::EpsError;
use crate::model::{
    Department, Doctor, Drug, DrugCodeType, Institution, Insurance, PatientInfo, Prescription, PublicPayment, Rp,
};
use chrono::NaiveDate;
use ehr_terminology::systems::{self, SystemId};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const YJ: &str = systems::YJ;
pub const GENERAL_NAME: &str = systems::GENERAL_NAME;
pub const RECEIPT: &str = systems::RECEIPT_DRUG;
pub const NOCODED: &str = systems::MEDICATION_NOCODED;
/// 厚労省電子処方箋用法コード (16 digits) and its OID form.
pub const USAGE: &[&str] =
    &["http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUsage_ePrescription", "urn:oid:1.2.392.200250.2.2.20.20"];
pub const RP_NUMBER: &[&str] =
    &["http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber", "urn:oid:1.2.392.100495.20.3.81"];
pub const RP_INDEX: &[&str] =
    &["http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex", "urn:oid:1.2.392.100495.20.3.82"];
/// 被保険者個人識別子 on Patient (`保険者番号:記号:番号:枝番`).
pub const INSURANCE_MEMBER_ID: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
pub const INSURER_NUMBER: &[&str] =
    &["http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber", "urn:oid:1.2.392.100495.20.3.61"];
pub const PUBLIC_PAYER_NUMBER: &[&str] =
    &["http://jpfhir.jp/fhir/core/mhlw/IdSystem/PublicPayerNumber", "urn:oid:1.2.392.100495.20.3.71"];
pub const INSTITUTION_NUMBER: &[&str] = &[
    "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no",
    "http://jpfhir.jp/fhir/Common/IdSystem/insurance-medical-institution-no",
];
const LOCAL_PATIENT_OID: &str = "urn:oid:1.2.392.100495.20.3.51.";
const LOCAL_DOCTOR_OID: &str = "urn:oid:1.2.392.100495.20.3.41.";
const EN_REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// What a prescription is made of, as read from the store.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub patient: &'a Value,
    /// `(id, resource)` of each MedicationRequest, in the order given.
    pub medication_requests: &'a [(String, Value)],
    pub coverage: Option<&'a Value>,
    /// The Coverage's payor Organization, when it is a reference to one.
    pub payor: Option<&'a Value>,
    /// 公費 Coverages (第1…第3), with their payor Organizations.
    pub public_coverages: &'a [(Value, Option<Value>)],
    /// The issuing institution.
    pub organization: &'a Value,
    pub practitioner: &'a Value,
    pub department: Option<&'a Department>,
    pub issue_date: NaiveDate,
}

/// Which MedicationRequest each (RP番号, RP内連番) of the model came from.
pub type RpMap = Vec<(u32, u32, String)>;

fn ident<'a>(resource: &'a Value, systems: &[&str]) -> Option<&'a str> {
    resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"].as_str().is_some_and(|s| systems.contains(&s)))
        .and_then(|i| i["value"].as_str())
}

fn ext<'a>(resource: &'a Value, suffix: &str) -> Option<&'a Value> {
    resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"].as_str().is_some_and(|u| u.ends_with(suffix)))
}

fn ext_text(resource: &Value, suffix: &str) -> Option<String> {
    let e = ext(resource, suffix)?;
    e["valueIdentifier"]["value"]
        .as_str()
        .or_else(|| e["valueCoding"]["code"].as_str())
        .or_else(|| e["valueString"].as_str())
        .or_else(|| e["valueCodeableConcept"]["coding"][0]["code"].as_str())
        .map(str::to_owned)
}

/// The 漢字 (`IDE`) or カナ (`SYL`, also `SYB`) name, family and given joined by `sep`.
fn name_of(resource: &Value, kana: bool, sep: &str) -> Option<String> {
    let names = resource["name"].as_array()?;
    let wanted = |n: &&Value| {
        let code = n["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == EN_REPRESENTATION)
            .and_then(|e| e["valueCode"].as_str());
        if kana {
            matches!(code, Some("SYL" | "SYB"))
        } else {
            code == Some("IDE") || (code.is_none() && names.len() == 1)
        }
    };
    let n = names.iter().find(wanted)?;
    let family = n["family"].as_str().unwrap_or("");
    let given: Vec<&str> = n["given"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !family.is_empty() || !given.is_empty() {
        let joined = [family.to_owned(), given.join(sep)].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
        return Some(joined.join(sep));
    }
    n["text"].as_str().map(|t| t.replace(['\u{3000}', ' '], sep))
}

fn coding<'a>(concept: &'a Value, systems: &[&str]) -> Option<&'a Value> {
    concept["coding"].as_array()?.iter().find(|c| c["system"].as_str().is_some_and(|s| systems.contains(&s)))
}

fn coding_of(concept: &Value, id: SystemId) -> Option<&Value> {
    concept["coding"].as_array()?.iter().find(|c| c["system"].as_str().and_then(SystemId::from_uri) == Some(id))
}

/// A number as the CSV writes it (`1`, `0.5`).
fn decimal(v: &Value) -> Option<String> {
    let f = v.as_f64()?;
    if f <= 0.0 {
        return None;
    }
    Some(if f.fract() == 0.0 { format!("{}", f as i64) } else { format!("{f}") })
}

/// Builds the model; every missing piece is named (one error listing all of them).
pub fn prescription(s: &Sources<'_>) -> Result<(Prescription, RpMap), EpsError> {
    let mut missing: Vec<String> = Vec::new();
    let mut need = |what: &str| missing.push(what.to_owned());

    // Institution (records 1–4).
    let org = s.organization;
    let number = ident(org, INSTITUTION_NUMBER).filter(|n| n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()));
    let code = ext_text(org, "JP_Organization_InsuranceOrganizationNo").or_else(|| number.map(|n| n[3..].to_owned()));
    let prefecture = ext_text(org, "JP_Organization_PrefectureNo").or_else(|| number.map(|n| n[..2].to_owned()));
    let score_table =
        ext_text(org, "JP_Organization_InsuranceOrganizationCategory").or_else(|| number.map(|n| n[2..3].to_owned()));
    if code.is_none() || prefecture.is_none() || score_table.is_none() {
        need("Organization.identifier (医療機関番号, 10 digits) or its JP Core extensions");
    }
    let org_name = org["name"].as_str().map(str::to_owned);
    if org_name.is_none() {
        need("Organization.name");
    }
    let address = &org["address"][0];
    let address_text = address["text"].as_str().map(str::to_owned).or_else(|| {
        let lines: Vec<&str> = address["line"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let parts = [address["state"].as_str(), address["city"].as_str()]
            .into_iter()
            .flatten()
            .chain(lines)
            .collect::<String>();
        Some(parts).filter(|p| !p.is_empty())
    });
    if address_text.is_none() {
        need("Organization.address (text)");
    }
    let phone = org["telecom"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["system"] == "phone")
        .and_then(|t| t["value"].as_str())
        .map(str::to_owned);
    if phone.is_none() {
        need("Organization.telecom (phone)");
    }

    // Doctor (record 5).
    let doctor_kanji = name_of(s.practitioner, false, "\u{3000}");
    let doctor_kana = name_of(s.practitioner, true, " ");
    if doctor_kanji.is_none() {
        need("Practitioner.name (漢字, IDE)");
    }
    if doctor_kana.is_none() {
        need("Practitioner.name (カナ, SYL)");
    }
    let doctor_code = s.practitioner["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"].as_str().is_some_and(|x| x.starts_with(LOCAL_DOCTOR_OID)))
        .and_then(|i| i["value"].as_str())
        .map(str::to_owned);

    // Patient (records 11–14).
    let p = s.patient;
    let local_id = p["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"].as_str().is_some_and(|x| x.starts_with(LOCAL_PATIENT_OID)))
        .or_else(|| p["identifier"].as_array().into_iter().flatten().find(|i| i["system"] != INSURANCE_MEMBER_ID))
        .and_then(|i| i["value"].as_str())
        .map(str::to_owned);
    let kanji = name_of(p, false, "\u{3000}");
    let kana = name_of(p, true, " ");
    if kanji.is_none() {
        need("Patient.name (漢字, IDE)");
    }
    if kana.is_none() {
        need("Patient.name (カナ, SYL)");
    }
    let sex = match p["gender"].as_str() {
        Some("male") => Some("1"),
        Some("female") => Some("2"),
        _ => None,
    };
    if sex.is_none() {
        need("Patient.gender (male or female)");
    }
    let birth = p["birthDate"].as_str().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    if birth.is_none() {
        need("Patient.birthDate (a full date)");
    }

    // Insurance (records 21–24).
    let insurance = s.coverage.map(|c| {
        let member = ident(p, &[INSURANCE_MEMBER_ID]).map(|m| m.split(':').map(str::to_owned).collect::<Vec<_>>());
        let member_part = |i: usize| member.as_ref().and_then(|m| m.get(i)).filter(|v| !v.is_empty()).cloned();
        let insurer = c["payor"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["identifier"]["value"].as_str().map(str::to_owned))
            .or_else(|| {
                s.payor
                    .and_then(|o| ident(o, INSURER_NUMBER).or_else(|| o["identifier"][0]["value"].as_str()))
                    .map(str::to_owned)
            })
            .or_else(|| member_part(0));
        let number = ext_text(c, "JP_Coverage_InsuredPersonNumber")
            .or_else(|| c["subscriberId"].as_str().map(str::to_owned))
            .or_else(|| member_part(2));
        let relationship = match c["relationship"]["coding"][0]["code"].as_str() {
            Some("1" | "self") | None => "1",
            _ => "2",
        };
        let burden = c["costToBeneficiary"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["type"]["coding"][0]["code"] == "copaypct")
            .and_then(|x| x["valueQuantity"]["value"].as_f64())
            .map(|v| v.clamp(0.0, 100.0) as u8);
        (
            c["type"]["coding"][0]["code"].as_str().map(str::to_owned),
            insurer,
            number,
            Insurance {
                kind: String::new(),
                insurer_number: String::new(),
                symbol: ext_text(c, "JP_Coverage_InsuredPersonSymbol").or_else(|| member_part(1)),
                number: String::new(),
                branch: ext_text(c, "JP_Coverage_InsuredPersonSubNumber")
                    .or_else(|| c["dependent"].as_str().map(str::to_owned))
                    .or_else(|| member_part(3)),
                relationship: relationship.to_owned(),
                burden_percent: burden,
            },
        )
    });
    let insurance = match insurance {
        None => None,
        Some((kind, insurer, number, mut ins)) => {
            match kind {
                Some(k) if ["1", "2", "3", "4", "5", "6", "7", "8"].contains(&k.as_str()) => ins.kind = k,
                _ => need("Coverage.type (保険種別 1–8)"),
            }
            match insurer {
                Some(i) => ins.insurer_number = i,
                None => need("Coverage.payor (保険者番号)"),
            }
            match number {
                Some(n) => ins.number = n,
                None => need("Coverage extension JP_Coverage_InsuredPersonNumber (被保険者証番号)"),
            }
            Some(ins)
        }
    };
    let mut public_payments = Vec::new();
    for (c, payor) in s.public_coverages.iter().take(3) {
        let payer = c["payor"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["identifier"]["value"].as_str().map(str::to_owned))
            .or_else(|| payor.as_ref().and_then(|o| ident(o, PUBLIC_PAYER_NUMBER)).map(str::to_owned));
        match payer {
            Some(payer_number) => public_payments.push(PublicPayment {
                payer_number,
                recipient_number: ext_text(c, "JP_Coverage_InsuredPersonNumber")
                    .or_else(|| c["subscriberId"].as_str().map(str::to_owned)),
            }),
            None => need("public-payment Coverage.payor (公費負担者番号)"),
        }
    }

    // RPs (records 101–281): grouped by RP番号, ordered by RP内連番.
    if s.medication_requests.is_empty() {
        need("at least one MedicationRequest");
    }
    let mut groups: BTreeMap<u32, Vec<(u32, usize)>> = BTreeMap::new();
    for (k, (id, mr)) in s.medication_requests.iter().enumerate() {
        match ident(mr, RP_NUMBER).and_then(|v| v.parse::<u32>().ok()) {
            Some(rp) => {
                let index = ident(mr, RP_INDEX).and_then(|v| v.parse::<u32>().ok()).unwrap_or(u32::MAX);
                groups.entry(rp).or_default().push((index, k));
            }
            None => need(&format!("MedicationRequest/{id}.identifier (RP番号, Medication-RPGroupNumber)")),
        }
    }
    let mut rps = Vec::new();
    let mut map = Vec::new();
    for (n, (_, mut members)) in groups.into_iter().enumerate() {
        members.sort();
        let rp_number = n as u32 + 1;
        let (first_id, first) = &s.medication_requests[members[0].1];
        let dosage = &first["dosageInstruction"][0];
        let usage = coding(&dosage["timing"]["code"], USAGE);
        let usage_code = usage.and_then(|c| c["code"].as_str()).map(str::to_owned);
        if usage_code.is_none() {
            need(&format!(
                "MedicationRequest/{first_id}.dosageInstruction.timing.code (厚労省電子処方箋用法コード, MedicationUsage_ePrescription)"
            ));
        }
        let usage_text = usage
            .and_then(|c| c["display"].as_str())
            .or_else(|| dosage["timing"]["code"]["text"].as_str())
            .or_else(|| dosage["text"].as_str())
            .unwrap_or("")
            .to_owned();
        let as_needed = dosage["asNeededBoolean"] == Value::Bool(true);
        let form = match (as_needed, usage_code.as_deref().and_then(|c| c.get(..1))) {
            (true, _) => "3",
            (false, Some("1")) => "1",
            (false, Some("2")) => "5",
            (false, Some("3")) => "4",
            _ => "10",
        };
        let quantity = match form {
            "1" => first["dispenseRequest"]["expectedSupplyDuration"]["value"]
                .as_u64()
                .or_else(|| dosage["timing"]["repeat"]["boundsDuration"]["value"].as_u64()),
            "3" => dosage["timing"]["repeat"]["count"]
                .as_u64()
                .or_else(|| first["dispenseRequest"]["numberOfRepeatsAllowed"].as_u64()),
            _ => Some(1),
        };
        let quantity = match quantity.and_then(|q| u32::try_from(q).ok()).filter(|q| *q > 0) {
            Some(q) => q,
            None => {
                need(&format!(
                    "MedicationRequest/{first_id}.dispenseRequest.expectedSupplyDuration (日数) or timing.repeat.count (回数)"
                ));
                0
            }
        };
        let times_per_day = match dosage["timing"]["repeat"]["periodUnit"].as_str() {
            Some("d") if dosage["timing"]["repeat"]["period"].as_f64() == Some(1.0) => {
                dosage["timing"]["repeat"]["frequency"].as_u64().and_then(|f| u32::try_from(f).ok())
            }
            _ => None,
        };
        let mut drugs = Vec::new();
        for (k, (_, idx)) in members.iter().enumerate() {
            let (id, mr) = &s.medication_requests[*idx];
            let other_usage =
                coding(&mr["dosageInstruction"][0]["timing"]["code"], USAGE).and_then(|c| c["code"].as_str());
            if k > 0 && other_usage != usage_code.as_deref() {
                need(&format!("MedicationRequest/{id}: the same 用法 as the rest of its RP"));
            }
            let concept = &mr["medicationCodeableConcept"];
            let (code_type, code) = if let Some(c) = coding_of(concept, SystemId::GeneralName) {
                (DrugCodeType::GeneralName, c["code"].as_str())
            } else if let Some(c) = coding_of(concept, SystemId::Yj) {
                (DrugCodeType::Yj, c["code"].as_str())
            } else if let Some(c) = coding_of(concept, SystemId::ReceiptDrug) {
                (DrugCodeType::Receipt, c["code"].as_str())
            } else if coding_of(concept, SystemId::MedicationNocoded).is_some() {
                (DrugCodeType::None, Some("0"))
            } else {
                (DrugCodeType::None, None)
            };
            let Some(code) = code else {
                need(&format!(
                    "MedicationRequest/{id}.medicationCodeableConcept (一般名コード, YJ code, receipt code or NOCODED)"
                ));
                continue;
            };
            let name = concept["text"].as_str().or_else(|| concept["coding"][0]["display"].as_str()).map(str::to_owned);
            let Some(name) = name else {
                need(&format!("MedicationRequest/{id}.medicationCodeableConcept.text (薬品名称)"));
                continue;
            };
            let dose = &mr["dosageInstruction"][0]["doseAndRate"][0];
            let amount = decimal(&dose["doseQuantity"]["value"]);
            let unit = dose["doseQuantity"]["unit"].as_str().or_else(|| dose["doseQuantity"]["code"].as_str());
            let (Some(amount), Some(unit)) = (amount, unit) else {
                need(&format!("MedicationRequest/{id}.dosageInstruction.doseAndRate.doseQuantity (分量 and unit)"));
                continue;
            };
            let strength = match dose["type"]["coding"][0]["code"].as_str() {
                Some("2") => "2",
                _ => "1",
            };
            let index = k as u32 + 1;
            map.push((rp_number, index, id.clone()));
            drugs.push(Drug {
                index,
                code_type,
                code: code.to_owned(),
                name,
                amount,
                strength: strength.to_owned(),
                unit: unit.to_owned(),
                notes: mr["note"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["text"].as_str())
                    .map(str::to_owned)
                    .collect(),
            });
        }
        rps.push(Rp {
            number: rp_number,
            form: form.to_owned(),
            form_name: None,
            quantity,
            usage_code: usage_code.unwrap_or_default(),
            usage_text,
            times_per_day,
            usage_notes: dosage["additionalInstruction"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["text"].as_str())
                .map(str::to_owned)
                .collect(),
            drugs,
        });
    }
    if !missing.is_empty() {
        return Err(EpsError::Incomplete(missing));
    }
    let text = |v: Option<String>| v.unwrap_or_default();
    let prescription = Prescription {
        institution: Institution {
            score_table: text(score_table),
            code: text(code),
            prefecture: text(prefecture),
            name: text(org_name),
            postal_code: address["postalCode"].as_str().map(str::to_owned),
            address: text(address_text),
            phone: text(phone),
            department: s.department.cloned(),
        },
        doctor: Doctor { code: doctor_code, kana: text(doctor_kana), kanji: text(doctor_kanji) },
        patient: PatientInfo {
            local_id,
            kanji: text(kanji),
            kana: text(kana),
            sex: sex.unwrap_or_default().to_owned(),
            birth_date: birth.unwrap_or_default(),
            burden_class: None,
        },
        insurance,
        public_payments,
        issue_date: s.issue_date,
        expiry_date: None,
        rps,
    };
    Ok((prescription, map))
}

const EPD: &str = "http://jpfhir.jp/fhir/ePrescription/StructureDefinition/";
const ORGANIZATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/organization-type";

fn profiled(mut resource: Value, profile: &str) -> Value {
    resource["meta"] = json!({"profile": [format!("{EPD}{profile}")]});
    if let Some(o) = resource.as_object_mut() {
        o.remove("text");
    }
    resource
}

/// The JAMI `JP_Bundle_ePrescriptionData` document of a prescription: Composition (57833-6,
/// category 01 一般処方箋, section 01 処方情報), Patient, Encounter, Coverage and its payer,
/// the issuing Organization and its department, PractitionerRole and Practitioner, and the
/// MedicationRequests. `document_number` is the 処方箋番号 (医療機関番号-年-連番).
pub fn document(
    s: &Sources<'_>,
    p: &Prescription,
    bundle_uuid: &str,
    document_number: &str,
    now: chrono::DateTime<chrono::FixedOffset>,
) -> Value {
    // Stable entry ids: the same prescription gives the same document.
    let uuid = |seed: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{bundle_uuid}/{seed}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        format!("urn:uuid:{}", uuid::Builder::from_random_bytes(bytes).into_uuid())
    };
    let (u_comp, u_patient, u_enc, u_cov, u_payer, u_org, u_dept, u_role, u_prac) = (
        uuid("Composition"),
        uuid("Patient"),
        uuid("Encounter"),
        uuid("Coverage"),
        uuid("Payer"),
        uuid("Organization"),
        uuid("Department"),
        uuid("PractitionerRole"),
        uuid("Practitioner"),
    );
    let mut entries = Vec::new();
    let mut section = Vec::new();
    let mut patient = profiled(s.patient.clone(), "JP_Patient_ePrescriptionData");
    if let Some(o) = patient.as_object_mut() {
        o.remove("id");
    }
    let encounter = json!({"resourceType": "Encounter", "meta": {"profile": [format!("{EPD}JP_Encounter_ePrescriptionData")]},
        "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "外来"},
        "subject": {"reference": u_patient}});
    let mut organization = profiled(s.organization.clone(), "JP_Organization_ePrescriptionData_issuer");
    if let Some(o) = organization.as_object_mut() {
        o.remove("id");
    }
    if organization["type"].is_null() {
        // As the JAMI example: the issuer is a healthcare provider.
        organization["type"] = json!([{"coding": [{"system": ORGANIZATION_TYPE, "code": "prov"}]}]);
    }
    let mut practitioner = profiled(s.practitioner.clone(), "JP_Practitioner_ePrescriptionData_author");
    if let Some(o) = practitioner.as_object_mut() {
        o.remove("id");
    }
    let role = json!({"resourceType": "PractitionerRole", "meta": {"profile": [format!("{EPD}JP_PractitionerRole_ePrescriptionData_author")]},
        "practitioner": {"reference": u_prac}, "organization": {"reference": u_org},
        "code": [{"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/practitioner-role-category", "code": "doctor"}]}]});
    let mut authors = vec![json!({"reference": u_role})];
    if let Some(d) = &p.institution.department {
        // As the JAMI example: the 診療科コード as an identifier (MHLW 診療科コード OID), type `dept`.
        let mut dept = json!({"resourceType": "Organization", "meta": {"profile": [format!("{EPD}JP_Organization_ePrescriptionData_departmentOfIssuer")]},
            "type": [{"coding": [{"system": ORGANIZATION_TYPE, "code": "dept"}]}],
            "name": d.name, "partOf": {"reference": u_org}});
        if let Some(code) = &d.code {
            dept["identifier"] = json!([{"system": "urn:oid:1.2.392.100495.20.2.51", "value": code}]);
        }
        authors.push(json!({"reference": u_dept}));
        entries.push((u_dept.clone(), dept));
    }
    if let (Some(c), Some(ins)) = (s.coverage, &p.insurance) {
        let mut cov = profiled(c.clone(), "JP_Coverage_ePrescriptionData_insurance");
        if let Some(o) = cov.as_object_mut() {
            o.remove("id");
        }
        cov["beneficiary"] = json!({"reference": u_patient});
        cov["payor"] = json!([{"reference": u_payer}]);
        // As the JAMI example: 保険者番号 under its OID, type `ins`.
        let payer = json!({"resourceType": "Organization", "meta": {"profile": [format!("{EPD}JP_Organization_ePrescriptionData_coveragePayer")]},
            "identifier": [{"system": INSURER_NUMBER[1], "value": ins.insurer_number}],
            "type": [{"coding": [{"system": ORGANIZATION_TYPE, "code": "ins"}]}]});
        section.push(json!({"reference": u_cov}));
        section.push(json!({"reference": u_payer}));
        entries.push((u_cov.clone(), cov));
        entries.push((u_payer.clone(), payer));
    }
    for (id, mr) in s.medication_requests {
        let mut m = profiled(mr.clone(), "JP_MedicationRequest_ePrescriptionData");
        if let Some(o) = m.as_object_mut() {
            o.remove("id");
        }
        m["subject"] = json!({"reference": u_patient});
        m["requester"] = json!({"reference": u_role});
        let u = uuid(&format!("MedicationRequest/{id}"));
        section.push(json!({"reference": u}));
        entries.push((u, m));
    }
    let composition = json!({
        "resourceType": "Composition",
        "meta": {"profile": [format!("{EPD}JP_Composition_ePrescriptionData")]},
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/composition-clinicaldocument-versionNumber", "valueString": "1"}],
        "identifier": {"system": "http://jpfhir.jp/fhir/Common/IdSystem/resourceInstance-identifier", "value": document_number},
        "status": "final",
        "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "57833-6", "display": "処方箋"}]},
        "category": [{"coding": [{"system": "http://jpfhir.jp/fhir/ePrescription/CodeSystem/prescription-category", "code": "01", "display": "一般処方箋"}]}],
        "subject": {"reference": u_patient},
        "encounter": {"reference": u_enc},
        "date": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "author": authors,
        "title": "処方箋",
        "custodian": {"reference": u_org},
        "event": [{"code": [{"text": "処方箋交付"}], "period": {"start": p.issue_date.format("%Y-%m-%d").to_string()}}],
        "section": [{"title": "処方情報",
            "code": {"coding": [{"system": "http://jpfhir.jp/fhir/ePrescription/CodeSystem/prescription-section", "code": "01", "display": "処方情報セクション"}]},
            "entry": section}]
    });
    let mut all = vec![
        (u_comp, composition),
        (u_patient, patient),
        (u_enc, encounter),
        (u_org, organization),
        (u_role, role),
        (u_prac, practitioner),
    ];
    all.extend(entries);
    json!({
        "resourceType": "Bundle",
        "meta": {"profile": [format!("{EPD}JP_Bundle_ePrescriptionData")]},
        "language": "ja",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{bundle_uuid}")},
        "type": "document",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "entry": all.into_iter().map(|(u, r)| json!({"fullUrl": u, "resource": r})).collect::<Vec<_>>()
    })
}
