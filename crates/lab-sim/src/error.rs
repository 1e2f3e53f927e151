//! The simulator's error type; each variant has a stable `EHR-LAB-nnn` code.

use std::net::SocketAddr;

use ehr_core::{Classify, IssueType};
use ehr_hl7v2::Hl7Error;

/// What can go wrong while running the simulator or driving it from a test.
#[derive(Debug, thiserror::Error)]
pub enum LabSimError {
    /// The order listener could not be bound.
    #[error("could not listen for orders on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `send_result_now` named a placer order number the lab has not accepted.
    #[error("no accepted order has this placer order number")]
    UnknownOrder,
    /// The order was cancelled or its results were already sent.
    #[error("the order's results were already sent or the order was cancelled")]
    AlreadyResulted,
    /// The simulator has been shut down.
    #[error("the lab simulator has shut down")]
    ShutDown,
    /// Building, encoding or sending an HL7 message failed.
    #[error(transparent)]
    Hl7(#[from] Hl7Error),
}

impl Classify for LabSimError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Bind { .. } => IssueType::Exception,
            Self::UnknownOrder => IssueType::NotFound,
            Self::AlreadyResulted => IssueType::Conflict,
            Self::ShutDown => IssueType::Transient,
            Self::Hl7(err) => err.issue_type(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "EHR-LAB-001",
            Self::UnknownOrder => "EHR-LAB-002",
            Self::AlreadyResulted => "EHR-LAB-003",
            Self::ShutDown => "EHR-LAB-004",
            Self::Hl7(err) => err.code(),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = LabSimError> = std::result::Result<T, E>;
