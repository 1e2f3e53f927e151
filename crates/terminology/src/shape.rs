//! Format ("shape") checks per code system: a code can be rejected for its form with no master
//! loaded at all. The rules and where they come from are in `docs/formats/masters.md`.

use crate::systems::SystemId;

/// Why a code does not have the form its system requires (lowercase, for issue text).
pub type ShapeError = &'static str;

fn all(code: &str, pred: impl Fn(u8) -> bool) -> bool {
    code.bytes().all(pred)
}

fn digits(code: &str, len: usize) -> bool {
    code.len() == len && all(code, |b| b.is_ascii_digit())
}

fn upper_alnum(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_uppercase()
}

/// 薬価基準/YJ form: 4-digit 薬効分類 + 3-digit 投与経路・成分 + 剤形 letter + 規格 + 2-digit 銘柄
/// + check character. The check-digit algorithm is not verified, so it is not computed.
fn yj_like(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 12
        && b[..7].iter().all(u8::is_ascii_digit)
        && b[7].is_ascii_uppercase()
        && b[8..].iter().all(|&c| upper_alnum(c))
}

/// A concept name of the JP-CLINS lab code systems (`ALB`, `U-A/C`, `HBs-AG-RESULT`) or a JLAC11
/// code, whose structure is not verified: 1–64 ASCII letters, digits, `-`, `/`, `.`.
fn token(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code.as_bytes()[0].is_ascii_alphanumeric()
        && all(code, |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'.'))
}

/// The parts of a JLAC10 17-digit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jlac10<'a> {
    /// 分析物コード (5), e.g. `3B035` (AST).
    pub analyte: &'a str,
    /// 識別コード (4), e.g. `0000`.
    pub identification: &'a str,
    /// 材料コード (3), e.g. `023` 血清.
    pub material: &'a str,
    /// 測定法コード (3), e.g. `272` 紫外吸光光度法.
    pub method: &'a str,
    /// 結果識別コード (2).
    pub result_type: &'a str,
}

impl<'a> Jlac10<'a> {
    /// Splits a JLAC10 code, or says why it is not one.
    pub fn parse(code: &'a str) -> Result<Self, ShapeError> {
        let b = code.as_bytes();
        if b.len() != 17 {
            return Err("a JLAC10 code has 17 characters");
        }
        // Analyte: 大分類 digit, 中分類 (a capital letter in every published code; digits are
        // tolerated), then three characters; the remaining twelve are digits in all 692 codes of
        // the JP-CLINS code systems, identification letters are tolerated.
        if !b[0].is_ascii_digit() || !b[1..9].iter().all(|&c| upper_alnum(c)) {
            return Err("JLAC10 analyte (5) and identification (4) codes are digits and capital letters");
        }
        if !b[9..].iter().all(u8::is_ascii_digit) {
            return Err("JLAC10 material (3), method (3) and result-type (2) codes are digits");
        }
        Ok(Self {
            analyte: &code[0..5],
            identification: &code[5..9],
            material: &code[9..12],
            method: &code[12..15],
            result_type: &code[15..17],
        })
    }
}

/// Checks `code` against the form of `system`.
pub fn check(system: SystemId, code: &str) -> Result<(), ShapeError> {
    use SystemId as S;
    let (ok, why) = match system {
        S::Yj => (yj_like(code), "a YJ code has 12 characters: 7 digits, a capital letter, 4 digits or letters"),
        S::GeneralName => (
            yj_like(code) && code.ends_with("ZZZ"),
            "a general-name code has 12 characters: 9 as in a YJ code, then ZZZ",
        ),
        S::Hot7 => (digits(code, 7), "a HOT7 code has 7 digits"),
        S::Hot9 => (digits(code, 9), "a HOT9 code has 9 digits"),
        S::Hot13 => (digits(code, 13), "a HOT13 code has 13 digits"),
        S::ReceiptDrug => {
            (digits(code, 9) && code.starts_with('6'), "a receipt drug code has 9 digits starting with 6")
        }
        S::Jlac10 => return Jlac10::parse(code).map(|_| ()),
        S::ClinsCoreJlac10 | S::ClinsInfectionJlac10 => {
            (Jlac10::parse(code).is_ok() || token(code), "expected a JLAC10 code or a JP-CLINS item name")
        }
        S::ClinsCoreJlac11 | S::ClinsInfectionJlac11 | S::MedicationNocoded => {
            (token(code), "expected 1-64 letters, digits, '-', '/' or '.'")
        }
        S::ClinsLabUncoded => (digits(code, 17), "the uncoded-lab marker has 17 digits"),
        S::SampleMaterial => (digits(code, 3), "a JLAC10 material code has 3 digits"),
        S::Icd10Jp => (icd10(code), "an ICD-10 code is a capital letter, 2 digits and up to 2 more digits"),
        S::Icd10Jp3 => (code.len() == 3 && icd10(code), "a 3-character ICD-10 code is a capital letter and 2 digits"),
        S::DiseaseKeyNumber | S::ModifierKeyNumber => (digits(code, 8), "a MEDIS key number has 8 digits"),
        S::DiseaseExchangeCode | S::ModifierExchangeCode => {
            (code.len() == 4 && all(code, upper_alnum), "a MEDIS exchange code has 4 digits or capital letters")
        }
        S::ReceiptDisease => (digits(code, 7), "a receipt disease code has 7 digits"),
    };
    if ok { Ok(()) } else { Err(why) }
}

