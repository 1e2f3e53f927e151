//! The JAHIS 2D-symbol CSV (院外処方箋2次元シンボル記録条件規約 v1.8, as 電子処方箋管理サービス
//! 記録条件仕様 takes it): one record per line, the record number first, LF line endings only,
//! header records in numeric order, then per RP its records 101–281 in numeric order.
//!
//! [`build`] writes a [`Prescription`]; [`parse`] reads one back and reports every deviation with
//! its line, record number, field and reason — the simulator rejects what it reports. Both use
//! the one [`LAYOUTS`] table, so what we write is what we check. The layouts are our reading of
//! the specification (its field tables are not in the public digest); every field is listed in
//! `docs/national/eprescription.md`.

use crate::EpsError;
use crate::model::{
    Department, Doctor, Drug, DrugCodeType, Institution, Insurance, PatientInfo, Prescription, PublicPayment, Rp,
};
use chrono::NaiveDate;

/// The version record, the first line: JAHIS 2D-symbol convention version 1.8.
pub const VERSION_RECORD: &str = "JAHIS8";

/// Line endings must be LF (記録条件仕様; the service answers this code otherwise).
pub const EPSB_LF_ONLY: &str = "EPSB0052E";
/// The data is not UTF-8 text.
pub const EPSB_ENCODING: &str = "EPSB0050E";
/// The data is larger than a prescription can be ([`MAX_CSV_BYTES`]).
pub const EPSB_TOO_LARGE: &str = "EPSB0051E";
/// The version record is missing or unknown.
pub const EPSB_VERSION: &str = "EPSB0053E";
/// A record number this layout does not know.
pub const EPSB_UNKNOWN_RECORD: &str = "EPSB0054E";
/// Records out of order or outside their RP group.
pub const EPSB_ORDER: &str = "EPSB0055E";
/// A mandatory record is missing.
pub const EPSB_MISSING_RECORD: &str = "EPSB0056E";
/// A mandatory field is missing, or the field count is wrong.
pub const EPSB_MISSING_FIELD: &str = "EPSB0057E";
/// A field does not have its format (code formats, dates, numbers).
pub const EPSB_FORMAT: &str = "EPSB0058E";
/// An RP group is incomplete or its numbering is wrong.
pub const EPSB_RP: &str = "EPSB0059E";

/// The largest CSV read: a prescription of many RPs is a few kilobytes.
pub const MAX_CSV_BYTES: usize = 256 * 1024;

/// What a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Exactly `n` ASCII digits.
    Digits(usize),
    /// `min..=max` ASCII digits.
    DigitsRange(usize, usize),
    /// One of the listed codes.
    OneOf(&'static [&'static str]),
    /// `YYYYMMDD`, a real date.
    Date,
    /// A positive integer (no leading zero).
    Count,
    /// A positive decimal (`1`, `0.5`, `12.25`).
    Decimal,
    /// An integer 0–100.
    Percent,
    /// Text of at most this many characters: no half-width comma (the separator), no half-width
    /// double quote (the layout has no quoting, and a CSV reader would take one for a quote),
    /// no control character.
    Text(usize),
    /// A 漢字 name: text whose family and given names are separated by a full-width space (no
    /// half-width space).
    KanjiName(usize),
    /// A カナ name: text whose family and given names are separated by a half-width space (no
    /// full-width space).
    KanaName(usize),
    /// 郵便番号 `NNN-NNNN`.
    Postal,
    /// A telephone number: digits and `-`, 6–20 characters.
    Phone,
    /// 厚労省電子処方箋用法コード: 16 ASCII digits.
    UsageCode,
    /// 薬品コード: its format depends on field 4 (the code type) of record 201.
    DrugCode,
    /// A YJ or 一般名 code: 12 characters `0-9A-Z`, the first four digits (薬効分類).
    Yj,
}

/// One field of a record layout.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    pub format: Format,
}

const fn req(name: &'static str, format: Format) -> Field {
    Field { name, required: true, format }
}

const fn opt(name: &'static str, format: Format) -> Field {
    Field { name, required: false, format }
}

