//! Readers for the official master files and for FHIR CodeSystem JSON.
//!
//! Each reader turns a whole file into a [`Batch`] or fails with the file and line of the first
//! bad record; nothing is merged into the live tables until the whole batch (the whole
//! directory, for `load_dir`) has been read. Column numbers are 1-based, as the specifications
//! number them; `docs/formats/masters.md` lists which columns are read and how sure we are of each.

use crate::TerminologyError;
use crate::concept::{Concept, KANA, Property, PropertyValue, property};
use crate::csv::{self, Record};
use crate::shape;
use crate::systems::SystemId;
use serde_json::Value;

type Result<T, E = TerminologyError> = std::result::Result<T, E>;

/// The file formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MasterFormat {
    /// MEDIS 医薬品HOTコードマスター (`MEDIS*.TXT`): HOT13/HOT9/HOT7, YJ, receipt cross-maps.
    HotMaster,
    /// 社会保険診療報酬支払基金 医薬品マスター (`y*.csv`): 9-digit receipt drug codes.
    ReceiptDrug,
    /// MHLW 一般名処方マスタ, saved as CSV (`general_name*.csv`).
    GeneralName,
    /// JLAC10 17-digit item list, one code per row (`jlac10_items*.csv`; our flat layout).
    Jlac10Items,
    /// JLAC10 材料コード表 (`jlac10_materials*.csv`): code, name.
    Jlac10Materials,
    /// JLAC10 測定法コード表 (`jlac10_methods*.csv`): code, name.
    Jlac10Methods,
    /// MEDIS 標準病名マスター 病名基本テーブル (`nmain*.txt`, `byomei*.csv`).
    DiseaseNames,
    /// A FHIR CodeSystem resource (`*.json`) whose `url` is a known system (the JP-CLINS lab code
    /// systems, the uncoded markers).
    FhirCodeSystem,
}

impl MasterFormat {
    /// The format a file name announces, or `None` for files `load_dir` skips.
    pub fn detect(file_name: &str) -> Option<Self> {
        let name = file_name.to_ascii_lowercase();
        let text = name.ends_with(".csv") || name.ends_with(".txt");
        Some(match () {
            _ if name.ends_with(".json") => Self::FhirCodeSystem,
            _ if !text => return None,
            _ if name.starts_with("medis") || name.starts_with("hot") => Self::HotMaster,
            _ if name.starts_with("y_") || name == "y.csv" => Self::ReceiptDrug,
            _ if name.starts_with("general_name") || name.starts_with("ippanmei") => Self::GeneralName,
            _ if name.starts_with("jlac10_items") => Self::Jlac10Items,
            _ if name.starts_with("jlac10_materials") => Self::Jlac10Materials,
            _ if name.starts_with("jlac10_methods") => Self::Jlac10Methods,
            _ if name.starts_with("nmain") || name.starts_with("byomei") => Self::DiseaseNames,
            _ => return None,
        })
    }
}

/// What one file contributes to the tables.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub concepts: Vec<(SystemId, Concept)>,
    /// Systems this file defines completely (a FHIR CodeSystem with `content = complete`).
    pub complete: Vec<SystemId>,
    /// JLAC10 測定法 names by code.
    pub methods: Vec<(String, String)>,
}

/// Decodes a master file: UTF-8 (with or without BOM) when it is valid UTF-8, otherwise
/// Shift_JIS (as Windows-31J, which the Japanese masters use); anything else is refused with
/// the line of the first undecodable byte.
pub fn decode(bytes: &[u8], file: &str) -> Result<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_owned());
    }
    let sjis = encoding_rs::SHIFT_JIS;
    if let Some(text) = sjis.decode_without_bom_handling_and_without_replacement(bytes) {
        return Ok(text.into_owned());
    }
    let (lossy, _) = sjis.decode_without_bom_handling(bytes);
    let line = lossy.split('\n').position(|l| l.contains('\u{FFFD}')).map_or(1, |i| i + 1);
    Err(TerminologyError::Encoding { file: file.to_owned(), line })
}

