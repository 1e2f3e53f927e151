//! General acknowledgments (HL7 v2.5 §2.9.2 original mode, §2.14.1 ACK; MSA §2.15.8, ERR
//! §2.15.5) answering a parsed message.
//!
//! The acknowledgment goes back to the sender: MSH-3/4 and MSH-5/6 are swapped, MSH-11
//! (processing id), MSH-12 (version), MSH-18 and MSH-20 (character set, so JAHIS
//! `~ISO IR87` / `ISO 2022-1994` is answered in kind) are copied, and it is written with the
//! original's delimiters. MSH-7 and MSH-10 are passed in: this module reads no clock and makes
//! no ids.

use crate::builder::{MessageBuilder, SegmentBuilder};
use crate::error::Result;
use crate::message::Message;
use crate::types::{ControlId, Location, MessageType, Timestamp};

/// MSA-1 acknowledgment code (table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// `AA`: accepted and processed.
    Accept,
    /// `AE`: an error in the message; the sender may correct and resend it.
    Error,
    /// `AR`: rejected for reasons unrelated to the content (unsupported type, version, …).
    Reject,
}

impl AckCode {
    /// The code as written in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }

    /// Reads an original-mode code (`AA`, `AE`, `AR`).
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "AA" => Self::Accept,
            "AE" => Self::Error,
            "AR" => Self::Reject,
            _ => return None,
        })
    }
}

/// HL7 error codes (table 0357, ERR-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: message accepted.
    MessageAccepted,
    /// 100: segment sequence error.
    SegmentSequenceError,
    /// 101: required field missing.
    RequiredFieldMissing,
    /// 102: data type error.
    DataTypeError,
    /// 103: table value not found.
    TableValueNotFound,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEventCode,
    /// 202: unsupported processing id.
    UnsupportedProcessingId,
    /// 203: unsupported version id.
    UnsupportedVersionId,
    /// 204: unknown key identifier.
    UnknownKeyIdentifier,
    /// 205: duplicate key identifier.
    DuplicateKeyIdentifier,
    /// 206: application record locked.
    ApplicationRecordLocked,
    /// 207: application internal error.
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::MessageAccepted => 0,
            Self::SegmentSequenceError => 100,
            Self::RequiredFieldMissing => 101,
            Self::DataTypeError => 102,
            Self::TableValueNotFound => 103,
            Self::UnsupportedMessageType => 200,
            Self::UnsupportedEventCode => 201,
            Self::UnsupportedProcessingId => 202,
            Self::UnsupportedVersionId => 203,
            Self::UnknownKeyIdentifier => 204,
            Self::DuplicateKeyIdentifier => 205,
            Self::ApplicationRecordLocked => 206,
            Self::ApplicationInternalError => 207,
        }
    }

    /// Reads a numeric table 0357 code.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0 => Self::MessageAccepted,
            100 => Self::SegmentSequenceError,
            101 => Self::RequiredFieldMissing,
            102 => Self::DataTypeError,
            103 => Self::TableValueNotFound,
            200 => Self::UnsupportedMessageType,
            201 => Self::UnsupportedEventCode,
            202 => Self::UnsupportedProcessingId,
            203 => Self::UnsupportedVersionId,
            204 => Self::UnknownKeyIdentifier,
            205 => Self::DuplicateKeyIdentifier,
            206 => Self::ApplicationRecordLocked,
            207 => Self::ApplicationInternalError,
            _ => return None,
        })
    }

    /// The description of table 0357.
    pub fn text(self) -> &'static str {
        match self {
            Self::MessageAccepted => "Message accepted",
            Self::SegmentSequenceError => "Segment sequence error",
            Self::RequiredFieldMissing => "Required field missing",
            Self::DataTypeError => "Data type error",
            Self::TableValueNotFound => "Table value not found",
            Self::UnsupportedMessageType => "Unsupported message type",
            Self::UnsupportedEventCode => "Unsupported event code",
            Self::UnsupportedProcessingId => "Unsupported processing id",
            Self::UnsupportedVersionId => "Unsupported version id",
            Self::UnknownKeyIdentifier => "Unknown key identifier",
            Self::DuplicateKeyIdentifier => "Duplicate key identifier",
            Self::ApplicationRecordLocked => "Application record locked",
            Self::ApplicationInternalError => "Application internal error",
        }
    }
}

/// ERR-4 severity (table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorSeverity {
    /// `E`: the message was not processed as sent.
    Error,
    /// `W`: processed, with a warning.
    Warning,
    /// `I`: information only.
    Information,
}

impl ErrorSeverity {
    /// The code as written in ERR-4.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "E",
            Self::Warning => "W",
            Self::Information => "I",
        }
    }
}

/// One error reported in an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    code: ErrorCode,
    severity: ErrorSeverity,
    location: Option<Location>,
    diagnostic: Option<String>,
    user_message: Option<String>,
}

