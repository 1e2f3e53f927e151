//! Unit tests: the CSV record by record, the checker's refusals, XAdES, the FHIR mapping and
//! document, and the simulator's checks.

use crate::csv;
use crate::fhir::{self, Sources};
use crate::model::{Department, DrugCodeType};
use crate::sign::{self, SignatureFault, Signer, SoftwareSigner};
use crate::sim::{self, History, SimOptions};
use crate::xml::{self, Header, Insured, IssueType, Request};
use chrono::NaiveDate;
use serde_json::{Value, json};

const IDE: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

fn name(kind: &str, family: &str, given: &str) -> Value {
    json!({"extension": [{"url": IDE, "valueCode": kind}], "use": "official", "family": family, "given": [given]})
}

pub(crate) fn patient() -> Value {
    json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "00000010"}],
        "name": [name("IDE", "東京", "太郎"), name("SYL", "トウキョウ", "タロウ")],
        "gender": "male", "birthDate": "1920-02-11"})
}

pub(crate) fn coverage() -> Value {
    json!({"resourceType": "Coverage", "status": "active",
        "extension": [
            {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonSymbol", "valueString": "12345"},
            {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonNumber", "valueString": "67890"},
            {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Coverage_InsuredPersonSubNumber", "valueString": "01"}],
        "type": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.61", "code": "1"}]},
        "beneficiary": {"reference": "Patient/p1"},
        "relationship": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.62", "code": "1"}]},
        "payor": [{"identifier": {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber", "value": "06139999"}}],
        "costToBeneficiary": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-copay-type", "code": "copaypct"}]},
            "valueQuantity": {"value": 30, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}]})
}

pub(crate) fn organization() -> Value {
    json!({"resourceType": "Organization",
        "identifier": [{"system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": "1311234567"}],
        "name": "第一病院", "telecom": [{"system": "phone", "value": "03-1234-5678"}],
        "address": [{"text": "東京都千代田区千代田９－９－９", "postalCode": "100-0001"}]})
}

pub(crate) fn practitioner() -> Value {
    json!({"resourceType": "Practitioner",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.41.11311234567", "value": "123"}],
        "name": [name("IDE", "神奈川", "花子"), name("SYL", "カナガワ", "ハナコ")]})
}

/// A MedicationRequest of RP `rp`, index `idx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn medication_request(
    rp: u32,
    idx: u32,
    system: &str,
    code: &str,
    text: &str,
    usage: (&str, &str, u32),
    dose: f64,
    days: u32,
) -> Value {
    json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "identifier": [
            {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber", "value": rp.to_string()},
            {"system": "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex", "value": idx.to_string()}],
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": text}], "text": text},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-04-01T09:00:00+09:00",
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": usage.2, "period": 1, "periodUnit": "d"},
                "code": {"coding": [{"system": fhir::USAGE[0], "code": usage.0, "display": usage.1}]}},
            "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "錠", "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code", "code": "TAB"}}]}],
        "dispenseRequest": {"expectedSupplyDuration": {"value": days, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"}}})
}

pub(crate) const TID: (&str, &str, u32) = ("1013044400000000", "１日３回朝昼夕食後　服用", 3);
pub(crate) const HS: (&str, &str, u32) = ("1050000000000000", "１日１回就寝前　服用", 1);

/// The two-RP prescription: RP1 loxoprofen (一般名) + rebamipide (YJ) ×3/day 7 days, RP2
/// magnesium oxide (receipt code) at bedtime 14 days.
pub(crate) fn requests() -> Vec<(String, Value)> {
    let mut lox = medication_request(
        1,
        1,
        fhir::GENERAL_NAME,
        "1149019F1ZZZ",
        "【般】ロキソプロフェンＮａ錠６０ｍｇ",
        TID,
        1.0,
        7,
    );
    lox["note"] = json!([{"text": "胃部不快感時は中止"}]);
    vec![
        ("mr-1".into(), lox),
        ("mr-2".into(), medication_request(1, 2, fhir::YJ, "2329021F1021", "レバミピド錠１００ｍｇ", TID, 1.0, 7)),
        (
            "mr-3".into(),
            medication_request(2, 1, fhir::RECEIPT, "620004553", "酸化マグネシウム錠３３０ｍｇ", HS, 2.0, 14),
        ),
    ]
}

fn department() -> Department {
    Department { code: Some("01".into()), name: "内科".into() }
}

fn issue_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 4, 1).unwrap()
}

/// The resources of the two-RP prescription, owned; [`Fixture::sources`] borrows them.
struct Fixture {
    patient: Value,
    organization: Value,
    practitioner: Value,
    coverage: Value,
    requests: Vec<(String, Value)>,
    department: Department,
}

impl Fixture {
    fn new() -> Self {
        Self {
            patient: patient(),
            organization: organization(),
            practitioner: practitioner(),
            coverage: coverage(),
            requests: requests(),
            department: department(),
        }
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            patient: &self.patient,
            medication_requests: &self.requests,
            coverage: Some(&self.coverage),
            payor: None,
            public_coverages: &[],
            organization: &self.organization,
            practitioner: &self.practitioner,
            department: Some(&self.department),
            issue_date: issue_date(),
        }
    }
}

fn build_csv() -> (crate::model::Prescription, String) {
    let f = Fixture::new();
    let s = f.sources();
    let (model, map) = fhir::prescription(&s).unwrap();
    assert_eq!(map, vec![(1, 1, "mr-1".into()), (1, 2, "mr-2".into()), (2, 1, "mr-3".into())]);
    let text = csv::build(&model).unwrap();
    (model, text)
}

#[test]
fn csv_is_written_record_by_record() {
    let (_, text) = build_csv();
    assert!(!text.contains('\r'), "LF only");
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        "JAHIS8",
        "1,1,1234567,13,第一病院",
        "2,100-0001,東京都千代田区千代田９－９－９",
        "3,03-1234-5678,,",
        "4,1,01,内科",
        "5,123,カナガワ ハナコ,神奈川\u{3000}花子",
        "11,00000010,東京\u{3000}太郎,トウキョウ タロウ",
        "12,1",
        "13,19200211",
        "21,1",
        "22,06139999",
        "23,12345,67890,1,01",
        "24,30,70",
        "51,20260401",
        "101,1,1,,7",
        "111,1,3,1013044400000000,１日３回朝昼夕食後　服用,3",
        "201,1,1,1,6,1149019F1ZZZ,【般】ロキソプロフェンＮａ錠６０ｍｇ,1,1,錠",
        "201,1,2,1,4,2329021F1021,レバミピド錠１００ｍｇ,1,1,錠",
        "281,1,1,1,胃部不快感時は中止",
        "101,2,1,,14",
        "111,2,3,1050000000000000,１日１回就寝前　服用,1",
        "201,2,1,1,2,620004553,酸化マグネシウム錠３３０ｍｇ,2,1,錠",
    ];
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (n, (got, want)) in lines.iter().zip(expected).enumerate() {
        assert_eq!(*got, want, "line {}", n + 1);
    }
    // Field by field, through the checker's view: every record's number and field count.
    let records = csv::check(&text).unwrap();
    let numbers: Vec<u16> = records.iter().map(|r| r.number).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 11, 12, 13, 21, 22, 23, 24, 51, 101, 111, 201, 201, 281, 101, 111, 201]);
    for r in &records {
        assert_eq!(r.fields.len(), csv::layout(r.number).unwrap().fields.len(), "record {}", r.number);
    }
}

#[test]
fn csv_round_trips_through_the_parser() {
    let (model, text) = build_csv();
    let parsed = csv::parse(&text).unwrap();
    assert_eq!(parsed, model);
    assert_eq!(parsed.insurance.unwrap().member_key(), "06139999:12345:67890:01");
}

fn codes(text: &str) -> Vec<(&'static str, Option<u16>, Option<&'static str>)> {
    csv::check(text).unwrap_err().into_iter().map(|i| (i.code, i.record, i.field)).collect()
}

#[test]
fn crlf_is_refused_with_epsb0052e() {
    let (_, text) = build_csv();
    let crlf = text.replace('\n', "\r\n");
    let issues = csv::check(&crlf).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].code, "EPSB0052E");
    assert_eq!(issues[0].line, 1);
}

