//! Typed JAHIS clinical-lab messages (JAHIS 臨床検査データ交換規約, based on HL7 v2.5;
//! `shared/jp-standards.md` §D.1) on top of the generic [`Message`] and [`MessageBuilder`].
//!
//! - Orders out: [`build_oml_o33`] writes OML^O33 (1検体複数依頼), segment order
//!   `MSH PID [PV1] SPM {ORC [TQ1] OBR}` (HL7 v2.5 §4.4.8, OML_O33 structure), one ORC/OBR pair
//!   per test, every test on the one specimen.
//! - Results in: [`parse_lab_results`] reads OUL^R22 (`MSH [PID] [PV1] {SPM {OBR [ORC] {OBX}}}`,
//!   HL7 v2.5 §7.3.6, the SS-MIX2 form) and ORU^R01 (`MSH PID [PV1] {[ORC] OBR {OBX} {SPM}}`,
//!   HL7 v2.5 §7.3.1) into [`LabResults`]. A required element that is missing or malformed gives
//!   an [`Hl7Error`] with the [`Location`] of the field (see [`Hl7Error::location`] and
//!   [`Hl7Error::to_ack_error`]) so the receiver can answer AE with an ERR naming it.
//! - Order acknowledgments: [`OrlBuilder`] writes ORL^O34 (the lab's answer to OML^O33),
//!   [`parse_orl_o34`] reads it back for the order's sender.
//! - Results out (the laboratory's side, for simulators and tests): [`build_oul_r22`] and
//!   [`build_oru_r01`] write what [`parse_lab_results`] reads.
//!
//! Codes follow JAHIS: JLAC10 as coding system `JC10`, local systems as `99…`; Japanese names
//! as PID-5 repetitions with XPN-8 `I` (漢字, ideographic) and `P` (カナ, phonetic).

mod orl;
mod results;

pub use orl::{OrderControl, OrderResponse, OrlBuilder, OrlReply, OrlResponse, SpecimenResponse, parse_orl_o34};
pub use results::{build_oru_r01, build_oul_r22};

use crate::builder::{MessageBuilder, SegmentBuilder};
use crate::charset::Charset;
use crate::error::{Hl7Error, Result};
use crate::message::{Component, Field, Message, Repetition, Segment};
use crate::types::{ControlId, Location, MessageType, Timestamp};

/// The HL7 coding system id of JLAC10 in JAHIS messages (§D.1: `3A010000002327101^総蛋白^JC10`).
pub const JLAC10: &str = "JC10";

/// One code of a CE/CWE value (HL7 v2.5 §2.A.8): identifier, text, coding system.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coding {
    /// The code (CE-1 or CE-4).
    pub code: String,
    /// Its display text (CE-2 or CE-5).
    pub text: String,
    /// The coding system (CE-3 or CE-6): `JC10`, a local `99…` system, `HL70482`…
    pub system: String,
}

impl Coding {
    /// A code with its text and system.
    pub fn new(code: impl Into<String>, text: impl Into<String>, system: impl Into<String>) -> Self {
        Self { code: code.into(), text: text.into(), system: system.into() }
    }

    /// Whether the code is JLAC10 (`JC10`).
    pub fn is_jlac10(&self) -> bool {
        self.system == JLAC10
    }

    fn components(&self) -> [&str; 3] {
        [&self.code, &self.text, &self.system]
    }
}

/// A CE/CWE value: a primary code and an optional alternate (CE-4..6), the JP-CLINS pattern of
/// JLAC10 beside the laboratory's local code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CodedElement {
    /// CE-1..3.
    pub primary: Coding,
    /// CE-4..6, if given.
    pub alternate: Option<Coding>,
}

impl CodedElement {
    /// The JLAC10 code, primary or alternate.
    pub fn jlac10(&self) -> Option<&Coding> {
        std::iter::once(&self.primary).chain(&self.alternate).find(|c| c.is_jlac10())
    }