/// Reads one file of the given format.
pub(crate) fn parse(format: MasterFormat, bytes: &[u8], file: &str) -> Result<Batch> {
    let text = decode(bytes, file)?;
    if format == MasterFormat::FhirCodeSystem {
        return fhir_code_system(&text, file);
    }
    let records = csv::parse(&text).map_err(|e| TerminologyError::line(file, e.line, e.reason))?;
    let mut batch = Batch::default();
    for r in &records {
        let row = Row { r, file };
        match format {
            MasterFormat::HotMaster => hot_row(row, &mut batch)?,
            MasterFormat::ReceiptDrug => receipt_drug_row(row, &mut batch)?,
            MasterFormat::GeneralName => general_name_row(row, &mut batch)?,
            MasterFormat::Jlac10Items => jlac10_item_row(row, &mut batch)?,
            MasterFormat::Jlac10Materials => {
                let (code, name) = row.pair(SystemId::SampleMaterial)?;
                batch
                    .concepts
                    .push((SystemId::SampleMaterial, Concept::new(crate::systems::SAMPLE_MATERIAL, code, name)));
            }
            MasterFormat::Jlac10Methods => {
                row.min_columns(2)?;
                let code = row.col(1);
                if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(row.error("column 1: a JLAC10 method code has 3 digits"));
                }
                batch.methods.push((code.to_owned(), row.required(2, "method name")?.to_owned()));
            }
            MasterFormat::DiseaseNames => disease_row(row, &mut batch)?,
            MasterFormat::FhirCodeSystem => {}
        }
    }
    Ok(batch)
}

/// One CSV record with the helpers every reader uses.
#[derive(Clone, Copy)]
struct Row<'a> {
    r: &'a Record,
    file: &'a str,
}

impl<'a> Row<'a> {
    fn error(&self, reason: impl Into<String>) -> TerminologyError {
        TerminologyError::line(self.file, self.r.line, reason)
    }

    fn col(&self, n: usize) -> &'a str {
        self.r.col(n)
    }

    fn min_columns(&self, n: usize) -> Result<()> {
        if self.r.fields.len() < n {
            return Err(self.error(format!("expected at least {n} columns, found {}", self.r.fields.len())));
        }
        Ok(())
    }

    fn required(&self, n: usize, what: &str) -> Result<&'a str> {
        let v = self.col(n);
        if v.is_empty() { Err(self.error(format!("column {n} ({what}) is empty"))) } else { Ok(v) }
    }

    /// Column `n` checked against `system`'s form; `None` when empty.
    fn code(&self, n: usize, system: SystemId) -> Result<Option<&'a str>> {
        let v = self.col(n);
        if v.is_empty() {
            return Ok(None);
        }
        shape::check(system, v).map_err(|why| self.error(format!("column {n}: {why}")))?;
        Ok(Some(v))
    }

    /// A two-column `code,name` table.
    fn pair(&self, system: SystemId) -> Result<(&'a str, &'a str)> {
        self.min_columns(2)?;
        let code = self.code(1, system)?.ok_or_else(|| self.error("column 1 (code) is empty"))?;
        Ok((code, self.required(2, "name")?))
    }
}