#[test]
fn missing_mandatory_records_are_named() {
    let (_, text) = build_csv();
    let without = |n: &str| text.lines().filter(|l| !l.starts_with(n)).map(|l| format!("{l}\n")).collect::<String>();
    assert!(codes(&without("1,")).contains(&("EPSB0056E", Some(1), None)));
    assert!(codes(&without("11,")).contains(&("EPSB0056E", Some(11), None)));
}

#[test]
fn bad_codes_are_refused_with_their_field() {
    let (_, text) = build_csv();
    let bad_usage = text.replace("1013044400000000", "10130444000000A0");
    assert_eq!(codes(&bad_usage), vec![("EPSB0058E", Some(111), Some("用法コード"))]);
    let short_usage = text.replace("1013044400000000", "101304440000000");
    assert_eq!(codes(&short_usage), vec![("EPSB0058E", Some(111), Some("用法コード"))]);
    let bad_receipt = text.replace("620004553", "62000455X");
    assert_eq!(codes(&bad_receipt), vec![("EPSB0058E", Some(201), Some("薬品コード"))]);
    let bad_date = text.replace("13,19200211", "13,19200231");
    assert_eq!(codes(&bad_date), vec![("EPSB0058E", Some(13), Some("生年月日"))]);
    let no_name = text.replace("11,00000010,東京\u{3000}太郎,", "11,00000010,,");
    assert_eq!(codes(&no_name), vec![("EPSB0057E", Some(11), Some("患者漢字氏名"))]);
    let unknown = text.replace("12,1\n", "12,1\n99,x\n");
    assert_eq!(codes(&unknown), vec![("EPSB0054E", None, None)]);
}

