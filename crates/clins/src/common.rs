//! What every CLINS Bundle shares: the code-system and identifier URLs, the institution, the
//! bundle identifier, the JP_Patient_eCS entry and the per-resource preparation (profile,
//! InstitutionNumber / Department extensions, `identifier:resourceIdentifier`, flags, contained
//! Encounter, references reduced to what the Bundle can resolve).

use crate::ClinsError;
use chrono::{DateTime, FixedOffset, Utc};
use regex::Regex;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

/// `Bundle.identifier.system` of every CLINS submission (JP_Bundle_CLINS, the document Bundles).
pub const BUNDLE_IDENTIFIER: &str = "http://jpfhir.jp/fhir/clins/bundle-identifier";
/// 医療機関番号 (10 digits) on Organization.identifier and in the InstitutionNumber extension.
pub const INSTITUTION_NO: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
/// The resource-instance identifier system (`identifier:resourceIdentifier`, Composition.identifier).
pub const RESOURCE_INSTANCE: &str = "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier";
/// 被保険者個人識別子.
pub const INSURANCE_MEMBER_ID: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
/// Root of the facility-local patient id system: `urn:oid:1.2.392.100495.20.3.51.1<institution>`.
pub const LOCAL_PATIENT_ID_ROOT: &str = "urn:oid:1.2.392.100495.20.3.51.1";
/// Root of the facility-local practitioner id system.
pub const LOCAL_PRACTITIONER_ID_ROOT: &str = "urn:oid:1.2.392.100495.20.3.41.1";
pub const EXT_INSTITUTION_NUMBER: &str =
    "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber";
pub const EXT_DEPARTMENT: &str = "http://jpfhir.jp/fhir/eCS/Extension/StructureDefinition/JP_eCS_Department";
pub const EXT_NAME_REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
/// `meta.tag` system of the flags LTS / UNINFORMED / UNDELIVERED.
pub const INDICATION: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication";
/// `meta.tag` system naming the resource type of a JP_Bundle_CLINS.
pub const BUNDLE_RESOURCE_TYPE: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS";
/// SS-MIX2 clinical departments (JP_eCS_Department).
pub const DEPARTMENT_CS: &str = "http://jami.jp/SS-MIX2/CodeSystem/ClinicalDepartment";
pub const SECTION_CS: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/document-section";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// JP Core Encounter, the profile of the Encounter contained in Condition / Observation (R9013).
pub const JP_ENCOUNTER: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter";

pub const PROFILE_PATIENT: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS";
pub const PROFILE_CONDITION: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Condition_eCS|1";
pub const PROFILE_ALLERGY: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_AllergyIntolerance_eCS|1";
pub const PROFILE_LAB: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_LabResult_eCS|1";
pub const PROFILE_MEDREQ: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS|1";
pub const PROFILE_ENCOUNTER: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Encounter_eCS";
pub const PROFILE_PRACTITIONER: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Practitioner_eCS";
pub const PROFILE_ORGANIZATION: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Organization_eCS";
pub const PROFILE_DOCREF: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_DocumentReference_eCS";

/// The flags a resource may carry in `meta.tag` (JP_ehrshrs_indication).
pub const FLAGS: &[(&str, &str)] = &[("LTS", "長期保存"), ("UNINFORMED", "未告知"), ("UNDELIVERED", "未提供")];

fn institution_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // R9012: 都道府県番号 (2) + 点数表番号 (1: 1 医科, 2 歯科, 3 薬局/歯科 per the pattern) + 7.
    RE.get_or_init(|| Regex::new(r"^[0-4][0-9][1-3][0-9]{7}$").unwrap_or_else(|_| unreachable!()))
}

fn bundle_id_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // R2152.
    RE.get_or_init(|| {
        Regex::new(r"^[0-4][0-9][1-3][0-9]{7}\^20[2-3][0-9]\^[A-Za-z0-9\-]{1,36}$").unwrap_or_else(|_| unreachable!())
    })
}

/// A 10-digit 医療機関番号 with the name of the institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Institution {
    number: String,
}

impl Institution {
    /// Parses a 医療機関番号 (`^[0-4][0-9][1-3][0-9]{7}$`).
    pub fn new(number: &str) -> Result<Self, ClinsError> {
        if institution_re().is_match(number) {
            Ok(Self { number: number.to_owned() })
        } else {
            Err(ClinsError::Invalid("the institution number must be 10 digits (R9012)".into()))
        }
    }

