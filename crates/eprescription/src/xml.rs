//! The XML of the service: the request envelope and its bodies, the answers, and the small XML
//! toolkit (a tree reader that keeps byte spans, escaping, exclusive canonicalization) the
//! signature code needs.
//!
//! The 外部IF仕様書 (message ids, schemas, result codes) is not public; this module is our reading
//! of what is known (電子処方箋 digest §C.1) and the only place that knows the envelope:
//!
//! ```text
//! <XmlMsg>
//!   <MessageHeader>
//!     <MessageType>EPSsiPIR01</MessageType>
//!     <MedicalInstitutionCode>1311234567</MedicalInstitutionCode>
//!     <ArbitraryFileIdentifier>…</ArbitraryFileIdentifier>
//!     <CreationDateTime>20260401093000</CreationDateTime>
//!   </MessageHeader>
//!   <MessageBody>…</MessageBody>
//! </XmlMsg>
//! ```
//!
//! An answer repeats the header (`MessageType` with `res` appended) and adds
//! `ProcessingResultStatus` (1 processed, 2 error), `ResultCode` and `ResultMessage`.

use crate::EpsError;
use base64::Engine;
use quick_xml::Reader;
use quick_xml::events::Event;

/// 重複投薬等チェック事前準備: the 確定前 prescription CSV, checked against the patient's history.
pub const DUPLICATE_CHECK: &str = "EPSsiDMP01";
/// 処方箋登録: the (signed) prescription document.
pub const REGISTER: &str = "EPSsiPIR01";
/// 処方箋取消 (our id: the public digest names no id for it).
pub const CANCEL: &str = "EPSsiPIR02";
/// 処方箋控え取得: the copy as a Base64 PDF.
pub const COPY: &str = "EPSsiPIR06";
/// 調剤結果取得 (our id: the public digest names no id for it).
pub const DISPENSING: &str = "EPSsiDRR01";

/// Every message type this module speaks.
pub const MESSAGE_TYPES: &[&str] = &[DUPLICATE_CHECK, REGISTER, CANCEL, COPY, DISPENSING];

/// ProcessingResultStatus of a processed request.
pub const STATUS_OK: &str = "1";
/// ProcessingResultStatus of a refused request.
pub const STATUS_ERROR: &str = "2";

/// `IssueType`: an electronic prescription (signed) or a paper one (registered, unsigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IssueType {
    /// 1: 電子処方箋.
    Electronic,
    /// 2: 紙の処方箋.
    Paper,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            Self::Electronic => "1",
            Self::Paper => "2",
        }
    }
}

/// The header of every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub message_type: String,
    /// 医療機関番号, 10 digits.
    pub institution: String,
    /// The sender's idempotency key: a repeat with the same id gets the first answer.
    pub file_id: String,
    /// `YYYYMMDDhhmmss`, JST.
    pub created: String,
}

/// The insured person the request is about (保険者番号, 記号, 番号, 枝番).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Insured {
    pub insurer_number: String,
    pub symbol: String,
    pub number: String,
    pub branch: String,
}

/// A request to the service.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    DuplicateCheck { header: Header, insured: Insured, csv: String },
    Register { header: Header, issue_type: IssueType, insured: Insured, document: String },
    Cancel { header: Header, prescription_id: String },
    Copy { header: Header, prescription_id: String },
    Dispensing { header: Header, prescription_id: String },
}

impl Request {
    pub fn header(&self) -> &Header {
        match self {
            Self::DuplicateCheck { header, .. }
            | Self::Register { header, .. }
            | Self::Cancel { header, .. }
            | Self::Copy { header, .. }
            | Self::Dispensing { header, .. } => header,
        }
    }

    pub fn header_mut(&mut self) -> &mut Header {
        match self {
            Self::DuplicateCheck { header, .. }
            | Self::Register { header, .. }
            | Self::Cancel { header, .. }
            | Self::Copy { header, .. }
            | Self::Dispensing { header, .. } => header,
        }
    }
}