impl AckError {
    /// An error-severity error with this HL7 error code.
    pub fn new(code: ErrorCode) -> Self {
        Self { code, severity: ErrorSeverity::Error, location: None, diagnostic: None, user_message: None }
    }

    /// Where in the original message the error is (ERR-2).
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// The severity (ERR-4), `E` unless set.
    pub fn severity(mut self, severity: ErrorSeverity) -> Self {
        self.severity = severity;
        self
    }

    /// Diagnostic information for the sender's support staff (ERR-7); never internals or PHI.
    pub fn diagnostic(mut self, text: impl Into<String>) -> Self {
        self.diagnostic = Some(text.into());
        self
    }

    /// A message for the sender's users (ERR-8).
    pub fn user_message(mut self, text: impl Into<String>) -> Self {
        self.user_message = Some(text.into());
        self
    }

    /// The HL7 error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The location, if known.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }
}

/// Builds the ACK answering one parsed message.
#[derive(Debug, Clone)]
pub struct AckBuilder<'m, 'a> {
    original: &'m Message<'a>,
    code: AckCode,
    errors: Vec<AckError>,
    message_type: Option<MessageType>,
}

impl<'m, 'a> AckBuilder<'m, 'a> {
    /// An acknowledgment of `original` with this MSA-1 code.
    pub fn new(original: &'m Message<'a>, code: AckCode) -> Self {
        Self { original, code, errors: Vec::new(), message_type: None }
    }

    /// Writes this MSH-9 instead of `ACK^<trigger>^ACK`: for the message-specific
    /// acknowledgments such as ORL^O34 answering OML^O33 (§2.9.2, application acknowledgment).
    pub fn message_type(mut self, message_type: MessageType) -> Self {
        self.message_type = Some(message_type);
        self
    }

    /// Adds an error; each becomes one ERR segment.
    pub fn error(mut self, error: AckError) -> Self {
        self.errors.push(error);
        self
    }

    /// The acknowledgment as a builder, for callers that add segments of their own.
    pub fn builder(&self, control_id: &ControlId, timestamp: &Timestamp) -> MessageBuilder {
        let msh = self.original.msh();
        let field = |n| msh.field(n).raw();
        // MSH-9 of an ACK: ACK^<the original trigger event>^ACK (§2.14.1).
        let trigger = msh.field(9).component(2).raw();
        let mut header = SegmentBuilder::new("MSH")
            .raw(3, field(5))
            .raw(4, field(6))
            .raw(5, field(3))
            .raw(6, field(4))
            .field(7, timestamp.as_str())
            .field(10, control_id.as_str())
            .raw(11, field(11))
            .raw(12, field(12))
            .raw(18, field(18))
            .raw(20, field(20));
        let component = self.original.delimiters().component();
        header = if let Some(message_type) = &self.message_type {
            header.raw(9, message_type.to_raw(component))
        } else if trigger.is_empty() {
            header.field(9, "ACK")
        } else {
            header.raw(9, format!("ACK{component}{trigger}{component}ACK"))
        };
        let msa = SegmentBuilder::new("MSA").field(1, self.code.as_str()).raw(2, msh.field(10).raw());
        let mut message = MessageBuilder::new(*self.original.delimiters()).segment(header).segment(msa);
        let legacy = is_before_v25(self.original.version());
        for error in &self.errors {
            message.push(if legacy { err_v24(error) } else { err_v25(error) });
        }
        message
    }

    /// Writes the acknowledgment (CR after each segment), to be encoded with the original's
    /// character set.
    pub fn build(&self, control_id: &ControlId, timestamp: &Timestamp) -> Result<String> {
        self.builder(control_id, timestamp).build()
    }
}

/// ERR of v2.5 and later: ERR-2 location (ERL), ERR-3 code (CWE of table 0357), ERR-4 severity,
/// ERR-7 diagnostic information, ERR-8 user message.
fn err_v25(error: &AckError) -> SegmentBuilder {
    let mut err = SegmentBuilder::new("ERR");
    if let Some(location) = &error.location {
        let number = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
        err = err.components(
            2,
            [
                location.segment_id().to_owned(),
                location.segment_occurrence().to_string(),
                number(location.field_position()),
                number(location.field_repetition()),
                number(location.component_number()),
                number(location.subcomponent_number()),
            ],
        );
    }
    err = err
        .components(3, [error.code.code().to_string(), error.code.text().to_owned(), "HL70357".to_owned()])
        .field(4, error.severity.as_str());
    if let Some(text) = &error.diagnostic {
        err = err.field(7, text.clone());
    }
    if let Some(text) = &error.user_message {
        err = err.field(8, text.clone());
    }
    err
}

