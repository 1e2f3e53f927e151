//! Code-system URIs (JP Core 1.1.x / JP-CLINS 1.5 URL forms), their legacy aliases, and the
//! implicit value sets this server answers `$validate-code` for.
//!
//! Every URI below was checked against the JP Core 1.1.2 and JP-CLINS 1.5.2 packages (NamingSystem
//! `uniqueId`s, CodeSystem `url`s, profile `fixedUri`s) unless its doc comment says otherwise; the
//! one unverified reading is [`RECEIPT_DRUG`]. `docs/formats/masters.md` has the table.

/// 個別医薬品コード (YJ code, 12 characters).
pub const YJ: &str = "http://capstandard.jp/iyaku.info/CodeSystem/YJ-code";
/// MEDIS HOT7 (処方用番号, 7 digits).
pub const HOT7: &str = "http://medis.or.jp/CodeSystem/master-HOT7";
/// MEDIS HOT9 (処方用番号 + 会社識別用番号, 9 digits).
pub const HOT9: &str = "http://medis.or.jp/CodeSystem/master-HOT9";
/// MEDIS HOT13 (基準番号, 13 digits).
pub const HOT13: &str = "http://medis.or.jp/CodeSystem/master-HOT13";
/// 一般名処方マスタ (MHLW general-name prescription code, `…ZZZ`).
pub const GENERAL_NAME: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode";
/// レセプト電算処理システム 医薬品マスター code (9 digits, starting with 6).
///
/// UNVERIFIED: neither JP Core 1.1.2 nor JP-CLINS 1.5.2 names a URI for this master. This is our
/// reading, formed like the published receipt masters `masterB-disease` (傷病名, file `b`),
/// `masterZ-disease-modifier` (修飾語, `z`) and `masterS-medicalProcedure` (診療行為, `s`); the
/// drug master's file is `y`. Deployments can add the real URI with [`crate::Terminology::with_alias`].
pub const RECEIPT_DRUG: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/masterY-medication";
/// JP-CLINS marker for a medication that has no standard code (`NOCODED`).
pub const MEDICATION_NOCODED: &str = "http://jpfhir.jp/fhir/eCS/CodeSystem/MedicationCodeNocoded_CS";

/// JLAC10 17-digit laboratory test code (MEDIS).
pub const JLAC10: &str = "http://medis.or.jp/CodeSystem/master-JLAC10-17digits";
/// JP-CLINS 検査 core items (JLAC10 children of the 55 FHIR識別名 concepts).
pub const CLINS_CORE_JLAC10: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_CoreLabo_CS";
/// JP-CLINS 検査 core items, JLAC11 (the package references it but ships no content).
pub const CLINS_CORE_JLAC11: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC11/JP_CLINS_ObsLabResult_CoreLabo_CS";
/// JP-CLINS 感染症 items (JLAC10).
pub const CLINS_INFECTION_JLAC10: &str =
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_InfectionLabo_CS";
/// JP-CLINS 感染症 items, JLAC11 (referenced, no content in the package).
pub const CLINS_INFECTION_JLAC11: &str =
    "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC11/JP_CLINS_ObsLabResult_InfectionLabo_CS";
/// JP-CLINS marker for a lab item with no JLAC code (`99999999999999999`).
pub const CLINS_LAB_UNCODED: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_Uncoded_CS";
/// JLAC10 材料 (specimen material, 3 digits), e.g. `023` 血清.
pub const SAMPLE_MATERIAL: &str = "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationSampleMaterialCode_CS";