    /// The first code that is not JLAC10 (the local code).
    pub fn local(&self) -> Option<&Coding> {
        std::iter::once(&self.primary).chain(&self.alternate).find(|c| !c.is_jlac10() && !c.code.is_empty())
    }
}

/// A person's name (XPN-1 family, XPN-2 given).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonName {
    /// Family name (XPN-1).
    pub family: String,
    /// Given name (XPN-2).
    pub given: String,
}

impl PersonName {
    /// A name from family and given names.
    pub fn new(family: impl Into<String>, given: impl Into<String>) -> Self {
        Self { family: family.into(), given: given.into() }
    }
}

/// Administrative sex, PID-8 (HL7 table 0001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    /// `M`.
    Male,
    /// `F`.
    Female,
    /// `O`.
    Other,
    /// `U`.
    Unknown,
    /// `A`.
    Ambiguous,
    /// `N`.
    NotApplicable,
}

impl Sex {
    /// The table 0001 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Male => "M",
            Self::Female => "F",
            Self::Other => "O",
            Self::Unknown => "U",
            Self::Ambiguous => "A",
            Self::NotApplicable => "N",
        }
    }

    /// Reads a table 0001 code.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "M" => Self::Male,
            "F" => Self::Female,
            "O" => Self::Other,
            "U" => Self::Unknown,
            "A" => Self::Ambiguous,
            "N" => Self::NotApplicable,
            _ => return None,
        })
    }
}

/// The patient of a lab message (PID).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patient {
    /// The patient id (PID-3, CX-1 of the repetition with CX-5 `PI`, else the first).
    pub id: String,
    /// The name in kanji: the PID-5 repetition with XPN-8 `I` (or without XPN-8).
    pub kanji_name: Option<PersonName>,
    /// The name in kana: the PID-5 repetition with XPN-8 `P`.
    pub kana_name: Option<PersonName>,
    /// The name in Latin letters: the PID-5 repetition with XPN-8 `A`.
    pub alphabetic_name: Option<PersonName>,
    /// Date of birth (PID-7).
    pub birth_date: Option<Timestamp>,
    /// Administrative sex (PID-8).
    pub sex: Option<Sex>,
}

/// A doctor (XCN: id, family and given name; ORC-12 and OBR-16).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provider {
    /// XCN-1.
    pub id: String,
    /// XCN-2/XCN-3, written with name type `L` and representation `I` (XCN-10, XCN-15).
    pub name: PersonName,
}

/// A specimen (SPM, HL7 v2.5 §7.4.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Specimen {
    /// The specimen id (SPM-2.1), if given.
    pub id: Option<String>,
    /// The specimen type (SPM-4), JLAC10 material code in JAHIS (`023^血清^JC10`).
    pub kind: Coding,
    /// Collection time (SPM-17.1).
    pub collected_at: Option<Timestamp>,
}

/// One test of an order: its JLAC10 code (OBR-4.1..3) and the laboratory's local code
/// (OBR-4.4..6), if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabTest {
    /// The 17-character JLAC10 code.
    pub jlac10: String,
    /// The test name.
    pub name: String,
    /// The local code, name and `99…` system.
    pub local: Option<Coding>,
}

/// A lab order sent as OML^O33: one specimen, one or more tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabOrder {
    /// The patient; `id` is required.
    pub patient: Patient,
    /// PV1-2 patient class (`O` outpatient, `I` inpatient); PV1 is written only when set.
    pub patient_class: Option<String>,
    /// The placer order number (ORC-2/OBR-2, 依頼番号), required; shared by the tests, which
    /// OBR-1 numbers.
    pub placer_order_number: String,
    /// The ordering facility name (ORC-21.1).
    pub ordering_facility: Option<String>,
    /// The ordering department (ORC-17, `01^内科^99XY1`).
    pub department: Option<Coding>,
    /// The ordering provider (ORC-12 and OBR-16).
    pub ordering_provider: Option<Provider>,
    /// The specimen (SPM); its type code is required.
    pub specimen: Specimen,
    /// The tests (one ORC/OBR each); at least one.
    pub tests: Vec<LabTest>,
    /// TQ1-9 priority (`R` routine, `S` stat); TQ1 is written only when set.
    pub priority: Option<String>,
}