    /// The institution number an Organization carries (identifier system
    /// `insurance-medical-institution-no`).
    pub fn of_organization(org: &Value) -> Result<Self, ClinsError> {
        let number = org["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == INSTITUTION_NO)
            .and_then(|i| i["value"].as_str())
            .ok_or_else(|| ClinsError::Missing("an Organization identifier with the institution number".into()))?;
        Self::new(number)
    }

    pub fn as_str(&self) -> &str {
        &self.number
    }

    /// The InstitutionNumber extension (R9011).
    pub fn extension(&self) -> Value {
        json!({"url": EXT_INSTITUTION_NUMBER, "valueIdentifier": {"system": INSTITUTION_NO, "value": self.number}})
    }
}

/// Whether a string is a valid bundle identifier (R2152).
pub fn is_bundle_id(value: &str) -> bool {
    bundle_id_re().is_match(value)
}

/// A CLINS bundle identifier `<institution>^<year>^<serial>` (R2152): the business key of a
/// submission at the national service, kept across changes and cancellations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleId(String);

impl BundleId {
    pub fn parse(value: &str) -> Result<Self, ClinsError> {
        if is_bundle_id(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ClinsError::Invalid(
                "the bundle identifier must be <institution>^<year>^<1-36 of A-Z a-z 0-9 ->".into(),
            ))
        }
    }

    /// A fresh identifier: the year of `now` (JST) and a random 32-hex serial.
    pub fn generate(institution: &Institution, now: DateTime<Utc>) -> Self {
        let year = now.with_timezone(&jst()).format("%Y");
        Self(format!("{}^{year}^{}", institution.as_str(), uuid::Uuid::new_v4().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The institution part.
    pub fn institution(&self) -> &str {
        self.0.split('^').next().unwrap_or_default()
    }
}

/// Japan Standard Time: the offset written into every timestamp.
pub fn jst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).unwrap_or_else(|| unreachable!())
}

/// An instant with milliseconds and the JST offset (`2021-02-01T13:28:17.239+09:00`), as
/// `Bundle.timestamp` asks.
pub fn instant(now: DateTime<Utc>) -> String {
    now.with_timezone(&jst()).format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// The date part (JST) of an instant.
pub fn date(now: DateTime<Utc>) -> String {
    now.with_timezone(&jst()).format("%Y-%m-%d").to_string()
}

/// A fresh `urn:uuid:` full URL: never reused between sends, never twice in one Bundle.
pub fn new_full_url() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// What the record holds for one patient: the Patient, our Organization and the other stored
/// resources the Bundle may draw on (JSON as stored).
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub patient: Value,
    /// The tenant's own Organization (it carries the institution number).
    pub organization: Value,
    /// Condition, AllergyIntolerance, Observation, MedicationRequest, Encounter, Practitioner,
    /// DocumentReference… of the patient (and the practitioners they name).
    pub resources: Vec<Value>,
}

impl Record {
    /// The stored resource `Type/id`.
    pub fn get(&self, reference: &str) -> Option<&Value> {
        let (ty, id) = reference.split_once('/')?;
        self.resources.iter().find(|r| r["resourceType"] == ty && r["id"] == id)
    }

    /// The stored resources of one type.
    pub fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.resources.iter().filter(move |r| r["resourceType"] == ty)
    }
}

/// Whether a flag applies to a resource type (§A.4): `LTS` to every item, `UNINFORMED` (未告知)
/// and `UNDELIVERED` (未提供) to Condition (傷病名) only.
pub fn flag_applies(code: &str, resource_type: &str) -> bool {
    code == "LTS" || (is_flag(code) && resource_type == "Condition")
}