/// Escapes text content.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Base64 text (whitespace ignored) to bytes.
pub fn unb64(text: &str) -> Result<Vec<u8>, EpsError> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).map_err(|_| EpsError::Xml("invalid Base64".into()))
}

fn el(name: &str, value: &str) -> String {
    format!("<{name}>{}</{name}>", esc(value))
}

fn header_xml(h: &Header, answer: Option<(&str, &str, &str)>) -> String {
    let mut s = String::from("<MessageHeader>");
    let kind = if answer.is_some() { format!("{}res", h.message_type) } else { h.message_type.clone() };
    s.push_str(&el("MessageType", &kind));
    s.push_str(&el("MedicalInstitutionCode", &h.institution));
    s.push_str(&el("ArbitraryFileIdentifier", &h.file_id));
    s.push_str(&el("CreationDateTime", &h.created));
    if let Some((status, code, message)) = answer {
        s.push_str(&el("ProcessingResultStatus", status));
        s.push_str(&el("ResultCode", code));
        s.push_str(&el("ResultMessage", message));
    }
    s.push_str("</MessageHeader>");
    s
}

fn insured_xml(i: &Insured) -> String {
    [
        el("InsurerNumber", &i.insurer_number),
        el("InsuredCardSymbol", &i.symbol),
        el("InsuredIdentificationNumber", &i.number),
        el("InsuredBranchNumber", &i.branch),
    ]
    .concat()
}

/// The request as sent.
pub fn request_xml(r: &Request) -> String {
    let body = match r {
        Request::DuplicateCheck { insured, csv, .. } => {
            format!("{}{}", insured_xml(insured), el("PrescriptionCsv", &b64(csv.as_bytes())))
        }
        Request::Register { issue_type, insured, document, .. } => format!(
            "{}{}{}",
            el("IssueType", issue_type.code()),
            insured_xml(insured),
            el("PrescriptionDocument", &b64(document.as_bytes()))
        ),
        Request::Cancel { prescription_id, .. }
        | Request::Copy { prescription_id, .. }
        | Request::Dispensing { prescription_id, .. } => el("PrescriptionId", prescription_id),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<XmlMsg>{}<MessageBody>{body}</MessageBody></XmlMsg>\n",
        header_xml(r.header(), None)
    )
}

/// A request as the service reads it. Errors name the element, never its value.
pub fn parse_request(xml: &str) -> Result<Request, EpsError> {
    let root = parse_tree(xml)?;
    if root.name != "XmlMsg" {
        return Err(EpsError::Xml("the root element must be XmlMsg".into()));
    }
    let h = root.child("MessageHeader").ok_or_else(|| missing("MessageHeader"))?;
    let body = root.child("MessageBody").ok_or_else(|| missing("MessageBody"))?;
    let header = Header {
        message_type: h.required("MessageType")?.to_owned(),
        institution: h.required("MedicalInstitutionCode")?.to_owned(),
        file_id: h.required("ArbitraryFileIdentifier")?.to_owned(),
        created: h.required("CreationDateTime")?.to_owned(),
    };
    if header.institution.len() != 10 || !header.institution.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EpsError::Xml("MedicalInstitutionCode must be 10 digits".into()));
    }
    if header.file_id.is_empty() || header.file_id.len() > 64 {
        return Err(EpsError::Xml("ArbitraryFileIdentifier must be 1 to 64 characters".into()));
    }
    let insured = |b: &Element| -> Result<Insured, EpsError> {
        Ok(Insured {
            insurer_number: b.required("InsurerNumber")?.to_owned(),
            symbol: b.text_of("InsuredCardSymbol").unwrap_or("").to_owned(),
            number: b.required("InsuredIdentificationNumber")?.to_owned(),
            branch: b.text_of("InsuredBranchNumber").unwrap_or("").to_owned(),
        })
    };
    let id = |b: &Element| b.required("PrescriptionId").map(str::to_owned);
    let utf8 = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| EpsError::Xml(format!("{what} is not UTF-8")))
    };
    Ok(match header.message_type.as_str() {
        DUPLICATE_CHECK => Request::DuplicateCheck {
            insured: insured(body)?,
            csv: utf8(unb64(body.required("PrescriptionCsv")?)?, "PrescriptionCsv")?,
            header,
        },
        REGISTER => Request::Register {
            issue_type: match body.required("IssueType")? {
                "1" => IssueType::Electronic,
                "2" => IssueType::Paper,
                _ => return Err(EpsError::Xml("IssueType must be 1 or 2".into())),
            },
            insured: insured(body)?,
            document: utf8(unb64(body.required("PrescriptionDocument")?)?, "PrescriptionDocument")?,
            header,
        },
        CANCEL => Request::Cancel { prescription_id: id(body)?, header },
        COPY => Request::Copy { prescription_id: id(body)?, header },
        DISPENSING => Request::Dispensing { prescription_id: id(body)?, header },
        _ => return Err(EpsError::Xml("unknown MessageType".into())),
    })
}