/// MEDIS HOT master: 1 HOT13, 2 HOT7, 3 会社識別用番号, 7 薬価基準収載医薬品コード, 8 YJ,
/// 9–10 レセプト電算処理システムコード, 11 告示名称, 12 販売名, 13 レセプト電算処理システム医薬品名.
fn hot_row(row: Row, batch: &mut Batch) -> Result<()> {
    use SystemId as S;
    row.min_columns(12)?;
    let hot13 = row.code(1, S::Hot13)?;
    let hot7 = row.code(2, S::Hot7)?;
    let company = row.col(3);
    if !company.is_empty() && (company.len() != 2 || !company.bytes().all(|b| b.is_ascii_digit())) {
        return Err(row.error("column 3: the company number has 2 digits"));
    }
    let hot9 = match (hot7, company.is_empty()) {
        (Some(h7), false) => Some(format!("{h7}{company}")),
        (None, true) => None,
        _ => return Err(row.error("columns 2 and 3 (HOT7 and company number) are filled together")),
    };
    if let Some(h13) = hot13
        && !hot9.as_deref().is_some_and(|h9| h13.starts_with(h9))
    {
        return Err(row.error("column 1: the HOT13 code does not start with HOT7 + company number (columns 2-3)"));
    }
    // 薬価基準収載医薬品コード has the YJ form.
    let yakka = row.code(7, S::Yj)?;
    let yj = row.code(8, S::Yj)?;
    let receipts = [row.code(9, S::ReceiptDrug)?, row.code(10, S::ReceiptDrug)?];
    let (kokuji, hanbai, receipt_name) = (row.col(11), row.col(12), row.col(13));
    let brand = if hanbai.is_empty() { kokuji } else { hanbai };
    if brand.is_empty() {
        return Err(row.error("columns 11-12 (告示名称, 販売名) are both empty"));
    }

    let mut codes: Vec<(S, &str, &str)> = Vec::new();
    if let Some(c) = hot13 {
        codes.push((S::Hot13, c, brand));
    }
    if let Some(c) = hot9.as_deref() {
        codes.push((S::Hot9, c, brand));
    }
    if let Some(c) = hot7 {
        codes.push((S::Hot7, c, if kokuji.is_empty() { brand } else { kokuji }));
    }
    if let Some(c) = yj {
        codes.push((S::Yj, c, brand));
    }
    for c in receipts.into_iter().flatten() {
        codes.push((S::ReceiptDrug, c, if receipt_name.is_empty() { brand } else { receipt_name }));
    }
    if codes.is_empty() {
        return Err(row.error("the row has no code (columns 1, 2-3, 8, 9, 10)"));
    }

    let crossmap = |s: S| match s {
        S::Hot13 => property::HOT13,
        S::Hot9 => property::HOT9,
        S::Hot7 => property::HOT7,
        S::Yj => property::YJ,
        _ => property::RECEIPT,
    };
    for &(system, code, display) in &codes {
        let mut concept = Concept::new(system.canonical(), code, display);
        for name in [kokuji, hanbai, receipt_name] {
            concept.designate(None, name);
        }
        for &(other, other_code, _) in &codes {
            if other != system || other_code != code {
                concept.add_property(Property::coding(crossmap(other), other.canonical(), other_code));
            }
        }
        if let Some(y) = yakka {
            concept.add_property(Property::code(property::YAKKA, y));
        }
        batch.concepts.push((system, concept));
    }
    Ok(())
}

/// 医薬品マスター: 2 マスター種別 (`Y`), 3 医薬品コード, 5 漢字名称, 7 カナ名称,
/// 32 薬価基準収載医薬品コード.
fn receipt_drug_row(row: Row, batch: &mut Batch) -> Result<()> {
    row.min_columns(5)?;
    let kind = row.col(2);
    if !kind.is_empty() && kind != "Y" {
        return Err(row.error(format!("column 2 (master type) is `{kind}`, expected `Y` (医薬品)")));
    }
    let code = row.code(3, SystemId::ReceiptDrug)?.ok_or_else(|| row.error("column 3 (医薬品コード) is empty"))?;
    let mut concept = Concept::new(SystemId::ReceiptDrug.canonical(), code, row.required(5, "漢字名称")?);
    concept.designate(Some(KANA), row.col(7));
    if let Some(yakka) = row.code(32, SystemId::Yj)? {
        concept.add_property(Property::code(property::YAKKA, yakka));
    }
    batch.concepts.push((SystemId::ReceiptDrug, concept));
    Ok(())
}

/// 一般名処方マスタ: 2 一般名コード, 3 一般名処方の標準的な記載, 4 成分名.
fn general_name_row(row: Row, batch: &mut Batch) -> Result<()> {
    row.min_columns(3)?;
    let code = row.code(2, SystemId::GeneralName)?.ok_or_else(|| row.error("column 2 (一般名コード) is empty"))?;
    let mut concept =
        Concept::new(SystemId::GeneralName.canonical(), code, row.required(3, "一般名処方の標準的な記載")?);
    concept.designate(None, row.col(4));
    batch.concepts.push((SystemId::GeneralName, concept));
    Ok(())
}

