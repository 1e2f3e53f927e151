//! Reading the acknowledgment a peer sent back: MSA (HL7 v2.5 §2.15.8) and ERR (§2.15.5) of
//! an ACK, an ORL^O34 or any other reply that carries them.
//!
//! Lenient where the sender's decision does not depend on it (the reply's own MSH-9/MSH-10, an
//! ERR location it cannot read), strict on MSA-1, which decides whether to resend.

use crate::ack::{AckCode, ErrorCode};
use crate::error::{Hl7Error, Result};
use crate::message::{Message, Segment};
use crate::types::{ControlId, Location, MessageType};

/// MSA-1 acknowledgment code (HL7 table 0008), original and enhanced mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// `AA`: application accept.
    ApplicationAccept,
    /// `AE`: application error; the message should be corrected, not resent as is.
    ApplicationError,
    /// `AR`: application reject (type, version, processing id… or the system is unavailable).
    ApplicationReject,
    /// `CA`: commit accept (enhanced mode: stored, not yet processed).
    CommitAccept,
    /// `CE`: commit error.
    CommitError,
    /// `CR`: commit reject.
    CommitReject,
}

impl ReplyCode {
    /// The code as written in MSA-1.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApplicationAccept => "AA",
            Self::ApplicationError => "AE",
            Self::ApplicationReject => "AR",
            Self::CommitAccept => "CA",
            Self::CommitError => "CE",
            Self::CommitReject => "CR",
        }
    }

    /// Reads MSA-1.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "AA" => Self::ApplicationAccept,
            "AE" => Self::ApplicationError,
            "AR" => Self::ApplicationReject,
            "CA" => Self::CommitAccept,
            "CE" => Self::CommitError,
            "CR" => Self::CommitReject,
            _ => return None,
        })
    }

    /// `AA` or `CA`: the receiver has the message.
    pub fn is_accept(self) -> bool {
        matches!(self, Self::ApplicationAccept | Self::CommitAccept)
    }

    /// `AE` or `CE`: the message is in error.
    pub fn is_error(self) -> bool {
        matches!(self, Self::ApplicationError | Self::CommitError)
    }

    /// `AR` or `CR`: the message was rejected.
    pub fn is_reject(self) -> bool {
        matches!(self, Self::ApplicationReject | Self::CommitReject)
    }
}

impl From<AckCode> for ReplyCode {
    fn from(code: AckCode) -> Self {
        match code {
            AckCode::Accept => Self::ApplicationAccept,
            AckCode::Error => Self::ApplicationError,
            AckCode::Reject => Self::ApplicationReject,
        }
    }
}

impl std::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ERR segment of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyError {
    /// Where the error is: ERR-2 (v2.5), or ERR-1 (v2.4 and before); `None` when absent or not
    /// a readable location.
    pub location: Option<Location>,
    /// The error code as written (ERR-3.1, or ERR-1.4.1): table 0357 or a local code.
    pub code: String,
    /// The code's text (ERR-3.2, or ERR-1.4.2).
    pub code_text: String,
    /// ERR-4 severity (table 0516: `E`, `W`, `I`), when given.
    pub severity: Option<String>,
    /// ERR-7 diagnostic information, when given.
    pub diagnostic: Option<String>,
    /// ERR-8 user message, when given.
    pub user_message: Option<String>,
}

impl ReplyError {
    /// The code as an HL7 table 0357 value, when it is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code.parse().ok().and_then(ErrorCode::from_code)
    }
}

/// The acknowledgment part of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckReply {
    /// The reply's MSH-9 (`ACK^O33^ACK`, `ORL^O34^ORL_O34`), when readable.
    pub message_type: Option<MessageType>,
    /// The reply's own MSH-10, when readable.
    pub control_id: Option<ControlId>,
    /// MSA-1.
    pub code: ReplyCode,
    /// MSA-2: the control id of the message acknowledged; `None` when empty (a receiver that
    /// could not read the message's MSH-10).
    pub acknowledged: Option<ControlId>,
    /// MSA-3 text message (deprecated in v2.5, still sent by some systems).
    pub text: Option<String>,
    /// The ERR segments, in order.
    pub errors: Vec<ReplyError>,
}

