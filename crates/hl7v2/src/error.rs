//! The crate's error type, one variant per failure, each with a stable `EHR-HL7-nnn` code.
//!
//! Messages never echo field values (they may be PHI): they name positions, offsets and code
//! points instead.

use ehr_core::{Classify, IssueType};

use crate::ack::{AckError, ErrorCode};
use crate::types::Location;

/// Everything that can go wrong while reading, writing or framing HL7 v2 messages.
#[derive(Debug, thiserror::Error)]
pub enum Hl7Error {
    #[error("the message does not start with an MSH segment")]
    NotAMessage,
    #[error("invalid delimiters in MSH-1/MSH-2: {reason}")]
    InvalidDelimiters { reason: &'static str },
    #[error("segment {line} does not start with a valid segment id")]
    InvalidSegment { line: usize },
    #[error("segment id {id:?} is not three upper-case letters or digits")]
    InvalidSegmentId { id: String },
    #[error("MSH-1 and MSH-2 are written from the delimiters and cannot be set")]
    HeaderFieldSet,
    #[error("MSH-10 message control id must be 1 to 20 printable ascii characters")]
    InvalidControlId,
    #[error("MSH-9 message type is not code^trigger^structure")]
    InvalidMessageType,
    #[error("{field} is required but empty")]
    MissingField { field: &'static str },
    #[error("{field} is not an HL7 timestamp (YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ])")]
    InvalidTimestamp { field: &'static str },
    #[error("invalid location path (expected SEG[(n)]-field[(rep)][-component[-subcomponent]])")]
    InvalidLocation,
    #[error("the message has no {which} delimiter, so the value cannot be written")]
    MissingDelimiter { which: &'static str },
    #[error("character set {name:?} in MSH-18 is not supported")]
    UnsupportedCharset { name: String },
    #[error("the message is not valid {charset} at byte {offset}")]
    MalformedText { charset: &'static str, offset: usize },
    #[error("character U+{code_point:04X} at byte {offset} cannot be encoded in {charset}")]
    Unmappable { charset: &'static str, code_point: u32, offset: usize },
    #[error("mllp frame exceeds the maximum size of {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("the connection closed in the middle of an mllp frame")]
    TruncatedFrame,
    #[error("the message contains an mllp framing byte at byte {offset}")]
    FramingByteInPayload { offset: usize },
    #[error("mllp connection i/o failed")]
    Io(#[from] std::io::Error),
    /// A segment or field a JAHIS message requires is absent or empty (ERR-3 101).
    #[error("{location} is required but missing")]
    RequiredMissing { location: Location },
    /// A segment where the message structure does not allow it (ERR-3 100).
    #[error("{location} is out of sequence: {expected}")]
    SegmentOutOfOrder { location: Location, expected: &'static str },
    /// A value of the wrong data type or not in its table (ERR-3 102/103).
    #[error("{location} is not {expected}")]
    InvalidValue { location: Location, expected: &'static str },
    /// A message of a type this reader does not handle (ERR-3 200).
    #[error("message type is not one of {expected}")]
    UnexpectedMessageType { expected: &'static str },
    /// The MLLP peer could not be reached (refused, unreachable, name not resolved); the
    /// operating system's error is the source, kept out of the text.
    #[error("could not connect to the mllp peer")]
    ConnectFailed(#[source] std::io::Error),
    /// An MLLP step took longer than its timeout: `connect`, `write`, `reply` or `idle`.
    #[error("mllp {phase} timed out")]
    Timeout { phase: &'static str },
    /// The peer closed the connection after our message and before a reply frame began.
    #[error("the mllp peer closed the connection without replying")]
    ClosedWithoutReply,
}

impl Hl7Error {
    /// Whether the failure is the connection's, not the message's, so sending the same message
    /// again later may succeed: connect failure, timeout, a connection closed or broken.
    pub fn is_transport_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailed(_)
                | Self::Timeout { .. }
                | Self::ClosedWithoutReply
                | Self::TruncatedFrame
                | Self::Io(_)
        )
    }

    /// Where in the message the error is, for ERR-2, when it is tied to a segment or field.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::RequiredMissing { location }
            | Self::SegmentOutOfOrder { location, .. }
            | Self::InvalidValue { location, .. } => Some(location),
            _ => None,
        }
    }

    /// The ERR segment describing this error in an AE/AR acknowledgment (HL7 v2.5 §2.15.5,
    /// table 0357 for ERR-3); ERR-7 carries this error's text, which never holds field values.
    pub fn to_ack_error(&self) -> AckError {
        let code = match self {
            Self::RequiredMissing { .. } | Self::MissingField { .. } => ErrorCode::RequiredFieldMissing,
            Self::SegmentOutOfOrder { .. } | Self::NotAMessage | Self::InvalidSegment { .. } => {
                ErrorCode::SegmentSequenceError
            }
            Self::InvalidValue { .. }
            | Self::InvalidTimestamp { .. }
            | Self::InvalidControlId
            | Self::InvalidMessageType => ErrorCode::DataTypeError,
            Self::UnexpectedMessageType { .. } => ErrorCode::UnsupportedMessageType,
            _ => ErrorCode::ApplicationInternalError,
        };
        let error = AckError::new(code).diagnostic(self.to_string());
        match self.location() {
            Some(location) => error.at(location.clone()),
            None => error,
        }
    }
}

impl Classify for Hl7Error {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::NotAMessage | Self::InvalidDelimiters { .. } | Self::InvalidSegment { .. } | Self::TruncatedFrame => {
                IssueType::Structure
            }
            Self::InvalidSegmentId { .. }
            | Self::HeaderFieldSet
            | Self::InvalidControlId
            | Self::InvalidMessageType
            | Self::InvalidTimestamp { .. }
            | Self::InvalidLocation
            | Self::MissingDelimiter { .. }
            | Self::MalformedText { .. }
            | Self::Unmappable { .. }
            | Self::FramingByteInPayload { .. } => IssueType::Invalid,
            Self::MissingField { .. } => IssueType::Required,
            Self::UnsupportedCharset { .. } => IssueType::NotSupported,
            // A frame over the configured limit is refused for its size, not its content.
            Self::FrameTooLarge { .. } => IssueType::TooCostly,
            Self::Io(_) => IssueType::Transient,
            Self::RequiredMissing { .. } => IssueType::Required,
            Self::SegmentOutOfOrder { .. } => IssueType::Structure,
            Self::InvalidValue { .. } => IssueType::Invalid,
            Self::UnexpectedMessageType { .. } => IssueType::NotSupported,
            Self::ConnectFailed(_) | Self::ClosedWithoutReply => IssueType::Transient,
            Self::Timeout { .. } => IssueType::Timeout,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotAMessage => "EHR-HL7-001",
            Self::InvalidDelimiters { .. } => "EHR-HL7-002",
            Self::InvalidSegment { .. } => "EHR-HL7-003",
            Self::InvalidSegmentId { .. } => "EHR-HL7-004",
            Self::HeaderFieldSet => "EHR-HL7-005",
            Self::InvalidControlId => "EHR-HL7-006",
            Self::InvalidMessageType => "EHR-HL7-007",
            Self::MissingField { .. } => "EHR-HL7-008",
            Self::InvalidTimestamp { .. } => "EHR-HL7-009",
            Self::InvalidLocation => "EHR-HL7-010",
            Self::MissingDelimiter { .. } => "EHR-HL7-011",
            Self::UnsupportedCharset { .. } => "EHR-HL7-012",
            Self::MalformedText { .. } => "EHR-HL7-013",
            Self::Unmappable { .. } => "EHR-HL7-014",
            Self::FrameTooLarge { .. } => "EHR-HL7-015",
            Self::TruncatedFrame => "EHR-HL7-016",
            Self::FramingByteInPayload { .. } => "EHR-HL7-017",
            Self::Io(_) => "EHR-HL7-018",
            Self::RequiredMissing { .. } => "EHR-HL7-019",
            Self::SegmentOutOfOrder { .. } => "EHR-HL7-020",
            Self::InvalidValue { .. } => "EHR-HL7-021",
            Self::UnexpectedMessageType { .. } => "EHR-HL7-022",
            Self::ConnectFailed(_) => "EHR-HL7-023",
            Self::Timeout { .. } => "EHR-HL7-024",
            Self::ClosedWithoutReply => "EHR-HL7-025",
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Hl7Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_prefixed() {
        let all = [
            Hl7Error::NotAMessage,
            Hl7Error::InvalidDelimiters { reason: "x" },
            Hl7Error::InvalidSegment { line: 1 },
            Hl7Error::InvalidSegmentId { id: "x".into() },
            Hl7Error::HeaderFieldSet,
            Hl7Error::InvalidControlId,
            Hl7Error::InvalidMessageType,
            Hl7Error::MissingField { field: "MSH-10" },
            Hl7Error::InvalidTimestamp { field: "MSH-7" },
            Hl7Error::InvalidLocation,
            Hl7Error::MissingDelimiter { which: "escape" },
            Hl7Error::UnsupportedCharset { name: "x".into() },
            Hl7Error::MalformedText { charset: "x", offset: 0 },
            Hl7Error::Unmappable { charset: "x", code_point: 0, offset: 0 },
            Hl7Error::FrameTooLarge { limit: 1 },
            Hl7Error::TruncatedFrame,
            Hl7Error::FramingByteInPayload { offset: 0 },
            Hl7Error::Io(std::io::Error::other("x")),
            Hl7Error::RequiredMissing { location: Location::field("OBX", 3) },
            Hl7Error::SegmentOutOfOrder { location: Location::segment("OBX"), expected: "x" },
            Hl7Error::InvalidValue { location: Location::field("OBX", 5), expected: "x" },
            Hl7Error::UnexpectedMessageType { expected: "x" },
            Hl7Error::ConnectFailed(std::io::Error::other("x")),
            Hl7Error::Timeout { phase: "reply" },
            Hl7Error::ClosedWithoutReply,
        ];
        let mut codes: Vec<_> = all.iter().map(Classify::code).collect();
        assert!(codes.iter().all(|c| c.starts_with("EHR-HL7-")));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn io_errors_do_not_leak_their_text() {
        let err = Hl7Error::from(std::io::Error::other("secret peer detail"));
        assert!(!err.to_string().contains("secret"));
        assert_eq!(err.issue_type(), IssueType::Transient);
        let err = Hl7Error::ConnectFailed(std::io::Error::other("secret host name"));
        assert!(!err.to_string().contains("secret"));
        assert_eq!(err.issue_type(), IssueType::Transient);
    }
}