/// The MSH values of an outgoing message; the timestamp is passed in (no clock is read here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-10.
    pub control_id: ControlId,
    /// MSH-7, also written as ORC-9 (transaction time).
    pub timestamp: Timestamp,
    /// MSH-11 processing id (`P`, `T`, `D`).
    pub processing_id: String,
    /// MSH-18/MSH-20: `~ISO IR87` + `ISO 2022-1994` (JAHIS) or `UNICODE UTF-8`.
    pub charset: Charset,
}

impl MessageHeader {
    /// A production (`P`) header.
    pub fn new(
        sending: (&str, &str),
        receiving: (&str, &str),
        control_id: ControlId,
        timestamp: Timestamp,
        charset: Charset,
    ) -> Self {
        Self {
            sending_application: sending.0.to_owned(),
            sending_facility: sending.1.to_owned(),
            receiving_application: receiving.0.to_owned(),
            receiving_facility: receiving.1.to_owned(),
            control_id,
            timestamp,
            processing_id: "P".to_owned(),
            charset,
        }
    }

    fn msh(&self, message_type: [&str; 3]) -> SegmentBuilder {
        let mut msh = SegmentBuilder::new("MSH")
            .field(3, &self.sending_application)
            .field(4, &self.sending_facility)
            .field(5, &self.receiving_application)
            .field(6, &self.receiving_facility)
            .field(7, self.timestamp.as_str())
            .components(9, message_type)
            .field(10, self.control_id.as_str())
            .field(11, &self.processing_id)
            .field(12, "2.5");
        // MSH-18 repeats: the default set first, then the ISO 2022 alternates (§2.14.9.18).
        for name in self.charset.msh18() {
            msh = msh.repetition(18, [*name]);
        }
        if let Some(scheme) = self.charset.msh20() {
            msh = msh.field(20, scheme);
        }
        msh
    }
}

fn required(value: &str, location: Location) -> Result<()> {
    if value.trim().is_empty() { Err(Hl7Error::RequiredMissing { location }) } else { Ok(()) }
}

/// XPN with name type `L` (legal, XPN-7) and representation code `I`/`P` (XPN-8, table 4000).
fn name_components(name: &PersonName, representation: &str) -> [String; 8] {
    let e = String::new;
    [name.family.clone(), name.given.clone(), e(), e(), e(), e(), "L".into(), representation.into()]
}

fn provider_segment(segment: SegmentBuilder, n: usize, provider: &Provider) -> SegmentBuilder {
    // XCN-10 name type `L`, XCN-15 representation `I`, as in the SS-MIX2 sample (§D.1).
    segment
        .set(n, 1, 1, 1, &provider.id)
        .set(n, 1, 2, 1, &provider.name.family)
        .set(n, 1, 3, 1, &provider.name.given)
        .set(n, 1, 10, 1, "L")
        .set(n, 1, 15, 1, "I")
}