impl AckReply {
    /// Whether MSA-2 names this control id.
    pub fn acknowledges(&self, control_id: &ControlId) -> bool {
        self.acknowledged.as_ref() == Some(control_id)
    }
}

/// Reads MSA and the ERR segments of a reply.
///
/// Errors: no MSA, or an MSA-1 outside table 0008 (with its location, MSA-1); an MSA-2 that is
/// not a valid control id (MSA-2).
pub fn parse_ack(msg: &Message<'_>) -> Result<AckReply> {
    let msa = msg.segment("MSA").ok_or(Hl7Error::RequiredMissing { location: Location::segment("MSA") })?;
    let raw_code = msa.field(1).raw();
    if raw_code.is_empty() {
        return Err(Hl7Error::RequiredMissing { location: Location::field("MSA", 1) });
    }
    let code = ReplyCode::from_code(raw_code).ok_or(Hl7Error::InvalidValue {
        location: Location::field("MSA", 1),
        expected: "a table 0008 acknowledgment code",
    })?;
    let acknowledged = match msa.field(2).unescape() {
        id if id.is_empty() => None,
        id => Some(ControlId::new(&id).map_err(|_| Hl7Error::InvalidValue {
            location: Location::field("MSA", 2),
            expected: "a message control id",
        })?),
    };
    let text = Some(msa.field(3).unescape().into_owned()).filter(|t| !t.is_empty());
    Ok(AckReply {
        message_type: msg.message_type().ok(),
        control_id: msg.control_id().ok(),
        code,
        acknowledged,
        text,
        errors: msg.segments_named("ERR").map(|err| reply_error(&err)).collect(),
    })
}

fn optional(segment: &Segment<'_, '_>, n: usize) -> Option<String> {
    Some(segment.field(n).unescape().into_owned()).filter(|v| !v.is_empty())
}

fn reply_error(err: &Segment<'_, '_>) -> ReplyError {
    let erl = err.field(2);
    let mut error = ReplyError {
        location: None,
        code: err.field(3).component(1).unescape().into_owned(),
        code_text: err.field(3).component(2).unescape().into_owned(),
        severity: optional(err, 4),
        diagnostic: optional(err, 7),
        user_message: optional(err, 8),
    };
    if !erl.is_empty() {
        // ERL (§2.A.26): segment ^ occurrence ^ field ^ repetition ^ component ^ sub-component.
        let part = |n| erl.component(n).raw();
        error.location = location(part(1), [part(2), part(3), part(4), part(5), part(6)]);
    } else {
        // v2.4 ELD in ERR-1: segment ^ sequence ^ field ^ code&text&system.
        let eld = err.field(1);
        let part = |n| eld.component(n).raw();
        error.location = location(part(1), [part(2), part(3), "", "", ""]);
        let code = eld.component(4);
        if error.code.is_empty() {
            error.code = code.subcomponent(1).unescape().into_owned();
            error.code_text = code.subcomponent(2).unescape().into_owned();
        }
    }
    error
}

