//! The orders service's consumer of `lab.result.received`: final results complete their order.

use ehr_core::{Clock, ResourceId};
use ehr_events::{Event, Handler, HandlerError};
use ehr_store::Tx;
use serde_json::Value;
use std::sync::Arc;

/// The consumer group of the orders service.
pub const GROUP: &str = "orders";

/// Completes a lab order when its final results arrive (`ServiceRequest.status` → `completed`).
/// Partial results leave it active; an order already completed, revoked or entered in error is
/// left as it is (results after a cancellation are still filed by patient-record).
pub struct OrderResults {
    pub clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl Handler for OrderResults {
    async fn handle(&self, event: &Event, tx: &Tx) -> Result<(), HandlerError> {
        if event.payload["final"] != Value::Bool(true) {
            return Ok(());
        }
        let Some(id) = event.payload["serviceRequest"].as_str().and_then(|r| r.strip_prefix("ServiceRequest/")) else {
            return Err(HandlerError::Permanent("the event names no ServiceRequest"));
        };
        let rid = ResourceId::parse(id).map_err(|_| HandlerError::Permanent("invalid ServiceRequest id"))?;
        let Some(current) = tx.read_for_update("ServiceRequest", id).await?.filter(|s| !s.deleted) else {
            return Err(HandlerError::Permanent("the ServiceRequest does not exist"));
        };
        let mut sr: Value =
            serde_json::from_str(&current.content).map_err(|_| HandlerError::Permanent("stored json"))?;
        if !matches!(sr["status"].as_str(), Some("active" | "on-hold")) {
            return Ok(());
        }
        sr["status"] = Value::String("completed".into());
        tx.update("ServiceRequest", &rid, sr, Some(current.version), "PUT", self.clock.now()).await?;
        Ok(())
    }
}