/// Flags from a resource's `meta.tag` plus the requested ones, as `meta.tag` codings — only
/// those that apply to the resource's type ([`flag_applies`]).
pub fn flag_tags(resource: &Value, requested: &[String]) -> Vec<Value> {
    let resource_type = resource["resourceType"].as_str().unwrap_or_default();
    let mut codes: Vec<String> = resource["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["system"] == INDICATION)
        .filter_map(|t| t["code"].as_str().map(str::to_owned))
        .collect();
    for r in requested {
        if !codes.contains(r) {
            codes.push(r.clone());
        }
    }
    FLAGS
        .iter()
        .filter(|(code, _)| codes.iter().any(|c| c == code) && flag_applies(code, resource_type))
        .map(|(code, display)| json!({"system": INDICATION, "code": code, "display": display}))
        .collect()
}

/// Whether a stored resource may be sent at all: never one entered in error, refuted, cancelled
/// or still a draft (the national service would show it to other institutions as a fact).
/// Observations: only reported results (`final`, `amended`, `corrected`).
pub fn is_sendable(r: &Value) -> bool {
    let codes = |v: &Value| -> Vec<String> {
        v["coding"].as_array().into_iter().flatten().filter_map(|c| c["code"].as_str().map(str::to_owned)).collect()
    };
    let verification = codes(&r["verificationStatus"]);
    if verification.iter().any(|c| c == "entered-in-error" || c == "refuted") {
        return false;
    }
    let status = r["status"].as_str();
    match r["resourceType"].as_str() {
        Some("Observation") => matches!(status, Some("final" | "amended" | "corrected")),
        Some("MedicationRequest") => !matches!(status, Some("entered-in-error" | "cancelled" | "draft")),
        _ => status != Some("entered-in-error"),
    }
}

/// A text as CLINS wants `display` and `text` (§A.7): half-width katakana made full-width (with
/// its voiced marks composed), the ideographic space U+3000 made a half-width space, control
/// characters removed; with `ascii`, full-width ASCII letters, digits and symbols made
/// half-width too (the lab rule "ASCII must be half-width").
pub fn clins_text(text: &str, ascii: bool) -> String {
    // U+FF66..=U+FF9D in order.
    const KANA: &str = "ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン";
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let mapped = match c {
            '\u{FF61}' => '。',
            '\u{FF62}' => '「',
            '\u{FF63}' => '」',
            '\u{FF64}' => '、',
            '\u{FF65}' => '・',
            '\u{FF66}'..='\u{FF9D}' => KANA.chars().nth(c as usize - 0xFF66).unwrap_or(c),
            '\u{FF9E}' | '\u{FF9F}' => {
                let semi = c == '\u{FF9F}';
                if let Some(composed) = out.chars().last().and_then(|prev| voiced(prev, semi)) {
                    out.pop();
                    out.push(composed);
                    continue;
                }
                if semi { '゜' } else { '゛' }
            }
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' if ascii => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            c if c.is_control() => continue,
            c => c,
        };
        out.push(mapped);
    }
    out
}

/// The voiced (゛) or semi-voiced (゜) form of a full-width katakana, when it has one.
fn voiced(c: char, semi: bool) -> Option<char> {
    let n = c as u32;
    let ka_to = [
        0x30AB, 0x30AD, 0x30AF, 0x30B1, 0x30B3, 0x30B5, 0x30B7, 0x30B9, 0x30BB, 0x30BD, 0x30BF, 0x30C1, 0x30C4, 0x30C6,
        0x30C8,
    ];
    let ha_ho = [0x30CF, 0x30D2, 0x30D5, 0x30D8, 0x30DB];
    let code = match (semi, n) {
        (false, 0x30A6) => 0x30F4,
        (false, n) if ka_to.contains(&n) || ha_ho.contains(&n) => n + 1,
        (true, n) if ha_ho.contains(&n) => n + 2,
        _ => return None,
    };
    char::from_u32(code)
}

/// Applies [`clins_text`] to a CodeableConcept's `text` and every coding's `display`.
pub fn clins_concept(concept: &mut Value, ascii: bool) {
    if let Some(t) = concept["text"].as_str() {
        concept["text"] = Value::String(clins_text(t, ascii));
    }
    for c in concept["coding"].as_array_mut().into_iter().flatten() {
        if let Some(d) = c["display"].as_str() {
            c["display"] = Value::String(clins_text(d, ascii));
        }
    }
}

/// Whether a flag name is one of LTS / UNINFORMED / UNDELIVERED.
pub fn is_flag(code: &str) -> bool {
    FLAGS.iter().any(|(c, _)| *c == code)
}

/// The resource-instance identifier value of a stored resource: its own
/// `resourceInstance-identifier` when it has one, else `<Type>-<id>` (stable across sends,
/// which is what CLINS keys cancellations on).
pub fn resource_identifier(resource: &Value) -> String {
    resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == RESOURCE_INSTANCE)
        .and_then(|i| i["value"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let ty = resource["resourceType"].as_str().unwrap_or("Resource");
            let id = resource["id"].as_str().unwrap_or_default();
            format!("{ty}-{id}")
        })
}

