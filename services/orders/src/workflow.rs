//! Status workflows of the orders resources, as pure rules over resource JSON (no I/O).
//!
//! [`check`] decides whether a write may store `next` over `previous` (`None` for a creation, or
//! a re-creation after a delete). It enforces, in this order:
//!
//! 1. **Status.** `status` is present and a code of the type; a creation starts in a status the
//!    type may start in; an update keeps the status or makes a transition the type's table
//!    allows. Keeping the status is always allowed, also in a terminal status (a corrected note
//!    on a completed order). A *terminal* status (marked † below) moves to `entered-in-error`
//!    only, and `entered-in-error` to nothing: R4 keeps a retracted record as it is. When the
//!    stored version has no status or an unknown one (written before these rules), only the new
//!    status is checked.
//! 2. **Identity.** Elements that name who or what the resource is about may not change once
//!    present: an order moved to another patient silently attaches that patient's results to the
//!    wrong record. The record is corrected by `entered-in-error` and a new resource instead.
//!    References compare by `reference` and `identifier` (a new `display` is not a change).
//! 3. **Times.** `start` ≤ `end` of Slot, Appointment and `Schedule.planningHorizon`, and the R4
//!    Appointment invariants app-2, app-3 and app-4. A value of partial precision (`2024-03`)
//!    covers its whole span, and only a start certainly after its end is refused; values this
//!    module cannot read are left to the structural validator, which reports their format.
//!
//! Types without rules here (anything but the seven below) pass.
//!
//! ## ServiceRequest
//!
//! R4 request pattern (<http://hl7.org/fhir/R4/request.html>, status
//! <http://hl7.org/fhir/R4/valueset-request-status.html>). `intent` and `subject` are immutable.
//!
//! | from | to |
//! |---|---|
//! | draft | active, revoked, entered-in-error |
//! | active | on-hold, completed, revoked, entered-in-error |
//! | on-hold | active, revoked, entered-in-error |
//! | unknown | active, on-hold, completed, revoked, entered-in-error |
//! | completed †, revoked † | entered-in-error |
//! | entered-in-error † | — |
//!
//! Created as: draft, active, on-hold, unknown (an import that cannot tell), or completed for an
//! order documented after it was carried out (a verbal order in an emergency, a migrated order)
//! — only when `intent` is one of the order intents (`order`, `original-order`, `reflex-order`,
//! `filler-order`, `instance-order`). A proposal, plan, directive or option is not itself
//! performed but fulfilled by orders, whose own records carry the completion. Not created as
//! revoked (nothing was requested yet) or entered-in-error (nothing was recorded yet).
//!
//! ## MedicationRequest
//!
//! <http://hl7.org/fhir/R4/medicationrequest.html>, status
//! <http://hl7.org/fhir/R4/valueset-medicationrequest-status.html>: the request pattern with
//! `cancelled` (withdrawn before any administration) and `stopped` (halted after some) in place
//! of `revoked`, which R4 MedicationRequest does not have. `intent` and `subject` are immutable.
//!
//! | from | to |
//! |---|---|
//! | draft | active, cancelled, entered-in-error |
//! | active | on-hold, completed, stopped, cancelled, entered-in-error |
//! | on-hold | active, stopped, cancelled, entered-in-error |
//! | unknown | active, on-hold, completed, stopped, cancelled, entered-in-error |
//! | completed †, stopped †, cancelled † | entered-in-error |
//! | entered-in-error † | — |
//!
//! Created as for ServiceRequest (`completed` for order intents only); not as cancelled, stopped
//! or entered-in-error.
//!
//! ## Specimen
//!
//! <http://hl7.org/fhir/R4/specimen.html>, status
//! <http://hl7.org/fhir/R4/valueset-specimen-status.html>. `subject` is immutable once present (a
//! specimen received unlabelled may be attributed later, never re-attributed).
//!
//! | from | to |
//! |---|---|
//! | available | unavailable, unsatisfactory, entered-in-error |
//! | unavailable | available, unsatisfactory, entered-in-error |
//! | unsatisfactory | available, unavailable, entered-in-error |
//! | entered-in-error † | — |
//!
//! Created as anything but entered-in-error.
//!
//! ## Task
//!
//! R4 Task state machine (<http://hl7.org/fhir/R4/task.html>, status
//! <http://hl7.org/fhir/R4/valueset-task-status.html>): `ready` stands in for
//! requested/received/accepted when assignment and acceptance are a given; `rejected` is the
//! performer's refusal before any work, `failed` an attempt that could not finish, `cancelled` a
//! task abandoned by its requester (also once started). `intent` and `for` are immutable, as for
//! the requests a task fulfils.
//!
//! | from | to |
//! |---|---|
//! | draft | requested, ready, cancelled, entered-in-error |
//! | requested | received, accepted, rejected, ready, in-progress, cancelled, entered-in-error |
//! | received | accepted, rejected, cancelled, entered-in-error |
//! | accepted | ready, in-progress, cancelled, entered-in-error |
//! | ready | in-progress, cancelled, entered-in-error |
//! | in-progress | on-hold, completed, failed, cancelled, entered-in-error |
//! | on-hold | in-progress, failed, cancelled, entered-in-error |
//! | rejected †, cancelled †, failed †, completed † | entered-in-error |
//! | entered-in-error † | — |
//!
//! Created in any state a performer may report first (a filler's own task may start `received`,
//! `in-progress` or even `rejected`), but not as cancelled (nothing was asked for yet) or
//! entered-in-error.
//!
//! ## Appointment
//!
//! R4 appointment statuses (<http://hl7.org/fhir/R4/appointment.html>, status
//! <http://hl7.org/fhir/R4/valueset-appointmentstatus.html>): proposed → pending → booked →
//! arrived → checked-in → fulfilled, with the waitlist before booking and cancellation or no-show
//! after it.
//!
//! | from | to |
//! |---|---|
//! | proposed | pending, booked, waitlist, cancelled, entered-in-error |
//! | pending | booked, waitlist, cancelled, entered-in-error |
//! | waitlist | proposed, pending, booked, cancelled, entered-in-error |
//! | booked | pending, arrived, checked-in, fulfilled, cancelled, noshow, entered-in-error |
//! | arrived | checked-in, fulfilled, cancelled, entered-in-error |
//! | checked-in | fulfilled, cancelled, entered-in-error |
//! | fulfilled †, cancelled †, noshow † | entered-in-error |
//! | entered-in-error † | — |
//!
//! `booked → pending`: a participant withdrew their acceptance and it must be confirmed again.
//! `booked → fulfilled`: the encounter began without arrival being recorded. `arrived` and
//! `checked-in` → `cancelled`: the patient left before being seen. Created as anything but
//! cancelled, noshow (both presuppose a booking) or entered-in-error; a walk-in starts `arrived`
//! or `checked-in`.
//!
//! Invariants (R4): app-2 `start` and `end` both present or both absent; app-3 only a proposed,
//! cancelled or waitlisted appointment may lack them; app-4 `cancelationReason` only on a
//! cancelled or no-show appointment; and `start` ≤ `end`.
//!
//! ## Slot
//!
//! <http://hl7.org/fhir/R4/slot.html>, status <http://hl7.org/fhir/R4/valueset-slotstatus.html>:
//! busy, free, busy-unavailable and busy-tentative move freely among themselves and to
//! entered-in-error †, which is terminal. Created as anything but entered-in-error. `start` ≤
//! `end`.
//!
//! ## Schedule
//!
//! No status: only `planningHorizon.start` ≤ `planningHorizon.end`.
//!
//! ## Errors
//!
//! All are answered with 422 (R4 3.1.0.4: a resource breaking profiles or business rules).
//!
//! | code | issue type | meaning |
//! |---|---|---|
//! | EHR-ORD-001 | required | `status` missing |
//! | EHR-ORD-002 | value | `status` is not a code of the type |
//! | EHR-ORD-003 | business-rule | the resource may not be created in this status |
//! | EHR-ORD-004 | business-rule | the status change is not in the type's table |
//! | EHR-ORD-005 | business-rule | an immutable element changed |
//! | EHR-ORD-006 | invariant | a start after its end (R4 per-1 on a Period, and Slot/Appointment) |
//! | EHR-ORD-007 | invariant | Appointment app-2: start without end or end without start |
//! | EHR-ORD-008 | invariant | Appointment app-3: no start/end in a status that needs them |
//! | EHR-ORD-009 | invariant | Appointment app-4: `cancelationReason` in another status |

