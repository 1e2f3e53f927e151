//! Legacy OIDs and the URLs that replaced them, read as the same identifier / code system.
//!
//! JP-CLINS 1.5.0 switched `system` values from `urn:oid:1.2.392.100495.20…` to http URLs, but
//! the embedded JP Core 1.1.2 definitions still fix the OIDs (JP_Organization_InsuranceOrganizationNo
//! fixes `urn:oid:1.2.392.100495.20.3.23`, while the JP-CLINS examples send
//! `http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicalOrganizationID`). Fixed/pattern comparisons,
//! slice discriminators and required bindings therefore compare systems through this table: any
//! two URIs of one row are equal. Rows come from the JP Core 1.1.2 NamingSystems (OID + JP Core
//! `JP_…_CS` URL) and the JP-CLINS 1.5 history / examples (the `…/core/mhlw/…` URLs); see
//! `jp-standards.md` §A.5 and `crates/fhir/profiles/README.md`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Groups of URIs naming one system.
const EQUIVALENT: &[&[&str]] = &[
    // 保険者番号
    &["urn:oid:1.2.392.100495.20.3.61", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber"],
    // 医療機関コード (7 digits)
    &["urn:oid:1.2.392.100495.20.3.23", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicalOrganizationID"],
    // 都道府県番号
    &[
        "urn:oid:1.2.392.100495.20.3.21",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/PrefectureNo-2digits",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_PrefectureNumber_CS",
    ],
    // 点数表番号
    &[
        "urn:oid:1.2.392.100495.20.3.22",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationFeeScoreType",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicalFeeScoreType_CS",
    ],
    // 医籍登録番号
    &["urn:oid:1.2.392.100495.20.3.31", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/medicalRegistrationNumber"],
    // 公費負担者番号
    &["urn:oid:1.2.392.100495.20.3.71", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/PublicPayerNumber"],
    // RP番号, RP内番号
    &["urn:oid:1.2.392.100495.20.3.81", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber"],
    &["urn:oid:1.2.392.100495.20.3.82", "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicationAdministrationIndex"],
    // 個別医薬品コード (YJ)
    &[
        "urn:oid:1.2.392.100495.20.1.73",
        "urn:oid:1.2.392.100495.20.2.73",
        "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeYJ_CS",
    ],
    // 一般名処方マスタ
    &[
        "urn:oid:1.2.392.100495.20.1.81",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeCommon_CS",
    ],
    // MERIT-9 単位
    &[
        "urn:oid:1.2.392.100495.20.2.101",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationUnitMERIT9Code",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationUnitMERIT9_CS",
    ],
    // JLAC10 17桁 (JP Core 1.1.2 JP_Observation_LabResult fixes the OID; JP-CLINS §A.7 the URL)
    &["urn:oid:1.2.392.200119.4.504", "http://medis.or.jp/CodeSystem/master-JLAC10-17digits"],
    // 力価区分
    &[
        "urn:oid:1.2.392.100495.20.2.22",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationIngredientStrengthStrengthType",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationIngredientStrengthStrengthType_CS",
    ],
];

/// URI → its row in [`EQUIVALENT`], built once. Every string compared by fixed / pattern /
/// discriminator values goes through [`same_system`], so a lookup must not scan the table.
fn index() -> &'static HashMap<&'static str, usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX.get_or_init(|| EQUIVALENT.iter().enumerate().flat_map(|(i, r)| r.iter().map(move |u| (*u, i))).collect())
}

/// The row holding `uri`, if any.
fn row(uri: &str) -> Option<&'static [&'static str]> {
    // Codes, display texts and most values are short: no table URI is.
    if uri.len() < SHORTEST {
        return None;
    }
    index().get(uri).and_then(|&i| EQUIVALENT.get(i)).copied()
}

/// The length of the shortest URI of the table (`urn:oid:1.2.392.200119.4.504`).
const SHORTEST: usize = 28;

/// Whether two system URIs name the same system (equal, or in one row of the table).
pub(crate) fn same_system(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if a.len() < SHORTEST || b.len() < SHORTEST {
        return false;
    }
    let idx = index();
    matches!((idx.get(a), idx.get(b)), (Some(x), Some(y)) if x == y)
}

/// The other URIs naming the same system as `uri` (empty when it has none).
pub(crate) fn equivalents(uri: &str) -> impl Iterator<Item = &'static str> + '_ {
    row(uri).into_iter().flatten().copied().filter(move |u| *u != uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert!(same_system(
            "urn:oid:1.2.392.100495.20.3.23",
            "http://jpfhir.jp/fhir/core/mhlw/IdSystem/MedicalOrganizationID"
        ));
        assert!(!same_system("urn:oid:1.2.392.100495.20.3.23", "urn:oid:1.2.392.100495.20.3.61"));
        assert!(same_system("x", "x"));
        assert_eq!(equivalents("urn:oid:1.2.392.100495.20.3.61").count(), 1);
        assert_eq!(equivalents("http://example.org").count(), 0);
        assert!(same_system("http://medis.or.jp/CodeSystem/master-JLAC10-17digits", "urn:oid:1.2.392.200119.4.504"));
        assert!(!same_system("01910", "01920"));
        // The length cut-off is the shortest URI of the table.
        assert_eq!(EQUIVALENT.iter().flat_map(|r| r.iter()).map(|u| u.len()).min(), Some(SHORTEST));
        // No URI is in two rows.
        for r in EQUIVALENT {
            for u in *r {
                assert_eq!(EQUIVALENT.iter().filter(|x| x.contains(u)).count(), 1, "{u}");
            }
        }
    }
}
