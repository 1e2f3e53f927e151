//! The sender: due submissions of every tenant, claimed with a lease (so that no request id is
//! ever in two sends at once, across replicas too), sent through the transport, and recorded
//! only while the claim still holds.
//!
//! | outcome | state | retried |
//! |---|---|---|
//! | answer `accepted` | `accepted` (a cancel's target becomes `cancelled`, a change's `changed`) | no |
//! | answer `rejected` | `rejected`, with result code, message and findings | no: the same request would be refused again |
//! | answer `error`, or a retryable transport failure | `queued`, due after back-off (base × 2^(attempt−1), capped) | yes, until `max_attempts`, then `failed` |
//! | permanent transport failure | `failed` | no |
//!
//! A cancel answered 2001 (the service never held the registration) counts as done.
//!
//! Every attempt whose request may have reached the service without an answer (a timeout after
//! the request left, a dropped request file, a 5xx other than 503) marks the submission
//! `mayHaveArrived`: from then on a cancel goes to the service, never a local withdrawal.
//! Every retry records its due time as `dueAt`; a claim moves `next_attempt_at` off it.

use crate::{ClinsAdapter, ClinsAdapterError, SERVICE};
use ehr_clins::envelope::{Request, Response, Status, codes};
use ehr_clins::transport::TransportError;
use ehr_core::TenantContext;
use ehr_store::Submission;
use serde_json::{Value, json};

/// Submissions sent per tenant and pass (one claim at a time), so one tenant's backlog does not
/// starve the others.
const PER_TENANT_PASS: usize = 5;

impl ClinsAdapter {
    /// How long a claim reserves a submission: the configured lease, but never less than one
    /// request can take (connect + timeout) plus a margin — a lease that ran out while the
    /// request is still on the wire would let a second worker send it at the same time.
    pub fn lease_ms(&self) -> i64 {
        let per_attempt = self.settings.connect_timeout_ms.saturating_add(self.settings.timeout_ms);
        let lease = (self.settings.lease_secs.saturating_mul(1000)).max(per_attempt.saturating_add(10_000));
        i64::try_from(lease).unwrap_or(i64::MAX / 2)
    }

    /// One pass: every tenant with due submissions, each claimed (one at a time, the lease
    /// starting when it is claimed) and sent once. Returns how many were attempted.
    pub async fn send_due(&self) -> Result<usize, ClinsAdapterError> {
        let Some(transport) = self.transport().cloned() else { return Ok(0) };
        let tenants = {
            let sys = self.store.system_read().await?;
            let t = sys.national_tenants(SERVICE, self.clock.now().timestamp_millis()).await?;
            sys.commit().await?;
            t
        };
        let mut attempted = 0;
        for tenant in tenants {
            let ctx = TenantContext::new(tenant, "clins-adapter:sender");
            for _ in 0..PER_TENANT_PASS {
                let now = self.clock.now().timestamp_millis();
                let lease = now.saturating_add(self.lease_ms());
                let claimed = {
                    let tx = self.store.write(&ctx).await?;
                    let c = tx.claim_due_submissions(SERVICE, now, lease, 1).await?;
                    tx.commit().await?;
                    c
                };
                let Some(s) = claimed.into_iter().next() else { break };
                attempted += 1;
                let outcome = match serde_json::from_str::<Request>(&s.payload) {
                    Ok(request) => transport.send(&request).await,
                    Err(_) => {
                        Err(TransportError::Permanent { why: "the stored envelope is unreadable".into(), sent: false })
                    }
                };
                self.record(&ctx, &s, lease, outcome).await?;
            }
        }
        Ok(attempted)
    }

    async fn record(
        &self,
        ctx: &TenantContext,
        s: &Submission,
        claimed_until: i64,
        outcome: Result<Response, TransportError>,
    ) -> Result<(), ClinsAdapterError> {
        let now = self.clock.now().timestamp_millis();
        let attempt = s.attempts + 1;
        let retry = |why: String| {
            if attempt >= self.settings.max_attempts {
                ("failed", None, Some(why))
            } else {
                let due = ehr_core::retry_due(now, attempt, self.settings.retry_base_ms, self.settings.retry_max_ms);
                ("queued", Some(due), Some(why))
            }
        };
        let mut result: Value = s.result.clone();
        if let Err(e) = &outcome
            && e.may_have_arrived()
        {
            // From now on the service may hold this request although we never saw an answer:
            // it can no longer be withdrawn locally, only cancelled at the service.
            result["mayHaveArrived"] = json!(true);
        }
        let mut response_text = None;
        let (state, next, error) = match &outcome {
            Ok(r) => {
                response_text = serde_json::to_string(r).ok();
                result["resultCode"] = json!(r.result_code);
                result["message"] = json!(r.message);
                result["status"] = json!(r.status);
                result["errors"] = serde_json::to_value(&r.errors).unwrap_or(Value::Null);
                let cancel_of_nothing = s.operation == "cancel" && r.result_code == codes::NOT_FOUND;
                match r.status {
                    Status::Accepted => ("accepted", None, None),
                    _ if cancel_of_nothing => ("accepted", None, None),
                    Status::Rejected => {
                        ("rejected", None, Some(format!("rejected by the national service ({})", r.result_code)))
                    }
                    Status::Error => retry(format!("the national service answered an error ({})", r.result_code)),
                }
            }
            Err(TransportError::Retryable { why, .. }) => retry(why.clone()),
            Err(TransportError::Permanent { why, .. }) => ("failed", None, Some(why.clone())),
        };
        if state == "queued" {
            // The due time this attempt sets: a later claim moves next_attempt_at away from it,
            // which is how a cancel tells a waiting submission from one on the wire.
            result["dueAt"] = json!(next);
        }
        let tx = self.store.write(ctx).await?;
        let recorded = tx
            .record_submission_attempt(
                &s.id,
                claimed_until,
                state,
                next,
                error.as_deref(),
                response_text.as_deref(),
                Some(&result),
                now,
            )
            .await?;
        if recorded
            && state == "accepted"
            && let Some(target) = s.result["target"].as_str()
        {
            let (to, from): (&str, &[&str]) = match s.operation.as_str() {
                "cancel" => ("cancelled", &["accepted", "changed", "failed"]),
                _ => ("changed", &["accepted"]),
            };
            tx.change_submission(target, from, to, None, None, None, now).await?;
        }
        tx.commit().await?;
        if !recorded {
            // The lease ran out and another worker claimed it, or it was withdrawn meanwhile:
            // that worker's (or the withdrawal's) record stands; the request id is the same, so
            // the service answers both sends alike.
            tracing::warn!(submission = %s.id, "clins claim lost before the answer was recorded");
            return Ok(());
        }
        match state {
            "accepted" => tracing::info!(submission = %s.id, operation = %s.operation, "clins submission accepted"),
            "queued" => tracing::warn!(submission = %s.id, attempt, "clins submission not delivered; will retry"),
            _ => tracing::warn!(submission = %s.id, state, "clins submission finished without acceptance"),
        }
        Ok(())
    }
}