/// A location from its parts; `None` when the segment id is unreadable. Unreadable numbers are
/// left out rather than failing the whole reply.
fn location(segment: &str, [occurrence, field, repetition, component, subcomponent]: [&str; 5]) -> Option<Location> {
    let number = |s: &str| s.parse::<usize>().ok().filter(|n| *n > 0);
    let mut location: Location = segment.parse().ok()?;
    location = location.occurrence(number(occurrence).unwrap_or(1));
    let Some(field) = number(field) else { return Some(location) };
    location = location.at_field(field);
    if let Some(repetition) = number(repetition) {
        location = location.repetition(repetition);
    }
    if let Some(component) = number(component) {
        location = location.component(component);
        if let Some(subcomponent) = number(subcomponent) {
            location = location.subcomponent(subcomponent);
        }
    }
    Some(location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckBuilder, AckError};
    use crate::types::Timestamp;

    const OML: &str = "MSH|^~\\&|HIS|HOSP|LAB|LABCO|20240401093000||OML^O33^OML_O33|MSG0001|P|2.5\r";

    #[test]
    fn reads_what_ack_builder_writes() {
        let original = Message::parse(OML).unwrap();
        let ack = AckBuilder::new(&original, AckCode::Error)
            .error(AckError::new(ErrorCode::RequiredFieldMissing).at(Location::field("PID", 3)).diagnostic("d"))
            .error(AckError::new(ErrorCode::DataTypeError).at("OBR(2)-4-1".parse().unwrap()))
            .build(&ControlId::new("A1").unwrap(), &Timestamp::new("20240401093001").unwrap())
            .unwrap();
        let reply = parse_ack(&Message::parse(&ack).unwrap()).unwrap();
        assert_eq!(reply.code, ReplyCode::ApplicationError);
        assert!(reply.code.is_error() && !reply.code.is_accept());
        assert!(reply.acknowledges(&ControlId::new("MSG0001").unwrap()));
        assert_eq!(reply.control_id.as_ref().map(ControlId::as_str), Some("A1"));
        assert_eq!(reply.message_type.as_ref().map(ToString::to_string).as_deref(), Some("ACK^O33^ACK"));
        assert_eq!(reply.errors.len(), 2);
        assert_eq!(reply.errors[0].location, Some(Location::field("PID", 3)));
        assert_eq!(reply.errors[0].error_code(), Some(ErrorCode::RequiredFieldMissing));
        assert_eq!(reply.errors[0].severity.as_deref(), Some("E"));
        assert_eq!(reply.errors[0].diagnostic.as_deref(), Some("d"));
        assert_eq!(reply.errors[1].location.as_ref().map(ToString::to_string).as_deref(), Some("OBR(2)-4-1"));
    }

    #[test]
    fn legacy_err1_and_enhanced_codes() {
        let text = "MSH|^~\\&|LAB|LABCO|HIS|HOSP|20240401||ACK|X|P|2.3\rMSA|CR|MSG0001|busy\r\
                    ERR|PID^1^3^101&Required field missing&HL70357\r";
        let reply = parse_ack(&Message::parse(text).unwrap()).unwrap();
        assert_eq!(reply.code, ReplyCode::CommitReject);
        assert!(reply.code.is_reject());
        assert_eq!(reply.text.as_deref(), Some("busy"));
        assert_eq!(reply.errors[0].location, Some(Location::field("PID", 3)));
        assert_eq!(reply.errors[0].code, "101");
        assert_eq!(reply.errors[0].code_text, "Required field missing");
    }

    #[test]
    fn msa_problems() {
        let err = parse_ack(&Message::parse(OML).unwrap()).unwrap_err();
        assert_eq!(err.location(), Some(&Location::segment("MSA")));
        let err = parse_ack(&Message::parse("MSH|^~\\&\rMSA|OK|1\r").unwrap()).unwrap_err();
        assert_eq!(err.location(), Some(&Location::field("MSA", 1)));
        let err = parse_ack(&Message::parse("MSH|^~\\&\rMSA||1\r").unwrap()).unwrap_err();
        assert_eq!(err.location(), Some(&Location::field("MSA", 1)));
        let reply = parse_ack(&Message::parse("MSH|^~\\&\rMSA|AR\rERR||bad^x\r").unwrap()).unwrap();
        assert_eq!((reply.code, reply.acknowledged.clone()), (ReplyCode::ApplicationReject, None));
        assert_eq!(reply.errors[0].location, None);
        assert_eq!(reply.message_type, None);
    }
}