/// ICD-10 (2013, Japanese edition, full digits) as used by the MEDIS/receipt disease masters.
pub const ICD10_JP: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full";
/// ICD-10 (2013, Japanese edition), three-character categories.
pub const ICD10_JP_3DIGITS: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-3digits";
/// MEDIS 標準病名マスター 病名管理番号 (8 digits).
pub const DISEASE_KEY_NUMBER: &str = "http://medis.or.jp/CodeSystem/master-disease-keyNumber";
/// MEDIS 標準病名マスター 病名交換用コード (4 characters).
pub const DISEASE_EXCHANGE_CODE: &str = "http://medis.or.jp/CodeSystem/master-disease-exCode";
/// MEDIS 修飾語管理番号 (8 digits).
pub const MODIFIER_KEY_NUMBER: &str = "http://medis.or.jp/CodeSystem/master-disease-modKeyNumber";
/// MEDIS 修飾語交換用コード (4 characters).
pub const MODIFIER_EXCHANGE_CODE: &str = "http://medis.or.jp/CodeSystem/master-disease-modExCode";
/// レセプト電算処理用 傷病名コード (7 digits).
pub const RECEIPT_DISEASE: &str = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/masterB-disease";

/// The code systems this crate knows. Codings in any other system are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemId {
    Yj,
    Hot7,
    Hot9,
    Hot13,
    GeneralName,
    ReceiptDrug,
    MedicationNocoded,
    Jlac10,
    ClinsCoreJlac10,
    ClinsCoreJlac11,
    ClinsInfectionJlac10,
    ClinsInfectionJlac11,
    ClinsLabUncoded,
    SampleMaterial,
    Icd10Jp,
    Icd10Jp3,
    DiseaseKeyNumber,
    DiseaseExchangeCode,
    ModifierKeyNumber,
    ModifierExchangeCode,
    ReceiptDisease,
}

/// What this crate knows about one code system.
#[derive(Debug)]
pub struct SystemInfo {
    pub id: SystemId,
    /// The canonical (URL) form, used in everything this crate writes.
    pub canonical: &'static str,
    /// Other URIs meaning the same system: legacy `urn:oid:` forms and the JP Core
    /// `JP_…_CS` URLs listed in the NamingSystems.
    pub aliases: &'static [&'static str],
    /// A short human name for messages (`YJ code`, `JLAC10`).
    pub name: &'static str,
}

