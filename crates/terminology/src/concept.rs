//! Concepts as a lookup returns them: display, designations, properties (including cross-maps
//! to other systems: a YJ code's HOT and receipt codes, a disease name's ICD-10 code).

use serde_json::{Value, json};

/// Designation language for katakana readings (BCP 47 `ja` + ISO 15924 script `Kana`): the
/// masters' カナ名称 columns.
pub const KANA: &str = "ja-Kana";

/// Property codes this crate writes. The JP-CLINS code systems keep their own (`specimen`,
/// `method`, `unit`, …) as the package defines them.
pub mod property {
    /// Cross-map to the YJ code (valueCoding).
    pub const YJ: &str = "yj";
    /// Cross-map to HOT7 (valueCoding).
    pub const HOT7: &str = "hot7";
    /// Cross-map to HOT9 (valueCoding).
    pub const HOT9: &str = "hot9";
    /// Cross-map to HOT13 (valueCoding).
    pub const HOT13: &str = "hot13";
    /// Cross-map to the receipt drug code (valueCoding).
    pub const RECEIPT: &str = "receipt";
    /// 薬価基準収載医薬品コード (valueCode; not a FHIR code system of its own).
    pub const YAKKA: &str = "yakka-kijun";
    /// Cross-map to ICD-10 (valueCoding).
    pub const ICD10: &str = "icd10";
    /// Cross-map to the MEDIS 病名交換用コード (valueCoding).
    pub const EXCHANGE_CODE: &str = "exchange-code";
    /// Cross-map to the MEDIS 病名管理番号 (valueCoding).
    pub const KEY_NUMBER: &str = "key-number";
    /// Cross-map to the receipt 傷病名コード (valueCoding).
    pub const RECEIPT_DISEASE: &str = "receipt-disease";
    /// JLAC10 分析物コード (valueCode).
    pub const ANALYTE: &str = "analyte";
    /// JLAC10 識別コード (valueCode).
    pub const IDENTIFICATION: &str = "identification";
    /// JLAC10 材料 (valueCoding in the material code system, with its name when known).
    pub const MATERIAL: &str = "material";
    /// JLAC10 測定法コード (valueCode).
    pub const MEASUREMENT_METHOD: &str = "measurement-method";
    /// JLAC10 測定法 name (valueString), when the method table knows it.
    pub const MEASUREMENT_METHOD_NAME: &str = "measurement-method-name";
    /// JLAC10 結果識別コード (valueCode).
    pub const RESULT_TYPE: &str = "result-type";
    /// The parent concept in a hierarchical FHIR code system (valueCode), e.g. `ALB`.
    pub const PARENT: &str = "parent";
}

/// `CodeSystem.concept.designation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designation {
    pub language: Option<String>,
    pub value: String,
}

/// `CodeSystem.concept.property.value[x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Code(String),
    String(String),
    Integer(i64),
    Boolean(bool),
    Coding { system: String, code: String, display: Option<String> },
}

/// `CodeSystem.concept.property`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub code: String,
    pub value: PropertyValue,
}

impl Property {
    /// A code-valued property.
    pub fn code(code: &str, value: impl Into<String>) -> Self {
        Self { code: code.to_owned(), value: PropertyValue::Code(value.into()) }
    }

    /// A string-valued property.
    pub fn string(code: &str, value: impl Into<String>) -> Self {
        Self { code: code.to_owned(), value: PropertyValue::String(value.into()) }
    }

    /// A Coding-valued property (a cross-map).
    pub fn coding(code: &str, system: &str, value: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            value: PropertyValue::Coding { system: system.to_owned(), code: value.into(), display: None },
        }
    }

    /// The `{name, value[x]}` pair of this value as FHIR JSON.
    pub fn value_json(&self) -> (&'static str, Value) {
        match &self.value {
            PropertyValue::Code(c) => ("valueCode", json!(c)),
            PropertyValue::String(s) => ("valueString", json!(s)),
            PropertyValue::Integer(i) => ("valueInteger", json!(i)),
            PropertyValue::Boolean(b) => ("valueBoolean", json!(b)),
            PropertyValue::Coding { system, code, display } => {
                let mut coding = json!({"system": system, "code": code});
                if let Some(d) = display {
                    coding["display"] = json!(d);
                }
                ("valueCoding", coding)
            }
        }
    }
}

