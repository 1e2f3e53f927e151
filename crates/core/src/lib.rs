//! Shared vocabulary of the EHR: identifiers, the tenant context every repository call takes,
//! the injected clock, and the one place where errors become FHIR OperationOutcomes.
//!
//! This crate does no I/O.

mod clock;
mod ids;
mod outcome;
mod tenant;

pub use clock::{Clock, SystemClock, retry_due};
pub use ids::{IdError, ResourceId, ResourceType, TenantId};
pub use outcome::{Classify, Issue, IssueType, Severity, operation_outcome};
pub use tenant::{Principal, TenantContext};