fn valid_jlac10(code: &str) -> bool {
    // JLAC10: analyte 5 + identification 4 + material 3 + method 3 + result 2 = 17 characters.
    code.len() == 17 && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Writes a lab order as OML^O33 (JAHIS 臨床検査データ交換規約; HL7 v2.5 §4.4.8), ready for
/// [`crate::charset::encode`] in `header.charset`.
///
/// Segments: MSH, PID, PV1 (when `patient_class` is set), SPM, then per test ORC (`NW`), TQ1
/// (when `priority` is set) and OBR. Errors name the field a missing value would fill:
/// PID-3, ORC-2, SPM-4, OBR-4 (and `InvalidValue` at OBR(n)-4-1 for a code that is not JLAC10).
pub fn build_oml_o33(order: &LabOrder, header: &MessageHeader) -> Result<String> {
    required(&order.patient.id, Location::field("PID", 3))?;
    required(&order.placer_order_number, Location::field("ORC", 2))?;
    required(&order.specimen.kind.code, Location::field("SPM", 4))?;
    if order.tests.is_empty() {
        return Err(Hl7Error::RequiredMissing { location: Location::segment("OBR") });
    }

    let mut message = MessageBuilder::default().segment(header.msh(["OML", "O33", "OML_O33"]));

    // PID (§3.4.2): PID-3 CX with identifier type `PI`; PID-5 kanji then kana repetitions.
    let patient = &order.patient;
    let mut pid = SegmentBuilder::new("PID").field(1, "1").set(3, 1, 1, 1, &patient.id).set(3, 1, 5, 1, "PI");
    for (name, code) in [(&patient.kanji_name, "I"), (&patient.kana_name, "P"), (&patient.alphabetic_name, "A")] {
        if let Some(name) = name {
            pid = pid.repetition(5, name_components(name, code));
        }
    }
    if let Some(birth) = &patient.birth_date {
        pid = pid.field(7, birth.as_str());
    }
    if let Some(sex) = patient.sex {
        pid = pid.field(8, sex.code());
    }
    message.push(pid);

    if let Some(class) = &order.patient_class {
        message.push(SegmentBuilder::new("PV1").field(1, "1").field(2, class));
    }

    // SPM (§7.4.3): SPM-2 specimen id, SPM-4 type (JLAC10 material), SPM-17 collection time.
    let specimen = &order.specimen;
    let mut spm = SegmentBuilder::new("SPM").field(1, "1").components(4, specimen.kind.components());
    if let Some(id) = &specimen.id {
        spm = spm.field(2, id);
    }
    if let Some(at) = &specimen.collected_at {
        spm = spm.field(17, at.as_str());
    }
    message.push(spm);

    for (i, test) in order.tests.iter().enumerate() {
        let n = i + 1;
        if !valid_jlac10(&test.jlac10) {
            let location = Location::field("OBR", 4).occurrence(n).component(1);
            return Err(if test.jlac10.is_empty() {
                Hl7Error::RequiredMissing { location }
            } else {
                Hl7Error::InvalidValue { location, expected: "a 17-character JLAC10 code" }
            });
        }
        // ORC (§4.5.1): NW new order; ORC-9 transaction time; ORC-12 provider; ORC-17
        // department; ORC-21 facility; ORC-29 order type (HL7 table 0482) from the patient class.
        let mut orc = SegmentBuilder::new("ORC")
            .field(1, "NW")
            .field(2, &order.placer_order_number)
            .field(9, header.timestamp.as_str());
        if let Some(provider) = &order.ordering_provider {
            orc = provider_segment(orc, 12, provider);
        }
        if let Some(department) = &order.department {
            orc = orc.components(17, department.components());
        }
        if let Some(facility) = &order.ordering_facility {
            orc = orc.field(21, facility);
        }
        match order.patient_class.as_deref() {
            Some("O") => orc = orc.components(29, ["O", "外来患者オーダ", "HL70482"]),
            Some("I") => orc = orc.components(29, ["I", "入院患者オーダ", "HL70482"]),
            _ => {}
        }
        message.push(orc);

        if let Some(priority) = &order.priority {
            // TQ1 (§4.5.4): TQ1-7 start (the collection time), TQ1-9 priority (table 0485).
            let mut tq1 = SegmentBuilder::new("TQ1").field(1, n.to_string()).field(9, priority);
            if let Some(at) = &specimen.collected_at {
                tq1 = tq1.field(7, at.as_str());
            }
            message.push(tq1);
        }

        // OBR (§4.5.3): OBR-4 JLAC10 code with the local code as alternate (CE-4..6).
        let mut obr = SegmentBuilder::new("OBR")
            .field(1, n.to_string())
            .field(2, &order.placer_order_number)
            .components(4, [test.jlac10.as_str(), test.name.as_str(), JLAC10]);
        if let Some(local) = &test.local {
            obr = obr.set(4, 1, 4, 1, &local.code).set(4, 1, 5, 1, &local.text).set(4, 1, 6, 1, &local.system);
        }
        if let Some(at) = &specimen.collected_at {
            obr = obr.field(7, at.as_str());
        }
        if let Some(provider) = &order.ordering_provider {
            obr = provider_segment(obr, 16, provider);
        }
        message.push(obr);
    }
    message.build()
}

/// One observation (OBX, HL7 v2.5 §7.4.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// OBX-1 set id.
    pub set_id: String,
    /// OBX-2 value type (HL7 table 0125: `NM`, `ST`, `CWE`…).
    pub value_type: String,
    /// OBX-3 observation code: JLAC10 (`JC10`) or local, with its alternate.
    pub code: CodedElement,
    /// OBX-4 sub-id.
    pub sub_id: String,
    /// OBX-5 values, one per repetition, escapes decoded; components kept raw for coded types.
    pub values: Vec<String>,
    /// OBX-6 units.
    pub units: Option<Coding>,
    /// OBX-7 reference range (`6.70-8.3`).
    pub reference_range: Option<String>,
    /// OBX-8 abnormal flags (table 0078: `H`, `L`, `N`, `A`…), one per repetition.
    pub abnormal_flags: Vec<String>,
    /// OBX-11 result status (table 0085: `F` final, `C` corrected, `P` preliminary, `X`…).
    pub status: String,
    /// OBX-14 observation time.
    pub observed_at: Option<Timestamp>,
    /// Comments on the result (NTE-3 of the NTE segments after this OBX), escapes decoded —
    /// e.g. 溶血あり (haemolysed: read with care).
    pub notes: Vec<String>,
}