/// ERR of v2.1–v2.4, which only has ERR-1 (ELD): segment id ^ sequence ^ field position ^ code
/// (a CE written in sub-components).
fn err_v24(error: &AckError) -> SegmentBuilder {
    let location = error.location.as_ref();
    let number = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
    SegmentBuilder::new("ERR")
        .set(1, 1, 1, 1, location.map(|l| l.segment_id().to_owned()).unwrap_or_default())
        .set(1, 1, 2, 1, location.map(|l| l.segment_occurrence().to_string()).unwrap_or_default())
        .set(1, 1, 3, 1, number(location.and_then(Location::field_position)))
        .set(1, 1, 4, 1, error.code.code().to_string())
        .set(1, 1, 4, 2, error.code.text())
        .set(1, 1, 4, 3, "HL70357")
}

/// Whether MSH-12 names a version before 2.5 (ERR-2 to ERR-8 appeared in 2.5).
fn is_before_v25(version: Option<&str>) -> bool {
    let Some(rest) = version.and_then(|v| v.strip_prefix("2.")) else { return false };
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().is_ok_and(|m| m < 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OML: &str = "MSH|^~\\&|HIS|HOSP|LAB|LABCO|20240401093000||OML^O33^OML_O33|MSG0001|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P\r";

    fn ids() -> (ControlId, Timestamp) {
        (ControlId::new("ACK0001").unwrap(), Timestamp::new("20240401093005+0900").unwrap())
    }

    #[test]
    fn accept() {
        let original = Message::parse(OML).unwrap();
        let (id, ts) = ids();
        let ack = AckBuilder::new(&original, AckCode::Accept).build(&id, &ts).unwrap();
        assert_eq!(
            ack,
            "MSH|^~\\&|LAB|LABCO|HIS|HOSP|20240401093005+0900||ACK^O33^ACK|ACK0001|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
             MSA|AA|MSG0001\r"
        );
        let parsed = Message::parse(&ack).unwrap();
        assert_eq!(parsed.message_type().unwrap().to_string(), "ACK^O33^ACK");
        assert_eq!(parsed.charset().unwrap(), original.charset().unwrap());
    }

    #[test]
    fn error_with_location_v25() {
        let original = Message::parse(OML).unwrap();
        let (id, ts) = ids();
        let ack = AckBuilder::new(&original, AckCode::Error)
            .error(
                AckError::new(ErrorCode::RequiredFieldMissing)
                    .at(Location::field("PID", 3).repetition(1).component(1))
                    .diagnostic("PID-3 patient id is required"),
            )
            .error(
                AckError::new(ErrorCode::TableValueNotFound)
                    .at("OBR(2)-4".parse().unwrap())
                    .severity(ErrorSeverity::Warning),
            )
            .build(&id, &ts)
            .unwrap();
        let parsed = Message::parse(&ack).unwrap();
        assert_eq!(parsed.get("MSA-1").unwrap(), Some("AE"));
        let errs: Vec<_> = parsed.segments_named("ERR").map(|s| s.raw()).collect();
        assert_eq!(
            errs,
            [
                "ERR||PID^1^3^1^1|101^Required field missing^HL70357|E|||PID-3 patient id is required",
                "ERR||OBR^2^4|103^Table value not found^HL70357|W",
            ]
        );
    }

    #[test]
    fn legacy_versions_get_err1() {
        let original = Message::parse("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.3.1\r").unwrap();
        let (id, ts) = ids();
        let ack = AckBuilder::new(&original, AckCode::Reject)
            .error(AckError::new(ErrorCode::UnsupportedMessageType).at(Location::field("MSH", 9)))
            .build(&id, &ts)
            .unwrap();
        assert!(ack.starts_with("MSH|^~\\&|C|D|A|B|20240401093005+0900||ACK^R01^ACK|ACK0001|P|2.3.1\r"), "{ack}");
        assert!(ack.ends_with("MSA|AR|X1\rERR|MSH^1^9^200&Unsupported message type&HL70357\r"), "{ack}");
    }

    #[test]
    fn answers_a_message_without_trigger_or_control_id() {
        let original = Message::parse("MSH|^~\\&|A|B|C|D|20240101||ACK\r").unwrap();
        let (id, ts) = ids();
        let ack = AckBuilder::new(&original, AckCode::Reject)
            .error(AckError::new(ErrorCode::RequiredFieldMissing).at(Location::field("MSH", 10)))
            .build(&id, &ts)
            .unwrap();
        assert!(ack.contains("||ACK|ACK0001\rMSA|AR\rERR||MSH^1^10|101^"), "{ack}");
    }

    #[test]
    fn versions() {
        assert!(is_before_v25(Some("2.3.1")));
        assert!(is_before_v25(Some("2.4")));
        assert!(!is_before_v25(Some("2.5")));
        assert!(!is_before_v25(Some("2.5.1")));
        assert!(!is_before_v25(Some("2.10")));
        assert!(!is_before_v25(None));
    }
}