use ehr_core::{Classify, Issue, IssueType};
use serde_json::Value;

/// Why a write breaks a resource's workflow.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("`{resource_type}.status` is required")]
    MissingStatus { resource_type: &'static str },
    #[error("`{status}` is not a {resource_type} status")]
    UnknownStatus { resource_type: &'static str, status: String },
    #[error("a {resource_type} cannot be created with status `{status}`: {why}")]
    InitialStatus { resource_type: &'static str, status: String, why: &'static str },
    #[error("a {resource_type} cannot go from status `{from}` to `{to}`")]
    Transition { resource_type: &'static str, from: String, to: String },
    #[error(
        "`{resource_type}.{element}` cannot change once set; mark the resource entered-in-error and create a new one"
    )]
    Immutable { resource_type: &'static str, element: &'static str },
    #[error("`{start}` is after `{end}`")]
    StartAfterEnd { start: &'static str, end: &'static str },
    #[error("`Appointment.start` and `Appointment.end` must be both present or both absent (app-2)")]
    StartEndPair,
    #[error("an Appointment with status `{status}` needs `start` and `end` (app-3)")]
    TimesRequired { status: String },
    #[error("`Appointment.cancelationReason` is only for a cancelled or no-show appointment, not `{status}` (app-4)")]
    CancelationReason { status: String },
}

impl WorkflowError {
    /// Where the problem is, as a FHIRPath expression (`ServiceRequest.status`).
    pub fn location(&self) -> String {
        match self {
            Self::MissingStatus { resource_type }
            | Self::UnknownStatus { resource_type, .. }
            | Self::InitialStatus { resource_type, .. }
            | Self::Transition { resource_type, .. } => format!("{resource_type}.status"),
            Self::Immutable { resource_type, element } => format!("{resource_type}.{element}"),
            Self::StartAfterEnd { start, .. } => (*start).to_owned(),
            Self::StartEndPair | Self::TimesRequired { .. } => "Appointment.start".to_owned(),
            Self::CancelationReason { .. } => "Appointment.cancelationReason".to_owned(),
        }
    }
}

