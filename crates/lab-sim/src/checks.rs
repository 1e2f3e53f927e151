//! The order desk's checks: an OML^O33 read field by field as a strict laboratory would, every
//! failure collected as a [`Problem`] with its location rather than stopping at the first.
//!
//! Locations name the field (`PID-3` → ERR-2 `PID^1^3`), the occurrence for repeating segments
//! (`OBR(2)-4` → `OBR^2^4`), and the repetition for names (`PID-5(2)`); the text says which
//! component is wrong. Problems of severity `W` are reported but do not stop the order.

use ehr_hl7v2::jahis::JLAC10;
use ehr_hl7v2::{
    AckError, CodedElement, Coding, ErrorCode, ErrorSeverity, Hl7Error, Location, Message, Patient, PersonName, Sex,
    Specimen, Timestamp,
};

use crate::config::LabCharset;

/// One thing wrong with an order, as reported in an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: ERR-2.
    pub location: Location,
    /// HL7 table 0357 code: ERR-3.
    pub code: ErrorCode,
    /// `E` (the order is refused) or `W` (reported, accepted): ERR-4.
    pub severity: ErrorSeverity,
    /// What is wrong, in English, naming fields and components, never values: ERR-7.
    pub message: String,
}

impl Problem {
    fn error(location: Location, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { location, code, severity: ErrorSeverity::Error, message: message.into() }
    }

    fn warning(location: Location, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { location, code, severity: ErrorSeverity::Warning, message: message.into() }
    }

    /// The segment id (`PID`).
    pub fn segment(&self) -> &str {
        self.location.segment_id()
    }

    /// The field position, when the problem is narrower than a segment.
    pub fn field(&self) -> Option<usize> {
        self.location.field_position()
    }

    /// Whether the problem refuses the order (severity `E`).
    pub fn is_error(&self) -> bool {
        self.severity == ErrorSeverity::Error
    }

    /// Whether the problem is of the kind answered with AR rather than AE: an unsupported
    /// message type, event, processing id or version (HL7 table 0357, 200–203).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::UnsupportedMessageType
                | ErrorCode::UnsupportedEventCode
                | ErrorCode::UnsupportedProcessingId
                | ErrorCode::UnsupportedVersionId
        )
    }

    /// The ERR segment content.
    pub fn to_ack_error(&self) -> AckError {
        AckError::new(self.code).at(self.location.clone()).severity(self.severity).diagnostic(self.message.clone())
    }
}

/// One test of a received order: an ORC/OBR pair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceivedTest {
    /// OBR-1.
    pub set_id: String,
    /// ORC-1 as written (`NW`, `CA`).
    pub order_control: String,
    /// ORC-2.
    pub placer_order_number: String,
    /// OBR-4: the JLAC10 code with its name, and the hospital's local code when given.
    pub code: CodedElement,
    /// The index in [`crate::ReceivedOrder::specimens`] of the SPM group the test is in.
    pub specimen: Option<usize>,
}

impl ReceivedTest {
    /// The 17-character JLAC10 code (the `JC10` triplet of OBR-4), if any.
    pub fn jlac10(&self) -> Option<&str> {
        self.code.jlac10().map(|c| c.code.as_str())
    }

    /// The test name: the JLAC10 triplet's text, else the first triplet's.
    pub fn name(&self) -> &str {
        self.code.jlac10().map_or(self.code.primary.text.as_str(), |c| c.text.as_str())
    }
}

/// What is expected of every order, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expectations<'c> {
    pub charset: LabCharset,
    /// MSH-5 and MSH-6 the order must carry, when checked.
    pub receiver: Option<(&'c str, &'c str)>,
}

/// What the checks read from one message, and what they found wrong.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inspection {
    pub control_id: Option<String>,
    /// MSH-3 and MSH-4, the key of MSH-10 uniqueness.
    pub sender: (String, String),
    pub message_type: Option<String>,
    /// Whether MSH-9 names OML^O33 (code and event); anything else is answered with AR.
    pub is_order: bool,
    pub patient: Patient,
    pub specimens: Vec<Specimen>,
    pub tests: Vec<ReceivedTest>,
    /// For each test, the occurrence of its ORC (for ERR-2 locations).
    pub orc_occurrences: Vec<usize>,
    pub problems: Vec<Problem>,
}

impl Inspection {
    fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }
}

/// HL7 table 0103 processing ids.
const PROCESSING_IDS: &[&str] = &["P", "T", "D"];

