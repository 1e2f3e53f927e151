//! The lab's test catalogue and its deterministic result values.
//!
//! Tests are looked up by the JLAC10 analyte code (the first 5 of the 17 characters), so every
//! method and material variant of, say, total protein (`3A010…`) gets total protein's units
//! and range. Reference ranges follow the JCCLS common reference intervals (共用基準範囲) as
//! commonly published, sex-specific where those are; they are plausible test data, not
//! clinical reference.
//!
//! Values are derived from the test code and the placer order number only, so the same order
//! always gets the same results: about a quarter fall outside the range and carry `H` or `L`.

use ehr_hl7v2::Sex;

/// One test the lab knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatalogEntry {
    /// The JLAC10 analyte code (5 characters).
    pub analyte: &'static str,
    /// The test name as the lab writes it in OBX-3.2.
    pub name: &'static str,
    /// The lab's own code, written as the alternate triplet of OBX-3 (system [`LOCAL_SYSTEM`]).
    pub local_code: &'static str,
    /// Units (OBX-6); empty for ratios.
    pub unit: &'static str,
    /// Reference range for men, (low, high).
    pub male: (f64, f64),
    /// Reference range for women, (low, high).
    pub female: (f64, f64),
    /// Decimal places of values and ranges.
    pub decimals: usize,
}

/// The coding system of the lab's local codes and units (HL7 local systems start with `99`).
pub const LOCAL_SYSTEM: &str = "99LAB";

const fn both(
    analyte: &'static str,
    name: &'static str,
    local_code: &'static str,
    unit: &'static str,
    low: f64,
    high: f64,
    decimals: usize,
) -> CatalogEntry {
    CatalogEntry { analyte, name, local_code, unit, male: (low, high), female: (low, high), decimals }
}

/// The catalogue: common chemistry and blood count tests.
pub const CATALOG: &[CatalogEntry] = &[
    both("3A010", "総蛋白", "L0101", "g/dL", 6.6, 8.1, 1),
    both("3A015", "アルブミン", "L0102", "g/dL", 4.1, 5.1, 1),
    both("3A016", "A/G比", "L0103", "", 1.32, 2.23, 2),
    both("3B035", "AST", "L0201", "U/L", 13.0, 30.0, 0),
    CatalogEntry { male: (10.0, 42.0), female: (7.0, 23.0), ..both("3B045", "ALT", "L0202", "U/L", 0.0, 0.0, 0) },
    both("3B070", "ALP", "L0203", "U/L", 106.0, 322.0, 0),
    CatalogEntry { male: (13.0, 64.0), female: (9.0, 32.0), ..both("3B090", "γ-GT", "L0204", "U/L", 0.0, 0.0, 0) },
    both("3J010", "総ビリルビン", "L0205", "mg/dL", 0.4, 1.5, 1),
    CatalogEntry {
        male: (0.65, 1.07),
        female: (0.46, 0.79),
        ..both("3C015", "クレアチニン", "L0301", "mg/dL", 0.0, 0.0, 2)
    },
    CatalogEntry { male: (3.7, 7.8), female: (2.6, 5.5), ..both("3C020", "尿酸", "L0302", "mg/dL", 0.0, 0.0, 1) },
    both("3C025", "尿素窒素", "L0303", "mg/dL", 8.0, 20.0, 0),
    both("3D010", "グルコース", "L0401", "mg/dL", 73.0, 109.0, 0),
    both("3D046", "HbA1c(NGSP)", "L0402", "%", 4.9, 6.0, 1),
    both("3F050", "総コレステロール", "L0501", "mg/dL", 142.0, 248.0, 0),
    CatalogEntry {
        male: (40.0, 234.0),
        female: (30.0, 117.0),
        ..both("3F015", "中性脂肪", "L0502", "mg/dL", 0.0, 0.0, 0)
    },
    CatalogEntry {
        male: (38.0, 90.0),
        female: (48.0, 103.0),
        ..both("3F070", "HDL-コレステロール", "L0503", "mg/dL", 0.0, 0.0, 0)
    },
    both("3F077", "LDL-コレステロール", "L0504", "mg/dL", 65.0, 163.0, 0),
    CatalogEntry {
        male: (435.0, 555.0),
        female: (386.0, 492.0),
        ..both("2A020", "赤血球数", "L0601", "10*4/uL", 0.0, 0.0, 0)
    },
    CatalogEntry {
        male: (13.7, 16.8),
        female: (11.6, 14.8),
        ..both("2A030", "ヘモグロビン", "L0602", "g/dL", 0.0, 0.0, 1)
    },
    CatalogEntry {
        male: (40.7, 50.1),
        female: (35.1, 44.4),
        ..both("2A040", "ヘマトクリット", "L0603", "%", 0.0, 0.0, 1)
    },
];

/// The catalogue entry for a JLAC10 code, by its analyte part.
pub fn lookup(jlac10: &str) -> Option<&'static CatalogEntry> {
    let analyte = jlac10.get(..5)?;
    CATALOG.iter().find(|e| e.analyte == analyte)
}