/// One order with its results (OBR, optional ORC, its OBX and its specimen).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderResults {
    /// OBR-2 placer order number (the hospital's 依頼番号), empty when not given.
    pub placer_order_number: String,
    /// OBR-3 filler order number (the laboratory's), empty when not given.
    pub filler_order_number: String,
    /// OBR-4 universal service id (the test or test group).
    pub service: CodedElement,
    /// ORC-1 order control (`SC`…), when an ORC is present.
    pub order_control: Option<String>,
    /// ORC-5 order status (`CM`…), when given.
    pub order_status: Option<String>,
    /// OBR-25 result status, when given.
    pub result_status: Option<String>,
    /// The specimen: the SPM group the OBR is in (OUL^R22), or the SPM after it (ORU^R01).
    pub specimen: Option<Specimen>,
    /// The observations, in order.
    pub observations: Vec<Observation>,
    /// Comments on the order (NTE after the OBR, before its first OBX).
    pub notes: Vec<String>,
}

/// The content of an OUL^R22 or ORU^R01 result message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabResults {
    /// MSH-9.
    pub message_type: MessageType,
    /// MSH-10, for the ACK and for de-duplication.
    pub control_id: ControlId,
    /// The patient (PID); its id is required.
    pub patient: Patient,
    /// The orders with their results, in message order.
    pub orders: Vec<OrderResults>,
}

impl LabResults {
    /// Every observation with its order, in message order.
    pub fn observations(&self) -> impl Iterator<Item = (&OrderResults, &Observation)> {
        self.orders.iter().flat_map(|o| o.observations.iter().map(move |x| (o, x)))
    }
}

/// A segment with its 1-based occurrence among segments of the same id (for ERR-2).
struct Located<'s, 'a> {
    segment: Segment<'s, 'a>,
    occurrence: usize,
}