/// One concept of a code system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    /// The canonical URI of its code system.
    pub system: &'static str,
    pub code: String,
    /// The preferred display (the master's name column).
    pub display: String,
    pub designations: Vec<Designation>,
    pub properties: Vec<Property>,
}

impl Concept {
    /// A concept with a display and nothing else.
    pub fn new(system: &'static str, code: impl Into<String>, display: impl Into<String>) -> Self {
        Self { system, code: code.into(), display: display.into(), designations: Vec::new(), properties: Vec::new() }
    }

    /// Adds a designation unless an equal one is there.
    pub fn designate(&mut self, language: Option<&str>, value: &str) {
        let d = Designation { language: language.map(str::to_owned), value: value.to_owned() };
        if !value.is_empty() && value != self.display && !self.designations.contains(&d) {
            self.designations.push(d);
        }
    }

    /// Adds a property unless an equal one is there.
    pub fn add_property(&mut self, p: Property) {
        if !self.properties.contains(&p) {
            self.properties.push(p);
        }
    }

    /// Merges another record of the same code (a second HOT row naming the same YJ code): the
    /// first display stays, designations and properties are united.
    pub fn merge(&mut self, other: Concept) {
        if self.display.is_empty() {
            self.display = other.display;
        } else if other.display != self.display {
            self.designate(None, &other.display);
        }
        for d in other.designations {
            self.designate(d.language.as_deref(), &d.value);
        }
        for p in other.properties {
            self.add_property(p);
        }
    }

    /// Whether `display` names this concept: the display or any designation, compared after
    /// folding full-width ASCII and spaces (ＢＭ = BM), which Japanese systems mix freely.
    pub fn matches_display(&self, display: &str) -> bool {
        let want = fold(display);
        self.folded_names().any(|d| d == want)
    }

    /// A display as [`Concept::matches_display`] compares it: full-width ASCII folded, spaces
    /// removed.
    pub(crate) fn fold_display(display: &str) -> String {
        fold(display)
    }

    /// The display and designations, folded.
    pub(crate) fn folded_names(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.display.as_str()).chain(self.designations.iter().map(|d| d.value.as_str())).map(fold)
    }

    /// The properties with the given code.
    pub fn property<'a>(&'a self, code: &'a str) -> impl Iterator<Item = &'a PropertyValue> + 'a {
        self.properties.iter().filter(move |p| p.code == code).map(|p| &p.value)
    }
}

/// Full-width ASCII (U+FF01–FF5E) to ASCII, spaces (ASCII and U+3000) removed.
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c as u32 {
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_match_folds_width_and_spaces() {
        let mut c = Concept::new("s", "1", "ミヤＢＭ錠");
        c.designate(Some(KANA), "ミヤビーエムジョウ");
        assert!(c.matches_display("ミヤBM錠"));
        assert!(c.matches_display("ミヤ ＢＭ　錠"));
        assert!(c.matches_display("ミヤビーエムジョウ"));
        assert!(!c.matches_display("ミヤＢＭ錠２０ｍｇ"));
    }

    #[test]
    fn merge_unites_without_duplicates() {
        let mut a = Concept::new("s", "1", "A");
        a.add_property(Property::code("p", "x"));
        let mut b = Concept::new("s", "1", "B");
        b.add_property(Property::code("p", "x"));
        b.add_property(Property::code("p", "y"));
        a.merge(b);
        assert_eq!(a.display, "A");
        assert_eq!(a.designations, [Designation { language: None, value: "B".into() }]);
        assert_eq!(a.properties.len(), 2);
    }
}
