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
    // 力価区分
    &[
        "urn:oid:1.2.392.100495.20.2.22",
        "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationIngredientStrengthStrengthType",
        "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationIngredientStrengthStrengthType_CS",
    ],
];

/// The row holding `uri`, if any.
fn row(uri: &str) -> Option<&'static [&'static str]> {
    EQUIVALENT.iter().copied().find(|r| r.contains(&uri))
}

/// Whether two system URIs name the same system (equal, or in one row of the table).
pub(crate) fn same_system(a: &str, b: &str) -> bool {
    a == b || row(a).is_some_and(|r| r.contains(&b))
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
        // No URI is in two rows.
        for r in EQUIVALENT {
            for u in *r {
                assert_eq!(EQUIVALENT.iter().filter(|x| x.contains(u)).count(), 1, "{u}");
            }
        }
    }
}