fn missing(name: &str) -> EpsError {
    EpsError::Xml(format!("{name} is missing"))
}

/// One reason of a refusal (a CSV record and field, or an element).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub line: Option<usize>,
    pub record: Option<u16>,
    pub field: Option<String>,
    pub message: String,
}

/// A finding of the duplicate-medication / contraindication check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// `duplicate` (重複投薬) or `contraindication` (併用禁忌).
    pub kind: String,
    pub rp_number: u32,
    pub drug_index: u32,
    pub drug_code: String,
    pub drug_name: String,
    pub other_drug_code: String,
    pub other_drug_name: String,
    /// `prescription` or `dispensing` (what the other drug comes from).
    pub other_source: String,
    /// Whether the other drug is from another institution.
    pub other_institution: bool,
    /// `YYYYMMDD` of the other prescription or dispensing.
    pub other_date: String,
    pub message: String,
}

/// One drug of a pharmacy's 調剤結果.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispensedDrug {
    pub rp_number: u32,
    pub drug_index: u32,
    /// CSV 薬品コード種別 (`2`, `4`, `6`, `1`).
    pub code_type: String,
    pub code: String,
    pub name: String,
    /// 1回量.
    pub amount: String,
    pub unit: String,
    /// 調剤数量 (days or times).
    pub quantity: u32,
    /// The whole amount handed over.
    pub total: String,
}

/// A pharmacy's 調剤結果 for a prescription.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispensingResult {
    pub prescription_id: String,
    /// `YYYYMMDD`.
    pub dispensed_on: String,
    /// 薬局コード (10 digits).
    pub pharmacy_code: String,
    pub pharmacy_name: String,
    pub drugs: Vec<DispensedDrug>,
}

/// An answer of the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    /// The request's type (without `res`).
    pub message_type: String,
    pub institution: String,
    pub file_id: String,
    pub created: String,
    /// [`STATUS_OK`] or [`STATUS_ERROR`].
    pub status: String,
    pub result_code: String,
    pub result_message: String,
    pub errors: Vec<ErrorDetail>,
    pub findings: Vec<Finding>,
    pub prescription_id: Option<String>,
    pub exchange_number: Option<String>,
    pub copy_pdf: Option<Vec<u8>>,
    pub dispensing: Vec<DispensingResult>,
}

impl Response {
    pub fn ok(&self) -> bool {
        self.status == STATUS_OK
    }
}