/// Runs every check on a parsed message.
pub(crate) fn inspect(msg: &Message<'_>, expect: &Expectations<'_>) -> Inspection {
    let mut out = Inspection::default();
    check_header(msg, expect, &mut out);
    if out.is_order {
        check_body(msg, &mut out);
    }
    out
}

fn check_header(msg: &Message<'_>, expect: &Expectations<'_>, out: &mut Inspection) {
    let msh = msg.msh();
    let at = |n| Location::field("MSH", n);
    out.sender = (msh.field(3).unescape().into_owned(), msh.field(4).unescape().into_owned());

    match msg.message_type() {
        Ok(t) => {
            out.message_type = Some(t.to_string());
            out.is_order = t.code() == "OML" && t.trigger() == Some("O33");
            if !out.is_order {
                out.push(Problem::error(
                    at(9),
                    ErrorCode::UnsupportedMessageType,
                    "MSH-9 must be OML^O33^OML_O33: this laboratory receives orders only",
                ));
            } else if t.structure() != Some("OML_O33") {
                out.push(Problem::error(at(9), ErrorCode::DataTypeError, "MSH-9-3 message structure must be OML_O33"));
            }
        }
        Err(Hl7Error::MissingField { .. }) => {
            out.push(Problem::error(at(9), ErrorCode::RequiredFieldMissing, "MSH-9 message type is required"));
        }
        Err(_) => out.push(Problem::error(at(9), ErrorCode::DataTypeError, "MSH-9 is not code^event^structure")),
    }

    match msg.control_id() {
        Ok(id) => out.control_id = Some(id.as_str().to_owned()),
        Err(Hl7Error::MissingField { .. }) => {
            out.push(Problem::error(at(10), ErrorCode::RequiredFieldMissing, "MSH-10 message control id is required"));
        }
        Err(_) => out.push(Problem::error(
            at(10),
            ErrorCode::DataTypeError,
            "MSH-10 must be 1 to 20 printable ascii characters",
        )),
    }

    let time = msh.field(7).component(1).raw();
    if time.is_empty() {
        out.push(Problem::error(at(7), ErrorCode::RequiredFieldMissing, "MSH-7 message date/time is required"));
    } else if Timestamp::new(time).is_err() {
        out.push(Problem::error(at(7), ErrorCode::DataTypeError, "MSH-7 is not an HL7 timestamp (DTM)"));
    }

    match msh.field(11).component(1).raw() {
        "" => out.push(Problem::error(at(11), ErrorCode::RequiredFieldMissing, "MSH-11 processing id is required")),
        id if !PROCESSING_IDS.contains(&id) => out.push(Problem::error(
            at(11),
            ErrorCode::UnsupportedProcessingId,
            "MSH-11 processing id must be P, T or D (table 0103)",
        )),
        _ => {}
    }

    match msg.version() {
        None => out.push(Problem::error(at(12), ErrorCode::RequiredFieldMissing, "MSH-12 version id is required")),
        Some("2.5") => {}
        Some(_) => out.push(Problem::error(
            at(12),
            ErrorCode::UnsupportedVersionId,
            "MSH-12 must be 2.5 (JAHIS clinical lab data exchange is HL7 v2.5)",
        )),
    }

    // Character set: what the message declares must be what the lab was set up for (JAHIS:
    // `~ISO IR87` with `ISO 2022-1994`; or `UNICODE UTF-8` by agreement with the site).
    let expected = expect.charset.charset();
    let expected_msh18 = expected.msh18().join("~");
    match msg.charset() {
        Ok(declared) if declared == expected => {}
        Ok(_) | Err(_) => out.push(Problem::error(
            at(18),
            ErrorCode::TableValueNotFound,
            format!("MSH-18 must declare {expected_msh18:?}, the character set agreed with this laboratory"),
        )),
    }
    let msh20 = msh.field(20).raw();
    if msh20 != expected.msh20().unwrap_or_default() {
        out.push(Problem::error(
            at(20),
            ErrorCode::TableValueNotFound,
            match expected.msh20() {
                Some(scheme) => format!("MSH-20 must be {scheme:?} with MSH-18 {expected_msh18:?}"),
                None => format!("MSH-20 must be empty with MSH-18 {expected_msh18:?}"),
            },
        ));
    }

    if let Some((application, facility)) = expect.receiver {
        if msh.field(5).component(1).unescape() != application {
            out.push(Problem::error(
                at(5),
                ErrorCode::TableValueNotFound,
                "MSH-5 does not name this laboratory's application",
            ));
        }
        if msh.field(6).component(1).unescape() != facility {
            out.push(Problem::error(at(6), ErrorCode::TableValueNotFound, "MSH-6 does not name this laboratory"));
        }
    }
}

