//! The XML codec on every JSON fixture: JSON → XML → JSON gives the same JSON.

use std::path::{Path, PathBuf};

use ehr_fhir::xml::{from_xml, to_xml};
use serde_json::Value;

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

/// JSON equality with numbers compared by value (`1.0` in JSON and `1.0` read back may differ in
/// serde_json's integer/float kind only).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Fixtures that are not valid R4 JSON (see `eprescription_examples_warn_unknown_profile_only`):
/// `to_xml` must refuse them, naming the element.
const INVALID: &[(&str, &str)] =
    &[("MedicationRequest-JP-MedReq-ePreData-Example-naihuku.json", "MedicationRequest.note: the element repeats")];

#[test]
fn every_fixture_round_trips_through_xml() {
    let mut files = Vec::new();
    json_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate/fixtures"), &mut files);
    files.sort();
    assert!(files.len() >= 60, "fixtures missing: {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if let Some((_, why)) = INVALID.iter().find(|(n, _)| *n == name) {
            let err = to_xml(&v).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
            continue;
        }
        let xml = match to_xml(&v) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: to_xml: {e}"));
                continue;
            }
        };
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{name}");
        match from_xml(&xml) {
            Ok(back) if same(&back, &v) => {}
            Ok(back) => failures.push(format!("{name}: differs after the round trip:\n{back}\n{v}")),
            Err(e) => failures.push(format!("{name}: from_xml: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} fixtures fail:\n{}", failures.len(), files.len(), failures.join("\n"));
}