/// A result value with what goes beside it in the OBX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedValue {
    /// OBX-5, formatted with the test's decimals.
    pub value: String,
    /// OBX-6 units; `None` for unitless tests.
    pub unit: Option<String>,
    /// OBX-7 (`6.6-8.1`); `None` for tests outside the catalogue.
    pub reference_range: Option<String>,
    /// OBX-8: `H` or `L` when outside the range.
    pub abnormal_flag: Option<&'static str>,
    /// OBX-3.2: the catalogue's name, or the name the order gave.
    pub name: String,
    /// The lab's local code (OBX-3.4).
    pub local_code: String,
}

/// FNV-1a: a small, stable hash (the standard library's is randomised per process).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xFF]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    hash
}

/// A ten-digit filler order number (the lab's 受付番号) derived from the placer order number.
pub fn filler_order_number(placer: &str) -> String {
    format!("L{:010}", fnv1a(&[b"filler", placer.as_bytes()]) % 10_000_000_000)
}

/// The value of test `jlac10` in order `placer` for a patient of `sex`; `ordered_name` is used
/// for tests outside the catalogue.
pub fn generate(jlac10: &str, placer: &str, sex: Option<Sex>, ordered_name: &str) -> GeneratedValue {
    let hash = fnv1a(&[jlac10.as_bytes(), placer.as_bytes()]);
    // A position along the range from -0.25 to 1.25: a quarter of values fall outside.
    let position = -0.25 + 1.5 * ((hash % 10_000) as f64 / 10_000.0);
    let Some(entry) = lookup(jlac10) else {
        let analyte = jlac10.get(..5).unwrap_or(jlac10);
        return GeneratedValue {
            value: format!("{:.1}", 1.0 + 98.9 * ((hash % 10_000) as f64 / 10_000.0)),
            unit: None,
            reference_range: None,
            abnormal_flag: None,
            name: ordered_name.to_owned(),
            local_code: format!("X{analyte}"),
        };
    };
    let (low, high) = match sex {
        Some(Sex::Male) => entry.male,
        Some(Sex::Female) => entry.female,
        // Sex unknown: the envelope of both ranges, so no value is flagged for the wrong sex.
        _ => (entry.male.0.min(entry.female.0), entry.male.1.max(entry.female.1)),
    };
    let decimals = entry.decimals;
    let mut value = low + (high - low) * position;
    if value <= 0.0 {
        value = low / 2.0;
    }
    let value = format!("{value:.decimals$}");
    // Flag the value as written, so a rounded value on the limit is not flagged.
    let written: f64 = value.parse().unwrap_or(low);
    let abnormal_flag = if written < low {
        Some("L")
    } else if written > high {
        Some("H")
    } else {
        None
    };
    GeneratedValue {
        value,
        unit: Some(entry.unit.to_owned()).filter(|u| !u.is_empty()),
        reference_range: Some(format!("{low:.decimals$}-{high:.decimals$}")),
        abnormal_flag,
        name: entry.name.to_owned(),
        local_code: entry.local_code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_and_plausible() {
        let a = generate("3A010000002327101", "000000011000354", Some(Sex::Male), "総蛋白");
        assert_eq!(a, generate("3A010000002327101", "000000011000354", Some(Sex::Male), "x"));
        assert_eq!(a.name, "総蛋白");
        assert_eq!(a.unit.as_deref(), Some("g/dL"));
        assert_eq!(a.reference_range.as_deref(), Some("6.6-8.1"));
        let v: f64 = a.value.parse().unwrap();
        assert!((6.6 - 0.4..=8.1 + 0.4).contains(&v), "{v}");
        assert_eq!(a.abnormal_flag.is_some(), !(6.6..=8.1).contains(&v));
    }

    #[test]
    fn some_values_are_flagged_over_many_orders() {
        let flags: Vec<_> =
            (0..200).map(|n| generate("3D010000002227101", &format!("P{n}"), None, "").abnormal_flag).collect();
        let high = flags.iter().filter(|f| **f == Some("H")).count();
        let low = flags.iter().filter(|f| **f == Some("L")).count();
        assert!(high > 10 && low > 10 && high + low < 100, "{high} {low}");
    }

    #[test]
    fn sex_specific_ranges_and_unknown_tests() {
        let f = generate("3C015000002327101", "P1", Some(Sex::Female), "");
        assert_eq!(f.reference_range.as_deref(), Some("0.46-0.79"));
        let u = generate("3C015000002327101", "P1", None, "");
        assert_eq!(u.reference_range.as_deref(), Some("0.46-1.07"));
        let x = generate("9Z999000000000001", "P1", None, "謎の検査");
        assert_eq!((x.name.as_str(), x.local_code.as_str(), x.reference_range), ("謎の検査", "X9Z999", None));
        assert_eq!(filler_order_number("A"), filler_order_number("A"));
        assert_ne!(filler_order_number("A"), filler_order_number("B"));
        assert_eq!(filler_order_number("A").len(), 11);
    }
}