/// Per-segment-id occurrence counter, for locations.
#[derive(Default)]
struct Occurrences(Vec<(String, usize)>);

impl Occurrences {
    fn next(&mut self, id: &str) -> usize {
        match self.0.iter_mut().find(|(s, _)| s == id) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.0.push((id.to_owned(), 1));
                1
            }
        }
    }
}

/// An ORC waiting for its OBR.
struct PendingOrc {
    occurrence: usize,
    control: String,
    placer: String,
}

/// The OML_O33 body: `PID [PV1] {SPM [SAC] {ORC [TQ1] OBR}}` (HL7 v2.5 §4.4.8), each field as
/// JAHIS fills it.
fn check_body(msg: &Message<'_>, out: &mut Inspection) {
    let mut occurrences = Occurrences::default();
    let mut seen_pid = false;
    let mut pending: Option<PendingOrc> = None;
    let (mut orc_count, mut obr_count) = (0, 0);

    for segment in msg.segments().skip(1) {
        let id = segment.id();
        let n = occurrences.next(id);
        let at = |field| Location::field(id, field).occurrence(n);
        match id {
            "PID" if seen_pid || !out.specimens.is_empty() => out.push(Problem::error(
                Location::segment("PID").occurrence(n),
                ErrorCode::SegmentSequenceError,
                "only one PID, before the first SPM",
            )),
            "PID" => {
                seen_pid = true;
                check_pid(&segment, out);
            }
            "SPM" => {
                if let Some(orc) = pending.take() {
                    out.push(orc_without_obr(&orc));
                }
                let specimen = check_spm(&segment, n, out);
                out.specimens.push(specimen);
            }
            "ORC" => {
                orc_count += 1;
                if let Some(orc) = pending.take() {
                    out.push(orc_without_obr(&orc));
                }
                if out.specimens.is_empty() {
                    out.push(Problem::error(
                        Location::segment("ORC").occurrence(n),
                        ErrorCode::SegmentSequenceError,
                        "ORC must follow the SPM of its specimen (OML_O33)",
                    ));
                }
                let control = segment.field(1).raw().to_owned();
                match control.as_str() {
                    "NW" | "CA" => {}
                    "" => out.push(Problem::error(
                        at(1),
                        ErrorCode::RequiredFieldMissing,
                        "ORC-1 order control is required",
                    )),
                    _ => out.push(Problem::error(
                        at(1),
                        ErrorCode::TableValueNotFound,
                        "ORC-1 order control must be NW (new) or CA (cancel)",
                    )),
                }
                let placer = segment.field(2).component(1).unescape().into_owned();
                if placer.trim().is_empty() {
                    out.push(Problem::error(
                        at(2),
                        ErrorCode::RequiredFieldMissing,
                        "ORC-2 placer order number is required",
                    ));
                }
                pending = Some(PendingOrc { occurrence: orc_count, control, placer });
            }
            "OBR" => {
                obr_count += 1;
                let Some(orc) = pending.take() else {
                    out.push(Problem::error(
                        Location::segment("OBR").occurrence(n),
                        ErrorCode::SegmentSequenceError,
                        "OBR must follow its ORC (OML_O33)",
                    ));
                    continue;
                };
                let test = check_obr(&segment, obr_count, &orc, out);
                out.tests.push(test);
                out.orc_occurrences.push(orc.occurrence);
            }
            _ => {}
        }
    }
    if let Some(orc) = pending.take() {
        out.push(orc_without_obr(&orc));
    }
    if !seen_pid {
        out.push(Problem::error(
            Location::segment("PID"),
            ErrorCode::SegmentSequenceError,
            "the PID segment is required",
        ));
    }
    if out.specimens.is_empty() {
        out.push(Problem::error(
            Location::segment("SPM"),
            ErrorCode::SegmentSequenceError,
            "an SPM segment is required",
        ));
    }
    if orc_count == 0 {
        out.push(Problem::error(
            Location::segment("ORC"),
            ErrorCode::SegmentSequenceError,
            "at least one ORC/OBR order is required",
        ));
    }
}