#[test]
fn rp_order_and_grouping_are_checked() {
    let (_, text) = build_csv();
    // RP 2 before RP 1.
    let lines: Vec<&str> = text.lines().collect();
    let (head, rps) = lines.split_at(14);
    let (rp1, rp2) = rps.split_at(5);
    let swapped: String = head.iter().chain(rp2).chain(rp1).map(|l| format!("{l}\n")).collect();
    assert!(codes(&swapped).iter().any(|c| c.0 == "EPSB0055E" && c.1 == Some(101)));
    // A drug record of RP 1 inside RP 2's group.
    let stray = text.replace("201,2,1,1,2,", "201,1,3,1,2,");
    assert!(codes(&stray).iter().any(|c| c.0 == "EPSB0055E" && c.1 == Some(201)));
    // 用法 after the drugs of its RP.
    let late = text.replace("111,2,3,1050000000000000,１日１回就寝前　服用,1\n", "")
        + "111,2,3,1050000000000000,１日１回就寝前　服用,1\n";
    assert!(codes(&late).iter().any(|c| c.0 == "EPSB0055E" && c.1 == Some(111)));
    // A header record after the RPs.
    let header_late = text.replace("51,20260401\n", "") + "51,20260401\n";
    assert!(codes(&header_late).iter().any(|c| c.0 == "EPSB0055E" && c.1 == Some(51)));
    // An RP without a drug.
    let empty = text.replace("201,2,1,1,2,620004553,酸化マグネシウム錠３３０ｍｇ,2,1,錠\n", "");
    assert!(codes(&empty).contains(&("EPSB0059E", Some(201), None)));
}

#[test]
fn missing_fhir_elements_are_named() {
    let (mut p, o, pr) = (patient(), organization(), practitioner());
    p["name"] = json!([name("IDE", "東京", "太郎")]);
    p.as_object_mut().unwrap().remove("gender");
    let mut mrs = requests();
    mrs[2].1["dosageInstruction"][0]["timing"]["code"]["coding"][0]["system"] =
        json!("http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_MedicationUsage_Uncoded_CS");
    let s = Sources {
        patient: &p,
        medication_requests: &mrs,
        coverage: None,
        payor: None,
        public_coverages: &[],
        organization: &o,
        practitioner: &pr,
        department: None,
        issue_date: issue_date(),
    };
    let crate::EpsError::Incomplete(missing) = fhir::prescription(&s).unwrap_err() else { panic!() };
    assert!(missing.iter().any(|m| m.contains("Patient.name (カナ")), "{missing:?}");
    assert!(missing.iter().any(|m| m.contains("Patient.gender")));
    assert!(missing.iter().any(|m| m.contains("MedicationRequest/mr-3.dosageInstruction.timing.code")));
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-04-01T00:30:00Z").unwrap().to_utc()
}

#[test]
fn xades_signs_and_verifies() {
    let (_, text) = build_csv();
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let doc = sign::signed_document(&text, &signer, now()).unwrap();
    let trusted = vec![signer.certificate().to_vec()];
    let v = sign::verify_document(&doc, &trusted, true).unwrap();
    assert_eq!(v.csv, text);
    assert_eq!(v.signer.as_deref(), Some("O=EHR reference implementation (test signer),CN=テスト医師"));
    assert_eq!(v.signing_time.as_deref(), Some("2026-04-01T00:30:00Z"));
    // The key and certificate survive PEM.
    let again = SoftwareSigner::from_pem(&signer.key_pem().unwrap(), &signer.cert_pem()).unwrap();
    assert_eq!(again.certificate(), signer.certificate());
    let other = SoftwareSigner::generate("別人", now()).unwrap();
    assert!(SoftwareSigner::from_pem(&other.key_pem().unwrap(), &signer.cert_pem()).is_err());
}

#[test]
fn tampering_and_unknown_signers_are_refused() {
    let (_, text) = build_csv();
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let doc = sign::signed_document(&text, &signer, now()).unwrap();
    let trusted = vec![signer.certificate().to_vec()];
    // A changed CSV (another drug amount) inside the signed data.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let tampered_csv = text.replace(",2,1,錠", ",9,1,錠");
    let tampered = doc.replace(&b64.encode(text.as_bytes()), &b64.encode(tampered_csv.as_bytes()));
    assert_ne!(tampered, doc);
    assert_eq!(sign::verify_document(&tampered, &trusted, true).unwrap_err(), SignatureFault::DigestMismatch);
    // A signer nobody trusts.
    let stranger = SoftwareSigner::generate("知らない医師", now()).unwrap();
    let foreign = sign::signed_document(&text, &stranger, now()).unwrap();
    assert_eq!(sign::verify_document(&foreign, &trusted, true).unwrap_err(), SignatureFault::UntrustedSigner);
    // Someone else's certificate swapped into KeyInfo (digests recomputed would need the key).
    let cert_b64 = b64.encode(signer.certificate());
    let swapped = foreign.replace(&b64.encode(stranger.certificate()), &cert_b64);
    assert!(sign::verify_document(&swapped, &trusted, true).is_err());
    // The signing time changed after signing.
    let retimed = doc.replace("2026-04-01T00:30:00Z", "2026-04-02T00:30:00Z");
    assert_eq!(sign::verify_document(&retimed, &trusted, true).unwrap_err(), SignatureFault::DigestMismatch);
    // Unsigned where a signature is required.
    assert_eq!(
        sign::verify_document(&sign::unsigned_document(&text), &trusted, true).unwrap_err(),
        SignatureFault::Missing
    );
    assert!(sign::verify_document(&sign::unsigned_document(&text), &trusted, false).is_ok());
}