/// A record layout: its number, name, whether it must appear (header records), and fields after
/// the record number.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub record: u16,
    pub name: &'static str,
    pub mandatory: bool,
    pub fields: &'static [Field],
}

const PREFECTURES: Format = Format::DigitsRange(2, 2);
const DOSAGE_FORMS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "9", "10"];

/// Every record this implementation writes and accepts, in numeric order.
pub const LAYOUTS: &[Layout] = &[
    Layout {
        record: 1,
        name: "医療機関レコード",
        mandatory: true,
        fields: &[
            req("医療機関コード種別(点数表)", Format::OneOf(&["1", "3"])),
            req("医療機関コード", Format::Digits(7)),
            req("都道府県番号", PREFECTURES),
            req("医療機関名称", Format::Text(80)),
        ],
    },
    Layout {
        record: 2,
        name: "医療機関所在地レコード",
        mandatory: true,
        fields: &[opt("郵便番号", Format::Postal), req("医療機関所在地", Format::Text(100))],
    },
    Layout {
        record: 3,
        name: "医療機関電話レコード",
        mandatory: true,
        fields: &[req("電話番号", Format::Phone), opt("FAX番号", Format::Phone), opt("その他連絡先", Format::Text(40))],
    },
    Layout {
        record: 4,
        name: "診療科レコード",
        mandatory: false,
        fields: &[
            opt("診療科コード種別", Format::OneOf(&["1"])),
            opt("診療科コード", Format::Digits(2)),
            req("診療科名称", Format::Text(40)),
        ],
    },
    Layout {
        record: 5,
        name: "医師レコード",
        mandatory: true,
        fields: &[
            opt("医師コード", Format::Text(20)),
            req("医師カナ氏名", Format::KanaName(40)),
            req("医師漢字氏名", Format::KanjiName(40)),
        ],
    },
    Layout {
        record: 11,
        name: "患者氏名レコード",
        mandatory: true,
        fields: &[
            opt("患者コード", Format::Text(20)),
            req("患者漢字氏名", Format::KanjiName(40)),
            req("患者カナ氏名", Format::KanaName(40)),
        ],
    },
    Layout {
        record: 12,
        name: "患者性別レコード",
        mandatory: true,
        fields: &[req("性別", Format::OneOf(&["1", "2"]))],
    },
    Layout {
        record: 13, name: "患者生年月日レコード", mandatory: true, fields: &[req("生年月日", Format::Date)]
    },
    Layout {
        record: 14,
        name: "患者一部負担区分レコード",
        mandatory: false,
        fields: &[req("患者一部負担区分", Format::OneOf(&["1", "2", "3", "4", "5"]))],
    },
    Layout {
        record: 21,
        name: "保険種別レコード",
        mandatory: false,
        fields: &[req("保険種別", Format::OneOf(&["1", "2", "3", "4", "5", "6", "7", "8"]))],
    },
    Layout {
        record: 22,
        name: "保険者番号レコード",
        mandatory: false,
        fields: &[req("保険者番号", Format::DigitsRange(6, 8))],
    },
    Layout {
        record: 23,
        name: "記号番号レコード",
        mandatory: false,
        fields: &[
            opt("被保険者証記号", Format::Text(20)),
            req("被保険者証番号", Format::Text(20)),
            req("被保険者/被扶養者", Format::OneOf(&["1", "2"])),
            opt("枝番", Format::Digits(2)),
        ],
    },
    Layout {
        record: 24,
        name: "負担・給付率レコード",
        mandatory: false,
        fields: &[req("負担率", Format::Percent), opt("給付率", Format::Percent)],
    },
    Layout {
        record: 27,
        name: "第一公費レコード",
        mandatory: false,
        fields: &[req("公費負担者番号", Format::Digits(8)), opt("公費受給者番号", Format::Digits(7))],
    },
    Layout {
        record: 28,
        name: "第二公費レコード",
        mandatory: false,
        fields: &[req("公費負担者番号", Format::Digits(8)), opt("公費受給者番号", Format::Digits(7))],
    },
    Layout {
        record: 29,
        name: "第三公費レコード",
        mandatory: false,
        fields: &[req("公費負担者番号", Format::Digits(8)), opt("公費受給者番号", Format::Digits(7))],
    },
    Layout {
        record: 51,
        name: "処方箋交付年月日レコード",
        mandatory: true,
        fields: &[req("処方箋交付年月日", Format::Date)],
    },
    Layout {
        record: 52,
        name: "使用期限年月日レコード",
        mandatory: false,
        fields: &[req("使用期限年月日", Format::Date)],
    },
    Layout {
        record: 101,
        name: "処方箋剤形レコード",
        mandatory: false,
        fields: &[
            req("RP番号", Format::Count),
            req("剤形区分", Format::OneOf(DOSAGE_FORMS)),
            opt("剤形名称", Format::Text(20)),
            req("調剤数量", Format::Count),
        ],
    },
    Layout {
        record: 111,
        name: "処方箋用法レコード",
        mandatory: false,
        fields: &[
            req("RP番号", Format::Count),
            req("用法コード種別", Format::OneOf(&["3"])),
            req("用法コード", Format::UsageCode),
            req("用法名称", Format::Text(100)),
            opt("1日回数", Format::Count),
        ],
    },
    Layout {
        record: 181,
        name: "処方箋用法補足レコード",
        mandatory: false,
        fields: &[
            req("RP番号", Format::Count),
            opt("用法補足区分", Format::OneOf(&["1"])),
            req("用法補足情報", Format::Text(100)),
        ],
    },
    Layout {
        record: 201,
        name: "処方箋薬品レコード",
        mandatory: false,
        fields: &[
            req("RP番号", Format::Count),
            req("RP内連番", Format::Count),
            req("情報区分", Format::OneOf(&["1", "2"])),
            req("薬品コード種別", Format::OneOf(&["1", "2", "4", "6"])),
            req("薬品コード", Format::DrugCode),
            req("薬品名称", Format::Text(100)),
            req("分量", Format::Decimal),
            req("力価フラグ", Format::OneOf(&["1", "2"])),
            req("単位名", Format::Text(10)),
        ],
    },
    Layout {
        record: 281,
        name: "薬品補足レコード",
        mandatory: false,
        fields: &[
            req("RP番号", Format::Count),
            req("RP内連番", Format::Count),
            opt("補足区分", Format::OneOf(&["1"])),
            req("薬品補足情報", Format::Text(100)),
        ],
    },
];

