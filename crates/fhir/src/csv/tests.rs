use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;

/// The 23 stored resource types (docs/formats/csv.md covers those with definitions).
const TYPES: [&str; 23] = [
    "AllergyIntolerance",
    "Appointment",
    "Composition",
    "Condition",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Group",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Schedule",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "Task",
];

/// Resources as table files (every table of the layout, header included), optionally with a BOM.
fn files_of(rt: &str, resources: &[Value], bom: bool) -> Vec<(String, Vec<u8>)> {
    let tables = tables(rt).unwrap();
    let mut bufs: Vec<Vec<u8>> = tables
        .iter()
        .map(|t| {
            let mut b = if bom { BOM.to_vec() } else { Vec::new() };
            write_row(&mut b, &t.columns);
            b
        })
        .collect();
    for r in resources {
        for (ti, cells) in flatten(r).unwrap() {
            assert_eq!(cells.len(), tables[ti].columns.len(), "row width of {}", tables[ti].name);
            write_row(&mut bufs[ti], &cells);
        }
    }
    tables.iter().map(|t| t.file_name()).zip(bufs).collect()
}

fn import(rt: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<CsvRecord>, FhirError> {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    unflatten(rt, &refs)
}

/// JSON → rows → CSV bytes → JSON must give the same resources. Resources are imported in
/// batches per type with unique ids (the fixtures hold some resources twice).
fn assert_round_trip(resources: &[Value]) {
    let mut batches: BTreeMap<(String, usize), Vec<Value>> = BTreeMap::new();
    for r in resources {
        let rt = r["resourceType"].as_str().unwrap().to_string();
        let mut n = 0;
        while batches.get(&(rt.clone(), n)).is_some_and(|b| b.iter().any(|x| x["id"] == r["id"])) {
            n += 1;
        }
        batches.entry((rt, n)).or_default().push(r.clone());
    }
    for ((rt, _), rs) in batches {
        let files = files_of(&rt, &rs, false);
        let back = import(&rt, &files).unwrap();
        assert_eq!(back.len(), rs.len());
        for (orig, rec) in rs.iter().zip(back) {
            let got = rec.result.unwrap_or_else(|e| panic!("{rt}/{}: {e}", rec.id));
            assert_eq!(&got, orig, "{rt}/{} did not survive the round trip", rec.id);
        }
    }
}

fn fixture_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

/// Every fixture resource with a layout (Bundle entries instead of Bundles).
fn fixture_resources() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = fixture_files(&root.join("tests/validate/fixtures/jp-clins"));
    paths.extend(fixture_files(&root.join("../../tests/fixtures")));
    let mut out = Vec::new();
    for p in paths {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if v["resourceType"] == "Bundle" {
            for e in v["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"].clone());
            }
        } else {
            out.push(v);
        }
    }
    out
}

#[test]
fn json_object_equality_ignores_property_order() {
    // The round-trip comparisons rely on it (import writes definition order).
    assert_eq!(json!({"a": 1, "b": 2}), json!({"b": 2, "a": 1}));
}

#[test]
fn fixtures_round_trip() {
    let all = fixture_resources();
    let with_layout: Vec<Value> =
        all.iter().filter(|r| tables(r["resourceType"].as_str().unwrap()).is_ok()).cloned().collect();
    assert_eq!(with_layout.len(), all.len(), "fixture resource types without a layout");
    assert_round_trip(&with_layout);
}

#[test]
fn fixtures_survive_reimport_after_bom_and_lf_line_ends() {
    let mut pats: Vec<Value> = fixture_resources().into_iter().filter(|r| r["resourceType"] == "Patient").collect();
    let mut seen = std::collections::HashSet::new();
    pats.retain(|p| seen.insert(p["id"].clone()));
    let files: Vec<(String, Vec<u8>)> = files_of("Patient", &pats, true)
        .into_iter()
        .map(|(n, b)| (n, String::from_utf8(b).unwrap().replace("\r\n", "\n").into_bytes()))
        .collect();
    assert!(files[0].1.starts_with(BOM));
    let back = import("Patient", &files).unwrap();
    let got: Vec<Value> = back.into_iter().map(|r| r.result.unwrap()).collect();
    // LF-only files lose the CR of multi-line values only if there were any; the fixtures have none.
    assert_eq!(got, pats);
}