/// The stored resource prepared as a Bundle entry resource: no server id, narrative, version or
/// source; `meta.profile` and `meta.lastUpdated` as the profile asks; the flags; the
/// InstitutionNumber extension first; one `identifier:resourceIdentifier`.
pub fn prepare(
    stored: &Value,
    profile: &str,
    institution: &Institution,
    flags: &[String],
    now: DateTime<Utc>,
) -> Value {
    let mut r = stored.clone();
    let Some(obj) = r.as_object_mut() else { return r };
    obj.remove("id");
    obj.remove("text");
    let last_updated = stored["meta"]["lastUpdated"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(now);
    let mut meta = Map::new();
    meta.insert("lastUpdated".into(), Value::String(instant(last_updated)));
    meta.insert("profile".into(), json!([profile]));
    let tags = flag_tags(stored, flags);
    if !tags.is_empty() {
        meta.insert("tag".into(), Value::Array(tags));
    }
    obj.insert("meta".into(), Value::Object(meta));
    let mut extensions: Vec<Value> = vec![institution.extension()];
    extensions.extend(
        stored["extension"].as_array().into_iter().flatten().filter(|e| e["url"] != EXT_INSTITUTION_NUMBER).cloned(),
    );
    obj.insert("extension".into(), Value::Array(extensions));
    let mut identifiers: Vec<Value> = vec![json!({"system": RESOURCE_INSTANCE, "value": resource_identifier(stored)})];
    identifiers.extend(
        stored["identifier"].as_array().into_iter().flatten().filter(|i| i["system"] != RESOURCE_INSTANCE).cloned(),
    );
    obj.insert("identifier".into(), Value::Array(identifiers));
    strip_references(&mut r);
    r
}

/// Sets the Department extension (JP_eCS_Department) unless the resource has one.
pub fn ensure_department(resource: &mut Value, department: &Value) {
    let has = resource["extension"].as_array().is_some_and(|a| a.iter().any(|e| e["url"] == EXT_DEPARTMENT));
    if has {
        return;
    }
    if let Some(list) = resource.get_mut("extension").and_then(Value::as_array_mut) {
        list.push(json!({"url": EXT_DEPARTMENT, "valueCodeableConcept": department}));
    }
}

/// The default department (SS-MIX2 `01` 内科) when neither the record nor the request names one.
pub fn default_department() -> Value {
    json!({"coding": [{"system": DEPARTMENT_CS, "code": "01", "display": "内科"}]})
}

/// The department of a stored resource, if it carries JP_eCS_Department.
pub fn department_of(resource: &Value) -> Option<Value> {
    resource["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == EXT_DEPARTMENT)
        .map(|e| e["valueCodeableConcept"].clone())
}

/// Removes the references the Bundle cannot resolve: literal `Type/id` references to the
/// server (a display-only reference keeps its display), and `fullUrl`-less references. Local
/// (`#…`) and `urn:` references stay.
pub fn strip_references(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut drop = Vec::new();
            for (k, child) in map.iter_mut() {
                if reduce_reference(child) {
                    drop.push(k.clone());
                } else {
                    strip_references(child);
                }
            }
            for k in drop {
                map.remove(&k);
            }
        }
        Value::Array(items) => {
            items.retain_mut(|child| {
                if reduce_reference(child) {
                    false
                } else {
                    strip_references(child);
                    true
                }
            });
        }
        _ => {}
    }
}

/// For a Reference object pointing at the server: turns it into a display-only reference,
/// or says it must go (true) when it has no display.
fn reduce_reference(v: &mut Value) -> bool {
    let Some(map) = v.as_object_mut() else { return false };
    let Some(reference) = map.get("reference").and_then(Value::as_str) else { return false };
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return false;
    }
    map.remove("reference");
    !map.contains_key("display")
}

