//! The orders service's write rules: status workflows, reservations, master-code checks and the
//! events an order emits — all inside the write's own transaction (see [`ehr_rest::WriteRules`]).

use crate::booking;
use crate::error::OrdersError;
use crate::workflow;
use ehr_core::{Clock, Severity};
use ehr_http::Problem;
use ehr_rest::{Change, WriteRules};
use ehr_store::{NewEvent, Tx};
use ehr_terminology::Terminology;
use serde_json::{Value, json};
use std::sync::Arc;

/// Topic of a lab order that became active: the lab interface sends it to the lab.
pub const ORDER_PLACED: &str = "order.placed";
/// Topic of a lab order revoked after it was placed: the lab interface sends the cancellation.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// Codings of `ServiceRequest.category` that make an order a lab order (sent to a lab): SNOMED CT
/// 108252007 "Laboratory procedure" (the R4 example value set) and the JP Core / JP-CLINS
/// observation category `laboratory`.
fn is_lab_order(sr: &Value) -> bool {
    sr["category"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .any(|coding| matches!(coding["code"].as_str(), Some("108252007" | "laboratory")))
}

/// Whether a lab order is one the lab must perform: an order intent (not a proposal or plan) and
/// not `doNotPerform`.
fn to_perform(sr: &Value) -> bool {
    matches!(
        sr["intent"].as_str(),
        Some("order" | "original-order" | "instance-order" | "filler-order" | "reflex-order")
    ) && sr["doNotPerform"] != Value::Bool(true)
}

/// Statuses of a lab order the lab knows about.
fn placed(v: Option<&Value>) -> bool {
    matches!(status(v), Some("active" | "on-hold"))
}

fn status(v: Option<&Value>) -> Option<&str> {
    v.and_then(|v| v["status"].as_str())
}

/// The orders service's [`WriteRules`].
pub struct OrderRules {
    pub terminology: Terminology,
    pub clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl WriteRules for OrderRules {
    async fn on_write(&self, tx: &Tx, change: &Change<'_>) -> Result<(), Problem> {
        // Target `all` serves patient-record's types from the same engine: they are not ours.
        if !crate::RESOURCE_TYPES.contains(&change.resource_type) {
            return Ok(());
        }
        if let Some(next) = change.next {
            workflow::check(change.resource_type, change.previous, next).map_err(OrdersError::from)?;
            self.check_codes(next)?;
        }
        match change.resource_type {
            "Appointment" => booking::apply(tx, change, self.clock.now()).await,
            "Slot" => booking::check_slot_change(tx, change).await,
            "ServiceRequest" => self.order_events(tx, change).await,
            _ => Ok(()),
        }
    }
}

impl OrderRules {
    /// Codes from the master code systems (JLAC10, YJ, HOT, …) must have their system's shape;
    /// a code missing from the loaded master is a warning only (the shipped masters are subsets).
    fn check_codes(&self, resource: &Value) -> Result<(), Problem> {
        let errors: Vec<_> = self
            .terminology
            .check_resource(resource)
            .into_iter()
            .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(Problem::new(422, errors)) }
    }

    /// `order.placed` when a lab order to perform becomes active (created active, or draft /
    /// unknown / on-hold → active); `order.cancelled` when a placed one (active, on-hold) is revoked,
    /// entered in error or deleted. The lab interface sends each order once, and a cancellation
    /// only for an order the lab acknowledged. The payload carries what the lab needs to
    /// know (event-carried state): the order, its patient and its specimens as they are now.
    async fn order_events(&self, tx: &Tx, change: &Change<'_>) -> Result<(), Problem> {
        let lab = |v: Option<&Value>| v.is_some_and(|v| is_lab_order(v) && to_perform(v));
        let (topic, next) = match (change.previous, change.next) {
            // Deleted: cancelled at the lab if it was placed.
            (Some(previous), None) if lab(Some(previous)) && placed(Some(previous)) => (ORDER_CANCELLED, previous),
            (_, Some(next)) if lab(Some(next)) || lab(change.previous) => {
                // The lab performs what it was sent: a placed order's test, specimen, lab and
                // intent stay as they were (cancel and order anew instead).
                if let Some(previous) = change.previous
                    && placed(Some(previous))
                    && placed(Some(next))
                {
                    for field in ["code", "specimen", "performer", "doNotPerform", "category"] {
                        if previous[field] != next[field] {
                            return Err(OrdersError::PlacedOrderChanged(field).into());
                        }
                    }
                }
                match (status(change.previous), status(Some(next))) {
                    // Becoming active sends it — also from on-hold (held until the specimen is
                    // drawn): the lab interface sends each order once, so a re-activation after
                    // a hold is not a second order.
                    (None | Some("draft" | "unknown" | "on-hold"), Some("active")) if lab(Some(next)) => {
                        (ORDER_PLACED, next)
                    }
                    (Some("active" | "on-hold"), Some("revoked" | "entered-in-error")) => (ORDER_CANCELLED, next),
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let key = format!("ServiceRequest/{}", change.id);
        if topic == ORDER_CANCELLED {
            // The lab interface cancels the message it sent, as it was sent.
            let event = NewEvent {
                topic: topic.to_owned(),
                key,
                payload: json!({ "serviceRequest": next }),
                trace: ehr_telemetry::trace::current_traceparent(),
            };
            tx.emit(&event, self.clock.now()).await?;
            return Ok(());
        }
        let patient = match next["subject"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")) {
            Some(id) => tx.read_json("Patient", id).await?,
            None => None,
        };
        let Some(patient) = patient else {
            return Err(OrdersError::OrderWithoutPatient.into());
        };
        let mut specimens = Vec::new();
        for reference in next["specimen"].as_array().into_iter().flatten() {
            if let Some(id) = reference["reference"].as_str().and_then(|r| r.strip_prefix("Specimen/"))
                && let Some(specimen) = tx.read_json("Specimen", id).await?
            {
                specimens.push(specimen);
            }
        }
        let payload = json!({ "serviceRequest": next, "patient": patient, "specimens": specimens });
        // The request's span: the lab interface's handling and its OML^O33 join its trace.
        let event =
            NewEvent { topic: topic.to_owned(), key, payload, trace: ehr_telemetry::trace::current_traceparent() };
        tx.emit(&event, self.clock.now()).await?;
        Ok(())
    }
}
