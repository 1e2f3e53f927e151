//! Reservations: an Appointment that holds slots books them, atomically.
//!
//! Booking happens in the Appointment write's own transaction: each newly held Slot is read
//! with a row lock (`SELECT … FOR UPDATE` on PostgreSQL; SQLite has one writer), must be `free`,
//! and becomes `busy`. Of two concurrent bookings of one slot, the second waits for the first's
//! lock, then finds the slot busy and fails with 409 — exactly one wins, and the loser's
//! Appointment is rolled back with it. Releasing (cancelled, noshow, entered-in-error, or a slot
//! dropped from the list) sets the slot `free` again.

use crate::error::OrdersError;
use chrono::{DateTime, Utc};
use ehr_core::ResourceId;
use ehr_http::Problem;
use ehr_rest::Change;
use ehr_store::Tx;
use serde_json::Value;
use std::collections::BTreeSet;

/// Appointment statuses that hold their slots (R4 Appointment: a proposed or waitlisted
/// appointment has not taken its slot yet; cancelled, noshow and entered-in-error give it back).
const HOLDING: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled"];

/// The slot ids an appointment version holds.
fn held_slots(appointment: Option<&Value>) -> Result<BTreeSet<String>, OrdersError> {
    let Some(a) = appointment else { return Ok(BTreeSet::new()) };
    if !a["status"].as_str().is_some_and(|s| HOLDING.contains(&s)) {
        return Ok(BTreeSet::new());
    }
    let mut ids = BTreeSet::new();
    for (i, slot) in a["slot"].as_array().into_iter().flatten().enumerate() {
        let id = slot["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Slot/"))
            .filter(|id| ResourceId::parse(id).is_ok())
            .ok_or(OrdersError::SlotReference(i))?;
        ids.insert(id.to_owned());
    }
    Ok(ids)
}

/// Books the slots `change` newly holds and releases those it no longer holds.
pub(crate) async fn apply(tx: &Tx, change: &Change<'_>, now: DateTime<Utc>) -> Result<(), Problem> {
    let before = held_slots(change.previous)?;
    let after = held_slots(change.next)?;
    // In id order: two appointments booking overlapping sets lock them in the same order, so
    // they cannot deadlock.
    for id in after.difference(&before) {
        if !set_status(tx, id, "free", "busy", now).await? {
            return Err(OrdersError::SlotTaken(id.clone()).into());
        }
    }
    for id in before.difference(&after) {
        // A slot someone else already changed (made busy-unavailable, say) is left alone.
        set_status(tx, id, "busy", "free", now).await?;
    }
    Ok(())
}

/// Moves a slot from status `from` to `to`; false (and no change) when it is not in `from`.
async fn set_status(tx: &Tx, id: &str, from: &str, to: &str, now: DateTime<Utc>) -> Result<bool, Problem> {
    let Some(current) = tx.read_for_update("Slot", id).await?.filter(|s| !s.deleted) else {
        // Booking a slot that does not exist is an error; releasing one that is gone is not.
        if to == "busy" {
            return Err(OrdersError::SlotNotFound(id.to_owned()).into());
        }
        return Ok(false);
    };
    let mut slot: Value = serde_json::from_str(&current.content).map_err(|_| OrdersError::StoredJson)?;
    if slot["status"].as_str() != Some(from) {
        return Ok(false);
    }
    slot["status"] = Value::String(to.to_owned());
    let rid = ResourceId::parse(id).map_err(|_| OrdersError::SlotNotFound(id.to_owned()))?;
    tx.update("Slot", &rid, slot, Some(current.version), "PUT", now).await?;
    Ok(true)
}

/// A Slot write must not free a slot an Appointment holds: giving it back is the Appointment's
/// (cancel it). Otherwise a second Appointment could book it — a double booking without any race.
pub(crate) async fn check_slot_change(tx: &Tx, change: &Change<'_>) -> Result<(), Problem> {
    let busy = |v: Option<&Value>| v.is_some_and(|v| v["status"] == "busy");
    if !busy(change.previous) || busy(change.next) {
        return Ok(());
    }
    let pairs = vec![("slot".to_owned(), format!("Slot/{}", change.id)), ("status".to_owned(), HOLDING.join(","))];
    let query = ehr_fhir::search::parse_search("Appointment", &pairs, true, |t| {
        ehr_core::ResourceType::parse(t).ok().map(ehr_core::ResourceType::as_str)
    })
    .map_err(|_| OrdersError::StoredJson)?;
    if tx.matching_ids(&query, 1).await?.is_empty() {
        Ok(())
    } else {
        Err(OrdersError::SlotHeld(change.id.to_owned()).into())
    }
}