/// JLAC10 items: 1 JLAC10 code, 2 name, 3 kana name.
fn jlac10_item_row(row: Row, batch: &mut Batch) -> Result<()> {
    let (code, name) = row.pair(SystemId::Jlac10)?;
    let mut concept = Concept::new(SystemId::Jlac10.canonical(), code, name);
    concept.designate(Some(KANA), row.col(3));
    batch.concepts.push((SystemId::Jlac10, concept));
    Ok(())
}

/// 病名基本テーブル: 2 病名管理番号, 3 病名表記, 4 病名表記カナ, 6 病名交換用コード, 7 ICD10,
/// 11 レセ電算コード.
fn disease_row(row: Row, batch: &mut Batch) -> Result<()> {
    use SystemId as S;
    row.min_columns(7)?;
    let key = row.code(2, S::DiseaseKeyNumber)?.ok_or_else(|| row.error("column 2 (病名管理番号) is empty"))?;
    let name = row.required(3, "病名表記")?;
    let exchange = row.code(6, S::DiseaseExchangeCode)?;
    let icd10 = row.code(7, S::Icd10Jp)?;
    // The receipt code column is up to 33 characters wide in the specification; only a single
    // 7-digit code is read as a cross-map.
    let receipt = Some(row.col(11)).filter(|c| shape::check(S::ReceiptDisease, c).is_ok());

    let mut concept = Concept::new(S::DiseaseKeyNumber.canonical(), key, name);
    concept.designate(Some(KANA), row.col(4));
    if let Some(x) = exchange {
        concept.add_property(Property::coding(property::EXCHANGE_CODE, S::DiseaseExchangeCode.canonical(), x));
    }
    if let Some(icd) = icd10 {
        concept.add_property(Property::coding(property::ICD10, S::Icd10Jp.canonical(), icd));
    }
    if let Some(r) = receipt {
        concept.add_property(Property::coding(property::RECEIPT_DISEASE, S::ReceiptDisease.canonical(), r));
    }
    if let Some(x) = exchange {
        let mut by_exchange = concept.clone();
        by_exchange.system = S::DiseaseExchangeCode.canonical();
        by_exchange.code = x.to_owned();
        by_exchange.properties.retain(|p| p.code != property::EXCHANGE_CODE);
        by_exchange.add_property(Property::coding(property::KEY_NUMBER, S::DiseaseKeyNumber.canonical(), key));
        batch.concepts.push((S::DiseaseExchangeCode, by_exchange));
    }
    batch.concepts.push((S::DiseaseKeyNumber, concept));
    Ok(())
}

/// A FHIR CodeSystem: every concept (nested ones with a `parent` property), designations and
/// properties as given.
fn fhir_code_system(text: &str, file: &str) -> Result<Batch> {
    let bad = |reason: String| TerminologyError::CodeSystemJson { file: file.to_owned(), reason };
    let cs: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if cs["resourceType"] != "CodeSystem" {
        return Err(bad("not a CodeSystem resource".into()));
    }
    let url = cs["url"].as_str().ok_or_else(|| bad("the CodeSystem has no url".into()))?;
    let system =
        SystemId::from_uri(url).ok_or_else(|| bad(format!("code system `{url}` is not one this crate knows")))?;
    let mut batch = Batch::default();
    if cs["content"] == "complete" {
        batch.complete.push(system);
    }
    let mut stack: Vec<(&Value, Option<&str>)> =
        cs["concept"].as_array().map(|a| a.iter().rev().map(|c| (c, None)).collect()).unwrap_or_default();
    while let Some((c, parent)) = stack.pop() {
        let code = c["code"].as_str().ok_or_else(|| bad("a concept has no code".into()))?;
        let mut concept = Concept::new(system.canonical(), code, c["display"].as_str().unwrap_or(""));
        for d in c["designation"].as_array().into_iter().flatten() {
            if let Some(v) = d["value"].as_str() {
                concept.designate(d["language"].as_str(), v);
            }
        }
        if concept.display.is_empty() {
            // Concepts without a display (the JP-CLINS FHIR識別名 groups) show their first
            // designation, or their code.
            concept.display = concept.designations.first().map_or_else(|| code.to_owned(), |d| d.value.clone());
        }
        if let Some(p) = parent {
            concept.add_property(Property::code(property::PARENT, p));
        }
        for p in c["property"].as_array().into_iter().flatten() {
            if let (Some(pc), Some(value)) = (p["code"].as_str(), property_value(p)) {
                concept.add_property(Property { code: pc.to_owned(), value });
            }
        }
        for child in c["concept"].as_array().into_iter().flatten().rev() {
            stack.push((child, Some(code)));
        }
        batch.concepts.push((system, concept));
    }
    Ok(batch)
}

