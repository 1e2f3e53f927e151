//! Orders out: `order.placed` / `order.cancelled` → an OML^O33 in the message log (the queue) →
//! the sender delivers it over the endpoint's transport, with retries and a dead-letter state.

use crate::error::LabError;
use crate::mapping;
use crate::transport::Delivery;
use crate::{LabInterface, charset_of};
use ehr_core::{TenantContext, TenantId};
use ehr_events::{Event, Handler, HandlerError};
use ehr_hl7v2::jahis::MessageHeader;
use ehr_hl7v2::{ControlId, Timestamp, build_oml_o33};
use ehr_store::{Hl7Message, LabEndpoint, MessageFilter, StoreError, Tx};
use tracing::Instrument;

/// A pending outbound message for `endpoint_id` about `subject`, due now, with a fresh MSH-10.
fn new_message(endpoint_id: &str, message_type: &str, subject: &str, now_ms: i64) -> Result<Hl7Message, LabError> {
    Ok(Hl7Message {
        id: uuid::Uuid::new_v4().to_string(),
        endpoint_id: endpoint_id.to_owned(),
        direction: "out".into(),
        message_type: message_type.to_owned(),
        control_id: new_control_id()?.as_str().to_owned(),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: Some(now_ms),
        last_error: None,
        subject: Some(subject.to_owned()),
        payload: String::new(),
        reply: None,
        created_at: now_ms,
        updated_at: now_ms,
        // The span queuing it (the consumer's, for an order): the sender's span is its child.
        trace: ehr_telemetry::trace::current_traceparent(),
    })
}

/// Messages claimed per lab and pass.
const CLAIM_BATCH: u64 = 5;

/// The span of one delivery attempt, a child of the span that queued the message (the order
/// event's consumer): ids only — the message text is PHI.
fn send_span(endpoint: &LabEndpoint, message: &Hl7Message) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "hl7.send",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        hl7.control_id = %message.control_id,
        hl7.message_type = %message.message_type,
        hl7.status = tracing::field::Empty,
        lab.endpoint = %endpoint.id,
        lab.transport = %endpoint.transport,
        tenant = endpoint.tenant.as_str(),
        attempt = message.attempts + 1,
    );
    ehr_telemetry::trace::set_parent(&span, message.trace.as_deref());
    span
}

/// The consumer group of the lab interface on the order topics.
pub const GROUP: &str = "lab-interface";

/// A fresh MSH-10: 20 characters (the v2.5 maximum), unique without coordination.
pub(crate) fn new_control_id() -> Result<ControlId, LabError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Ok(ControlId::new(&id[..20])?)
}

/// HL7 DTM of a moment, in Japan Standard Time (JAHIS messages carry local time).
pub(crate) fn hl7_now(now: chrono::DateTime<chrono::Utc>) -> Result<Timestamp, LabError> {
    let jst = chrono::FixedOffset::east_opt(9 * 3600).ok_or(LabError::File("time zone".into()))?;
    Ok(Timestamp::new(&now.with_timezone(&jst).format("%Y%m%d%H%M%S").to_string())?)
}

/// Picks the endpoint an order goes to: the one whose Organization is the order's performer,
/// else the tenant's default.
fn pick_endpoint<'e>(endpoints: &'e [LabEndpoint], performer: Option<&str>) -> Option<&'e LabEndpoint> {
    let active = || endpoints.iter().filter(|e| e.active);
    performer
        .and_then(|p| active().find(|e| e.organization.as_deref() == Some(p)))
        .or_else(|| active().find(|e| e.is_default))
}

#[async_trait::async_trait]
impl Handler for LabInterface {
    async fn handle(&self, event: &Event, tx: &Tx) -> Result<(), HandlerError> {
        match self.enqueue_order(event, tx).await {
            Ok(()) => Ok(()),
            Err(LabError::Store(e)) => Err(HandlerError::Store(e)),
            Err(e) => {
                // An order the lab interface cannot send (no endpoint, no JLAC10 code) will not
                // become sendable by retrying: it is dead-lettered for an operator, and logged
                // by its key only.
                tracing::warn!(event = %event.id.as_uuid(), key = %event.key, code = ehr_core::Classify::code(&e), "lab order not sent");
                Err(HandlerError::Permanent("the order cannot be sent to a lab"))
            }
        }
    }
}

/// `message_type` of an order (ORC-1 `NW`) in the message log.
pub const NEW_ORDER: &str = "OML^O33";
/// `message_type` of a cancellation (ORC-1 `CA`) in the message log.
pub const CANCEL_ORDER: &str = "OML^O33 CA";