impl<'a> Located<'_, 'a> {
    fn location(&self, n: usize) -> Location {
        Location::field(self.segment.id(), n).occurrence(self.occurrence)
    }

    fn field(&self, n: usize) -> Field<'a> {
        self.segment.field(n)
    }

    fn text(&self, n: usize) -> String {
        self.field(n).unescape().into_owned()
    }

    fn optional(&self, n: usize) -> Option<String> {
        Some(self.text(n)).filter(|v| !v.is_empty())
    }

    fn timestamp(&self, n: usize, component: Option<usize>) -> Result<Option<Timestamp>> {
        let raw = match component {
            Some(c) => self.field(n).component(c).raw(),
            None => self.field(n).raw(),
        };
        if raw.is_empty() {
            return Ok(None);
        }
        Timestamp::new(raw).map(Some).map_err(|_| {
            let location = self.location(n);
            let location = match component {
                Some(c) => location.component(c),
                None => location,
            };
            Hl7Error::InvalidValue { location, expected: "an HL7 timestamp (DTM)" }
        })
    }
}

fn text_of(component: Component<'_>) -> String {
    component.unescape().into_owned()
}

fn coding(rep: Repetition<'_>, first: usize) -> Coding {
    Coding {
        code: text_of(rep.component(first)),
        text: text_of(rep.component(first + 1)),
        system: text_of(rep.component(first + 2)),
    }
}

fn coded_element(field: Field<'_>) -> CodedElement {
    let rep = field.repetition(1);
    let alternate = coding(rep, 4);
    CodedElement { primary: coding(rep, 1), alternate: (!alternate.code.is_empty()).then_some(alternate) }
}

/// A CE field whose code (component 1) is required.
fn required_code(segment: &Located<'_, '_>, n: usize) -> Result<CodedElement> {
    let field = segment.field(n);
    if field.is_empty() {
        return Err(Hl7Error::RequiredMissing { location: segment.location(n) });
    }
    let element = coded_element(field);
    required(&element.primary.code, segment.location(n).component(1))?;
    Ok(element)
}

/// PID-3 (§3.4.2.3): CX-1 of the repetition whose CX-5 identifier type is `PI`, else of the
/// first; required.
fn parse_patient_id(pid: &Located<'_, '_>) -> Result<String> {
    let ids = pid.field(3);
    let id_rep = ids.repetitions().find(|r| r.component(5).raw() == "PI").unwrap_or_else(|| ids.repetition(1));
    let id = text_of(id_rep.component(1));
    required(&id, pid.location(3).component(1))?;
    Ok(id)
}

fn parse_patient(pid: &Located<'_, '_>) -> Result<Patient> {
    let id = parse_patient_id(pid)?;
    let mut patient = Patient { id, ..Patient::default() };
    for rep in pid.field(5).repetitions() {
        let name = PersonName { family: text_of(rep.component(1)), given: text_of(rep.component(2)) };
        // XPN-8 name representation code (table 4000): I ideographic, P phonetic, A alphabetic.
        let slot = match rep.component(8).raw() {
            "P" => &mut patient.kana_name,
            "A" => &mut patient.alphabetic_name,
            _ => &mut patient.kanji_name,
        };
        if slot.is_none() {
            *slot = Some(name);
        }
    }
    patient.birth_date = pid.timestamp(7, None)?;
    let sex = pid.field(8).raw();
    if !sex.is_empty() {
        let parsed = Sex::from_code(sex)
            .ok_or(Hl7Error::InvalidValue { location: pid.location(8), expected: "a table 0001 sex code" })?;
        patient.sex = Some(parsed);
    }
    Ok(patient)
}

fn parse_specimen(spm: &Located<'_, '_>) -> Result<Specimen> {
    // SPM-4 specimen type is required (R in HL7 v2.5 §7.4.3.4).
    let kind = required_code(spm, 4)?.primary;
    Ok(Specimen {
        id: Some(text_of(spm.field(2).component(1))).filter(|v| !v.is_empty()),
        kind,
        collected_at: spm.timestamp(17, Some(1))?,
    })
}

