//! The patient-record service's consumer of `lab.result.received`: the lab interface's
//! DiagnosticReport and Observations (JP Core lab profiles, `basedOn` the order) are filed.
//!
//! Their ids are derived from the lab, the order and the test (and sub-id), so a redelivered or
//! resent result updates the same resources — and when nothing changed, writes nothing.

use ehr_core::{Clock, ResourceId, Severity};
use ehr_events::{Event, Handler, HandlerError};
use ehr_fhir::validate::Validator;
use ehr_store::Tx;
use serde_json::Value;
use std::sync::Arc;

/// The consumer group of the patient-record service.
pub const GROUP: &str = "patient-record";

/// Files lab results.
pub struct LabResults {
    pub validator: Arc<Validator>,
    pub clock: Arc<dyn Clock>,
}

/// A resource without the store-managed `meta.versionId` / `meta.lastUpdated`.
fn comparable(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
    }
    v
}

impl LabResults {
    async fn file(&self, tx: &Tx, resource: &Value) -> Result<(), HandlerError> {
        let ty = match resource["resourceType"].as_str() {
            Some("Observation") => "Observation",
            Some("DiagnosticReport") => "DiagnosticReport",
            _ => return Err(HandlerError::Permanent("a lab result is an Observation or a DiagnosticReport")),
        };
        let id = resource["id"].as_str().and_then(|id| ResourceId::parse(id).ok());
        let Some(id) = id else { return Err(HandlerError::Permanent("a lab result without a valid id")) };
        let errors: Vec<_> = self
            .validator
            .validate(resource)
            .into_iter()
            .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
            .collect();
        if !errors.is_empty() {
            // Codes and paths only: the diagnostics may quote values.
            let codes: Vec<_> = errors.iter().map(|i| (i.ehr_code, i.expression.clone())).collect();
            tracing::warn!(resource_type = ty, ?codes, "lab result refused by validation");
            return Err(HandlerError::Permanent("a lab result that is not valid FHIR"));
        }
        if let Some(current) = tx.read_for_update(ty, id.as_str()).await?.filter(|s| !s.deleted) {
            let stored: Value =
                serde_json::from_str(&current.content).map_err(|_| HandlerError::Permanent("stored json"))?;
            // A result never moves to another patient or order.
            if stored["subject"] != resource["subject"] || stored["basedOn"] != resource["basedOn"] {
                return Err(HandlerError::Permanent("a lab result would change its patient or its order"));
            }
            // Nor back from final to preliminary: a late preliminary after the final is stale. A
            // final can still be corrected, withdrawn (entered-in-error) or cancelled.
            let settled = |v: &Value| matches!(v["status"].as_str(), Some("final" | "corrected" | "amended"));
            let preliminary = |v: &Value| matches!(v["status"].as_str(), Some("preliminary" | "registered"));
            if settled(&stored) && preliminary(resource) {
                return Ok(());
            }
            if comparable(stored) == comparable(resource.clone()) {
                return Ok(());
            }
        }
        tx.update(ty, &id, resource.clone(), None, "PUT", self.clock.now()).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Handler for LabResults {
    async fn handle(&self, event: &Event, tx: &Tx) -> Result<(), HandlerError> {
        // Observations first: the report refers to them.
        for o in event.payload["observations"].as_array().into_iter().flatten() {
            self.file(tx, o).await?;
        }
        if event.payload["report"].is_object() {
            self.file(tx, &event.payload["report"]).await?;
        }
        Ok(())
    }
}