impl LabInterface {
    /// Turns an order event into a queued OML^O33 (in the consumer's transaction, so the message
    /// exists exactly once per event).
    ///
    /// - `order.placed`: one new-order message per order, ever — a second event for the same
    ///   order (a concurrent update-as-create, a re-creation) finds it and sends nothing.
    /// - `order.cancelled`: the lab only hears of orders it acknowledged. An order message not yet
    ///   delivered is cancelled in the queue instead (and a delivery in flight that succeeds
    ///   anyway is followed by a cancellation, see [`record_delivery`](Self::record_delivery));
    ///   a delivered one is followed by a cancellation to the same lab.
    async fn enqueue_order(&self, event: &Event, tx: &Tx) -> Result<(), LabError> {
        let now = self.clock().now();
        let now_ms = now.timestamp_millis();
        let sent = self.order_message(tx, &event.key).await?;
        if event.topic == crate::ORDER_CANCELLED {
            let Some(nw) = sent else {
                // Cancelled before its order message exists (the placed event is late, or
                // failed and will be retried): a tombstone keeps it from ever being sent.
                let tombstone = Hl7Message {
                    status: "cancelled".into(),
                    last_error: Some("the order was cancelled before it was sent".into()),
                    next_attempt_at: None,
                    payload: String::new(),
                    ..new_message("", NEW_ORDER, &event.key, now_ms)?
                };
                tx.insert_hl7_message(&tombstone).await?;
                return Ok(());
            };
            // Not yet sent: cancelled in the queue. A message with attempts behind it may have
            // reached the lab even though no ACK came back: the lab hears the cancellation too.
            let unsent = tx
                .change_hl7_status(&nw.id, &["pending", "dead"], "cancelled", Some("the order was cancelled"), now_ms)
                .await?;
            let current = tx.hl7_message(&nw.id).await?.unwrap_or(nw);
            let lab_may_have_it = if unsent { current.attempts > 0 } else { current.status == "acked" };
            if !lab_may_have_it || current.endpoint_id.is_empty() {
                return Ok(());
            }
            let endpoints = tx.lab_endpoints().await?;
            let endpoint = endpoints.iter().find(|e| e.id == current.endpoint_id).ok_or(LabError::NoEndpoint)?;
            return self.queue_cancel_of(tx, endpoint, &current).await;
        }
        if sent.is_some() {
            return Ok(());
        }
        // The order as it is now, not as the event saw it: one revoked since is not sent.
        let id = event.key.trim_start_matches("ServiceRequest/");
        let still_placed = tx
            .read_json("ServiceRequest", id)
            .await?
            .is_some_and(|sr| matches!(sr["status"].as_str(), Some("active" | "on-hold")));
        if !still_placed {
            return Ok(());
        }
        let endpoints = tx.lab_endpoints().await?;
        let performer = event.payload["serviceRequest"]["performer"]
            .as_array()
            .and_then(|p| p.iter().find_map(|r| r["reference"].as_str()));
        let queued = match pick_endpoint(&endpoints, performer) {
            Some(endpoint) => self.queue(tx, endpoint, &event.payload, &event.key).await,
            None => Err(LabError::NoEndpoint),
        };
        match queued {
            Err(LabError::Store(e)) => Err(LabError::Store(e)),
            // An order that cannot be sent (no lab for it, no JLAC10 code, no patient id) is a
            // dead letter in the message log, where operators look (and the order stays active).
            Err(e) => {
                tracing::warn!(key = %event.key, code = ehr_core::Classify::code(&e), "lab order not sendable");
                let message = Hl7Message {
                    status: "dead".into(),
                    next_attempt_at: None,
                    last_error: Some(e.to_string()),
                    payload: String::new(),
                    ..new_message("", NEW_ORDER, &event.key, now_ms)?
                };
                tx.insert_hl7_message(&message).await?;
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The new-order message of an order (`ServiceRequest/<id>`), if one was queued.
    pub(crate) async fn order_message(&self, tx: &Tx, subject: &str) -> Result<Option<Hl7Message>, LabError> {
        let filter =
            MessageFilter { direction: Some("out"), subject: Some(subject), limit: 50, ..MessageFilter::default() };
        Ok(tx.hl7_messages(&filter).await?.into_iter().find(|m| m.message_type == NEW_ORDER))
    }

    /// Builds and queues the new-order message of an order for `endpoint`.
    async fn queue(
        &self,
        tx: &Tx,
        endpoint: &LabEndpoint,
        payload: &serde_json::Value,
        subject: &str,
    ) -> Result<(), LabError> {
        let order = mapping::lab_order(payload, &endpoint.our_facility, self.terminology())?;
        let control_id = new_control_id()?;
        let now = self.clock().now();
        let header = MessageHeader::new(
            (&endpoint.our_application, &endpoint.our_facility),
            (&endpoint.lab_application, &endpoint.lab_facility),
            control_id.clone(),
            hl7_now(now)?,
            charset_of(&endpoint.charset),
        );
        let text = build_oml_o33(&order, &header)?;
        let message = Hl7Message {
            control_id: control_id.as_str().to_owned(),
            payload: text,
            ..new_message(&endpoint.id, NEW_ORDER, subject, now.timestamp_millis())?
        };
        tx.insert_hl7_message(&message).await?;
        self.wake_sender();
        Ok(())
    }

    /// The tenant's endpoints.
    pub(crate) async fn endpoints_of(&self, tenant: &TenantId) -> Result<Vec<LabEndpoint>, LabError> {
        let sys = self.store().system_read().await?;
        let endpoints = sys.lab_endpoints_of(tenant).await?;
        sys.commit().await?;
        Ok(endpoints)
    }

    /// One pass of the sender: every due outbound message of every tenant with an active
    /// endpoint, delivered once. Returns how many were attempted.
    pub async fn send_due(&self) -> Result<usize, LabError> {
        let endpoints = self.active_endpoints().await?;
        // Every lab on its own: one lab that does not answer (each attempt waiting for its
        // timeouts) delays no other lab's orders, of this tenant or another.
        let mut tasks = tokio::task::JoinSet::new();
        for endpoint in endpoints {
            let me = self.clone();
            tasks.spawn(async move { me.send_due_to(&endpoint).await });
        }
        let (mut attempted, mut failure) = (0, None);
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(n)) => attempted += n,
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => tracing::error!("a lab sender task panicked"),
            }
        }
        failure.map_or(Ok(attempted), Err)
    }