/// `A00`, `A000`, `A00.0`, `S7200` (Japan adds a fifth character in places), with an optional dot.
fn icd10(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() < 3 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_digit() || !b[2].is_ascii_digit() {
        return false;
    }
    let rest = code[3..].strip_prefix('.').unwrap_or(&code[3..]);
    let dotted = rest.len() != code.len() - 3;
    match rest.len() {
        0 => !dotted,
        1 | 2 => all(rest, |c| c.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SystemId as S;

    #[test]
    fn drug_codes() {
        assert!(check(S::Yj, "2171022F6276").is_ok());
        assert!(check(S::Yj, "1149019F1560").is_ok());
        assert!(check(S::Yj, "2171022F627").is_err());
        assert!(check(S::Yj, "21710226F276").is_err());
        assert!(check(S::Yj, "2171022f6276").is_err());
        assert!(check(S::GeneralName, "1149019F1ZZZ").is_ok());
        assert!(check(S::GeneralName, "1149019F1560").is_err());
        assert!(check(S::Hot7, "1214314").is_ok());
        assert!(check(S::Hot9, "121431401").is_ok());
        // The JAMI ePrescriptionData example carries a 10-digit "HOT9"; it is rejected.
        assert!(check(S::Hot9, "1012309020").is_err());
        assert!(check(S::Hot13, "1214314010101").is_ok());
        assert!(check(S::Hot13, "121431401010").is_err());
        assert!(check(S::ReceiptDrug, "620098801").is_ok());
        assert!(check(S::ReceiptDrug, "120098801").is_err());
        assert!(check(S::ReceiptDrug, "62009880").is_err());
    }

    #[test]
    fn jlac10_structure() {
        let j = Jlac10::parse("3B035000002327201").unwrap();
        assert_eq!(
            (j.analyte, j.identification, j.material, j.method, j.result_type),
            ("3B035", "0000", "023", "272", "01")
        );
        assert!(check(S::Jlac10, "3B03500000232720").is_err());
        assert!(check(S::Jlac10, "3B0350000023272A1").is_err());
        assert!(check(S::Jlac10, "AB035000002327201").is_err());
        assert!(check(S::ClinsCoreJlac10, "3H015000001826101").is_ok());
        assert!(check(S::ClinsCoreJlac10, "U-A/C").is_ok());
        assert!(check(S::ClinsCoreJlac10, "血清").is_err());
        assert!(check(S::ClinsLabUncoded, "99999999999999999").is_ok());
        assert!(check(S::SampleMaterial, "023").is_ok());
        assert!(check(S::SampleMaterial, "23").is_err());
    }

    #[test]
    fn disease_codes() {
        for ok in ["I10", "C169", "K26.9", "S7200"] {
            assert!(check(S::Icd10Jp, ok).is_ok(), "{ok}");
        }
        for bad in ["i10", "I1", "C16.", "C16999", "C1X9", "10"] {
            assert!(check(S::Icd10Jp, bad).is_err(), "{bad}");
        }
        assert!(check(S::Icd10Jp3, "C16").is_ok());
        assert!(check(S::Icd10Jp3, "C169").is_err());
        assert!(check(S::DiseaseKeyNumber, "20064049").is_ok());
        assert!(check(S::DiseaseKeyNumber, "2006404").is_err());
        assert!(check(S::DiseaseExchangeCode, "L3RF").is_ok());
        assert!(check(S::DiseaseExchangeCode, "l3rf").is_err());
        assert!(check(S::ReceiptDisease, "8848176").is_ok());
    }
}