#[test]
fn document_has_the_jami_shape() {
    let f = Fixture::new();
    let s = f.sources();
    let (model, _) = fhir::prescription(&s).unwrap();
    let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    let doc = fhir::document(
        &s,
        &model,
        "0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "1311234567-2026-00000001",
        now().with_timezone(&jst),
    );
    assert_eq!(doc["type"], "document");
    assert_eq!(
        doc["meta"]["profile"][0],
        "http://jpfhir.jp/fhir/ePrescription/StructureDefinition/JP_Bundle_ePrescriptionData"
    );
    let comp = &doc["entry"][0]["resource"];
    assert_eq!(comp["resourceType"], "Composition");
    assert_eq!(comp["type"]["coding"][0]["code"], "57833-6");
    assert_eq!(comp["category"][0]["coding"][0]["code"], "01");
    assert_eq!(comp["section"][0]["code"]["coding"][0]["code"], "01");
    let urls: Vec<&str> = doc["entry"].as_array().unwrap().iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
    for r in comp["section"][0]["entry"].as_array().unwrap() {
        assert!(urls.contains(&r["reference"].as_str().unwrap()), "section entries resolve in the bundle");
    }
    let types: Vec<&str> =
        doc["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    for t in
        ["Patient", "Encounter", "Coverage", "Organization", "PractitionerRole", "Practitioner", "MedicationRequest"]
    {
        assert!(types.contains(&t), "{t}");
    }
    assert_eq!(types.iter().filter(|t| **t == "MedicationRequest").count(), 3);
}

// --- the simulator ---

fn header(kind: &str, file_id: &str) -> Header {
    Header {
        message_type: kind.into(),
        institution: "1311234567".into(),
        file_id: file_id.into(),
        created: "20260401093000".into(),
    }
}

fn insured() -> Insured {
    Insured { insurer_number: "06139999".into(), symbol: "12345".into(), number: "67890".into(), branch: "01".into() }
}

async fn sim_with(signer: &SoftwareSigner) -> sim::SimHandle {
    sim::start(SimOptions { trusted_certificates: vec![signer.certificate().to_vec()], ..SimOptions::default() })
        .await
        .unwrap()
}

fn send(sim: &sim::SimHandle, r: &Request) -> xml::Response {
    let body = xml::request_xml(r);
    xml::parse_response(&sim::process(&sim.state, &r.header().message_type, &body)).unwrap()
}

#[tokio::test]
async fn duplicate_check_finds_a_planted_duplicate() {
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let sim = sim_with(&signer).await;
    let (_, text) = build_csv();
    let check = |id: &str| Request::DuplicateCheck {
        header: header(xml::DUPLICATE_CHECK, id),
        insured: insured(),
        csv: text.clone(),
    };
    let clean = send(&sim, &check("c-1"));
    assert!(clean.ok(), "{clean:?}");
    assert!(clean.findings.is_empty());
    // Another clinic dispensed loxoprofen (another product, same ingredient) five days ago for 14 days.
    sim.plant(History {
        member_key: "06139999:12345:67890:01".into(),
        source: "dispensing".into(),
        institution: "1319999999".into(),
        code_type: DrugCodeType::Yj,
        code: "1149019F1560".into(),
        name: "ロキソニン錠６０ｍｇ".into(),
        date: NaiveDate::from_ymd_opt(2026, 3, 27).unwrap(),
        days: 14,
    });
    // … and one long over: not active.
    sim.plant(History {
        member_key: "06139999:12345:67890:01".into(),
        source: "prescription".into(),
        institution: "1319999999".into(),
        code_type: DrugCodeType::Yj,
        code: "2329021F1021".into(),
        name: "レバミピド錠１００ｍｇ".into(),
        date: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        days: 14,
    });
    let found = send(&sim, &check("c-2"));
    assert!(found.ok());
    assert_eq!(found.findings.len(), 1, "{:?}", found.findings);
    let f = &found.findings[0];
    assert_eq!((f.kind.as_str(), f.rp_number, f.drug_index), ("duplicate", 1, 1));
    assert_eq!(f.other_drug_code, "1149019F1560");
    assert!(f.other_institution);
    // Another patient's history does not count.
    let other = Request::DuplicateCheck {
        header: header(xml::DUPLICATE_CHECK, "c-3"),
        insured: Insured { number: "11111".into(), ..insured() },
        csv: text.replace("23,12345,67890,1,01", "23,12345,11111,1,01"),
    };
    assert!(send(&sim, &other).findings.is_empty());
}

#[tokio::test]
async fn contraindicated_pairs_are_found() {
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let sim = sim_with(&signer).await;
    let (_, text) = build_csv();
    sim.plant(History {
        member_key: "06139999:12345:67890:01".into(),
        source: "prescription".into(),
        institution: "1319999999".into(),
        code_type: DrugCodeType::Yj,
        code: "6290002X1020".into(),
        name: "ミコナゾールゲル".into(),
        date: NaiveDate::from_ymd_opt(2026, 3, 30).unwrap(),
        days: 7,
    });
    let warfarin = text.replace("2329021F1021,レバミピド錠１００ｍｇ", "3332001F1012,ワルファリンＫ錠１ｍｇ");
    let r = send(
        &sim,
        &Request::DuplicateCheck { header: header(xml::DUPLICATE_CHECK, "k-1"), insured: insured(), csv: warfarin },
    );
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].kind, "contraindication");
}

