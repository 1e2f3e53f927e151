//! The orders service: lab orders (ServiceRequest), prescriptions (MedicationRequest), specimens,
//! tasks, and reservations (Schedule, Slot, Appointment), with their status workflows.
//!
//! It serves its types through the shared FHIR REST engine (`ehr-rest`) and adds its business
//! rules to every write ([`OrderRules`]): the workflow of each type ([`workflow`]), atomic slot
//! booking ([`booking`]), master-code checks (`ehr-terminology`), and the `order.placed` /
//! `order.cancelled` events of lab orders. It consumes `lab.result.received` to complete the
//! order the results answer ([`consumer`]).

mod booking;
pub mod consumer;
mod error;
mod rules;
pub mod workflow;

pub use consumer::OrderResults;
pub use error::OrdersError;
pub use rules::{ORDER_CANCELLED, ORDER_PLACED, OrderRules};

use axum::Router;
use ehr_rest::RestState;

/// The resource types this service owns (design.md, "Services and what each owns"), sorted.
pub const RESOURCE_TYPES: &[&str] = &[
    "Appointment",
    "MedicationDispense",
    "MedicationRequest",
    "Schedule",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "Task",
];

/// The service's HTTP routes, relative to the FHIR base (`/fhir`).
pub fn router(state: RestState) -> Router {
    ehr_rest::router(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn types_are_sorted_and_known() {
        assert!(super::RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        for t in super::RESOURCE_TYPES {
            assert!(ehr_core::ResourceType::parse(t).is_ok(), "{t}");
        }
    }
}