impl Classify for WorkflowError {
    fn issue_type(&self) -> IssueType {
        match self {
            Self::MissingStatus { .. } => IssueType::Required,
            Self::UnknownStatus { .. } => IssueType::Value,
            Self::InitialStatus { .. } | Self::Transition { .. } | Self::Immutable { .. } => IssueType::BusinessRule,
            // R4 invariants of the resource itself (the Period rule per-1 and app-2/3/4).
            Self::StartAfterEnd { .. }
            | Self::StartEndPair
            | Self::TimesRequired { .. }
            | Self::CancelationReason { .. } => IssueType::Invariant,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::MissingStatus { .. } => "EHR-ORD-001",
            Self::UnknownStatus { .. } => "EHR-ORD-002",
            Self::InitialStatus { .. } => "EHR-ORD-003",
            Self::Transition { .. } => "EHR-ORD-004",
            Self::Immutable { .. } => "EHR-ORD-005",
            Self::StartAfterEnd { .. } => "EHR-ORD-006",
            Self::StartEndPair => "EHR-ORD-007",
            Self::TimesRequired { .. } => "EHR-ORD-008",
            Self::CancelationReason { .. } => "EHR-ORD-009",
        }
    }

    /// R4 3.1.0.4: a resource that breaks the server's business rules is answered with 422.
    fn http_status(&self) -> u16 {
        422
    }

    fn issues(&self) -> Vec<Issue> {
        vec![Issue::error(self.issue_type(), self.code(), self.to_string()).at(self.location())]
    }
}

/// Checks that writing `next` over `previous` (`None`: a creation) keeps `resource_type`'s
/// workflow (see the module documentation for the rules).
pub fn check(resource_type: &str, previous: Option<&Value>, next: &Value) -> Result<(), WorkflowError> {
    if resource_type == "Schedule" {
        return period_in_order(
            next.get("planningHorizon"),
            "Schedule.planningHorizon.start",
            "Schedule.planningHorizon.end",
        );
    }
    let Some(flow) = WORKFLOWS.iter().find(|w| w.resource_type == resource_type) else {
        return Ok(());
    };
    let status = check_status(flow, previous, next)?;
    if let Some(previous) = previous {
        for &element in flow.immutable {
            if let Some(before) = previous.get(element)
                && next.get(element).map(identity) != Some(identity(before))
            {
                return Err(WorkflowError::Immutable { resource_type: flow.resource_type, element });
            }
        }
    }
    match flow.resource_type {
        "Appointment" => appointment_invariants(status, next),
        "Slot" => period_in_order(Some(next), "Slot.start", "Slot.end"),
        _ => Ok(()),
    }
}

/// The status rules of one resource type.
struct Workflow {
    resource_type: &'static str,
    /// Every status code of the type, with the statuses it may change to (besides itself).
    transitions: &'static [(&'static str, &'static [&'static str])],
    /// The statuses the type may not be created in, and why.
    not_initial: &'static [(&'static str, &'static str)],
    /// Elements that may not change once present.
    immutable: &'static [&'static str],
    /// Whether `completed` on creation needs an order intent (the request resources).
    completed_needs_order: bool,
}

const EIE: &str = "entered-in-error";
const NOTHING_TO_RETRACT: &str = "nothing was recorded yet to mark in error";
const NOTHING_REQUESTED: &str = "nothing was requested yet to withdraw";

/// The request intents that are themselves carried out (R4 `request-intent`, the `order` branch).
const ORDER_INTENTS: &[&str] = &["order", "original-order", "reflex-order", "filler-order", "instance-order"];