#[tokio::test]
async fn registration_is_idempotent_and_checked() {
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let sim = sim_with(&signer).await;
    let (_, text) = build_csv();
    let doc = sign::signed_document(&text, &signer, now()).unwrap();
    let register = |id: &str, document: String, issue_type| Request::Register {
        header: header(xml::REGISTER, id),
        issue_type,
        insured: insured(),
        document,
    };
    let first = send(&sim, &register("r-1", doc.clone(), IssueType::Electronic));
    assert!(first.ok(), "{first:?}");
    let id = first.prescription_id.clone().unwrap();
    assert_eq!(first.exchange_number.as_ref().unwrap().len(), 16);
    // The same request again: the first answer, nothing registered twice.
    let again = send(&sim, &register("r-1", doc.clone(), IssueType::Electronic));
    assert_eq!(again, first);
    assert_eq!(sim.registrations(), 1);

    // Broken inputs, each refused with its code and nothing registered.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let refused = |r: xml::Response| {
        assert!(!r.ok());
        r.result_code
    };
    let crlf = sign::signed_document(&text.replace('\n', "\r\n"), &signer, now()).unwrap();
    assert_eq!(refused(send(&sim, &register("r-2", crlf, IssueType::Electronic))), "EPSB0052E");
    let tampered = doc.replace(&b64.encode(text.as_bytes()), &b64.encode(text.replace(",7\n", ",30\n").as_bytes()));
    assert_eq!(refused(send(&sim, &register("r-3", tampered, IssueType::Electronic))), "EPSS0003E");
    let stranger = SoftwareSigner::generate("知らない医師", now()).unwrap();
    let foreign = sign::signed_document(&text, &stranger, now()).unwrap();
    assert_eq!(refused(send(&sim, &register("r-4", foreign, IssueType::Electronic))), "EPSS0005E");
    let unsigned = sign::unsigned_document(&text);
    assert_eq!(refused(send(&sim, &register("r-5", unsigned.clone(), IssueType::Electronic))), "EPSS0001E");
    let no_patient =
        sign::signed_document(&text.replace("11,00000010,東京\u{3000}太郎,トウキョウ タロウ\n", ""), &signer, now())
            .unwrap();
    let r = send(&sim, &register("r-6", no_patient, IssueType::Electronic));
    assert_eq!(r.result_code, "EPSB0056E");
    assert!(r.errors.iter().any(|e| e.record == Some(11)));
    let bad_usage = sign::signed_document(&text.replace("1013044400000000", "1013"), &signer, now()).unwrap();
    let r = send(&sim, &register("r-7", bad_usage, IssueType::Electronic));
    assert_eq!(r.result_code, "EPSB0058E");
    assert_eq!(r.errors[0].field.as_deref(), Some("用法コード"));
    let not_xml = xml::parse_response(&sim::process(&sim.state, xml::REGISTER, "<XmlMsg><MessageHeader>")).unwrap();
    assert_eq!(not_xml.result_code, "EPSX0001E");
    assert_eq!(sim.registrations(), 1);
    // A paper prescription registers unsigned.
    assert!(send(&sim, &register("r-8", unsigned, IssueType::Paper)).ok());
    assert_eq!(sim.registrations(), 2);

    // Copy, dispensing, cancel.
    let copy = send(&sim, &Request::Copy { header: header(xml::COPY, "p-1"), prescription_id: id.clone() });
    assert!(copy.copy_pdf.unwrap().starts_with(b"%PDF-"));
    let none = send(&sim, &Request::Dispensing { header: header(xml::DISPENSING, "d-1"), prescription_id: id.clone() });
    assert!(none.ok() && none.dispensing.is_empty());
    sim.dispense(&id, issue_date()).unwrap();
    let done = send(&sim, &Request::Dispensing { header: header(xml::DISPENSING, "d-2"), prescription_id: id.clone() });
    assert_eq!(done.dispensing[0].drugs.len(), 3);
    assert_eq!(done.dispensing[0].drugs[2].total, "28");
    let cancel = send(&sim, &Request::Cancel { header: header(xml::CANCEL, "x-1"), prescription_id: id.clone() });
    assert_eq!(cancel.result_code, "EPSR0002E", "a dispensed prescription cannot be cancelled");
}