/// The layout of a record number.
pub fn layout(record: u16) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.record == record)
}

/// A text field as written. The layout has no quoting or escaping (our reading of JAHIS v1.8: a
/// field is the text between two separators), so what cannot stand in a field is replaced by its
/// full-width form: `,` → `，`, `"` → `＂`; a line break, tab or other control character becomes
/// a half-width space (a line break inside a field would end the record).
fn text(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            ',' => '，',
            '"' => '＂',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// A 漢字 name as written: names separated by a full-width space.
fn kanji_name(value: &str) -> String {
    text(value).replace(' ', "\u{3000}")
}

/// A カナ name as written: names separated by a half-width space.
fn kana_name(value: &str) -> String {
    text(value).replace('\u{3000}', " ")
}

/// Writes a prescription as the CSV: the version record, the header records, then each RP's
/// group. Every line ends with LF. The result is checked against [`LAYOUTS`] before it is
/// returned, so a value that does not fit its field is an error naming the record and field.
pub fn build(p: &Prescription) -> Result<String, EpsError> {
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut rec = |n: u16, fields: Vec<String>| {
        let mut line = vec![n.to_string()];
        line.extend(fields.into_iter().map(|f| text(&f)));
        lines.push(line);
    };
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let i = &p.institution;
    rec(1, vec![i.score_table.clone(), i.code.clone(), i.prefecture.clone(), i.name.clone()]);
    rec(2, vec![o(&i.postal_code), i.address.clone()]);
    rec(3, vec![i.phone.clone(), String::new(), String::new()]);
    if let Some(d) = &i.department {
        let kind = if d.code.is_some() { "1".to_owned() } else { String::new() };
        rec(4, vec![kind, o(&d.code), d.name.clone()]);
    }
    rec(5, vec![o(&p.doctor.code), kana_name(&p.doctor.kana), kanji_name(&p.doctor.kanji)]);
    let pt = &p.patient;
    rec(11, vec![o(&pt.local_id), kanji_name(&pt.kanji), kana_name(&pt.kana)]);
    rec(12, vec![pt.sex.clone()]);
    rec(13, vec![pt.birth_date.format("%Y%m%d").to_string()]);
    if let Some(b) = &pt.burden_class {
        rec(14, vec![b.clone()]);
    }
    if let Some(ins) = &p.insurance {
        rec(21, vec![ins.kind.clone()]);
        rec(22, vec![ins.insurer_number.clone()]);
        rec(23, vec![o(&ins.symbol), ins.number.clone(), ins.relationship.clone(), o(&ins.branch)]);
        if let Some(b) = ins.burden_percent {
            rec(24, vec![b.to_string(), (100 - u16::from(b.min(100))).to_string()]);
        }
    }
    if p.public_payments.len() > 3 {
        return Err(EpsError::Field {
            record: 27,
            field: "公費負担者番号",
            reason: "at most three public payments".into(),
        });
    }
    for (n, pp) in p.public_payments.iter().enumerate() {
        rec(27 + n as u16, vec![pp.payer_number.clone(), o(&pp.recipient_number)]);
    }
    rec(51, vec![p.issue_date.format("%Y%m%d").to_string()]);
    if let Some(e) = p.expiry_date {
        rec(52, vec![e.format("%Y%m%d").to_string()]);
    }
    for rp in &p.rps {
        let n = rp.number.to_string();
        rec(101, vec![n.clone(), rp.form.clone(), o(&rp.form_name), rp.quantity.to_string()]);
        rec(
            111,
            vec![
                n.clone(),
                "3".into(),
                rp.usage_code.clone(),
                rp.usage_text.clone(),
                rp.times_per_day.map(|t| t.to_string()).unwrap_or_default(),
            ],
        );
        for note in &rp.usage_notes {
            rec(181, vec![n.clone(), "1".into(), note.clone()]);
        }
        for d in &rp.drugs {
            rec(
                201,
                vec![
                    n.clone(),
                    d.index.to_string(),
                    "1".into(),
                    d.code_type.csv_code().into(),
                    d.code.clone(),
                    d.name.clone(),
                    d.amount.clone(),
                    d.strength.clone(),
                    d.unit.clone(),
                ],
            );
        }
        for d in &rp.drugs {
            for note in &d.notes {
                rec(281, vec![n.clone(), d.index.to_string(), "1".into(), note.clone()]);
            }
        }
    }
    let mut out = String::from(VERSION_RECORD);
    out.push('\n');
    for l in &lines {
        out.push_str(&l.join(","));
        out.push('\n');
    }
    // What we write must pass what we check: the first issue names the record and field.
    if let Err(issues) = check(&out)
        && let Some(first) = issues.into_iter().next()
    {
        return Err(EpsError::Field {
            record: first.record.unwrap_or(0),
            field: first.field.unwrap_or("-"),
            reason: first.reason,
        });
    }
    Ok(out)
}

/// One deviation of a CSV from the layouts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CsvIssue {
    /// 1-based line; 0 when about the whole data.
    pub line: usize,
    pub record: Option<u16>,
    pub field: Option<&'static str>,
    /// The service's result code ([`EPSB_LF_ONLY`], …).
    pub code: &'static str,
    pub reason: String,
}