/// A contained JP_Encounter (R9013C / R9013O) from the stored Encounter the resource names,
/// or a finished outpatient encounter when it names none.
pub fn contained_encounter(record: &Record, stored: &Value) -> Value {
    let enc = stored["encounter"]["reference"].as_str().and_then(|r| record.get(r));
    let class = enc
        .and_then(|e| e["class"]["code"].as_str())
        .map(|c| match c {
            "IMP" => ("IMP", "入院"),
            "EMER" => ("EMER", "救急"),
            "HH" => ("HH", "在宅"),
            _ => ("AMB", "外来"),
        })
        .unwrap_or(("AMB", "外来"));
    let mut e = json!({
        "resourceType": "Encounter", "id": "encounter",
        "meta": {"profile": [JP_ENCOUNTER]},
        "status": "finished",
        "class": {"system": ACT_CODE, "code": class.0, "display": class.1},
    });
    if let Some(start) = enc.and_then(|e| e["period"]["start"].as_str()) {
        e["period"] = json!({"start": start});
    }
    e
}

/// The Patient entry (JP_Patient_eCS): facility-local id under the institution's OID, the
/// insurance member id, kanji and kana names (half-width space between family and given),
/// gender, birth date, one address with its text.
pub fn patient_ecs(
    record: &Record,
    institution: &Institution,
    member_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Value, ClinsError> {
    let p = &record.patient;
    let identifiers: Vec<&Value> = p["identifier"].as_array().into_iter().flatten().collect();
    let local = identifiers
        .iter()
        .find(|i| i["system"].as_str().is_some_and(|s| s.starts_with(LOCAL_PATIENT_ID_ROOT)))
        .or_else(|| identifiers.iter().find(|i| i["system"] != INSURANCE_MEMBER_ID && i["value"].is_string()))
        .and_then(|i| i["value"].as_str())
        .or_else(|| p["id"].as_str())
        .ok_or_else(|| ClinsError::Missing("a patient identifier".into()))?;
    let member = member_id
        .or_else(|| identifiers.iter().find(|i| i["system"] == INSURANCE_MEMBER_ID).and_then(|i| i["value"].as_str()))
        .ok_or_else(|| ClinsError::Missing("the patient's insurance member id (JP_Insurance_memberID)".into()))?;
    let mut names = Vec::new();
    for n in p["name"].as_array().into_iter().flatten() {
        // R1112/R1113: no U+3000; kana full-width (a name typed in half-width kana is made so).
        let family = clins_text(n["family"].as_str().unwrap_or_default(), false).trim().to_owned();
        let given: Vec<String> = n["given"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|g| clins_text(g, false).trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect();
        if family.is_empty() || given.is_empty() {
            continue;
        }
        let stated = n["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == EXT_NAME_REPRESENTATION)
            .and_then(|e| e["valueCode"].as_str());
        let all_kana =
            format!("{family}{}", given.join("")).chars().all(|c| ('\u{30A0}'..='\u{30FF}').contains(&c) || c == ' ');
        let representation = match stated {
            Some("IDE" | "SYL") => stated.unwrap_or("IDE"),
            _ if all_kana => "SYL",
            _ => "IDE",
        };
        if names.iter().any(|v: &Value| v["extension"][0]["valueCode"] == representation) {
            continue;
        }
        names.push(json!({
            "extension": [{"url": EXT_NAME_REPRESENTATION, "valueCode": representation}],
            "use": "official",
            "text": format!("{family} {}", given.join(" ")),
            "family": family,
            "given": given,
        }));
    }
    if names.is_empty() {
        return Err(ClinsError::Missing("a patient name (family and given)".into()));
    }
    let gender = p["gender"].as_str().ok_or_else(|| ClinsError::Missing("the patient's gender".into()))?;
    let birth = p["birthDate"].as_str().ok_or_else(|| ClinsError::Missing("the patient's birth date".into()))?;
    let address = p["address"]
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| ClinsError::Missing("the patient's address".into()))?;
    let text = address["text"].as_str().map(str::to_owned).unwrap_or_else(|| {
        let mut parts: Vec<&str> = Vec::new();
        for k in ["state", "city"] {
            if let Some(s) = address[k].as_str() {
                parts.push(s);
            }
        }
        parts.extend(address["line"].as_array().into_iter().flatten().filter_map(Value::as_str));
        parts.concat()
    });
    if text.is_empty() {
        return Err(ClinsError::Missing("the patient's address text".into()));
    }
    let mut addr = json!({"text": text});
    if let Some(pc) = address["postalCode"].as_str() {
        addr["postalCode"] = json!(pc);
    }
    Ok(json!({
        "resourceType": "Patient",
        "meta": {"lastUpdated": instant(now), "profile": [PROFILE_PATIENT]},
        "identifier": [
            {"system": format!("{LOCAL_PATIENT_ID_ROOT}{}", institution.as_str()), "value": local},
            {"system": INSURANCE_MEMBER_ID, "value": member},
        ],
        "name": names,
        "gender": gender,
        "birthDate": birth,
        "address": [addr],
    }))
}

/// An Organization entry (JP_Organization_eCS) for an institution.
pub fn organization_ecs(org: &Value, institution: &Institution, department: Option<&Value>) -> Value {
    let name = org["name"].as_str().unwrap_or("医療機関");
    let mut o = json!({
        "resourceType": "Organization",
        "meta": {"profile": [PROFILE_ORGANIZATION]},
        "identifier": [{"system": INSTITUTION_NO, "value": institution.as_str()}],
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
        "name": name,
    });
    if let Some(d) = department {
        o["extension"] = json!([{"url": EXT_DEPARTMENT, "valueCodeableConcept": d}]);
    }
    if let Some(a) = org["address"].as_array().and_then(|a| a.first())
        && let Some(text) = a["text"].as_str()
    {
        o["address"] = json!([{"text": text}]);
    }
    if let Some(t) = org["telecom"].as_array() {
        o["telecom"] = Value::Array(t.iter().filter(|t| t["use"] != "home").cloned().collect());
    }
    o
}

/// A Practitioner entry (JP_Practitioner_eCS) from a stored Practitioner: names (kanji/kana)
/// and the local practitioner id.
pub fn practitioner_ecs(stored: &Value, institution: &Institution) -> Value {
    let mut names = Vec::new();
    for n in stored["name"].as_array().into_iter().flatten() {
        let family = n["family"].as_str().unwrap_or_default().replace('\u{3000}', " ");
        let given: Vec<String> =
            n["given"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        if family.is_empty() {
            continue;
        }
        let mut name = json!({"use": "official", "text": format!("{family} {}", given.join(" ")).trim().to_owned(), "family": family});
        if !given.is_empty() {
            name["given"] = json!(given);
        }
        if let Some(ext) = n["extension"].as_array() {
            name["extension"] = json!(ext);
        }
        names.push(name);
    }
    let mut p = json!({
        "resourceType": "Practitioner",
        "meta": {"profile": [PROFILE_PRACTITIONER]},
        "name": names,
    });
    if let Some(id) = stored["id"].as_str() {
        p["identifier"] =
            json!([{"system": format!("{LOCAL_PRACTITIONER_ID_ROOT}{}", institution.as_str()), "value": id}]);
    }
    p
}

/// One Bundle entry.
pub fn entry(full_url: &str, resource: Value) -> Value {
    json!({"fullUrl": full_url, "resource": resource})
}

/// Escapes text for an XHTML narrative `div`.
pub fn xhtml(text: &str) -> String {
    let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{escaped}</div>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_identifiers_follow_r2152() {
        assert!(is_bundle_id("1318814790^2024^0123-IDa-203949583949"));
        assert!(!is_bundle_id("1318814790-2024-0123"));
        assert!(!is_bundle_id("1348814790^2024^x"));
        assert!(!is_bundle_id("1318814790^2024^"));
        let inst = Institution::new("1318814790").unwrap();
        let id = BundleId::generate(&inst, chrono::DateTime::from_timestamp(1_730_000_000, 0).unwrap());
        assert!(is_bundle_id(id.as_str()), "{}", id.as_str());
        assert_eq!(id.institution(), "1318814790");
    }

    #[test]
    fn server_references_are_reduced() {
        let mut v = json!({"a": {"reference": "Practitioner/1"}, "b": {"reference": "Practitioner/2", "display": "x"},
            "c": [{"reference": "Specimen/1"}, {"reference": "#s"}], "d": {"reference": "urn:uuid:1"}});
        strip_references(&mut v);
        assert_eq!(v, json!({"b": {"display": "x"}, "c": [{"reference": "#s"}], "d": {"reference": "urn:uuid:1"}}));
    }

    #[test]
    fn timestamps_carry_milliseconds_and_jst() {
        let t = chrono::DateTime::from_timestamp_millis(1_612_153_697_239).unwrap();
        assert_eq!(instant(t), "2021-02-01T13:28:17.239+09:00");
    }
}