#[tokio::test]
async fn the_web_api_answers_over_http_and_goes_down() {
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let sim = sim_with(&signer).await;
    let (_, text) = build_csv();
    let body = xml::request_xml(&Request::DuplicateCheck {
        header: header(xml::DUPLICATE_CHECK, "h-1"),
        insured: insured(),
        csv: text,
    });
    let post = |body: String| {
        let addr = sim.local_addr();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "POST /eps/EPSsiDMP01 HTTP/1.1\r\nhost: x\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let ok = post(body.clone()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("<ProcessingResultStatus>1</ProcessingResultStatus>"));
    sim.set_down(true);
    assert!(post(body).await.starts_with("HTTP/1.1 503"));
    assert_eq!(sim.received(xml::DUPLICATE_CHECK), 1);
}

// --- review additions: escaping, width rules, bounds, signature structure, the JAMI document ---

#[test]
fn separators_quotes_and_line_breaks_in_text_fields_survive_the_round_trip() {
    let (mut model, _) = build_csv();
    // A comma, a double quote and a line break inside a drug name, a comma in a note.
    model.rps[0].drugs[1].name = "レバミピド錠100mg,\"後発\"\n(粉砕)".into();
    model.rps[0].drugs[0].notes = vec!["胃部不快感時,中止".into()];
    model.rps[1].usage_notes = vec!["就寝前\r\nに服用".into()];
    let text = csv::build(&model).unwrap();
    assert!(!text.contains('\r'));
    // The layout has no quoting: what would break a field is written full-width, a line break
    // becomes a space; the record count is unchanged and the checker accepts it.
    assert!(text.contains("201,1,2,1,4,2329021F1021,レバミピド錠100mg，＂後発＂ (粉砕),1,1,錠\n"), "{text}");
    assert!(text.contains("281,1,1,1,胃部不快感時，中止\n"));
    assert!(text.contains("181,2,1,就寝前  に服用\n"));
    let parsed = csv::parse(&text).unwrap();
    assert_eq!(parsed.rps[0].drugs[1].name, "レバミピド錠100mg，＂後発＂ (粉砕)");
    assert_eq!(parsed.rps[0].drugs[0].notes, vec!["胃部不快感時，中止".to_owned()]);
    // Written by someone else: a raw comma shifts the fields, a raw quote is refused.
    let (_, good) = build_csv();
    let comma = good.replace("レバミピド錠１００ｍｇ", "レバミピド,錠");
    assert_eq!(codes(&comma), vec![("EPSB0057E", Some(201), None)]);
    let quoted = good.replace("レバミピド錠１００ｍｇ", "\"レバミピド錠\"");
    assert_eq!(codes(&quoted), vec![("EPSB0058E", Some(201), Some("薬品名称"))]);
}

#[test]
fn name_fields_follow_the_width_rules() {
    let (mut model, _) = build_csv();
    // Given with the other width: the builder writes the width the record asks for.
    model.patient.kanji = "東京 太郎".into();
    model.patient.kana = "トウキョウ\u{3000}タロウ".into();
    let text = csv::build(&model).unwrap();
    assert!(text.contains("11,00000010,東京\u{3000}太郎,トウキョウ タロウ\n"), "{text}");
    // Written by someone else with the wrong widths: refused per field.
    let (_, good) = build_csv();
    let half_in_kanji = good.replace("東京\u{3000}太郎", "東京 太郎");
    assert_eq!(codes(&half_in_kanji), vec![("EPSB0058E", Some(11), Some("患者漢字氏名"))]);
    let full_in_kana = good.replace("カナガワ ハナコ", "カナガワ\u{3000}ハナコ");
    assert_eq!(codes(&full_in_kana), vec![("EPSB0058E", Some(5), Some("医師カナ氏名"))]);
}

#[test]
fn empty_lines_oversized_data_and_orphan_public_payments_are_refused() {
    let (_, text) = build_csv();
    let blank = text.replace("12,1\n", "12,1\n\n");
    assert_eq!(codes(&blank), vec![("EPSB0054E", None, None)]);
    let huge = format!("{text}{}", "x".repeat(csv::MAX_CSV_BYTES));
    assert_eq!(codes(&huge), vec![("EPSB0051E", None, None)]);
    assert_eq!(codes(""), vec![("EPSB0053E", None, None)]);
    let second_only = text.replace("51,20260401\n", "28,12345678,1234567\n51,20260401\n");
    assert_eq!(codes(&second_only), vec![("EPSB0056E", Some(28), None)]);
    let first = text.replace("51,20260401\n", "27,12345678,1234567\n51,20260401\n");
    assert!(csv::check(&first).is_ok());
}

#[test]
fn the_xml_reader_is_bounded_and_takes_no_dtd() {
    let laughs =
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;\">]><x>&b;</x>";
    assert!(xml::parse_tree(laughs).is_err());
    let external = "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>";
    assert!(xml::parse_tree(external).is_err());
    assert!(xml::parse_tree("<x>&unknown;</x>").is_err());
    let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
    assert!(xml::parse_tree(&deep).is_err());
    let wide = format!("<a>{}</a>", "<b/>".repeat(30_000));
    assert!(xml::parse_tree(&wide).is_err());
    let big = format!("<a>{}</a>", "x".repeat(xml::MAX_XML_BYTES));
    assert!(xml::parse_tree(&big).is_err());
    let attrs: String = (0..40).map(|i| format!(" a{i}=\"1\"")).collect();
    assert!(xml::parse_tree(&format!("<a{attrs}/>")).is_err());
    // An undeclared prefix has no canonical form.
    let doc = "<p:a Id=\"x\">t</p:a>";
    let tree = xml::parse_tree(doc).unwrap();
    assert!(xml::canonicalize(doc, &tree).is_err());
}

#[test]
fn signature_structure_is_pinned() {
    let (_, text) = build_csv();
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let doc = sign::signed_document(&text, &signer, now()).unwrap();
    let trusted = vec![signer.certificate().to_vec()];
    let verify = |d: &str| sign::verify_document(d, &trusted, true).map(|v| v.csv);
    assert_eq!(verify(&doc).unwrap(), text);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Wrapping: another, unsigned PrescriptionData next to the signed one.
    let evil = b64.encode(text.replace(",2,1,錠", ",9,1,錠").as_bytes());
    let wrapped = doc.replace(
        "<PrescriptionDocument>",
        &format!("<PrescriptionDocument><PrescriptionData>{evil}</PrescriptionData>"),
    );
    assert_eq!(verify(&wrapped).unwrap_err(), SignatureFault::Malformed);
    // The same Id twice.
    let twice = doc.replace(
        "<ds:Object>",
        &format!("<ds:Object><PrescriptionData Id=\"PrescriptionData\">{evil}</PrescriptionData>"),
    );
    assert_eq!(verify(&twice).unwrap_err(), SignatureFault::Malformed);
    // A second KeyInfo (the key would come from one, the digest from the other).
    let keys = doc.replace(
        "<ds:Object>",
        "<ds:KeyInfo><ds:X509Data><ds:X509Certificate>AA==</ds:X509Certificate></ds:X509Data></ds:KeyInfo><ds:Object>",
    );
    assert_eq!(verify(&keys).unwrap_err(), SignatureFault::Malformed);
    // A second signature.
    let sig_start = doc.find("<ds:Signature").unwrap();
    let sig_end = doc.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let two = format!("{}{}{}", &doc[..sig_end], &doc[sig_start..sig_end], &doc[sig_end..]);
    assert_eq!(verify(&two).unwrap_err(), SignatureFault::Malformed);
    // A transform with parameters this canonicalizer does not compute.
    let transform = format!("<ds:Transform Algorithm=\"{}\"></ds:Transform>", sign::EXC_C14N);
    let with_params = doc.replacen(
        &transform,
        &format!("<ds:Transform Algorithm=\"{}\"><ec:InclusiveNamespaces xmlns:ec=\"{}\" PrefixList=\"ds\"></ec:InclusiveNamespaces></ds:Transform>", sign::EXC_C14N, sign::EXC_C14N),
        1,
    );
    assert_ne!(with_params, doc);
    assert_eq!(verify(&with_params).unwrap_err(), SignatureFault::Malformed);
    // QualifyingProperties pointing at another signature.
    let retarget = doc.replace("Target=\"#Signature\"", "Target=\"#Other\"");
    assert_eq!(verify(&retarget).unwrap_err(), SignatureFault::Malformed);
    // Whitespace inside the signed Base64 changes the digest.
    let spaced =
        doc.replacen("<PrescriptionData Id=\"PrescriptionData\">", "<PrescriptionData Id=\"PrescriptionData\"> ", 1);
    assert_eq!(verify(&spaced).unwrap_err(), SignatureFault::DigestMismatch);
}

#[tokio::test]
async fn an_id_reused_for_another_request_is_refused_not_answered_from_the_cache() {
    let signer = SoftwareSigner::generate("テスト医師", now()).unwrap();
    let sim = sim_with(&signer).await;
    let (_, text) = build_csv();
    let check = Request::DuplicateCheck {
        header: header(xml::DUPLICATE_CHECK, "same-id"),
        insured: insured(),
        csv: text.clone(),
    };
    assert!(send(&sim, &check).ok());
    // The same id for a registration is another request type: processed on its own.
    let doc = sign::signed_document(&text, &signer, now()).unwrap();
    let register = Request::Register {
        header: header(xml::REGISTER, "same-id"),
        issue_type: IssueType::Electronic,
        insured: insured(),
        document: doc,
    };
    let r = send(&sim, &register);
    assert!(r.ok(), "{r:?}");
    assert!(r.exchange_number.is_some());
    // A repeat with another CreationDateTime is the same request: the first answer.
    let mut again = register.clone();
    again.header_mut().created = "20260401093100".into();
    assert_eq!(send(&sim, &again).prescription_id, r.prescription_id);
    // The same id and type for different content: refused, and nothing registered.
    let other = Request::Register {
        header: header(xml::REGISTER, "same-id"),
        issue_type: IssueType::Paper,
        insured: insured(),
        document: sign::unsigned_document(&text),
    };
    let refused = send(&sim, &other);
    assert_eq!(refused.result_code, sim::ID_REUSED);
    assert_eq!(sim.registrations(), 1);
}

#[test]
fn the_jami_document_validates_and_matches_the_example_shape() {
    let f = Fixture::new();
    let s = f.sources();
    let (model, _) = fhir::prescription(&s).unwrap();
    let jst = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    let doc = fhir::document(
        &s,
        &model,
        "0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "1311234567-2026-00000001",
        now().with_timezone(&jst),
    );
    // Stable: the same draft gives the same document.
    assert_eq!(
        doc,
        fhir::document(
            &s,
            &model,
            "0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
            "1311234567-2026-00000001",
            now().with_timezone(&jst)
        )
    );
    let validator = ehr_validation::FullValidator::new(
        std::sync::Arc::new(ehr_fhir::validate::Validator::new()),
        ehr_terminology::Terminology::builtin().unwrap(),
    );
    let issues = validator.validate(&doc, None);
    let errors: Vec<_> =
        issues.iter().filter(|i| matches!(i.severity, ehr_core::Severity::Error | ehr_core::Severity::Fatal)).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The validator does look inside the entries: a broken one is found.
    let mut broken = doc.clone();
    broken["entry"][0]["resource"]["status"] = json!("bogus");
    broken["entry"][6]["resource"]["gender"] = json!(12);
    assert!(ehr_validation::has_errors(&validator.validate(&broken, None)));
    // The example's shapes: payer and department Organizations as JAMI writes them.
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(
            "/work/shared/fixtures/eprescription-data/Bundle-JP-MedReq-ePreData-Example-bunkatsu.json",
        )
        .unwrap_or_else(|_| "null".into()),
    )
    .unwrap();
    let by_profile = |bundle: &Value, suffix: &str| -> Value {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .find(|r| r["meta"]["profile"][0].as_str().is_some_and(|p| p.ends_with(suffix)))
            .unwrap_or(Value::Null)
    };
    let ours_payer = by_profile(&doc, "_coveragePayer");
    let ours_dept = by_profile(&doc, "_departmentOfIssuer");
    assert_eq!(ours_payer["identifier"][0]["system"], "urn:oid:1.2.392.100495.20.3.61");
    assert_eq!(ours_payer["type"][0]["coding"][0]["code"], "ins");
    assert_eq!(ours_dept["identifier"][0]["system"], "urn:oid:1.2.392.100495.20.2.51");
    assert_eq!(ours_dept["type"][0]["coding"][0]["code"], "dept");
    if !example.is_null() {
        let inner = &example["entry"][1]["resource"];
        for (suffix, ours) in [("_coveragePayer", &ours_payer), ("_departmentOfIssuer", &ours_dept)] {
            let theirs = by_profile(inner, suffix);
            assert_eq!(theirs["identifier"][0]["system"], ours["identifier"][0]["system"], "{suffix}");
            assert_eq!(theirs["type"][0]["coding"][0]["code"], ours["type"][0]["coding"][0]["code"], "{suffix}");
        }
        // Composition: the same slots in the same places.
        let (theirs, ours) = (&inner["entry"][0]["resource"], &doc["entry"][0]["resource"]);
        for key in ["type", "category"] {
            assert_eq!(
                theirs[key]["coding"].as_array().map(|a| a[0]["code"].clone()),
                ours[key]["coding"].as_array().map(|a| a[0]["code"].clone()),
                "{key}"
            );
        }
        assert_eq!(theirs["category"][0]["coding"][0]["code"], ours["category"][0]["coding"][0]["code"]);
        assert_eq!(theirs["section"][0]["code"]["coding"][0]["code"], ours["section"][0]["code"]["coding"][0]["code"]);
        assert_eq!(theirs["identifier"]["system"], ours["identifier"]["system"]);
    }
}