fn orc_without_obr(orc: &PendingOrc) -> Problem {
    Problem::error(
        Location::segment("ORC").occurrence(orc.occurrence),
        ErrorCode::SegmentSequenceError,
        "ORC without its OBR: every order names its test in OBR-4",
    )
}

/// Full-width katakana (with the prolonged sound mark and middle dot) and spaces: what JAHIS
/// expects of the phonetic (カナ) name.
fn is_katakana(text: &str) -> bool {
    text.chars().all(|c| matches!(c, '\u{30A1}'..='\u{30FC}' | '\u{3000}' | ' '))
}

fn check_pid(pid: &ehr_hl7v2::Segment<'_, '_>, out: &mut Inspection) {
    let at = |n| Location::field("PID", n);

    // PID-3: the CX with identifier type PI, else the first; CX-1 required.
    let ids = pid.field(3);
    let id_rep = ids.repetitions().find(|r| r.component(5).raw() == "PI").unwrap_or_else(|| ids.repetition(1));
    out.patient.id = id_rep.component(1).unescape().into_owned();
    if out.patient.id.trim().is_empty() {
        out.push(Problem::error(at(3), ErrorCode::RequiredFieldMissing, "PID-3 patient identifier (CX-1) is required"));
    }

    // PID-5: JAHIS writes the kanji name (XPN-8 `I`) and the kana name (`P`) as repetitions.
    let names = pid.field(5);
    if names.is_empty() {
        out.push(Problem::error(at(5), ErrorCode::RequiredFieldMissing, "PID-5 patient name is required"));
    }
    let repeats = names.repetitions().count() > 1;
    for (i, rep) in names.repetitions().enumerate() {
        let location = at(5).repetition(i + 1);
        let name = PersonName {
            family: rep.component(1).unescape().into_owned(),
            given: rep.component(2).unescape().into_owned(),
        };
        if name.family.trim().is_empty() {
            out.push(Problem::error(
                location.clone(),
                ErrorCode::RequiredFieldMissing,
                "PID-5 family name (XPN-1) is required",
            ));
        }
        let representation = rep.component(8).raw();
        let slot = match representation {
            "I" => &mut out.patient.kanji_name,
            "P" => {
                if !is_katakana(&name.family) || !is_katakana(&name.given) {
                    out.push(Problem::error(
                        location.clone(),
                        ErrorCode::DataTypeError,
                        "PID-5 phonetic name (XPN-8 P) must be full-width katakana",
                    ));
                }
                &mut out.patient.kana_name
            }
            "A" => &mut out.patient.alphabetic_name,
            "" if repeats => {
                out.push(Problem::error(
                    location.clone(),
                    ErrorCode::RequiredFieldMissing,
                    "PID-5 name representation code (XPN-8: I, P or A) is required when the name repeats",
                ));
                &mut out.patient.kanji_name
            }
            "" => &mut out.patient.kanji_name,
            _ => {
                out.push(Problem::error(
                    location.clone(),
                    ErrorCode::TableValueNotFound,
                    "PID-5 name representation code (XPN-8) must be I, P or A (table 4000)",
                ));
                continue;
            }
        };
        if slot.is_some() {
            out.push(Problem::error(
                location,
                ErrorCode::DataTypeError,
                "PID-5 has two names with the same representation code (XPN-8)",
            ));
        } else {
            *slot = Some(name);
        }
    }

    // PID-7: a date of birth, at least to the day (JAHIS writes YYYYMMDD).
    let birth = pid.field(7).component(1).raw();
    if !birth.is_empty() {
        match Timestamp::new(birth) {
            Ok(ts) if birth.len() >= 8 => out.patient.birth_date = Some(ts),
            _ => out.push(Problem::error(at(7), ErrorCode::DataTypeError, "PID-7 date of birth must be YYYYMMDD")),
        }
    }

    // PID-8: HL7 table 0001.
    let sex = pid.field(8).raw();
    if !sex.is_empty() {
        match Sex::from_code(sex) {
            Some(sex) => out.patient.sex = Some(sex),
            None => out.push(Problem::error(
                at(8),
                ErrorCode::TableValueNotFound,
                "PID-8 administrative sex must be M, F, O, U, A or N (table 0001)",
            )),
        }
    }
}

/// A JLAC10 material code (the specimen part of the 17 characters): three digits.
fn is_material_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit())
}