    /// Every active lab endpoint of every tenant (the sender's work list).
    pub(crate) async fn active_endpoints(&self) -> Result<Vec<LabEndpoint>, LabError> {
        let sys = self.store().system_read().await?;
        let list = sys.active_lab_endpoints().await?;
        sys.commit().await?;
        Ok(list)
    }

    /// One pass for one lab: its due messages, a few at a time.
    pub(crate) async fn send_due_to(&self, endpoint: &LabEndpoint) -> Result<usize, LabError> {
        let ctx = TenantContext::new(endpoint.tenant.clone(), "lab-interface:sender");
        let now = self.clock().now().timestamp_millis();
        // A lease long enough for all of them to time out in turn: a claim that ran out could be
        // taken (and sent) by another replica.
        let s = self.settings();
        let per_message = (s.connect_timeout_ms + 2 * s.reply_timeout_ms) as i64;
        let lease = now + (s.lease_secs as i64 * 1000).max(CLAIM_BATCH as i64 * per_message + 10_000);
        let claimed = {
            let tx = self.store().write(&ctx).await?;
            let claimed = tx.claim_due_hl7(&endpoint.id, now, lease, CLAIM_BATCH).await?;
            tx.commit().await?;
            claimed
        };
        let attempted = claimed.len();
        for message in claimed {
            let span = send_span(endpoint, &message);
            async {
                let delivery = self.transport(endpoint).deliver(endpoint, &message).await;
                self.record_delivery(&ctx, endpoint, &message, lease, delivery).await
            }
            .instrument(span)
            .await?;
        }
        Ok(attempted)
    }