impl std::fmt::Display for CsvIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.code, self.line)?;
        if let Some(r) = self.record {
            write!(f, " record {r}")?;
        }
        if let Some(field) = self.field {
            write!(f, " field {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One record as read: its line, number and fields (after the record number).
#[derive(Debug, Clone)]
pub struct Record {
    pub line: usize,
    pub number: u16,
    pub fields: Vec<String>,
}

impl Record {
    fn get(&self, i: usize) -> &str {
        self.fields.get(i).map(String::as_str).unwrap_or("")
    }
    fn opt(&self, i: usize) -> Option<String> {
        Some(self.get(i)).filter(|s| !s.is_empty()).map(str::to_owned)
    }
}

/// Checks a CSV against the layouts: every issue found (not only the first).
pub fn check(text: &str) -> Result<Vec<Record>, Vec<CsvIssue>> {
    let mut issues = Vec::new();
    let mut issue =
        |line: usize, record: Option<u16>, field: Option<&'static str>, code: &'static str, reason: String| {
            issues.push(CsvIssue { line, record, field, code, reason })
        };
    if text.len() > MAX_CSV_BYTES {
        issue(0, None, None, EPSB_TOO_LARGE, format!("the data is larger than {MAX_CSV_BYTES} bytes"));
        return Err(issues);
    }
    if text.is_empty() {
        issue(0, None, None, EPSB_VERSION, "the data is empty".into());
        return Err(issues);
    }
    if let Some(pos) = text.find('\r') {
        let line = text[..pos].matches('\n').count() + 1;
        issue(line, None, None, EPSB_LF_ONLY, "改行コードはLFで記録してください (line breaks must be LF only)".into());
        // Nothing else is read: the service stops at this error too.
        return Err(issues);
    }
    if !text.ends_with('\n') {
        issue(text.lines().count(), None, None, EPSB_LF_ONLY, "the last line must end with LF".into());
    }
    // The empty string after the final LF is not a line; any other empty line is an error.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, VERSION_RECORD)) => {}
        Some((n, _)) => {
            issue(n, None, None, EPSB_VERSION, format!("the first line must be the version record {VERSION_RECORD}"))
        }
        None => issue(0, None, None, EPSB_VERSION, "the data is empty".into()),
    }
    let mut records = Vec::new();
    for (line, l) in lines {
        if l.is_empty() {
            issue(line, None, None, EPSB_UNKNOWN_RECORD, "an empty line".into());
            continue;
        }
        let mut parts = l.split(',');
        let number = parts.next().unwrap_or("");
        let Some(layout) = number.parse::<u16>().ok().filter(|n| number == n.to_string()).and_then(layout) else {
            issue(
                line,
                None,
                None,
                EPSB_UNKNOWN_RECORD,
                format!("unknown record number {:?}", number.chars().take(8).collect::<String>()),
            );
            continue;
        };
        let fields: Vec<String> = parts.map(str::to_owned).collect();
        if fields.len() != layout.fields.len() {
            issue(
                line,
                Some(layout.record),
                None,
                EPSB_MISSING_FIELD,
                format!("{} has {} fields, found {}", layout.name, layout.fields.len(), fields.len()),
            );
            continue;
        }
        for (k, spec) in layout.fields.iter().enumerate() {
            let v = fields[k].as_str();
            if v.is_empty() {
                if spec.required {
                    issue(
                        line,
                        Some(layout.record),
                        Some(spec.name),
                        EPSB_MISSING_FIELD,
                        "mandatory field is empty".into(),
                    );
                }
                continue;
            }
            let format = if spec.format == Format::DrugCode { drug_code_format(&fields[3]) } else { spec.format };
            if let Err(why) = check_format(format, v) {
                issue(line, Some(layout.record), Some(spec.name), EPSB_FORMAT, why);
            }
        }
        records.push(Record { line, number: layout.record, fields });
    }
    check_structure(&records, &mut issue);
    if issues.is_empty() { Ok(records) } else { Err(issues) }
}

/// The format of a drug code of a type (record 201 field 薬品コード種別).
fn drug_code_format(code_type: &str) -> Format {
    match code_type {
        "2" => Format::Digits(9),
        "4" | "6" => Format::Yj,
        "1" => Format::OneOf(&["0"]),
        _ => Format::Text(20),
    }
}

fn check_format(format: Format, v: &str) -> Result<(), String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match format {
        Format::Digits(n) if digits(v) && v.len() == n => Ok(()),
        Format::Digits(n) => Err(format!("must be {n} digits")),
        Format::DigitsRange(a, b) if digits(v) && (a..=b).contains(&v.len()) => Ok(()),
        Format::DigitsRange(a, b) => Err(format!("must be {a} to {b} digits")),
        Format::OneOf(codes) if codes.contains(&v) => Ok(()),
        Format::OneOf(codes) => Err(format!("must be one of {}", codes.join("/"))),
        Format::Date if v.len() == 8 && NaiveDate::parse_from_str(v, "%Y%m%d").is_ok() => Ok(()),
        Format::Date => Err("must be a date YYYYMMDD".into()),
        Format::Count if digits(v) && !v.starts_with('0') && v.len() <= 5 => Ok(()),
        Format::Count => Err("must be a positive integer".into()),
        Format::Percent if digits(v) && v.parse::<u16>().is_ok_and(|p| p <= 100) => Ok(()),
        Format::Percent => Err("must be an integer 0 to 100".into()),
        Format::Decimal => {
            let (int, frac) = v.split_once('.').unwrap_or((v, "1"));
            let ok = digits(int) && digits(frac) && v.parse::<f64>().is_ok_and(|x| x > 0.0) && v.len() <= 11;
            if ok { Ok(()) } else { Err("must be a positive decimal".into()) }
        }
        Format::Text(max) | Format::KanjiName(max) | Format::KanaName(max) if v.chars().count() > max => {
            Err(format!("at most {max} characters"))
        }
        Format::Text(_) | Format::KanjiName(_) | Format::KanaName(_) if v.chars().any(char::is_control) => {
            Err("control characters are not allowed".into())
        }
        Format::Text(_) | Format::KanjiName(_) | Format::KanaName(_) if v.contains('"') => {
            Err("a half-width double quote is not allowed (write ＂)".into())
        }
        Format::KanjiName(_) if v.contains(' ') => Err("漢字氏名 separates names with a full-width space".into()),
        Format::KanaName(_) if v.contains('\u{3000}') => Err("カナ氏名 separates names with a half-width space".into()),
        Format::Text(_) | Format::KanjiName(_) | Format::KanaName(_) => Ok(()),
        Format::Postal if v.len() == 8 && digits(&v[..3]) && &v[3..4] == "-" && digits(&v[4..]) => Ok(()),
        Format::Postal => Err("must be NNN-NNNN".into()),
        Format::Phone
            if (6..=20).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                && v.bytes().next().is_some_and(|b| b.is_ascii_digit()) =>
        {
            Ok(())
        }
        Format::Phone => Err("must be digits and hyphens".into()),
        Format::UsageCode if v.len() == 16 && digits(v) => Ok(()),
        Format::UsageCode => Err("厚労省電子処方箋用法コード must be 16 digits".into()),
        Format::DrugCode => Ok(()),
        Format::Yj
            if v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) && digits(&v[..4]) =>
        {
            Ok(())
        }
        Format::Yj => Err("must be 12 characters 0-9A-Z, the first four digits".into()),
    }
}