const WORKFLOWS: &[Workflow] = &[
    Workflow {
        resource_type: "ServiceRequest",
        transitions: &[
            ("draft", &["active", "revoked", EIE]),
            ("active", &["on-hold", "completed", "revoked", EIE]),
            ("on-hold", &["active", "revoked", EIE]),
            ("unknown", &["active", "on-hold", "completed", "revoked", EIE]),
            ("completed", &[EIE]),
            ("revoked", &[EIE]),
            (EIE, &[]),
        ],
        not_initial: &[("revoked", NOTHING_REQUESTED), (EIE, NOTHING_TO_RETRACT)],
        immutable: &["intent", "subject"],
        completed_needs_order: true,
    },
    Workflow {
        resource_type: "MedicationRequest",
        transitions: &[
            ("draft", &["active", "cancelled", EIE]),
            ("active", &["on-hold", "completed", "stopped", "cancelled", EIE]),
            ("on-hold", &["active", "stopped", "cancelled", EIE]),
            ("unknown", &["active", "on-hold", "completed", "stopped", "cancelled", EIE]),
            ("completed", &[EIE]),
            ("stopped", &[EIE]),
            ("cancelled", &[EIE]),
            (EIE, &[]),
        ],
        not_initial: &[("cancelled", NOTHING_REQUESTED), ("stopped", NOTHING_REQUESTED), (EIE, NOTHING_TO_RETRACT)],
        immutable: &["intent", "subject"],
        completed_needs_order: true,
    },
    Workflow {
        resource_type: "Specimen",
        transitions: &[
            ("available", &["unavailable", "unsatisfactory", EIE]),
            ("unavailable", &["available", "unsatisfactory", EIE]),
            ("unsatisfactory", &["available", "unavailable", EIE]),
            (EIE, &[]),
        ],
        not_initial: &[(EIE, NOTHING_TO_RETRACT)],
        immutable: &["subject"],
        completed_needs_order: false,
    },
    Workflow {
        resource_type: "Task",
        transitions: &[
            ("draft", &["requested", "ready", "cancelled", EIE]),
            ("requested", &["received", "accepted", "rejected", "ready", "in-progress", "cancelled", EIE]),
            ("received", &["accepted", "rejected", "cancelled", EIE]),
            ("accepted", &["ready", "in-progress", "cancelled", EIE]),
            ("ready", &["in-progress", "cancelled", EIE]),
            ("in-progress", &["on-hold", "completed", "failed", "cancelled", EIE]),
            ("on-hold", &["in-progress", "failed", "cancelled", EIE]),
            ("rejected", &[EIE]),
            ("cancelled", &[EIE]),
            ("failed", &[EIE]),
            ("completed", &[EIE]),
            (EIE, &[]),
        ],
        not_initial: &[("cancelled", NOTHING_REQUESTED), (EIE, NOTHING_TO_RETRACT)],
        immutable: &["intent", "for"],
        completed_needs_order: false,
    },
    Workflow {
        resource_type: "Appointment",
        transitions: &[
            ("proposed", &["pending", "booked", "waitlist", "cancelled", EIE]),
            ("pending", &["booked", "waitlist", "cancelled", EIE]),
            ("waitlist", &["proposed", "pending", "booked", "cancelled", EIE]),
            ("booked", &["pending", "arrived", "checked-in", "fulfilled", "cancelled", "noshow", EIE]),
            ("arrived", &["checked-in", "fulfilled", "cancelled", EIE]),
            ("checked-in", &["fulfilled", "cancelled", EIE]),
            ("fulfilled", &[EIE]),
            ("cancelled", &[EIE]),
            ("noshow", &[EIE]),
            (EIE, &[]),
        ],
        not_initial: &[
            ("cancelled", "nothing was booked yet to cancel"),
            ("noshow", "nothing was booked yet to miss"),
            (EIE, NOTHING_TO_RETRACT),
        ],
        immutable: &[],
        completed_needs_order: false,
    },
    Workflow {
        resource_type: "Slot",
        transitions: &[
            ("free", &["busy", "busy-unavailable", "busy-tentative", EIE]),
            ("busy", &["free", "busy-unavailable", "busy-tentative", EIE]),
            ("busy-unavailable", &["free", "busy", "busy-tentative", EIE]),
            ("busy-tentative", &["free", "busy", "busy-unavailable", EIE]),
            (EIE, &[]),
        ],
        not_initial: &[(EIE, NOTHING_TO_RETRACT)],
        immutable: &[],
        completed_needs_order: false,
    },
];

/// Checks the status of `next` against the creation or transition rules; returns it.
fn check_status<'a>(flow: &Workflow, previous: Option<&Value>, next: &'a Value) -> Result<&'a str, WorkflowError> {
    let resource_type = flow.resource_type;
    let status = next.get("status").and_then(Value::as_str).ok_or(WorkflowError::MissingStatus { resource_type })?;
    if !flow.knows(status) {
        return Err(WorkflowError::UnknownStatus { resource_type, status: clip(status) });
    }
    let Some(previous) = previous else {
        if let Some(&(_, why)) = flow.not_initial.iter().find(|(s, _)| *s == status) {
            return Err(WorkflowError::InitialStatus { resource_type, status: status.to_owned(), why });
        }
        let intent = next.get("intent").and_then(Value::as_str);
        if flow.completed_needs_order && status == "completed" && !intent.is_some_and(|i| ORDER_INTENTS.contains(&i)) {
            return Err(WorkflowError::InitialStatus {
                resource_type,
                status: status.to_owned(),
                why: "only an order (not a proposal, plan, directive or option) is recorded as already carried out",
            });
        }
        return Ok(status);
    };
    let Some(from) = previous.get("status").and_then(Value::as_str) else {
        return Ok(status);
    };
    if from == status || !flow.knows(from) || flow.next_of(from).contains(&status) {
        return Ok(status);
    }
    Err(WorkflowError::Transition { resource_type, from: from.to_owned(), to: status.to_owned() })
}

impl Workflow {
    /// Whether `status` is a status code of the type.
    fn knows(&self, status: &str) -> bool {
        self.transitions.iter().any(|(s, _)| *s == status)
    }

    /// The statuses `from` may change to.
    fn next_of(&self, from: &str) -> &'static [&'static str] {
        self.transitions.iter().find(|(s, _)| *s == from).map_or(&[], |(_, to)| to)
    }
}