const ALL: &[SystemInfo] = &[
    SystemInfo {
        id: SystemId::Yj,
        canonical: YJ,
        aliases: &[
            "urn:oid:1.2.392.100495.20.1.73",
            "urn:oid:1.2.392.100495.20.2.73",
            "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeYJ_CS",
        ],
        name: "YJ code",
    },
    SystemInfo {
        id: SystemId::Hot7,
        canonical: HOT7,
        aliases: &["urn:oid:1.2.392.200119.4.403.2", "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT7_CS"],
        name: "HOT7",
    },
    SystemInfo {
        id: SystemId::Hot9,
        canonical: HOT9,
        aliases: &[
            "urn:oid:1.2.392.200119.4.403.1",
            "urn:oid:1.2.392.100495.20.2.74",
            "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT9_CS",
        ],
        name: "HOT9",
    },
    SystemInfo {
        id: SystemId::Hot13,
        canonical: HOT13,
        aliases: &["urn:oid:1.2.392.200119.4.402.1", "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeHOT13_CS"],
        name: "HOT13",
    },
    SystemInfo {
        id: SystemId::GeneralName,
        canonical: GENERAL_NAME,
        aliases: &[
            "urn:oid:1.2.392.100495.20.1.81",
            "urn:oid:1.2.392.100495.20.2.81",
            "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeCommon_CS",
        ],
        name: "general-name prescription code",
    },
    SystemInfo { id: SystemId::ReceiptDrug, canonical: RECEIPT_DRUG, aliases: &[], name: "receipt drug code" },
    SystemInfo {
        id: SystemId::MedicationNocoded,
        canonical: MEDICATION_NOCODED,
        aliases: &[],
        name: "no-standard-code medication marker",
    },
    SystemInfo {
        id: SystemId::Jlac10,
        canonical: JLAC10,
        aliases: &[
            "urn:oid:1.2.392.200119.4.504",
            "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationLabResultCode_CS",
        ],
        name: "JLAC10",
    },
    SystemInfo {
        id: SystemId::ClinsCoreJlac10,
        canonical: CLINS_CORE_JLAC10,
        aliases: &[],
        name: "JP-CLINS core lab (JLAC10)",
    },
    SystemInfo {
        id: SystemId::ClinsCoreJlac11,
        canonical: CLINS_CORE_JLAC11,
        aliases: &[],
        name: "JP-CLINS core lab (JLAC11)",
    },
    SystemInfo {
        id: SystemId::ClinsInfectionJlac10,
        canonical: CLINS_INFECTION_JLAC10,
        aliases: &[],
        name: "JP-CLINS infection lab (JLAC10)",
    },
    SystemInfo {
        id: SystemId::ClinsInfectionJlac11,
        canonical: CLINS_INFECTION_JLAC11,
        aliases: &[],
        name: "JP-CLINS infection lab (JLAC11)",
    },
    SystemInfo {
        id: SystemId::ClinsLabUncoded,
        canonical: CLINS_LAB_UNCODED,
        aliases: &[],
        name: "uncoded lab marker",
    },
    SystemInfo {
        id: SystemId::SampleMaterial,
        canonical: SAMPLE_MATERIAL,
        aliases: &[],
        name: "JLAC10 specimen material",
    },
    SystemInfo {
        id: SystemId::Icd10Jp,
        canonical: ICD10_JP,
        aliases: &["urn:oid:2.16.840.1.113883.6.3.1", "http://www.mhlw.go.jp/toukei/sippei/2013/ICD10-JP"],
        name: "ICD-10 (2013)",
    },
    SystemInfo {
        id: SystemId::Icd10Jp3,
        canonical: ICD10_JP_3DIGITS,
        aliases: &[],
        name: "ICD-10 (2013, 3 characters)",
    },
    SystemInfo {
        id: SystemId::DiseaseKeyNumber,
        canonical: DISEASE_KEY_NUMBER,
        aliases: &["urn:oid:1.2.392.200119.4.101.2"],
        name: "MEDIS disease key number",
    },
    SystemInfo {
        id: SystemId::DiseaseExchangeCode,
        canonical: DISEASE_EXCHANGE_CODE,
        aliases: &["urn:oid:1.2.392.200119.4.101.6"],
        name: "MEDIS disease exchange code",
    },
    SystemInfo {
        id: SystemId::ModifierKeyNumber,
        canonical: MODIFIER_KEY_NUMBER,
        aliases: &["urn:oid:1.2.392.200119.4.201.2"],
        name: "MEDIS modifier key number",
    },
    SystemInfo {
        id: SystemId::ModifierExchangeCode,
        canonical: MODIFIER_EXCHANGE_CODE,
        aliases: &["urn:oid:1.2.392.200119.4.201.5"],
        name: "MEDIS modifier exchange code",
    },
    SystemInfo { id: SystemId::ReceiptDisease, canonical: RECEIPT_DISEASE, aliases: &[], name: "receipt disease code" },
];

impl SystemId {
    /// Every known system.
    pub fn all() -> impl Iterator<Item = SystemId> {
        ALL.iter().map(|i| i.id)
    }

    /// This system's description.
    pub fn info(self) -> &'static SystemInfo {
        // `ALL` lists the variants in declaration order; the test `table_is_in_variant_order`
        // keeps it so, which makes this index lookup exact.
        &ALL[self as usize]
    }

    /// The canonical URI.
    pub fn canonical(self) -> &'static str {
        self.info().canonical
    }

    /// Resolves a `Coding.system` value (canonical or alias) to a known system.
    pub fn from_uri(uri: &str) -> Option<SystemId> {
        ALL.iter().find(|i| i.canonical == uri || i.aliases.contains(&uri)).map(|i| i.id)
    }

    /// The implicit value set of all codes of this system: `<canonical>?vs`.
    pub fn implicit_value_set(self) -> String {
        format!("{}{IMPLICIT_VS_SUFFIX}", self.canonical())
    }
}