type IssueFn<'a> = dyn FnMut(usize, Option<u16>, Option<&'static str>, &'static str, String) + 'a;

/// Order and grouping: header records (< 100) once each and ascending; then RP groups, each
/// opened by its 101, numbered 1, 2, … with every record of the group carrying the group's RP
/// number, records ascending within the group, 111 and at least one 201 per group, RP内連番
/// 1, 2, … and every 281 naming a drug of its group.
fn check_structure(records: &[Record], issue: &mut IssueFn<'_>) {
    let mut last_header = 0u16;
    let mut in_rps = false;
    let mut rp: Option<(u32, u16, usize)> = None; // (number, last record, line of its 101)
    let mut expected_rp = 1u32;
    let mut group: Vec<&Record> = Vec::new();
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        if r.number < 100 {
            if in_rps {
                issue(r.line, Some(r.number), None, EPSB_ORDER, "header records must come before the RP groups".into());
            } else if r.number <= last_header {
                issue(
                    r.line,
                    Some(r.number),
                    None,
                    EPSB_ORDER,
                    format!("record {} after record {last_header}", r.number),
                );
            } else {
                last_header = r.number;
            }
            continue;
        }
        in_rps = true;
        let rp_no: u32 = r.get(0).parse().unwrap_or(0);
        if r.number == 101 {
            if rp_no != expected_rp {
                issue(
                    r.line,
                    Some(101),
                    Some("RP番号"),
                    EPSB_ORDER,
                    format!("RP {rp_no} where RP {expected_rp} was expected"),
                );
            }
            expected_rp = rp_no.saturating_add(1);
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
            rp = Some((rp_no, 101, r.line));
            group.push(r);
            continue;
        }
        match &mut rp {
            None => issue(r.line, Some(r.number), None, EPSB_ORDER, "an RP record before the RP's 101 record".into()),
            Some((n, last, _)) => {
                if rp_no != *n {
                    issue(
                        r.line,
                        Some(r.number),
                        Some("RP番号"),
                        EPSB_ORDER,
                        format!("RP {rp_no} inside the group of RP {n}"),
                    );
                } else if r.number < *last {
                    issue(
                        r.line,
                        Some(r.number),
                        None,
                        EPSB_ORDER,
                        format!("record {} after record {last} in RP {n}", r.number),
                    );
                } else {
                    *last = r.number;
                    group.push(r);
                }
            }
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    let present = |n: u16| records.iter().any(|r| r.number == n);
    for l in LAYOUTS.iter().filter(|l| l.mandatory) {
        if !present(l.record) {
            issue(0, Some(l.record), None, EPSB_MISSING_RECORD, format!("{} is mandatory", l.name));
        }
    }
    // Insurance records come together: 21 needs 22 and 23, and the other way round.
    let insurance = [21u16, 22, 23].map(present);
    if insurance.iter().any(|p| *p) && !insurance.iter().all(|p| *p) {
        issue(0, Some(21), None, EPSB_MISSING_RECORD, "records 21, 22 and 23 come together".into());
    }
    // 第二公費 needs 第一公費, 第三公費 needs 第二公費.
    for (n, before) in [(28u16, 27u16), (29, 28)] {
        if present(n) && !present(before) {
            issue(0, Some(n), None, EPSB_MISSING_RECORD, format!("record {n} without record {before}"));
        }
    }
    if groups.is_empty() {
        issue(0, Some(101), None, EPSB_MISSING_RECORD, "a prescription has at least one RP".into());
    }
    for g in &groups {
        let (head, line) = (g[0].get(0).to_owned(), g[0].line);
        if !g.iter().any(|r| r.number == 111) {
            issue(line, Some(111), None, EPSB_RP, format!("RP {head} has no 用法 record 111"));
        }
        if g.iter().filter(|r| r.number == 111).count() > 1 {
            issue(line, Some(111), None, EPSB_RP, format!("RP {head} has more than one 用法 record 111"));
        }
        let drugs: Vec<&&Record> = g.iter().filter(|r| r.number == 201).collect();
        if drugs.is_empty() {
            issue(line, Some(201), None, EPSB_RP, format!("RP {head} has no 薬品 record 201"));
        }
        for (k, d) in drugs.iter().enumerate() {
            if d.get(1) != (k + 1).to_string() {
                issue(
                    d.line,
                    Some(201),
                    Some("RP内連番"),
                    EPSB_RP,
                    format!("RP内連番 {} where {} was expected", d.get(1), k + 1),
                );
            }
        }
        for note in g.iter().filter(|r| r.number == 281) {
            if !drugs.iter().any(|d| d.get(1) == note.get(1)) {
                issue(note.line, Some(281), Some("RP内連番"), EPSB_RP, "薬品補足 names no drug of its RP".into());
            }
        }
    }
}

/// Parses a CSV into the prescription it carries (after [`check`]).
pub fn parse(text: &str) -> Result<Prescription, Vec<CsvIssue>> {
    let records = check(text)?;
    let one = |n: u16| records.iter().find(|r| r.number == n);
    let date = |s: &str| NaiveDate::parse_from_str(s, "%Y%m%d").unwrap_or_default();
    let missing = |n: u16| {
        vec![CsvIssue { line: 0, record: Some(n), field: None, code: EPSB_MISSING_RECORD, reason: "missing".into() }]
    };
    let r1 = one(1).ok_or_else(|| missing(1))?;
    let r2 = one(2).ok_or_else(|| missing(2))?;
    let r3 = one(3).ok_or_else(|| missing(3))?;
    let r5 = one(5).ok_or_else(|| missing(5))?;
    let r11 = one(11).ok_or_else(|| missing(11))?;
    let institution = Institution {
        score_table: r1.get(0).into(),
        code: r1.get(1).into(),
        prefecture: r1.get(2).into(),
        name: r1.get(3).into(),
        postal_code: r2.opt(0),
        address: r2.get(1).into(),
        phone: r3.get(0).into(),
        department: one(4).map(|r| Department { code: r.opt(1), name: r.get(2).into() }),
    };
    let insurance = match (one(21), one(22), one(23)) {
        (Some(k), Some(no), Some(sym)) => Some(Insurance {
            kind: k.get(0).into(),
            insurer_number: no.get(0).into(),
            symbol: sym.opt(0),
            number: sym.get(1).into(),
            relationship: sym.get(2).into(),
            branch: sym.opt(3),
            burden_percent: one(24).and_then(|r| r.get(0).parse().ok()),
        }),
        _ => None,
    };
    let mut rps: Vec<Rp> = Vec::new();
    for r in &records {
        match r.number {
            101 => rps.push(Rp {
                number: r.get(0).parse().unwrap_or(0),
                form: r.get(1).into(),
                form_name: r.opt(2),
                quantity: r.get(3).parse().unwrap_or(0),
                usage_code: String::new(),
                usage_text: String::new(),
                times_per_day: None,
                usage_notes: Vec::new(),
                drugs: Vec::new(),
            }),
            111 | 181 | 201 | 281 => {
                let Some(rp) = rps.last_mut() else { continue };
                match r.number {
                    111 => {
                        rp.usage_code = r.get(2).into();
                        rp.usage_text = r.get(3).into();
                        rp.times_per_day = r.get(4).parse().ok();
                    }
                    181 => rp.usage_notes.push(r.get(2).into()),
                    201 => rp.drugs.push(Drug {
                        index: r.get(1).parse().unwrap_or(0),
                        code_type: DrugCodeType::from_csv(r.get(3)).unwrap_or(DrugCodeType::None),
                        code: r.get(4).into(),
                        name: r.get(5).into(),
                        amount: r.get(6).into(),
                        strength: r.get(7).into(),
                        unit: r.get(8).into(),
                        notes: Vec::new(),
                    }),
                    _ => {
                        if let Some(d) = rp.drugs.iter_mut().find(|d| d.index.to_string() == r.get(1)) {
                            d.notes.push(r.get(3).into());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Prescription {
        institution,
        doctor: Doctor { code: r5.opt(0), kana: r5.get(1).into(), kanji: r5.get(2).into() },
        patient: PatientInfo {
            local_id: r11.opt(0),
            kanji: r11.get(1).into(),
            kana: r11.get(2).into(),
            sex: one(12).map(|r| r.get(0).to_owned()).unwrap_or_default(),
            birth_date: one(13).map(|r| date(r.get(0))).unwrap_or_default(),
            burden_class: one(14).and_then(|r| r.opt(0)),
        },
        insurance,
        public_payments: [27u16, 28, 29]
            .iter()
            .filter_map(|n| one(*n))
            .map(|r| PublicPayment { payer_number: r.get(0).into(), recipient_number: r.opt(1) })
            .collect(),
        issue_date: one(51).map(|r| date(r.get(0))).unwrap_or_default(),
        expiry_date: one(52).map(|r| date(r.get(0))),
        rps,
    })
}