fn property_value(p: &Value) -> Option<PropertyValue> {
    if let Some(v) = p["valueCode"].as_str() {
        return Some(PropertyValue::Code(v.to_owned()));
    }
    if let Some(v) = p["valueString"].as_str() {
        return Some(PropertyValue::String(v.to_owned()));
    }
    if let Some(v) = p["valueInteger"].as_i64() {
        return Some(PropertyValue::Integer(v));
    }
    if let Some(v) = p["valueBoolean"].as_bool() {
        return Some(PropertyValue::Boolean(v));
    }
    let coding = &p["valueCoding"];
    Some(PropertyValue::Coding {
        system: coding["system"].as_str()?.to_owned(),
        code: coding["code"].as_str()?.to_owned(),
        display: coding["display"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sjis(text: &str) -> Vec<u8> {
        encoding_rs::SHIFT_JIS.encode(text).0.into_owned()
    }

    #[test]
    fn decodes_utf8_bom_and_shift_jis() {
        assert_eq!(decode("\u{feff}血清".as_bytes(), "f").unwrap(), "血清");
        assert_eq!(decode(&sjis("023,血清"), "f").unwrap(), "023,血清");
        let mut bad = sjis("a\nb\n");
        bad.extend_from_slice(&[0x82, 0xFF, b'\n']);
        match decode(&bad, "f.csv").unwrap_err() {
            TerminologyError::Encoding { line, .. } => assert_eq!(line, 3),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn detects_formats_by_file_name() {
        assert_eq!(MasterFormat::detect("MEDIS20240531.TXT"), Some(MasterFormat::HotMaster));
        assert_eq!(MasterFormat::detect("y_ALL20240401.csv"), Some(MasterFormat::ReceiptDrug));
        assert_eq!(MasterFormat::detect("nmain516.txt"), Some(MasterFormat::DiseaseNames));
        assert_eq!(MasterFormat::detect("CodeSystem-x.json"), Some(MasterFormat::FhirCodeSystem));
        assert_eq!(MasterFormat::detect("README.md"), None);
        assert_eq!(MasterFormat::detect("notes.csv"), None);
    }

    #[test]
    fn hot_row_cross_maps_every_code() {
        let line = "1214314010101,1214314,01,01,01,,,2171022F6276,620000001,,告示名,販売名,レセ名,10mg1錠\n";
        let b = parse(MasterFormat::HotMaster, line.as_bytes(), "h").unwrap();
        let systems: Vec<SystemId> = b.concepts.iter().map(|(s, _)| *s).collect();
        use SystemId as S;
        assert_eq!(systems, [S::Hot13, S::Hot9, S::Hot7, S::Yj, S::ReceiptDrug]);
        let yj = &b.concepts[3].1;
        assert_eq!(yj.display, "販売名");
        assert_eq!(yj.property(property::HOT9).count(), 1);
        assert_eq!(yj.property(property::RECEIPT).count(), 1);
        assert_eq!(b.concepts[2].1.display, "告示名");
        assert_eq!(b.concepts[4].1.display, "レセ名");
    }

    #[test]
    fn hot_row_checks_consistency() {
        let err = |line: &str| parse(MasterFormat::HotMaster, line.as_bytes(), "h").unwrap_err().to_string();
        assert!(err("9999999010101,1214314,01,,,,,,,,,名\n").contains("does not start with"));
        assert!(err(",1214314,,,,,,,,,,名\n").contains("filled together"));
        assert!(err(",,,,,,,,,,,名\n").contains("no code"));
        assert!(err(",,,,,,,2171022F6276,,,,\n").contains("both empty"));
        assert!(err(",,,,,,,2171022F627,,,,名\n").contains("h line 1: column 8"));
    }
}