/// HL7 table 0125 value types accepted in OBX-2.
const VALUE_TYPES: &[&str] =
    &["NM", "SN", "ST", "TX", "FT", "CE", "CWE", "CF", "DT", "TM", "TS", "DTM", "ED", "RP", "NA", "MA", "CX"];

/// HL7 table 0085 result statuses (OBX-11).
const RESULT_STATUSES: &[&str] = &["C", "D", "F", "I", "N", "O", "P", "R", "S", "U", "W", "X"];

fn parse_observation(obx: &Located<'_, '_>) -> Result<Observation> {
    let code = required_code(obx, 3)?;
    let value_type = obx.text(2);
    let value_field = obx.field(5);
    // OBX-2 is required when OBX-5 is valued (HL7 v2.5 §7.4.2.2).
    if !value_field.is_empty() {
        required(&value_type, obx.location(2))?;
    }
    if !value_type.is_empty() && !VALUE_TYPES.contains(&value_type.as_str()) {
        return Err(Hl7Error::InvalidValue { location: obx.location(2), expected: "a table 0125 value type" });
    }
    let values: Vec<String> = value_field.repetitions().map(|r| r.unescape().into_owned()).collect();
    if value_type == "NM" {
        for (i, value) in values.iter().enumerate() {
            if value.trim().parse::<f64>().is_err() {
                let location = obx.location(5).repetition(i + 1);
                return Err(Hl7Error::InvalidValue { location, expected: "a number (NM)" });
            }
        }
    }
    let status = obx.text(11);
    required(&status, obx.location(11))?;
    if !RESULT_STATUSES.contains(&status.as_str()) {
        return Err(Hl7Error::InvalidValue { location: obx.location(11), expected: "a table 0085 result status" });
    }
    let units = coding(obx.field(6).repetition(1), 1);
    Ok(Observation {
        set_id: obx.text(1),
        value_type,
        code,
        sub_id: obx.text(4),
        values,
        units: (!units.code.is_empty()).then_some(units),
        reference_range: obx.optional(7),
        abnormal_flags: obx.field(8).repetitions().map(|r| r.unescape().into_owned()).collect(),
        status,
        observed_at: obx.timestamp(14, None)?,
        notes: Vec::new(),
    })
}

fn parse_order(obr: &Located<'_, '_>) -> Result<OrderResults> {
    Ok(OrderResults {
        placer_order_number: text_of(obr.field(2).component(1)),
        filler_order_number: text_of(obr.field(3).component(1)),
        service: required_code(obr, 4)?,
        result_status: obr.optional(25),
        ..OrderResults::default()
    })
}

fn apply_orc(order: &mut OrderResults, orc: &Located<'_, '_>) -> Result<()> {
    let control = orc.text(1);
    required(&control, orc.location(1))?;
    order.order_control = Some(control);
    order.order_status = orc.optional(5);
    if order.placer_order_number.is_empty() {
        order.placer_order_number = text_of(orc.field(2).component(1));
    }
    if order.filler_order_number.is_empty() {
        order.filler_order_number = text_of(orc.field(3).component(1));
    }
    Ok(())
}