fn tricky_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3", "lastUpdated": "2024-04-01T09:30:00.123+09:00",
                 "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"],
                 "tag": [{"system": "http://example.org/tags", "code": "t", "version": "1"}]},
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<p>山田, \"太郎\"</p>\n</div>"},
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "ｶﾀｶﾅ病院, 本院"}],
        "extension": [
            {"url": "http://example.org/race", "valueCodeableConcept": {"coding": [{"system": "urn:x", "code": "A"}]}},
            {"url": "http://example.org/complex", "extension": [
                {"url": "a", "valueString": "一,二\n三"},
                {"url": "b", "valueDecimal": 1.5, "_valueDecimal": {"extension": [{"url": "c", "valueBoolean": true}]}}
            ]},
            {"url": "http://example.org/int", "valueInteger": 0, "id": "e1"}
        ],
        "modifierExtension": [{"url": "http://example.org/mod", "valueBoolean": false}],
        "identifier": [
            {"use": "usual", "system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "00000010",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "assigner": {"reference": "#org1", "identifier": {"system": "urn:a", "value": "1",
                          "assigner": {"display": "deep"}}}}
        ],
        "name": [
            {"id": "n0", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
             "use": "official", "family": "山田", "given": ["太郎", "一郎"],
             "_given": [null, {"extension": [{"url": "http://example.org/given-kind", "valueCode": "middle"}]}]},
            {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}],
             "family": "ﾔﾏﾀﾞ", "given": ["ﾀﾛｳ"]},
            {"text": "only text"}
        ],
        "telecom": [{"system": "phone", "value": "03-1234-5678", "rank": 1}],
        "gender": "male",
        "birthDate": "1970-01-01",
        "_birthDate": {"id": "bd", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T06:30:00+09:00"}]},
        "deceasedBoolean": false,
        "maritalStatus": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married", "version": "2.0", "userSelected": true},
            {"system": "urn:local", "code": "既婚"}
        ], "text": "既婚"},
        "multipleBirthInteger": 2,
        "address": [{"line": ["1-2-3", "ビル 4F"], "_line": [{"id": "l0"}, null], "city": "新宿区", "postalCode": "160-0023"}],
        "contact": [
            {"relationship": [{"coding": [{"code": "N"}, {"code": "C"}], "text": "緊急連絡先"}],
             "name": {"family": "山田", "given": ["花子"]},
             "telecom": [{"system": "phone", "value": "090"}, {"system": "email", "value": "a@example.jp"}]},
            {"telecom": [{"value": "x"}], "organization": {"reference": "Organization/o2", "type": "Organization"}}
        ],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "ja"}]}, "preferred": true}],
        "generalPractitioner": [{"reference": "Practitioner/1", "display": "Dr. \"Quote\""}]
    })
}

#[test]
fn built_resources_round_trip() {
    let obs = json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": "3A015000002327101"}], "text": "ALB"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2024-04-01", "end": "2024-04-02"},
        "valueRatio": {"numerator": {"value": 1.50, "unit": "mg"}, "denominator": {"value": 100}},
        "referenceRange": [{"low": {"value": 3.8, "unit": "g/dL"}, "high": {"value": 5.2}, "text": "3.8-5.2"}],
        "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 0.1, "comparator": "<", "unit": "%"}},
            {"code": {"text": "b"}, "valueRange": {"low": {"value": -1}}, "valueBoolean": true,
             "referenceRange": [{"appliesTo": [{"coding": [{"code": "x"}, {"code": "y"}]}]}]},
            {"code": {"text": "c"}, "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2 3"}}
        ]
    });
    let med = json!({
        "resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [
            {"system": "urn:oid:1.2.392.100495.20.2.74", "code": "103835401", "display": "ムコダイン錠２５０ｍｇ"},
            {"system": "urn:oid:1.2.392.200119.4.403.1", "code": "1038354"}
        ]},
        "subject": {"reference": "Patient/p1"},
        "dosageInstruction": [{
            "text": "1日3回 毎食後",
            "timing": {"repeat": {"boundsDuration": {"value": 7, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d"},
                                  "frequency": 3, "period": 1, "periodUnit": "d", "when": ["PCM", "PCD", "PCV"]},
                       "code": {"coding": [{"code": "1013044400000000"}]}},
            "doseAndRate": [{"doseQuantity": {"value": 3, "unit": "錠"}}],
            "asNeededBoolean": false
        }],
        "dispenseRequest": {"quantity": {"value": 21, "unit": "錠"}, "expectedSupplyDuration": {"value": 7, "unit": "日"}}
    });
    let task = json!({
        "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
        "input": [{"type": {"text": "n"}, "valueInteger": 5}, {"type": {"text": "s"}, "valueString": ""}]
    });
    let comp = json!({
        "resourceType": "Composition", "id": "c1", "status": "final", "type": {"text": "t"}, "date": "2024-01-01",
        "author": [{"display": "a"}], "title": "t",
        "section": [{"title": "1", "section": [{"title": "1.1", "section": [{"title": "1.1.1",
            "section": [{"title": "1.1.1.1", "entry": [{"reference": "Condition/1"}]}],
            "code": {"coding": [{"code": "a"}, {"code": "b"}]}}]}]}]
    });
    assert_round_trip(&[tricky_patient(), obs, med, task, comp]);
}