/// The answer as the service sends it.
pub fn response_xml(r: &Response) -> String {
    let h = Header {
        message_type: r.message_type.clone(),
        institution: r.institution.clone(),
        file_id: r.file_id.clone(),
        created: r.created.clone(),
    };
    let mut body = String::new();
    if let Some(id) = &r.prescription_id {
        body.push_str(&el("PrescriptionId", id));
    }
    if let Some(n) = &r.exchange_number {
        body.push_str(&el("ExchangeNumber", n));
    }
    if !r.errors.is_empty() {
        body.push_str("<Errors>");
        for e in &r.errors {
            body.push_str("<Error>");
            body.push_str(&el("Code", &e.code));
            if let Some(l) = e.line {
                body.push_str(&el("Line", &l.to_string()));
            }
            if let Some(n) = e.record {
                body.push_str(&el("RecordNumber", &n.to_string()));
            }
            if let Some(f) = &e.field {
                body.push_str(&el("Field", f));
            }
            body.push_str(&el("Message", &e.message));
            body.push_str("</Error>");
        }
        body.push_str("</Errors>");
    }
    if r.message_type == DUPLICATE_CHECK && r.ok() {
        body.push_str(&format!("<CheckResult>{}", el("FindingCount", &r.findings.len().to_string())));
        for f in &r.findings {
            body.push_str("<Finding>");
            for (k, v) in [
                ("Kind", f.kind.as_str()),
                ("RpNumber", &f.rp_number.to_string()),
                ("DrugIndex", &f.drug_index.to_string()),
                ("DrugCode", &f.drug_code),
                ("DrugName", &f.drug_name),
                ("OtherDrugCode", &f.other_drug_code),
                ("OtherDrugName", &f.other_drug_name),
                ("OtherSource", &f.other_source),
                ("OtherInstitution", if f.other_institution { "1" } else { "0" }),
                ("OtherDate", &f.other_date),
                ("Message", &f.message),
            ] {
                body.push_str(&el(k, v));
            }
            body.push_str("</Finding>");
        }
        body.push_str("</CheckResult>");
    }
    if let Some(pdf) = &r.copy_pdf {
        body.push_str(&el("PrescriptionCopyPdf", &b64(pdf)));
    }
    if r.message_type == DISPENSING && r.ok() {
        body.push_str("<DispensingResults>");
        for d in &r.dispensing {
            body.push_str("<DispensingResult>");
            body.push_str(&el("PrescriptionId", &d.prescription_id));
            body.push_str(&el("DispensingDate", &d.dispensed_on));
            body.push_str(&el("PharmacyCode", &d.pharmacy_code));
            body.push_str(&el("PharmacyName", &d.pharmacy_name));
            for g in &d.drugs {
                body.push_str("<DispensedDrug>");
                for (k, v) in [
                    ("RpNumber", g.rp_number.to_string()),
                    ("DrugIndex", g.drug_index.to_string()),
                    ("DrugCodeType", g.code_type.clone()),
                    ("DrugCode", g.code.clone()),
                    ("DrugName", g.name.clone()),
                    ("Amount", g.amount.clone()),
                    ("Unit", g.unit.clone()),
                    ("Quantity", g.quantity.to_string()),
                    ("Total", g.total.clone()),
                ] {
                    body.push_str(&el(k, &v));
                }
                body.push_str("</DispensedDrug>");
            }
            body.push_str("</DispensingResult>");
        }
        body.push_str("</DispensingResults>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<XmlMsg>{}<MessageBody>{body}</MessageBody></XmlMsg>\n",
        header_xml(&h, Some((&r.status, &r.result_code, &r.result_message)))
    )
}

/// An answer as the EHR reads it.
pub fn parse_response(xml: &str) -> Result<Response, EpsError> {
    let root = parse_tree(xml)?;
    let h = root.child("MessageHeader").ok_or_else(|| missing("MessageHeader"))?;
    let body = root.child("MessageBody").ok_or_else(|| missing("MessageBody"))?;
    let t = |e: &Element, n: &str| e.text_of(n).unwrap_or("").to_owned();
    let num = |e: &Element, n: &str| e.text_of(n).and_then(|v| v.parse().ok()).unwrap_or(0);
    let kind = h.required("MessageType")?;
    let mut r = Response {
        message_type: kind.strip_suffix("res").unwrap_or(kind).to_owned(),
        institution: t(h, "MedicalInstitutionCode"),
        file_id: t(h, "ArbitraryFileIdentifier"),
        created: t(h, "CreationDateTime"),
        status: h.required("ProcessingResultStatus")?.to_owned(),
        result_code: t(h, "ResultCode"),
        result_message: t(h, "ResultMessage"),
        prescription_id: body.text_of("PrescriptionId").map(str::to_owned),
        exchange_number: body.text_of("ExchangeNumber").map(str::to_owned),
        copy_pdf: body.text_of("PrescriptionCopyPdf").map(unb64).transpose()?,
        ..Response::default()
    };
    if let Some(errors) = body.child("Errors") {
        for e in errors.children_named("Error") {
            r.errors.push(ErrorDetail {
                code: t(e, "Code"),
                line: e.text_of("Line").and_then(|v| v.parse().ok()),
                record: e.text_of("RecordNumber").and_then(|v| v.parse().ok()),
                field: e.text_of("Field").map(str::to_owned),
                message: t(e, "Message"),
            });
        }
    }
    if let Some(check) = body.child("CheckResult") {
        for f in check.children_named("Finding") {
            r.findings.push(Finding {
                kind: t(f, "Kind"),
                rp_number: num(f, "RpNumber"),
                drug_index: num(f, "DrugIndex"),
                drug_code: t(f, "DrugCode"),
                drug_name: t(f, "DrugName"),
                other_drug_code: t(f, "OtherDrugCode"),
                other_drug_name: t(f, "OtherDrugName"),
                other_source: t(f, "OtherSource"),
                other_institution: f.text_of("OtherInstitution") == Some("1"),
                other_date: t(f, "OtherDate"),
                message: t(f, "Message"),
            });
        }
    }
    if let Some(results) = body.child("DispensingResults") {
        for d in results.children_named("DispensingResult") {
            r.dispensing.push(DispensingResult {
                prescription_id: t(d, "PrescriptionId"),
                dispensed_on: t(d, "DispensingDate"),
                pharmacy_code: t(d, "PharmacyCode"),
                pharmacy_name: t(d, "PharmacyName"),
                drugs: d
                    .children_named("DispensedDrug")
                    .map(|g| DispensedDrug {
                        rp_number: num(g, "RpNumber"),
                        drug_index: num(g, "DrugIndex"),
                        code_type: t(g, "DrugCodeType"),
                        code: t(g, "DrugCode"),
                        name: t(g, "DrugName"),
                        amount: t(g, "Amount"),
                        unit: t(g, "Unit"),
                        quantity: num(g, "Quantity"),
                        total: t(g, "Total"),
                    })
                    .collect(),
            });
        }
    }
    Ok(r)
}

/// An element of a parsed document.
#[derive(Debug, Clone)]
pub struct Element {
    /// The qualified name (`ds:Signature`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own text (its text children concatenated).
    pub text: String,
    /// Byte offsets of the whole element in the source.
    pub span: (usize, usize),
    /// Namespace declarations in scope at the element's parent (prefix, URI); `""` is the
    /// default namespace.
    pub inherited: Vec<(String, String)>,
}

impl Element {
    /// The local part of the name.
    pub fn local(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    /// The first child with this local name.
    pub fn child(&self, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local() == local)
    }

    pub fn children_named<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.local() == local)
    }

    /// The text of the first child with this local name.
    pub fn text_of(&self, local: &str) -> Option<&str> {
        self.child(local).map(|c| c.text.as_str())
    }

    /// The text of a child that must be there and not empty.
    pub fn required(&self, local: &str) -> Result<&str, EpsError> {
        self.text_of(local).filter(|t| !t.trim().is_empty()).map(str::trim).ok_or_else(|| missing(local))
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The element (this one or a descendant) whose `Id` attribute is `id`; an error when more
    /// than one has it (a wrapping attack must not choose which one is checked).
    pub fn by_id(&self, id: &str) -> Result<Option<&Element>, EpsError> {
        let mut found = Vec::new();
        self.collect_ids(id, &mut found);
        if found.len() > 1 {
            return Err(EpsError::Xml("an Id is used more than once".into()));
        }
        Ok(found.pop())
    }

    fn collect_ids<'a>(&'a self, id: &str, found: &mut Vec<&'a Element>) {
        if self.attr("Id") == Some(id) {
            found.push(self);
        }
        for c in &self.children {
            c.collect_ids(id, found);
        }
    }

    /// Descendants (depth first) with this local name.
    pub fn descendants<'a>(&'a self, local: &str, out: &mut Vec<&'a Element>) {
        for c in &self.children {
            if c.local() == local {
                out.push(c);
            }
            c.descendants(local, out);
        }
    }
}