/// Reads an OUL^R22 or ORU^R01 result message (JAHIS 臨床検査データ交換規約 results; HL7 v2.5
/// §7.3.6 and §7.3.1).
///
/// Required: PID with PID-3; in OUL^R22 each OBR inside an SPM group, each SPM with SPM-4; each
/// OBX after an OBR, with OBX-3, OBX-11, and OBX-2 when OBX-5 is valued; NM values numeric;
/// timestamps valid. A failure is an [`Hl7Error`] carrying the [`Location`] (such as
/// `OBX(2)-3`) for ERR-2. Segments not listed (NTE, SAC, TQ1, PV2…) are skipped.
pub fn parse_lab_results(msg: &Message<'_>) -> Result<LabResults> {
    const EXPECTED: &str = "OUL^R22, ORU^R01";
    let message_type = msg.message_type()?;
    let oul = match (message_type.code(), message_type.trigger()) {
        ("OUL", Some("R22")) => true,
        ("ORU", Some("R01")) => false,
        _ => return Err(Hl7Error::UnexpectedMessageType { expected: EXPECTED }),
    };
    let control_id = msg.control_id()?;

    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut patient = None;
    let mut orders: Vec<OrderResults> = Vec::new();
    // OUL^R22: the current SPM group, applied to the OBRs in it.
    let mut group_specimen: Option<Specimen> = None;
    // ORU^R01: an ORC seen before its OBR.
    let mut pending_orc: Option<OrderResults> = None;

    for segment in msg.segments().skip(1) {
        let id = segment.id();
        let occurrence = match counts.iter_mut().find(|(s, _)| *s == id) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counts.push((id, 1));
                1
            }
        };
        let seg = Located { segment, occurrence };
        let out_of_order =
            |expected| Hl7Error::SegmentOutOfOrder { location: Location::segment(id).occurrence(occurrence), expected };
        match id {
            "PID" if patient.is_none() => patient = Some(parse_patient(&seg)?),
            "SPM" if oul => group_specimen = Some(parse_specimen(&seg)?),
            "SPM" => {
                let specimen = parse_specimen(&seg)?;
                let order = orders.last_mut().ok_or_else(|| out_of_order("SPM after its OBR (ORU_R01)"))?;
                order.specimen.get_or_insert(specimen);
            }
            "OBR" => {
                if patient.is_none() {
                    return Err(Hl7Error::RequiredMissing { location: Location::segment("PID") });
                }
                let mut order = parse_order(&seg)?;
                if oul {
                    order.specimen =
                        Some(group_specimen.clone().ok_or_else(|| out_of_order("OBR inside an SPM group (OUL_R22)"))?);
                } else if let Some(orc) = pending_orc.take() {
                    order.order_control = orc.order_control;
                    order.order_status = orc.order_status;
                    if order.placer_order_number.is_empty() {
                        order.placer_order_number = orc.placer_order_number;
                    }
                    if order.filler_order_number.is_empty() {
                        order.filler_order_number = orc.filler_order_number;
                    }
                }
                orders.push(order);
            }
            "ORC" if oul => {
                let order = orders.last_mut().ok_or_else(|| out_of_order("ORC after its OBR (OUL_R22)"))?;
                apply_orc(order, &seg)?;
            }
            "ORC" => {
                // ORU_R01 ORDER_OBSERVATION: `[ORC] OBR`; the ORC's values wait for the OBR.
                let mut orc = OrderResults::default();
                apply_orc(&mut orc, &seg)?;
                pending_orc = Some(orc);
            }
            "OBX" => {
                let order = orders.last_mut().ok_or_else(|| out_of_order("OBX after an OBR"))?;
                order.observations.push(parse_observation(&seg)?);
            }
            // A comment belongs to the OBX before it; one before any OBX of an order, to the order.
            "NTE" => {
                if let Some(order) = orders.last_mut() {
                    let text: Vec<String> = seg.field(3).repetitions().map(|r| r.unescape().into_owned()).collect();
                    let text = text.join("\n");
                    if !text.trim().is_empty() {
                        match order.observations.last_mut() {
                            Some(obx) => obx.notes.push(text),
                            None => order.notes.push(text),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let patient = patient.ok_or(Hl7Error::RequiredMissing { location: Location::segment("PID") })?;
    if orders.is_empty() {
        return Err(Hl7Error::RequiredMissing { location: Location::segment("OBR") });
    }
    Ok(LabResults { message_type, control_id, patient, orders })
}