#[test]
fn invalid_but_storable_json_round_trips() {
    // Values of an unexpected JSON kind and unknown properties go to the extension table as JSON.
    let p = json!({
        "resourceType": "Patient", "id": "odd",
        "birthDate": 19700101, "active": "yes", "gender": "",
        "unknownThing": {"a": [1, 2]}, "multipleBirthInteger": 1.5,
        "name": [{"given": [null], "_given": [{"extension": [{"url": "u", "valueString": "x"}]}]}]
    });
    assert_round_trip(&[p]);
}

#[test]
fn layout_shapes() {
    let t = tables("Patient").unwrap();
    assert_eq!(t[0].name, "Patient");
    assert_eq!(t[0].file_name(), "Patient.csv");
    assert_eq!(t.last().unwrap().columns, ["id", "path", "url", "valueType", "value"]);
    for c in ["id", "gender", "birthDate", "maritalStatus.system", "maritalStatus.code", "maritalStatus.display"] {
        assert!(t[0].columns.iter().any(|x| x == c), "Patient.csv lacks {c}");
    }
    let telecom = t.iter().find(|t| t.name == "Patient.contact.telecom").unwrap();
    assert_eq!(telecom.columns[..3], ["id", "contact#", "contact.telecom#"]);
    let given = t.iter().find(|t| t.name == "Patient.name.given").unwrap();
    assert_eq!(given.columns, ["id", "name#", "name.given#", "given"]);
    assert!(tables("NoSuchType").is_err());
    // Readable main tables.
    for (rt, max) in
        [("Patient", 30), ("Observation", 60), ("Encounter", 60), ("MedicationRequest", 90), ("ServiceRequest", 60)]
    {
        let n = tables(rt).unwrap()[0].columns.len();
        assert!(n <= max, "{rt}.csv has {n} columns");
    }
}

#[test]
fn write_row_quotes_per_rfc4180() {
    let mut out = Vec::new();
    write_row(
        &mut out,
        &["a".into(), "b,c".into(), "say \"hi\"".into(), "l1\r\nl2".into(), String::new(), "漢字".into()],
    );
    assert_eq!(String::from_utf8(out).unwrap(), "a,\"b,c\",\"say \"\"hi\"\"\",\"l1\r\nl2\",,漢字\r\n");
}

fn patient_files() -> Vec<(String, Vec<u8>)> {
    files_of("Patient", &[tricky_patient()], false)
}

fn replace_file(files: &mut [(String, Vec<u8>)], name: &str, text: &str) {
    files.iter_mut().find(|f| f.0 == name).unwrap().1 = text.as_bytes().to_vec();
}