const MAX_DEPTH: usize = 32;
/// The largest message read (bytes): a registration with its signed document is a few tens of
/// kilobytes; anything near this bound is not a message of the service.
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;
/// The most elements a document may have (a dispensing answer of many drugs stays far below).
const MAX_ELEMENTS: usize = 20_000;
/// The most attributes one element may carry.
const MAX_ATTRIBUTES: usize = 32;

fn xml_err(e: impl std::fmt::Display) -> EpsError {
    EpsError::Xml(format!("not well-formed: {e}"))
}

/// Reads a document into a tree. Bounded: no DTDs (so no entity definitions and no external
/// entities: only the five predefined entities and character references are resolved), at most
/// [`MAX_XML_BYTES`] bytes, [`MAX_DEPTH`] levels, [`MAX_ELEMENTS`] elements and
/// [`MAX_ATTRIBUTES`] attributes per element.
pub fn parse_tree(xml: &str) -> Result<Element, EpsError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(EpsError::Xml("the document is too large".into()));
    }
    let mut reader = Reader::from_str(xml);
    let mut elements = 0usize;
    let mut stack: Vec<Element> = Vec::new();
    let mut scopes: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut root: Option<Element> = None;
    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader.read_event().map_err(xml_err)?;
        let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(EpsError::Xml("content after the root element".into()));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(EpsError::Xml("nested too deeply".into()));
                }
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(EpsError::Xml("too many elements".into()));
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    if attrs.len() >= MAX_ATTRIBUTES {
                        return Err(EpsError::Xml("too many attributes".into()));
                    }
                    let a = a.map_err(xml_err)?;
                    let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                    let v = a.unescape_value().map_err(xml_err)?.into_owned();
                    attrs.push((k, v));
                }
                let inherited = scopes.last().cloned().unwrap_or_default();
                let mut scope = inherited.clone();
                for (k, v) in &attrs {
                    let prefix = if k == "xmlns" { Some("") } else { k.strip_prefix("xmlns:") };
                    if let Some(p) = prefix {
                        scope.retain(|(q, _)| q != p);
                        scope.push((p.to_owned(), v.clone()));
                    }
                }
                let element =
                    Element { name, attrs, children: Vec::new(), text: String::new(), span: (start, end), inherited };
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(element),
                        None => root = Some(element),
                    }
                } else {
                    scopes.push(scope);
                    stack.push(element);
                }
            }
            Event::End(_) => {
                scopes.pop();
                let mut done = stack.pop().ok_or_else(|| EpsError::Xml("unbalanced end tag".into()))?;
                done.span.1 = end;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                let text = t.decode().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(cur) => cur.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(EpsError::Xml("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(xml_err)? {
                    Some(c) => c.to_string(),
                    None => match r.decode().map_err(xml_err)?.as_ref() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        _ => return Err(EpsError::Xml("unknown entity".into())),
                    },
                };
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(EpsError::Xml("DTDs are not allowed".into())),
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(EpsError::Xml("unexpected end of the document".into()));
    }
    root.ok_or_else(|| EpsError::Xml("no root element".into()))
}