fn check_spm(spm: &ehr_hl7v2::Segment<'_, '_>, n: usize, out: &mut Inspection) -> Specimen {
    let at = |field| Location::field("SPM", field).occurrence(n);
    let kind = spm.field(4);
    let coding = Coding {
        code: kind.component(1).unescape().into_owned(),
        text: kind.component(2).unescape().into_owned(),
        system: kind.component(3).unescape().into_owned(),
    };
    if coding.code.trim().is_empty() {
        out.push(Problem::error(at(4), ErrorCode::RequiredFieldMissing, "SPM-4 specimen type is required"));
    } else if coding.system != JLAC10 {
        out.push(Problem::error(
            at(4),
            ErrorCode::TableValueNotFound,
            "SPM-4 specimen type must be a JLAC10 material code (coding system JC10)",
        ));
    } else if !is_material_code(&coding.code) {
        out.push(Problem::error(at(4), ErrorCode::DataTypeError, "SPM-4-1 must be a three-digit JLAC10 material code"));
    }
    let collected = spm.field(17).component(1).raw();
    let collected_at = match Timestamp::new(collected) {
        Ok(ts) => Some(ts),
        Err(_) if collected.is_empty() => None,
        Err(_) => {
            out.push(Problem::error(
                at(17),
                ErrorCode::DataTypeError,
                "SPM-17 collection time is not an HL7 timestamp",
            ));
            None
        }
    };
    let id = spm.field(2).component(1).unescape().into_owned();
    Specimen { id: (!id.is_empty()).then_some(id), kind: coding, collected_at }
}

/// The JLAC10 17-character code: analyte (digit, letter, three digits), then identification
/// (4), material (3), method (3) and result (2) digits.
pub(crate) fn is_jlac10(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 17 && b[0].is_ascii_digit() && b[1].is_ascii_uppercase() && b[2..].iter().all(u8::is_ascii_digit)
}

fn check_obr(obr: &ehr_hl7v2::Segment<'_, '_>, n: usize, orc: &PendingOrc, out: &mut Inspection) -> ReceivedTest {
    let at = |field| Location::field("OBR", field).occurrence(n);

    let placer = obr.field(2).component(1).unescape().into_owned();
    if placer.trim().is_empty() {
        out.push(Problem::error(at(2), ErrorCode::RequiredFieldMissing, "OBR-2 placer order number is required"));
    } else if placer != orc.placer {
        out.push(Problem::error(at(2), ErrorCode::DataTypeError, "OBR-2 must equal ORC-2 of its order"));
    }

    let field = obr.field(4);
    let rep = field.repetition(1);
    let triplet = |first: usize| Coding {
        code: rep.component(first).unescape().into_owned(),
        text: rep.component(first + 1).unescape().into_owned(),
        system: rep.component(first + 2).unescape().into_owned(),
    };
    let alternate = triplet(4);
    let code = CodedElement { primary: triplet(1), alternate: (!alternate.code.is_empty()).then_some(alternate) };
    if field.is_empty() {
        out.push(Problem::error(at(4), ErrorCode::RequiredFieldMissing, "OBR-4 test code is required"));
    } else {
        match code.jlac10() {
            None => out.push(Problem::error(
                at(4),
                ErrorCode::TableValueNotFound,
                "OBR-4 must carry the test's JLAC10 code (coding system JC10)",
            )),
            Some(jlac10) if !is_jlac10(&jlac10.code) => out.push(Problem::error(
                at(4),
                ErrorCode::DataTypeError,
                "OBR-4 JLAC10 code must be 17 characters: analyte (digit, letter, 3 digits) and 12 digits",
            )),
            Some(jlac10) => {
                // The material digits of the test code name the specimen the test is done on.
                let material = &jlac10.code[9..12];
                let differs = out
                    .specimens
                    .last()
                    .is_some_and(|specimen| is_material_code(&specimen.kind.code) && specimen.kind.code != material);
                if differs {
                    out.push(Problem::warning(
                        at(4),
                        ErrorCode::DataTypeError,
                        "OBR-4 JLAC10 material (digits 10-12) differs from the specimen type in SPM-4",
                    ));
                }
            }
        }
    }
    ReceivedTest {
        set_id: obr.field(1).raw().to_owned(),
        order_control: orc.control.clone(),
        placer_order_number: orc.placer.clone(),
        code,
        specimen: out.specimens.len().checked_sub(1),
    }
}