/// Appended to a code-system canonical to name its implicit all-codes value set (the form HL7
/// uses for SNOMED CT's and LOINC's implicit value sets, `?fhir_vs`, shortened as the brief asked).
pub const IMPLICIT_VS_SUFFIX: &str = "?vs";

/// Value sets published by JP Core / JP-CLINS whose compose is "all codes of these systems"
/// (checked in the packages), answered in addition to the implicit `?vs` ones.
const PUBLISHED_VALUE_SETS: &[(&str, &[SystemId])] = &[
    ("http://medis.or.jp/ValueSet/master-disease-keyNumber", &[SystemId::DiseaseKeyNumber]),
    (
        "http://jpfhir.jp/fhir/eCS/ValueSet/JP_eCS_ObservationLabResultCode_VS",
        &[SystemId::ClinsCoreJlac10, SystemId::ClinsInfectionJlac10, SystemId::Jlac10, SystemId::ClinsLabUncoded],
    ),
    ("http://jpfhir.jp/fhir/eCS/CodeSystem/MedicationCodeNocoded_VS", &[SystemId::MedicationNocoded]),
];

/// The systems a value-set canonical (without `|version`) covers, if this server knows it.
pub fn value_set_systems(url: &str) -> Option<Vec<SystemId>> {
    if let Some(system) = url.strip_suffix(IMPLICIT_VS_SUFFIX) {
        // Only the canonical form names an implicit value set; `urn:oid:…?vs` is not a URL.
        return ALL.iter().find(|i| i.canonical == system).map(|i| vec![i.id]);
    }
    PUBLISHED_VALUE_SETS.iter().find(|(u, _)| *u == url).map(|(_, systems)| systems.to_vec())
}

/// Every value-set canonical this server answers (for documentation and capability listings).
pub fn value_set_urls() -> Vec<String> {
    let mut urls: Vec<String> = SystemId::all().map(SystemId::implicit_value_set).collect();
    urls.extend(PUBLISHED_VALUE_SETS.iter().map(|(u, _)| (*u).to_owned()));
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_variant_order() {
        for (i, info) in ALL.iter().enumerate() {
            assert_eq!(info.id as usize, i, "{}", info.canonical);
        }
    }

    #[test]
    fn aliases_resolve_to_the_canonical_system() {
        assert_eq!(SystemId::from_uri("urn:oid:1.2.392.100495.20.1.73"), Some(SystemId::Yj));
        assert_eq!(SystemId::from_uri("urn:oid:1.2.392.100495.20.2.73"), Some(SystemId::Yj));
        assert_eq!(SystemId::from_uri("urn:oid:1.2.392.200119.4.403.1"), Some(SystemId::Hot9));
        assert_eq!(SystemId::from_uri("urn:oid:1.2.392.200119.4.504"), Some(SystemId::Jlac10));
        assert_eq!(SystemId::from_uri(JLAC10), Some(SystemId::Jlac10));
        assert_eq!(SystemId::from_uri("http://loinc.org"), None);
    }

    #[test]
    fn no_uri_is_claimed_twice() {
        let mut seen = std::collections::HashSet::new();
        for info in ALL {
            for uri in std::iter::once(&info.canonical).chain(info.aliases) {
                assert!(seen.insert(*uri), "{uri} is listed twice");
            }
        }
    }

    #[test]
    fn value_sets_resolve() {
        assert_eq!(value_set_systems(&format!("{JLAC10}?vs")), Some(vec![SystemId::Jlac10]));
        assert_eq!(value_set_systems("urn:oid:1.2.392.200119.4.504?vs"), None);
        assert_eq!(value_set_systems(JLAC10), None);
        assert_eq!(
            value_set_systems("http://medis.or.jp/ValueSet/master-disease-keyNumber"),
            Some(vec![SystemId::DiseaseKeyNumber])
        );
    }
}