/// Exclusive XML canonicalization (xml-exc-c14n, without comments, no InclusiveNamespaces) of
/// one element of `source`: attributes sorted, namespace declarations only where a prefix is
/// visibly used and not already rendered by an output ancestor (`inherited` gives the
/// declarations in scope above the element), empty elements as start-end pairs, text and
/// attribute values escaped as c14n says. Enough for the documents of this crate and documents
/// of the same shape; see `docs/national/eprescription.md` for the subset.
pub fn canonicalize(source: &str, element: &Element) -> Result<String, EpsError> {
    let fragment = source.get(element.span.0..element.span.1).ok_or_else(|| EpsError::Xml("bad span".into()))?;
    let tree = parse_tree(fragment)?;
    if has_mixed_content(&tree) {
        // Text beside child elements is not in this subset: refused rather than dropped.
        return Err(EpsError::Xml("mixed content is not canonicalized".into()));
    }
    let mut out = String::new();
    let mut in_scope: Vec<(String, String)> = element.inherited.clone();
    write_canonical(&tree, &mut in_scope, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn has_mixed_content(e: &Element) -> bool {
    (!e.children.is_empty() && !e.text.trim().is_empty()) || e.children.iter().any(has_mixed_content)
}

fn c14n_attr(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
        .replace('\t', "&#x9;")
        .replace('\n', "&#xA;")
        .replace('\r', "&#xD;")
}

fn c14n_text(v: &str) -> String {
    v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\r', "&#xD;")
}

fn write_canonical(
    e: &Element,
    in_scope: &mut Vec<(String, String)>,
    rendered: &mut Vec<(String, String)>,
    out: &mut String,
) -> Result<(), EpsError> {
    // Declarations of this element join the scope.
    let scope_len = in_scope.len();
    for (k, v) in &e.attrs {
        let prefix = if k == "xmlns" { Some("") } else { k.strip_prefix("xmlns:") };
        if let Some(p) = prefix {
            in_scope.push((p.to_owned(), v.clone()));
        }
    }
    let lookup = |p: &str, scope: &[(String, String)]| scope.iter().rev().find(|(q, _)| q == p).map(|(_, v)| v.clone());
    let prefix_of = |n: &str| n.split_once(':').map(|(p, _)| p.to_owned()).unwrap_or_default();
    let mut used = vec![prefix_of(&e.name)];
    for (k, _) in &e.attrs {
        if k != "xmlns" && !k.starts_with("xmlns:") && k.contains(':') && !k.starts_with("xml:") {
            used.push(prefix_of(k));
        }
    }
    used.sort();
    used.dedup();
    let rendered_len = rendered.len();
    let mut decls = Vec::new();
    for p in used {
        // A prefix nobody declared has no canonical form (and is not namespace-well-formed).
        let uri = match lookup(&p, in_scope) {
            Some(uri) => uri,
            None if p.is_empty() => String::new(),
            None => return Err(EpsError::Xml("an undeclared namespace prefix".into())),
        };
        let already = rendered.iter().rev().find(|(q, _)| *q == p).map(|(_, v)| v.clone());
        let needed = match &already {
            Some(v) => *v != uri,
            None => !(p.is_empty() && uri.is_empty()),
        };
        if needed {
            decls.push((p.clone(), uri.clone()));
            rendered.push((p, uri));
        }
    }
    out.push('<');
    out.push_str(&e.name);
    for (p, uri) in &decls {
        if p.is_empty() {
            out.push_str(&format!(" xmlns=\"{}\"", c14n_attr(uri)));
        } else {
            out.push_str(&format!(" xmlns:{p}=\"{}\"", c14n_attr(uri)));
        }
    }
    let mut attrs: Vec<&(String, String)> =
        e.attrs.iter().filter(|(k, _)| k != "xmlns" && !k.starts_with("xmlns:")).collect();
    attrs.sort_by(|a, b| {
        let ns =
            |k: &str| if k.contains(':') { lookup(&prefix_of(k), in_scope).unwrap_or_default() } else { String::new() };
        (ns(&a.0), a.0.rsplit(':').next()).cmp(&(ns(&b.0), b.0.rsplit(':').next()))
    });
    for (k, v) in attrs {
        out.push_str(&format!(" {k}=\"{}\"", c14n_attr(v)));
    }
    out.push('>');
    // Text and children in document order: this tree keeps text per element, and the documents
    // signed here have either text or children (mixed content is not canonicalized).
    if e.children.is_empty() {
        out.push_str(&c14n_text(&e.text));
    } else {
        for c in &e.children {
            write_canonical(c, in_scope, rendered, out)?;
        }
    }
    out.push_str(&format!("</{}>", e.name));
    in_scope.truncate(scope_len);
    rendered.truncate(rendered_len);
    Ok(())
}