/// What an element's value says, for the immutability rule: a Reference is who it points to
/// (its `reference` and `identifier`), anything else its whole value.
fn identity(v: &Value) -> Value {
    match v {
        Value::Object(map) if map.contains_key("reference") || map.contains_key("identifier") => {
            let mut out = serde_json::Map::new();
            for key in ["reference", "identifier"] {
                if let Some(x) = map.get(key) {
                    out.insert(key.to_owned(), x.clone());
                }
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

/// app-2, app-3, app-4 and `start` ≤ `end`.
fn appointment_invariants(status: &str, next: &Value) -> Result<(), WorkflowError> {
    let has_start = next.get("start").is_some();
    let has_end = next.get("end").is_some();
    if has_start != has_end {
        return Err(WorkflowError::StartEndPair);
    }
    if !has_start && !matches!(status, "proposed" | "cancelled" | "waitlist") {
        return Err(WorkflowError::TimesRequired { status: status.to_owned() });
    }
    if next.get("cancelationReason").is_some() && !matches!(status, "cancelled" | "noshow") {
        return Err(WorkflowError::CancelationReason { status: status.to_owned() });
    }
    period_in_order(Some(next), "Appointment.start", "Appointment.end")
}

/// Refuses an object whose `start` is certainly after its `end`; `start_path` and `end_path`
/// name them in the error.
fn period_in_order(
    period: Option<&Value>,
    start_path: &'static str,
    end_path: &'static str,
) -> Result<(), WorkflowError> {
    let bound = |key| period.and_then(|p| p.get(key)).and_then(Value::as_str).and_then(instant_range);
    match (bound("start"), bound("end")) {
        (Some((start_low, _)), Some((_, end_high))) if start_low > end_high => {
            Err(WorkflowError::StartAfterEnd { start: start_path, end: end_path })
        }
        _ => Ok(()),
    }
}

/// Shortens client text quoted in a message.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The offset of values written without one: Japan Standard Time, as in `ehr-fhir` search.
const LOCAL_OFFSET_MS: i64 = 9 * 3_600_000;

/// The instants a FHIR date, dateTime or instant covers, as the first and last millisecond since
/// the Unix epoch; `None` for text that is none of them.
///
/// This crate does not depend on `ehr-fhir`, whose `parse_date_range` does the same for search;
/// only the ordering of two bounds is needed here.
fn instant_range(s: &str) -> Option<(i64, i64)> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let year = number(parts.next()?, 4)?;
    // Each part present must be well formed: `2024-4` is no month.
    let month = match parts.next() {
        Some(m) => Some(number(m, 2)?),
        None => None,
    };
    let day = match parts.next() {
        Some(d) => Some(number(d, 2)?),
        None => None,
    };
    if parts.next().is_some() || month.is_some_and(|m| !(1..=12).contains(&m)) {
        return None;
    }
    let Some(time) = time else {
        // Date precision: the year, month or day, in local time.
        let (first, next) = match (month, day) {
            (None, None) => (days_from_civil(year, 1, 1), days_from_civil(year + 1, 1, 1)),
            (Some(m), None) => (days_from_civil(year, m, 1), first_of_next_month(year, m)),
            (Some(m), Some(d)) => {
                if d < 1 || days_from_civil(year, m, d) >= first_of_next_month(year, m) {
                    return None;
                }
                (days_from_civil(year, m, d), days_from_civil(year, m, d) + 1)
            }
            (None, Some(_)) => return None,
        };
        return Some((first * DAY_MS - LOCAL_OFFSET_MS, next * DAY_MS - LOCAL_OFFSET_MS - 1));
    };
    let (month, day) = (month?, day?);
    if day < 1 || days_from_civil(year, month, day) >= first_of_next_month(year, month) {
        return None;
    }
    // The zone: `Z`, `+09:00`, `-05:00`, or none (local time).
    let (clock, offset_ms) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (clock, zone) = time.split_at(pos);
        let (h, m) = zone.get(1..)?.split_once(':')?;
        let minutes = number(h, 2)? * 60 + number(m, 2)?;
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        (clock, sign * minutes * 60_000)
    } else {
        (time, LOCAL_OFFSET_MS)
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (hms, Some(f)),
        Some(_) => return None,
        None => (clock, None),
    };
    let mut hms = hms.split(':');
    let (h, m, sec) = (number(hms.next()?, 2)?, number(hms.next()?, 2)?, number(hms.next()?, 2)?);
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Milliseconds, from the first three digits of the fraction.
    let millis = fraction.map_or(0, |f| {
        f.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0, |acc, b| acc * 10 + i64::from(b - b'0'))
    });
    let low = days_from_civil(year, month, day) * DAY_MS + ((h * 60 + m) * 60 + sec) * 1000 + millis - offset_ms;
    // Second precision covers the whole second; a fraction is taken as exact.
    let high = if fraction.is_some() { low } else { low + 999 };
    Some((low, high))
}

const DAY_MS: i64 = 86_400_000;

/// A field of exactly `digits` ASCII digits.
fn number(s: &str, digits: usize) -> Option<i64> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn first_of_next_month(year: i64, month: i64) -> i64 {
    if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (`day` may run past the month's end).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from 0000-03-01 so that the leap day ends a year: 400-year eras of 146 097 days,
    // and within a year five-month cycles of 153 days from March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    // The expected tables, written out apart from `WORKFLOWS`: one `from: to…` line per status,
    // then the statuses a resource may be created in.

    const SERVICE_REQUEST: &str = "
        draft: active revoked entered-in-error
        active: on-hold completed revoked entered-in-error
        on-hold: active revoked entered-in-error
        unknown: active on-hold completed revoked entered-in-error
        completed: entered-in-error
        revoked: entered-in-error
        entered-in-error:";
    const SERVICE_REQUEST_CREATED: &str = "draft active on-hold unknown completed";

    const MEDICATION_REQUEST: &str = "
        draft: active cancelled entered-in-error
        active: on-hold completed stopped cancelled entered-in-error
        on-hold: active stopped cancelled entered-in-error
        unknown: active on-hold completed stopped cancelled entered-in-error
        completed: entered-in-error
        stopped: entered-in-error
        cancelled: entered-in-error
        entered-in-error:";
    const MEDICATION_REQUEST_CREATED: &str = "draft active on-hold unknown completed";

    const SPECIMEN: &str = "
        available: unavailable unsatisfactory entered-in-error
        unavailable: available unsatisfactory entered-in-error
        unsatisfactory: available unavailable entered-in-error
        entered-in-error:";
    const SPECIMEN_CREATED: &str = "available unavailable unsatisfactory";

    const TASK: &str = "
        draft: requested ready cancelled entered-in-error
        requested: received accepted rejected ready in-progress cancelled entered-in-error
        received: accepted rejected cancelled entered-in-error
        accepted: ready in-progress cancelled entered-in-error
        ready: in-progress cancelled entered-in-error
        in-progress: on-hold completed failed cancelled entered-in-error
        on-hold: in-progress failed cancelled entered-in-error
        rejected: entered-in-error
        cancelled: entered-in-error
        failed: entered-in-error
        completed: entered-in-error
        entered-in-error:";
    const TASK_CREATED: &str = "draft requested received accepted rejected ready in-progress on-hold failed completed";

    const APPOINTMENT: &str = "
        proposed: pending booked waitlist cancelled entered-in-error
        pending: booked waitlist cancelled entered-in-error
        waitlist: proposed pending booked cancelled entered-in-error
        booked: pending arrived checked-in fulfilled cancelled noshow entered-in-error
        arrived: checked-in fulfilled cancelled entered-in-error
        checked-in: fulfilled cancelled entered-in-error
        fulfilled: entered-in-error
        cancelled: entered-in-error
        noshow: entered-in-error
        entered-in-error:";
    const APPOINTMENT_CREATED: &str = "proposed pending waitlist booked arrived checked-in fulfilled";

    const SLOT: &str = "
        free: busy busy-unavailable busy-tentative entered-in-error
        busy: free busy-unavailable busy-tentative entered-in-error
        busy-unavailable: free busy busy-tentative entered-in-error
        busy-tentative: free busy busy-unavailable entered-in-error
        entered-in-error:";
    const SLOT_CREATED: &str = "free busy busy-unavailable busy-tentative";

    fn table(text: &str) -> BTreeMap<&str, Vec<&str>> {
        text.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(from, to)| (from, to.split_whitespace().collect()))
            .collect()
    }

    /// A resource of the type in `status` that satisfies every other rule.
    fn resource(resource_type: &str, status: &str) -> Value {
        let mut r = json!({"resourceType": resource_type, "status": status});
        match resource_type {
            "ServiceRequest" | "MedicationRequest" => {
                r["intent"] = json!("order");
                r["subject"] = json!({"reference": "Patient/p1", "display": "山田 太郎"});
            }
            "Specimen" => r["subject"] = json!({"reference": "Patient/p1"}),
            "Task" => {
                r["intent"] = json!("order");
                r["for"] = json!({"reference": "Patient/p1"});
            }
            "Appointment" | "Slot" => {
                r["start"] = json!("2024-04-01T09:00:00+09:00");
                r["end"] = json!("2024-04-01T09:15:00+09:00");
            }
            _ => {}
        }
        r
    }

    fn code(result: Result<(), WorkflowError>) -> Option<&'static str> {
        result.err().map(|e| e.code())
    }

    /// Checks every pair of statuses of the type against `expected`, and every creation.
    fn assert_workflow(resource_type: &str, expected: &str, created: &str) {
        let expected = table(expected);
        let flow = WORKFLOWS.iter().find(|w| w.resource_type == resource_type).expect("workflow");
        let codes: Vec<&str> = flow.transitions.iter().map(|(s, _)| *s).collect();
        assert_eq!(codes.len(), expected.len(), "{resource_type}: status codes");
        for from in expected.keys() {
            assert!(flow.knows(from), "{resource_type}: {from}");
            for to in expected.keys() {
                let result = check(resource_type, Some(&resource(resource_type, from)), &resource(resource_type, to));
                let allowed = from == to || expected[from].contains(to);
                assert_eq!(
                    code(result),
                    (!allowed).then_some("EHR-ORD-004"),
                    "{resource_type}: {from} -> {to} should be {}",
                    if allowed { "allowed" } else { "refused" }
                );
            }
            let result = check(resource_type, None, &resource(resource_type, from));
            let allowed = created.split_whitespace().any(|s| s == *from);
            assert_eq!(code(result), (!allowed).then_some("EHR-ORD-003"), "{resource_type}: created as {from}");
        }
    }

    #[test]
    fn service_request_workflow() {
        assert_workflow("ServiceRequest", SERVICE_REQUEST, SERVICE_REQUEST_CREATED);
    }

    #[test]
    fn medication_request_workflow() {
        assert_workflow("MedicationRequest", MEDICATION_REQUEST, MEDICATION_REQUEST_CREATED);
        // R4 MedicationRequest has no `revoked`.
        let e = check("MedicationRequest", None, &resource("MedicationRequest", "revoked"));
        assert_eq!(code(e), Some("EHR-ORD-002"));
    }

    #[test]
    fn specimen_workflow() {
        assert_workflow("Specimen", SPECIMEN, SPECIMEN_CREATED);
    }

    #[test]
    fn task_workflow() {
        assert_workflow("Task", TASK, TASK_CREATED);
    }

    #[test]
    fn appointment_workflow() {
        assert_workflow("Appointment", APPOINTMENT, APPOINTMENT_CREATED);
    }

    #[test]
    fn slot_workflow() {
        assert_workflow("Slot", SLOT, SLOT_CREATED);
    }

    #[test]
    fn only_orders_are_created_completed() {
        for t in ["ServiceRequest", "MedicationRequest"] {
            for intent in ["order", "original-order", "reflex-order", "filler-order", "instance-order"] {
                let mut r = resource(t, "completed");
                r["intent"] = json!(intent);
                assert!(check(t, None, &r).is_ok(), "{t} {intent}");
            }
            for intent in ["proposal", "plan", "directive", "option"] {
                let mut r = resource(t, "completed");
                r["intent"] = json!(intent);
                assert_eq!(code(check(t, None, &r)), Some("EHR-ORD-003"), "{t} {intent}");
                // The same intent may be active, and completed later.
                let mut active = r.clone();
                active["status"] = json!("active");
                assert!(check(t, None, &active).is_ok(), "{t} {intent}");
                assert!(check(t, Some(&active), &r).is_ok(), "{t} {intent}");
            }
        }
    }

    #[test]
    fn status_is_required_and_must_be_a_code_of_the_type() {
        let mut r = resource("ServiceRequest", "active");
        r.as_object_mut().map(|o| o.remove("status"));
        let e = check("ServiceRequest", None, &r).expect_err("missing");
        assert_eq!((e.code(), e.location()), ("EHR-ORD-001", "ServiceRequest.status".to_owned()));
        let e = check("Task", None, &resource("Task", "done")).expect_err("unknown");
        assert_eq!((e.code(), e.issue_type()), ("EHR-ORD-002", IssueType::Value));
        let long = "x".repeat(500);
        let e = check("Slot", None, &resource("Slot", &long)).expect_err("unknown");
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn a_stored_version_without_a_known_status_constrains_nothing() {
        let old = json!({"resourceType": "Task", "intent": "order", "status": "legacy"});
        assert!(check("Task", Some(&old), &resource("Task", "completed")).is_ok());
        let old = json!({"resourceType": "Task", "intent": "order"});
        assert!(check("Task", Some(&old), &resource("Task", "completed")).is_ok());
    }

    #[test]
    fn the_subject_of_an_order_never_changes() {
        for t in ["ServiceRequest", "MedicationRequest"] {
            let before = resource(t, "active");
            let mut moved = before.clone();
            moved["subject"] = json!({"reference": "Patient/p2"});
            let e = check(t, Some(&before), &moved).expect_err("moved");
            assert_eq!((e.code(), e.location()), ("EHR-ORD-005", format!("{t}.subject")));
            // Not even together with a retraction.
            moved["status"] = json!("entered-in-error");
            assert_eq!(code(check(t, Some(&before), &moved)), Some("EHR-ORD-005"), "{t}");
            // A new display, or an added identifier? The display is no change; the identifier is.
            let mut renamed = before.clone();
            renamed["subject"]["display"] = json!("山田 花子");
            assert!(check(t, Some(&before), &renamed).is_ok(), "{t}");
            let mut removed = before.clone();
            removed.as_object_mut().map(|o| o.remove("subject"));
            assert_eq!(code(check(t, Some(&before), &removed)), Some("EHR-ORD-005"), "{t}");
        }
    }

    #[test]
    fn the_intent_of_a_request_never_changes() {
        for t in ["ServiceRequest", "MedicationRequest", "Task"] {
            let before = resource(t, "draft");
            let mut after = before.clone();
            after["intent"] = json!("plan");
            let e = check(t, Some(&before), &after).expect_err("intent");
            assert_eq!((e.code(), e.location()), ("EHR-ORD-005", format!("{t}.intent")));
        }
    }

    #[test]
    fn a_specimen_may_be_attributed_once_and_a_task_never_moves() {
        let mut unlabelled = resource("Specimen", "available");
        unlabelled.as_object_mut().map(|o| o.remove("subject"));
        let labelled = resource("Specimen", "available");
        assert!(check("Specimen", Some(&unlabelled), &labelled).is_ok());
        let mut other = labelled.clone();
        other["subject"] = json!({"reference": "Patient/p2"});
        assert_eq!(code(check("Specimen", Some(&labelled), &other)), Some("EHR-ORD-005"));
        assert_eq!(code(check("Specimen", Some(&labelled), &unlabelled)), Some("EHR-ORD-005"));

        let task = resource("Task", "in-progress");
        let mut moved = task.clone();
        moved["for"] = json!({"reference": "Patient/p2"});
        let e = check("Task", Some(&task), &moved).expect_err("moved");
        assert_eq!(e.location(), "Task.for");
    }

    #[test]
    fn appointment_invariants() {
        let booked = resource("Appointment", "booked");
        assert!(check("Appointment", None, &booked).is_ok());

        // app-2
        let mut open_ended = booked.clone();
        open_ended.as_object_mut().map(|o| o.remove("end"));
        assert_eq!(code(check("Appointment", None, &open_ended)), Some("EHR-ORD-007"));
        open_ended["status"] = json!("proposed");
        assert_eq!(code(check("Appointment", None, &open_ended)), Some("EHR-ORD-007"));

        // app-3
        let mut untimed = booked.clone();
        untimed.as_object_mut().map(|o| {
            o.remove("start");
            o.remove("end")
        });
        assert_eq!(code(check("Appointment", None, &untimed)), Some("EHR-ORD-008"));
        for status in ["proposed", "waitlist"] {
            untimed["status"] = json!(status);
            assert!(check("Appointment", None, &untimed).is_ok(), "{status}");
        }
        let mut cancelled = untimed.clone();
        cancelled["status"] = json!("cancelled");
        assert!(check("Appointment", Some(&untimed), &cancelled).is_ok());
        // R4 app-3 holds for entered-in-error as well: a retraction keeps (or gets) its times.
        let mut retracted = untimed.clone();
        retracted["status"] = json!("entered-in-error");
        assert_eq!(code(check("Appointment", Some(&untimed), &retracted)), Some("EHR-ORD-008"));

        // app-4
        let mut with_reason = booked.clone();
        with_reason["cancelationReason"] = json!({"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
            "code": "pat"
        }]});
        let e = check("Appointment", None, &with_reason).expect_err("app-4");
        assert_eq!((e.code(), e.location()), ("EHR-ORD-009", "Appointment.cancelationReason".to_owned()));
        for status in ["cancelled", "noshow"] {
            with_reason["status"] = json!(status);
            assert!(check("Appointment", Some(&booked), &with_reason).is_ok(), "{status}");
        }

        // start ≤ end, across zones: 10:00 JST is 01:00 UTC.
        let mut reversed = booked.clone();
        reversed["start"] = json!("2024-04-01T10:00:00+09:00");
        reversed["end"] = json!("2024-04-01T00:30:00Z");
        let e = check("Appointment", None, &reversed).expect_err("reversed");
        assert_eq!((e.code(), e.location()), ("EHR-ORD-006", "Appointment.start".to_owned()));
        reversed["end"] = json!("2024-04-01T01:30:00Z");
        assert!(check("Appointment", None, &reversed).is_ok());
        reversed["end"] = reversed["start"].clone();
        assert!(check("Appointment", None, &reversed).is_ok(), "a zero-length appointment");
    }

    #[test]
    fn slot_and_schedule_periods() {
        let mut slot = resource("Slot", "free");
        slot["end"] = json!("2024-04-01T08:59:59.999+09:00");
        let e = check("Slot", None, &slot).expect_err("reversed");
        assert_eq!((e.code(), e.location()), ("EHR-ORD-006", "Slot.start".to_owned()));

        let schedule = |start: &str, end: &str| {
            json!({"resourceType": "Schedule", "actor": [{"reference": "Practitioner/d1"}],
                "planningHorizon": {"start": start, "end": end}})
        };
        assert!(check("Schedule", None, &schedule("2024-04-01", "2024-06-30")).is_ok());
        // Partial precision: April contains the 15th, so neither is certainly after the other.
        assert!(check("Schedule", None, &schedule("2024-04", "2024-04-15")).is_ok());
        assert!(check("Schedule", None, &schedule("2024-04-15", "2024-04")).is_ok());
        let e = check("Schedule", None, &schedule("2024-05", "2024-04-30")).expect_err("reversed");
        assert_eq!(e.location(), "Schedule.planningHorizon.start");
        // Unreadable values are the structural validator's to report.
        assert!(check("Schedule", None, &schedule("soon", "2024-04-30")).is_ok());
        assert!(check("Schedule", None, &json!({"resourceType": "Schedule"})).is_ok());
    }

    #[test]
    fn other_types_have_no_workflow() {
        let before = json!({"resourceType": "Observation", "status": "final"});
        let after = json!({"resourceType": "Observation", "status": "registered"});
        assert!(check("Observation", Some(&before), &after).is_ok());
    }

    #[test]
    fn errors_are_classified() {
        let e = WorkflowError::Transition {
            resource_type: "ServiceRequest",
            from: "completed".into(),
            to: "active".into(),
        };
        assert_eq!(e.http_status(), 422);
        assert_eq!(e.issue_type(), IssueType::BusinessRule);
        assert_eq!(WorkflowError::StartEndPair.issue_type(), IssueType::Invariant);
        assert_eq!(WorkflowError::StartEndPair.http_status(), 422);
        assert_eq!(e.to_string(), "a ServiceRequest cannot go from status `completed` to `active`");
        let issue = e.issues().remove(0).to_json();
        assert_eq!(issue["details"]["coding"][0]["code"], "EHR-ORD-004");
        assert_eq!(issue["expression"], json!(["ServiceRequest.status"]));
    }

    #[test]
    fn instants() {
        assert_eq!(instant_range("1970-01-01T00:00:00Z"), Some((0, 999)));
        assert_eq!(instant_range("1970-01-01T09:00:00.5+09:00"), Some((500, 500)));
        assert_eq!(instant_range("1970-01-01T00:00:00.123456-00:00"), Some((123, 123)));
        // Dates are local (JST) days, months and years.
        assert_eq!(instant_range("1970-01-01"), Some((-9 * 3_600_000, DAY_MS - 9 * 3_600_000 - 1)));
        let (feb, _) = instant_range("2024-02").expect("month");
        let (_, feb_end) = instant_range("2024-02-29").expect("leap day");
        let (march, _) = instant_range("2024-03-01").expect("day");
        assert_eq!(feb_end + 1, march);
        assert_eq!(march - feb, 29 * DAY_MS);
        assert_eq!(instant_range("2000").map(|(l, h)| (h + 1 - l) / DAY_MS), Some(366));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for bad in ["2023-02-29", "2024-13-01", "2024-4-01", "2024-04-01T25:00:00Z", "2024-04-01T10:00Z", "", "x"] {
            assert_eq!(instant_range(bad), None, "{bad}");
        }
    }
}