    /// Records one delivery's outcome: acknowledged, rejected by the lab (AE/AR: not retried —
    /// the same message would be refused again), or failed in transport (retried with
    /// exponential back-off until the endpoint's attempts are used up: dead letter).
    async fn record_delivery(
        &self,
        ctx: &TenantContext,
        endpoint: &LabEndpoint,
        message: &Hl7Message,
        claimed_until: i64,
        delivery: Delivery,
    ) -> Result<(), LabError> {
        let now = self.clock().now().timestamp_millis();
        let attempt = message.attempts + 1;
        let (status, next, error, reply) = match &delivery {
            Delivery::Accepted { reply } => ("acked", None, None, reply.as_deref()),
            Delivery::Rejected { reply, reason } => ("rejected", None, Some(reason.clone()), Some(reply.as_str())),
            Delivery::Failed { reason } if attempt >= endpoint.max_attempts => {
                ("dead", None, Some(reason.clone()), None)
            }
            Delivery::Failed { reason } => {
                let s = self.settings();
                (
                    "pending",
                    Some(ehr_core::retry_due(now, attempt, s.retry_base_ms, s.retry_max_ms)),
                    Some(reason.clone()),
                    None,
                )
            }
        };
        let span = tracing::Span::current();
        span.record("hl7.status", status);
        if status != "acked" {
            span.record("otel.status_code", "error");
        }
        let tx = self.store().write(ctx).await?;
        if !tx.record_hl7_attempt(&message.id, claimed_until, status, next, error.as_deref(), reply, now).await? {
            // The order was cancelled while its message was on the wire: if the lab took it,
            // it must now hear of the cancellation.
            let current = tx.hl7_message(&message.id).await?;
            if status == "acked"
                && message.message_type == NEW_ORDER
                && current.as_ref().is_some_and(|m| m.status == "cancelled")
            {
                tx.set_hl7_status(
                    &message.id,
                    "acked",
                    Some("acknowledged after its order was cancelled; cancellation sent"),
                    now,
                )
                .await?;
                self.queue_cancel_of(&tx, endpoint, message).await?;
            }
        }
        tx.commit().await?;
        let sys = self.store().system_write().await?;
        sys.touch_lab_endpoint(&endpoint.tenant, &endpoint.id, "out", now, error.as_deref()).await?;
        sys.commit().await?;
        match status {
            "acked" => tracing::info!(control_id = %message.control_id, endpoint = %endpoint.id, "lab order delivered"),
            "pending" => {
                tracing::warn!(control_id = %message.control_id, endpoint = %endpoint.id, attempt, "lab order delivery failed; will retry")
            }
            _ => {
                tracing::error!(control_id = %message.control_id, endpoint = %endpoint.id, status, "lab order not delivered: dead letter")
            }
        }
        Ok(())
    }

    /// Queues the cancellation of a delivered new-order message (its own text with ORC-1 `CA`,
    /// under a new control id).
    async fn queue_cancel_of(&self, tx: &Tx, endpoint: &LabEndpoint, nw: &Hl7Message) -> Result<(), LabError> {
        let control_id = new_control_id()?;
        let now = self.clock().now().timestamp_millis();
        let text = crate::cancel_order_controls(&crate::replace_control_id(&nw.payload, control_id.as_str()));
        let message = Hl7Message {
            control_id: control_id.as_str().to_owned(),
            subject: nw.subject.clone(),
            payload: text,
            ..new_message(&endpoint.id, CANCEL_ORDER, "", now)?
        };
        tx.insert_hl7_message(&message).await?;
        self.wake_sender();
        Ok(())
    }

    /// Replays an outbound message: back in the queue, due now, attempts reset.
    pub async fn replay(&self, ctx: &TenantContext, id: &str) -> Result<Hl7Message, LabError> {
        let tx = self.store().write(ctx).await?;
        let message = tx.hl7_message(id).await?.ok_or(LabError::MessageNotFound)?;
        if message.direction != "out" {
            return Err(LabError::NotReplayable);
        }
        let now = self.clock().now().timestamp_millis();
        if !tx.requeue_hl7(id, now).await? {
            return Err(LabError::NotReplayable);
        }
        let message = tx.hl7_message(id).await?.ok_or(LabError::Store(StoreError::NotFound))?;
        tx.commit().await?;
        self.wake_sender();
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, org: Option<&str>, default: bool) -> LabEndpoint {
        LabEndpoint {
            id: id.into(),
            tenant: TenantId::parse("t1").expect("tenant"),
            name: id.into(),
            lab_facility: format!("LAB-{id}"),
            lab_application: "LIS".into(),
            our_facility: "HOSP".into(),
            our_application: "EHR".into(),
            transport: "mllp".into(),
            address: "127.0.0.1:1".into(),
            charset: "iso-ir-87".into(),
            organization: org.map(str::to_owned),
            is_default: default,
            max_attempts: 5,
            allowed_peers: Vec::new(),
            active: true,
            created_at: 0,
            updated_at: 0,
            last_outbound_at: None,
            last_inbound_at: None,
            last_error: None,
        }
    }

    #[test]
    fn orders_go_to_their_performer_else_the_default() {
        let list = [endpoint("a", Some("Organization/a"), false), endpoint("b", None, true)];
        assert_eq!(pick_endpoint(&list, Some("Organization/a")).map(|e| e.id.as_str()), Some("a"));
        assert_eq!(pick_endpoint(&list, Some("Organization/x")).map(|e| e.id.as_str()), Some("b"));
        assert_eq!(pick_endpoint(&list, None).map(|e| e.id.as_str()), Some("b"));
        assert!(pick_endpoint(&list[..1], None).is_none());
    }

    #[test]
    fn control_ids_are_twenty_characters() {
        let id = new_control_id().expect("id");
        assert_eq!(id.as_str().len(), 20);
    }
}