fn err_text(r: Result<Vec<CsvRecord>, FhirError>) -> String {
    match r {
        Err(FhirError::Csv(m)) => m,
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

#[test]
fn header_problems_reject_the_file() {
    let mut files = patient_files();
    replace_file(&mut files, "Patient.csv", "gender,birthDate\r\nmale,1970-01-01\r\n");
    let m = err_text(import("Patient", &files));
    assert!(m.contains("Patient.csv line 1") && m.contains("`id`"), "{m}");

    let mut files = patient_files();
    replace_file(&mut files, "Patient.csv", "id,gender,secretColumn\r\np1,male,x\r\n");
    let m = err_text(import("Patient", &files));
    assert!(m.contains("Patient.csv line 1, column 3") && !m.contains("secretColumn"), "{m}");

    let mut files = patient_files();
    replace_file(&mut files, "Patient.csv", "id,gender,gender\r\np1,male,male\r\n");
    assert!(err_text(import("Patient", &files)).contains("column 3"));

    // Observation.status is 1..1: its column is required.
    let files = vec![("Observation.csv".to_string(), b"id,code.text\r\no1,x\r\n".to_vec())];
    assert!(err_text(import("Observation", &files)).contains("`status`"));

    let mut files = patient_files();
    files.push(("Patient.unknown.csv".to_string(), b"id\r\n".to_vec()));
    assert!(err_text(import("Patient", &files)).contains("Patient.unknown.csv"));
}

#[test]
fn lenient_on_column_order_and_optional_columns() {
    let files = vec![
        ("Patient.csv".to_string(), "birthDate,gender,id\r\n1970-01-01,female,p9\r\n".as_bytes().to_vec()),
        ("Patient.name.csv".to_string(), "family,name#,id\r\n佐藤,0,p9\r\n".as_bytes().to_vec()),
    ];
    let recs = import("Patient", &files).unwrap();
    assert_eq!(
        recs[0].result.as_ref().unwrap(),
        &json!({"resourceType": "Patient", "id": "p9", "name": [{"family": "佐藤"}], "gender": "female", "birthDate": "1970-01-01"})
    );
}

#[test]
fn child_row_without_main_row_rejects_the_file() {
    let mut files = patient_files();
    replace_file(&mut files, "Patient.name.csv", "id,name#,family\r\np1,0,山田\r\nnobody,0,x\r\n");
    let m = err_text(import("Patient", &files));
    assert!(m.contains("Patient.name.csv line 3") && !m.contains("nobody"), "{m}");
}

#[test]
fn malformed_csv_rejects_the_file() {
    for (text, line) in [
        ("id,gender\r\np1,\"male\r\n", "line 2"),
        ("id,gender\r\np1,ma\"le\r\n", "line 2"),
        ("id,gender\r\np1,\"male\"x\r\n", "line 2"),
        ("id,gender\r\np1\r\n", "line 2"),
    ] {
        let files = vec![("Patient.csv".to_string(), text.as_bytes().to_vec())];
        let m = err_text(import("Patient", &files));
        assert!(m.contains("Patient.csv") && m.contains(line), "{m}");
    }
    let mut bad = b"id,gender\r\np1,".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\r\n");
    let m = err_text(import("Patient", &[("Patient.csv".to_string(), bad)]));
    assert!(m.contains("Patient.csv line 2") && m.contains("UTF-8"), "{m}");
    let m = err_text(import("Patient", &[("Patient.csv".to_string(), Vec::new())]));
    assert!(m.contains("Patient.csv line 1"), "{m}");
}

#[test]
fn duplicate_main_id_rejects_the_file() {
    let files = vec![("Patient.csv".to_string(), b"id,gender\r\np1,male\r\np1,female\r\n".to_vec())];
    assert!(err_text(import("Patient", &files)).contains("line 3"));
}

#[test]
fn bad_cells_fail_only_their_record() {
    let files = vec![
        (
            "Patient.csv".to_string(),
            "id,active,gender\r\np1,yes,male\r\np2,true,female\r\n,true,male\r\n".as_bytes().to_vec(),
        ),
        ("Patient.name.csv".to_string(), b"id,name#,family\r\np2,x,a\r\n".to_vec()),
    ];
    let recs = import("Patient", &files).unwrap();
    assert_eq!(recs.len(), 3);
    let e1 = recs[0].result.as_ref().unwrap_err();
    assert!(e1.contains("Patient.csv line 2, column 2 (active)") && !e1.contains("yes"), "{e1}");
    let e2 = recs[1].result.as_ref().unwrap_err();
    assert!(e2.contains("Patient.name.csv line 2, column 2 (name#)"), "{e2}");
    assert!(recs[2].result.as_ref().unwrap_err().contains("line 4"));

    let files = vec![
        ("Patient.csv".to_string(), b"id\r\np1\r\np2\r\n".to_vec()),
        (
            "Patient.extension.csv".to_string(),
            b"id,path,url,valueType,value\r\np1,name[0.family,,string,x\r\np2,extension[0],u,NoType,1\r\n".to_vec(),
        ),
    ];
    let recs = import("Patient", &files).unwrap();
    assert!(recs[0].result.as_ref().unwrap_err().contains("column 2 (path)"));
    assert!(recs[1].result.as_ref().unwrap_err().contains("column 4 (valueType)"));
}

#[test]
fn bom_is_accepted() {
    let files = vec![("Patient.csv".to_string(), [BOM, "id,gender\r\np1,male\r\n".as_bytes()].concat())];
    let recs = import("Patient", &files).unwrap();
    assert_eq!(recs[0].result.as_ref().unwrap(), &json!({"resourceType": "Patient", "id": "p1", "gender": "male"}));
}

#[test]
fn gaps_in_positions_close_up() {
    let files = vec![
        ("Patient.csv".to_string(), b"id\r\np1\r\n".to_vec()),
        ("Patient.name.csv".to_string(), b"id,name#,family\r\np1,5,b\r\np1,2,a\r\n".to_vec()),
        (
            "Patient.extension.csv".to_string(),
            b"id,path,url,valueType,value\r\np1,name[5].extension[0],u,code,x\r\n".to_vec(),
        ),
    ];
    let recs = import("Patient", &files).unwrap();
    assert_eq!(
        recs[0].result.as_ref().unwrap(),
        &json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "a"}, {"family": "b", "extension": [{"url": "u", "valueCode": "x"}]}]})
    );
}

