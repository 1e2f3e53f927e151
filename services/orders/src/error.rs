//! The orders service's errors, classified once into FHIR issue types.

use crate::workflow::WorkflowError;
use ehr_core::{Classify, IssueType};

/// Why the orders service refused a write.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error("Appointment.slot[{0}] must be a reference to a Slot of this server (Slot/<id>)")]
    SlotReference(usize),
    #[error("Slot/{0} does not exist")]
    SlotNotFound(String),
    #[error("Slot/{0} is not free: it was booked by another appointment")]
    SlotTaken(String),
    #[error("Slot/{0} is held by an appointment: cancel the appointment to free it")]
    SlotHeld(String),
    #[error("a lab order needs a subject that is a Patient of this server")]
    OrderWithoutPatient,
    #[error("a stored resource does not parse")]
    StoredJson,
    #[error("ServiceRequest.{0} of an order placed with a lab cannot change: revoke it and place a new order")]
    PlacedOrderChanged(&'static str),
}

impl Classify for OrdersError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::Workflow(e) => e.issue_type(),
            Self::SlotReference(_)
            | Self::SlotNotFound(_)
            | Self::OrderWithoutPatient
            | Self::PlacedOrderChanged(_) => IssueType::BusinessRule,
            Self::SlotTaken(_) | Self::SlotHeld(_) => IssueType::Conflict,
            Self::StoredJson => IssueType::Exception,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Workflow(e) => e.code(),
            Self::SlotReference(_) => "EHR-ORD-101",
            Self::SlotNotFound(_) => "EHR-ORD-102",
            Self::SlotTaken(_) => "EHR-ORD-103",
            Self::OrderWithoutPatient => "EHR-ORD-104",
            Self::StoredJson => "EHR-ORD-105",
            Self::PlacedOrderChanged(_) => "EHR-ORD-106",
            Self::SlotHeld(_) => "EHR-ORD-107",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            Self::Workflow(e) => e.http_status(),
            _ => self.issue_type().http_status(),
        }
    }

    fn issues(&self) -> Vec<ehr_core::Issue> {
        match self {
            Self::Workflow(e) => e.issues(),
            _ => vec![ehr_core::Issue::error(self.issue_type(), self.code(), self.to_string())],
        }
    }
}
