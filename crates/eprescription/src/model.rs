//! A prescription as the CSV records carry it: the typed model between FHIR and the JAHIS CSV.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// One prescription (処方箋): header records 1…51 and the RPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prescription {
    pub institution: Institution,
    pub doctor: Doctor,
    pub patient: PatientInfo,
    /// None: no health insurance (公費単独 or 自費).
    pub insurance: Option<Insurance>,
    /// 第1…第3公費 (records 27, 28, 29), at most three.
    pub public_payments: Vec<PublicPayment>,
    /// 処方箋交付年月日 (record 51).
    pub issue_date: NaiveDate,
    /// 使用期限年月日 (record 52), when not the default of 4 days.
    pub expiry_date: Option<NaiveDate>,
    pub rps: Vec<Rp>,
}

/// The issuing institution (records 1–4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Institution {
    /// 点数表: `1` 医科, `3` 歯科.
    pub score_table: String,
    /// 医療機関コード, 7 digits.
    pub code: String,
    /// 都道府県番号, 2 digits (`01`–`47`).
    pub prefecture: String,
    pub name: String,
    pub postal_code: Option<String>,
    pub address: String,
    pub phone: String,
    pub department: Option<Department>,
}

impl Institution {
    /// The 10-digit 医療機関番号 (都道府県2 + 点数表1 + 医療機関コード7).
    pub fn number(&self) -> String {
        format!("{}{}{}", self.prefecture, self.score_table, self.code)
    }
}

/// 診療科 (record 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Department {
    /// 診療科コード (MHLW 診療科コード, 2 digits), when known.
    pub code: Option<String>,
    pub name: String,
}

/// The prescribing doctor (record 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doctor {
    /// The institution's code of the doctor, when known.
    pub code: Option<String>,
    /// カナ氏名, family and given separated by a half-width space.
    pub kana: String,
    /// 漢字氏名, family and given separated by a full-width space.
    pub kanji: String,
}

/// The patient (records 11–14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientInfo {
    /// 患者コード: the institution's patient id.
    pub local_id: Option<String>,
    pub kanji: String,
    pub kana: String,
    /// `1` male, `2` female.
    pub sex: String,
    pub birth_date: NaiveDate,
    /// 患者一部負担区分 (record 14), when one applies.
    pub burden_class: Option<String>,
}

/// Health insurance (records 21–24).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insurance {
    /// 保険種別 (MHLW 保険種別 table `1.2.392.100495.20.2.61`): 1 医保, 2 国保, 3 労災, 4 自賠,
    /// 5 公害, 6 自費, 7 後期高齢者, 8 公費単独.
    pub kind: String,
    /// 保険者番号, 8 digits (6 for 国保).
    pub insurer_number: String,
    /// 被保険者証記号.
    pub symbol: Option<String>,
    /// 被保険者証番号.
    pub number: String,
    /// 枝番, 2 digits.
    pub branch: Option<String>,
    /// 被保険者/被扶養者: `1` 本人, `2` 家族.
    pub relationship: String,
    /// 負担割合 in percent (30 = 3割).
    pub burden_percent: Option<u8>,
}

impl Insurance {
    /// The patient key the national service finds histories by: 保険者番号:記号:番号:枝番 (the
    /// JP-CLINS 被保険者個人識別子 form).
    pub fn member_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.insurer_number,
            self.symbol.as_deref().unwrap_or(""),
            self.number,
            self.branch.as_deref().unwrap_or("")
        )
    }
}

/// 公費 (records 27–29).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicPayment {
    /// 公費負担者番号, 8 digits.
    pub payer_number: String,
    /// 公費受給者番号, 7 digits (none for some 公費).
    pub recipient_number: Option<String>,
}

/// One RP (剤グループ): the drugs taken the same way (records 101–281).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rp {
    /// RP番号, 1, 2, … in order.
    pub number: u32,
    /// 剤形区分 (record 101): 1 内服, 2 内滴, 3 頓服, 4 注射, 5 外用, 6 浸煎, 7 湯, 9 材料, 10 不明.
    pub form: String,
    pub form_name: Option<String>,
    /// 調剤数量: days (内服, 内滴, 浸煎, 湯), times (頓服) or 1 (外用, 注射, 材料).
    pub quantity: u32,
    /// 用法コード (厚労省電子処方箋用法コード, 16 digits).
    pub usage_code: String,
    pub usage_text: String,
    /// 1日回数, when the usage has one.
    pub times_per_day: Option<u32>,
    /// 用法補足 (record 181).
    pub usage_notes: Vec<String>,
    pub drugs: Vec<Drug>,
}

/// One drug of an RP (record 201, its notes record 281).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drug {
    /// RP内連番, 1, 2, … in order.
    pub index: u32,
    /// 薬品コード種別.
    pub code_type: DrugCodeType,
    pub code: String,
    pub name: String,
    /// 分量 per dose, a decimal as written (`1`, `0.5`).
    pub amount: String,
    /// 力価フラグ: `1` 製剤量, `2` 原薬量.
    pub strength: String,
    pub unit: String,
    /// 薬品補足 (record 281).
    pub notes: Vec<String>,
}

/// 薬品コード種別 of record 201 (our reading of the JAHIS code table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrugCodeType {
    /// 1: コードなし (name only).
    None,
    /// 2: レセプト電算処理システム用コード (9 digits).
    Receipt,
    /// 4: YJコード (個別医薬品コード, 12 characters).
    Yj,
    /// 6: 一般名処方マスタの一般名コード (12 characters).
    GeneralName,
}

impl DrugCodeType {
    /// The code written in the CSV.
    pub fn csv_code(self) -> &'static str {
        match self {
            Self::None => "1",
            Self::Receipt => "2",
            Self::Yj => "4",
            Self::GeneralName => "6",
        }
    }

    /// The type of a CSV code.
    pub fn from_csv(code: &str) -> Option<Self> {
        Some(match code {
            "1" => Self::None,
            "2" => Self::Receipt,
            "4" => Self::Yj,
            "6" => Self::GeneralName,
            _ => return None,
        })
    }

    /// The FHIR code system of the type.
    pub fn system(self) -> &'static str {
        match self {
            Self::None => crate::fhir::NOCODED,
            Self::Receipt => crate::fhir::RECEIPT,
            Self::Yj => crate::fhir::YJ,
            Self::GeneralName => crate::fhir::GENERAL_NAME,
        }
    }
}