#[test]
fn typed_cells() {
    let obs = json!({
        "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "体温"},
        "valueQuantity": {"value": 37.50, "unit": "℃"},
        "component": [{"code": {"text": "a"}, "valueInteger": -3}, {"code": {"text": "b"}, "valueQuantity": {"value": 1e-7}},
                      {"code": {"text": "c"}, "valueQuantity": {"value": 12345678901234_u64}}]
    });
    let rows = flatten(&obs).unwrap();
    let t = tables("Observation").unwrap();
    let main = &rows.iter().find(|r| r.0 == 0).unwrap().1;
    let col = |name: &str| t[0].columns.iter().position(|c| c == name).unwrap();
    assert_eq!(main[col("valueQuantity.value")], "37.5");
    assert_eq!(main[col("code.text")], "体温");
    assert_round_trip(&[obs]);

    let files = vec![
        (
            "Observation.csv".to_string(),
            b"id,status,valueQuantity.value,valueInteger
o1,final,1.5.2,
o2,final,,x
o3,final,-0.25,7
"
            .to_vec(),
        ),
        (
            "Observation.contained.csv".to_string(),
            b"id,contained#,contained
o3,0,{not json
"
            .to_vec(),
        ),
    ];
    let recs = import("Observation", &files).unwrap();
    assert!(recs[0].result.as_ref().unwrap_err().contains("column 3 (valueQuantity.value)"));
    assert!(recs[1].result.as_ref().unwrap_err().contains("column 4 (valueInteger)"));
    assert!(recs[2].result.as_ref().unwrap_err().contains("Observation.contained.csv line 2, column 3 (contained)"));
}

#[test]
fn flatten_needs_a_known_type_and_an_id() {
    assert!(flatten(&json!({"resourceType": "Patient"})).is_err());
    assert!(flatten(&json!({"resourceType": "NoSuchType", "id": "x"})).is_err());
    assert!(flatten(&json!({"id": "x"})).is_err());
}

/// docs/formats/csv.md is generated; `EHR_BLESS=1` rewrites it.
#[test]
fn published_layout_document_is_current() {
    let types: Vec<&str> = TYPES.iter().copied().filter(|t| tables(t).is_ok()).collect();
    let text = layout_markdown(&types);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/formats/csv.md");
    if std::env::var_os("EHR_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/formats/csv.md is not the text layout_markdown generates; run `EHR_BLESS=1 cargo test -p ehr-fhir csv::` and commit the result"
    );
}
